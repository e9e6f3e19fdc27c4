"""What the fault tests share: a model config for `deeprec-runtime serve` with their defaults."""

from __future__ import annotations

import json


def write_config(path, **fields) -> str:
    base = {"signature_name": "serving_default", "model_store_type": "local",
            "feature_store_type": "memory", "update_poll_seconds": 0.2, "warmup_iterations": 1}
    with open(path, "w") as fh:
        json.dump({**base, **fields}, fh)
    return str(path)
