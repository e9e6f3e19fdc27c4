"""Broken new versions: each is marked failed with its reason (GetServingModelInfo, the log and
the `deeprec_model_updates_total{result="failure"}` metric), the previous version keeps serving,
and the next good version is picked up. (Truncated `.data` of a full version and a truncated
delta are in tests/integration/runtime/test_updates.py.)"""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from deeprec_runtime.training import write_demo_model
from tests.support.runtime import output, touch_newer, wait_for


def _failures(runtime, kind: str) -> float:
    return runtime.metrics.registry.get_sample_value(
        "deeprec_model_updates_total", {"model": "default", "kind": kind, "result": "failure"}) or 0.0


def _state_file(demo, name: str) -> str:
    return os.path.join(demo.checkpoint_dir, name, "checkpoint")


def _assert_failed_then_recovers(runtime, client, demo, caplog, name, reason, feed, answer):
    """`name` is reported failed for `reason`; the old version answers as before; a good
    version written next is served."""
    wait_for(lambda: any(v.name == name and v.state == "ERROR" for v in client.info().versions),
             message=f"{name} marked failed")
    info = client.info()
    error = {v.name: v.error for v in info.versions}[name]
    assert reason in error, error
    assert info.version == "checkpoint_1"
    wait_for(lambda: _failures(runtime, "load") >= 1, message="failure counted")
    wait_for(lambda: any(name in r.getMessage() and reason in r.getMessage()
                         for r in caplog.records if r.levelno >= logging.WARNING),
             message="failure logged")
    np.testing.assert_allclose(output(client.predict(feed), "probability"), answer, rtol=1e-6)
    demo.write_full("checkpoint_9", steps=1)
    touch_newer(_state_file(demo, "checkpoint_9"))
    wait_for(lambda: client.info().version == "checkpoint_9", message="next good version served")
    np.testing.assert_allclose(output(client.predict(feed), "probability"),
                               demo.model.predict(feed), rtol=1e-5, atol=1e-6)


@pytest.fixture
def serving(demo, serve, caplog):
    caplog.set_level(logging.INFO, logger="deeprec_runtime")
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    feed = demo.model.make_feed(8, np.random.default_rng(7))
    return runtime, client, feed, output(client.predict(feed), "probability")


def test_full_version_without_index_file_is_failed_and_skipped(demo, serving, caplog):
    runtime, client, feed, answer = serving
    prefix = demo.write_full("checkpoint_2", steps=2)
    os.unlink(prefix + ".index")
    touch_newer(_state_file(demo, "checkpoint_2"))
    _assert_failed_then_recovers(runtime, client, demo, caplog, "checkpoint_2",
                                 "no complete full checkpoint", feed, answer)


def test_garbage_state_file_is_failed_and_skipped(demo, serving, caplog):
    runtime, client, feed, answer = serving
    demo.write_full("checkpoint_2", steps=2)
    with open(_state_file(demo, "checkpoint_2"), "wb") as fh:
        fh.write(b"\x00\xffmodel_checkpoint_path: {{{ not a CheckpointState")
    touch_newer(_state_file(demo, "checkpoint_2"))
    _assert_failed_then_recovers(runtime, client, demo, caplog, "checkpoint_2",
                                 "state file 'checkpoint' is unreadable", feed, answer)


def test_full_checkpoint_of_a_different_model_is_failed_and_skipped(tmp_path, demo, serving, caplog):
    runtime, client, feed, answer = serving
    other = write_demo_model(str(tmp_path / "other"), num_ids=500, num_deltas=0, dim=8,
                             hidden=(32, 16), batch_size=8)
    other.close()
    shutil.copytree(os.path.join(other.checkpoint_dir, "checkpoint_1"),
                    os.path.join(demo.checkpoint_dir, "checkpoint_2"))
    touch_newer(_state_file(demo, "checkpoint_2"))
    _assert_failed_then_recovers(runtime, client, demo, caplog, "checkpoint_2",
                                 "loading checkpoint_2 failed: variable 'embedding' has shape [500, 8]",
                                 feed, answer)
    assert "checkpoint_2" not in [s.name for s in runtime.manager.loaded()]


def test_delta_with_rows_of_the_wrong_dim_is_refused_and_the_next_full_version_served(
        demo, serving, caplog):
    runtime, client, feed, answer = serving
    step_before = client.info().delta_step
    last_delta = [p for _, kind, p in demo.written if kind == "delta"][-1]
    base = last_delta.rsplit("-", 1)[0]
    bad = f"{base}-{demo.step + 100}"
    tf.raw_ops.SaveV2(prefix=bad, tensor_names=["embedding-sparse_incr_keys",
                                                "embedding-sparse_incr_values"],
                      shape_and_slices=["", ""],
                      tensors=[np.array([1, 2], np.int64), np.ones((2, 7), np.float32)])
    wait_for(lambda: "delta rows have shape [2, 7]" in client.info().last_update_error,
             message="delta refused")
    assert client.info().delta_step == step_before
    assert _failures(runtime, "delta") >= 1
    assert any("delta rows have shape" in r.getMessage() for r in caplog.records
               if r.levelno >= logging.WARNING)
    np.testing.assert_allclose(output(client.predict(feed), "probability"), answer, rtol=1e-6)
    # The refused delta is this version's latest (deltas are cumulative: only the latest is
    # applied), so the version stays where it is until training writes a later delta or a new
    # full version; the new full version is served.
    demo.write_full("checkpoint_2", steps=1)
    touch_newer(_state_file(demo, "checkpoint_2"))
    wait_for(lambda: client.info().version == "checkpoint_2", message="next full version served")
    assert client.info().last_update_error == ""
    np.testing.assert_allclose(output(client.predict(feed), "probability"),
                               demo.model.predict(feed), rtol=1e-5, atol=1e-6)


def test_a_delta_in_the_retired_private_format_is_refused_not_half_applied(demo, serving):
    runtime, client, feed, answer = serving
    step_before = client.info().delta_step
    last_delta = [p for _, kind, p in demo.written if kind == "delta"][-1]
    dense = demo.model.dense_variables[0]
    zeros = np.zeros(dense.shape.as_list(), np.float32)
    # The former format: changed table rows under V/delta_ids, dense variables whole. Applying
    # only its dense part would serve stale rows with new weights.
    tf.raw_ops.SaveV2(prefix=f"{last_delta.rsplit('-', 1)[0]}-{demo.step + 200}",
                      tensor_names=["embedding/delta_ids", "embedding/delta_values", dense.op.name],
                      shape_and_slices=["", "", ""],
                      tensors=[np.array([1], np.int64), np.ones((1, 8), np.float32), zeros])
    wait_for(lambda: "retired private format" in client.info().last_update_error,
             message="old-format delta refused")
    assert client.info().delta_step == step_before
    np.testing.assert_allclose(output(client.predict(feed), "probability"), answer, rtol=1e-6)
