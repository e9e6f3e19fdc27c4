"""gRPC adapter: TensorFlow Serving's PredictionService and ModelService on our port.

Messages are those of the PyPI `tensorflow-serving-api` package, so TF Serving clients
(`prediction_service_pb2_grpc.PredictionServiceStub`, ...) work unchanged. That package pins the
full `tensorflow` wheel, so it is installed with `--no-deps` and imported only when this module
is (app.py imports it lazily and serves without it when it is missing).

As in the DeepRec service, handlers take raw bytes and parse them themselves, so a request that
does not parse gets INVALID_ARGUMENT, not INTERNAL. model_spec: `name` picks the model (empty:
the default one), `version` / `version_label` pick a loaded version (see models.py for the
numbering); an unknown model or version is NOT_FOUND.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.admission import InflightBytes
from deeprec_runtime.codec import DEFAULT_MAX_DECODED_BYTES
from deeprec_runtime.errors import InvalidArgument
from deeprec_runtime.models import ModelRegistry, ServedModel
from deeprec_runtime.server.grpc_server import parse, unary
from deeprec_runtime.server.tfs_convert import (
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    array_to_tensor,
    classify,
    inner_arrays,
    merge_context,
    regress,
    signature_def,
)

if TYPE_CHECKING:
    from deeprec_runtime.metrics import Metrics

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
SIGNATURE_DEF_FIELD = "signature_def"

# TF Serving's error codes (tensorflow.error.Code) used in model status.
_OK, _UNKNOWN = 0, 2


class TfsAdapter:
    """Turns TF Serving requests into data-plane calls on the named model."""

    def __init__(self, models: ModelRegistry, metrics: Metrics | None = None):
        self.models = models
        self.metrics = metrics

    # --- model_spec ---------------------------------------------------------------------------
    def _model(self, spec: model_pb2.ModelSpec) -> tuple[ServedModel, str | None]:
        """The model and the loaded version (None: the serving one) a model_spec names."""
        model = self.models.get(spec.name)
        if self.metrics is not None:
            self.metrics.note(model.name)
        number = spec.version.value if spec.HasField("version") else None
        return model, model.resolve(number, spec.version_label or None)

    @staticmethod
    def _spec_out(out: model_pb2.ModelSpec, model: ServedModel, version: str,
                  signature_name: str = "") -> None:
        fill_model_spec(out, model.name, model.number_of(version), signature_name)

    # --- PredictionService --------------------------------------------------------------------
    def predict(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        request = parse(predict_pb2.PredictRequest, data, "tensorflow.serving.PredictRequest")
        model, version = self._model(request.model_spec)
        result, served = model.predict(
            inner_request(request, model.dataplane.max_decoded_bytes), version)
        return predict_response(result, model.name, model.number_of(served),
                                request.model_spec.signature_name or model.config.signature_name
                                ).SerializeToString()

    def get_model_metadata(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        request = parse(get_model_metadata_pb2.GetModelMetadataRequest, data,
                        "tensorflow.serving.GetModelMetadataRequest")
        fields = list(request.metadata_field)
        if not fields:
            raise InvalidArgument("metadata_field must name at least one field; "
                                  f"supported: {SIGNATURE_DEF_FIELD}")
        unknown = [f for f in fields if f != SIGNATURE_DEF_FIELD]
        if unknown:
            raise InvalidArgument(f"unsupported metadata_field {', '.join(unknown)}; "
                                  f"supported: {SIGNATURE_DEF_FIELD}")
        model, version = self._model(request.model_spec)
        signatures, served = model.signatures(version)
        defs = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in signatures.items():
            defs.signature_def[name].CopyFrom(signature_def(sig))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        self._spec_out(response.model_spec, model, served)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(defs)
        return response.SerializeToString()

    def _examples(self, inp: input_pb2.Input, spec: model_pb2.ModelSpec) -> list[bytes]:
        """The serialized examples of `inp`, bounded by the decoded-bytes limit of the model
        `spec` names."""
        kind = inp.WhichOneof("kind")
        if kind == "example_list":
            return [e.SerializeToString() for e in inp.example_list.examples]
        if kind == "example_list_with_context":
            lst = inp.example_list_with_context
            limit = self.models.get(spec.name).dataplane.max_decoded_bytes
            return merge_context(lst.context.SerializeToString(),
                                 [e.SerializeToString() for e in lst.examples], limit)
        raise InvalidArgument("input must hold example_list or example_list_with_context")

    def _classify(self, spec: model_pb2.ModelSpec, examples: list[bytes],
                  out: classification_pb2.ClassificationResult,
                  spec_out: model_pb2.ModelSpec) -> None:
        model, version = self._model(spec)
        result = classify(model, spec.signature_name, examples, version)
        rows = len(examples)
        width = (result.classes if result.classes is not None else result.scores).shape[1]  # type: ignore[union-attr]
        for i in range(rows):
            row = out.classifications.add()
            for j in range(width):
                cls = row.classes.add()
                if result.classes is not None:
                    cls.label = result.classes[i, j].decode("utf-8", "replace")
                if result.scores is not None:
                    cls.score = float(result.scores[i, j])
        self._spec_out(spec_out, model, result.version,
                       spec.signature_name or model.config.signature_name)

    def _regress(self, spec: model_pb2.ModelSpec, examples: list[bytes],
                 out: regression_pb2.RegressionResult, spec_out: model_pb2.ModelSpec) -> None:
        model, version = self._model(spec)
        values, served = regress(model, spec.signature_name, examples, version)
        for v in values.tolist():
            out.regressions.add(value=v)
        self._spec_out(spec_out, model, served, spec.signature_name or model.config.signature_name)

    def classify(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        request = parse(classification_pb2.ClassificationRequest, data,
                        "tensorflow.serving.ClassificationRequest")
        response = classification_pb2.ClassificationResponse()
        self._classify(request.model_spec, self._examples(request.input, request.model_spec),
                       response.result,
                       response.model_spec)
        return response.SerializeToString()

    def regress(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        request = parse(regression_pb2.RegressionRequest, data, "tensorflow.serving.RegressionRequest")
        response = regression_pb2.RegressionResponse()
        self._regress(request.model_spec, self._examples(request.input, request.model_spec),
                      response.result,
                      response.model_spec)
        return response.SerializeToString()

    def multi_inference(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        request = parse(inference_pb2.MultiInferenceRequest, data,
                        "tensorflow.serving.MultiInferenceRequest")
        if not request.tasks:
            raise InvalidArgument("MultiInferenceRequest has no tasks")
        names = {(t.model_spec.name, t.model_spec.version.value if t.model_spec.HasField("version")
                  else None, t.model_spec.version_label) for t in request.tasks}
        if len(names) > 1:
            raise InvalidArgument("all tasks of a MultiInferenceRequest must name the same model "
                                  "and version")
        signatures = [t.model_spec.signature_name for t in request.tasks]
        if len(set(signatures)) != len(signatures):
            raise InvalidArgument("two tasks name the same signature")
        examples = self._examples(request.input, request.tasks[0].model_spec)
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            result = response.results.add()
            if task.method_name == CLASSIFY_METHOD:
                self._classify(task.model_spec, examples, result.classification_result,
                               result.model_spec)
            elif task.method_name == REGRESS_METHOD:
                self._regress(task.model_spec, examples, result.regression_result, result.model_spec)
            else:
                raise InvalidArgument(f"unsupported task method_name '{task.method_name}'; use "
                                      f"{CLASSIFY_METHOD} or {REGRESS_METHOD}")
        return response.SerializeToString()

    # --- ModelService -------------------------------------------------------------------------
    def get_model_status(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        request = parse(get_model_status_pb2.GetModelStatusRequest, data,
                        "tensorflow.serving.GetModelStatusRequest")
        spec = request.model_spec
        model = self.models.get(spec.name)
        if self.metrics is not None:
            self.metrics.note(model.name)
        states = model.version_states(spec.version.value if spec.HasField("version") else None,
                                      spec.version_label or None)
        response = get_model_status_pb2.GetModelStatusResponse()
        state_enum = get_model_status_pb2.ModelVersionStatus.State
        for s in states:
            status = response.model_version_status.add(version=s.number,
                                                       state=state_enum.Value(s.state))
            status.status.error_code = _UNKNOWN if s.error else _OK
            status.status.error_message = s.error
        return response.SerializeToString()


def fill_model_spec(out: model_pb2.ModelSpec, model_name: str, version_number: int,
                    signature_name: str = "") -> None:
    """The model_spec of an answer: which model, version and signature answered."""
    out.name = model_name
    out.version.value = version_number
    if signature_name:
        out.signature_name = signature_name


def inner_request(request: predict_pb2.PredictRequest,
                  max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> pb.PredictRequest:
    """TF Serving's PredictRequest as the DeepRec one the data plane answers; InvalidArgument
    naming the input for shapes no tensor can have, or values TensorFlow's fill rule would
    repeat past `max_decoded_bytes`."""
    inner = pb.PredictRequest(signature_name=request.model_spec.signature_name,
                              output_filter=list(request.output_filter))
    inner_arrays(request.inputs, inner, max_decoded_bytes)
    return inner


def predict_response(result: pb.PredictResponse, model_name: str, version_number: int,
                     signature_name: str) -> predict_pb2.PredictResponse:
    """The data plane's answer as TF Serving's PredictResponse, naming what answered it."""
    response = predict_pb2.PredictResponse()
    fill_model_spec(response.model_spec, model_name, version_number, signature_name)
    for key, array in result.outputs.items():
        array_to_tensor(array, response.outputs[key])
    return response


def tfs_request(request: pb.PredictRequest, model_name: str) -> predict_pb2.PredictRequest:
    """A DeepRec PredictRequest as TF Serving's (the fast path checks its plans with one)."""
    out = predict_pb2.PredictRequest()
    out.model_spec.name = model_name
    if request.signature_name:
        out.model_spec.signature_name = request.signature_name
    for key, array in request.inputs.items():
        array_to_tensor(array, out.inputs[key])
    return out


def tfs_services(models: ModelRegistry, metrics: Metrics | None = None,
                 admission: InflightBytes | None = None) -> list[grpc.GenericRpcHandler]:
    """TF Serving's PredictionService and ModelService, over `models`; `admission` as in
    grpc_server.unary."""
    adapter = TfsAdapter(models, metrics)
    return [
        grpc.method_handlers_generic_handler(PREDICTION_SERVICE, {
            "Predict": unary(adapter.predict, admission),
            "GetModelMetadata": unary(adapter.get_model_metadata, admission),
            "Classify": unary(adapter.classify, admission),
            "Regress": unary(adapter.regress, admission),
            "MultiInference": unary(adapter.multi_inference, admission),
        }),
        grpc.method_handlers_generic_handler(MODEL_SERVICE, {
            "GetModelStatus": unary(adapter.get_model_status, admission),
        }),
    ]
