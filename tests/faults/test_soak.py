"""A short soak (bench/soak.py): 20 version swaps, full and deltas alternating, under steady
load, with and without the retained previous version. Nothing may leak: resident memory grows
under 10% after warm-up (a leaked 200k x 16 version is about 13 MB of a ~700 MB process, so
ten leaked full versions would show), no file descriptor or thread growth, every replaced
version closed, reported END and collected, and no failed request."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

_BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "soak.py")


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak", _BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("retain_previous", [False, True])
def test_twenty_swaps_under_load_leak_nothing(tmp_path, retain_previous):
    result = _soak_module().run_soak(str(tmp_path), swaps=20, num_ids=200_000, clients=2,
                                     retain_previous=retain_previous, warmup_swaps=4)
    print(result.report())
    assert result.failed == 0, result.failures
    assert result.answered > 100
    assert result.full_swaps == 10 and result.delta_swaps == 10
    assert result.replaced == (9 if retain_previous else 10)
    assert result.not_closed == [] and result.not_end == []
    assert result.still_referenced == 0
    assert result.rss_growth < 0.10, result.report()
    assert result.end.fds <= result.warm.fds
    assert result.end.threads <= result.warm.threads
