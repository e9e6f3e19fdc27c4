"""What the DeepRec serving tests share: the answer check against the numpy model, a feed with
ids of every kind, and a training step's effect on the model's state."""

from __future__ import annotations

import numpy as np

from tests.support.deeprec import state as S
from tests.support.deeprec.layout import EVModel
from tests.support.runtime import output

#: The outputs of the test export's signature.
OUTPUTS = ("probability", "user_vec", "item_vec", "tag_vec", "ctx_vec")


def check(client, model: EVModel, feed: dict, release: str = S.NEW_RELEASE,
          no_permission: dict | None = None) -> None:
    response = client.predict(feed)
    expected = S.predict(model.state, feed, release, no_permission)
    for key in OUTPUTS:
        np.testing.assert_allclose(output(response, key), expected[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)


def mixed_feed(model: EVModel, batch: int, seed: int) -> dict:
    """Ids of every kind: stored, never seen, negative, and (items) filtered ones."""
    feed = S.make_feed(model.state, batch, np.random.default_rng(seed))
    st = model.state.evs
    item = sorted(st["item_emb"].rows)[:2] + [sorted(st["item_emb"].filtered)[0], 7777, -5, 4242]
    feed["item_ids"].reshape(-1)[:len(item)] = item[:feed["item_ids"].size]
    feed["user_ids"][0] = sorted(st["user_emb"].rows)[0]
    if batch > 2:
        feed["user_ids"][1:3] = [987654321, -3]
    return feed


def train(state: S.ModelState, rng, new_keys: dict[str, list[int]], change: dict[str, int],
           admit: int) -> tuple[S.ModelState, dict[str, set[int]]]:
    """A training step's effect: some rows change, some keys appear, filtered items get
    admitted, the dense layer moves. Returns the new state and the changed keys."""
    out = state.copy()
    changed: dict[str, set[int]] = {}
    for name, st in out.evs.items():
        dim = S.SPECS[name].dim
        keys = list(rng.choice(sorted(st.rows), change.get(name, 2), replace=False))
        keys += new_keys.get(name, [])
        if name == "item_emb":
            admitted = sorted(st.filtered)[:admit]
            for k in admitted:
                del st.filtered[k]
            keys += admitted
        for k in keys:
            st.rows[int(k)] = rng.normal(size=dim).astype(np.float32)
        changed[name] = {int(k) for k in keys}
    out.w = out.w + rng.normal(size=out.w.shape).astype(np.float32) * 0.1
    out.b = out.b + np.float32(0.5)
    return out, changed
