"""Live updates on a serving runtime: new full versions, deltas, rollback, broken checkpoints."""

from __future__ import annotations

import os
import shutil
import threading
import time

import grpc
import numpy as np

from tests.support.runtime import output, touch_newer, wait_for


class Traffic:
    """Steady requests from a background thread, counting failures."""

    def __init__(self, client, feed, key):
        self.client, self.feed, self.key = client, feed, key
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                out = output(self.client.predict(self.feed), self.key)
                assert np.all(np.isfinite(out))
                self.ok += 1
            except (grpc.RpcError, AssertionError) as exc:
                self.failures.append(repr(exc))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _serving_variable(runtime, name):
    with runtime.manager.hold() as handle:
        servable = handle.servable
        import tensorflow as tf

        variables = servable.graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
        # _graph_element is the variable's read tensor in the imported graph (the graph is
        # finalized, so no read op can be added).
        (variable,) = [v for v in variables if v.op.name == name]
        return servable.session.run(variable._graph_element)


def test_new_full_version_is_served_within_5s_with_no_failed_request(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    feed = demo.model.make_feed(8, np.random.default_rng(3))
    with Traffic(client, feed, "probability") as traffic:
        time.sleep(0.5)
        demo.write_full("checkpoint_2", steps=3)
        written = time.monotonic()
        wait_for(lambda: client.info().version == "checkpoint_2", timeout=5,
                 message="checkpoint_2 served")
        took = time.monotonic() - written
        time.sleep(0.3)
    assert traffic.failures == []
    assert traffic.ok > 10
    np.testing.assert_allclose(output(client.predict(feed), "probability"),
                               demo.model.predict(feed), rtol=1e-5, atol=1e-6)
    print(f"new full version served {took:.2f}s after it was written")


def test_delta_changes_exactly_the_rows_it_carries(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    table = demo.model.embedding_variables[0].op.name
    before = _serving_variable(runtime, table)
    prefix = demo.write_delta(steps=2)
    step = int(prefix.rsplit("-", 1)[1])
    wait_for(lambda: client.info().delta_step == step, message="delta applied")
    after = _serving_variable(runtime, table)
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    ids = reader.get_tensor(table + "-sparse_incr_keys")
    assert ids.size > 0
    changed = np.flatnonzero(np.any(before != after, axis=1))
    assert set(changed.tolist()) <= set(ids.tolist())
    np.testing.assert_array_equal(after[ids], reader.get_tensor(table + "-sparse_incr_values"))
    untouched = np.setdiff1d(np.arange(before.shape[0]), ids)
    np.testing.assert_array_equal(after[untouched], before[untouched])
    np.testing.assert_array_equal(after, demo.model.variable_values()[table])
    feed = demo.model.make_feed(16, np.random.default_rng(4))
    np.testing.assert_allclose(output(client.predict(feed), "probability"),
                               demo.model.predict(feed), rtol=1e-5, atol=1e-6)


def test_rollback_through_annotations_file_and_back_to_latest(tmp_path, demo, serve):
    annotations = tmp_path / "annotations"
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir,
                            annotations_file=str(annotations))
    feed = demo.model.make_feed(8, np.random.default_rng(5))
    v1_answer = output(client.predict(feed), "probability")
    demo.write_full("checkpoint_2", steps=5)
    wait_for(lambda: client.info().version == "checkpoint_2", message="checkpoint_2")
    v2_answer = output(client.predict(feed), "probability")
    assert not np.allclose(v1_answer, v2_answer)

    # What the kubelet writes for the operator's annotation.
    annotations.write_text('kubernetes.io/config.seen="2026-11-25T10:00:00Z"\n'
                           'serving.deeprec.io/target-version="checkpoint_1"\n')
    started = time.monotonic()
    wait_for(lambda: client.info().version == "checkpoint_1", message="rollback")
    print(f"rollback to the retained version took {time.monotonic() - started:.2f}s")
    np.testing.assert_allclose(output(client.predict(feed), "probability"), v1_answer, rtol=1e-6)
    assert client.info().target_version == "checkpoint_1"

    annotations.write_text('serving.deeprec.io/target-version="latest"\n')
    wait_for(lambda: client.info().version == "checkpoint_2", message="back to latest")
    np.testing.assert_allclose(output(client.predict(feed), "probability"), v2_answer, rtol=1e-6)


def test_pinning_a_version_that_does_not_exist_keeps_serving_and_reports_it(tmp_path, demo, serve):
    annotations = tmp_path / "annotations"
    annotations.write_text('serving.deeprec.io/target-version="checkpoint_9"\n')
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, wait=False,
                            annotations_file=str(annotations))
    wait_for(lambda: "checkpoint_9" in client.info().last_update_error, message="error reported")
    annotations.write_text('serving.deeprec.io/target-version="checkpoint_1"\n')
    assert runtime.manager.wait_ready(10)
    assert client.info().version == "checkpoint_1"


def test_truncated_checkpoint_keeps_the_old_version_and_next_good_one_is_picked_up(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    feed = demo.model.make_feed(8, np.random.default_rng(6))
    good_answer = output(client.predict(feed), "probability")
    # A copy of a new version whose .data file was cut short.
    prefix = demo.write_full("checkpoint_2", steps=2)
    bad_dir = os.path.join(demo.checkpoint_dir, "checkpoint_3")
    shutil.copytree(os.path.dirname(prefix), bad_dir)
    shutil.rmtree(os.path.dirname(prefix))
    data = [f for f in os.listdir(bad_dir) if ".data-" in f][0]
    with open(os.path.join(bad_dir, data), "r+b") as fh:
        fh.truncate(os.path.getsize(os.path.join(bad_dir, data)) // 2)
    touch_newer(os.path.join(bad_dir, "checkpoint"))
    wait_for(lambda: "checkpoint_3" in client.info().last_update_error, message="failure reported")
    info = client.info()
    assert info.version == "checkpoint_1"
    assert any(v.name == "checkpoint_3" and v.state == "ERROR" and v.error for v in info.versions)
    np.testing.assert_allclose(output(client.predict(feed), "probability"), good_answer, rtol=1e-6)
    # Training goes on and writes a good version: it is served.
    demo.write_full("checkpoint_4", steps=1)
    touch_newer(os.path.join(demo.checkpoint_dir, "checkpoint_4", "checkpoint"))
    wait_for(lambda: client.info().version == "checkpoint_4", message="checkpoint_4 served")
    assert client.info().last_update_error == ""


def test_broken_delta_is_reported_and_retried_until_repaired(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    serving_step = client.info().delta_step
    prefix = demo.write_delta(steps=1)
    data = [f for f in os.listdir(os.path.dirname(prefix))
            if f.startswith(os.path.basename(prefix) + ".data")][0]
    path = os.path.join(os.path.dirname(prefix), data)
    original = open(path, "rb").read()
    # The serving side may see the delta before the bytes are good: simulate by corrupting it.
    with open(path, "wb") as fh:
        fh.write(original[: len(original) // 3])
    step = int(prefix.rsplit("-", 1)[1])
    wait_for(lambda: client.info().last_update_error, message="delta failure reported")
    assert client.info().delta_step == serving_step
    with open(path, "wb") as fh:
        fh.write(original)
    wait_for(lambda: client.info().delta_step == step, message="delta applied after repair")
    assert client.info().last_update_error == ""


def test_old_version_is_closed_after_swap_when_not_retained(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir,
                            retain_previous_version=False)
    with runtime.manager.hold() as handle:
        first = handle.servable
    demo.write_full("checkpoint_2", steps=1)
    wait_for(lambda: client.info().version == "checkpoint_2", message="swap")
    # END is published once the version is closed (UNLOADING while it closes): a version
    # reported END holds no session any more.
    wait_for(lambda: {v.name: v.state for v in client.info().versions}
             == {"checkpoint_2": "SERVING", "checkpoint_1": "END"}, message="old version END")
    assert first.closed


def test_in_flight_request_keeps_old_version_alive_across_swap(demo, serve):
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir,
                            retain_previous_version=False)
    with runtime.manager.hold() as handle:  # a request that is still running
        held = handle.servable
        demo.write_full("checkpoint_2", steps=1)
        wait_for(lambda: client.info().version == "checkpoint_2", message="swap")
        time.sleep(0.5)
        assert not held.closed  # never freed under a live request
        feed = demo.model.make_feed(2, np.random.default_rng(0))
        from deeprec_runtime.predict import predict
        from tests.support.runtime import make_request

        predict(held, make_request(feed), "serving_default")  # still usable
    wait_for(lambda: held.closed, message="freed after the last request")


def test_stop_never_closes_a_version_under_a_delta_still_running(demo, serve, monkeypatch):
    """A delta that hangs (a stuck store, a huge tensor) must not have its session closed under
    it when the runtime stops: stop() waits for the update thread, and past its limit leaves the
    versions open rather than freeing what the thread still uses."""
    runtime, _client = serve(demo.saved_model_dir, demo.checkpoint_dir)
    serving = runtime.manager._current
    entered, release = threading.Event(), threading.Event()
    original = serving.apply_delta

    def stuck_delta(*args, **kwargs):
        entered.set()
        release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(serving, "apply_delta", stuck_delta)
    monkeypatch.setattr(runtime.manager, "stop_wait_seconds", 0.5)
    demo.write_delta()
    assert entered.wait(30), "the delta was never started"
    runtime.manager.stop()
    assert not serving.closed
    release.set()
    runtime.manager._thread.join(30)
    assert not runtime.manager._thread.is_alive()
    assert not serving.closed  # left for the process exit: a leak, never a use after free
