"""Deltas: reading an incremental checkpoint and writing it into a version's variables.

The loader (tf_loader.py) builds each variable's update ops once per graph (_UpdateOps) and gives
every version its updaters (_VariableUpdater); Servable.apply_delta reads a delta with read_delta,
which checks everything against the model before any variable changes, and applies it under the
version's write gate. _check_shapes guards a full restore the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from deeprec_runtime.deeprec import names
from deeprec_runtime.errors import VersionLoadError
from deeprec_runtime.model.checkpoint_read import read_tensors


@dataclass(frozen=True)
class _UpdateOps:
    """The ops that write one variable, built once per graph and shared by the sessions of its
    versions: a whole-value assign and, for tables, a row scatter."""

    name: str
    dtype: tf.DType
    shape: tuple[int, ...]
    assign_feed: str
    assign_target: str
    scatter_feeds: tuple[str, str] | None
    scatter_target: str | None

    @classmethod
    def build(cls, variable) -> _UpdateOps:
        name = variable.op.name
        dtype = variable.dtype.base_dtype
        shape = tuple(variable.shape.as_list())
        value = tf.compat.v1.placeholder(dtype, shape, name=f"deeprec_assign/{name}")
        assign = variable.assign(value, read_value=False)
        scatter_feeds = scatter_target = None
        if len(shape) >= 2:
            ids = tf.compat.v1.placeholder(tf.int64, [None], name=f"deeprec_scatter_ids/{name}")
            rows = tf.compat.v1.placeholder(dtype, [None, *shape[1:]],
                                            name=f"deeprec_scatter_rows/{name}")
            scatter = variable.scatter_update(tf.IndexedSlices(rows, ids))
            scatter_feeds, scatter_target = (ids.name, rows.name), scatter.op.name
        return cls(name, dtype, shape, value.name, assign.name.split(":")[0], scatter_feeds,
                   scatter_target)


class _VariableUpdater:
    """One version's assign and scatter-update callables for one variable, prepared on first
    use: preparing one takes ~2 ms of CPU, and a version may never receive a delta, so a swap
    does not pay for them while the serving version answers requests."""

    def __init__(self, session, ops: _UpdateOps, run_options: config_pb2.RunOptions):
        self.name = ops.name
        self.dtype = ops.dtype
        self.shape = ops.shape
        self._session = session
        self._ops = ops
        self._run_options = run_options
        self._prepared: dict[str, Callable] = {}
        self._lock = threading.Lock()

    @property
    def is_table(self) -> bool:
        return self._ops.scatter_target is not None

    def prepare(self, kind: str) -> Callable:
        """The "assign" or "scatter" callable (see check_whole / check_rows)."""
        fn = self._prepared.get(kind)
        if fn is None:
            if kind == "scatter" and not self.is_table:  # check_rows refuses these first
                raise VersionLoadError(f"variable '{self.name}' is not a table")
            with self._lock:
                fn = self._prepared.get(kind)
                if fn is None:
                    ops = self._ops
                    feeds, target = ((ops.assign_feed,), ops.assign_target) if kind == "assign" \
                        else (ops.scatter_feeds, ops.scatter_target)
                    opts = config_pb2.CallableOptions(feed=feeds, target=[target])
                    opts.run_options.CopyFrom(self._run_options)
                    fn = self._prepared[kind] = self._session._make_callable_from_options(opts)
        return fn

    def check_whole(self, value: np.ndarray) -> tuple:
        if tuple(value.shape) != self.shape:
            raise VersionLoadError(
                f"variable '{self.name}' has shape {list(value.shape)} in the delta but "
                f"{list(self.shape)} in the model")
        return ("assign", value)

    def check_rows(self, ids: np.ndarray, rows: np.ndarray) -> tuple:
        if not self.is_table:
            raise VersionLoadError(f"variable '{self.name}' is not a table; deltas must carry it whole")
        if ids.ndim != 1 or rows.shape != (ids.shape[0], *self.shape[1:]):
            raise VersionLoadError(
                f"variable '{self.name}': delta rows have shape {list(rows.shape)} for {ids.shape[0]} "
                f"ids; expected [{ids.shape[0]}, {', '.join(map(str, self.shape[1:]))}]")
        if ids.size and (ids.min() < 0 or ids.max() >= self.shape[0]):
            raise VersionLoadError(
                f"variable '{self.name}': delta row ids must be in [0, {self.shape[0]}), "
                f"got [{ids.min()}, {ids.max()}]")
        return ("scatter", ids.astype(np.int64, copy=False), rows)

    def apply(self, args: tuple) -> None:
        self.prepare(args[0])(*args[1:])


#: Entries of the writer's former delta format (changes since the previous save, not cumulative):
#: applying only their dense part would serve stale table rows, so such a delta is refused.
_RETIRED_SUFFIXES = ("/delta_ids", "/delta_values")


def read_delta(prefix: str, updaters: dict[str, _VariableUpdater]) -> list[tuple[_VariableUpdater, tuple]]:
    """Reads and validates a delta in DeepRec's incremental format (docs/checkpoint-format.md):
    `V-sparse_incr_keys` / `V-sparse_incr_values` are changed rows of table V, other entries
    whole variables. Entries the model does not have (optimizer slots, global_step, DeepRec's
    per-EV side tensors) are skipped; a delta with none of the model's variables is refused."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        keys = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError) as exc:
        raise VersionLoadError(f"cannot read delta {prefix}: {_first_line(exc)}") from None
    # Names are checked against the model from the index alone, before any data is read.
    wanted: list[tuple[_VariableUpdater, tuple[str, ...]]] = []
    retired = sorted(k for k in keys if k.endswith(_RETIRED_SUFFIXES))
    if retired:
        raise VersionLoadError(
            f"delta {prefix} is in the retired private format ('{retired[0]}'); deltas are "
            "DeepRec's incremental checkpoints (V-sparse_incr_keys / V-sparse_incr_values): "
            "write them with the current CheckpointWriter")
    for key in sorted(keys):
        if key.endswith(names.DELTA_KEYS):
            var = key[: -len(names.DELTA_KEYS)]
            if var not in updaters:
                continue
            if var + names.DELTA_VALUES not in keys:
                raise VersionLoadError(f"delta {prefix}: '{key}' has no '{var}{names.DELTA_VALUES}'")
            wanted.append((updaters[var], (key, var + names.DELTA_VALUES)))
        elif key in updaters and not names.is_ev_tensor(key):
            wanted.append((updaters[key], (key,)))
    if not wanted and keys and not any(names.is_ev_tensor(k) for k in keys):
        raise VersionLoadError(f"delta {prefix} holds none of the model's variables "
                               f"({', '.join(sorted(keys)[:5])}, ...)")
    try:
        tensors = read_tensors(prefix, [k for _, ks in wanted for k in ks], dtypes)
    except (tf.errors.OpError, ValueError) as exc:
        raise VersionLoadError(f"cannot read delta {prefix}: {_first_line(exc)}") from None
    return [(u, u.check_rows(tensors[ks[0]], tensors[ks[1]]) if len(ks) == 2
             else u.check_whole(tensors[ks[0]])) for u, ks in wanted]


def _check_shapes(prefix: str, updaters: dict[str, _VariableUpdater], version: str) -> None:
    """Refuses a full checkpoint whose variables have other shapes than the model's (e.g. one
    written by a different model): the saver's restore assigns resource variables without a
    shape check, so it would load and then fail every request."""
    shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    for name, updater in updaters.items():
        found = shapes.get(name)
        if found is not None and tuple(found) != updater.shape:
            raise VersionLoadError(f"loading {version} failed: variable '{name}' has shape "
                                   f"{list(found)} in its checkpoint but {list(updater.shape)} "
                                   "in the model")


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
