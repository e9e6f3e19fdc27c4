"""The Loader contract: how the manager turns a version into something that serves, and back.

The manager decides what to load and when; a loader knows how. Example: the TensorFlow loader
(model/tf_loader.py) fetches a version's files, imports the SavedModel graph, restores the full
checkpoint in a session group and warms it up; the tests' fake loader returns a small object. A
loader is constructed once per model and does the heavy work in `load`, on the manager's update
thread (it may hand parts to its own low-priority executor).

Failures are told by exception type: LoadError means this version cannot be served (it is not
tried again until its folder changes), TransientLoadError that it may work on the next poll (a
store outage, a half-copied file). Anything else is a bug: the manager logs it and polls again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from deeprec_runtime.core.gate import ReadWriteGate
from deeprec_runtime.core.versions import Delta, VersionInfo


class LoadError(Exception):
    """The version cannot be served as it is (bad files, a failing warmup request)."""


class TransientLoadError(LoadError):
    """The version could not be loaded now but may be on the next poll (a store outage)."""


class Servable(Protocol):
    """What the manager and request handles need of one loaded version."""

    @property
    def name(self) -> str: ...
    @property
    def full_step(self) -> int: ...
    @property
    def delta_step(self) -> int: ...
    @property
    def version(self) -> VersionInfo | None:
        """The version it was loaded from; None for the SavedModel's own variables."""
    @property
    def gate(self) -> ReadWriteGate: ...
    @property
    def closed(self) -> bool:
        """True once unloaded: a request that reaches it takes the serving version instead."""


S = TypeVar("S", bound=Servable)


class Loader(Protocol[S]):
    """Loads, updates and unloads the versions of one model."""

    def load(self, version: VersionInfo | None) -> S:
        """Builds the version (None: the SavedModel's own variables) without its deltas; raises
        LoadError or TransientLoadError."""

    def apply_delta(self, servable: S, delta: Delta) -> None:
        """Applies one delta in place, atomically for requests (under the servable's write gate);
        raises LoadError and leaves the servable as it was. A failed delta is tried again on the
        next poll, so the type of LoadError does not matter here."""

    def warm_up(self, servable: S) -> None:
        """Runs requests on a loaded version before it serves; LoadError unless it can serve."""

    def unload(self, servable: S) -> None:
        """Frees the version; blocks until no request holds it (takes its write gate)."""

    def needs_reload(self, servable: S) -> str:
        """Why the serving version must be loaded again ("" when it need not): it lost state it
        cannot serve without (a feature store that restarted empty)."""

    def retain(self, loaded: Sequence[S]) -> None:
        """Told of the loaded versions after each swap: frees what only other versions used."""

    def close(self) -> None:
        """Frees what the loader shares between versions; called once every version is closed."""
