"""cpusets parsing, even splits, and pinning real threads (read back from /proc)."""

from __future__ import annotations

import os
import threading

import pytest

from deeprec_runtime import cpus
from deeprec_runtime.errors import ConfigError


@pytest.mark.parametrize("text, sessions, expected", [
    ("0-3;4-7", 2, ({0, 1, 2, 3}, {4, 5, 6, 7})),
    ("0,1;2,3", 2, ({0, 1}, {2, 3})),
    ("0;1", 2, ({0}, {1})),
    ("0-1,6;7", 2, ({0, 1, 6}, {7})),
    (" 0 - 2 ; 3 ;", 2, ({0, 1, 2}, {3})),
])
def test_both_seed_formats_parse(text, sessions, expected):
    got = cpus.parse_cpusets(text, sessions, allowed=range(8))
    assert [set(g) for g in got] == [set(e) for e in expected]


@pytest.mark.parametrize("text, sessions, words", [
    ("0-3", 2, ["1 group(s)", "2 session(s)"]),
    ("0;1;2", 2, ["3 group(s)"]),
    ("0;9", 2, ["group 1", "CPU(s) 9", "0-7"]),
    ("a;b", 2, ["not a CPU list"]),
    ("3-1;4", 2, ["backwards"]),
])
def test_bad_cpusets_name_the_field(text, sessions, words):
    with pytest.raises(ConfigError) as err:
        cpus.parse_cpusets(text, sessions, allowed=range(8))
    assert err.value.field == "cpusets"
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("allowed, sessions, expected", [
    (range(8), 2, [{0, 1, 2, 3}, {4, 5, 6, 7}]),
    (range(5), 2, [{0, 1, 2}, {3, 4}]),
    ([2, 3, 7], 3, [{2}, {3}, {7}]),
    ([0, 1], 4, [{0}, {1}, {0}, {1}]),  # more sessions than cores: shared round robin
])
def test_empty_cpusets_split_allowed_cpus_evenly(allowed, sessions, expected):
    assert [set(g) for g in cpus.parse_cpusets("", sessions, allowed)] == expected


def test_format_round_trips():
    assert cpus.format_cpu_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert cpus.parse_cpu_list("0-2,5,7-8") == {0, 1, 2, 5, 7, 8}


def test_pin_moves_a_real_thread_and_proc_shows_it():
    allowed = sorted(os.sched_getaffinity(0))
    target = {allowed[-1]}
    ready, done = threading.Event(), threading.Event()
    tid = []

    def worker():
        tid.append(threading.get_native_id())
        ready.set()
        done.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    ready.wait(5)
    try:
        assert cpus.pin(tid, target) == 1
        assert cpus.thread_cpus(tid[0]) == target
        assert cpus.thread_cpus(threading.get_native_id()) == set(allowed)  # caller untouched
    finally:
        done.set()
        t.join()


# --- CPU budget (default gRPC workers) ---------------------------------------------------------
def _cgroup(tmp_path, v2: str | None = None, v1: tuple[str, str] | None = None) -> str:
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    return str(tmp_path)


@pytest.mark.parametrize("v2, v1, expected", [
    ("max 100000\n", None, None),             # no limit: the allowed CPUs
    ("150000 100000\n", None, 2),             # 1.5 CPUs -> 2
    ("50000 100000\n", None, 1),              # half a CPU -> 1
    (None, ("100000", "100000"), 1),          # cgroup v1, 1 CPU
    (None, ("-1", "100000"), None),           # cgroup v1, no limit
    (None, None, None),                       # no cgroup files at all
])
def test_cpu_budget_is_affinity_capped_by_the_quota(tmp_path, v2, v1, expected):
    allowed = len(os.sched_getaffinity(0))
    budget = cpus.cpu_budget(_cgroup(tmp_path, v2, v1))
    assert budget == (allowed if expected is None else min(allowed, expected))


def test_default_workers_follow_the_cpu_budget(monkeypatch):
    from deeprec_runtime import app

    monkeypatch.setattr(cpus, "cpu_budget", lambda: 1)
    assert app.default_workers() == app.MIN_WORKERS
    monkeypatch.setattr(cpus, "cpu_budget", lambda: 8)
    assert app.default_workers() == 16


def test_batching_raises_the_default_workers_to_fill_its_batches(monkeypatch):
    """A waiting call holds its worker: with batching on there must be workers for a full batch
    of single-row calls besides the batches running."""
    from deeprec_runtime import app
    from deeprec_runtime.config import BatchingConfig

    monkeypatch.setattr(cpus, "cpu_budget", lambda: 2)
    assert app.default_workers(BatchingConfig()) == 4  # off: the CPU rule alone
    assert app.default_workers(BatchingConfig(max_batch_size=8, num_batch_threads=2)) == 24
    assert app.default_workers(BatchingConfig(max_batch_size=1)) == 4
    assert app.default_workers(BatchingConfig(max_batch_size=4096)) == app.MAX_BATCHING_WORKERS
