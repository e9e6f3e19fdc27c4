"""Fixtures for the feature-store tests: a real redis-server per test, and runtimes on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import Callable

import grpc
import pytest
import redis

from deeprec_runtime.app import Runtime
from deeprec_runtime.config import parse_model_config
from deeprec_runtime.training import write_demo_model

from runtime.conftest import Client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server (Debian package `redis-server`) on a free loopback port, with no
    persistence: a restart comes back empty, as a crashed cache node does."""

    def __init__(self, workdir: str):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install -y redis-server")
        self.binary, self.workdir = binary, workdir
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}")
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(str(tmp_path))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def demo(tmp_path):
    """A small Wide&Deep model: SavedModel + checkpoint_1 (full + 1 delta), trainer still live."""
    art = write_demo_model(str(tmp_path / "model"), num_ids=2000, num_deltas=1, hidden=(32, 16),
                           steps_per_delta=2, batch_size=16)
    yield art
    art.close()


@pytest.fixture
def serve(tmp_path) -> Callable[..., tuple[Runtime, Client]]:
    """Starts in-process runtimes on free ports (several may share one Redis)."""
    started: list[tuple[Runtime, grpc.Channel]] = []

    def start(savedmodel_dir: str, checkpoint_dir: str = "", wait: bool = True,
              **fields) -> tuple[Runtime, Client]:
        raw = {"savedmodel_dir": savedmodel_dir, "checkpoint_dir": checkpoint_dir,
               "model_store_type": "local", "feature_store_type": "memory",
               "signature_name": "serving_default", "update_poll_seconds": 0.2,
               "warmup_iterations": 1, **fields}
        runtime = Runtime(parse_model_config(raw), grpc_port=0, host="127.0.0.1",
                          annotations_file=os.path.join(str(tmp_path), "no-annotations"))
        runtime.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
        started.append((runtime, channel))
        if wait:
            assert runtime.manager.wait_ready(60), runtime.manager.last_error
        return runtime, Client(channel)

    yield start
    for runtime, channel in started:
        channel.close()
        runtime.stop(1.0)
