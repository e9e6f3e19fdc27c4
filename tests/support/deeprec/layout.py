"""A DeepRec training job's output on disk, as DeepRec lays it out, built per test:

    <base>/saved_model/saved_model.pb            the export (export.py), variables/ when asked
    <base>/checkpoints/ckpt/model.ckpt-<N>       DeepRec's checkpoint_dir (the config names the
    <base>/checkpoints/ckpt/checkpoint           parent, <base>/checkpoints, as for DeepRec)
    <base>/checkpoints/ckpt/.incremental_checkpoint/incremental_model.ckpt-<M>
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from tests.support.deeprec import state as S
from tests.support.deeprec.export import Export, build_export

#: What the older release's user_emb answers unseen ids with: default_value_no_permission, set
#: to -0.25 in the JSON of the `old_ev_model` fixture (tests/integration/deeprec/conftest.py).
OLD_NO_PERMISSION = {"user_emb": -0.25}

@dataclass
class EVModel:
    base: str
    export: Export
    state: S.ModelState
    release: str
    folder: str = "ckpt"
    deltas: list[str] = field(default_factory=list)
    fulls: list[str] = field(default_factory=list)

    @property
    def saved_model_dir(self) -> str:
        return os.path.join(self.base, "saved_model")

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.base, "checkpoints")

    def version_dir(self, folder: str | None = None) -> str:
        return os.path.join(self.checkpoint_dir, folder or self.folder)

    def write_full(self, state: S.ModelState, step: int, folder: str | None = None,
                   **kw) -> str:
        """A full checkpoint in `folder` (a new folder is a new version); its state file last."""
        self.folder = folder or self.folder
        version = self.version_dir()
        prefix = S.write_full(os.path.join(version, f"model.ckpt-{step}"), state, **kw)
        self.fulls.append(prefix)
        self.deltas = []
        S.write_state_file(version, [os.path.basename(prefix)])
        _touch_newer(os.path.join(version, "checkpoint"))
        self.state = state
        return prefix

    def write_delta(self, state: S.ModelState, changed: dict[str, list[int]], step: int) -> str:
        folder = os.path.join(self.version_dir(), ".incremental_checkpoint")
        prefix = S.write_delta(os.path.join(folder, f"incremental_model.ckpt-{step}"), state,
                               changed)
        self.deltas.append(os.path.basename(prefix))
        S.write_state_file(folder, self.deltas)
        self.state = state
        return prefix

    def config(self, **fields) -> dict:
        return {"savedmodel_dir": self.saved_model_dir, "checkpoint_dir": self.checkpoint_dir,
                "model_store_type": "local", "feature_store_type": "memory",
                "signature_name": "serving_default", "update_poll_seconds": 0.2,
                "warmup_iterations": 1, **fields}


def _touch_newer(path: str) -> None:
    now = time.time() + 1
    os.utime(path, (now, now))


def make_ev_model(base: str, release: str = S.NEW_RELEASE, strip_defaults: bool = True,
                  seed: int = 1, **export_kw) -> EVModel:
    export = build_export(os.path.join(base, "saved_model"), release=release,
                          strip_defaults=strip_defaults, **export_kw)
    state = S.random_state(seed)
    model = EVModel(base, export, state, release)
    model.write_full(state, 100)
    return model


