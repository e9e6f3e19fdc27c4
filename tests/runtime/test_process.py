"""The `deeprec-runtime serve` process: start-up, SIGTERM drain, exit status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import Client, make_request, output, wait_for


def _start(config_path, *extra):
    proc = subprocess.Popen(
        [sys.executable, "-m", "deeprec_runtime.cli", "serve", "--config", str(config_path),
         "--grpc-port", "0", "--host", "127.0.0.1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines: list[str] = []
    port = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "gRPC on port" in line:
            port = int(line.rsplit(" ", 1)[1])
            break
    assert port, "".join(lines)
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, port, lines


def test_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path, demo):
    config = tmp_path / "model_config.json"
    config.write_text(json.dumps({
        "savedmodel_dir": demo.saved_model_dir, "checkpoint_dir": demo.checkpoint_dir,
        "signature_name": "serving_default", "model_store_type": "local",
        "feature_store_type": "memory", "redis_password": "pw-DO-NOT-LOG"}))
    proc, port, lines = _start(config, "--grace-seconds", "10", "--drain-seconds", "1")
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        client = Client(channel)
        health = health_pb2_grpc.HealthStub(channel)
        wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                 == health_pb2.HealthCheckResponse.SERVING, timeout=60, message="SERVING")
        feed = demo.model.make_feed(64, np.random.default_rng(0))
        request = make_request(feed)
        futures = [client._predict.future(request, timeout=30) for _ in range(40)]
        proc.send_signal(signal.SIGTERM)
        # Health turns NOT_SERVING at once; every request already sent is still answered.
        wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                 == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=30, message="NOT_SERVING")
        results = [f.result() for f in futures]
        assert all(output(r, "probability").shape == (64, 1) for r in results)
        assert proc.wait(timeout=30) == 0
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)  # the server prints every thread's stack
            time.sleep(1)
        print("".join(lines))
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(lines)
    assert "pw-DO-NOT-LOG" not in log


def test_invalid_config_fails_at_start_up_naming_the_field(tmp_path):
    config = tmp_path / "model_config.json"
    config.write_text(json.dumps({"savedmodel_dir": "/m", "session_num": -3}))
    result = subprocess.run(
        [sys.executable, "-m", "deeprec_runtime.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "session_num" in result.stderr and "[1, 1024]" in result.stderr
