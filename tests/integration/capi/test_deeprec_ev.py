"""A DeepRec EmbeddingVariable export through the C API, from a C host (examples/c)."""

from __future__ import annotations

import numpy as np

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.codec import decode_array
from tests.support.capi import make_request, run_client, write_json
from tests.support.deeprec import state as S
from tests.support.deeprec.layout import make_ev_model


def test_c_host_gets_deeprecs_answers_for_an_ev_model(tmp_path, capi_library, c_client):
    model = make_ev_model(str(tmp_path / "model"))
    feed = S.make_feed(model.state, 7, np.random.default_rng(21))
    feed["user_ids"][:3] = [sorted(model.state.evs["user_emb"].rows)[0], 99999999, -2]
    (tmp_path / "request.pb").write_bytes(make_request(feed).SerializeToString())
    config = model.config()
    del config["update_poll_seconds"]
    out = run_client(c_client, capi_library, write_json(tmp_path / "model_config.json", config),
                     "predict", "request.pb", "response.pb", "info", "info.pb",
                     cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    response = pb.PredictResponse.FromString((tmp_path / "response.pb").read_bytes())
    expected = S.predict(model.state, feed)
    for key in ("probability", "user_vec", "item_vec", "tag_vec", "ctx_vec"):
        np.testing.assert_allclose(decode_array(response.outputs[key], key), expected[key],
                                   rtol=1e-5, atol=1e-6, err_msg=key)
    info = pb.ServingModelInfo.FromString((tmp_path / "info.pb").read_bytes())
    assert (info.version, info.full_step) == ("ckpt", 100)
