"""Overload on the gRPC port: a bounded queue answered RESOURCE_EXHAUSTED at once, client
deadlines honoured without running the model for expired requests, message size limits."""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
import urllib.error
import urllib.request
from concurrent import futures

import grpc
import numpy as np
import pytest

from deeprec_runtime.app import Runtime
from deeprec_runtime.config import parse_model_config
from tests.support.runtime import Client, make_request, output, wait_for


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
    the model wait until release() (in the Python handlers on the version's gate; on the native
    server, in C++ for the version's plan to be unblocked)."""

    def __init__(self, runtime: Runtime):
        with runtime.manager.hold() as handle:
            self.servable = handle.servable
        self.plan = self.servable.fast_plan
        self.answered_before = self.plan.answered if self.plan is not None else 0
        self.servable.begin_update()
        self.python_runs = 0
        inner = self.servable.run

        def counted(*args):
            self.python_runs += 1
            return inner(*args)

        self.servable.run = counted  # counts the model runs that really happen in Python

    @property
    def runs(self) -> int:
        """Model runs that really happened, in Python and in C++."""
        in_cpp = self.plan.answered - self.answered_before if self.plan is not None else 0
        return self.python_runs + in_cpp

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
    # The expired calls were already inside the server, waiting for the model: in the Python
    # handlers, which see the deadline has passed once it is free; on the native server in C++,
    # which hands them to the handler at their deadline, to be refused. None runs the model.
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
    """Calls inside the server: in a Python handler, or in C++ (waiting for the held model)."""
    from deeprec_runtime.native.plan import DEEPREC
    from deeprec_runtime.server.grpc_server import CALLS

    fast = runtime.fast_predict
    return CALLS.in_flight + (fast.in_flight(DEEPREC) if fast is not None else 0)


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


# --- request bytes in progress (--max-inflight-bytes) -------------------------------------
def test_calls_past_the_inflight_bytes_budget_get_resource_exhausted_at_once(demo, make_runtime):
    request = make_request(demo.model.make_feed(64, np.random.default_rng(0)))
    size = request.ByteSize()
    runtime, client = make_runtime(grpc_server="python", workers=4,
                                   max_inflight_bytes=int(2.5 * size))
    held = HeldModel(runtime)
    try:
        calls = [client._predict.future(request, timeout=60) for _ in range(3)]
        # Two calls' bytes fit in the budget and wait for the model; the third is answered now.
        wait_for(lambda: sum(f.done() for f in calls) >= 1, timeout=30, message="1 refused")
        refused = [f for f in calls if f.done()]
        assert len(refused) == 1
        error = refused[0].exception()
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"a request of {size} bytes" in error.details()
        assert "--max-inflight-bytes" in error.details()
    finally:
        held.release()
    for f in calls:
        if f is not refused[0]:
            assert output(f.result(timeout=30), "probability").shape == (64, 1)
    assert runtime.admission.in_flight == 0  # every admitted call gave its bytes back
    assert output(client.predict(demo.model.make_feed(64, np.random.default_rng(1))),
                  "probability").shape == (64, 1)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _rest_body(demo, rows: int) -> bytes:
    feed = demo.model.make_feed(rows, np.random.default_rng(0))
    return json.dumps({"inputs": {k: v.tolist() for k, v in feed.items()}}).encode()


def test_rest_requests_past_the_inflight_bytes_budget_get_429_before_their_body_is_read(
        demo, make_runtime):
    body = _rest_body(demo, 16)
    runtime, _ = make_runtime(workers=2, http_port=0, max_inflight_bytes=int(2.5 * len(body)))
    url = f"http://127.0.0.1:{runtime.http_port}/v1/models/default:predict"
    held = HeldModel(runtime)
    with futures.ThreadPoolExecutor(3) as pool:
        try:
            calls = [pool.submit(_post, url, body) for _ in range(3)]
            wait_for(lambda: sum(f.done() for f in calls) >= 1, timeout=30, message="1 refused")
            status, answer = next(f.result() for f in calls if f.done())
            assert status == 429 and "--max-inflight-bytes" in answer["error"], answer
        finally:
            held.release()
        results = [f.result(timeout=30) for f in calls]
    assert sorted(status for status, _ in results) == [200, 200, 429]
    assert runtime.admission.in_flight == 0
    assert _post(url, body)[0] == 200


def test_grpc_and_rest_share_one_inflight_bytes_budget_on_the_native_server(demo, make_runtime):
    """gRPC C++ keeps the process's one counter: gRPC calls waiting for the model hold bytes that a
    REST request then cannot have, and they come back when the calls are answered."""
    body = _rest_body(demo, 16)
    grpc_request = make_request(demo.model.make_feed(2048, np.random.default_rng(1)))
    grpc_bytes = grpc_request.ByteSize()
    runtime, client = make_runtime(grpc_server="native", workers=2, http_port=0,
                                   max_inflight_bytes=2 * grpc_bytes + len(body) // 2)
    url = f"http://127.0.0.1:{runtime.http_port}/v1/models/default:predict"
    held = HeldModel(runtime)
    try:
        calls = [client._predict.future(grpc_request, timeout=60) for _ in range(2)]
        wait_for(lambda: runtime.admission.in_flight >= 2 * grpc_bytes, message="gRPC bytes held")
        status, answer = _post(url, body)
        assert status == 429 and "--max-inflight-bytes" in answer["error"], answer
    finally:
        held.release()
    for call in calls:
        assert output(call.result(), "probability").shape == (2048, 1)
    wait_for(lambda: runtime.admission.in_flight == 0, message="every byte given back")
    assert _post(url, body)[0] == 200


class SlowClient:
    """A real socket that sends a request's bytes slowly, as a slowloris client does."""

    def __init__(self, port: int, head: bytes):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(head)

    def trickle(self, data: bytes, pause: float = 0.1) -> bytes:
        """Sends `data` a byte at a time until the server answers or closes; returns what the
        server sent (b"" for a close without an answer). Fails if everything was sent."""
        for i in range(len(data)):
            try:
                self.sock.sendall(data[i:i + 1])
            except OSError:  # closed by the server while we were sending
                break
            readable, _, _ = select.select([self.sock], [], [], pause)
            if readable:
                break
        else:
            raise AssertionError("the server read the whole slow request")
        return read_all(self.sock)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection; closes ours."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    sock.close()
    return b"".join(chunks)


def test_slow_rest_upload_holds_no_inference_slot_and_is_cut_at_the_deadline(demo, make_runtime):
    runtime, _ = make_runtime(workers=2, http_port=0, max_concurrent_requests=1,
                              http_read_timeout=1.0)
    body = _rest_body(demo, 4)
    url = f"http://127.0.0.1:{runtime.http_port}/v1/models/default:predict"
    slow = SlowClient(runtime.http_port,
                      b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
    # The only inference slot is free while the slow body is still on its way.
    status, answer = _post(url, body)
    assert status == 200, answer
    reply = slow.trickle(body[10:]).decode()
    assert reply.startswith("HTTP/1.1 408"), reply
    assert f"request body of {len(body)} bytes was not received within 1 s" in reply
    assert "Connection: close" in reply
    assert runtime.admission.in_flight == 0
    assert _post(url, body)[0] == 200


def test_slow_rest_headers_are_cut_at_the_deadline(demo, make_runtime):
    runtime, _ = make_runtime(workers=2, http_port=0, http_read_timeout=1.0)
    slow = SlowClient(runtime.http_port, b"GET /v1/models/default HTTP/1.1\r\n")
    assert slow.trickle(b"X-Slow: " + b"a" * 2000) == b""  # dropped without an answer
    status, _ = _post(f"http://127.0.0.1:{runtime.http_port}/v1/models/default:predict",
                      _rest_body(demo, 2))
    assert status == 200


def test_an_idle_keep_alive_connection_is_not_cut_by_the_read_deadline(demo, make_runtime):
    runtime, _ = make_runtime(workers=2, http_port=0, http_read_timeout=0.5)
    body = _rest_body(demo, 2)
    conn = http.client.HTTPConnection("127.0.0.1", runtime.http_port, timeout=30)
    try:
        for _ in range(2):
            conn.request("POST", "/v1/models/default:predict", body,
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200, response.read()
            response.read()
            time.sleep(1.0)  # idle between requests, longer than the read deadline
    finally:
        conn.close()


def test_a_client_waiting_for_100_continue_is_refused_before_it_sends_its_body(demo, make_runtime):
    runtime, _ = make_runtime(workers=2, http_port=0, max_message_bytes=100_000,
                              max_inflight_bytes=5_000)
    body = _rest_body(demo, 2)
    assert len(body) < 5_000

    def head(length: int) -> bytes:
        return (b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/json\r\nExpect: 100-continue\r\nContent-Length: "
                + str(length).encode() + b"\r\n\r\n")

    for length, status, words in ((200_000, b"413", b"exceeds the limit of 100000 bytes"),
                                  (50_000, b"429", b"--max-inflight-bytes")):
        with socket.create_connection(("127.0.0.1", runtime.http_port), timeout=30) as s:
            s.sendall(head(length))  # and no body: the answer comes without it
            reply = read_all(s)
        assert reply.startswith(b"HTTP/1.1 " + status) and words in reply, reply
    with socket.create_connection(("127.0.0.1", runtime.http_port), timeout=30) as s:
        s.sendall(head(len(body)))
        assert s.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_connections_age_out_without_failing_a_call(demo, runtime_with):
    """--max-connection-age-seconds: the server closes each connection gracefully after that
    long, so a client pinned to a pod behind a ClusterIP reconnects (through kube-proxy, to any
    pod). The client sees its channel reconnect several times and no call fails."""
    runtime, _ = runtime_with(max_connection_age=0.5)
    feed = demo.model.make_feed(2, np.random.default_rng(0))
    states: list[grpc.ChannelConnectivity] = []
    channel = grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    channel.subscribe(states.append, try_to_connect=True)
    try:
        client = Client(channel)
        deadline = time.monotonic() + 3.0
        calls = 0
        while time.monotonic() < deadline:
            assert output(client.predict(feed), "probability").shape == (2, 1)
            calls += 1
        ready = states.count(grpc.ChannelConnectivity.READY)
        assert ready >= 3, f"{ready} connections in 3 s of calls at a 0.5 s age ({states})"
        assert calls > ready
    finally:
        channel.unsubscribe(states.append)
        channel.close()
