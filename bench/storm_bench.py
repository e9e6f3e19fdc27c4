"""Storm: many concurrent maximum-size requests; what is the server's peak memory?

  .venv/bin/python bench/storm_bench.py [--grpc-server python|native] [--api deeprec|rest]
      [--encoding raw|varint|json|json-small] [--concurrency 32] [--seconds 20]
      [--max-message-bytes 67108864] [--max-inflight-bytes 1073741824] [--workers N]
      [--fast-predict on|off]

One `deeprec-runtime serve` process serves a model with two unknown dimensions
(tests/support/history_model.py: int64 [-1, -1] -> its row sums, so the model's own memory is
small and what is measured is the server's handling of the requests). `--concurrency` client
threads, each on its own connection, send the same request back to back for `--seconds`:

  raw     DeepRec Predict, int64 in tensor_content, just under --max-message-bytes (accepted)
  varint  DeepRec Predict, int64_val of one-byte varints, just under --max-message-bytes: decodes
          to 8x its size and is refused by the decoded-bytes bound (INVALID_ARGUMENT), in C++
          before anything is decoded by the native server's fast path, after parsing the
          message (8x) by the Python handlers
  json    TF Serving REST :predict (--api rest), int64 numbers of 19 digits, a body just under
          --max-message-bytes (accepted: its tensor is ~40% of the body)
  json-small  the same with one-digit numbers: parses into a Python int per 2 bytes (~4x the
          body in pointers) and is refused by the decoded-bytes bound (HTTP 400)

REST refusals before the body is read (429) close the connection while the client is still
sending: they show as "refused while sending".

Printed: the server's resident memory after warm-up, its peak during the storm (VmHWM, reset by
/proc/PID/clear_refs after warm-up), the peak over the baseline per request admitted at once,
and the answers by status. The machine is shared: compare rows of one run.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.support.history_model import export_history_model  # noqa: E402

PREDICT = "/deeprec.serving.PredictionService/Predict"
MIB = 1 << 20


def proc_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deeprec_request(encoding: str, limit: int) -> bytes:
    from deeprec_api import predict_pb2 as pb

    request = pb.PredictRequest()
    array = request.inputs["history"]
    array.dtype = pb.DT_INT64
    budget = limit - 4096  # room for the message's own fields
    rows = 64
    if encoding == "raw":
        cols = budget // 8 // rows
        array.tensor_content = np.ones((rows, cols), "<i8").tobytes()
    else:  # one-byte varints
        cols = budget // rows
        array.int64_val.extend(np.ones(rows * cols, np.int64).tolist())
    array.array_shape.dim.extend([rows, cols])
    return request.SerializeToString()


def json_body(limit: int, number: int) -> bytes:
    width = len(str(number)) + 1  # digits and a comma per int64
    rows = 64
    cols = (limit - 4096) // width // rows
    row = "[" + ",".join([str(number)] * cols) + "]"
    return ('{"inputs": {"history": [' + ",".join([row] * rows) + "]}}").encode()


class Server:
    def __init__(self, args, workdir: str):
        config = os.path.join(workdir, "model_config.json")
        with open(config, "w") as fh:
            json.dump({"savedmodel_dir": export_history_model(workdir), "warmup_iterations": 1,
                       "model_store_type": "local", "feature_store_type": "memory"}, fh)
        self.http_port = free_port()
        cmd = [sys.executable, "-m", "deeprec_runtime.cli", "serve", "--config", config,
               "--grpc-port", "0", "--http-port", str(self.http_port), "--host", "127.0.0.1",
               "--grpc-server", args.grpc_server, "--max-message-bytes", str(args.max_message_bytes),
               "--max-inflight-bytes", str(args.max_inflight_bytes), "--log-level", "WARNING"]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        if args.fast_predict == "off":
            cmd += ["--fast-predict", "off"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        self.lines: list[str] = []
        for line in self.proc.stdout:
            self.lines.append(line)
            if "gRPC on port" in line:
                self.grpc_port = int(line.split("gRPC on port ")[1].split(",")[0])
                break
        else:
            raise SystemExit("server did not start:\n" + "".join(self.lines))
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def grpc_client(port: int, data: bytes, until: float, counts: collections.Counter,
                lock: threading.Lock) -> None:
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
               ("grpc.use_local_subchannel_pool", 1)]  # a connection per client
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        call = channel.unary_unary(PREDICT)
        while time.monotonic() < until:
            try:
                call(data, timeout=120)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            with lock:
                counts[code] += 1


def rest_client(port: int, body: bytes, until: float, counts: collections.Counter,
                lock: threading.Lock) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    while time.monotonic() < until:
        try:
            conn.request("POST", "/v1/models/default:predict", body,
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            code = str(response.status)
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
        except OSError:  # the server answered and closed before reading the whole body
            code = "refused while sending"
            conn.close()
        with lock:
            counts[code] += 1
    conn.close()


def wait_serving(port: int) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise SystemExit("server never became SERVING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grpc-server", choices=("python", "native"), default="python")
    parser.add_argument("--api", choices=("deeprec", "rest"), default="deeprec")
    parser.add_argument("--encoding", choices=("raw", "varint", "json", "json-small"), default=None,
                        help="default: raw for deeprec, json for rest")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-message-bytes", type=int, default=64 * MIB)
    parser.add_argument("--max-inflight-bytes", type=int, default=1 << 30)
    parser.add_argument("--workers", type=int, default=0, help="default: the server's own")
    parser.add_argument("--fast-predict", choices=("on", "off"), default="on",
                        help="off: every call goes to the Python handlers (native server)")
    args = parser.parse_args()
    encoding = args.encoding or ("json" if args.api == "rest" else "raw")
    if (args.api == "rest") != encoding.startswith("json"):
        raise SystemExit("--api rest goes with --encoding json or json-small, deeprec with raw "
                         "or varint")
    if encoding.startswith("json"):
        payload = json_body(args.max_message_bytes, 1 if encoding == "json-small" else 10**18 + 1)
    else:
        payload = deeprec_request(encoding, args.max_message_bytes)
    with tempfile.TemporaryDirectory() as workdir:
        server = Server(args, workdir)
        try:
            wait_serving(server.grpc_port)
            run_storm(args, server, encoding, payload)
        finally:
            server.stop()


def run_storm(args, server: Server, encoding: str, payload: bytes) -> None:
    pid = server.proc.pid
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    client = rest_client if args.api == "rest" else grpc_client
    port = server.http_port if args.api == "rest" else server.grpc_port
    client(port, payload, time.monotonic() + 1.0, collections.Counter(), lock)  # warm-up
    baseline = proc_kb(pid, "VmRSS")
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS: the peak below is the storm's own
    until = time.monotonic() + args.seconds
    threads = [threading.Thread(target=client, args=(port, payload, until, counts, lock))
               for _ in range(args.concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    peak = proc_kb(pid, "VmHWM")
    admitted_at_once = max(1, min(args.concurrency, args.max_inflight_bytes // len(payload)
                                  if args.max_inflight_bytes else args.concurrency))
    print(f"server {args.grpc_server} (fast predict {args.fast_predict}), api {args.api}, "
          f"encoding {encoding}, request "
          f"{len(payload) / MIB:.1f} MiB, concurrency {args.concurrency}, --max-inflight-bytes "
          f"{args.max_inflight_bytes / MIB:.0f} MiB (<= {admitted_at_once} requests at once), "
          f"{elapsed:.0f} s")
    print(f"  VmRSS after warm-up {baseline / 1024:.0f} MiB, peak (VmHWM) {peak / 1024:.0f} MiB, "
          f"+{(peak - baseline) / 1024:.0f} MiB = {(peak - baseline) * 1024 / len(payload):.1f} "
          f"request sizes")
    print("  answers: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if server.proc.poll() is not None:
        print("  the server died:\n" + "".join(server.lines[-40:]))


if __name__ == "__main__":
    main()
