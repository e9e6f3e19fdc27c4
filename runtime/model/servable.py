"""Loader and servable: one loaded version of the model (graph + session + parameters).

`load_servable` does the heavy work (import the SavedModel graph, restore a full checkpoint, apply
its deltas). A Servable runs requests through prepared callables (no per-call graph lookups or
feed_dict handling) and applies later deltas in place. Its read/write gate makes a delta atomic
for requests (none sees half the rows of an update) and lets the manager free the version only
once its last in-flight request has finished.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.saved_model import loader_impl

from deeprec_runtime.errors import InvalidArgument, ServingError, Unavailable, VersionLoadError
from deeprec_runtime.model.signature import Signature, parse_signatures
from deeprec_runtime.model.source import Delta, VersionInfo

log = logging.getLogger(__name__)

SERVE_TAGS = ["serve"]
SAVEDMODEL_VERSION = "savedmodel"
"""Version name used when no checkpoint_dir is configured: the SavedModel's own variables."""


class ReadWriteGate:
    """Many readers (requests) or one writer (delta apply, unload); writers go first once waiting,
    so an update is never starved by steady traffic."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    def acquire_read(self) -> None:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True

    def release_write(self) -> None:
        with self._cond:
            self._writing = False
            self._cond.notify_all()

    @property
    def readers(self) -> int:
        return self._readers


@dataclass(frozen=True)
class SessionOptions:
    """What the loader needs from the config to build sessions."""

    config_proto: config_pb2.ConfigProto
    serve_run_options: config_pb2.RunOptions
    update_run_options: config_pb2.RunOptions


def session_options_from(cfg) -> SessionOptions:
    """Session settings derived from a ModelConfig: thread pools and where runs execute."""
    proto = config_pb2.ConfigProto(
        inter_op_parallelism_threads=cfg.inter_op_parallelism_threads,
        intra_op_parallelism_threads=cfg.intra_op_parallelism_threads,
        allow_soft_placement=True,
    )
    serve = config_pb2.RunOptions()
    update = config_pb2.RunOptions()
    # Pool 0 serves requests; a separate pool (when configured) runs loads and deltas so that an
    # update never queues behind, or delays, request kernels.
    proto.session_inter_op_thread_pool.add(num_threads=cfg.inter_op_parallelism_threads)
    if cfg.model_update_inter_threads:
        proto.session_inter_op_thread_pool.add(num_threads=cfg.model_update_inter_threads)
        update.inter_op_thread_pool = 1
    if cfg.enable_inline_execute:
        serve.inter_op_thread_pool = -1  # run every kernel in the calling thread
    return SessionOptions(proto, serve, update)


class Servable:
    """One version, ready to serve."""

    def __init__(self, name: str, graph: tf.Graph, session: tf.compat.v1.Session,
                 signatures: dict[str, Signature], options: SessionOptions,
                 updaters: dict[str, "_VariableUpdater"], version: VersionInfo | None):
        self.name = name
        self.graph = graph
        self.session = session
        self.signatures = signatures
        self.version = version
        self.full_step = version.full_step if version else 0
        self.delta_step = 0
        self.load_time = time.time()
        self.update_time = self.load_time
        self._options = options
        self._updaters = updaters
        self._callables: dict[tuple[tuple[str, ...], tuple[str, ...]], Callable] = {}
        self._callables_lock = threading.Lock()
        self.gate = ReadWriteGate()
        self.closed = False

    # --- requests -----------------------------------------------------------------------------
    def signature(self, name: str) -> Signature:
        sig = self.signatures.get(name)
        if sig is None:
            raise InvalidArgument(
                f"unknown signature '{name}'; the model has {', '.join(sorted(self.signatures)) or 'none'}")
        return sig

    def run(self, feed_names: tuple[str, ...], fetch_names: tuple[str, ...],
            arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Runs the graph; the caller holds the gate for reading (see Manager.acquire)."""
        fn = self._callables.get((feed_names, fetch_names))
        if fn is None:
            fn = self._make_callable(feed_names, fetch_names)
        try:
            return fn(*arrays)
        except tf.errors.InvalidArgumentError as exc:
            raise InvalidArgument(f"the model rejected the inputs: {exc.message.splitlines()[0]}") from None
        except tf.errors.CancelledError:
            raise Unavailable(f"version {self.name} was unloaded during the request") from None

    def _make_callable(self, feed_names: tuple[str, ...], fetch_names: tuple[str, ...]) -> Callable:
        with self._callables_lock:
            fn = self._callables.get((feed_names, fetch_names))
            if fn is None:
                opts = config_pb2.CallableOptions(feed=feed_names, fetch=fetch_names)
                opts.run_options.CopyFrom(self._options.serve_run_options)
                fn = self.session._make_callable_from_options(opts)
                self._callables[(feed_names, fetch_names)] = fn
            return fn

    # --- updates ------------------------------------------------------------------------------
    def apply_delta(self, delta: Delta, local_prefix: str) -> None:
        """Applies one incremental checkpoint in place. Everything is read and checked before the
        first variable changes, so a bad delta leaves the servable as it was."""
        updates = read_delta(local_prefix, self._updaters)
        self.gate.acquire_write()
        try:
            for updater, args in updates:
                updater.apply(args)
        finally:
            self.gate.release_write()
        self.delta_step = delta.step
        self.update_time = time.time()

    def close(self) -> None:
        """Frees the session once no request uses it (blocks until then)."""
        self.gate.acquire_write()
        try:
            if not self.closed:
                self.closed = True
                self._callables.clear()
                self.session.close()
        finally:
            self.gate.release_write()


class _VariableUpdater:
    """Prepared assign and scatter-update callables for one variable."""

    def __init__(self, session, variable, run_options: config_pb2.RunOptions):
        self.name = variable.op.name
        self.dtype = variable.dtype.base_dtype
        self.shape = tuple(variable.shape.as_list())
        value = tf.compat.v1.placeholder(self.dtype, self.shape, name=f"deeprec_assign/{self.name}")
        assign = variable.assign(value, read_value=False)
        self._assign = self._callable(session, [value.name], assign.name, run_options)
        self._scatter = None
        if len(self.shape) >= 2:
            ids = tf.compat.v1.placeholder(tf.int64, [None], name=f"deeprec_scatter_ids/{self.name}")
            rows = tf.compat.v1.placeholder(self.dtype, [None, *self.shape[1:]],
                                            name=f"deeprec_scatter_rows/{self.name}")
            scatter = variable.scatter_update(tf.IndexedSlices(rows, ids))
            self._scatter = self._callable(session, [ids.name, rows.name], scatter.op.name, run_options)

    @staticmethod
    def _callable(session, feeds, target, run_options):
        opts = config_pb2.CallableOptions(feed=feeds, target=[target.split(":")[0]])
        opts.run_options.CopyFrom(run_options)
        return session._make_callable_from_options(opts)

    def check_whole(self, value: np.ndarray) -> tuple:
        if tuple(value.shape) != self.shape:
            raise VersionLoadError(
                f"variable '{self.name}' has shape {list(value.shape)} in the delta but "
                f"{list(self.shape)} in the model")
        return ("assign", value)

    def check_rows(self, ids: np.ndarray, rows: np.ndarray) -> tuple:
        if self._scatter is None:
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
        if args[0] == "assign":
            self._assign(args[1])
        else:
            self._scatter(args[1], args[2])


DELTA_IDS = "/delta_ids"
DELTA_VALUES = "/delta_values"


def read_delta(prefix: str, updaters: dict[str, _VariableUpdater]) -> list[tuple[_VariableUpdater, tuple]]:
    """Reads and validates a delta checkpoint (format: docs/checkpoint-format.md)."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        keys = reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as exc:
        raise VersionLoadError(f"cannot read delta {prefix}: {_first_line(exc)}") from None
    plan = []
    try:
        for key in sorted(keys):
            if key.endswith(DELTA_VALUES):
                continue
            if key.endswith(DELTA_IDS):
                var = key[: -len(DELTA_IDS)]
                updater = _updater(updaters, var, prefix)
                if var + DELTA_VALUES not in keys:
                    raise VersionLoadError(f"delta {prefix}: '{var}{DELTA_IDS}' has no '{var}{DELTA_VALUES}'")
                plan.append((updater, updater.check_rows(
                    reader.get_tensor(key), reader.get_tensor(var + DELTA_VALUES))))
            elif key in updaters:
                plan.append((updaters[key], updaters[key].check_whole(reader.get_tensor(key))))
            elif key == "global_step" or key.endswith("/global_step"):
                continue
            else:
                raise VersionLoadError(f"delta {prefix}: variable '{key}' is not in the model")
    except (tf.errors.OpError, IndexError, ValueError, RuntimeError) as exc:
        # The checkpoint reader reports truncated files as IndexError / RuntimeError.
        raise VersionLoadError(f"cannot read delta {prefix}: {_first_line(exc)}") from None
    return plan


def _updater(updaters, var: str, prefix: str) -> _VariableUpdater:
    try:
        return updaters[var]
    except KeyError:
        raise VersionLoadError(f"delta {prefix}: variable '{var}' is not in the model") from None


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__


def load_servable(savedmodel_dir: str, version: VersionInfo | None,
                  localize: Callable[[str], str],
                  options: SessionOptions) -> Servable:
    """Builds a servable: SavedModel graph + the version's full checkpoint (the manager applies
    the deltas, one by one, so that a bad delta does not discard a good full checkpoint).

    `localize` turns a checkpoint prefix on the store into a local one (remote stores fetch).
    Raises VersionLoadError with the reason when anything is missing or inconsistent.
    """
    started = time.monotonic()
    graph = tf.Graph()
    session = None
    try:
        loader = loader_impl.SavedModelLoader(savedmodel_dir)
        with graph.as_default():
            saver, _ = loader.load_graph(graph, SERVE_TAGS)
            session = tf.compat.v1.Session(graph=graph, config=options.config_proto)
            meta = loader.get_meta_graph_def_from_tags(SERVE_TAGS)
            variables = graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
            updaters = {v.op.name: _VariableUpdater(session, v, options.update_run_options)
                        for v in variables}
            if version is None:
                loader.restore_variables(session, saver)
            else:
                if saver is None:
                    raise VersionLoadError("the SavedModel has no saver; cannot restore checkpoints")
                prefix = localize(version.full_prefix)
                session.run(saver.saver_def.restore_op_name,
                            {saver.saver_def.filename_tensor_name: prefix},
                            options=options.update_run_options)
            loader.run_init_ops(session, SERVE_TAGS)
        graph.finalize()
        servable = Servable(version.name if version else SAVEDMODEL_VERSION, graph, session,
                            parse_signatures(meta), options, updaters, version)
    except VersionLoadError:
        if session is not None:
            session.close()
        raise
    except (tf.errors.OpError, OSError, ValueError, RuntimeError, IndexError, ServingError) as exc:
        if session is not None:
            session.close()
        what = version.name if version else savedmodel_dir
        raise VersionLoadError(f"loading {what} failed: {_first_line(exc)}") from None
    log.info("loaded version %s (full step %d, delta step %d) in %.2fs", servable.name,
             servable.full_step, servable.delta_step, time.monotonic() - started)
    return servable
