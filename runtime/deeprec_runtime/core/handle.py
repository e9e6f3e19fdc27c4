"""ServableHandle: the one way a request holds a version.

    with manager.hold() as handle:          # the serving version
        handle.servable.run(...)
    with manager.hold("checkpoint_2") as handle:   # a loaded version by name
        ...

Entering takes the version's gate for reading, leaving (also on an exception) releases it; the
manager never closes a version while a handle holds it, and a delta waits for the handles that
hold the version before it changes any parameter. Handles are short-lived: one request.
`ServableHandle.of(servable)` holds a version the manager has not published yet (warmup, the
native plan's check request).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Generic

from deeprec_runtime.core.loader import S


class ServableHandle(Generic[S]):
    def __init__(self, acquire: Callable[[], S]):
        self._acquire = acquire
        self._servable: S | None = None

    @classmethod
    def of(cls, servable: S) -> ServableHandle[S]:
        """A handle on `servable` itself, whether or not it is serving."""
        def acquire() -> S:
            servable.gate.acquire_read()
            return servable

        return cls(acquire)

    def __enter__(self) -> ServableHandle[S]:
        if self._servable is not None:
            raise RuntimeError("a ServableHandle is entered once")
        self._servable = self._acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        servable, self._servable = self._servable, None
        if servable is not None:
            servable.gate.release_read()

    @property
    def servable(self) -> S:
        """The held version; only inside the `with` block."""
        if self._servable is None:
            raise RuntimeError("the ServableHandle is not held (use it in a with block)")
        return self._servable

    @property
    def version(self) -> str:
        """The name of the held version: the one that answers the request."""
        return self.servable.name
