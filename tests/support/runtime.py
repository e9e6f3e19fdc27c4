"""Real small models on disk served over real gRPC on loopback: helpers and fixtures.

Shared by tests/integration (runtime, stores, features, deeprec) and tests/faults. The fixtures
(``demo``, ``seed_model``, ``serve``, ``serve_process``) are defined here and imported into the
conftest.py of each folder that uses them; import the helpers absolutely
(``from tests.support.runtime import output``).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.app import Runtime
from deeprec_runtime.codec import encode_array
from deeprec_runtime.config import parse_model_config
from deeprec_runtime.training import write_demo_model
from deeprec_runtime.training.checkpoint_writer import CheckpointWriter
from deeprec_runtime.training.demo_models import build_seed_example

SERVICE = "/deeprec.serving.PredictionService/"


@dataclass
class Client:
    """A DeepRec gRPC client over a real channel."""

    channel: grpc.Channel

    def __post_init__(self) -> None:
        self._predict = self.channel.unary_unary(
            SERVICE + "Predict", request_serializer=pb.PredictRequest.SerializeToString,
            response_deserializer=pb.PredictResponse.FromString)
        self._info = self.channel.unary_unary(
            SERVICE + "GetServingModelInfo",
            request_serializer=pb.ServingModelInfoRequest.SerializeToString,
            response_deserializer=pb.ServingModelInfo.FromString)
        self.raw_predict = self.channel.unary_unary(SERVICE + "Predict")

    def predict(self, inputs: dict[str, np.ndarray], output_filter=(), signature_name="",
                timeout=10) -> pb.PredictResponse:
        return self._predict(make_request(inputs, output_filter, signature_name), timeout=timeout)

    def info(self) -> pb.ServingModelInfo:
        return self._info(pb.ServingModelInfoRequest(), timeout=10)


def make_request(inputs, output_filter=(), signature_name="") -> pb.PredictRequest:
    req = pb.PredictRequest(signature_name=signature_name, output_filter=list(output_filter))
    for key, value in inputs.items():
        encode_array(np.asarray(value), req.inputs[key])
    return req


def output(response: pb.PredictResponse, key: str) -> np.ndarray:
    proto = response.outputs[key]
    from deeprec_runtime.codec import decode_array

    return decode_array(proto, key)


@pytest.fixture
def demo(tmp_path):
    """A small Wide&Deep model: SavedModel + checkpoint_1 (full + 1 delta), trainer still live."""
    art = write_demo_model(str(tmp_path / "model"), num_ids=2000, num_deltas=1, hidden=(32, 16),
                           steps_per_delta=2, batch_size=16)
    yield art
    art.close()


@pytest.fixture
def seed_model(tmp_path):
    """DeepRec's documented example signature (input1 double, input2 int32 -> prediction)."""
    model = build_seed_example(num_ids=50)
    base = tmp_path / "seed"
    writer = CheckpointWriter(model.session, str(base / "checkpoints"), "checkpoint_1",
                              model.embedding_variables, model.dense_variables)
    model.writer = writer
    writer.export_saved_model(str(base / "saved_model"), model.inputs, model.outputs)
    model.train_step(8)
    writer.save_full(1)
    yield model, writer, base
    model.close()


@pytest.fixture
def serve(tmp_path) -> Callable[..., tuple[Runtime, Client]]:
    """Starts an in-process runtime on a free port; stops it after the test."""
    started: list[tuple[Runtime, grpc.Channel]] = []

    def start(savedmodel_dir: str, checkpoint_dir: str = "", wait: bool = True,
              annotations_file: str | None = None, fast_predict: bool = True,
              http_port: int | None = None, models: tuple[str, ...] = (),
              **fields) -> tuple[Runtime, Client]:
        """`models`: the names of several models serving the same files (the first is the
        default model)."""
        from deeprec_runtime.models import ModelEntry

        raw = {"savedmodel_dir": savedmodel_dir, "checkpoint_dir": checkpoint_dir,
               "model_store_type": "local", "feature_store_type": "memory",
               "signature_name": "serving_default", "update_poll_seconds": 0.2,
               "warmup_iterations": 1, **fields}
        config = parse_model_config(raw)
        runtime = Runtime(config, grpc_port=0, host="127.0.0.1",
                          annotations_file=annotations_file or str(tmp_path / "no-annotations"),
                          fast_predict=fast_predict, http_port=http_port,
                          models=[ModelEntry(name, config) for name in models] or None)
        runtime.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
        started.append((runtime, channel))
        if wait:
            assert runtime.models.wait_ready(60), [m.manager.last_error for m in runtime.models]
        return runtime, Client(channel)

    yield start
    for runtime, channel in started:
        channel.close()
        runtime.stop(1.0)


def plan_of(runtime):
    """The serving version's fast-predict plan (None when it has none)."""
    with runtime.manager.hold() as handle:
        servable = handle.servable
        return servable.fast_plan


def wait_for(predicate, timeout=30.0, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    if callable(message):  # built only on failure (e.g. a process's log)
        message = message()
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def write_config(path, **fields) -> str:
    with open(path, "w") as fh:
        json.dump(fields, fh)
    return str(path)


def touch_newer(path: str) -> None:
    """Makes a state file's mtime strictly newer (filesystems with coarse timestamps)."""
    now = time.time() + 1
    os.utime(path, (now, now))


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServeProcess:
    """One `deeprec-runtime serve` process on a free loopback port, its output kept for asserts."""

    def __init__(self, config_path: str, *extra: str, env: dict[str, str] | None = None):
        self.config_path, self.extra = str(config_path), extra
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
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
            env=self.env)
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
