"""Alibaba Cloud OSS model store (`oss://bucket/path`), spoken to through the `oss2` SDK.

OSS has no folders: a "folder" is a key prefix ending in "/", listed with delimiter "/". Objects
are fetched whole into the local cache (see cache.py); oss2 checks each whole-object download
against the CRC-64 the server sends, and the cache checks its size against the listing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO

import oss2
import requests

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

_CHUNK = 1 << 20
_LIST_PAGE = 1000
#: Error codes that mean the id or key is wrong, as opposed to a permission the key lacks.
_BAD_CREDENTIALS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidSecurityToken",
                              "SecurityTokenExpired"})


def _check_crc(result: oss2.models.GetObjectResult) -> None:
    """oss2 computes the CRC-64 of what it streamed but only compares it in get_object_to_file."""
    if result.server_crc is not None:
        oss2.utils.check_crc("get", result.client_crc, result.server_crc, result.request_id)


class OssStore(CachingStore):
    """Reads `oss://bucket/...` paths from one OSS endpoint with one access key pair.

    Example: `OssStore("https://oss-cn-hangzhou.aliyuncs.com", id, key, LocalCache())
    .localize_checkpoint("oss://models/ckpt/checkpoint_2/model.ckpt-10")` -> a local prefix."""

    def __init__(self, endpoint: str, access_id: str, access_key: str, cache: LocalCache,
                 retry: RetryPolicy | None = None, timeout: float = 30.0):
        super().__init__(cache, retry)
        self._endpoint = endpoint
        self._auth = oss2.Auth(access_id, access_key)
        self._timeout = timeout
        self._session = oss2.Session()  # one connection pool for every bucket
        self._buckets: dict[str, oss2.Bucket] = {}

    @classmethod
    def from_config(cls, config: ModelConfig) -> OssStore:
        return cls(config.oss_endpoint, config.oss_access_id, config.oss_access_key,
                   LocalCache(config.model_cache_dir))

    def _bucket(self, url: str) -> tuple[oss2.Bucket, str]:
        scheme, bucket, key = split_url(url)
        if scheme != "oss" or not bucket:
            raise StoreError(f"{url!r} is not an oss://bucket/path")
        if bucket not in self._buckets:
            self._buckets[bucket] = oss2.Bucket(self._auth, self._endpoint, bucket,
                                                session=self._session, connect_timeout=self._timeout)
        return self._buckets[bucket], key

    # --- raw calls ------------------------------------------------------------------------------
    def _list(self, url: str) -> list[FileInfo]:
        bucket, key = self._bucket(url)
        prefix = key + "/" if key else ""
        out: list[FileInfo] = []
        token = ""  # nosec B105  # listing continuation token, not a credential
        while True:
            page = bucket.list_objects_v2(prefix=prefix, delimiter="/", continuation_token=token,
                                          max_keys=_LIST_PAGE)
            out += [FileInfo(o.key[len(prefix):], False, o.size, float(o.last_modified))
                    for o in page.object_list if o.key != prefix]  # skip a folder marker
            out += [FileInfo(p[len(prefix):].rstrip("/"), True, 0, 0.0) for p in page.prefix_list]
            if not page.is_truncated:
                return out
            token = page.next_continuation_token

    def _walk(self, url: str) -> list[tuple[str, FileInfo]]:
        bucket, key = self._bucket(url)
        prefix = key + "/" if key else ""
        out = []
        token = ""  # nosec B105  # listing continuation token, not a credential
        while True:
            page = bucket.list_objects_v2(prefix=prefix, continuation_token=token, max_keys=_LIST_PAGE)
            for o in page.object_list:
                rel = o.key[len(prefix):]
                if rel and not rel.endswith("/"):
                    out.append((rel, FileInfo(rel.rsplit("/", 1)[-1], False, o.size,
                                              float(o.last_modified))))
            if not page.is_truncated:
                return out
            token = page.next_continuation_token

    def _stat(self, url: str) -> FileInfo | None:
        bucket, key = self._bucket(url)
        name = key.rsplit("/", 1)[-1]
        try:
            meta = bucket.head_object(key) if key else None
        except oss2.exceptions.NotFound:
            meta = None
        if meta is not None:
            return FileInfo(name, False, meta.content_length, float(meta.last_modified))
        probe = bucket.list_objects_v2(prefix=key + "/" if key else "", max_keys=1)
        return FileInfo(name, True, 0, 0.0) if probe.object_list or probe.prefix_list else None

    def _read(self, url: str) -> bytes:
        bucket, key = self._bucket(url)
        stream = bucket.get_object(key)
        data = stream.read()
        _check_crc(stream)
        return data

    def _download(self, url: str, out: BinaryIO) -> None:
        bucket, key = self._bucket(url)
        # Starting over from 0 on a retry (rather than resuming with a Range) keeps oss2's CRC-64
        # check of the whole object, which covers bytes mangled in transit.
        out.seek(0)
        out.truncate()
        stream = bucket.get_object(key)
        while True:
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            out.write(chunk)
        _check_crc(stream)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Uploads `data` to `path` (timelines written to oss://), retried like reads."""
        bucket, key = self._bucket(path)
        self._call("write", path, lambda: bucket.put_object(key, data))

    # --- errors ---------------------------------------------------------------------------------
    def _transient(self, exc: BaseException) -> bool:
        if isinstance(exc, oss2.exceptions.RequestError):  # no response: timeout, reset, refused
            return True
        if isinstance(exc, oss2.exceptions.InconsistentError):  # CRC-64 mismatch
            return True
        if isinstance(exc, oss2.exceptions.OssError):
            return exc.status >= 500 or exc.status in (408, 429)
        # A body cut short surfaces from the stream as a requests / urllib3 / socket error.
        return isinstance(exc, (requests.exceptions.RequestException, ConnectionError, TimeoutError))

    def _translate(self, exc: BaseException, url: str) -> StoreError:
        if isinstance(exc, oss2.exceptions.OssError):
            code = exc.code or str(exc.status)
            rid = f" (request id {exc.request_id})" if exc.request_id else ""
            if code in _BAD_CREDENTIALS:
                return StoreAuthError(
                    f"OSS rejected the credentials for {url}: {code}. Check oss_access_id and "
                    f"oss_access_key (or OSS_ACCESS_ID / OSS_ACCESS_KEY) and oss_endpoint{rid}")
            if exc.status == 403:
                return StoreAuthError(f"OSS denied access to {url}: {code}; the key given by "
                                      f"oss_access_id lacks permission for it{rid}")
            if code == "NoSuchBucket":
                return StoreNotFound(f"{url}: bucket does not exist at oss_endpoint "
                                     f"{self._endpoint}{rid}")
            if exc.status == 404:
                return StoreNotFound(f"{url}: no such object ({code}){rid}")
            return StoreError(f"{url}: OSS error {exc.status} {code}{rid}")
        return StoreError(f"{url}: {describe(exc)}")
