"""Where EV rows may live: DeepRec's DRAM storage (ev_storage_type 0 or 1) is the in-process
store, within ev_storage_size; the DRAM + SSD tier (12) keeps them on SSD behind a key index.
(Redis: test_redis.py.)"""

from __future__ import annotations

import numpy as np

from tests.support.deeprec import state as S
from tests.support.deeprec.layout import make_ev_model
from tests.support.deeprec.serving import check, mixed_feed, train
from tests.support.runtime import plan_of, wait_for


def test_ev_storage_type_1_serves_evs_in_dram_from_the_cpp_plan(ev_model, serve):
    runtime, client = serve(ev_model.saved_model_dir, ev_model.checkpoint_dir, ev_storage_type=1,
                            ev_storage_size=[64 << 20])
    plan = plan_of(runtime)
    assert plan is not None
    before = plan.answered
    check(client, ev_model, S.make_feed(ev_model.state, 9, np.random.default_rng(2)))
    assert plan.answered == before + 1


def test_evs_larger_than_ev_storage_size_fail_the_load_naming_the_field(tmp_path, serve):
    model = make_ev_model(str(tmp_path / "m"))
    runtime, client = serve(model.saved_model_dir, model.checkpoint_dir, wait=False,
                            ev_storage_type=1, ev_storage_size=[4096])
    wait_for(lambda: "ev_storage_size[0] = 4096" in client.info().last_update_error,
             message="budget refusal")
    assert client.info().version == ""


def test_the_dram_ssd_tier_serves_evs_with_deeprecs_answers_and_grows_with_deltas(
        tmp_path, ev_model, serve):
    runtime, client = serve(ev_model.saved_model_dir, ev_model.checkpoint_dir, ev_storage_type=12,
                            ev_storage_path=str(tmp_path / "ssd"), ev_storage_size=[6000])
    plan = plan_of(runtime)  # rows come from the tier, looked up by the plan's lookup hook
    assert plan is not None
    answered = plan.answered
    for n, batch in enumerate((1, 9, 40)):
        check(client, ev_model, mixed_feed(ev_model, batch, n))
    assert plan.answered == answered + 3
    # More new keys than the room left at load: the SSD file grows, rows stay where they were.
    rng = np.random.default_rng(8)
    new_users = list(range(600000, 600000 + 150))
    state1, changed = train(ev_model.state, rng, {"user_emb": new_users}, {}, admit=2)
    ev_model.write_delta(state1, {k: sorted(v) for k, v in changed.items()}, 110)
    wait_for(lambda: client.info().delta_step == 110, message="delta applied")
    feed = mixed_feed(ev_model, 40, 7)
    feed["user_ids"][:19] = new_users[::8]
    check(client, ev_model, feed)
    with runtime.manager.hold() as handle:
        servable = handle.servable
        stats = servable.tables.rows.cache_stats()
        table = servable.tables.rows._tables["user_emb"]
    assert table.table.rows >= 40 + 150 and table.size == 40 + 150
    assert sum(misses for _, _, misses in stats.values()) > 0  # rows were read from SSD
