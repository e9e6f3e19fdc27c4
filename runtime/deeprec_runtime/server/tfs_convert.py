"""TensorFlow Serving's semantics over our data plane, shared by its gRPC and REST adapters.

TensorProto <-> ArrayProto field by field (the dtype enums have the same numbers; repeated
fields are copied by upb's C code and tensor_content as bytes, never through tf.make_ndarray), so
every TF Serving request ends in the same predict core, with the same checks, as a DeepRec one.
Classify and Regress run the model's classification / regression signature on serialized
tf.Examples. Only TensorFlow's own protos are imported here, not the tensorflow-serving-api
package, so REST works without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.codec import (
    DEFAULT_MAX_DECODED_BYTES,
    STRING_OVERHEAD_BYTES,
    DecodeBudget,
    decode_array,
    element_count,
    numpy_dtype,
    shape_text,
)
from deeprec_runtime.errors import InvalidArgument
from deeprec_runtime.model.signature import Signature, TensorSpec
from deeprec_runtime.models import ServedModel

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# dtype -> (TensorProto field, ArrayProto field) for values not in tensor_content.
_FIELDS = {
    pb.DT_FLOAT: ("float_val", "float_val"), pb.DT_DOUBLE: ("double_val", "double_val"),
    pb.DT_INT32: ("int_val", "int_val"), pb.DT_INT16: ("int_val", "int_val"),
    pb.DT_INT8: ("int_val", "int_val"), pb.DT_UINT8: ("int_val", "int_val"),
    pb.DT_UINT16: ("int_val", "int_val"), pb.DT_INT64: ("int64_val", "int64_val"),
    pb.DT_BOOL: ("bool_val", "bool_val"), pb.DT_STRING: ("string_val", "string_val"),
    pb.DT_HALF: ("half_val", "int_val"), pb.DT_BFLOAT16: ("half_val", "int_val"),
    pb.DT_COMPLEX64: ("scomplex_val", "float_val"), pb.DT_COMPLEX128: ("dcomplex_val", "double_val"),
}


def tensor_to_array(tensor: tensor_pb2.TensorProto, out: pb.ArrayProto, name: str = "",
                    budget: DecodeBudget | None = None) -> None:
    """TF TensorProto -> DeepRec ArrayProto (filled in place), for input `name` (error messages).
    Unsupported dtypes are copied as they are: the predict core rejects them with the list of
    supported ones. The shape is checked (rank, negative dimensions, element count) before any
    value is copied, and values TensorFlow's fill rule would add are charged to `budget`."""
    out.dtype = tensor.dtype
    dims = None
    if not tensor.tensor_shape.unknown_rank:
        dims = [d.size for d in tensor.tensor_shape.dim]
        element_count(dims, name)
        out.array_shape.SetInParent()  # a scalar has a shape with no dims
        out.array_shape.dim.extend(dims)
    content = tensor.tensor_content  # each read of a bytes field copies it
    if content:
        out.tensor_content = content
        return
    fields = _FIELDS.get(tensor.dtype)
    if fields is not None:
        values = getattr(out, fields[1])
        values.extend(getattr(tensor, fields[0]))
        if dims is not None:
            _repeat_last(tensor.dtype, dims, values, name, budget)


def _repeat_last(dtype: int, dims: list[int], values, name: str,
                 budget: DecodeBudget | None) -> None:
    """TensorFlow's rule for a repeated field shorter than the shape (Tensor::FromProto, so TF
    Serving too): the last value fills the rest, e.g. float_val [0] with shape [2, 3] is six
    zeros. A tensor with no values at all stays an error (TensorFlow would silently zero it,
    which hides values sent in the wrong field). A few bytes can ask for any number of copies,
    so they are charged to `budget` before they are made."""
    if not values:
        return
    per_element = 2 if dtype in (pb.DT_COMPLEX64, pb.DT_COMPLEX128) else 1
    missing = element_count(dims, name) * per_element - len(values)
    if missing <= 0 or len(values) % per_element:
        return
    last = list(values[-per_element:])
    if budget is not None:
        budget.charge(name, _fill_bytes(dtype, last, missing // per_element),
                      f"once its last value is repeated to fill shape {shape_text(dims)}")
    values.extend(last * (missing // per_element))


def _fill_bytes(dtype: int, last: list, copies: int) -> int:
    """What `copies` more copies of `last` take, decoded."""
    if dtype == pb.DT_STRING:
        return copies * (len(last[0]) + STRING_OVERHEAD_BYTES)
    return copies * _ITEMSIZE[dtype]


# Bytes per decoded element of the dtypes _FIELDS carries (strings are counted by length).
_ITEMSIZE: dict[int, int] = {code: numpy_dtype(code).itemsize for code in _FIELDS if code != pb.DT_STRING}


def inner_arrays(inputs, out: pb.PredictRequest, max_decoded_bytes: int) -> None:
    """TF Serving inputs (name -> TensorProto) into `out.inputs`, with one budget for the
    request: what the fill rule adds may not take more than `max_decoded_bytes` (0: no bound).
    The predict core then bounds the decoded tensors again, on its own budget."""
    budget = DecodeBudget(max_decoded_bytes)
    for key, tensor in inputs.items():
        tensor_to_array(tensor, out.inputs[key], key, budget)


def array_to_tensor(array: pb.ArrayProto, out: tensor_pb2.TensorProto) -> None:
    """DeepRec ArrayProto -> TF TensorProto (filled in place)."""
    out.dtype = array.dtype
    dims = out.tensor_shape.dim
    for d in array.array_shape.dim:
        dims.add(size=d)
    content = array.tensor_content  # each read of a bytes field copies it
    if content:
        out.tensor_content = content
        return
    fields = _FIELDS.get(array.dtype)
    if fields is not None:
        getattr(out, fields[0]).extend(getattr(array, fields[1]))


def _tensor_info(spec: TensorSpec) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=spec.name, dtype=spec.dtype.as_datatype_enum)
    if spec.shape is None:
        info.tensor_shape.unknown_rank = True
    else:
        info.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in spec.shape]))
    return info


def signature_def(sig: Signature) -> meta_graph_pb2.SignatureDef:
    """Our parsed signature back as TensorFlow's SignatureDef (what GetModelMetadata returns)."""
    out = meta_graph_pb2.SignatureDef(method_name=sig.method_name)
    for alias, spec in sig.inputs.items():
        out.inputs[alias].CopyFrom(_tensor_info(spec))
    for alias, spec in sig.outputs.items():
        out.outputs[alias].CopyFrom(_tensor_info(spec))
    return out


# --- Classify / Regress -------------------------------------------------------------------
@dataclass
class ClassifyResult:
    classes: np.ndarray | None
    """[examples, k] labels (bytes), or None when the signature has no "classes" output."""
    scores: np.ndarray | None
    """[examples, k] scores, or None when the signature has no "scores" output."""
    version: str


def merge_context(context: bytes, examples: Sequence[bytes],
                  max_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> list[bytes]:
    """ExampleListWithContext: serialized protos concatenated parse as their merge, so context
    + example is the example with the context's features added (TF Serving does the same).
    Every example gets its own copy of the context, so a large context over many small examples
    could take any amount of memory: past `max_bytes` in all (0: no bound) the request is
    InvalidArgument, before anything is copied."""
    if not context:
        return list(examples)
    total = len(context) * len(examples) + sum(len(e) for e in examples)
    if max_bytes and total > max_bytes:
        raise InvalidArgument(
            f"input 'context': its {len(context)} bytes merged into each of {len(examples)} "
            f"examples would take {total} bytes, over the limit of {max_bytes} bytes per request")
    return [context + e for e in examples]


def _inference_signature(model: ServedModel, signature_name: str, method: str,
                         version: str | None) -> Signature:
    sig = model.signature(signature_name, version)
    if sig.method_name != method:
        raise InvalidArgument(f"signature '{sig.name}' has method_name '{sig.method_name}'; "
                              f"this call needs a signature with method_name '{method}'")
    if len(sig.inputs) != 1:
        raise InvalidArgument(f"signature '{sig.name}' must have exactly one input (serialized "
                              f"tf.Examples), it has {len(sig.inputs)}")
    return sig


def _run_examples(model: ServedModel, sig: Signature, examples: Sequence[bytes],
                  outputs: Sequence[str], version: str | None) -> tuple[dict[str, np.ndarray], str]:
    if not examples:
        raise InvalidArgument("the request has no examples")
    request = pb.PredictRequest(signature_name=sig.name, output_filter=list(outputs))
    array = request.inputs[next(iter(sig.inputs))]
    array.dtype = pb.DT_STRING
    array.array_shape.dim.append(len(examples))
    array.string_val.extend(examples)
    response, served = model.predict(request, version)
    return {k: decode_array(v, k) for k, v in response.outputs.items()}, served


def classify(model: ServedModel, signature_name: str, examples: Sequence[bytes],
             version: str | None = None) -> ClassifyResult:
    sig = _inference_signature(model, signature_name, CLASSIFY_METHOD, version)
    wanted = [k for k in ("classes", "scores") if k in sig.outputs]
    if not wanted:
        raise InvalidArgument(f"classification signature '{sig.name}' has neither a 'classes' "
                              "nor a 'scores' output")
    out, served = _run_examples(model, sig, examples, wanted, version)
    classes, scores = out.get("classes"), out.get("scores")
    n = len(examples)
    for key, arr in (("classes", classes), ("scores", scores)):
        if arr is not None and (arr.ndim != 2 or arr.shape[0] != n):
            raise InvalidArgument(f"output '{key}' has shape {list(arr.shape)}; expected "
                                  f"[{n}, classes] for {n} examples")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise InvalidArgument(f"outputs 'classes' {list(classes.shape)} and 'scores' "
                              f"{list(scores.shape)} differ in shape")
    return ClassifyResult(classes, scores, served)


def regress(model: ServedModel, signature_name: str, examples: Sequence[bytes],
            version: str | None = None) -> tuple[np.ndarray, str]:
    """One value per example, and the version that served."""
    sig = _inference_signature(model, signature_name, REGRESS_METHOD, version)
    if "outputs" not in sig.outputs:
        raise InvalidArgument(f"regression signature '{sig.name}' has no 'outputs' output")
    out, served = _run_examples(model, sig, examples, ["outputs"], version)
    values = out["outputs"]
    n = len(examples)
    if values.shape not in ((n,), (n, 1)):
        raise InvalidArgument(f"output 'outputs' has shape {list(values.shape)}; expected [{n}] "
                              f"or [{n}, 1] for {n} examples")
    return values.reshape(n).astype(np.float32, copy=False), served
