"""What a version is, as the lifecycle sees it: a name, a full checkpoint and its deltas.

Example: the folder `checkpoint_2` holding `model.ckpt-200` and the incremental checkpoints 210 and
220 is `VersionInfo("checkpoint_2", full_step=200, deltas=(Delta(210, ...), Delta(220, ...)))`; its
delta step is 220. Sources produce these (model/source.py reads them from a store), policies and
managers compare them, loaders turn them into servables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SAVEDMODEL_VERSION = "savedmodel"
"""Version name used when no checkpoint_dir is configured: the SavedModel's own variables."""


@dataclass(frozen=True)
class Delta:
    """One incremental checkpoint: cumulative since its version's full checkpoint."""

    step: int
    prefix: str


@dataclass(frozen=True)
class VersionInfo:
    """One version folder as found on the store."""

    name: str
    path: str
    full_step: int
    full_prefix: str
    deltas: tuple[Delta, ...] = ()
    mtime: float = 0.0
    problems: tuple[str, ...] = field(default=(), compare=False)
    """Why parts of the folder were ignored (incomplete or bad files); shown to operators."""

    @property
    def delta_step(self) -> int:
        return self.deltas[-1].step if self.deltas else 0

    def deltas_after(self, step: int) -> tuple[Delta, ...]:
        return tuple(d for d in self.deltas if d.step > step)


@dataclass(frozen=True)
class BadVersion:
    """A folder that looks like a version but cannot be served."""

    name: str
    reason: str
