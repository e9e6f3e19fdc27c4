"""EmbeddingVariable benchmark: the same model served with DeepRec EVs and with dense tables.

  .venv/bin/python bench/ev_bench.py [--num-ids 1000000] [--duration 5]

1. Server CPU per request, batch 1 and 64 at concurrency 8, of three `deeprec-runtime serve`
   processes side by side: the Wide&Deep demo (dense `embedding` [N, 16] and `wide_embedding`
   [N, 1], row ids in requests), the same model exported with both tables as DeepRec EVs
   (random int64 keys in requests, the same rows), and the EV model again with its lookups on
   TensorFlow's stock ops (DEEPREC_EV_STOCK_OPS=1, what a runtime without the EV op library
   serves with). Measured alternately, twice each. Target: EV at most 1.3x dense. Also each
   server's RSS and the EV store's bytes per stored row.
2. Lookups per second of the in-process EV table (the rewritten lookup in one session run: the
   EV op library's fused gather, then the stock hash table + gather) against a numpy gather of
   the same rows.
3. A DeepRec delta of 1% of the keys (half changed rows, half new keys; dense variables whole)
   applied in place, against a full reload of the EV model (restore + warmup). Target <= 5%.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable
from typing import TypeVar

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ev_models
from loadgen import run_load
from proctree import CpuWindow, rss_mib
from serving_bench import grpc_payload, pct, start_runtime

from deeprec_runtime.deeprec import kernels

T = TypeVar("T")


def measure(label: str, server, payload: bytes, duration: float, concurrency: int = 8) -> float:
    """Server CPU per request over the load's own window: the server's CPU is sampled every
    50 ms and read at the first call's start and the last call's end, so the load generator's
    start-up (tens of seconds on a busy host) is not averaged in. Returns us per request."""
    target = f"127.0.0.1:{server.port}"
    run_load("grpc", target, payload, concurrency, 1.0)  # warm up
    with CpuWindow(server.proc.pid) as window:
        records, errors = run_load("grpc", target, payload, concurrency, duration)
    start, end = records[:, 0].min(), (records[:, 0] + records[:, 1]).max()
    cpu = window.between(start, end)
    per = cpu / len(records) * 1e6
    print(f"  {label:<28} {len(records) / (end - start):8.0f} req/s   p50 {pct(records[:, 1], 50):6.2f} ms"
          f"   p99 {pct(records[:, 1], 99):6.2f} ms   server CPU {per:6.0f} us/req"
          + (f"   errors {errors}" if errors else ""), flush=True)
    return per


def build(workdir: str, num_ids: int):
    from deeprec_runtime.training import write_demo_model

    art = write_demo_model(os.path.join(workdir, "dense"), num_ids=num_ids, num_deltas=0)
    keys = np.random.default_rng(5).choice(2**40, num_ids, replace=False).astype(np.int64)
    ev_dir = os.path.join(workdir, "ev")
    ev_models.export_with_evs(art.saved_model_dir, os.path.join(ev_dir, "saved_model"),
                              {"embedding": art.model.dim, "wide_embedding": 1})
    full = [p for _, kind, p in art.written if kind == "full"][-1]
    ev_prefix = os.path.join(ev_dir, "checkpoints", "ckpt", "model.ckpt-1")
    dense = ev_models.full_checkpoint(full, ev_prefix, keys)
    ev = types.SimpleNamespace(saved_model_dir=os.path.join(ev_dir, "saved_model"),
                               checkpoint_dir=os.path.join(ev_dir, "checkpoints"),
                               prefix=ev_prefix)
    return art, ev, keys, dense


def same_answers(dense_server, ev_server, art, keys, label: str) -> None:
    import grpc

    from deeprec_api import predict_pb2 as pb
    from deeprec_runtime.codec import decode_array

    feed = art.model.make_feed(16, np.random.default_rng(1))
    ev_feed = {**feed, "sparse_ids": keys[feed["sparse_ids"]]}
    answers = []
    for server, f in ((dense_server, feed), (ev_server, ev_feed)):
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            raw = channel.unary_unary("/deeprec.serving.PredictionService/Predict")(
                grpc_payload(f), timeout=30)
        answers.append(decode_array(pb.PredictResponse.FromString(raw).outputs["probability"], "p"))
    np.testing.assert_allclose(answers[0], answers[1], rtol=1e-5, atol=1e-6)
    print(f"  dense and {label} servers give the same answers (16 requests' worth checked)",
          flush=True)


def _with_stock_ops(start: Callable[[], T]) -> T:
    """Starts (or loads) with EV lookups on TensorFlow's stock ops instead of the EV op library."""
    os.environ[kernels.STOCK_ENV] = "1"
    try:
        return start()
    finally:
        del os.environ[kernels.STOCK_ENV]


def cpu_per_request(workdir, art, ev, keys, duration: float) -> None:
    print("\n1. server CPU per request, concurrency 8 (same model, dense tables vs DeepRec EVs on "
          "the EV op library, and on TensorFlow's stock ops):", flush=True)
    info = ("--log-level", "INFO")  # for the execution mode each version chose at warmup
    servers = {"dense": start_runtime(workdir, art, info, warmup_iterations=1),
               "ev": start_runtime(workdir, ev, info, warmup_iterations=1),
               "ev stock ops": _with_stock_ops(
                   lambda: start_runtime(workdir, ev, info, warmup_iterations=1))}
    try:
        for name, server in servers.items():
            chosen = [line.split(" runs ", 1)[1].strip() for line in server.lines
                      if " runs " in line and "CPU/run" in line]
            print(f"  {name} model runs {chosen[-1] if chosen else '(mode not logged)'}", flush=True)
        for name in ("ev", "ev stock ops"):
            same_answers(servers["dense"], servers[name], art, keys, name)
        print("  RSS: " + ", ".join(f"{name} server {rss_mib(s.proc.pid):.0f} MiB"
                                    for name, s in servers.items())
              + f" ({art.model.num_ids} rows of [16] + [1])", flush=True)
        for batch in (1, 64):
            feed = art.model.make_feed(batch, np.random.default_rng(batch))
            ev_feed = {**feed, "sparse_ids": keys[feed["sparse_ids"]]}
            print(f" batch {batch}:", flush=True)
            cpu: dict[str, list[float]] = {name: [] for name in servers}
            for round_ in (1, 2):
                for name, server in servers.items():
                    payload = grpc_payload(feed if name == "dense" else ev_feed)
                    cpu[name].append(measure(f"{name} tables, round {round_}", server, payload,
                                             duration))
            for name, label in (("ev", "EV"), ("ev stock ops", "EV on stock ops")):
                ratio = np.median(cpu[name]) / np.median(cpu["dense"])
                print(f"  {label} / dense server CPU per request: {ratio:.2f}x (target <= 1.3)",
                      flush=True)
    finally:
        for server in servers.values():
            server.stop()


def _load(saved_model_dir: str, checkpoint_dir: str, prefix: str):
    from deeprec_runtime.config import parse_model_config
    from deeprec_runtime.model.servable import session_options_from
    from deeprec_runtime.model.source import VersionInfo
    from deeprec_runtime.model.tf_loader import load_servable

    cfg = parse_model_config({"savedmodel_dir": saved_model_dir, "checkpoint_dir": checkpoint_dir})
    step = int(prefix.rsplit("-", 1)[1])
    version = VersionInfo("ckpt", os.path.dirname(prefix), step, prefix)
    return load_servable(saved_model_dir, version, lambda p: p, session_options_from(cfg))


def lookups_per_second(art, ev, keys, dense) -> None:
    print("\n2. lookups/s, one thread: in-process EV table vs numpy gather of the same rows",
          flush=True)
    from tensorflow.core.protobuf import config_pb2

    servables = {"EV op library": _load(ev.saved_model_dir, ev.checkpoint_dir, ev.prefix),
                 "stock ops": _with_stock_ops(
                     lambda: _load(ev.saved_model_dir, ev.checkpoint_dir, ev.prefix))}
    lookups = {}
    for name, servable in servables.items():
        table = servable.ev.tables["embedding"]
        index = table.bytes_estimate() - (table.base + table.capacity) * table.ops.dim * 4
        print(f"  EV store 'embedding' ({name}): {table.size} rows, about "
              f"{table.bytes_estimate() / table.size:.0f} bytes per row (values "
              f"{table.ops.dim * 4}, index {index / table.size:.0f})", flush=True)
        opts = config_pb2.CallableOptions(feed=["sparse_ids:0"], fetch=["Gather:0"])
        opts.run_options.inter_op_thread_pool = -1
        lookups[name] = servable.session._make_callable_from_options(opts)
    values = dense["embedding"]
    rng = np.random.default_rng(2)
    for n in (8, 512, 8192):
        rows = rng.integers(0, keys.size, n)
        ids = keys[rows].reshape(1, n)
        fns = {name: (lambda ids=ids, fn=fn: fn(ids)) for name, fn in lookups.items()}
        for fn in fns.values():
            np.testing.assert_array_equal(fn()[0][0], values[rows])
        fns["numpy gather"] = lambda rows=rows: values[rows]
        rates = {}
        for name, fn in fns.items():
            calls, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 1.0:
                fn()
                calls += 1
            rates[name] = calls * n / (time.perf_counter() - t0)
        base = rates["numpy gather"]
        print(f"  {n:5d} ids per call: " + ", ".join(
            f"{name} {rate / 1e6:6.2f} M/s ({rate / base:.2f}x)" for name, rate in rates.items()),
            flush=True)
    for servable in servables.values():
        servable.close()


def delta_vs_full(ev, keys, dense) -> None:
    from deeprec_runtime.config import parse_model_config
    from deeprec_runtime.model.manager import Manager

    print("\n3. a DeepRec delta of 1% of the keys vs a full reload (in-process manager):", flush=True)
    events = []
    manager = Manager(parse_model_config({"savedmodel_dir": ev.saved_model_dir,
                                          "checkpoint_dir": ev.checkpoint_dir,
                                          "warmup_iterations": 1}), "/nonexistent")
    manager.listeners.append(events.append)
    manager.poll_once()
    load = [e for e in events if e.kind == "load" and e.ok][-1]
    print(f"  full reload (restore + warmup) of {keys.size} keys x 2 EVs {load.seconds * 1e3:8.0f} ms",
          flush=True)
    rng = np.random.default_rng(9)
    half = keys.size // 200
    changed = keys[rng.choice(keys.size, half, replace=False)]
    new = np.arange(2**41, 2**41 + 2 * half, dtype=np.int64)
    step = 1
    for which, count in (("first delta", half), ("next delta ", 2 * half)):
        # Cumulative, as DeepRec writes them: the next delta repeats the first one's keys.
        both = np.concatenate([changed, new[:count]])
        rows = {"embedding": (both, rng.normal(size=(both.size, 16)).astype(np.float32)),
                "wide_embedding": (both, rng.normal(size=(both.size, 1)).astype(np.float32))}
        step += 1
        folder = os.path.join(ev.checkpoint_dir, "ckpt", ".incremental_checkpoint")
        ev_models.delta(os.path.join(folder, f"incremental_model.ckpt-{step}"), dense, rows)
        manager.poll_once()
        applied = [e for e in events if e.kind == "delta"][-1]
        assert applied.ok, applied.error
        print(f"  {which} of {both.size} rows per EV ({both.size / keys.size:.1%}, "
              f"{count} new keys) {applied.seconds * 1e3:6.0f} ms = "
              f"{applied.seconds / load.seconds:.1%} of a full reload (target <= 5%)", flush=True)
    manager.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-ids", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--skip-servers", action="store_true", help="only sections 2 and 3")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ev-bench-") as workdir:
        started = time.monotonic()
        art, ev, keys, dense = build(workdir, args.num_ids)
        print(f"built the dense and EV models ({args.num_ids} ids) in "
              f"{time.monotonic() - started:.0f} s", flush=True)
        if not args.skip_servers:
            cpu_per_request(workdir, art, ev, keys, args.duration)
        lookups_per_second(art, ev, keys, dense)
        delta_vs_full(ev, keys, dense)
        art.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
