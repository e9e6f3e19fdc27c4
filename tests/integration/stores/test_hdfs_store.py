"""HdfsStore against a real HDFS (MiniDFSCluster over WebHDFS): listing, exact checkpoint fetches,
missing paths, an unreachable NameNode, and a model served from hdfs:// following its updates."""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from fsspec.implementations.webhdfs import WebHDFS

from deeprec_runtime.store.base import StoreNotFound, StoreUnavailable
from deeprec_runtime.store.cache import LocalCache
from deeprec_runtime.store.hdfs import HdfsStore
from deeprec_runtime.store.retry import RetryPolicy
from tests.support.runtime import output, wait_for
from tests.support.stores.common import FAST_RETRY
from tests.support.stores.hdfs_cluster import upload_tree


@pytest.fixture
def hdfs(hdfs_cluster, tmp_path):
    """(writer fs, store, root url): a fresh folder per test."""
    host_port = hdfs_cluster.webhdfs.split("://", 1)[1]
    host, port = host_port.split(":")
    fs = WebHDFS(host, port=int(port), user="trainer", skip_instance_cache=True)
    root = f"/t-{uuid.uuid4().hex[:8]}"
    store = HdfsStore(hdfs_cluster.webhdfs, "serving", LocalCache(str(tmp_path / "cache")), FAST_RETRY)
    return fs, store, root, f"hdfs://127.0.0.1:{hdfs_cluster.rpc.rsplit(':', 1)[1]}{root}"


def test_list_stat_read_and_missing_paths(hdfs):
    fs, store, root, url = hdfs
    fs.pipe_file(f"{root}/ckpt/checkpoint_1/checkpoint", b'model_checkpoint_path: "m-1"\n')
    fs.pipe_file(f"{root}/ckpt/checkpoint_1/m-1.index", b"i" * 10)
    fs.makedirs(f"{root}/ckpt/checkpoint_1/.incremental_checkpoint", exist_ok=True)
    entries = {e.name: e for e in store.list(f"{url}/ckpt/checkpoint_1")}
    assert entries[".incremental_checkpoint"].is_dir
    assert entries["m-1.index"].size == 10 and entries["m-1.index"].mtime > 1e9
    assert [e.name for e in store.list(f"{url}/ckpt")] == ["checkpoint_1"]
    assert store.list(f"{url}/ckpt/checkpoint_1/m-1.index") == []  # a file is not a folder
    assert store.list(f"{url}/nothing") == []
    assert store.stat(f"{url}/ckpt/checkpoint_1/checkpoint").is_dir is False
    assert store.stat(f"{url}/ckpt").is_dir is True
    assert store.stat(f"{url}/nothing") is None
    assert store.read_bytes(f"{url}/ckpt/checkpoint_1/checkpoint").startswith(b"model_checkpoint_path")
    with pytest.raises(StoreNotFound, match="nothing"):
        store.read_bytes(f"{url}/nothing")


def test_checkpoint_and_tree_are_fetched_exactly_and_incomplete_ones_refused(hdfs):
    fs, store, root, url = hdfs
    files = {f"m-5.data-0000{i}-of-00002": os.urandom(200_000) for i in range(2)}
    files["m-5.index"] = os.urandom(300)
    for name, data in files.items():
        fs.pipe_file(f"{root}/v1/{name}", data)
    local = store.localize_checkpoint(f"{url}/v1/m-5")
    for name, data in files.items():
        with open(os.path.join(os.path.dirname(local), name), "rb") as fh:
            assert fh.read() == data
    fs.pipe_file(f"{root}/v2/m-6.data-00000-of-00002", b"x")
    fs.pipe_file(f"{root}/v2/m-6.index", b"y")
    with pytest.raises(StoreNotFound, match=r"m-6\.data-00001-of-00002"):
        store.localize_checkpoint(f"{url}/v2/m-6")
    tree = store.localize_tree(f"{url}/v1")
    assert sorted(os.listdir(tree)) == sorted(files)


def test_unreachable_namenode_fails_after_bounded_retries(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = HdfsStore(f"http://127.0.0.1:{port}", "serving", LocalCache(str(tmp_path / "c")),
                      RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="after 3 tries"):
        store.list("hdfs://namenode:8020/models")
    assert time.monotonic() - started < 10


def test_hdfs_model_serves_and_follows_deltas_and_new_versions(hdfs, hdfs_cluster, demo, serve, tmp_path):
    fs, _store, root, url = hdfs
    sent: dict = {}
    upload_tree(fs, demo.base_dir, root, sent)
    def rel(p):
        return p[len(demo.base_dir):].strip("/")
    _, client = serve(f"{url}/{rel(demo.saved_model_dir)}", f"{url}/{rel(demo.checkpoint_dir)}",
                            model_store_type="hdfs", webhdfs_address=hdfs_cluster.webhdfs,
                            hdfs_user="serving", model_cache_dir=str(tmp_path / "cache"))
    feed = demo.model.make_feed(8, np.random.default_rng(21))
    assert client.info().version == "checkpoint_1"
    np.testing.assert_allclose(output(client.predict(feed), "probability"), demo.model.predict(feed),
                               rtol=1e-5, atol=1e-6)
    prefix = demo.write_delta(steps=2)
    upload_tree(fs, demo.base_dir, root, sent)
    step = int(prefix.rsplit("-", 1)[1])
    wait_for(lambda: client.info().delta_step == step, timeout=20, message="delta from HDFS")
    np.testing.assert_allclose(output(client.predict(feed), "probability"), demo.model.predict(feed),
                               rtol=1e-5, atol=1e-6)
    demo.write_full("checkpoint_2", steps=3)
    upload_tree(fs, demo.base_dir, root, sent)
    wait_for(lambda: client.info().version == "checkpoint_2", timeout=20, message="checkpoint_2 from HDFS")
    np.testing.assert_allclose(output(client.predict(feed), "probability"), demo.model.predict(feed),
                               rtol=1e-5, atol=1e-6)


class _FlakyNameNode(BaseHTTPRequestHandler):
    """Forwards to the real NameNode, but answers 503 to the first `failures` requests (as an
    overloaded NameNode or a gateway in front of it does)."""

    protocol_version = "HTTP/1.1"
    upstream = ""
    failures = 0
    seen = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).seen += 1
        if type(self).seen <= type(self).failures:
            body = b"<html>Service Unavailable</html>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        host, port = self.upstream.split("://", 1)[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", self.path)
        resp = conn.getresponse()
        body = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        conn.close()


def test_namenode_5xx_answers_are_retried_and_the_fetch_is_exact(hdfs, hdfs_cluster, tmp_path):
    fs, _store, root, url = hdfs
    files = {"m-1.data-00000-of-00001": os.urandom(100_000), "m-1.index": os.urandom(100)}
    for name, data in files.items():
        fs.pipe_file(f"{root}/v/{name}", data)
    handler = type("Flaky", (_FlakyNameNode,), {"upstream": hdfs_cluster.webhdfs, "failures": 4})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        store = HdfsStore(f"http://127.0.0.1:{proxy.server_address[1]}", "serving",
                          LocalCache(str(tmp_path / "c")), FAST_RETRY)
        local = store.localize_checkpoint(f"{url}/v/m-1")
        for name, data in files.items():
            with open(os.path.join(os.path.dirname(local), name), "rb") as fh:
                assert fh.read() == data
        assert handler.seen > handler.failures
        handler.failures, handler.seen = 10**6, 0  # a NameNode that stays down
        with pytest.raises(StoreUnavailable, match="HTTPError: 503"):
            store.list(f"{url}/v")
        assert handler.seen == FAST_RETRY.attempts
    finally:
        proxy.shutdown()
        proxy.server_close()
