"""Fixtures: DeepRec models on disk (layout.py) and the runtime fixtures of tests/support/runtime.py."""

from __future__ import annotations

import pytest

from deeprec_runtime.deeprec import kernels
from tests.support.deeprec import state as S
from tests.support.deeprec.layout import EVModel, make_ev_model

# The runtime fixtures of tests/support/runtime.py and a real redis-server (imported here for pytest).
from tests.support.redis_server import redis_server  # noqa: F401
from tests.support.runtime import Client, serve, serve_process  # noqa: F401


@pytest.fixture(params=["ev-op-library", "stock-ops"])
def lookup_ops(request, monkeypatch) -> str:
    """Runs a test with EV lookups on the EV op library's kernels, then on TensorFlow's stock
    ops (what a runtime that cannot build the library serves with): the same answers."""
    if request.param == "stock-ops":
        monkeypatch.setenv(kernels.STOCK_ENV, "1")
    else:
        monkeypatch.delenv(kernels.STOCK_ENV, raising=False)
        assert kernels.fused_lookups(), "the EV op library must build wherever the tests run"
    return request.param


@pytest.fixture
def ev_model(tmp_path) -> EVModel:
    """Newer release (InitializeKvVariableV2Op, KvResourceImportV3), default attrs stripped."""
    return make_ev_model(str(tmp_path / "model"))


@pytest.fixture
def old_ev_model(tmp_path) -> EVModel:
    """Older release (InitializeKvVariableOp with attr_json_str, KvResourceImportV2), attrs kept.
    Its user_emb answers unseen ids with default_value_no_permission -0.25 (set in the JSON;
    OLD_NO_PERMISSION in tests/support/deeprec/layout.py)."""
    return make_ev_model(str(tmp_path / "old"), release=S.OLD_RELEASE, strip_defaults=False,
                         init_overrides={"user_emb": {"default_value_no_permission": -0.25}})

