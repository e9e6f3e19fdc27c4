"""Where EV rows may live: DeepRec's DRAM storage (ev_storage_type 0 or 1) is the in-process
store, within ev_storage_size; the stores that do not serve EVs refuse the model by name."""

from __future__ import annotations

import numpy as np
import pytest
from runtime.conftest import plan_of, wait_for

from . import state as S
from .layout import make_ev_model
from .test_serving import check


def test_ev_storage_type_1_serves_evs_in_dram_from_the_cpp_plan(ev_model, serve):
    runtime, client = serve(ev_model.saved_model_dir, ev_model.checkpoint_dir, ev_storage_type=1,
                            ev_storage_size=[64 << 20])
    plan = plan_of(runtime)
    assert plan is not None
    before = plan.answered
    check(client, ev_model, S.make_feed(ev_model.state, 9, np.random.default_rng(2)))
    assert plan.answered == before + 1


def test_evs_larger_than_ev_storage_size_fail_the_load_naming_the_field(tmp_path, serve):
    model = make_ev_model(str(tmp_path / "m"))
    runtime, client = serve(model.saved_model_dir, model.checkpoint_dir, wait=False,
                            ev_storage_type=1, ev_storage_size=[4096])
    wait_for(lambda: "ev_storage_size[0] = 4096" in client.info().last_update_error,
             message="budget refusal")
    assert client.info().version == ""


@pytest.mark.parametrize("fields", [
    {"feature_store_type": "redis", "redis_url": "127.0.0.1:1"},
    {"ev_storage_type": 12, "ev_storage_path": "SSD"},
], ids=["redis", "dram+ssd"])
def test_stores_that_do_not_serve_evs_refuse_the_model_with_a_message(tmp_path, serve, fields):
    model = make_ev_model(str(tmp_path / "m"))
    if "ev_storage_path" in fields:
        fields = {**fields, "ev_storage_path": str(tmp_path / "ssd")}
    runtime, client = serve(model.saved_model_dir, model.checkpoint_dir, wait=False, **fields)
    wait_for(lambda: "served from the in-process store only" in client.info().last_update_error,
             message="refusal")
    assert client.info().version == ""
