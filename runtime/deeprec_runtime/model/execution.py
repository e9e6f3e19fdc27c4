"""Inline or pooled execution, chosen per loaded version by measuring both at warmup.

TensorFlow can run a step's kernels on an inter-op thread pool or in the calling thread
(`RunOptions.inter_op_thread_pool = -1`, DeepRec's `enable_inline_execute`). For small
recommendation graphs the pool costs more than the kernels: each run wakes pool threads that
then spin looking for work (measured on the Wide&Deep demo, batch 1: 143 us of CPU per run on the
pool, 48 us inline). A graph with wide independent branches and large batches can still gain
from the pool. So, unless the config says `enable_inline_execute: true` (always inline), a new
version runs the warmup request both ways and keeps inline when it costs less CPU per run and
is not much slower.

Rule: inline when its process CPU per run <= the pool's and its wall time per run <=
WALL_TOLERANCE x the pool's. Process CPU (not thread CPU) is compared because pool threads'
work counts too; the modes are measured in alternating rounds so that other load on the machine
(the previous version still serving) falls on both alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

WALL_TOLERANCE = 1.25
"""Inline may be at most this much slower per run (wall clock) than the pool."""
ROUNDS = 3
"""Alternating measurement rounds per mode."""
ROUND_SECONDS = 0.03
"""Each round runs the request until this much wall time has passed (at least MIN_RUNS runs)."""
MIN_RUNS = 3


@dataclass(frozen=True)
class Cost:
    cpu: float
    """Process CPU seconds per run."""
    wall: float
    """Wall seconds per run."""


@dataclass(frozen=True)
class Choice:
    inline: bool
    pool: Cost
    inline_cost: Cost

    def describe(self) -> str:
        return (f"{'inline' if self.inline else 'inter-op pool'} (CPU/run: pool "
                f"{self.pool.cpu * 1e6:.0f} us, inline {self.inline_cost.cpu * 1e6:.0f} us; "
                f"wall/run: pool {self.pool.wall * 1e6:.0f} us, inline "
                f"{self.inline_cost.wall * 1e6:.0f} us)")


def decide(pool: Cost, inline: Cost) -> bool:
    """The rule, as a pure function."""
    return inline.cpu <= pool.cpu and inline.wall <= WALL_TOLERANCE * pool.wall


def _round(run: Callable[[], object]) -> tuple[int, float, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    n = 0
    while n < MIN_RUNS or time.perf_counter() - wall0 < ROUND_SECONDS:
        run()
        n += 1
    return n, time.process_time() - cpu0, time.perf_counter() - wall0


def measure(set_inline: Callable[[bool], None], run: Callable[[], object]) -> Choice:
    """Times `run` with set_inline(False) and set_inline(True) in alternating rounds (one
    untimed run first in each mode, so prepared callables exist) and leaves the winner set."""
    totals = {False: [0, 0.0, 0.0], True: [0, 0.0, 0.0]}
    for mode in (False, True):
        set_inline(mode)
        run()
    for _ in range(ROUNDS):
        for mode in (False, True):
            set_inline(mode)
            n, cpu, wall = _round(run)
            t = totals[mode]
            t[0] += n
            t[1] += cpu
            t[2] += wall
    pool = Cost(totals[False][1] / totals[False][0], totals[False][2] / totals[False][0])
    inline = Cost(totals[True][1] / totals[True][0], totals[True][2] / totals[True][0])
    choice = Choice(decide(pool, inline), pool, inline)
    set_inline(choice.inline)
    return choice
