"""The in-flight request-bytes budget (`--max-inflight-bytes`) shared by the Python servers.

Each gRPC call (grpcio's server) and REST inference request holds its body's size from the moment
it is admitted until its answer is ready; a call whose body would push the sum past the budget is
refused at once (ResourceExhausted: gRPC RESOURCE_EXHAUSTED, HTTP 429) instead of adding its
memory to the process. Example: with the default 1 GiB and 64 MiB requests, 16 are in progress
at most; the 17th is refused until one of them ends. REST admits a request by its Content-Length,
before reading the body. With the native gRPC front end the counter lives in gRPC C++, which
admits its calls there; REST takes its bytes from the same counter (native/server.py), so the
process has one budget whichever port a request came in on.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from deeprec_runtime.errors import ResourceExhausted

#: Default --max-inflight-bytes.
DEFAULT_MAX_INFLIGHT_BYTES = 1 << 30


class InflightBytes:
    """Request bytes in progress, bounded by `limit` (0: no bound, nothing is counted)."""

    def __init__(self, limit: int = DEFAULT_MAX_INFLIGHT_BYTES):
        self.limit = limit
        self.in_flight = 0
        """Bytes of the requests admitted and not yet answered."""
        self._lock = threading.Lock()

    def try_acquire(self, nbytes: int) -> bool:
        if not self.limit:
            return True
        with self._lock:
            if self.in_flight + nbytes > self.limit:
                return False
            self.in_flight += nbytes
            return True

    def release(self, nbytes: int) -> None:
        if not self.limit:
            return
        with self._lock:
            self.in_flight -= nbytes

    @contextlib.contextmanager
    def admit(self, nbytes: int) -> Iterator[None]:
        """Holds `nbytes` of the budget for the block, or raises ResourceExhausted at once."""
        if not self.try_acquire(nbytes):
            raise ResourceExhausted(self._refusal(nbytes))
        try:
            yield
        finally:
            self.release(nbytes)

    def check(self, nbytes: int) -> None:
        """Raises ResourceExhausted if `nbytes` would not fit now, without holding anything (an
        early answer, e.g. to a client waiting for "100 Continue"; admit() still decides)."""
        if self.limit and self.in_flight + nbytes > self.limit:
            raise ResourceExhausted(self._refusal(nbytes))

    def _refusal(self, nbytes: int) -> str:
        if nbytes > self.limit:
            return (f"request of {nbytes} bytes is larger than the server's bound on request "
                    f"bytes in progress ({self.limit}, --max-inflight-bytes)")
        return (f"server busy: a request of {nbytes} bytes would bring the request bytes in "
                f"progress past the server's bound ({self.limit}, --max-inflight-bytes); "
                "retry later")


@contextlib.contextmanager
def admitted(budget: InflightBytes | None, nbytes: int) -> Iterator[None]:
    """`budget.admit(nbytes)`, or nothing when there is no budget."""
    if budget is None:
        yield
        return
    with budget.admit(nbytes):
        yield
