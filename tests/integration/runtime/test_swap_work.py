"""What loading a new full version does while the serving version answers requests, and what it
leaves out: versions of one SavedModel share its imported graph (each keeps its own session and
parameters), the restore and warmup run on a thread of lower CPU priority, a new version is
warmed in the mode it will serve in, and the callables that apply deltas are prepared only when a
delta comes."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from deeprec_runtime import cpus
from deeprec_runtime.config import parse_model_config
from deeprec_runtime.model.load_thread import LOAD_NICE
from deeprec_runtime.model.servable import session_options_from
from deeprec_runtime.model.tf_loader import graph_fingerprint, load_servable
from tests.support.runtime import make_request, output, wait_for


def serving(runtime):
    with runtime.manager.hold() as handle:
        servable = handle.servable
    return servable


def test_versions_of_one_savedmodel_share_the_graph_not_the_parameters(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    first = serving(runtime)
    feed = demo.model.make_feed(5, np.random.default_rng(11))
    before = demo.model.predict(feed)
    demo.write_full("checkpoint_2", steps=3)
    wait_for(lambda: runtime.manager.info().version == "checkpoint_2", message="checkpoint_2")
    second = serving(runtime)
    after = demo.model.predict(feed)
    assert not np.allclose(before, after, rtol=1e-4, atol=1e-5)  # training moved the parameters

    assert second is not first
    assert second.imported is first.imported and second.graph is first.graph
    assert second.session is not first.session
    np.testing.assert_allclose(output(client.predict(feed), "probability"), after,
                               rtol=1e-5, atol=1e-6)
    # The retained previous version still answers with its own parameters.
    old = runtime.dataplane.predict(make_request(feed), version=first.name)
    np.testing.assert_allclose(output(old, "probability"), before, rtol=1e-5, atol=1e-6)


def test_a_new_version_is_warmed_in_the_mode_it_serves(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    first = serving(runtime)
    demo.write_full("checkpoint_2", steps=1)
    wait_for(lambda: runtime.manager.info().version == "checkpoint_2", message="checkpoint_2")
    second = serving(runtime)
    assert second.inline == first.inline
    prepared = dict(second._callables)
    assert {key[1] for key in prepared} == {second.inline}
    client.predict(demo.model.make_feed(2, np.random.default_rng(1)))
    # the request found its callable ready: preparing one on the request path takes ~20 ms
    # and holds back every other request that needs one
    assert second._callables == prepared


def test_a_changed_savedmodel_is_imported_again(demo):
    config = parse_model_config({"savedmodel_dir": demo.saved_model_dir, "warmup_iterations": 0})
    options = session_options_from(config)
    first = load_servable(demo.saved_model_dir, None, lambda p: p, options)
    try:
        assert first.imported.fingerprint == graph_fingerprint(demo.saved_model_dir) != ""
        same = load_servable(demo.saved_model_dir, None, lambda p: p, options, None, first.imported)
        stale = dataclasses.replace(first.imported, fingerprint="another saved_model.pb")
        other = load_servable(demo.saved_model_dir, None, lambda p: p, options, None, stale)
        try:
            assert same.graph is first.graph
            assert other.graph is not first.graph
            assert other.imported.fingerprint == first.imported.fingerprint
        finally:
            same.close()
            other.close()
    finally:
        first.close()


def test_delta_callables_are_prepared_when_a_delta_comes(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    demo.write_full("checkpoint_2", steps=1)
    wait_for(lambda: runtime.manager.info().version == "checkpoint_2", message="checkpoint_2")
    servable = serving(runtime)
    updaters = servable._updaters
    assert not any(u._prepared for u in updaters.values())  # a swap made none
    demo.write_delta()
    wait_for(lambda: servable.delta_step > 0, message="the delta applied")
    prepared = {name: set(u._prepared) for name, u in updaters.items() if u._prepared}
    assert prepared, "applying the delta prepared its callables"
    tables = {name for name, u in updaters.items() if u.is_table}
    assert any("scatter" in kinds for name, kinds in prepared.items() if name in tables)
    feed = demo.model.make_feed(4, np.random.default_rng(9))
    np.testing.assert_allclose(output(client.predict(feed), "probability"), demo.model.predict(feed),
                               rtol=1e-5, atol=1e-6)


def nice_and_cpu(tid: int) -> tuple[int, int]:
    """(nice value, CPU ticks) of one of this process's threads, from /proc."""
    with open(f"/proc/self/task/{tid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[16]), int(fields[11]) + int(fields[12])


def test_loads_run_at_a_lower_priority_and_requests_do_not(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    load_thread = runtime.manager.load_thread
    assert load_thread.native_id is not None, "the first version's restore ran on the load thread"
    assert nice_and_cpu(load_thread.native_id)[0] == LOAD_NICE
    before = set(cpus.threads())
    demo.write_full("checkpoint_2", steps=1)
    wait_for(lambda: runtime.manager.info().version == "checkpoint_2", message="checkpoint_2")
    new_threads = {tid: name for tid, name in cpus.threads().items() if tid not in before}
    # The new version's session threads (inter-op pools that lanes may serve on) were started by
    # the update thread at normal priority, not by the niced load thread.
    assert any(name.startswith("tf_Compute") for name in new_threads.values()), new_threads
    # Everything the load started, the update thread and the request threads (gRPC workers) run
    # at normal priority; only the load thread is niced.
    normal = set(new_threads) | {runtime.manager._thread.native_id}
    normal |= {tid for tid, name in cpus.threads().items() if name == "grpc-worker"}
    assert runtime.grpc_server != "native" or len(normal) > len(new_threads) + 1
    niced = {tid: nice_and_cpu(tid)[0] for tid in normal if os.path.exists(f"/proc/self/task/{tid}")}
    assert set(niced.values()) == {0}, niced
    feed = demo.model.make_feed(3, np.random.default_rng(2))
    np.testing.assert_allclose(output(client.predict(feed), "probability"), demo.model.predict(feed),
                               rtol=1e-5, atol=1e-6)
