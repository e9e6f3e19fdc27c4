"""Fixtures for the fault tests: runtimes in-process (shared with tests/runtime) and
`deeprec-runtime serve` subprocesses for faults that must kill a real process."""

from __future__ import annotations

import json

from tests.support.runtime import demo, serve, serve_process  # noqa: F401 (shared fixtures)


def write_config(path, **fields) -> str:
    base = {"signature_name": "serving_default", "model_store_type": "local",
            "feature_store_type": "memory", "update_poll_seconds": 0.2, "warmup_iterations": 1}
    with open(path, "w") as fh:
        json.dump({**base, **fields}, fh)
    return str(path)
