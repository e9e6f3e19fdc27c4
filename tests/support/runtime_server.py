"""The two models one runtime serves side by side for the runtime's server tests (fixture `served`
in their conftest.py), and the calls those tests share: curl-style HTTP, metrics scrapes, raw and
DeepRec Predict calls over gRPC.

`seed` (the default model): DeepRec's documented example signature, one version `checkpoint_1`
whose full checkpoint has step 7, so TF Serving's version number is 7.
`examples`: a model over serialized tf.Examples with classification, regression and predict
signatures, served from its SavedModel variables (TF Serving version 1).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

import grpc
import numpy as np
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.app import Runtime
from deeprec_runtime.training.checkpoint_writer import CheckpointWriter
from deeprec_runtime.training.demo_models import build_seed_example

tf1 = tf.compat.v1
SEED_STEP = 7
LABELS = (b"neg", b"pos")
WEIGHTS = np.array([[1.0, -1.0], [0.5, 2.0]], np.float32)


def examples_scores(x: np.ndarray, bias: np.ndarray) -> np.ndarray:
    logits = x @ WEIGHTS + bias[:, None]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def examples_regression(x: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return x.sum(axis=1) * 3.0 + bias


def write_examples_model(path: str) -> None:
    """SavedModel: serialized tf.Example {x: float[2], bias: float[1] (default 0)} ->
    classify (classes neg/pos, softmax scores), regress (3 * sum(x) + bias), predict (scores)."""
    graph = tf.Graph()
    with graph.as_default():
        serialized = tf1.placeholder(tf.string, [None], name="tf_example")
        feats = tf1.io.parse_example(serialized, {
            "x": tf1.io.FixedLenFeature([2], tf.float32, default_value=[0.0, 0.0]),
            "bias": tf1.io.FixedLenFeature([1], tf.float32, default_value=[0.0])})
        w = tf1.get_variable("w", initializer=tf.constant(WEIGHTS))
        scores = tf.nn.softmax(tf.matmul(feats["x"], w) + feats["bias"], name="scores")
        classes = tf.tile(tf.constant([list(LABELS)]), [tf.shape(serialized)[0], 1], name="classes")
        value = tf.identity(tf.reduce_sum(feats["x"], axis=1) * 3.0 + feats["bias"][:, 0],
                            name="value")
        session = tf1.Session(graph=graph)
        session.run(tf1.global_variables_initializer())
        sig = tf1.saved_model.signature_def_utils
        builder = tf1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            "serving_default": sig.classification_signature_def(serialized, classes, scores),
            "regress_value": sig.regression_signature_def(serialized, value),
            "predict_scores": sig.predict_signature_def({"examples": serialized},
                                                        {"scores": scores, "classes": classes}),
        }, saver=tf1.train.Saver())
        builder.save()
        session.close()


@dataclass
class Served:
    runtime: Runtime
    seed: object
    channel: grpc.Channel

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.runtime.http_port}"


def seed_config(base) -> dict:
    return {"savedmodel_dir": str(base / "saved_model"), "checkpoint_dir": str(base / "checkpoints"),
            "update_poll_seconds": 0.2, "warmup_iterations": 1}


def build_seed(base):
    model = build_seed_example(num_ids=50)
    writer = CheckpointWriter(model.session, str(base / "checkpoints"), "checkpoint_1",
                              model.embedding_variables, model.dense_variables)
    model.writer = writer
    writer.export_saved_model(str(base / "saved_model"), model.inputs, model.outputs)
    model.train_step(8)
    writer.save_full(SEED_STEP)
    return model


def http(method: str, url: str, body=None, raw: bytes | None = None, headers=None):
    """curl-style call: returns (status, parsed JSON or text)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text, ctype = response.status, response.read().decode(), response.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        status, text, ctype = err.code, err.read().decode(), err.headers["Content-Type"]
    return status, (json.loads(text) if ctype and "json" in ctype else text)


# --- shared by the metrics and models tests, and the fast-path tests ---------------------------
def scrape(served) -> dict[str, list]:
    status, text = http("GET", f"{served.http}/metrics")
    assert status == 200
    families = {}
    for family in text_string_to_metric_families(text):
        families.setdefault(family.name, []).extend(family.samples)
    return families


def value(families, sample_name, **labels) -> float:
    family = sample_name
    for suffix in ("_total", "_count", "_sum", "_bucket"):
        if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in families:
            family = sample_name[: -len(suffix)]
    return sum(s.value for s in families.get(family, [])
               if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()))


PREDICT = "/deeprec.serving.PredictionService/Predict"


def raw_call(channel: grpc.Channel, data: bytes) -> tuple[grpc.StatusCode, bytes | str]:
    """(status, response bytes or error details) of one Predict call sent as raw bytes."""
    try:
        return grpc.StatusCode.OK, channel.unary_unary(PREDICT)(data, timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()


def deeprec_call(channel: grpc.Channel, data: bytes):
    """(status, parsed response or error details) of one DeepRec Predict sent as bytes (parsed:
    with several outputs, map entries may come in another order)."""
    code, answer = raw_call(channel, data)
    return code, pb.PredictResponse.FromString(answer) if code == grpc.StatusCode.OK else answer
