"""Embedding rows in process-local tiers (`ev_storage_type` 1: DRAM, 12: DRAM + SSD).

Type 1 keeps each table whole in a numpy array in DRAM (checked against the DRAM budget). Type 12
keeps every row on SSD and the hot ones in a DRAM cache with a byte budget (`ev_storage_size[0]`,
split over the tables by size; the cache's own index counts against it).

SSD format, one file per table per version under `ev_storage_path/run-<pid>-<random>/<version>/`:
`<table>.rows` is the table as a raw C-order array of its dtype in little-endian (row i at byte
i * row_bytes), `<table>.json` says {shape, dtype, version, full_step}. Files are written under a
temporary name and renamed into place when complete, read and updated through a memory map, and
removed when the version is unloaded (and, for runs that died, when the next process starts).

Both tiers take deltas: the SSD row and, when cached, the DRAM row, under the table's lock, so a
lookup sees a row either before or after a delta, never half-written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from deeprec_runtime.errors import VersionLoadError
from deeprec_runtime.features.base import (
    FeatureStore,
    TableRows,
    VersionKey,
    check_checkpoint_tables,
    chunk_rows_for,
    iter_table_rows,
)
from deeprec_runtime.features.graph import Table

log = logging.getLogger(__name__)

DRAM = 1
DRAM_SSD = 12
DEFAULT_DRAM_BYTES = 1 << 30
"""DRAM budget when ev_storage_size is not given."""
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_name(name: str) -> str:
    return _SAFE.sub("_", name)


class DramCache:
    """A fixed-capacity row cache over a backing store, with LFU (default, DeepRec's) or LRU
    eviction. All bookkeeping is numpy arrays indexed by id and by slot, so a lookup of a batch
    costs a few vectorised operations whatever its size; evictions are done in batches (at least
    1/32 of the capacity at a time) so the O(capacity) victim selection is amortised."""

    #: Bytes of bookkeeping per cached row beyond the row itself (slot -> id, slot -> score).
    SLOT_OVERHEAD = 16
    #: Bytes of bookkeeping per table row (id -> slot).
    ID_OVERHEAD = 4

    def __init__(self, table: Table, budget_bytes: int, policy: str = "lfu"):
        if policy not in ("lfu", "lru"):
            raise ValueError(f"cache policy must be 'lfu' or 'lru', got {policy!r}")
        index_bytes = table.rows * self.ID_OVERHEAD
        capacity = (budget_bytes - index_bytes) // (table.row_bytes + self.SLOT_OVERHEAD)
        if capacity < 1:
            raise VersionLoadError(
                f"DRAM budget of {budget_bytes} bytes for table '{table.name}' cannot hold its "
                f"index ({index_bytes} bytes) and one row; raise ev_storage_size[0]")
        self.capacity = int(min(capacity, table.rows))
        self.policy = policy
        self.slot_of = np.full(table.rows, -1, np.int32)
        self.id_of = np.full(self.capacity, -1, np.int64)
        self.score = np.zeros(self.capacity, np.int64)
        self.data = np.empty((self.capacity, *table.row_shape), table.dtype)
        self.used = 0
        self._free = np.empty(0, np.int64)
        self._tick = 0
        self._admitted = 0
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.slot_of, self.id_of, self.score, self.data))

    def get(self, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Fills `out` with the cached rows of `ids`; returns the mask of misses."""
        slots = self.slot_of[ids]
        hit = slots >= 0
        hit_slots = slots[hit]
        out[hit] = self.data[hit_slots]
        self._tick += 1
        if self.policy == "lru":
            self.score[hit_slots] = self._tick
        else:
            self.score[hit_slots] += 1
        n_hit = int(hit_slots.shape[0])
        self.hits += n_hit
        self.misses += ids.shape[0] - n_hit
        return ~hit

    def admit(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Caches rows just read from the backing tier, evicting the coldest when full."""
        if ids.shape[0] > self.capacity:
            ids, rows = ids[-self.capacity:], rows[-self.capacity:]
        n = ids.shape[0]
        slots = self._take(n)
        self.id_of[slots] = ids
        self.slot_of[ids] = slots
        self.data[slots] = rows
        self.score[slots] = self._tick if self.policy == "lru" else 1
        self._admitted += n
        if self.policy == "lfu" and self._admitted >= self.capacity:
            self.score >>= 1  # ageing: yesterday's hot rows do not squat the cache for ever
            self._admitted = 0

    def _take(self, n: int) -> np.ndarray:
        fresh = min(n, self.capacity - self.used)
        parts = [np.arange(self.used, self.used + fresh, dtype=np.int64)]
        self.used += fresh
        need = n - fresh
        if need:
            if self._free.shape[0] < need:
                self._evict(max(need - self._free.shape[0], self.capacity // 32))
            parts.append(self._free[:need])
            self._free = self._free[need:]
        return np.concatenate(parts)

    def _evict(self, k: int) -> None:
        occupied = self.id_of >= 0
        candidates = np.flatnonzero(occupied)
        k = min(k, candidates.shape[0])
        victims = candidates[np.argpartition(self.score[candidates], k - 1)[:k]]
        self.slot_of[self.id_of[victims]] = -1
        self.id_of[victims] = -1
        self._free = np.concatenate([self._free, victims])

    def update(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Overwrites cached rows among `ids` (a delta); uncached ids are left to the backing tier."""
        slots = self.slot_of[ids]
        cached = slots >= 0
        self.data[slots[cached]] = rows[cached]


class SsdTable:
    """A table's rows in one memory-mapped file (format in the module docstring)."""

    def __init__(self, folder: str, table: Table, key: VersionKey, prefix: str,
                 chunks: Iterable[tuple[int, np.ndarray]] | None = None):
        """`chunks` (first row, rows) replace the checkpoint's table slices when given."""
        self.table = table
        base = os.path.join(folder, safe_name(table.name))
        self.base = base
        self.path = base + ".rows"
        tmp = f"{base}.tmp-{uuid.uuid4().hex[:8]}"
        dtype = table.dtype.newbyteorder("<")
        self.dtype = dtype
        mm = np.memmap(tmp, dtype=dtype, mode="w+", shape=table.shape)
        try:
            if chunks is None:
                chunks = iter_table_rows(prefix, table, chunk_rows_for(table))
            for start, values in chunks:
                mm[start:start + values.shape[0]] = values
            mm.flush()
        except BaseException:
            del mm
            os.unlink(tmp)
            raise
        del mm
        os.replace(tmp, self.path)
        with open(base + ".json.tmp", "w") as fh:
            json.dump({"shape": list(table.shape), "dtype": dtype.str, "version": key.name,
                       "full_step": key.full_step}, fh)
        os.replace(base + ".json.tmp", base + ".json")
        self.rows = np.memmap(self.path, dtype=dtype, mode="r+", shape=table.shape)

    def read(self, ids: np.ndarray) -> np.ndarray:
        return self.rows[ids]

    def write(self, ids: np.ndarray, values: np.ndarray) -> None:
        self.rows[ids] = values

    def grow(self, rows: int) -> None:
        """Extends the file to `rows` rows (the new ones zero); existing rows stay in place."""
        self.rows.flush()
        del self.rows
        shape = (rows, *self.table.row_shape)
        with open(self.path, "r+b") as fh:
            fh.truncate(int(np.prod(shape)) * self.dtype.itemsize)
        self.rows = np.memmap(self.path, dtype=self.dtype, mode="r+", shape=shape)

    def close(self) -> None:
        self.rows.flush()
        del self.rows


class _TieredTable:
    def __init__(self, table: Table, cache: DramCache | None, ssd: SsdTable | None,
                 whole: np.ndarray | None):
        self.table, self.cache, self.ssd, self.whole = table, cache, ssd, whole
        self.lock = threading.Lock()

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        if self.whole is not None:
            with self.lock:
                return self.whole[ids]
        if self.cache is None or self.ssd is None:
            raise RuntimeError("tiered table has neither whole rows nor cache + SSD")
        out = np.empty((ids.shape[0], *self.table.row_shape), self.table.dtype)
        with self.lock:
            miss = self.cache.get(ids, out)
            if miss.any():
                missing = ids[miss]
                rows = self.ssd.read(missing)
                out[miss] = rows
                self.cache.admit(missing, rows)
        return out

    def write(self, ids: np.ndarray, values: np.ndarray) -> None:
        values = values.astype(self.table.dtype, copy=False)
        with self.lock:
            if self.whole is not None:
                self.whole[ids] = values
                return
            if self.cache is None or self.ssd is None:
                raise RuntimeError("tiered table has neither whole rows nor cache + SSD")
            self.ssd.write(ids, values)
            self.cache.update(ids, values)


class TieredRows(TableRows):
    def __init__(self, key: VersionKey, tables: dict[str, _TieredTable], folder: str | None,
                 on_close):
        self.key, self._tables, self.folder, self._on_close = key, tables, folder, on_close

    def lookup(self, requests: Sequence[tuple[Table, np.ndarray]]) -> list[np.ndarray]:
        return [self._tables[t.name].lookup(ids) for t, ids in requests]

    def apply_delta(self, step: int, rows: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        for name, (ids, values) in rows.items():
            self._tables[name].write(ids, values)

    def cache_stats(self) -> dict[str, tuple[int, int, int]]:
        """table -> (cached rows, hits, misses); DRAM-only tables report all rows cached."""
        out = {}
        for name, t in self._tables.items():
            if t.cache is None:
                out[name] = (t.table.rows, 0, 0)
            else:
                out[name] = (t.cache.used, t.cache.hits, t.cache.misses)
        return out

    def dram_bytes(self) -> int:
        """Bytes of DRAM the tables hold (cache rows and index, or whole tables)."""
        total = 0
        for t in self._tables.values():
            if t.whole is not None:
                total += t.whole.nbytes
            elif t.cache is not None:  # without whole rows a table always has its cache
                total += t.cache.nbytes
        return total

    def close(self) -> None:
        for t in self._tables.values():
            if t.ssd is not None:
                t.ssd.close()
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        self._on_close(self)


class TieredFeatureStore(FeatureStore):
    def __init__(self, storage_type: int, path: str = "", sizes: Sequence[int] = (),
                 policy: str = "lfu"):
        if storage_type not in (DRAM, DRAM_SSD):
            raise ValueError(f"ev_storage_type must be 1 or 12, got {storage_type}")
        if storage_type == DRAM_SSD and not path:
            raise ValueError("ev_storage_path is required for ev_storage_type 12")
        self.storage_type = storage_type
        self.dram_bytes = sizes[0] if sizes else (0 if storage_type == DRAM else DEFAULT_DRAM_BYTES)
        self.ssd_bytes = sizes[1] if len(sizes) > 1 else 0
        self.policy = policy
        self._open: list[TieredRows] = []
        self._lock = threading.Lock()
        #: DeepRec EmbeddingVariables (keyed tables) live in the DRAM + SSD tier behind a key
        #: index (keyed_tier.py); with type 1 they stay in the session's own tables (DRAM).
        self.serves_keyed_tables = storage_type == DRAM_SSD
        self.root = None
        if storage_type == DRAM_SSD:
            os.makedirs(path, exist_ok=True)
            _remove_dead_runs(path)
            self.root = os.path.join(path, f"run-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.makedirs(self.root)

    def open_version(self, key: VersionKey, tables: Mapping[str, Table], full_prefix: str) -> TableRows:
        check_checkpoint_tables(full_prefix, tables)
        total = sum(t.rows * t.row_bytes for t in tables.values())
        if self.storage_type == DRAM:
            if self.dram_bytes and total > self.dram_bytes:
                raise VersionLoadError(
                    f"embedding tables of {key} need {total} bytes of DRAM but ev_storage_size[0] "
                    f"is {self.dram_bytes}; use ev_storage_type 12 to spill to SSD")
            built = {}
            for t in tables.values():
                whole = np.empty(t.shape, t.dtype)
                for start, values in iter_table_rows(full_prefix, t, chunk_rows_for(t)):
                    whole[start:start + values.shape[0]] = values
                built[t.name] = _TieredTable(t, None, None, whole)
            return self._register(TieredRows(key, built, None, self._closed))
        # (imported here: keyed_tier builds on this module)
        from deeprec_runtime.features.keyed_tier import (
            KeyedTieredTable,
            KeyIndex,
            capacity_for,
            stored_keys,
        )

        # An EV's rows are its checkpoint's keys plus room for new ones; its key index is DRAM.
        keys_of = {t.name: stored_keys(full_prefix, t) for t in tables.values() if t.keyed}
        rows_of = {t.name: capacity_for(keys_of[t.name]) if t.keyed else t.rows
                   for t in tables.values()}
        total = sum(rows_of[t.name] * t.row_bytes for t in tables.values())
        with self._lock:
            on_ssd = sum(sum(tt.table.rows * tt.table.row_bytes for tt in r._tables.values())
                         for r in self._open)
        if self.ssd_bytes and on_ssd + total > self.ssd_bytes:
            raise VersionLoadError(
                f"embedding tables of {key} need {total} bytes on SSD ({on_ssd} already used by "
                f"loaded versions) but ev_storage_size[1] is {self.ssd_bytes}")
        if self.root is None:
            raise RuntimeError("tiered store has no SSD folder")
        folder = os.path.join(self.root, safe_name(str(key)) + "-" + uuid.uuid4().hex[:6])
        os.makedirs(folder)
        # Each table's cache gets its id index plus a share of the rest in proportion to its size.
        index = sum(rows_of[t.name] * DramCache.ID_OVERHEAD for t in tables.values()) + sum(
            n * KeyIndex.BYTES_PER_KEY for n in keys_of.values())
        if index >= self.dram_bytes:
            raise VersionLoadError(
                f"ev_storage_size[0] = {self.dram_bytes} bytes of DRAM cannot even hold the cache "
                f"index of {key}'s tables ({index} bytes, 4 per row)")
        built = {}
        try:
            for t in tables.values():
                n = rows_of[t.name]
                own = n * DramCache.ID_OVERHEAD + keys_of.get(t.name, 0) * KeyIndex.BYTES_PER_KEY
                share = own + (self.dram_bytes - index) * (n * t.row_bytes) // max(1, total)
                if t.keyed:
                    built[t.name] = KeyedTieredTable(t, folder, key, full_prefix, keys_of[t.name],
                                                     share, self.policy)
                    continue
                built[t.name] = _TieredTable(t, DramCache(t, share, self.policy),
                                             SsdTable(folder, t, key, full_prefix), None)
        except BaseException:
            for tt in built.values():
                if tt.ssd is not None:
                    tt.ssd.close()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self._register(TieredRows(key, built, folder, self._closed))

    def _register(self, rows: TieredRows) -> TieredRows:
        with self._lock:
            self._open.append(rows)
        return rows

    def _closed(self, rows: TieredRows) -> None:
        with self._lock:
            if rows in self._open:
                self._open.remove(rows)

    def close(self) -> None:
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)


def _remove_dead_runs(path: str) -> None:
    """Deletes row files left by runtimes that died (their pid no longer exists)."""
    for name in os.listdir(path):
        m = re.match(r"^run-(\d+)-[0-9a-f]+$", name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(path, name), ignore_errors=True)
        except PermissionError:
            pass  # someone else's live process
