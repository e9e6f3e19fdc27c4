"""The helper training code calls to write full and incremental checkpoints for live serving.

Example::

    writer = CheckpointWriter(sess, "/data/ckpt", "checkpoint_1", [embedding_var])
    writer.save_full(step=0)
    for step in range(1, 1001):
        sess.run(train_op, feed)
        writer.record_touched(embedding_var, feed[ids_placeholder])
        if step % 100 == 0:
            writer.save_delta(step)          # seconds later the server serves it

Format: docs/checkpoint-format.md, which is DeepRec's: stock TensorFlow has no incremental saver,
so this writer produces what DeepRec's does for normal variables (`incremental_include_normal_var`):
per embedding table the rows changed since the full checkpoint (`V-sparse_incr_keys`,
`V-sparse_incr_values`), plus the dense variables whole. Each delta is cumulative, so a server
needs only the latest one on top of the full checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from . import bundle
from .format import (
    DELTA_DIRNAME,
    DELTA_INDEX_RE,
    DELTA_KEYS_SUFFIX,
    DELTA_VALUES_SUFFIX,
    FULL_INDEX_RE,
    STATE_FILENAME,
    TEMP_PREFIX,
    delta_prefix_name,
    full_prefix_name,
)

tf1 = tf.compat.v1

VariableLike: TypeAlias = tf.Variable | str


def variable_name(var: Any) -> str:
    """The name a variable has in checkpoints: its graph op name, without ``:0``."""
    if isinstance(var, str):
        return var[:-2] if var.endswith(":0") else var
    return var.op.name


@contextlib.contextmanager
def _quiet_deprecation():
    from tensorflow.python.util import deprecation

    with deprecation.silence():
        yield


def _update_state(folder: str, latest: str, all_paths: Sequence[str]) -> None:
    # Relative basenames: the version folder stays valid when copied to OSS / HDFS.
    # update_checkpoint_state writes through a temporary file and a rename (atomic).
    # The TF1 helper is deprecated only in favour of tf.train.CheckpointManager, which cannot write
    # the state file of a TF1 Saver's checkpoints; it stays the right tool here.
    with _quiet_deprecation():
        tf1.train.update_checkpoint_state(folder, latest, list(all_paths))


def _read_state(folder: str) -> list[str]:
    if not tf.io.gfile.exists(os.path.join(folder, STATE_FILENAME)):
        return []
    state = tf1.train.get_checkpoint_state(folder)
    if state is None:
        return []
    return [os.path.basename(p) for p in state.all_model_checkpoint_paths]


def _highest_step(*folders: str) -> int | None:
    steps = []
    for folder in folders:
        if not tf.io.gfile.isdir(folder):
            continue
        for name in tf.io.gfile.listdir(folder):
            m = FULL_INDEX_RE.match(name) or DELTA_INDEX_RE.match(name)
            if m:
                steps.append(int(m.group(1)))
    return max(steps) if steps else None


class _Table:
    """One registered embedding variable and what the writer knows about it."""

    def __init__(self, var: tf.Variable, graph: tf.Graph):
        self.var = var
        self.name = variable_name(var)
        shape = var.shape
        if shape.rank != 2 or shape[0] is None or shape[1] is None:
            raise ValueError(
                f"embedding variable '{self.name}' must be 2-D with a known shape, got {shape}"
            )
        self.rows = int(shape[0])
        self.dtype = var.dtype.base_dtype.as_numpy_dtype
        #: Ids recorded since the full save (deltas are cumulative since then).
        self.touched: list[np.ndarray] = []
        # The rows as of the full save: a delta holds every row that differs from them.
        self.snapshot: np.ndarray | None = None
        self.ids_ph = self.gather = None
        if not graph.finalized:
            # Reading only the touched rows keeps a 1 % delta of a big table cheap. In a
            # finalized graph we fall back to reading the whole table.
            with graph.as_default(), tf1.name_scope(None):
                with tf1.name_scope(f"{self.name}/_delta_writer"):
                    self.ids_ph = tf1.placeholder(tf.int64, [None], name="ids")
                    self.gather = tf.gather(var, self.ids_ph, name="rows")


class CheckpointWriter:
    """Writes ``<checkpoint_dir>/<version_name>/`` full checkpoints and deltas, and SavedModels.

    ``embedding_variables``: the 2-D variables read with gather whose changed rows go into deltas
    (variables or graph names). ``dense_variables``: written whole in every delta; default = the
    graph's trainable variables that are not embeddings. A full checkpoint holds every global
    variable of the graph (plus anything registered), so training can resume from it too.

    ``diff_fallback`` (default True) keeps a copy of each embedding table as of the full save, so
    a table for which no ids were recorded is diffed instead; turn it off to save that memory
    when every change is recorded with :meth:`record_touched`.

    Not thread-safe against training: call the save methods between training steps.
    """

    def __init__(
        self,
        session: tf.compat.v1.Session,
        checkpoint_dir: str,
        version_name: str,
        embedding_variables: Iterable[VariableLike],
        dense_variables: Iterable[VariableLike] | None = None,
        *,
        diff_fallback: bool = True,
    ):
        self.session = session
        self.graph = session.graph
        self.checkpoint_dir = checkpoint_dir
        self.diff_fallback = diff_fallback
        self._lock = threading.Lock()
        with self.graph.as_default():
            global_vars = tf1.global_variables()
            trainable = tf1.trainable_variables()
        by_name = {variable_name(v): v for v in global_vars}

        def resolve(v: VariableLike) -> tf.Variable:
            if isinstance(v, str):
                name = variable_name(v)
                if name not in by_name:
                    raise ValueError(
                        f"no global variable named '{name}' in the session's graph; "
                        f"known: {sorted(by_name)[:20]}"
                    )
                return by_name[name]
            return v

        self._tables: dict[str, _Table] = {}
        for v in embedding_variables:
            t = _Table(resolve(v), self.graph)
            self._tables[t.name] = t
        if not self._tables:
            raise ValueError("embedding_variables is empty: register at least one embedding table")
        if dense_variables is None:
            dense = [v for v in trainable if variable_name(v) not in self._tables]
        else:
            dense = [resolve(v) for v in dense_variables]
        self._dense = {variable_name(v): v for v in dense}
        overlap = set(self._dense) & set(self._tables)
        if overlap:
            raise ValueError(f"variables both embedding and dense: {sorted(overlap)}")
        full = dict(by_name)
        full.update({n: t.var for n, t in self._tables.items()})
        full.update(self._dense)
        self._full_vars = dict(sorted(full.items()))
        self.start_version(version_name)

    # -- versions ---------------------------------------------------------------------------

    def start_version(self, version_name: str) -> None:
        """Switches to a new version folder (e.g. ``checkpoint_2``); the next save must be full."""
        if not version_name or "/" in version_name or version_name.startswith("."):
            raise ValueError(f"version_name must be a plain folder name, got '{version_name}'")
        self.version_name = version_name
        self.version_dir = os.path.join(self.checkpoint_dir, version_name)
        self.delta_dir = os.path.join(self.version_dir, DELTA_DIRNAME)
        tf.io.gfile.makedirs(self.version_dir)
        self._fulls = _read_state(self.version_dir)
        self._deltas: list[str] = []
        self._last_step: int | None = None
        self._full_step: int | None = None
        # A restarted trainer may reopen a folder: never reuse (and so overwrite) a step that a
        # server may be reading.
        self._floor_step = _highest_step(self.version_dir, self.delta_dir)

    @property
    def last_step(self) -> int | None:
        """Step of the last save (full or delta) in the current version, None before the first."""
        return self._last_step

    # -- recording --------------------------------------------------------------------------

    def record_touched(self, variable: VariableLike, ids: Any) -> None:
        """Notes that a training step may have changed rows ``ids`` of embedding ``variable``."""
        name = variable_name(variable)
        table = self._tables.get(name)
        if table is None:
            raise ValueError(
                f"'{name}' is not a registered embedding variable; registered: {sorted(self._tables)}"
            )
        arr = np.asarray(ids)
        if arr.size == 0:
            return
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"ids for '{name}' must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False).ravel()
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= table.rows:
            raise ValueError(f"ids for '{name}' must be in [0, {table.rows}), got [{lo}, {hi}]")
        with self._lock:
            table.touched.append(arr.copy())

    # -- saving -----------------------------------------------------------------------------

    def _check_step(self, step: int) -> int:
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(
                f"step must increase: {step} <= last saved step {self._last_step} "
                f"in version '{self.version_name}'"
            )
        if self._floor_step is not None and step <= self._floor_step:
            raise ValueError(
                f"step must increase: {step} <= step {self._floor_step} already on disk "
                f"in version '{self.version_name}'"
            )
        return step

    def save_full(self, step: int) -> str:
        """Writes ``<version>/model.ckpt-<step>`` with every variable; returns its prefix."""
        with self._lock:
            step = self._check_step(step)
            names = list(self._full_vars)
            values = self.session.run([self._full_vars[n] for n in names])
            tensors = dict(zip(names, values, strict=True))
            prefix = os.path.join(self.version_dir, full_prefix_name(step))
            bundle.write_bundle(prefix, tensors)
            base = os.path.basename(prefix)
            self._fulls = [p for p in self._fulls if p != base] + [base]
            _update_state(self.version_dir, base, self._fulls)
            for name, table in self._tables.items():
                table.touched.clear()
                if self.diff_fallback:
                    # Own copy: a fetched ref-variable value may alias the live buffer.
                    table.snapshot = np.array(tensors[name], copy=True)
            self._deltas = []
            self._last_step = self._full_step = step
            return prefix

    def save_delta(self, step: int) -> str:
        """Writes ``<version>/.incremental_checkpoint/incremental_model.ckpt-<step>``.

        Holds, per embedding table, the rows changed since the full save (DeepRec's cumulative
        deltas: the latest one alone brings a server from the full checkpoint to now): the ids
        recorded since then when any were recorded, else (with ``diff_fallback``) the rows that
        differ from the full save; and every dense variable whole. Returns the prefix.
        """
        with self._lock:
            if self._full_step is None:
                raise ValueError(
                    f"version '{self.version_name}' has no full checkpoint from this writer yet: "
                    "call save_full first"
                )
            step = self._check_step(step)
            tensors: dict[str, np.ndarray] = {}
            for table in self._tables.values():
                # Every table is written, with no rows when none changed, as DeepRec's
                # incremental saver writes every sparse variable it records.
                ids, rows = self._changed_rows(table)
                tensors[table.name + DELTA_KEYS_SUFFIX] = ids
                tensors[table.name + DELTA_VALUES_SUFFIX] = rows
            if self._dense:
                dnames = list(self._dense)
                for n, v in zip(dnames, self.session.run([self._dense[n] for n in dnames]), strict=True):
                    tensors[n] = v
            tf.io.gfile.makedirs(self.delta_dir)
            prefix = os.path.join(self.delta_dir, delta_prefix_name(step))
            bundle.write_bundle(prefix, tensors)
            base = os.path.basename(prefix)
            self._deltas.append(base)
            _update_state(self.delta_dir, base, self._deltas)
            self._last_step = step
            return prefix

    def _changed_rows(self, table: _Table) -> tuple[np.ndarray, np.ndarray]:
        if table.touched:
            ids = np.unique(np.concatenate(table.touched))
            table.touched = [ids]  # kept (deduplicated) for the next cumulative delta
            if table.gather is not None:
                rows = self.session.run(table.gather, {table.ids_ph: ids})
            else:
                rows = self.session.run(table.var)[ids]
            return ids, np.asarray(rows, dtype=table.dtype)
        if table.snapshot is None:
            return np.zeros([0], np.int64), np.zeros([0, table.var.shape[1]], table.dtype)
        current = self.session.run(table.var)
        changed = np.flatnonzero(np.any(current != table.snapshot, axis=1))
        ids = changed.astype(np.int64)
        return ids, np.array(current[ids], dtype=table.dtype)

    # -- export -----------------------------------------------------------------------------

    def export_saved_model(
        self,
        export_dir: str,
        inputs: Mapping[str, tf.Tensor],
        outputs: Mapping[str, tf.Tensor],
        signature_name: str = "serving_default",
    ) -> str:
        """Exports the session's graph and current variables as a SavedModel (tag ``serve``).

        Written to a temporary sibling folder and renamed into place, so a server never reads a
        half-written SavedModel. ``export_dir`` must not exist yet. Needs a graph that is not
        finalized (the builder adds its saver ops).
        """
        return export_saved_model(self.session, export_dir, inputs, outputs, signature_name)


def _tensor_info(t: tf.Tensor) -> meta_graph_pb2.TensorInfo:
    # By hand: predict_signature_def logs a deprecation warning on every process start.
    return meta_graph_pb2.TensorInfo(
        name=t.name, dtype=t.dtype.as_datatype_enum, tensor_shape=t.shape.as_proto()
    )


def export_saved_model(
    session: tf.compat.v1.Session,
    export_dir: str,
    inputs: Mapping[str, tf.Tensor],
    outputs: Mapping[str, tf.Tensor],
    signature_name: str = "serving_default",
) -> str:
    """See :meth:`CheckpointWriter.export_saved_model`."""
    if tf.io.gfile.exists(export_dir):
        raise FileExistsError(f"SavedModel export_dir already exists: {export_dir}")
    if not inputs or not outputs:
        raise ValueError("a serving signature needs at least one input and one output")
    parent, base = os.path.split(os.path.normpath(export_dir))
    tmp = os.path.join(parent, f"{TEMP_PREFIX}{base}-{uuid.uuid4().hex[:12]}")
    signature = meta_graph_pb2.SignatureDef(
        inputs={k: _tensor_info(t) for k, t in inputs.items()},
        outputs={k: _tensor_info(t) for k, t in outputs.items()},
        method_name=tf1.saved_model.signature_constants.PREDICT_METHOD_NAME,
    )
    with session.graph.as_default():
        builder = tf1.saved_model.Builder(tmp)
        try:
            builder.add_meta_graph_and_variables(
                session,
                [tf1.saved_model.tag_constants.SERVING],
                signature_def_map={signature_name: signature},
                clear_devices=True,
                strip_default_attrs=True,
            )
            builder.save()
            tf.io.gfile.rename(tmp, export_dir)
        except BaseException:
            if tf.io.gfile.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    return export_dir
