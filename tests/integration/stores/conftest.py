"""Fixtures for the remote model stores: a local OSS server (signature-checking, fault-injecting),
an oss2 client and OssStores on it, and a real HDFS (helpers in tests/support/stores/)."""

from __future__ import annotations

import oss2
import pytest

from deeprec_runtime.store.cache import LocalCache
from deeprec_runtime.store.oss import OssStore
from tests.support.runtime import demo, serve  # noqa: F401 (fixtures shared with the runtime tests)
from tests.support.stores.common import ACCESS_ID, ACCESS_KEY, BUCKET, FAST_RETRY
from tests.support.stores.oss_server import OssServer


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


@pytest.fixture(scope="session")
def hdfs_cluster(tmp_path_factory):
    """A real HDFS for the whole session (about 20 s to start)."""
    from tests.support.stores.hdfs_cluster import HdfsCluster

    cluster = HdfsCluster(tmp_path_factory.mktemp("hdfs"))
    print(f"MiniDFSCluster up in {cluster.start_seconds:.1f}s at {cluster.webhdfs}")
    yield cluster
    cluster.stop()
