"""Fuzz target: TF Serving gRPC PredictRequest bytes and TF Serving REST JSON bodies against real
models. The first byte picks the decoder: below shapes.STRUCTURED, even -> gRPC bytes, odd ->
REST bytes (against DeepRec's seed example); from shapes.STRUCTURED up, a request built field by
field with absurd shapes (TensorProto dims, TensorFlow's fill rule, JSON nested to any depth)
against a model with two unknown dimensions (tests/support/history_model.py), whose decoded inputs
are bounded to 4 KiB per request. Only InvalidArgument / NotFound may escape.

Run: python tests/fuzz/fuzz_tfs_and_rest.py WORKDIR [libFuzzer flags] [corpus dirs]
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
    from deeprec_runtime.errors import InvalidArgument, NotFound
    from deeprec_runtime.server.rest import tfs as rest_tfs
    from deeprec_runtime.server.rest.routes import parse_json_body
    from deeprec_runtime.server.tfs_grpc import TfsAdapter

from tensorflow_serving.apis import predict_pb2

from tests.support.fuzz import shapes

SMALL_BOUND = 4096


def build_registry(workdir: str):
    from deeprec_runtime.config import parse_model_config
    from deeprec_runtime.models import ModelEntry, ModelRegistry

    def config(model_dir: str):
        return parse_model_config({"savedmodel_dir": model_dir, "warmup_iterations": 0}, env={})

    registry = ModelRegistry([ModelEntry("default", config(export_seed_model(workdir))),
                              ModelEntry("history", config(export_history_model(workdir)))])
    registry.start()
    if not registry.wait_ready(120):
        raise SystemExit(f"models did not load: {[m.manager.last_error for m in registry]}")
    registry.get("history").dataplane.set_limits(SMALL_BOUND, SMALL_BOUND)
    return registry


def main() -> None:
    workdir = sys.argv.pop(1)
    os.makedirs(workdir, exist_ok=True)
    registry = build_registry(workdir)
    history = registry.get("history")
    adapter = TfsAdapter(registry)

    def one_input(data: bytes) -> None:
        if not data:
            return
        try:
            if data[0] >= shapes.STRUCTURED + 8:
                rest_tfs.predict(history, None, parse_json_body(shapes.rest_body(data)))
            elif data[0] >= shapes.STRUCTURED:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "history"
                fdp = atheris.FuzzedDataProvider(data[1:])
                if fdp.ConsumeBool():
                    request.model_spec.signature_name = "tags"
                shapes.tfs_tensors(fdp, request.inputs)
                adapter.predict(request.SerializeToString(), None)
            elif data[0] % 2 == 0:
                adapter.predict(data[1:], None)
            else:
                rest_tfs.predict(registry.default, None, parse_json_body(data[1:]))
        except (InvalidArgument, NotFound) as exc:
            assert str(exc), "errors must carry a message"

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
