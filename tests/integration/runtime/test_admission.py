"""The in-flight request-bytes budget (deeprec_runtime/admission.py), on its own; the servers'
use of it is tested over real gRPC and HTTP in tests/faults/test_overload.py."""

import threading

import pytest

from deeprec_runtime.admission import InflightBytes, admitted
from deeprec_runtime.errors import ResourceExhausted


def test_a_request_that_would_pass_the_budget_is_refused_and_bytes_come_back():
    budget = InflightBytes(100)
    with budget.admit(60):
        with pytest.raises(ResourceExhausted, match="server busy: a request of 41 bytes"):
            with budget.admit(41):
                pass
        with budget.admit(40):
            assert budget.in_flight == 100
    assert budget.in_flight == 0
    with budget.admit(100):
        pass


def test_bytes_come_back_when_the_request_fails():
    budget = InflightBytes(100)
    with pytest.raises(ValueError), budget.admit(70):
        raise ValueError("the model failed")
    assert budget.in_flight == 0


def test_a_request_larger_than_the_budget_says_so():
    with pytest.raises(ResourceExhausted, match="larger than the server's bound.*--max-inflight"):
        with InflightBytes(10).admit(11):
            pass


def test_zero_means_no_bound_and_none_means_no_budget():
    budget = InflightBytes(0)
    with budget.admit(1 << 40), budget.admit(1 << 40):
        assert budget.in_flight == 0
    with admitted(None, 1 << 40):
        pass


def test_concurrent_admissions_never_pass_the_budget():
    budget = InflightBytes(1000)
    peak, lock = [0], threading.Lock()

    def worker():
        for _ in range(2000):
            try:
                with budget.admit(300):
                    with lock:
                        peak[0] = max(peak[0], budget.in_flight)
            except ResourceExhausted:
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 900 and budget.in_flight == 0
