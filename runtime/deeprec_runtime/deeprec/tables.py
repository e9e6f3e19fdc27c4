"""The in-process EmbeddingVariable store: one key index + one values variable per EV, inside the
version's TensorFlow session, so lookups run in the graph (and in the C++ fast path) with no
Python per request.

Storage per EV: an index int64 key -> row (the EV op library's DeepRecKeyIndex: 16-byte slots,
a power of two of them, at most 3/4 full; or the stock MutableHashTable, a flat open-addressing
map of 16 bytes and a control byte a slot, at most 7/8 full) and a float32 resource variable
holding first the default rows unseen ids read (each part's initial value, or one row of
default_value_no_permission; see rewrite.py), then one row per key. A full checkpoint fills
both exactly. A delta's new keys are appended: their rows are written at fresh indices *before*
the servable's write gate is taken (no request can reach an index no key points to yet; growing
the variable copies it, which readers do not notice), then, under the gate, the new keys are
inserted and changed rows of existing keys overwritten, so a request sees the whole delta or
none of it. Capacity grows by 25% at a time (amortised copies, little slack); a full load
leaves room for 1/32 more keys.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from deeprec_runtime.deeprec import kernels
from deeprec_runtime.deeprec.rewrite import DefaultBlock, TableNodes
from deeprec_runtime.errors import VersionLoadError

log = logging.getLogger(__name__)

GROWTH = 1.25
"""Capacity factor when a delta needs more rows than the values variable holds."""
HEADROOM_FRACTION = 32
HEADROOM_MIN = 64
"""A full load leaves room for 1/32 more keys (at least 64) for the deltas' new keys."""


@dataclass(frozen=True)
class TableOps:
    """The ops (built once per imported graph) that fill and update one EV's storage."""

    base: str
    dim: int
    blocks: tuple[DefaultBlock, ...]
    insert: tuple[tuple[str, str], str]
    find: tuple[str, str]
    size: str
    assign: tuple[str, str]
    grow: tuple[str, str]
    scatter: tuple[tuple[str, str], str]
    key_index: bool
    """The index is a DeepRecKeyIndex (else a stock MutableHashTable)."""

    @property
    def default_rows(self) -> int:
        return sum(b.rows for b in self.blocks)

    @classmethod
    def build(cls, graph: tf.Graph, nodes: TableNodes) -> TableOps:
        index = graph.get_tensor_by_name(nodes.index + ":0")
        values = graph.get_tensor_by_name(nodes.values + ":0")
        scope = f"deeprec_ev_update/{nodes.base}"
        with tf.compat.v1.name_scope(None), tf.compat.v1.name_scope(scope):
            tf1 = tf.compat.v1
            keys = tf1.placeholder(tf.int64, [None], name="keys")
            rows = tf1.placeholder(tf.int64, [None], name="rows")
            insert = tf.raw_ops.LookupTableInsertV2(table_handle=index, keys=keys, values=rows)
            find_keys = tf1.placeholder(tf.int64, [None], name="find_keys")
            find = tf.raw_ops.LookupTableFindV2(table_handle=index, keys=find_keys,
                                                default_value=tf.constant(-1, tf.int64))
            size = tf.raw_ops.LookupTableSizeV2(table_handle=index)
            value = tf1.placeholder(tf.float32, [None, nodes.dim], name="values")
            assign = tf.raw_ops.AssignVariableOp(resource=values, value=value)
            extra = tf1.placeholder(tf.int32, [], name="extra_rows")
            current = tf.raw_ops.ReadVariableOp(resource=values, dtype=tf.float32)
            grown = tf.concat([current, tf.zeros(tf.stack([extra, nodes.dim]), tf.float32)], 0)
            grow = tf.raw_ops.AssignVariableOp(resource=values, value=grown)
            at = tf1.placeholder(tf.int64, [None], name="at")
            new_rows = tf1.placeholder(tf.float32, [None, nodes.dim], name="new_rows")
            scatter = tf.raw_ops.ResourceScatterUpdate(resource=values, indices=at,
                                                       updates=new_rows)
        blocks = tuple(sorted(nodes.blocks.values(), key=lambda b: b.offset))
        return cls(nodes.base, nodes.dim, blocks, ((keys.name, rows.name), insert.name),
                   (find_keys.name, find.name), size.name, (value.name, assign.name),
                   (extra.name, grow.name), ((at.name, new_rows.name), scatter.name),
                   index.op.type == kernels.INDEX_OP)

    def default_values(self, session, run_options: config_pb2.RunOptions) -> np.ndarray:
        """The default rows, [default_rows, dim]: initial values are evaluated (once per version,
        as DeepRec draws them once per process), no-permission rows filled."""
        out = []
        for b in self.blocks:
            if b.initial_value is None:
                out.append(np.full((1, self.dim), b.part.default_value_no_permission, np.float32))
                continue
            value = session.run(b.initial_value, options=run_options)
            if value.shape != (b.rows, self.dim):
                raise VersionLoadError(
                    f"EmbeddingVariable '{b.part.name}': its initial value has shape "
                    f"{list(value.shape)}, expected [default_value_dim, dim] = "
                    f"{[b.rows, self.dim]}")
            out.append(value.astype(np.float32, copy=False))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


@dataclass
class StagedRows:
    """A delta's rows for one EV, new rows already written; commit() makes them visible."""

    table: EVTable
    new_keys: np.ndarray
    new_at: np.ndarray
    changed_at: np.ndarray
    changed_rows: np.ndarray
    size_after: int


class EVTable:
    """One EV's storage in one session."""

    def __init__(self, session, ops: TableOps, run_options: config_pb2.RunOptions):
        self.ops = ops
        self.name = ops.base
        self._session = session
        self._run_options = run_options
        self._callables: dict[str, Callable] = {}
        self._lock = threading.Lock()
        self.base = 0
        """Default rows before the keys' rows."""
        self.size = 0
        """Keys stored."""
        self.capacity = 0
        """Key rows the values variable has room for."""

    def _fn(self, key: str, feeds: tuple[str, ...], fetch: str | None, target: str | None):
        fn = self._callables.get(key)
        if fn is None:
            with self._lock:
                fn = self._callables.get(key)
                if fn is None:
                    opts = config_pb2.CallableOptions(feed=feeds, fetch=[fetch] if fetch else [],
                                                      target=[target] if target else [])
                    opts.run_options.CopyFrom(self._run_options)
                    fn = self._callables[key] = self._session._make_callable_from_options(opts)
        return fn

    def load(self, defaults: np.ndarray, keys: np.ndarray, values: np.ndarray) -> None:
        """Fills the empty storage: the default rows, then a full checkpoint's rows (key i at
        row len(defaults) + i)."""
        ops = self.ops
        self.base = defaults.shape[0]
        # Room for 1/32 more keys: the first deltas' new keys fit without copying the whole
        # variable. A miss must always find a row to gather, even in an empty table.
        capacity = keys.shape[0] + max(HEADROOM_MIN, keys.shape[0] // HEADROOM_FRACTION)
        parts = [defaults, values]
        if capacity > values.shape[0]:
            parts.append(np.zeros((capacity - values.shape[0], ops.dim), np.float32))
        self._fn("assign", (ops.assign[0],), None, ops.assign[1])(np.concatenate(parts))
        if keys.size:
            self._fn("insert", ops.insert[0], None, ops.insert[1])(
                keys, np.arange(self.base, self.base + keys.shape[0], dtype=np.int64))
        self.size, self.capacity = int(keys.shape[0]), capacity
        # Prepared now, on the loading thread: the first delta then pays only for its rows.
        self._fn("find", (ops.find[0],), ops.find[1], None)
        self._fn("scatter", ops.scatter[0], None, ops.scatter[1])
        self._fn("grow", (ops.grow[0],), None, ops.grow[1])

    def stage(self, keys: np.ndarray, values: np.ndarray) -> StagedRows:
        """Prepares a delta's rows without changing any answer: finds which keys exist, grows
        the values variable if needed and writes the new keys' rows at fresh indices."""
        ops = self.ops
        (at,) = self._fn("find", (ops.find[0],), ops.find[1], None)(keys)
        new = at < 0
        new_keys = keys[new]
        first = self.base + self.size
        new_at = np.arange(first, first + new_keys.shape[0], dtype=np.int64)
        needed = self.size + new_keys.shape[0]
        if needed > self.capacity:
            capacity = max(needed, int(self.capacity * GROWTH) + 1)
            self._fn("grow", (ops.grow[0],), None, ops.grow[1])(
                np.int32(capacity - self.capacity))
            self.capacity = capacity
        if new_keys.size:
            self._fn("scatter", ops.scatter[0], None, ops.scatter[1])(new_at, values[new])
        return StagedRows(self, new_keys, new_at, at[~new], values[~new], needed)

    def commit(self, staged: StagedRows) -> None:
        """Under the servable's write gate: new keys become visible, changed rows change."""
        ops = self.ops
        if staged.changed_at.size:
            self._fn("scatter", ops.scatter[0], None, ops.scatter[1])(staged.changed_at,
                                                                      staged.changed_rows)
        if staged.new_keys.size:
            self._fn("insert", ops.insert[0], None, ops.insert[1])(staged.new_keys, staged.new_at)
        self.size = staged.size_after

    # The servable's delta plan calls prepare() before its write gate and apply() under it.
    def prepare(self, kind: str) -> None:
        """Nothing left to prepare: stage() did the work."""

    def apply(self, args: tuple) -> None:
        self.commit(args[1])

    def count(self) -> int:
        """Keys in the index (as TensorFlow counts them)."""
        (size,) = self._fn("size", (), self.ops.size, None)()
        return int(size)

    def bytes_estimate(self) -> int:
        """Bytes held: the values variable plus the index's slots (DeepRecKeyIndex: 16 bytes
        each, 2^k of them, at most 3/4 full; MutableHashTable: 17 bytes each, 2^k - 1 of them,
        at most 7/8 full)."""
        values = (self.base + self.capacity) * self.ops.dim * 4
        if self.ops.key_index:
            slots = 16
            while self.size > slots // 4 * 3:
                slots *= 2
            return values + slots * 16
        slots = 15
        while self.size > slots * 7 // 8:
            slots = slots * 2 + 1
        return values + slots * 17
