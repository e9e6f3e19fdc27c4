"""Reading one version's embedding rows from Redis (the store itself: redis_store.py).

A request's rows come back in one EVALSHA: the script checks the slot's tag (STALE when the slot
was re-used or Redis restarted empty) and MGETs every row key. Rows of dense tables must all be
there (MISSING otherwise: never served as zeros); rows of keyed tables (DeepRec EVs, stored by
key) may be absent, and the reply says which keys were found.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from redis.exceptions import RedisError, ResponseError

from deeprec_runtime.errors import Unavailable
from deeprec_runtime.features import redis_wire as wire
from deeprec_runtime.features.base import TableRows, VersionKey
from deeprec_runtime.features.graph import Table

if TYPE_CHECKING:
    from deeprec_runtime.features.redis_store import RedisFeatureStore

READ_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('STALE') end
local out = {}
local n = #KEYS
local i = 2
while i <= n do
  local j = math.min(i + 3999, n)
  local rows = redis.call('MGET', unpack(KEYS, i, j))
  for k = 1, #rows do
    if not rows[k] then return redis.error_reply('MISSING ' .. (i + k - 3)) end
    out[#out + 1] = rows[k]
  end
  i = j + 1
end
return table.concat(out)
"""
READ_KEYS_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('STALE') end
local found, out = {}, {}
local n = #KEYS
local i = 2
while i <= n do
  local j = math.min(i + 3999, n)
  local rows = redis.call('MGET', unpack(KEYS, i, j))
  for k = 1, #rows do
    if rows[k] then
      found[#found + 1] = '1'
      out[#out + 1] = rows[k]
    else
      found[#found + 1] = '0'
    end
  end
  i = j + 1
end
return {table.concat(found), table.concat(out)}
"""
"""Reads rows of keyed tables (DeepRec EVs): an absent row is an id the EV never stored (its
lookup falls back to DeepRec's default), so the reply says which keys were found."""

class RedisTableRows(TableRows):
    """One version's rows in one Redis slot."""

    def __init__(self, store: RedisFeatureStore, key: VersionKey, slot: int,
                 tables: Mapping[str, Table]):
        self.store, self.key, self.slot = store, key, slot
        self.tables = dict(tables)
        self.tag = str(key).encode()
        self.tag_key = store.tag_key(slot)
        self._prefixes = {name: store.row_prefix(slot, name) for name in tables}
        self._lost = False

    def lookup(self, requests: Sequence[tuple[Table, np.ndarray]]) -> list:
        dense = [(t, ids) for t, ids in requests if not t.keyed]
        keyed = [(t, ids) for t, ids in requests if t.keyed]
        found = iter(self._lookup_dense(dense) if dense else [])
        rows = iter(self._lookup_keyed(keyed) if keyed else [])
        return [next(rows) if t.keyed else next(found) for t, _ in requests]

    def _lookup_keyed(self, requests: Sequence[tuple[Table, np.ndarray]]) -> list:
        records = [wire.row_keys_records(self._prefixes[t.name], ids) for t, ids in requests]
        try:
            mask, reply = self.store.read(self.tag_key, self.tag, records, READ_KEYS_LUA)
        except ResponseError as exc:
            raise self._explain(exc, requests) from None
        found_all = np.frombuffer(mask, np.uint8) == ord("1")
        out, at, key_at = [], 0, 0
        view = memoryview(reply)
        for table, ids in requests:
            found = found_all[key_at:key_at + ids.shape[0]]
            key_at += ids.shape[0]
            size = int(found.sum()) * table.row_bytes
            chunk = np.frombuffer(view[at:at + size], dtype=table.dtype.newbyteorder("<"))
            at += size
            rows = np.zeros((ids.shape[0], *table.row_shape), table.dtype)
            rows[found] = chunk.reshape(-1, *table.row_shape)
            out.append((rows, found))
        if at != len(reply) or key_at != found_all.shape[0]:
            raise Unavailable(f"Redis returned {len(reply)} bytes of rows for {self.key}, expected "
                              f"{at}: rows were written with another shape or dtype")
        return out

    def _lookup_dense(self, requests: Sequence[tuple[Table, np.ndarray]]) -> list[np.ndarray]:
        records = [wire.row_keys_records(self._prefixes[t.name], ids) for t, ids in requests]
        try:
            reply = self.store.read(self.tag_key, self.tag, records)
        except ResponseError as exc:
            raise self._explain(exc, requests) from None
        out, at = [], 0
        view = memoryview(reply)
        for table, ids in requests:
            size = ids.shape[0] * table.row_bytes
            chunk = np.frombuffer(view[at:at + size], dtype=table.dtype.newbyteorder("<"))
            out.append(chunk.reshape(ids.shape[0], *table.row_shape))
            at += size
        if at != len(reply):
            raise Unavailable(f"Redis returned {len(reply)} bytes of rows for {self.key}, expected "
                              f"{at}: rows were written with another shape or dtype")
        return out

    def _explain(self, exc: ResponseError, requests) -> Unavailable:
        text = str(exc)
        if text.startswith("STALE"):
            self._lost = True
            return Unavailable(f"the embedding rows of {self.key} are no longer in Redis at "
                               f"{self.store.where} (restarted empty or replaced by a newer "
                               "version); they are being imported again")
        if text.startswith("MISSING"):
            index = int(text.split()[1])
            for table, ids in requests:
                if index < ids.shape[0]:
                    return Unavailable(f"embedding row {int(ids[index])} of table '{table.name}' "
                                       f"({self.key}) is missing in Redis at {self.store.where}")
                index -= ids.shape[0]
        return Unavailable(f"reading embedding rows from Redis at {self.store.where} failed: {text}")

    def apply_delta(self, step: int, rows: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        self.store.apply_delta(self.key, self.slot, step, self.tables, rows)

    def lost(self) -> bool:
        if self._lost:
            return True
        try:
            self._lost = self.store.client.get(self.tag_key) != self.tag
        except RedisError:
            return False  # unreachable is not lost: requests fail fast until it is back
        return self._lost
