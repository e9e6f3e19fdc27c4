"""Fixtures for the feature-store tests: a real redis-server per test, and runtimes on loopback
(both from tests/support, imported here for pytest)."""

from __future__ import annotations

from tests.support.redis_server import redis_server  # noqa: F401
from tests.support.runtime import Client, demo, serve  # noqa: F401
