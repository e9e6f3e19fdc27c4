"""Memory bounds and shutdown safety of the C++ fast path (runtime/deeprec_runtime/native/
fast_predict.cc): the cap on a request's decoded bytes, the cap on a merged batch's bytes
(padding included), and a plan's handle never used once freed.

Real TensorFlow throughout, on sequence_model's model (two unknown dimensions). Where a test needs
limits other than the server's, it makes a plan of the serving version with a FastPredict of its
own and calls it directly (FastPlan.predict is the call the front end makes); the last batching
test goes through gRPC with the server's defaults.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.app import Runtime
from deeprec_runtime.config import BatchingConfig, parse_model_config
from deeprec_runtime.errors import InvalidArgument
from deeprec_runtime.native.fast_predict import FastPredict
from deeprec_runtime.native.plan import TFS, FastPlan
from deeprec_runtime.predict import predict
from deeprec_runtime.server.grpc_server import MAX_MESSAGE_BYTES
from tests.support.runtime import output, plan_of, wait_for
from tests.support.runtime_server import value
from tests.support.sequence_model import (
    DEEPREC,
    array,
    feed,
    request,
    valid_arrays,
    values_payload,
    write_sequence_model,
)
from tests.support.sequence_model import TFS as TFS_FORMAT

PREDICT = "/deeprec.serving.PredictionService/Predict"
LONG_WAIT_US = 60_000_000  # the most allowed: batches close when a test says so, not on a timer


@pytest.fixture
def sequence_runtime(tmp_path, serve):
    """The model served without the fast path: the plans here are the tests' own."""
    path = str(tmp_path / "sequence")
    write_sequence_model(path)
    runtime, _ = serve(path, fast_predict=False)
    return runtime


@contextmanager
def own_plan(runtime, **options) -> Iterator[FastPlan]:
    """A checked plan of the serving version, made by a FastPredict with `options` (limits,
    batching), not published; closed afterwards."""
    fast = FastPredict("default", "serving_default", tfs=True, **options)
    with runtime.manager.hold() as handle:
        servable = handle.servable
        plan = fast.plan_for(servable)
        assert plan is not None
        try:
            yield plan
        finally:
            plan.close()
            servable.fast_plan = None


def rows_seen(answer: bytes | None) -> list[int]:
    """The model's `rows` output: how many rows the run that answered had."""
    assert answer is not None, "not answered by the plan"
    return output(pb.PredictResponse.FromString(answer), "rows").tolist()


def decoded_bytes(values: dict[str, np.ndarray]) -> int:
    return sum(v.nbytes for v in values.values())


# --- decoded bytes per request -----------------------------------------------------------------
def python_refusal(runtime, api: str, data: bytes, cap: int) -> str:
    """The Python path's INVALID_ARGUMENT message for `data` under a cap of `cap` decoded bytes."""
    from tensorflow_serving.apis import predict_pb2

    from deeprec_runtime.server import tfs_grpc

    if api == TFS_FORMAT:
        inner = tfs_grpc.inner_request(predict_pb2.PredictRequest.FromString(data), cap)
    else:
        inner = pb.PredictRequest.FromString(data)
    with runtime.manager.hold() as handle, pytest.raises(InvalidArgument) as err:
        predict(handle.servable, inner, "serving_default", max_decoded_bytes=cap)
    return str(err.value)


@pytest.mark.parametrize("api", [DEEPREC, TFS_FORMAT])
@pytest.mark.parametrize("over_by", ["history", "weights"])
def test_a_request_decoding_past_the_cap_is_refused_as_python_refuses_it(sequence_runtime, api,
                                                                          over_by):
    """Without decoding it: the message and code are the Python path's, naming the first input
    (in key order) whose bytes bring the total over the cap."""
    at_cap = feed(2, 40)
    cap = decoded_bytes(at_cap)
    over = {**at_cap, over_by: feed(2, 80 if over_by == "history" else 41)[over_by]}
    with own_plan(sequence_runtime, max_decoded_bytes=cap) as plan:
        code = TFS if api == TFS_FORMAT else 0
        assert plan.predict(request(api, valid_arrays(api, at_cap)), code) is not None
        # Small ids are two bytes on the wire and eight decoded: the cap counts what is decoded,
        # so a message well under it can still be over.
        data = request(api, valid_arrays(api, over))
        assert len(data) < cap < decoded_bytes(over)
        expected = python_refusal(sequence_runtime, api, data, cap)
        assert f"input '{over_by}'" in expected
        assert plan.call(data, code) == (grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                         expected.encode())
        # A call the data plane offered went through Python's budget: it goes back there.
        assert plan.call(data, code, counted=False) is None


@pytest.mark.parametrize("api", [DEEPREC, TFS_FORMAT])
def test_a_request_over_the_cap_that_python_refuses_otherwise_is_left_to_it(sequence_runtime,
                                                                             api):
    """Python parses the message and counts each input's values before it charges them: a
    request whose varints are malformed or fewer than its shape says (which TF Serving's fill
    rule may complete) is Python's to answer."""
    values = feed(2, 41)
    cap = decoded_bytes(values) - 1
    wrong_count = valid_arrays(api, {**values, "history": values["history"][:, :40]})
    wrong_count["history"] = array(api, values["history"][:, :40], dims=[2, 41])
    unterminated = valid_arrays(api, values)
    unterminated["history"] = array(api, values["history"],
                                    values=values_payload(values["history"]) + b"\x80")
    with own_plan(sequence_runtime, max_decoded_bytes=cap) as plan:
        code = TFS if api == TFS_FORMAT else 0
        assert plan.call(request(api, valid_arrays(api, values)), code)[0] == 3
        assert plan.call(request(api, wrong_count), code) is None
        assert plan.call(request(api, unterminated), code) is None


def test_the_caps_default_to_the_largest_message():
    fast = FastPredict("default", "serving_default")
    assert fast.max_decoded_bytes == fast.max_batch_bytes == MAX_MESSAGE_BYTES


# --- bytes per merged batch ----------------------------------------------------------------------
def batched(plan: FastPlan, requests: list[bytes]) -> list[bytes | None]:
    """Sends each request on a thread of its own, waits until all wait in the plan's open batch,
    then makes the batch run (a block closes open batches) and returns the answers."""
    answers: list[bytes | None] = [None] * len(requests)

    def send(i: int) -> None:
        answers[i] = plan.predict(requests[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    wait_for(lambda: plan.queued == len(requests), message="the requests waiting in one batch")
    plan.block()
    plan.unblock()
    for t in threads:
        t.join()
    return answers


def one_row_request(length: int, seed: int) -> tuple[bytes, int]:
    values = feed(1, length, seed)
    return request(DEEPREC, valid_arrays(DEEPREC, values)), decoded_bytes(values)


@pytest.mark.parametrize("cap_rows, padded", [(16, False), (None, True)],
                         ids=["padding-past-the-cap", "padding-within-the-cap"])
def test_padding_never_takes_a_batch_past_its_byte_cap(sequence_runtime, cap_rows, padded):
    """Two one-row requests, padded to 64 rows: with a cap of 16 rows' bytes they run one by
    one, unpadded; within the cap (the default) they run merged and padded."""
    first, row_bytes = one_row_request(100, seed=1)
    second, _ = one_row_request(100, seed=2)
    batching = BatchingConfig(max_batch_size=64, batch_timeout_micros=LONG_WAIT_US,
                              allowed_batch_sizes=(64,))
    limits = {"max_batch_bytes": cap_rows * row_bytes} if cap_rows else {}
    with own_plan(sequence_runtime, batching=batching, **limits) as plan:
        answers = batched(plan, [first, second])
        if padded:
            assert [rows_seen(a) for a in answers] == [[64], [64]]
            assert plan.merged == (1, 2)
        else:
            assert [rows_seen(a) for a in answers] == [[1], [1]]
            assert plan.merged == (0, 0)


def test_a_request_that_would_pass_the_byte_cap_does_not_join_the_open_batch(sequence_runtime):
    one, row_bytes = one_row_request(100, seed=1)
    other, _ = one_row_request(100, seed=2)
    values = feed(2, 100, seed=3)
    two_rows = request(DEEPREC, valid_arrays(DEEPREC, values))
    batching = BatchingConfig(max_batch_size=64, batch_timeout_micros=LONG_WAIT_US)
    with own_plan(sequence_runtime, batching=batching, max_batch_bytes=3 * row_bytes) as plan:
        answers: dict[str, bytes | None] = {}
        senders = {name: threading.Thread(target=lambda n=name, d=data: answers.__setitem__(
            n, plan.predict(d))) for name, data in (("one", one), ("other", other))}
        for t in senders.values():
            t.start()
        wait_for(lambda: plan.queued == 2, message="two one-row requests in one batch")
        # Two more rows would make four rows' bytes: the open batch runs as it is, and the
        # two-row request waits in a batch of its own.
        late = threading.Thread(target=lambda: answers.__setitem__("two", plan.predict(two_rows)))
        late.start()
        for t in senders.values():
            t.join()
        assert rows_seen(answers["one"]) == rows_seen(answers["other"]) == [2]
        assert plan.merged == (1, 2)
        wait_for(lambda: plan.queued == 1, message="the two-row request waiting alone")
        plan.block()
        plan.unblock()
        late.join()
        assert rows_seen(answers["two"]) == [2, 2]  # ran alone
        # A request over the cap on its own is not batched at all: answered at once, alone.
        big = request(DEEPREC, valid_arrays(DEEPREC, feed(4, 100, seed=4)))
        assert rows_seen(plan.predict(big)) == [4] * 4
        assert plan.merged == (1, 2)


def test_over_grpc_a_large_row_is_not_padded_past_the_message_size(tmp_path, serve):
    """The server's own plan and caps: one-row requests of 80 KiB with allowed_batch_sizes
    [1024] would be padded to 80 MiB, past the 64 MiB default; they run unpadded instead."""
    path = str(tmp_path / "sequence")
    write_sequence_model(path)
    runtime, client = serve(path, batching={"max_batch_size": 1024,
                                            "batch_timeout_micros": LONG_WAIT_US,
                                            "allowed_batch_sizes": [1024]})
    plan = plan_of(runtime)
    values = [feed(1, 6800, seed) for seed in (1, 2)]
    assert 1024 * decoded_bytes(values[0]) > MAX_MESSAGE_BYTES
    answers: list[Any] = [None, None]

    def send(i: int) -> None:
        data = request(DEEPREC, valid_arrays(DEEPREC, values[i]))
        answers[i] = client.channel.unary_unary(PREDICT)(data, timeout=120)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: plan.queued == 2, message="both requests in one batch")
    before = plan.answered
    plan.block()
    plan.unblock()
    for t in threads:
        t.join()
    assert [rows_seen(a) for a in answers] == [[1], [1]]
    assert plan.merged == (0, 0) and plan.answered == before + 2  # answered in C++, unpadded


# --- shutdown ----------------------------------------------------------------------------------
class FreedHandleGuard:
    """Stands in for the fast predict library: forwards each call and logs it ("enter:" and
    "exit:" the function), except a call on a plan handle already freed, which it logs as
    "after free:" instead of making (it would read freed memory). While `release` is clear, a
    drf_block that returned from C++ waits before returning to its caller."""

    def __init__(self, lib: Any, ffi: Any):
        self._lib, self._ffi = lib, ffi
        self.freed: set[int] = set()
        self.calls: list[str] = []
        self.release = threading.Event()
        self.release.set()

    @property
    def after_free(self) -> list[str]:
        return [c for c in self.calls if c.startswith("after free:")]

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._lib, name)
        if name in ("drf_plan_new", "drf_predict", "drf_predict_tfs"):  # no handle
            return fn

        def call(handle: Any, *args: Any) -> Any:
            key = int(self._ffi.cast("uintptr_t", handle))
            if key in self.freed:
                self.calls.append(f"after free:{name}")
                return None
            self.calls.append(f"enter:{name}")
            if name == "drf_free":
                self.freed.add(key)
            result = fn(handle, *args)
            if name == "drf_block":
                self.calls.append("returned from C++:drf_block")
                self.release.wait()
            self.calls.append(f"exit:{name}")
            return result

        return call


def guard_library(owner: FastPredict) -> FreedHandleGuard:
    guard = FreedHandleGuard(owner.lib, owner.ffi)
    owner.lib = guard
    return guard


def test_a_delta_ending_after_shutdown_closed_its_version_never_touches_the_freed_plan(
        tmp_path, serve):
    path = str(tmp_path / "sequence")
    write_sequence_model(path)
    runtime, client = serve(path)
    guard = guard_library(runtime.fast_predict)
    with runtime.manager.hold() as handle:
        servable = handle.servable
    plan = servable.fast_plan
    assert plan is not None
    servable.begin_update()  # a delta: the plan blocked, the version's gate held
    closer = threading.Thread(target=servable.close)  # shutdown closes the version meanwhile
    closer.start()
    wait_for(lambda: plan.closed, message="the plan closed and freed")
    servable.end_update()  # the delta ends: its unblock must not reach the freed plan
    closer.join()
    assert guard.freed and guard.after_free == []
    # Every call on a closed plan is a no-op.
    plan.block()
    plan.unblock()
    assert plan.predict(request(DEEPREC, valid_arrays(DEEPREC, feed(1, 3)))) is None
    assert plan.queued == 0 and plan.active() == 0 and plan.merged == (0, 0)
    assert guard.after_free == []


def waiting_in(thread: threading.Thread, function: str) -> bool:
    """Whether `thread` waits on a condition inside `function`."""
    frame = sys._current_frames().get(thread.ident or 0)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return function in names and "wait_for" in names


def test_a_plan_is_freed_only_after_a_block_in_progress_returns(sequence_runtime):
    """A block still on its way back from C++ when the plan is closed: close waits for it before
    freeing the handle."""
    batching = BatchingConfig(max_batch_size=64, batch_timeout_micros=LONG_WAIT_US)
    data = request(DEEPREC, valid_arrays(DEEPREC, feed(1, 3)))
    with own_plan(sequence_runtime, batching=batching) as plan:
        guard = guard_library(plan._owner)
        guard.release.clear()
        answer: list[bytes | None] = []
        sender = threading.Thread(target=lambda: answer.append(plan.predict(data)))
        sender.start()
        wait_for(lambda: plan.queued == 1, message="a request waiting for company")
        blocker = threading.Thread(target=plan.block)
        blocker.start()  # runs the waiting batch, then is held on its way back
        wait_for(lambda: "returned from C++:drf_block" in guard.calls, message="drf_block returned")
        closer = threading.Thread(target=plan.close)
        closer.start()
        wait_for(lambda: "enter:drf_free" in guard.calls or waiting_in(closer, "close"),
                 message="close freeing the plan or waiting")
        guard.release.set()
        for t in (sender, blocker, closer):
            t.join()
        assert plan.closed and guard.after_free == []
        assert guard.calls.index("exit:drf_block") < guard.calls.index("enter:drf_free")
        assert answer and rows_seen(answer[0]) == [1]


def test_the_servers_message_size_sets_the_plans_caps(tmp_path):
    """`--max-message-bytes` (Runtime's max_message_bytes) is also the fast path's cap on decoded
    bytes: a request under the message size that decodes past it (int64 values sent as varints of
    one or two bytes decode to 8 bytes each) is refused, by C++ as Python would refuse it."""
    path = str(tmp_path / "sequence")
    write_sequence_model(path)
    config = parse_model_config({"savedmodel_dir": path, "warmup_iterations": 1})
    runtime = Runtime(config, grpc_port=0, host="127.0.0.1", grpc_server="native",
                      annotations_file=str(tmp_path / "none"), max_message_bytes=128 << 10)
    runtime.start()
    try:
        assert runtime.manager.wait_ready(60), runtime.manager.last_error
        plan = plan_of(runtime)
        assert plan is not None
        answered = plan.answered
        with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
            call = channel.unary_unary(PREDICT)
            assert rows_seen(call(request(DEEPREC, valid_arrays(DEEPREC, feed(2, 64))),
                                  timeout=30)) == [2, 2]
            assert plan.answered == answered + 1
            big = request(DEEPREC, valid_arrays(DEEPREC, feed(2, 6000)))
            assert len(big) < 128 << 10  # ~72 KB on the wire, ~144 KB decoded
            with pytest.raises(grpc.RpcError) as err:
                call(big, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            assert plan.answered == answered + 1
        # Refused in C++ without decoding it, with the Python path's message, and counted.
        assert err.value.details() == python_refusal(runtime, DEEPREC, big, 128 << 10)
        families = {f.name: f.samples for f in text_string_to_metric_families(
            runtime.metrics.exposition().decode())}
        assert value(families, "deeprec_requests_total", api="deeprec_grpc",
                     code="INVALID_ARGUMENT") == 1
    finally:
        runtime.stop(1.0)
