"""The fixture models: DeepRec's documented example signature and the demo model folder."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from deeprec_runtime.training import (
    CheckpointWriter,
    build_seed_example,
    build_wide_deep,
    read_delta,
    write_demo_model,
)
from tests.support.training import FreshServable, delta_prefixes_in_order

tf1 = tf.compat.v1


def _signature(export_dir: str, name: str = "serving_default"):
    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    assert len(sm.meta_graphs) == 1
    assert list(sm.meta_graphs[0].meta_info_def.tags) == ["serve"]
    return sm.meta_graphs[0].signature_def[name]


def _tensor_info(info) -> tuple[str, str, list[int]]:
    return (info.name, tf.as_dtype(info.dtype).name, [d.size for d in info.tensor_shape.dim])


def test_seed_example_signature_has_the_documented_names_and_dtypes(tmp_path):
    model = build_seed_example()
    writer = CheckpointWriter(model.session, str(tmp_path / "ckpt"), "1", model.embedding_variables)
    export = writer.export_saved_model(str(tmp_path / "sm"), model.inputs, model.outputs)
    sig = _signature(export)
    assert sig.method_name == "tensorflow/serving/predict"
    assert {k: _tensor_info(v) for k, v in sig.inputs.items()} == {
        "input1": ("input1:0", "float64", [-1]),
        "input2": ("input2:0", "int32", [-1]),
    }
    assert {k: _tensor_info(v) for k, v in sig.outputs.items()} == {
        "probabilities": ("prediction:0", "float32", [-1]),
    }
    model.close()


def test_seed_example_answers_change_with_full_and_delta_checkpoints(tmp_path):
    model = build_seed_example(num_ids=50)
    writer = CheckpointWriter(
        model.session, str(tmp_path / "ckpt"), "1", model.embedding_variables, model.dense_variables
    )
    model.writer = writer
    export = writer.export_saved_model(str(tmp_path / "sm"), model.inputs, model.outputs)
    feed = {"input1": np.array([1.0, -2.0, 0.5]), "input2": np.array([3, 7, 60], np.int32)}
    initial = model.predict(feed)
    model.train_step(50, np.random.default_rng(0))
    full = writer.save_full(1)
    after_full = model.predict(feed)
    ids = model.train_step(3, np.random.default_rng(1))
    delta = writer.save_delta(2)
    after_delta = model.predict(feed)
    np.testing.assert_array_equal(read_delta(delta).embeddings["seed_embedding"][0], np.unique(ids))

    served = FreshServable(export)
    np.testing.assert_array_equal(served.run("serving_default", feed)["probabilities"], initial)
    served.restore_full(full)
    got = served.run("serving_default", feed)["probabilities"]
    np.testing.assert_array_equal(got, after_full)
    assert not np.array_equal(got, initial)
    served.apply_delta(delta)
    np.testing.assert_array_equal(served.run("serving_default", feed)["probabilities"], after_delta)
    served.close()
    model.close()


def test_wide_deep_names_and_a_fed_embedding_lookup_bypasses_the_table(tmp_path):
    model = build_wide_deep(num_ids=1000, dim=4, num_sparse=3, num_dense=2, hidden=(8,))
    g = model.graph
    assert model.inputs["sparse_ids"].name == "sparse_ids:0"
    assert model.inputs["sparse_ids"].dtype == tf.int64
    assert model.inputs["sparse_ids"].shape.as_list() == [None, 3]
    assert model.inputs["dense"].name == "dense:0"
    assert model.inputs["dense"].shape.as_list() == [None, 2]
    assert model.outputs["probability"].name == "probability:0"
    assert model.outputs["probability"].shape.as_list() == [None, 1]
    assert [v.op.name for v in model.embedding_variables] == ["embedding", "wide_embedding"]
    lookup = g.get_tensor_by_name("embedding_lookup:0")
    assert lookup.shape.as_list() == [None, 3, 4]
    assert model.lookup_tensors == {
        "embedding": "embedding_lookup:0",
        "wide_embedding": "wide_lookup:0",
    }
    feed = model.make_feed(5, np.random.default_rng(0))
    fd = model.feed_dict(feed)
    rows = model.session.run(lookup, fd)
    expected = model.session.run(model.outputs["probability"], fd)
    # Rows fed from elsewhere (Redis, SSD tier) give the same answer as the in-graph table...
    fd[lookup] = rows
    np.testing.assert_array_equal(model.session.run(model.outputs["probability"], fd), expected)
    # ...and are really used: other rows give another answer.
    fd[lookup] = rows + 1.0
    assert not np.allclose(model.session.run(model.outputs["probability"], fd), expected)
    model.close()


def test_wide_deep_training_changes_only_touched_rows_and_learns(tmp_path):
    model = build_wide_deep(num_ids=2000, dim=4, num_sparse=3, num_dense=4, hidden=(16,))
    rng = np.random.default_rng(0)
    before = model.variable_values()
    ids = model.train_step(64, rng)
    after = model.variable_values()
    changed = np.flatnonzero(np.any(after["embedding"] != before["embedding"], axis=1))
    assert changed.size > 0 and set(changed) <= set(np.unique(ids))
    for v in model.dense_variables:
        if v.op.name.endswith("kernel"):
            assert not np.array_equal(after[v.op.name], before[v.op.name]), v.op.name


def test_write_demo_model_writes_a_servable_folder_and_can_continue(tmp_path):
    art = write_demo_model(str(tmp_path), num_ids=5000, num_full=1, num_deltas=2, hidden=(32, 16))
    assert art.saved_model_dir == str(tmp_path / "saved_model")
    assert art.checkpoint_dir == str(tmp_path / "checkpoints")
    v1 = tmp_path / "checkpoints" / "checkpoint_1"
    assert os.path.exists(tmp_path / "saved_model" / "saved_model.pb")
    fulls = [f for f in os.listdir(v1) if f.endswith(".index")]
    assert len(fulls) == 1 and fulls[0].startswith("model.ckpt-")
    deltas = delta_prefixes_in_order(str(v1))
    assert len(deltas) == 2
    assert [k for _, k, _ in art.written] == ["full", "delta", "delta"]

    # The demo keeps going: another delta, then a new full version checkpoint_2.
    art.write_delta()
    art.write_full()
    assert art.version_name == "checkpoint_2"
    v2_full = art.written[-1][2]
    assert v2_full.startswith(str(tmp_path / "checkpoints" / "checkpoint_2" / "model.ckpt-"))
    art.write_delta()
    assert len(delta_prefixes_in_order(str(tmp_path / "checkpoints" / "checkpoint_2"))) == 1

    served = FreshServable(art.saved_model_dir)
    served.restore_full(str(v1 / fulls[0][: -len(".index")]))
    for p in delta_prefixes_in_order(str(v1)):
        served.apply_delta(p)
    served.restore_full(v2_full)
    for p in delta_prefixes_in_order(str(tmp_path / "checkpoints" / "checkpoint_2")):
        served.apply_delta(p)
    expected = art.model.variable_values()
    values = served.values()
    for name in expected:
        np.testing.assert_array_equal(values[name], expected[name], err_msg=name)
    served.close()
    art.close()
