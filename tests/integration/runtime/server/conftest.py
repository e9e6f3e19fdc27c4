"""One runtime serving two real models side by side, with gRPC (DeepRec + TF Serving) and HTTP
(the models and the calls on them: tests/support/runtime_server.py).

`seed` (the default model): DeepRec's documented example signature, one version `checkpoint_1`
whose full checkpoint has step 7, so TF Serving's version number is 7.
`examples`: a model over serialized tf.Examples with classification, regression and predict
signatures, served from its SavedModel variables (TF Serving version 1).
"""

from __future__ import annotations

import grpc
import pytest

from deeprec_runtime.app import Runtime
from deeprec_runtime.config import parse_model_config
from deeprec_runtime.models import ModelEntry
from tests.support.runtime_server import Served, build_seed, seed_config, write_examples_model


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("served")
    seed = build_seed(base / "seed")
    write_examples_model(str(base / "examples"))
    models = [ModelEntry("seed", parse_model_config(seed_config(base / "seed"))),
              ModelEntry("examples", parse_model_config(
                  {"savedmodel_dir": str(base / "examples"), "warmup_iterations": 1}))]
    runtime = Runtime(models[0].config, grpc_port=0, http_port=0, host="127.0.0.1",
                      annotations_file=str(base / "no-annotations"), models=models)
    runtime.start()
    assert runtime.models.wait_ready(60), [m.manager.last_error for m in runtime.models]
    channel = grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    yield Served(runtime, seed, channel)
    channel.close()
    runtime.stop(1.0)
    seed.close()
