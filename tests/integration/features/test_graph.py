"""Embedding lookups are found in the serving graph itself, not taken from names."""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.saved_model import loader_impl

from deeprec_runtime.features import find_tables
from deeprec_runtime.features.binding import serving_tables
from deeprec_runtime.training import WIDE_DEEP_LOOKUPS
from deeprec_runtime.training.checkpoint_writer import export_saved_model
from deeprec_runtime.training.demo_models import build_seed_example


def _load(saved_model_dir):
    loader = loader_impl.SavedModelLoader(saved_model_dir)
    graph = tf.Graph()
    with graph.as_default():
        loader.load_graph(graph, ["serve"])
    return graph, loader.get_meta_graph_def_from_tags(["serve"])


def test_demo_model_tables_match_the_documented_lookup_tensors(demo):
    graph, meta = _load(demo.saved_model_dir)
    tables = serving_tables(graph, meta)
    assert set(tables) == set(WIDE_DEEP_LOOKUPS) == {"embedding", "wide_embedding"}
    for name, documented in WIDE_DEEP_LOOKUPS.items():
        (lookup,) = tables[name].lookups  # the delta writer's gather is not on the serving path
        assert lookup.ids == "sparse_ids:0"
        # The documented tensor is an Identity of the gather we feed.
        assert graph.get_tensor_by_name(documented).op.inputs[0].name == lookup.output
    assert tables["embedding"].shape == (2000, 16)
    assert tables["wide_embedding"].shape == (2000, 1)
    assert str(tables["embedding"].dtype) == "float32"


def test_ids_computed_in_the_graph_are_found_and_dense_variables_are_not_tables(tmp_path):
    model = build_seed_example(num_ids=50)
    try:
        export_saved_model(model.session, str(tmp_path / "sm"), model.inputs, model.outputs)
    finally:
        model.close()
    graph, meta = _load(str(tmp_path / "sm"))
    tables = serving_tables(graph, meta)
    assert set(tables) == {"seed_embedding"}  # weight and bias are scalars read whole
    (lookup,) = tables["seed_embedding"].lookups
    assert lookup.ids.startswith("FloorMod")  # ids = floormod(cast(input2)): not an input
    assert graph.get_tensor_by_name("seed_embedding_lookup:0").op.inputs[0].name == lookup.output


def test_a_variable_read_whole_on_the_serving_path_stays_in_the_session():
    graph = tf.Graph()
    with graph.as_default():
        ids = tf.compat.v1.placeholder(tf.int64, [None], name="ids")
        table = tf.compat.v1.get_variable("table", [10, 4])
        out = tf.reduce_sum(tf.gather(table, ids), axis=1) + tf.reduce_sum(table)
    assert find_tables(graph, [out.name]) == {}
