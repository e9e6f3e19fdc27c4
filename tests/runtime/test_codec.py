"""ArrayProto <-> numpy for every dtype TensorFlow can hold."""

import numpy as np
import pytest
import tensorflow as tf

from deeprec_runtime.codec import decode_array, encode_array
from deeprec_runtime.errors import InvalidArgument
from deeprec_runtime.protos import predict_pb2 as pb

CASES = [
    (np.float32, pb.DT_FLOAT), (np.float64, pb.DT_DOUBLE), (np.int32, pb.DT_INT32),
    (np.uint8, pb.DT_UINT8), (np.int16, pb.DT_INT16), (np.int8, pb.DT_INT8),
    (np.uint16, pb.DT_UINT16), (np.int64, pb.DT_INT64), (np.bool_, pb.DT_BOOL),
    (np.float16, pb.DT_HALF), (tf.bfloat16.as_numpy_dtype, pb.DT_BFLOAT16),
    (np.complex64, pb.DT_COMPLEX64), (np.complex128, pb.DT_COMPLEX128),
]


def _sample(dtype):
    rng = np.random.default_rng(0)
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        return (rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3))).astype(dtype)
    if dtype.kind == "b":
        return rng.random((2, 3)) > 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, (2, 3), endpoint=True, dtype=np.int64).astype(dtype)
    return rng.standard_normal((2, 3)).astype(dtype)


@pytest.mark.parametrize("dtype, code", CASES)
@pytest.mark.parametrize("tensor_content", [False, True])
def test_round_trip_every_dtype(dtype, code, tensor_content):
    array = _sample(dtype)
    proto = pb.ArrayProto()
    encode_array(array, proto, use_tensor_content=tensor_content)
    assert proto.dtype == code and list(proto.array_shape.dim) == [2, 3]
    back = decode_array(pb.ArrayProto.FromString(proto.SerializeToString()), "x")
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, array)


def test_strings_round_trip():
    array = np.array([[b"a", b"bc"], [b"", b"\xff\x00"]], dtype=object)
    proto = pb.ArrayProto()
    encode_array(array, proto)
    back = decode_array(proto, "s")
    assert back.shape == (2, 2) and back.tolist() == array.tolist()


def test_tensor_content_is_read_without_a_copy():
    proto = pb.ArrayProto(dtype=pb.DT_FLOAT, tensor_content=np.arange(6, dtype="<f4").tobytes())
    proto.array_shape.dim.extend([2, 3])
    array = decode_array(proto, "x")
    assert not array.flags.owndata  # a view over the message's bytes
    np.testing.assert_array_equal(array, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_missing_shape_means_a_vector_and_empty_shape_a_scalar():
    proto = pb.ArrayProto(dtype=pb.DT_INT64, int64_val=[1, 2, 3])
    assert decode_array(proto, "x").shape == (3,)
    scalar = pb.ArrayProto(dtype=pb.DT_INT64, int64_val=[7])
    scalar.array_shape.SetInParent()
    assert decode_array(scalar, "x").shape == ()


@pytest.mark.parametrize("proto, words", [
    (pb.ArrayProto(dtype=pb.DT_UINT8, int_val=[300]), ["out of range", "DT_UINT8"]),
    (pb.ArrayProto(dtype=pb.DT_COMPLEX64, float_val=[1.0, 2.0, 3.0]), ["pairs"]),
    (pb.ArrayProto(dtype=pb.DT_FLOAT, tensor_content=b"\x00" * 5), ["multiple of 4"]),
    (pb.ArrayProto(dtype=pb.DT_STRING, tensor_content=b"ab"), ["DT_STRING"]),
    (pb.ArrayProto(dtype=pb.DT_RESOURCE), ["not supported"]),
    (pb.ArrayProto(dtype=77), ["not supported"]),
    (pb.ArrayProto(dtype=pb.DT_HALF, int_val=[70000]), ["16-bit"]),
])
def test_bad_arrays_are_invalid_argument_naming_the_input(proto, words):
    with pytest.raises(InvalidArgument) as err:
        decode_array(proto, "feature_x")
    assert "feature_x" in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_negative_dimension_is_rejected():
    proto = pb.ArrayProto(dtype=pb.DT_FLOAT, float_val=[1.0])
    proto.array_shape.dim.extend([-1])
    with pytest.raises(InvalidArgument, match="negative"):
        decode_array(proto, "x")
