"""Bounded retries with exponential backoff and full jitter for remote store calls.

Example: `call_with_retry(lambda: bucket.get_object(key).read(), is_transient=oss_transient,
policy=RetryPolicy(), what="GET oss://b/k")` tries up to `policy.attempts` times, sleeping a random
time in [0, min(max_delay, base_delay * 2**n)] between tries (full jitter, so that many pods hit by
the same outage do not retry in lockstep), and never for longer than `policy.deadline` in all.
Only failures the caller classifies as transient (HTTP 5xx, timeouts, connection resets) are
retried; anything else is raised at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    """Tries in all, the first included."""
    base_delay: float = 0.2
    """Upper bound of the first backoff, seconds; doubles on each retry."""
    max_delay: float = 5.0
    """Cap on one backoff."""
    deadline: float = 120.0
    """No retry starts later than this many seconds after the first try."""

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (0 = the first retry)."""
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * (2 ** retry)))


class RetriesExhausted(Exception):
    """A transient failure outlasted the retry policy; `last` is the final error."""

    def __init__(self, what: str, tries: int, last: BaseException):
        super().__init__(f"{what}: still failing after {tries} tries: {describe(last)}")
        self.what = what
        self.tries = tries
        self.last = last


def describe(exc: BaseException) -> str:
    """A one-line description of a transport error for logs (no request headers, so no secrets)."""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def call_with_retry(fn: Callable[[], T], *, is_transient: Callable[[BaseException], bool],
                    what: str, policy: RetryPolicy | None = None,
                    sleep: Callable[[float], None] = time.sleep,
                    rng: random.Random | None = None) -> T:
    """Runs `fn`, retrying transient failures; raises RetriesExhausted when they outlast the policy,
    and any other exception unchanged."""
    policy = policy or RetryPolicy()
    rng = rng or random.Random()  # nosec B311  # backoff jitter, not security
    started = time.monotonic()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            tries = attempt + 1
            if tries >= policy.attempts or time.monotonic() - started >= policy.deadline:
                raise RetriesExhausted(what, tries, exc) from exc
            delay = policy.backoff(attempt, rng)
            log.warning("%s failed (%s); retry %d/%d in %.2fs", what, describe(exc), tries,
                        policy.attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable: attempts >= 1")
