"""GET /metrics: Prometheus text that moves as requests are served, per API, model and version."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.support.runtime import Client
from tests.support.runtime_server import SEED_STEP, http, scrape, value


def test_request_counts_latency_and_batch_sizes_move(served):
    before = scrape(served)
    feed = served.seed.make_feed(5, np.random.default_rng(21))
    Client(served.channel).predict(feed)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served.channel)
    request = predict_pb2.PredictRequest(model_spec={"name": "seed"})
    for key, v in feed.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(v))
    stub.Predict(request, timeout=10)
    status, _ = http("POST", f"{served.http}/v1/models/seed:predict",
                     {"inputs": {k: v.tolist() for k, v in feed.items()}})
    assert status == 200
    assert http("GET", f"{served.http}/v1/models/nope")[0] == 404
    after = scrape(served)

    served_by = {"model": "seed", "version": "checkpoint_1"}
    for api, code in (("deeprec_grpc", "OK"), ("tfs_grpc", "OK"), ("rest", "200")):
        labels = {"api": api, "code": code, **served_by}
        assert value(after, "deeprec_requests_total", **labels) == value(
            before, "deeprec_requests_total", **labels) + 1, api
        assert value(after, "deeprec_request_duration_seconds_count", **labels) == value(
            before, "deeprec_request_duration_seconds_count", **labels) + 1, api
        assert value(after, "deeprec_request_duration_seconds_sum", **labels) > value(
            before, "deeprec_request_duration_seconds_sum", **labels)
    # An unknown model is not a label value (clients cannot grow the series without bound).
    assert value(after, "deeprec_requests_total", api="rest", code="404", model="") == value(
        before, "deeprec_requests_total", api="rest", code="404", model="") + 1
    assert value(after, "deeprec_batch_size_count", model="seed") == value(
        before, "deeprec_batch_size_count", model="seed") + 3
    assert value(after, "deeprec_batch_size_sum", model="seed") == value(
        before, "deeprec_batch_size_sum", model="seed") + 15
    for api in ("deeprec_grpc", "tfs_grpc", "rest"):
        assert value(after, "deeprec_requests_in_flight", api=api) == 0


def test_version_info_freshness_readiness_and_updates(served):
    families = scrape(served)
    assert value(families, "deeprec_model_version_info", model="seed", version="checkpoint_1",
                 version_number=str(SEED_STEP), state="SERVING") == 1
    assert value(families, "deeprec_model_version_info", model="examples",
                 version="savedmodel", version_number="1") == 1
    assert value(families, "deeprec_model_ready", model="seed") == 1
    assert value(families, "deeprec_model_ready", model="examples") == 1
    assert value(families, "deeprec_model_serving_full_step", model="seed") == SEED_STEP
    age = value(families, "deeprec_model_checkpoint_age_seconds", model="seed",
                version="checkpoint_1")
    assert 0 < age < 3600
    assert value(families, "deeprec_model_updates_total", model="seed", kind="load",
                 result="success") == 1
    assert value(families, "deeprec_model_update_duration_seconds_count", model="seed",
                 kind="load") == 1
