"""`kill -9` of a `deeprec-runtime serve` process while it fetches a new version's `.data` from
OSS: the restarted process, on the same model_cache_dir, never uses the partial file, serves a
complete version with exact predictions, and removes the temporary file the killed one left."""

from __future__ import annotations

import json
import time

import grpc
import numpy as np
import pytest

from deeprec_runtime.training import write_demo_model
from tests.support.runtime import Client, ServeProcess, output, wait_for
from tests.support.stores.common import ACCESS_ID, ACCESS_KEY, BUCKET, Uploader
from tests.support.stores.oss_server import Fault

KEY = "probability"
PART = ".part-"  # deeprec_runtime.store.cache: files being written are <name>.part-<random>


@pytest.fixture
def demo(tmp_path):
    """The demo model with enough ids that its .data (about 1.5 MB) spans more than one of the
    store's 1 MiB download chunks, so a kill can land with part of the file written."""
    art = write_demo_model(str(tmp_path / "model"), num_ids=20000, num_deltas=1, hidden=(16,),
                           steps_per_delta=2, batch_size=16)
    yield art
    art.close()


def _start(config_path) -> ServeProcess:
    # Credentials through the environment, as the operator passes them.
    return ServeProcess(config_path, env={"OSS_ACCESS_ID": ACCESS_ID,
                                          "OSS_ACCESS_KEY": ACCESS_KEY}).start()


def _version(client: Client) -> str:
    try:
        return client.info().version
    except grpc.RpcError:  # still loading its first version
        return ""


def test_sigkill_mid_fetch_then_restart_serves_a_complete_version(demo, oss_server, bucket, tmp_path):
    uploader = Uploader(bucket, demo.base_dir, "demo")
    uploader.sync()
    rel = lambda path: path[len(demo.base_dir):].strip("/")  # noqa: E731
    cache = tmp_path / "cache"
    config = tmp_path / "model_config.json"
    config.write_text(json.dumps({
        "savedmodel_dir": f"oss://{BUCKET}/demo/{rel(demo.saved_model_dir)}",
        "checkpoint_dir": f"oss://{BUCKET}/demo/{rel(demo.checkpoint_dir)}",
        "model_store_type": "oss", "oss_endpoint": oss_server.endpoint,
        "model_cache_dir": str(cache), "signature_name": "serving_default",
        "feature_store_type": "memory", "update_poll_seconds": 0.2}))
    feed = demo.model.make_feed(8, np.random.default_rng(21))

    first = _start(config)
    try:
        client = first.client
        wait_for(lambda: _version(client) == "checkpoint_1", timeout=60,
                 message=lambda: "checkpoint_1 served\n" + first.log)
        old = output(client.predict(feed), KEY)

        # A new full version whose .data arrives in a slow trickle: the process is killed while
        # the file is half written.
        time.sleep(1.1)  # OSS times have 1 s resolution
        demo.write_full("checkpoint_2", steps=3)
        oss_server.inject(Fault("trickle", count=1, chunk=8192, seconds=0.02,
                                match=lambda m, b, k: m == "GET" and "checkpoint_2/" in k and ".data-" in k))
        uploader.sync()
        parts = lambda: [p for p in cache.rglob(f"*{PART}*") if p.stat().st_size > 0]  # noqa: E731
        wait_for(lambda: parts(), timeout=30, message="checkpoint_2 .data being fetched")
        first.kill9()
    finally:
        first.stop()
    (partial,) = parts()
    final = partial.with_name(partial.name.split(PART)[0])
    # The cache mirrors the bucket: <cache>/oss/<bucket>/<key>.
    remote = bucket.get_object(final.relative_to(cache / "oss" / BUCKET).as_posix()).read()
    assert 0 < partial.stat().st_size < len(remote), "killed mid-file"
    assert not final.exists(), "a partial file must never sit under the final name"

    oss_server.clear_faults()
    second = _start(config)
    try:
        client = second.client
        # Either version is acceptable while it starts, but only with that version's exact values.
        wait_for(lambda: _version(client) in ("checkpoint_1", "checkpoint_2"), timeout=60,
                 message=lambda: "serving after restart\n" + second.log)
        before, got, after = _version(client), output(client.predict(feed), KEY), _version(client)
        if before == after:  # no swap in between: the values are that version's
            want = old if before == "checkpoint_1" else demo.model.predict(feed)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        wait_for(lambda: _version(client) == "checkpoint_2", timeout=60,
                 message=lambda: "checkpoint_2 served after restart\n" + second.log)
        assert client.info().last_update_error == ""
        np.testing.assert_allclose(output(client.predict(feed), KEY), demo.model.predict(feed),
                                   rtol=1e-5, atol=1e-6)
        # The cached shard is the whole object, byte for byte, and nothing partial is left over.
        assert final.read_bytes() == remote
        wait_for(lambda: not list(cache.rglob(f"*{PART}*")), timeout=20,
                 message="temporary files of the killed process removed")
    finally:
        second.stop()
