"""The manager: keeps the aspired version serving, through a Loader.

Each poll it reads the target (latest, or a pinned version name), asks the source for the versions,
asks the policy what to do and does it on its own update thread: load + deltas + warmup + atomic
swap for a new full version, deltas in place on the serving one, an instant swap back to the
retained previous version for a rollback. A version that fails to load leaves the serving one in
place; it is tried again when its folder changes (LoadError) or on the next poll
(TransientLoadError). Requests hold a version only through `hold()`; a replaced version is
unloaded only after its last handle has been released.

Every state change is published on `states`, every update's outcome on `updates`; `prepare` is told
of a loaded version just before it serves, `serving` of every change of the serving version (None
at stop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic

from deeprec_runtime.core import policy
from deeprec_runtime.core.events import Topic
from deeprec_runtime.core.handle import ServableHandle
from deeprec_runtime.core.loader import Loader, LoadError, S, TransientLoadError
from deeprec_runtime.core.source import Source
from deeprec_runtime.core.states import StateEvent, UpdateEvent, UpdateKind, VersionState
from deeprec_runtime.core.versions import SAVEDMODEL_VERSION, VersionInfo

log = logging.getLogger(__name__)

#: How long stop() waits for the update thread to finish its current step (one delta, one
#: restore or warmup) before giving up on closing the versions.
STOP_WAIT_SECONDS = 60.0


class NoVersionServing(LookupError):
    """No version is loaded yet."""


class VersionNotLoaded(LookupError):
    """The version a request names is neither serving nor retained."""


class Manager(Generic[S]):
    #: See STOP_WAIT_SECONDS.
    stop_wait_seconds = STOP_WAIT_SECONDS

    def __init__(self, loader: Loader[S], source: Source | None,
                 target: Callable[[], str] = lambda: policy.LATEST,
                 poll_seconds: float = 1.0, retain_previous: bool = True, where: str = ""):
        self.loader = loader
        self.source = source
        #: Where the source looks (checkpoint_dir), for messages.
        self.where = where
        self._read_target = target
        self.poll_seconds = poll_seconds
        self.retain_previous = retain_previous
        self._lock = threading.Lock()  # guards _current/_previous/_status
        self._current: S | None = None
        self._previous: S | None = None
        self._failed: set[tuple[str, int, float]] = set()
        self._status: dict[str, StateEvent] = {}
        self._known: list[VersionInfo] = []
        self.target = policy.LATEST
        self.last_error = ""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.states: Topic[StateEvent] = Topic("version state")
        self.updates: Topic[UpdateEvent] = Topic("update")
        self.prepare: Topic[S] = Topic("prepare")
        self.serving: Topic[S | None] = Topic("serving")
        self.states.subscribe(self._record_state)

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
        plan) is a use of freed memory. If it does not end within stop_wait_seconds (a store call
        that hangs), the versions are left open: a leak at exit instead of a crash."""
        self.stop_updates()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.stop_wait_seconds)
            if self._thread.is_alive():
                log.error("the update thread did not stop within %.0f s; leaving the loaded "
                          "versions open", self.stop_wait_seconds)
                return
        with self._lock:
            servables = [s for s in (self._current, self._previous) if s]
            self._current = self._previous = None
        self.serving.publish(None)
        for s in servables:
            self.loader.unload(s)
        self.loader.close()

    def poll_now(self) -> None:
        """Asks the update thread to poll at once (e.g. after the annotations file changed)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the update thread must survive anything a store or a loader throws
                log.exception("update poll failed")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    # --- requests -----------------------------------------------------------------------------
    def hold(self, version: str | None = None) -> ServableHandle[S]:
        """A handle on the serving version, or on the loaded version named `version` (the serving
        one or the retained previous one), for one request:

            with manager.hold() as handle:
                handle.servable.run(...)

        Entering raises when no version is loaded yet, or when `version` is not loaded."""
        return ServableHandle(lambda: self._acquire(version))

    def _acquire(self, version: str | None) -> S:
        while True:
            current = self._current
            if current is None:
                raise self._nothing_serving(
                    "no model version is loaded yet"
                    + (f" (last error: {self.last_error})" if self.last_error else ""))
            servable = current
            if version is not None and current.name != version:
                previous = self._previous
                if previous is None or previous.name != version:
                    raise self._not_loaded(f"version '{version}' is not loaded; "
                                           f"serving '{current.name}'")
                servable = previous
            servable.gate.acquire_read()
            if not servable.closed:
                return servable
            servable.gate.release_read()  # swapped out and closed meanwhile: take the new one

    def _nothing_serving(self, message: str) -> Exception:
        """The exception a request gets while no version is loaded (subclasses pick theirs)."""
        return NoVersionServing(message)

    def _not_loaded(self, message: str) -> Exception:
        """The exception a request gets for a version that is not loaded."""
        return VersionNotLoaded(message)

    def loaded(self) -> list[S]:
        """The loaded versions: the serving one first, then the retained previous one."""
        with self._lock:
            return [s for s in (self._current, self._previous) if s is not None]

    @property
    def known_versions(self) -> list[VersionInfo]:
        """Every version found by the last scan of the source, newest first."""
        return list(self._known)

    def snapshot(self) -> tuple[S | None, dict[str, StateEvent]]:
        """The serving version and the last state of every version, taken together."""
        with self._lock:
            return self._current, dict(self._status)

    # --- the update loop ----------------------------------------------------------------------
    def poll_once(self) -> None:
        self.target = self._read_target()
        if self.source is None:
            if self._current is None or self._reload_reason():
                self._load(None)
            return
        versions, bad = self.source.scan()
        self._known = versions
        reason = self._reload_reason()
        if reason:
            # The serving version lost state it needs (a feature store restarted empty): load it
            # again, which restores that state (one replica does, the others wait and bind).
            current = self._current
            again = next((v for v in versions if current and v.name == current.name), None)
            if again is not None:
                log.warning("%s; loading it again", reason)
                self._load(again)
                return
        for b in bad:
            known = self._status.get(b.name)
            if known is None or known.error != b.reason:  # once per reason, not once per poll
                self._record_error(f"version {b.name} cannot be served: {b.reason}")
                self._emit("load", b.name, False, 0.0, b.reason)
            self._set_state(b.name, 0, 0, VersionState.ERROR, b.reason)
        action = policy.next_action(versions, self.target, self._loaded_state(self._current),
                                    self._loaded_state(self._previous), self._failed)
        if isinstance(action, policy.Load):
            self._load(action.version)
        elif isinstance(action, policy.SwapBack):
            self._swap_back(action.version)
        elif isinstance(action, policy.ApplyDeltas):
            self._apply_deltas(self._current, action.version)
        elif isinstance(action, policy.Missing):
            self._record_error(f"target version '{action.target}' does not exist"
                               + (f" in {self.where}" if self.where else ""))

    def _reload_reason(self) -> str:
        current = self._current
        return self.loader.needs_reload(current) if current is not None else ""

    @staticmethod
    def _loaded_state(s: S | None) -> policy.LoadedState | None:
        if s is None:
            return None
        return policy.LoadedState(s.name, s.full_step, s.delta_step,
                                  s.version.mtime if s.version else 0.0)

    def _load(self, version: VersionInfo | None) -> None:
        name = version.name if version else SAVEDMODEL_VERSION
        started = time.monotonic()
        if version:
            self._set_state(name, version.full_step, version.delta_step, VersionState.LOADING)
        try:
            servable = self.loader.load(version)
            if version:
                self._apply_deltas(servable, version)
            try:
                self.loader.warm_up(servable)
            except LoadError:
                self.loader.unload(servable)
                raise
        except TransientLoadError as exc:  # retried on the next poll
            if version:
                self._set_state(name, version.full_step, version.delta_step,
                                VersionState.LOADING, str(exc))
            self._record_error(str(exc))
            self._emit("load", name, False, time.monotonic() - started, str(exc))
            return
        except LoadError as exc:  # not tried again until the version's folder changes
            if version:
                self._failed.add(policy.load_key(version))
                self._set_state(name, version.full_step, version.delta_step,
                                VersionState.ERROR, str(exc))
            self._record_error(str(exc))
            self._emit("load", name, False, time.monotonic() - started, str(exc))
            return
        if self._stop.is_set():  # stopping: never publish a version nobody will close
            self.loader.unload(servable)
            return
        self._swap_in(servable)
        self.last_error = ""
        self._emit("load", name, True, time.monotonic() - started)

    def _swap_in(self, servable: S) -> None:
        self.prepare.publish(servable)
        with self._lock:
            old_current, old_previous = self._current, self._previous
            self._current = servable
            self._previous = old_current if self.retain_previous else None
        self.serving.publish(servable)
        self._set_state(servable.name, servable.full_step, servable.delta_step,
                        VersionState.SERVING)
        if old_current is not None:
            self._set_state(old_current.name, old_current.full_step, old_current.delta_step,
                            VersionState.AVAILABLE if self._previous is old_current
                            else VersionState.UNLOADING)
        for retired in (old_previous, None if self._previous is old_current else old_current):
            if retired is not None and retired is not servable:
                self._retire(retired)
        self._ready.set()
        self.loader.retain(self.loaded())
        log.info("now serving %s (full step %d, delta step %d)", servable.name,
                 servable.full_step, servable.delta_step)

    def _swap_back(self, version: VersionInfo) -> None:
        started = time.monotonic()
        with self._lock:
            back, self._previous, self._current = self._previous, self._current, self._previous
        if back is None:  # the policy asks for a swap back only with a retained version
            raise RuntimeError("swap back without a retained previous version")
        self.serving.publish(back)
        self._set_state(back.name, back.full_step, back.delta_step, VersionState.SERVING)
        if self._previous is not None:
            p = self._previous
            self._set_state(p.name, p.full_step, p.delta_step, VersionState.AVAILABLE)
        log.info("rolled back to retained version %s", back.name)
        self._emit("swap_back", back.name, True, time.monotonic() - started)
        self._apply_deltas(back, version)

    def _apply_deltas(self, servable: S | None, version: VersionInfo) -> None:
        if servable is None:
            return
        state = VersionState.SERVING if servable is self._current else VersionState.LOADING
        # Deltas are cumulative since the full checkpoint (DeepRec's incremental checkpoints):
        # the latest one holds every change, so a backlog is one apply, and a delta that
        # failed is superseded by the next one written.
        for delta in version.deltas_after(servable.delta_step)[-1:]:
            if self._stop.is_set():  # a backlog of deltas must not hold up shutdown
                return
            started = time.monotonic()
            try:
                self.loader.apply_delta(servable, delta)
            except LoadError as exc:
                # Stop at the first bad delta: later ones build on it. It is retried next poll,
                # which also covers a delta that was still being copied.
                self._set_state(servable.name, servable.full_step, servable.delta_step,
                                state, str(exc))
                self._record_error(str(exc))
                self._emit("delta", servable.name, False, time.monotonic() - started, str(exc))
                return
            self.last_error = ""
            self._set_state(servable.name, servable.full_step, servable.delta_step, state)
            self._emit("delta", servable.name, True, time.monotonic() - started)
            log.info("applied delta %d to %s in %.3fs", delta.step, servable.name,
                     time.monotonic() - started)

    def _retire(self, servable: S) -> None:
        """Unloads a replaced version on its own thread: it waits for the version's last handle,
        while the update thread goes on."""
        def unload() -> None:
            started = time.monotonic()
            self.loader.unload(servable)
            self._set_state(servable.name, servable.full_step, servable.delta_step,
                            VersionState.END)
            self._emit("unload", servable.name, True, time.monotonic() - started)
            log.info("unloaded %s", servable.name)

        threading.Thread(target=unload, name=f"deeprec-unload-{servable.name}", daemon=True).start()

    # --- status -------------------------------------------------------------------------------
    def _record_error(self, message: str) -> None:
        if message != self.last_error:
            log.error("update failed, still serving %s: %s",
                      self._current.name if self._current else "nothing", message)
        self.last_error = message

    def _set_state(self, name: str, full: int, delta: int, state: VersionState,
                   error: str = "") -> None:
        self.states.publish(StateEvent(name, state, full, delta, error))

    def _record_state(self, event: StateEvent) -> None:
        with self._lock:
            self._status[event.version] = event

    def _emit(self, kind: UpdateKind, version: str, ok: bool, seconds: float,
              error: str = "") -> None:
        self.updates.publish(UpdateEvent(kind, version, ok, seconds, error))
