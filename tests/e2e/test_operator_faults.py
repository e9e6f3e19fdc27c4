"""Faults around the operator on a real control plane: it is killed, the API server goes away, writes fail.

- SIGKILL at named steps of a sync (tests/support/operator/faulty_kube.py, a wrapper around the
  operator's API client): after the ConfigMap, after the Deployment, after the Service, in the middle of the
  pod-annotation fan-out, before and after the status write. Each restart must converge with one
  child of each kind and with the latest spec.version on every pod, including versions patched
  while it was down.
- kube-apiserver killed and restarted under a running operator: the watch resumes.
- A proxy between the operator and the API server answers 409/500/503 to a fifth of the writes
  while 50 models are created, re-pinned and half deleted at once.
- Spec errors the schema cannot catch: Degraded with a reason, a Warning Event, no crash loop;
  a pinned version the store does not have, reported by a real runtime process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from deeprec_operator import resources as r
from deeprec_operator.versions import TARGET_ANNOTATION
from tests.support.apiproxy import FaultProxy
from tests.support.operator_e2e import (
    DEMO_NAME,
    FaultyOperator,
    condition,
    demo_resource,
    fetch,
    pods_of,
    running,
    small_model,
)
from tests.support.plane import DownwardAPIBridge, Plane, service_account_kubeconfig, wait_until

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
PLANE_SCRIPT = REPO / "scripts" / "k8s-plane.sh"
#: `deeprec-operator` with its API client wrapped in the fault hooks (same arguments).
FAULTY_OPERATOR = REPO / "tests" / "support" / "operator" / "faulty_kube.py"


def _children(plane, ns: str, name: str) -> dict[str, int]:
    selector = f"{r.MODEL_LABEL}={name}"
    out = {}
    for kind in ("configmaps", "deployments", "services", "replicasets"):
        out[kind] = len(plane.kubectl_json("get", kind, "-n", ns, "-l", selector)["items"])
    return out


def _exists(plane, kind: str, name: str, ns: str) -> bool:
    return plane.kubectl("get", kind, name, "-n", ns, check=False).returncode == 0


def _patch(plane, ns: str, name: str, spec: dict[str, Any]) -> None:
    plane.kubectl("patch", "drm", name, "-n", ns, "--type", "merge", "-p", json.dumps({"spec": spec}))


def _targets(plane, ns: str, name: str) -> list[str | None]:
    return [p["metadata"].get("annotations", {}).get(TARGET_ANNOTATION)
            for p in pods_of(plane, ns, name) if not p["metadata"].get("deletionTimestamp")]


def _state(plane, ns: str, name: str) -> str:
    drm = fetch(plane, "drm", name, ns)
    status = {k: v for k, v in (drm.get("status") or {}).items() if k != "conditions"}
    return (f"generation {drm['metadata']['generation']}, status {status}, "
            f"pod targets {_targets(plane, ns, name)}")


def _converged(plane, ns: str, name: str, *, version: str, replicas: int):
    """Everything the operator decides is in place: children, pods, annotations, status."""
    drm = fetch(plane, "drm", name, ns)
    status = drm.get("status") or {}
    pods = pods_of(plane, ns, name)
    return (status.get("observedGeneration") == drm["metadata"]["generation"]
            and status.get("targetVersion") == version
            and status.get("updatedReplicas") == replicas
            and len(pods) == replicas and len(running(pods)) == replicas
            and all(t == version for t in _targets(plane, ns, name))
            and status)


def test_sigkill_at_each_reconcile_step_then_restart_converges(k8s_plane, namespace, faulty):
    """One model through a chain of crashes: each restart gets one step further, then dies there."""
    name = "crashy"
    faulty.start(kill_at="configmap-applied")
    k8s_plane.apply(small_model(name, version="checkpoint_1"), namespace=namespace)
    faulty.wait_killed("configmap-applied")
    assert _exists(k8s_plane, "configmap", r.config_map_name(name), namespace)
    assert not _exists(k8s_plane, "deployment", name, namespace)

    faulty.start(kill_at="deployment-applied")
    faulty.wait_killed("deployment-applied")
    assert _exists(k8s_plane, "deployment", name, namespace)
    assert not _exists(k8s_plane, "service", name, namespace)

    faulty.start(kill_at="service-applied")
    faulty.wait_killed("service-applied")
    assert _exists(k8s_plane, "service", name, namespace)
    # Pods exist now (the Deployment was applied); the pod watcher may have annotated them.
    wait_until(lambda: len(running(pods_of(k8s_plane, namespace, name))) == 2, timeout=30,
               message="2 Running pods")
    assert set(_targets(k8s_plane, namespace, name)) <= {None, "checkpoint_1"}

    # A decision made while the operator is down: re-pin and scale up.
    _patch(k8s_plane, namespace, name, {"version": "checkpoint_2", "replicas": 3})
    wait_until(lambda: len(running(pods_of(k8s_plane, namespace, name))) == 2, timeout=10)

    # Dies just before the second pod's patch: whatever else landed, that pod is left behind.
    faulty.start(kill_at="pod-annotate@2")
    faulty.wait_killed("pod-annotate@2")
    targets = _targets(k8s_plane, namespace, name)
    assert targets.count("checkpoint_2") < len(targets), targets
    sys.stderr.write(f"\n[e2e] killed mid fan-out: {targets.count('checkpoint_2')} of {len(targets)} "
                     "pods annotated\n")

    faulty.start(kill_at="status-write")
    faulty.wait_killed("status-write")
    status = fetch(k8s_plane, "drm", name, namespace).get("status") or {}
    assert status.get("observedGeneration") is None, "the status write must not have happened"

    _patch(k8s_plane, namespace, name, {"version": "checkpoint_3"})  # another decision while down
    faulty.start(kill_at="status-written")
    faulty.wait_killed("status-written")
    status = fetch(k8s_plane, "drm", name, namespace)["status"]
    assert status["targetVersion"] == "checkpoint_3"

    faulty.start()
    status = wait_until(
        lambda: _converged(k8s_plane, namespace, name, version="checkpoint_3", replicas=3),
        timeout=30,
        message=lambda: f"convergence after the last restart; log:\n{faulty.log()}",
    )
    assert _children(k8s_plane, namespace, name) == {"configmaps": 1, "deployments": 1, "services": 1,
                                                     "replicasets": 1}
    dep = fetch(k8s_plane, "deployment", name, namespace)
    assert [o["kind"] for o in dep["metadata"]["ownerReferences"]] == ["DeepRecModel"]
    assert condition({"status": status}, "Degraded")["status"] == "False"
    assert faulty.proc.poll() is None


def test_sigkill_mid_rollback_fan_out_keeps_the_decision(k8s_plane, namespace, faulty):
    """A converged model re-pinned while the fan-out is cut: the restart finishes the rollback."""
    name = "rollback"
    faulty.start()
    k8s_plane.apply(small_model(name, replicas=4), namespace=namespace)
    wait_until(lambda: _converged(k8s_plane, namespace, name, version="latest", replicas=4), timeout=40,
               message=lambda: f"initial convergence; log:\n{faulty.log()}")
    faulty.stop()
    uids = sorted(p["metadata"]["uid"] for p in pods_of(k8s_plane, namespace, name))

    faulty.start(kill_at="pod-annotate@2")
    time.sleep(2)  # resume: nothing to patch, so the hook stays quiet until the rollback
    assert faulty.proc.poll() is None, faulty.log()
    _patch(k8s_plane, namespace, name, {"version": "checkpoint_1"})
    faulty.wait_killed("pod-annotate@2")
    targets = _targets(k8s_plane, namespace, name)
    assert targets.count("checkpoint_1") < 4, targets

    faulty.start()
    wait_until(lambda: _converged(k8s_plane, namespace, name, version="checkpoint_1", replicas=4), timeout=30,
               message=lambda: f"rollback finished after restart; log:\n{faulty.log()}")
    assert sorted(p["metadata"]["uid"] for p in pods_of(k8s_plane, namespace, name)) == uids, (
        "pods were replaced"
    )
    assert _children(k8s_plane, namespace, name)["replicasets"] == 1


def test_model_deleted_while_the_operator_is_down_takes_its_children(k8s_plane, namespace, faulty):
    """No finalizer holds a model: the garbage collector removes its children without the operator."""
    name = "orphan"
    faulty.start()
    k8s_plane.apply(small_model(name), namespace=namespace)
    wait_until(lambda: _converged(k8s_plane, namespace, name, version="latest", replicas=2), timeout=40,
               message=lambda: f"initial convergence; log:\n{faulty.log()}")
    # A model that still carries kopf's finalizer (timers used to add it) loses it.
    _patch_meta = '{"metadata":{"finalizers":["kopf.zalando.org/KopfFinalizerMarker"]}}'
    k8s_plane.kubectl("patch", "drm", name, "-n", namespace, "--type", "merge", "-p", _patch_meta)
    wait_until(lambda: not fetch(k8s_plane, "drm", name, namespace)["metadata"].get("finalizers"), timeout=15,
               message=lambda: f"kopf's finalizer removed; log:\n{faulty.log()}")
    faulty.kill()

    k8s_plane.kubectl("delete", "drm", name, "-n", namespace, "--wait=true", "--timeout=20s")
    wait_until(lambda: not any(_children(k8s_plane, namespace, name).values()), timeout=60, interval=0.5,
               message=lambda: f"children gone: {_children(k8s_plane, namespace, name)}")


@pytest.fixture
def private_plane(tmp_path) -> Plane:
    """A control plane of this test's own, since restarting its API server disturbs every client.

    After kube-apiserver restarts, kube-controller-manager and kwok here take from 13 s to several
    minutes to resume their watches (nodes turn NotReady, Deployments stop scaling); tests that
    follow on a shared plane would inherit that.
    """
    plane_dir = tmp_path / "plane"
    proc = subprocess.run(["bash", str(PLANE_SCRIPT), "up", str(plane_dir), "--owner-pid", str(os.getpid())],
                          check=False, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"could not start a private control plane:\n{proc.stderr[-4000:]}", pytrace=False)
    try:
        yield Plane.from_dir(plane_dir)
    finally:
        subprocess.run(
            ["bash", str(PLANE_SCRIPT), "down", str(plane_dir)],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )


def test_apiserver_restart_during_watch(private_plane, tmp_path, request):
    plane, ns, name = private_plane, "models", "watched"
    plane.kubectl("create", "namespace", ns)
    wait_until(
        lambda: plane.kubectl("get", "serviceaccount", "default", "-n", ns, check=False).returncode == 0,
        timeout=30,
        message="the default ServiceAccount",
    )
    plane.helm("install", "drs", str(REPO / "helm" / "deeprec-serving"), "-n", ns,
               "--set", f"watchNamespaces={{{ns}}}", "--wait", "--timeout", "90s")
    kubeconfig = service_account_kubeconfig(
        plane, ns, "drs-deeprec-serving", tmp_path / "operator.kubeconfig"
    )
    op = FaultyOperator(plane, ns, kubeconfig, tmp_path / "operator.log").start()
    try:
        plane.apply(small_model(name), namespace=ns)
        wait_until(lambda: _converged(plane, ns, name, version="latest", replicas=2), timeout=40,
                   message=lambda: f"initial convergence; log:\n{op.log()}")

        # Down longer than the operator client's own retries (about 3.5 s), so the resync fails.
        subprocess.run(["bash", str(PLANE_SCRIPT), "restart-apiserver", str(plane.dir), "--kill",
                        "--down-seconds", "8"], check=True, capture_output=True, text=True, timeout=120)
        restarted = time.monotonic()
        # The first change after the restart reaches the operator through its resumed watch.
        _patch(plane, ns, name, {"version": "checkpoint_7", "replicas": 3})

        def operator_done():
            drm = fetch(plane, "drm", name, ns)
            status = drm.get("status") or {}
            dep = fetch(plane, "deployment", name, ns)
            return (status.get("observedGeneration") == drm["metadata"]["generation"]
                    and status.get("targetVersion") == "checkpoint_7" and dep["spec"]["replicas"] == 3
                    and set(_targets(plane, ns, name)) == {"checkpoint_7"})
        # Only the operator's part: the third pod is kube-controller-manager's, which lags.
        wait_until(operator_done, timeout=30,
                   message=lambda: f"the operator's part after the API server restart: "
                                   f"{_state(plane, ns, name)}; log:\n{op.log()}")
        sys.stderr.write(
            f"\n[e2e] operator converged {time.monotonic() - restarted:.1f}s after the API server came back\n"
        )
        assert op.proc.poll() is None, "the operator must ride out an API server restart"
        selector = f"{r.MODEL_LABEL}={name}"
        for kind in ("configmaps", "deployments", "services"):
            assert len(plane.kubectl_json("get", kind, "-n", ns, "-l", selector)["items"]) == 1, kind

        # The operator's calls failed while the API server was down (kopf's watch requests; a
        # sync only when it had something to write); its resync must be back on its 1 s beat
        # (kopf's default retry delay after a failure is 60 s). A stale status written behind the
        # operator's back is what only the resync repairs: no spec change, so no handler runs.
        log = op.log(400)
        assert re.search(r"Request attempt #?\d+(/\d+)? failed", log) or "failed, next try within" in log, (
            "the outage was too short for the operator to notice")
        plane.kubectl("patch", "drm", name, "-n", ns, "--subresource=status", "--type", "merge",
                      "-p", '{"status":{"readyReplicas":0}}')
        wait_until(lambda: (fetch(plane, "drm", name, ns).get("status") or {}).get("readyReplicas", 0) > 0,
                   timeout=10, message=lambda: f"the resync repairing the status; log:\n{op.log()}")
    except BaseException:
        request.node.add_report_section("call", "operator log", op.log(200))
        raise
    finally:
        op.stop()


def test_fifty_models_converge_through_injected_conflicts_and_server_errors(k8s_plane, namespace, installed,
                                                                          faulty, tmp_path):
    count = 50
    names = [f"m{i:02d}" for i in range(count)]
    with FaultProxy(k8s_plane, rate=0.2, seed=7, ca_dir=tmp_path) as proxy:
        faulty.start(kubeconfig=proxy.kubeconfig(installed[1], tmp_path / "proxied.kubeconfig"),
                     poll_seconds="3")
        started = time.monotonic()
        k8s_plane.apply([small_model(n, replicas=1) for n in names], namespace=namespace)

        def lagging(version: str, subset: list[str]) -> list[str]:
            """The models of `subset` not yet converged on `version`, each with what is missing."""
            drms = {d["metadata"]["name"]: d for d in
                    k8s_plane.kubectl_json("get", "drm", "-n", namespace)["items"]}
            pods = k8s_plane.kubectl_json("get", "pods", "-n", namespace, "-l", r.MODEL_LABEL)["items"]
            by_model = Counter()
            for p in pods:
                if (p["metadata"].get("annotations", {}).get(TARGET_ANNOTATION) == version
                        and p["status"].get("phase") == "Running"
                        and not p["metadata"].get("deletionTimestamp")):
                    by_model[p["metadata"]["labels"][r.MODEL_LABEL]] += 1
            out = []
            for n in subset:
                status = drms[n].get("status") or {}
                if by_model[n] != 1:
                    out.append(f"{n}: {by_model[n]} pods on {version}")
                elif status.get("observedGeneration") != drms[n]["metadata"]["generation"]:
                    out.append(f"{n}: observedGeneration {status.get('observedGeneration')}")
                elif status.get("targetVersion") != version:
                    out.append(f"{n}: status.targetVersion {status.get('targetVersion')}")
            return out

        def all_converged(version: str, subset: list[str]) -> bool:
            return not lagging(version, subset)

        def progress(version: str, subset: list[str]) -> str:
            return (f"lagging: {lagging(version, subset)[:10]}; injected {dict(proxy.injected)}; "
                    f"log:\n{faulty.log(60)}")

        wait_until(lambda: all_converged("latest", names), timeout=120, interval=1,
                   message=lambda: f"{count} models created and converged; {progress('latest', names)}")
        created = time.monotonic() - started

        started = time.monotonic()
        # kubectl talks to the API server directly: only the operator's requests are faulted.
        k8s_plane.kubectl("patch", "drm", *names, "-n", namespace, "--type", "merge",
                          "-p", '{"spec":{"version":"checkpoint_5"}}')
        wait_until(lambda: all_converged("checkpoint_5", names), timeout=90, interval=1,
                   message=lambda: f"{count} models re-pinned; {progress('checkpoint_5', names)}")
        repinned = time.monotonic() - started

        gone, kept = names[::2], names[1::2]
        k8s_plane.kubectl("delete", "drm", *gone, "-n", namespace, "--wait=false")

        def leftovers() -> list[str]:
            return sorted(
                f"{kind} {o['metadata']['name']}"
                for kind in ("deployments", "configmaps", "services")
                for o in k8s_plane.kubectl_json("get", kind, "-n", namespace, "-l", r.MODEL_LABEL)["items"]
                if o["metadata"]["labels"][r.MODEL_LABEL] in gone
            )

        wait_until(lambda: not leftovers(), timeout=60, interval=1,
                   message=lambda: f"children of deleted models gone; left {leftovers()[:10]}; "
                                   f"{progress('checkpoint_5', kept)}")
        injected = dict(proxy.injected)
        assert faulty.proc.poll() is None, "the operator must not crash on injected errors"
        faulty.stop()  # before the proxy goes, so that it does not log connection errors

    assert all_converged("checkpoint_5", kept)
    for n in kept[:5]:
        assert _children(k8s_plane, namespace, n) == {"configmaps": 1, "deployments": 1, "services": 1,
                                                      "replicasets": 1}
    codes = Counter()
    for (_, code), n in injected.items():
        codes[code] += n
    assert {409, 500, 503} <= set(codes), injected
    sys.stderr.write(f"\n[e2e] 50 models through a 20% write-fault proxy: created+converged {created:.1f}s, "
                     f"re-pinned {repinned:.1f}s; injected {dict(codes)}\n")


# --- spec errors the schema cannot catch ----------------------------------------------------------

def _bad_models() -> dict[str, tuple[dict[str, Any], str, str]]:
    """name -> (model, Degraded reason, a phrase the message must contain)."""
    secret_without_key = small_model("nokey", storage={
        "storeType": "oss", "checkpointDir": "oss://b/ckpt/", "savedModelDir": "oss://b/sm/",
        "ossEndpoint": "oss.example", "credentialsSecretRef": {"name": "creds-without-key"}})
    conflicting = small_model("conflict", modelConfig={"model_store_type": "hdfs"})
    redis = small_model("redis", modelConfig={"feature_store_type": "redis"},
                   featureStore={"redisUrl": "redis://redis.example:6379"})
    reserved = small_model(
        "reserved", podTemplate={"spec": {"containers": [{"name": "deeprec-runtime", "image": "x"}]}}
    )
    rejected = small_model(
        "rejected", podTemplate={"spec": {"containers": [{"name": "Not_A_DNS_Label", "image": "x"}]}}
    )
    return {
        "nokey": (secret_without_key, "SecretKeyNotFound", "has no key 'oss_access_key'"),
        "conflict": (conflicting, "ConflictingFields", "spec.modelConfig.model_store_type"),
        "redis": (redis, "MissingCredentials", "spec.featureStore.passwordSecretRef"),
        "reserved": (reserved, "InvalidPodTemplate", "'deeprec-runtime' is reserved"),
        "rejected": (rejected, "ChildRejected", "Not_A_DNS_Label"),
    }


def test_semantic_errors_are_degraded_with_an_event_and_no_crash_loop(k8s_plane, namespace, faulty):
    bad = _bad_models()
    k8s_plane.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds-without-key"},
                     "stringData": {"oss_access_id": "an-id-only"}}, namespace=namespace)
    faulty.start()
    k8s_plane.apply([model for model, _, _ in bad.values()], namespace=namespace)

    def degraded(name: str) -> dict[str, Any]:
        return condition(fetch(k8s_plane, "drm", name, namespace), "Degraded")

    for name, (_, reason, phrase) in bad.items():
        cond = wait_until(lambda n=name, r_=reason: (c := degraded(n)).get("reason") == r_ and c, timeout=30,
                          message=lambda n=name, r_=reason: f"{n}: Degraded/{r_}, have {degraded(n)}; "
                                                            f"log:\n{faulty.log()}")
        assert cond["status"] == "True" and phrase in cond["message"], (name, cond)
        assert not _exists(k8s_plane, "deployment", name, namespace), f"{name}: pods that cannot run"

    def warnings() -> Counter:
        events = k8s_plane.kubectl_json("get", "events", "-n", namespace, "--field-selector", "type=Warning")
        return Counter((e["involvedObject"]["name"], e["reason"]) for e in events["items"]
                       if e["involvedObject"]["kind"] == "DeepRecModel")
    wait_until(lambda: all(warnings()[(n, reason)] for n, (_, reason, _) in bad.items()), timeout=15,
               message=lambda: f"a Warning Event per model, have {warnings()}")
    # No crash loop: the process lives, and a failure is announced once, not on every retry.
    time.sleep(4)
    assert faulty.proc.poll() is None
    counts = warnings()
    for name, (_, reason, _) in bad.items():
        assert counts[(name, reason)] == 1, (name, counts)
    log = faulty.log(2000)
    assert "Traceback" not in log, log[-3000:]

    # Fixing the spec is enough for every one of them.
    k8s_plane.kubectl("patch", "drm", "conflict", "-n", namespace, "--type", "json",
                      "-p", '[{"op":"remove","path":"/spec/modelConfig/model_store_type"}]')
    wait_until(lambda: _exists(k8s_plane, "deployment", "conflict", namespace)
               and degraded("conflict").get("status") == "False", timeout=30,
               message=lambda: f"conflict recovered: {degraded('conflict')}")


def test_pinned_version_that_does_not_exist_is_degraded(k8s_plane, namespace, faulty, demo_model,
                                                         tmp_path):
    """The runtime keeps serving and reports the missing version; the operator turns it into Degraded."""
    model = demo_resource(demo_model)
    model["spec"]["replicas"] = 1
    faulty.start()
    k8s_plane.apply(model, namespace=namespace)
    pod = wait_until(lambda: (ps := running(pods_of(k8s_plane, namespace, DEMO_NAME))) and ps[0], timeout=30,
                     message=lambda: f"a Running pod; log:\n{faulty.log()}")
    config = tmp_path / "model_config.json"
    config_map = fetch(k8s_plane, "configmap", r.config_map_name(DEMO_NAME), namespace)
    config.write_text(config_map["data"][r.CONFIG_FILE])
    annotations = tmp_path / "annotations"
    log_path = tmp_path / "runtime.log"
    with DownwardAPIBridge(k8s_plane.kubeconfig, namespace, pod["metadata"]["name"], annotations), \
            open(log_path, "wb") as log:
        runtime = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "deeprec-runtime"),
                "serve",
                "--config",
                str(config),
                "--grpc-port",
                str(r.GRPC_PORT),
                "--http-port",
                "0",
                "--host",
                pod["status"]["podIP"],
                "--annotations-file",
                str(annotations),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            def status() -> dict[str, Any]:
                return fetch(k8s_plane, "drm", DEMO_NAME, namespace).get("status") or {}

            def logs() -> str:
                return f"{log_path.read_text(errors='replace')[-2000:]}\n--- operator ---\n{faulty.log(30)}"

            wait_until(lambda: status().get("activeVersion") == "checkpoint_3", timeout=180, interval=0.5,
                       message=lambda: f"the runtime serving checkpoint_3\n{logs()}")
            _patch(k8s_plane, namespace, DEMO_NAME, {"version": "checkpoint_99"})
            cond = wait_until(lambda: (c := condition({"status": status()}, "Degraded")).get("reason")
                              == "UpdateFailed" and c, timeout=60, interval=0.5,
                              message=lambda: f"Degraded/UpdateFailed: {status()}\n{logs()}")
            assert "checkpoint_99" in cond["message"] and "does not exist" in cond["message"], cond
            assert status()["activeVersion"] == "checkpoint_3", "the runtime must keep serving what it has"
            events = k8s_plane.kubectl_json("get", "events", "-n", namespace, "--field-selector",
                                            f"involvedObject.name={DEMO_NAME},type=Warning")["items"]
            assert [e["reason"] for e in events].count("UpdateFailed") == 1, events
            assert faulty.proc.poll() is None and runtime.poll() is None, logs()
        finally:
            runtime.send_signal(signal.SIGTERM)
            try:
                runtime.wait(timeout=20)
            except subprocess.TimeoutExpired:
                runtime.kill()
