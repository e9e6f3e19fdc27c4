"""The in-process EV store in a real session: staging changes no answer, committing changes all
of a delta at once, and the values storage grows in steps without moving any row."""

from __future__ import annotations

import numpy as np
import pytest

from deeprec_runtime.config import parse_model_config
from deeprec_runtime.model.servable import session_options_from
from deeprec_runtime.model.source import VersionInfo
from deeprec_runtime.model.tf_loader import load_servable
from tests.support.deeprec import state as S
from tests.support.deeprec.layout import make_ev_model


@pytest.fixture
def loaded(tmp_path, lookup_ops):
    model = make_ev_model(str(tmp_path / "m"))
    cfg = parse_model_config(model.config())
    version = VersionInfo("ckpt", model.version_dir(), 100, model.fulls[-1])
    servable = load_servable(model.saved_model_dir, version, lambda p: p,
                             session_options_from(cfg))
    yield model, servable
    servable.close()


def _user_vec(servable, ids) -> np.ndarray:
    feed = {"user_ids:0": np.asarray(ids, np.int64), "item_ids:0": np.zeros((len(ids), 3), np.int64),
            "tag_ids:0": np.zeros(len(ids), np.int32), "ctx_ids:0": np.zeros(len(ids), np.int64),
            "dense:0": np.zeros((len(ids), 2), np.float32)}
    names = tuple(feed)
    return servable.run(names, ("user_vec:0",), [feed[n] for n in names])[0]


def test_staged_rows_change_no_answer_until_committed(loaded):
    model, servable = loaded
    table = servable.ev.tables["user_emb"]
    old = sorted(model.state.evs["user_emb"].rows)[:2]
    ids = old + [60001, 60002]
    before = _user_vec(servable, ids)
    rows = np.arange(16, dtype=np.float32).reshape(4, 4)
    staged = table.stage(np.array(ids, np.int64), rows)
    np.testing.assert_array_equal(_user_vec(servable, ids), before)
    assert table.count() == 40
    table.commit(staged)
    np.testing.assert_array_equal(_user_vec(servable, ids), rows)
    assert table.count() == table.size == 42


def test_storage_grows_by_a_quarter_and_keeps_every_row(loaded):
    model, servable = loaded
    table = servable.ev.tables["user_emb"]
    assert (table.size, table.capacity) == (40, 40 + 64)  # a full load leaves some room
    assert table.base == 5  # user_emb's default rows (default_value_dim 5) come first
    expected = {k: v for k, v in model.state.evs["user_emb"].rows.items()}
    rng = np.random.default_rng(0)
    capacities = []
    for step in range(12):
        keys = np.arange(100_000 + step * 7, 100_000 + step * 7 + 7, dtype=np.int64)
        rows = rng.normal(size=(7, 4)).astype(np.float32)
        table.commit(table.stage(keys, rows))
        expected.update({int(k): r for k, r in zip(keys, rows, strict=True)})
        capacities.append(table.capacity)
    assert table.size == 40 + 84
    # The room left at load takes 9 deltas; the 10th grows the storage by a quarter, once.
    assert capacities == [104] * 9 + [131] * 3
    keys = sorted(expected)
    np.testing.assert_array_equal(_user_vec(servable, keys), np.stack([expected[k] for k in keys]))


def test_restoring_reads_all_parts_and_checks_dimensions(tmp_path, loaded):
    model, servable = loaded
    item = servable.ev.tables["item_emb"]
    assert item.size == len(model.state.evs["item_emb"].rows)
    # An EV written with another dimension than the graph's is refused, naming it.
    from deeprec_runtime.deeprec import ckpt
    from deeprec_runtime.errors import VersionLoadError

    bad = model.state.copy()
    bad.evs["tag_emb"].rows = {k: np.ones(5, np.float32) for k in bad.evs["tag_emb"].rows}
    prefix = S.write_full(str(tmp_path / "bad" / "model.ckpt-1"), bad)
    with pytest.raises(VersionLoadError, match="EV 'tag_emb' has dimension 3"):
        ckpt.read_full(ckpt.CheckpointIndex(prefix), "tag_emb", 3)
    with pytest.raises(VersionLoadError, match="no EmbeddingVariable 'nope'"):
        ckpt.read_full(ckpt.CheckpointIndex(prefix), "nope", 3)
