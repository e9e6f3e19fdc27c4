"""The thread that does a full version's heavy work (restore, warmup) at a lower CPU priority.

A new version is loaded while the serving one answers requests on the same cores. Linux nice
values are per thread: this thread runs at LOAD_NICE, so when the cores are busy the scheduler
runs the request threads first and the load, not the requests, takes longer. Only work that holds
nothing a request waits for runs here (the new version serves no request yet). Deltas take the
serving version's write gate, so they stay on the update thread at normal priority: a starved
thread holding the gate would hold requests back. The session is created on the update thread
too: TensorFlow's pool threads inherit the nice value of the thread that starts them, and lanes
may run requests on them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger(__name__)

LOAD_NICE = 10
"""Nice value of the loading thread: ~1/10 of a normal thread's CPU share when both want a core
(CFS weights 110 vs 1024); unprivileged processes may raise their threads' nice values."""

T = TypeVar("T")


class LoadThread:
    """Runs functions, one at a time, on one long-lived thread at nice `nice`."""

    def __init__(self, nice: int = LOAD_NICE):
        self.nice = nice
        #: The thread's Linux thread id, once it has started.
        self.native_id: int | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="deeprec-load",
                                            initializer=self._lower_priority)

    def _lower_priority(self) -> None:
        self.native_id = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, self.native_id, self.nice)
        except OSError as exc:  # e.g. a seccomp profile without setpriority
            log.warning("could not lower the loading thread's priority (%s): versions load at "
                        "normal priority", exc)

    def run(self, fn: Callable[[], T]) -> T:
        """Runs `fn` on the thread and returns its result (or raises its exception) here."""
        return self._executor.submit(fn).result()

    def close(self) -> None:
        self._executor.shutdown(wait=False)
