"""Which version to serve, and what to do next: pure functions, no I/O.

Example: target "latest", versions [checkpoint_3 (new), checkpoint_2 (serving)] -> Load(checkpoint_3);
target "checkpoint_2" while checkpoint_2 is the retained previous version -> SwapBack.
"""

from __future__ import annotations

from dataclasses import dataclass

from deeprec_api.pod import LATEST
from deeprec_runtime.core.versions import VersionInfo


@dataclass(frozen=True)
class LoadedState:
    """What the manager holds for one loaded version."""

    name: str
    full_step: int
    delta_step: int
    mtime: float


@dataclass(frozen=True)
class Action:
    version: VersionInfo | None = None


class Idle(Action):
    """Nothing to do."""


class Load(Action):
    """Load `version` in the background, warm it up, then swap it in."""


@dataclass(frozen=True)
class SwapBack(Action):
    """Serve the retained previous version again (instant rollback)."""

    version: VersionInfo


@dataclass(frozen=True)
class ApplyDeltas(Action):
    """Apply `version`'s deltas newer than the serving delta step, in place."""

    version: VersionInfo


@dataclass(frozen=True)
class Missing(Action):
    """The pinned version does not exist (yet); keep serving and report it."""

    target: str = ""


def load_key(v: VersionInfo) -> tuple[str, int, float]:
    """Identifies one attempt to load a version folder's full checkpoint: a failed load is not
    retried until the folder is rewritten (new full step or new state file)."""
    return (v.name, v.full_step, v.mtime)


def aspired_version(versions: list[VersionInfo], target: str) -> VersionInfo | None:
    """The version the target asks for: newest (versions come newest first) or the named one."""
    if not target or target == LATEST:
        return versions[0] if versions else None
    return next((v for v in versions if v.name == target), None)


def next_action(versions: list[VersionInfo], target: str, current: LoadedState | None,
                previous: LoadedState | None, failed: set[tuple[str, int, float]]) -> Action:
    want = aspired_version(versions, target)
    if want is None:
        return Missing(target=target) if target and target != LATEST and versions else Idle()
    if current and want.name == current.name and want.full_step == current.full_step:
        return ApplyDeltas(want) if want.delta_step > current.delta_step else Idle()
    if previous and want.name == previous.name and want.full_step == previous.full_step:
        return SwapBack(want)
    if load_key(want) in failed:
        return Idle()
    return Load(want)
