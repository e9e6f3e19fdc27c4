"""A model served from OSS (the local OSS server) picks up new full versions and deltas exactly as
a local one does, and rides out an outage of the store without a failed request."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.support.runtime import output, wait_for
from tests.support.stores.common import ACCESS_ID, ACCESS_KEY, BUCKET, Uploader
from tests.support.stores.oss_server import Fault


@pytest.fixture
def oss_model(demo, bucket):
    """The demo model mirrored to oss://models/demo/{saved_model,checkpoints}."""
    uploader = Uploader(bucket, demo.base_dir, "demo")
    uploader.sync()
    return demo, uploader


def oss_fields(server, tmp_path):
    return {"model_store_type": "oss", "oss_endpoint": server.endpoint, "oss_access_id": ACCESS_ID,
            "oss_access_key": ACCESS_KEY, "model_cache_dir": str(tmp_path / "cache")}


def rel(demo, path):
    return path[len(demo.base_dir):].strip("/")


def test_oss_model_serves_and_follows_new_full_versions_and_deltas(oss_model, oss_server, serve, tmp_path):
    demo, uploader = oss_model
    _, client = serve(f"oss://{BUCKET}/demo/{rel(demo, demo.saved_model_dir)}",
                            f"oss://{BUCKET}/demo/{rel(demo, demo.checkpoint_dir)}",
                            **oss_fields(oss_server, tmp_path))
    feed = demo.model.make_feed(8, np.random.default_rng(11))
    info = client.info()
    assert info.version == "checkpoint_1" and info.model_path.startswith("oss://")
    np.testing.assert_allclose(output(client.predict(feed), "probability"), demo.model.predict(feed),
                               rtol=1e-5, atol=1e-6)

    # A new delta: applied in place.
    prefix = demo.write_delta(steps=2)
    uploader.sync()
    step = int(prefix.rsplit("-", 1)[1])
    wait_for(lambda: client.info().delta_step == step, message="delta from OSS applied")
    np.testing.assert_allclose(output(client.predict(feed), "probability"), demo.model.predict(feed),
                               rtol=1e-5, atol=1e-6)

    # A new full version: loaded and swapped in. OSS times have 1 s resolution; a real trainer's
    # versions are minutes apart.
    time.sleep(1.1)
    demo.write_full("checkpoint_2", steps=3)
    uploader.sync()
    wait_for(lambda: client.info().version == "checkpoint_2", timeout=20, message="checkpoint_2 served")
    np.testing.assert_allclose(output(client.predict(feed), "probability"), demo.model.predict(feed),
                               rtol=1e-5, atol=1e-6)

    # The cache keeps the serving and the retained previous versions only.
    time.sleep(1.1)
    demo.write_full("checkpoint_3", steps=1)
    uploader.sync()
    wait_for(lambda: client.info().version == "checkpoint_3", timeout=20, message="checkpoint_3 served")
    cached = tmp_path / "cache" / "oss" / BUCKET / "demo" / rel(demo, demo.checkpoint_dir)
    wait_for(lambda: sorted(p.name for p in cached.iterdir()) == ["checkpoint_2", "checkpoint_3"],
             timeout=30, message="checkpoint_1 freed from the cache")


def test_store_outage_during_an_update_keeps_serving_and_the_update_lands_after(oss_model, oss_server,
                                                                                serve, tmp_path):
    demo, uploader = oss_model
    _, client = serve(f"oss://{BUCKET}/demo/{rel(demo, demo.saved_model_dir)}",
                            f"oss://{BUCKET}/demo/{rel(demo, demo.checkpoint_dir)}",
                            **oss_fields(oss_server, tmp_path))
    feed = demo.model.make_feed(8, np.random.default_rng(12))
    before = output(client.predict(feed), "probability")
    time.sleep(1.1)
    demo.write_full("checkpoint_2", steps=3)
    # Every download of the new version's data fails (reset mid-object) for a while: more than
    # one poll's worth of retries.
    outage = oss_server.inject(
        Fault("reset", count=12, match=lambda m, b, k: m == "GET" and "checkpoint_2/" in k and ".data-" in k)
    )
    uploader.sync()
    wait_for(lambda: "checkpoint_2" in client.info().last_update_error, timeout=20,
             message="outage reported")
    assert client.info().version == "checkpoint_1"
    np.testing.assert_allclose(output(client.predict(feed), "probability"), before, rtol=1e-6)
    wait_for(lambda: client.info().version == "checkpoint_2", timeout=90, message="update after outage")
    assert outage.hits == outage.count
    assert client.info().last_update_error == ""
    np.testing.assert_allclose(output(client.predict(feed), "probability"), demo.model.predict(feed),
                               rtol=1e-5, atol=1e-6)
