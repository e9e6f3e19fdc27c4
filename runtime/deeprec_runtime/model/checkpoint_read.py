"""Reads checkpoint tensors without holding the GIL.

CheckpointReader.get_tensor keeps the GIL for the whole read, so a slow or stuck read (a network
volume, a big variable) would stop every request of the process. An eager RestoreV2 op does the
same read with the GIL released. Depends on TensorFlow only, so both the servable and the feature
bindings can use it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context


def read_tensors(prefix: str, names: Sequence[str], dtypes: Mapping) -> dict[str, np.ndarray]:
    """Reads `names` from the checkpoint at `prefix` with one RestoreV2 op.

    `dtypes` maps each name to its dtype (CheckpointReader.get_variable_to_dtype_map()).
    Raises tf.errors.OpError / ValueError like the reader does.
    """
    names = list(names)
    if not names:
        return {}
    # Eager even when the caller has a graph as default (a servable's load restores inside it):
    # the op must run now, not be added to that graph.
    with context.eager_mode():
        out = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=names,
                                   shape_and_slices=[""] * len(names),
                                   dtypes=[dtypes[n] for n in names])
    return {n: t.numpy() for n, t in zip(names, out, strict=True)}
