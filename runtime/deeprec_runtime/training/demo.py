"""Writes a complete servable demo model folder: a SavedModel plus full and incremental checkpoints.

Layout written under ``base_dir``::

    saved_model/                       SavedModel, tag "serve", signature "serving_default"
    checkpoints/checkpoint_1/          full checkpoint + .incremental_checkpoint/ deltas
    checkpoints/checkpoint_2/ ...      one folder per full version (num_full of them)

The returned :class:`DemoArtifacts` keeps the model and the writer, so a demo can keep training
and write more deltas or a new full version while a server watches the folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .checkpoint_writer import CheckpointWriter
from .demo_models import WideDeepModel, build_wide_deep

SIGNATURE_NAME = "serving_default"


@dataclass
class DemoArtifacts:
    base_dir: str
    saved_model_dir: str
    checkpoint_dir: str
    model: WideDeepModel
    writer: CheckpointWriter
    rng: np.random.Generator
    steps_per_delta: int
    batch_size: int
    #: every checkpoint prefix written, in order: (version_name, "full" | "delta", prefix)
    written: list[tuple[str, str, str]] = field(default_factory=list)
    step: int = 0

    @property
    def version_name(self) -> str:
        return self.writer.version_name

    def train(self, steps: int) -> None:
        for _ in range(steps):
            self.model.train_step(self.batch_size, self.rng, self.writer)
            self.step += 1

    def write_delta(self, steps: int | None = None) -> str:
        """Trains ``steps`` (default steps_per_delta) steps, then writes a delta."""
        self.train(self.steps_per_delta if steps is None else steps)
        self.step += 1  # a delta's step is always above the previous save's
        prefix = self.writer.save_delta(self.step)
        self.written.append((self.writer.version_name, "delta", prefix))
        return prefix

    def write_full(self, version_name: str | None = None, steps: int | None = None) -> str:
        """Trains, then writes a full checkpoint in a new version folder (default: the next
        ``checkpoint_<i>``)."""
        self.train(self.steps_per_delta if steps is None else steps)
        self.step += 1
        name = version_name or next_version_name(self.checkpoint_dir)
        self.writer.start_version(name)
        prefix = self.writer.save_full(self.step)
        self.written.append((name, "full", prefix))
        return prefix

    def close(self) -> None:
        self.model.close()


def next_version_name(checkpoint_dir: str) -> str:
    """``checkpoint_<i+1>`` for the highest existing ``checkpoint_<i>`` (``checkpoint_1`` first)."""
    highest = 0
    if os.path.isdir(checkpoint_dir):
        for name in os.listdir(checkpoint_dir):
            if name.startswith("checkpoint_") and name[len("checkpoint_") :].isdigit():
                highest = max(highest, int(name[len("checkpoint_") :]))
    return f"checkpoint_{highest + 1}"


def write_demo_model(
    base_dir: str,
    num_ids: int = 100_000,
    num_full: int = 1,
    num_deltas: int = 2,
    *,
    dim: int = 16,
    num_sparse: int = 8,
    num_dense: int = 13,
    hidden: tuple[int, ...] = (256, 128),
    steps_per_delta: int = 5,
    batch_size: int = 256,
    seed: int = 0,
) -> DemoArtifacts:
    """Builds the Wide&Deep demo, exports ``base_dir/saved_model`` and writes ``num_full``
    version folders ``checkpoint_1..`` under ``base_dir/checkpoints``, each with a full
    checkpoint followed by ``num_deltas`` deltas of ``steps_per_delta`` SGD steps each.

    ``base_dir/saved_model`` must not exist yet. Training continues from the returned artifacts.
    """
    if num_full < 1:
        raise ValueError(f"num_full must be >= 1, got {num_full}")
    if num_deltas < 0:
        raise ValueError(f"num_deltas must be >= 0, got {num_deltas}")
    saved_model_dir = os.path.join(base_dir, "saved_model")
    checkpoint_dir = os.path.join(base_dir, "checkpoints")
    os.makedirs(checkpoint_dir, exist_ok=True)
    model = build_wide_deep(
        num_ids=num_ids,
        dim=dim,
        num_sparse=num_sparse,
        num_dense=num_dense,
        hidden=hidden,
        seed=seed,
    )
    writer = CheckpointWriter(
        model.session,
        checkpoint_dir,
        next_version_name(checkpoint_dir),
        model.embedding_variables,
        model.dense_variables,
    )
    model.writer = writer
    writer.export_saved_model(saved_model_dir, model.inputs, model.outputs, SIGNATURE_NAME)
    art = DemoArtifacts(
        base_dir=base_dir,
        saved_model_dir=saved_model_dir,
        checkpoint_dir=checkpoint_dir,
        model=model,
        writer=writer,
        rng=np.random.default_rng(seed),
        steps_per_delta=steps_per_delta,
        batch_size=batch_size,
    )
    for i in range(num_full):
        if i == 0:
            art.step += 1
            prefix = writer.save_full(art.step)
            art.written.append((writer.version_name, "full", prefix))
        else:
            art.write_full()
        for _ in range(num_deltas):
            art.write_delta()
    return art
