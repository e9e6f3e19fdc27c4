"""Several models per runtime: the model config list, version numbers across updates, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from deeprec_runtime.app import Runtime
from deeprec_runtime.config import parse_model_config
from deeprec_runtime.errors import ConfigError
from deeprec_runtime.models import load_model_config_list, parse_model_config_list
from tests.support.runtime import touch_newer, wait_for
from tests.support.runtime_server import SEED_STEP, build_seed, http, scrape, seed_config, value


def test_config_list_reads_paths_inline_configs_and_yaml(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"model_config": {"savedmodel_dir": "/m/a"}}))
    listing = {"model_config_list": [
        {"name": "a", "model_config": "a.json"},
        {"name": "b", "model_config": {"savedmodel_dir": "/m/b", "checkpoint_dir": "/c/b"}}]}
    (tmp_path / "list.json").write_text(json.dumps(listing))
    entries = load_model_config_list(str(tmp_path / "list.json"))
    assert [(e.name, e.config.savedmodel_dir) for e in entries] == [("a", "/m/a"), ("b", "/m/b")]
    (tmp_path / "list.yaml").write_text(
        "model_config_list:\n  - name: b\n    model_config:\n      savedmodel_dir: /m/b\n")
    assert [e.name for e in load_model_config_list(str(tmp_path / "list.yaml"))] == ["b"]


@pytest.mark.parametrize("raw, words", [
    ({"model_config_list": []}, ["non-empty"]),
    ([{"name": "a"}], ["model_config_list[0].model_config"]),
    ([{"name": "a/b", "model_config": {"savedmodel_dir": "/m"}}], ["name", "'/'"]),
    ([{"name": "a", "model_config": {"savedmodel_dir": "/m"}}] * 2, ["listed twice"]),
    ([{"name": "a", "model_config": {"checkpoint_dir": "/c"}}], ["(a)", "savedmodel_dir"]),
    ([{"name": "a", "model_config": "missing.json"}], ["(a)", "cannot read"]),
])
def test_config_list_errors_name_the_entry(tmp_path, raw, words):
    with pytest.raises(ConfigError) as err:
        parse_model_config_list(raw, str(tmp_path))
    for word in words:
        assert word in str(err.value)


def _tfs_predict(channel, feed, version=None):
    request = predict_pb2.PredictRequest(model_spec={"name": "seed"})
    if version is not None:
        request.model_spec.version.value = version
    for key, v in feed.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(v))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    return response.model_spec.version.value, tf.make_ndarray(response.outputs["probabilities"])


def test_new_version_keeps_the_previous_one_addressable_and_failures_are_counted(tmp_path):
    base = tmp_path / "seed"
    seed = build_seed(base)
    runtime = Runtime(parse_model_config(seed_config(base)), grpc_port=0, http_port=0,
                      host="127.0.0.1", model_name="seed",
                      annotations_file=str(tmp_path / "no-annotations"))
    runtime.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    try:
        assert runtime.manager.wait_ready(60), runtime.manager.last_error
        feed = seed.make_feed(4, np.random.default_rng(31))
        old = seed.predict(feed)
        seed.train_step(8)
        seed.writer.start_version("checkpoint_2")
        seed.writer.save_full(SEED_STEP + 5)
        touch_newer(str(base / "checkpoints" / "checkpoint_2" / "checkpoint"))
        new = seed.predict(feed)
        wait_for(lambda: runtime.manager.info().version == "checkpoint_2", timeout=30,
                 message="checkpoint_2 serving")
        assert _tfs_predict(channel, feed)[0] == SEED_STEP + 5
        number, got = _tfs_predict(channel, feed, SEED_STEP + 5)
        np.testing.assert_allclose(got, new, rtol=1e-6)
        number, got = _tfs_predict(channel, feed, SEED_STEP)  # the retained previous version
        assert number == SEED_STEP
        np.testing.assert_allclose(got, old, rtol=1e-6)
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "seed"}), timeout=10)
        assert sorted((s.version, s.state) for s in status.model_version_status) == [
            (SEED_STEP, 30), (SEED_STEP + 5, 30)]  # both AVAILABLE

        # A version folder whose checkpoint cannot be loaded: counted as a failed load.
        broken = base / "checkpoints" / "checkpoint_3"
        shutil.copytree(base / "checkpoints" / "checkpoint_2", broken)
        for name in os.listdir(broken):
            if ".data-" in name:
                (broken / name).write_bytes(b"not a checkpoint shard")
        touch_newer(str(broken / "checkpoint"))
        wait_for(lambda: value(scrape_runtime(runtime), "deeprec_model_updates_total",
                               model="seed", kind="load", result="failure") >= 1,
                 timeout=30, message="failed load counted")
        families = scrape_runtime(runtime)
        assert value(families, "deeprec_model_updates_total", model="seed", kind="load",
                     result="success") == 2
        assert value(families, "deeprec_model_version_info", model="seed", version="checkpoint_3",
                     state="ERROR") == 1
        assert _tfs_predict(channel, feed)[0] == SEED_STEP + 5  # still serving checkpoint_2
    finally:
        channel.close()
        runtime.stop(1.0)
        seed.close()


def scrape_runtime(runtime):
    class _S:
        http = f"http://127.0.0.1:{runtime.http_port}"

    return scrape(_S)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_a_model_config_list(tmp_path):
    seed = build_seed(tmp_path / "seed")
    seed.close()
    (tmp_path / "seed.json").write_text(json.dumps(seed_config(tmp_path / "seed")))
    (tmp_path / "models.yaml").write_text(
        "model_config_list:\n"
        "  - {name: first, model_config: seed.json}\n"
        f"  - name: second\n    model_config: {{savedmodel_dir: {tmp_path / 'seed' / 'saved_model'}}}\n")
    http_port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deeprec_runtime.cli", "serve", "--model-config-list",
         str(tmp_path / "models.yaml"), "--grpc-port", "0", "--http-port", str(http_port),
         "--host", "127.0.0.1", "--annotations-file", str(tmp_path / "none")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        url = f"http://127.0.0.1:{http_port}"

        def both_available():
            try:
                return all(http("GET", f"{url}/v1/models/{name}")[1]["model_version_status"][0]
                           ["state"] == "AVAILABLE" for name in ("first", "second"))
            except (OSError, KeyError, IndexError):
                return False

        wait_for(both_available, timeout=90, interval=0.3, message="both models AVAILABLE")
        assert http("GET", f"{url}/v1/models/first")[1]["model_version_status"][0]["version"] == str(
            SEED_STEP
        )
        assert http("GET", f"{url}/v1/models/second")[1]["model_version_status"][0]["version"] == "1"
        sample = http("GET", f"{url}/v1/models/second/gen_json")[1]
        assert http("POST", url + "/", sample)[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert "HTTP on port" in out


def test_each_model_of_a_runtime_is_pinned_by_its_own_annotation(tmp_path):
    from deeprec_runtime.models import ModelEntry

    seeds = {}
    for name in ("first", "second"):
        base = tmp_path / name
        seeds[name] = build_seed(base)
        seeds[name].train_step(8)
        seeds[name].writer.start_version("checkpoint_2")
        seeds[name].writer.save_full(SEED_STEP + 5)
        touch_newer(str(base / "checkpoints" / "checkpoint_2" / "checkpoint"))
    annotations = tmp_path / "annotations"
    annotations.write_text('serving.deeprec.io/target-version.second="checkpoint_1"\n')
    entries = [ModelEntry(n, parse_model_config(seed_config(tmp_path / n))) for n in seeds]
    runtime = Runtime(entries[0].config, grpc_port=0, host="127.0.0.1", models=entries,
                      annotations_file=str(annotations))
    runtime.start()
    try:
        first, second = (runtime.models.get(n).manager for n in ("first", "second"))
        wait_for(lambda: first.info().version == "checkpoint_2", timeout=30, message="first latest")
        wait_for(lambda: second.info().version == "checkpoint_1", timeout=30, message="second pinned")
        assert second.info().target_version == "checkpoint_1"
        # The plain key pins the default (first) model only.
        annotations.write_text('serving.deeprec.io/target-version="checkpoint_1"\n')
        wait_for(lambda: first.info().version == "checkpoint_1", timeout=30, message="first pinned")
        wait_for(lambda: second.info().version == "checkpoint_2", timeout=30, message="second latest")
    finally:
        runtime.stop(1.0)
        for model in seeds.values():
            model.close()
