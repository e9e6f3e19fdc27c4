"""Reading DeepRec exports and rewriting their serving graphs for stock TensorFlow."""

from __future__ import annotations

import os

import pytest
from tensorflow.core.framework import types_pb2
from tensorflow.python.framework import op_def_registry

from deeprec_runtime.deeprec import evs, kernels
from deeprec_runtime.deeprec.loader import import_ev_graph
from deeprec_runtime.deeprec.rewrite import rewrite
from deeprec_runtime.deeprec.savedmodel import has_embedding_variables, load_exported
from deeprec_runtime.errors import VersionLoadError
from deeprec_runtime.model.session_group import CPU_DEVICE, place_graph
from tests.support.deeprec.export import SPECS, build_export

OUTPUTS = ["probability:0", "user_vec:0", "item_vec:0", "tag_vec:0", "ctx_vec:0"]


def _parts(path: str) -> dict[str, evs.EVPart]:
    return {lk.part.name: lk.part for lk in evs.find_lookups(load_exported(path), OUTPUTS)}


@pytest.mark.parametrize("release, strip", [("new", True), ("new", False), ("old", True),
                                            ("old", False)])
def test_ev_settings_are_read_from_either_release_with_or_without_stripped_defaults(
        tmp_path, release, strip):
    path = str(tmp_path / "sm")
    build_export(path, release=release, strip_defaults=strip)
    parts = _parts(path)
    assert sorted(parts) == ["ctx_emb", "item_emb/part_0", "item_emb/part_1", "item_emb/part_2",
                             "tag_emb", "user_emb"]
    for name, part in parts.items():
        spec = SPECS[part.base]
        assert (part.dim, part.key_dtype) == (spec.dim, spec.key_dtype), name
        assert part.filter_freq == spec.filter_freq, name
        # tag_emb's 4096 is the registered default: stripped exports carry it only in the op list.
        assert part.default_value_dim == spec.default_value_dim, name
        assert part.default_value_no_permission == spec.no_permission, name
        # The real initialiser, not the restore-time copy (initial_num_buckets 0, zeros input).
        assert part.initial_value == f"{name}/Initializer/value:0"
    rule = evs.INITIALIZER if release == "new" else evs.NO_PERMISSION
    assert parts["user_emb"].default_rule == rule
    assert parts["item_emb/part_1"].default_rule == evs.NO_PERMISSION  # filtered: always
    assert {p.base for p in parts.values() if p.base == "item_emb"} == {"item_emb"}


def test_deeprec_only_proto_fields_are_read(tmp_path):
    path = str(tmp_path / "sm")
    build_export(path)
    model = load_exported(path)
    assert model.incr_saver is not None
    assert model.incr_saver.restore_op_name == "incr_save/restore_all"
    marked = {vd.variable_name for vd, is_ev in model.variable_defs() if is_ev}
    assert marked == {"user_emb:0", "item_emb/part_0:0", "item_emb/part_1:0", "item_emb/part_2:0",
                      "tag_emb:0", "ctx_emb:0"}
    assert has_embedding_variables(path)
    assert "KvVarHandleOp" in model.op_defs  # the stripped op list carries DeepRec's OpDefs


@pytest.mark.parametrize("fused", [False, True], ids=["stock-ops", "ev-op-library"])
def test_rewritten_graph_has_only_known_ops_and_keeps_the_gather_names(tmp_path, fused):
    if fused:
        assert kernels.fused_lookups()  # the library builds wherever the tests run
    path = str(tmp_path / "sm")
    build_export(path, release="old")
    done = rewrite(load_exported(path), OUTPUTS, fused=fused)
    names = {n.name: n for n in done.graph_def.node}
    assert all(op_def_registry.get(n.op) is not None for n in done.graph_def.node)
    # Older releases answer default_value_no_permission even where the gather has a default
    # tensor (ctx): every lookup is a find + a gather under the gather's own name, or one fused
    # kernel reading the EV's values and index.
    for gather in ("user_lookup/Gather", "item_lookup/part_0/Gather", "tag_lookup/Gather",
                   "ctx_lookup/Gather"):
        node = names[gather]
        if fused:
            assert node.op == kernels.GATHER_OP
            assert [names[i].op for i in node.input[:2]] == ["VarHandleOp", kernels.INDEX_OP]
        else:
            assert node.op == "ResourceGather"
            assert names[node.input[1]].op == "LookupTableFindV2"
    # The no-permission row of item_emb's second part: one row, after the first part's.
    if fused:
        attr = names["item_lookup/part_1/Gather"].attr
        assert (attr["default_offset"].i, attr["default_rows"].i, attr["dim"].i) == (
            1, 1, SPECS["item_emb"].dim)
    newer = str(tmp_path / "newer")
    build_export(newer)
    newer_nodes = {n.name: n for n in rewrite(load_exported(newer), OUTPUTS,
                                              fused=fused).graph_def.node}
    assert newer_nodes["ctx_lookup/Gather"].op == "SelectV2"  # the default tensor per position
    assert not any(n.startswith(("save/", "incr_save/")) for n in names)
    assert "user_emb" not in names and "item_emb/part_2" not in names
    # The three parts of item_emb share one table; dense variables keep their defs.
    assert sorted(done.tables) == ["ctx_emb", "item_emb", "tag_emb", "user_emb"]
    assert len(done.tables["item_emb"].parts) == 3
    assert sorted(v.variable_name for v in done.dense) == ["dnn/b:0", "dnn/w/part_0:0",
                                                           "dnn/w/part_1:0"]
    # legacy_init_op kept, its control edge to the EV initialiser cut.
    assert done.main_op == "legacy_init_op"
    assert names["legacy_init_op"].input == ["^init_all_tables"]


def test_import_gives_a_graph_with_signature_tensors_and_ev_ops(tmp_path):
    path = str(tmp_path / "sm")
    build_export(path)
    graph, meta, variables, ev = import_ev_graph(path)
    for name in ("user_ids:0", "item_ids:0", "dense:0", "probability:0", "item_vec:0"):
        graph.get_tensor_by_name(name)
    assert sorted(t.base for t in ev.tables) == ["ctx_emb", "item_emb", "tag_emb", "user_emb"]
    # Default rows at the head of each EV's values: initial values where unseen ids take them,
    # one no-permission row per filtered part, none where the gather's own default tensor is
    # used (ctx_emb).
    blocks = {t.base: [(b.part.name, b.offset, b.rows, b.initial_value is not None)
                       for b in t.blocks] for t in ev.tables}
    assert blocks == {
        "user_emb": [("user_emb", 0, 5, True)],
        "tag_emb": [("tag_emb", 0, 4096, True)],
        "item_emb": [("item_emb/part_0", 0, 1, False), ("item_emb/part_1", 1, 1, False),
                     ("item_emb/part_2", 2, 1, False)],
        "ctx_emb": []}
    assert ev.dense["dnn/w/part_1"].key == "dnn/w"
    assert ev.dense["dnn/w/part_1"].slice_spec.startswith("17 1 9,8")
    assert sorted(v.op.name for v in variables) == ["dnn/b", "dnn/w/part_0", "dnn/w/part_1"]


@pytest.mark.parametrize("kwargs, words", [
    ({"unsupported": True},
     ["_OPT_KvResourceCollectEmbedding (node user_lookup/Gather", "optimized two-step EV lookup",
      "_OPT_KvResourceLookupID (node user_lookup/LookupID"]),
    ({"init_overrides": {"item_emb": {"storage_type": 12}}},
     ["item_emb/part_0", "storage_type 12", "multi-tier"]),
    ({"init_overrides": {"user_emb": {"block_num": 2}}}, ["user_emb", "block_num 2"]),
    ({"handle_overrides": {"tag_emb": {"Tkeys": types_pb2.DT_STRING}}},
     ["tag_emb", "DT_STRING keys"]),
])
def test_what_cannot_be_served_is_refused_naming_it(tmp_path, kwargs, words):
    path = str(tmp_path / "sm")
    build_export(path, **kwargs)
    with pytest.raises(VersionLoadError) as err:
        import_ev_graph(path)
    for word in words:
        assert word in str(err.value)


def test_a_lookup_whose_ev_has_no_initialiser_is_refused(tmp_path):
    path = str(tmp_path / "sm")
    build_export(path)
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as fh:
        model.ParseFromString(fh.read())
    graph = model.meta_graphs[0].graph_def
    keep = [n for n in graph.node if not (n.name.startswith("ctx_emb/") and "Assign" in n.name)]
    del graph.node[:]
    graph.node.extend(keep)
    with open(os.path.join(path, "saved_model.pb"), "wb") as fh:
        fh.write(model.SerializeToString())
    with pytest.raises(VersionLoadError, match="'ctx_emb' .* has no InitializeKvVariableOp"):
        import_ev_graph(path)


def test_ev_kernels_and_their_tables_stay_on_the_cpu_when_the_model_is_placed_on_a_gpu(tmp_path):
    """The EV op library has CPU kernels only: with every other op on a lane's GPU, the fused
    gathers, the tables they read and the ops that fill those tables are placed on the CPU."""
    assert kernels.fused_lookups()
    path = str(tmp_path / "sm")
    build_export(path)
    placed: dict[str, str] = {}
    graph, _, _, _ = import_ev_graph(
        path, lambda g: placed.update(place_graph(g, "/device:GPU:1", embeddings_on_cpu=False)))
    fused = [op for op in graph.get_operations() if op.type == kernels.GATHER_OP]
    assert fused
    for op in fused:
        assert placed[op.name] == CPU_DEVICE
        assert [placed[t.op.name] for t in op.inputs[:2]] == [CPU_DEVICE, CPU_DEVICE]
    assert any(d == "/device:GPU:1" for d in placed.values())
