"""The EmbeddingVariable kernels of deeprec/ev_ops.cc, loaded into this process's TensorFlow.

`fused_lookups()` says whether the rewrite may use them: a `DeepRecKeyIndex` per EV and one
`DeepRecEVGather` per lookup (find, default row and gather in one kernel, misses prefetched)
instead of the stock MutableHashTable + FloorMod + LookupTableFindV2 + ResourceGather. The
library (ev_ops.cc) is built once per source and TensorFlow version (toolchain.py; an image
ships it prebuilt) and loaded before a graph using its ops is imported. Where it cannot be built or
loaded, the reason is logged once and the stock ops serve the same answers.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from deeprec_runtime.toolchain import (
    BuildError,
    cached_library,
    tensorflow_flags,
    tensorflow_version,
)

log = logging.getLogger(__name__)

LIBRARY_NAME = "libdeeprec_ev_ops.so"
SOURCE = Path(__file__).resolve().parent / "ev_ops.cc"
INDEX_OP = "DeepRecKeyIndex"
GATHER_OP = "DeepRecEVGather"
CPU_ONLY_OPS = (INDEX_OP, GATHER_OP)
"""Op types with no GPU kernel: they, their tables and the ops updating those stay on the CPU."""
STOCK_ENV = "DEEPREC_EV_STOCK_OPS"
"""Set to 1 to serve EVs with the stock ops only (a comparison, or a TensorFlow that refuses
the library)."""

_lock = threading.Lock()
_loaded: list = []
"""Once tried: [the library's Python module, or None where it could not be loaded]."""


def fused_lookups() -> bool:
    """True once the op library is loaded into TensorFlow (built first if needed)."""
    if os.environ.get(STOCK_ENV, "") == "1":
        return False
    return library() is not None


def library():
    """The op library's generated Python wrappers (`deep_rec_key_index`, `deep_rec_ev_gather`),
    or None where it cannot be built or loaded (the reason is logged once)."""
    with _lock:
        if not _loaded:
            _loaded.append(_load())
        return _loaded[0]


def library_path(build: bool = True) -> str:
    """Absolute path of the EV op library, building it first if it is not there yet."""
    return cached_library(LIBRARY_NAME, SOURCE, tensorflow_version, tensorflow_flags, build)


def _load():
    import tensorflow as tf

    try:
        return tf.load_op_library(library_path())
    except (BuildError, tf.errors.OpError, OSError) as exc:
        log.warning("EmbeddingVariable lookups use TensorFlow's stock ops (slower at large "
                    "batches): the EV op library is not available: %s", str(exc)[:500])
        return None
