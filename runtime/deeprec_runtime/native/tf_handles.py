"""The TF_Session* behind TensorFlow's Python session handle, obtained through pybind11's conduit.

The fast path (fast_predict.cc) runs requests on the version's `tensorflow::Session`, which
Python holds as `Session._session`, a pybind11 object of TensorFlow's registered type
`TF_Session`. pybind11 (2.13 and later, which TensorFlow's wheels use) gives every such object a
method for exactly this, `_pybind11_conduit_v1_(platform_abi_id, type_info_capsule,
"raw_pointer_ephemeral")`: it answers the C++ pointer only when the caller names the same
platform ABI and the std::type_info of the very type the object was registered with, and None
otherwise. The std::type_info comes from the fast path library, compiled with TensorFlow's own
c_api_internal.h, which also gives the layout of TF_Session (fast_predict.cc reads its `session`
member with that definition, and static_asserts its type).

So nothing reads memory at an assumed offset: a TensorFlow that changes TF_Session fails when
the library is built; one whose handle is no longer a pybind11 TF_Session, or that was built for
another C++ ABI, answers None here, which `session_pointer` turns into SessionHandleError when a
plan is made (at start-up, for the first version) and `deeprec-runtime native-path` turns into
a failed image build. Never at request time.
"""

from __future__ import annotations

import ctypes
from typing import Any

#: pybind11's platform ABI id of TensorFlow's Linux wheels (clang, libstdc++, Itanium C++ ABI
#: 1002): the conduit answers only a caller naming the same. The fast path library is compiled
#: with g++ and the flags TensorFlow gives custom ops, the toolchain TensorFlow supports for code
#: that calls into its binaries (Session's virtual methods, its protobuf classes); the one object
#: taken through the conduit is a plain struct whose definition comes from TensorFlow's header.
#: A wheel built for another ABI answers None, and the fast path is refused, loudly.
TENSORFLOW_PYBIND11_ABI = b"_clang_libstdcpp_cxxabi1002"
_CONDUIT = "_pybind11_conduit_v1_"

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
# No argtypes for the two that take a capsule: the caller wraps it in ctypes.py_object itself.
# With argtypes, ctypes looks `_as_parameter_` up on the capsule's type, which gives
# PyCapsule_Type a method-cache version tag; on Python 3.8-3.11, cffi's embedding (the C API
# library, libserving_processor.so) uses exactly that field as its start-up spin lock, and a
# nonzero tag makes its first call in this process spin forever.
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_is_valid.restype = ctypes.c_int


class SessionHandleError(RuntimeError):
    """TensorFlow's session handle does not give its TF_Session through the conduit."""


def session_pointer(session: Any, ffi: Any, lib: Any, abi: bytes | None = None) -> int:
    """Address of the TF_Session behind a tf.compat.v1.Session, valid while the session is open.
    `ffi` and `lib` are the fast path library's (fast_predict.FastPredict's); `abi` defaults to
    TENSORFLOW_PYBIND11_ABI. SessionHandleError says why when the conduit does not answer."""
    abi = abi or TENSORFLOW_PYBIND11_ABI
    handle = getattr(session, "_session", None)  # TensorFlow's handle; no public accessor
    if handle is None:
        raise SessionHandleError("the session has no handle (closed?)")
    conduit = getattr(handle, _CONDUIT, None)
    if conduit is None:
        raise SessionHandleError(
            f"TensorFlow's session handle ({type(handle).__module__}.{type(handle).__name__}) has "
            f"no {_CONDUIT}: not a pybind11 2.13+ object (a TensorFlow this runtime does not know)")
    type_info = _address(ffi, lib.drf_tf_session_type())
    request = _capsule_new(type_info, _address(ffi, lib.drf_type_info_name()), None)
    answer = conduit(abi, request, b"raw_pointer_ephemeral")
    name = _address(ffi, lib.drf_tf_session_type_name())
    if answer is None or not _capsule_is_valid(ctypes.py_object(answer), ctypes.c_void_p(name)):
        raise SessionHandleError(
            f"TensorFlow's session handle ({type(handle).__name__}) does not give a TF_Session to "
            f"pybind11 ABI {abi.decode()} (TensorFlow built with another C++ toolchain, or its "
            "handle is another type now)")
    pointer = _capsule_pointer(ctypes.py_object(answer), ctypes.c_void_p(name))
    if not pointer or not lib.drf_session_ok(ffi.cast("void *", pointer)):
        raise SessionHandleError("the TF_Session holds no session (closed?)")
    return int(pointer)


def _address(ffi: Any, cdata: Any) -> int:
    return int(ffi.cast("uintptr_t", cdata))
