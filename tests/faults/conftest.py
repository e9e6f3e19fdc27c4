"""Fixtures for the fault tests: runtimes in-process (shared with the runtime tests) and
`deeprec-runtime serve` subprocesses for faults that must kill a real process."""

from __future__ import annotations

from tests.support.runtime import demo, serve, serve_process  # noqa: F401 (shared fixtures)
