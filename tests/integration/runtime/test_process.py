"""The `deeprec-runtime serve` process: start-up, SIGTERM drain, exit status."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from tests.support.runtime import NOT_SERVING, make_request, output, wait_for


@pytest.mark.parametrize("grpc_server", ["python", "native"])
def test_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path, demo, serve_process,
                                                          grpc_server):
    config = tmp_path / "model_config.json"
    config.write_text(json.dumps({
        "savedmodel_dir": demo.saved_model_dir, "checkpoint_dir": demo.checkpoint_dir,
        "signature_name": "serving_default", "model_store_type": "local",
        "feature_store_type": "memory", "redis_password": "pw-DO-NOT-LOG"}))
    server = serve_process(config, "--grace-seconds", "10", "--drain-seconds", "1",
                           "--grpc-server", grpc_server)
    server.wait_serving()
    feed = demo.model.make_feed(64, np.random.default_rng(0))
    request = make_request(feed)
    futures = [server.client._predict.future(request, timeout=30) for _ in range(40)]
    server.proc.send_signal(signal.SIGTERM)
    # Health turns NOT_SERVING at once; every request already sent is still answered.
    wait_for(lambda: server.health_status() == NOT_SERVING, timeout=30, message="NOT_SERVING")
    results = [f.result() for f in futures]
    assert all(output(r, "probability").shape == (64, 1) for r in results)
    assert server.proc.wait(timeout=30) == 0
    assert "pw-DO-NOT-LOG" not in server.log


@pytest.mark.parametrize("grpc_server", ["python", "native"])
def test_calls_that_keep_coming_keep_the_drain_open_until_the_grace_ends(tmp_path, demo, serve_process,
                                                                         grpc_server):
    # A client whose connection stays on a terminating pod (a Service ClusterIP's connection is
    # pinned by kube-proxy) goes on calling after SIGTERM: the drain is not quiet and must not
    # stop the server early. Predict answered in C++ (native fast path) counts as a call too.
    config = tmp_path / "model_config.json"
    config.write_text(json.dumps({
        "savedmodel_dir": demo.saved_model_dir, "checkpoint_dir": demo.checkpoint_dir,
        "signature_name": "serving_default", "model_store_type": "local",
        "feature_store_type": "memory"}))
    server = serve_process(config, "--grace-seconds", "6", "--drain-seconds", "1",
                           "--grpc-server", grpc_server)
    server.wait_serving()
    request = make_request(demo.model.make_feed(1, np.random.default_rng(0)))
    answered: list[float] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                server.client._predict(request, timeout=5)
                answered.append(time.monotonic())
            except grpc.RpcError:
                if server.proc.poll() is not None:
                    return

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    wait_for(lambda: len(answered) > 20, timeout=30, message="the load running")
    sigterm = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    stop.set()
    thread.join(timeout=10)
    # Answered until the grace ran out (6 s), not cut off after the 1 s of --drain-seconds.
    assert max(answered) - sigterm > 4.0, f"last answer {max(answered) - sigterm:.2f}s after SIGTERM"


def test_invalid_config_fails_at_start_up_naming_the_field(tmp_path):
    config = tmp_path / "model_config.json"
    config.write_text(json.dumps({"savedmodel_dir": "/m", "session_num": -3}))
    result = subprocess.run(
        [sys.executable, "-m", "deeprec_runtime.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "session_num" in result.stderr and "[1, 1024]" in result.stderr


def test_a_taken_port_fails_at_start_up_with_a_message(tmp_path, demo, serve_process):
    config = tmp_path / "model_config.json"
    config.write_text(json.dumps({"savedmodel_dir": demo.saved_model_dir,
                                  "checkpoint_dir": demo.checkpoint_dir}))
    first = serve_process(config)
    result = subprocess.run(
        [sys.executable, "-m", "deeprec_runtime.cli", "serve", "--config", str(config),
         "--grpc-port", str(first.port), "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"cannot bind gRPC port 127.0.0.1:{first.port}" in result.stderr
    assert "Traceback" not in result.stderr
