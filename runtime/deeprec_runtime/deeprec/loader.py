"""Loads DeepRec SavedModels with EmbeddingVariables on stock TensorFlow, and their checkpoints.

`import_ev_graph` turns the export into a stock graph (rewrite.py) with the ops that fill and
update its EV storage (tables.py); `EVVersion` is one version's state in its session: it restores
a full checkpoint (dense variables by their checkpoint names, partitioned ones by slice; every EV
from all its parts) and reads DeepRec's incremental checkpoints into the servable's delta plan.
Example: a Wide&Deep export with EV `user_emb` (4 parts, filter_freq 2) and dense `dnn/*` loads
as one graph whose `user_emb` lookups read one hash table; `model.ckpt-100` fills it and
`.incremental_checkpoint/incremental_model.ckpt-120` then updates its changed rows in place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import variable_pb2
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.eager import context
from tensorflow.python.framework import ops

from deeprec_runtime.deeprec import ckpt, evs
from deeprec_runtime.deeprec.keyed import evaluate_initial_values, initial_values
from deeprec_runtime.deeprec.rewrite import rewrite
from deeprec_runtime.deeprec.savedmodel import load_exported
from deeprec_runtime.deeprec.tables import EVTable, TableOps
from deeprec_runtime.errors import VersionLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DenseSource:
    """Where a dense variable's value is in a DeepRec checkpoint."""

    key: str
    """Checkpoint tensor name: the variable's name, or its full name when it is a part."""
    slice_spec: str
    """RestoreV2 slice ("" for the whole tensor), e.g. "10 4 0,5:-" for rows 0-4 of [10, 4]."""


@dataclass(frozen=True)
class EVGraph:
    """What a DeepRec export's graph holds beyond a stock SavedModel graph."""

    tables: tuple[TableOps, ...]
    dense: dict[str, DenseSource]
    main_op: str | None
    lookups: tuple[evs.EVLookup, ...]

    def describe(self) -> str:
        return (f"{len(self.tables)} EmbeddingVariable(s) ({', '.join(t.base for t in self.tables)})"
                f" in {len(self.lookups)} lookup(s), {len(self.dense)} dense variable(s)")


def _dense_source(vd: variable_pb2.VariableDef) -> DenseSource:
    name = evs.clean_input(vd.variable_name)
    if not vd.HasField("save_slice_info_def"):
        return DenseSource(name, "")
    info = vd.save_slice_info_def
    full = " ".join(str(d) for d in info.full_shape)
    spec = ":".join(f"{o},{n}" for o, n in zip(info.var_offset, info.var_shape, strict=True))
    return DenseSource(info.full_name, f"{full} {spec}")


def import_ev_graph(savedmodel_dir: str, place: Callable[[tf.Graph], None] | None = None
                    ) -> tuple[tf.Graph, meta_graph_pb2.MetaGraphDef, list, EVGraph]:
    """The export's serving graph rewritten for stock TensorFlow, imported into a new graph (not
    finalized: the caller adds its update ops), with the serving MetaGraphDef, the dense
    variables and the EV state's ops. Raises VersionLoadError naming what cannot be served."""
    started = time.monotonic()
    model = load_exported(savedmodel_dir)
    meta = model.meta
    if not meta.signature_def:
        raise VersionLoadError(f"the SavedModel in {savedmodel_dir} has no signatures")
    outputs = sorted({t.name for s in meta.signature_def.values() for t in s.outputs.values()
                      if t.name})
    inputs = sorted({t.name for s in meta.signature_def.values() for t in s.inputs.values()
                     if t.name})
    done = rewrite(model, outputs, inputs)
    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.graph_util.import_graph_def(done.graph_def, name="",
                                           producer_op_list=meta.meta_info_def.stripped_op_list)
        except (ValueError, tf.errors.OpError) as exc:
            raise VersionLoadError(f"the rewritten serving graph of {savedmodel_dir} does not "
                                   f"import: {str(exc).splitlines()[0][:300]}") from None
        if place is not None:
            place(graph)
        # The variables collection's own decoder: ref or resource variable, as the def says.
        from_proto = ops.get_from_proto_function(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
        variables = [from_proto(vd) for vd in done.dense]
        tables = tuple(TableOps.build(graph, t) for t in done.tables.values())
    ev = EVGraph(tables, {evs.clean_input(vd.variable_name): _dense_source(vd)
                          for vd in done.dense}, done.main_op, tuple(done.lookups))
    log.info("DeepRec SavedModel %s: %s; %d DeepRec-only node(s) not served; rewritten in %.2fs",
             savedmodel_dir, ev.describe(), len(done.removed), time.monotonic() - started)
    return graph, meta, variables, ev


def _read_dense(index: ckpt.CheckpointIndex, sources: list[tuple[str, DenseSource]]
                ) -> dict[str, np.ndarray]:
    if not sources:
        return {}
    for _, src in sources:
        if src.key not in index.shapes:
            raise VersionLoadError(f"checkpoint {index.prefix} has no variable '{src.key}'")
    try:
        with context.eager_mode():  # read now, not as ops of the caller's graph
            out = tf.raw_ops.RestoreV2(prefix=index.prefix,
                                       tensor_names=[s.key for _, s in sources],
                                       shape_and_slices=[s.slice_spec for _, s in sources],
                                       dtypes=[index.dtypes[s.key] for _, s in sources])
    except (tf.errors.OpError, ValueError) as exc:
        raise VersionLoadError(f"cannot read dense variables from {index.prefix}: "
                               f"{str(exc).splitlines()[0][:300]}") from None
    return {name: t.numpy() for (name, _), t in zip(sources, out, strict=True)}


@dataclass(frozen=True)
class _KeyedTable:
    """A keyed feature-store table as a delta plan entry (the store writes its rows)."""

    name: str


class EVVersion:
    """One version's EV storage and restore / delta logic, in the version's session. `keyed`:
    the EVs' rows live in a feature store (deeprec/keyed.py), which imports them itself; this
    then restores the dense variables, draws the initial values the fallbacks read, and turns
    deltas into rows for the store."""

    def __init__(self, ev: EVGraph, session, run_options: config_pb2.RunOptions,
                 byte_budget: int = 0, keyed: bool = False):
        self.ev = ev
        self.session = session
        self.run_options = run_options
        #: `ev_storage_size[0]` with ev_storage_type 1: the EVs must fit (0: no bound).
        self.byte_budget = byte_budget
        self.keyed = keyed
        self.tables = {} if keyed else {t.base: EVTable(session, t, run_options) for t in ev.tables}
        #: Keyed mode: EV part -> its initial value, the default rows its lookups fall back to.
        self.defaults: dict[str, np.ndarray] = {}

    def restore(self, prefix: str, updaters: Mapping, restore_options: config_pb2.RunOptions) -> None:
        """Restores a full checkpoint: dense variables, EV default matrices, EV rows, then the
        main op. Raises VersionLoadError when anything is missing or does not match."""
        index = ckpt.CheckpointIndex(prefix)
        # Check every EV is there before the expensive reads.
        for name in {t.base for t in self.ev.tables}:
            if not index.parts(name, ckpt.FULL_KEYS):
                raise VersionLoadError(f"checkpoint {prefix} has no EmbeddingVariable "
                                       f"'{name}' (no {name}-keys or {name}/part_0-keys)")
        for name, updater in updaters.items():
            # One variable per read keeps at most one dense value in flight.
            value = _read_dense(index, [(name, self.ev.dense[name])])[name]
            updater.apply(updater.check_whole(value))
        if self.keyed:
            self.defaults = evaluate_initial_values(
                self.session, initial_values(list(self.ev.lookups)), restore_options)
        for table in self.tables.values():
            rows = ckpt.read_full(index, table.name, table.ops.dim)
            table.load(table.ops.default_values(self.session, restore_options), rows.keys,
                       rows.values)
            log.info("EmbeddingVariable %s: %d rows from %s (%d filtered keys not admitted)",
                     table.name, rows.keys.shape[0], prefix, rows.filtered)
        held = sum(t.bytes_estimate() for t in self.tables.values())
        if self.byte_budget and held > self.byte_budget:
            raise VersionLoadError(
                f"the EmbeddingVariables of {prefix} take about {held} bytes in DRAM, more than "
                f"ev_storage_size[0] = {self.byte_budget}")
        if self.ev.main_op:
            self.session.run(self.ev.main_op, options=restore_options)

    def read_delta(self, prefix: str, updaters: Mapping) -> list[tuple[Any, tuple]]:
        """A DeepRec incremental checkpoint as the servable's delta plan: dense variables whole
        (or their changed rows), EV rows staged (written where no request reads yet) and
        committed under the servable's write gate. Everything is read and checked first."""
        index = ckpt.CheckpointIndex(prefix)
        plan: list[tuple[Any, tuple]] = []
        whole = []
        for name, updater in updaters.items():
            src = self.ev.dense[name]
            if src.key + ckpt.DELTA_KEYS in index.shapes:
                if src.slice_spec:
                    raise VersionLoadError(
                        f"delta {prefix}: changed rows of the partitioned variable '{src.key}' "
                        "cannot be placed in its parts; save normal variables whole")
                got = index.read([src.key + ckpt.DELTA_KEYS, src.key + ckpt.DELTA_VALUES])
                plan.append((updater, updater.check_rows(got[src.key + ckpt.DELTA_KEYS],
                                                         got[src.key + ckpt.DELTA_VALUES])))
            elif src.key in index.shapes:
                whole.append((name, src))
        values = _read_dense(index, whole)
        plan += [(updaters[name], updaters[name].check_whole(values[name])) for name, _ in whole]
        rows = {t.base: ckpt.read_delta(index, t.base, t.dim) for t in self.ev.tables}
        for name, r in rows.items():
            if r is None or not r.keys.size:
                continue
            if self.keyed:
                plan.append((_KeyedTable(name), ("scatter", r.keys, r.values)))
            else:
                table = self.tables[name]
                plan.append((table, ("ev", table.stage(r.keys, r.values))))
        return plan

    def describe(self) -> str:
        return ", ".join(f"{t.name}: {t.size} rows" for t in self.tables.values())
