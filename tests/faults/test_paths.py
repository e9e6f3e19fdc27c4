"""Paths from configs, annotations and state files cannot lead the runtime out of its model
store: `..` in version names, absolute or `..` paths in a `checkpoint` state file, symbolic
links in a local store. In every case the outside checkpoint is a valid one of the same model
with other values, so reading it would show in the answers."""

from __future__ import annotations

import glob
import os
import shutil

import numpy as np
import pytest

from deeprec_runtime.store.base import LocalStore
from deeprec_runtime.training import write_demo_model
from tests.support.runtime import output, touch_newer, wait_for


@pytest.fixture
def outside(tmp_path):
    """A complete version of the demo's architecture (other weights) outside the store."""
    art = write_demo_model(str(tmp_path / "outside"), num_ids=2000, num_deltas=0,
                           hidden=(32, 16), batch_size=16, seed=1)
    art.close()
    return os.path.join(art.checkpoint_dir, "checkpoint_1")


def _serving(demo, serve, **fields):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, **fields)
    feed = demo.model.make_feed(8, np.random.default_rng(9))
    return runtime, client, feed, output(client.predict(feed), "probability")


def test_local_store_refuses_dotdot_paths_that_leave_it(tmp_path, demo, outside):
    store = LocalStore([demo.checkpoint_dir])
    escape = os.path.join(demo.checkpoint_dir, "checkpoint_1", "..", "..", "..", "outside")
    for call in (store.list, store.stat, store.read_bytes, store.localize_tree):
        with pytest.raises(PermissionError):
            call(os.path.join(escape, "checkpoints", "checkpoint_1", "checkpoint"))
    prefix = glob.glob(os.path.join(outside, "*.index"))[0][: -len(".index")]
    with pytest.raises(PermissionError):
        store.localize_checkpoint(
            os.path.join(demo.checkpoint_dir, os.path.relpath(prefix, demo.checkpoint_dir)))


def test_dotdot_target_version_is_reported_missing_and_nothing_outside_is_loaded(
        tmp_path, demo, serve, outside):
    annotations = tmp_path / "annotations"
    _, client, feed, answer = _serving(demo, serve, annotations_file=str(annotations))
    rel = os.path.relpath(outside, demo.checkpoint_dir)  # ../../outside/checkpoints/checkpoint_1
    for target in (rel, outside):
        annotations.write_text(f'serving.deeprec.io/target-version="{target}"\n')
        wait_for(lambda t=target: t in client.info().last_update_error, message=f"{target} refused")
        assert "does not exist" in client.info().last_update_error
        assert client.info().version == "checkpoint_1"
    np.testing.assert_allclose(output(client.predict(feed), "probability"), answer, rtol=1e-6)


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_state_file_pointing_outside_is_not_followed(demo, serve, outside, where):
    _, client, feed, answer = _serving(demo, serve)
    target = glob.glob(os.path.join(outside, "*.index"))[0][: -len(".index")]
    version = os.path.join(demo.checkpoint_dir, "checkpoint_2")
    os.makedirs(version)
    path = target if where == "absolute" else os.path.relpath(target, version)
    state = f'model_checkpoint_path: "{path}"\nall_model_checkpoint_paths: "{path}"\n'
    with open(os.path.join(version, "checkpoint"), "w") as fh:
        fh.write(state)
    touch_newer(os.path.join(version, "checkpoint"))
    # The folder has no checkpoint of its own: it is not a version, whatever the state file says.
    wait_for(lambda: any(v.name == "checkpoint_2" and v.state == "ERROR"
                         for v in client.info().versions), message="checkpoint_2 refused")
    np.testing.assert_allclose(output(client.predict(feed), "probability"), answer, rtol=1e-6)
    # Training writes its own checkpoint there (and a correct state file); the stray state file
    # never made the runtime read the outside one.
    shutil.rmtree(version)
    demo.write_full("checkpoint_2", steps=1)
    with open(os.path.join(version, "checkpoint"), "w") as fh:
        fh.write(state)
    touch_newer(os.path.join(version, "checkpoint"))
    wait_for(lambda: client.info().version == "checkpoint_2", message="checkpoint_2 served")
    np.testing.assert_allclose(output(client.predict(feed), "probability"),
                               demo.model.predict(feed), rtol=1e-5, atol=1e-6)


def test_symlinked_version_folder_leaving_the_store_is_refused_and_others_still_served(
        demo, serve, outside):
    _, client, feed, answer = _serving(demo, serve)
    os.symlink(outside, os.path.join(demo.checkpoint_dir, "checkpoint_2"))
    wait_for(lambda: any(v.name == "checkpoint_2" and v.state == "ERROR"
                         and "outside the model folders" in v.error
                         for v in client.info().versions), message="symlink refused")
    np.testing.assert_allclose(output(client.predict(feed), "probability"), answer, rtol=1e-6)
    demo.write_full("checkpoint_3", steps=1)
    touch_newer(os.path.join(demo.checkpoint_dir, "checkpoint_3", "checkpoint"))
    wait_for(lambda: client.info().version == "checkpoint_3", message="checkpoint_3 served")


def test_data_shard_symlinked_outside_the_store_is_never_read(demo, serve, outside):
    _, client, feed, answer = _serving(demo, serve)
    prefix = demo.write_full("checkpoint_2", steps=1)
    (data,) = glob.glob(prefix + ".data-*")
    (foreign,) = glob.glob(os.path.join(outside, "*.data-*"))
    os.unlink(data)
    os.symlink(foreign, data)  # same layout, other weights: loading it would change answers
    touch_newer(os.path.join(demo.checkpoint_dir, "checkpoint_2", "checkpoint"))
    wait_for(lambda: "outside the model folders" in client.info().last_update_error,
             message="data shard refused")
    assert client.info().version == "checkpoint_1"
    np.testing.assert_allclose(output(client.predict(feed), "probability"), answer, rtol=1e-6)
