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

from deeprec_runtime.codec import decode_array
from deeprec_runtime.errors import InvalidArgument
from deeprec_runtime.model.signature import Signature, TensorSpec
from deeprec_runtime.models import ServedModel
from deeprec_runtime.protos import predict_pb2 as pb

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


def tensor_to_array(tensor: tensor_pb2.TensorProto, out: pb.ArrayProto) -> None:
    """TF TensorProto -> DeepRec ArrayProto (filled in place). Unsupported dtypes are copied
    as they are: the predict core rejects them with the list of supported ones."""
    out.dtype = tensor.dtype
    if not tensor.tensor_shape.unknown_rank:
        out.array_shape.SetInParent()  # a scalar has a shape with no dims
        out.array_shape.dim.extend([d.size for d in tensor.tensor_shape.dim])
    if tensor.tensor_content:
        out.tensor_content = tensor.tensor_content
        return
    fields = _FIELDS.get(tensor.dtype)
    if fields is not None:
        values = getattr(out, fields[1])
        values.extend(getattr(tensor, fields[0]))
        _repeat_last(tensor, values)


def _repeat_last(tensor: tensor_pb2.TensorProto, values) -> None:
    """TensorFlow's rule for a repeated field shorter than the shape (Tensor::FromProto, so TF
    Serving too): the last value fills the rest, e.g. float_val [0] with shape [2, 3] is six
    zeros. A tensor with no values at all stays an error (TensorFlow would silently zero it,
    which hides values sent in the wrong field)."""
    dims = [d.size for d in tensor.tensor_shape.dim]
    if tensor.tensor_shape.unknown_rank or not values or min(dims, default=0) < 0:
        return
    per_element = 2 if tensor.dtype in (pb.DT_COMPLEX64, pb.DT_COMPLEX128) else 1
    missing = int(np.prod(dims, dtype=np.int64)) * per_element - len(values)
    if missing > 0 and len(values) % per_element == 0:
        last = list(values[-per_element:])
        values.extend(last * (missing // per_element))


def array_to_tensor(array: pb.ArrayProto, out: tensor_pb2.TensorProto) -> None:
    """DeepRec ArrayProto -> TF TensorProto (filled in place)."""
    out.dtype = array.dtype
    dims = out.tensor_shape.dim
    for d in array.array_shape.dim:
        dims.add(size=d)
    if array.tensor_content:
        out.tensor_content = array.tensor_content
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


def merge_context(context: bytes, examples: Sequence[bytes]) -> list[bytes]:
    """ExampleListWithContext: serialized protos concatenated parse as their merge, so context
    + example is the example with the context's features added (TF Serving does the same)."""
    return [context + e for e in examples] if context else list(examples)


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
