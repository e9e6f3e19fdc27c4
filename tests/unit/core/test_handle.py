"""ServableHandle on a version that is not published yet, and the gate behind every handle."""

from __future__ import annotations

import threading

import pytest

from deeprec_runtime.core import ServableHandle
from tests.support.core_fakes import FakeServable, wait_until


def test_a_handle_of_a_servable_holds_its_gate_for_the_block_only():
    servable = FakeServable("v1", 10, None)
    with ServableHandle.of(servable) as handle:
        assert handle.servable is servable and handle.version == "v1"
        assert servable.gate.readers == 1
    assert servable.gate.readers == 0


def test_a_handle_is_entered_once():
    handle = ServableHandle.of(FakeServable("v1", 10, None))
    with handle, pytest.raises(RuntimeError, match="entered once"):
        handle.__enter__()


def test_a_waiting_writer_goes_before_new_readers():
    servable = FakeServable("v1", 10, None)
    order = []

    def writer():
        servable.gate.acquire_write()
        order.append("write")
        servable.gate.release_write()

    def reader():
        with ServableHandle.of(servable):
            order.append("read")

    with ServableHandle.of(servable):
        w = threading.Thread(target=writer)
        w.start()
        wait_until(lambda: servable.gate._writers_waiting == 1)
        r = threading.Thread(target=reader)
        r.start()
        assert order == []
    w.join(5)
    r.join(5)
    assert order == ["write", "read"]
