"""Reads EmbeddingVariable rows from DeepRec checkpoints into numpy arrays.

A full checkpoint holds, per EV part `N` (`emb` or `emb/part_K`): `N-keys` [n], `N-values`
[n, dim] float, `N-freqs` / `N-versions` ([n] or [0]), `N-keys_filtered` (keys seen in training
but not admitted by the frequency filter; they have no rows) and partition offsets. An
incremental checkpoint holds `N-sparse_incr_keys` / `N-sparse_incr_values`: every row changed
since the last full save. Parts are found by the base name (`emb/part_0`, `emb/part_1`, ...), so
a checkpoint written with another number of parts than the serving graph has reads the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from deeprec_runtime.deeprec.names import DELTA_KEYS, DELTA_VALUES, FILTERED, FULL_KEYS, FULL_VALUES
from deeprec_runtime.errors import VersionLoadError
from deeprec_runtime.model.checkpoint_read import read_tensors


@dataclass
class Rows:
    """One EV's rows from a checkpoint (all parts together)."""

    keys: np.ndarray
    """int64 [n], unique, never negative."""
    values: np.ndarray
    """float32 [n, dim]."""
    filtered: int = 0
    """Keys the checkpoint lists as seen but not admitted (served the filter's default)."""


class CheckpointIndex:
    """The tensor names, shapes and dtypes of one checkpoint (read from its index only)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        try:
            reader = tf.train.load_checkpoint(prefix)
            self.shapes = reader.get_variable_to_shape_map()
            self.dtypes = reader.get_variable_to_dtype_map()
        except (tf.errors.OpError, ValueError) as exc:
            raise VersionLoadError(f"cannot read checkpoint {prefix}: {_first_line(exc)}") from None

    def parts(self, base: str, keys_suffix: str) -> list[str]:
        """The EV parts stored under `base`: [base] or [base/part_0, ..., base/part_K]."""
        if base + keys_suffix in self.shapes:
            return [base]
        pattern = re.compile(re.escape(base) + r"/part_(\d+)" + re.escape(keys_suffix) + "$")
        found = sorted(int(m.group(1)) for n in self.shapes if (m := pattern.match(n)))
        if found and found != list(range(len(found))):
            raise VersionLoadError(f"checkpoint {self.prefix}: EmbeddingVariable '{base}' has "
                                   f"parts {found}, not 0..{len(found) - 1}")
        return [f"{base}/part_{k}" for k in found]

    def read(self, names: list[str]) -> dict[str, np.ndarray]:
        try:
            return read_tensors(self.prefix, names, self.dtypes)
        except (tf.errors.OpError, ValueError) as exc:
            raise VersionLoadError(f"cannot read {', '.join(names[:3])} from {self.prefix}: "
                                   f"{_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__


def _collect(index: CheckpointIndex, base: str, dim: int, parts: list[str], keys_suffix: str,
             values_suffix: str) -> Rows:
    names = [p + s for p in parts for s in (keys_suffix, values_suffix)]
    for name in names:
        if name not in index.shapes:
            raise VersionLoadError(f"checkpoint {index.prefix} has {names[0]} but no {name}")
    tensors = index.read(names)
    keys_list, values_list = [], []
    for p in parts:
        keys = tensors[p + keys_suffix]
        values = tensors[p + values_suffix]
        if keys.dtype not in (np.int64, np.int32) or keys.ndim != 1:
            raise VersionLoadError(f"{index.prefix}: {p}{keys_suffix} has dtype {keys.dtype} and "
                                   f"shape {list(keys.shape)}; expected int64 or int32 [n]")
        if values.dtype != np.float32:
            raise VersionLoadError(f"{index.prefix}: {p}{values_suffix} is {values.dtype}; "
                                   "DeepRec saves float32 EV values")
        if values.size == 0 and keys.size == 0:
            values = values.reshape(0, dim)
        if values.shape != (keys.shape[0], dim):
            raise VersionLoadError(
                f"{index.prefix}: {p}{values_suffix} has shape {list(values.shape)} for "
                f"{keys.shape[0]} keys; the serving graph's EV '{base}' has dimension {dim}")
        keys_list.append(keys.astype(np.int64, copy=False))
        values_list.append(values)
    keys = np.concatenate(keys_list) if len(keys_list) > 1 else keys_list[0]
    values = np.concatenate(values_list) if len(values_list) > 1 else values_list[0]
    # DeepRec never saves negative keys (they fall in no bucket); ids < 0 always take the default.
    if keys.size and keys.min() < 0:
        keep = keys >= 0
        keys, values = keys[keep], values[keep]
    if keys.size > 1:
        order = np.sort(keys)
        dup = order[1:][order[1:] == order[:-1]]
        if dup.size:
            raise VersionLoadError(f"{index.prefix}: key {int(dup[0])} of EmbeddingVariable "
                                   f"'{base}' is stored twice ({', '.join(parts)})")
    return Rows(np.ascontiguousarray(keys), np.ascontiguousarray(values))


def read_full(index: CheckpointIndex, base: str, dim: int) -> Rows:
    """The admitted rows of EV `base` from a full checkpoint; VersionLoadError when it is not
    there or does not match the graph."""
    parts = index.parts(base, FULL_KEYS)
    if not parts:
        raise VersionLoadError(f"checkpoint {index.prefix} has no EmbeddingVariable '{base}' "
                               f"(no {base}{FULL_KEYS} or {base}/part_0{FULL_KEYS})")
    rows = _collect(index, base, dim, parts, FULL_KEYS, FULL_VALUES)
    # Only the count: a key not admitted gets the same default row as one never seen.
    rows.filtered = sum(int(np.prod(index.shapes.get(p + FILTERED, [0]))) for p in parts)
    return rows


def iter_full_parts(index: CheckpointIndex, base: str, dim: int):
    """Yields the rows of EV `base` part by part (a store importing them holds one part at a
    time); VersionLoadError when it is not there or does not match the graph."""
    parts = index.parts(base, FULL_KEYS)
    if not parts:
        raise VersionLoadError(f"checkpoint {index.prefix} has no EmbeddingVariable '{base}' "
                               f"(no {base}{FULL_KEYS} or {base}/part_0{FULL_KEYS})")
    for part in parts:
        yield _collect(index, base, dim, [part], FULL_KEYS, FULL_VALUES)


def read_delta(index: CheckpointIndex, base: str, dim: int) -> Rows | None:
    """The rows of EV `base` changed since the full save, or None when the delta has none."""
    parts = index.parts(base, DELTA_KEYS)
    if not parts:
        return None
    return _collect(index, base, dim, parts, DELTA_KEYS, DELTA_VALUES)

