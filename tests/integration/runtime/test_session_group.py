"""Session group: the plan as a table, real lanes bound to their CPUs (read back from /proc),
lane selection policies, shared parameters, and the GPU layout as pure functions."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from deeprec_runtime import cpus
from deeprec_runtime.config import parse_model_config
from deeprec_runtime.core.handle import ServableHandle
from deeprec_runtime.errors import ConfigError
from deeprec_runtime.model.session_group import (
    INLINE,
    SessionGroup,
    gpu_lane_devices,
    parse_gpu_ids,
    place_graph,
    plan_group,
)
from deeprec_runtime.predict import predict
from deeprec_runtime.training.demo_models import build_wide_deep
from tests.support.cpus import cpu_ticks, two_cpus
from tests.support.runtime import make_request, output, wait_for


def cfg(**fields):
    return parse_model_config({"savedmodel_dir": "/m", **fields})





# --- the plan, as a table ---------------------------------------------------------------------
@pytest.mark.parametrize("fields, pools, lane_pools, lane_cpus, intra, update_pool", [
    ({}, (0,), (0,), (None,), 0, 0),
    ({"intra_op_parallelism_threads": 3}, (0,), (0,), (None,), 3, 0),
    ({"session_num": 2, "cpusets": "0;1"}, (1, 1), (0, 1), ({0}, {1}), 1, 0),
    ({"session_num": 2, "cpusets": "0,1;2,3"}, (2, 2), (0, 1), ({0, 1}, {2, 3}), 1, 0),
    ({"session_num": 2}, (2, 2), (0, 1), ({0, 1}, {2, 3}), 1, 0),  # empty: even split of 0-3
    ({"session_num": 2, "inter_op_parallelism_threads": 4}, (2, 2), (0, 1), ({0, 1}, {2, 3}), 1, 0),
    ({"session_num": 2, "inter_op_parallelism_threads": 4, "use_per_session_threads": True},
     (4, 4), (0, 1), ({0, 1}, {2, 3}), 1, 0),
    ({"session_num": 2, "intra_op_parallelism_threads": 2}, (2, 2), (0, 1), ({0, 1}, {2, 3}), 2, 0),
    ({"session_num": 2, "model_update_inter_threads": 3}, (2, 2, 3), (0, 1), ({0, 1}, {2, 3}), 1, 2),
    ({"session_num": 2, "enable_inline_execute": True}, (0,), (INLINE, INLINE), ({0, 1}, {2, 3}), 1, 0),
    ({"cpusets": "1-2"}, (0,), (0,), ({1, 2},), 1, 0),
])
def test_plan_table(fields, pools, lane_pools, lane_cpus, intra, update_pool):
    plan = plan_group(cfg(**fields), allowed=range(4))
    assert plan.pool_threads == pools
    assert tuple(lane.pool for lane in plan.lanes) == lane_pools
    assert tuple(None if lane.cpus is None else set(lane.cpus) for lane in plan.lanes) == lane_cpus
    assert plan.intra_threads == intra
    assert plan.update_pool == update_pool
    proto = plan.config_proto()
    assert [p.num_threads for p in proto.session_inter_op_thread_pool] == list(pools)
    assert proto.intra_op_parallelism_threads == intra
    assert plan.lane_run_options(plan.lanes[-1]).inter_op_thread_pool == lane_pools[-1]
    assert plan.update_run_options().inter_op_thread_pool == update_pool
    # A full checkpoint is restored inline (in the low-priority loading thread) unless
    # model_update_inter_threads gives updates a pool of their own.
    restore_pool = update_pool if fields.get("model_update_inter_threads") else INLINE
    assert plan.restore_run_options().inter_op_thread_pool == restore_pool


def test_update_intra_threads_and_policy_reach_the_plan():
    plan = plan_group(cfg(session_num=2, select_session_policy="RR", model_update_intra_threads=3),
                      allowed=range(2))
    assert plan.select_policy == "RR" and plan.update_workers == 3


def test_bad_cpusets_fail_at_start_naming_the_field():
    with pytest.raises(ConfigError) as err:
        plan_group(cfg(session_num=2, cpusets="0;7"), allowed=range(2))
    assert err.value.field == "cpusets" and "7" in str(err.value)
    with pytest.raises(ConfigError) as err:
        plan_group(cfg(session_num=3, cpusets="0;1"), allowed=range(2))
    assert err.value.field == "cpusets"


# --- GPU layout: pure functions ---------------------------------------------------------------
def test_gpu_lanes_are_gpus_times_session_num():
    plan = plan_group(cfg(gpu_ids_list="0,2", session_num=2), allowed=range(8), visible_gpus=4)
    assert [lane.device for lane in plan.lanes] == ["/device:GPU:0", "/device:GPU:0",
                                                     "/device:GPU:1", "/device:GPU:1"]
    proto = plan.config_proto()
    assert proto.gpu_options.visible_device_list == "0,2"
    assert proto.gpu_options.allow_growth
    assert not proto.gpu_options.experimental.virtual_devices
    assert [set(lane.cpus) for lane in plan.lanes] == [{0, 1}, {2, 3}, {4, 5}, {6, 7}]


def test_multi_stream_gives_each_lane_its_own_virtual_gpu():
    assert gpu_lane_devices([0, 2], 2, multi_stream=True) == (
        "/device:GPU:0", "/device:GPU:1", "/device:GPU:2", "/device:GPU:3")
    plan = plan_group(cfg(gpu_ids_list="1", session_num=3, use_multi_stream=True),
                      allowed=range(3), visible_gpus=2)
    virtual = plan.config_proto().gpu_options.experimental.virtual_devices
    assert len(virtual) == 1 and len(virtual[0].memory_limit_mb) == 3
    assert [lane.device for lane in plan.lanes] == ["/device:GPU:0", "/device:GPU:1", "/device:GPU:2"]


@pytest.mark.parametrize("text, visible, words", [
    ("0,4", 2, ["[4]", "sees 2 GPU"]),
    ("0", 0, ["sees 0 GPU"]),
    ("0,x", 4, ["'x'"]),
    ("1,1", 4, ["twice"]),
])
def test_bad_gpu_ids_name_the_field(text, visible, words):
    with pytest.raises(ConfigError) as err:
        parse_gpu_ids(text, visible)
    assert err.value.field == "gpu_ids_list"
    for w in words:
        assert w in str(err.value)


def test_gpu_ids_on_a_machine_without_gpus_fail_at_start_up():
    with pytest.raises(ConfigError) as err:
        plan_group(cfg(gpu_ids_list="0"), allowed=range(2))  # tensorflow-cpu sees no GPU
    assert err.value.field == "gpu_ids_list"


@pytest.mark.parametrize("optimize", [True, False])
def test_device_placement_puts_embeddings_on_cpu_and_the_mlp_on_the_lane_gpu(optimize):
    model = build_wide_deep(num_ids=100, hidden=(8,))
    try:
        placed = place_graph(model.graph, "/device:GPU:1", embeddings_on_cpu=optimize)
        table = "/device:CPU:0" if optimize else "/device:GPU:1"
        for name in ("embedding", "wide_embedding"):
            assert placed[name] == table
        gathers = [op.name for op in model.graph.get_operations()
                   if op.type in ("GatherV2", "ResourceGather") and not op.name.startswith("gradients/")]
        assert gathers and all(placed[g] == table for g in gathers)
        matmuls = [op for op in model.graph.get_operations() if op.type == "MatMul"]
        assert matmuls and all(op.device == "/device:GPU:1" for op in matmuls)
        assert model.graph.get_operation_by_name("mlp/layer_0/kernel").device == "/device:GPU:1"
    finally:
        model.close()


# --- real lanes -------------------------------------------------------------------------------



def run_on_lane(servable, lane: int, request, n: int) -> None:
    with SessionGroup.using(lane):
        for _ in range(n):
            with ServableHandle.of(servable):
                predict(servable, request, "serving_default")


def test_each_lane_runs_only_on_its_cpuset(demo, serve):
    a, b = two_cpus()
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, session_num=2,
                            cpusets=f"{a};{b}")
    with runtime.manager.hold() as handle:
        servable = handle.servable
    group = servable.group
    assert len(group.lanes) == 2
    for lane, cpu in zip(group.lanes, (a, b), strict=True):
        assert lane.threads, "no pool thread found for the lane"
        for tid in lane.threads:
            assert cpus.thread_cpus(tid) == {cpu}
    request = make_request(demo.model.make_feed(64, np.random.default_rng(0)))
    for busy, cpu in ((0, a), (1, b)):
        time.sleep(0.3)  # a pool thread finishes its bookkeeping after the run returns
        before = {t: cpu_ticks(t)[0] for lane in group.lanes for t in lane.threads}
        run_on_lane(servable, busy, request, 150)
        after = {t: cpu_ticks(t) for lane in group.lanes for t in lane.threads}
        ran = [t for t in after if after[t][0] > before[t]]
        assert ran, "no lane thread accumulated CPU time"
        assert set(ran) <= set(group.lanes[busy].threads), "the other lane's threads ran"
        for t in ran:
            assert cpus.thread_cpus(t) == {cpu}
            assert after[t][1] == cpu
    # and the answers are right, whichever lane serves them
    feed = demo.model.make_feed(5, np.random.default_rng(1))
    np.testing.assert_allclose(output(client.predict(feed), "probability"),
                               demo.model.predict(feed), rtol=1e-5, atol=1e-6)


def test_inline_lanes_pin_the_calling_thread(demo, serve):
    a, b = two_cpus()
    runtime, _ = serve(demo.saved_model_dir, demo.checkpoint_dir, session_num=2,
                       cpusets=f"{a};{b}", enable_inline_execute=True)
    with runtime.manager.hold() as handle:
        servable = handle.servable
    request = make_request(demo.model.make_feed(4, np.random.default_rng(0)))
    seen = {}

    def caller(lane):
        run_on_lane(servable, lane, request, 3)
        seen[lane] = cpus.thread_cpus(threading.get_native_id())

    for lane in (0, 1):
        t = threading.Thread(target=caller, args=(lane,))
        t.start()
        t.join()
    assert seen == {0: {a}, 1: {b}}


def test_mod_is_sticky_per_thread_and_rr_cycles():
    group = SessionGroup(session=None, plan=SimpleNamespace(select_policy="MOD"),
                         lanes=[SimpleNamespace(index=i) for i in range(3)])
    picks = {}

    def pick(k):
        picks[k] = [group.select().index for _ in range(5)]

    threads = [threading.Thread(target=pick, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
        t.join()  # one at a time: sticky ids are handed out in this order
    assert all(len(set(p)) == 1 for p in picks.values())
    assert sorted(p[0] for p in picks.values()) == [0, 0, 1, 1, 2, 2]
    group.plan = SimpleNamespace(select_policy="RR")
    assert [group.select().index for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_parameters_are_shared_by_all_lanes(demo, serve):
    """One set of variables: a delta applied once is seen by every lane."""
    runtime, _ = serve(demo.saved_model_dir, demo.checkpoint_dir, session_num=2,
                       select_session_policy="RR", model_update_inter_threads=1,
                       model_update_intra_threads=2)
    with runtime.manager.hold() as handle:
        servable = handle.servable
    assert servable.num_lanes == 2
    step = servable.delta_step
    demo.write_delta(steps=3)
    wait_for(lambda: servable.delta_step > step, timeout=30, message="delta applied in place")
    feed = demo.model.make_feed(16, np.random.default_rng(3))
    expected = demo.model.predict(feed)
    request = make_request(feed)
    for lane in (0, 1):
        with SessionGroup.using(lane):
            got = output(predict(servable, request, "serving_default"), "probability")
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_runtime_refuses_cpusets_outside_its_cpus(demo, serve):
    with pytest.raises(ConfigError) as err:
        serve(demo.saved_model_dir, demo.checkpoint_dir, session_num=2, cpusets="0;4096")
    assert err.value.field == "cpusets"


def test_thread_env_exports_omp_and_kmp_and_per_session_intra_pools():
    from deeprec_runtime.threadenv import export_thread_env

    env = {"OMP_NUM_THREADS": "99"}
    values = export_thread_env(cfg(omp_num_threads=3, kmp_blocktime=7), environ=env, modules={})
    assert env == values == {"OMP_NUM_THREADS": "3", "KMP_BLOCKTIME": "7",
                             "TF_OVERRIDE_GLOBAL_THREADPOOL": "1"}
    assert os.environ["TF_OVERRIDE_GLOBAL_THREADPOOL"] == "1"  # set on import, before any session
