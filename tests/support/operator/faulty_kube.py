"""Test only: the operator's API client with a kill switch at named steps of a sync.

The fault tests (tests/e2e/test_operator_faults.py) SIGKILL the operator at each step to prove
that a restart converges, whatever the crash left behind. The hooks sit in this wrapper around the
client, at the calls that make up the steps; the operator's own code has none. Run the operator
with it as `python tests/support/operator/faulty_kube.py --namespace NS ...` (the arguments of
`deeprec-operator`) and DEEPREC_OPERATOR_FAULT_KILL_AT=STEP or STEP@N (die the Nth time the
step is reached, default 1). Steps, in the order a sync reaches them:

- `configmap-applied`, `networkpolicy-applied`, `deployment-applied`, `service-applied`: right
  after that child's server-side apply returned;
- `pod-annotate`: just before one pod's target-version patch is sent; the fan-out runs in
  parallel, so `@2` leaves at least that pod on its old target, whatever the others did;
- `status-write`: just before the status patch is sent;
- `status-written`: right after it, before Events and kopf's own bookkeeping are written.

A SIGKILL (not an exception) is the point: nothing of the process gets to clean up, as with an
OOM kill or a node loss.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from deeprec_operator.versions import TARGET_ANNOTATION

ENV = "DEEPREC_OPERATOR_FAULT_KILL_AT"
STEPS = ("configmap-applied", "networkpolicy-applied", "deployment-applied", "service-applied",
         "pod-annotate", "status-write", "status-written")

log = logging.getLogger("deeprec_operator.faults")


def parse_kill_at(value: str) -> tuple[str, int]:
    step, _, nth = value.strip().partition("@")
    if step not in STEPS:
        raise ValueError(f"{ENV}={value!r}: unknown step; one of {', '.join(STEPS)}")
    return step, int(nth or 1)


def sigkill(step: str, nth: int) -> None:
    log.warning("fault hook: SIGKILL at %s (#%d)", step, nth)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class FaultyKube:
    """Passes every call to `inner`; calls `kill(step, n)` the Nth time `step` is reached."""

    def __init__(self, inner: Any, kill_at: str, kill: Callable[[str, int], None] = sigkill) -> None:
        self._inner = inner
        self._step, self._nth = parse_kill_at(kill_at)
        self._kill = kill
        self._count = 0
        self._lock = threading.Lock()  # exactly one caller is the Nth, even from the parallel fan-out

    def _reached(self, step: str) -> None:
        if step != self._step:
            return
        with self._lock:
            self._count += 1
            if self._count == self._nth:
                self._kill(step, self._nth)

    def get(self, path: str) -> Any:
        return self._inner.get(path)

    def create(self, obj: Mapping[str, Any]) -> Any:
        return self._inner.create(obj)

    def delete(self, path: str, *, uid: str | None = None) -> Any:
        return self._inner.delete(path, uid=uid)

    def apply(self, obj: Mapping[str, Any]) -> Any:
        out = self._inner.apply(obj)
        self._reached(f"{obj['kind'].lower()}-applied")
        return out

    def merge_patch(self, path: str, patch: Mapping[str, Any], *, subresource: str | None = None) -> Any:
        if subresource == "status":
            self._reached("status-write")
            out = self._inner.merge_patch(path, patch, subresource=subresource)
            self._reached("status-written")
            return out
        if "/pods/" in path and TARGET_ANNOTATION in ((patch.get("metadata") or {}).get("annotations") or {}):
            self._reached("pod-annotate")
        return self._inner.merge_patch(path, patch, subresource=subresource)

    def __getattr__(self, name: str) -> Any:  # anything else the client offers (list, request)
        return getattr(self._inner, name)


def main() -> int:
    from deeprec_operator.main import main as operator_main

    kill_at = os.environ.get(ENV, "").strip()
    if kill_at:
        parse_kill_at(kill_at)  # a typo fails at start, not silently never
    return operator_main(sys.argv[1:],
                         wrap_client=(lambda kube: FaultyKube(kube, kill_at)) if kill_at else None)


if __name__ == "__main__":
    sys.exit(main())
