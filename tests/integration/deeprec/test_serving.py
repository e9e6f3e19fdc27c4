"""DeepRec exports served as DeepRec leaves them: real runtimes on loopback gRPC (DeepRec's and TF
Serving's Predict, the C++ fast path, `deeprec-runtime serve`), answers checked against numpy."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2 as tfs_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from deeprec_runtime.deeprec import kernels
from tests.support.deeprec import state as S
from tests.support.deeprec.layout import OLD_NO_PERMISSION, make_ev_model
from tests.support.deeprec.serving import OUTPUTS, check, mixed_feed, train
from tests.support.runtime import output, plan_of, wait_for


def tfs_predict(channel: grpc.Channel, feed: dict) -> dict[str, np.ndarray]:
    request = tfs_pb2.PredictRequest()
    request.model_spec.name = "default"
    for key, value in feed.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(request, timeout=10)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def test_a_deeprec_export_is_served_with_deeprecs_answers_and_from_the_cpp_plan(
        ev_model, serve, lookup_ops):
    runtime, client = serve(ev_model.saved_model_dir, ev_model.checkpoint_dir)
    with runtime.manager.hold() as handle:
        ops = {op.type for op in handle.servable.imported.graph.get_operations()}
    assert (kernels.GATHER_OP in ops) == (lookup_ops == "ev-op-library")
    assert runtime.grpc_server == "native"
    plan = plan_of(runtime)
    assert plan is not None, "the EV model must get a C++ fast-path plan"
    before = plan.answered
    for n, batch in enumerate((1, 7, 64)):
        check(client, ev_model, mixed_feed(ev_model, batch, n))
    assert plan.answered - before == 3
    info = client.info()
    assert (info.version, info.full_step) == ("ckpt", 100)
    # TF Serving's API, from the same plan.
    feed = mixed_feed(ev_model, 9, 5)
    tfs_before = plan.tfs_answered
    got = tfs_predict(client.channel, feed)
    expected = S.predict(ev_model.state, feed)
    for key in OUTPUTS:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert plan.tfs_answered == tfs_before + 1


def test_two_cumulative_deltas_are_applied_live_with_new_and_newly_admitted_ids(
        ev_model, serve, lookup_ops):
    runtime, client = serve(ev_model.saved_model_dir, ev_model.checkpoint_dir)
    rng = np.random.default_rng(11)
    first_filtered = sorted(ev_model.state.evs["item_emb"].filtered)[:2]
    feed = mixed_feed(ev_model, 8, 1)
    feed["item_ids"][1] = [first_filtered[0], first_filtered[1], 90001]  # admitted, then new
    feed["user_ids"][3] = 80001  # new in delta 1
    check(client, ev_model, feed)

    state1, changed1 = train(ev_model.state, rng, {"user_emb": [80001], "item_emb": [90001]},
                              {}, admit=1)
    ev_model.write_delta(state1, {k: sorted(v) for k, v in changed1.items()}, 110)
    wait_for(lambda: client.info().delta_step == 110, message="delta 110 applied")
    check(client, ev_model, feed)

    # The second delta holds every change since the full save (cumulative), plus its own.
    state2, changed2 = train(state1, rng, {"tag_emb": [5555], "ctx_emb": [4444]}, {}, admit=1)
    everything = {k: sorted(changed1.get(k, set()) | changed2[k]) for k in changed2}
    ev_model.write_delta(state2, everything, 120)
    wait_for(lambda: client.info().delta_step == 120, message="delta 120 applied")
    feed["tag_ids"][2], feed["ctx_ids"][2] = 5555, 4444
    check(client, ev_model, feed)
    assert client.info().last_update_error == ""
    plan = plan_of(runtime)
    before = plan.answered
    check(client, ev_model, mixed_feed(ev_model, 16, 2))
    assert plan.answered == before + 1  # the plan serves the updated tables too


def test_a_backlog_of_deltas_on_load_applies_only_the_latest(tmp_path, serve):
    """Deltas are cumulative: the latest alone is read, so an earlier broken one (here, rows of
    the wrong width) no longer matters once a later one is written."""
    model = make_ev_model(str(tmp_path / "m"))
    rng = np.random.default_rng(3)
    state1, changed1 = train(model.state, rng, {"user_emb": [70001]}, {}, admit=1)
    broken = state1.copy()
    broken.evs["user_emb"].rows = {k: np.ones(9, np.float32) for k in broken.evs["user_emb"].rows}
    model.write_delta(broken, {k: sorted(v) for k, v in changed1.items()}, 105)
    state2, changed2 = train(state1, rng, {"user_emb": [70002]}, {}, admit=0)
    everything = {k: sorted(changed1.get(k, set()) | changed2[k]) for k in changed2}
    model.write_delta(state2, everything, 107)
    runtime, client = serve(model.saved_model_dir, model.checkpoint_dir)
    assert client.info().delta_step == 107
    assert client.info().last_update_error == ""
    feed = mixed_feed(model, 8, 4)
    feed["user_ids"][4:6] = [70001, 70002]
    check(client, model, feed)


def test_an_older_release_export_without_stripped_attrs_is_served_by_its_rules(
        old_ev_model, serve):
    runtime, client = serve(old_ev_model.saved_model_dir, old_ev_model.checkpoint_dir)
    for n, batch in enumerate((1, 5, 33)):
        check(client, old_ev_model, mixed_feed(old_ev_model, batch, n), S.OLD_RELEASE,
              OLD_NO_PERMISSION)
    feed = mixed_feed(old_ev_model, 4, 9)
    # Unseen user ids answer default_value_no_permission (-0.25, from attr_json_str).
    feed["user_ids"][:] = [123456789, -1, 123456790, 4999999]
    vec = output(client.predict(feed), "user_vec")
    np.testing.assert_allclose(vec, np.full((4, 4), -0.25, np.float32))


def test_a_checkpoint_written_in_other_parts_serves_the_same(tmp_path, serve):
    model = make_ev_model(str(tmp_path / "m"))
    model.write_full(model.state, 200, folder="ckpt2", parts={"item_emb": 2})
    runtime, client = serve(model.saved_model_dir, model.checkpoint_dir)
    assert (client.info().version, client.info().full_step) == ("ckpt2", 200)
    check(client, model, mixed_feed(model, 12, 6))


def test_a_bad_full_version_is_reported_and_the_previous_one_keeps_serving(ev_model, serve):
    runtime, client = serve(ev_model.saved_model_dir, ev_model.checkpoint_dir)
    feed = mixed_feed(ev_model, 8, 3)
    good = ev_model.state
    ev_model.write_full(good, 300, folder="broken", drop=("item_emb/part_2-values",))
    wait_for(lambda: "item_emb/part_2-values" in client.info().last_update_error,
             message="broken version reported")
    assert client.info().version == "ckpt"
    check(client, ev_model, feed)


def test_a_bad_delta_is_refused_whole_and_the_next_good_one_applied(ev_model, serve):
    runtime, client = serve(ev_model.saved_model_dir, ev_model.checkpoint_dir)
    feed = mixed_feed(ev_model, 8, 3)
    good = ev_model.state
    rng = np.random.default_rng(1)
    state1, changed1 = train(good, rng, {"item_emb": [91919]}, {}, admit=1)
    bad = state1.copy()
    # user_emb rows of the wrong width; item_emb (read after it) would be fine.
    bad.evs["user_emb"].rows = {k: np.ones(7, np.float32) for k in bad.evs["user_emb"].rows}
    changed = {k: sorted(v) for k, v in changed1.items()}
    ev_model.write_delta(bad, changed, 110)
    wait_for(lambda: "dimension 4" in client.info().last_update_error, message="delta refused")
    assert client.info().delta_step == 0
    ev_model.state = good
    feed["item_ids"][0] = [91919, sorted(good.evs["item_emb"].filtered)[0], 1]
    check(client, ev_model, feed)  # nothing of the refused delta is visible
    ev_model.write_delta(state1, changed, 120)
    wait_for(lambda: client.info().delta_step == 120, message="good delta applied")
    check(client, ev_model, feed)


def test_an_unsupported_lookup_fails_the_load_naming_op_and_node(tmp_path, serve):
    model = make_ev_model(str(tmp_path / "m"), unsupported=True)
    runtime, client = serve(model.saved_model_dir, model.checkpoint_dir, wait=False)
    wait_for(lambda: runtime.manager.last_error, message="load failure")
    error = client.info().last_update_error
    assert "_OPT_KvResourceCollectEmbedding (node user_lookup/Gather" in error
    assert client.info().version == ""
    with pytest.raises(grpc.RpcError) as err:
        client.predict(mixed_feed(model, 1, 0))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_without_checkpoint_dir_the_exports_own_variables_are_served(tmp_path, serve):
    model = make_ev_model(str(tmp_path / "m"))
    S.write_full(f"{model.saved_model_dir}/variables/variables", model.state)
    runtime, client = serve(model.saved_model_dir, "")
    assert client.info().version == "savedmodel"
    check(client, model, mixed_feed(model, 5, 8))


def test_deeprec_runtime_serve_answers_both_apis(ev_model, serve_process, tmp_path):
    config = tmp_path / "model_config.json"
    config.write_text(json.dumps(ev_model.config()))
    proc = serve_process(config)
    proc.wait_serving()
    feed = mixed_feed(ev_model, 6, 12)
    check(proc.client, ev_model, feed)
    got = tfs_predict(proc.channel, feed)
    np.testing.assert_allclose(got["probability"], S.predict(ev_model.state, feed)["probability"],
                               rtol=1e-5, atol=1e-6)
