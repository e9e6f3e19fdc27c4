"""Closed- or open-loop load generator in several processes (one Python client per process is
CPU-bound long before a server is), speaking DeepRec gRPC or simple-tensorflow-serving's JSON.

Every call records (start time, latency); `run_load` merges the processes' records.
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import threading
import time

import numpy as np

PREDICT = "/deeprec.serving.PredictionService/Predict"
TFS_PREDICT = "/tensorflow.serving.PredictionService/Predict"


def _grpc_caller(target: str, payload: bytes, method: str = PREDICT, token: str = ""):
    import grpc  # imported in the child process

    channel = grpc.insecure_channel(target)
    call = channel.unary_unary(method)  # identity (de)serializers: bytes in, bytes out
    metadata = (("authorization", f"Bearer {token}"),) if token else None

    def once() -> None:
        call(payload, timeout=30, metadata=metadata)
    return once


def _http_caller(target: str, payload: bytes):
    host, port = target.rsplit(":", 1)
    local = threading.local()

    def once() -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/", body=payload, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
    return once


def _worker(kind, target, payload, threads, duration, rate, out, stop=None, token=""):
    make = {"grpc": lambda t, p: _grpc_caller(t, p, token=token),
            "tfs": lambda t, p: _grpc_caller(t, p, TFS_PREDICT, token),
            "http": _http_caller}[kind]
    records: list[tuple[float, float]] = []
    errors = [0]
    lock = threading.Lock()
    end = time.monotonic() + duration
    calls = [make(target, payload) for _ in range(threads)] if kind != "http" else \
        [make(target, payload)] * threads

    def loop(call):
        mine = []
        interval = threads / rate if rate else 0.0
        nxt = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= end or (stop is not None and stop.is_set()):
                break
            if interval:
                if nxt > now:
                    time.sleep(nxt - now)
                nxt += interval
            started = time.time()
            t0 = time.perf_counter()
            try:
                call()
            except Exception:  # noqa: BLE001 (counted, not fatal: a swap or overload may refuse some calls)
                with lock:
                    errors[0] += 1
                continue
            mine.append((started, time.perf_counter() - t0))
        with lock:
            records.extend(mine)

    ts = [threading.Thread(target=loop, args=(c,)) for c in calls]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put((np.array(records, dtype=np.float64).reshape(-1, 2).tobytes(), errors[0]))


def run_load(kind: str, target: str, payload: bytes, concurrency: int = 8, duration: float = 5.0,
             processes: int = 4, rate: float = 0.0,
             stop: threading.Event | None = None, token: str = "") -> tuple[np.ndarray, int]:
    """Returns (records [n, 2] of (wall start, latency s), errors). `rate` > 0: open loop at that
    many requests/s in total; 0: closed loop, each of `concurrency` callers back to back. The
    load ends after `duration` seconds or, sooner, when `stop` is set. `token`: gRPC calls carry
    it as a bearer token."""
    processes = min(processes, concurrency)
    per = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ended = ctx.Event() if stop is not None else None  # checked per call: only when asked for
    procs = [ctx.Process(target=_worker, args=(kind, target, payload, n, duration,
                                               rate * n / concurrency if rate else 0.0, out, ended,
                                               token))
             for n in per]
    if stop is not None:
        threading.Thread(target=lambda: (stop.wait(duration), ended.set()), daemon=True).start()
    for p in procs:
        p.start()
    parts, errors = [], 0
    for _ in procs:
        data, err = out.get(timeout=duration + 120)
        parts.append(np.frombuffer(data, dtype=np.float64).reshape(-1, 2))
        errors += err
    for p in procs:
        p.join()
    return np.concatenate(parts), errors
