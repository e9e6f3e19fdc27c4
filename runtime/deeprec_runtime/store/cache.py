"""Local cache for remote stores: fetch with integrity checks, and free what is no longer needed.

TensorFlow restores checkpoints from local paths, so a remote store (OSS, HDFS) copies what a
version needs into a cache folder that mirrors the remote layout:
`oss://bucket/ckpt/checkpoint_2/model.ckpt-10.index` -> `<cache>/oss/bucket/ckpt/checkpoint_2/...`.

Integrity: every file is written under a temporary name and renamed into place only when its size
matches the remote listing; a cached file counts as present only when its size and modification
time match the listing (a rewritten remote file is fetched again); a checkpoint is fetched only when
its `.index` and every `.data-XXXXX-of-YYYYY` shard are listed. So TensorFlow never reads a
partial or mixed checkpoint, whatever the network did.
"""

from __future__ import annotations

import builtins
import logging
import os
import posixpath
import re
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Callable
from typing import BinaryIO, TypeVar

from deeprec_runtime.store.base import (
    FileInfo,
    ModelStore,
    StoreError,
    StoreNotFound,
    StoreUnavailable,
)
from deeprec_runtime.store.retry import RetriesExhausted, RetryPolicy, call_with_retry

log = logging.getLogger(__name__)

T = TypeVar("T")
_TEMP_MARK = ".part-"
_SHARD = re.compile(r"^\.data-(?P<i>\d{5})-of-(?P<n>\d{5})$")


class IncompleteDownload(Exception):
    """Fewer (or more) bytes arrived than the listing promised: transient, the file is re-fetched."""


def split_url(url: str) -> tuple[str, str, str]:
    """`scheme://authority/a/b` -> (scheme, authority, "a/b")."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise StoreError(f"{url!r} is not a remote path (scheme://...)")
    authority, _, path = rest.partition("/")
    return scheme, authority, path.strip("/")


class LocalCache:
    """A folder holding local copies of remote files, laid out like the remote paths.

    `root` empty: a private temporary folder, removed when the cache is garbage-collected or the
    process exits. A configured folder (e.g. a pod's emptyDir) is reused across restarts: files
    whose size and modification time still match the remote listing are not fetched again."""

    def __init__(self, root: str = ""):
        if root:
            os.makedirs(root, exist_ok=True)
            self.root = os.path.realpath(root)
        else:
            self.root = tempfile.mkdtemp(prefix="deeprec-store-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.root, True)

    def path_for(self, url: str) -> str:
        scheme, authority, path = split_url(url)
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts) or any(c in authority for c in "/\\") or \
                authority in (".", ".."):
            raise StoreError(f"{url!r}: '.' and '..' are not allowed in remote paths")
        return os.path.join(self.root, scheme, authority or "_default", *parts)

    @staticmethod
    def is_fresh(local: str, info: FileInfo) -> bool:
        try:
            st = os.stat(local)
        except FileNotFoundError:
            return False
        return st.st_size == info.size and abs(st.st_mtime - info.mtime) < 1e-3

    def write(self, local: str, info: FileInfo, fill: Callable[[BinaryIO], None]) -> None:
        """Runs `fill` into a temporary file beside `local`; renames it into place only when its
        size is `info.size` (stamped with `info.mtime` so freshness can be checked later)."""
        os.makedirs(os.path.dirname(local), exist_ok=True)
        tmp = f"{local}{_TEMP_MARK}{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as fh:
                fill(fh)
            got = os.path.getsize(tmp)
            if got != info.size:
                raise IncompleteDownload(f"got {got} of {info.size} bytes")
            os.utime(tmp, (info.mtime, info.mtime))
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def prune(self, keep: list[str]) -> list[str]:
        """Deletes every cached file outside the local folders `keep`, and temporary files;
        returns what was deleted."""
        keep = [k.rstrip(os.sep) for k in keep]
        removed = []
        for dirpath, _dirs, files in os.walk(self.root, topdown=False):
            for name in files:
                full = os.path.join(dirpath, name)
                inside = any(full == k or full.startswith(k + os.sep) for k in keep)
                if _TEMP_MARK in name or not inside:
                    os.unlink(full)
                    removed.append(full)
            if dirpath != self.root and not os.listdir(dirpath):
                os.rmdir(dirpath)
        return removed


class CachingStore(ModelStore):
    """Base of the remote stores: retries, integrity and the cache are here; a backend implements
    the raw calls (`_list`, `_stat`, `_read`, `_download`, `_walk`) and says which of its errors
    are transient (`_transient`) and what the others mean (`_translate`)."""

    def __init__(self, cache: LocalCache, retry: RetryPolicy | None = None):
        self.cache = cache
        self.retry = retry or RetryPolicy()

    # --- backend hooks --------------------------------------------------------------------------
    def _list(self, url: str) -> list[FileInfo]:
        raise NotImplementedError

    def _stat(self, url: str) -> FileInfo | None:
        raise NotImplementedError

    def _read(self, url: str) -> bytes:
        raise NotImplementedError

    def _download(self, url: str, out: BinaryIO) -> None:
        """Writes the whole object at `url` to `out`."""
        raise NotImplementedError

    def _walk(self, url: str) -> list[tuple[str, FileInfo]]:
        """Every file under the folder `url`, as (path relative to it, info)."""
        raise NotImplementedError

    def _transient(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def _translate(self, exc: BaseException, url: str) -> StoreError:
        """A StoreError for a non-transient backend error (credentials, missing path ...)."""
        raise NotImplementedError

    # --- ModelStore -----------------------------------------------------------------------------
    def _call(self, what: str, url: str, fn: Callable[[], T]) -> T:
        try:
            return call_with_retry(fn, is_transient=self._is_transient, what=f"{what} {url}",
                                   policy=self.retry)
        except RetriesExhausted as exc:
            raise StoreUnavailable(str(exc)) from None
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 (every backend error becomes a StoreError)
            raise self._translate(exc, url) from None

    def _is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, IncompleteDownload) or self._transient(exc)

    def list(self, path: str) -> list[FileInfo]:
        return self._call("list", path, lambda: self._list(path))

    def stat(self, path: str) -> FileInfo | None:
        return self._call("stat", path, lambda: self._stat(path))

    def read_bytes(self, path: str) -> bytes:
        return self._call("read", path, lambda: self._read(path))

    def fetch(self, path: str, info: FileInfo) -> str:
        """The local copy of the file `path` whose listing is `info`, fetched unless fresh."""
        local = self.cache.path_for(path)
        if not self.cache.is_fresh(local, info):
            self._call("fetch", path,
                       lambda: self.cache.write(local, info, lambda out: self._download(path, out)))
            log.debug("fetched %s (%d bytes)", path, info.size)
        return local

    def localize_checkpoint(self, prefix: str) -> str:
        folder, base = posixpath.split(prefix.rstrip("/"))
        entries = {e.name: e for e in self.list(folder) if not e.is_dir}
        index = entries.get(base + ".index")
        shards: dict[int, FileInfo] = {}
        total = -1
        for name, info in entries.items():
            m = _SHARD.match(name[len(base):]) if name.startswith(base) else None
            if m:
                shards[int(m["i"])] = info
                total = int(m["n"])
        missing = [] if index is not None and index.size > 0 else [base + ".index"]
        if total < 1:
            missing.append(base + ".data-*")
        else:
            missing += [f"{base}.data-{i:05d}-of-{total:05d}" for i in range(total) if i not in shards]
        if missing or index is None:  # a None index is always in `missing`
            raise StoreNotFound(f"checkpoint {prefix} is incomplete: missing {', '.join(missing)}")
        for info in list(shards.values()) + [index]:
            self.fetch(self.join(folder, info.name), info)
        return self.cache.path_for(prefix)

    def localize_tree(self, path: str) -> str:
        files = self._call("walk", path, lambda: self._walk(path))
        if not files:
            raise StoreNotFound(f"{path}: no such folder, or it is empty")
        for rel, info in files:
            self.fetch(self.join(path.rstrip("/"), rel), info)
        return self.cache.path_for(path)

    def retain(self, keep: builtins.list[str]) -> None:
        removed = self.cache.prune([self.cache.path_for(k) for k in keep if k])
        if removed:
            log.info("freed %d cached files of versions no longer in use", len(removed))
