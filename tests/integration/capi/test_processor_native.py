"""The C API's process() takes the C++ fast path first, as the gRPC front end does: the same
answers as Python, output_filter and session groups included, and Python's errors for what the
plan declines."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.capi.processor import FAILED, OK, ProcessorModel
from deeprec_runtime.codec import decode_array
from tests.support.capi import make_request


@pytest.fixture(scope="module", params=[{}, {"session_num": 2, "select_session_policy": "RR"}],
                ids=["one_session", "two_sessions_rr"])
def processor(seed, request):
    model, config, _ = seed
    processor = ProcessorModel("", json.dumps({**config, **request.param}))
    yield model, processor
    processor.close()


def answered(processor: ProcessorModel) -> int:
    assert processor._plan is not None, "the serving version has no C++ plan"
    return processor._plan.answered


def python_answer(processor: ProcessorModel, request: pb.PredictRequest) -> pb.PredictResponse:
    return processor.dataplane.predict(request)


@pytest.mark.parametrize("output_filter", [[], ["probabilities"], ["prediction:0"]],
                         ids=["all", "alias", "tensor_name"])
def test_process_answers_in_cpp_as_python_answers(processor, output_filter):
    model, proc = processor
    feed = model.make_feed(3, np.random.default_rng(5))
    request = make_request(feed, output_filter)
    before = answered(proc)
    code, data = proc.process(request.SerializeToString())
    assert code == OK, data
    assert answered(proc) == before + 1
    got = pb.PredictResponse.FromString(data)
    want = python_answer(proc, request)
    assert list(got.outputs) == list(want.outputs) == (output_filter or ["probabilities"])
    for name in got.outputs:
        np.testing.assert_allclose(decode_array(got.outputs[name], name),
                                   decode_array(want.outputs[name], name), rtol=1e-6)
    np.testing.assert_allclose(decode_array(got.outputs[output_filter[0] if output_filter
                                                        else "probabilities"], "p"),
                               model.predict(feed), rtol=1e-6)


def test_what_the_plan_declines_gets_pythons_error_naming_it(processor):
    model, proc = processor
    feed = model.make_feed(2, np.random.default_rng(6))
    before = answered(proc)
    code, data = proc.process(make_request(feed, ["no_such_output"]).SerializeToString())
    assert code == FAILED and b"no_such_output" in data, data
    code, data = proc.process(b"\xff\xff\xff")
    assert code == FAILED and b"Please check the input data" in data, data
    assert answered(proc) == before
    code, _ = proc.process(make_request(feed).SerializeToString())  # still serving, in C++
    assert code == OK and answered(proc) == before + 1


HOST_AFTER_FAST_PATH = """
import ctypes, sys
import tensorflow as tf
from deeprec_runtime.native.fast_predict import _load
from deeprec_runtime.native.tf_handles import session_pointer
ffi, lib = _load()
graph = tf.Graph()
with graph.as_default():
    tf.constant(1.0)
assert session_pointer(tf.compat.v1.Session(graph=graph), ffi, lib)
so = ctypes.CDLL(sys.argv[1])
so.process.argtypes = [ctypes.c_void_p] * 5
print("process", so.process(None, None, 0, None, None), flush=True)
"""


def test_a_process_that_reached_a_session_can_still_start_the_c_api(capi_library):
    """Reaching the TF_Session must leave the interpreter as it was: cffi's embedding (the C API
    library) starts Python behind a spin lock on PyCapsule_Type's method-cache tag (Python
    3.8-3.11), which a type attribute lookup on a capsule sets; its first call then spun forever."""
    out = subprocess.run([sys.executable, "-c", HOST_AFTER_FAST_PATH, capi_library],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "process 500" in out.stdout, out.stdout
