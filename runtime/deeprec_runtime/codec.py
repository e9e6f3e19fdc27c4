"""Wire tensors (DeepRec ArrayProto) <-> numpy arrays.

Conversion never loops over elements in Python: repeated fields are turned into arrays by
numpy's C code (the upb containers expose the buffer protocol), and the `tensor_content`
extension is read with np.frombuffer, without a copy.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from deeprec_runtime.errors import InvalidArgument
from deeprec_runtime.protos import predict_pb2 as pb

_BF16 = tf.bfloat16.as_numpy_dtype

# ArrayDataType -> (numpy dtype, value field, how the field stores the elements).
#   "plain":  one field element per array element, same numeric value
#   "bits16": int_val holds 16-bit patterns (half, bfloat16), as TensorFlow's half_val does
#   "pairs":  float_val / double_val hold (real, imaginary) pairs
_WIRE: dict[int, tuple[np.dtype, str, str]] = {
    pb.DT_FLOAT: (np.dtype(np.float32), "float_val", "plain"),
    pb.DT_DOUBLE: (np.dtype(np.float64), "double_val", "plain"),
    pb.DT_INT32: (np.dtype(np.int32), "int_val", "plain"),
    pb.DT_UINT8: (np.dtype(np.uint8), "int_val", "plain"),
    pb.DT_INT16: (np.dtype(np.int16), "int_val", "plain"),
    pb.DT_INT8: (np.dtype(np.int8), "int_val", "plain"),
    pb.DT_UINT16: (np.dtype(np.uint16), "int_val", "plain"),
    pb.DT_INT64: (np.dtype(np.int64), "int64_val", "plain"),
    pb.DT_BOOL: (np.dtype(np.bool_), "bool_val", "plain"),
    pb.DT_STRING: (np.dtype(object), "string_val", "plain"),
    pb.DT_HALF: (np.dtype(np.float16), "int_val", "bits16"),
    pb.DT_BFLOAT16: (np.dtype(_BF16), "int_val", "bits16"),
    pb.DT_COMPLEX64: (np.dtype(np.complex64), "float_val", "pairs"),
    pb.DT_COMPLEX128: (np.dtype(np.complex128), "double_val", "pairs"),
}

_TF_TO_WIRE: dict[tf.DType, int] = {
    tf.float32: pb.DT_FLOAT, tf.float64: pb.DT_DOUBLE, tf.int32: pb.DT_INT32,
    tf.uint8: pb.DT_UINT8, tf.int16: pb.DT_INT16, tf.int8: pb.DT_INT8, tf.uint16: pb.DT_UINT16,
    tf.int64: pb.DT_INT64, tf.bool: pb.DT_BOOL, tf.string: pb.DT_STRING, tf.float16: pb.DT_HALF,
    tf.bfloat16: pb.DT_BFLOAT16, tf.complex64: pb.DT_COMPLEX64, tf.complex128: pb.DT_COMPLEX128,
}
_NUMPY_TO_WIRE: dict[np.dtype, int] = {dt: code for code, (dt, _, _) in _WIRE.items()}


def wire_dtype_name(code: int) -> str:
    try:
        return pb.ArrayDataType.Name(code)
    except ValueError:
        return f"<unknown dtype {code}>"


def wire_dtype_of_tf(dtype: tf.DType) -> int:
    """The ArrayDataType of a TensorFlow dtype; DT_INVALID for types the wire cannot carry."""
    return _TF_TO_WIRE.get(dtype, pb.DT_INVALID)


def numpy_dtype(code: int) -> np.dtype:
    return _WIRE[code][0]


def supported_dtype_names() -> str:
    return ", ".join(wire_dtype_name(c) for c in sorted(_WIRE))


# dtypes whose wire field holds exactly their own values (no narrowing or range checks).
_FAST = frozenset({pb.DT_FLOAT, pb.DT_DOUBLE, pb.DT_INT32, pb.DT_INT64})


def decode_array(proto: pb.ArrayProto, name: str) -> np.ndarray:
    """ArrayProto -> numpy array. `name` is the input's key, used in error messages."""
    code = proto.dtype
    spec = _WIRE.get(code)
    if spec is None:
        raise InvalidArgument(
            f"input '{name}': dtype {wire_dtype_name(code)} is not supported; "
            f"use one of {supported_dtype_names()}")
    dtype, field, layout = spec
    dims = tuple(proto.array_shape.dim)
    if dims and min(dims) < 0:
        raise InvalidArgument(f"input '{name}': negative dimension in shape {list(dims)}")
    if layout == "plain" and code in _FAST and not proto.tensor_content:
        # The common case (float / int64 / int32 / double values with a shape): one C-level
        # conversion and a reshape, none of the general path's checks that cannot fail here.
        flat = np.array(getattr(proto, field), dtype=dtype)
        expected = math.prod(dims) if dims else 1
        if proto.HasField("array_shape") and flat.size == expected and flat.size:
            return flat.reshape(dims)
        if not proto.HasField("array_shape"):
            return flat
    if proto.tensor_content:
        if code == pb.DT_STRING:
            raise InvalidArgument(f"input '{name}': tensor_content cannot carry DT_STRING; use string_val")
        content = proto.tensor_content
        if len(content) % dtype.itemsize:
            raise InvalidArgument(
                f"input '{name}': tensor_content has {len(content)} bytes, not a multiple of "
                f"{dtype.itemsize} ({wire_dtype_name(code)})")
        flat = np.frombuffer(content, dtype=dtype.newbyteorder("<"))
    else:
        values = getattr(proto, field)
        if layout == "plain":
            if code == pb.DT_STRING:
                flat = np.empty(len(values), dtype=object)
                flat[:] = list(values)
            elif field == "int_val" and dtype != np.int32:
                # int_val is int32 on the wire: range-check before narrowing so that 300 sent as
                # DT_UINT8 is an error, not a silent 44.
                wide = np.array(values, dtype=np.int64)
                info = np.iinfo(dtype)
                if wide.size and (wide.min() < info.min or wide.max() > info.max):
                    raise InvalidArgument(
                        f"input '{name}': values out of range for {wire_dtype_name(code)} "
                        f"[{info.min}, {info.max}]")
                flat = wide.astype(dtype)
            else:
                flat = np.array(values, dtype=dtype)
        elif layout == "bits16":
            wide = np.array(values, dtype=np.int64)
            if wide.size and (wide.min() < -(1 << 15) or wide.max() > 0xFFFF):
                raise InvalidArgument(
                    f"input '{name}': {wire_dtype_name(code)} values must be 16-bit patterns in int_val")
            flat = wide.astype(np.uint16).view(dtype)
        else:  # pairs
            parts = np.array(values, dtype=np.float32 if code == pb.DT_COMPLEX64 else np.float64)
            if parts.size % 2:
                raise InvalidArgument(
                    f"input '{name}': {wire_dtype_name(code)} needs (real, imaginary) pairs, "
                    f"got {parts.size} numbers")
            flat = parts.view(dtype)
    if not proto.HasField("array_shape"):
        return flat
    expected = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if flat.size != expected:
        if flat.size == 0 and not proto.tensor_content:
            other = _populated_field(proto)
            if other:
                raise InvalidArgument(
                    f"input '{name}': dtype {wire_dtype_name(code)} carries its values in {field}, "
                    f"but they were sent in {other}")
        raise InvalidArgument(
            f"input '{name}': shape {list(dims)} needs {expected} elements but "
            f"{flat.size} were sent")
    return flat.reshape(dims)


def _populated_field(proto: pb.ArrayProto) -> str:
    for field in ("float_val", "double_val", "int_val", "string_val", "int64_val", "bool_val"):
        if len(getattr(proto, field)):
            return field
    return ""


def encode_array(array: np.ndarray, out: pb.ArrayProto, use_tensor_content: bool = False) -> None:
    """numpy array -> ArrayProto (filled in place, so map entries need no copy)."""
    array = np.asarray(array)
    code = _NUMPY_TO_WIRE.get(array.dtype)
    if code is None:
        if array.dtype.kind in ("S", "U"):
            array, code = array.astype(object), pb.DT_STRING
        else:
            raise InvalidArgument(f"output dtype {array.dtype} cannot be sent as an ArrayProto")
    out.dtype = code  # type: ignore[assignment]  # protoc's .pyi: enum fields take plain ints too
    out.array_shape.dim.extend(array.shape)
    _, field, layout = _WIRE[code]
    if use_tensor_content and code != pb.DT_STRING:
        out.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        return
    flat = array.reshape(-1)
    if code == pb.DT_STRING:
        out.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif layout == "bits16":
        out.int_val.extend(flat.view(np.uint16).tolist())
    elif layout == "pairs":
        getattr(out, field).extend(flat.view(np.float32 if code == pb.DT_COMPLEX64 else np.float64).tolist())
    else:
        getattr(out, field).extend(flat.tolist())
