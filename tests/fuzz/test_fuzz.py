"""Coverage-guided fuzzing (atheris) of the request decoders and the config parser, on a fixed
time budget each (FUZZ_SECONDS, default 20). The checked-in corpus holds seeds and every input that
ever failed; each run replays it first. A crash fails the test and leaves the input in tmp."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = {
    "predict_request": "fuzz_predict_request.py",
    "model_config": "fuzz_model_config.py",
    "tfs_and_rest": "fuzz_tfs_and_rest.py",
}
SECONDS = int(os.environ.get("FUZZ_SECONDS", "20"))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_survives_its_budget(target, tmp_path):
    corpus = os.path.join(HERE, "corpus", target)
    new_inputs = tmp_path / "new"
    new_inputs.mkdir()
    cmd = [sys.executable, os.path.join(HERE, TARGETS[target]), str(tmp_path / "work"),
           f"-max_total_time={SECONDS}", "-timeout=10", "-rss_limit_mb=4096",
           f"-artifact_prefix={tmp_path}/", str(new_inputs), corpus]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 240,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    crashes = [p for p in os.listdir(tmp_path) if p.startswith(("crash-", "timeout-", "oom-"))]
    detail = "\n".join(
        f"{name}: {base64.b64encode((tmp_path / name).read_bytes()).decode()}" for name in crashes)
    assert result.returncode == 0 and not crashes, (
        f"{target} failed (copy the input into tests/fuzz/corpus/{target}/ once fixed):\n{detail}\n"
        + result.stderr[-4000:])
    runs = [line for line in result.stderr.splitlines() if line.startswith("Done ")]
    assert runs, result.stderr[-2000:]
    print(f"{target}: {runs[-1]}")
