"""SIGTERM while several clients send requests: health turns NOT_SERVING at once, every request
already sent is answered, the process exits 0. The clients act as Kubernetes makes them: they
stop sending once the pod is not ready (health NOT_SERVING), not before."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np

from deeprec_runtime.training import write_demo_model
from tests.support.faults import write_config
from tests.support.runtime import NOT_SERVING, make_request, output

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


def test_sigterm_while_deltas_arrive_stops_updates_first_and_exits_zero(tmp_path, serve_process):
    """Deltas keep arriving (the update thread polls every 50 ms and applies each new one in place,
    blocking the C++ plan) while clients call the C++ fast path; SIGTERM lands in the middle. The
    update thread must take no delta once updates are stopped (at most the one in progress ends),
    nothing may run a delta on a closed session or plan, and the process must exit 0."""
    demo = write_demo_model(str(tmp_path / "model"), num_ids=200_000, num_deltas=0, hidden=(32, 16),
                            steps_per_delta=1, batch_size=2048)
    try:
        config = write_config(tmp_path / "model_config.json", savedmodel_dir=demo.saved_model_dir,
                              checkpoint_dir=demo.checkpoint_dir, update_poll_seconds=0.05)
        server = serve_process(config, "--drain-seconds", "0.2", "--grace-seconds", "15",
                               "--annotations-file", str(tmp_path / "none"))
        server.wait_serving()
        request = make_request(demo.model.make_feed(4, np.random.default_rng(0)))
        stop = threading.Event()
        failures: list[str] = []

        def client() -> None:
            while not stop.is_set():
                try:
                    server.client._predict(request, timeout=30)
                except grpc.RpcError as exc:
                    failures.append(repr(exc))
                    return

        def applied() -> int:
            return sum("applied delta" in line for line in list(server.lines))

        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while applied() < 3 and time.monotonic() < deadline:
            demo.write_delta()
        assert applied() >= 3, "deltas were not applied while serving"
        stop.set()  # as Kubernetes stops sending: the calls already sent are answered
        for t in threads:
            t.join(timeout=30)
        server.proc.send_signal(signal.SIGTERM)
        for _ in range(5):  # the trainer does not know: deltas keep coming
            demo.write_delta()
        assert server.proc.wait(timeout=60) == 0
        lines = list(server.lines)
        log = "".join(lines)
        stopped = next(i for i, line in enumerate(lines) if "updates stopped" in line)
        after = [line for line in lines[stopped:] if "applied delta" in line]
        assert len(after) <= 1, log[-3000:]  # only the one already in progress
        for fatal in ("Traceback", "Segmentation", "Fatal Python error", "Check failed"):
            assert fatal not in log, log[-3000:]
        assert failures == []
    finally:
        demo.close()
