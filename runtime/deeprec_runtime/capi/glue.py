"""The C side of the C API: turns C pointers into bytes and back for processor.py.

`install(ffi, lib)` runs inside libserving_processor.so's embedded interpreter and binds the
exported functions. Rules every entry point keeps, because it runs inside someone else's process:
no exception ever crosses into C (each body is guarded, and cffi's `error=` value backs that up),
pointers from the caller are checked before use, and model_buf is looked up in a registry of the
handles initialize() gave out, so a stale or foreign pointer gets a 500, not a crash.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback

from deeprec_runtime.capi.processor import FAILED, OK, InitError, ProcessorModel

log = logging.getLogger("deeprec_runtime.capi")

_models: dict[int, ProcessorModel] = {}
_models_lock = threading.Lock()
LOG_LEVEL_ENV = "DEEPREC_LOG_LEVEL"


def _setup_logging() -> None:
    # A host process has not configured Python logging; without this, INFO messages about version
    # loads and updates would be lost. A host that configured it keeps its own setup.
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=os.environ.get(LOG_LEVEL_ENV, "INFO").upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def install(ffi, lib) -> None:
    def write_output(output_data, output_size, payload: bytes) -> bool:
        """Hands `payload` to the caller in a malloc'ed buffer (freed by the caller)."""
        if output_data == ffi.NULL or output_size == ffi.NULL:
            return False
        buf = lib.malloc(max(len(payload), 1))
        if buf == ffi.NULL:
            output_data[0] = ffi.NULL
            output_size[0] = 0
            return False
        ffi.memmove(buf, payload, len(payload))
        output_data[0] = buf
        output_size[0] = len(payload)
        return True

    def model_of(model_buf) -> ProcessorModel | None:
        with _models_lock:
            return _models.get(int(ffi.cast("uintptr_t", model_buf)))

    def answer(output_data, output_size, code: int, payload: bytes) -> int:
        if not write_output(output_data, output_size, payload):
            return FAILED
        return code

    def run_process(model_buf, input_data, input_size, output_data, output_size) -> int:
        model = model_of(model_buf)
        if model is None:
            return answer(output_data, output_size, FAILED,
                          b"Processor predict failed: model_buf is not a handle returned by "
                          b"initialize() (NULL, or initialize failed)")
        if input_size < 0 or (input_size > 0 and input_data == ffi.NULL):
            return answer(output_data, output_size, FAILED,
                          f"Processor predict failed: invalid input (data "
                          f"{'NULL' if input_data == ffi.NULL else 'set'}, size {input_size})"
                          .encode())
        data = ffi.buffer(ffi.cast("char *", input_data), input_size)[:] if input_size else b""
        code, payload = model.process(data)
        return answer(output_data, output_size, code, payload)

    @ffi.def_extern(error=ffi.NULL)
    def initialize(model_entry, model_config, state):
        try:
            if state != ffi.NULL:
                state[0] = -1
            _setup_logging()
            if model_config == ffi.NULL:
                raise InitError("model_config is NULL")
            entry = ffi.string(model_entry).decode("utf-8", "replace") if model_entry != ffi.NULL else ""
            text = ffi.string(model_config).decode("utf-8", "replace")
            model = ProcessorModel(entry, text)
            # The handle is a real heap address nobody else owns: distinct for every model and
            # never equal to a pointer the caller could have made up by accident.
            handle = lib.malloc(1)
            if handle == ffi.NULL:
                model.close()
                raise InitError("out of memory")
            with _models_lock:
                _models[int(ffi.cast("uintptr_t", handle))] = model
            log.info("Processor initialize success (model %s)", model.config.savedmodel_dir)
            if state != ffi.NULL:
                state[0] = 0
            return handle
        except InitError as exc:
            print(f"[deeprec-serving] Processor initialize failed: {exc}", file=sys.stderr, flush=True)
        except BaseException:  # noqa: BLE001 (SystemExit, KeyboardInterrupt too: nothing crosses into C)
            print("[deeprec-serving] Processor initialize failed:\n" + traceback.format_exc(),
                  file=sys.stderr, flush=True)
        return ffi.NULL

    @ffi.def_extern(error=FAILED)
    def process(model_buf, input_data, input_size, output_data, output_size):
        try:
            return run_process(model_buf, input_data, input_size, output_data, output_size)
        except BaseException as exc:  # noqa: BLE001
            return _last_resort(ffi, lib, write_output, output_data, output_size, "predict", exc)

    @ffi.def_extern(error=FAILED)
    def batch_process(model_buf, input_data, input_size, output_data, output_size):
        try:
            if input_data == ffi.NULL or input_size == ffi.NULL:
                return answer(output_data, output_size, FAILED,
                              b"Processor predict failed: NULL input array in batch_process")
            return run_process(model_buf, input_data[0], input_size[0], output_data, output_size)
        except BaseException as exc:  # noqa: BLE001
            return _last_resort(ffi, lib, write_output, output_data, output_size, "predict", exc)

    @ffi.def_extern(error=FAILED)
    def get_serving_model_info(model_buf, output_data, output_size):
        try:
            model = model_of(model_buf)
            if model is None:
                return answer(output_data, output_size, FAILED,
                              b"Processor get_serving_model_info failed: model_buf is not a "
                              b"handle returned by initialize()")
            code, payload = model.model_info()
            return answer(output_data, output_size, code, payload)
        except BaseException as exc:  # noqa: BLE001
            return _last_resort(ffi, lib, write_output, output_data, output_size,
                                "get_serving_model_info", exc)


def _last_resort(ffi, lib, write_output, output_data, output_size, what, exc) -> int:
    try:
        log.error("C API %s failed unexpectedly", what, exc_info=exc)
        write_output(output_data, output_size,
                     f"Processor {what} failed: INTERNAL: {type(exc).__name__}: {exc}".encode())
    except BaseException:  # noqa: BLE001 (even writing the message failed: the code still says it)
        pass
    return FAILED


__all__ = ["FAILED", "OK", "install"]
