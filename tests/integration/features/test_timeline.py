"""Timelines of chosen requests are written as Chrome trace JSON."""

from __future__ import annotations

import json

import numpy as np

from tests.support.runtime import output


def test_timelines_are_written_at_the_configured_steps(demo, serve, tmp_path):
    path = tmp_path / "timelines"
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, timeline_start_step=2,
                            timeline_interval_step=3, timeline_trace_count=2,
                            timeline_path=str(path))
    feed = demo.model.make_feed(4, np.random.default_rng(0))
    for _ in range(10):
        np.testing.assert_allclose(output(client.predict(feed), "probability"),
                                   demo.model.predict(feed), rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in path.iterdir()) == ["timeline-2.json", "timeline-5.json"]
    trace = json.loads((path / "timeline-2.json").read_text())
    events = trace["traceEvents"]
    ops = {e.get("args", {}).get("op") for e in events if e.get("ph") == "X"}
    # oneDNN may fuse the layers' MatMul (_FusedMatMul / _MklMatMul): match the family.
    assert any("MatMul" in o for o in ops if o), sorted(o for o in ops if o)
    assert "Sigmoid" in ops
    assert all("ts" in e for e in events if e.get("ph") == "X")


def test_timelines_trace_runs_fed_from_a_feature_store(demo, serve, tmp_path):
    path = tmp_path / "timelines"
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, ev_storage_type=1,
                            timeline_start_step=1, timeline_interval_step=1,
                            timeline_trace_count=1, timeline_path=str(path))
    feed = demo.model.make_feed(4, np.random.default_rng(0))
    np.testing.assert_allclose(output(client.predict(feed), "probability"),
                               demo.model.predict(feed), rtol=1e-5, atol=1e-6)
    trace = json.loads((path / "timeline-1.json").read_text())
    args = [e.get("args", {}) for e in trace["traceEvents"] if e.get("ph") == "X"]
    assert any("MatMul" in a.get("op", "") for a in args)
    assert not any("Gather" in a.get("op", "") for a in args)  # the gather is fed, not run
