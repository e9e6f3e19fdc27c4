"""Builds the native libraries: libdeeprec_grpc_frontend.so (grpc_frontend.cc, against the
system's gRPC C++) and libdeeprec_fast_predict.so (fast_predict.cc and the TensorFlow-free
request_wire.cc, against TensorFlow's own headers and libtensorflow_framework, with the flags
TensorFlow gives custom ops).

Needs a C++ compiler, pkg-config and gRPC C++'s development files (Debian: g++ pkg-config
libgrpc++-dev). Each library is built once per source version and gRPC / TensorFlow version into
a cache folder (DEEPREC_NATIVE_DIR, else ~/.cache/deeprec-serving/native/KEY); an image build runs
`deeprec-runtime native-path` with DEEPREC_NATIVE_DIR set so containers never compile at start-up.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess  # nosec B404  # runs the C++ compiler and pkg-config, fixed argument lists
import tempfile
from collections.abc import Callable
from pathlib import Path

from deeprec_runtime.capi.build import locked

LIBRARY_NAME = "libdeeprec_grpc_frontend.so"
FAST_LIBRARY_NAME = "libdeeprec_fast_predict.so"
DIR_ENV = "DEEPREC_NATIVE_DIR"
HERE = Path(__file__).resolve().parent
SOURCE = HERE / "grpc_frontend.cc"
FAST_SOURCE = HERE / "fast_predict.cc"
#: Compiled with FAST_SOURCE; request_wire.h is in the build key too (tests/fuzz builds the same
#: unit with sanitizers).
WIRE_SOURCES = (HERE / "request_wire.cc",)
WIRE_HEADER = HERE / "request_wire.h"
PKG_CONFIG_MODULES = ("grpc++", "grpc")


class BuildError(RuntimeError):
    """The library cannot be built here; the message says what is missing."""


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)  # nosec B603  # argv lists built here
    except FileNotFoundError:
        raise BuildError(f"{argv[0]} not found (Debian: apt-get install g++ pkg-config "
                         "libgrpc++-dev)") from None
    if done.returncode != 0:
        raise BuildError(f"{' '.join(argv[:2])} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def _compiler() -> str:
    for name in (os.environ.get("CXX", ""), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    raise BuildError("no C++ compiler found (Debian: apt-get install g++)")


def _grpc_version() -> str:
    """gRPC C++'s version, or BuildError naming what is missing."""
    if shutil.which("pkg-config") is None:
        raise BuildError("pkg-config not found (Debian: apt-get install pkg-config libgrpc++-dev)")
    try:
        return _run(["pkg-config", "--modversion", PKG_CONFIG_MODULES[0]])
    except BuildError:
        raise BuildError("gRPC C++ development files not found by pkg-config (Debian: apt-get "
                         "install libgrpc++-dev)") from None


def _grpc_flags() -> list[str]:
    # Only when compiling: resolving every abseil .pc file takes pkg-config ~1.5 s.
    return _run(["pkg-config", "--cflags", "--libs", *PKG_CONFIG_MODULES]).split()


def build_key(source: Path, version: str, *more: Path) -> str:
    h = hashlib.sha256(source.read_bytes())
    for path in more:  # sources and headers compiled with it
        h.update(path.read_bytes())
    h.update(version.encode())
    return h.hexdigest()[:16]


def _tensorflow_flags() -> tuple[str, list[str]]:
    """TensorFlow's version and the flags it gives custom ops (its headers, ABI, framework
    library), plus an rpath to that library's folder."""
    import tensorflow as tf  # only when building

    link = tf.sysconfig.get_link_flags()
    folders = [f[2:] for f in link if f.startswith("-L")]
    return tf.__version__, [*tf.sysconfig.get_compile_flags(), *link,
                            *(f"-Wl,-rpath,{d}" for d in folders)]


_found: dict[tuple[str, str], str] = {}


def _library(name: str, source: Path, version: Callable[[], str],
             flags: Callable[[], list[str]], build: bool, extra: tuple[Path, ...] = (),
             headers: tuple[Path, ...] = ()) -> str:
    configured = os.environ.get(DIR_ENV, "")
    if (configured, name) in _found:
        return _found[(configured, name)]
    if configured and (Path(configured) / name).exists():
        return str(Path(configured) / name)  # an image's prebuilt copy: no toolchain there
    key = build_key(source, version(), *extra, *headers)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(configured) if configured else Path(cache) / "deeprec-serving" / "native" / key
    lib = folder / name
    if not lib.exists():
        if not build:
            raise BuildError(f"{lib} is not built; run `deeprec-runtime native-path`")
        folder.mkdir(parents=True, exist_ok=True)
        with locked(folder / ".lock"):
            if not lib.exists():
                _compile([source, *extra], flags(), lib)
    _found[(configured, name)] = str(lib)
    return str(lib)


def library_path(build: bool = True) -> str:
    """Absolute path of the gRPC front end, building it first if it is not there yet
    (remembered for the process: asking again costs nothing)."""
    return _library(LIBRARY_NAME, SOURCE, _grpc_version, _grpc_flags, build)


def fast_predict_path(build: bool = True) -> str:
    """Absolute path of the fast predict library (built as library_path is)."""
    return _library(FAST_LIBRARY_NAME, FAST_SOURCE, lambda: _tensorflow_flags()[0],
                    lambda: _tensorflow_flags()[1], build, WIRE_SOURCES, (WIRE_HEADER,))


def _compile(sources: list[Path], flags: list[str], target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="deeprec-native-") as tmp:
        built = Path(tmp) / target.name
        # $ORIGIN/lib: an image copies gRPC C++'s shared libraries there (Dockerfile.runtime);
        # DT_RPATH rather than RUNPATH, so that it also applies to their own dependencies.
        _run([_compiler(), "-O2", "-std=c++17", "-shared", "-fPIC",
              "-Wl,--disable-new-dtags,-rpath,$ORIGIN/lib", "-o", str(built),
              *(str(s) for s in sources), *flags])
        # Rename into place: a process that loads the library never sees a half-written file.
        staged = target.parent / f".{target.name}.{os.getpid()}"
        shutil.copyfile(built, staged)
        os.chmod(staged, 0o755)  # nosec B103  # a shared library others load: r-x for all
        os.replace(staged, target)
