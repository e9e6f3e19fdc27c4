"""REST: TF Serving's API and Simple TensorFlow Serving's, called as curl would, errors included."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from deeprec_runtime.server.rest.jsonio import to_json
from tests.support.runtime_server import LABELS, SEED_STEP, examples_regression, examples_scores, http


def _rows(feed):
    return [
        {"input1": float(a), "input2": int(b)} for a, b in zip(feed["input1"], feed["input2"], strict=True)
    ]


def test_status_and_metadata(served):
    status, body = http("GET", f"{served.http}/v1/models/seed")
    assert status == 200
    assert body == {"model_version_status": [{"version": str(SEED_STEP), "state": "AVAILABLE",
                                              "status": {"error_code": "OK", "error_message": ""}}]}
    status, body = http("GET", f"{served.http}/v1/models/seed/versions/{SEED_STEP}")
    assert status == 200 and body["model_version_status"][0]["version"] == str(SEED_STEP)
    status, body = http("GET", f"{served.http}/v1/models/seed/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "seed", "signature_name": "", "version": str(SEED_STEP)}
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["input2"]["dtype"] == "DT_INT32"
    assert sig["outputs"]["probabilities"]["name"] == "prediction:0"
    status, body = http("GET", f"{served.http}/v1/models/examples/labels/savedmodel/metadata")
    assert status == 200 and "regress_value" in body["metadata"]["signature_def"]["signature_def"]


def test_predict_row_and_columnar_formats_equal_in_process_model(served):
    feed = served.seed.make_feed(5, np.random.default_rng(11))
    expected = served.seed.predict(feed)
    status, body = http("POST", f"{served.http}/v1/models/seed:predict", {"instances": _rows(feed)})
    assert status == 200, body
    np.testing.assert_allclose(body["predictions"], expected, rtol=1e-6)
    columnar = {"inputs": {k: v.tolist() for k, v in feed.items()}}
    for path in ("/v1/models/seed:predict", f"/v1/models/seed/versions/{SEED_STEP}:predict",
                 "/v1/models/seed/labels/checkpoint_1:predict"):
        status, body = http("POST", served.http + path, columnar)
        assert status == 200, (path, body)
        np.testing.assert_allclose(body["outputs"], expected, rtol=1e-6)


def test_predict_with_several_outputs_and_strings_in_row_format(served):
    # Two empty tf.Examples (features take their defaults), one as {"b64": ...}, one as text.
    status, body = http("POST", f"{served.http}/v1/models/examples:predict", {
        "signature_name": "predict_scores",
        "instances": [{"b64": base64.b64encode(b"").decode()}, ""]})
    assert status == 200, body
    assert len(body["predictions"]) == 2
    row = body["predictions"][0]
    assert set(row) == {"scores", "classes"} and row["classes"] == [x.decode() for x in LABELS]
    np.testing.assert_allclose(row["scores"], [0.5, 0.5], rtol=1e-6)


def test_classify_and_regress(served):
    xs = np.array([[1.0, 2.0], [-1.0, 0.5]], np.float32)
    body = {"examples": [{"x": xs[0].tolist()}, {"x": xs[1].tolist(), "bias": 0.25}]}
    status, out = http("POST", f"{served.http}/v1/models/examples:classify", body)
    assert status == 200, out
    scores = examples_scores(xs, np.array([0.0, 0.25], np.float32))
    assert [[label for label, _ in row] for row in out["result"]] == [["neg", "pos"]] * 2
    np.testing.assert_allclose([[s for _, s in row] for row in out["result"]], scores, rtol=1e-5)
    body = {"signature_name": "regress_value", "context": {"bias": 1.0},
            "examples": [{"x": xs[0].tolist()}, {"x": xs[1].tolist()}]}
    status, out = http("POST", f"{served.http}/v1/models/examples:regress", body)
    assert status == 200, out
    np.testing.assert_allclose(out["result"], examples_regression(xs, np.ones(2, np.float32)), rtol=1e-5)


@pytest.mark.parametrize("method, path, body, status, words", [
    ("GET", "/v1/models/nope", None, 404, ["model 'nope'"]),
    ("POST", "/v1/models/nope:predict", {"instances": [1]}, 404, ["model 'nope'"]),
    ("POST", "/v1/models/seed/versions/99:predict", {"instances": [1]}, 404, ["version 99"]),
    ("POST", "/v1/models/seed/versions/x:predict", {"instances": [1]}, 400, ["integer"]),
    ("GET", "/v1/models/seed/versions/99", None, 404, ["no version 99"]),
    ("POST", "/v1/models/seed:explode", {}, 404, [":explode"]),
    ("GET", "/v2/whatever", None, 404, ["no such endpoint"]),
    ("GET", "/v1/models/seed:predict", None, 405, ["POST"]),
    ("POST", "/v1/models/seed:predict", {"instances": [{"input1": 1.0}]}, 400,
     ["missing input", "input2"]),
    ("POST", "/v1/models/seed:predict", {"instances": [{"input1": 1.0, "input2": 1.5}]}, 400,
     ["input2", "integers"]),
    ("POST", "/v1/models/seed:predict", {"instances": [{"input1": "a", "input2": 1}]}, 400,
     ["input1", "numbers"]),
    ("POST", "/v1/models/seed:predict", {"instances": [{"inputX": 1.0, "input2": 1}]}, 400,
     ["unknown input 'inputX'"]),
    ("POST", "/v1/models/seed:predict", {"inputs": {"input1": [[1.0], [2.0, 3.0]], "input2": [1]}},
     400, ["input1", "rectangular"]),
    ("POST", "/v1/models/seed:predict", {"inputs": {"input1": [[1.0]], "input2": [1]}}, 400,
     ["input1", "shape [1, 1]", "expects [None]"]),
    ("POST", "/v1/models/seed:predict", {"instances": [1.0]}, 400, ["exactly one input"]),
    ("POST", "/v1/models/seed:predict", {"instances": [], }, 400, ["non-empty"]),
    ("POST", "/v1/models/seed:predict", {"instances": [1], "inputs": [1]}, 400, ["exactly one of"]),
    ("POST", "/v1/models/seed:classify", {"examples": [{"x": 1.0}]}, 400, ["classify"]),
    ("POST", "/v1/models/examples:classify", {"examples": [{"x": [[1.0]]}]}, 400, ["feature 'x'"]),
    ("POST", "/", {"model_name": "nope", "data": {"a": 1}}, 404, ["model 'nope'"]),
    ("POST", "/", {"model_name": "seed"}, 400, ["'data'", "input1"]),
    ("POST", "/", {"data": {"input1": [1.0], "input2": [1]}, "model_version": 3}, 404,
     ["version 3"]),
])
def test_errors_have_status_and_a_json_message(served, method, path, body, status, words):
    got, out = http(method, served.http + path, body)
    assert got == status, out
    for word in words:
        assert word in out["error"], out


def test_bad_bodies_are_400_and_deep_nesting_does_not_crash(served):
    url = f"{served.http}/v1/models/seed:predict"
    for raw, word in ((b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"),
                      (b"\xff\xfe", "not valid JSON"),
                      (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "deeply"),
                      (b'{"inputs": {"input1": ' + b"[" * 200 + b"1" + b"]" * 200 + b', "input2": [1]}}',
                       "input1")):
        status, out = http("POST", url, raw=raw)
        assert status == 400, (raw[:30], out)
        assert word in out["error"], out
    assert http("GET", f"{served.http}/v1/models/seed")[0] == 200  # still serving


def _reply(sock) -> str:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_body_over_the_limit_is_413_and_missing_length_is_411(served):
    limit = served.runtime.http._server.app.max_body_bytes
    with socket.create_connection(("127.0.0.1", served.runtime.http_port), timeout=10) as s:
        s.sendall(b"POST /v1/models/seed:predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/json\r\nContent-Length: " + str(limit + 1).encode() + b"\r\n\r\n{")
        reply = _reply(s)
    assert reply.startswith("HTTP/1.1 413") and "exceeds the limit" in reply
    with socket.create_connection(("127.0.0.1", served.runtime.http_port), timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n0\r\n\r\n")
        reply = _reply(s)
    assert reply.startswith("HTTP/1.1 411")


def test_keep_alive_connection_survives_errors(served):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", served.runtime.http_port, timeout=10)
    feed = served.seed.make_feed(2, np.random.default_rng(12))
    good = json.dumps({"instances": _rows(feed)})
    for body, want in ((good, 200), ("{bad", 400), (good, 200)):
        conn.request("POST", "/v1/models/seed:predict", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == want
    conn.request("POST", "/v1/models/nope:predict", good)  # refused before the body is read
    response = conn.getresponse()
    response.read()
    assert response.status == 404 and response.getheader("Connection") == "close"
    conn.close()


def test_simple_tensorflow_serving_predict(served):
    feed = served.seed.make_feed(3, np.random.default_rng(13))
    body = {"model_name": "seed", "model_version": SEED_STEP,
            "data": {k: v.tolist() for k, v in feed.items()}}
    status, out = http("POST", served.http + "/", body)
    assert status == 200, out
    np.testing.assert_allclose(out["probabilities"], served.seed.predict(feed), rtol=1e-6)
    body.pop("model_name")  # the default model
    assert http("POST", served.http + "/", body)[0] == 200


def test_gen_json_round_trips_and_gen_clients_run(served, tmp_path):
    status, sample = http("GET", f"{served.http}/v1/models/seed/gen_json")
    assert status == 200
    assert sample == {"model_name": "seed", "data": {"input1": [1.0], "input2": [1]}}
    status, out = http("POST", served.http + "/", sample)
    assert status == 200 and len(out["probabilities"]) == 1
    assert http("GET", f"{served.http}/v1/gen_json?model_name=examples")[1]["data"] == {
        "inputs": [""]}
    status, code = http("GET", f"{served.http}/v1/models/seed/gen_client?language=python")
    assert status == 200
    script = tmp_path / "client.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["probabilities"]) == 1
    status, code = http("GET", f"{served.http}/v1/gen_client?language=bash")
    assert status == 200 and code.startswith("#!/usr/bin/env bash") and "curl" in code
    assert json.loads(code.split("-d '", 1)[1].split("' ", 1)[0]) == sample
    status, out = http("GET", f"{served.http}/v1/models/seed/gen_client?language=cobol")
    assert status == 400 and "python, bash" in out["error"]


def test_float32_outputs_print_with_float32_precision():
    # 0.1f widened to double prints as 0.10000000149011612; TF Serving prints 0.1.
    values = np.array([[0.1, 1 / 3, 2.5e-8, np.float32(3.4e38)]], np.float32)
    text = json.dumps(to_json(values, "probabilities"))
    assert text == "[[0.1, 0.33333334, 2.5e-08, 3.4e+38]]"
    assert np.array_equal(np.array(json.loads(text), np.float32), values)  # exact round trip
    assert json.dumps(to_json(np.array(0.1, np.float32), "p")) == "0.1"
    assert json.dumps(to_json(np.array([0.1], np.float64), "p")) == "[0.1]"
    assert json.dumps(to_json(np.array([0.5, 1e-3], np.float16), "p")) == "[0.5, 0.001]"


def test_health_paths_answer_like_grpc_health(served):
    for path in ("/healthz", "/readyz", "/v1/health", "/livez"):
        status, body = http("GET", served.http + path)
        assert (status, body) == (200, {"status": "SERVING"}), path
    served.runtime.http.set_serving(False)  # what stop() does before draining
    try:
        for path in ("/healthz", "/readyz", "/v1/health"):
            status, body = http("GET", served.http + path)
            assert (status, body) == (503, {"status": "NOT_SERVING"}), path
        assert http("GET", served.http + "/livez")[0] == 200  # the process still answers
    finally:
        served.runtime.http.set_serving(True)


def test_health_waits_for_a_loaded_version(tmp_path):
    """No version to load: NOT_SERVING, as gRPC health says."""
    from deeprec_runtime.app import Runtime
    from deeprec_runtime.config import parse_model_config

    config = parse_model_config({"savedmodel_dir": str(tmp_path / "missing"),
                                 "warmup_iterations": 1})
    runtime = Runtime(config, grpc_port=0, http_port=0, host="127.0.0.1",
                      annotations_file=str(tmp_path / "no-annotations"))
    runtime.start()
    try:
        status, body = http("GET", f"http://127.0.0.1:{runtime.http_port}/readyz")
        assert (status, body) == (503, {"status": "NOT_SERVING"})
    finally:
        runtime.stop(1.0)
