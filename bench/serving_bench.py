"""Serving benchmark: prints every figure in one run.

  .venv/bin/python bench/serving_bench.py [--duration 5] [--num-ids 1000000]

1. batch 1 and 64 at concurrency 8: requests/s, p50/p99 latency, server CPU per request for
   (a) in-process session.run(feed_dict) and the prepared callable (8 threads, no RPC),
   (b) this runtime over gRPC, (c) simple-tensorflow-serving over HTTP/JSON (a separate venv,
   STFS_VENV, default .cache/stfs-venv; skipped with a note when missing), and at batch 1
   (d) the requests DeepRec clients send, with and without `output_filter: ["probability"]`, on
   session groups of 1, 2 (RR) and 4 lanes, each against session.run and the best of them.
   (b), (c) and (d) get the same multi-process load generator on loopback; server CPU is the
   server's whole process tree, from /proc.
2. RSS of the runtime with session_num 1 vs 4 (one copy of the parameters either way).
3. p99 at half load while a new full version is loaded and swapped in vs in control windows
   interleaved with them under the same load, and the server's own answer times over the same
   windows (from /metrics, without gRPC's transport).
4. Time to apply a delta touching ~1% of the embedding rows vs a full reload of the same model.

Model: the Wide&Deep demo (8 ids x 16 dims + 13 dense, MLP 256-128-1), --num-ids rows.
The machine is shared: the load generator's own CPU competes with the server on small hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadgen import run_load
from proctree import CpuWindow, rss_mib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pct(lat: np.ndarray, q: float) -> float:
    return float(np.percentile(lat, q) * 1e3) if lat.size else float("nan")


#: Figures of the current batch size's rows, by label: (requests/s, server CPU us per request).
FIGURES: dict[str, tuple[float, float]] = {}


def row(label: str, n: int, seconds: float, lat: np.ndarray, cpu: float, errors: int = 0) -> None:
    FIGURES[label] = (n / seconds, cpu / max(n, 1) * 1e6)
    extra = f"  errors {errors}" if errors else ""
    print(f"  {label:<34} {n / seconds:9.0f} req/s   p50 {pct(lat, 50):7.2f} ms   "
          f"p99 {pct(lat, 99):7.2f} ms   server CPU {cpu / max(n, 1) * 1e6:7.0f} us/req{extra}",
          flush=True)


# --- (a) in-process ---------------------------------------------------------------------------
def in_process(art, batch: int, duration: float, concurrency: int = 8) -> None:
    from deeprec_runtime.config import parse_model_config
    from deeprec_runtime.model.manager import Manager

    manager = Manager(parse_model_config({"savedmodel_dir": art.saved_model_dir,
                                          "checkpoint_dir": art.checkpoint_dir,
                                          "warmup_iterations": 1}), "/nonexistent")
    manager.poll_once()
    with manager.hold() as handle:
        servable = handle.servable
        feed = art.model.make_feed(batch, np.random.default_rng(0))
        graph = servable.graph
        sig = servable.signature("serving_default")
        names = tuple(sorted(sig.input(k).name for k in feed))
        arrays = [feed[next(k for k in feed if sig.input(k).name == n)] for n in names]
        fetch = (sig.output("probability").name,)
        feed_dict = {graph.get_tensor_by_name(sig.input(k).name): v for k, v in feed.items()}
        fetch_t = graph.get_tensor_by_name(fetch[0])

        def session_run():
            servable.session.run(fetch_t, feed_dict)

        def prepared():
            servable.run(names, fetch, arrays)

        for label, fn in (("session.run(feed_dict)", session_run), ("prepared callable", prepared)):
            fn()
            lat_all: list[list[float]] = [[] for _ in range(concurrency)]
            end = time.monotonic() + duration

            def loop(i, fn=fn, lat_all=lat_all, end=end):
                mine = lat_all[i]
                while time.monotonic() < end:
                    t0 = time.perf_counter()
                    fn()
                    mine.append(time.perf_counter() - t0)

            cpu0, t0 = time.process_time(), time.monotonic()
            threads = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
            lat = np.array([x for part in lat_all for x in part])
            row(f"(a) in-process {label}", lat.size, elapsed, lat, cpu)
    manager.stop()


# --- servers ----------------------------------------------------------------------------------
class Server:
    def __init__(self, argv: list[str], env: dict | None = None, port_line: str = "", port: int = 0):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=REPO)
        self.port = port
        self.http_port = 0
        self.lines: list[str] = []
        if port_line:
            for line in self.proc.stdout:
                self.lines.append(line)
                if port_line in line:  # "... gRPC on port N[, HTTP on port M]"
                    self.port = int(line.split(port_line, 1)[1].split(",")[0])
                    if "HTTP on port" in line:
                        self.http_port = int(line.rsplit(" ", 1)[1])
                    break
            if not self.port:
                raise RuntimeError("server did not start:\n" + "".join(self.lines[-30:]))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_runtime(workdir: str, art, cli_args: tuple[str, ...] = (), **fields) -> Server:
    cfg = {"savedmodel_dir": art.saved_model_dir, "checkpoint_dir": art.checkpoint_dir,
           "update_poll_seconds": 0.5, **fields}
    path = os.path.join(workdir, f"config-{time.monotonic_ns()}.json")
    with open(path, "w") as fh:
        json.dump(cfg, fh)
    server = Server([sys.executable, "-m", "deeprec_runtime.cli", "serve", "--config", path,
                     "--grpc-port", "0", "--host", "127.0.0.1", "--log-level", "WARNING",
                     "--annotations-file", os.path.join(workdir, "none"), *cli_args],
                    port_line="gRPC on port")
    wait_serving(f"127.0.0.1:{server.port}")
    return server


def wait_serving(target: str, timeout: float = 180) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"{target} never became SERVING")


def model_version(target: str) -> str:
    with VersionProbe(target) as probe:
        return probe.version()


def grpc_payload(feed, tensor_content: bool = False, output_filter: tuple[str, ...] = ()) -> bytes:
    from deeprec_api import predict_pb2 as pb
    from deeprec_runtime.codec import encode_array

    req = pb.PredictRequest(signature_name="serving_default", output_filter=output_filter)
    for k, v in feed.items():
        encode_array(v, req.inputs[k], use_tensor_content=tensor_content)
    return req.SerializeToString()


def tfs_payload(feed) -> bytes:
    """TF Serving's PredictRequest with packed values (float_val, int64_val)."""
    from deeprec_api import predict_pb2 as pb
    from deeprec_runtime.codec import encode_array
    from deeprec_runtime.server.tfs_grpc import tfs_request

    req = pb.PredictRequest()
    for k, v in feed.items():
        encode_array(v, req.inputs[k])
    return tfs_request(req, "default").SerializeToString()


def print_ratios(batch: int) -> None:
    """The targets' ratios, from this run's rows."""
    f = FIGURES
    runtime, run, floor = (f.get(DEFAULT_ROW), f.get("(a) in-process session.run(feed_dict)"),
                           f.get("(a) in-process prepared callable"))
    groups = {label: f[label] for label, *_ in GROUP_ROWS if label in f}
    if groups and run:
        best = min(cpu for _, cpu in groups.values())
        print("  (d) against in-process session.run and the best (d) cell (targets: <= 0.8x and "
              "<= 1.2x):", flush=True)
        for label, (_, cpu) in groups.items():
            print(f"    {label:<40} {cpu:5.0f} us/req  {cpu / run[1]:.2f}x session.run  "
                  f"{cpu / best:.2f}x the best", flush=True)
    if not (runtime and run and floor):
        return
    parts = [f"server CPU/request {runtime[1] / run[1]:.2f}x in-process session.run (target <= 1)",
             f"{runtime[1] / floor[1]:.1f}x the prepared-callable floor (toward "
             f"{5 if batch == 1 else 2}x)"]
    batching = f.get(BATCHING_ROW)
    if batch == 1 and batching:
        parts.append(f"batching {batching[1] / floor[1]:.1f}x the floor (toward 3x)")
    secured = f.get(AUTH_ROW)
    if secured:
        parts.append(f"bearer token on {secured[1] / runtime[1]:.2f}x the open server's CPU/request "
                     "(target <= 1.10)")
    stfs = f.get(STFS_ROW)
    if stfs:
        parts.append(f"throughput {runtime[0] / stfs[0]:.1f}x simple-tensorflow-serving "
                     "(target >= 2.5)")
    print("  ratios: " + "; ".join(parts), flush=True)


def measure_server(label, server: Server, kind, payload, duration, concurrency=8, rate=0.0,
                   token=""):
    target = f"127.0.0.1:{server.port}"
    run_load(kind, target, payload, concurrency, 1.0, rate=rate, token=token)  # warm up
    with CpuWindow(server.proc.pid) as window:
        records, errors = run_load(kind, target, payload, concurrency, duration, rate=rate,
                                   token=token)
    # Over the calls' own window: the load generator's start-up, while the server idles, is
    # neither in the CPU nor in the time.
    start, end = records[:, 0].min(), (records[:, 0] + records[:, 1]).max()
    row(label, len(records), end - start, records[:, 1], window.between(start, end), errors)
    return records


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stfs_venv() -> str:
    for path in (os.environ.get("STFS_VENV", ""), os.path.join(REPO, ".cache", "stfs-venv"),
                 os.path.expanduser("~/.cache/stfs-venv")):
        if path and os.path.exists(os.path.join(path, "bin", "simple_tensorflow_serving")):
            return path
    return ""


def start_stfs(venv: str, workdir: str, art) -> Server:
    base = os.path.join(workdir, "stfs-model")
    if not os.path.exists(base):
        shutil.copytree(art.saved_model_dir, os.path.join(base, "1"))
    port = free_port()
    server = Server([os.path.join(venv, "bin", "simple_tensorflow_serving"),
                     f"--model_base_path={base}", "--host=127.0.0.1", f"--port={port}",
                     "--model_name=default"], port=port)
    deadline = time.monotonic() + 180
    import http.client

    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/")
            conn.getresponse().read()
            return server
        except OSError:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    "simple-tensorflow-serving exited:\n" + "".join(server.lines[-30:])) from None
            time.sleep(0.5)
    raise RuntimeError("simple-tensorflow-serving did not start")


def stfs_payload(feed) -> bytes:
    return json.dumps({"model_name": "default", "signature_name": "serving_default",
                       "data": {k: v.tolist() for k, v in feed.items()}}).encode()


DEFAULT_ROW = "(b) deeprec-runtime gRPC (native)"
BATCHING_ROW = "(b) ... batching (max 8, 500 us)"
AUTH_ROW = "(b) ... bearer token (auth on)"
#: The bench's bearer token (a file the auth rows' servers read; the load sends it).
BENCH_TOKEN = "bench-token-0123456789abcdef"
STFS_ROW = "(c) simple-tensorflow-serving HTTP"
FILTER = ("probability",)
#: (label, config fields, output_filter): what DeepRec clients send (output_filter is required by
#: DeepRec's API) on DeepRec's session groups (2 and 4 lanes split the CPUs between them).
GROUP_ROWS = [
    ("(d) session_num 1", {}, ()),
    ("(d) session_num 1, output_filter", {}, FILTER),
    ("(d) session_num 2 RR", {"session_num": 2, "select_session_policy": "RR"}, ()),
    ("(d) session_num 2 RR, output_filter", {"session_num": 2, "select_session_policy": "RR"},
     FILTER),
    ("(d) session_num 4 RR, output_filter", {"session_num": 4, "select_session_policy": "RR"},
     FILTER),
]


# --- main -------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--num-ids", type=int, default=1_000_000)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--only", default="", help="comma list of sections: latency,rss,swap,delta")
    parser.add_argument("--rows", default="",
                        help="comma list of words: only the latency rows whose label has one")
    parser.add_argument("--swaps", type=int, default=16,
                        help="swap windows (and as many control windows) in the swap section")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else {"latency", "rss", "swap", "delta"}
    workdir = args.workdir or tempfile.mkdtemp(prefix="deeprec-bench-")

    from deeprec_runtime.training import write_demo_model

    print(f"cpus: {sorted(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.1f}; "
          f"model Wide&Deep {args.num_ids} x 16, MLP 256-128-1; workdir {workdir}", flush=True)
    started = time.monotonic()
    art = write_demo_model(os.path.join(workdir, "model"), num_ids=args.num_ids, num_deltas=0,
                           steps_per_delta=1, batch_size=256)
    print(f"model written in {time.monotonic() - started:.1f}s", flush=True)
    feeds = {b: art.model.make_feed(b, np.random.default_rng(b)) for b in (1, 64)}

    if "latency" in only:
        venv = stfs_venv()
        for batch in (1, 64):
            print(f"\nbatch {batch}, concurrency 8, {args.duration:g}s each:", flush=True)
            FIGURES.clear()
            in_process(art, batch, args.duration)
            tokens = os.path.join(workdir, "tokens")
            with open(tokens, "w") as fh:
                fh.write(BENCH_TOKEN + "\n")
            variants = [(DEFAULT_ROW, (), {}, "packed"),
                        (AUTH_ROW, ("--auth-token-file", tokens), {}, "packed-auth"),
                        ("(b) ... tensor_content requests", (), {}, "raw"),
                        ("(b) ... TF Serving API", (), {}, "tfs"),
                        ("(b) ... TF Serving API, fast off", ("--fast-predict", "off"), {}, "tfs"),
                        ("(b) ... --fast-predict off", ("--fast-predict", "off"), {}, "packed"),
                        ("(b) ... --grpc-server python", ("--grpc-server", "python"), {}, "packed"),
                        ("(b) ... enable_inline_execute", (), {"enable_inline_execute": True},
                         "packed")]
            if batch == 1:  # server-side batching merges the 8 callers' rows into one run
                batching = {"batching": {"max_batch_size": 8, "batch_timeout_micros": 500,
                                         "num_batch_threads": 2}}
                variants += [(BATCHING_ROW, (), batching, "packed"),
                             ("(b) ... batching, --fast-predict off", ("--fast-predict", "off"),
                              batching, "packed")]
            if batch == 1:
                variants += [(label, (), fields, ("packed", names))
                             for label, fields, names in GROUP_ROWS]
            if args.rows:
                words = args.rows.split(",")
                variants = [v for v in variants if any(w in v[0] for w in words)]
            for label, cli_args, fields, payload in variants:
                server = start_runtime(workdir, art, cli_args, **fields)
                try:
                    if payload == "tfs":
                        measure_server(label, server, "tfs", tfs_payload(feeds[batch]),
                                       args.duration)
                    elif isinstance(payload, tuple):  # (d): an output_filter
                        measure_server(label, server, "grpc",
                                       grpc_payload(feeds[batch], output_filter=payload[1]),
                                       args.duration)
                    else:
                        measure_server(label, server, "grpc",
                                       grpc_payload(feeds[batch], payload == "raw"), args.duration,
                                       token=BENCH_TOKEN if payload == "packed-auth" else "")
                finally:
                    server.stop()
            if venv:
                stfs = start_stfs(venv, workdir, art)
                try:
                    measure_server(STFS_ROW, stfs, "http",
                                   stfs_payload(feeds[batch]), args.duration)
                finally:
                    stfs.stop()
            else:
                print("  (c) simple-tensorflow-serving: skipped, no venv (create .cache/stfs-venv: "
                      "pip install tensorflow-cpu==2.21.0 simple-tensorflow-serving 'flask<2.3' "
                      "'werkzeug<2.3')", flush=True)
            print_ratios(batch)

    if "rss" in only:
        print(f"\nresident memory, {args.num_ids} x 16 embedding:", flush=True)
        rss = {}
        for n in (1, 4):
            server = start_runtime(workdir, art, session_num=n)
            try:
                run_load("grpc", f"127.0.0.1:{server.port}", grpc_payload(feeds[64]), 8, 1.0)
                rss[n] = rss_mib(server.proc.pid)
            finally:
                server.stop()
            print(f"  session_num {n}: {rss[n]:7.0f} MiB", flush=True)
        print(f"  ratio 4/1: {rss[4] / rss[1]:.3f} (limit 1.25)", flush=True)

    if "swap" in only:
        swap_p99(workdir, art, feeds[1], args.swaps)

    if "delta" in only:
        delta_vs_full(workdir, art)
    return 0


def answer_times(server: Server) -> np.ndarray:
    """Cumulative counts of the server's DeepRec gRPC answers (all versions) at or under each of
    ANSWER_BOUNDS, and the total: the time from the request's arrival in the handler (C++ or
    Python) to its answer, without gRPC's transport and queueing."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=5).read()
    counts = dict.fromkeys((*ANSWER_BOUNDS, "+Inf"), 0.0)
    for line in text.decode().splitlines():
        if (line.startswith("deeprec_request_duration_seconds_bucket{")
                and 'api="deeprec_grpc"' in line and 'code="OK"' in line):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            if le in counts:
                counts[le] += float(line.rsplit(" ", 1)[1])
    return np.array(list(counts.values()))


ANSWER_BOUNDS = ("0.0005", "0.001", "0.0025")


def over_bounds(before: np.ndarray, after: np.ndarray) -> str:
    d = after - before
    return ", ".join(f"{100 * (1 - d[i] / d[-1]):.2f}% > {float(b) * 1e3:g} ms"
                     for i, b in enumerate(ANSWER_BOUNDS)) if d[-1] else "no answers"


def swap_p99(workdir, art, feed, swaps: int) -> None:
    """p99 at half load in windows where a new full version is loaded and swapped in, against
    control windows of the same length without one, interleaved under one continuous load. A
    shared machine's speed drifts over seconds (other tenants, the host): a control measured once
    before the swaps compares the swaps with a different machine."""
    print(f"\np99 at half load, during a full-version swap vs interleaved control windows "
          f"(batch 1, {swaps} swaps):", flush=True)
    server = start_runtime(workdir, art, ("--http-port", str(free_port())))
    target = f"127.0.0.1:{server.port}"
    payload = grpc_payload(feed)
    base = model_version(target)
    # Staged before the load starts: copying 64 MB would disturb the windows it fell in. Data
    # files are hard links (the runtime only reads them): copies would leave ~1 GB of dirty pages
    # that the kernel writes back ~30 s later, in the middle of the windows.
    staged = []
    for i in range(swaps):
        name = f"checkpoint_swap_{int(time.time())}_{i}"
        staging = os.path.join(workdir, "staging", name)
        shutil.copytree(os.path.join(art.checkpoint_dir, base), staging,
                        copy_function=_link_data_files)
        staged.append((name, staging))
    stop = threading.Event()
    try:
        full, _ = run_load("grpc", target, payload, 8, 2.0)
        rate = len(full) / 2.0 / 2
        result = {}

        def load():  # open loop at `rate` until the windows are over
            result["records"] = run_load("grpc", target, payload, 8, 600, rate=rate, stop=stop)[0]

        t = threading.Thread(target=load)
        t.start()
        time.sleep(2.0)
        windows: dict[str, list[tuple[float, float]]] = {"swap": [], "control": []}
        answers = {kind: np.zeros(len(ANSWER_BOUNDS) + 1) for kind in windows}
        with VersionProbe(target) as probe:
            length = 0.0
            for i in range(swaps):
                # alternate the order, so neither kind always follows the other; round 0 starts
                # with a swap, so a control window always has a swap window's length to copy
                for kind in (("swap", "control") if i % 2 == 0 else ("control", "swap")):
                    before = answer_times(server)
                    if kind == "swap":
                        start, length = _swap_window(art, probe, *staged[i])
                    else:  # polls the version like a swap window does, and changes nothing
                        start = time.time()
                        probe.poll_for(length)
                    windows[kind].append((start, start + length))
                    answers[kind] += answer_times(server) - before
        stop.set()
        t.join()
        rec = result["records"]

        def latencies(a: float, b: float) -> np.ndarray:  # of the requests started in [a, b]
            return rec[(rec[:, 0] >= a) & (rec[:, 0] <= b)][:, 1]

        pooled = {kind: np.concatenate([latencies(a, b) for a, b in spans])
                  for kind, spans in windows.items()}
        for kind in ("control", "swap"):
            lat = pooled[kind]
            # each window's own p99 shows how much the machine's noise moves it
            each = " ".join(f"{pct(latencies(a, b), 99):.1f}" for a, b in windows[kind])
            print(f"  {kind:<7} windows at {rate:6.0f} req/s: p50 {pct(lat, 50):6.2f} ms  "
                  f"p99 {pct(lat, 99):6.2f} ms  ({lat.size} requests in {swaps} windows of "
                  f"{np.mean([b - a for a, b in windows[kind]]):.2f} s on average; p99 per "
                  f"window, ms: {each})", flush=True)
        ratio = pct(pooled["swap"], 99) / pct(pooled["control"], 99)
        low, high = _ratio_interval([latencies(*w) for w in windows["swap"]],
                                    [latencies(*w) for w in windows["control"]])
        print(f"  swap p99 = {ratio:.2f}x control p99 (target <= 1.5x); 90% interval over the "
              f"rounds (bootstrap): {low:.2f}-{high:.2f}x", flush=True)
        print(f"  server's own answer time (handler in to answer out, from /metrics): control "
              f"{over_bounds(np.zeros_like(answers['control']), answers['control'])}; swap "
              f"{over_bounds(np.zeros_like(answers['swap']), answers['swap'])}", flush=True)
    finally:
        stop.set()  # ends the load early when a window failed
        server.stop()
        for name, staging in staged:  # later sections update the original version
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(os.path.join(art.checkpoint_dir, name), ignore_errors=True)


def _link_data_files(src: str, dst: str) -> None:
    """copytree's copy function: hard-links checkpoint data, copies the small files (the
    `checkpoint` file's mtime is changed at the move, which must not touch the original)."""
    if ".data-" in os.path.basename(src):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def _ratio_interval(swap: list[np.ndarray], control: list[np.ndarray],
                    resamples: int = 2000) -> tuple[float, float]:
    """5th and 95th percentiles of the pooled p99 ratio when the rounds (one swap and one
    control window each) are drawn again with replacement: how far the machine's noise alone
    moves the ratio."""
    rng = np.random.default_rng(0)
    rounds = len(swap)
    ratios = []
    for _ in range(resamples):
        pick = rng.integers(0, rounds, rounds)
        ratios.append(pct(np.concatenate([swap[i] for i in pick]), 99) /
                      pct(np.concatenate([control[i] for i in pick]), 99))
    return float(np.percentile(ratios, 5)), float(np.percentile(ratios, 95))


def _swap_window(art, probe: VersionProbe, name: str, staging: str) -> tuple[float, float]:
    """Moves a staged copy into checkpoint_dir (neither training nor copying is measured) and
    returns the window: from the move to 1 s after the new version serves."""
    before = probe.version()
    start = time.time()
    os.utime(os.path.join(staging, "checkpoint"))
    shutil.move(staging, os.path.join(art.checkpoint_dir, name))
    while probe.version() == before and time.time() - start < 120:
        time.sleep(0.05)
    probe.poll_for(1.0)
    return start, time.time() - start


class VersionProbe:
    """Asks the server for its serving version over one channel (a new channel per question
    would cost the benchmark's own process CPU in swap windows only)."""

    def __init__(self, target: str):
        import grpc

        from deeprec_api import predict_pb2 as pb

        self._pb = pb
        self._channel = grpc.insecure_channel(target)
        self._info = self._channel.unary_unary(
            "/deeprec.serving.PredictionService/GetServingModelInfo",
            request_serializer=pb.ServingModelInfoRequest.SerializeToString,
            response_deserializer=pb.ServingModelInfo.FromString)

    def version(self) -> str:
        return self._info(self._pb.ServingModelInfoRequest(), timeout=5).version

    def poll_for(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            self.version()
            time.sleep(max(0.0, min(0.05, end - time.time())))

    def __enter__(self) -> VersionProbe:
        return self

    def __exit__(self, *exc) -> None:
        self._channel.close()


def delta_vs_full(workdir, art) -> None:
    import tensorflow as tf

    from deeprec_runtime.config import parse_model_config
    from deeprec_runtime.model.manager import Manager

    print("\ndelta touching ~1% of the embedding vs a full reload (in-process manager):", flush=True)
    events = []
    manager = Manager(parse_model_config({"savedmodel_dir": art.saved_model_dir,
                                          "checkpoint_dir": art.checkpoint_dir,
                                          "warmup_iterations": 1}), "/nonexistent")
    manager.listeners.append(events.append)
    manager.poll_once()
    load = [e for e in events if e.kind == "load" and e.ok][-1]
    target_rows = art.model.num_ids // 100
    rng = np.random.default_rng(99)
    print(f"  full reload (restore + warmup) {load.seconds * 1e3:8.0f} ms", flush=True)
    # The first delta on a version also prepares the callables that apply it (a swap does not).
    for which in ("first delta", "next delta "):
        touched: set[int] = set()
        while len(touched) < target_rows:
            touched.update(np.unique(art.model.train_step(256, rng, art.writer)).tolist())
        art.step += 1
        prefix = art.writer.save_delta(art.step)
        rows = tf.train.load_checkpoint(prefix).get_tensor("embedding-sparse_incr_keys").shape[0]
        manager.poll_once()
        delta = [e for e in events if e.kind == "delta" and e.ok][-1]
        print(f"  {which} of {rows} rows ({rows / art.model.num_ids:.1%}) {delta.seconds * 1e3:6.0f} ms"
              f"   ({load.seconds / delta.seconds:.0f}x faster)", flush=True)
    manager.stop()


if __name__ == "__main__":
    sys.exit(main())
