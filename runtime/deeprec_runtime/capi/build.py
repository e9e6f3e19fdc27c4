"""Builds libserving_processor.so: the DeepRec Processor C API over an embedded CPython.

cffi's embedding mode compiles a shared library that, on its first call, starts the Python
interpreter it was built against, runs a short init script and binds the exported C functions to
Python (glue.py). The library is built once per interpreter + environment + source version into
a cache folder, so it works the same from an editable checkout, a wheel or a container image.

What a host process that is not Python needs, and how the library provides it:
- libpython: linked with an rpath to the builder's LIBDIR, so no LD_LIBRARY_PATH is needed; the
  library re-opens libpython RTLD_GLOBAL when loaded, because extension modules (numpy,
  TensorFlow) resolve Python's symbols globally and a host's dlopen(RTLD_LOCAL) would hide them.
- Python's home (standard library): set to the builder's sys.base_prefix unless the host set
  PYTHONHOME itself.
- the environment's packages: the builder's site-packages folders (a virtualenv's included,
  with their .pth files, so editable installs resolve) and PYTHONPATH entries are added to
  sys.path by the init script. PYTHONPATH set in the host's environment is honoured as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import site
import sys
import sysconfig
import tempfile
from pathlib import Path

from deeprec_runtime.toolchain import locked

LIBRARY_NAME = "libserving_processor.so"
HEADER_NAME = "processor.h"
MODULE_NAME = "_deeprec_serving_processor"
#: Where to build (and look for) the library instead of the per-user cache; an image build sets
#: it to a folder inside the image so that containers never compile at start-up.
DIR_ENV = "DEEPREC_CAPI_DIR"

_HERE = Path(__file__).resolve().parent
HEADER_PATH = _HERE / "include" / HEADER_NAME


class BuildError(RuntimeError):
    """The library cannot be built here; the message says what is missing."""


def include_dir() -> str:
    """Folder holding processor.h, for `-I`."""
    return str(HEADER_PATH.parent)


def api_declarations() -> str:
    """The exported functions, read from processor.h so the header and the library agree."""
    text = HEADER_PATH.read_text()
    match = re.search(r"/\* BEGIN-API.*?\*/(.*?)/\* END-API \*/", text, re.DOTALL)
    if match is None:
        raise BuildError(f"{HEADER_PATH} has no BEGIN-API/END-API block")
    return re.sub(r"/\*.*?\*/", "", match.group(1), flags=re.DOTALL).strip()


def _site_dirs() -> list[str]:
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _pythonpath() -> list[str]:
    return [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


def _libpython() -> tuple[str, str]:
    """(LIBDIR, shared libpython path) of this interpreter, or BuildError."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    names = [sysconfig.get_config_var(n) for n in ("INSTSONAME", "LDLIBRARY")]
    for name in names:
        if name and ".so" in name:
            path = os.path.join(libdir, name)
            if os.path.exists(path):
                return libdir, path
    raise BuildError(
        f"this Python ({sys.executable}) has no shared libpython in {libdir!r}; the C API embeds "
        "Python and needs one (a Python built with --enable-shared, e.g. Debian's python3 with "
        "libpython3-dev, pyenv with PYTHON_CONFIGURE_OPTS=--enable-shared, or the python Docker images)")


_C_SOURCE = r"""
#include <dlfcn.h>
#include <stdlib.h>
#include <Python.h>

/* Runs when the host loads the library, before Python starts (see build.py's docstring). */
__attribute__((constructor)) static void _deeprec_prepare_embedding(void)
{
    dlopen(%(libpython)s, RTLD_NOW | RTLD_GLOBAL);
#if PY_VERSION_HEX < 0x030D0000
    if (!Py_IsInitialized() && getenv("PYTHONHOME") == NULL) {
        static wchar_t *home = NULL;
        home = Py_DecodeLocale(%(home)s, NULL);
        if (home != NULL) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
            Py_SetPythonHome(home);
#pragma GCC diagnostic pop
        }
    }
#endif
}
"""

_INIT_CODE = r'''
from %(module)s import ffi, lib
import site as _site
import sys as _sys

for _d in %(site_dirs)r:
    if _d not in _sys.path:
        _site.addsitedir(_d)
for _p in %(extra_paths)r:
    if _p not in _sys.path:
        _sys.path.append(_p)

try:
    from deeprec_runtime.capi.glue import install as _install
except BaseException:
    import traceback as _tb
    _why = ("deeprec-serving C API: cannot import deeprec_runtime from this library's Python "
            "(sys.path = %%r):\n%%s" %% (_sys.path, _tb.format_exc())).encode()
    _sys.stderr.write(_why.decode() + "\n")

    def _fail(output_data, output_size):
        if output_data != ffi.NULL and output_size != ffi.NULL:
            buf = lib.malloc(len(_why))
            if buf != ffi.NULL:
                ffi.memmove(buf, _why, len(_why))
                output_data[0] = buf
                output_size[0] = len(_why)
        return 500

    @ffi.def_extern(error=ffi.NULL)
    def initialize(model_entry, model_config, state):
        if state != ffi.NULL:
            state[0] = -1
        return ffi.NULL

    @ffi.def_extern(error=500)
    def process(model_buf, input_data, input_size, output_data, output_size):
        return _fail(output_data, output_size)

    @ffi.def_extern(error=500)
    def batch_process(model_buf, input_data, input_size, output_data, output_size):
        return _fail(output_data, output_size)

    @ffi.def_extern(error=500)
    def get_serving_model_info(model_buf, output_data, output_size):
        return _fail(output_data, output_size)
else:
    _install(ffi, lib)
'''


def _c_string(value: str) -> str:
    # JSON string syntax is valid C for these paths (\\, \", \uXXXX universal names).
    return json.dumps(value)


def _sources() -> tuple[str, str]:
    _, libpython = _libpython()
    c_source = _C_SOURCE % {"libpython": _c_string(libpython), "home": _c_string(sys.base_prefix)}
    init_code = _INIT_CODE % {"module": MODULE_NAME, "site_dirs": _site_dirs(),
                              "extra_paths": _pythonpath()}
    return c_source, init_code


def build_key() -> str:
    """Changes whenever the library would come out different: sources, interpreter, paths."""
    try:
        import cffi
    except ImportError as exc:
        raise BuildError(f"the C API is built with cffi, which is not installed: {exc}") from None
    c_source, init_code = _sources()
    h = hashlib.sha256()
    for part in (c_source, init_code, api_declarations(), sys.version, sys.executable,
                 cffi.__version__, (_HERE / "glue.py").read_text()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def default_dir() -> Path:
    configured = os.environ.get(DIR_ENV)
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "deeprec-serving" / "capi" / build_key()


def library_path(build: bool = True) -> str:
    """Absolute path of libserving_processor.so, building it first if it is not there yet."""
    folder = default_dir()
    lib = folder / LIBRARY_NAME
    stamp = folder / "build-key"
    key = build_key()
    if lib.exists() and stamp.exists() and stamp.read_text().strip() == key:
        return str(lib)
    if not build:
        raise BuildError(f"{lib} is not built; run `deeprec-runtime capi-path`")
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder / ".lock"):  # two processes asking at once build it once
        if not (lib.exists() and stamp.exists() and stamp.read_text().strip() == key):
            _compile(folder, key)
    return str(lib)


def _compile(folder: Path, key: str) -> None:
    try:
        import cffi
    except ImportError as exc:
        raise BuildError(f"the C API is built with cffi, which is not installed: {exc}") from None
    if shutil.which(sysconfig.get_config_var("CC").split()[0] if sysconfig.get_config_var("CC")
                    else "cc") is None and shutil.which("gcc") is None:
        raise BuildError("no C compiler found (install gcc)")
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        raise BuildError(f"Python.h not found in {sysconfig.get_paths()['include']} "
                         "(install the Python development headers, e.g. python3-dev)")
    libdir, _ = _libpython()
    c_source, init_code = _sources()
    ffi = cffi.FFI()
    ffi.embedding_api(api_declarations())
    ffi.cdef("void *malloc(size_t); void free(void *);")
    ffi.set_source(MODULE_NAME, c_source, library_dirs=[libdir],
                   extra_link_args=[f"-Wl,-rpath,{libdir}"])
    ffi.embedding_init_code(init_code)
    with tempfile.TemporaryDirectory(prefix="deeprec-capi-") as tmp:
        try:
            built = ffi.compile(tmpdir=tmp, target=LIBRARY_NAME.replace(".so", ".*"), verbose=False)
        except Exception as exc:  # noqa: BLE001 (distutils CompileError / LinkError carry the compiler output)
            raise BuildError(f"building {LIBRARY_NAME} failed: {exc}") from None
        # Rename into place: a process that loads the library never sees a half-written file.
        staged = folder / f".{LIBRARY_NAME}.{os.getpid()}"
        shutil.copyfile(built, staged)
        os.chmod(staged, 0o755)  # nosec B103  # a shared library others load: r-x for all, writable by owner only
        os.replace(staged, folder / LIBRARY_NAME)
    shutil.copyfile(HEADER_PATH, folder / HEADER_NAME)
    (folder / "build-key").write_text(key + "\n")
