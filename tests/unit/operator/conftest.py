"""Fixtures of the operator's unit tests: a DeepRecModel spec as the API server stores it (the
manifests and fakes they build on are in tests/support/operator/)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.operator.manifests import BASE_SPEC


@pytest.fixture
def spec() -> dict[str, Any]:
    return copy.deepcopy(BASE_SPEC)
