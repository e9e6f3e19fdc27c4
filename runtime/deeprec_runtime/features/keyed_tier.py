"""DeepRec EmbeddingVariables in the DRAM + SSD tier (`ev_storage_type` 12).

The tier stores rows by position (tiered.py); an EV's ids are arbitrary int64 keys. A key index
(the keys sorted, with each one's position: 16 bytes a key, in DRAM, searched with numpy) sits
in front: the file holds the checkpoint's rows in the order they were read, with room for 1/32
more, and a delta's new keys take the next positions (the file grows by a quarter when full,
its existing rows staying where they are). The index is replaced whole after the rows are
written, so a lookup sees a new key only once its row is there. Example: `item_emb` with keys
{17, 900001, 5}: positions 0, 1, 2; a lookup of [5, 6] answers position 2 and "not held".
"""

from __future__ import annotations

import numpy as np

from deeprec_runtime.deeprec import ckpt
from deeprec_runtime.features.base import VersionKey
from deeprec_runtime.features.graph import Table
from deeprec_runtime.features.tiered import DramCache, SsdTable, _TieredTable

HEADROOM = 32
"""A table is created with room for 1/HEADROOM more keys than its checkpoint holds."""
GROWTH = 1.25


class KeyIndex:
    """EV key -> position in the tier, immutable (a delta builds a new one)."""

    BYTES_PER_KEY = 16

    def __init__(self, keys: np.ndarray, positions: np.ndarray):
        order = np.argsort(keys, kind="stable")
        self.keys = np.ascontiguousarray(keys[order])
        self.positions = np.ascontiguousarray(positions[order])

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, found) for `keys`; positions of keys not held are meaningless."""
        if not self.keys.shape[0]:
            return np.zeros(keys.shape, np.int64), np.zeros(keys.shape, bool)
        at = np.minimum(np.searchsorted(self.keys, keys), self.keys.shape[0] - 1)
        found = self.keys[at] == keys
        return self.positions[at], found

    def with_keys(self, keys: np.ndarray, positions: np.ndarray) -> KeyIndex:
        return KeyIndex(np.concatenate([self.keys, keys]),
                        np.concatenate([self.positions, positions]))

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.positions.nbytes


def capacity_for(keys: int) -> int:
    """Rows a keyed table's file starts with: its keys and room for 1/HEADROOM more."""
    return keys + max(64, keys // HEADROOM)


def stored_keys(prefix: str, table: Table) -> int:
    """Keys of the EV in a full checkpoint (from its index alone), for the DRAM budget."""
    index = ckpt.CheckpointIndex(prefix)
    return sum(int(index.shapes[p + ckpt.FULL_KEYS][0])
               for p in index.parts(table.name, ckpt.FULL_KEYS))


class KeyedTieredTable(_TieredTable):
    """One EV's rows on SSD with a DRAM cache, addressed through a key index."""

    def __init__(self, table: Table, folder: str, key: VersionKey, prefix: str, keys: int,
                 dram_budget: int, policy: str):
        inner = Table(table.name, capacity_for(keys), table.row_shape, table.dtype, ())
        found: list[np.ndarray] = []

        def chunks():
            at = 0
            for part in ckpt.iter_full_parts(ckpt.CheckpointIndex(prefix), table.name,
                                             table.row_shape[0]):
                found.append(part.keys)
                yield at, part.values
                at += part.keys.shape[0]

        ssd = SsdTable(folder, inner, key, prefix, chunks())
        held = np.concatenate(found) if found else np.empty(0, np.int64)
        budget = dram_budget - held.shape[0] * KeyIndex.BYTES_PER_KEY
        super().__init__(inner, DramCache(inner, budget, policy), ssd, None)
        self.keyed_table = table
        self.index = KeyIndex(held, np.arange(held.shape[0], dtype=np.int64))
        self.size = held.shape[0]

    def lookup(self, ids: np.ndarray):
        index = self.index  # one snapshot: a delta replaces it whole
        positions, found = index.find(ids)
        rows = np.zeros((ids.shape[0], *self.table.row_shape), self.table.dtype)
        if found.any():
            rows[found] = super().lookup(positions[found])
        return rows, found

    def write(self, ids: np.ndarray, values: np.ndarray) -> None:
        positions, found = self.index.find(ids)
        new_keys = ids[~found]
        new_positions = np.arange(self.size, self.size + new_keys.shape[0], dtype=np.int64)
        needed = self.size + new_keys.shape[0]
        if needed > self.table.rows:
            self._grow(max(needed, int(self.table.rows * GROWTH)))
        super().write(np.concatenate([positions[found], new_positions]),
                      np.concatenate([values[found], values[~found]]))
        if new_keys.shape[0]:
            self.index = self.index.with_keys(new_keys, new_positions)
        self.size = needed

    def _grow(self, rows: int) -> None:
        if self.cache is None or self.ssd is None:
            raise RuntimeError("a keyed tiered table always has a cache and an SSD file")
        with self.lock:
            extra = rows - self.table.rows
            self.table = Table(self.table.name, rows, self.table.row_shape, self.table.dtype, ())
            self.ssd.table = self.table
            self.ssd.grow(rows)
            self.cache.slot_of = np.concatenate([self.cache.slot_of,
                                                 np.full(extra, -1, self.cache.slot_of.dtype)])
