"""Overload on the gRPC port: a bounded queue answered RESOURCE_EXHAUSTED at once, client
deadlines honoured without running the model for expired requests, message size limits."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent import futures

import grpc
import numpy as np
import pytest

from deeprec_runtime.app import Runtime
from deeprec_runtime.config import parse_model_config
from tests.runtime.conftest import Client, make_request, output, wait_for


@pytest.fixture
def make_runtime(demo, tmp_path):
    """Starts a runtime on the demo model with Runtime keyword arguments; stops it after."""
    started = []

    def start(**kwargs) -> tuple[Runtime, Client]:
        config = parse_model_config({
            "savedmodel_dir": demo.saved_model_dir, "checkpoint_dir": demo.checkpoint_dir,
            "model_store_type": "local", "feature_store_type": "memory",
            "signature_name": "serving_default", "warmup_iterations": 1})
        runtime = Runtime(config, grpc_port=0, host="127.0.0.1",
                          annotations_file=str(tmp_path / "none"), **kwargs)
        runtime.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
        started.append((runtime, channel))
        assert runtime.manager.wait_ready(60), runtime.manager.last_error
        return runtime, Client(channel)

    yield start
    for runtime, channel in started:
        channel.close()
        runtime.stop(1.0)


@pytest.fixture(params=["python", "native"])
def runtime_with(make_runtime, request):
    """make_runtime on each gRPC server (grpcio's and the native front end) in turn."""
    return lambda **kwargs: make_runtime(grpc_server=request.param, **kwargs)


class HeldModel:
    """Holds the serving version for an update, as a long delta apply does: requests that reach
    the model wait until release()."""

    def __init__(self, runtime: Runtime):
        self.servable = runtime.manager.acquire()
        runtime.manager.release(self.servable)
        self.servable.begin_update()
        self.runs = 0
        inner = self.servable.run

        def counted(*args):
            self.runs += 1
            return inner(*args)

        self.servable.run = counted  # counts the model runs that really happen

    def release(self) -> None:
        self.servable.end_update()


def test_requests_past_the_bound_get_resource_exhausted_at_once(demo, runtime_with):
    runtime, client = runtime_with(workers=2, max_concurrent_requests=4)
    request = make_request(demo.model.make_feed(4, np.random.default_rng(0)))
    held = HeldModel(runtime)
    try:
        calls = [client._predict.future(request, timeout=60) for _ in range(10)]
        # Whichever 4 arrive first are admitted and wait for the model; the other 6 are
        # answered while those still wait: nothing queues behind them.
        wait_for(lambda: sum(f.done() for f in calls) >= 6, timeout=30, message="6 refused")
        refused = [f for f in calls if f.done()]
        admitted = [f for f in calls if not f.done()]
        assert len(refused) == 6 and len(admitted) == 4
        for f in refused:
            assert f.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        held.release()
    for f in admitted:
        assert output(f.result(timeout=30), "probability").shape == (4, 1)
    assert output(client.predict(demo.model.make_feed(2, np.random.default_rng(1))),
                  "probability").shape == (2, 1)


def _answered(runtime, code: str) -> float:
    """Calls the server answered with `code`, whatever their model and version labels."""
    return sum(sample.value for metric in runtime.metrics.registry.collect()
               for sample in metric.samples
               if sample.name == "deeprec_requests_total" and sample.labels.get("code") == code)


def test_request_whose_deadline_expired_while_waiting_is_not_run(demo, runtime_with):
    runtime, client = runtime_with(workers=4)
    request = make_request(demo.model.make_feed(4, np.random.default_rng(0)))
    held = HeldModel(runtime)  # a delta apply that takes longer than the callers wait
    try:
        first = client._predict.future(request, timeout=60)
        late = [client._predict.future(request, timeout=0.5) for _ in range(3)]
        for f in late:
            assert f.exception(timeout=30).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        held.release()
    assert output(first.result(timeout=30), "probability").shape == (4, 1)
    # The expired calls were already inside their handlers, waiting for the model: once it is
    # free they see the deadline has passed and do not run it.
    wait_for(lambda: _answered(runtime, "DEADLINE_EXCEEDED") == 3,
             message="expired calls answered by the server")
    assert held.runs == 1


def test_request_that_expired_in_the_queue_before_any_worker_took_it_is_not_run(demo, runtime_with):
    runtime, client = runtime_with(workers=1)
    request = make_request(demo.model.make_feed(4, np.random.default_rng(0)))
    held = HeldModel(runtime)
    try:
        first = client._predict.future(request, timeout=60)  # takes the only worker
        wait_for(lambda: _in_handler(runtime) >= 1,
                 message="the first call in its handler")
        queued = client._predict.future(request, timeout=0.3)  # waits for the worker
        assert queued.exception(timeout=30).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        held.release()
    assert output(first.result(timeout=30), "probability").shape == (4, 1)
    # The native server hands the expired call to its handler, which refuses it (counted);
    # grpcio drops it before any handler runs. Either way the model runs once, for `first`.
    if runtime.grpc_server == "native":
        wait_for(lambda: _answered(runtime, "DEADLINE_EXCEEDED") == 1,
                 message="the expired call answered by the server")
    wait_for(lambda: _in_handler(runtime) == 0, message="no call in a handler")
    assert held.runs == 1


def _in_handler(runtime) -> int:
    from deeprec_runtime.server.grpc_server import CALLS  # noqa: PLC0415

    return CALLS.in_flight


def test_oversized_request_is_refused_and_the_server_keeps_serving(demo, runtime_with):
    _, client = runtime_with(max_message_bytes=1 << 20)
    big = demo.model.make_feed(30_000, np.random.default_rng(0))  # about 3 MB on the wire
    with pytest.raises(grpc.RpcError) as err:
        client.predict(big)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert output(client.predict(demo.model.make_feed(8, np.random.default_rng(1))),
                  "probability").shape == (8, 1)


def test_rest_requests_past_the_bound_get_429_at_once(demo, make_runtime):
    runtime, _ = make_runtime(workers=2, max_concurrent_requests=3, http_port=0)
    feed = demo.model.make_feed(2, np.random.default_rng(0))
    body = json.dumps({"inputs": {k: v.tolist() for k, v in feed.items()}}).encode()
    url = f"http://127.0.0.1:{runtime.http_port}/v1/models/default:predict"

    def post() -> tuple[int, dict]:
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    held = HeldModel(runtime)
    with futures.ThreadPoolExecutor(8) as pool:
        try:
            calls = [pool.submit(post) for _ in range(8)]
            wait_for(lambda: sum(f.done() for f in calls) >= 5, timeout=30, message="5 refused")
            refused = [f.result() for f in calls if f.done()]
            assert len(refused) == 5
            assert all(status == 429 and "overloaded" in answer["error"] for status, answer in refused)
        finally:
            held.release()
        admitted = [f.result(timeout=30) for f in calls if (f.result(timeout=30)[0] != 429)]
    assert len(admitted) == 3 and all(status == 200 for status, _ in admitted)
    assert post()[0] == 200  # slots are given back
