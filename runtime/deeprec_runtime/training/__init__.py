"""Training-side helpers: write full and incremental checkpoints and SavedModels for serving.

Format: docs/checkpoint-format.md. Demo / fixture models live here too, so the demo command,
the tests and the benchmarks train the same real model.
"""

from .checkpoint_writer import CheckpointWriter, export_saved_model, variable_name
from .demo import DemoArtifacts, next_version_name, write_demo_model
from .demo_models import (
    WIDE_DEEP_LOOKUPS,
    DemoModel,
    SeedExampleModel,
    WideDeepModel,
    build_seed_example,
    build_wide_deep,
)
from .format import Delta, read_delta

__all__ = [
    "CheckpointWriter",
    "Delta",
    "DemoArtifacts",
    "DemoModel",
    "SeedExampleModel",
    "WIDE_DEEP_LOOKUPS",
    "WideDeepModel",
    "build_seed_example",
    "build_wide_deep",
    "export_saved_model",
    "next_version_name",
    "read_delta",
    "variable_name",
    "write_demo_model",
]
