"""The native gRPC front end (`--grpc-server native`): gRPC C++ carrying the same handlers.

Overload, deadlines, message sizes (tests/faults/test_overload.py), bearer tokens
(tests/integration/runtime/test_security.py) and the SIGTERM drain
(tests/integration/runtime/test_process.py) run on both servers; this module covers what is
specific to the native one."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import predict_pb2 as tfs_predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from deeprec_runtime import toolchain
from deeprec_runtime.app import Runtime, choose_grpc_server
from deeprec_runtime.config import parse_model_config
from deeprec_runtime.native import build as native_build
from deeprec_runtime.native.build import library_path
from deeprec_runtime.security import Security, SecurityConfig, SecurityConfigError
from tests.support.runtime import SERVING, Client, make_request, output, wait_for

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _config(demo):
    return parse_model_config({
        "savedmodel_dir": demo.saved_model_dir, "checkpoint_dir": demo.checkpoint_dir,
        "signature_name": "serving_default", "warmup_iterations": 1, "update_poll_seconds": 0.2})


@pytest.fixture
def runtimes(demo, tmp_path):
    """Starts in-process runtimes (`grpc_server` python or native) on the demo model."""
    started = []

    def start(grpc_server: str, wait: bool = True, **kwargs) -> tuple[Runtime, grpc.Channel]:
        runtime = Runtime(_config(demo), grpc_port=0, host="127.0.0.1",
                          annotations_file=str(tmp_path / "none"), grpc_server=grpc_server,
                          **kwargs)
        channel = grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
        started.append((runtime, channel))
        if wait:
            runtime.start()
            assert runtime.manager.wait_ready(60), runtime.manager.last_error
            wait_for(lambda: _health(channel) == SERVING, message="SERVING")
        return runtime, channel

    yield start
    for runtime, channel in started:
        channel.close()
        runtime.stop(1.0)


def _health(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_library_builds_into_the_configured_folder_once_and_is_reused(tmp_path, monkeypatch):
    # The image's recipe: DEEPREC_NATIVE_DIR, built once, found again without a compiler.
    monkeypatch.setenv(native_build.DIR_ENV, str(tmp_path))
    monkeypatch.setattr(toolchain, "_found", {})
    built = library_path()
    assert built == str(tmp_path / native_build.LIBRARY_NAME)
    assert b"$ORIGIN/lib" in Path(built).read_bytes()  # where the image puts gRPC's libraries
    stamp = os.stat(built).st_mtime_ns

    def no_compiler(*_args):
        raise AssertionError("compiled again")

    monkeypatch.setattr(toolchain, "_compile", no_compiler)
    monkeypatch.setattr(toolchain, "_found", {})  # as a new process would start
    assert library_path() == built and os.stat(built).st_mtime_ns == stamp


def test_answers_are_byte_identical_to_the_grpcio_server(demo, runtimes):
    _, native = runtimes("native")
    _, python = runtimes("python")
    for batch in (1, 7, 64):
        payload = make_request(demo.model.make_feed(batch, np.random.default_rng(batch)))
        raw = payload.SerializeToString()
        answers = [ch.unary_unary("/deeprec.serving.PredictionService/Predict")(raw, timeout=10)
                   for ch in (native, python)]
        assert answers[0] == answers[1]
        assert output(Client(native).predict(demo.model.make_feed(batch, np.random.default_rng(
            batch))), "probability").shape == (batch, 1)
    info = [Client(ch).info() for ch in (native, python)]
    assert info[0].version == info[1].version and info[0].versions[0].state == "SERVING"


def test_health_is_not_serving_until_the_model_is_ready(demo, runtimes):
    runtime, channel = runtimes("native", wait=False)
    # Built, not started: the port answers, the model is not loaded.
    assert _health(channel) == NOT_SERVING
    assert _health(channel, "deeprec.serving.PredictionService") == NOT_SERVING
    runtime.start()
    wait_for(lambda: _health(channel) == SERVING, timeout=60, message="SERVING")
    assert _health(channel, "deeprec.serving.PredictionService") == SERVING
    # Watch is served too (gRPC C++'s own health service).
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=5)
    assert next(watch).status == SERVING
    watch.cancel()


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(demo, runtimes):
    _, channel = runtimes("native")
    client = Client(channel)
    with pytest.raises(grpc.RpcError) as err:
        client.raw_predict(b"\xff\xff not a protobuf", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "deeprec.serving.PredictRequest" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        client.predict({"no_such_input": np.zeros(2, np.float32)})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no_such_input" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/deeprec.serving.PredictionService/NoSuchMethod")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "NoSuchMethod" in err.value.details()
    assert output(client.predict(demo.model.make_feed(3, np.random.default_rng(0))),
                  "probability").shape == (3, 1)


def test_tf_serving_api_is_carried_too(demo, runtimes):
    _, channel = runtimes("native")
    feed = demo.model.make_feed(5, np.random.default_rng(1))
    request = tfs_predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    import tensorflow as tf

    for key, value in feed.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    expected = output(Client(channel).predict(feed), "probability")
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["probability"]), expected)


def test_concurrent_callers_each_get_their_own_rows(demo, runtimes):
    _, channel = runtimes("native")
    client = Client(channel)
    feeds = [demo.model.make_feed(1 + i % 9, np.random.default_rng(i)) for i in range(16)]
    expected = [output(client.predict(f), "probability") for f in feeds]
    failures: list[str] = []

    def caller(start: int) -> None:
        for n in range(40):
            i = (start + n) % len(feeds)
            got = output(client.predict(feeds[i]), "probability")
            if not np.array_equal(got, expected[i]):
                failures.append(f"caller {start} request {n}")

    threads = [threading.Thread(target=caller, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_cli_refuses_native_with_protected_health_naming_the_flag(demo, tmp_path):
    # gRPC C++ answers health checks itself, without credentials.
    config = tmp_path / "model_config.json"
    config.write_text(json.dumps({"savedmodel_dir": demo.saved_model_dir,
                                  "checkpoint_dir": demo.checkpoint_dir}))
    result = subprocess.run(
        [sys.executable, "-m", "deeprec_runtime.cli", "serve", "--config", str(config),
         "--grpc-port", "0", "--grpc-server", "native", "--auth-protect-health"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "DEEPREC_AUTH_TOKEN": "t0ken"})
    assert result.returncode == 2
    assert "--grpc-server" in result.stderr and "health" in result.stderr
    assert "t0ken" not in result.stderr


@pytest.fixture
def pki_files(tmp_path):
    """A self-signed certificate and key (the refusal must come before any handshake)."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def test_auto_picks_native_unless_security_or_the_toolchain_says_otherwise(tmp_path, monkeypatch,
                                                                           pki_files, caplog):
    caplog.set_level(logging.INFO)
    assert choose_grpc_server("auto", Security()) == "native"
    tls = Security(SecurityConfig(tls_cert=pki_files[0], tls_key=pki_files[1]))
    assert choose_grpc_server("auto", tls) == "native"  # TLS from watched files in gRPC C++
    assert choose_grpc_server("native", Security()) == "native"
    assert choose_grpc_server("python", Security()) == "python"
    protected = Security(SecurityConfig(auth_token="t0ken", protect_health=True))
    assert choose_grpc_server("auto", protected) == "python"
    # No prebuilt library and no pkg-config: grpcio's server, with the reason in the log.
    monkeypatch.setenv("DEEPREC_NATIVE_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert choose_grpc_server("auto", Security()) == "python"
    assert "pkg-config not found" in caplog.text
    with pytest.raises(SecurityConfigError) as err:
        choose_grpc_server("cython", Security())
    assert "--grpc-server" in str(err.value)


def test_garbage_cancellations_and_expiring_deadlines_under_load_leave_it_serving(demo, runtimes):
    # Exercises the paths where a call ends while a worker still holds it: clients that give up
    # (deadlines of a few ms, cancelled futures) mixed with garbage and valid requests.
    runtime, channel = runtimes("native")
    rng = np.random.default_rng(7)
    valid = make_request(demo.model.make_feed(4, rng)).SerializeToString()
    methods = ["/deeprec.serving.PredictionService/Predict",
               "/deeprec.serving.PredictionService/GetServingModelInfo",
               "/tensorflow.serving.PredictionService/Predict",
               "/tensorflow.serving.ModelService/GetModelStatus", "/no.Such/Method"]
    codes: dict[str, int] = {}
    lock = threading.Lock()

    def hammer(seed: int) -> None:
        r = np.random.default_rng(seed)
        for _ in range(150):
            method = methods[r.integers(len(methods))]
            body = valid if r.random() < 0.5 else r.bytes(int(r.integers(0, 300)))
            call = channel.unary_unary(method)
            future = call.future(body, timeout=float(r.choice([0.001, 0.005, 5.0])))
            if r.random() < 0.2:
                future.cancel()
            try:
                future.result()
                code = "OK"
            except grpc.FutureCancelledError:
                code = "CANCELLED"
            except grpc.RpcError as exc:
                code = exc.code().name
            with lock:
                codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(codes.values()) == 8 * 150
    assert set(codes) <= {"OK", "CANCELLED", "DEADLINE_EXCEEDED", "INVALID_ARGUMENT",
                          "UNIMPLEMENTED", "NOT_FOUND", "RESOURCE_EXHAUSTED"}, codes
    assert codes.get("OK") and codes.get("DEADLINE_EXCEEDED") and codes.get("INVALID_ARGUMENT")
    # Still serving, nothing left counted as in progress.
    assert output(Client(channel).predict(demo.model.make_feed(2, rng)), "probability").shape == (2, 1)
    wait_for(lambda: runtime.grpc.in_flight == 0, message="no call left in progress")


@pytest.mark.parametrize("second", ["python", "native"])
def test_a_taken_port_fails_at_start_up_instead_of_sharing_it(demo, runtimes, tmp_path, second):
    first, _ = runtimes("native")
    with pytest.raises(OSError) as err:
        Runtime(_config(demo), grpc_port=first.grpc_port, host="127.0.0.1", grpc_server=second,
                annotations_file=str(tmp_path / "none"))
    assert str(first.grpc_port) in str(err.value)


class _Held:
    """A front end whose one method (/test.Held/Echo) blocks until release(), answering the
    request's length: what occupies slots and request bytes while a test watches the bounds."""

    def __init__(self, **bounds):
        from deeprec_runtime.native.server import NativeGrpcServer

        self.release_event = threading.Event()
        self.entered = threading.Semaphore(0)

        def echo(request: bytes, context) -> bytes:
            self.entered.release()
            self.release_event.wait(60)
            return str(len(request)).encode()

        handler = grpc.method_handlers_generic_handler(
            "test.Held", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
        self.server = NativeGrpcServer([handler], 0, "127.0.0.1", **bounds)
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.server.port}",
            options=[("grpc.max_send_message_length", 64 << 20)])
        self.echo = self.channel.unary_unary("/test.Held/Echo")

    def release(self) -> None:
        self.release_event.set()

    def close(self) -> None:
        self.release()
        self.channel.close()
        self.server.drain(1.0)


def test_request_bytes_in_progress_are_bounded_and_released_when_answered():
    held = _Held(max_workers=4, max_concurrent=16, max_message_bytes=1 << 20,
                 max_inflight_bytes=2 << 20)
    try:
        body = b"x" * (900 << 10)
        first = [held.echo.future(body, timeout=60) for _ in range(2)]
        for _ in first:
            assert held.entered.acquire(timeout=30)
        assert held.server.in_flight_bytes >= 2 * len(body)
        with pytest.raises(grpc.RpcError) as err:  # 2.7 MiB would be in progress: refused at once
            held.echo(body, timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-inflight-bytes" in err.value.details()
        held.release()
        assert [f.result() for f in first] == [str(len(body)).encode()] * 2
        wait_for(lambda: held.server.in_flight_bytes == 0, message="bytes released")
        assert held.echo(body, timeout=30) == str(len(body)).encode()
    finally:
        held.close()


def test_calls_past_the_bound_are_refused_before_their_request_is_read():
    """A refused call must not cost its request's memory: a storm of large requests against a
    full server leaves the server's peak memory where it was. The client runs in another process
    so that its own copies of the requests are not counted here."""
    held = _Held(max_workers=1, max_concurrent=1, max_message_bytes=64 << 20)
    try:
        blocker = held.echo.future(b"hold", timeout=120)
        assert held.entered.acquire(timeout=30)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM, the peak resident size, to the current size
        before = _vm_kib("VmHWM")
        client = subprocess.run(
            [sys.executable, "-c", _STORM_CLIENT, str(held.server.port)], capture_output=True,
            text=True, timeout=120)
        assert client.returncode == 0, client.stderr[-3000:]
        assert client.stdout.split() == ["RESOURCE_EXHAUSTED"] * 6, client.stdout
        grew_mib = (_vm_kib("VmHWM") - before) / 1024
        print(f"peak memory grew {grew_mib:.1f} MiB while 6 x 48 MiB requests were refused")
        assert grew_mib < 48, "refused requests were read into memory"
        held.release()
        assert blocker.result() == b"4"
    finally:
        held.close()


_STORM_CLIENT = """
import sys
from concurrent import futures
import grpc
channel = grpc.insecure_channel("127.0.0.1:" + sys.argv[1],
                                options=[("grpc.max_send_message_length", 64 << 20)])
echo = channel.unary_unary("/test.Held/Echo")
body = b"y" * (48 << 20)
calls = [echo.future(body, timeout=60) for _ in range(6)]
for call in calls:
    try:
        call.result()
        print("OK")
    except grpc.RpcError as exc:
        print(exc.code().name)
"""


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")
