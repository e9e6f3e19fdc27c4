"""Fixtures: DeepRec models on disk (layout.py) and the runtime fixtures of tests/support/runtime.py."""

from __future__ import annotations

import pytest

from tests.support.deeprec import state as S
from tests.support.deeprec.layout import EVModel, make_ev_model

# The runtime fixtures of tests/support/runtime.py and a real redis-server (imported here for pytest).
from tests.support.redis_server import redis_server  # noqa: F401
from tests.support.runtime import Client, serve, serve_process  # noqa: F401


@pytest.fixture
def ev_model(tmp_path) -> EVModel:
    """Newer release (InitializeKvVariableV2Op, KvResourceImportV3), default attrs stripped."""
    return make_ev_model(str(tmp_path / "model"))


@pytest.fixture
def old_ev_model(tmp_path) -> EVModel:
    """Older release (InitializeKvVariableOp with attr_json_str, KvResourceImportV2), attrs kept.
    Its user_emb answers unseen ids with default_value_no_permission -0.25 (set in the JSON)."""
    return make_ev_model(str(tmp_path / "old"), release=S.OLD_RELEASE, strip_defaults=False,
                         init_overrides={"user_emb": {"default_value_no_permission": -0.25}})


OLD_NO_PERMISSION = {"user_emb": -0.25}
