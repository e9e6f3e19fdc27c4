"""ruff and mypy as part of the suite: lint and type checks run wherever the tests run.

Both run from the venv that runs the tests, with the settings in pyproject.toml. A missing tool
fails the test (install requirements-test.txt), it is never skipped.
"""

import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO

BIN = Path(sys.executable).parent


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    tool = BIN / args[0]
    assert tool.exists(), f"{tool} is missing: pip install -r requirements-test.txt"
    return subprocess.run([str(tool), *args[1:]], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_ruff_check():
    proc = _run("ruff", "check", "--no-cache", "runtime", "operator", "proto", "tests", "bench", timeout=60)
    assert proc.returncode == 0, f"ruff check failed:\n{proc.stdout}{proc.stderr}"


def test_mypy():
    # Packages, paths and per-library settings come from [tool.mypy] in pyproject.toml; the cache
    # is kept out of the tree.
    proc = _run("mypy", "--cache-dir", "/dev/null", timeout=240)
    assert proc.returncode == 0, f"mypy failed:\n{proc.stdout}{proc.stderr}"
