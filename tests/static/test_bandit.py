"""bandit (security linter) over the runtime, the operator and their shared API package: no
finding, and every exception is written where it applies (`# nosec BXXX  # why`) with its reason."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.support.paths import REPO

ROOT = str(REPO)
NOSEC = re.compile(r"#\s*nosec\b(?P<rest>.*)$")
JUSTIFIED = re.compile(r"^\s*B\d{3}(\s*,\s*B\d{3})*\s+#\s*\S.{5,}")


def test_bandit_finds_nothing_in_runtime_operator_and_api():
    result = subprocess.run(
        [sys.executable, "-m", "bandit", "-r", "runtime", "operator", "proto", "-x",
         "proto/deeprec_api/predict_pb2.py", "-f", "json", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.strip(), f"bandit did not run (pip install bandit):\n{result.stderr}"
    report = json.loads(result.stdout)
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}"
                for r in report["results"]]
    assert findings == [], "\n".join(findings)
    assert report["errors"] == [], report["errors"]


def test_every_nosec_names_its_check_and_says_why():
    unjustified = []
    for top in ("runtime", "operator", "proto"):
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if not name.endswith(".py") or name.endswith("_pb2.py"):
                    continue
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as fh:
                    for number, line in enumerate(fh, 1):
                        m = NOSEC.search(line)
                        if m and not JUSTIFIED.match(m["rest"]):
                            unjustified.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert unjustified == [], "write '# nosec BXXX  # reason':\n" + "\n".join(unjustified)
