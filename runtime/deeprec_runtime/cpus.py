"""CPU sets for the session group: parse `cpusets`, split the allowed CPUs, pin threads.

Linux only (sched_setaffinity and /proc). Kubernetes' static CPU manager gives a Guaranteed pod
exclusive cores through its cgroup cpuset, which `os.sched_getaffinity(0)` reports: that set is
what lanes may use, and what an empty `cpusets` is split over.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

from deeprec_runtime.errors import ConfigError

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def allowed_cpus() -> frozenset[int]:
    """The CPUs this process may run on (its cgroup cpuset and any taskset)."""
    return frozenset(os.sched_getaffinity(0))


def cpu_budget(root: str = "/sys/fs/cgroup") -> int:
    """How many CPUs' worth of time this process may use: the allowed CPUs, capped by the
    cgroup's CFS quota (a Kubernetes CPU limit without the static CPU manager shows every node
    CPU in the affinity mask but only `limit` CPUs of time). At least 1."""
    cpus = len(allowed_cpus())
    quota = _cfs_quota(root)
    if quota is not None:
        cpus = min(cpus, max(1, -(-quota[0] // quota[1])))  # ceil(quota / period)
    return max(1, cpus)


def _cfs_quota(root: str) -> tuple[int, int] | None:
    """(quota, period) in microseconds from cgroup v2 cpu.max or v1 cpu.cfs_*; None: no limit."""
    try:
        with open(os.path.join(root, "cpu.max")) as fh:
            quota, period = fh.read().split()[:2]
        return None if quota == "max" else (int(quota), int(period))
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as fh:
            quota_us = int(fh.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as fh:
            period_us = int(fh.read())
    except (OSError, ValueError):
        return None
    return (quota_us, period_us) if quota_us > 0 and period_us > 0 else None


def parse_cpu_list(text: str, field: str = "cpusets") -> frozenset[int]:
    """"0-3,6" -> {0, 1, 2, 3, 6} (the kernel's cpu-list format)."""
    cpus: set[int] = set()
    for part in text.split(","):
        m = _RANGE.match(part)
        if not m:
            raise ConfigError(field, f"{text!r} is not a CPU list; write e.g. '0-3' or '0,1,2'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ConfigError(field, f"range {part.strip()!r} runs backwards")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


def parse_cpusets(text: str, sessions: int, allowed: Iterable[int] | None = None,
                  ) -> tuple[frozenset[int], ...]:
    """DeepRec's `cpusets`: one CPU list per session, separated by ';' ("0-3;4-7" or
    "0,1;2,3"). Every CPU must be one this process may use; an empty string splits the allowed
    CPUs evenly (see split_cpus). Raises ConfigError naming `cpusets`."""
    allowed_set = frozenset(allowed) if allowed is not None else allowed_cpus()
    if not text.strip():
        return split_cpus(allowed_set, sessions)
    groups = [g for g in text.strip().strip(";").split(";")]
    if len(groups) != sessions:
        raise ConfigError("cpusets", f"{text!r} has {len(groups)} group(s) but the group has "
                                     f"{sessions} session(s); give one ';'-separated group each")
    sets = tuple(parse_cpu_list(g) for g in groups)
    for i, cpus in enumerate(sets):
        outside = sorted(cpus - allowed_set)
        if outside:
            raise ConfigError("cpusets", f"group {i} ({groups[i].strip()!r}) uses CPU(s) "
                                         f"{format_cpu_list(outside)}, outside the CPUs this "
                                         f"process may use ({format_cpu_list(allowed_set)})")
    return sets


def split_cpus(allowed: Iterable[int], sessions: int) -> tuple[frozenset[int], ...]:
    """Splits the allowed CPUs into `sessions` contiguous, near-equal groups. With fewer CPUs
    than sessions, sessions share CPUs round robin (each still gets at least one)."""
    cpus = sorted(allowed)
    if not cpus:
        raise ConfigError("cpusets", "this process may use no CPU at all")
    if sessions <= len(cpus):
        base, extra = divmod(len(cpus), sessions)
        out, start = [], 0
        for i in range(sessions):
            size = base + (1 if i < extra else 0)
            out.append(frozenset(cpus[start:start + size]))
            start += size
        return tuple(out)
    return tuple(frozenset({cpus[i % len(cpus)]}) for i in range(sessions))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5"."""
    ordered = sorted(cpus)
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def threads() -> dict[int, str]:
    """tid -> thread name (comm) for every thread of this process."""
    out: dict[int, str] = {}
    for entry in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{entry}/comm") as fh:
                out[int(entry)] = fh.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
    return out


def thread_cpus(tid: int) -> frozenset[int]:
    """The CPUs a thread may run on, as the kernel reports it (Cpus_allowed_list)."""
    with open(f"/proc/self/task/{tid}/status") as fh:
        for line in fh:
            if line.startswith("Cpus_allowed_list:"):
                return parse_cpu_list(line.split(":", 1)[1].strip())
    raise OSError(f"no Cpus_allowed_list for thread {tid}")


def pin(tids: Sequence[int], cpus: Iterable[int]) -> int:
    """Pins threads to `cpus`; returns how many were pinned (threads that ended are skipped)."""
    cpu_set = set(cpus)
    pinned = 0
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpu_set)
            pinned += 1
        except ProcessLookupError:
            continue
    return pinned


def pin_current_thread(cpus: Iterable[int]) -> None:
    os.sched_setaffinity(0, set(cpus))
