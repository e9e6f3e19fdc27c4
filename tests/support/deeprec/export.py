"""Hand-built DeepRec exports: the serving SavedModel a DeepRec training job leaves, made with
stock TensorFlow from what DeepRec's source says (op names and attrs, initialisers of both
releases, save / restore / incremental-save subgraphs, a stripped op list carrying the Kv OpDefs,
`incr_saver_def` as MetaGraphDef field 8, `is_embedding_var` as VariableDef field 91).

The model (`build_export`): four EmbeddingVariables and a small dense layer.
- `user_emb` dim 4, int64 keys, no filter, default_value_dim 5: `KvResourceGather` on the ids
  as a [batch, 1] matrix.
- `item_emb` dim 6, 3 parts, filter_freq 3, default_value_no_permission 0.5: DeepRec's
  `embedding_lookup_sparse` (UniqueWithCounts, `ids % 1000 % 3` DynamicPartition, one
  `KvResourceGatherV1` per part with the counts, ParallelDynamicStitch, SparseSegmentMean over
  the 3 ids of each example).
- `tag_emb` dim 3, int32 keys, default_value_dim left at its (stripped) default 4096: Unique +
  `KvResourceGather` + gather back.
- `ctx_emb` dim 2, `is_use_default_value_tensor`: the `dense` input is each id's default row.
- `probability = sigmoid(concat(user, item, tag, ctx, dense) @ dnn/w + dnn/b)`, with `dnn/w` a
  partitioned ref variable (2 parts) and `dnn/b` a resource variable.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import (
    attr_value_pb2,
    graph_pb2,
    node_def_pb2,
    tensor_shape_pb2,
    types_pb2,
    variable_pb2,
)
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2, saver_pb2
from tensorflow.python.framework import op_def_registry, tensor_util

from tests.support.deeprec.opdefs import deeprec_op_defs

tf1 = tf.compat.v1
ITEMS_PER_EXAMPLE = 3
DENSE_WIDTH = 2


@dataclass(frozen=True)
class EVSpec:
    name: str
    dim: int
    parts: int = 1
    key_dtype: int = types_pb2.DT_INT64
    filter_freq: int = 0
    default_value_dim: int = 4096
    no_permission: float = 0.0
    default_tensor: bool = False

    def part_names(self) -> list[str]:
        return [self.name] if self.parts == 1 else [f"{self.name}/part_{k}" for k in range(self.parts)]

    def part_of(self, key: int) -> int:
        return (key % 1000) % self.parts  # Python's %, as DeepRec's graph routes (FloorMod)


SPECS = {
    "user_emb": EVSpec("user_emb", 4, default_value_dim=5),
    "item_emb": EVSpec("item_emb", 6, parts=3, filter_freq=3, no_permission=0.5),
    "tag_emb": EVSpec("tag_emb", 3, key_dtype=types_pb2.DT_INT32),
    "ctx_emb": EVSpec("ctx_emb", 2, default_tensor=True),
}
WIDTH = sum(s.dim for s in SPECS.values()) + DENSE_WIDTH


def initial_value(spec: EVSpec, part: int) -> np.ndarray:
    """The EV part's initial value ([default_value_dim, dim]): distinct per part and row."""
    rows = np.arange(spec.default_value_dim, dtype=np.float32)[:, None]
    cols = np.arange(spec.dim, dtype=np.float32)[None, :]
    return (0.001 * rows + 0.01 * cols + 0.1 * (part + 1)).astype(np.float32)


@dataclass
class Export:
    """What the builder made, for tests that check the loader against it."""

    release: str
    specs: dict[str, EVSpec]
    dense_names: tuple[str, ...] = ("dnn/w", "dnn/b")
    signature_inputs: tuple[str, ...] = ("user_ids", "item_ids", "tag_ids", "ctx_ids", "dense")
    outputs: tuple[str, ...] = ("probability", "user_vec", "item_vec", "tag_vec", "ctx_vec")
    nodes: dict[str, str] = field(default_factory=dict)


def _attr(value) -> attr_value_pb2.AttrValue:
    if isinstance(value, attr_value_pb2.AttrValue):
        return value
    if isinstance(value, bool):
        return attr_value_pb2.AttrValue(b=value)
    if isinstance(value, int):
        return attr_value_pb2.AttrValue(i=value)
    if isinstance(value, float):
        return attr_value_pb2.AttrValue(f=value)
    if isinstance(value, str):
        return attr_value_pb2.AttrValue(s=value.encode())
    raise TypeError(value)


def _type(t: int) -> attr_value_pb2.AttrValue:
    return attr_value_pb2.AttrValue(type=t)


def _shape(dims) -> attr_value_pb2.AttrValue:
    return attr_value_pb2.AttrValue(shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))


def _node(name, op, inputs=(), **attrs) -> node_def_pb2.NodeDef:
    n = node_def_pb2.NodeDef(name=name, op=op, input=list(inputs))
    for k, v in attrs.items():
        n.attr[k].CopyFrom(_attr(v))
    return n


def _const(name, value) -> node_def_pb2.NodeDef:
    proto = tensor_util.make_tensor_proto(np.asarray(value))
    return _node(name, "Const", dtype=_type(proto.dtype),
                 value=attr_value_pb2.AttrValue(tensor=proto))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _with_field(message_bytes: bytes, number: int, payload: bytes | int) -> bytes:
    """Appends a field stock protobuf does not know (DeepRec's extra proto fields)."""
    if isinstance(payload, int):
        return message_bytes + _varint(number << 3) + _varint(payload)
    return message_bytes + _varint((number << 3) | 2) + _varint(len(payload)) + payload


class _Stock:
    """The stock part of the graph, built with TensorFlow's Python API; each EV gather is a
    placeholder stand-in, turned into the Kv op afterwards."""

    def __init__(self, specs: dict[str, EVSpec]):
        self.standins: dict[str, tuple[str, list[str], dict]] = {}
        self.graph = tf.Graph()
        with self.graph.as_default():
            self._build(specs)

    def standin(self, name: str, spec: EVSpec, part: str, op: str, ids, default, counts=None):
        t = tf1.placeholder(tf.float32, [None] * ids.shape.rank + [spec.dim], name=name)
        assert t.op.name == name, t.op.name
        inputs = [part, ids.name, default.name] + ([counts.name] if counts is not None else [])
        attrs = {"dtype": _type(types_pb2.DT_FLOAT), "Tkeys": _type(spec.key_dtype),
                 "is_inference": True, "is_use_default_value_tensor": spec.default_tensor}
        if counts is not None:
            attrs["counts_type"] = _type(types_pb2.DT_INT32)
        self.standins[name] = (op, inputs, attrs)
        return t

    def _build(self, specs: dict[str, EVSpec]) -> None:
        user_ids = tf1.placeholder(tf.int64, [None], name="user_ids")
        item_ids = tf1.placeholder(tf.int64, [None, ITEMS_PER_EXAMPLE], name="item_ids")
        tag_ids = tf1.placeholder(tf.int32, [None], name="tag_ids")
        ctx_ids = tf1.placeholder(tf.int64, [None], name="ctx_ids")
        dense = tf1.placeholder(tf.float32, [None, DENSE_WIDTH], name="dense")

        one = tf.constant(1.0, name="user_lookup/default")
        user = specs["user_emb"]
        # ids of shape [batch, 1], as DeepRec's sparse_read receives unflattened ids.
        user_rows = self.standin("user_lookup/Gather", user, "user_emb", "KvResourceGather",
                                 tf.expand_dims(user_ids, 1, name="user_lookup/ids"), one)
        tf.reshape(user_rows, [-1, user.dim], name="user_vec")

        item = specs["item_emb"]
        flat = tf.reshape(item_ids, [-1], name="item_lookup/flat")
        seg = tf.cast(tf.range(tf.size(flat)) // ITEMS_PER_EXAMPLE, tf.int32,
                      name="item_lookup/segment_ids")
        uniq, idx, counts = tf.raw_ops.UniqueWithCounts(x=flat, out_idx=tf.int32,
                                                        name="item_lookup/UniqueWithCounts")
        assign = tf.cast(tf.math.floormod(tf.math.floormod(uniq, 1000), item.parts), tf.int32,
                         name="item_lookup/p_assignments")
        part_ids = tf.dynamic_partition(uniq, assign, item.parts, name="item_lookup/ids")
        positions = tf.dynamic_partition(tf.range(tf.size(uniq)), assign, item.parts,
                                         name="item_lookup/positions")
        default = tf.constant(1.0, name="item_lookup/default")
        found = []
        for k, part in enumerate(item.part_names()):
            rows = self.standin(f"item_lookup/part_{k}/Gather", item, part,
                                "KvResourceGatherV1", part_ids[k], default, counts)
            found.append(tf.identity(rows, name=f"item_lookup/part_{k}/Identity"))
        stitched = tf.raw_ops.ParallelDynamicStitch(indices=positions, data=found,
                                                    name="item_lookup/stitch")
        emb = tf.reshape(stitched, [-1, item.dim], name="item_lookup/emb")
        tf.identity(tf.sparse.segment_mean(emb, idx, seg), name="item_vec")

        tag = specs["tag_emb"]
        tag_uniq, tag_idx = tf.unique(tag_ids, name="tag_lookup/Unique")
        tag_rows = self.standin("tag_lookup/Gather", tag, "tag_emb", "KvResourceGather",
                                tag_uniq, tf.constant(1.0, name="tag_lookup/default"))
        tf.identity(tf.gather(tag_rows, tag_idx), name="tag_vec")

        ctx = specs["ctx_emb"]
        ctx_rows = self.standin("ctx_lookup/Gather", ctx, "ctx_emb", "KvResourceGather", ctx_ids,
                                dense)
        tf.identity(ctx_rows, name="ctx_vec")

        x = tf.concat([self.graph.get_tensor_by_name(f"{n}:0") for n in
                       ("user_vec", "item_vec", "tag_vec", "ctx_vec")] + [dense], 1, name="dnn/x")
        w = tf1.get_variable("dnn/w", [WIDTH, 1], initializer=tf1.zeros_initializer(),
                             partitioner=tf1.fixed_size_partitioner(2), use_resource=False)
        b = tf1.get_variable("dnn/b", [1], initializer=tf1.zeros_initializer(), use_resource=True)
        tf.sigmoid(tf.matmul(x, w) + b, name="probability")
        tf1.train.get_or_create_global_step()
        self.dense_saver = tf1.train.Saver([*list(w), b], sharded=False)
        tf1.tables_initializer()
        self.variable_defs = [v.to_proto() for v in tf1.global_variables()]


def _ev_nodes(spec: EVSpec, release: str, overrides: dict) -> list[node_def_pb2.NodeDef]:
    """Handle, initial value and initialiser(s) of every part, as each release emits them."""
    out = []
    key_np = np.int64 if spec.key_dtype == types_pb2.DT_INT64 else np.int32
    settings = {"filter_freq": spec.filter_freq, "default_value_dim": spec.default_value_dim,
                "default_value_no_permission": spec.no_permission, "storage_type": 0,
                "block_num": 1, **overrides}
    common = {"Tkeys": _type(spec.key_dtype), "dtype": _type(types_pb2.DT_FLOAT),
              "shape": _shape([spec.dim]), "counter_type": _type(types_pb2.DT_INT64),
              "initial_num_buckets": 131072, "steps_to_live": 0, "ht_partition_num": 1000,
              "layout": "", "slot_num": 0}
    for k, part in enumerate(spec.part_names()):
        out.append(_node(part, "KvVarHandleOp", Tkeys=_type(spec.key_dtype), shape=_shape([spec.dim]),
                         dtype=_type(types_pb2.DT_FLOAT), shared_name=part, container=""))
        out.append(_const(f"{part}/Initializer/initial_value", initial_value(spec, k)))
        # A small subgraph between the constant and the initialiser, evaluated once at load.
        out.append(_node(f"{part}/Initializer/value", "Identity",
                         [f"{part}/Initializer/initial_value"], T=_type(types_pb2.DT_FLOAT)))
        out.append(_const(f"{part}/empty_key", np.array(-1, key_np)))
        inputs = [part, part, f"{part}/Initializer/value", f"{part}/empty_key"]
        if release == "new":
            out.append(_node(f"{part}/Assign", "InitializeKvVariableV2Op", inputs,
                             **common, **settings))
            # The restore-time initialiser (initial_num_buckets 0) must not be the one read: its
            # initial value here is zeros, so reading it would change every default row.
            out.append(_const(f"{part}/Assign/zeros",
                              np.zeros([spec.default_value_dim, spec.dim], np.float32)))
            restore_inputs = [part, part, f"{part}/Assign/zeros", f"{part}/empty_key"]
            out.append(_node(f"{part}/Assign/InitializeKvVariableV2Op", "InitializeKvVariableV2Op",
                             restore_inputs, **{**common, "initial_num_buckets": 0}, **settings))
        else:
            # Older releases: settings in a JSON string, the node's own attrs at their defaults.
            out.append(_node(f"{part}/Assign", "InitializeKvVariableOp", inputs, **common,
                             attr_json_str=json.dumps({"embedding_variable": settings})))
        out.append(_node(f"{part}/IsInitialized/KvVarIsInitializedOp", "KvVarIsInitializedOp",
                         [part], Tkeys=_type(spec.key_dtype), dtype=_type(types_pb2.DT_FLOAT)))
    return out


def _save_restore(gd: graph_pb2.GraphDef, specs: dict[str, EVSpec], release: str) -> None:
    """Adds the EVs to the dense saver's SaveV2 and restore_all, as DeepRec's saver does."""
    by_name = {n.name: n for n in gd.node}
    save = by_name["save/SaveV2"]
    names_node, slices_node = by_name[save.input[1]], by_name[save.input[2]]
    parts = [(spec, k, part) for spec in specs.values() for k, part in enumerate(spec.part_names())]
    names = [x.decode() for x in tensor_util.MakeNdarray(names_node.attr["value"].tensor)]
    for node, values in ((names_node, names + [p for _, _, p in parts]),
                         (slices_node, [""] * (len(names) + len(parts)))):
        node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(np.array(values, object)))
    save.input.extend(p for _, _, p in parts)
    save.attr["dtypes"].list.type.extend([types_pb2.DT_RESOURCE] * len(parts))
    save.attr["has_ev"].b = True
    if release == "new":
        save.attr["ev_key_types"].list.type.extend(s.key_dtype for s, _, _ in parts)
    restore_all = by_name["save/restore_all"]
    for i, (spec, k, part) in enumerate(parts):
        names_const = _const(f"save/KvImport_{i}/tensor_names", np.array(part.encode(), object))
        gd.node.append(names_const)
        attrs = {"shape": _shape([spec.dim]), "Tkeys": _type(spec.key_dtype),
                 "dtype": _type(types_pb2.DT_FLOAT), "partition_id": k,
                 "partition_num": spec.parts}
        if release == "new":
            node = _node(f"save/KvResourceImportV3_{i}", "KvResourceImportV3",
                         ["save/Const", part, names_const.name, f"{part}/empty_key"], **attrs)
        else:
            node = _node(f"save/KvResourceImportV2_{i}", "KvResourceImportV2",
                         ["save/Const", part, part, f"{part}/Initializer/value", names_const.name,
                          f"{part}/empty_key"], **attrs, counter_type=_type(types_pb2.DT_INT64),
                         attr_json_str=json.dumps({"filter_freq": spec.filter_freq}))
        gd.node.append(node)
        restore_all.input.append("^" + node.name)


def _incremental(gd: graph_pb2.GraphDef, specs: dict[str, EVSpec]) -> saver_pb2.SaverDef:
    """DeepRec's incremental saver subgraph: IncrSave over EVs and dense variables, and its
    restore (IncrRestore for dense, KvResourceIncrImport per EV part)."""
    parts = [(spec, part) for spec in specs.values() for part in spec.part_names()]
    dense = ["dnn/w/part_0", "dnn/w/part_1", "dnn/b"]
    names = [p for _, p in parts] + dense
    gd.node.extend([
        _const("incr_save/Const", np.array(b"model", object)),
        _const("incr_save/tensor_names", np.array([n.encode() for n in names], object)),
        _const("incr_save/shape_and_slices", np.array([b""] * len(names), object)),
        _const("incr_save/is_sparse", np.array([True] * len(parts) + [False] * len(dense))),
        _node("incr_save/IncrSave", "IncrSave",
              ["incr_save/Const", "incr_save/tensor_names", "incr_save/shape_and_slices",
               "incr_save/is_sparse"] + names,
              dtypes=attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(
                  type=[types_pb2.DT_RESOURCE] * len(parts)
                  + [types_pb2.DT_FLOAT_REF] * 2 + [types_pb2.DT_RESOURCE]))),
        _node("incr_save/control_dependency", "Identity", ["incr_save/Const", "^incr_save/IncrSave"],
              T=_type(types_pb2.DT_STRING)),
        _const("incr_save/ActivateSparseRecorder/names",
               np.array([p.encode() for _, p in parts], object)),
        _node("incr_save/ActivateSparseRecorder", "ActivateSparseRecorder",
              ["incr_save/ActivateSparseRecorder/names"]),
    ])
    restore = _node("incr_save/restore_all", "NoOp")
    for i, (spec, part) in enumerate(parts):
        names_const = _const(f"incr_save/KvIncrImport_{i}/name", np.array(part.encode(), object))
        gd.node.append(names_const)
        gd.node.append(_node(f"incr_save/KvResourceIncrImport_{i}", "KvResourceIncrImport",
                             ["incr_save/Const", part, names_const.name, f"{part}/empty_key",
                              f"{part}/Initializer/value"], Tkeys=_type(spec.key_dtype),
                             dtype=_type(types_pb2.DT_FLOAT)))
        restore.input.append(f"^incr_save/KvResourceIncrImport_{i}")
    gd.node.append(restore)
    return saver_pb2.SaverDef(filename_tensor_name="incr_save/Const:0",
                              save_tensor_name="incr_save/control_dependency:0",
                              restore_op_name="incr_save/restore_all",
                              version=saver_pb2.SaverDef.V2)


def _make_unsupported(gd: graph_pb2.GraphDef) -> None:
    """Turns the user lookup into DeepRec's optimized two-step lookup (ids -> pointers -> rows)."""
    for n in gd.node:
        if n.name == "user_lookup/Gather":
            handle, ids, default = n.input[:3]
            pointer = _node("user_lookup/LookupID", "_OPT_KvResourceLookupID", [handle, ids],
                            dtype=_type(types_pb2.DT_FLOAT), Tkeys=_type(types_pb2.DT_INT64))
            n.op = "_OPT_KvResourceCollectEmbedding"
            del n.input[:]
            n.input.extend([handle, ids, "user_lookup/LookupID", default])
            for key in ("is_inference",):
                del n.attr[key]
            gd.node.append(pointer)
            return


def _op_defs_for(gd: graph_pb2.GraphDef) -> dict:
    ours = deeprec_op_defs()
    out = {}
    for n in gd.node:
        if n.op not in out:
            out[n.op] = ours.get(n.op) or op_def_registry.get(n.op)
    return out


def _strip_defaults(gd: graph_pb2.GraphDef, op_defs: dict) -> None:
    """What `strip_default_attrs=True` does at export: attrs equal to their default are left out."""
    for n in gd.node:
        op_def = op_defs[n.op]
        for a in op_def.attr:
            if a.HasField("default_value") and a.name in n.attr and n.attr[a.name] == a.default_value:
                del n.attr[a.name]


def _tensor_info(graph: tf.Graph, name: str) -> meta_graph_pb2.TensorInfo:
    t = graph.get_tensor_by_name(name + ":0")
    return meta_graph_pb2.TensorInfo(name=t.name, dtype=t.dtype.as_datatype_enum,
                                     tensor_shape=t.shape.as_proto())


def build_export(path: str, release: str = "new", strip_defaults: bool = True,
                 unsupported: bool = False, init_overrides: dict | None = None,
                 handle_overrides: dict | None = None) -> Export:
    """Writes `path/saved_model.pb` as DeepRec would export this model (no variables/)."""
    specs = dict(SPECS)
    stock = _Stock(specs)
    gd = stock.graph.as_graph_def()
    del gd.node[:]
    for n in stock.graph.as_graph_def().node:
        if n.name in stock.standins:
            op, inputs, attrs = stock.standins[n.name]
            kv = _node(n.name, op, inputs, **attrs)
            kv.attr["_class"].list.s.append(f"loc:@{inputs[0]}".encode())
            gd.node.append(kv)
        else:
            gd.node.append(n)
    for spec in specs.values():
        nodes = _ev_nodes(spec, release, (init_overrides or {}).get(spec.name, {}))
        for node in nodes:
            if node.op == "KvVarHandleOp":
                for k, v in (handle_overrides or {}).get(spec.name, {}).items():
                    node.attr[k].CopyFrom(_type(v) if k in ("Tkeys", "dtype") else _attr(v))
        gd.node.extend(nodes)
    _save_restore(gd, specs, release)
    incr = _incremental(gd, specs)
    gd.node.append(_node("legacy_init_op", "NoOp", ["^init_all_tables", "^user_emb/Assign"]))
    if unsupported:
        _make_unsupported(gd)
    op_defs = _op_defs_for(gd)
    if strip_defaults:
        _strip_defaults(gd, op_defs)

    meta = meta_graph_pb2.MetaGraphDef()
    meta.meta_info_def.tags.append("serve")
    meta.meta_info_def.tensorflow_version = "1.15.5"
    meta.meta_info_def.stripped_default_attrs = strip_defaults
    meta.meta_info_def.stripped_op_list.op.extend(op_defs[k] for k in sorted(op_defs))
    meta.graph_def.CopyFrom(gd)
    meta.saver_def.CopyFrom(stock.dense_saver.saver_def)
    variables = meta.collection_def["variables"].bytes_list.value
    variables.extend(vd.SerializeToString() for vd in stock.variable_defs)
    for spec in specs.values():
        for part in spec.part_names():
            vd = variable_pb2.VariableDef(variable_name=f"{part}:0",
                                          initializer_name=f"{part}/Assign", is_resource=True,
                                          trainable=True)
            variables.append(_with_field(vd.SerializeToString(), 91, 1))
    meta.collection_def["legacy_init_op"].node_list.value.append("legacy_init_op")
    export = Export(release, specs)
    sig = meta.signature_def["serving_default"]
    sig.method_name = "tensorflow/serving/predict"
    for name in export.signature_inputs:
        sig.inputs[name].CopyFrom(_tensor_info(stock.graph, name))
    for name in export.outputs:
        sig.outputs[name].CopyFrom(_tensor_info(stock.graph, name))
    model = saved_model_pb2.SavedModel(saved_model_schema_version=1)
    raw_meta = _with_field(meta.SerializeToString(), 8, incr.SerializeToString())
    model.meta_graphs.add().ParseFromString(raw_meta)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "saved_model.pb"), "wb") as fh:
        fh.write(model.SerializeToString())
    return export
