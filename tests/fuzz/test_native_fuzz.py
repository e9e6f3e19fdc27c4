"""Coverage-guided fuzzing (libFuzzer, with AddressSanitizer and UndefinedBehaviorSanitizer, UBSan
fatal) of the fast path's request decoding: runtime/deeprec_runtime/native/request_wire.cc, the
TensorFlow-free unit that turns DeepRec and TF Serving Predict bytes into checked tensor
descriptions (tests/fuzz/native/fuzz_request_wire.cc says what the harness checks).

Each target is built once per source version into a cache folder and runs for FUZZ_SECONDS
(default 20) over its checked-in corpus, which holds seeds and every input that ever failed. Needs
clang and libFuzzer (Debian: clang libclang-rt-14-dev, which .ci/run installs): without them the
test fails rather than skips. A crash fails the test and names the input to add to the corpus once
fixed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
NATIVE = HERE.parent.parent / "runtime" / "deeprec_runtime" / "native"
HARNESS = HERE / "native" / "fuzz_request_wire.cc"
DICTIONARY = HERE / "native" / "request_wire.dict"
UNIT = (NATIVE / "request_wire.cc", NATIVE / "request_wire.h")
#: target -> the API its inputs are requests of (request_wire::Api).
TARGETS = {"request_wire_deeprec": 0, "request_wire_tfs": 1}
SECONDS = int(os.environ.get("FUZZ_SECONDS", "20"))
FLAGS = ("-std=c++17", "-g", "-O1", "-Wall", "-Wextra", "-fsanitize=fuzzer,address,undefined",
         "-fno-sanitize-recover=all")
INSTALL_HINT = "Debian: apt-get install clang libclang-rt-14-dev (.ci/run installs them)"


def _clang() -> str:
    for name in ("clang++", "clang++-14"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError(f"clang++ not found; the native fuzz targets need it ({INSTALL_HINT})")


def _build(target: str, api: int) -> Path:
    """The target's binary, compiled unless this source version is built already."""
    clang = _clang()
    version = subprocess.run([clang, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256()
    for path in (HARNESS, *UNIT):
        key.update(path.read_bytes())
    key.update(f"{version}{FLAGS}{api}".encode())
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(cache) / "deeprec-serving" / "fuzz" / key.hexdigest()[:16]
    binary = folder / target
    if binary.exists():
        return binary
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        built = Path(tmp) / target
        done = subprocess.run([clang, *FLAGS, f"-DFUZZ_API={api}", f"-I{NATIVE}", str(HARNESS),
                               str(UNIT[0]), "-o", str(built)], capture_output=True, text=True)
        assert done.returncode == 0, f"building {target} failed ({INSTALL_HINT}):\n{done.stderr[-4000:]}"
        os.replace(built, binary)  # concurrent builders: each rename is whole
    return binary


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_native_fuzz_target_survives_its_budget(target, tmp_path):
    binary = _build(target, TARGETS[target])
    corpus = HERE / "corpus" / target
    assert any(p.name.startswith("crash-") for p in corpus.iterdir()), "the reproducers are kept"
    new_inputs = tmp_path / "new"
    new_inputs.mkdir()
    cmd = [str(binary), f"-max_total_time={SECONDS}", "-timeout=10", "-rss_limit_mb=4096",
           f"-dict={DICTIONARY}", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1",
           str(new_inputs), str(corpus)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 240,
                            env={**os.environ, "UBSAN_OPTIONS": "print_stacktrace=1"})
    found = [p for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]
    detail = "\n".join(f"{p.name}: {base64.b64encode(p.read_bytes()).decode()}" for p in found)
    assert result.returncode == 0 and not found, (
        f"{target} failed (copy the input into tests/fuzz/corpus/{target}/ once fixed):\n{detail}\n"
        + result.stderr[-6000:])
    runs = [line for line in result.stderr.splitlines() if line.startswith("Done ")]
    assert runs, result.stderr[-2000:]
    print(f"{target}: {runs[-1]}")
