"""Folding per-pod reports into status: versions, counts and the three conditions."""

from __future__ import annotations

from deeprec_operator.status import Failure, PodReport, aggregate, condition, stamp_conditions


def _serving(name, version, target="checkpoint_2", runtime_target=None, error=""):
    return PodReport(name=name, ready=True, annotated_target=target, reachable=True, served_version=version,
                     runtime_target=runtime_target or target, last_update_error=error)


def _cond(status, kind):
    c = condition(status, kind)
    assert c is not None
    return c["status"], c["reason"]


def test_all_replicas_serving_the_pinned_version_is_ready():
    s = aggregate(target="checkpoint_2", desired_replicas=2,
                  reports=[_serving("a", "checkpoint_2"), _serving("b", "checkpoint_2")])
    assert s["activeVersion"] == "checkpoint_2"
    assert s["versions"] == [{"name": "checkpoint_2", "replicas": 2}]
    assert (s["readyReplicas"], s["updatedReplicas"]) == (2, 2)
    assert _cond(s, "Ready") == ("True", "AllReplicasServing")
    assert _cond(s, "Progressing") == ("False", "Stable")
    assert _cond(s, "Degraded") == ("False", "NoFailures")


def test_rollback_in_flight_is_progressing():
    s = aggregate(target="checkpoint_1", desired_replicas=2,
                  reports=[_serving("a", "checkpoint_2", target="checkpoint_1"),
                           _serving("b", "checkpoint_1", target="checkpoint_1")])
    assert _cond(s, "Progressing") == ("True", "LoadingVersion")
    assert _cond(s, "Ready")[0] == "False"
    assert s["versions"] == [{"name": "checkpoint_1", "replicas": 1}, {"name": "checkpoint_2", "replicas": 1}]
    assert s["activeVersion"] == "checkpoint_1"  # tie: the target wins


def test_stale_annotation_is_propagating():
    s = aggregate(target="checkpoint_2", desired_replicas=2,
                  reports=[_serving("a", "checkpoint_3", target="latest"), _serving("b", "checkpoint_2")])
    assert _cond(s, "Progressing") == ("True", "PropagatingTarget")
    assert s["updatedReplicas"] == 1


def test_runtime_not_yet_read_the_annotation_is_propagating():
    s = aggregate(target="checkpoint_2", desired_replicas=1,
                  reports=[_serving("a", "checkpoint_3", runtime_target="latest")])
    assert _cond(s, "Progressing") == ("True", "PropagatingTarget")
    assert "latest" in condition(s, "Progressing")["message"]


def test_latest_with_replicas_on_different_versions_is_progressing():
    s = aggregate(target="latest", desired_replicas=2,
                  reports=[_serving("a", "checkpoint_3", target="latest"),
                           _serving("b", "checkpoint_2", target="latest")])
    assert _cond(s, "Progressing") == ("True", "LoadingVersion")


def test_missing_replicas_are_starting():
    s = aggregate(target="latest", desired_replicas=3,
                  reports=[_serving("a", "checkpoint_3", target="latest"),
                           PodReport(name="b", ready=False, annotated_target="latest")])
    assert _cond(s, "Ready") == ("False", "ReplicasStarting")
    assert s["readyReplicas"] == 1 and s["replicas"] == 2


def test_load_failure_is_degraded_with_the_runtime_message():
    s = aggregate(target="checkpoint_9", desired_replicas=1,
                  reports=[_serving("a", "checkpoint_2", target="checkpoint_9",
                                    error="version checkpoint_9 not found")])
    assert _cond(s, "Degraded") == ("True", "UpdateFailed")
    assert "checkpoint_9 not found" in condition(s, "Degraded")["message"]
    assert _cond(s, "Ready") == ("False", "UpdateFailed")


def test_spec_failure_blocks_progress():
    s = aggregate(target="latest", desired_replicas=1, reports=[],
                  failure=Failure("SecretNotFound", "Secret 'oss' not found"))
    assert _cond(s, "Degraded") == ("True", "SecretNotFound")
    assert _cond(s, "Progressing") == ("False", "Blocked")
    assert _cond(s, "Ready") == ("False", "SecretNotFound")


def test_unreachable_runtimes_are_not_ready_but_not_degraded():
    s = aggregate(
        target="latest",
        desired_replicas=1,
        reports=[PodReport(name="a", ready=True, annotated_target="latest", probe_error="UNAVAILABLE: x")],
    )
    assert _cond(s, "Ready") == ("False", "RuntimeUnreachable")
    assert "UNAVAILABLE" in condition(s, "Ready")["message"]
    assert _cond(s, "Degraded")[0] == "False"
    assert s["activeVersion"] == ""


def test_zero_replicas_is_ready():
    s = aggregate(target="latest", desired_replicas=0, reports=[])
    assert _cond(s, "Ready")[0] == "True"


def test_transition_time_is_kept_while_status_is_unchanged():
    first = stamp_conditions(
        [{"type": "Ready", "status": "False", "reason": "A", "message": ""}], None, "t1", 1
    )
    same = stamp_conditions(
        [{"type": "Ready", "status": "False", "reason": "B", "message": ""}], first, "t2", 2
    )
    flipped = stamp_conditions(
        [{"type": "Ready", "status": "True", "reason": "C", "message": ""}], same, "t3", 2
    )
    assert [c["lastTransitionTime"] for c in (first[0], same[0], flipped[0])] == ["t1", "t1", "t3"]
    assert same[0]["observedGeneration"] == 2


def test_long_messages_are_truncated():
    s = aggregate(target="x", desired_replicas=1, reports=[], failure=Failure("R", "m" * 5000))
    assert len(condition(s, "Degraded")["message"]) <= 1024
