"""The core loads without TensorFlow, numpy or gRPC (the static check is in .importlinter)."""

import subprocess
import sys


def test_importing_the_core_loads_no_tensorflow_numpy_or_grpc():
    code = ("import sys, deeprec_runtime.core; "
            "print(sorted(m for m in ('tensorflow', 'numpy', 'grpc', 'google.protobuf') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"
