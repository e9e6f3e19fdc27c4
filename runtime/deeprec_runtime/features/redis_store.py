"""Embedding rows in Redis, shared by every replica of a model (`feature_store_type: "redis"`).

Layout (namespace NS = "deeprec:" + a hash of the model's checkpoint_dir, so the replicas of one
model share it and other models never collide):

    NS:r:<slot>:<table>:<id as 8 bytes, big-endian>   one row, raw little-endian values
    NS:tag:<slot>         "<version>@<full step>" once that slot's import is complete
    NS:meta               hash: live -> slot of the newest import; slot:<s> -> JSON
                          {version, full_step, delta_step, state, tables}
    NS:lock               import lock: SET NX PX + compare-and-delete, renewed while importing
    NS:stats              hash of counters: full:<version>@<step>, delta:<version>@<step>:<delta>

Two slots double-buffer full versions: an import always writes the slot that is not live, so the
serving slot is never cleared while the next version is written (DeepRec FLUSHDBs the serving DB
and serves zeros meanwhile). One replica imports under the lock; the others wait for the slot's tag
and bind to it. A request reads all its rows with one EVALSHA (the tag check plus MGET in one
atomic round trip): a slot that was re-used or lost (Redis restarted empty) answers STALE and a
missing row answers MISSING, both UNAVAILABLE for the caller, never zeros. Deltas are written to
the version's slot once for all replicas: the slot's JSON records the last delta applied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from deeprec_runtime.deeprec import ckpt
from deeprec_runtime.errors import Unavailable
from deeprec_runtime.features import redis_wire as wire
from deeprec_runtime.features.base import (
    FeatureStore,
    StoreUnavailable,
    TableRows,
    VersionKey,
    check_checkpoint_tables,
    chunk_rows_for,
    iter_table_rows,
)
from deeprec_runtime.features.graph import Table
from deeprec_runtime.features.redis_rows import READ_KEYS_LUA, READ_LUA, RedisTableRows

log = logging.getLogger(__name__)

RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

READ_TIMEOUT_S = 1.0
"""Socket timeout of request reads: a dead Redis fails requests fast instead of hanging them."""
CONNECT_TIMEOUT_S = 0.5
UPDATE_TIMEOUT_S = 60.0
LOCK_TTL_MS = 30_000
"""Lease of the import lock; renewed every third of it, so a crashed importer frees it soon."""
WRITE_CHUNK_BYTES = 4 << 20
"""Rows per MSET: big enough to amortise round trips, small enough not to stall Redis."""
WAIT_POLL_S = 0.2


def namespace_for(model_path: str) -> str:
    return "deeprec:" + hashlib.sha1(model_path.encode(), usedforsecurity=False).hexdigest()[:12]


def redacted_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def normalize_url(url: str) -> str:
    """DeepRec configs give "host:port"; redis-py wants a URL."""
    return url if "://" in url else f"redis://{url}"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _Lease:
    """The import lock, held by one replica; renewed in the background while it works."""

    def __init__(self, client: redis.Redis, key: str, renew, release):
        self.client, self.key = client, key
        self.token = uuid.uuid4().hex
        self._renew, self._release = renew, release
        self._stop = threading.Event()
        self.lost = False
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self.client.set(self.key, self.token, nx=True, px=LOCK_TTL_MS):
            return False
        self._thread = threading.Thread(target=self._keep, name="deeprec-redis-lease", daemon=True)
        self._thread.start()
        return True

    def _keep(self) -> None:
        while not self._stop.wait(LOCK_TTL_MS / 3000):
            try:
                if not self._renew(keys=[self.key], args=[self.token, LOCK_TTL_MS]):
                    self.lost = True
                    return
            except RedisError:
                continue  # Redis briefly away: the lease may still hold; the writes will tell

    def check(self) -> None:
        if self.lost:
            raise StoreUnavailable("lost the Redis import lock (lease expired); another replica "
                                   "may have taken over the import")

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        try:
            self._release(keys=[self.key], args=[self.token])
        except RedisError:
            pass  # expires by itself


class RedisFeatureStore(FeatureStore):
    #: DeepRec EmbeddingVariables' rows are stored by EV key (deeprec/keyed.py).
    serves_keyed_tables = True

    def __init__(self, url: str, password: str = "", read_connections: int = 4,  # nosec B107  # '' means no AUTH
                 update_connections: int = 2, namespace: str = "deeprec:default",
                 wait_timeout_s: float = 600.0):
        self.url = normalize_url(url)
        self.where = redacted_url(self.url)
        self.ns = namespace
        self.update_connections = update_connections
        self.wait_timeout_s = wait_timeout_s
        common = dict(password=password or None, socket_connect_timeout=CONNECT_TIMEOUT_S,
                      retry=Retry(NoBackoff(), 0))
        self.read_pool = redis.BlockingConnectionPool.from_url(
            self.url, max_connections=read_connections, timeout=READ_TIMEOUT_S,
            socket_timeout=READ_TIMEOUT_S, **common)
        self.update_pool = redis.BlockingConnectionPool.from_url(
            self.url, max_connections=update_connections + 2, timeout=UPDATE_TIMEOUT_S,
            socket_timeout=UPDATE_TIMEOUT_S, **common)
        self.client = redis.Redis(connection_pool=self.update_pool)
        # EVALSHA names a script by its SHA-1 (Redis's protocol), not a security use.
        self._shas = {script: hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
                      for script in (READ_LUA, READ_KEYS_LUA)}
        self._renew = self.client.register_script(RENEW_LUA)
        self._release = self.client.register_script(RELEASE_LUA)
        self.meta_key = f"{self.ns}:meta"
        self.lock_key = f"{self.ns}:lock"
        self.stats_key = f"{self.ns}:stats"
        self._writers = ThreadPoolExecutor(update_connections, thread_name_prefix="deeprec-redis-write")

    # --- keys ---------------------------------------------------------------------------------
    def tag_key(self, slot: int) -> str:
        return f"{self.ns}:tag:{slot}"

    def row_prefix(self, slot: int, table: str) -> bytes:
        return f"{self.ns}:r:{slot}:{table}:".encode()

    # --- versions -----------------------------------------------------------------------------
    def open_version(self, key: VersionKey, tables: Mapping[str, Table], full_prefix: str) -> TableRows:
        check_checkpoint_tables(full_prefix, tables)
        deadline = time.monotonic() + self.wait_timeout_s
        waited = False
        try:
            while True:
                slot = self._slot_holding(key, tables)
                if slot is not None:
                    if waited:
                        log.info("bound to %s imported by another replica (slot %d)", key, slot)
                    return RedisTableRows(self, key, slot, tables)
                lease = _Lease(self.client, self.lock_key, self._renew, self._release)
                if lease.acquire():
                    try:
                        slot = self._slot_holding(key, tables)
                        if slot is None:
                            slot = self._import(key, tables, full_prefix, lease)
                    finally:
                        lease.release()
                    return RedisTableRows(self, key, slot, tables)
                if time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"waited {self.wait_timeout_s:.0f}s for another replica to import {key} "
                        f"into Redis at {self.where}")
                waited = True
                time.sleep(WAIT_POLL_S)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis at {self.where} is unavailable while loading {key}: "
                                   f"{exc}") from None

    def slot_state(self, slot: int) -> dict | None:
        raw = self.client.hget(self.meta_key, f"slot:{slot}")
        return json.loads(raw) if raw else None

    def _slot_holding(self, key: VersionKey, tables: Mapping[str, Table]) -> int | None:
        want = str(key).encode()
        for slot in (0, 1):
            if self.client.get(self.tag_key(slot)) == want:
                state = self.slot_state(slot)
                if state and state.get("tables") == _table_shapes(tables):
                    return slot
        return None

    def _import(self, key: VersionKey, tables: Mapping[str, Table], prefix: str, lease: _Lease) -> int:
        started = time.monotonic()
        live = self.client.hget(self.meta_key, "live")
        slot = 1 - int(live) if live in (b"0", b"1") else 0
        state = {"version": key.name, "full_step": key.full_step, "delta_step": 0,
                 "state": "importing", "tables": _table_shapes(tables)}
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.tag_key(slot))  # readers bound to the old content now get STALE
        pipe.hset(self.meta_key, f"slot:{slot}", json.dumps(state))
        pipe.execute()
        self._clear_slot(slot)
        rows = 0
        for table in tables.values():
            if table.keyed:  # an EV: its rows by key, one checkpoint part at a time
                index = ckpt.CheckpointIndex(prefix)
                for part in ckpt.iter_full_parts(index, table.name, table.row_shape[0]):
                    lease.check()
                    self._write_rows(slot, table, part.keys, part.values)
                    rows += part.keys.shape[0]
                continue
            for start, values in iter_table_rows(prefix, table, chunk_rows_for(table)):
                lease.check()
                ids = np.arange(start, start + values.shape[0], dtype=np.int64)
                self._write_rows(slot, table, ids, values)
                rows += values.shape[0]
        lease.check()
        state["state"] = "complete"
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.tag_key(slot), str(key))
        pipe.hset(self.meta_key, mapping={f"slot:{slot}": json.dumps(state), "live": slot})
        pipe.hincrby(self.stats_key, f"full:{key}", 1)
        pipe.execute()
        log.info("imported %s into Redis slot %d: %d rows in %.2fs", key, slot, rows,
                 time.monotonic() - started)
        return slot

    def _clear_slot(self, slot: int) -> None:
        pattern = _glob_escape(f"{self.ns}:r:{slot}:") + "*"
        batch = []
        for k in self.client.scan_iter(match=pattern, count=10_000):
            batch.append(k)
            if len(batch) >= 10_000:
                self.client.unlink(*batch)
                batch = []
        if batch:
            self.client.unlink(*batch)

    def _write_rows(self, slot: int, table: Table, ids: np.ndarray, values: np.ndarray) -> None:
        """MSETs in chunks spread over update_thread_num connections; waits for all of them."""
        prefix = self.row_prefix(slot, table.name)
        values = np.ascontiguousarray(values, dtype=table.dtype.newbyteorder("<"))
        step = max(1, WRITE_CHUNK_BYTES // max(1, table.row_bytes))
        futures: list[Future] = [
            self._writers.submit(self._send, wire.mset(prefix, ids[i:i + step], values[i:i + step]))
            for i in range(0, ids.shape[0], step)]
        for f in futures:
            f.result()

    def _send(self, packed: bytes) -> None:
        conn = self.update_pool.get_connection()
        try:
            conn.send_packed_command([packed])
            reply = conn.read_response()
            if isinstance(reply, Exception):
                raise reply
        except (RedisConnectionError, RedisTimeoutError):
            conn.disconnect()
            raise
        finally:
            self.update_pool.release(conn)

    def apply_delta(self, key: VersionKey, slot: int, step: int, tables: Mapping[str, Table],
                    rows: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> bool:
        """Writes a delta into the version's slot unless a replica already did; True if this
        call wrote it."""
        deadline = time.monotonic() + self.wait_timeout_s
        try:
            while True:
                if self._delta_done(key, slot, step):
                    return False
                lease = _Lease(self.client, self.lock_key, self._renew, self._release)
                if lease.acquire():
                    try:
                        if self._delta_done(key, slot, step):
                            return False
                        started = time.monotonic()
                        for name, (ids, values) in rows.items():
                            lease.check()
                            self._write_rows(slot, tables[name], ids, values)
                        lease.check()
                        state = self.slot_state(slot) or {}
                        state["delta_step"] = step
                        pipe = self.client.pipeline(transaction=True)
                        pipe.hset(self.meta_key, f"slot:{slot}", json.dumps(state))
                        pipe.hincrby(self.stats_key, f"delta:{key}:{step}", 1)
                        pipe.execute()
                        log.info("wrote delta %d of %s to Redis (%d rows) in %.3fs", step, key,
                                 sum(len(i) for i, _ in rows.values()), time.monotonic() - started)
                        return True
                    finally:
                        lease.release()
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"waited {self.wait_timeout_s:.0f}s for the Redis "
                                           f"import lock to write delta {step} of {key}")
                time.sleep(WAIT_POLL_S)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis at {self.where} is unavailable while writing delta "
                                   f"{step} of {key}: {exc}") from None

    def _delta_done(self, key: VersionKey, slot: int, step: int) -> bool:
        if self.client.get(self.tag_key(slot)) != str(key).encode():
            raise StoreUnavailable(f"Redis slot {slot} no longer holds {key} (Redis restarted or a "
                                   "newer version was imported); the version will be imported again")
        state = self.slot_state(slot) or {}
        return int(state.get("delta_step", 0)) >= step

    # --- reads --------------------------------------------------------------------------------
    def read(self, tag_key: str, tag: bytes, records: list[np.ndarray], script: str = READ_LUA):
        """One atomic round trip: checks the slot's tag and MGETs every row key."""
        packed = wire.evalsha_with_keys(self._shas[script], [tag_key.encode()], records, [tag])
        try:
            conn = self.read_pool.get_connection()
        except RedisError as exc:
            raise Unavailable(f"Redis at {self.where} is unavailable: {exc}") from None
        try:
            for attempt in (0, 1):
                conn.send_packed_command([packed])
                try:
                    reply = conn.read_response()
                except NoScriptError:
                    if attempt:
                        raise
                    # First use, or Redis restarted / SCRIPT FLUSH: load the script, retry once.
                    conn.send_packed_command([wire.command(b"SCRIPT", b"LOAD", script.encode())])
                    conn.read_response()
                    continue
                if isinstance(reply, ResponseError):
                    raise reply
                return reply
            raise AssertionError("unreachable")
        except (RedisConnectionError, RedisTimeoutError) as exc:
            conn.disconnect()
            raise Unavailable(f"Redis at {self.where} is unavailable: {exc}") from None
        finally:
            self.read_pool.release(conn)

    def close(self) -> None:
        self._writers.shutdown(wait=False)
        self.read_pool.disconnect()
        self.update_pool.disconnect()


def _table_shapes(tables: Mapping[str, Table]) -> dict[str, list]:
    return {t.name: [*t.shape, str(t.dtype)] for t in tables.values()}
