"""The read/write gate of one loaded version.

Requests read (many at once, through a ServableHandle); a delta apply or an unload writes (alone).
A writer that is waiting goes first, so steady traffic never starves an update, and an unload
waits for the last request that holds the version.
"""

from __future__ import annotations

import threading


class ReadWriteGate:
    """Many readers (requests) or one writer (delta apply, unload); writers go first once waiting,
    so an update is never starved by steady traffic."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    def acquire_read(self) -> None:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True

    def release_write(self) -> None:
        with self._cond:
            self._writing = False
            self._cond.notify_all()

    @property
    def readers(self) -> int:
        return self._readers
