"""Fixtures for the fault tests: runtimes in-process (shared with tests/runtime) and
`deeprec-runtime serve` subprocesses for faults that must kill a real process."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.runtime.conftest import Client, demo, serve, wait_for  # noqa: F401 (shared fixtures)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServeProcess:
    """One `deeprec-runtime serve` process on a free loopback port, its output kept for asserts."""

    def __init__(self, config_path: str, *extra: str):
        self.config_path, self.extra = str(config_path), extra
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.port = 0
        self.channel: grpc.Channel | None = None

    def start(self, timeout: float = 60) -> ServeProcess:
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deeprec_runtime.cli", "serve", "--config", self.config_path,
             "--grpc-port", "0", "--host", "127.0.0.1", *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if "gRPC on port" in line:
                self.port = int(line.split("gRPC on port ")[1].split(",")[0])
                break
        assert self.port, "".join(self.lines)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.client = Client(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        return self

    def health_status(self) -> int:
        return self.health.Check(health_pb2.HealthCheckRequest(), timeout=5).status

    def wait_serving(self, timeout: float = 60) -> None:
        wait_for(lambda: self.health_status() == SERVING, timeout=timeout, message="SERVING")

    def blocked_in_fifo_open(self) -> bool:
        """True while one of the process's threads waits for the writer of a named pipe (the
        kernel's wait channel for an open() of a FIFO nobody writes)."""
        for wchan in glob.glob(f"/proc/{self.proc.pid}/task/*/wchan"):
            try:
                with open(wchan) as fh:
                    if fh.read().strip() == "wait_for_partner":
                        return True
            except OSError:  # the thread ended meanwhile
                continue
        return False

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.close_channel()

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.close_channel()


@pytest.fixture
def serve_process():
    """Starts `deeprec-runtime serve` processes; kills the ones still alive after the test and
    prints their output when the test failed."""
    started: list[ServeProcess] = []

    def start(config_path, *extra: str) -> ServeProcess:
        proc = ServeProcess(config_path, *extra).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGUSR1)  # stacks into the log, for a failed test
            time.sleep(0.2)
        proc.stop()
        print(proc.log)


def write_config(path, **fields) -> str:
    base = {"signature_name": "serving_default", "model_store_type": "local",
            "feature_store_type": "memory", "update_poll_seconds": 0.2, "warmup_iterations": 1}
    with open(path, "w") as fh:
        json.dump({**base, **fields}, fh)
    return str(path)
