"""Finds a SavedModel's embedding lookups in its serving graph.

An embedding table is a 2-D variable that the serving path (every op the signature outputs depend
on) reads only through row gathers on axis 0. For each such table this module reports the ids
tensor of every gather and the gather's output, so the runtime can look the ids up in a feature
store and feed the rows in place of the gather (feeding a tensor prunes the ops that produce it, so
the variable is never read and need not be restored). Example, the Wide&Deep demo:
`embedding` [num_ids, 16] -> ids `sparse_ids:0`, output `Gather:0` (the input of the Identity
`embedding_lookup`). Variables read any other way (a matmul, a reduce) stay in the session.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

_VARIABLE_OPS = ("VarHandleOp", "VariableV2", "Variable")
# Ops that pass a ref variable through unchanged (TF1 ref variables are read via Identity).
_PASS_THROUGH = ("Identity", "ReadVariableOp")


@dataclass(frozen=True)
class Fallback:
    """What a DeepRec EmbeddingVariable lookup answers for an id with no row (deeprec/evs.py):
    `fill` (every element, default_value_no_permission), row `floormod(id, modulus)` of the EV
    part's initial value `part` (evaluated once per version), or row i of the tensor `tensor`
    (the gather's default_value input)."""

    fill: float | None = None
    part: str = ""
    modulus: int = 0
    tensor: str = ""


@dataclass(frozen=True)
class Lookup:
    """One gather of a table: the ids it reads and the tensor of gathered rows."""

    ids: str
    """Tensor name of the ids, e.g. "sparse_ids:0" (any integer dtype, any shape)."""
    output: str
    """Tensor name of the gathered rows, shape ids.shape + row_shape; fed with looked-up rows."""
    fallback: Fallback | None = None
    """For a keyed table: the row of an id the store does not hold."""


@dataclass(frozen=True)
class Table:
    """An embedding variable served from a feature store instead of the session."""

    name: str
    """Variable (and checkpoint) name, e.g. "embedding"."""
    rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype
    lookups: tuple[Lookup, ...]
    keyed: bool = False
    """A DeepRec EmbeddingVariable: rows are stored by key (any int64), `rows` is unknown (0),
    and an id the store does not hold takes its lookup's fallback instead of failing."""

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.rows, *self.row_shape)


def serving_ops(graph: tf.Graph, fetches: Iterable[str]) -> set[tf.Operation]:
    """Every op that the named tensors depend on (data and control inputs)."""
    stack = [graph.get_tensor_by_name(n).op for n in fetches]
    seen: set[tf.Operation] = set()
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return seen


def _axis_is_zero(op: tf.Operation) -> bool:
    if op.type == "ResourceGather":
        return op.get_attr("batch_dims") == 0
    if op.type == "Gather":  # the legacy op has no axis input
        return True
    axis = op.inputs[2].op  # GatherV2(params, indices, axis)
    if axis.type != "Const" or op.get_attr("batch_dims") != 0:
        return False
    return int(tf.make_ndarray(axis.get_attr("value"))) == 0


def _gathers_of(tensor: tf.Tensor, serving: set[tf.Operation]) -> list[tf.Operation] | None:
    """The gathers reading `tensor` (a variable handle or its value) on the serving path, or None
    when the serving path reads it any other way."""
    found = []
    for consumer in tensor.consumers():
        if consumer not in serving:
            continue  # training, saving and delta-writer ops are not served
        if consumer.type in ("ResourceGather", "GatherV2", "Gather") and consumer.inputs[0] is tensor:
            if not _axis_is_zero(consumer):
                return None
            found.append(consumer)
        elif consumer.type in _PASS_THROUGH:
            more = _gathers_of(consumer.outputs[0], serving)
            if more is None:
                return None
            found.extend(more)
        else:
            return None
    return found


def find_tables(graph: tf.Graph, fetches: Iterable[str]) -> dict[str, Table]:
    """The embedding tables read by the ops that `fetches` (signature outputs) depend on."""
    serving = serving_ops(graph, fetches)
    tables = {}
    for op in sorted(serving, key=lambda o: o.name):
        if op.type not in _VARIABLE_OPS:
            continue
        shape = tf.TensorShape(op.get_attr("shape"))
        if shape.rank != 2 or not shape.is_fully_defined():
            continue
        gathers = _gathers_of(op.outputs[0], serving)
        if not gathers:
            continue
        dtype = tf.dtypes.as_dtype(op.get_attr("dtype")).base_dtype
        lookups = tuple(sorted({Lookup(g.inputs[1].name, g.outputs[0].name) for g in gathers},
                               key=lambda lk: lk.output))
        tables[op.name] = Table(op.name, int(shape[0]), tuple(int(d) for d in shape[1:]),
                                np.dtype(dtype.as_numpy_dtype), lookups)
    return tables
