"""The C++ fast path on session groups (runtime/deeprec_runtime/native/fast_predict.cc).

A version whose group has several lanes, or lanes bound to cpusets, gets a plan: each call runs
on the lane `select_session_policy` picks (MOD: the calling thread's sticky id, handed out once
per thread in order, modulo the lanes; RR: a counter), through that lane's callables: on the
lane's inter-op pool and its pinned threads, inline in a caller already on one of the lane's
CPUs (held there for the run), or, for `enable_inline_execute` lanes, inline in a caller moved
onto the lane's cpuset. Which lane ran, and how, is read back from the plan's per-lane counters,
from the CPU time of each lane's pool threads (TensorFlow names pool i's threads tf_Compute<i>)
and from the callers' affinity; the answers are compared with the Python path's.
"""

from __future__ import annotations

import os
import threading
import time

import grpc
import numpy as np
import pytest

from deeprec_api import predict_pb2 as pb
from deeprec_runtime import cpus
from deeprec_runtime.core.handle import ServableHandle
from deeprec_runtime.native.plan import IN_PLACE, POOLED
from deeprec_runtime.predict import predict
from tests.support.cpus import cpu_ticks, two_cpus
from tests.support.runtime import make_request, output, plan_of
from tests.support.runtime_server import deeprec_call


def serving(runtime):
    with runtime.manager.hold() as handle:
        return handle.servable


def python_answer(servable, request: pb.PredictRequest) -> pb.PredictResponse:
    """The Python path's answer, from a thread of its own (inline lanes move their caller)."""

    def answer():
        with ServableHandle.of(servable):
            return predict(servable, request, "serving_default")

    return in_new_thread(answer)


def in_new_thread(fn):
    """fn() on a thread of its own (a new sticky id, an affinity nobody else shares)."""
    out = {}

    def run():
        out["result"] = fn()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out["result"]


def lane_runs(plan, lanes: int, in_place: bool = False) -> list[int]:
    return [plan.lane_runs(i, in_place) for i in range(lanes)]


def pool_cpu(servable) -> dict[int, int]:
    """Nanoseconds on CPU so far of every lane pool thread."""
    return {t: cpu_ticks(t)[0] for lane in servable.group.lanes for t in lane.threads}


def test_mod_gives_each_calling_thread_its_lane_by_sticky_id(demo, serve):
    a, b = two_cpus()
    runtime, _ = serve(demo.saved_model_dir, demo.checkpoint_dir, session_num=2,
                       cpusets=f"{a};{b}")
    servable = serving(runtime)
    plan = plan_of(runtime)
    assert plan is not None, "a group of two pinned lanes gets a plan"
    group = servable.group
    assert [lane.plan.pool for lane in group.lanes] == [0, 1] and not servable.inline
    request = make_request(demo.model.make_feed(64, np.random.default_rng(0)))
    expected = python_answer(servable, request)
    data = request.SerializeToString()
    ran = []
    for _ in range(2):  # two new threads, one after the other: consecutive sticky ids
        time.sleep(0.3)  # a pool thread finishes its bookkeeping after the run returns
        before, cpu_before = lane_runs(plan, 2), pool_cpu(servable)
        # on the lanes' pools, so that their threads show which lane ran
        answers = in_new_thread(lambda: [plan.predict(data, how=POOLED) for _ in range(40)])
        assert all(pb.PredictResponse.FromString(x) == expected for x in answers)
        delta = [after - b for after, b in zip(lane_runs(plan, 2), before, strict=True)]
        assert sorted(delta) == [0, 40], delta  # every call of the thread on one lane
        lane = delta.index(40)
        ran.append(lane)
        after = {t: cpu_ticks(t) for t in cpu_before}
        busy = [t for t in after if after[t][0] > cpu_before[t]]
        assert busy and set(busy) <= set(group.lanes[lane].threads), "the other lane's pool ran"
        for t in busy:  # and on the lane's CPU
            assert cpus.thread_cpus(t) == {(a, b)[lane]} and after[t][1] == (a, b)[lane]
    assert ran[1] == (ran[0] + 1) % 2


def test_rr_turns_lanes_call_by_call(demo, serve):
    a, b = two_cpus()
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, session_num=2,
                            cpusets=f"{a};{b}", select_session_policy="RR")
    servable = serving(runtime)
    plan = plan_of(runtime)
    assert plan is not None
    request = make_request(demo.model.make_feed(64, np.random.default_rng(1)))
    expected = python_answer(servable, request)
    data = request.SerializeToString()
    cpu_before = pool_cpu(servable)

    def calls():
        order = []
        for _ in range(40):
            before = lane_runs(plan, 2)
            assert pb.PredictResponse.FromString(plan.predict(data, how=POOLED)) == expected
            order.append([x - y for x, y in zip(lane_runs(plan, 2), before, strict=True)].index(1))
        return order

    order = in_new_thread(calls)
    assert order == [order[0], 1 - order[0]] * 20  # one thread, alternating lanes
    busy = {t for t, ns in cpu_before.items() if cpu_ticks(t)[0] > ns}
    for lane, cpu in zip(servable.group.lanes, (a, b), strict=True):
        assert busy & set(lane.threads), f"lane {lane.index}'s pool never ran"
        assert all(cpus.thread_cpus(t) == {cpu} for t in lane.threads)
    # over gRPC too: answered in C++, spread over both lanes
    before, answered = lane_runs(plan, 2), plan.answered
    for _ in range(10):
        client.raw_predict(data, timeout=10)
    assert plan.answered == answered + 10
    assert [x - y for x, y in zip(lane_runs(plan, 2), before, strict=True)] == [5, 5]


def test_a_bound_lane_runs_in_place_when_its_caller_is_on_its_cpus(demo, serve):
    """No hand-off to the lane's pool when the caller is on the lane's CPU already: it runs the
    lane's inline callable there, held on the lane's cpuset, and gets its own affinity back."""
    a, b = two_cpus()
    runtime, _ = serve(demo.saved_model_dir, demo.checkpoint_dir, session_num=2,
                       cpusets=f"{a};{b}", select_session_policy="RR")
    servable = serving(runtime)
    plan = plan_of(runtime)
    request = make_request(demo.model.make_feed(64, np.random.default_rng(4)))
    expected = python_answer(servable, request)
    data = request.SerializeToString()
    for cpu, here in ((a, 0), (b, 1)):
        time.sleep(0.3)  # a pool thread finishes its bookkeeping after the run returns
        runs, in_place, cpu_before = lane_runs(plan, 2), lane_runs(plan, 2, True), pool_cpu(servable)

        def calls(cpu=cpu):
            os.sched_setaffinity(0, {cpu})  # this thread only
            answers = [plan.predict(data) for _ in range(40)]
            return answers, os.sched_getaffinity(0)

        answers, affinity = in_new_thread(calls)
        assert all(pb.PredictResponse.FromString(x) == expected for x in answers)
        assert affinity == {cpu}  # given back
        assert [x - y for x, y in zip(lane_runs(plan, 2), runs, strict=True)] == [20, 20]
        ran_in_place = [x - y for x, y in zip(lane_runs(plan, 2, True), in_place, strict=True)]
        assert ran_in_place == [20 if i == here else 0 for i in range(2)], ran_in_place
        busy = {t for t, ns in cpu_before.items() if cpu_ticks(t)[0] > ns}
        other = servable.group.lanes[1 - here]
        assert busy and busy <= set(other.threads), "the caller's own lane used its pool"
    # forced in place from a thread on the other lane's CPU: held on the lane's CPU for the run
    before = lane_runs(plan, 2, True)

    def forced():
        os.sched_setaffinity(0, {b})
        answer = plan.predict(data, lane=0, how=IN_PLACE)
        return answer, os.sched_getaffinity(0)

    answer, affinity = in_new_thread(forced)
    assert pb.PredictResponse.FromString(answer) == expected and affinity == {b}
    assert lane_runs(plan, 2, True) == [before[0] + 1, before[1]]


def test_inline_lanes_move_the_caller_onto_their_cpuset(demo, serve):
    a, b = two_cpus()
    runtime, _ = serve(demo.saved_model_dir, demo.checkpoint_dir, session_num=2,
                       cpusets=f"{a};{b}", select_session_policy="RR", enable_inline_execute=True)
    servable = serving(runtime)
    plan = plan_of(runtime)
    assert plan is not None and all(lane.pins_caller for lane in servable.group.lanes)
    request = make_request(demo.model.make_feed(4, np.random.default_rng(2)))
    expected = python_answer(servable, request)
    data = request.SerializeToString()

    def calls():
        seen = []
        for _ in range(6):
            before = lane_runs(plan, 2)
            assert pb.PredictResponse.FromString(plan.predict(data)) == expected
            lane = [x - y for x, y in zip(lane_runs(plan, 2), before, strict=True)].index(1)
            seen.append((lane, os.sched_getaffinity(0)))  # this thread's own affinity
        return seen

    seen = in_new_thread(calls)
    assert [lane for lane, _ in seen] == [seen[0][0], 1 - seen[0][0]] * 3
    assert all(affinity == {(a, b)[lane]} for lane, affinity in seen), seen


def test_each_lane_batches_its_own_calls(demo, serve):
    a, b = two_cpus()
    runtime, _ = serve(demo.saved_model_dir, demo.checkpoint_dir, session_num=2,
                       cpusets=f"{a};{b}", select_session_policy="RR",
                       batching={"max_batch_size": 16, "batch_timeout_micros": 5000})
    servable = serving(runtime)
    plan = plan_of(runtime)
    assert plan is not None
    feeds = [demo.model.make_feed(2, np.random.default_rng(10 + i)) for i in range(8)]
    expected = [python_answer(servable, make_request(f)) for f in feeds]
    failures: list[str] = []

    def caller(i: int) -> None:
        data = make_request(feeds[i]).SerializeToString()
        for _ in range(10):
            answer = plan.predict(data)
            # A merged run's kernels see more rows: the same values within float rounding.
            if answer is None or not np.allclose(
                    output(pb.PredictResponse.FromString(answer), "probability"),
                    output(expected[i], "probability"), rtol=1e-5, atol=1e-6):
                failures.append(f"caller {i}")

    before = lane_runs(plan, 2)
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    runs, rows = plan.merged
    assert runs > 0 and rows > runs  # merged runs happened, several callers each
    assert all(x - y == 40 for x, y in zip(lane_runs(plan, 2), before, strict=True))


GROUPS = {
    "MOD, pooled lanes": {"session_num": 2},
    "RR, pooled lanes": {"session_num": 2, "select_session_policy": "RR"},
    "RR, inline lanes": {"session_num": 2, "select_session_policy": "RR",
                         "enable_inline_execute": True},
    "4 lanes, per-session threads": {"session_num": 4, "use_per_session_threads": True,
                                     "inter_op_parallelism_threads": 1},
}


@pytest.mark.parametrize("fields", list(GROUPS.values()), ids=list(GROUPS))
def test_session_groups_answer_in_cpp_as_python_answers(demo, serve, fields):
    """Differential, over gRPC: the same answers with and without the fast path, with and without
    output_filter, every one of them from C++."""
    fast, fast_client = serve(demo.saved_model_dir, demo.checkpoint_dir, **fields)
    _, slow_client = serve(demo.saved_model_dir, demo.checkpoint_dir, fast_predict=False, **fields)
    plan = plan_of(fast)
    assert plan is not None
    lanes = fields["session_num"]
    before, answered = sum(lane_runs(plan, lanes)), plan.answered
    rng = np.random.default_rng(lanes)
    sent = 0
    for batch in (1, 7, 64):
        for names in ((), ("probability",), ("probability:0",), ("probability", "probability:0")):
            data = make_request(demo.model.make_feed(batch, rng), output_filter=names)
            got = deeprec_call(fast_client.channel, data.SerializeToString())
            assert got[0] == grpc.StatusCode.OK
            assert got == deeprec_call(slow_client.channel, data.SerializeToString()), (batch, names)
            sent += 1
    assert plan.answered == answered + sent
    assert sum(lane_runs(plan, lanes)) == before + sent


def grpc_workers() -> dict[int, frozenset[int]]:
    """tid -> cpuset of each of this process's gRPC C++ worker threads."""
    return {tid: cpus.thread_cpus(tid) for tid, name in cpus.threads().items()
            if name == "grpc-worker"}


@pytest.mark.parametrize("fields", [{"session_num": 2, "select_session_policy": "RR"},
                                    {"session_num": 2, "select_session_policy": "MOD"},
                                    {"session_num": 4, "select_session_policy": "RR"}],
                         ids=["2 lanes RR", "2 lanes MOD", "4 lanes RR"])
def test_front_end_workers_serve_the_lanes_on_their_cpus(demo, serve, fields):
    """With lanes on cpusets, each gRPC worker serves one lane, pinned to its CPUs: calls run the
    lane's model inline in the worker (no lane pool runs), RR turns lanes call by call at the
    front end, and the answers are the Python path's."""
    a, b = two_cpus()
    lanes = fields["session_num"]
    before = set(grpc_workers())
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir,
                            cpusets=";".join(str((a, b)[i % 2]) for i in range(lanes)), **fields)
    workers = {t: c for t, c in grpc_workers().items() if t not in before}
    # as many workers on each lane's CPU, at least one per lane
    per_cpu = sorted(list(workers.values()).count(frozenset({cpu})) for cpu in (a, b))
    assert per_cpu[0] == per_cpu[1] >= lanes // 2 and sum(per_cpu) == len(workers)
    servable = serving(runtime)
    plan = plan_of(runtime)
    request = make_request(demo.model.make_feed(64, np.random.default_rng(5)))
    expected = python_answer(servable, request)
    data = request.SerializeToString()
    time.sleep(0.3)  # a pool thread finishes its bookkeeping after the run returns
    runs, in_place, cpu_before = lane_runs(plan, lanes), lane_runs(plan, lanes, True), pool_cpu(servable)
    calls = 3 * lanes
    for _ in range(calls):
        assert pb.PredictResponse.FromString(client.raw_predict(data, timeout=10)) == expected
    ran = [x - y for x, y in zip(lane_runs(plan, lanes), runs, strict=True)]
    assert sum(ran) == calls
    assert lane_runs(plan, lanes, True) == [x + y for x, y in zip(in_place, ran, strict=True)]
    assert all(cpu_ticks(t)[0] == ns for t, ns in cpu_before.items()), "a lane pool ran"
    if fields["select_session_policy"] == "RR":
        assert ran == [3] * lanes  # the front end's turn, call by call
