"""Property tests: any array of a wire dtype survives encode -> bytes -> decode unchanged."""

import numpy as np
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.codec import DecodeBudget, decode_array, encode_array
from deeprec_runtime.errors import InvalidArgument

DTYPES = [np.float32, np.float64, np.int32, np.uint8, np.int16, np.int8, np.uint16, np.int64,
          np.bool_, np.float16, np.complex64, np.complex128]
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(DTYPES))
    return draw(hnp.arrays(dtype, shapes))


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    # NaNs compare by bit pattern: the codec must carry them exactly
    assert a.tobytes() == b.tobytes()


@settings(max_examples=300, deadline=None)
@given(arrays(), st.booleans())
def test_round_trip(array, tensor_content):
    proto = pb.ArrayProto()
    encode_array(array, proto, use_tensor_content=tensor_content)
    _same(decode_array(pb.ArrayProto.FromString(proto.SerializeToString()), "x"), array)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.uint16, shapes))
def test_bfloat16_bit_patterns_round_trip(bits):
    array = bits.view(tf.bfloat16.as_numpy_dtype)
    proto = pb.ArrayProto()
    encode_array(array, proto)
    _same(decode_array(proto, "x"), array)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=8), max_size=6))
def test_strings_round_trip(values):
    array = np.empty(len(values), dtype=object)
    array[:] = values
    proto = pb.ArrayProto()
    encode_array(array, proto)
    assert decode_array(proto, "s").tolist() == values


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_fail_cleanly(data):
    try:
        proto = pb.ArrayProto.FromString(data)
    except Exception:  # noqa: BLE001 (not a message at all: the server rejects it before the codec)
        return
    try:
        decode_array(proto, "x")
    except InvalidArgument as exc:
        assert "'x'" in str(exc)


# Dimensions a request may claim: anything an int64 holds, with the edges and the products that
# wrap around in int64 (2^32 x 2^32) well represented.
_dims = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from(
    [0, 1, 2, 3, -1, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63)]))
_WIRE_CODES = [pb.DT_FLOAT, pb.DT_DOUBLE, pb.DT_INT32, pb.DT_UINT8, pb.DT_INT64, pb.DT_BOOL,
               pb.DT_STRING, pb.DT_HALF, pb.DT_COMPLEX64]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_WIRE_CODES), st.lists(_dims, max_size=300), st.integers(0, 12),
       st.booleans())
def test_any_claimed_shape_decodes_to_it_or_fails_cleanly(code, dims, count, content):
    proto = pb.ArrayProto(dtype=code)
    proto.array_shape.SetInParent()
    proto.array_shape.dim.extend(dims)
    if content and code != pb.DT_STRING:
        proto.tensor_content = b"\x00" * (count * 8)
    elif code == pb.DT_STRING:
        proto.string_val.extend([b"ab"] * count)
    else:
        field = {pb.DT_FLOAT: "float_val", pb.DT_DOUBLE: "double_val", pb.DT_INT64: "int64_val",
                 pb.DT_BOOL: "bool_val", pb.DT_COMPLEX64: "float_val"}.get(code, "int_val")
        getattr(proto, field).extend([0] * count)
    try:
        array = decode_array(proto, "history", DecodeBudget(64))
    except InvalidArgument as exc:
        assert str(exc).startswith("input 'history'")
        return
    assert array.shape == tuple(dims)
