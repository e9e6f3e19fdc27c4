"""The lifecycle core with a fake loader: swaps, rollback, retirement, failures, retries, deltas.

Each test drives the manager one poll at a time (`poll_once`), so no update thread runs; only
the unload of a replaced version runs on its own thread, as it waits for that version's handles.
"""

from __future__ import annotations

import threading

import pytest

from deeprec_runtime.core import (
    SAVEDMODEL_VERSION,
    LoadError,
    Manager,
    NoVersionServing,
    StateEvent,
    TransientLoadError,
    UpdateEvent,
    VersionNotLoaded,
    VersionState,
)
from tests.support.core_fakes import FakeLoader, FakeSource, version, wait_until


def make(*versions, target="latest", retain_previous=True):
    loader, source = FakeLoader(), FakeSource(*versions)
    box = {"target": target}
    manager = Manager(loader, source, lambda: box["target"], poll_seconds=0.01,
                      retain_previous=retain_previous, where="/ckpt")
    states: list[StateEvent] = []
    updates: list[UpdateEvent] = []
    manager.states.subscribe(states.append)
    manager.updates.subscribe(updates.append)
    return manager, loader, source, box, states, updates


def serving(manager) -> str:
    with manager.hold() as handle:
        return handle.version


def state_of(manager, name: str) -> VersionState:
    return manager.snapshot()[1][name].state


def test_first_poll_loads_the_newest_version_and_serves_it():
    manager, loader, _, _, states, updates = make(version("v1", 10), version("v2", 20))
    assert not manager.ready
    manager.poll_once()
    assert manager.ready and serving(manager) == "v2" and loader.loads == ["v2"]
    assert [(e.version, e.state) for e in states] == [("v2", VersionState.LOADING),
                                                      ("v2", VersionState.SERVING)]
    assert [(u.kind, u.version, u.ok) for u in updates] == [("load", "v2", True)]
    manager.poll_once()
    assert loader.loads == ["v2"]  # nothing new: idle


def test_a_new_version_is_swapped_in_and_the_previous_one_retained():
    manager, loader, source, _, _, _ = make(version("v1", 10))
    manager.poll_once()
    source.versions.append(version("v2", 20))
    manager.poll_once()
    assert serving(manager) == "v2"
    assert [s.name for s in manager.loaded()] == ["v2", "v1"]
    assert state_of(manager, "v1") is VersionState.AVAILABLE
    with manager.hold("v1") as handle:  # the retained one still answers requests that name it
        assert handle.version == "v1"
    assert loader.unloads == [] and loader.retained[-1] == ["v2", "v1"]


def test_rollback_to_the_retained_version_loads_nothing():
    manager, loader, source, box, states, updates = make(version("v1", 10), version("v2", 20))
    manager.poll_once()
    box["target"] = "v1"
    manager.poll_once()  # v1 is not loaded: load it
    box["target"] = "v2"
    manager.poll_once()  # v2 is retained: swap back
    assert serving(manager) == "v2" and loader.loads == ["v2", "v1"]
    assert state_of(manager, "v1") is VersionState.AVAILABLE
    assert state_of(manager, "v2") is VersionState.SERVING
    assert updates[-1].kind == "swap_back" and updates[-1].version == "v2"
    box["target"] = "v1"
    manager.poll_once()
    assert serving(manager) == "v1" and loader.loads == ["v2", "v1"]


def test_a_third_version_retires_the_oldest():
    manager, loader, source, _, _, updates = make(version("v1", 10))
    manager.poll_once()
    source.versions.append(version("v2", 20))
    manager.poll_once()
    source.versions.append(version("v3", 30))
    manager.poll_once()
    loader.wait_unloaded("v1")
    wait_until(lambda: state_of(manager, "v1") is VersionState.END)
    assert [s.name for s in manager.loaded()] == ["v3", "v2"]
    wait_until(lambda: any(u.kind == "unload" for u in updates))
    assert [u.version for u in updates if u.kind == "unload"] == ["v1"]


def test_without_retention_the_replaced_version_unloads_at_once():
    manager, loader, source, _, states, _ = make(version("v1", 10), retain_previous=False)
    manager.poll_once()
    source.versions.append(version("v2", 20))
    manager.poll_once()
    assert [s.name for s in manager.loaded()] == ["v2"]
    loader.wait_unloaded("v1")
    wait_until(lambda: state_of(manager, "v1") is VersionState.END)
    assert [e.state for e in states if e.version == "v1"][-2:] == [VersionState.UNLOADING,
                                                                   VersionState.END]


def test_a_failed_load_keeps_the_previous_version_serving_until_the_folder_changes():
    manager, loader, source, _, _, updates = make(version("v1", 10))
    manager.poll_once()
    loader.fail_load["v2"] = LoadError("v2: variable 'w' has shape [3] in its checkpoint")
    source.versions.append(version("v2", 20))
    manager.poll_once()
    assert serving(manager) == "v1"
    assert state_of(manager, "v2") is VersionState.ERROR
    assert "shape [3]" in manager.last_error and "shape [3]" in manager.snapshot()[1]["v2"].error
    assert (updates[-1].kind, updates[-1].ok) == ("load", False)
    manager.poll_once()
    assert loader.loads == ["v1", "v2"]  # not tried again as it is
    del loader.fail_load["v2"]
    source.versions[-1] = version("v2", 20, mtime=21.0)  # rewritten
    manager.poll_once()
    assert serving(manager) == "v2" and manager.last_error == ""


def test_a_transient_failure_is_retried_on_the_next_poll():
    manager, loader, source, _, _, _ = make(version("v1", 10))
    loader.fail_load["v1"] = TransientLoadError("store unreachable")
    manager.poll_once()
    assert state_of(manager, "v1") is VersionState.LOADING
    assert manager.snapshot()[1]["v1"].error == "store unreachable"
    with pytest.raises(NoVersionServing, match="last error: store unreachable"):
        manager.hold().__enter__()
    del loader.fail_load["v1"]
    manager.poll_once()
    assert serving(manager) == "v1" and loader.loads == ["v1", "v1"]


def test_a_failed_warmup_unloads_the_new_version_and_keeps_the_old_one():
    manager, loader, source, _, _, _ = make(version("v1", 10))
    manager.poll_once()
    loader.fail_warmup["v2"] = LoadError("warmup of v2 failed")
    source.versions.append(version("v2", 20))
    manager.poll_once()
    assert serving(manager) == "v1" and loader.unloads == ["v2"]
    assert state_of(manager, "v2") is VersionState.ERROR


def test_deltas_apply_in_place_on_the_serving_version():
    manager, loader, source, _, states, updates = make(version("v1", 10))
    manager.poll_once()
    source.versions[0] = version("v1", 10, deltas=(11, 12))
    manager.poll_once()
    assert loader.loads == ["v1"]  # no reload
    assert loader.deltas == [("v1", 12)]  # cumulative deltas: the latest one only
    assert manager.loaded()[0].delta_step == 12
    assert states[-1] == StateEvent("v1", VersionState.SERVING, 10, 12)
    assert (updates[-1].kind, updates[-1].ok) == ("delta", True)


def test_a_new_version_gets_its_deltas_before_it_serves():
    manager, loader, _, _, states, _ = make(version("v1", 10, deltas=(15,)))
    manager.poll_once()
    assert loader.deltas == [("v1", 15)]
    assert [(e.state, e.delta_step) for e in states] == [(VersionState.LOADING, 15),
                                                         (VersionState.LOADING, 15),
                                                         (VersionState.SERVING, 15)]


def test_a_failed_delta_keeps_serving_and_is_retried():
    manager, loader, source, _, _, updates = make(version("v1", 10))
    manager.poll_once()
    loader.fail_delta["v1"] = LoadError("cannot read delta 11")
    source.versions[0] = version("v1", 10, deltas=(11,))
    manager.poll_once()
    assert serving(manager) == "v1" and manager.loaded()[0].delta_step == 0
    assert manager.last_error == "cannot read delta 11"
    assert (updates[-1].kind, updates[-1].ok) == ("delta", False)
    del loader.fail_delta["v1"]
    manager.poll_once()
    assert manager.loaded()[0].delta_step == 11 and manager.last_error == ""


def test_a_handle_is_released_when_the_request_raises():
    manager, _, _, _, _, _ = make(version("v1", 10))
    manager.poll_once()
    servable = manager.loaded()[0]
    with pytest.raises(ValueError), manager.hold() as handle:
        assert servable.gate.readers == 1
        raise ValueError(handle.version)
    assert servable.gate.readers == 0
    with pytest.raises(RuntimeError, match="not held"):
        _ = handle.servable


def test_no_version_is_closed_while_a_handle_holds_it():
    manager, loader, source, _, _, _ = make(version("v1", 10), retain_previous=False)
    manager.poll_once()
    with manager.hold() as handle:
        old = handle.servable
        source.versions.append(version("v2", 20))
        manager.poll_once()
        assert serving(manager) == "v2"
        wait_until(lambda: old.gate._writers_waiting == 1)  # the unload waits for this handle
        assert not old.closed and loader.unloads == []
    loader.wait_unloaded("v1")
    assert old.closed


def test_a_delta_waits_for_the_handles_and_holds_new_ones_back():
    manager, loader, source, _, _, _ = make(version("v1", 10))
    manager.poll_once()
    source.versions[0] = version("v1", 10, deltas=(11,))
    poller = threading.Thread(target=manager.poll_once)
    with manager.hold() as handle:
        poller.start()
        wait_until(lambda: handle.servable.gate._writers_waiting == 1)
        assert handle.servable.delta_step == 0  # not under a request that holds the version
    poller.join(5)
    assert manager.loaded()[0].delta_step == 11


def test_holding_a_version_by_name():
    manager, _, _, _, _, _ = make(version("v1", 10))
    with pytest.raises(NoVersionServing, match="no model version is loaded yet"):
        with manager.hold():
            pass
    manager.poll_once()
    with manager.hold("v1") as handle:
        assert handle.version == "v1"
    with pytest.raises(VersionNotLoaded, match="version 'v0' is not loaded; serving 'v1'"):
        with manager.hold("v0"):
            pass


def test_a_failing_subscriber_does_not_stop_a_swap():
    manager, _, _, _, _, _ = make(version("v1", 10))
    seen = []

    def broken(_):
        raise RuntimeError("subscriber bug")

    manager.prepare.subscribe(broken)
    manager.serving.subscribe(broken)
    manager.serving.subscribe(seen.append)
    manager.poll_once()
    assert serving(manager) == "v1" and [s.name for s in seen] == ["v1"]


def test_prepare_is_told_before_the_swap_and_serving_after():
    manager, _, source, _, _, _ = make(version("v1", 10))
    order = []
    manager.prepare.subscribe(lambda s: order.append(("prepare", s.name, serving_or_none(manager))))
    manager.serving.subscribe(lambda s: order.append(("serving", s.name if s else None,
                                                      serving_or_none(manager))))
    manager.poll_once()
    manager.stop()
    assert order == [("prepare", "v1", None), ("serving", "v1", "v1"), ("serving", None, None)]


def serving_or_none(manager):
    current, _ = manager.snapshot()
    return current.name if current else None


def test_stop_unloads_every_version_then_closes_the_loader():
    manager, loader, source, _, _, _ = make(version("v1", 10), version("v2", 20))
    manager.start()
    assert manager.wait_ready(5)
    manager.stop()
    assert manager.loaded() == [] and loader.unloads == ["v2"] and loader.closed


def test_a_version_that_lost_its_state_is_loaded_again():
    manager, loader, _, _, _, _ = make(version("v1", 10))
    manager.poll_once()
    loader.reload = lambda s: "rows are gone" if s.name == "v1" and loader.loads == ["v1"] else ""
    manager.poll_once()
    assert loader.loads == ["v1", "v1"] and serving(manager) == "v1"


def test_bad_versions_are_reported_once_per_reason():
    manager, _, source, _, _, updates = make(version("v1", 10))
    from deeprec_runtime.core import BadVersion

    source.bad = [BadVersion("v0", "no complete full checkpoint")]
    manager.poll_once()
    manager.poll_once()
    assert [u.version for u in updates if not u.ok] == ["v0"]
    assert state_of(manager, "v0") is VersionState.ERROR


def test_a_missing_pinned_version_keeps_serving_and_says_where_it_looked():
    manager, _, _, box, _, _ = make(version("v1", 10))
    manager.poll_once()
    box["target"] = "v9"
    manager.poll_once()
    assert serving(manager) == "v1"
    assert manager.last_error == "target version 'v9' does not exist in /ckpt"


def test_without_a_source_the_savedmodel_itself_is_loaded_once():
    loader = FakeLoader()
    manager = Manager(loader, None)
    manager.poll_once()
    manager.poll_once()
    assert loader.loads == [SAVEDMODEL_VERSION] and serving(manager) == SAVEDMODEL_VERSION


def test_the_update_thread_survives_a_loader_bug():
    manager, loader, _, _, _, _ = make(version("v1", 10))
    loader.fail_load["v1"] = KeyError("bug")
    manager.start()
    wait_until(lambda: loader.loads.count("v1") >= 2)  # polled again after the exception
    del loader.fail_load["v1"]
    assert manager.wait_ready(5)
    manager.stop()
