"""The checkpoint writer against real TensorFlow: what it writes restores to the trainer's values."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from deeprec_runtime.training import CheckpointWriter, build_wide_deep, read_delta
from tests.support.training import FreshServable, delta_prefixes_in_order

tf1 = tf.compat.v1

NUM_IDS = 3000


@pytest.fixture
def model():
    m = build_wide_deep(num_ids=NUM_IDS, dim=8, num_sparse=4, num_dense=5, hidden=(32, 16), seed=3)
    yield m
    m.close()


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _writer(model, tmp_path, **kw) -> CheckpointWriter:
    return CheckpointWriter(
        model.session,
        str(tmp_path / "checkpoints"),
        "checkpoint_1",
        model.embedding_variables,
        model.dense_variables,
        **kw,
    )


def _export(writer, model, tmp_path) -> str:
    return writer.export_saved_model(str(tmp_path / "saved_model"), model.inputs, model.outputs)


def _assert_values_equal(actual: dict, expected: dict, names=None) -> None:
    names = sorted(expected) if names is None else names
    for n in names:
        np.testing.assert_array_equal(actual[n], expected[n], err_msg=f"variable {n}")


def test_full_checkpoint_restores_identical_values_on_fresh_import_of_saved_model(
    model, rng, tmp_path
):
    writer = _writer(model, tmp_path)
    export = _export(writer, model, tmp_path)
    for _ in range(5):
        model.train_step(64, rng)
    prefix = writer.save_full(10)
    expected = model.variable_values()
    feed = model.make_feed(16, rng)
    expected_prob = model.predict(feed)
    for _ in range(3):  # the trainer moves on; the checkpoint must not
        model.train_step(64, rng)

    assert prefix == str(tmp_path / "checkpoints" / "checkpoint_1" / "model.ckpt-10")
    served = FreshServable(export)
    # The SavedModel holds the initial values: restoring must change them.
    assert not np.array_equal(served.values()["embedding"], expected["embedding"])
    served.restore_full(prefix)
    values = served.values()
    assert set(values) == set(expected)
    _assert_values_equal(values, expected)
    np.testing.assert_array_equal(served.run("serving_default", feed)["probability"], expected_prob)
    served.close()


def test_delta_holds_exactly_the_touched_rows_with_new_values_and_dense_variables(
    model, rng, tmp_path
):
    writer = _writer(model, tmp_path)
    model.writer = writer
    writer.save_full(1)
    before = model.variable_values()
    touched = np.unique(np.concatenate([model.train_step(32, rng).ravel() for _ in range(4)]))
    prefix = writer.save_delta(2)
    now = model.variable_values()

    assert prefix.endswith(
        os.path.join("checkpoint_1", ".incremental_checkpoint", "incremental_model.ckpt-2")
    )
    delta = read_delta(prefix)
    assert delta.step == 2
    assert set(delta.embeddings) == {"embedding", "wide_embedding"}
    for name, (ids, rows) in delta.embeddings.items():
        assert ids.dtype == np.int64
        np.testing.assert_array_equal(ids, touched)
        assert rows.dtype == now[name].dtype and rows.shape == (len(touched), now[name].shape[1])
        np.testing.assert_array_equal(rows, now[name][ids])
        # SGD changed nothing outside the touched rows, so the delta is complete.
        untouched = np.setdiff1d(np.arange(NUM_IDS), ids)
        np.testing.assert_array_equal(now[name][untouched], before[name][untouched])
    assert set(delta.dense) == {v.op.name for v in model.dense_variables}
    _assert_values_equal(delta.dense, now, sorted(delta.dense))
    # The embedding rows are not also written whole.
    assert "embedding" not in delta.dense and "wide_embedding" not in delta.dense


def test_each_delta_holds_every_row_changed_since_the_full_save(model, rng, tmp_path):
    writer = _writer(model, tmp_path)
    model.writer = writer
    writer.save_full(1)
    first = model.train_step(16, rng)
    writer.save_delta(2)
    second = model.train_step(16, rng)
    delta = read_delta(writer.save_delta(3))
    both = np.unique(np.concatenate([first.ravel(), second.ravel()]))
    assert both.size > np.unique(second).size  # the test separates the two readings
    np.testing.assert_array_equal(delta.embeddings["embedding"][0], both)
    np.testing.assert_array_equal(delta.embeddings["embedding"][1],
                                  model.variable_values()["embedding"][both])


def test_applying_deltas_in_order_to_the_restored_full_equals_the_trainer(model, rng, tmp_path):
    writer = _writer(model, tmp_path)
    model.writer = writer
    export = _export(writer, model, tmp_path)
    model.train_step(64, rng)
    full = writer.save_full(5)
    for step in (9, 12, 20):
        for _ in range(3):
            model.train_step(64, rng)
        writer.save_delta(step)
    version_dir = str(tmp_path / "checkpoints" / "checkpoint_1")
    deltas = delta_prefixes_in_order(version_dir)
    assert [os.path.basename(p) for p in deltas] == [
        "incremental_model.ckpt-9",
        "incremental_model.ckpt-12",
        "incremental_model.ckpt-20",
    ]
    expected = model.variable_values()
    feed = model.make_feed(32, rng)
    expected_prob = model.predict(feed)

    served = FreshServable(export)
    served.restore_full(full)
    # Only the full: the served model is behind the trainer.
    assert not np.array_equal(served.values()["embedding"], expected["embedding"])
    for prefix in deltas:
        served.apply_delta(prefix)
    _assert_values_equal(served.values(), expected)
    np.testing.assert_array_equal(served.run("serving_default", feed)["probability"], expected_prob)
    served.close()


def test_the_latest_delta_alone_brings_the_full_checkpoint_to_the_trainer(model, rng, tmp_path):
    """Deltas are cumulative since the full save (DeepRec's incremental checkpoints), so a
    server that missed the earlier ones applies the latest and is up to date."""
    writer = _writer(model, tmp_path)
    model.writer = writer
    export = _export(writer, model, tmp_path)
    full = writer.save_full(1)
    model.train_step(64, rng)
    writer.save_delta(2)
    model.train_step(64, rng)
    second = writer.save_delta(3)
    served = FreshServable(export)
    served.restore_full(full)
    assert not np.array_equal(served.values()["embedding"], model.variable_values()["embedding"])
    served.apply_delta(second)
    _assert_values_equal(served.values(), model.variable_values())
    served.close()


def test_delta_without_recorded_ids_diffs_against_the_full_save(model, rng, tmp_path):
    writer = _writer(model, tmp_path)
    writer.save_full(1)
    before = model.variable_values()
    for _ in range(3):
        model.train_step(32, rng)  # model.writer is None: nothing recorded
    now = model.variable_values()
    delta = read_delta(writer.save_delta(2))
    for name in ("embedding", "wide_embedding"):
        changed = np.flatnonzero(np.any(now[name] != before[name], axis=1))
        assert changed.size > 0
        ids, rows = delta.embeddings[name]
        np.testing.assert_array_equal(ids, changed)
        np.testing.assert_array_equal(rows, now[name][changed])
    # The next diff is against the full save too (cumulative), not against the delta.
    second_batch = np.unique(model.train_step(8, rng))
    delta2 = read_delta(writer.save_delta(3))
    after = model.variable_values()["embedding"]
    changed2 = np.flatnonzero(np.any(after != before["embedding"], axis=1))
    np.testing.assert_array_equal(delta2.embeddings["embedding"][0], changed2)
    np.testing.assert_array_equal(delta2.embeddings["embedding"][1], after[changed2])
    assert set(changed2) >= set(delta.embeddings["embedding"][0])
    assert set(changed2) - set(delta.embeddings["embedding"][0]) <= set(second_batch)


def test_recorded_and_unrecorded_tables_mix_in_one_delta(model, rng, tmp_path):
    writer = _writer(model, tmp_path)
    writer.save_full(1)
    ids = model.train_step(16, rng)
    writer.record_touched("embedding", ids)  # only one table recorded, by name
    delta = read_delta(writer.save_delta(2))
    np.testing.assert_array_equal(delta.embeddings["embedding"][0], np.unique(ids))
    now = model.variable_values()
    np.testing.assert_array_equal(
        delta.embeddings["wide_embedding"][1], now["wide_embedding"][delta.embeddings["wide_embedding"][0]]
    )


def test_unchanged_tables_are_written_with_no_rows(rng, tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        a = tf1.get_variable("a", [10, 2], initializer=tf1.zeros_initializer())
        b = tf1.get_variable("b", [10, 2], initializer=tf1.zeros_initializer())
        tf1.get_variable("w", [3], initializer=tf1.zeros_initializer())
        bump = tf1.scatter_add(a, [4], [[1.0, 2.0]])
        init = tf1.global_variables_initializer()
    sess = tf1.Session(graph=graph)
    sess.run(init)
    writer = CheckpointWriter(sess, str(tmp_path), "v1", [a, b])
    assert writer.save_full(0).endswith("model.ckpt-0")
    sess.run(bump)
    delta = read_delta(writer.save_delta(1))
    assert set(delta.embeddings) == {"a", "b"}  # as DeepRec writes every recorded table
    assert delta.embeddings["b"][0].shape == (0,) and delta.embeddings["b"][1].shape == (0, 2)
    np.testing.assert_array_equal(delta.embeddings["a"][0], [4])
    np.testing.assert_array_equal(delta.embeddings["a"][1], [[1.0, 2.0]])
    assert set(delta.dense) == {"w"}  # default dense = trainable non-embedding variables
    sess.close()


def test_plain_tf_checkpoint_layout_without_deltas(model, rng, tmp_path):
    writer = _writer(model, tmp_path)
    model.train_step(8, rng)
    writer.save_full(3)
    model.train_step(8, rng)
    prefix = writer.save_full(7)
    version_dir = tmp_path / "checkpoints" / "checkpoint_1"

    assert sorted(os.listdir(version_dir)) == [
        "checkpoint",
        "model.ckpt-3.data-00000-of-00001",
        "model.ckpt-3.index",
        "model.ckpt-7.data-00000-of-00001",
        "model.ckpt-7.index",
    ]
    text = (version_dir / "checkpoint").read_text()
    # Relative paths: the folder stays valid when copied elsewhere (OSS, HDFS).
    assert text == (
        'model_checkpoint_path: "model.ckpt-7"\n'
        'all_model_checkpoint_paths: "model.ckpt-3"\n'
        'all_model_checkpoint_paths: "model.ckpt-7"\n'
    )
    assert tf.train.latest_checkpoint(str(version_dir)) == prefix
    reader = tf.train.load_checkpoint(prefix)
    with model.graph.as_default():
        names = {v.op.name for v in tf1.global_variables()}
    assert set(reader.get_variable_to_shape_map()) == names
    assert all(":" not in n for n in names)
    # A stock Saver in the training graph restores it too.
    expected = model.variable_values()
    model.train_step(8, rng)
    with model.graph.as_default():
        tf1.train.Saver().restore(model.session, prefix)
    _assert_values_equal(model.variable_values(), expected)


def test_new_full_version_goes_to_its_own_folder_and_needs_a_full_first(model, rng, tmp_path):
    writer = _writer(model, tmp_path)
    model.writer = writer
    writer.save_full(1)
    model.train_step(8, rng)
    writer.save_delta(2)
    writer.start_version("checkpoint_2")
    with pytest.raises(ValueError, match="save_full first"):
        writer.save_delta(3)
    model.train_step(8, rng)
    prefix = writer.save_full(3)
    assert prefix == str(tmp_path / "checkpoints" / "checkpoint_2" / "model.ckpt-3")
    assert not (tmp_path / "checkpoints" / "checkpoint_2" / ".incremental_checkpoint").exists()
    # Touched ids were consumed by the full: the next delta has no embedding rows.
    delta = read_delta(writer.save_delta(4))
    assert {name: ids.size for name, (ids, _) in delta.embeddings.items()} == {
        "embedding": 0, "wide_embedding": 0}


def test_invalid_calls_are_refused_with_the_reason(model, rng, tmp_path):
    writer = _writer(model, tmp_path)
    with pytest.raises(ValueError, match="save_full first"):
        writer.save_delta(1)
    writer.save_full(5)
    with pytest.raises(ValueError, match="step must increase"):
        writer.save_delta(5)
    with pytest.raises(ValueError, match=r"must be in \[0, 3000\)"):
        writer.record_touched("embedding", [NUM_IDS])
    with pytest.raises(ValueError, match="not a registered embedding"):
        writer.record_touched("mlp/logit/kernel", [0])
    with pytest.raises(ValueError, match="no global variable named 'nope'"):
        CheckpointWriter(model.session, str(tmp_path), "v", ["nope"])
    with pytest.raises(ValueError, match="must be 2-D"):
        CheckpointWriter(model.session, str(tmp_path), "v", ["wide_bias"])
    with pytest.raises(FileExistsError):
        _export(writer, model, tmp_path)
        _export(writer, model, tmp_path)


def test_saved_model_export_leaves_no_temporary_folder(model, tmp_path):
    writer = _writer(model, tmp_path)
    _export(writer, model, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "saved_model"]
    assert sorted(os.listdir(tmp_path / "saved_model")) == ["saved_model.pb", "variables"]


def test_writer_works_on_a_finalized_graph_by_reading_whole_tables(model, rng, tmp_path):
    model.graph.finalize()  # MonitoredTrainingSession finalizes training graphs
    writer = _writer(model, tmp_path)
    model.writer = writer
    full = writer.save_full(1)
    ids = np.unique(model.train_step(16, rng))
    delta = read_delta(writer.save_delta(2))
    now = model.variable_values()
    np.testing.assert_array_equal(delta.embeddings["embedding"][0], ids)
    np.testing.assert_array_equal(delta.embeddings["embedding"][1], now["embedding"][ids])
    assert tf.train.load_checkpoint(full).get_tensor("wide_bias").shape == (1,)


def test_a_reopened_version_folder_never_reuses_a_step_on_disk(model, rng, tmp_path):
    first = _writer(model, tmp_path)
    first.save_full(10)
    model.train_step(8, rng)
    first.save_delta(12)
    again = _writer(model, tmp_path)  # e.g. the trainer restarted
    with pytest.raises(ValueError, match="already on disk"):
        again.save_full(12)
    again.save_full(13)
    state = tf1.train.get_checkpoint_state(str(tmp_path / "checkpoints" / "checkpoint_1"))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
        "model.ckpt-10",
        "model.ckpt-13",
    ]
