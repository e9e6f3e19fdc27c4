"""Test hook: SIGKILL the operator at a named step of a reconcile, to prove it converges after a crash.

Off unless the environment variable DEEPREC_OPERATOR_FAULT_KILL_AT names a step; production never
sets it. The value is `STEP` or `STEP@N` (die the Nth time the step is reached, default 1), e.g.
`deployment-applied` or `pod-annotate@2`. Steps, in the order a reconcile reaches them:

- `configmap-applied`, `deployment-applied`, `service-applied`: right after that child was applied;
- `pod-annotate`: just before one pod's target-version patch is sent, by the fan-out of a
  reconcile or a version change, or by the pod watcher (which annotates the pods it sees first
  after a restart); the fan-out runs in parallel, so `@2` leaves at least that pod on its old
  target, whatever the others did;
- `status-write`: just before the status patch is sent;
- `status-written`: right after it, before Events and kopf's own bookkeeping are written.

A SIGKILL (not an exception) is the point: nothing of the process gets to clean up, as with an
OOM kill or a node loss.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

ENV = "DEEPREC_OPERATOR_FAULT_KILL_AT"
STEPS = ("configmap-applied", "deployment-applied", "service-applied", "pod-annotate",
         "status-write", "status-written")

log = logging.getLogger(__name__)
_lock = threading.Lock()
_counts: dict[str, int] = {}


def _armed() -> tuple[str, int] | None:
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    step, _, nth = value.partition("@")
    if step not in STEPS:
        raise ValueError(f"{ENV}={value!r}: unknown step; one of {', '.join(STEPS)}")
    return step, int(nth or 1)


def reached(step: str) -> None:
    """Called by the operator at each step; kills the process when the hook is armed for it."""
    armed = _armed()
    if armed is None or armed[0] != step:
        return
    with _lock:  # exactly one caller is the Nth, even from the parallel fan-out
        _counts[step] = _counts.get(step, 0) + 1
        if _counts[step] != armed[1]:
            return
        log.warning("fault hook: SIGKILL at %s (#%d)", step, armed[1])
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
