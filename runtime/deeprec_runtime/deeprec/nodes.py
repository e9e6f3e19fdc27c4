"""Small NodeDef builders for the ops the rewrite adds (attrs the registry defaults are left out;
the import fills them in)."""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import attr_value_pb2, node_def_pb2, tensor_shape_pb2, types_pb2
from tensorflow.python.framework import tensor_util

INT64 = types_pb2.DT_INT64
INT32 = types_pb2.DT_INT32
FLOAT = types_pb2.DT_FLOAT
BOOL = types_pb2.DT_BOOL


def shape(dims) -> attr_value_pb2.AttrValue:
    proto = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d)
                                                   for d in dims])
    return attr_value_pb2.AttrValue(shape=proto)


def dtype(value: int) -> attr_value_pb2.AttrValue:
    return attr_value_pb2.AttrValue(type=value)


def int_attr(value: int) -> attr_value_pb2.AttrValue:
    return attr_value_pb2.AttrValue(i=value)


def node(name: str, op: str, inputs=(), **attrs: attr_value_pb2.AttrValue) -> node_def_pb2.NodeDef:
    out = node_def_pb2.NodeDef(name=name, op=op, input=list(inputs))
    for key, value in attrs.items():
        out.attr[key].CopyFrom(value)
    return out


def const(name: str, value, np_dtype) -> node_def_pb2.NodeDef:
    array = np.asarray(value, dtype=np_dtype)
    proto = tensor_util.make_tensor_proto(array)
    return node(name, "Const", dtype=dtype(proto.dtype),
                value=attr_value_pb2.AttrValue(tensor=proto))


def variable(name: str, value_dtype: int, dims) -> node_def_pb2.NodeDef:
    """A resource variable handle whose storage the runtime assigns (shared by its own name)."""
    return node(name, "VarHandleOp", dtype=dtype(value_dtype), shape=shape(dims),
                shared_name=attr_value_pb2.AttrValue(s=name.encode()))


def hash_table(name: str, op: str = "MutableHashTableV2") -> node_def_pb2.NodeDef:
    """int64 key -> int64 row: a stock MutableHashTableV2 (no reserved keys, and a lookup takes
    a default per key), or the EV op library's DeepRecKeyIndex (the same lookup-table contract,
    laid out for the cache; it refuses only INT64_MIN as a key)."""
    return node(name, op, key_dtype=dtype(INT64), value_dtype=dtype(INT64),
                shared_name=attr_value_pb2.AttrValue(s=name.encode()))
