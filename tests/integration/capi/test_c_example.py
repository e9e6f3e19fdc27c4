"""The C API from a C host: examples/c/processor_client.c, compiled with gcc, dlopen()s
libserving_processor.so in a clean environment (no PYTHONPATH, no virtualenv variables)."""

from __future__ import annotations

import numpy as np

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.codec import decode_array
from tests.support.capi import make_request, run_client, write_json


def test_c_host_predicts_like_the_in_process_model_and_survives_bad_requests(
        tmp_path, seed, capi_library, c_client):
    model, config, base = seed
    feed = model.make_feed(6, np.random.default_rng(3))
    expected = model.predict(feed)
    (tmp_path / "request.pb").write_bytes(make_request(feed).SerializeToString())
    # DeepRec's Processor aborts the whole process on an unknown input name; this must answer.
    (tmp_path / "unknown_input.pb").write_bytes(
        make_request({"no_such_input": np.array([1.0])}).SerializeToString())
    (tmp_path / "by_tensor_name.pb").write_bytes(make_request(
        {"input1:0": feed["input1"], "input2:0": feed["input2"]},
        output_filter=["prediction:0"]).SerializeToString())
    config_path = write_json(tmp_path / "model_config.json", config)

    out = run_client(c_client, capi_library, config_path,
                     "predict", "request.pb", "response.pb",
                     "raw", "this is not a PredictRequest \x01\x02",
                     "raw", "@unknown_input.pb",
                     "predict", "by_tensor_name.pb", "by_name.pb",
                     "batch", "request.pb",
                     "info", "info.pb",
                     "raw", "",
                     cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "initialize state 0"

    response = pb.PredictResponse.FromString((tmp_path / "response.pb").read_bytes())
    np.testing.assert_allclose(decode_array(response.outputs["probabilities"], "probabilities"),
                               expected, rtol=1e-6)
    by_name = pb.PredictResponse.FromString((tmp_path / "by_name.pb").read_bytes())
    assert list(by_name.outputs) == ["prediction:0"]
    np.testing.assert_allclose(decode_array(by_name.outputs["prediction:0"], "p"), expected, rtol=1e-6)

    failures = [line for line in lines if line.startswith("message: ")]
    assert len(failures) == 2, out.stdout
    assert "Processor predict failed" in failures[0] and "Please check the input data" in failures[0]
    assert "Processor predict failed: INVALID_ARGUMENT" in failures[1]
    assert "no_such_input" in failures[1] and "input1" in failures[1]
    assert sum(line.startswith("process status 500") for line in lines) == 2

    assert "batch_process status 200, " in out.stdout
    batch_line = lines[lines.index(next(x for x in lines if x.startswith("batch_process"))) + 1]
    assert batch_line.startswith("output probabilities: DT_FLOAT shape [6,]")

    info = pb.ServingModelInfo.FromString((tmp_path / "info.pb").read_bytes())
    assert info.version == "checkpoint_1"
    assert info.model_path == str(base / "checkpoints" / "checkpoint_1")
    assert f"model_path: {info.model_path}" in lines
    # An empty request answers 200 with the signature as text, as DeepRec does.
    assert "  input input1 (input1:0) float64 [None]" in lines


def test_c_host_gets_state_minus_one_for_a_bad_config(tmp_path, seed, capi_library, c_client):
    _, config, _ = seed
    bad = {**config, "select_session_policy": "FASTEST"}
    out = run_client(c_client, capi_library, write_json(tmp_path / "bad.json", bad),
                     "info", cwd=str(tmp_path))
    assert out.returncode == 3, out.stdout + out.stderr
    assert "initialize state -1" in out.stdout
    assert "select_session_policy" in out.stderr and "'MOD', 'RR'" in out.stderr

    (tmp_path / "broken.json").write_text("{not json")
    out = run_client(c_client, capi_library, str(tmp_path / "broken.json"), "info",
                     cwd=str(tmp_path))
    assert out.returncode == 3 and "not valid JSON" in out.stderr
