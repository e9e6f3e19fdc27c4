"""CPU facts the session-group tests read: two CPUs this process may use, and one thread's CPU
time and last CPU from /proc."""

from __future__ import annotations

import os


def two_cpus() -> tuple[int, int]:
    allowed = sorted(os.sched_getaffinity(0))
    assert len(allowed) >= 2, f"session group binding tests need 2 CPUs, this process has {allowed}"
    return allowed[0], allowed[1]


def cpu_ticks(tid: int) -> tuple[int, int]:
    """(nanoseconds on CPU, CPU it last ran on) of one thread, from /proc/self/task/<tid>."""
    with open(f"/proc/self/task/{tid}/schedstat") as fh:
        ran_ns = int(fh.read().split()[0])
    with open(f"/proc/self/task/{tid}/stat") as fh:
        last_cpu = int(fh.read().rsplit(")", 1)[1].split()[36])
    return ran_ns, last_cpu
