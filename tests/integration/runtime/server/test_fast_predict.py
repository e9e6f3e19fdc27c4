"""The C++ fast path for DeepRec and TF Serving Predict (runtime/deeprec_runtime/native/fast_predict.cc).

Each test runs real runtimes on the native gRPC front end over loopback: one with the fast path
(the default) and, where answers are compared, one without it, on the same model files. The fast
path must give byte-for-byte the answers of the Python path (with several outputs, the same
message: protobuf may write map entries in another order), hand everything it does not fully
understand to Python (so errors keep their codes and messages), and follow versions, deltas and
rollbacks.
"""

from __future__ import annotations

import random
import threading
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import predict_pb2 as tfs_predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.codec import encode_array
from tests.support import runtime_server as metrics_of
from tests.support.runtime import make_request, output, plan_of, wait_for
from tests.support.runtime_server import deeprec_call, http, raw_call
from tests.support.sequence_model import (
    CONTENT_FIELD,
    DEEPREC,
    DT_FLOAT,
    DT_INT64,
    TFS,
    VALUE_FIELD,
    array,
    bytes_field,
    entry,
    packed_varints,
    request,
    shape_field,
    tag,
    valid_arrays,
    values_payload,
    varint,
    varint_field,
    write_sequence_model,
)
from tests.support.sequence_model import feed as sequence_feed


@pytest.fixture
def pair(demo, serve):
    """The demo model served twice: with the fast path and without it."""
    fast, fast_client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    slow, slow_client = serve(demo.saved_model_dir, demo.checkpoint_dir, fast_predict=False)
    assert fast.grpc_server == "native" and fast.fast_predict is not None
    assert slow.fast_predict is None
    return fast, fast_client, slow, slow_client


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_answers_are_the_python_answers_and_come_from_cpp(demo, pair, batch):
    fast, fast_client, slow, slow_client = pair
    plan = plan_of(fast)
    assert plan is not None
    before = plan.answered
    rng = np.random.default_rng(batch)
    for _ in range(5):
        data = make_request(demo.model.make_feed(batch, rng)).SerializeToString()
        code, answer = raw_call(fast_client.channel, data)
        assert code == grpc.StatusCode.OK, answer
        assert answer == raw_call(slow_client.channel, data)[1]
    assert plan.answered - before == 5


def test_rest_requests_run_on_the_plan_with_the_python_answers_and_are_counted_once(demo, serve):
    """REST reaches no native front end: the data plane offers its requests to the version's
    plan, which answers them as Python would; they count as REST requests only."""
    fast, _ = serve(demo.saved_model_dir, demo.checkpoint_dir, http_port=0)
    slow, _ = serve(demo.saved_model_dir, demo.checkpoint_dir, fast_predict=False, http_port=0)
    plan = plan_of(fast)
    assert plan is not None
    offered, answered = plan.offered, plan.answered
    feed = {k: v.tolist() for k, v in demo.model.make_feed(5, np.random.default_rng(7)).items()}
    calls = [("/v1/models/default:predict", {"inputs": feed}),
             ("/", {"model_name": "default", "data": feed})]
    for path, body in calls:
        got = [http("POST", f"http://127.0.0.1:{r.http_port}{path}", body) for r in (fast, slow)]
        assert got[0][0] == 200, got[0]
        assert got[0] == got[1], path
    assert plan.offered == offered + len(calls)
    assert plan.answered == answered  # the gRPC figures: not these calls
    families = metrics_of.scrape(SimpleNamespace(http=f"http://127.0.0.1:{fast.http_port}"))
    assert metrics_of.value(families, "deeprec_requests_total", api="rest",
                            code="200") == len(calls)
    assert metrics_of.value(families, "deeprec_requests_total", api="deeprec_grpc") == 0
    # What the plan declines (an unknown input) is answered by Python, error included.
    bad = {"inputs": {**feed, "nope": [1]}}
    got = [http("POST", f"http://127.0.0.1:{r.http_port}/v1/models/default:predict", bad)
           for r in (fast, slow)]
    assert got[0][0] == 400 and got[0] == got[1]
    assert plan.offered == offered + len(calls)


def test_tensor_content_requests_get_tensor_content_answers(demo, pair):
    fast, fast_client, slow, slow_client = pair
    feed = demo.model.make_feed(9, np.random.default_rng(1))
    request = pb.PredictRequest()
    for key, value in feed.items():
        encode_array(value, request.inputs[key], use_tensor_content=True)
    data = request.SerializeToString()
    before = plan_of(fast).answered
    code, answer = raw_call(fast_client.channel, data)
    assert code == grpc.StatusCode.OK
    assert plan_of(fast).answered == before + 1
    response = pb.PredictResponse.FromString(answer)
    assert response.outputs["probability"].tensor_content  # raw in, raw out
    assert answer == raw_call(slow_client.channel, data)[1]
    np.testing.assert_allclose(output(response, "probability"), demo.model.predict(feed),
                               rtol=1e-5, atol=1e-6)


def test_double_and_int32_inputs(seed_model, serve):
    model, _, base = seed_model
    fast, client = serve(str(base / "saved_model"), str(base / "checkpoints"))
    _, slow_client = serve(str(base / "saved_model"), str(base / "checkpoints"), fast_predict=False)
    plan = plan_of(fast)
    assert plan is not None
    feed = model.make_feed(5, np.random.default_rng(0))
    data = make_request(feed).SerializeToString()
    before = plan.answered
    code, answer = raw_call(client.channel, data)
    assert code == grpc.StatusCode.OK and plan.answered == before + 1
    assert answer == raw_call(slow_client.channel, data)[1]
    np.testing.assert_allclose(output(pb.PredictResponse.FromString(answer), "probabilities"),
                               model.predict(feed), rtol=1e-5, atol=1e-6)
    # the same through TF Serving's API: double_val, and int32 in int_val
    tfs_before = plan.tfs_answered
    data = tfs_request(feed).SerializeToString()
    code, tfs_answer = tfs_call(client.channel, data)
    assert code == grpc.StatusCode.OK and plan.tfs_answered == tfs_before + 1
    assert tfs_answer == tfs_call(slow_client.channel, data)[1]


def _declined_requests(demo) -> dict[str, bytes]:
    feed = demo.model.make_feed(4, np.random.default_rng(2))
    ok = make_request(feed)
    cases: dict[str, pb.PredictRequest] = {}
    cases["output_filter_unknown"] = make_request(feed, output_filter=["probability", "nope"])
    cases["output_filter_twice"] = make_request(feed, output_filter=["probability"] * 2)
    cases["tensor_names"] = make_request({f"{k}:0": v for k, v in feed.items()})
    cases["unknown_signature"] = make_request(feed, signature_name="nope")
    cases["unknown_input"] = make_request({**feed, "extra": np.ones(4, np.float32)})
    cases["missing_input"] = make_request({"dense": feed["dense"]})
    cases["wrong_dtype"] = make_request({**feed, "dense": feed["dense"].astype(np.float64)})
    cases["wrong_shape"] = make_request({**feed, "dense": feed["dense"][:, :5]})
    cases["id_out_of_range"] = make_request({**feed, "sparse_ids": feed["sparse_ids"] + 10**9})
    count_mismatch = pb.PredictRequest()
    count_mismatch.CopyFrom(ok)
    count_mismatch.inputs["dense"].array_shape.dim[0] = 5
    cases["values_do_not_fill_shape"] = count_mismatch
    huge = pb.PredictRequest()
    huge.CopyFrom(ok)
    huge.inputs["dense"].array_shape.dim[0] = 1 << 24  # a claim (830 MiB), not backed by values
    cases["huge_shape"] = huge
    no_shape = pb.PredictRequest()
    no_shape.CopyFrom(ok)
    no_shape.inputs["dense"].ClearField("array_shape")
    cases["no_shape"] = no_shape
    data = {name: r.SerializeToString() for name, r in cases.items()}
    data["garbage"] = b"\xff\xff\xff\xff"
    data["truncated"] = ok.SerializeToString()[:-3]
    data["empty"] = b""
    return data


def test_what_the_plan_declines_is_answered_by_python_exactly(demo, pair):
    fast, fast_client, slow, slow_client = pair
    plan = plan_of(fast)
    for name, data in _declined_requests(demo).items():
        before = plan.answered
        got = raw_call(fast_client.channel, data)
        assert got == raw_call(slow_client.channel, data), name
        assert plan.answered == before, f"{name} was answered by the fast path"
        if name != "tensor_names":
            assert got[0] == grpc.StatusCode.INVALID_ARGUMENT, (name, got)
    # still serving, still fast
    before = plan.answered
    fast_client.predict(demo.model.make_feed(2, np.random.default_rng(3)))
    assert plan.answered == before + 1


def _mutated(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One seed with 1-3 random byte changes, deletions or insertions."""
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(3)
        pos = rng.randrange(len(data))
        if op == 0:
            data[pos] = rng.randrange(256)
        elif op == 1:
            del data[pos:pos + rng.randint(1, 4)]
        else:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
    return bytes(data)


def test_random_mutations_get_the_same_answer_with_and_without_the_fast_path(demo, pair):
    """Differential fuzzing: any bytes the C++ parser accepts must mean what they mean to Python."""
    fast, fast_client, slow, slow_client = pair
    rng = random.Random(7)
    seeds = []
    for batch in (1, 3):
        feed = demo.model.make_feed(batch, np.random.default_rng(batch))
        seeds.append(make_request(feed).SerializeToString())
        raw = pb.PredictRequest()
        for key, value in feed.items():
            encode_array(value, raw.inputs[key], use_tensor_content=True)
        seeds.append(raw.SerializeToString())
    before = plan_of(fast).answered
    for i in range(300):
        data = _mutated(rng, seeds)
        got = raw_call(fast_client.channel, data)
        want = raw_call(slow_client.channel, data)
        assert got == want, (i, data.hex())
    assert plan_of(fast).answered > before  # some mutations (of values) are still valid requests


def test_deltas_swaps_and_rollback_are_followed(tmp_path, demo, serve):
    annotations = tmp_path / "annotations"
    fast, client = serve(demo.saved_model_dir, demo.checkpoint_dir,
                         annotations_file=str(annotations))
    feed = demo.model.make_feed(8, np.random.default_rng(4))
    first = plan_of(fast)

    def served_matches_trainer():
        return np.allclose(output(client.predict(feed), "probability"),
                           demo.model.predict(feed), rtol=1e-5, atol=1e-6)

    assert served_matches_trainer()
    with fast.manager.hold() as handle:
        step = handle.servable
    old_delta = step.delta_step
    demo.write_delta(steps=3)
    wait_for(lambda: client.info().delta_step > old_delta, message="delta applied")
    before = first.answered
    assert served_matches_trainer()  # the new rows, from the same plan
    assert first.answered == before + 1 and plan_of(fast) is first

    demo.write_full("checkpoint_2", steps=4)
    wait_for(lambda: client.info().version == "checkpoint_2", message="checkpoint_2 served")
    second = plan_of(fast)
    assert second is not None and second is not first
    before = second.answered
    assert served_matches_trainer()
    assert second.answered == before + 1
    first_answered = first.answered

    annotations.write_text('serving.deeprec.io/target-version="checkpoint_1"\n')
    wait_for(lambda: client.info().version == "checkpoint_1", message="rolled back")
    assert plan_of(fast) is first  # the retained version's plan is published again
    client.predict(feed)
    assert first.answered == first_answered + 1


def test_front_end_calls_arriving_during_a_delta_wait_for_it_in_cpp(demo, serve):
    """A plan blocked by a delta keeps the native front end's calls waiting in C++ (within their
    deadlines) and answers them once unblocked; a closed plan lets its waiters go to Python. Calls
    the data plane offers (REST, whose callers hold the version's read gate the delta waits for)
    never wait: they go to Python at once."""
    fast, client = serve(demo.saved_model_dir, demo.checkpoint_dir, http_port=0)
    plan = plan_of(fast)
    feed = demo.model.make_feed(3, np.random.default_rng(12))
    data = make_request(feed).SerializeToString()
    expected = demo.model.predict(feed)
    answers: list = []

    def send(timeout=30.0):
        try:
            answers.append(pb.PredictResponse.FromString(
                client.channel.unary_unary(metrics_of.PREDICT)(data, timeout=timeout)))
        except grpc.RpcError as exc:
            answers.append(exc.code())

    answered = plan.answered
    plan.block()  # only the plan: the version's gate stays open, so Python would answer at once
    caller = threading.Thread(target=send)
    caller.start()
    caller.join(0.5)
    assert caller.is_alive() and answers == [], "the call did not wait for the delta"
    # An offered REST call does not wait; Python answers it.
    body = {"inputs": {k: v.tolist() for k, v in feed.items()}}
    offered = plan.offered
    assert http("POST", f"http://127.0.0.1:{fast.http_port}/v1/models/default:predict",
                body)[0] == 200
    assert plan.offered == offered
    # A call whose deadline passes while it waits is refused, not answered from the plan.
    send(timeout=0.3)
    assert answers == [grpc.StatusCode.DEADLINE_EXCEEDED]
    plan.unblock()
    caller.join(10)
    np.testing.assert_allclose(output(answers[1], "probability"), expected, rtol=1e-5, atol=1e-6)
    assert plan.answered == answered + 1  # the waiter, answered in C++

    plan.block()
    caller = threading.Thread(target=send)
    caller.start()
    caller.join(0.5)
    assert caller.is_alive(), "the call did not wait for the delta"
    with fast.manager.hold() as handle:
        plan.close()  # what closing the version does first: its waiters go to Python
        handle.servable.fast_plan = None
    caller.join(10)
    np.testing.assert_allclose(output(answers[2], "probability"), expected, rtol=1e-5, atol=1e-6)


def test_a_new_versions_plan_is_ready_before_it_serves(demo, serve):
    fast, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    prepare = fast.manager.before_serving
    seen = []

    def spy(servable):
        prepare(servable)
        seen.append((servable.name, servable.fast_plan is not None, fast.manager.info().version))

    fast.manager.before_serving = spy
    demo.write_full("checkpoint_2", steps=1)
    wait_for(lambda: client.info().version == "checkpoint_2", message="checkpoint_2 served")
    assert seen == [("checkpoint_2", True, "checkpoint_1")]
    assert plan_of(fast) is not None


def test_a_version_freed_after_a_swap_closes_its_plan(demo, serve):
    fast, client = serve(demo.saved_model_dir, demo.checkpoint_dir, retain_previous_version=False)
    with fast.manager.hold() as handle:
        servable = handle.servable
    plan = servable.fast_plan
    assert plan is not None
    demo.write_full("checkpoint_2", steps=1)
    wait_for(lambda: servable.closed, message="old version closed")
    assert plan.closed  # closed with its version, before the session
    assert plan_of(fast) is not plan
    client.predict(demo.model.make_feed(2, np.random.default_rng(0)))


@pytest.mark.parametrize("batching", [None, {"max_batch_size": 16, "batch_timeout_micros": 2000}],
                         ids=["unbatched", "batched"])
def test_requests_during_deltas_and_swaps_all_succeed(demo, serve, batching):
    fields = {"batching": batching} if batching else {}
    fast, client = serve(demo.saved_model_dir, demo.checkpoint_dir, **fields)
    feed = demo.model.make_feed(4, np.random.default_rng(5))
    stop = threading.Event()
    failures: list[str] = []
    done = [0]

    def traffic():
        while not stop.is_set():
            try:
                client.predict(feed)
                done[0] += 1
            except grpc.RpcError as exc:
                failures.append(f"{exc.code()}: {exc.details()}")

    first = plan_of(fast)
    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            old = client.info().delta_step
            demo.write_delta(steps=1)
            wait_for(lambda old=old: client.info().delta_step > old, message="delta")
        merged_before_swap = first.merged[0]
        demo.write_full("checkpoint_2", steps=1)
        wait_for(lambda: client.info().version == "checkpoint_2", message="swap")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert done[0] > 20
    np.testing.assert_allclose(output(client.predict(feed), "probability"),
                               demo.model.predict(feed), rtol=1e-5, atol=1e-6)
    if batching:  # the C++ batcher was in the path (4 callers x 4 rows fill a batch of 16)
        assert merged_before_swap > 0


def test_requests_answered_in_cpp_are_in_the_metrics(demo, serve):
    fast, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    version = client.info().version
    for batch in (1, 16, 16):
        client.predict(demo.model.make_feed(batch, np.random.default_rng(batch)))
    text = fast.metrics.exposition().decode()
    count = f'deeprec_requests_total{{api="deeprec_grpc",code="OK",model="default",version="{version}"}} 3.0'
    assert count in text  # three requests; the plan's own check request is not one of them
    assert 'deeprec_batch_size_count{model="default"} 3.0' in text
    assert 'deeprec_batch_size_bucket{le="16",model="default"} 3.0' in text
    assert 'deeprec_batch_size_bucket{le="8",model="default"} 1.0' in text


def test_versions_that_need_python_per_request_get_no_plan_and_say_why(demo, serve, tmp_path,
                                                                       caplog):
    def refusals() -> list[str]:  # a warning at load, naming the version and the reason
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
                and "is served by the Python handler only" in r.getMessage()]

    timeline, client = serve(demo.saved_model_dir, demo.checkpoint_dir, timeline_start_step=1000,
                             timeline_interval_step=1, timeline_trace_count=1,
                             timeline_path=str(tmp_path / "t"))
    assert timeline.fast_predict is not None and plan_of(timeline) is None
    assert refusals() == ["version checkpoint_1 is served by the Python handler only: timelines "
                          "are recorded (traced in Python per request)"]
    client.predict(demo.model.make_feed(2, np.random.default_rng(0)))  # Python answers


@pytest.mark.parametrize("store", [
    {"ev_storage_type": 1},
    {"ev_storage_type": 12, "ev_storage_size": [20_000]},
    {"ev_storage_type": 12, "ev_storage_size": [20_000],
     "batching": {"max_batch_size": 16, "batch_timeout_micros": 20_000}},
], ids=["dram", "dram_ssd", "dram_ssd_batched"])
def test_feature_store_versions_are_answered_in_cpp_with_rows_from_the_store(demo, serve,
                                                                             tmp_path, store):
    """The plan's lookup hook gives C++ the rows the store holds (the same Python code looks them
    up); the answers are the Python path's, and what the store refuses (ids out of the table) is
    Python's to answer, with its error."""
    if store["ev_storage_type"] == 12:
        store = {**store, "ev_storage_path": str(tmp_path / "ssd")}
    fast, client = serve(demo.saved_model_dir, demo.checkpoint_dir, **store)
    slow, slow_client = serve(demo.saved_model_dir, demo.checkpoint_dir, fast_predict=False,
                              **store)
    plan = plan_of(fast)
    assert plan is not None and fast.manager.features is not None
    answered = plan.answered
    feeds = [demo.model.make_feed(batch, np.random.default_rng(batch)) for batch in (1, 3, 3, 8)]
    answers: list = [None] * len(feeds)

    def send(i: int) -> None:
        answers[i] = deeprec_call(client.channel, make_request(feeds[i]).SerializeToString())

    callers = [threading.Thread(target=send, args=(i,)) for i in range(len(feeds))]
    for t in callers:
        t.start()
    for t in callers:
        t.join(30)
    for feed, (code, answer) in zip(feeds, answers, strict=True):
        assert code == grpc.StatusCode.OK, answer
        np.testing.assert_allclose(output(answer, "probability"), demo.model.predict(feed),
                                   rtol=1e-5, atol=1e-6)
    assert plan.answered == answered + len(feeds)
    if "batching" in store:
        assert plan.merged[0] >= 1  # looked-up rows are merged with the inputs
    bad = dict(feeds[0])
    bad["sparse_ids"] = np.full_like(bad["sparse_ids"], demo.model.num_ids + 5)
    data = make_request(bad).SerializeToString()
    got = deeprec_call(client.channel, data)
    assert got[0] == grpc.StatusCode.INVALID_ARGUMENT and "embedding" in got[1], got
    assert got == deeprec_call(slow_client.channel, data)
    assert plan.answered == answered + len(feeds)


def test_the_session_is_reached_through_pybind11s_conduit_and_nothing_else():
    """The conduit gives the TF_Session only to the right ABI and only for a TF_Session handle."""
    from tensorflow.python.client import pywrap_tf_session

    from deeprec_runtime.native import fast_predict, tf_handles

    ffi, lib = fast_predict._load()
    session = tf.compat.v1.Session(graph=tf.Graph())
    try:
        pointer = tf_handles.session_pointer(session, ffi, lib)
        assert pointer and lib.drf_session_ok(ffi.cast("void *", pointer))
        assert tf_handles.session_pointer(session, ffi, lib) == pointer  # the same object
        with pytest.raises(tf_handles.SessionHandleError, match="pybind11 ABI _gcc"):
            tf_handles.session_pointer(session, ffi, lib, abi=b"_gcc_libstdcpp_cxxabi1017")
        # another pybind11 type of TensorFlow's, asked for as a TF_Session: refused by its type
        buffer = pywrap_tf_session.TF_NewBuffer()
        try:
            with pytest.raises(tf_handles.SessionHandleError, match="TF_Buffer"):
                tf_handles.session_pointer(SimpleNamespace(_session=buffer), ffi, lib)
        finally:
            pywrap_tf_session.TF_DeleteBuffer(buffer)
        with pytest.raises(tf_handles.SessionHandleError, match="no _pybind11_conduit_v1_"):
            tf_handles.session_pointer(SimpleNamespace(_session=object()), ffi, lib)
    finally:
        session.close()
    fast_predict.check_session_handle()  # what `deeprec-runtime native-path` checks


def test_a_tensorflow_whose_handle_refuses_the_conduit_is_reported_and_served_by_python(
        demo, serve, monkeypatch, caplog):
    from deeprec_runtime.native import tf_handles

    monkeypatch.setattr(tf_handles, "TENSORFLOW_PYBIND11_ABI", b"_gcc_libstdcpp_cxxabi1017")
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    assert runtime.fast_predict is not None and plan_of(runtime) is None
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("the fast path cannot reach the session" in m and "_gcc_libstdcpp" in m
               for m in errors), errors
    feed = demo.model.make_feed(3, np.random.default_rng(0))
    np.testing.assert_allclose(output(client.predict(feed), "probability"),  # Python answers
                               demo.model.predict(feed), rtol=1e-5, atol=1e-6)


# --- TF Serving's Predict ---------------------------------------------------------------------
TFS_PREDICT = "/tensorflow.serving.PredictionService/Predict"


def tfs_request(feed, model="default", raw=False, **spec) -> tfs_predict_pb2.PredictRequest:
    request = tfs_predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    for key, value in feed.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value) if raw else _packed(value))
    return request


def _packed(value: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with the values in their repeated field (make_tensor_proto uses
    tensor_content), as most TF Serving clients other than Python's send them."""
    proto = tf.make_tensor_proto(value)
    field = {np.float32: "float_val", np.float64: "double_val", np.int32: "int_val",
             np.int64: "int64_val"}.get(value.dtype.type)
    if field is not None:  # (strings are in string_val already)
        proto.ClearField("tensor_content")
        getattr(proto, field).extend(value.reshape(-1).tolist())
    return proto


def tfs_call(channel, data: bytes):
    """(status, parsed response or error details) of one TF Serving Predict sent as bytes."""
    try:
        return grpc.StatusCode.OK, tfs_predict_pb2.PredictResponse.FromString(
            channel.unary_unary(TFS_PREDICT)(data, timeout=10))
    except grpc.RpcError as exc:
        return exc.code(), exc.details()


@pytest.mark.parametrize("raw", [False, True], ids=["packed", "tensor_content"])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_tf_serving_predict_is_answered_in_cpp_as_python_answers_it(demo, pair, batch, raw):
    fast, fast_client, slow, slow_client = pair
    plan = plan_of(fast)
    before = plan.tfs_answered
    rng = np.random.default_rng(batch)
    for _ in range(3):
        data = tfs_request(demo.model.make_feed(batch, rng), raw=raw).SerializeToString()
        code, answer = tfs_call(fast_client.channel, data)
        assert code == grpc.StatusCode.OK, answer
        assert answer == tfs_call(slow_client.channel, data)[1]
        assert answer.model_spec.name == "default" and answer.model_spec.version.value > 0
        assert bool(answer.outputs["probability"].tensor_content) == raw
    assert plan.tfs_answered - before == 3
    # the official client stub gets the same
    stub = prediction_service_pb2_grpc.PredictionServiceStub(fast_client.channel)
    feed = demo.model.make_feed(batch, rng)
    response = stub.Predict(tfs_request(feed, model=""), timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probability"]),
                               demo.model.predict(feed), rtol=1e-5, atol=1e-6)
    assert plan.tfs_answered - before == 4


def test_tf_serving_requests_the_plan_declines_get_the_python_answer(demo, pair):
    fast, fast_client, slow, slow_client = pair
    plan = plan_of(fast)
    feed = demo.model.make_feed(4, np.random.default_rng(8))
    version = tfs_call(slow_client.channel,
                       tfs_request(feed).SerializeToString())[1].model_spec.version.value
    with fast.manager.hold() as handle:
        label = handle.version
    cases = {
        "unknown_version": tfs_request(feed, version=version + 1),
        "version_label": tfs_request(feed, version_label="stable"),
        "other_model": tfs_request(feed, model="other"),
        "other_signature": tfs_request(feed, signature_name="nope"),
        "string_input": tfs_request({**feed, "dense": np.array([b"x"] * 4)}),
        "wrong_dtype": tfs_request({**feed, "dense": feed["dense"].astype(np.float64)}),
    }
    short = tfs_request(feed)  # TensorFlow's rule: the last value fills the shape
    del short.inputs["dense"].float_val[1:]
    cases["last_value_fills"] = short
    filtered = tfs_request(feed)
    filtered.output_filter.append("nope")
    cases["output_filter_unknown"] = filtered
    unknown_rank = tfs_request(feed)
    unknown_rank.inputs["dense"].tensor_shape.unknown_rank = True
    cases["unknown_rank"] = unknown_rank
    named = tfs_request(feed)
    named.inputs["dense"].tensor_shape.dim[0].name = "batch"
    cases["dim_name"] = named
    data = {name: r.SerializeToString() for name, r in cases.items()}
    data["garbage"] = b"\xff\xff\xff"
    # version and version_label are a oneof: on the wire both may come, and the last wins.
    both = tfs_request(feed)
    both.ClearField("model_spec")
    data["version_and_label"] = bytes_field(1, bytes_field(1, b"default") + bytes_field(
        2, varint_field(1, version)) + bytes_field(4, label.encode())) + both.SerializeToString()
    for name, payload in data.items():
        before = plan.tfs_answered
        got = tfs_call(fast_client.channel, payload)
        assert got == tfs_call(slow_client.channel, payload), name
        assert plan.tfs_answered == before, f"{name} was answered by the fast path"
    assert tfs_call(fast_client.channel, data["version_and_label"])[0] == grpc.StatusCode.OK
    assert tfs_call(fast_client.channel, data["other_model"])[0] == grpc.StatusCode.NOT_FOUND


def test_tf_serving_calls_pinning_the_served_version_are_answered_in_cpp(demo, pair):
    """A model_spec pinning the serving version, by number or by label, is answered by its plan
    as Python answers it; pinning another version is left to Python."""
    fast, fast_client, slow, slow_client = pair
    plan = plan_of(fast)
    feed = demo.model.make_feed(4, np.random.default_rng(9))
    with fast.manager.hold() as handle:
        label, number = handle.version, handle.servable.full_step
    for pin in ({"version": number}, {"version_label": label}, {"version_label": ""}):
        data = tfs_request(feed, **pin).SerializeToString()
        before = plan.tfs_answered
        code, answer = tfs_call(fast_client.channel, data)
        assert code == grpc.StatusCode.OK, (pin, answer)
        assert answer == tfs_call(slow_client.channel, data)[1], pin
        assert answer.model_spec.version.value == number
        assert plan.tfs_answered == before + 1, pin
    for pin in ({"version": number + 1}, {"version_label": "checkpoint_9"}):
        data = tfs_request(feed, **pin).SerializeToString()
        before = plan.tfs_answered
        got = tfs_call(fast_client.channel, data)
        assert got[0] == grpc.StatusCode.NOT_FOUND and got == tfs_call(slow_client.channel, data)
        assert plan.tfs_answered == before, pin


def test_random_tf_serving_mutations_get_the_same_answer_with_and_without_the_fast_path(demo, pair):
    fast, fast_client, slow, slow_client = pair
    rng = random.Random(11)
    seeds = [tfs_request(demo.model.make_feed(batch, np.random.default_rng(batch)),
                         raw=raw).SerializeToString() for batch in (1, 3) for raw in (False, True)]
    before = plan_of(fast).tfs_answered
    for i in range(300):
        data = _mutated(rng, seeds)
        assert tfs_call(fast_client.channel, data) == tfs_call(slow_client.channel, data), (
            i, data.hex())
    assert plan_of(fast).tfs_answered > before


def test_a_plan_whose_tf_serving_check_fails_leaves_tf_serving_calls_to_python(
        demo, serve, monkeypatch):
    from deeprec_runtime.native.plan import DEEPREC, TFS, FastPlan

    real = FastPlan.predict
    monkeypatch.setattr(FastPlan, "predict",
                        lambda self, data, api=DEEPREC, lane=-1, how=0:
                        None if api == TFS else real(self, data, api, lane, how))
    fast, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    plan = plan_of(fast)
    assert plan is not None  # DeepRec calls keep their plan
    feed = demo.model.make_feed(3, np.random.default_rng(4))
    before, tfs_before = plan.answered, plan.tfs_answered
    code, answer = tfs_call(client.channel, tfs_request(feed).SerializeToString())
    assert code == grpc.StatusCode.OK  # answered by the Python adapter
    np.testing.assert_allclose(tf.make_ndarray(answer.outputs["probability"]),
                               demo.model.predict(feed), rtol=1e-5, atol=1e-6)
    client.predict(feed)
    assert plan.tfs_answered == tfs_before and plan.answered == before + 1


def test_every_model_of_a_runtime_has_its_own_plans(demo, serve):
    """TF Serving's Predict goes to the plan of the model it names (the default model's when it
    names none), REST calls to their model's plan, DeepRec's Predict to the default model's; an
    unknown model is Python's NOT_FOUND. Answers and metrics are per model."""
    fast, client = serve(demo.saved_model_dir, demo.checkpoint_dir, http_port=0,
                         models=("first", "second"), retain_previous_version=False)
    slow, slow_client = serve(demo.saved_model_dir, demo.checkpoint_dir, fast_predict=False,
                              models=("first", "second"))
    plans = {}
    for name in ("first", "second"):
        with fast.models.get(name).manager.hold() as handle:
            plans[name] = handle.servable.fast_plan
        assert plans[name] is not None, name
    assert plans["first"] is not plans["second"]
    feed = demo.model.make_feed(6, np.random.default_rng(5))

    def counts():
        return {name: (p.answered, p.tfs_answered, p.offered) for name, p in plans.items()}

    for model, answered_by in (("second", "second"), ("first", "first"), ("", "first")):
        before = counts()
        data = tfs_request(feed, model=model).SerializeToString()
        code, answer = tfs_call(client.channel, data)
        assert code == grpc.StatusCode.OK, answer
        assert answer == tfs_call(slow_client.channel, data)[1], model
        assert answer.model_spec.name == (model or "first")
        after = counts()
        assert after[answered_by][1] == before[answered_by][1] + 1, model
        other = "first" if answered_by == "second" else "second"
        assert after[other] == before[other], model
    before = counts()
    assert tfs_call(client.channel, tfs_request(feed, model="third").SerializeToString())[0] == (
        grpc.StatusCode.NOT_FOUND)
    client.predict(feed)  # DeepRec's Predict names no model: the default one
    body = {"inputs": {k: v.tolist() for k, v in feed.items()}}
    assert http("POST", f"http://127.0.0.1:{fast.http_port}/v1/models/second:predict",
                body)[0] == 200
    after = counts()
    assert after["first"] == (before["first"][0] + 1, *before["first"][1:])
    assert after["second"] == (*before["second"][:2], before["second"][2] + 1)
    text = fast.metrics.exposition().decode()
    version = client.info().version
    assert (f'deeprec_requests_total{{api="tfs_grpc",code="OK",model="second",'
            f'version="{version}"}} 1.0') in text

    # A new version of each model: its plan replaces the old one under the model's name, and the
    # old one, closed with its version, is answered by nobody.
    demo.write_full("checkpoint_2", steps=2)
    for name in ("first", "second"):
        manager = fast.models.get(name).manager
        wait_for(lambda m=manager: m.info().version == "checkpoint_2", message=f"{name} swapped")
        wait_for(lambda p=plans[name]: p.closed, message=f"{name}'s old plan closed")
    with fast.models.get("second").manager.hold() as handle:
        new = handle.servable.fast_plan
        number = handle.servable.full_step
    assert new is not None and new is not plans["second"]
    answered = new.tfs_answered  # its check request
    data = tfs_request(feed, model="second").SerializeToString()
    code, answer = tfs_call(client.channel, data)
    assert code == grpc.StatusCode.OK, answer
    assert answer.model_spec.version.value == number and new.tfs_answered == answered + 1
    np.testing.assert_allclose(tf.make_ndarray(answer.outputs["probability"]),
                               demo.model.predict(feed), rtol=1e-5, atol=1e-6)


def test_tf_serving_calls_answered_in_cpp_are_in_the_metrics(demo, serve):
    fast, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    version = client.info().version
    for batch in (1, 16):
        tfs_call(client.channel, tfs_request(demo.model.make_feed(
            batch, np.random.default_rng(batch))).SerializeToString())
    text = fast.metrics.exposition().decode()
    labels = f'api="tfs_grpc",code="OK",model="default",version="{version}"'
    assert f"deeprec_requests_total{{{labels}}} 2.0" in text
    assert 'deeprec_requests_in_flight{api="tfs_grpc"} 0.0' in text


# --- wire-level mutants on a model with two unknown dimensions ---------------------------------
@pytest.fixture
def sequence_pair(tmp_path, serve):
    """sequence_model's model served with the fast path and without it."""
    path = str(tmp_path / "sequence")
    write_sequence_model(path)
    fast, fast_client = serve(path)
    slow, slow_client = serve(path, fast_predict=False)
    assert plan_of(fast) is not None and slow.fast_predict is None
    return fast, fast_client, slow, slow_client


def _wire_mutants(api: str) -> dict[str, tuple[bytes, bool | None]]:
    """name -> (request bytes, whether it is valid: True, False, or None where the two formats'
    rules differ). Built around one valid request of 2 rows of 3."""
    values = sequence_feed(2, 3, seed=5)
    base = valid_arrays(api, values)
    history = values["history"]
    content = history.tobytes()

    def with_(prefix: bytes = b"", **arrays: bytes) -> bytes:
        return request(api, {**base, **arrays}, prefix)

    def history_with(**kw) -> bytes:
        return with_(history=array(api, **kw))

    others = request(api, {k: v for k, v in base.items() if k != "history"})
    no_dtype = array(api, history)[len(varint_field(1, DT_INT64)):]

    cases: dict[str, tuple[bytes, bool | None]] = {"valid": (with_(), True)}
    # Overflowing shapes: the product of the dims wraps (to 0: the reproducer of issue 17).
    for dims in ([1 << 40, 1 << 40], [1 << 32, 1 << 32], [1 << 62, 4], [3, 1 << 62],
                 [(1 << 63) - 1, 2], [-1, -1], [-2, -4]):
        cases[f"history dims {dims}, empty tensor_content"] = (
            history_with(dtype=DT_INT64, dims=dims, content=b""), False)
        cases[f"history dims {dims}, empty values"] = (
            history_with(dtype=DT_INT64, dims=dims, values=b""), False)
    cases["history dims wrap to 8, tensor_content of 8 values"] = (
        history_with(dtype=DT_INT64, dims=[(1 << 61) + 1, 8], content=bytes(64)), False)
    cases["bias (unknown rank) dims [2^31, 2^31, 4], empty tensor_content"] = (
        with_(bias=array(api, dtype=DT_FLOAT, dims=[1 << 31, 1 << 31, 4], content=b"")), False)
    cases["bias (unknown rank) dims [2^40, 2^40], empty values"] = (
        with_(bias=array(api, dtype=DT_FLOAT, dims=[1 << 40, 1 << 40], values=b"")), False)
    # Ranks: 64 is numpy's (the Python path's) limit and still answered; past it, absurd ones.
    bias = values["bias"]
    for rank in (64, 65, 100, 254, 255, 300):
        cases[f"bias rank {rank}"] = (
            with_(bias=array(api, bias, dims=[2] + [1] * (rank - 1))), rank <= 64)
    cases["history rank 100"] = (history_with(value=history, dims=[2, 3] + [1] * 98), False)
    # Value bytes off by a few.
    for delta in (-8, -3, -1, 1, 3, 8):
        cut = content[:delta] if delta < 0 else content + bytes(delta)
        cases[f"history tensor_content {delta:+d} bytes"] = (
            history_with(dtype=DT_INT64, dims=[2, 3], content=cut), False)
    weights = values_payload(values["weights"])
    for delta in (-4, -1, 1, 4):
        cut = weights[:delta] if delta < 0 else weights + bytes(delta)
        # TF Serving's rule (the last value fills the shape) makes one value short valid there.
        valid = None if delta == -4 else False
        cases[f"weights values {delta:+d} bytes"] = (
            with_(weights=array(api, dtype=DT_FLOAT, dims=[2, 3], values=cut)), valid)
    field = CONTENT_FIELD[api]
    shape = shape_field(api, [2, 3])
    for delta in (-3, 3):  # a length prefix that does not match the bytes that follow
        claimed = varint_field(1, DT_INT64) + shape + tag(field, 2) + varint(len(content) + delta)
        cases[f"tensor_content length prefix {delta:+d}"] = (
            with_(history=claimed + content), False)
    # Overlong varints: protobuf reads values of up to 10 bytes, tags and lengths of up to 5.
    padded_dims = b"".join(varint(d, 10) for d in (2, 3))
    cases["dims as 10-byte varints"] = (history_with(value=history, dim_bytes=(
        padded_dims if api == DEEPREC else
        b"".join(bytes_field(2, tag(1, 0) + varint(d, 10)) for d in (2, 3)))), True)
    cases["a dim as an 11-byte varint"] = (history_with(value=history, dim_bytes=(
        varint(2, 11) + varint(3) if api == DEEPREC else
        bytes_field(2, tag(1, 0) + varint(2, 11)) + bytes_field(2, varint_field(1, 3)))), False)
    cases["a value as a 10-byte varint"] = (history_with(value=history, values=(
        varint(int(history.flat[0]), 10) + packed_varints(history.reshape(-1)[1:]))), True)
    cases["a value as an 11-byte varint"] = (history_with(value=history, values=(
        varint(int(history.flat[0]), 11) + packed_varints(history.reshape(-1)[1:]))), False)
    cases["dtype as a 10-byte varint"] = (
        with_(history=tag(1, 0) + varint(DT_INT64, 10) + no_dtype), True)
    entry_body = bytes_field(1, b"history") + bytes_field(2, base["history"])
    for length in (5, 6, 10, 11):
        cases[f"an entry's length as a {length}-byte varint"] = (
            others + tag(2, 2) + varint(len(entry_body), length) + entry_body, length <= 5)
        cases[f"an entry's tag as a {length}-byte varint"] = (
            others + varint(2 << 3 | 2, length) + varint(len(entry_body)) + entry_body, length <= 5)
    # Fields of the wrong wire type: protobuf keeps them as unknown fields (so the field itself
    # is missing), the fast path leaves the call to Python. Unpacked values are valid protobuf.
    cases["dtype as bytes"] = (with_(history=bytes_field(1, b"\x09") + no_dtype), False)
    cases["shape as a varint"] = (with_(history=varint_field(1, DT_INT64) + varint_field(2, 2) + bytes_field(
        VALUE_FIELD[DT_INT64][api == TFS], values_payload(history))), False)
    cases["an extra inputs entry as a varint"] = (with_() + varint_field(2, 7), True)
    cases["tensor_content as fixed64"] = (
        history_with(dtype=DT_INT64, dims=[2, 3], extra=tag(field, 1) + content[:8]), False)
    cases["int64 values unpacked"] = (history_with(dtype=DT_INT64, dims=[2, 3], extra=b"".join(
        varint_field(VALUE_FIELD[DT_INT64][api == TFS], int(v)) for v in history.reshape(-1))), True)
    cases["float values unpacked (fixed32)"] = (with_(weights=array(
        api, dtype=DT_FLOAT, dims=[2, 3], extra=b"".join(
            tag(VALUE_FIELD[DT_FLOAT][api == TFS], 5) + np.float32(v).tobytes()
            for v in values["weights"].reshape(-1)))), True)
    # Duplicated map entries (protobuf keeps the last) and duplicated fields inside one.
    other = sequence_feed(2, 3, seed=6)["history"]
    cases["history twice, same value"] = (with_() + entry("history", base["history"]), True)
    cases["history twice, the last differs"] = (with_() + entry("history", array(api, other)), True)
    cases["history twice, the last invalid"] = (
        with_() + entry("history", array(api, dtype=DT_INT64, dims=[1 << 40, 1 << 40], content=b"")),
        False)
    cases["history twice, the first invalid"] = (with_(history=array(
        api, dtype=DT_INT64, dims=[1 << 40, 1 << 40], content=b"")) + entry("history", base["history"]),
        True)
    cases["a key twice in one entry"] = (with_() + bytes_field(2, bytes_field(1, b"weights") + bytes_field(
        1, b"history") + bytes_field(2, base["history"])), True)
    cases["shape twice in one array"] = (history_with(value=history, extra=shape_field(api, [1])), False)
    return cases


@pytest.mark.parametrize("api", [DEEPREC, TFS])
def test_wire_mutants_on_two_unknown_dims_get_the_python_answer(sequence_pair, api):
    """Overflowing shapes, absurd ranks, lengths off by a few bytes, overlong varints, wrong wire
    types and duplicated map entries: the fast path answers exactly as Python or leaves the call to
    it, and the server answers every one."""
    fast, fast_client, slow, slow_client = sequence_pair
    call = deeprec_call if api == DEEPREC else tfs_call
    plan = plan_of(fast)
    answered = (lambda: plan.answered) if api == DEEPREC else (lambda: plan.tfs_answered)
    for name, (data, valid) in _wire_mutants(api).items():
        before = answered()
        got = call(fast_client.channel, data)
        assert got == call(slow_client.channel, data), name
        if valid is not None:
            assert (got[0] == grpc.StatusCode.OK) == valid, (name, got)
        if not valid:
            assert answered() == before, f"{name} was answered by the fast path"
    before = answered()  # still serving, and still from C++
    assert call(fast_client.channel, _wire_mutants(api)["valid"][0])[0] == grpc.StatusCode.OK
    assert answered() == before + 1


# --- output_filter ----------------------------------------------------------------------------
#: Filters on sequence_model's outputs `rows` (rows:0) and `score` (score:0): aliases, tensor
#: names, several, both orders, an output under both of its names.
FILTERS = [["score"], ["rows"], ["score:0"], ["rows:0"], ["rows", "score"], ["score", "rows"],
           ["score", "score:0"], ["rows:0", "score"], ["score:0", "rows:0", "rows"]]


def filtered(api: str, values: dict[str, np.ndarray], names: list[str]) -> bytes:
    """A valid request for sequence_model with `names` as its output_filter (field 3)."""
    return request(api, valid_arrays(api, values)) + b"".join(
        bytes_field(3, n.encode()) for n in names)


@pytest.mark.parametrize("api", [DEEPREC, TFS])
def test_output_filters_are_answered_in_cpp_as_python_answers_them(sequence_pair, api):
    fast, fast_client, slow, slow_client = sequence_pair
    call = deeprec_call if api == DEEPREC else tfs_call
    plan = plan_of(fast)
    answered = (lambda: plan.answered) if api == DEEPREC else (lambda: plan.tfs_answered)
    values = sequence_feed(3, 4, seed=1)
    for names in FILTERS:
        data = filtered(api, values, names)
        before = answered()
        got = call(fast_client.channel, data)
        assert got == call(slow_client.channel, data), names
        assert got[0] == grpc.StatusCode.OK and sorted(got[1].outputs) == sorted(names), got
        assert answered() == before + 1, f"{names} was not answered by the fast path"
        if api == DEEPREC and len(names) == 1:  # one entry: the same bytes
            assert raw_call(fast_client.channel, data) == raw_call(slow_client.channel, data)
    # ["score"] and ["rows"] each got a callable of their own (their tensor names share it);
    # both outputs together are what the lane's own callable fetches
    assert plan.subset_callables(0) == 2
    # and a filtered answer holds what the unfiltered one holds for those outputs
    whole = call(fast_client.channel, request(api, valid_arrays(api, values)))[1]
    assert got[1].outputs["rows"] == whole.outputs["rows"]


@pytest.mark.parametrize("api", [DEEPREC, TFS])
def test_output_filters_the_plan_declines_get_the_python_answer(sequence_pair, api):
    fast, fast_client, slow, slow_client = sequence_pair
    call = deeprec_call if api == DEEPREC else tfs_call
    plan = plan_of(fast)
    answered = (lambda: plan.answered) if api == DEEPREC else (lambda: plan.tfs_answered)
    values = sequence_feed(2, 3, seed=2)
    cases = {"unknown": ["nope"], "unknown after a known one": ["score", "nope"],
             "empty name": [""], "an input's name": ["history"], "twice": ["rows", "rows"],
             "tensor name twice": ["score:0", "rows", "score:0"], "wrong case": ["Score"],
             "many": ["score", "rows", "score:0", "rows:0", "score"]}
    for name, names in cases.items():
        data = filtered(api, values, names)
        before = answered()
        got = call(fast_client.channel, data)
        assert got == call(slow_client.channel, data), name
        assert got[0] == grpc.StatusCode.INVALID_ARGUMENT, (name, got)
        assert answered() == before, f"{name} was answered by the fast path"
    assert "unknown output 'nope' in output_filter" in call(
        fast_client.channel, filtered(api, values, ["score", "nope"]))[1]
    assert "output 'rows' is named twice" in call(
        fast_client.channel, filtered(api, values, ["rows", "rows"]))[1]


def write_many_outputs_model(path: str, outputs: int) -> None:
    """x float [-1, 2] -> out<i> = sum(x) * i, for i < `outputs`."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        total = tf.reduce_sum(x, axis=1)
        named = {f"out{i}": tf.identity(total * float(i), name=f"out{i}") for i in range(outputs)}
        session = tf.compat.v1.Session(graph=graph)
        builder = tf.compat.v1.saved_model.Builder(path)
        signature = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def(
            {"x": x}, named)
        builder.add_meta_graph_and_variables(session, ["serve"],
                                             signature_def_map={"serving_default": signature})
        builder.save()
        session.close()


def test_callables_for_output_subsets_are_bounded_per_lane(tmp_path, serve):
    """Each new subset of outputs is a callable (an executor); past the bound (fast_predict.cc's
    kMaxSubsetCallables) the request is Python's, answered the same; subsets made before keep
    being answered in C++."""
    path = str(tmp_path / "many")
    write_many_outputs_model(path, 6)
    fast, fast_client = serve(path)
    _, slow_client = serve(path, fast_predict=False)
    plan = plan_of(fast)
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    subsets = [[f"out{i}"] for i in range(6)] + [
        [f"out{i}", f"out{j}"] for i in range(6) for j in range(i + 1, 6)]  # 21 subsets
    bound = 16
    for k, names in enumerate(subsets):
        data = make_request({"x": x}, output_filter=names).SerializeToString()
        before = plan.answered
        got = deeprec_call(fast_client.channel, data)
        assert got == deeprec_call(slow_client.channel, data), names
        np.testing.assert_allclose(output(got[1], names[0]), x.sum(axis=1) * int(names[0][3:]))
        assert plan.answered == before + (1 if k < bound else 0), (k, names)
    assert plan.subset_callables(0) == bound
    before = plan.answered
    deeprec_call(fast_client.channel, make_request({"x": x}, output_filter=["out3"])
                 .SerializeToString())
    assert plan.answered == before + 1
