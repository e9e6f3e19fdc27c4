"""When each model is synced: its kopf handlers sync it directly; a work queue, fed by a resync
clock and by pod events, syncs it the rest of the time.

The queue has controller-runtime's workqueue semantics: a model is queued at most once, and one
that comes back while its sync runs is synced once more afterwards, so a burst of pod events
costs one or two syncs. Each model's syncs, from any caller, hold its state's lock.

The resync is one operator-wide loop over the model index rather than a kopf.timer: kopf gives
every object with a timer or a daemon its finalizer, and a DeepRecModel carries none, so that a
model deleted while the operator is down still goes, with its children. Each model is synced
once nothing else synced it for `interval` seconds: that re-reads what its runtimes serve, and
catches a change whose watch event kopf dropped (it skips events while it backs off from a
failed patch of its own).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import urllib3

from deeprec_operator.kube import ApiError
from deeprec_operator.pods import PodView, changed
from deeprec_operator.sync import Context, ModelState, Result, sync

#: A model: (namespace, name), the key of both kopf indexes.
Key = tuple[str, str]

log = logging.getLogger(__name__)


class Controller:
    """Runs syncs; `models` and `pods` are the kopf indexes (key -> the model's body; key -> its
    pods' views), read-only here. `sync_fn` is sync.sync (tests count the calls)."""

    def __init__(self, ctx: Context, models: Mapping[Key, Collection[Mapping[str, Any]]],
                 pods: Mapping[Key, Collection[PodView]], *, interval: float, workers: int = 8,
                 sync_fn: Callable[..., Result] = sync) -> None:
        self.ctx = ctx
        self._sync = sync_fn
        self.interval = interval
        self._models, self._pods = models, pods
        self._states: dict[Key, ModelState] = {}
        self._states_lock = threading.Lock()
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sync")
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        #: Set once kopf's indexes hold their initial listing (see indexes_ready).
        self._indexed = threading.Event()
        # Touched only from the event loop: no lock.
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()

    # --- reading the indexes ---------------------------------------------------------------------

    def model(self, key: Key) -> Mapping[str, Any] | None:
        """The model as last seen by the watch, None once deleted. kopf updates its indexes
        before it calls any handler for an event, so this is never older than a handler's body."""
        store = self._models.get(key)
        # list() of the store runs without a thread switch: a consistent snapshot.
        bodies = list(store) if store is not None else []
        return bodies[0] if bodies else None

    def pods(self, key: Key) -> list[PodView]:
        store = self._pods.get(key)
        return list(store) if store is not None else []

    def state(self, key: Key, uid: str) -> ModelState:
        """The model's state; a new one for a model re-created under the same name."""
        with self._states_lock:
            state = self._states.get(key)
            if state is None or state.uid != uid:
                state = self._states[key] = ModelState(uid=uid)
            return state

    # --- callers -----------------------------------------------------------------------------------

    def indexes_ready(self) -> None:
        """Opens the resync. kopf calls no handler before every index holds its initial listing,
        so the handlers call this; a resync before would see a model with some of its pods, and
        write a status (and make annotation decisions) from that."""
        self._indexed.set()

    def sync_now(self, key: Key, body: Mapping[str, Any]) -> Result:
        """From a kopf handler (in one of kopf's threads): syncs at once, failures re-tried now."""
        self.indexes_ready()
        latest = self.model(key) or body
        state = self.state(key, latest["metadata"]["uid"])
        with state.lock:
            state.next_sync = self.ctx.clock() + self.interval  # no resync queued meanwhile
            try:
                return self._sync(self.ctx, state, latest, self.pods(key), retry_now=True)
            finally:
                state.next_sync = self.ctx.clock() + self.interval

    def pod_event(self, key: Key, name: str, view: PodView | None) -> None:
        """From the pod event handler (on the event loop): queues the model's sync when the event
        tells it something new (`view` None: the pod is gone)."""
        self.indexes_ready()
        if key not in self._models:
            return
        state = self._states.get(key)
        if changed(view, state.seen.get(name) if state is not None else None):
            self.enqueue(key)

    def enqueue(self, key: Key) -> None:
        """Queues a sync of the model (on the event loop)."""
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    # --- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """The resync clock and the workers, until cancelled (at the operator's cleanup)."""
        workers = [asyncio.create_task(self._work()) for _ in range(self._workers)]
        tick = max(0.05, min(0.5, self.interval / 4))
        try:
            while True:
                await asyncio.sleep(tick)
                if self._indexed.is_set():
                    self.resync()
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def resync(self) -> None:
        """Queues every model whose resync is due; forgets the states of deleted models."""
        now = self.ctx.clock()
        keys = set(self._models)  # on the event loop, where kopf updates the index: no race
        for key in keys - self._queued - self._active:
            state = self._states.get(key)
            if state is None or state.next_sync <= now:
                self.enqueue(key)
        with self._states_lock:
            for key in set(self._states) - keys:
                del self._states[key]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            try:
                await loop.run_in_executor(self._pool, self._sync_queued, key)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.enqueue(key)

    def _sync_queued(self, key: Key) -> None:
        body = self.model(key)
        if body is None:
            return  # deleted meanwhile: its children go with it
        state = self.state(key, body["metadata"]["uid"])
        with state.lock:
            try:
                self._sync(self.ctx, state, body, self.pods(key))
            except (ApiError, urllib3.exceptions.HTTPError) as e:
                # The handler's kopf retry or the next resync tries again; say so once per try.
                log.warning("sync of %s/%s failed, next try within %.0fs: %s", *key, self.interval, e)
            except Exception:
                log.exception("sync of %s/%s failed", *key)
            finally:
                state.next_sync = self.ctx.clock() + self.interval

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.ctx.fan_out.shutdown(wait=False, cancel_futures=True)
