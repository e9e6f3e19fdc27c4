"""A model with two unknown dimensions (history / sequence features, the shape of issue 17's
overflow), and requests for it written at the protobuf wire level, so that tests can send what
no protobuf library would write: overlong varints, wrong wire types, lengths off by a few bytes,
empty fields proto3 omits.

Model `serving_default`: history int64 [-1, -1], weights float [-1, -1], bias float (unknown rank)
-> score float [batch] and rows int32 [batch], the number of rows the model ran on (with
batching: the merged and padded batch), repeated per row.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1

# DeepRec ArrayDataType / TensorFlow DataType numbers.
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT64 = 1, 2, 3, 9
DEEPREC, TFS = "deeprec", "tfs"


def write_sequence_model(path: str) -> None:
    graph = tf.Graph()
    with graph.as_default():
        history = tf1.placeholder(tf.int64, [None, None], name="history")
        weights = tf1.placeholder(tf.float32, [None, None], name="weights")
        bias = tf1.placeholder(tf.float32, None, name="bias")
        scale = tf1.get_variable("scale", initializer=tf.constant(0.5))
        batch = tf.shape(history)[0]
        per_row_bias = tf.reduce_sum(tf.reshape(bias, [batch, -1]), axis=1)
        score = tf.identity(tf.reduce_sum(weights, axis=1) * scale
                            + tf.cast(tf.reduce_sum(history, axis=1), tf.float32) * 0.001
                            + per_row_bias, name="score")
        rows = tf.fill([batch], batch, name="rows")
        session = tf1.Session(graph=graph)
        session.run(tf1.global_variables_initializer())
        builder = tf1.saved_model.Builder(path)
        signature = tf1.saved_model.signature_def_utils.predict_signature_def(
            {"history": history, "weights": weights, "bias": bias}, {"score": score, "rows": rows})
        builder.add_meta_graph_and_variables(session, ["serve"], saver=tf1.train.Saver(),
                                             signature_def_map={"serving_default": signature})
        builder.save()
        session.close()


def feed(rows: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"history": rng.integers(0, 1000, (rows, length)).astype(np.int64),
            "weights": rng.random((rows, length), dtype=np.float32),
            "bias": rng.random(rows, dtype=np.float32)}


# --- protobuf wire format ---------------------------------------------------------------------
def varint(n: int, length: int = 0) -> bytes:
    """`n` (negative: as int64 two's complement) as a varint; with `length`, padded to that many
    bytes (10 is the longest valid protobuf, 11 is not)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80 or (length and len(out) < length - 1):
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def bytes_field(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


def varint_field(field: int, value: int) -> bytes:
    return tag(field, 0) + varint(value)


def packed_varints(values) -> bytes:
    return b"".join(varint(int(v)) for v in values)


#: Value fields per dtype: (DeepRec ArrayProto, TF Serving TensorProto); tensor_content is 100 / 4.
VALUE_FIELD = {DT_FLOAT: (3, 5), DT_DOUBLE: (4, 6), DT_INT32: (5, 7), DT_INT64: (7, 10)}
CONTENT_FIELD = {DEEPREC: 100, TFS: 4}
NUMPY_DTYPE = {np.dtype(np.float32): DT_FLOAT, np.dtype(np.float64): DT_DOUBLE,
               np.dtype(np.int32): DT_INT32, np.dtype(np.int64): DT_INT64}


def shape_field(api: str, dims, dim_bytes=None) -> bytes:
    """array_shape (DeepRec, packed dims) or tensor_shape (TF Serving, one Dim message each);
    `dim_bytes` replaces the encoded dims."""
    if api == DEEPREC:
        encoded = dim_bytes if dim_bytes is not None else packed_varints(dims)
        return bytes_field(2, bytes_field(1, encoded) if encoded else b"")
    encoded = dim_bytes if dim_bytes is not None else b"".join(
        bytes_field(2, varint_field(1, d)) for d in dims)
    return bytes_field(2, encoded)


def values_payload(value: np.ndarray) -> bytes:
    """The packed values of an array, as its dtype's value field carries them."""
    if value.dtype.kind == "f":
        return value.astype(value.dtype.newbyteorder("<")).tobytes()
    return packed_varints(value.reshape(-1))


def array(api: str, value: np.ndarray | None = None, *, dtype: int | None = None, dims=None,
          content: bytes | None = None, values: bytes | None = None, dim_bytes=None,
          extra: bytes = b"") -> bytes:
    """An ArrayProto / TensorProto: by default `value` in its value field; `content` sends
    tensor_content (even empty), `values` the value field's payload, `dims` a claimed shape."""
    if value is not None:
        dtype = NUMPY_DTYPE[value.dtype] if dtype is None else dtype
        dims = list(value.shape) if dims is None else dims
        if content is None and values is None:
            values = values_payload(value)
    assert dtype is not None
    out = varint_field(1, dtype) + shape_field(api, dims or [], dim_bytes)
    if content is not None:
        out += bytes_field(CONTENT_FIELD[api], content)
    if values is not None:
        out += bytes_field(VALUE_FIELD[dtype][api == TFS], values)
    return out + extra


def entry(key: str, value: bytes) -> bytes:
    """One `inputs` map entry (field 2 of both PredictRequests)."""
    return bytes_field(2, bytes_field(1, key.encode()) + bytes_field(2, value))


def request(api: str, arrays: dict[str, bytes], prefix: bytes = b"") -> bytes:
    """A PredictRequest: TF Serving's names the model 'default'."""
    head = bytes_field(1, bytes_field(1, b"default")) if api == TFS else b""
    return prefix + head + b"".join(entry(k, v) for k, v in arrays.items())


def valid_arrays(api: str, values: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {key: array(api, value) for key, value in values.items()}
