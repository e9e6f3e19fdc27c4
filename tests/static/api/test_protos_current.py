"""The checked-in generated protobuf code matches proto/ (scripts/gen-protos.sh)."""

import os
import subprocess
import sys

from tests.support.paths import REPO

ROOT = str(REPO)


def test_generated_code_is_current(tmp_path):
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "gen-protos.sh"), str(tmp_path)],
                   check=True, env={**os.environ, "PYTHON": sys.executable})
    for name in ("predict_pb2.py", "predict_pb2.pyi"):
        with open(os.path.join(ROOT, "proto", "deeprec_api", name)) as fh:
            checked_in = fh.read()
        assert (tmp_path / name).read_text() == checked_in, f"{name} is stale: run make protos"
