"""Server-side batching over real gRPC: merged runs give each caller exactly its own rows,
padding to allowed sizes, large requests alone, and a full queue answers RESOURCE_EXHAUSTED.

Each behaviour is checked twice: with the fast path (the native front end's C++ plan merges the
calls it answers) and without it (runtime/deeprec_runtime/batching.py merges in the Python handlers)."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from tests.support.runtime import output, plan_of, wait_for

FAST = pytest.mark.parametrize("fast", [True, False], ids=["cpp", "python"])


def merged_runs(runtime, fast: bool) -> int:
    """Merged runs so far by the batcher that was meant to answer."""
    if not fast:
        return runtime.dataplane.batcher.batches_run
    plan = plan_of(runtime)
    assert plan is not None, "the version has no C++ plan"
    return plan.merged[0]


def concurrent_predicts(client, feeds, **kwargs):
    results: list = [None] * len(feeds)
    barrier = threading.Barrier(len(feeds))

    def call(i):
        barrier.wait()
        try:
            results[i] = output(client.predict(feeds[i], **kwargs), "probability")
        except grpc.RpcError as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@FAST
@pytest.mark.parametrize("allowed", [[], [4, 16, 32]])
def test_each_caller_gets_exactly_its_own_rows(demo, serve, allowed, fast):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, fast_predict=fast, batching={
        "max_batch_size": 32, "batch_timeout_micros": 200_000, "num_batch_threads": 2,
        "allowed_batch_sizes": allowed})
    rng = np.random.default_rng(7)
    feeds = [demo.model.make_feed(1 + i % 4, rng) for i in range(12)]
    for _ in range(2):
        got = concurrent_predicts(client, feeds)
        for feed, result in zip(feeds, got, strict=True):
            assert not isinstance(result, Exception), result
            np.testing.assert_allclose(result, demo.model.predict(feed), rtol=1e-5, atol=1e-6)
    assert merged_runs(runtime, fast) > 0, "no request was ever merged"


@FAST
def test_requests_over_max_batch_size_run_alone(demo, serve, fast):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, fast_predict=fast,
                            batching={"max_batch_size": 8, "batch_timeout_micros": 1000})
    feed = demo.model.make_feed(50, np.random.default_rng(1))
    np.testing.assert_allclose(output(client.predict(feed), "probability"),
                               demo.model.predict(feed), rtol=1e-5, atol=1e-6)


@FAST
def test_full_queue_is_refused_at_once_with_resource_exhausted(demo, serve, fast):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, fast_predict=fast, batching={
        "max_batch_size": 4, "batch_timeout_micros": 3_000_000, "max_enqueued_batches": 1})
    answered = plan_of(runtime).answered if fast else 0
    rng = np.random.default_rng(2)
    three, two = demo.model.make_feed(3, rng), demo.model.make_feed(2, rng)
    first: list = []
    waiting = threading.Thread(target=lambda: first.append(
        output(client.predict(three), "probability")))
    waiting.start()  # opens the only batch, which waits up to 3 s for company
    time.sleep(0.5)
    assert runtime.metrics.in_flight("deeprec_grpc") == 1  # the waiting call, wherever it waits
    started = time.monotonic()
    # 3 + 2 rows do not fit: the open batch closes and the new one would be a second batch.
    with pytest.raises(grpc.RpcError) as err:
        client.predict(two)
    refused_after = time.monotonic() - started
    waiting.join(10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in err.value.details()
    assert refused_after < 1.0
    np.testing.assert_allclose(first[0], demo.model.predict(three), rtol=1e-5, atol=1e-6)
    # and once the queue drains, requests are served again (a full batch runs at once)
    four = demo.model.make_feed(4, rng)
    np.testing.assert_allclose(output(client.predict(four), "probability"),
                               demo.model.predict(four), rtol=1e-5, atol=1e-6)
    if fast:  # the C++ batcher answered both, and refused the other itself
        assert plan_of(runtime).answered == answered + 2
    refused = [line for line in runtime.metrics.exposition().decode().splitlines()
               if line.startswith('deeprec_requests_total{api="deeprec_grpc",code="RESOURCE_EXHAUSTED"')]
    assert len(refused) == 1 and refused[0].endswith(" 1.0"), refused
    assert runtime.metrics.in_flight("deeprec_grpc") == 0


@FAST
def test_a_request_the_model_rejects_fails_alone(demo, serve, fast):
    """An id out of range makes TensorFlow reject the merged run: it is rerun request by request,
    so only that caller gets an error (INVALID_ARGUMENT, from the Python path), the others their
    rows."""
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, fast_predict=fast, batching={
        "max_batch_size": 8, "batch_timeout_micros": 5_000_000})  # 4 calls x 2 rows fill it
    answered = plan_of(runtime).answered if fast else 0
    rng = np.random.default_rng(5)
    feeds = [demo.model.make_feed(2, rng) for _ in range(4)]
    feeds[2] = {**feeds[2], "sparse_ids": feeds[2]["sparse_ids"] + 10**9}
    got = concurrent_predicts(client, feeds)
    assert isinstance(got[2], grpc.RpcError)
    assert got[2].code() == grpc.StatusCode.INVALID_ARGUMENT, got[2]
    for i in (0, 1, 3):
        assert not isinstance(got[i], Exception), got[i]
        np.testing.assert_allclose(got[i], demo.model.predict(feeds[i]), rtol=1e-5, atol=1e-6)
    assert merged_runs(runtime, fast) == 0  # the merged run failed: nothing counts as merged
    if fast:  # the good ones were still answered in C++
        assert plan_of(runtime).answered == answered + 3


def test_a_long_batch_timeout_does_not_hold_back_loading(demo, serve):
    """A version's plan is checked before batching is turned on for it: loading never waits
    batch_timeout_micros (30 s here) for company."""
    started = time.monotonic()
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, batching={
        "max_batch_size": 4, "batch_timeout_micros": 30_000_000})
    assert time.monotonic() - started < 20
    plan = plan_of(runtime)
    feed = demo.model.make_feed(4, np.random.default_rng(3))  # a full batch runs at once
    np.testing.assert_allclose(output(client.predict(feed), "probability"),
                               demo.model.predict(feed), rtol=1e-5, atol=1e-6)
    assert plan.merged == (0, 0)  # one call alone in its batch is not a merged run
    assert plan.answered == 2  # the check and the call


def test_blocking_the_plan_runs_waiting_batches_at_once(demo, serve):
    """A delta blocks the serving version's plan and waits for its calls: a call waiting in a
    batch (30 s timeout here) is run at once rather than holding the delta back."""
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, batching={
        "max_batch_size": 8, "batch_timeout_micros": 30_000_000})
    plan = plan_of(runtime)
    feed = demo.model.make_feed(2, np.random.default_rng(6))
    got: list = []
    caller = threading.Thread(target=lambda: got.append(output(client.predict(feed), "probability")))
    caller.start()
    wait_for(lambda: plan.active() == 1, message="the call waiting in its batch")
    started = time.monotonic()
    plan.block()  # what a delta does before it takes the write gate
    blocked_after = time.monotonic() - started
    plan.unblock()
    caller.join(10)
    assert blocked_after < 10, f"block waited {blocked_after:.1f}s for the batch"
    np.testing.assert_allclose(got[0], demo.model.predict(feed), rtol=1e-5, atol=1e-6)


def test_tf_serving_and_deeprec_calls_share_the_cpp_batches(demo, serve):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2 as tfs_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, batching={
        "max_batch_size": 8, "batch_timeout_micros": 5_000_000})  # 4 calls x 2 rows fill it
    plan = plan_of(runtime)
    tfs_before = plan.tfs_answered
    stub = prediction_service_pb2_grpc.PredictionServiceStub(client.channel)
    rng = np.random.default_rng(9)
    feeds = [demo.model.make_feed(2, rng) for _ in range(4)]
    results: list = [None] * 4
    barrier = threading.Barrier(4)

    def call(i):
        barrier.wait()
        if i % 2:
            request = tfs_pb2.PredictRequest()
            for key, value in feeds[i].items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            results[i] = tf.make_ndarray(stub.Predict(request, timeout=30).outputs["probability"])
        else:
            results[i] = output(client.predict(feeds[i]), "probability")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for feed, result in zip(feeds, results, strict=True):
        np.testing.assert_allclose(result, demo.model.predict(feed), rtol=1e-5, atol=1e-6)
    assert plan.merged == (1, 8)  # one merged run of all 8 rows
    assert plan.tfs_answered == tfs_before + 2


def test_tensor_content_requests_get_tensor_content_outputs(demo, serve):
    """The request path's raw fast path: a client sending tensor_content reads raw bytes back."""
    from deeprec_api import predict_pb2 as pb
    from deeprec_runtime.codec import encode_array

    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    feed = demo.model.make_feed(3, np.random.default_rng(4))
    request = pb.PredictRequest()
    for key, value in feed.items():
        encode_array(value, request.inputs[key], use_tensor_content=True)
    response = client._predict(request, timeout=10)
    proto = response.outputs["probability"]
    assert proto.tensor_content and not proto.float_val
    np.testing.assert_allclose(output(response, "probability"), demo.model.predict(feed),
                               rtol=1e-5, atol=1e-6)
    plain = client.predict(feed).outputs["probability"]
    assert plain.float_val and not plain.tensor_content


# --- max_batch_bytes: padding never multiplies a request's size (Python batcher) -------------
def record_runs(runtime) -> list[int]:
    """The rows of every model run from now on (merged or not)."""
    with runtime.manager.hold() as handle:
        servable = handle.servable
    rows: list[int] = []
    inner = servable.run

    def recorded(feed_names, fetch_names, arrays):
        rows.append(arrays[0].shape[0])
        return inner(feed_names, fetch_names, arrays)

    servable.run = recorded
    return rows


def row_bytes(demo) -> int:
    feed = demo.model.make_feed(1, np.random.default_rng(0))
    return sum(a.nbytes for a in feed.values())


def check_answers(demo, feeds, got) -> None:
    for feed, result in zip(feeds, got, strict=True):
        assert not isinstance(result, Exception), result
        np.testing.assert_allclose(result, demo.model.predict(feed), rtol=1e-5, atol=1e-6)


def test_a_request_that_would_push_a_batch_past_max_batch_bytes_opens_the_next(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, fast_predict=False, batching={
        "max_batch_size": 8, "batch_timeout_micros": 1_000_000})
    runtime.dataplane.set_limits(1 << 26, 5 * row_bytes(demo))  # 2 calls of 2 rows fit, not 3
    runs = record_runs(runtime)
    rng = np.random.default_rng(11)
    feeds = [demo.model.make_feed(2, rng) for _ in range(4)]
    check_answers(demo, feeds, concurrent_predicts(client, feeds))
    assert sorted(runs) == [4, 4]  # without the bound: one run of 8


@pytest.mark.parametrize("bound_rows, expected", [(20, [2, 2, 2]), (40, [32])])
def test_a_batch_that_padding_would_take_past_the_bound_runs_unpadded(demo, serve, bound_rows,
                                                                      expected):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, fast_predict=False, batching={
        "max_batch_size": 32, "batch_timeout_micros": 2_000_000, "allowed_batch_sizes": [4, 32]})
    runtime.dataplane.set_limits(1 << 26, bound_rows * row_bytes(demo))
    runs = record_runs(runtime)
    rng = np.random.default_rng(12)
    feeds = [demo.model.make_feed(2, rng) for _ in range(3)]  # 6 rows, padded to 32
    check_answers(demo, feeds, concurrent_predicts(client, feeds))
    assert sorted(runs) == expected


def test_a_request_over_max_batch_bytes_runs_alone(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, fast_predict=False, batching={
        "max_batch_size": 8, "batch_timeout_micros": 1_000_000})
    runtime.dataplane.set_limits(1 << 26, 3 * row_bytes(demo))
    runs = record_runs(runtime)
    rng = np.random.default_rng(13)
    feeds = [demo.model.make_feed(4, rng) for _ in range(2)]
    check_answers(demo, feeds, concurrent_predicts(client, feeds))
    assert runs == [4, 4] and runtime.dataplane.batcher.batches_run == 0


def test_string_inputs_count_their_bytes():
    from deeprec_runtime.batching import _nbytes

    strings = np.array([b"x" * 1000, b"y"], dtype=object)
    assert _nbytes(strings) == strings.nbytes + 1001
    assert _nbytes(np.zeros((3, 4), np.float32)) == 48
