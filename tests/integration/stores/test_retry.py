"""Retry policy: exponential backoff with full jitter, bounded by attempts and a deadline."""

from __future__ import annotations

import random

import pytest

from deeprec_runtime.store.retry import RetriesExhausted, RetryPolicy, call_with_retry


class Flaky:
    def __init__(self, failures: int, exc: Exception):
        self.failures, self.exc, self.calls = failures, exc, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


def test_backoff_is_jittered_within_an_exponentially_growing_cap():
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)
    rng = random.Random(7)
    for retry, cap in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)]:
        delays = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8  # full jitter spreads over the whole range
        assert len(set(delays)) > 150


def test_transient_failures_are_retried_until_success_with_backoff_between_tries():
    slept: list[float] = []
    fn = Flaky(3, TimeoutError("slow"))
    result = call_with_retry(fn, is_transient=lambda e: isinstance(e, TimeoutError), what="GET x",
                             policy=RetryPolicy(attempts=5, base_delay=0.1), sleep=slept.append)
    assert result == "ok" and fn.calls == 4 and len(slept) == 3


def test_retries_are_bounded_by_attempts():
    fn = Flaky(100, ConnectionResetError("reset"))
    with pytest.raises(RetriesExhausted) as info:
        call_with_retry(fn, is_transient=lambda e: True, what="GET oss://b/k",
                        policy=RetryPolicy(attempts=4), sleep=lambda s: None)
    assert fn.calls == 4
    assert "GET oss://b/k" in str(info.value) and "after 4 tries" in str(info.value)
    assert isinstance(info.value.last, ConnectionResetError)


def test_retries_stop_at_the_deadline():
    fn = Flaky(100, TimeoutError())
    with pytest.raises(RetriesExhausted):
        call_with_retry(fn, is_transient=lambda e: True, what="x",
                        policy=RetryPolicy(attempts=100, deadline=0.0), sleep=lambda s: None)
    assert fn.calls == 1


def test_permanent_errors_are_raised_at_once():
    fn = Flaky(1, PermissionError("denied"))
    with pytest.raises(PermissionError):
        call_with_retry(fn, is_transient=lambda e: isinstance(e, TimeoutError), what="x",
                        sleep=lambda s: pytest.fail("must not sleep"))
    assert fn.calls == 1
