"""Fuzz target: TF Serving gRPC PredictRequest bytes and TF Serving REST JSON bodies against a
real model. The first byte picks the decoder. Only InvalidArgument / NotFound may escape.

Run: python tests/fuzz/fuzz_tfs_and_rest.py WORKDIR [libFuzzer flags] [corpus dirs]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import atheris  # noqa: E402
from seed_model import export_seed_model  # noqa: E402

with atheris.instrument_imports(include=["deeprec_runtime"]):
    from deeprec_runtime.errors import InvalidArgument, NotFound
    from deeprec_runtime.server.rest import tfs as rest_tfs
    from deeprec_runtime.server.rest.server import parse_json_body
    from deeprec_runtime.server.tfs_grpc import TfsAdapter


def build_registry(workdir: str):
    from deeprec_runtime.config import parse_model_config
    from deeprec_runtime.models import ModelEntry, ModelRegistry

    model_dir = export_seed_model(workdir)
    config = parse_model_config({"savedmodel_dir": model_dir, "warmup_iterations": 0}, env={})
    registry = ModelRegistry([ModelEntry("default", config)])
    registry.start()
    if not registry.default.manager.wait_ready(120):
        raise SystemExit(f"model did not load: {registry.default.manager.last_error}")
    return registry


def main() -> None:
    workdir = sys.argv.pop(1)
    os.makedirs(workdir, exist_ok=True)
    registry = build_registry(workdir)
    adapter = TfsAdapter(registry)

    def one_input(data: bytes) -> None:
        if not data:
            return
        try:
            if data[0] % 2 == 0:
                adapter.predict(data[1:], None)
            else:
                rest_tfs.predict(registry.default, None, parse_json_body(data[1:]))
        except (InvalidArgument, NotFound) as exc:
            assert str(exc), "errors must carry a message"

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
