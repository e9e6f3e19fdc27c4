"""CPU time and memory of a process and all its descendants, read from /proc."""

from __future__ import annotations

import os
import threading
import time

import numpy as np

_TICK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return pids


def cpu_seconds(pid: int) -> float:
    """user + system CPU of the process tree rooted at pid (live processes only)."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / _TICK


def rss_mib(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class CpuWindow:
    """The CPU a process tree spent between two wall-clock times, from samples taken every
    `interval` seconds while a load runs: a load generator's start-up (seconds of spawning and
    importing on a busy host, while the server idles) stays out of a figure per request.

        with CpuWindow(pid) as window:
            records = run_load(...)             # (wall start, latency) per call
        cpu = window.between(first_start, last_end)
    """

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.samples.append((time.time(), cpu_seconds(self.pid)))
            if self._done.wait(self.interval):
                self.samples.append((time.time(), cpu_seconds(self.pid)))
                return

    def __enter__(self) -> CpuWindow:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def between(self, start: float, end: float) -> float:
        times = [t for t, _ in self.samples]
        cpus = [c for _, c in self.samples]
        return float(np.interp(end, times, cpus) - np.interp(start, times, cpus))
