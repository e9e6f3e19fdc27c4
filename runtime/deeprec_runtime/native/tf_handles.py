"""The C pointer behind TensorFlow's Python session handle, read and checked without risking a crash.

TensorFlow offers no public accessor for the TF_Session* the fast path (fast_predict.cc) runs on.
Its Python handle is a pybind11 object, and pybind11 keeps a bound object's C++ pointer right
after the Python object header (its "simple" instance layout: one type, default holder). That is
an implementation detail of both libraries: a TensorFlow or pybind11 upgrade could move it, and a
wrong pointer handed to C++ would crash the server instead of leaving the call to Python.

So the pointer is checked before use, with reads that cannot fault (`/proc/self/mem` answers EIO
for an unmapped address where a dereference would be SIGSEGV): TF_Session's first field is the
tensorflow::Session*, a C++ object on the heap whose first word is its vtable, which lies in the
read-only data of one of TensorFlow's shared libraries and starts with the address of code in
one of them. A pointer that fails any step raises TypeError, and the fast path is not used for
that version (Python answers).
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
from typing import Any

_PYBIND_VALUE_OFFSET = 16
"""Where pybind11's simple layout keeps the C++ pointer: after ob_refcnt and ob_type."""


def session_pointer(session: Any) -> int:
    """Address of the TF_Session behind a tf.compat.v1.Session; TypeError when it cannot be
    trusted (see the module's docstring)."""
    wrapper = session._session  # TensorFlow's handle; no public accessor
    if type(wrapper).__name__ != "TF_Session":
        raise TypeError(f"unexpected session handle {type(wrapper).__name__}")
    pointer = _read_word(id(wrapper) + _PYBIND_VALUE_OFFSET)
    if pointer is None or not _is_tf_session(pointer):
        raise TypeError("the session handle's layout is not the one this runtime knows (a "
                        "TensorFlow or pybind11 upgrade?): no TF_Session at the expected place")
    return pointer


def _is_tf_session(pointer: int | None) -> bool:
    """Whether `pointer` leads to a TF_Session: its first field points at a C++ object on the heap
    (not inside a library: a pointer to, say, another object's vtable fails here) whose first word
    is a vtable in TensorFlow's read-only data, whose first entry is code in TensorFlow's text."""
    if not pointer or pointer % ctypes.alignment(ctypes.c_void_p):
        return False
    cxx_session = _read_word(pointer)  # TF_Session::session, a tensorflow::Session*
    if not cxx_session or cxx_session % ctypes.alignment(ctypes.c_void_p) or \
            _in_tensorflow(cxx_session) is not None:
        return False
    vtable = _read_word(cxx_session)
    if vtable is None or _in_tensorflow(vtable) is not False:
        return False
    method = _read_word(vtable)
    return method is not None and _in_tensorflow(method) is True


def _in_tensorflow(address: int) -> bool | None:
    """None when `address` is outside TensorFlow's libraries, else whether it is executable."""
    for lo, hi, executable in _tensorflow_mappings():
        if lo <= address < hi:
            return executable
    return None


def _read_word(address: int) -> int | None:
    """The pointer-sized word at `address` of this process, or None where nothing is mapped."""
    size = ctypes.sizeof(ctypes.c_void_p)
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        raw = os.pread(fd, size, address)
    except (OSError, OverflowError):
        return None
    finally:
        os.close(fd)
    return struct.unpack("P", raw)[0] if len(raw) == size else None


@functools.lru_cache(maxsize=1)
def _tensorflow_mappings() -> tuple[tuple[int, int, bool], ...]:
    """(start, end, executable) of TensorFlow's shared libraries' mappings, all loaded by the
    time a session exists."""
    ranges = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) >= 6 and "tensorflow" in os.path.basename(fields[5]):
                lo, hi = fields[0].split("-")
                ranges.append((int(lo, 16), int(hi, 16), "x" in fields[1]))
    return tuple(ranges)
