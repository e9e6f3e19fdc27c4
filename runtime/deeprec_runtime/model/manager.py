"""Manager: keeps the aspired version serving.

Each poll it reads the target version (pod annotation), scans the store, asks the policy what to
do and does it on its own update thread: load + warm up + atomic swap for a new full version,
in-place deltas for the serving one, an instant swap back to the retained previous version for a
rollback. Requests hold the serving version through `acquire()`; an old version is closed only
after its last request has released it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.config import ModelConfig
from deeprec_runtime.errors import NotFound, Unavailable, VersionLoadError
from deeprec_runtime.features import StoreUnavailable, open_feature_store
from deeprec_runtime.model import policy
from deeprec_runtime.model.annotations import TARGET_VERSION_ANNOTATION, read_target_version
from deeprec_runtime.model.custom_ops import load_custom_ops
from deeprec_runtime.model.load_thread import LoadThread
from deeprec_runtime.model.servable import (
    ImportedGraph,
    Servable,
    load_servable,
    session_options_from,
)
from deeprec_runtime.model.source import VersionInfo, VersionSource
from deeprec_runtime.model.warmup import load_warmup_request, warm_up
from deeprec_runtime.store.base import ModelStore, StoreError, open_store
from deeprec_runtime.timeline import TimelineRecorder

log = logging.getLogger(__name__)

#: How long stop() waits for the update thread to finish its current step (one delta, one
#: restore or warmup) before giving up on closing the versions.
STOP_WAIT_SECONDS = 60.0


@dataclass
class UpdateEvent:
    """What happened in one update; handed to listeners (metrics, logs, tests)."""

    kind: str  # "load", "delta", "swap_back", "unload"
    version: str
    ok: bool
    seconds: float
    error: str = ""


class Manager:
    def __init__(self, config: ModelConfig, annotations_file: str | None = None,
                 store: ModelStore | None = None,
                 annotation_key: str = TARGET_VERSION_ANNOTATION):
        self.config = config
        self.annotations_file = annotations_file
        #: The pod annotation that pins this model's version (see model/annotations.py).
        self.annotation_key = annotation_key
        load_custom_ops(config.custom_op_paths)  # before any graph that may use them is imported
        self.store = store or open_store(config)
        self.source = VersionSource(self.store, config.checkpoint_dir) if config.checkpoint_dir else None
        self._options = session_options_from(config)
        #: (graph fingerprint, inline?) of the last version whose execution mode was chosen.
        self._execution_choice: tuple[str, bool] | None = None
        #: The graph of the last version loaded: the next one reuses it if the SavedModel is the
        #: same (only the parameters differ).
        self._imported: ImportedGraph | None = None
        #: Restores and warmups of new versions run here, at a lower CPU priority than requests.
        self.load_thread = LoadThread()
        #: Where embedding rows live when not in the session (Redis, DRAM+SSD tiers), or None.
        self.features = open_feature_store(config)
        self.tracer = TimelineRecorder.from_config(config, getattr(self.store, "write_bytes", None))
        self.warmup_request = (load_warmup_request(config.warmup_file_name)
                               if config.warmup_file_name else None)
        self._lock = threading.Lock()  # guards _current/_previous/_status
        self._current: Servable | None = None
        self._previous: Servable | None = None
        self._failed: set[tuple[str, int, float]] = set()
        self._status: dict[str, pb.VersionStatus] = {}
        self._known: list[VersionInfo] = []
        self.target = "latest"
        self.last_error = ""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.listeners: list[Callable[[UpdateEvent], None]] = []
        #: Told of a newly loaded version just before it is swapped in, then of every change of
        #: the serving version (None at stop) right after it happens: the native fast path makes
        #: and checks the version's plan first, so that publishing it at the swap costs nothing
        #: (native/fast_predict.py).
        self.before_serving: Callable[[Servable], object] | None = None
        self.on_serving: Callable[[Servable | None], None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="deeprec-update", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def stop_updates(self) -> None:
        """Asks the update thread to finish the step it is in and take no other; the serving
        version keeps answering requests (a pod draining after SIGTERM loads nothing new)."""
        if not self._stop.is_set():
            log.info("updates stopped: no delta or version is taken from now on")
        self._stop.set()
        self._wake.set()

    def stop(self) -> None:
        """Stops the update thread, then closes every version. The thread finishes the step it is
        in (one delta, one restore) and takes no other; versions are closed only once it has
        ended, because a delta or a warmup running on a closed session (or on a closed native
        plan) is a use of freed memory. If it does not end within STOP_WAIT_SECONDS (a store call
        that hangs), the versions are left open: a leak at exit instead of a crash."""
        self.stop_updates()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_WAIT_SECONDS)
            if self._thread.is_alive():
                log.error("the update thread did not stop within %.0f s; leaving the loaded "
                          "versions open", STOP_WAIT_SECONDS)
                return
        self.load_thread.close()
        with self._lock:
            servables = [s for s in (self._current, self._previous) if s]
            self._current = self._previous = None
        self._serving_changed(None)
        for s in servables:
            s.close()
        if self.features is not None:
            self.features.close()

    def poll_now(self) -> None:
        """Asks the update thread to poll at once (e.g. after the annotations file changed)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the update thread must survive anything a store or TF throws
                log.exception("update poll failed")
            self._wake.wait(self.config.update_poll_seconds)
            self._wake.clear()

    # --- requests -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def serving(self) -> Iterator[Servable]:
        """The serving version, held for the duration of one request."""
        servable = self.acquire()
        try:
            yield servable
        finally:
            servable.gate.release_read()

    def acquire(self, version: str | None = None) -> Servable:
        """The serving version, or the loaded version named `version` (the serving one or the
        retained previous one); NotFound when that version is not loaded."""
        while True:
            current = self._current
            if current is None:
                raise Unavailable("no model version is loaded yet"
                                  + (f" (last error: {self.last_error})" if self.last_error else ""))
            servable = current
            if version is not None and current.name != version:
                previous = self._previous
                if previous is None or previous.name != version:
                    raise NotFound(f"version '{version}' is not loaded; serving '{current.name}'")
                servable = previous
            servable.gate.acquire_read()
            if not servable.closed:
                return servable
            servable.gate.release_read()  # swapped out and closed meanwhile: take the new one

    def release(self, servable: Servable) -> None:
        servable.gate.release_read()

    def loaded(self) -> list[Servable]:
        """The loaded versions: the serving one first, then the retained previous one."""
        with self._lock:
            return [s for s in (self._current, self._previous) if s is not None]

    @property
    def known_versions(self) -> list[VersionInfo]:
        """Every version found by the last scan of checkpoint_dir, newest first."""
        return list(self._known)

    # --- the update loop ----------------------------------------------------------------------
    def poll_once(self) -> None:
        self.target = read_target_version(self.annotations_file, self.annotation_key)
        if self.source is None:
            if self._current is None or self._rows_lost():
                self._load(None)
            return
        versions, bad = self.source.scan()
        self._known = versions
        if self._rows_lost():
            # The feature store lost the serving version's rows (Redis restarted empty): load it
            # again, which imports the rows again (one replica does, the others wait and bind).
            current = self._current
            again = next((v for v in versions if current and v.name == current.name), None)
            if again is not None:
                log.warning("embedding rows of %s are gone from the feature store; importing again",
                            again.name)
                self._load(again)
                return
        for b in bad:
            known = self._status.get(b.name)
            if known is None or known.error != b.reason:  # once per reason, not once per poll
                self._record_error(f"version {b.name} cannot be served: {b.reason}")
                self._emit(UpdateEvent("load", b.name, False, 0.0, b.reason))
            self._set_status(b.name, 0, 0, "ERROR", b.reason)
        action = policy.next_action(versions, self.target, self._loaded_state(self._current),
                                    self._loaded_state(self._previous), self._failed)
        if isinstance(action, policy.Load):
            self._load(action.version)
        elif isinstance(action, policy.SwapBack):
            self._swap_back(action.version)
        elif isinstance(action, policy.ApplyDeltas):
            self._apply_deltas(self._current, action.version)
        elif isinstance(action, policy.Missing):
            self._record_error(f"target version '{action.target}' does not exist in "
                               f"{self.config.checkpoint_dir}")

    def _rows_lost(self) -> bool:
        current = self._current
        return bool(current is not None and current.tables is not None and current.tables.rows.lost())

    @staticmethod
    def _loaded_state(s: Servable | None) -> policy.LoadedState | None:
        if s is None:
            return None
        return policy.LoadedState(s.name, s.full_step, s.delta_step,
                                  s.version.mtime if s.version else 0.0)

    def _load(self, version: VersionInfo | None) -> None:
        name = version.name if version else "savedmodel"
        started = time.monotonic()
        if version:
            self._set_status(name, version.full_step, version.delta_step, "LOADING", "")
        try:
            # Fetch before building anything: a store outage or a half-uploaded version is
            # retried on the next poll instead of marking the version as failed.
            savedmodel_dir = self.store.localize_tree(self.config.savedmodel_dir)
            if version:
                self.store.localize_checkpoint(version.full_prefix)
        except StoreError as exc:
            if version:
                self._set_status(name, version.full_step, version.delta_step, "LOADING", str(exc))
            self._record_error(str(exc))
            self._emit(UpdateEvent("load", name, False, time.monotonic() - started, str(exc)))
            return
        except PermissionError as exc:  # its files lead outside the store (a symlink): final
            if version:
                self._failed.add(policy.load_key(version))
                self._set_status(name, version.full_step, version.delta_step, "ERROR", str(exc))
            self._record_error(str(exc))
            self._emit(UpdateEvent("load", name, False, time.monotonic() - started, str(exc)))
            return
        try:
            servable = load_servable(savedmodel_dir, version,
                                     self.store.localize_checkpoint, self._options, self.features,
                                     self._imported, self.load_thread.run)
            if version:
                self._apply_deltas(servable, version)
            try:
                graph = servable.imported.fingerprint if servable.imported else ""
                memo = self._execution_choice
                known = memo[1] if memo and memo[0] == graph else None
                warm = functools.partial(warm_up, servable, self.config.signature_name,
                                         self.warmup_request, self.config.warmup_iterations,
                                         known_inline=known)
                # A first version of a graph measures inline against pool execution, which must
                # not run at a lower priority than the pool's threads: that one warms up here.
                inline = warm() if known is None else self.load_thread.run(warm)
                if inline is not None:
                    self._execution_choice = (graph, inline)
            except VersionLoadError:
                servable.close()
                raise
        except VersionLoadError as exc:
            if version and not isinstance(exc, StoreUnavailable):  # an outage is retried
                self._failed.add(policy.load_key(version))
                self._set_status(name, version.full_step, version.delta_step, "ERROR", str(exc))
            self._record_error(str(exc))
            self._emit(UpdateEvent("load", name, False, time.monotonic() - started, str(exc)))
            return
        if self._stop.is_set():  # stopping: never publish a version nobody will close
            servable.close()
            return
        servable.tracer = self.tracer  # after warmup: timeline steps count real requests only
        self._imported = servable.imported
        self._swap_in(servable)
        self.last_error = ""
        self._emit(UpdateEvent("load", name, True, time.monotonic() - started))

    def _swap_in(self, servable: Servable) -> None:
        self._tell(self.before_serving, servable)
        with self._lock:
            old_current, old_previous = self._current, self._previous
            self._current = servable
            self._previous = old_current if self.config.retain_previous_version else None
        self._serving_changed(servable)
        self._set_status(servable.name, servable.full_step, servable.delta_step, "SERVING", "")
        if old_current is not None:
            self._set_status(old_current.name, old_current.full_step, old_current.delta_step,
                             "AVAILABLE" if self._previous is old_current else "UNLOADING", "")
        for retired in (old_previous, None if self._previous is old_current else old_current):
            if retired is not None and retired is not servable:
                self._retire(retired)
        self._ready.set()
        self._free_cached_files()
        log.info("now serving %s (full step %d, delta step %d)", servable.name,
                 servable.full_step, servable.delta_step)

    def _serving_changed(self, servable: Servable | None) -> None:
        self._tell(self.on_serving, servable)

    @staticmethod
    def _tell(hook: Callable | None, servable: Servable | None) -> None:
        if hook is None:
            return
        try:
            hook(servable)
        except Exception:  # the fast path is an optimisation: Python serves without it
            log.exception("fast path of %s", servable.name if servable else "no version")

    def _free_cached_files(self) -> None:
        """Remote stores drop local copies of versions that are neither serving nor retained."""
        keep = [self.config.savedmodel_dir] + [s.version.path for s in (self._current, self._previous)
                                               if s is not None and s.version is not None]
        try:
            self.store.retain(keep)
        except OSError as exc:
            log.warning("could not free cached model files: %s", exc)

    def _swap_back(self, version: VersionInfo) -> None:
        started = time.monotonic()
        with self._lock:
            back, self._previous, self._current = self._previous, self._current, self._previous
        if back is None:  # the policy asks for a swap back only with a retained version
            raise RuntimeError("swap back without a retained previous version")
        self._serving_changed(back)
        self._set_status(back.name, back.full_step, back.delta_step, "SERVING", "")
        if self._previous is not None:
            p = self._previous
            self._set_status(p.name, p.full_step, p.delta_step, "AVAILABLE", "")
        log.info("rolled back to retained version %s", back.name)
        self._emit(UpdateEvent("swap_back", back.name, True, time.monotonic() - started))
        self._apply_deltas(back, version)

    def _apply_deltas(self, servable: Servable | None, version: VersionInfo) -> None:
        if servable is None:
            return
        state = "SERVING" if servable is self._current else "LOADING"
        # Deltas are cumulative since the full checkpoint (DeepRec's incremental checkpoints):
        # the latest one holds every change, so a backlog is one apply, and a delta that
        # failed is superseded by the next one written.
        for delta in version.deltas_after(servable.delta_step)[-1:]:
            if self._stop.is_set():  # a backlog of deltas must not hold up shutdown
                return
            started = time.monotonic()
            try:
                servable.apply_delta(delta, self.store.localize_checkpoint(delta.prefix))
            except (VersionLoadError, StoreError, PermissionError) as exc:
                # Stop at the first bad delta: later ones build on it. It is retried next poll,
                # which also covers a delta that was still being copied.
                self._set_status(servable.name, servable.full_step, servable.delta_step,
                                 state, str(exc))
                self._record_error(str(exc))
                self._emit(UpdateEvent("delta", servable.name, False, time.monotonic() - started, str(exc)))
                return
            self.last_error = ""
            self._set_status(servable.name, servable.full_step, servable.delta_step, state, "")
            self._emit(UpdateEvent("delta", servable.name, True, time.monotonic() - started))
            log.info("applied delta %d to %s in %.3fs", delta.step, servable.name,
                     time.monotonic() - started)

    def _retire(self, servable: Servable) -> None:
        def close() -> None:
            started = time.monotonic()
            servable.close()
            self._set_status(servable.name, servable.full_step, servable.delta_step, "END", "")
            self._emit(UpdateEvent("unload", servable.name, True, time.monotonic() - started))
            log.info("unloaded %s", servable.name)

        threading.Thread(target=close, name=f"deeprec-unload-{servable.name}", daemon=True).start()

    # --- status -------------------------------------------------------------------------------
    def _record_error(self, message: str) -> None:
        if message != self.last_error:
            log.error("update failed, still serving %s: %s",
                      self._current.name if self._current else "nothing", message)
        self.last_error = message

    def _set_status(self, name: str, full: int, delta: int, state: str, error: str) -> None:
        with self._lock:
            self._status[name] = pb.VersionStatus(name=name, full_step=full, delta_step=delta,
                                                  state=state, error=error)

    def _emit(self, event: UpdateEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("update listener failed")

    def info(self) -> pb.ServingModelInfo:
        with self._lock:
            current = self._current
            statuses = dict(self._status)
        info = pb.ServingModelInfo(
            model_path=(current.version.path if current and current.version
                        else self.config.savedmodel_dir),
            target_version=self.target, last_update_error=self.last_error,
            signature_name=self.config.signature_name)
        if current is not None:
            info.version = current.name
            info.full_step = current.full_step
            info.delta_step = current.delta_step
            info.load_time = current.load_time
            info.update_time = current.update_time
        order = [v.name for v in self._known]
        for name in order + sorted(set(statuses) - set(order)):
            if name in statuses:
                info.versions.append(statuses[name])
            else:
                v = next(x for x in self._known if x.name == name)
                info.versions.append(pb.VersionStatus(name=name, full_step=v.full_step,
                                                      delta_step=v.delta_step, state="NEW"))
        return info
