"""Builds libserving_processor.so and the C example once per session, and a small real model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.codec import encode_array
from deeprec_runtime.training.checkpoint_writer import CheckpointWriter
from deeprec_runtime.training.demo_models import build_seed_example

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "c" / "processor_client.c"


def cli(*args: str, env: dict | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "deeprec_runtime.cli", *args], env=env,
                         capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="session")
def capi_library(tmp_path_factory) -> str:
    """Built by the CLI, as a user would, into a fresh folder (not the per-user cache)."""
    folder = tmp_path_factory.mktemp("capi-lib")
    env = {**os.environ, "DEEPREC_CAPI_DIR": str(folder)}
    path = cli("capi-path", env=env)
    assert path == str(folder / "libserving_processor.so") and os.path.isfile(path)
    # A second call finds it built and returns at once.
    assert cli("capi-path", env=env) == path
    return path


@pytest.fixture(scope="session")
def c_client(tmp_path_factory) -> str:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is required to build the C API example (apt-get install gcc)"
    include = cli("capi-include")
    assert os.path.isfile(os.path.join(include, "processor.h"))
    exe = str(tmp_path_factory.mktemp("c-example") / "processor_client")
    subprocess.run([gcc, "-O2", "-Wall", "-Wextra", "-Werror", f"-I{include}", str(EXAMPLE),
                    "-o", exe, "-ldl", "-lpthread"], check=True, timeout=120)
    return exe


def make_request(inputs: dict, output_filter=()) -> pb.PredictRequest:
    req = pb.PredictRequest(output_filter=list(output_filter))
    for key, value in inputs.items():
        encode_array(np.asarray(value), req.inputs[key])
    return req


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """DeepRec's documented signature (input1 double, input2 int32 -> probabilities), served from
    checkpoint_1; yields (model, model_config dict, folder)."""
    base = tmp_path_factory.mktemp("seed")
    model = build_seed_example(num_ids=50)
    writer = CheckpointWriter(model.session, str(base / "checkpoints"), "checkpoint_1",
                              model.embedding_variables, model.dense_variables)
    writer.export_saved_model(str(base / "saved_model"), model.inputs, model.outputs)
    model.train_step(8)
    writer.save_full(1)
    config = {"savedmodel_dir": str(base / "saved_model"), "checkpoint_dir": str(base / "checkpoints"),
              "model_store_type": "local", "feature_store_type": "memory",
              "signature_name": "serving_default", "warmup_iterations": 1}
    yield model, config, base
    model.close()


def write_json(path: Path, value) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def run_client(exe: str, library: str, config_path: str, *commands: str, cwd: str):
    """Runs examples/c/processor_client.c's binary in a clean environment (no PYTHONPATH, no
    virtualenv variables): the C host a user writes."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DEEPREC_LOG_LEVEL": "WARNING",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([exe, library, config_path, *commands], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=180, check=False)
