"""Fuzz target: bytes -> DeepRec PredictRequest -> the data-plane core on a real TensorFlow model.

Anything but a successful prediction or an InvalidArgument is a crash: an INTERNAL answer, an
uncaught exception, a hang (libFuzzer's -timeout) or a dead process.
Run: python tests/fuzz/fuzz_predict_request.py WORKDIR [libFuzzer flags] [corpus dirs]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import atheris  # noqa: E402
from seed_model import export_seed_model  # noqa: E402

with atheris.instrument_imports(include=["deeprec_runtime"]):
    from deeprec_runtime.errors import InvalidArgument
    from deeprec_runtime.predict import predict
    from deeprec_runtime.server.grpc_server import parse

from deeprec_runtime.protos import predict_pb2 as pb  # noqa: E402


def build_servable(workdir: str):
    """The seed example model (double + int32 inputs), loaded by the runtime's own loader."""
    from deeprec_runtime.config import parse_model_config
    from deeprec_runtime.model.servable import load_servable, session_options_from

    model_dir = export_seed_model(workdir)
    config = parse_model_config({"savedmodel_dir": model_dir}, env={})
    return load_servable(model_dir, None, lambda p: p, session_options_from(config))


def main() -> None:
    workdir = sys.argv.pop(1)
    os.makedirs(workdir, exist_ok=True)
    servable = build_servable(workdir)

    def one_input(data: bytes) -> None:
        try:
            request = parse(pb.PredictRequest, data, "deeprec.serving.PredictRequest")
            servable.gate.acquire_read()
            try:
                predict(servable, request, "serving_default")
            finally:
                servable.gate.release_read()
        except InvalidArgument as exc:
            assert str(exc), "an InvalidArgument must carry a message"

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
