"""Embedding rows served from a real redis-server shared by two runtimes."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from deeprec_runtime.features import redis_store
from tests.support.runtime import ServeProcess, output, wait_for

KEY = "probability"


def _redis_fields(server):
    return {"feature_store_type": "redis", "redis_url": server.url, "read_thread_num": 2,
            "update_thread_num": 2}


def _stats(server, ns_prefix="deeprec:"):
    client = server.client()
    (key,) = [k for k in client.keys(ns_prefix + "*:stats")]
    return {k.decode(): int(v) for k, v in client.hgetall(key).items()}


def _predict(client, feed):
    return output(client.predict(feed), KEY)


def test_two_replicas_share_rows_and_a_delta_is_written_once(demo, serve, redis_server):
    (r1, c1) = serve(demo.saved_model_dir, demo.checkpoint_dir, **_redis_fields(redis_server))
    (r2, c2) = serve(demo.saved_model_dir, demo.checkpoint_dir, **_redis_fields(redis_server))
    feed = demo.model.make_feed(16, np.random.default_rng(1))
    for client in (c1, c2):
        np.testing.assert_allclose(_predict(client, feed), demo.model.predict(feed), rtol=1e-5, atol=1e-6)
    # The rows are not in the processes: the sessions never restored the tables.
    for runtime in (r1, r2):
        with runtime.manager.hold() as handle:
            servable = handle.servable
            assert set(servable.tables.tables) == {"embedding", "wide_embedding"}
            with pytest.raises(Exception, match="uninitialized|not initialized"):
                servable.session.run("embedding/Read/ReadVariableOp:0")
    stats = _stats(redis_server)
    assert stats["full:checkpoint_1@1"] == 1, stats  # imported by one replica only

    demo.write_delta(steps=3)
    step = demo.step
    for client in (c1, c2):
        wait_for(lambda c=client: c.info().delta_step == step, timeout=10, message="delta applied")
    for client in (c1, c2):
        np.testing.assert_allclose(_predict(client, feed), demo.model.predict(feed), rtol=1e-5, atol=1e-6)
    stats = _stats(redis_server)
    assert stats[f"delta:checkpoint_1@1:{step}"] == 1, stats


def test_two_runtime_processes_share_one_redis(demo, redis_server, tmp_path):
    """The same, with two `deeprec-runtime serve` processes: the import lock and the delta
    bookkeeping live in Redis, not in a process."""
    import json

    config = tmp_path / "model_config.json"
    config.write_text(json.dumps({
        "savedmodel_dir": demo.saved_model_dir, "checkpoint_dir": demo.checkpoint_dir,
        "signature_name": "serving_default", "model_store_type": "local",
        "update_poll_seconds": 0.2, "warmup_iterations": 1, **_redis_fields(redis_server)}))
    replicas = [ServeProcess(config).start() for _ in range(2)]
    try:
        feed = demo.model.make_feed(16, np.random.default_rng(2))
        for replica in replicas:
            replica.wait_serving()
            np.testing.assert_allclose(_predict(replica.client, feed), demo.model.predict(feed),
                                       rtol=1e-5, atol=1e-6)
        assert _stats(redis_server)["full:checkpoint_1@1"] == 1
        demo.write_delta(steps=3)
        step = demo.step
        for replica in replicas:
            wait_for(lambda r=replica: r.client.info().delta_step == step, message="delta applied")
            np.testing.assert_allclose(_predict(replica.client, feed), demo.model.predict(feed),
                                       rtol=1e-5, atol=1e-6)
        assert _stats(redis_server)[f"delta:checkpoint_1@1:{step}"] == 1
    finally:
        for replica in replicas:
            replica.stop()


def test_full_version_swap_never_serves_zeros_or_stale_rows(demo, serve, redis_server, monkeypatch):
    # Many small MSETs stretch the import so that requests overlap it.
    monkeypatch.setattr(redis_store, "WRITE_CHUNK_BYTES", 2048)
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, **_redis_fields(redis_server))
    feed = demo.model.make_feed(32, np.random.default_rng(2))
    before = demo.model.predict(feed)
    np.testing.assert_allclose(_predict(client, feed), before, rtol=1e-5, atol=1e-6)
    seen, failures, stop = [], [], threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                seen.append(_predict(client, feed))
            except grpc.RpcError as exc:
                failures.append(exc.details())

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        demo.write_full("checkpoint_2", steps=20)
        after = demo.model.predict(feed)
        wait_for(lambda: client.info().version == "checkpoint_2", timeout=20, message="checkpoint_2")
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert not np.allclose(before, after, atol=1e-4)
    kinds = set()
    for got in seen:
        if np.allclose(got, before, rtol=1e-5, atol=1e-6):
            kinds.add("before")
        elif np.allclose(got, after, rtol=1e-5, atol=1e-6):
            kinds.add("after")
        else:
            raise AssertionError(f"a response matched neither version: {got[:4].ravel()}")
    assert kinds == {"before", "after"}, (kinds, len(seen))
    # Double buffering: checkpoint_2 went to the other slot; checkpoint_1's slot is intact.
    r = redis_server.client()
    tags = {r.get(k) for k in r.keys(b"deeprec:*:tag:*")}
    assert tags == {b"checkpoint_1@1", f"checkpoint_2@{demo.step}".encode()}
    stats = _stats(redis_server)
    assert stats["full:checkpoint_1@1"] == 1 and stats[f"full:checkpoint_2@{demo.step}"] == 1


def test_redis_down_fails_fast_and_an_empty_restart_is_reimported(demo, serve, redis_server):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, **_redis_fields(redis_server))
    feed = demo.model.make_feed(8, np.random.default_rng(3))
    expected = demo.model.predict(feed)
    np.testing.assert_allclose(_predict(client, feed), expected, rtol=1e-5, atol=1e-6)

    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        client.predict(feed)
    assert time.monotonic() - started < 2.0
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Redis" in err.value.details()

    # A delta written while Redis is down is not lost: it is applied once Redis is back.
    demo.write_delta(steps=2)
    step = demo.step
    time.sleep(0.5)
    redis_server.start()  # empty: no persistence
    wait_for(lambda: _ok(client, feed), timeout=20, message="serving again after the restart")
    wait_for(lambda: client.info().delta_step == step, timeout=20, message="delta applied")
    np.testing.assert_allclose(_predict(client, feed), demo.model.predict(feed), rtol=1e-5, atol=1e-6)
    assert _stats(redis_server)["full:checkpoint_1@1"] == 1  # counted since the restart


def _ok(client, feed) -> bool:
    try:
        client.predict(feed)
        return True
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
        return False


def test_a_missing_row_is_an_error_never_zeros(demo, serve, redis_server):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, **_redis_fields(redis_server))
    feed = {"sparse_ids": np.full((1, 8), 7, np.int64), "dense": np.zeros((1, 13), np.float32)}
    _predict(client, feed)
    r = redis_server.client()
    (key,) = [k for k in r.keys(b"deeprec:*:r:*:embedding:*") if k.endswith((7).to_bytes(8, "big"))]
    r.delete(key)
    with pytest.raises(grpc.RpcError) as err:
        client.predict(feed)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "embedding row 7 of table 'embedding'" in err.value.details()
    bad = {"sparse_ids": np.full((1, 8), 5000, np.int64), "dense": np.zeros((1, 13), np.float32)}
    with pytest.raises(grpc.RpcError) as err:
        client.predict(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "[0, 2000)" in err.value.details()
