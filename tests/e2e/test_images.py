"""The images `scripts/images.sh build` made from the unchanged Dockerfiles: what their final
stages hold, read from their file systems and configurations.

The runtime's build stage compiles the C API library, the native gRPC front end and the fast
predict library; its final stage must carry those libraries (and gRPC C++'s shared libraries next
to them) but no compiler, no development headers and no static libraries, so nothing can compile
in a pod, and nothing needs to (test_real_node.py checks a pod's log for the native front end).
Without the images these tests FAIL with the command that builds them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "images.sh"
# Compilers, assemblers, linkers and build tools, by file name (Debian adds -12 / an arch prefix).
TOOLCHAIN = re.compile(r"^(x86_64-linux-gnu-)?(gcc|g\+\+|cc|c\+\+|cpp|cc1|cc1plus|collect2|lto1|"
                       r"ld|ld\.bfd|ld\.gold|as|pkg-config|pkgconf|make)(-\d+)?$")
# The only headers the base carries, as the official python image carries its own under
# /usr/local/include/python3.11 (Debian's Python keeps them here).
PYTHON_HEADERS = ("/usr/include/python3.11/", "/usr/include/x86_64-linux-gnu/python3.11/")


def _images() -> dict[str, str]:
    out = subprocess.run(["bash", str(SCRIPT), "names"], capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in out.stdout.split())


def _run(*args: str) -> str:
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"scripts/images.sh {' '.join(args)} failed (build the images with "
                    f"'scripts/images.sh build', as root):\n{proc.stderr[-3000:]}", pytrace=False)
    return proc.stdout


@pytest.fixture(scope="module")
def files() -> dict[str, dict[str, str]]:
    """{image role: {path: type}} for the operator and runtime images."""
    out = {}
    for role in ("operator", "runtime"):
        entries = {}
        for line in _run("files", _images()[role]).splitlines():
            kind, _mode, path = line.split(" ", 2)
            entries[path] = kind
        out[role] = entries
    return out


def _toolchain(paths) -> list[str]:
    return sorted(p for p in paths if ("/bin/" in p and TOOLCHAIN.match(p.rsplit("/", 1)[-1]))
                  or p.startswith(("/usr/lib/gcc/", "/usr/libexec/gcc/")))


@pytest.mark.parametrize("role", ["operator", "runtime"])
def test_final_stage_has_no_compiler_headers_or_static_libraries(files, role):
    paths = files[role]
    assert _toolchain(paths) == []
    headers = sorted(p for p, kind in paths.items() if p.startswith("/usr/include/") and kind == "f"
                     and not p.startswith(PYTHON_HEADERS))
    assert headers == [], headers[:20]
    static = sorted(p for p in paths if p.endswith(".a") and p.startswith(("/usr/lib/", "/lib/")))
    assert static == [], static[:20]
    assert not any(p.startswith(("/usr/include/grpc", "/usr/include/c++", "/src/")) for p in paths)


def test_runtime_carries_its_native_libraries_built_at_image_build_time(files):
    paths = files["runtime"]
    for lib in ("/opt/deeprec/capi/libserving_processor.so",
                "/opt/deeprec/native/libdeeprec_grpc_frontend.so",
                "/opt/deeprec/native/libdeeprec_fast_predict.so"):
        assert paths.get(lib) == "f", f"{lib} missing from the runtime image"
    # gRPC C++'s shared libraries, found through the front end's $ORIGIN/lib rpath.
    assert any(re.match(r"/opt/deeprec/native/lib/libgrpc\+\+\.so\.\d+", p) for p in paths)


@pytest.mark.parametrize("role", ["operator", "runtime"])
def test_images_run_as_a_numeric_non_root_user(role):
    config = json.loads(_run("config", _images()[role]))
    assert config["User"] == "10001:10001"
    assert any(e.startswith("PATH=/opt/venv/bin:") for e in config["Env"])


def test_image_sizes_are_reported():
    listing = _run("list")
    sys.__stderr__.write(f"\n[images] {SCRIPT.name} list:\n{listing}")
    for role in ("operator", "runtime"):
        assert _images()[role] in listing and "(not built)" not in listing
