"""The operator on a real control plane, driven the way a user drives it.

Each test installs the chart into its own namespace (watchNamespaces = that namespace), starts
`deeprec-operator --namespace NS` as a local process with the chart ServiceAccount's token (so
the chart's RBAC is exactly what it runs with), and then uses kubectl: apply the example, patch
spec.version, scale, delete. kwok reports the pods Running; no runtime runs in them, so the
status reports the runtimes unreachable while everything the operator itself decides converges.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from deeprec_operator import resources as r
from deeprec_operator.spec import parse
from deeprec_operator.versions import TARGET_ANNOTATION
from tests.support.operator_e2e import (
    CHART,
    EXAMPLE,
    MODEL,
    condition,
    fetch,
    pods_of,
    running,
    wait_running,
)
from tests.support.plane import wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _example() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]


def _model_doc() -> dict[str, Any]:
    return next(d for d in _example() if d["kind"] == "DeepRecModel")


def test_example_becomes_children_that_match_the_spec(k8s_plane, namespace, operator):
    k8s_plane.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    drm = wait_until(
        lambda: (d := fetch(k8s_plane, "drm", MODEL, namespace)).get("status", {}).get("targetVersion") and d,
        timeout=30,
        message=lambda: f"status of {MODEL}; log:\n{operator.log()}",
    )
    model = parse(MODEL, namespace, drm["spec"])  # the spec as stored, defaults applied

    cm = fetch(k8s_plane, "configmap", r.config_map_name(MODEL), namespace)
    assert cm["data"] == r.config_map(model)["data"]
    config = json.loads(cm["data"]["model_config.json"])
    assert config["model_store_type"] == "oss" and "oss_access_key" not in config
    assert "REPLACE_WITH_ACCESS_KEY" not in json.dumps(cm)

    dep = fetch(k8s_plane, "deployment", MODEL, namespace)
    expected = r.deployment(model)
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"] == expected["spec"]["selector"]
    runtime = next(
        c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == r.RUNTIME_CONTAINER
    )
    want = r.runtime_container(model)
    assert runtime["args"] == want["args"]
    assert runtime["env"] == want["env"]
    assert runtime["resources"] == {
        "requests": {"cpu": "4", "memory": "8Gi"},
        "limits": {"cpu": "4", "memory": "8Gi"},
    }
    assert runtime["readinessProbe"]["grpc"]["port"] == 8500
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False

    svc = fetch(k8s_plane, "service", MODEL, namespace)
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 8500, "http": 8501}

    for child in (cm, dep, svc):
        owners = child["metadata"]["ownerReferences"]
        assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [
            ("DeepRecModel", MODEL, drm["metadata"]["uid"])
        ]

    pods = wait_running(k8s_plane, namespace, 2, operator=operator)
    qos = {p["status"].get("qosClass") for p in pods}
    assert qos == {"Guaranteed"}
    wait_until(lambda: all(p["metadata"].get("annotations", {}).get(TARGET_ANNOTATION) == "latest"
                           for p in pods_of(k8s_plane, namespace)), timeout=10,
               message="every pod annotated with target latest")

    status = wait_until(
        lambda: (s := fetch(k8s_plane, "drm", MODEL, namespace)["status"]).get("readyReplicas") == 2 and s,
        timeout=30,
        message="status.readyReplicas == 2",
    )
    assert status["selector"] == r.selector_string(MODEL)
    assert status["observedGeneration"] == drm["metadata"]["generation"]
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded"}
    # kwok pods run nothing: the operator must say so rather than claim a served version.
    assert condition({"status": status}, "Ready")["reason"] == "RuntimeUnreachable"
    assert condition({"status": status}, "Degraded")["status"] == "False"

    printed = k8s_plane.kubectl("get", "drm", "-n", namespace).stdout
    assert "TARGET" in printed and "latest" in printed


def test_rollback_patch_reaches_every_pod_without_restarts(k8s_plane, namespace, operator):
    k8s_plane.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    pods = wait_running(k8s_plane, namespace, 2, operator=operator)
    wait_until(lambda: all(p["metadata"].get("annotations", {}).get(TARGET_ANNOTATION) == "latest"
                           for p in pods_of(k8s_plane, namespace)), timeout=15, message="initial annotations")
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
    dep_generation = fetch(k8s_plane, "deployment", MODEL, namespace)["metadata"]["generation"]

    started = time.monotonic()
    k8s_plane.kubectl("patch", "drm", MODEL, "-n", namespace, "--type", "merge",
                      "-p", '{"spec":{"version":"checkpoint_2"}}')
    wait_until(lambda: all(p["metadata"].get("annotations", {}).get(TARGET_ANNOTATION) == "checkpoint_2"
                           for p in pods_of(k8s_plane, namespace)), timeout=5, interval=0.05,
               message=lambda: f"checkpoint_2 on every pod within 5 s; log:\n{operator.log()}")
    elapsed = time.monotonic() - started

    after = pods_of(k8s_plane, namespace)
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in after} == uids, "pods were replaced"
    assert fetch(k8s_plane, "deployment", MODEL, namespace)["metadata"]["generation"] == dep_generation
    sys.stderr.write(f"\n[e2e] rollback annotation on 2 pods after {elapsed:.2f}s\n")

    drm = fetch(k8s_plane, "drm", MODEL, namespace)
    status = wait_until(lambda: (s := fetch(k8s_plane, "drm", MODEL, namespace)["status"])
                        .get("targetVersion") == "checkpoint_2" and s.get("updatedReplicas") == 2
                        and s.get("observedGeneration") == drm["metadata"]["generation"] and s,
                        timeout=15, message="status converged on checkpoint_2")
    assert status["readyReplicas"] == 2
    wait_until(
        lambda: any(
            e["reason"] == "TargetVersionChanged" and "checkpoint_2" in e["message"]
            for e in k8s_plane.kubectl_json(
                "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={MODEL}"
            )["items"]
        ),
        timeout=10,
        message="a TargetVersionChanged Event naming checkpoint_2",
    )

    # Scaling goes through the scale subresource; the new pod gets the pinned target too.
    k8s_plane.kubectl("scale", "drm", MODEL, "-n", namespace, "--replicas", "3")
    wait_running(k8s_plane, namespace, 3, operator=operator)
    wait_until(lambda: all(p["metadata"].get("annotations", {}).get(TARGET_ANNOTATION) == "checkpoint_2"
                           for p in pods_of(k8s_plane, namespace)), timeout=10,
               message="the new pod annotated with checkpoint_2")


@pytest.mark.parametrize(("patch", "expected"), [
    ({"modelConfig": {"select_session_policy": "RANDOM"}}, "select_session_policy"),
    ({"modelConfig": {"oss_access_key": "plain-text-key"}}, "must not be written in the resource"),
    ({"replicas": -1}, "spec.replicas"),
    ({"storage": {"storeType": "s3", "savedModelDir": "s3://b/sm"}}, "spec.storage.storeType"),
    ({"version": "../etc"}, "spec.version"),
])
def test_invalid_resource_is_rejected_with_a_clear_message(k8s_plane, namespace, patch, expected):
    doc = _model_doc()
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(doc["spec"].get(key), dict):
            doc["spec"][key] = {**doc["spec"][key], **value}
        else:
            doc["spec"][key] = value
    proc = k8s_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert proc.returncode != 0, f"accepted: {proc.stdout}"
    assert expected in proc.stderr, proc.stderr
    assert k8s_plane.kubectl("get", "drm", MODEL, "-n", namespace, check=False).returncode != 0


def test_missing_secret_is_degraded_until_it_appears(k8s_plane, namespace, operator):
    docs = _example()
    secret = next(d for d in docs if d["kind"] == "Secret")
    k8s_plane.apply(_model_doc(), namespace=namespace)
    status = wait_until(
        lambda: (
            condition(fetch(k8s_plane, "drm", MODEL, namespace), "Degraded").get("reason") == "SecretNotFound"
            and fetch(k8s_plane, "drm", MODEL, namespace)["status"]
        ),
        timeout=30,
        message=lambda: f"Degraded/SecretNotFound; log:\n{operator.log()}",
    )
    assert "wide-and-deep-oss" in condition({"status": status}, "Degraded")["message"]
    assert k8s_plane.kubectl("get", "deployment", MODEL, "-n", namespace, check=False).returncode != 0
    wait_until(lambda: any(e["reason"] == "SecretNotFound" and e["type"] == "Warning"
                           for e in k8s_plane.kubectl_json("get", "events", "-n", namespace)["items"]),
               timeout=10, message="a SecretNotFound warning Event")
    assert operator.proc.poll() is None, "the operator must not crash on a semantic error"

    k8s_plane.apply(secret, namespace=namespace)
    wait_running(k8s_plane, namespace, 2, timeout=60, operator=operator)
    wait_until(
        lambda: condition(fetch(k8s_plane, "drm", MODEL, namespace), "Degraded").get("status") == "False",
        timeout=20,
        message="Degraded cleared after the Secret appeared",
    )


def test_semantic_error_is_degraded_not_retried(k8s_plane, namespace, operator):
    doc = _model_doc()
    doc["spec"]["storage"]["checkpointDir"] = "s3://bucket/ckpt/"
    k8s_plane.apply([d for d in _example() if d["kind"] == "Secret"] + [doc], namespace=namespace)
    cond = wait_until(lambda: (c := condition(fetch(k8s_plane, "drm", MODEL, namespace), "Degraded"))
                      .get("reason") == "UnknownStoreType" and c, timeout=30,
                      message=lambda: f"Degraded/UnknownStoreType; log:\n{operator.log()}")
    assert "s3://" in cond["message"]
    assert k8s_plane.kubectl("get", "deployment", MODEL, "-n", namespace, check=False).returncode != 0
    # Fixing the spec is enough: the operator reacts to the change.
    k8s_plane.kubectl("patch", "drm", MODEL, "-n", namespace, "--type", "merge",
                      "-p", '{"spec":{"storage":{"checkpointDir":"oss://bucket/ckpt/"}}}')
    wait_running(k8s_plane, namespace, 2, operator=operator)


def test_deleting_the_model_removes_every_child(k8s_plane, namespace, operator):
    k8s_plane.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    wait_running(k8s_plane, namespace, 2, operator=operator)
    k8s_plane.kubectl("delete", "drm", MODEL, "-n", namespace, "--wait=true", "--timeout=30s")

    def gone():
        left = []
        for kind, name in (
            ("configmap", r.config_map_name(MODEL)),
            ("deployment", MODEL),
            ("service", MODEL),
        ):
            if k8s_plane.kubectl("get", kind, name, "-n", namespace, check=False).returncode == 0:
                left.append(kind)
        if pods_of(k8s_plane, namespace):
            left.append("pods")
        return not left
    wait_until(gone, timeout=60, interval=0.5, message="children garbage-collected")


def test_operator_restart_mid_change_converges_without_duplicates(k8s_plane, namespace, operator):
    docs = _example()
    model = next(d for d in docs if d["kind"] == "DeepRecModel")
    # Small pods: the config change below rolls them with a surge pod, which must fit on kwok's nodes.
    model["spec"]["resources"] = {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    k8s_plane.apply(docs, namespace=namespace)
    wait_running(k8s_plane, namespace, 2, operator=operator)
    operator.kill()

    # Changes made while no operator runs: a rollback, a scale-up and a config change.
    k8s_plane.kubectl("patch", "drm", MODEL, "-n", namespace, "--type", "merge", "-p",
                      '{"spec":{"version":"checkpoint_1","replicas":3,"modelConfig":{"omp_num_threads":1}}}')
    time.sleep(1)
    assert all(p["metadata"].get("annotations", {}).get(TARGET_ANNOTATION) == "latest"
               for p in pods_of(k8s_plane, namespace))
    operator.start()

    drm = fetch(k8s_plane, "drm", MODEL, namespace)
    wait_until(lambda: (s := fetch(k8s_plane, "drm", MODEL, namespace).get("status", {}))
               .get("observedGeneration") == drm["metadata"]["generation"]
               and s.get("targetVersion") == "checkpoint_1", timeout=30,
               message=lambda: f"status after restart; log:\n{operator.log()}")
    cm = fetch(k8s_plane, "configmap", r.config_map_name(MODEL), namespace)
    assert json.loads(cm["data"]["model_config.json"])["omp_num_threads"] == 1
    pods = wait_until(lambda: (ps := running(pods_of(k8s_plane, namespace))) and len(ps) == 3
                      and len(pods_of(k8s_plane, namespace)) == 3
                      and all(p["metadata"].get("annotations", {}).get(TARGET_ANNOTATION) == "checkpoint_1"
                              for p in ps) and ps,
                      timeout=90, message=lambda: f"3 pods on checkpoint_1; log:\n{operator.log()}")
    assert len(pods) == 3
    selector = f"{r.MODEL_LABEL}={MODEL}"
    for kind in ("configmaps", "deployments", "services"):
        items = k8s_plane.kubectl_json("get", kind, "-n", namespace, "-l", selector)["items"]
        assert len(items) == 1, f"{len(items)} {kind} for one model"
    assert operator.proc.poll() is None


def test_chart_rbac_is_least_privilege(k8s_plane, namespace, installed):
    release, _ = installed
    sa = f"system:serviceaccount:{namespace}:{release}-deeprec-serving"

    def can(*args):
        return k8s_plane.kubectl("auth", "can-i", *args, "--as", sa, check=False).stdout.strip() == "yes"

    assert can("patch", "deeprecmodels.serving.deeprec.io", "-n", namespace)
    assert can("patch", "pods", "-n", namespace)
    assert can("list", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can("list", "secrets", "-n", namespace)
    assert not can("get", "secrets", "-n", "default")
    assert not can("patch", "pods", "-n", "default")
    assert not can("delete", "deployments", "-n", namespace)
    assert not can("create", "clusterroles")


def test_clusterwide_install_rbac_is_least_privilege(k8s_plane, namespace):
    """The chart watching every namespace (its CI values): the models' rules in every namespace,
    still no Secrets anywhere (unless rbac.secretCheck says so), no deletes, no RBAC writes."""
    release = f"drs-cw-{uuid.uuid4().hex[:6]}"
    k8s_plane.kubectl("create", "serviceaccount", "deeprec-operator", "-n", namespace)
    k8s_plane.helm("install", release, str(CHART), "-n", namespace,
                   "-f", str(CHART / "ci" / "clusterwide-values.yaml"), "--wait", "--timeout", "90s")
    try:
        sa = f"system:serviceaccount:{namespace}:deeprec-operator"

        def can(*args):
            return k8s_plane.kubectl("auth", "can-i", *args, "--as", sa,
                                     check=False).stdout.strip() == "yes"

        for ns in (namespace, "default", "kube-system"):
            assert can("patch", "deeprecmodels.serving.deeprec.io", "-n", ns)
            assert can("patch", "deeprecmodels.serving.deeprec.io/status", "-n", ns)
            assert can("create", "deployments.apps", "-n", ns)
            assert can("patch", "pods", "-n", ns)
            assert not can("get", "secrets", "-n", ns)
            assert not can("list", "secrets", "-n", ns)
            assert not can("delete", "deployments.apps", "-n", ns)
            assert not can("delete", "pods", "-n", ns)
            assert not can("create", "pods", "-n", ns)
        assert can("list", "customresourcedefinitions.apiextensions.k8s.io")
        for verb, what in (("create", "clusterroles"), ("create", "clusterrolebindings"),
                           ("create", "roles"), ("patch", "nodes"), ("delete", "namespaces"),
                           ("create", "customresourcedefinitions.apiextensions.k8s.io")):
            assert not can(verb, what, "--all-namespaces")
    finally:
        k8s_plane.helm("uninstall", release, "-n", namespace, "--wait", check=False)


def test_user_pod_template_gets_the_runtime_as_a_sidecar(k8s_plane, namespace, operator):
    """A DeepRecModel with a pod template of the user's own: their container keeps its spec, the
    runtime joins it (reached on localhost), and rollback still annotates the pods in place."""
    doc = _model_doc()
    doc["metadata"] = {"name": "with-sidecar"}
    doc["spec"]["replicas"] = 1
    doc["spec"]["storage"] = {"storeType": "local", "checkpointDir": "/models/ckpt",
                              "savedModelDir": "/models/saved_model"}
    doc["spec"]["podTemplate"] = {
        "metadata": {"labels": {"team": "ranking"}},
        "spec": {"containers": [{
            "name": "ranker", "image": "example.com/ranker:1.2",
            "env": [{"name": "MODEL_ADDRESS", "value": "localhost:8500"}],
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                          "limits": {"cpu": "1", "memory": "1Gi"}},
        }]},
    }
    k8s_plane.apply(doc, namespace=namespace)
    dep = wait_until(lambda: _get_or_none(k8s_plane, "deployment", "with-sidecar", namespace),
                     timeout=30, message=lambda: f"Deployment; log:\n{operator.log()}")
    containers = {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"ranker", r.RUNTIME_CONTAINER}
    assert containers["ranker"]["image"] == "example.com/ranker:1.2"
    assert containers["ranker"]["env"] == [{"name": "MODEL_ADDRESS", "value": "localhost:8500"}]
    assert dep["spec"]["template"]["metadata"]["labels"]["team"] == "ranking"
    assert "--grpc-port" in containers[r.RUNTIME_CONTAINER]["args"]

    pods = wait_running(k8s_plane, namespace, 1, name="with-sidecar", operator=operator)
    uid = pods[0]["metadata"]["uid"]
    k8s_plane.kubectl("patch", "drm", "with-sidecar", "-n", namespace, "--type", "merge",
                      "-p", '{"spec":{"version":"checkpoint_7"}}')
    wait_until(lambda: [p["metadata"].get("annotations", {}).get(TARGET_ANNOTATION)
                        for p in pods_of(k8s_plane, namespace, "with-sidecar")] == ["checkpoint_7"],
               timeout=5, interval=0.05, message="sidecar pod annotated")
    assert [p["metadata"]["uid"] for p in pods_of(k8s_plane, namespace, "with-sidecar")] == [uid]


def _get_or_none(plane, kind, name, ns):
    result = plane.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None
