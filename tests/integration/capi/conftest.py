"""Builds libserving_processor.so and the C example once per session, and a small real model
(helpers in tests/support/capi.py)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from deeprec_runtime.training.checkpoint_writer import CheckpointWriter
from deeprec_runtime.training.demo_models import build_seed_example
from tests.support.capi import EXAMPLE, cli


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
