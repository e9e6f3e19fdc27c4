"""C API throughput: a C host (examples/c/processor_client.c) calling process() in a loop.

Prints calls/s for 1 and 2 host threads on DeepRec's seed example model (5 rows per request), and
the host process's CPU time per call. Run: .venv/bin/python bench/capi_bench.py [calls]
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.capi import include_dir, library_path
from deeprec_runtime.codec import encode_array
from deeprec_runtime.training.checkpoint_writer import CheckpointWriter
from deeprec_runtime.training.demo_models import build_seed_example

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    work = Path(tempfile.mkdtemp(prefix="capi-bench-"))
    model = build_seed_example(num_ids=50)
    writer = CheckpointWriter(model.session, str(work / "ckpt"), "checkpoint_1",
                              model.embedding_variables, model.dense_variables)
    writer.export_saved_model(str(work / "sm"), model.inputs, model.outputs)
    model.train_step(8)
    writer.save_full(1)
    request = pb.PredictRequest()
    for key, value in model.make_feed(5, np.random.default_rng(0)).items():
        encode_array(np.asarray(value), request.inputs[key])
    (work / "req.pb").write_bytes(request.SerializeToString())
    (work / "cfg.json").write_text(json.dumps({
        "savedmodel_dir": str(work / "sm"), "checkpoint_dir": str(work / "ckpt"),
        "warmup_iterations": 1, "update_poll_seconds": 60}))
    exe = work / "processor_client"
    subprocess.run(["gcc", "-O2", f"-I{include_dir()}", str(REPO / "examples/c/processor_client.c"),
                    "-o", str(exe), "-ldl", "-lpthread"], check=True)
    lib = library_path()  # built (if needed) before any CPU time is counted
    env = {"PATH": os.environ["PATH"], "DEEPREC_LOG_LEVEL": "WARNING", "TF_CPP_MIN_LOG_LEVEL": "2"}
    for threads in (1, 2):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([str(exe), lib, str(work / "cfg.json"),
                              "bench", str(work / "req.pb"), "1000", str(threads),  # warm-up
                              "bench", str(work / "req.pb"), str(calls), str(threads)],
                             env=env, capture_output=True, text=True, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        line = out.stdout.strip().splitlines()[-1]
        print(f"{line}  (host process CPU incl. start-up {cpu:.1f} s)")
    model.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
