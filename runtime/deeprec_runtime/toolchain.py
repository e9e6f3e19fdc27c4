"""Builds the runtime's C++ shared libraries with the machine's compiler, once per source and
dependency version, into a cache folder.

Each library is keyed by its sources and the version of what it is built against (gRPC C++,
TensorFlow), and built into DEEPREC_NATIVE_DIR when that is set (an image build runs
`deeprec-runtime native-path` with it set, so containers never compile at start-up), else into
~/.cache/deeprec-serving/native/KEY. Users: native/build.py (the gRPC front end and the fast
predict library) and deeprec/kernels.py (the EmbeddingVariable op library).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess  # nosec B404  # runs the C++ compiler and pkg-config, fixed argument lists
import tempfile
from collections.abc import Callable
from pathlib import Path

DIR_ENV = "DEEPREC_NATIVE_DIR"


class BuildError(RuntimeError):
    """The library cannot be built here; the message says what is missing."""


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive flock on `path` for the block: two processes that build at once build once."""
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run(argv: list[str]) -> str:
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


def build_key(source: Path, version: str, *more: Path) -> str:
    h = hashlib.sha256(source.read_bytes())
    for path in more:  # sources and headers compiled with it
        h.update(path.read_bytes())
    h.update(version.encode())
    return h.hexdigest()[:16]


def tensorflow_version() -> str:
    import tensorflow as tf  # only when building

    return tf.__version__


def tensorflow_flags() -> list[str]:
    """The flags TensorFlow gives custom ops (its headers, ABI, framework library), plus an
    rpath to that library's folder."""
    import tensorflow as tf  # only when building

    link = tf.sysconfig.get_link_flags()
    folders = [f[2:] for f in link if f.startswith("-L")]
    return [*tf.sysconfig.get_compile_flags(), *link, *(f"-Wl,-rpath,{d}" for d in folders)]


_found: dict[tuple[str, str], str] = {}


def cached_library(name: str, source: Path, version: Callable[[], str],
            flags: Callable[[], list[str]], build: bool, extra: tuple[Path, ...] = (),
            headers: tuple[Path, ...] = ()) -> str:
    """Absolute path of library `name` built from `source` (+ `extra` sources, `headers` in the
    key), building it first if it is not there yet (remembered for the process)."""
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


def _compile(sources: list[Path], flags: list[str], target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="deeprec-native-") as tmp:
        built = Path(tmp) / target.name
        # $ORIGIN/lib: an image copies gRPC C++'s shared libraries there (Dockerfile.runtime);
        # DT_RPATH rather than RUNPATH, so that it also applies to their own dependencies.
        run([_compiler(), "-O2", "-std=c++17", "-shared", "-fPIC",
             "-Wl,--disable-new-dtags,-rpath,$ORIGIN/lib", "-o", str(built),
             *(str(s) for s in sources), *flags])
        # Rename into place: a process that loads the library never sees a half-written file.
        staged = target.parent / f".{target.name}.{os.getpid()}"
        shutil.copyfile(built, staged)
        os.chmod(staged, 0o755)  # nosec B103  # a shared library others load: r-x for all
        os.replace(staged, target)
