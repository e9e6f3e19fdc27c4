"""Writes numpy arrays as a TensorFlow V2 checkpoint (tensor bundle) that appears atomically.

A reader that lists ``*.index`` files must never find a checkpoint whose data file is missing or
incomplete, on local disk or on a TF file system (HDFS, GCS, ...). So the bundle is written under
a temporary prefix in the target folder, then the data file is renamed to its final name and the
``.index`` last. A bundle's index does not record its own prefix, so renaming is safe.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from .format import TEMP_PREFIX

tf1 = tf.compat.v1

#: The rename the writer uses; tests wrap it to observe the order files appear in.
Rename = Callable[[str, str], None]


def _gfile_rename(src: str, dst: str) -> None:
    tf.io.gfile.rename(src, dst, overwrite=True)


_rename: Rename = _gfile_rename


class _SaveGraph:
    """A private graph + session holding one SaveV2 op fed by placeholders.

    Private so the caller's graph gets no new ops (training graphs are often finalized) and so it
    works whether or not eager execution is enabled in the process.
    """

    def __init__(self, names: tuple[str, ...], dtypes: tuple[tf.DType, ...]):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.prefix = tf1.placeholder(tf.string, [], name="prefix")
            self.inputs = [tf1.placeholder(d, None, name=f"t{i}") for i, d in enumerate(dtypes)]
            self.op = tf.raw_ops.SaveV2(
                prefix=self.prefix,
                tensor_names=list(names),
                shape_and_slices=[""] * len(names),
                tensors=self.inputs,
            )
        self.graph.finalize()
        self.session = tf1.Session(graph=self.graph, config=tf1.ConfigProto(device_count={"GPU": 0}))

    def save(self, prefix: str, arrays: list[np.ndarray]) -> None:
        feed: dict[Any, Any] = {p: a for p, a in zip(self.inputs, arrays, strict=True)}
        feed[self.prefix] = prefix
        self.session.run(self.op, feed)


_cache: dict[tuple, _SaveGraph] = {}
_cache_lock = threading.Lock()


def _save_graph(names: tuple[str, ...], dtypes: tuple[tf.DType, ...]) -> _SaveGraph:
    key = (names, tuple(d.name for d in dtypes))
    with _cache_lock:
        sg = _cache.get(key)
        if sg is None:
            if len(_cache) > 64:  # bounded: the set of tables in a delta varies a little
                _cache.clear()
            sg = _cache[key] = _SaveGraph(names, dtypes)
        return sg


def write_bundle(prefix: str, tensors: Mapping[str, np.ndarray]) -> str:
    """Writes ``tensors`` (name -> array) as the V2 checkpoint ``prefix`` and returns ``prefix``.

    Order of appearance: ``prefix.data-00000-of-00001`` first, ``prefix.index`` last. An existing
    checkpoint at ``prefix`` is replaced.
    """
    if not tensors:
        raise ValueError(f"checkpoint {prefix}: nothing to write")
    folder, base = os.path.split(prefix)
    tmp = os.path.join(folder, f"{TEMP_PREFIX}{base}-{uuid.uuid4().hex[:12]}")
    names = tuple(sorted(tensors))
    arrays = [np.asarray(tensors[n]) for n in names]
    dtypes = tuple(tf.as_dtype(a.dtype) for a in arrays)
    try:
        _save_graph(names, dtypes).save(tmp, arrays)
        data = sorted(
            f for f in tf.io.gfile.listdir(folder or ".") if f.startswith(os.path.basename(tmp) + ".data-")
        )
        if not data:
            raise RuntimeError(f"checkpoint {prefix}: SaveV2 wrote no data file under {tmp}")
        for f in data:
            _rename(os.path.join(folder, f), prefix + f[len(os.path.basename(tmp)) :])
        _rename(tmp + ".index", prefix + ".index")
    except BaseException:
        for f in tf.io.gfile.glob(tmp + ".*"):
            try:
                tf.io.gfile.remove(f)
            except tf.errors.OpError:
                pass
        raise
    return prefix
