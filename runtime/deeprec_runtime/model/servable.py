"""Servable: one loaded version of the model (graph + session + parameters).

The TensorFlow loader (tf_loader.py) builds it. A Servable runs requests through prepared
callables (no per-call graph lookups or feed_dict handling) and applies later deltas in place
(read and checked by deltas.py). Its read/write gate (core/gate.py) makes a delta atomic for
requests (none sees half the rows of an update) and lets the manager free the version only once
its last request handle is released.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from deeprec_runtime.core.gate import ReadWriteGate
from deeprec_runtime.core.versions import Delta, VersionInfo
from deeprec_runtime.deeprec.loader import EVVersion
from deeprec_runtime.errors import InvalidArgument, Unavailable
from deeprec_runtime.features import ExternalTables
from deeprec_runtime.model.deltas import _VariableUpdater, read_delta
from deeprec_runtime.model.session_group import (
    INLINE,
    GroupPlan,
    SessionGroup,
    plan_group,
)
from deeprec_runtime.model.signature import Signature

if TYPE_CHECKING:
    from deeprec_runtime.model.tf_loader import ImportedGraph
    from deeprec_runtime.timeline import TimelineRecorder

log = logging.getLogger(__name__)


class FastPlan(Protocol):
    """What a version needs of its plan in the native fast path (native/plan.py)."""

    def block(self) -> None: ...
    def unblock(self) -> None: ...
    def close(self) -> None: ...


SERVE_TAGS = ["serve"]


@dataclass(frozen=True)
class SessionOptions:
    """What the loader needs from the config to build sessions."""

    config_proto: config_pb2.ConfigProto
    serve_run_options: config_pb2.RunOptions
    update_run_options: config_pb2.RunOptions
    restore_run_options: config_pb2.RunOptions
    """For restoring a full checkpoint (see GroupPlan.restore_run_options)."""
    plan: GroupPlan | None = None
    """The session group (lanes, pools, cpusets, devices); see session_group.py."""


def session_options_from(cfg) -> SessionOptions:
    """Session settings derived from a ModelConfig: one inter-op pool per lane of the session
    group (pinned to its cpuset), a separate pool for loads and deltas when
    model_update_inter_threads is set (an update never queues behind request kernels), inline
    execution when enable_inline_execute. Raises ConfigError for bad cpusets / gpu_ids_list."""
    plan = plan_group(cfg)
    return SessionOptions(plan.config_proto(), plan.lane_run_options(plan.lanes[0]),
                          plan.update_run_options(), plan.restore_run_options(), plan)


class Servable:
    """One version, ready to serve."""

    def __init__(self, name: str, graph: tf.Graph, session: tf.compat.v1.Session,
                 signatures: dict[str, Signature], options: SessionOptions,
                 updaters: dict[str, _VariableUpdater], version: VersionInfo | None,
                 group: SessionGroup | None = None):
        self.name = name
        self.group = group
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
        self._callables: dict[tuple[int, bool, tuple[str, ...], tuple[str, ...]], Callable] = {}
        #: Lanes that use an inter-op pool run their kernels in the calling thread instead
        #: (chosen at warmup when it costs less CPU; see model/execution.py).
        self.inline = False
        self._callables_lock = threading.Lock()
        self.gate = ReadWriteGate()
        self.closed = False
        #: Embedding tables served from a feature store (features.ExternalTables), or None.
        self.tables: ExternalTables | None = None
        #: DeepRec EmbeddingVariables held in this version's session (deeprec.EVVersion), or None.
        self.ev: EVVersion | None = None
        #: Timeline recorder (timeline.TimelineRecorder), set once the version is warmed up.
        self.tracer: TimelineRecorder | None = None
        #: The imported graph this version runs on (shared by versions of the same SavedModel).
        self.imported: ImportedGraph | None = None
        #: This version's plan in the native fast path (native/plan.py), once made; and
        #: whether it was refused one (then it is served by the Python handler only).
        self.fast_plan: FastPlan | None = None
        self.fast_plan_refused = False
        self._blocked_plan: FastPlan | None = None  # the plan begin_update() blocked

    # --- requests -----------------------------------------------------------------------------
    def signature(self, name: str) -> Signature:
        sig = self.signatures.get(name)
        if sig is None:
            raise InvalidArgument(
                f"unknown signature '{name}'; the model has {', '.join(sorted(self.signatures)) or 'none'}")
        return sig

    def run(self, feed_names: tuple[str, ...], fetch_names: tuple[str, ...],
            arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Runs the graph, first looking up embedding rows held outside the session (they are fed
        in place of the in-graph gathers); traces the run when the timeline asks for it."""
        if self.tables is not None:
            feed_names, arrays = self.tables.feed(self._run, feed_names, arrays)
        tracer = self.tracer
        if tracer is not None:
            step = tracer.claim()
            if step is not None:
                return self._run_traced(tracer, step, feed_names, fetch_names, arrays)
        return self._run(feed_names, fetch_names, arrays)

    def _run_traced(self, tracer: TimelineRecorder, step: int, feed_names: tuple[str, ...],
                    fetch_names: tuple[str, ...],
                    arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        opts = config_pb2.CallableOptions(feed=feed_names, fetch=fetch_names)
        opts.run_options.CopyFrom(tracer.run_options(self._options.serve_run_options))
        metadata = config_pb2.RunMetadata()
        try:
            fn = self.session._make_callable_from_options(opts)  # traces are rare: not cached
            out = fn(*arrays, run_metadata=metadata)
        except tf.errors.InvalidArgumentError as exc:
            raise InvalidArgument(f"the model rejected the inputs: {exc.message.splitlines()[0]}") from None
        try:
            tracer.write(step, metadata)
        except (OSError, ValueError) as exc:
            log.warning("could not write the timeline of request %d: %s", step, exc)
        return out

    def _run(self, feed_names: tuple[str, ...], fetch_names: tuple[str, ...],
             arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Runs the graph on the lane the group's policy picks; the caller holds the gate for
        reading (a ServableHandle, see core/handle.py). TensorFlow releases the GIL while it runs."""
        lane = self.group.select() if self.group is not None else None
        index = lane.index if lane is not None else 0
        inline = self.inline
        fn = self._callables.get((index, inline, feed_names, fetch_names))
        if fn is None:
            fn = self._make_callable(index, feed_names, fetch_names, inline)
        if lane is not None and lane.pins_caller:
            lane.pin_caller()
        try:
            return fn(*arrays)
        except tf.errors.InvalidArgumentError as exc:
            raise InvalidArgument(f"the model rejected the inputs: {exc.message.splitlines()[0]}") from None
        except tf.errors.CancelledError:
            raise Unavailable(f"version {self.name} was unloaded during the request") from None

    def _make_callable(self, lane: int, feed_names: tuple[str, ...],
                       fetch_names: tuple[str, ...], inline: bool = False) -> Callable:
        key = (lane, inline, feed_names, fetch_names)
        with self._callables_lock:
            fn = self._callables.get(key)
            if fn is None:
                opts = self.callable_options(lane, feed_names, fetch_names, inline)
                fn = self.session._make_callable_from_options(opts)
                self._callables[key] = fn
            return fn

    def callable_options(self, lane: int, feed_names: tuple[str, ...],
                         fetch_names: tuple[str, ...],
                         inline: bool = False) -> config_pb2.CallableOptions:
        """What a request's callable on `lane` is made from (the native fast path makes the same
        for the output subsets it is asked for)."""
        opts = config_pb2.CallableOptions(feed=feed_names, fetch=fetch_names)
        opts.run_options.CopyFrom(self.group.lanes[lane].run_options if self.group
                                  else self._options.serve_run_options)
        if inline:
            opts.run_options.inter_op_thread_pool = INLINE
        return opts

    @property
    def can_choose_inline(self) -> bool:
        """Inline execution is a free choice only for CPU lanes that are not bound to cpusets
        (bound lanes keep their pinned pools: that is what `cpusets` asks for) and that do not
        already run inline."""
        return (self.group is not None and not self.group.plan.uses_gpu
                and all(lane.plan.pool != INLINE and lane.plan.cpus is None
                        for lane in self.group.lanes))

    @property
    def num_lanes(self) -> int:
        return len(self.group.lanes) if self.group is not None else 1

    # --- updates ------------------------------------------------------------------------------
    def apply_delta(self, delta: Delta, local_prefix: str) -> None:
        """Applies one incremental checkpoint in place. Everything is read and checked before the
        first variable changes, so a bad delta leaves the servable as it was."""
        updates = (self.ev.read_delta(local_prefix, self._updaters) if self.ev is not None
                   else read_delta(local_prefix, self._updaters))
        if self.tables is not None:
            # Rows of external tables go to the feature store first (a failure there leaves the
            # session untouched, so the whole delta is retried); the rest is applied below.
            updates = self.tables.apply_delta(delta.step, updates)
        workers = self._options.plan.update_workers if self._options.plan else 1
        for updater, args in updates:  # before the gate: requests do not wait for this
            updater.prepare(args[0])
        self.begin_update()
        try:
            if workers > 1 and len(updates) > 1:
                # model_update_intra_threads: variables are independent, so their updates run
                # side by side (each run releases the GIL inside TensorFlow).
                with ThreadPoolExecutor(workers, thread_name_prefix="deeprec-delta") as pool:
                    list(pool.map(lambda u: u[0].apply(u[1]), updates))
            else:
                for updater, args in updates:
                    updater.apply(args)
        finally:
            self.end_update()
        self.delta_step = delta.step
        self.update_time = time.time()

    def begin_update(self) -> None:
        """Waits until no request uses this version and keeps new ones waiting until
        end_update(): requests answered in C++ (the fast plan's) drain first, and new ones take
        the Python path, which waits on the gate, or (the native front end's) wait in C++ for
        end_update()."""
        self._blocked_plan = self.fast_plan
        if self._blocked_plan is not None:
            self._blocked_plan.block()
        self.gate.acquire_write()

    def end_update(self) -> None:
        self.gate.release_write()
        if self._blocked_plan is not None:
            self._blocked_plan.unblock()
            self._blocked_plan = None

    def close(self) -> None:
        """Frees the session once no request uses it (blocks until then)."""
        if self.fast_plan is not None:
            self.fast_plan.close()  # no C++ request may reach the session once it is closed
        self.gate.acquire_write()
        try:
            if not self.closed:
                self.closed = True
                self._callables.clear()
                self.session.close()
                if self.tables is not None:
                    self.tables.close()
        finally:
            self.gate.release_write()
