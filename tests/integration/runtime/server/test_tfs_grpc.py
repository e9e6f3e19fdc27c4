"""TF Serving's gRPC API, called with the stubs of the PyPI tensorflow-serving-api package."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.support.runtime import Client
from tests.support.runtime_server import LABELS, SEED_STEP, examples_regression, examples_scores


def predict_request(feed, model="seed", version=None, label="", signature=""):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    if signature:
        request.model_spec.signature_name = signature
    for key, value in feed.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


@pytest.fixture(scope="module")
def stub(served):
    return prediction_service_pb2_grpc.PredictionServiceStub(served.channel)


def test_predict_equals_in_process_model_and_names_the_version(served, stub):
    feed = served.seed.make_feed(9, np.random.default_rng(3))
    response = stub.Predict(predict_request(feed), timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]),
                               served.seed.predict(feed), rtol=1e-6)
    assert response.model_spec.name == "seed"
    assert response.model_spec.version.value == SEED_STEP
    assert response.model_spec.signature_name == "serving_default"


def test_predict_accepts_repeated_fields_and_empty_model_name_means_default(served, stub):
    feed = served.seed.make_feed(4, np.random.default_rng(4))
    request = predict_pb2.PredictRequest()
    request.inputs["input1"].dtype = tf.float64.as_datatype_enum
    request.inputs["input1"].tensor_shape.dim.add(size=4)
    request.inputs["input1"].double_val.extend(feed["input1"].tolist())
    request.inputs["input2"].dtype = tf.int32.as_datatype_enum
    request.inputs["input2"].tensor_shape.dim.add(size=4)
    request.inputs["input2"].int_val.extend(feed["input2"].tolist())
    request.output_filter.append("probabilities")
    response = stub.Predict(request, timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]),
                               served.seed.predict(feed), rtol=1e-6)


def test_short_repeated_field_repeats_its_last_value_as_tensorflow_does(served, stub):
    feed = {"input1": np.array([0.25, 0.5, 0.5, 0.5]), "input2": np.array([3, 3, 3, 3], np.int32)}
    request = predict_pb2.PredictRequest()
    request.inputs["input1"].dtype = tf.float64.as_datatype_enum
    request.inputs["input1"].tensor_shape.dim.add(size=4)
    request.inputs["input1"].double_val.extend([0.25, 0.5])  # 0.5 fills the last three
    request.inputs["input2"].dtype = tf.int32.as_datatype_enum
    request.inputs["input2"].tensor_shape.dim.add(size=4)
    request.inputs["input2"].int_val.append(3)
    response = stub.Predict(request, timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]),
                               served.seed.predict(feed), rtol=1e-6)
    # No values at all is still an error, naming the input (not silently zeros).
    del request.inputs["input2"].int_val[:]
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input2" in err.value.details()


def test_version_and_label_select_the_loaded_version(served, stub):
    feed = served.seed.make_feed(2, np.random.default_rng(5))
    by_number = stub.Predict(predict_request(feed, version=SEED_STEP), timeout=10)
    by_label = stub.Predict(predict_request(feed, label="checkpoint_1"), timeout=10)
    assert by_number.model_spec.version.value == by_label.model_spec.version.value == SEED_STEP


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"model": "nope"}, ["model 'nope'", "seed, examples"]),
        (
            {"version": SEED_STEP + 1},
            [f"version {SEED_STEP + 1}", "does not exist", f"{SEED_STEP} (checkpoint_1)"],
        ),
        ({"label": "checkpoint_9"}, ["label 'checkpoint_9'", "does not exist"]),
    ],
)
def test_unknown_model_or_version_is_not_found(served, stub, kwargs, words):
    feed = served.seed.make_feed(1, np.random.default_rng(6))
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(predict_request(feed, **kwargs), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for word in words:
        assert word in err.value.details()


def test_bad_input_gets_the_same_error_as_the_deeprec_service(served, stub):
    feed = {"input1": np.array([1.0]), "input2": np.array([1.5])}  # input2 must be int32
    with pytest.raises(grpc.RpcError) as tfs_err:
        stub.Predict(predict_request(feed), timeout=10)
    with pytest.raises(grpc.RpcError) as deeprec_err:
        Client(served.channel).predict(feed)
    assert tfs_err.value.code() == deeprec_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert tfs_err.value.details() == deeprec_err.value.details()
    assert "input2" in tfs_err.value.details() and "DT_INT32" in tfs_err.value.details()


def test_garbage_bytes_are_invalid_argument_not_internal(served):
    for method in ("/tensorflow.serving.PredictionService/Predict",
                   "/tensorflow.serving.PredictionService/GetModelMetadata",
                   "/tensorflow.serving.ModelService/GetModelStatus"):
        call = served.channel.unary_unary(method)
        with pytest.raises(grpc.RpcError) as err:
            call(b"\xff\xff\xff\x0f garbage", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert "not a valid tensorflow.serving" in err.value.details()


def test_get_model_metadata_returns_signature_defs(served, stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "seed"
    response = stub.GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == SEED_STEP
    defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(defs)
    sig = defs.signature_def["serving_default"]
    assert sig.inputs["input1"].name == "input1:0"
    assert sig.inputs["input1"].dtype == tf.float64.as_datatype_enum
    assert [d.size for d in sig.inputs["input2"].tensor_shape.dim] == [-1]
    assert sig.outputs["probabilities"].name == "prediction:0"
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"], model_spec={"name": "nope"}), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["size"], model_spec={"name": "seed"}), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_model_status_lists_versions_and_not_found(served):
    stub = model_service_pb2_grpc.ModelServiceStub(served.channel)
    State = get_model_status_pb2.ModelVersionStatus.State
    response = stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec={"name": "seed"}), timeout=10)
    assert [(s.version, s.state, s.status.error_code) for s in response.model_version_status] == [
        (SEED_STEP, State.AVAILABLE, 0)]
    response = stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec={"name": "examples"}), timeout=10)
    assert [(s.version, s.state) for s in response.model_version_status] == [(1, State.AVAILABLE)]
    for spec in ({"name": "nope"}, {"name": "seed", "version": {"value": 99}}):
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec=spec), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _examples(xs, biases):
    out = []
    for x, b in zip(xs, biases, strict=True):
        e = example_pb2.Example()
        e.features.feature["x"].float_list.value.extend(x)
        if b is not None:
            e.features.feature["bias"].float_list.value.append(b)
        out.append(e)
    return out


def test_classify_regress_and_multi_inference(served, stub):
    xs = np.array([[1.0, 2.0], [-1.0, 0.5], [0.0, 0.0]], np.float32)
    bias = np.array([0.0, 0.25, 0.0], np.float32)
    request = classification_pb2.ClassificationRequest(model_spec={"name": "examples"})
    request.input.example_list.examples.extend(_examples(xs, [None, 0.25, None]))
    response = stub.Classify(request, timeout=10)
    assert response.model_spec.version.value == 1
    got = np.array([[c.score for c in row.classes] for row in response.result.classifications])
    np.testing.assert_allclose(got, examples_scores(xs, bias), rtol=1e-5)
    assert {c.label.encode() for c in response.result.classifications[0].classes} == set(LABELS)

    # The context's features join every example (bias 0.5 for all three).
    request = regression_pb2.RegressionRequest(
        model_spec={"name": "examples", "signature_name": "regress_value"})
    lst = request.input.example_list_with_context
    lst.examples.extend(_examples(xs, [None] * 3))
    lst.context.features.feature["bias"].float_list.value.append(0.5)
    response = stub.Regress(request, timeout=10)
    np.testing.assert_allclose([r.value for r in response.result.regressions],
                               examples_regression(xs, np.full(3, 0.5, np.float32)), rtol=1e-5)

    multi = inference_pb2.MultiInferenceRequest()
    multi.tasks.add(model_spec={"name": "examples"}, method_name="tensorflow/serving/classify")
    multi.tasks.add(model_spec={"name": "examples", "signature_name": "regress_value"},
                    method_name="tensorflow/serving/regress")
    multi.input.example_list.examples.extend(_examples(xs, [None, 0.25, None]))
    results = stub.MultiInference(multi, timeout=10).results
    assert len(results[0].classification_result.classifications) == 3
    np.testing.assert_allclose([r.value for r in results[1].regression_result.regressions],
                               examples_regression(xs, bias), rtol=1e-5)


def test_classify_on_a_predict_signature_is_invalid_argument(served, stub):
    request = classification_pb2.ClassificationRequest(model_spec={"name": "seed"})
    request.input.example_list.examples.extend(_examples([[1.0, 2.0]], [None]))
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensorflow/serving/classify" in err.value.details()
    empty = regression_pb2.RegressionRequest(model_spec={"name": "examples",
                                                         "signature_name": "regress_value"})
    with pytest.raises(grpc.RpcError) as err:
        stub.Regress(empty, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_deeprec_service_serves_the_default_model(served):
    feed = served.seed.make_feed(3, np.random.default_rng(8))
    from tests.support.runtime import output

    np.testing.assert_allclose(output(Client(served.channel).predict(feed), "probabilities"),
                               served.seed.predict(feed), rtol=1e-6)
