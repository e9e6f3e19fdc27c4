"""Fixtures for the remote model stores: a local OSS server (signature-checking, fault-injecting)
and helpers that upload a local model folder the way a training job would."""

from __future__ import annotations

import os

import oss2
import pytest

from deeprec_runtime.store.cache import LocalCache
from deeprec_runtime.store.oss import OssStore
from deeprec_runtime.store.retry import RetryPolicy
from tests.support.runtime import demo, serve  # noqa: F401 (fixtures shared with the runtime tests)

from .oss_server import OssServer

ACCESS_ID = "LTAI5tTestAccessId"
ACCESS_KEY = "test-secret-key-never-logged"
BUCKET = "models"

#: Fast backoff so fault tests take milliseconds, same shape as production's.
FAST_RETRY = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05, deadline=30)


@pytest.fixture
def oss_server():
    with OssServer({ACCESS_ID: ACCESS_KEY}, buckets=[BUCKET]) as server:
        yield server


@pytest.fixture
def bucket(oss_server) -> oss2.Bucket:
    """An oss2 client for uploads, as a training job would use."""
    return oss2.Bucket(oss2.Auth(ACCESS_ID, ACCESS_KEY), oss_server.endpoint, BUCKET)


@pytest.fixture
def make_store(oss_server, tmp_path):
    def make(access_id=ACCESS_ID, access_key=ACCESS_KEY, retry=FAST_RETRY, timeout=5.0,
             cache_dir=None) -> OssStore:
        cache = LocalCache(str(cache_dir or tmp_path / "cache"))
        return OssStore(oss_server.endpoint, access_id, access_key, cache, retry, timeout)

    return make


def _upload_order(rel: str) -> tuple[int, str]:
    # A training job's order: data shards, then .index, then the `checkpoint` state file, so a
    # reader never sees a version before its files.
    name = rel.rsplit("/", 1)[-1]
    return (2 if name == "checkpoint" else 1 if name.endswith(".index") else 0, rel)


class Uploader:
    """Mirrors a local folder to oss://bucket/prefix, uploading only new or changed files."""

    def __init__(self, bucket: oss2.Bucket, local_dir: str, prefix: str):
        self.bucket, self.local_dir, self.prefix = bucket, local_dir, prefix.strip("/")
        self._sent: dict[str, tuple[int, float]] = {}

    def sync(self) -> list[str]:
        pending = []
        for dirpath, _dirs, files in os.walk(self.local_dir):
            for name in files:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.local_dir).replace(os.sep, "/")
                st = os.stat(full)
                if self._sent.get(rel) != (st.st_size, st.st_mtime):
                    pending.append((rel, full, (st.st_size, st.st_mtime)))
        pending.sort(key=lambda p: _upload_order(p[0]))
        for rel, full, sig in pending:
            self.bucket.put_object_from_file(f"{self.prefix}/{rel}", full)
            self._sent[rel] = sig
        return [p[0] for p in pending]


@pytest.fixture(scope="session")
def hdfs_cluster(tmp_path_factory):
    """A real HDFS for the whole session (about 20 s to start)."""
    from .hdfs_cluster import HdfsCluster

    cluster = HdfsCluster(tmp_path_factory.mktemp("hdfs"))
    print(f"MiniDFSCluster up in {cluster.start_seconds:.1f}s at {cluster.webhdfs}")
    yield cluster
    cluster.stop()
