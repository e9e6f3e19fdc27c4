"""`kill -9` of the runtime in the middle of an update, then a restart on the same folders.

The runtime writes nothing into a local model store and keeps no state between runs, so a
restart must serve the newest complete version with no cleanup. To land the kill inside the
update every time, the new checkpoint's `.data` file is a named pipe with no writer: the
runtime's read blocks in open() until it is killed (seen as the kernel wait channel
`wait_for_partner` of one of its threads), exactly like a read of a slow or stuck copy.
"""

from __future__ import annotations

import glob
import os
import signal

import numpy as np

from tests.support.faults import write_config
from tests.support.runtime import output, touch_newer, wait_for


def _data_file_as_fifo(prefix: str, aside: str) -> tuple[str, str]:
    """Moves the checkpoint's data shard to `aside` and puts a named pipe in its place."""
    (data,) = glob.glob(prefix + ".data-*")
    saved = os.path.join(aside, os.path.basename(data))
    os.rename(data, saved)
    os.mkfifo(data)
    return data, saved


def _config(tmp_path, demo) -> str:
    return write_config(tmp_path / "model_config.json", savedmodel_dir=demo.saved_model_dir,
                        checkpoint_dir=demo.checkpoint_dir)


def test_kill9_during_full_version_load_restart_serves_last_complete_version(
        tmp_path, demo, serve_process):
    config = _config(tmp_path, demo)
    first = serve_process(config, "--annotations-file", str(tmp_path / "none"))
    first.wait_serving()
    feed = demo.model.make_feed(8, np.random.default_rng(1))
    v1_answer = output(first.client.predict(feed), "probability")
    v1 = first.client.info()

    first.proc.send_signal(signal.SIGSTOP)  # the new version appears in one piece to the poller
    prefix = demo.write_full("checkpoint_2", steps=3)
    v2_expected = demo.model.predict(feed)
    data, saved = _data_file_as_fifo(prefix, str(tmp_path))
    touch_newer(os.path.join(demo.checkpoint_dir, "checkpoint_2", "checkpoint"))
    first.proc.send_signal(signal.SIGCONT)
    wait_for(first.blocked_in_fifo_open, timeout=30, message="load blocked on checkpoint_2")
    # Mid-load: the old version still answers, and the new one is reported as loading.
    np.testing.assert_allclose(output(first.client.predict(feed), "probability"), v1_answer)
    states = {v.name: v.state for v in first.client.info().versions}
    assert states["checkpoint_2"] == "LOADING" and states["checkpoint_1"] == "SERVING"
    first.kill9()

    # The copy of checkpoint_2 never finished (its data shard is missing): a restart serves
    # checkpoint_1 with its deltas, as before the crash, and says why checkpoint_2 is not used.
    os.unlink(data)
    second = serve_process(config, "--annotations-file", str(tmp_path / "none"))
    second.wait_serving()
    info = second.client.info()
    assert (info.version, info.full_step, info.delta_step) == (v1.version, v1.full_step,
                                                               v1.delta_step)
    np.testing.assert_allclose(output(second.client.predict(feed), "probability"), v1_answer)
    bad = {v.name: v for v in info.versions}["checkpoint_2"]
    assert bad.state == "ERROR" and "no complete full checkpoint" in bad.error

    # The copy completes: the same process picks checkpoint_2 up, nothing to clean by hand.
    os.rename(saved, data)
    wait_for(lambda: second.client.info().version == "checkpoint_2", timeout=30,
             message="checkpoint_2 served")
    np.testing.assert_allclose(output(second.client.predict(feed), "probability"), v2_expected,
                               rtol=1e-5, atol=1e-6)


def test_kill9_during_delta_apply_restart_serves_version_without_the_delta_then_with_it(
        tmp_path, demo, serve_process):
    config = _config(tmp_path, demo)
    first = serve_process(config, "--annotations-file", str(tmp_path / "none"))
    first.wait_serving()
    feed = demo.model.make_feed(8, np.random.default_rng(2))
    before = output(first.client.predict(feed), "probability")
    step_before = first.client.info().delta_step

    first.proc.send_signal(signal.SIGSTOP)
    prefix = demo.write_delta(steps=3)
    step = int(prefix.rsplit("-", 1)[1])
    expected = demo.model.predict(feed)
    data, saved = _data_file_as_fifo(prefix, str(tmp_path))
    first.proc.send_signal(signal.SIGCONT)
    wait_for(first.blocked_in_fifo_open, timeout=30, message="delta read blocked")
    # A delta is read whole before any variable changes: requests still see the old rows.
    np.testing.assert_allclose(output(first.client.predict(feed), "probability"), before)
    assert first.client.info().delta_step == step_before
    first.kill9()

    os.unlink(data)  # the delta's copy never finished
    second = serve_process(config, "--annotations-file", str(tmp_path / "none"))
    second.wait_serving()
    assert second.client.info().delta_step == step_before
    np.testing.assert_allclose(output(second.client.predict(feed), "probability"), before)

    os.rename(saved, data)
    wait_for(lambda: second.client.info().delta_step == step, timeout=30, message="delta applied")
    np.testing.assert_allclose(output(second.client.predict(feed), "probability"), expected,
                               rtol=1e-5, atol=1e-6)
    assert second.client.info().last_update_error == ""
