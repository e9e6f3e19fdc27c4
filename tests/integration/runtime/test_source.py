"""Version discovery, as DeepRec's Processor does it, on real folders."""

import os
import time

from deeprec_runtime.model.source import VersionSource
from deeprec_runtime.store.base import LocalStore


def _ckpt(folder, base, step, shards=1, drop_shard=None):
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, f"{base}-{step}.index"), "wb").write(b"i" * 10)
    for i in range(shards):
        if i != drop_shard:
            open(os.path.join(folder, f"{base}-{step}.data-{i:05d}-of-{shards:05d}"), "wb").write(b"d")


def _state(folder, mtime):
    path = os.path.join(folder, "checkpoint")
    open(path, "w").write('model_checkpoint_path: "model.ckpt-1"\n')
    os.utime(path, (mtime, mtime))


def _source(root):
    return VersionSource(LocalStore([str(root)]), str(root))


def test_newest_state_file_wins_not_the_highest_name(tmp_path):
    now = time.time()
    for name, age in (("checkpoint_9", 100), ("checkpoint_2", 10)):
        _ckpt(tmp_path / name, "model.ckpt", 5)
        _state(tmp_path / name, now - age)
    versions, bad = _source(tmp_path).scan()
    assert [v.name for v in versions] == ["checkpoint_2", "checkpoint_9"] and bad == []


def test_highest_full_step_and_deltas_in_both_folder_spellings_in_step_order(tmp_path):
    v = tmp_path / "checkpoint_1"
    for step in (10, 30):
        _ckpt(v, "model.ckpt", step)
    _ckpt(v / ".incremental_checkpoint", "incremental_model.ckpt", 45)
    _ckpt(v / ".incremental_ckpt", "incremental_model.ckpt", 40)
    _ckpt(v / ".incremental_checkpoint", "incremental_model.ckpt", 20)  # older than the full
    _state(v, time.time())
    (version,), _ = _source(tmp_path).scan()
    assert version.full_step == 30 and version.full_prefix.endswith("model.ckpt-30")
    assert [d.step for d in version.deltas] == [40, 45]
    assert version.delta_step == 45
    assert [d.step for d in version.deltas_after(40)] == [45]


def test_incomplete_checkpoints_are_never_offered(tmp_path):
    v = tmp_path / "checkpoint_1"
    _ckpt(v, "model.ckpt", 10)
    _ckpt(v, "model.ckpt", 20, shards=2, drop_shard=1)  # a shard still being copied
    _ckpt(v / ".incremental_checkpoint", "incremental_model.ckpt", 30, shards=2, drop_shard=0)
    _state(v, time.time())
    (version,), _ = _source(tmp_path).scan()
    assert version.full_step == 10 and version.deltas == ()
    assert any("model.ckpt-20" in p for p in version.problems)


def test_folder_without_state_file_is_not_a_version_yet(tmp_path):
    _ckpt(tmp_path / "checkpoint_1", "model.ckpt", 10)
    assert _source(tmp_path).scan() == ([], [])


def test_garbage_state_file_and_missing_index_are_reported(tmp_path):
    _ckpt(tmp_path / "garbage", "model.ckpt", 10)
    (tmp_path / "garbage" / "checkpoint").write_bytes(b"\x00\xffnot a state {{{")
    os.makedirs(tmp_path / "no_index")
    _state(tmp_path / "no_index", time.time())
    open(tmp_path / "no_index" / "model.ckpt-3.data-00000-of-00001", "wb").write(b"d")
    versions, bad = _source(tmp_path).scan()
    assert versions == []
    reasons = {b.name: b.reason for b in bad}
    assert "unreadable" in reasons["garbage"]
    assert "no complete full checkpoint" in reasons["no_index"]


def test_checkpoint_dir_that_is_itself_a_version_folder(tmp_path):
    v = tmp_path / "plain_tf_run"
    _ckpt(v, "model.ckpt", 7)
    _state(v, time.time())
    (version,), _ = _source(v).scan()
    assert version.name == "plain_tf_run" and version.full_step == 7


def test_symlink_escaping_the_store_is_refused(tmp_path):
    outside = tmp_path / "outside"
    _ckpt(outside, "model.ckpt", 1)
    _state(outside, time.time())
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "checkpoint_1")
    _ckpt(root / "checkpoint_2", "model.ckpt", 2)
    _state(root / "checkpoint_2", time.time())
    # Only the folder that leaves the store is refused; the others are still found.
    versions, bad = _source(root).scan()
    assert [v.name for v in versions] == ["checkpoint_2"]
    assert [b.name for b in bad] == ["checkpoint_1"]
    assert "resolves outside the model folders" in bad[0].reason
