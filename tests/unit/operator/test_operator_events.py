"""Events the operator posts itself: core/v1 Events shaped as kopf's (what `kubectl describe drm`
shows did not change), cut to the API server's limit, and never an exception into a sync."""

from __future__ import annotations

import logging

from deeprec_operator.events import MAX_MESSAGE, EventRecorder
from deeprec_operator.kube import ApiError
from tests.support.operator.fakes import FakeKube

MODEL = {"apiVersion": "serving.deeprec.io/v1alpha1", "kind": "DeepRecModel",
         "metadata": {"name": "wd", "namespace": "ns", "uid": "u-1", "resourceVersion": "7"}}


def test_an_event_names_the_model_by_uid_and_the_reporting_component():
    kube = FakeKube()
    recorder = EventRecorder(kube, component="kopf", instance="dev")
    recorder.warning(MODEL, "SecretNotFound", "Secret 'x' not found")
    (event,) = kube.events()
    ((verb, path),) = kube.calls
    assert verb == "CREATE" and path.startswith("/api/v1/namespaces/ns/events/kopf-event-")
    assert (event["type"], event["reason"]) == ("Warning", "SecretNotFound")
    assert event["message"] == "Secret 'x' not found"
    assert event["involvedObject"] == {"apiVersion": "serving.deeprec.io/v1alpha1", "kind": "DeepRecModel",
                                       "name": "wd", "namespace": "ns", "uid": "u-1"}
    assert event["source"] == {"component": "kopf"} and event["reportingInstance"] == "dev"
    assert event["firstTimestamp"] == event["lastTimestamp"]


def test_a_long_message_is_cut_in_the_middle():
    kube = FakeKube()
    EventRecorder(kube).normal(MODEL, "X", "a" * 600 + "b" * 600)
    message = kube.events()[0]["message"]
    assert len(message) == MAX_MESSAGE and "..." in message
    assert message.startswith("a") and message.endswith("b")


def test_a_failed_post_is_logged_not_raised(caplog):
    kube = FakeKube()
    kube.create = lambda obj: (_ for _ in ()).throw(ApiError(403, "Forbidden", "events is forbidden"))
    caplog.set_level(logging.WARNING)
    EventRecorder(kube).normal(MODEL, "Recovered", "fine")
    assert "could not post Event Normal/Recovered for wd" in caplog.text
