"""OssStore against the local OSS server: listing, integrity of fetched checkpoints, credentials,
missing paths, and recovery from network faults without ever exposing a corrupt file."""

from __future__ import annotations

import logging
import os

import pytest

from deeprec_runtime.store import oss as oss_module
from deeprec_runtime.store.base import StoreAuthError, StoreNotFound, StoreUnavailable
from deeprec_runtime.store.retry import RetryPolicy
from tests.support.stores.common import ACCESS_KEY, BUCKET
from tests.support.stores.oss_server import Fault

ROOT = f"oss://{BUCKET}/ckpt"
SHARD = os.urandom(300_000)


def put_checkpoint(bucket, folder: str, base: str, shards: int = 2, index: bool = True) -> dict[str, bytes]:
    files = {f"{base}.data-{i:05d}-of-{shards:05d}": os.urandom(1000) + SHARD for i in range(shards)}
    if index:
        files[f"{base}.index"] = os.urandom(500)
    for name, data in files.items():
        bucket.put_object(f"{folder}/{name}", data)
    return files


def is_data_get(method, bucket, key):
    return method == "GET" and ".data-" in key


def assert_no_partial_files(root):
    leftovers = [f for _, _, files in os.walk(root) for f in files if ".part-" in f]
    assert leftovers == []


def test_list_stat_and_read_see_folders_files_sizes_and_times(bucket, make_store):
    bucket.put_object("ckpt/checkpoint_1/checkpoint", b'model_checkpoint_path: "model.ckpt-1"\n')
    bucket.put_object("ckpt/checkpoint_1/model.ckpt-1.index", b"i" * 10)
    bucket.put_object("ckpt/checkpoint_1/.incremental_checkpoint/x.index", b"d")
    bucket.put_object("ckpt/checkpoint_2/", b"")  # a folder marker, as consoles create them
    store = make_store()
    top = {e.name: e for e in store.list(ROOT)}
    assert set(top) == {"checkpoint_1", "checkpoint_2"} and all(e.is_dir for e in top.values())
    inner = {e.name: e for e in store.list(ROOT + "/checkpoint_1")}
    assert inner[".incremental_checkpoint"].is_dir
    assert inner["model.ckpt-1.index"].size == 10 and inner["model.ckpt-1.index"].mtime > 0
    assert store.list(ROOT + "/checkpoint_2") == []
    assert store.list(ROOT + "/nothing") == []
    assert store.stat(ROOT + "/checkpoint_1/checkpoint").is_dir is False
    assert store.stat(ROOT + "/checkpoint_1").is_dir is True
    assert store.stat(ROOT + "/checkpoint_9") is None
    assert store.read_bytes(ROOT + "/checkpoint_1/checkpoint").startswith(b"model_checkpoint_path")


def test_listing_follows_continuation_tokens(bucket, make_store, monkeypatch):
    for i in range(7):
        bucket.put_object(f"ckpt/v{i}/checkpoint", b"x")
        bucket.put_object(f"ckpt/f{i}", b"y")
    monkeypatch.setattr(oss_module, "_LIST_PAGE", 3)
    names = sorted(e.name for e in make_store().list(ROOT))
    assert names == sorted([f"v{i}" for i in range(7)] + [f"f{i}" for i in range(7)])


def test_checkpoint_is_fetched_whole_and_only_once_while_unchanged(bucket, make_store, oss_server, tmp_path):
    files = put_checkpoint(bucket, "ckpt/checkpoint_1", "model.ckpt-5", shards=3)
    store = make_store()
    local = store.localize_checkpoint(ROOT + "/checkpoint_1/model.ckpt-5")
    assert local.startswith(str(tmp_path / "cache"))
    for name, data in files.items():
        with open(os.path.join(os.path.dirname(local), name), "rb") as fh:
            assert fh.read() == data
    gets = sum(r.method == "GET" and r.key.endswith(tuple(files)) for r in oss_server.requests())
    assert gets == 4
    store.localize_checkpoint(ROOT + "/checkpoint_1/model.ckpt-5")
    assert sum(r.method == "GET" and r.key.endswith(tuple(files)) for r in oss_server.requests()) == gets

    # Rewritten remotely (same name, new bytes): fetched again.
    new = os.urandom(700)
    bucket.put_object("ckpt/checkpoint_1/model.ckpt-5.index", new)
    store.localize_checkpoint(ROOT + "/checkpoint_1/model.ckpt-5")
    with open(local + ".index", "rb") as fh:
        assert fh.read() == new


def test_incomplete_checkpoint_is_refused_naming_what_is_missing(bucket, make_store, oss_server):
    put_checkpoint(bucket, "ckpt/checkpoint_1", "model.ckpt-5", shards=3)
    oss_server.state.buckets[BUCKET].pop("ckpt/checkpoint_1/model.ckpt-5.data-00001-of-00003")
    put_checkpoint(bucket, "ckpt/checkpoint_2", "model.ckpt-6", index=False)
    store = make_store()
    with pytest.raises(StoreNotFound, match=r"model\.ckpt-5\.data-00001-of-00003"):
        store.localize_checkpoint(ROOT + "/checkpoint_1/model.ckpt-5")
    with pytest.raises(StoreNotFound, match=r"model\.ckpt-6\.index"):
        store.localize_checkpoint(ROOT + "/checkpoint_2/model.ckpt-6")
    assert not any(r.method == "GET" and r.key for r in oss_server.requests())


def test_localize_tree_fetches_a_savedmodel_folder(bucket, make_store):
    bucket.put_object("sm/1/saved_model.pb", b"graph")
    bucket.put_object("sm/1/variables/variables.index", b"idx")
    bucket.put_object("sm/1/variables/variables.data-00000-of-00001", b"data")
    local = make_store().localize_tree(f"oss://{BUCKET}/sm/1/")
    with open(os.path.join(local, "variables", "variables.data-00000-of-00001"), "rb") as fh:
        assert fh.read() == b"data"
    assert sorted(os.listdir(local)) == ["saved_model.pb", "variables"]
    with pytest.raises(StoreNotFound, match="sm/2"):
        make_store().localize_tree(f"oss://{BUCKET}/sm/2")


@pytest.mark.parametrize("access_id,access_key,code", [
    ("LTAI5tTestAccessId", "wrong-key", "SignatureDoesNotMatch"),
    ("NoSuchId", ACCESS_KEY, "InvalidAccessKeyId"),
])
def test_bad_credentials_name_the_config_fields_never_the_key(bucket, make_store, oss_server, caplog,
                                                              access_id, access_key, code):
    bucket.put_object("ckpt/checkpoint_1/checkpoint", b"x")
    store = make_store(access_id=access_id, access_key=access_key)
    caplog.set_level(logging.DEBUG)
    for call in (lambda: store.list(ROOT), lambda: store.read_bytes(ROOT + "/checkpoint_1/checkpoint"),
                 lambda: store.stat(ROOT + "/checkpoint_1/checkpoint")):
        with pytest.raises(StoreAuthError) as info:
            call()
        message = str(info.value)
        assert "oss_access_id" in message and "oss_access_key" in message and code in message
        assert access_key not in message
    assert access_key not in caplog.text
    # Credentials errors are not retried: one request per call.
    assert len([r for r in oss_server.requests() if r.status == 403]) == 3


def test_missing_bucket_is_reported_as_not_found(make_store):
    store = make_store()
    with pytest.raises(StoreNotFound, match="bucket does not exist"):
        store.list("oss://no-such-bucket/ckpt")


@pytest.mark.parametrize("fault", [
    Fault("status", count=3, status=503, match=is_data_get),
    Fault("status", count=2, status=500, match=is_data_get),
    Fault("stall", count=1, seconds=3.0, match=is_data_get),
    Fault("reset", count=2, match=is_data_get),
    Fault("corrupt", count=2, match=is_data_get),
    Fault("trickle", count=1, seconds=0.002, chunk=16384, match=is_data_get),
], ids=lambda f: f"{f.kind}-{f.count}")
def test_transient_faults_are_retried_and_the_fetched_checkpoint_is_exact(bucket, make_store, oss_server,
                                                                          tmp_path, fault):
    files = put_checkpoint(bucket, "ckpt/checkpoint_1", "model.ckpt-5")
    store = make_store(timeout=1.0)
    oss_server.inject(fault)
    local = store.localize_checkpoint(ROOT + "/checkpoint_1/model.ckpt-5")
    assert fault.hits == fault.count
    for name, data in files.items():
        with open(os.path.join(os.path.dirname(local), name), "rb") as fh:
            assert fh.read() == data, name
    assert_no_partial_files(tmp_path / "cache")


def test_listing_and_state_reads_are_retried_too(bucket, make_store, oss_server):
    bucket.put_object("ckpt/checkpoint_1/checkpoint", b"state")
    store = make_store()
    oss_server.inject(Fault("status", count=2, status=503))
    assert [e.name for e in store.list(ROOT)] == ["checkpoint_1"]
    oss_server.inject(Fault("status", count=2, status=500))
    assert store.read_bytes(ROOT + "/checkpoint_1/checkpoint") == b"state"


def test_persistent_outage_gives_up_after_bounded_tries_and_leaves_no_file(bucket, make_store, oss_server,
                                                                           tmp_path):
    put_checkpoint(bucket, "ckpt/checkpoint_1", "model.ckpt-5")
    store = make_store(retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02))
    oss_server.inject(Fault("reset", count=1000, match=is_data_get))
    with pytest.raises(StoreUnavailable, match="after 3 tries"):
        store.localize_checkpoint(ROOT + "/checkpoint_1/model.ckpt-5")
    assert sum(r.fault == "reset" for r in oss_server.requests()) == 3
    local_dir = tmp_path / "cache" / "oss" / BUCKET / "ckpt" / "checkpoint_1"
    names = os.listdir(local_dir) if local_dir.exists() else []
    assert not any(".data-" in n for n in names)
    assert_no_partial_files(tmp_path / "cache")


def test_retain_frees_cached_versions_that_are_no_longer_kept(bucket, make_store, tmp_path):
    for v in (1, 2, 3):
        put_checkpoint(bucket, f"ckpt/checkpoint_{v}", f"model.ckpt-{v}", shards=1)
    bucket.put_object("sm/saved_model.pb", b"g")
    store = make_store()
    store.localize_tree(f"oss://{BUCKET}/sm")
    for v in (1, 2, 3):
        store.localize_checkpoint(f"{ROOT}/checkpoint_{v}/model.ckpt-{v}")
    cached = tmp_path / "cache" / "oss" / BUCKET
    store.retain([f"oss://{BUCKET}/sm", f"{ROOT}/checkpoint_2", f"{ROOT}/checkpoint_3"])
    assert sorted(os.listdir(cached / "ckpt")) == ["checkpoint_2", "checkpoint_3"]
    assert os.listdir(cached / "sm") == ["saved_model.pb"]
