"""Fixtures of the runtime tests; they and their helpers live in tests/support/runtime.py."""

from tests.support.runtime import demo, seed_model, serve, serve_process  # noqa: F401 (fixtures)
