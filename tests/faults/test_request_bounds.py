"""Requests that claim impossible shapes or sizes, sent to a real `deeprec-runtime serve` process
(grpcio's server) serving a model with two unknown dimensions: each is refused with the right
status and a message naming the input, the log holds no stack trace, and the process keeps
serving. The bounds come from the command line (--max-message-bytes, --max-inflight-bytes)."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2 as tfs_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from deeprec_api import predict_pb2 as pb
from tests.support.faults import write_config
from tests.support.history_model import export_history_model
from tests.support.runtime import SERVING, make_request, output


@pytest.fixture
def server(serve_process, tmp_path):
    config = write_config(tmp_path / "model_config.json",
                          savedmodel_dir=export_history_model(str(tmp_path)))
    with socket.socket() as probe:  # --http-port 0 turns HTTP off: a free port, picked here
        probe.bind(("127.0.0.1", 0))
        http_port = probe.getsockname()[1]
    proc = serve_process(config, "--grpc-server", "python", "--http-port", str(http_port),
                         "--max-message-bytes", str(1 << 20), "--max-inflight-bytes", "200000")
    proc.wait_serving()
    proc.http_port = http_port
    return proc


def _rest(port: int, body) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/default:predict",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def _grpc_error(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, timeout=30)
    return err.value


def test_impossible_requests_are_refused_and_the_process_keeps_serving(server):
    # DeepRec Predict, 40 bytes: dimensions whose product wraps to 0 in int64, no values.
    request = pb.PredictRequest()
    history = request.inputs["history"]
    history.dtype = pb.DT_INT64
    history.array_shape.dim.extend([2**32, 2**32])
    error = _grpc_error(server.client.raw_predict, request.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'history'" in error.details() and "2^63-1" in error.details()

    # TF Serving Predict: 9 bytes of values that TensorFlow's fill rule would make 800 MB.
    tfs = tfs_pb2.PredictRequest()
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, int64_val=[1])
    tensor.tensor_shape.dim.add(size=10_000)
    tensor.tensor_shape.dim.add(size=10_000)
    tfs.inputs["history"].CopyFrom(tensor)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    error = _grpc_error(stub.Predict, tfs)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'history'" in error.details() and f"over the limit of {1 << 20}" in error.details()

    # REST: an absurd rank, and varints that decode to 8x their size past --max-message-bytes.
    deep: list = [1]
    for _ in range(400):
        deep = [deep]
    status, answer = _rest(server.http_port, {"inputs": {"history": deep}})
    assert status == 400 and "254" in answer["error"], answer
    zeros = make_request({"history": np.zeros((1, 150_000), np.int64)})
    assert zeros.ByteSize() < 200_000
    error = _grpc_error(server.client._predict, zeros)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "1200000 bytes" in error.details()

    # --max-inflight-bytes 200000: a request bigger than the whole budget.
    big = make_request({"history": np.full((1, 40_000), 2**40, np.int64)})
    assert 200_000 < big.ByteSize() < 1 << 20
    error = _grpc_error(server.client._predict, big)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-inflight-bytes" in error.details()

    assert server.proc.poll() is None and server.health_status() == SERVING
    answer = server.client.predict({"history": np.array([[1, 2, 3]], np.int64)})
    np.testing.assert_array_equal(output(answer, "total"), [6])
    status, answer = _rest(server.http_port, {"inputs": {"history": [[4, 5]]}})
    assert status == 200 and answer["outputs"] == [9]
    assert "Traceback" not in server.log and " ERROR " not in server.log, server.log
