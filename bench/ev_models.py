"""The demo Wide&Deep model as DeepRec would export it with EmbeddingVariables, for ev_bench.py.

`to_deeprec(art, out_dir, keys)` rewrites the demo's SavedModel so that `embedding` and
`wide_embedding` are EVs (KvVarHandleOp + InitializeKvVariableV2Op, gathers turned into
KvResourceGather under the same names) and its full checkpoint into DeepRec's EV tensors
(`-keys`, `-values`, empty `-freqs`/`-versions`, ...), row i of each table stored under key
`keys[i]`. Requests then send keys where the dense model takes row numbers, and both models give
the same answers.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, node_def_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import tensor_util

TABLES = ("embedding", "wide_embedding")


def _node(name, op, inputs=(), **attrs) -> node_def_pb2.NodeDef:
    n = node_def_pb2.NodeDef(name=name, op=op, input=list(inputs))
    for k, v in attrs.items():
        n.attr[k].CopyFrom(v)
    return n


def _type(t):
    return attr_value_pb2.AttrValue(type=t)


def _shape(dims):
    return attr_value_pb2.AttrValue(shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))


def _const(name, value):
    proto = tensor_util.make_tensor_proto(np.asarray(value))
    return _node(name, "Const", dtype=_type(proto.dtype), value=attr_value_pb2.AttrValue(tensor=proto))


def _ev(name: str, dim: int) -> list[node_def_pb2.NodeDef]:
    return [
        _node(name, "KvVarHandleOp", dtype=_type(types_pb2.DT_FLOAT), shape=_shape([dim]),
              Tkeys=_type(types_pb2.DT_INT64),
              shared_name=attr_value_pb2.AttrValue(s=name.encode())),
        _const(f"{name}/ev_init_value", np.zeros([64, dim], np.float32)),
        _const(f"{name}/ev_empty_key", np.int64(-1)),
        _node(f"{name}/ev_init", "InitializeKvVariableV2Op",
              [name, name, f"{name}/ev_init_value", f"{name}/ev_empty_key"],
              dtype=_type(types_pb2.DT_FLOAT), Tkeys=_type(types_pb2.DT_INT64),
              shape=_shape([dim]), counter_type=_type(types_pb2.DT_INT64),
              default_value_dim=attr_value_pb2.AttrValue(i=64)),
    ]


def export_with_evs(saved_model_dir: str, out_dir: str, dims: dict[str, int]) -> None:
    model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as fh:
        model.ParseFromString(fh.read())
    meta = model.meta_graphs[0]
    graph = meta.graph_def
    kept = []
    for n in graph.node:
        if n.name in TABLES:
            continue  # the dense VariableV2 becomes the EV handle of the same name
        if n.op == "ResourceGather" and n.input[0] in TABLES and n.name in ("Gather", "Gather_1"):
            table = n.input[0]
            kept.append(_node(n.name, "KvResourceGather", [table, n.input[1], "ev_default"],
                              dtype=_type(types_pb2.DT_FLOAT), Tkeys=_type(types_pb2.DT_INT64),
                              is_inference=attr_value_pb2.AttrValue(b=True)))
            continue
        kept.append(n)
    del graph.node[:]
    graph.node.extend(kept)
    graph.node.append(_const("ev_default", np.float32(1.0)))
    for name, dim in dims.items():
        graph.node.extend(_ev(name, dim))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "saved_model.pb"), "wb") as fh:
        fh.write(model.SerializeToString())


def bucketed(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in DeepRec's order (bucket key % 1000 first) and the [1001] offsets."""
    order = np.argsort(keys % 1000, kind="stable")
    counts = np.bincount(keys % 1000, minlength=1000)
    return order, np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)


def ev_tensors(name: str, keys: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]:
    order, offsets = bucketed(keys)
    empty = np.zeros([0], np.int64)
    return {f"{name}-keys": keys[order], f"{name}-values": values[order],
            f"{name}-freqs": empty, f"{name}-versions": empty, f"{name}-keys_filtered": empty,
            f"{name}-freqs_filtered": empty, f"{name}-versions_filtered": empty,
            f"{name}-partition_offset": offsets,
            f"{name}-partition_filter_offset": np.zeros(1001, np.int32)}


def save(prefix: str, tensors: dict[str, np.ndarray]) -> None:
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tensors[n] for n in names])
    folder = os.path.dirname(prefix)
    base = os.path.basename(prefix)
    if ".incremental_checkpoint" not in folder:
        with open(os.path.join(folder, "checkpoint"), "w") as fh:
            fh.write(f'model_checkpoint_path: "{base}"\nall_model_checkpoint_paths: "{base}"\n')


def full_checkpoint(dense_prefix: str, ev_prefix: str, keys: np.ndarray) -> dict[str, np.ndarray]:
    """The dense checkpoint rewritten with the tables as EVs; returns the dense tensors."""
    reader = tf.train.load_checkpoint(dense_prefix)
    tensors = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
    out = {n: v for n, v in tensors.items() if n not in TABLES}
    for name in TABLES:
        out.update(ev_tensors(name, keys, tensors[name]))
    save(ev_prefix, out)
    return tensors


def delta(prefix: str, dense: dict[str, np.ndarray], rows: dict[str, tuple[np.ndarray, np.ndarray]]):
    """A DeepRec incremental checkpoint: EV rows (keys, values) and dense variables whole."""
    out = {n: v for n, v in dense.items() if n not in TABLES}
    for name, (keys, values) in rows.items():
        order, offsets = bucketed(keys)
        out[f"{name}-sparse_incr_keys"] = keys[order]
        out[f"{name}-sparse_incr_values"] = values[order]
        out[f"{name}-sparse_incr_versions"] = np.zeros(keys.shape, np.int64)
        out[f"{name}-sparse_incr_freqs"] = np.ones(keys.shape, np.int64)
        out[f"{name}-incr_partition_offset"] = offsets
    save(prefix, out)
