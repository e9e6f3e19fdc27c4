"""Names and small readers for the on-disk checkpoint format (docs/checkpoint-format.md).

Both sides use these constants: the writer in this package and the serving-side version source
and loader, so the two can never disagree on a file or tensor name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from deeprec_runtime.deeprec.names import DELTA_KEYS, DELTA_VALUES, is_ev_tensor

#: CheckpointState file, in the version folder and in the delta folder.
STATE_FILENAME = "checkpoint"
#: Full checkpoints: ``<version>/model.ckpt-<N>.index`` + ``.data-*``.
FULL_BASENAME = "model.ckpt"
#: Deltas live here; DeepRec's docs draw ``.incremental_ckpt``, readers should accept both.
DELTA_DIRNAME = ".incremental_checkpoint"
DELTA_DIRNAMES = (".incremental_checkpoint", ".incremental_ckpt")
#: Deltas: ``<version>/.incremental_checkpoint/incremental_model.ckpt-<M>.index`` + ``.data-*``.
DELTA_BASENAME = "incremental_model.ckpt"
#: DeepRec's incremental format: per table ``V`` a delta holds ``V-sparse_incr_keys`` (int64 [k],
#: the changed row ids, ascending) and ``V-sparse_incr_values`` (V.dtype [k, dim]): every row
#: changed since the full checkpoint; other variables are written whole under their own names.
DELTA_KEYS_SUFFIX = DELTA_KEYS
DELTA_VALUES_SUFFIX = DELTA_VALUES
#: Prefix of files being written; never matches the patterns below, so a reader that keys on
#: ``*.index`` never picks up a checkpoint in progress.
TEMP_PREFIX = ".tmp-write-"

FULL_INDEX_RE = re.compile(r"^model\.ckpt-(\d+)\.index$")
DELTA_INDEX_RE = re.compile(r"^incremental_model\.ckpt-(\d+)\.index$")


def full_prefix_name(step: int) -> str:
    return f"{FULL_BASENAME}-{int(step)}"


def delta_prefix_name(step: int) -> str:
    return f"{DELTA_BASENAME}-{int(step)}"


@dataclass
class Delta:
    """The content of one delta checkpoint, as numpy arrays keyed by variable name."""

    step: int | None
    #: table name -> (row ids int64 [k], rows [k, dim])
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: dense variable name -> whole value
    dense: dict[str, np.ndarray] = field(default_factory=dict)


def read_delta(prefix: str) -> Delta:
    """Reads a delta checkpoint in DeepRec's incremental format (any writer, not only ours).

    Raises ValueError when a ``V-sparse_incr_keys`` has no matching ``V-sparse_incr_values`` (or
    the reverse) or their shapes disagree, naming the variable. DeepRec's other per-table entries
    (``-sparse_incr_freqs``, ``-incr_partition_offset``, ...) are not variables and are skipped.
    """
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    names = set(reader.get_variable_to_shape_map())
    m = re.search(r"-(\d+)$", prefix)
    delta = Delta(step=int(m.group(1)) if m else None)
    for name in sorted(names):
        if name.endswith(DELTA_KEYS_SUFFIX):
            var = name[: -len(DELTA_KEYS_SUFFIX)]
            values_name = var + DELTA_VALUES_SUFFIX
            if values_name not in names:
                raise ValueError(f"delta {prefix}: '{name}' has no matching '{values_name}'")
            ids = np.asarray(reader.get_tensor(name), dtype=np.int64)
            values = reader.get_tensor(values_name)
            if ids.ndim != 1 or values.ndim != 2 or values.shape[0] != ids.shape[0]:
                raise ValueError(
                    f"delta {prefix}: variable '{var}' has ids shape {ids.shape} and values "
                    f"shape {values.shape}; expected [k] and [k, dim]"
                )
            delta.embeddings[var] = (ids, values)
        elif name.endswith(DELTA_VALUES_SUFFIX):
            ids_name = name[: -len(DELTA_VALUES_SUFFIX)] + DELTA_KEYS_SUFFIX
            if ids_name not in names:
                raise ValueError(f"delta {prefix}: '{name}' has no matching '{ids_name}'")
        elif not is_ev_tensor(name):
            delta.dense[name] = reader.get_tensor(name)
    return delta
