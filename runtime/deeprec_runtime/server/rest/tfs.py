"""TensorFlow Serving's REST API over the data plane.

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    {"instances": [...]} (row) or
                                                                 {"inputs": ...} (columnar)
    POST /v1/models/{name}[...]:classify | :regress              {"examples": [...], "context"}

Errors come back as {"error": "..."} with the status of the ServingError (400, 404, 503 ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import json_format
from tensorflow.core.example import example_pb2

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.codec import DEFAULT_MAX_DECODED_BYTES, DecodeBudget, decode_array, encode_array
from deeprec_runtime.errors import InvalidArgument
from deeprec_runtime.model.signature import Signature
from deeprec_runtime.models import ServedModel, parse_version_number
from deeprec_runtime.server.rest.jsonio import _b64decode, is_b64, to_array, to_json
from deeprec_runtime.server.tfs_convert import (
    classify,
    merge_context,
    regress,
    signature_def,
)


def version_choice(version: str | None, label: str | None) -> tuple[int | None, str | None]:
    """The /versions/{v} or /labels/{l} part of a URL."""
    number = parse_version_number(version, "version in the URL") if version is not None else None
    return number, label


def predict_named(model: ServedModel, version: str | None, sig: Signature,
                  named: dict[str, Any]) -> tuple[dict[str, np.ndarray], str]:
    """Named JSON inputs -> the data plane -> output arrays and the version that served. Inputs
    are typed by the signature, then checked by the predict core as any request's are."""
    request = pb.PredictRequest(signature_name=sig.name)
    budget = DecodeBudget(model.dataplane.max_decoded_bytes)
    for key, value in named.items():
        encode_array(to_array(value, sig.input(key), key, budget), request.inputs[key],
                     use_tensor_content=True)
    # REST requests reach no native front end: the version's C++ plan may run them here.
    response, served = model.predict(request, version, offer_native=True)
    return {k: decode_array(v, k) for k, v in response.outputs.items()}, served


def _single_input(sig: Signature, where: str) -> str:
    if len(sig.inputs) != 1:
        raise InvalidArgument(f"{where} without input names needs a signature with exactly one "
                              f"input; '{sig.name}' has {', '.join(sorted(sig.inputs))}")
    return next(iter(sig.inputs))


def _named(value: Any) -> bool:
    return isinstance(value, dict) and not is_b64(value)


def predict(model: ServedModel, version: str | None, body: dict[str, Any]) -> dict[str, Any]:
    signature_name = body.get("signature_name") or ""
    if not isinstance(signature_name, str):
        raise InvalidArgument("'signature_name' must be a string")
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise InvalidArgument("the body must hold exactly one of 'instances' (row format) or "
                              "'inputs' (columnar format)")
    sig = model.signature(signature_name, version)
    if has_columns:
        inputs = body["inputs"]
        named = inputs if _named(inputs) else {_single_input(sig, "'inputs'"): inputs}
        outputs, _ = predict_named(model, version, sig, named)
        if len(outputs) == 1:
            key, array = next(iter(outputs.items()))
            return {"outputs": to_json(array, key)}
        return {"outputs": {k: to_json(v, k) for k, v in outputs.items()}}
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidArgument("'instances' must be a non-empty list")
    if all(_named(i) for i in instances):
        keys = set(instances[0])
        if any(set(i) != keys for i in instances):
            raise InvalidArgument("every instance must name the same inputs")
        named = {k: [i[k] for i in instances] for k in keys}
    elif any(_named(i) for i in instances):
        raise InvalidArgument("'instances' mixes named (objects) and unnamed values")
    else:
        named = {_single_input(sig, "'instances'"): instances}
    outputs, _ = predict_named(model, version, sig, named)
    if len(outputs) == 1:
        key, array = next(iter(outputs.items()))
        return {"predictions": to_json(array, key)}
    rows = {a.shape[0] if a.ndim else -1 for a in outputs.values()}
    if len(rows) != 1 or -1 in rows:
        raise InvalidArgument("the outputs do not share a batch dimension; use the columnar "
                              "format ('inputs') for this signature")
    n = rows.pop()
    return {"predictions": [{k: to_json(a[i], k) for k, a in outputs.items()} for i in range(n)]}


# --- Classify / Regress -------------------------------------------------------------------
def _feature(values: Any, name: str, out: example_pb2.Feature) -> None:
    items = values if isinstance(values, list) else [values]
    if all(isinstance(v, str) or is_b64(v) for v in items):
        out.bytes_list.value.extend(v.encode("utf-8") if isinstance(v, str) else _b64decode(v, name)
                                    for v in items)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        try:
            out.int64_list.value.extend(items)
        except ValueError:
            raise InvalidArgument(f"feature '{name}': integer out of int64 range") from None
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        out.float_list.value.extend(items)
    else:
        raise InvalidArgument(f"feature '{name}' must be a number, a string, {{\"b64\": ...}} or "
                              "a flat list of one of them")


def _example(obj: Any, where: str) -> bytes:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{where} must be an object of features")
    example = example_pb2.Example()
    for name, values in obj.items():
        _feature(values, name, example.features.feature[name])
    return example.SerializeToString()


def examples(body: dict[str, Any], max_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> list[bytes]:
    """The body's examples serialized, each merged with the context; past `max_bytes` in all
    InvalidArgument (see merge_context)."""
    items = body.get("examples")
    if not isinstance(items, list) or not items:
        raise InvalidArgument("'examples' must be a non-empty list of objects")
    context = body.get("context")
    ctx = _example(context, "'context'") if context is not None else b""
    return merge_context(ctx, [_example(e, f"examples[{i}]") for i, e in enumerate(items)],
                         max_bytes)


def _signature_name(body: dict[str, Any]) -> str:
    name = body.get("signature_name") or ""
    if not isinstance(name, str):
        raise InvalidArgument("'signature_name' must be a string")
    return name


def classify_json(model: ServedModel, version: str | None, body: dict[str, Any]) -> dict[str, Any]:
    result = classify(model, _signature_name(body),
                      examples(body, model.dataplane.max_decoded_bytes), version)
    ref = result.classes if result.classes is not None else result.scores
    if ref is None:
        raise RuntimeError("classify returned neither classes nor scores")
    rows = []
    for i in range(ref.shape[0]):
        row = []
        for j in range(ref.shape[1]):
            label = result.classes[i, j] if result.classes is not None else b""
            score = float(result.scores[i, j]) if result.scores is not None else 0.0
            row.append([label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label),
                        score])
        rows.append(row)
    return {"result": rows}


def regress_json(model: ServedModel, version: str | None, body: dict[str, Any]) -> dict[str, Any]:
    values, _ = regress(model, _signature_name(body),
                        examples(body, model.dataplane.max_decoded_bytes), version)
    return {"result": values.tolist()}


# --- status and metadata ------------------------------------------------------------------
def status_json(model: ServedModel, number: int | None, label: str | None) -> dict[str, Any]:
    return {"model_version_status": [
        {"version": str(s.number), "state": s.state,
         "status": {"error_code": "UNKNOWN" if s.error else "OK", "error_message": s.error}}
        for s in model.version_states(number, label)]}


def metadata_json(model: ServedModel, version: str | None) -> dict[str, Any]:
    signatures, served = model.signatures(version)
    defs = {name: json_format.MessageToDict(signature_def(sig), preserving_proto_field_name=True)
            for name, sig in signatures.items()}
    return {"model_spec": {"name": model.name, "signature_name": "",
                           "version": str(model.number_of(served))},
            "metadata": {"signature_def": {"signature_def": defs}}}
