"""Builds the native libraries of the serving path (toolchain.py does the building and caching):
libdeeprec_grpc_frontend.so (grpc_frontend.cc, against the system's gRPC C++) and
libdeeprec_fast_predict.so (fast_predict.cc and the TensorFlow-free request_wire.cc, against
TensorFlow's own headers and libtensorflow_framework, with the flags TensorFlow gives custom
ops).

Needs a C++ compiler, pkg-config and gRPC C++'s development files (Debian: g++ pkg-config
libgrpc++-dev).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from deeprec_runtime.toolchain import (  # noqa: F401  (re-exported: callers catch BuildError here)
    DIR_ENV,
    BuildError,
    cached_library,
    run,
    tensorflow_flags,
    tensorflow_version,
)

LIBRARY_NAME = "libdeeprec_grpc_frontend.so"
FAST_LIBRARY_NAME = "libdeeprec_fast_predict.so"
HERE = Path(__file__).resolve().parent
SOURCE = HERE / "grpc_frontend.cc"
FAST_SOURCE = HERE / "fast_predict.cc"
#: Compiled with FAST_SOURCE; request_wire.h is in the build key too (tests/fuzz builds the same
#: unit with sanitizers).
WIRE_SOURCES = (HERE / "request_wire.cc",)
WIRE_HEADER = HERE / "request_wire.h"
PKG_CONFIG_MODULES = ("grpc++", "grpc")


def _grpc_version() -> str:
    """gRPC C++'s version, or BuildError naming what is missing."""
    if shutil.which("pkg-config") is None:
        raise BuildError("pkg-config not found (Debian: apt-get install pkg-config libgrpc++-dev)")
    try:
        return run(["pkg-config", "--modversion", PKG_CONFIG_MODULES[0]])
    except BuildError:
        raise BuildError("gRPC C++ development files not found by pkg-config (Debian: apt-get "
                         "install libgrpc++-dev)") from None


def _grpc_flags() -> list[str]:
    # Only when compiling: resolving every abseil .pc file takes pkg-config ~1.5 s.
    return run(["pkg-config", "--cflags", "--libs", *PKG_CONFIG_MODULES]).split()


def library_path(build: bool = True) -> str:
    """Absolute path of the gRPC front end, building it first if it is not there yet
    (remembered for the process: asking again costs nothing)."""
    return cached_library(LIBRARY_NAME, SOURCE, _grpc_version, _grpc_flags, build)


def fast_predict_path(build: bool = True) -> str:
    """Absolute path of the fast predict library (built as library_path is)."""
    return cached_library(FAST_LIBRARY_NAME, FAST_SOURCE, tensorflow_version, tensorflow_flags, build,
                   WIRE_SOURCES, (WIRE_HEADER,))
