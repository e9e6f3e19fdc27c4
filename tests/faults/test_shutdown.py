"""SIGTERM while several clients send requests: health turns NOT_SERVING at once, every request
already sent is answered, the process exits 0. The clients act as Kubernetes makes them: they
stop sending once the pod is not ready (health NOT_SERVING), not before."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np

from tests.runtime.conftest import make_request, output

from .conftest import NOT_SERVING, write_config

CLIENTS = 4


def test_sigterm_under_load_drains_every_sent_request_and_exits_zero(tmp_path, demo, serve_process):
    config = write_config(tmp_path / "model_config.json", savedmodel_dir=demo.saved_model_dir,
                          checkpoint_dir=demo.checkpoint_dir)
    server = serve_process(config, "--drain-seconds", "1", "--grace-seconds", "15",
                           "--annotations-file", str(tmp_path / "none"))
    server.wait_serving()
    request = make_request(demo.model.make_feed(16, np.random.default_rng(0)))
    not_ready = threading.Event()
    answered = [0] * CLIENTS
    failures: list[str] = []

    def client(i: int) -> None:
        while not not_ready.is_set():
            try:
                reply = server.client._predict(request, timeout=30)
                assert output(reply, "probability").shape == (16, 1)
                answered[i] += 1
            except (grpc.RpcError, AssertionError) as exc:
                failures.append(repr(exc))

    def watch_health() -> None:  # the kubelet's readiness probe, every 20 ms
        while not not_ready.is_set():
            try:
                if server.health_status() == NOT_SERVING:
                    not_ready.set()
            except grpc.RpcError:
                pass  # counted below: the process must not be gone before this is seen
            time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    before = sum(answered)
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    prober = threading.Thread(target=watch_health)
    prober.start()
    prober.join(timeout=30)
    took = time.monotonic() - signalled
    assert not_ready.is_set() and server.proc.poll() is None  # seen NOT_SERVING while still up
    for t in threads:
        t.join(timeout=30)
    assert server.proc.wait(timeout=30) == 0
    assert failures == []
    assert before > 0 and sum(answered) > before
    print(f"NOT_SERVING {took:.3f}s after SIGTERM; {sum(answered)} requests answered, "
          f"{sum(answered) - before} of them after the first second")
