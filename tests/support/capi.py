"""What the C API tests share: the CLI that builds the library, requests in DeepRec's format, and
the C example's binary run as a user's C host would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.codec import encode_array
from tests.support.paths import REPO

EXAMPLE = REPO / "examples" / "c" / "processor_client.c"


def cli(*args: str, env: dict | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "deeprec_runtime.cli", *args], env=env,
                         capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def make_request(inputs: dict, output_filter=()) -> pb.PredictRequest:
    req = pb.PredictRequest(output_filter=list(output_filter))
    for key, value in inputs.items():
        encode_array(np.asarray(value), req.inputs[key])
    return req


def write_json(path: Path, value) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def run_client(exe: str, library: str, config_path: str, *commands: str, cwd: str):
    """Runs examples/c/processor_client.c's binary in a clean environment (no PYTHONPATH, no
    virtualenv variables): the C host a user writes."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DEEPREC_LOG_LEVEL": "WARNING",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([exe, library, config_path, *commands], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=180, check=False)
