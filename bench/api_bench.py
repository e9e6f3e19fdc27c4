"""Front-door benchmark: what each API costs on top of the model, and what metrics cost.

  .venv/bin/python bench/api_bench.py [--duration 4] [--batch 64] [--concurrency 4]
      [--fast-predict on|off] [--feature-store session|dram|dram_ssd]

1. Per-request metrics work (begin + observe_request + end), in-process, microseconds.
2. TF Serving TensorProto -> ArrayProto -> TensorProto conversion for one request, vs
   tf.make_ndarray / tf.make_tensor_proto (what the conversion avoids).
3. The same Wide&Deep demo request (batch --batch) through each API of one `deeprec-runtime
   serve` process: DeepRec gRPC, TF Serving gRPC, TF Serving REST (:predict, columnar) and
   Simple TensorFlow Serving JSON (POST /); closed loop, --concurrency callers in 2 client
   processes; requests/s, p50/p99 and the server's CPU per request (from /proc). The process
   serves the model twice, as `default` and `second` (a model_config_list): the row
   `tfs_grpc_2nd` sends the TF Serving gRPC request to the second model, which has C++ plans of
   its own (before, only a runtime's first model had them).
The machine is shared: absolute figures move between runs; compare rows of one run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proctree import cpu_seconds


def per_call_us(fn, n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def metrics_cost() -> None:
    from deeprec_api import predict_pb2 as pb
    from deeprec_runtime.metrics import Metrics

    metrics = Metrics()
    request = pb.PredictRequest()
    request.inputs["x"].array_shape.dim.extend([64, 13])

    def one() -> None:
        started = metrics.begin("tfs_grpc")
        metrics.observe_request("m", "checkpoint_1", request)
        metrics.end("tfs_grpc", "OK", started)

    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry()
    children = (Counter("r", "r", ("a",), registry=registry).labels("x"),
                Histogram("l", "l", ("a",), registry=registry).labels("x"),
                Gauge("f", "f", ("a",), registry=registry).labels("x"),
                Histogram("b", "b", ("a",), registry=registry).labels("x"))

    def with_client_library() -> None:  # the same work through prometheus-client's children
        children[2].inc()
        children[3].observe(64)
        children[0].inc()
        children[1].observe(0.001)
        children[2].dec()

    print(f"1. metrics per request: ours {per_call_us(one, 100_000):.2f} us "
          f"(begin + observe_request + end); the same through prometheus-client's Counter/"
          f"Histogram/Gauge {per_call_us(with_client_library, 100_000):.2f} us")


def conversion_cost(feed: dict[str, np.ndarray]) -> None:
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    from deeprec_api import predict_pb2 as pb
    from deeprec_runtime.server.tfs_convert import (
        _FIELDS,
        array_to_tensor,
        tensor_to_array,
    )

    for content in (True, False):
        tensors = {}
        for k, v in feed.items():
            t = tf.make_tensor_proto(v)  # tensor_content, as TF clients send
            if not content:  # the same values in the repeated field, as hand-built clients send
                t.ClearField("tensor_content")
                getattr(t, _FIELDS[t.dtype][0]).extend(v.reshape(-1).tolist())
            tensors[k] = t

        def ours(tensors=tensors) -> None:
            req = pb.PredictRequest()
            for k, t in tensors.items():
                tensor_to_array(t, req.inputs[k])
            out = tensor_pb2.TensorProto()
            array_to_tensor(req.inputs[next(iter(tensors))], out)

        def via_tf(tensors=tensors) -> None:
            arrays = {k: tf.make_ndarray(t) for k, t in tensors.items()}
            tf.make_tensor_proto(next(iter(arrays.values())))

        label = "tensor_content" if content else "repeated fields"
        print(f"2. {label:<16} ours {per_call_us(ours, 2000):7.1f} us   "
              f"tf.make_ndarray + make_tensor_proto {per_call_us(via_tf, 500):7.1f} us")


# --- load ---------------------------------------------------------------------------------
def _caller(kind: str, port_grpc: int, port_http: int, payload: bytes):
    if kind in ("deeprec_grpc", "tfs_grpc", "tfs_grpc_2nd"):
        channel = grpc.insecure_channel(f"127.0.0.1:{port_grpc}")
        path = ("/deeprec.serving.PredictionService/Predict" if kind == "deeprec_grpc"
                else "/tensorflow.serving.PredictionService/Predict")
        call = channel.unary_unary(path)
        return lambda: call(payload, timeout=30)
    conn = http.client.HTTPConnection("127.0.0.1", port_http, timeout=30)
    path = "/v1/models/default:predict" if kind == "tfs_rest" else "/"

    def once() -> None:
        conn.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
    return once


def _worker(kind, ports, payload, threads, duration, out) -> None:
    lat: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + duration

    def loop() -> None:
        call = _caller(kind, *ports, payload)
        mine = []
        while time.monotonic() < end:
            t0 = time.perf_counter()
            call()
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put(lat)


def payloads(feed: dict[str, np.ndarray]) -> dict[str, bytes]:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2 as tfs_pb

    from deeprec_api import predict_pb2 as pb
    from deeprec_runtime.codec import encode_array

    deeprec = pb.PredictRequest()
    tfs = tfs_pb.PredictRequest(model_spec={"name": "default"})
    for k, v in feed.items():
        encode_array(v, deeprec.inputs[k], use_tensor_content=True)
        tfs.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    second = tfs_pb.PredictRequest()
    second.CopyFrom(tfs)
    second.model_spec.name = "second"
    columns = {k: v.tolist() for k, v in feed.items()}
    return {"deeprec_grpc": deeprec.SerializeToString(), "tfs_grpc": tfs.SerializeToString(),
            "tfs_grpc_2nd": second.SerializeToString(),
            "tfs_rest": json.dumps({"inputs": columns}).encode(),
            "stfs_rest": json.dumps({"data": columns}).encode()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: --feature-store: where the embedding rows live (model_config fields).
FEATURE_STORES = {"session": {}, "dram": {"ev_storage_type": 1},
                  "dram_ssd": {"ev_storage_type": 12, "ev_storage_size": [1 << 20]}}


def load(art, feed, duration: float, concurrency: int, fast_predict: str = "on",
         store: str = "session") -> None:
    config = os.path.join(art.base_dir, "model_config.json")
    fields = dict(FEATURE_STORES[store])
    if store == "dram_ssd":
        fields["ev_storage_path"] = os.path.join(art.base_dir, "ssd")
    with open(config, "w") as fh:
        json.dump({"savedmodel_dir": art.saved_model_dir, "checkpoint_dir": art.checkpoint_dir,
                   "update_poll_seconds": 60, **fields}, fh)
    models = os.path.join(art.base_dir, "models.json")
    with open(models, "w") as fh:
        json.dump({"model_config_list": [{"name": name, "model_config": config}
                                         for name in ("default", "second")]}, fh)
    http_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "deeprec_runtime.cli", "serve",
                             "--model-config-list", models, "--grpc-port", "0", "--http-port",
                             str(http_port), "--host", "127.0.0.1", "--log-level", "WARNING",
                             "--annotations-file", "/none", "--fast-predict", fast_predict],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        line = proc.stdout.readline()
        grpc_port = int(line.split("gRPC on port ")[1].split(",")[0])
        bodies = payloads(feed)
        deadline = time.monotonic() + 60
        while True:
            try:
                _caller("tfs_rest", grpc_port, http_port, bodies["tfs_rest"])()
                _caller("tfs_grpc_2nd", grpc_port, http_port, bodies["tfs_grpc_2nd"])()
                break
            except (OSError, RuntimeError, grpc.RpcError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        print(f"3. batch {len(next(iter(feed.values())))}, {concurrency} callers, {duration:.0f} s "
              f"each, fast predict {fast_predict}, embedding rows in {store}")
        ctx = mp.get_context("spawn")
        for kind, body in bodies.items():
            out = ctx.Queue()
            per = [concurrency // 2 + concurrency % 2, concurrency // 2]
            procs = [ctx.Process(target=_worker, args=(kind, (grpc_port, http_port), body, n,
                                                       duration, out)) for n in per if n]
            cpu0 = cpu_seconds(proc.pid)
            t0 = time.monotonic()
            for p in procs:
                p.start()
            lat = np.array(sum((out.get(timeout=duration + 120) for _ in procs), []))
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds(proc.pid) - cpu0
            for p in procs:
                p.join()
            print(f"   {kind:<13} {lat.size / duration:7.0f} req/s   p50 "
                  f"{np.percentile(lat, 50) * 1e3:6.2f} ms   p99 {np.percentile(lat, 99) * 1e3:6.2f} ms"
                  f"   server CPU {cpu / max(lat.size, 1) * 1e6:6.0f} us/req  ({elapsed:.1f} s)",
                  flush=True)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--fast-predict", choices=("on", "off"), default="on",
                        help="off: every call is answered by the Python handlers")
    parser.add_argument("--feature-store", choices=tuple(FEATURE_STORES), default="session",
                        help="where embedding rows live: the session, or a DRAM / DRAM+SSD tier "
                             "(looked up by Python code, called from C++ with fast predict on)")
    args = parser.parse_args()
    from deeprec_runtime.training import write_demo_model

    metrics_cost()
    with tempfile.TemporaryDirectory() as tmp:
        art = write_demo_model(os.path.join(tmp, "m"), num_ids=10_000, num_deltas=0)
        feed = art.model.make_feed(args.batch, np.random.default_rng(0))
        conversion_cost(feed)
        load(art, feed, args.duration, args.concurrency, args.fast_predict, args.feature_store)
        art.close()


if __name__ == "__main__":
    main()
