"""The states a version goes through, and the events the manager publishes about them.

A version found by the source is NEW; the manager makes it LOADING (fetch, restore, deltas,
warmup), then SERVING at the swap. The version it replaces becomes AVAILABLE (retained for an
instant rollback, answers requests that name it) or UNLOADING, then END once its last request has
released it. A version that cannot be loaded is ERROR until its folder is rewritten. The names are
the ones the status API and the metrics have always shown (TF Serving's ManagerState, with
SERVING split out of AVAILABLE because we serve one version and retain one).

    NEW -> LOADING -> SERVING <-> AVAILABLE      (swap, rollback)
              |          |            |
              v          v            v
            ERROR    UNLOADING -> END <-
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal


class VersionState(str, Enum):
    NEW = "NEW"
    LOADING = "LOADING"
    SERVING = "SERVING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"
    ERROR = "ERROR"

    def __str__(self) -> str:  # the name the status API shows, on every Python version
        return self.value


@dataclass(frozen=True)
class StateEvent:
    """A version entered `state` (or stayed in it with a new step or error)."""

    version: str
    state: VersionState
    full_step: int
    delta_step: int
    error: str = ""


UpdateKind = Literal["load", "delta", "swap_back", "unload"]


@dataclass(frozen=True)
class UpdateEvent:
    """How one update went (a load, a delta, a rollback, an unload): metrics count these."""

    kind: UpdateKind
    version: str
    ok: bool
    seconds: float
    error: str = ""
