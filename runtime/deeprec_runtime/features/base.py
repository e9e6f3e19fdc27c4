"""The feature-store interface: where a servable's embedding rows live when not in the session.

A `FeatureStore` belongs to the runtime (one per process); `open_version` makes one version's
tables available (importing them from the full checkpoint when needed) and returns that version's
`TableRows`, which the servable uses for lookups and deltas until it is closed. Example: the Redis
store imports `checkpoint_2`'s `embedding` table into its idle slot, and the returned rows object
reads that slot with one round trip per request.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from deeprec_runtime.errors import VersionLoadError
from deeprec_runtime.features.graph import Table


class StoreUnavailable(VersionLoadError):
    """The feature store could not be reached while loading or updating: unlike a bad checkpoint,
    the same version or delta is retried on the next poll."""


@dataclass(frozen=True)
class VersionKey:
    """Which parameters a set of rows holds: the version folder and its full checkpoint step."""

    name: str
    full_step: int

    def __str__(self) -> str:
        return f"{self.name}@{self.full_step}"


class TableRows:
    """One version's embedding rows, as seen by one servable."""

    def lookup(self, requests: Sequence[tuple[Table, np.ndarray]]) -> list:
        """Rows for each (table, ids) pair; ids are int64, 1-D, unique and in range. Returns
        arrays of shape [len(ids), *table.row_shape]. A row that should exist but does not raises
        Unavailable: a missing row is never served as zeros. For a keyed table (a DeepRec
        EmbeddingVariable) any id may be asked and the answer is (rows, found): the rows of ids
        the store does not hold are zeros there, and `found` says which ids it holds."""
        raise NotImplementedError

    def apply_delta(self, step: int, rows: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Writes one delta's rows (table name -> (ids, values)); raises VersionLoadError when it
        cannot, so the manager retries the delta on its next poll."""
        raise NotImplementedError

    def lost(self) -> bool:
        """True when the rows are known to be gone (e.g. Redis restarted empty) and the version
        must be imported again."""
        return False

    def close(self) -> None:
        """Releases what this version holds (files, cache memory)."""


class FeatureStore:
    def open_version(self, key: VersionKey, tables: Mapping[str, Table], full_prefix: str) -> TableRows:
        """Makes `tables` of version `key` available, reading rows from the checkpoint at
        `full_prefix` when the store does not hold them yet. Raises VersionLoadError."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def check_checkpoint_tables(prefix: str, tables: Mapping[str, Table]) -> None:
    """Raises VersionLoadError unless the checkpoint holds every table with the graph's shape."""
    try:
        shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as exc:
        raise VersionLoadError(f"cannot read checkpoint {prefix}: {exc}") from None
    for table in tables.values():
        if table.keyed:  # an EV's rows are `<name>-keys` / `-values` per part (deeprec/ckpt.py)
            continue
        if table.name not in shapes:
            raise VersionLoadError(f"checkpoint {prefix} has no embedding table '{table.name}'")
        if tuple(shapes[table.name]) != table.shape:
            raise VersionLoadError(
                f"embedding table '{table.name}' has shape {list(shapes[table.name])} in {prefix} "
                f"but {list(table.shape)} in the graph")


def iter_table_rows(prefix: str, table: Table, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (first row, rows) chunks of a table read from a checkpoint slice by slice, so a table
    far larger than memory can be imported (RestoreV2 reads only the requested rows)."""
    spec_shape = " ".join(str(d) for d in table.shape)
    rest = ":".join("-" for _ in table.row_shape)
    dtype = tf.dtypes.as_dtype(table.dtype)
    for start in range(0, table.rows, chunk_rows):
        count = min(chunk_rows, table.rows - start)
        try:
            (value,) = tf.raw_ops.RestoreV2(  # eager: call it outside any graph context
                prefix=prefix, tensor_names=[table.name],
                shape_and_slices=[f"{spec_shape} {start},{count}:{rest}"], dtypes=[dtype])
        except tf.errors.OpError as exc:
            raise VersionLoadError(f"reading table '{table.name}' from {prefix} failed: "
                                   f"{exc.message.splitlines()[0]}") from None
        yield start, value.numpy()


def chunk_rows_for(table: Table, chunk_bytes: int = 32 << 20) -> int:
    return max(1, chunk_bytes // max(1, table.row_bytes))
