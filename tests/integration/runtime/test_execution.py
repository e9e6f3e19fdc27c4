"""Inline vs pooled execution chosen at warmup: the rule, the measurement, and a real version
that answers the same either way."""

from __future__ import annotations

import time

import numpy as np
import pytest

from deeprec_runtime.model import execution
from deeprec_runtime.model.execution import Cost, decide, measure
from tests.support.runtime import output, wait_for


@pytest.mark.parametrize("pool, inline, chosen", [
    (Cost(cpu=143e-6, wall=150e-6), Cost(cpu=48e-6, wall=60e-6), True),   # the demo, batch 1
    (Cost(cpu=100e-6, wall=100e-6), Cost(cpu=100e-6, wall=125e-6), True),  # ties go inline
    (Cost(cpu=100e-6, wall=100e-6), Cost(cpu=101e-6, wall=50e-6), False),  # more CPU
    (Cost(cpu=400e-6, wall=100e-6), Cost(cpu=300e-6, wall=200e-6), False),  # pool runs branches
])                                                                          # side by side
def test_rule(pool, inline, chosen):
    assert decide(pool, inline) is chosen


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@pytest.mark.parametrize("pool_cost, inline_cost, chosen", [(0.002, 0.0005, True),
                                                            (0.0005, 0.002, False)])
def test_measure_keeps_the_cheaper_mode_set(monkeypatch, pool_cost, inline_cost, chosen):
    monkeypatch.setattr(execution, "ROUND_SECONDS", 0.01)
    state = {"inline": None}
    calls = {False: 0, True: 0}

    def set_inline(value):
        state["inline"] = value

    def run():
        calls[state["inline"]] += 1
        _burn(inline_cost if state["inline"] else pool_cost)

    choice = measure(set_inline, run)
    assert choice.inline is chosen
    assert state["inline"] is chosen
    assert calls[False] >= execution.ROUNDS * execution.MIN_RUNS
    assert calls[True] >= execution.ROUNDS * execution.MIN_RUNS
    assert choice.inline_cost.cpu == pytest.approx(inline_cost, rel=0.5)
    assert choice.pool.cpu == pytest.approx(pool_cost, rel=0.5)


def test_a_version_is_measured_and_answers_alike_in_both_modes(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    with runtime.manager.hold() as handle:
        servable = handle.servable
    assert servable.can_choose_inline
    chosen = servable.inline
    assert isinstance(chosen, bool)
    feed = demo.model.make_feed(7, np.random.default_rng(3))
    expected = demo.model.predict(feed)
    for mode in (not chosen, chosen):
        servable.inline = mode
        np.testing.assert_allclose(output(client.predict(feed), "probability"), expected,
                                   rtol=1e-5, atol=1e-6)
    # both modes left a prepared callable behind: the choice really ran each way
    modes = {key[1] for key in servable._callables}
    assert modes == {False, True}


def test_explicit_inline_and_bound_lanes_are_not_second_guessed(demo, serve):
    runtime, _ = serve(demo.saved_model_dir, demo.checkpoint_dir, enable_inline_execute=True)
    with runtime.manager.hold() as handle:
        servable = handle.servable
    assert not servable.can_choose_inline  # its lanes already run inline, always
    assert servable.inline is False
    assert {key[1] for key in servable._callables} == {False}


def test_a_new_full_version_of_the_same_graph_reuses_the_choice(demo, serve, monkeypatch):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    with runtime.manager.hold() as handle:
        first = handle.servable
    measured = []
    real_measure = execution.measure
    monkeypatch.setattr(execution, "measure", lambda *a: measured.append(1) or real_measure(*a))
    demo.write_full("checkpoint_2", steps=2)
    wait_for(lambda: runtime.manager.info().version == "checkpoint_2", message="checkpoint_2")
    with runtime.manager.hold() as handle:
        second = handle.servable
    assert second is not first and second.inline == first.inline
    assert measured == []  # same saved_model.pb: nothing measured while the first one served
    feed = demo.model.make_feed(3, np.random.default_rng(4))
    np.testing.assert_allclose(output(client.predict(feed), "probability"), demo.model.predict(feed),
                               rtol=1e-5, atol=1e-6)
