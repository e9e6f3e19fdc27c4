"""Layering contracts (.importlinter): the shared API (deeprec_api) imports neither side nor
TensorFlow, the runtime and the operator never import each other, protocol adapters sit on top of
the data plane, never below it, and the operator's layers."""

import os
import subprocess
import sys

from tests.support.paths import REPO

ROOT = str(REPO)


def test_import_contracts_are_kept():
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    result = subprocess.run([lint, "--config", os.path.join(ROOT, ".importlinter")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
