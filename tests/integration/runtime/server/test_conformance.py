"""One conformance suite, run against each executor: the Python handlers, the C++ fast path with
one session, and the C++ fast path on a two-lane session group (RR and MOD): output_filter, and
TF Serving's version pins.

Each case states the answer the API promises (status code, output names in order, the name an
error must mention), not the other executor's answer, so a defect both executors share fails
too. On the C++ executors every valid case must also have been answered in C++: a request field
that silently leaves the fast path is a performance bug (issue 22).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from tests.support.runtime import plan_of
from tests.support.sequence_model import (
    DEEPREC,
    TFS,
    bytes_field,
    entry,
    request,
    valid_arrays,
    write_sequence_model,
)
from tests.support.sequence_model import feed as sequence_feed

METHODS = {DEEPREC: "/deeprec.serving.PredictionService/Predict",
           TFS: "/tensorflow.serving.PredictionService/Predict"}

EXECUTORS = {
    "python": {"fast_predict": False},
    "cpp": {},
    "cpp_2_lanes_rr": {"session_num": 2, "select_session_policy": "RR"},
    "cpp_2_lanes_mod": {"session_num": 2, "select_session_policy": "MOD"},
}

# name -> (output_filter, the output names expected, or the status code and the word its details
# must contain). sequence_model's signature: score, rows; tensors score:0, rows:0.
CASES = {
    "no_filter": ([], ["rows", "score"]),  # every output of the signature
    "alias": (["score"], ["score"]),
    "tensor_name": (["score:0"], ["score:0"]),
    "several": (["score", "rows"], ["score", "rows"]),
    "several_reversed": (["rows", "score:0"], ["rows", "score:0"]),
    "unknown": (["score", "no_such_output"], (grpc.StatusCode.INVALID_ARGUMENT, "no_such_output")),
    "named_twice": (["score", "score"], (grpc.StatusCode.INVALID_ARGUMENT, "score")),
}


@pytest.fixture(params=list(EXECUTORS), scope="module")
def executor(request, tmp_path_factory):
    """A runtime on the sequence model, served by one executor (module scope: one per executor)."""
    from deeprec_runtime.app import Runtime
    from deeprec_runtime.config import parse_model_config

    base = tmp_path_factory.mktemp(request.param)
    path = str(base / "sequence")
    write_sequence_model(path)
    fields = dict(EXECUTORS[request.param])
    fast = fields.pop("fast_predict", True)
    raw = {"savedmodel_dir": path, "model_store_type": "local", "feature_store_type": "memory",
           "signature_name": "serving_default", "warmup_iterations": 1, **fields}
    runtime = Runtime(parse_model_config(raw), grpc_port=0, host="127.0.0.1",
                      annotations_file=str(base / "no-annotations"), fast_predict=fast)
    runtime.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    assert runtime.manager.wait_ready(60), runtime.manager.last_error
    plan = plan_of(runtime)
    assert (plan is None) == (not fast), f"{request.param}: plan {plan}"
    yield request.param, runtime, channel, plan
    channel.close()
    runtime.stop(1.0)


def _outputs(api: str, data: bytes) -> tuple[list[str], dict[str, np.ndarray]]:
    from tensorflow.core.framework import tensor_pb2  # noqa: F401  (registers TensorProto)
    from tensorflow_serving.apis import predict_pb2 as tfs_pb

    from deeprec_api import predict_pb2 as pb
    from deeprec_runtime.codec import decode_array

    if api == DEEPREC:
        response = pb.PredictResponse.FromString(data)
        return list(response.outputs), {k: decode_array(v, k) for k, v in response.outputs.items()}
    import tensorflow as tf

    tfs = tfs_pb.PredictResponse.FromString(data)
    return list(tfs.outputs), {k: tf.make_ndarray(v) for k, v in tfs.outputs.items()}


@pytest.mark.parametrize("api", [DEEPREC, TFS])
@pytest.mark.parametrize("case", list(CASES))
def test_output_filter(executor, api, case):
    name, _, channel, plan = executor
    names, expected = CASES[case]
    values = sequence_feed(3, 4, seed=len(case))
    data = request(api, valid_arrays(api, values)) + b"".join(
        bytes_field(3, n.encode()) for n in names)
    counter = (lambda: plan.answered if api == DEEPREC else plan.tfs_answered) if plan else None
    before = counter() if counter else 0
    try:
        answer = channel.unary_unary(METHODS[api])(data, timeout=30)
        got: tuple = (grpc.StatusCode.OK, answer)
    except grpc.RpcError as exc:
        got = (exc.code(), exc.details())
    if isinstance(expected, tuple):  # an error naming what was wrong
        code, word = expected
        assert got[0] == code and word in got[1], (name, api, got)
        return
    assert got[0] == grpc.StatusCode.OK, (name, api, got)
    order, arrays = _outputs(api, got[1])
    # DeepRec's and TF Serving's outputs are protobuf maps: a map has no order (Python's upb
    # writes its entries in hash order), so each name once, exactly those named, is the promise.
    assert sorted(order) == sorted(expected) and len(order) == len(expected), (name, api, order)
    want_score = (values["weights"].sum(axis=1) * 0.5 + values["history"].sum(axis=1) * 0.001
                  + values["bias"])
    for key in expected:
        if key.startswith("score"):
            np.testing.assert_allclose(arrays[key], want_score, rtol=1e-5)
        else:
            assert arrays[key].tolist() == [3, 3, 3]
    if counter is not None:
        assert counter() == before + 1, f"{name}: {api} {case} was not answered in C++"


# TF Serving model_spec pins: (version, version_label) -> the status the API promises. The served
# version of a model without checkpoint_dir is `savedmodel`, TF Serving's version 1.
PINS = {
    "number": ((1, ""), grpc.StatusCode.OK),
    "label": ((None, "savedmodel"), grpc.StatusCode.OK),
    "other_number": ((2, ""), grpc.StatusCode.NOT_FOUND),
    "other_label": ((None, "checkpoint_9"), grpc.StatusCode.NOT_FOUND),
}


@pytest.mark.parametrize("pin", list(PINS))
def test_tf_serving_version_pins(executor, pin):
    name, _, channel, plan = executor
    (number, label), code = PINS[pin]
    spec = bytes_field(1, b"default")
    if number is not None:
        spec += bytes_field(2, bytes([0x08, number]))  # an Int64Value
    if label:
        spec += bytes_field(4, label.encode())
    values = sequence_feed(2, 3, seed=len(pin))
    data = bytes_field(1, spec) + b"".join(
        entry(k, v) for k, v in valid_arrays(TFS, values).items())
    before = plan.tfs_answered if plan else 0
    try:
        channel.unary_unary(METHODS[TFS])(data, timeout=30)
        got = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        got = exc.code()
    assert got == code, (name, pin, got)
    if plan is not None:  # the served version's pins are answered in C++, the others by Python
        assert plan.tfs_answered == before + (code == grpc.StatusCode.OK), (name, pin)
