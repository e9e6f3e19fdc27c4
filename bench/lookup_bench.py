"""Embedding lookup overhead: rows from Redis or DRAM+SSD tiers vs the in-graph gather.

Prints per-request latency of the data-plane core (decode, lookup, session run, encode; no gRPC)
for the Wide&Deep demo model at batch 1 and 256, and the time to import a full 1M x 16 table and a
1% delta into Redis. Starts its own redis-server (Debian package) on a free port.

    .venv/bin/python bench/lookup_bench.py [--ids 100000] [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import redis
import tensorflow as tf

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.codec import encode_array
from deeprec_runtime.config import parse_model_config
from deeprec_runtime.features import VersionKey
from deeprec_runtime.features.graph import Lookup, Table
from deeprec_runtime.features.redis_store import RedisFeatureStore
from deeprec_runtime.model.manager import Manager
from deeprec_runtime.predict import predict
from deeprec_runtime.training import write_demo_model


def start_redis(workdir: str) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install -y redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.01)
    raise SystemExit("redis-server did not start")


def request_for(feed: dict[str, np.ndarray]) -> pb.PredictRequest:
    req = pb.PredictRequest()
    for k, v in feed.items():
        encode_array(v, req.inputs[k])
    return req


def time_predict(manager: Manager, requests: list[pb.PredictRequest]) -> float:
    with manager.hold() as handle:
        servable = handle.servable
        for r in requests[:20]:
            predict(servable, r, "serving_default")
        started = time.perf_counter()
        for r in requests:
            predict(servable, r, "serving_default")
        return (time.perf_counter() - started) / len(requests) * 1e6


def lookup_latency(art, port: int, workdir: str, n: int) -> None:
    table_bytes = art.model.num_ids * (16 + 1) * 4
    setups = {
        "in-graph": {},
        "dram (type 1)": {"ev_storage_type": 1},
        "dram+ssd (type 12, DRAM = 1/4 table)": {
            "ev_storage_type": 12, "ev_storage_path": os.path.join(workdir, "ssd"),
            "ev_storage_size": [table_bytes // 4, 1 << 34]},
        "redis": {"feature_store_type": "redis", "redis_url": f"127.0.0.1:{port}"},
    }
    rng = np.random.default_rng(0)
    batches = {b: [request_for(art.model.make_feed(b, rng)) for _ in range(n)] for b in (1, 256)}
    print(f"predict latency, data-plane core, 1 thread, {art.model.num_ids} ids x 16 dims, "
          f"8 ids per example (us per request):")
    print(f"  {'store':40s} {'batch 1':>10s} {'batch 256':>10s}")
    base = {}
    for label, fields in setups.items():
        cfg = parse_model_config({"savedmodel_dir": art.saved_model_dir,
                                  "checkpoint_dir": art.checkpoint_dir, "warmup_iterations": 0,
                                  **fields})
        manager = Manager(cfg, annotations_file=os.path.join(workdir, "none"))
        manager.poll_once()
        assert manager.ready, manager.last_error
        got = {b: time_predict(manager, reqs) for b, reqs in batches.items()}
        base = base or got
        extra = "" if label == "in-graph" else f"   (+{got[1] - base[1]:.0f} / +{got[256] - base[256]:.0f})"
        print(f"  {label:40s} {got[1]:10.0f} {got[256]:10.0f}{extra}")
        manager.stop()


def redis_import(port: int, workdir: str, rows: int = 1_000_000, dim: int = 16) -> None:
    prefix = os.path.join(workdir, "big", "model.ckpt-1")
    os.makedirs(os.path.dirname(prefix))
    values = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["big"], shape_and_slices=[""],
                      tensors=[tf.constant(values)])
    table = Table("big", rows, (dim,), np.dtype(np.float32), (Lookup("ids:0", "rows:0"),))
    for threads in (1, 2, 4):
        redis.Redis(port=port).flushall()
        store = RedisFeatureStore(f"127.0.0.1:{port}", update_connections=threads,
                                  namespace=f"bench{threads}")
        started = time.perf_counter()
        rows_obj = store.open_version(VersionKey("v1", 1), {"big": table}, prefix)
        full = time.perf_counter() - started
        ids = np.sort(np.random.default_rng(1).choice(rows, rows // 100, replace=False))
        delta = np.random.default_rng(2).standard_normal((ids.shape[0], dim)).astype(np.float32)
        started = time.perf_counter()
        rows_obj.apply_delta(2, {"big": (ids, delta)})
        took = time.perf_counter() - started
        check = rows_obj.lookup([(table, ids[:1000])])[0]
        assert np.array_equal(check, delta[:1000])
        print(f"  update_thread_num={threads}: full import {full:6.2f} s "
              f"({rows / full / 1e3:.0f}k rows/s), 1% delta ({ids.shape[0]} rows) {took * 1e3:7.1f} ms")
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="lookup-bench-")
    proc, port = start_redis(workdir)
    try:
        art = write_demo_model(os.path.join(workdir, "model"), num_ids=args.ids, num_deltas=0)
        lookup_latency(art, port, workdir, args.requests)
        art.close()
        print("Redis import of a 1M x 16 float32 table (64 MB) and of a 1% delta:")
        redis_import(port, workdir)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
