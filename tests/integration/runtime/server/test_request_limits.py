"""Request data never reaches an unchecked shape or size computation: shapes no tensor can have
(dimensions multiplying past 2^63, absurd ranks, negative dimensions) and inputs that decode
past the per-request bound are INVALID_ARGUMENT / HTTP 400 naming the input, with no stack trace
in the log, through every adapter (DeepRec gRPC, TF Serving gRPC, TF Serving REST, Simple TF
Serving), and the server keeps serving.

The model has an input of two unknown dimensions (tests/support/history_model.py), so every claimed
shape passes the signature check and only the new checks stand between it and numpy/TensorFlow.
Served by grpcio's server: the native front end's own checks are tested with it (native/).
"""

from __future__ import annotations

import json
import logging

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2 as tfs_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.app import Runtime
from deeprec_runtime.codec import DecodeBudget
from deeprec_runtime.config import parse_model_config
from deeprec_runtime.errors import InvalidArgument
from deeprec_runtime.model.signature import TensorSpec
from deeprec_runtime.server.rest.jsonio import to_array
from deeprec_runtime.server.tfs_convert import merge_context
from deeprec_runtime.server.tfs_grpc import inner_request
from tests.support.history_model import export_history_model
from tests.support.runtime import Client, make_request, output
from tests.support.runtime_server import http

LIMIT = 1 << 20  # max_decoded_bytes of the served runtime: small, so over-limit inputs are cheap


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    base = tmp_path_factory.mktemp("history")
    config = parse_model_config({"savedmodel_dir": export_history_model(str(base)),
                                 "warmup_iterations": 1})
    runtime = Runtime(config, grpc_port=0, http_port=0, host="127.0.0.1",
                      annotations_file=str(base / "none"), grpc_server="python",
                      max_decoded_bytes=LIMIT)
    runtime.start()
    assert runtime.manager.wait_ready(60), runtime.manager.last_error
    channel = grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    yield runtime, channel
    channel.close()
    runtime.stop(1.0)


@pytest.fixture
def no_stack_traces(caplog):
    """Fails the test if the server logged an error or a stack trace meanwhile."""
    caplog.set_level(logging.WARNING)
    yield
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def _still_serves(channel) -> None:
    response = Client(channel).predict({"history": np.array([[1, 2], [3, 4]], np.int64)})
    np.testing.assert_array_equal(output(response, "total"), [3, 7])


def _array(dims, dtype=pb.DT_INT64, **values) -> pb.ArrayProto:
    proto = pb.ArrayProto(dtype=dtype, **values)
    proto.array_shape.SetInParent()
    proto.array_shape.dim.extend(dims)
    return proto


def _tensor(dims, dtype=types_pb2.DT_INT64, **values) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=dtype, **values)
    for d in dims:
        tensor.tensor_shape.dim.add(size=d)
    return tensor


# Claimed shapes -> words the answer must hold. Each with a few int64 values or none.
BAD_SHAPES = [
    ([2**32, 2**32], [], "2^63-1"),
    ([2**40, 2**40, 0], [], "2^63-1"),
    ([2**62, 4], [1] * 8, "2^63-1"),
    ([-1, -1], [], "negative dimension"),
    ([3, -2], [1, 2], "negative dimension -2"),
    ([1] * 255, [1], "254"),
    ([1] * 200, [1], "64"),
    ([1000, 100000], [7], "needs 100000000 elements but 1 were sent"),
    ([2**30, 0], [], "with its zero dimensions counted as 1"),  # 8 GiB of row sums, else
]


# --- DeepRec gRPC -------------------------------------------------------------------------
def test_the_forty_byte_request_of_the_issue_is_invalid_argument(history, no_stack_traces):
    _, channel = history
    request = pb.PredictRequest()
    request.inputs["history"].CopyFrom(_array([2**32, 2**32]))
    data = request.SerializeToString()
    assert len(data) <= 40
    with pytest.raises(grpc.RpcError) as err:
        Client(channel).raw_predict(data, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'history'" in err.value.details() and "2^63-1" in err.value.details()
    _still_serves(channel)


@pytest.mark.parametrize("dims, values, words", BAD_SHAPES)
@pytest.mark.parametrize("content", [False, True], ids=["int64_val", "tensor_content"])
def test_deeprec_predict_refuses_shapes_no_tensor_can_have(history, no_stack_traces, dims, values,
                                                           words, content):
    _, channel = history
    request = pb.PredictRequest()
    fields = ({"tensor_content": np.array(values, "<i8").tobytes()} if content
              else {"int64_val": values})
    request.inputs["history"].CopyFrom(_array(dims, **fields))
    with pytest.raises(grpc.RpcError) as err:
        Client(channel)._predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'history'" in err.value.details() and words in err.value.details()
    _still_serves(channel)


def test_deeprec_predict_past_the_decoded_bytes_bound(history, no_stack_traces):
    _, channel = history
    # 200,000 one-byte varints: ~200 kB on the wire, 1.6 MB decoded; the bound is 1 MiB.
    zeros = np.zeros((2, 100_000), np.int64)
    request = make_request({"history": zeros})
    assert request.ByteSize() < LIMIT
    with pytest.raises(grpc.RpcError) as err:
        Client(channel)._predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'history' takes 1600000 bytes decoded" in err.value.details()
    assert f"over the limit of {LIMIT} bytes per request" in err.value.details()
    # Within the bound it serves.
    small = Client(channel).predict({"history": np.ones((2, 50_000), np.int64)})
    np.testing.assert_array_equal(output(small, "total"), [50_000, 50_000])


# --- TF Serving gRPC ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tfs_stub(history):
    return prediction_service_pb2_grpc.PredictionServiceStub(history[1])


def _tfs_predict(stub, tensor, key="history", signature=""):
    request = tfs_pb2.PredictRequest()
    request.model_spec.name = "default"
    if signature:
        request.model_spec.signature_name = signature
    request.inputs[key].CopyFrom(tensor)
    return stub.Predict(request, timeout=10)


# (TF Serving repeats a short field's last value to fill the shape: no count mismatch there.)
@pytest.mark.parametrize("dims, values, words", [c for c in BAD_SHAPES if "needs" not in c[2]])
def test_tf_serving_predict_refuses_shapes_no_tensor_can_have(history, tfs_stub, no_stack_traces,
                                                              dims, values, words):
    with pytest.raises(grpc.RpcError) as err:
        _tfs_predict(tfs_stub, _tensor(dims, int64_val=values))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'history'" in err.value.details() and words in err.value.details()
    _still_serves(history[1])


@pytest.mark.parametrize("tensor, key, signature", [
    # 9 bytes of values asking for 10^8 int64s (800 MB) through TensorFlow's fill rule.
    (_tensor([10_000, 10_000], int64_val=[7]), "history", ""),
    (_tensor([1000, 1000], types_pb2.DT_STRING, string_val=[b"x" * 100]), "tags", "tags"),
])
def test_tf_serving_fill_rule_is_bounded_before_anything_is_copied(history, tfs_stub,
                                                                   no_stack_traces, tensor, key,
                                                                   signature):
    with pytest.raises(grpc.RpcError) as err:
        _tfs_predict(tfs_stub, tensor, key, signature)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"input '{key}'" in err.value.details()
    assert "once its last value is repeated to fill shape" in err.value.details()
    # The rule itself still works within the bound.
    answer = _tfs_predict(tfs_stub, _tensor([2, 3], int64_val=[1, 2]))
    assert list(answer.outputs["total"].int64_val) == [5, 6]


def test_inner_request_checks_shapes_before_copying_values():
    request = tfs_pb2.PredictRequest()
    request.inputs["history"].CopyFrom(_tensor([2**33, 2**33], int64_val=[1]))
    with pytest.raises(InvalidArgument, match="input 'history': shape .* 2\\^63-1"):
        inner_request(request)
    request.inputs["history"].CopyFrom(_tensor([4, 2**40], int64_val=[1]))
    with pytest.raises(InvalidArgument, match="input 'history' takes 35184372088824 bytes"):
        inner_request(request, max_decoded_bytes=LIMIT)


def test_context_merged_into_many_examples_is_bounded():
    context, examples = b"c" * 1000, [b""] * 2000
    with pytest.raises(InvalidArgument) as err:
        merge_context(context, examples, max_bytes=LIMIT)
    assert "input 'context'" in str(err.value) and "2000000 bytes" in str(err.value)
    assert len(merge_context(context, examples[:100], max_bytes=LIMIT)) == 100


# --- REST (TF Serving and Simple TF Serving) ----------------------------------------------
def _nested(depth: int, leaf) -> list:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def _predict_url(history) -> str:
    return f"http://127.0.0.1:{history[0].http_port}/v1/models/default:predict"


@pytest.mark.parametrize("body, words", [
    ({"inputs": {"history": _nested(300, 1)}}, "more than 254 deep"),
    ({"inputs": {"history": _nested(100, 1)}}, "100 dimensions"),
    ({"instances": [_nested(99, 1)]}, "100 dimensions"),
    # strings: converted by recursion, which must not go that deep (was a RecursionError: 500)
    ({"signature_name": "tags", "inputs": {"tags": _nested(900, "x")}}, "more than 254 deep"),
    ({"signature_name": "tags", "inputs": {"tags": [["x"], _nested(900, "x")]}}, "nested deeper"),
    ({"inputs": {"history": [[0] * 200_000]}}, f"over the limit of {LIMIT} bytes"),
    ({"signature_name": "tags", "inputs": {"tags": [["x" * 600_000, "y" * 600_000]]}},
     f"over the limit of {LIMIT} bytes"),
])
def test_rest_json_refuses_absurd_nesting_and_sizes(history, no_stack_traces, body, words):
    key = "tags" if body.get("signature_name") == "tags" else "history"
    status, answer = http("POST", _predict_url(history), body)
    assert status == 400, answer
    assert f"input '{key}'" in answer["error"] and words in answer["error"], answer
    status, answer = http("POST", _predict_url(history), {"inputs": {"history": [[1, 2]]}})
    assert status == 200 and answer["outputs"] == [3]


def test_simple_tensorflow_serving_json_is_bounded_too(history, no_stack_traces):
    url = f"http://127.0.0.1:{history[0].http_port}/"
    status, answer = http("POST", url, {"data": {"history": _nested(70, 1)}})
    assert status == 400 and "input 'history'" in answer["error"], answer
    status, answer = http("POST", url, {"data": {"history": [[0] * 200_000]}})
    assert status == 400 and "over the limit" in answer["error"], answer
    status, answer = http("POST", url, {"data": {"history": [[1, 2, 3]]}})
    assert status == 200 and answer == {"total": [6]}


def test_rest_classify_context_bound(history, no_stack_traces):
    # No classification signature on this model: the context bound comes first all the same,
    # since it is what would allocate.
    url = f"http://127.0.0.1:{history[0].http_port}/v1/models/default:classify"
    body = {"context": {"f": ["x" * 1000]}, "examples": [{}] * 2000}
    status, answer = http("POST", url, body)
    assert status == 400 and "input 'context'" in answer["error"], answer


def test_json_shape_and_budget_are_checked_before_numpy_allocates():
    import tensorflow as tf

    spec = TensorSpec("history", "history:0", tf.int64, pb.DT_INT64, (-1, -1))
    with pytest.raises(InvalidArgument, match="input 'history' takes 16000 bytes"):
        to_array([[0] * 1000, [0] * 1000], spec, "history", DecodeBudget(15_999))
    assert to_array([[0] * 1000] * 2, spec, "history", DecodeBudget(16_000)).shape == (2, 1000)
    with pytest.raises(InvalidArgument, match="not a regular"):
        to_array([[0] * 3, [0]], spec, "history", DecodeBudget(16_000))


def test_max_message_bytes_bounds_rest_bodies_and_decoded_inputs_by_default(tmp_path):
    config = parse_model_config({"savedmodel_dir": export_history_model(str(tmp_path)),
                                 "warmup_iterations": 0})
    runtime = Runtime(config, grpc_port=0, http_port=0, host="127.0.0.1", grpc_server="python",
                      annotations_file=str(tmp_path / "none"), max_message_bytes=1000)
    runtime.start()
    try:
        assert runtime.manager.wait_ready(60)
        assert runtime.dataplane.max_decoded_bytes == 1000
        body = {"inputs": {"history": [[1] * 1000]}}
        status, answer = http("POST", f"http://127.0.0.1:{runtime.http_port}/v1/models/default"
                                      ":predict", body)
        assert status == 413 and "exceeds the limit of 1000 bytes" in answer["error"]
        assert len(json.dumps({"inputs": {"history": [[1, 2]]}})) < 1000
        status, _ = http("POST", f"http://127.0.0.1:{runtime.http_port}/v1/models/default"
                                 ":predict", {"inputs": {"history": [[1, 2]]}})
        assert status == 200
    finally:
        runtime.stop(1.0)

