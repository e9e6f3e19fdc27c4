"""The DeepRec Processor C API: libserving_processor.so (initialize / process /
get_serving_model_info / batch_process) over this runtime, for C and C++ serving frameworks.

`library_path()` builds the library on first use (cffi + a C compiler + Python headers) and
returns its path; `include_dir()` is where processor.h lives. See docs/capi.md.
"""

from deeprec_runtime.capi.build import BuildError, include_dir, library_path

__all__ = ["BuildError", "include_dir", "library_path"]
