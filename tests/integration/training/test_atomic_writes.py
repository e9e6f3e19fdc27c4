"""A reader that keys on ``*.index`` or on the CheckpointState never sees a half-written checkpoint."""

from __future__ import annotations

import os
import re
import threading

import numpy as np
import tensorflow as tf

from deeprec_runtime.training import CheckpointWriter, build_wide_deep, bundle, checkpoint_writer

tf1 = tf.compat.v1

FINAL_INDEX = re.compile(r"^(incremental_)?model\.ckpt-\d+\.index$")


def _small_model():
    return build_wide_deep(num_ids=2000, dim=8, num_sparse=4, num_dense=5, hidden=(16,), seed=1)


def test_data_file_is_renamed_before_the_index_and_the_state_file_is_updated_last(
    tmp_path, monkeypatch
):
    events: list[tuple[str, str]] = []
    real_rename = bundle._rename
    real_update = checkpoint_writer._update_state

    def rename(src: str, dst: str) -> None:
        assert os.path.basename(src).startswith(".tmp-write-"), src
        if dst.endswith(".index"):
            # Everything the index refers to is already in place under the final name.
            prefix = dst[: -len(".index")]
            assert os.path.exists(prefix + ".data-00000-of-00001"), dst
            assert not os.path.exists(dst)
        real_rename(src, dst)
        events.append(("rename", os.path.basename(dst)))

    def update(folder: str, latest: str, all_paths) -> None:
        assert os.path.exists(os.path.join(folder, latest + ".index"))
        real_update(folder, latest, all_paths)
        events.append(("state", f"{os.path.basename(folder)}:{latest}"))

    monkeypatch.setattr(bundle, "_rename", rename)
    monkeypatch.setattr(checkpoint_writer, "_update_state", update)
    model = _small_model()
    writer = CheckpointWriter(
        model.session, str(tmp_path), "checkpoint_1", model.embedding_variables
    )
    model.writer = writer
    writer.save_full(1)
    model.train_step(16)
    writer.save_delta(2)
    assert events == [
        ("rename", "model.ckpt-1.data-00000-of-00001"),
        ("rename", "model.ckpt-1.index"),
        ("state", "checkpoint_1:model.ckpt-1"),
        ("rename", "incremental_model.ckpt-2.data-00000-of-00001"),
        ("rename", "incremental_model.ckpt-2.index"),
        ("state", ".incremental_checkpoint:incremental_model.ckpt-2"),
    ]
    leftovers = [f for _, _, fs in os.walk(tmp_path) for f in fs if f.startswith(".tmp")]
    assert leftovers == []
    model.close()


def test_concurrent_reader_only_ever_finds_complete_checkpoints(tmp_path):
    model = _small_model()
    writer = CheckpointWriter(
        model.session, str(tmp_path), "checkpoint_1", model.embedding_variables
    )
    model.writer = writer
    version_dir = tmp_path / "checkpoint_1"
    delta_dir = version_dir / ".incremental_checkpoint"
    stop = threading.Event()
    failures: list[str] = []
    reads = {"index": 0, "state": 0}

    def read_all(prefix: str) -> None:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)

    def reader_loop() -> None:
        while not stop.is_set():
            for folder in (version_dir, delta_dir):
                try:
                    names = os.listdir(folder)
                except FileNotFoundError:
                    continue
                for name in names:
                    if FINAL_INDEX.match(name):
                        try:
                            read_all(str(folder / name[: -len(".index")]))
                            reads["index"] += 1
                        except Exception as e:  # noqa: BLE001 - any failure is the finding
                            failures.append(f"{name}: {type(e).__name__}: {e}")
                if "checkpoint" in names:
                    try:
                        state = tf1.train.get_checkpoint_state(str(folder))
                        for p in state.all_model_checkpoint_paths:
                            read_all(p)
                        reads["state"] += 1
                    except Exception as e:  # noqa: BLE001
                        failures.append(f"state in {folder.name}: {type(e).__name__}: {e}")

    thread = threading.Thread(target=reader_loop, daemon=True)
    thread.start()
    try:
        rng = np.random.default_rng(0)
        writer.save_full(1)
        for step in range(2, 22):
            model.train_step(32, rng)
            writer.save_delta(step)
    finally:
        stop.set()
        thread.join(timeout=60)
    model.close()
    assert failures == []
    assert reads["index"] > 0 and reads["state"] > 0
    print(f"concurrent reader: {reads['index']} index reads, {reads['state']} state reads")
