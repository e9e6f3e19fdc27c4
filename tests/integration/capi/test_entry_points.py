"""Every C entry point refuses bad pointers and bad configs with a status, never a crash.

The library is loaded into this test's own Python with ctypes (cffi then reuses the running
interpreter), so hostile arguments that a C host could pass are tried one by one.
"""

from __future__ import annotations

import ctypes
import json

import pytest

vp = ctypes.c_void_p


@pytest.fixture(scope="module")
def lib(capi_library):
    so = ctypes.CDLL(capi_library)
    so.initialize.restype = vp
    so.initialize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]
    so.process.argtypes = [vp, vp, ctypes.c_int, ctypes.POINTER(vp), ctypes.POINTER(ctypes.c_int)]
    so.get_serving_model_info.argtypes = [vp, ctypes.POINTER(vp), ctypes.POINTER(ctypes.c_int)]
    so.batch_process.argtypes = [vp, ctypes.POINTER(vp), ctypes.POINTER(ctypes.c_int),
                                 ctypes.POINTER(vp), ctypes.POINTER(ctypes.c_int)]
    return so


libc = ctypes.CDLL(None)
libc.free.argtypes = [vp]


def call_process(lib, model, data: bytes | None, size: int | None = None):
    out, out_size = vp(), ctypes.c_int(-1)
    buf = ctypes.create_string_buffer(data, len(data)) if data is not None else None
    code = lib.process(model, buf, len(data or b"") if size is None else size,
                       ctypes.byref(out), ctypes.byref(out_size))
    message = ctypes.string_at(out, out_size.value) if out.value else b""
    libc.free(out)  # the buffer was malloc'ed by the library: free() must accept it
    return code, message


def test_process_with_a_handle_initialize_never_returned_answers_500(lib):
    for handle in (None, 0x1234560, ctypes.addressof(ctypes.c_int(0))):
        code, message = call_process(lib, handle, b"\x0a\x00")
        assert code == 500
        assert message.startswith(b"Processor predict failed: model_buf is not a handle")


def test_null_output_pointers_and_negative_sizes_answer_500(lib):
    assert lib.process(None, None, 0, None, None) == 500
    assert call_process(lib, 0x1234560, None, size=5)[0] == 500
    assert lib.get_serving_model_info(None, None, None) == 500
    out, size = vp(), ctypes.c_int()
    assert lib.get_serving_model_info(None, ctypes.byref(out), ctypes.byref(size)) == 500
    assert b"model_buf is not a handle" in ctypes.string_at(out, size.value)
    libc.free(out)
    assert lib.batch_process(None, None, None, ctypes.byref(out), ctypes.byref(size)) == 500
    assert b"NULL input array" in ctypes.string_at(out, size.value)
    libc.free(out)


@pytest.mark.parametrize("config, reason", [
    (None, "model_config is NULL"),
    (b"", "is empty"),
    (b"[1, 2", "not valid JSON"),
    (json.dumps({"checkpoint_dir": "/x"}).encode(), "savedmodel_dir"),
    (json.dumps({"savedmodel_dir": "/x", "custom_op_paths": ["/no/such/op.so"]}).encode(),
     "custom_op_paths"),
])
def test_bad_config_sets_state_minus_one_and_returns_null(lib, capfd, config, reason):
    state = ctypes.c_int(0)
    assert lib.initialize(b"", config, ctypes.byref(state)) is None
    assert state.value == -1
    err = capfd.readouterr().err
    assert "Processor initialize failed: " in err and reason in err
    assert "Traceback" not in err  # a bad config is reported as such, not as a crash
    # a NULL state pointer is tolerated too
    assert lib.initialize(None, config, None) is None
