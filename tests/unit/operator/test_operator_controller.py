"""The controller decides when models are synced: a resync per model once nothing else synced it
for an interval, one sync per pod event that tells something new (bursts coalesced), handlers
syncing at once with the freshest body, and never two syncs of one model at a time.

The indexes are plain dicts of lists (what kopf's Index and Store are to the controller), the sync
function a recorder, the clock a fake; the event loop and the worker threads are real.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time

import pytest

from deeprec_operator.controller import Controller
from deeprec_operator.credentials import SecretCache
from deeprec_operator.kube import ApiError
from deeprec_operator.pods import PodView
from deeprec_operator.sync import Context, Result
from tests.support.operator.fakes import Clock, FakeKube, FakeProber, RecordedEvents

A, B = ("ns", "a"), ("ns", "b")


def _body(name: str, generation: int = 1, uid: str | None = None) -> dict:
    meta = {"name": name, "namespace": "ns", "uid": uid or f"uid-{name}", "generation": generation}
    return {"apiVersion": "serving.deeprec.io/v1alpha1", "kind": "DeepRecModel", "metadata": meta}


class Syncs:
    """Records each sync (model, generation, retry_now, pod names); fails when two syncs of one
    model overlap."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool, list[str]]] = []
        self.started: list[str] = []
        #: Cleared, a sync waits for it: the test decides when a sync in flight ends.
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next: Exception | None = None
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, ctx, state, body, pods, *, retry_now=False) -> Result:
        name = body["metadata"]["name"]
        with self._lock:
            assert name not in self._running, f"two syncs of {name} at once"
            self._running.add(name)
        try:
            self.started.append(name)
            assert self.gate.wait(10), "the test never opened the gate"
            if self.fail_next is None:
                state.seen = {p.name: p for p in pods}
            self.calls.append((name, body["metadata"]["generation"], retry_now, [p.name for p in pods]))
            if self.fail_next is not None:
                error, self.fail_next = self.fail_next, None
                raise error
            return Result(None, False, {})
        finally:
            with self._lock:
                self._running.discard(name)

    def of(self, name: str) -> list[tuple[str, int, bool, list[str]]]:
        return [c for c in self.calls if c[0] == name]


class Harness:
    def __init__(self, syncs: Syncs, interval: float = 100.0) -> None:
        self.clock = Clock()
        kube = FakeKube()
        ctx = Context(kube=kube, prober=FakeProber(), secrets=SecretCache(kube), events=RecordedEvents(),
                      clock=self.clock)
        self.models: dict = {A: [_body("a")], B: [_body("b")]}
        self.pods: dict = {A: [PodView("a-1", "ns", ip="10.0.0.1", ready=True, target="latest")]}
        self.syncs = syncs
        self.controller = Controller(ctx, self.models, self.pods, interval=interval, workers=4, sync_fn=syncs)

    async def until(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; syncs so far: {self.syncs.calls}"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the worker hands the finished sync back to the loop

    async def quiet(self, seconds: float = 0.3) -> None:
        """Lets ticks and workers run for a while (for asserting that nothing happens)."""
        await asyncio.sleep(seconds)


def _run(harness: Harness, scenario, *, indexed: bool = True) -> None:
    async def main() -> None:
        if indexed:
            harness.controller.indexes_ready()
        task = asyncio.create_task(harness.controller.run())
        try:
            await scenario(harness)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            harness.controller.close()
    asyncio.run(main())


def test_every_model_is_resynced_once_nothing_else_synced_it_for_the_interval():
    async def scenario(h: Harness) -> None:
        await h.until(lambda: len(h.syncs.calls) == 2)
        assert {c[0] for c in h.syncs.calls} == {"a", "b"}
        assert h.syncs.of("a")[0] == ("a", 1, False, ["a-1"]), "the pods come from the pod index"
        await h.quiet()
        assert len(h.syncs.calls) == 2, "not due yet"
        h.clock.now += 0.2
        await h.until(lambda: len(h.syncs.calls) == 4)
        await h.quiet()
        assert len(h.syncs.calls) == 4
    _run(Harness(Syncs(), interval=0.2), scenario)


def test_nothing_is_resynced_before_kopf_has_indexed_every_pod():
    """kopf calls its first handler once the indexes are complete; until then a resync would see
    a model with only some of its pods."""
    async def scenario(h: Harness) -> None:
        await h.quiet(1.2)
        assert h.syncs.calls == []
        h.controller.pod_event(B, "b-1", PodView("b-1", "ns"))  # the first handler: indexes complete
        await h.until(lambda: len(h.syncs.calls) == 2)
    _run(Harness(Syncs()), scenario, indexed=False)


def test_a_pod_event_queues_a_sync_only_when_it_tells_something_new():
    async def scenario(h: Harness) -> None:
        await h.until(lambda: len(h.syncs.of("a")) == 1)
        seen = h.pods[A][0]
        heartbeat = dataclasses.replace(seen, resource_version="999")  # kubelet status update
        h.controller.pod_event(A, "a-1", heartbeat)
        await h.quiet()
        assert len(h.syncs.of("a")) == 1

        h.pods[A].append(PodView("a-2", "ns"))
        h.controller.pod_event(A, "a-2", h.pods[A][1])  # a new pod
        await h.until(lambda: len(h.syncs.of("a")) == 2)
        assert h.syncs.of("a")[1][3] == ["a-1", "a-2"]

        turned_ready = dataclasses.replace(h.pods[A][1], ready=True, ip="10.0.0.2")
        h.pods[A][1] = turned_ready
        h.controller.pod_event(A, "a-2", turned_ready)
        await h.until(lambda: len(h.syncs.of("a")) == 3)

        del h.pods[A][1]
        h.controller.pod_event(A, "a-2", None)  # gone
        await h.until(lambda: len(h.syncs.of("a")) == 4)
        h.controller.pod_event(A, "a-9", None)  # a pod the sync never saw went away: nothing to do
        h.controller.pod_event(("ns", "unknown"), "x", PodView("x", "ns"))  # no such model
        await h.quiet()
        assert len(h.syncs.calls) == 5 and len(h.syncs.of("a")) == 4
    _run(Harness(Syncs()), scenario)


def test_a_burst_of_pod_events_during_a_sync_costs_one_more_sync():
    async def scenario(h: Harness) -> None:
        await h.until(lambda: len(h.syncs.of("a")) == 1)
        h.syncs.gate.clear()
        for i in range(2, 12):
            h.pods[A].append(PodView(f"a-{i}", "ns"))
            h.controller.pod_event(A, f"a-{i}", h.pods[A][-1])
            if i == 2:  # the first event's sync is under way (and held) before the others come
                await h.until(lambda: h.syncs.started.count("a") == 2)
        h.syncs.gate.set()
        await h.until(lambda: len(h.syncs.of("a")) == 3)
        await h.quiet()
        assert len(h.syncs.of("a")) == 3, h.syncs.of("a")
        assert len(h.syncs.of("a")[-1][3]) == 11, "the last sync saw every pod"
    _run(Harness(Syncs()), scenario)


def test_a_handler_syncs_at_once_with_the_freshest_body_and_never_beside_a_queued_sync():
    async def scenario(h: Harness) -> None:
        await h.until(lambda: len(h.syncs.calls) == 2)
        h.models[A] = [_body("a", generation=3)]  # the index is ahead of the handler's body
        h.syncs.gate.clear()
        h.controller.pod_event(A, "a-2", PodView("a-2", "ns"))  # a queued sync, held in flight
        await h.until(lambda: h.syncs.started.count("a") == 2)
        loop = asyncio.get_running_loop()
        handler = loop.run_in_executor(None, h.controller.sync_now, A, _body("a", generation=2))
        await h.quiet(0.1)
        assert h.syncs.started.count("a") == 2, "the handler's sync waits for the model's lock"
        h.syncs.gate.set()
        result = await handler
        assert result.failure is None
        assert h.syncs.of("a")[-1][1:3] == (3, True), "the index's body, failures re-tried at once"
    _run(Harness(Syncs()), scenario)


def test_a_deleted_model_is_not_synced_and_its_state_is_forgotten():
    async def scenario(h: Harness) -> None:
        await h.until(lambda: len(h.syncs.calls) == 2)
        assert h.controller.state(A, "uid-a").seen
        del h.models[A]
        h.controller.pod_event(A, "a-1", None)
        h.clock.now += 1
        await h.until(lambda: len(h.syncs.of("b")) == 2)
        assert len(h.syncs.of("a")) == 1
        assert not h.controller.state(A, "uid-a").seen, "a new state, the old one was dropped"
    _run(Harness(Syncs(), interval=0.2), scenario)


def test_a_model_recreated_under_the_same_name_starts_from_a_new_state():
    syncs = Syncs()
    h = Harness(syncs)
    old = h.controller.state(A, "uid-a")
    assert h.controller.state(A, "uid-a") is old
    assert h.controller.state(A, "uid-new") is not old


def test_a_failed_queued_sync_is_logged_and_tried_again_at_the_next_resync(caplog):
    caplog.set_level(logging.WARNING, logger="deeprec_operator.controller")

    async def scenario(h: Harness) -> None:
        h.syncs.fail_next = ApiError(503, "ServiceUnavailable", "etcd")
        await h.until(lambda: len(h.syncs.calls) == 2)
        await h.until(lambda: "failed, next try within" in caplog.text)
        h.clock.now += 0.2
        await h.until(lambda: len(h.syncs.calls) == 4)
    _run(Harness(Syncs(), interval=0.2), scenario)
    assert "503 ServiceUnavailable" in caplog.text and "Traceback" not in caplog.text
