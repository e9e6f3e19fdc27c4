"""Serving over real gRPC: predictions, bad input, health, DeepRec proto compatibility."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deeprec_api import predict_pb2 as pb
from tests.support.runtime import make_request, output


def test_seed_example_predictions_equal_in_process_run(seed_model, serve):
    model, writer, base = seed_model
    runtime, client = serve(str(base / "saved_model"), str(base / "checkpoints"))
    rng = np.random.default_rng(1)
    feed = model.make_feed(7, rng)
    expected = model.predict(feed)
    # by alias ...
    got = output(client.predict(feed), "probabilities")
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # ... and by tensor name, as the seed's example writes it
    by_name = client.predict({"input1:0": feed["input1"], "input2:0": feed["input2"]},
                             output_filter=["prediction:0"])
    np.testing.assert_allclose(output(by_name, "prediction:0"), expected, rtol=1e-6)
    assert list(by_name.outputs) == ["prediction:0"]


def test_wide_deep_predictions_equal_in_process_run(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    feed = demo.model.make_feed(64, np.random.default_rng(2))
    expected = demo.model.predict(feed)
    got = output(client.predict(feed), "probability")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    info = client.info()
    assert info.version == "checkpoint_1"
    assert info.delta_step > info.full_step > 0


def test_serves_savedmodel_variables_without_checkpoint_dir(seed_model, serve):
    model, writer, base = seed_model
    runtime, client = serve(str(base / "saved_model"))
    response = client.predict({"input1": np.array([0.5]), "input2": np.array([3], np.int32)})
    assert output(response, "probabilities").shape == (1,)
    assert client.info().version == "savedmodel"


def test_health_is_serving_only_once_a_version_is_loaded(tmp_path, seed_model, serve):
    model, writer, base = seed_model
    empty = tmp_path / "empty-ckpts"
    empty.mkdir()
    runtime, client = serve(str(base / "saved_model"), str(empty), wait=False)
    health = health_pb2_grpc.HealthStub(client.channel)
    check = lambda: health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status  # noqa: E731
    assert check() == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as err:
        client.predict(model.make_feed(1, np.random.default_rng(0)))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # Training writes its first version: the runtime loads it and turns SERVING.
    import shutil

    shutil.copytree(base / "checkpoints" / "checkpoint_1", empty / "checkpoint_1")
    assert runtime.manager.wait_ready(15)
    from tests.support.runtime import wait_for

    wait_for(lambda: check() == health_pb2.HealthCheckResponse.SERVING, message="SERVING")


@pytest.mark.parametrize("case, mutate, code, words", [
    ("unknown input", lambda r: r.inputs["nope"].CopyFrom(r.inputs["input1"]),
     grpc.StatusCode.INVALID_ARGUMENT, ["unknown input 'nope'", "input1"]),
    ("missing input", lambda r: r.inputs.pop("input2"),
     grpc.StatusCode.INVALID_ARGUMENT, ["missing input", "input2"]),
    ("wrong dtype", lambda r: r.inputs["input2"].CopyFrom(
        make_request({"x": np.array([1, 2], np.int64)}).inputs["x"]),
     grpc.StatusCode.INVALID_ARGUMENT, ["DT_INT64", "signature expects DT_INT32"]),
    ("dtype does not match the value field", lambda r: setattr(r.inputs["input2"], "dtype", pb.DT_INT64),
     grpc.StatusCode.INVALID_ARGUMENT, ["DT_INT64 carries its values in int64_val", "int_val"]),
    ("shape does not match values", lambda r: r.inputs["input1"].array_shape.dim.__setitem__(0, 5),
     grpc.StatusCode.INVALID_ARGUMENT, ["shape [5]", "2 were sent"]),
    ("wrong rank", lambda r: r.inputs["input1"].array_shape.dim.append(1),
     grpc.StatusCode.INVALID_ARGUMENT, ["input1", "signature expects"]),
    ("unknown output", lambda r: r.output_filter.append("bogus"),
     grpc.StatusCode.INVALID_ARGUMENT, ["unknown output 'bogus'", "probabilities"]),
    # the answer is a map: a name given twice used to get its array encoded twice over
    ("output named twice", lambda r: r.output_filter.extend(["probabilities"] * 2),
     grpc.StatusCode.INVALID_ARGUMENT, ["output 'probabilities' is named twice"]),
    ("unknown signature", lambda r: setattr(r, "signature_name", "nope"),
     grpc.StatusCode.INVALID_ARGUMENT, ["unknown signature 'nope'", "serving_default"]),
    ("unsupported dtype", lambda r: setattr(r.inputs["input1"], "dtype", pb.DT_QINT8),
     grpc.StatusCode.INVALID_ARGUMENT, ["DT_QINT8", "not supported"]),
])
def test_bad_requests_get_clear_errors_and_server_keeps_serving(seed_model, serve, case, mutate,
                                                                code, words):
    model, writer, base = seed_model
    runtime, client = serve(str(base / "saved_model"), str(base / "checkpoints"))
    good = {"input1": np.array([1.0, 2.0]), "input2": np.array([1, 2], np.int32)}
    request = make_request(good)
    mutate(request)
    with pytest.raises(grpc.RpcError) as err:
        client.raw_predict(request.SerializeToString(), timeout=10)
    assert err.value.code() == code, (case, err.value.details())
    for word in words:
        assert word in err.value.details(), (case, err.value.details())
    assert output(client.predict(good), "probabilities").shape == (2,)


def test_error_raised_by_the_graph_is_invalid_argument(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    feed = demo.model.make_feed(2, np.random.default_rng(0))
    feed["sparse_ids"][0, 0] = 10**9  # outside the embedding table
    with pytest.raises(grpc.RpcError) as err:
        client.predict(feed)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rejected the inputs" in err.value.details()
    feed["sparse_ids"][0, 0] = 1
    assert output(client.predict(feed), "probability").shape == (2, 1)


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x12\x05\x0a\x03abc\x1a", b"\x0a" * 3])
def test_malformed_protobuf_is_invalid_argument_not_internal(seed_model, serve, payload):
    model, writer, base = seed_model
    runtime, client = serve(str(base / "saved_model"), str(base / "checkpoints"))
    with pytest.raises(grpc.RpcError) as err:
        client.raw_predict(payload, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid deeprec.serving.PredictRequest" in err.value.details()


DEEPREC_ORIGINAL_PROTO = textwrap.dedent("""
    syntax = "proto3";
    package tensorflow.eas;
    option cc_enable_arenas = true;
    enum ArrayDataType {
      DT_INVALID = 0; DT_FLOAT = 1; DT_DOUBLE = 2; DT_INT32 = 3; DT_UINT8 = 4; DT_INT16 = 5;
      DT_INT8 = 6; DT_STRING = 7; DT_COMPLEX64 = 8; DT_INT64 = 9; DT_BOOL = 10; DT_QINT8 = 11;
      DT_QUINT8 = 12; DT_QINT32 = 13; DT_BFLOAT16 = 14; DT_QINT16 = 15; DT_QUINT16 = 16;
      DT_UINT16 = 17; DT_COMPLEX128 = 18; DT_HALF = 19; DT_RESOURCE = 20; DT_VARIANT = 21;
    }
    message ArrayShape { repeated int64 dim = 1 [packed = true]; }
    message ArrayProto {
      ArrayDataType dtype = 1;
      ArrayShape array_shape = 2;
      repeated float float_val = 3 [packed = true];
      repeated double double_val = 4 [packed = true];
      repeated int32 int_val = 5 [packed = true];
      repeated bytes string_val = 6;
      repeated int64 int64_val = 7 [packed = true];
      repeated bool bool_val = 8 [packed = true];
    }
    message PredictRequest {
      string signature_name = 1;
      map<string, ArrayProto> inputs = 2;
      repeated string output_filter = 3;
    }
    message PredictResponse { map<string, ArrayProto> outputs = 1; }
    message ServingModelInfo { string model_path = 1; }
""")


def test_client_built_from_deeprecs_own_proto_works_unchanged(tmp_path, seed_model, serve):
    """DeepRec's predict.proto (its package, no extensions) compiled by protoc at test time."""
    model, writer, base = seed_model
    runtime, client = serve(str(base / "saved_model"), str(base / "checkpoints"))
    (tmp_path / "original").mkdir()
    (tmp_path / "original" / "predict.proto").write_text(DEEPREC_ORIGINAL_PROTO)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path / 'original'}",
                    f"--python_out={tmp_path / 'original'}", "predict.proto"], check=True)
    feed = model.make_feed(3, np.random.default_rng(5))
    expected = model.predict(feed)
    script = textwrap.dedent(f"""
        import sys, grpc
        sys.path.insert(0, {str(tmp_path / 'original')!r})
        import predict_pb2 as eas
        req = eas.PredictRequest(signature_name="serving_default")
        a = req.inputs["input1"]; a.dtype = eas.DT_DOUBLE; a.array_shape.dim.append(3)
        a.double_val.extend({feed['input1'].tolist()!r})
        b = req.inputs["input2"]; b.dtype = eas.DT_INT32; b.array_shape.dim.append(3)
        b.int_val.extend({feed['input2'].tolist()!r})
        req.output_filter.append("probabilities")
        ch = grpc.insecure_channel("127.0.0.1:{runtime.grpc_port}")
        call = ch.unary_unary("/deeprec.serving.PredictionService/Predict",
                              request_serializer=eas.PredictRequest.SerializeToString,
                              response_deserializer=eas.PredictResponse.FromString)
        out = call(req, timeout=10).outputs["probabilities"]
        assert out.dtype == eas.DT_FLOAT and list(out.array_shape.dim) == [3]
        print(" ".join(repr(v) for v in out.float_val))
        info = ch.unary_unary("/deeprec.serving.PredictionService/GetServingModelInfo",
                              request_serializer=lambda m: b"",
                              response_deserializer=eas.ServingModelInfo.FromString)(None, timeout=10)
        print(info.model_path)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True)
    values_line, path_line = result.stdout.strip().splitlines()[-2:]
    np.testing.assert_allclose([float(v) for v in values_line.split()], expected, rtol=1e-6)
    assert path_line.endswith("checkpoint_1")
