"""Embedding rows in DRAM (ev_storage_type 1) and DRAM + SSD (12) tiers."""

from __future__ import annotations

import numpy as np
import pytest

from deeprec_runtime.errors import VersionLoadError
from deeprec_runtime.features.graph import Lookup, Table
from deeprec_runtime.features.tiered import DramCache
from tests.support.runtime import output, wait_for

KEY = "probability"


def test_a_table_four_times_the_dram_budget_serves_exact_predictions(demo, serve, tmp_path):
    table_bytes = 2000 * 16 * 4 + 2000 * 4  # embedding + wide_embedding
    ssd = tmp_path / "ssd"
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, ev_storage_type=12,
                            ev_storage_path=str(ssd), ev_storage_size=[table_bytes // 4, 1 << 30])
    rng = np.random.default_rng(0)
    feeds = [demo.model.make_feed(64, rng) for _ in range(20)]
    for feed in feeds:
        np.testing.assert_allclose(output(client.predict(feed), KEY), demo.model.predict(feed),
                                   rtol=1e-5, atol=1e-6)
    with runtime.manager.hold() as handle:
        servable = handle.servable
        stats = servable.tables.rows.cache_stats()
        cached, hits, misses = stats["embedding"]
        assert 0 < cached < 2000 // 4 and hits > 0 and misses > 0, stats
        assert servable.tables.rows.dram_bytes() <= table_bytes // 4
        files = sorted(p.name for p in ssd.rglob("*.rows"))
        assert files == ["embedding.rows", "wide_embedding.rows"]

    demo.write_delta(steps=4)  # changes cached and uncached rows: both tiers must follow
    step = demo.step
    wait_for(lambda: client.info().delta_step == step, timeout=10, message="delta applied")
    for feed in feeds:
        np.testing.assert_allclose(output(client.predict(feed), KEY), demo.model.predict(feed),
                                   rtol=1e-5, atol=1e-6)
    runtime.stop(1.0)
    assert not list(ssd.rglob("*.rows"))  # unloading removes the version's files


def test_dram_only_serves_exact_predictions_and_refuses_a_table_over_budget(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, ev_storage_type=1)
    feed = demo.model.make_feed(16, np.random.default_rng(4))
    np.testing.assert_allclose(output(client.predict(feed), KEY), demo.model.predict(feed),
                               rtol=1e-5, atol=1e-6)
    small, _ = serve(demo.saved_model_dir, demo.checkpoint_dir, wait=False, ev_storage_type=1,
                     ev_storage_size=[1000])
    wait_for(lambda: "ev_storage_size[0]" in small.manager.last_error, timeout=20,
             message="budget error")


def _table(rows=100, dim=4):
    return Table("t", rows, (dim,), np.dtype(np.float32), (Lookup("ids:0", "out:0"),))


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_cache_keeps_hot_rows_and_evicts_cold_ones(policy):
    table = _table()
    backing = np.arange(400, dtype=np.float32).reshape(100, 4)
    cache = DramCache(table, budget_bytes=100 * 4 + 10 * (16 + 16), policy=policy)
    assert cache.capacity == 10

    def get(ids):
        ids = np.asarray(ids, np.int64)
        out = np.empty((ids.shape[0], 4), np.float32)
        miss = cache.get(ids, out)
        out[miss] = backing[ids[miss]]
        cache.admit(ids[miss], backing[ids[miss]])
        np.testing.assert_array_equal(out, backing[ids])
        return int(miss.sum())

    for _ in range(3):
        get([1, 2, 3])  # hot
    for cold in range(10, 60, 5):
        get(list(range(cold, cold + 5)))
        get([1, 2, 3])
    assert get([1, 2, 3]) == 0  # the hot rows survived a stream of cold ones
    cache.update(np.array([1, 50]), np.full((2, 4), -1, np.float32))
    backing[[1, 50]] = -1
    get([1, 50])
    assert cache.nbytes <= 100 * 4 + 10 * (16 + 16)


def test_a_budget_below_the_index_is_a_clear_error():
    with pytest.raises(VersionLoadError, match="ev_storage_size"):
        DramCache(_table(rows=1000), budget_bytes=100)
