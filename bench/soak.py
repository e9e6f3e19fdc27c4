"""Soak: many version swaps under steady load; does anything leak?

  .venv/bin/python bench/soak.py [--swaps 100] [--num-ids 200000] [--retain-previous true|false]

One in-process runtime serves the Wide&Deep demo model (`--num-ids` x 16 embedding, so a leaked
version shows in memory) to `--clients` threads sending DeepRec gRPC requests without pause,
while the trainer (same process) writes full versions and deltas alternately; each is waited
for until it serves. Old version folders are deleted as training's retention would.

Printed: resident memory (VmRSS) after the warm-up swaps and at the end, open file descriptors,
threads, requests answered and failed, and whether every replaced version was freed (closed,
state END in GetServingModelInfo; collected by Python). tests/faults/test_soak.py runs a short
one and asserts on the same figures.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field

import grpc
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def proc_status(key: str) -> int:
    """A number from /proc/self/status (VmRSS in kB, Threads)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Sample:
    rss_kb: int
    fds: int
    threads: int

    @staticmethod
    def take() -> Sample:
        gc.collect()
        return Sample(proc_status("VmRSS"), open_fds(), proc_status("Threads"))


@dataclass
class SoakResult:
    swaps: int
    full_swaps: int
    delta_swaps: int
    seconds: float
    warm: Sample
    end: Sample
    answered: int
    failed: int
    failures: list[str] = field(default_factory=list)
    replaced: int = 0
    not_closed: list[str] = field(default_factory=list)
    not_end: list[str] = field(default_factory=list)
    still_referenced: int = 0

    @property
    def rss_growth(self) -> float:
        return self.end.rss_kb / self.warm.rss_kb - 1.0

    def report(self) -> str:
        return "\n".join([
            (f"swaps: {self.swaps} ({self.full_swaps} full, {self.delta_swaps} delta) in "
            f"{self.seconds:.1f}s"),
            (f"VmRSS after warm-up: {self.warm.rss_kb / 1024:.1f} MiB, at the end: "
            f"{self.end.rss_kb / 1024:.1f} MiB ({self.rss_growth * 100:+.1f}%)"),
            f"open fds: {self.warm.fds} -> {self.end.fds}",
            f"threads: {self.warm.threads} -> {self.end.threads}",
            f"requests answered: {self.answered}, failed: {self.failed}",
            (f"replaced versions: {self.replaced}; not closed: {len(self.not_closed)}; state not "
            f"END: {len(self.not_end)}; still referenced after gc: {self.still_referenced}"),
        ])


class Traffic:
    """Client threads sending requests back to back, counting answers and failures."""

    def __init__(self, port: int, request, clients: int):
        from deeprec_api import predict_pb2 as pb

        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._call = self.channel.unary_unary(
            "/deeprec.serving.PredictionService/Predict",
            request_serializer=pb.PredictRequest.SerializeToString,
            response_deserializer=pb.PredictResponse.FromString)
        self.request = request
        self.answered = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"soak-client-{i}", daemon=True)
                         for i in range(clients)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self._call(self.request, timeout=30)
                if "probability" not in reply.outputs:
                    raise AssertionError("answer without 'probability'")
                self.answered += 1
            except (grpc.RpcError, AssertionError) as exc:
                self.failures.append(repr(exc)[:300])

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        self.channel.close()


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def run_soak(workdir: str, swaps: int = 100, num_ids: int = 200_000, clients: int = 2,
             retain_previous: bool = True, warmup_swaps: int = 4, keep_folders: int = 3,
             log=print) -> SoakResult:
    """Runs the soak in `workdir` (the model is written there); returns the figures."""
    from deeprec_api import predict_pb2 as pb
    from deeprec_runtime.app import Runtime
    from deeprec_runtime.codec import encode_array
    from deeprec_runtime.config import parse_model_config
    from deeprec_runtime.training import write_demo_model

    demo = write_demo_model(os.path.join(workdir, "model"), num_ids=num_ids, num_deltas=0,
                            hidden=(64, 32), steps_per_delta=1, batch_size=64)
    config = parse_model_config({
        "savedmodel_dir": demo.saved_model_dir, "checkpoint_dir": demo.checkpoint_dir,
        "model_store_type": "local", "feature_store_type": "memory",
        "signature_name": "serving_default", "update_poll_seconds": 0.1,
        "warmup_iterations": 1, "retain_previous_version": retain_previous})
    runtime = Runtime(config, grpc_port=0, host="127.0.0.1",
                      annotations_file=os.path.join(workdir, "no-annotations"))
    runtime.start()
    manager = runtime.manager
    if not manager.wait_ready(120):
        raise RuntimeError(f"first version did not load: {manager.last_error}")
    request = pb.PredictRequest(signature_name="serving_default")
    for key, value in demo.model.make_feed(16, np.random.default_rng(0)).items():
        encode_array(np.asarray(value), request.inputs[key])
    traffic = Traffic(runtime.grpc_port, request, clients)
    seen: dict[str, weakref.ref] = {}  # by version name: every full swap loads a new one

    def remember_loaded() -> None:
        for s in manager.loaded():
            seen.setdefault(s.name, weakref.ref(s))

    remember_loaded()
    traffic.start()
    started = time.monotonic()
    warm: Sample | None = None
    full = delta = 0
    try:
        for i in range(swaps):
            if i % 2 == 0:
                name = f"checkpoint_{i // 2 + 2}"
                demo.write_full(name, steps=1)
                _wait(lambda n=name: manager.info().version == n, 120, f"{name} serving")
                full += 1
                _prune_folders(demo.checkpoint_dir, keep_folders, manager)
            else:
                prefix = demo.write_delta(steps=1)
                step = int(prefix.rsplit("-", 1)[1])
                _wait(lambda s=step: manager.info().delta_step == s, 120, f"delta {step} applied")
                delta += 1
            remember_loaded()
            if i + 1 == warmup_swaps:
                warm = Sample.take()
                log(f"warm-up done after {warmup_swaps} swaps: VmRSS {warm.rss_kb / 1024:.1f} MiB")
            elif (i + 1) % 10 == 0:
                log(f"{i + 1} swaps, VmRSS {proc_status('VmRSS') / 1024:.1f} MiB, "
                    f"{traffic.answered} requests, {len(traffic.failures)} failed")
        seconds = time.monotonic() - started
        loaded = {s.name for s in manager.loaded()}
        replaced = {k: v for k, v in seen.items() if k not in loaded}
        # Unloading runs in the background once the last request has left a version.
        _wait(lambda: all(r() is None or r().closed for r in replaced.values()), 60,
              "replaced versions closed")
    finally:
        traffic.stop()
    states = {v.name: v.state for v in manager.info().versions}
    end = Sample.take()
    if warm is None:
        warm = end
    result = SoakResult(
        swaps=swaps, full_swaps=full, delta_swaps=delta, seconds=seconds, warm=warm, end=end,
        answered=traffic.answered, failed=len(traffic.failures), failures=traffic.failures[:5],
        replaced=len(replaced),
        not_closed=[n for n, r in replaced.items() if r() is not None and not r().closed],
        not_end=[n for n in replaced if states.get(n, "END") != "END"],
        still_referenced=sum(1 for r in replaced.values() if r() is not None))
    runtime.stop(1.0)
    demo.close()
    return result


def _prune_folders(checkpoint_dir: str, keep: int, manager) -> None:
    """Deletes the oldest version folders beyond `keep`, never a loaded one (training's
    retention policy; keeps the soak's disk use flat)."""
    loaded = {s.name for s in manager.loaded()}
    names = sorted((n for n in os.listdir(checkpoint_dir) if n.startswith("checkpoint_")),
                   key=lambda n: int(n.split("_")[1]))
    for name in names[:-keep]:
        if name not in loaded:
            shutil.rmtree(os.path.join(checkpoint_dir, name), ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=100)
    parser.add_argument("--num-ids", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--warmup-swaps", type=int, default=4)
    parser.add_argument("--retain-previous", choices=("true", "false"), default="true")
    parser.add_argument("--dir", default="", help="work folder (default: a temporary one)")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    workdir = args.dir or tempfile.mkdtemp(prefix="deeprec-soak-")
    try:
        result = run_soak(workdir, args.swaps, args.num_ids, args.clients,
                          args.retain_previous == "true", args.warmup_swaps)
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"retain_previous_version={args.retain_previous}, {args.num_ids} x 16 embedding, "
          f"{args.clients} client threads")
    print(result.report())
    for failure in result.failures:
        print("failure:", failure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
