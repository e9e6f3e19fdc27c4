"""HDFS model store (`hdfs://namenode:port/path` or `hdfs:///path`) over WebHDFS, through fsspec.

WebHDFS is HDFS's REST API, served by the NameNode's HTTP port (9870 by default in Hadoop 3); it
needs no JVM or libhdfs in the pod. The port in an hdfs:// path is the NameNode's RPC port, so the
HTTP address comes from `webhdfs_address` (or WEBHDFS_ADDRESS), else the path's host on 9870.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlparse

import requests
from fsspec.implementations.webhdfs import WebHDFS
from requests.adapters import HTTPAdapter

from deeprec_runtime.store.base import (
    FileInfo,
    StoreAuthError,
    StoreError,
    StoreNotFound,
)
from deeprec_runtime.store.cache import CachingStore, LocalCache, split_url
from deeprec_runtime.store.retry import RetryPolicy, describe

if TYPE_CHECKING:
    from deeprec_runtime.config import ModelConfig

DEFAULT_WEBHDFS_PORT = 9870
_BLOCK = 8 << 20


class _TimeoutAdapter(HTTPAdapter):
    """fsspec's WebHDFS sends requests without a timeout; a stalled NameNode or DataNode must fail
    (and be retried) instead of hanging the update thread forever."""

    def __init__(self, timeout: float):
        super().__init__()
        self._timeout = timeout

    def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().send(request, **kwargs)


def _raise_on_5xx(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    # fsspec reads a DataNode's answer without checking its status: an error page must never be
    # taken for file bytes.
    if response.status_code >= 500:
        response.raise_for_status()


class HdfsStore(CachingStore):
    """Reads hdfs:// paths through one WebHDFS endpoint.

    Example: `HdfsStore("http://namenode:9870", "serving", LocalCache())
    .list("hdfs://namenode:8020/models/ckpt")`."""

    def __init__(self, webhdfs_address: str, user: str, cache: LocalCache,
                 retry: RetryPolicy | None = None, timeout: float = 30.0):
        super().__init__(cache, retry)
        parsed = urlparse(webhdfs_address if "://" in webhdfs_address else f"http://{webhdfs_address}")
        if not parsed.hostname:
            raise StoreError(f"webhdfs_address {webhdfs_address!r} has no host")
        self.address = f"{parsed.scheme}://{parsed.hostname}:{parsed.port or DEFAULT_WEBHDFS_PORT}"
        self._fs = WebHDFS(parsed.hostname, port=parsed.port or DEFAULT_WEBHDFS_PORT,
                           user=user or None, use_https=parsed.scheme == "https",
                           skip_instance_cache=True)
        adapter = _TimeoutAdapter(timeout)
        self._fs.session.mount("http://", adapter)
        self._fs.session.mount("https://", adapter)
        self._fs.session.hooks["response"].append(_raise_on_5xx)

    @classmethod
    def from_config(cls, config: ModelConfig) -> HdfsStore:
        address = config.webhdfs_address
        if not address:
            _, authority, _ = split_url(config.savedmodel_dir)
            host = authority.rsplit(":", 1)[0]
            if not host:
                raise StoreError("hdfs:/// paths name no NameNode: set webhdfs_address "
                                 "(or WEBHDFS_ADDRESS), e.g. http://namenode:9870")
            address = f"http://{host}:{DEFAULT_WEBHDFS_PORT}"
        return cls(address, config.hdfs_user, LocalCache(config.model_cache_dir))

    @staticmethod
    def _path(url: str) -> str:
        scheme, _, path = split_url(url)
        if scheme != "hdfs":
            raise StoreError(f"{url!r} is not an hdfs:// path")
        return "/" + path

    @staticmethod
    def _info(name: str, raw: dict[str, Any]) -> FileInfo:
        return FileInfo(name, raw["type"].lower() == "directory", int(raw.get("length", 0)),
                        raw.get("modificationTime", 0) / 1000.0)

    # --- raw calls ------------------------------------------------------------------------------
    def _list(self, url: str) -> list[FileInfo]:
        path = self._path(url)
        try:
            entries = self._fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        # LISTSTATUS on a file answers with the file itself (empty pathSuffix): not a folder.
        return [self._info(e["pathSuffix"], e) for e in entries if e.get("pathSuffix")]

    def _walk(self, url: str) -> list[tuple[str, FileInfo]]:
        root = self._path(url).rstrip("/")
        out = []
        pending = [""]
        while pending:
            rel_dir = pending.pop()
            try:
                entries = self._fs.ls(posixpath.join(root, rel_dir) if rel_dir else root, detail=True)
            except FileNotFoundError:
                return []
            for e in entries:
                if not e.get("pathSuffix"):
                    continue
                rel = posixpath.join(rel_dir, e["pathSuffix"]) if rel_dir else e["pathSuffix"]
                info = self._info(e["pathSuffix"], e)
                if info.is_dir:
                    pending.append(rel)
                else:
                    out.append((rel, info))
        return out

    def _stat(self, url: str) -> FileInfo | None:
        path = self._path(url)
        try:
            raw = self._fs.info(path)
        except FileNotFoundError:
            return None
        return self._info(posixpath.basename(path.rstrip("/")), raw)

    def _read(self, url: str) -> bytes:
        return self._fs.cat_file(self._path(url))

    def _download(self, url: str, out: BinaryIO) -> None:
        out.seek(0)
        out.truncate()
        with self._fs.open(self._path(url), "rb", block_size=_BLOCK) as src:
            while True:
                chunk = src.read(_BLOCK)
                if not chunk:
                    break
                out.write(chunk)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Writes `data` to `path` (timelines written to hdfs://), retried like reads."""
        self._call("write", path, lambda: self._fs.pipe_file(self._path(path), data))

    # --- errors ---------------------------------------------------------------------------------
    def _transient(self, exc: BaseException) -> bool:
        if isinstance(exc, requests.HTTPError):
            status = exc.response.status_code if exc.response is not None else 0
            return status >= 500 or status in (408, 429)
        if isinstance(exc, requests.RequestException):  # timeouts, resets, refused connections
            return True
        # fsspec turns a NameNode RemoteException of an unknown kind into RuntimeError; HDFS
        # answers StandbyException / RetriableException this way during a failover.
        if isinstance(exc, RuntimeError):
            return any(s in str(exc) for s in ("Standby", "Retriable", "SafeMode", "safe mode"))
        return isinstance(exc, (ConnectionError, TimeoutError))

    def _translate(self, exc: BaseException, url: str) -> StoreError:
        if isinstance(exc, FileNotFoundError):
            return StoreNotFound(f"{url}: no such file or folder on HDFS ({self.address})")
        if isinstance(exc, PermissionError):
            return StoreAuthError(f"HDFS denied access to {url}: {describe(exc)}; check hdfs_user "
                                  "(or HADOOP_USER_NAME)")
        if isinstance(exc, requests.HTTPError) and exc.response is not None and \
                exc.response.status_code in (401, 403):
            return StoreAuthError(f"WebHDFS at {self.address} refused {url} with HTTP "
                                  f"{exc.response.status_code}; check hdfs_user (or HADOOP_USER_NAME)")
        return StoreError(f"{url}: {describe(exc)}")
