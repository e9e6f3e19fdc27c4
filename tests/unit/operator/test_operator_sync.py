"""sync(): one model's children, pod annotations and status, driven with a fake API client.

Each test asserts on the calls a sync made (verb and path, in order where order matters): what
it writes on first sight of a model, that a second sync with nothing changed makes no call at all
(even while the watch lags behind its own writes), that a version change patches only the pods,
and how failures stop writes and are retried.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import pytest

from deeprec_operator.credentials import SecretCache
from deeprec_operator.kube import ApiError
from deeprec_operator.probe import ServingInfo
from deeprec_operator.sync import RETRY_SECONDS, Context, ModelState, sync
from deeprec_operator.versions import TARGET_ANNOTATION
from tests.support.operator.fakes import Clock, FakeKube, FakeProber, RecordedEvents, pod
from tests.support.operator.manifests import BASE_SPEC

UID = "model-uid"
MODEL = "/apis/serving.deeprec.io/v1alpha1/namespaces/ns/deeprecmodels/wd"
CM = "/api/v1/namespaces/ns/configmaps/wd-config"
DEP = "/apis/apps/v1/namespaces/ns/deployments/wd"
SVC = "/api/v1/namespaces/ns/services/wd"
NP = "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/wd"
STATUS = ("PATCH", f"{MODEL}/status")
CHECKS_AND_APPLIES = [("GET", CM), ("GET", DEP), ("GET", SVC),
                      ("APPLY", CM), ("APPLY", DEP), ("APPLY", SVC), ("GET", NP)]


def _pod_path(name: str) -> str:
    return f"/api/v1/namespaces/ns/pods/{name}"


class World:
    """A fake cluster holding one DeepRecModel `wd`, and a sync Context over it."""

    def __init__(self, spec: dict | None = None) -> None:
        self.kube, self.prober, self.events, self.clock = FakeKube(), FakeProber(), RecordedEvents(), Clock()
        self.ctx = Context(kube=self.kube, prober=self.prober, secrets=SecretCache(self.kube),
                           events=self.events, fan_out=ThreadPoolExecutor(4), clock=self.clock,
                           wall=lambda: "2026-01-01T00:00:00Z")
        self.state = ModelState(uid=UID)
        meta = {"name": "wd", "namespace": "ns", "uid": UID, "generation": 1, "labels": {}}
        self.kube.put({"apiVersion": "serving.deeprec.io/v1alpha1", "kind": "DeepRecModel", "metadata": meta,
                       "spec": spec or copy.deepcopy(BASE_SPEC)})

    def model(self) -> dict:
        """The model as the watch (the model index) delivers it once it caught up."""
        return copy.deepcopy(self.kube.objects[MODEL])

    def change_spec(self, **changes) -> None:
        """A user's edit: new spec fields, the generation bumped."""
        obj = self.kube.objects[MODEL]
        obj["spec"].update(changes)
        generation = obj["metadata"]["generation"] + 1
        self.kube.put({**obj, "metadata": {**obj["metadata"], "generation": generation}})

    def add_pods(self, *pods: dict) -> None:
        for p in pods:
            self.kube.put(p)

    def sync(self, body: dict | None = None, pods=None, **kw):
        self.kube.calls.clear()
        return sync(self.ctx, self.state, body if body is not None else self.model(),
                    pods if pods is not None else self.kube.pods(), **kw)


@pytest.fixture
def world() -> World:
    return World()


def _targets(world: World) -> dict[str, str | None]:
    return {p.name: p.target for p in world.kube.pods()}


def test_first_sync_checks_names_applies_children_annotates_pods_then_writes_status(world):
    world.add_pods(pod("wd-a", ip="10.0.0.1"), pod("wd-b", ip="10.0.0.2"))
    result = world.sync()
    calls = world.kube.calls
    assert calls[:7] == CHECKS_AND_APPLIES, "every name checked before the first write"
    assert sorted(calls[7:9]) == [("PATCH", _pod_path("wd-a")), ("PATCH", _pod_path("wd-b"))]
    assert calls[9:] == [STATUS]
    assert _targets(world) == {"wd-a": "latest", "wd-b": "latest"}
    owners = world.kube.objects[DEP]["metadata"]["ownerReferences"]
    assert [(o["kind"], o["uid"], o["controller"]) for o in owners] == [("DeepRecModel", UID, True)]

    status = world.kube.objects[MODEL]["status"]
    assert status == result.status
    assert (status["targetVersion"], status["replicas"], status["readyReplicas"], status["updatedReplicas"],
            status["observedGeneration"]) == ("latest", 2, 2, 2, 1)
    assert status["selector"] == "serving.deeprec.io/model=wd"
    assert world.prober.asked == ["10.0.0.1:8500", "10.0.0.2:8500"]
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Ready"] == "RuntimeUnreachable"
    assert result.failure is None and world.events.posted == [], "a creation announces nothing"


def test_a_second_sync_with_nothing_changed_makes_no_call(world):
    world.add_pods(pod("wd-a"), pod("wd-b"))
    first_body, first_pods = world.model(), world.kube.pods()
    world.sync(first_body, first_pods)
    # The watch lags: the same model (no status yet) and pods (not annotated yet) as before. The
    # sync knows its own writes, so it neither patches the pods again nor rewrites the status.
    world.sync(first_body, first_pods)
    assert world.kube.calls == []
    world.sync()  # the watch caught up with the sync's own writes
    assert world.kube.calls == []
    assert world.events.posted == []


def test_version_change_patches_only_the_pods_and_is_announced(world):
    world.add_pods(pod("wd-a"), pod("wd-b"), pod("wd-c", ready=False))
    world.sync()
    uids = {p["metadata"]["uid"] for p in world.kube.objects.values() if p["kind"] == "Pod"}
    world.change_spec(version="checkpoint_2")
    result = world.sync()
    assert sorted(world.kube.calls[:-1]) == [("PATCH", _pod_path(n)) for n in ("wd-a", "wd-b", "wd-c")]
    assert world.kube.calls[-1] == STATUS, "no child is applied again for a rollback"
    assert set(_targets(world).values()) == {"checkpoint_2"}
    assert {p["metadata"]["uid"] for p in world.kube.objects.values() if p["kind"] == "Pod"} == uids
    assert result.status["targetVersion"] == "checkpoint_2" and result.status["observedGeneration"] == 2
    assert world.events.posted == [("Normal", "TargetVersionChanged",
                                    "target version 'latest' -> 'checkpoint_2'; annotated 3 of 3 pods")]


def test_after_a_restart_the_decision_is_compared_with_status(world):
    """State is memory only: a new operator reads the last decision from status."""
    world.add_pods(pod("wd-a"))
    world.sync()
    world.change_spec(version="checkpoint_1")  # while no operator runs
    world.state = ModelState(uid=UID)
    world.sync()
    assert ("APPLY", DEP) in world.kube.calls, "a restarted operator applies the children once"
    assert world.events.reasons() == ["TargetVersionChanged"]
    assert _targets(world) == {"wd-a": "checkpoint_1"}


def test_spec_change_applies_the_children_again(world):
    world.sync()
    world.change_spec(modelConfig={**BASE_SPEC["modelConfig"], "omp_num_threads": 1})
    world.sync()
    assert world.kube.calls == [*CHECKS_AND_APPLIES, STATUS]
    assert '"omp_num_threads": 1' in world.kube.objects[CM]["data"]["model_config.json"]


def test_new_pods_get_the_target_and_pods_going_away_are_left_alone(world):
    world.sync()
    world.add_pods(pod("wd-new", target=None), pod("wd-old", target="checkpoint_0", deleting=True))
    world.sync()
    assert world.kube.calls == [("PATCH", _pod_path("wd-new")), STATUS]
    assert _targets(world) == {"wd-new": "latest", "wd-old": "checkpoint_0"}


def test_a_pod_that_went_away_mid_patch_needs_nothing(world):
    world.add_pods(pod("wd-a"), pod("wd-b"))
    world.kube.fail[("PATCH", _pod_path("wd-b"))] = ApiError(404, "NotFound", "gone")
    result = world.sync()
    assert result.failure is None and result.status["replicas"] == 1


def test_status_changed_behind_the_operators_back_is_written_again(world):
    world.add_pods(pod("wd-a"))
    world.sync()
    world.kube.put({**world.kube.objects[MODEL], "status": {**world.kube.objects[MODEL]["status"],
                                                            "readyReplicas": 0}})
    world.sync()
    assert world.kube.calls == [STATUS]
    assert world.kube.objects[MODEL]["status"]["readyReplicas"] == 1


def test_what_runtimes_serve_becomes_status_and_events(world):
    world.add_pods(pod("wd-a", ip="10.0.0.1"), pod("wd-b", ip="10.0.0.2"))
    world.prober.answers = {"10.0.0.1:8500": ServingInfo("checkpoint_3", "latest", ""),
                            "10.0.0.2:8500": ServingInfo("checkpoint_3", "latest", "")}
    status = world.sync().status
    assert status["activeVersion"] == "checkpoint_3"
    assert status["versions"] == [{"name": "checkpoint_3", "replicas": 2}]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True", "Progressing": "False", "Degraded": "False"}
    assert world.events.posted == [("Normal", "ActiveVersionChanged",
                                    "replicas serve 'checkpoint_3' (was 'none')")]

    world.change_spec(version="checkpoint_9")
    error = "version checkpoint_9 does not exist"
    world.prober.answers["10.0.0.2:8500"] = ServingInfo("checkpoint_3", "checkpoint_9", error)
    world.sync()
    world.sync()  # the same failure again: announced once
    degraded = {c["type"]: c for c in world.kube.objects[MODEL]["status"]["conditions"]}["Degraded"]
    assert degraded["reason"] == "UpdateFailed" and error in degraded["message"]
    assert world.events.reasons() == ["ActiveVersionChanged", "TargetVersionChanged", "UpdateFailed"]


def test_a_spec_error_is_permanent_degraded_and_announced_once(world):
    world.add_pods(pod("wd-a", target="latest"))
    world.change_spec(storage={"storeType": "local", "checkpointDir": "s3://bucket/ckpt/",
                               "savedModelDir": "/models/savedmodel/"})
    result = world.sync()
    assert result.failure.reason == "UnknownStoreType" and result.permanent
    assert world.kube.calls == [STATUS], "nothing but status is written"
    degraded = {c["type"]: c for c in result.status["conditions"]}["Degraded"]
    assert degraded["status"] == "True" and "s3://" in degraded["message"]
    world.sync()
    assert world.kube.calls == [] and world.events.reasons() == ["UnknownStoreType"]

    world.change_spec(storage=BASE_SPEC["storage"])
    result = world.sync()
    assert result.failure is None and ("APPLY", DEP) in world.kube.calls
    assert world.events.reasons() == ["UnknownStoreType", "Recovered"]


def test_a_missing_secret_writes_no_child_and_is_checked_again_after_the_retry_delay():
    spec = copy.deepcopy(BASE_SPEC)
    spec["storage"] = {"storeType": "oss", "checkpointDir": "oss://b/ckpt/", "savedModelDir": "oss://b/sm/",
                       "ossEndpoint": "oss.example", "credentialsSecretRef": {"name": "oss"}}
    world = World(spec)
    secret = "/api/v1/namespaces/ns/secrets/oss"
    result = world.sync()
    assert (result.failure.reason, result.permanent) == ("SecretNotFound", False)
    assert world.kube.calls == [("GET", secret), STATUS]

    world.sync()  # a resync before the retry delay: waits, re-reads nothing
    assert world.kube.calls == []
    world.sync(retry_now=True)  # kopf re-running the handler: checks now
    assert world.kube.calls == [("GET", secret)]
    world.clock.now += RETRY_SECONDS
    world.sync()
    assert world.kube.calls == [("GET", secret)]

    world.kube.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "oss", "namespace": "ns"},
                    "data": {"oss_access_id": "aWQ=", "oss_access_key": "a2V5"}})
    world.clock.now += RETRY_SECONDS
    result = world.sync()
    assert result.failure is None and ("APPLY", DEP) in world.kube.calls
    assert world.events.reasons() == ["SecretNotFound", "Recovered"]


def test_a_child_name_held_by_someone_else_stops_every_write_and_pod_annotation(world):
    world.kube.put({"apiVersion": "v1", "kind": "ConfigMap", "data": {"mine": "yes"},
                    "metadata": {"name": "wd-config", "namespace": "ns"}})
    world.add_pods(pod("wd-a"))
    result = world.sync()
    assert result.failure.reason == "ChildConflict" and not result.permanent
    assert world.kube.writes() == [STATUS]
    assert _targets(world) == {"wd-a": None}
    assert world.kube.objects[CM]["data"] == {"mine": "yes"}


def test_a_child_the_api_server_refuses_is_degraded_and_later_children_are_not_written(world):
    world.kube.fail[("APPLY", DEP)] = ApiError(422, "Invalid", "spec.template: invalid container name")
    result = world.sync()
    assert result.failure.reason == "ChildRejected" and "invalid container name" in result.failure.message
    assert world.kube.writes() == [("APPLY", CM), ("APPLY", DEP), STATUS]


def test_api_errors_that_outlast_the_clients_retries_propagate_and_the_next_sync_tries_again(world):
    world.kube.fail[("APPLY", SVC)] = ApiError(503, "ServiceUnavailable", "etcd")
    with pytest.raises(ApiError):
        world.sync()
    del world.kube.fail[("APPLY", SVC)]
    world.sync()
    assert ("APPLY", SVC) in world.kube.calls


def test_a_secured_models_probe_reads_its_secrets_and_says_when_it_cannot():
    spec = copy.deepcopy(BASE_SPEC)
    spec["replicas"] = 1
    spec["security"] = {"authentication": {"bearerToken": {"secretName": "tokens"}}}
    world = World(spec)
    world.kube.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tokens", "namespace": "ns"},
                    "data": {"token": "IyBubyB0b2tlbiB5ZXQK"}})  # "# no token yet"
    world.add_pods(pod("wd-a"))
    status = world.sync().status
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["reason"] == "RuntimeUnreachable"
    assert "cannot probe: Secret 'tokens' key 'token' holds no token" in ready["message"]
    assert world.prober.asked == [], "a pod is not called without the credentials it requires"
    assert world.kube.objects[_pod_path("wd-a")]["metadata"]["annotations"][TARGET_ANNOTATION] == "latest"
