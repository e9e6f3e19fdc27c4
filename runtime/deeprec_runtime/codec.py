"""Wire tensors (DeepRec ArrayProto) <-> numpy arrays.

Conversion never loops over elements in Python: repeated fields are turned into arrays by
numpy's C code (the upb containers expose the buffer protocol), and the `tensor_content`
extension is read with np.frombuffer, without a copy.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.errors import InvalidArgument

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

#: TensorFlow's TensorShape::MaxDimensions(): no tensor has more dimensions.
MAX_RANK = 254
#: numpy's own bound on an array's dimensions (64 in numpy 2): a tensor of higher rank (TensorFlow
#: would allow up to MAX_RANK) cannot be decoded here.
NUMPY_MAX_RANK = 64
#: TensorFlow counts elements in an int64: a shape whose nonzero dimensions multiply past this is
#: no tensor (numpy refuses it too, even when a zero dimension makes it empty).
MAX_ELEMENTS = (1 << 63) - 1
#: Default bound on the bytes one request's decoded input tensors may take (= the default
#: --max-message-bytes): wire bytes can decode into much more (a 1-byte int64 varint becomes 8
#: bytes, a short value repeated to fill a TF Serving shape any number, JSON numbers ~8 each).
DEFAULT_MAX_DECODED_BYTES = 64 * 1024 * 1024
#: What a decoded string costs beyond its bytes: the bytes object's header and the array's pointer.
STRING_OVERHEAD_BYTES = 48


def shape_text(dims) -> str:
    """A shape for an error message; absurdly long ones are cut, their rank kept."""
    dims = list(dims)
    if len(dims) <= 8:
        return str(dims)
    return f"[{', '.join(map(str, dims[:6]))}, ... ({len(dims)} dimensions)]"


def element_count(dims, name: str, itemsize: int = 1) -> int:
    """Elements of a tensor of shape `dims`, counted in Python ints (no wrap-around), after the
    checks TensorFlow's TensorShape would make with a CHECK: rank at most MAX_RANK, no negative
    dimension, nonzero dimensions multiplying to at most MAX_ELEMENTS; with `itemsize`, numpy's
    too: those dimensions' bytes fit in MAX_ELEMENTS (an empty array of such a shape is refused).
    InvalidArgument names the input `name` and what was wrong."""
    rank = len(dims)
    if rank > MAX_RANK:
        raise InvalidArgument(f"input '{name}': shape has {rank} dimensions; TensorFlow allows "
                              f"at most {MAX_RANK}")
    if rank > NUMPY_MAX_RANK:
        raise InvalidArgument(f"input '{name}': shape has {rank} dimensions; this server "
                              f"decodes at most {NUMPY_MAX_RANK}")
    nonzero = 1
    empty = False
    for d in dims:
        if d < 0:
            raise InvalidArgument(f"input '{name}': negative dimension {d} in shape "
                                  f"{shape_text(dims)}")
        if d == 0:
            empty = True
        else:
            nonzero *= d
    if nonzero > MAX_ELEMENTS:
        raise InvalidArgument(f"input '{name}': shape {shape_text(dims)} has more than 2^63-1 "
                              "elements")
    if nonzero * itemsize > MAX_ELEMENTS:
        raise InvalidArgument(f"input '{name}': shape {shape_text(dims)} would take more than "
                              "2^63-1 bytes")
    return 0 if empty else nonzero


class DecodeBudget:
    """The bytes one request's decoded inputs may still take. Each decoded input is charged
    before its memory is allocated; past the limit the request is refused with InvalidArgument
    naming the input. Example: a 40-byte TF Serving request asking for float_val [0] repeated
    over shape [1000000000] would take 4 GB; it is refused without allocating them."""

    def __init__(self, limit: int = DEFAULT_MAX_DECODED_BYTES):
        self.limit = limit
        """Bytes allowed in all (0: no bound)."""
        self.used = 0

    def charge(self, name: str, nbytes: int, how: str = "decoded") -> None:
        """Counts `nbytes` for input `name` (`how` says what takes them, for the message)."""
        total = self.used + nbytes
        if self.limit and total > self.limit:
            raise InvalidArgument(
                f"input '{name}' takes {nbytes} bytes {how}, which brings the request's decoded "
                f"inputs to {total} bytes, over the limit of {self.limit} bytes per request")
        self.used = total


def decode_array(proto: pb.ArrayProto, name: str, budget: DecodeBudget | None = None) -> np.ndarray:
    """ArrayProto -> numpy array. `name` is the input's key, used in error messages. With a
    `budget` (every request's inputs; not the model's outputs) the decoded bytes are charged to
    it before they are allocated. The shape is checked against the values sent before anything
    is allocated or reshaped."""
    return decode_input(proto, name, budget)[0]


def decode_input(proto: pb.ArrayProto, name: str,
                 budget: DecodeBudget | None = None) -> tuple[np.ndarray, bool]:
    """decode_array, and whether the values came in tensor_content (each read of that field
    copies it: callers ask here rather than read it again)."""
    code = proto.dtype
    spec = _WIRE.get(code)
    if spec is None:
        raise InvalidArgument(
            f"input '{name}': dtype {wire_dtype_name(code)} is not supported; "
            f"use one of {supported_dtype_names()}")
    dtype, field, layout = spec
    has_shape = proto.HasField("array_shape")
    dims = tuple(proto.array_shape.dim)
    expected = element_count(dims, name, dtype.itemsize) if has_shape else None
    content = proto.tensor_content
    sent = _elements_sent(proto, name, code, dtype, field, layout, content)
    if expected is not None and sent != expected:
        if sent == 0 and not content:
            other = _populated_field(proto)
            if other:
                raise InvalidArgument(
                    f"input '{name}': dtype {wire_dtype_name(code)} carries its values in {field}, "
                    f"but they were sent in {other}")
        raise InvalidArgument(
            f"input '{name}': shape {shape_text(dims)} needs {expected} elements but "
            f"{sent} were sent")
    if budget is not None:
        if expected == 0 and dims:
            _charge_empty(budget, name, dims, dtype)
        else:
            budget.charge(name, _decoded_bytes(proto, code, dtype, sent))
    flat = _flat_values(proto, name, code, dtype, field, layout, content)
    return (flat.reshape(dims) if has_shape else flat), bool(content)


def _elements_sent(proto: pb.ArrayProto, name: str, code: int, dtype: np.dtype, field: str,
                   layout: str, content: bytes) -> int:
    """How many elements the message carries, from lengths alone (nothing is decoded yet)."""
    if content:
        if code == pb.DT_STRING:
            raise InvalidArgument(f"input '{name}': tensor_content cannot carry DT_STRING; use string_val")
        if len(content) % dtype.itemsize:
            raise InvalidArgument(
                f"input '{name}': tensor_content has {len(content)} bytes, not a multiple of "
                f"{dtype.itemsize} ({wire_dtype_name(code)})")
        return len(content) // dtype.itemsize
    count = len(getattr(proto, field))
    if layout == "pairs":
        if count % 2:
            raise InvalidArgument(
                f"input '{name}': {wire_dtype_name(code)} needs (real, imaginary) pairs, "
                f"got {count} numbers")
        return count // 2
    return count


def _decoded_bytes(proto: pb.ArrayProto, code: int, dtype: np.dtype, elements: int) -> int:
    if code == pb.DT_STRING:
        # The message's own size bounds its strings' bytes (computed in C, no loop here).
        return proto.ByteSize() + elements * STRING_OVERHEAD_BYTES
    return elements * dtype.itemsize


def _charge_empty(budget: DecodeBudget, name: str, dims, dtype: np.dtype) -> None:
    """An empty tensor holds no bytes, but its other dimensions still size what the model makes
    of it: the row sums of a [2^30, 0] input are 2^30 numbers (8 GiB) from a 30-byte request. It
    is charged as if its zero dimensions were 1."""
    rows = math.prod(d for d in dims if d)
    itemsize = STRING_OVERHEAD_BYTES if dtype.kind == "O" else dtype.itemsize
    budget.charge(name, rows * itemsize,
                  f"as shape {shape_text(dims)} with its zero dimensions counted as 1")


def _flat_values(proto: pb.ArrayProto, name: str, code: int, dtype: np.dtype, field: str,
                 layout: str, content: bytes) -> np.ndarray:
    """The values as a 1-D array of `dtype` (a view over tensor_content, else a conversion by
    numpy's C code)."""
    if content:
        return np.frombuffer(content, dtype=dtype.newbyteorder("<"))
    values = getattr(proto, field)
    if layout == "plain":
        if code in _FAST:
            return np.array(values, dtype=dtype)
        if code == pb.DT_STRING:
            flat = np.empty(len(values), dtype=object)
            flat[:] = list(values)
            return flat
        if field == "int_val":
            # int_val is int32 on the wire: range-check before narrowing so that 300 sent as
            # DT_UINT8 is an error, not a silent 44.
            wide = np.array(values, dtype=np.int64)
            info = np.iinfo(dtype)
            if wide.size and (wide.min() < info.min or wide.max() > info.max):
                raise InvalidArgument(
                    f"input '{name}': values out of range for {wire_dtype_name(code)} "
                    f"[{info.min}, {info.max}]")
            return wide.astype(dtype)
        return np.array(values, dtype=dtype)
    if layout == "bits16":
        wide = np.array(values, dtype=np.int64)
        if wide.size and (wide.min() < -(1 << 15) or wide.max() > 0xFFFF):
            raise InvalidArgument(
                f"input '{name}': {wire_dtype_name(code)} values must be 16-bit patterns in int_val")
        return wide.astype(np.uint16).view(dtype)
    parts = np.array(values, dtype=np.float32 if code == pb.DT_COMPLEX64 else np.float64)
    return parts.view(dtype)


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
