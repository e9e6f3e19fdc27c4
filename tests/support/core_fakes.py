"""A fake loader and source for the lifecycle core: versions are small objects, loads are instant."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from deeprec_runtime.core import (
    BadVersion,
    Delta,
    LoadError,
    ReadWriteGate,
    VersionInfo,
)


@dataclass(eq=False)
class FakeServable:
    name: str
    full_step: int
    version: VersionInfo | None
    delta_step: int = 0
    gate: ReadWriteGate = field(default_factory=ReadWriteGate)
    closed: bool = False


def version(name: str, full_step: int, deltas: Sequence[int] = (), mtime: float = 0.0) -> VersionInfo:
    return VersionInfo(name=name, path=f"/ckpt/{name}", full_step=full_step,
                       full_prefix=f"/ckpt/{name}/model.ckpt-{full_step}",
                       deltas=tuple(Delta(s, f"/ckpt/{name}/.incremental_checkpoint/model.ckpt-{s}")
                                    for s in deltas),
                       mtime=mtime or float(full_step))


class FakeSource:
    def __init__(self, *versions: VersionInfo):
        self.versions = list(versions)
        self.bad: list[BadVersion] = []

    def scan(self) -> tuple[list[VersionInfo], list[BadVersion]]:
        return sorted(self.versions, key=lambda v: v.mtime, reverse=True), list(self.bad)


class FakeLoader:
    """Loads instantly; `fail_load`, `fail_warmup` and `fail_delta` map a version name to the
    exception its next attempts raise."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.deltas: list[tuple[str, int]] = []
        self.unloads: list[str] = []
        self.fail_load: dict[str, Exception] = {}
        self.fail_warmup: dict[str, Exception] = {}
        self.fail_delta: dict[str, Exception] = {}
        self.reload: Callable[[FakeServable], str] = lambda s: ""
        self.retained: list[list[str]] = []
        self.closed = False
        self.unloaded = threading.Condition()

    def load(self, version: VersionInfo | None) -> FakeServable:
        name = version.name if version else "savedmodel"
        self.loads.append(name)
        if name in self.fail_load:
            raise self.fail_load[name]
        return FakeServable(name, version.full_step if version else 0, version)

    def apply_delta(self, servable: FakeServable, delta: Delta) -> None:
        if servable.name in self.fail_delta:
            raise self.fail_delta[servable.name]
        servable.gate.acquire_write()
        try:
            servable.delta_step = delta.step
        finally:
            servable.gate.release_write()
        self.deltas.append((servable.name, delta.step))

    def warm_up(self, servable: FakeServable) -> None:
        if servable.name in self.fail_warmup:
            raise self.fail_warmup[servable.name]

    def unload(self, servable: FakeServable) -> None:
        servable.gate.acquire_write()  # waits for the handles that hold it, as a session close
        try:
            servable.closed = True
        finally:
            servable.gate.release_write()
        with self.unloaded:
            self.unloads.append(servable.name)
            self.unloaded.notify_all()

    def needs_reload(self, servable: FakeServable) -> str:
        return self.reload(servable)

    def retain(self, loaded: Sequence[FakeServable]) -> None:
        self.retained.append([s.name for s in loaded])

    def close(self) -> None:
        self.closed = True

    def wait_unloaded(self, name: str, timeout: float = 5.0) -> None:
        with self.unloaded:
            assert self.unloaded.wait_for(lambda: name in self.unloads, timeout), \
                f"{name} was not unloaded (unloaded: {self.unloads})"


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


__all__ = ["FakeLoader", "FakeServable", "FakeSource", "LoadError", "version", "wait_until"]
