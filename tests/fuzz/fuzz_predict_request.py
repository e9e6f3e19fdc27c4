"""Fuzz target: bytes -> DeepRec PredictRequest -> the data-plane core on real TensorFlow models.

Two models: DeepRec's seed example (double + int32 inputs) and a model with two unknown
dimensions (tests/support/history_model.py), which any claimed rank-2 shape passes, so the codec's
shape and size checks are all that stands between it and numpy / TensorFlow. Inputs whose first
byte is at least shapes.STRUCTURED build a request field by field with absurd shapes (see
tests/support/fuzz/shapes.py), decoded under a small per-request bound (4 KiB) so that path is
exercised too; the others are parsed as bytes. A request naming the history model's inputs runs on it.

Anything but a successful prediction or an InvalidArgument is a crash: an INTERNAL answer, an
uncaught exception, a hang (libFuzzer's -timeout) or a dead process.
Run: python tests/fuzz/fuzz_predict_request.py WORKDIR [libFuzzer flags] [corpus dirs]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.support.fuzz.seed_model import export_seed_model
from tests.support.history_model import export_history_model

with atheris.instrument_imports(include=["deeprec_runtime"]):
    from deeprec_runtime.core.handle import ServableHandle
    from deeprec_runtime.errors import InvalidArgument
    from deeprec_runtime.predict import predict
    from deeprec_runtime.server.grpc_server import parse

from deeprec_api import predict_pb2 as pb
from tests.support.fuzz import shapes

HISTORY_INPUTS = ("history", "tags")
SMALL_BOUND = 4096


def load(model_dir: str):
    """A SavedModel loaded by the runtime's own loader."""
    from deeprec_runtime.config import parse_model_config
    from deeprec_runtime.model.servable import session_options_from
    from deeprec_runtime.model.tf_loader import load_servable

    config = parse_model_config({"savedmodel_dir": model_dir}, env={})
    return load_servable(model_dir, None, lambda p: p, session_options_from(config))


def main() -> None:
    workdir = sys.argv.pop(1)
    os.makedirs(workdir, exist_ok=True)
    seed = load(export_seed_model(workdir))
    history = load(export_history_model(workdir))

    def one_input(data: bytes) -> None:
        try:
            if data[:1] and data[0] >= shapes.STRUCTURED:
                request, bound = shapes.deeprec_request(data), SMALL_BOUND
            else:
                request = parse(pb.PredictRequest, data, "deeprec.serving.PredictRequest")
                bound = 64 << 20
            names = {k.split(":")[0] for k in request.inputs}
            servable = history if names & set(HISTORY_INPUTS) else seed
            with ServableHandle.of(servable):
                predict(servable, request, "serving_default", max_decoded_bytes=bound)
        except InvalidArgument as exc:
            assert str(exc), "an InvalidArgument must carry a message"

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
