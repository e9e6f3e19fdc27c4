"""ArrayProto <-> numpy for every dtype TensorFlow can hold."""

import numpy as np
import pytest
import tensorflow as tf

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.codec import DecodeBudget, decode_array, element_count, encode_array
from deeprec_runtime.errors import InvalidArgument

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


# --- shapes and sizes a request cannot have (issue: an INTERNAL answer with a stack trace) ---
def _shaped(dims, dtype=pb.DT_INT64, **values) -> pb.ArrayProto:
    proto = pb.ArrayProto(dtype=dtype, **values)
    proto.array_shape.SetInParent()
    proto.array_shape.dim.extend(dims)
    return proto


@pytest.mark.parametrize("dims, words", [
    ([2**32, 2**32], ["2^63-1"]),                      # wraps to 0 in int64: matched an empty body
    ([2**40, 2**40, 0], ["2^63-1"]),                   # empty, yet no tensor (numpy refuses it too)
    ([2**62, 3], ["2^63-1"]),
    ([2**63 - 1, 2], ["2^63-1"]),
    ([3, -5], ["negative dimension -5"]),
    ([-(2**63)], ["negative dimension"]),
    ([1] * 255, ["255 dimensions", "254"]),             # TensorShape::MaxDimensions()
    ([1] * 100, ["100 dimensions", "64"]),              # over numpy's bound
    ([3, 10**15], ["needs 3000000000000000 elements but 1 were sent"]),
])
@pytest.mark.parametrize("content", [False, True])
def test_shapes_no_tensor_can_have_are_invalid_argument_naming_the_input(dims, words, content):
    values = {"tensor_content": b"\x01" * 8} if content else {"int64_val": [1]}
    with pytest.raises(InvalidArgument) as err:
        decode_array(_shaped(dims, **values), "history")
    message = str(err.value)
    assert message.startswith("input 'history'")
    for word in words:
        assert word in message


def test_the_forty_byte_request_of_the_issue_is_invalid_argument():
    proto = _shaped([2**32, 2**32])  # no values, no tensor_content
    assert len(proto.SerializeToString()) < 40
    with pytest.raises(InvalidArgument, match="history"):
        decode_array(pb.ArrayProto.FromString(proto.SerializeToString()), "history")


def test_a_long_shape_is_cut_in_the_message():
    with pytest.raises(InvalidArgument) as err:
        decode_array(_shaped([2] * 300), "x")
    assert len(str(err.value)) < 200


def test_largest_shapes_that_are_tensors_still_decode():
    assert decode_array(_shaped([0, 2**59, 1]), "x").shape == (0, 2**59, 1)
    with pytest.raises(InvalidArgument, match="input 'x': shape .* would take more than 2"):
        decode_array(_shaped([0, 2**62, 1]), "x")  # int64: 2^65 bytes, if it were not empty
    assert decode_array(_shaped([1] * 64, int64_val=[5]), "x").shape == (1,) * 64
    assert decode_array(_shaped([2**31, 0]), "x").shape == (2**31, 0)


@pytest.mark.parametrize("proto, decoded", [
    (_shaped([1000], int64_val=[0] * 1000), 8000),       # 1-byte varints: 8x the wire size
    (_shaped([1000], pb.DT_FLOAT, float_val=[0.0] * 1000), 4000),
    (_shaped([250], pb.DT_FLOAT, tensor_content=b"\x00" * 1000), 1000),
    (_shaped([500], pb.DT_COMPLEX64, float_val=[0.0] * 1000), 4000),
    (_shaped([1000], pb.DT_UINT8, int_val=[1] * 1000), 1000),
])
def test_decoded_bytes_are_charged_to_the_request_budget(proto, decoded):
    budget = DecodeBudget(decoded)
    decode_array(proto, "x", budget)
    assert budget.used == decoded
    with pytest.raises(InvalidArgument) as err:
        decode_array(proto, "feature_x", DecodeBudget(decoded - 1))
    assert f"input 'feature_x' takes {decoded} bytes decoded" in str(err.value)
    assert f"over the limit of {decoded - 1} bytes per request" in str(err.value)


def test_one_budget_covers_every_input_of_a_request():
    budget = DecodeBudget(12_000)
    decode_array(_shaped([1000], int64_val=[0] * 1000), "a", budget)
    with pytest.raises(InvalidArgument, match="input 'b'.*brings the request's decoded inputs to 16000"):
        decode_array(_shaped([1000], int64_val=[0] * 1000), "b", budget)


def test_strings_are_charged_by_their_bytes():
    proto = _shaped([2], pb.DT_STRING, string_val=[b"x" * 10_000, b"y"])
    with pytest.raises(InvalidArgument, match="input 's'"):
        decode_array(proto, "s", DecodeBudget(10_000))
    budget = DecodeBudget(20_000)
    assert decode_array(proto, "s", budget).shape == (2,)
    assert 10_001 < budget.used < 20_000


def test_zero_is_no_bound_and_outputs_decode_without_a_budget():
    proto = _shaped([1000], int64_val=[0] * 1000)
    assert decode_array(proto, "x", DecodeBudget(0)).shape == (1000,)
    assert decode_array(proto, "x").shape == (1000,)


def test_element_count_is_exact_past_int64():
    assert element_count([2**31, 2**31], "x") == 2**62
    assert element_count([], "x") == 1
    assert element_count([3, 0, 2**61], "x") == 0


def test_an_empty_tensor_is_charged_as_if_its_zero_dimensions_were_one():
    """Its other dimensions still size what the model makes of it (row sums of [2^30, 0]: 8 GiB
    of output from a 30-byte request; found by tests/fuzz)."""
    with pytest.raises(InvalidArgument) as err:
        decode_array(_shaped([2**30, 0]), "history", DecodeBudget(1 << 20))
    assert "input 'history' takes 8589934592 bytes as shape [1073741824, 0] with its zero " \
           "dimensions counted as 1" in str(err.value)
    budget = DecodeBudget(100)
    assert decode_array(_shaped([0, 13], pb.DT_FLOAT), "x", budget).shape == (0, 13)
    assert budget.used == 52
