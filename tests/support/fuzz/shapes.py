"""Requests built field by field from fuzz input, aimed at the shape and size checks: claimed
dimensions anywhere in int64 (products that wrap around, negative ones, zeros hiding huge
ones), ranks up to 1000, values that do not match the shape, TF Serving's fill rule and JSON
nested to any depth. Byte-level mutation of serialized requests rarely hits these.

A fuzz input whose first byte is at least STRUCTURED takes this path; the others are parsed as
bytes, as the corpus seeds always were.
"""

from __future__ import annotations

import json

import atheris
from tensorflow.core.framework import tensor_pb2

from deeprec_api import predict_pb2 as pb

STRUCTURED = 0xF0
#: Dimensions that break naive arithmetic: int32/int64 edges and products that wrap to 0.
INTERESTING_DIMS = [0, 1, 2, 3, -1, -2, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**62, 2**63 - 1,
                    -(2**63)]
RANKS = [0, 1, 2, 3, 63, 64, 65, 254, 255, 1000]
DTYPES = [pb.DT_FLOAT, pb.DT_DOUBLE, pb.DT_INT32, pb.DT_INT64, pb.DT_UINT8, pb.DT_INT8,
          pb.DT_BOOL, pb.DT_STRING, pb.DT_HALF, pb.DT_COMPLEX64, pb.DT_RESOURCE]
#: Input names of tests/support/history_model.py (and a few it does not have).
INPUT_NAMES = ["history", "history:0", "tags", "tags:0", "input1", "nope"]
_FIELDS = {pb.DT_FLOAT: "float_val", pb.DT_DOUBLE: "double_val", pb.DT_INT64: "int64_val",
           pb.DT_BOOL: "bool_val", pb.DT_STRING: "string_val", pb.DT_COMPLEX64: "float_val"}
_TFS_FIELDS = {pb.DT_HALF: "half_val", pb.DT_COMPLEX64: "scomplex_val"}


def fuzzed_dims(fdp: atheris.FuzzedDataProvider) -> list[int]:
    rank = fdp.PickValueInList(RANKS) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 6)
    return [fdp.PickValueInList(INTERESTING_DIMS) if fdp.ConsumeBool()
            else fdp.ConsumeIntInRange(-(2**63), 2**63 - 1) for _ in range(rank)]


def _fill(fdp: atheris.FuzzedDataProvider, message, dtype: int, fields: dict[int, str]) -> None:
    """A few values in the dtype's field (or in a wrong one), or raw tensor_content."""
    count = fdp.ConsumeIntInRange(0, 48)
    if fdp.ConsumeProbability() < 0.3:
        message.tensor_content = fdp.ConsumeBytes(count * fdp.PickValueInList([1, 2, 4, 8]))
        return
    field = fields.get(dtype, _FIELDS.get(dtype, "int_val"))
    if fdp.ConsumeProbability() < 0.1:
        field = fdp.PickValueInList(sorted(set(_FIELDS.values())))
    values = getattr(message, field)
    if field == "string_val":
        values.extend(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16)) for _ in range(count))
    elif field in ("float_val", "double_val", "scomplex_val"):
        values.extend(fdp.ConsumeFloatList(count))
    elif field == "bool_val":
        values.extend(fdp.ConsumeBool() for _ in range(count))
    elif field == "int64_val":
        values.extend(fdp.ConsumeIntListInRange(count, -(2**63), 2**63 - 1))
    else:
        values.extend(fdp.ConsumeIntListInRange(count, -(2**31), 2**31 - 1))


def _plausible(fdp: atheris.FuzzedDataProvider, request: pb.PredictRequest) -> None:
    """An input the history model accepts, or nearly: rank 2, the signature's dtype, as many
    values as the shape needs; the rows sometimes huge with no columns (an empty tensor)."""
    tags = fdp.ConsumeBool()
    request.signature_name = "tags" if tags else ""
    array = request.inputs["tags" if tags else "history"]
    array.dtype = pb.DT_STRING if tags else pb.DT_INT64
    if fdp.ConsumeProbability() < 0.2:
        dims = [fdp.PickValueInList(INTERESTING_DIMS[:10]), 0]
    else:
        dims = [fdp.ConsumeIntInRange(0, 6), fdp.ConsumeIntInRange(0, 8)]
    array.array_shape.dim.extend(dims)
    count = dims[0] * dims[1] if dims[1] else 0
    if tags:
        array.string_val.extend(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 600))
                                for _ in range(count))
    elif fdp.ConsumeBool():
        array.tensor_content = fdp.ConsumeBytes(count * 8)
    else:
        array.int64_val.extend(fdp.ConsumeIntListInRange(count, -(2**63), 2**63 - 1))


def deeprec_request(data: bytes) -> pb.PredictRequest:
    fdp = atheris.FuzzedDataProvider(data[1:])
    request = pb.PredictRequest(signature_name=fdp.PickValueInList(["", "tags", "serving_default"]))
    if fdp.ConsumeProbability() < 0.4:
        _plausible(fdp, request)
        return request
    for _ in range(fdp.ConsumeIntInRange(1, 2)):
        array = request.inputs[fdp.PickValueInList(INPUT_NAMES)]
        array.dtype = fdp.PickValueInList(DTYPES)
        if fdp.ConsumeProbability() < 0.9:
            array.array_shape.SetInParent()
            array.array_shape.dim.extend(fuzzed_dims(fdp))
        _fill(fdp, array, array.dtype, {})
    return request


def tfs_tensors(fdp: atheris.FuzzedDataProvider, inputs) -> None:
    """TF Serving inputs (name -> TensorProto), shapes as in deeprec_request; values often fewer
    than the shape, so TensorFlow's fill rule (the last value repeated) is exercised."""
    if fdp.ConsumeProbability() < 0.4:  # rank 2 int64, a few values filling any shape
        tensor = inputs["history"]
        tensor.dtype = pb.DT_INT64
        for _ in range(2):
            tensor.tensor_shape.dim.add(size=fdp.PickValueInList(INTERESTING_DIMS[:10])
                                        if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 600))
        tensor.int64_val.extend(fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 4), -9, 9))
        return
    for _ in range(fdp.ConsumeIntInRange(1, 2)):
        tensor: tensor_pb2.TensorProto = inputs[fdp.PickValueInList(INPUT_NAMES)]
        tensor.dtype = fdp.PickValueInList(DTYPES)
        if fdp.ConsumeProbability() < 0.1:
            tensor.tensor_shape.unknown_rank = True
        else:
            for d in fuzzed_dims(fdp):
                tensor.tensor_shape.dim.add(size=d)
        _fill(fdp, tensor, tensor.dtype, _TFS_FIELDS)


def _nested(fdp: atheris.FuzzedDataProvider, depth: int):
    """Nested lists `depth` deep, sometimes ragged, with numbers, strings or b64 leaves."""
    if depth == 0:
        return fdp.PickValueInList([0, 1, -1, 2**63, 1.5, "x", {"b64": "eA=="}, True, None])
    width = fdp.ConsumeIntInRange(0, 3)
    return [_nested(fdp, depth - 1 if fdp.ConsumeProbability() < 0.95 else depth)
            for _ in range(width)]


def rest_body(data: bytes) -> bytes:
    """A TF Serving REST body whose input is nested to a fuzzed depth (up to 1100 lists; the
    server's JSON parser refuses deeper ones itself)."""
    fdp = atheris.FuzzedDataProvider(data[1:])
    depth = fdp.PickValueInList([1, 2, 3, 64, 65, 200, 254, 255, 900, 1100]) \
        if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 5)
    inner = min(depth, 4)
    # The depth past `inner` as a chain of one-element lists, written as text: json.dumps
    # itself cannot nest that deep.
    value = "[" * (depth - inner) + json.dumps(_nested(fdp, inner)) + "]" * (depth - inner)
    name = json.dumps(fdp.PickValueInList(INPUT_NAMES))
    if fdp.ConsumeBool():
        body = f'{{"inputs": {{{name}: {value}}}'
    elif fdp.ConsumeBool():
        body = f'{{"instances": [{{{name}: {value}}}]'
    else:
        body = f'{{"instances": [{value}]'
    if fdp.ConsumeBool():
        body += ', "signature_name": "tags"'
    return (body + "}").encode()
