"""DeepRec EmbeddingVariables served from a real Redis shared by replicas: rows stored by EV
key, ids Redis does not hold answered with DeepRec's defaults, deltas written once for all."""

from __future__ import annotations

import numpy as np

from tests.support.deeprec import state as S
from tests.support.deeprec.layout import OLD_NO_PERMISSION
from tests.support.deeprec.serving import check, mixed_feed, train
from tests.support.runtime import plan_of, wait_for


def _serve(serve, model, redis_server):
    return serve(model.saved_model_dir, model.checkpoint_dir, feature_store_type="redis",
                 redis_url=redis_server.url)


def test_two_replicas_serve_evs_from_redis_with_deeprecs_answers_and_deltas(
        ev_model, serve, redis_server):
    first, client = _serve(serve, ev_model, redis_server)
    second, other = _serve(serve, ev_model, redis_server)
    # Rows come from Redis, looked up per request by the plan's lookup hook (Python's store code).
    # (Both runtimes share this process's fast path library: the last published plan answers.)
    plans = [plan_of(first), plan_of(second)]
    assert None not in plans
    answered = sum(p.answered for p in plans)
    keys = redis_server.client().keys(b"*:r:*:user_emb:*")
    assert len(keys) == len(ev_model.state.evs["user_emb"].rows)  # stored by key, once
    for n, batch in enumerate((1, 6, 40)):
        feed = mixed_feed(ev_model, batch, n)
        check(client, ev_model, feed)
        check(other, ev_model, feed)
    assert sum(p.answered for p in plans) == answered + 6  # in C++, DeepRec's defaults included

    rng = np.random.default_rng(5)
    admitted = sorted(ev_model.state.evs["item_emb"].filtered)[0]
    state1, changed = train(ev_model.state, rng, {"user_emb": [88001], "item_emb": [99001]}, {},
                             admit=1)
    ev_model.write_delta(state1, {k: sorted(v) for k, v in changed.items()}, 110)
    for c in (client, other):
        wait_for(lambda c=c: c.info().delta_step == 110, message="delta applied")
    feed = mixed_feed(ev_model, 8, 9)
    feed["user_ids"][4] = 88001
    feed["item_ids"][5] = [99001, admitted, 3]
    check(client, ev_model, feed)
    check(other, ev_model, feed)
    stats = redis_server.client().hgetall(f"{first.manager.features.ns}:stats")
    assert sum(int(v) for k, v in stats.items() if k.startswith(b"delta:")) == 1  # written once


def test_an_older_release_from_redis_answers_by_its_rules(old_ev_model, serve, redis_server):
    runtime, client = _serve(serve, old_ev_model, redis_server)
    check(client, old_ev_model, mixed_feed(old_ev_model, 12, 3), S.OLD_RELEASE, OLD_NO_PERMISSION)
