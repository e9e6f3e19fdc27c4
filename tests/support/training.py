"""A minimal independent reader of the checkpoint format, used to check what the writer wrote.

It deliberately re-implements loading with plain TensorFlow (SavedModel loader, Saver, scatter
updates) rather than using the runtime's loader, so the tests check the format, not a shared bug.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from deeprec_runtime.training import read_delta

tf1 = tf.compat.v1


class FreshServable:
    """A SavedModel imported into a new graph, restorable from full checkpoints and deltas."""

    def __init__(self, saved_model_dir: str):
        self.graph = tf.Graph()
        self.session = tf1.Session(graph=self.graph)
        self.meta_graph = tf1.saved_model.loader.load(self.session, ["serve"], saved_model_dir)
        with self.graph.as_default():
            self.variables = {v.op.name: v for v in tf1.global_variables()}
            self.saver = tf1.train.Saver(var_list=self.variables)

    def restore_full(self, prefix: str) -> None:
        with self.graph.as_default():  # outside it, Saver.restore runs eagerly and fails
            self.saver.restore(self.session, prefix)

    def apply_delta(self, prefix: str) -> None:
        delta = read_delta(prefix)
        with self.graph.as_default():
            for name, (ids, rows) in delta.embeddings.items():
                var = self.variables[name]
                self.session.run(tf1.scatter_update(var, ids, rows))
            for name, value in delta.dense.items():
                self.session.run(tf1.assign(self.variables[name], value))

    def values(self) -> dict[str, np.ndarray]:
        names = sorted(self.variables)
        return dict(zip(names, self.session.run([self.variables[n] for n in names]), strict=True))

    def run(self, signature: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sig = self.meta_graph.signature_def[signature]
        fd = {sig.inputs[k].name: v for k, v in feed.items()}
        outs = {k: t.name for k, t in sig.outputs.items()}
        return dict(zip(outs, self.session.run(list(outs.values()), fd), strict=True))

    def close(self) -> None:
        self.session.close()


def delta_prefixes_in_order(version_dir: str) -> list[str]:
    """Deltas listed by the delta folder's CheckpointState, as absolute prefixes."""
    state = tf1.train.get_checkpoint_state(os.path.join(version_dir, ".incremental_checkpoint"))
    assert state is not None, f"no delta CheckpointState in {version_dir}"
    return list(state.all_model_checkpoint_paths)
