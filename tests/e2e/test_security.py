"""Security of the operator and the pods it makes, on a real control plane.

- RBAC: `kubectl auth can-i --list` for the chart's ServiceAccount, printed and asserted: no
  wildcard verbs or resources, Secrets readable by name (get) and creatable (for generated model
  tokens) in the watched namespace and nowhere else, never listed, watched, updated or deleted;
  no pods/exec or attach or port-forward, no escalate/bind/impersonate, no token minting; the only
  delete is of NetworkPolicies.
- The chart's ValidatingAdmissionPolicy: the operator's ServiceAccount cannot use its Secret
  create to mint a ServiceAccount token, nor create a Secret no DeepRecModel controls.
- Secrets: distinctive credential values never reach an operator log (verbose), a ConfigMap, a
  status, an Event, an error message or the Deployment (which refers to the Secret by name).
- Pods: the operator and the runtime run as non-root with a read-only root file system, all
  capabilities dropped and seccomp RuntimeDefault; runtime pods mount no ServiceAccount token
  (asserted on the rendered chart, on the live objects and on the pod the API server admitted).
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
from typing import Any

import pytest
import yaml

from deeprec_operator import resources as r
from tests.support.operator_e2e import (
    CHART,
    FaultyOperator,
    fetch,
    pods_of,
    running,
    small_model,
)
from tests.support.plane import wait_until

pytestmark = pytest.mark.e2e
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def _can_i_list(plane, sa: str, namespace: str) -> list[dict[str, Any]]:
    """`kubectl auth can-i --list` as rows {resources, urls, names, verbs} (printed for the log)."""
    out = plane.kubectl("auth", "can-i", "--list", "--as", sa, "-n", namespace).stdout
    sys.stderr.write(f"\n[e2e] kubectl auth can-i --list --as {sa} -n {namespace}\n{out}")
    rows = []
    for line in out.splitlines()[1:]:
        cells = re.findall(r"\[[^\]]*\]|\S+", line)
        if len(cells) < 4:
            continue
        resource = "" if cells[0].startswith("[") else cells[0]
        brackets = [c for c in cells if c.startswith("[")]
        urls, names, verbs = (b.strip("[]").split() for b in brackets[-3:])
        rows.append({"resources": resource, "urls": urls, "names": names, "verbs": verbs})
    return rows


def test_operator_service_account_is_least_privilege(k8s_plane, namespace, installed):
    release, _ = installed
    sa = f"system:serviceaccount:{namespace}:{release}-deeprec-serving"
    rows = _can_i_list(k8s_plane, sa, namespace)
    resources = {row["resources"]: set(row["verbs"]) for row in rows if row["resources"]}

    for row in rows:
        assert "*" not in row["verbs"], f"wildcard verb: {row}"
        assert "*" not in row["resources"].split("."), f"wildcard resource: {row}"
    # get: existence checks and the probe's CA, client certificate and token; create: a model's
    # generated token Secret (narrowed by the chart's admission policy, see below).
    assert resources["secrets"] == {"get", "create"}
    assert not any(name.startswith(("pods/exec", "pods/attach", "pods/portforward", "pods/proxy",
                                    "serviceaccounts/token", "nodes/proxy")) for name in resources)
    assert not any(verbs & {"escalate", "bind", "impersonate", "deletecollection"}
                   for verbs in resources.values()), resources
    # The one delete: a NetworkPolicy the operator made and its model no longer asks for.
    assert {name for name, verbs in resources.items() if "delete" in verbs} == {
        "networkpolicies.networking.k8s.io"}, resources
    assert resources["networkpolicies.networking.k8s.io"] == {"get", "create", "patch", "delete"}
    # The rest of the table is exactly what the operator uses (plus Kubernetes' self-review rows).
    assert resources["deeprecmodels.serving.deeprec.io"] == {"get", "list", "watch", "patch"}
    assert resources["pods"] == {"get", "list", "watch", "patch"}
    assert resources["events"] == {"create"}

    elsewhere = {row["resources"]: set(row["verbs"]) for row in _can_i_list(k8s_plane, sa, "default")
                 if row["resources"]}
    assert "secrets" not in elsewhere and "pods" not in elsewhere, elsewhere

    def can(*args: str) -> bool:
        return k8s_plane.kubectl("auth", "can-i", *args, "--as", sa, check=False).stdout.strip() == "yes"

    assert not can("get", "secrets", "--all-namespaces")
    assert not can("create", "secrets", "-n", "default")
    for verb in ("list", "watch", "update", "patch", "delete"):
        assert not can(verb, "secrets", "-n", namespace), f"{verb} secrets"
    assert not can("create", "pods/exec", "-n", namespace)
    assert not can("create", "serviceaccounts/token", "-n", namespace)
    assert not can("escalate", "roles.rbac.authorization.k8s.io", "-n", namespace)
    assert not can("bind", "clusterroles.rbac.authorization.k8s.io")
    for kind in ("users", "groups", "serviceaccounts"):
        assert not can("impersonate", kind, "-n", namespace)


def _rendered(plane, *values: str) -> list[dict[str, Any]]:
    out = plane.helm("template", "drs", str(CHART), "-n", "ops", "--kube-version", "v1.34.4", *values).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _hardened(container: dict[str, Any], pod_spec: dict[str, Any], what: str) -> None:
    ctx = container.get("securityContext") or {}
    pod_ctx = pod_spec.get("securityContext") or {}
    assert ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot"), f"{what}: may run as root"
    assert ctx.get("readOnlyRootFilesystem") is True, f"{what}: writable root file system"
    assert ctx.get("allowPrivilegeEscalation") is False, f"{what}: privilege escalation allowed"
    assert ctx.get("capabilities", {}).get("drop") == ["ALL"] and not ctx["capabilities"].get("add"), what
    seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
    assert seccomp == "RuntimeDefault", f"{what}: seccomp {seccomp}"
    assert not ctx.get("privileged"), what
    assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 1)) != 0, f"{what}: runAsUser 0"


def test_rendered_chart_rbac_and_pod_are_hardened(k8s_plane):
    for values in ((), ("--set", "watchNamespaces={models-a,models-b}")):
        docs = _rendered(k8s_plane, *values)
        for doc in docs:
            for rule in doc.get("rules") or []:
                for key in ("verbs", "resources", "apiGroups"):
                    assert "*" not in rule.get(key, []), (doc["kind"], doc["metadata"]["name"], rule)
                assert not set(rule["verbs"]) & {"escalate", "bind", "impersonate"}, rule
                assert not any("/" in res and res.split("/")[1] in {"exec", "attach", "portforward", "token"}
                               for res in rule["resources"]), rule
        dep = next(d for d in docs if d["kind"] == "Deployment")
        pod = dep["spec"]["template"]["spec"]
        _hardened(pod["containers"][0], pod, "rendered operator container")
        if values:  # namespaced: Secrets only through the per-namespace Roles
            cluster_rules = [rule for d in docs if d["kind"] == "ClusterRole" for rule in d["rules"]]
            assert not any("secrets" in rule["resources"] for rule in cluster_rules), cluster_rules


def test_operator_and_runtime_pods_are_hardened(k8s_plane, namespace, installed, tmp_path):
    release, kubeconfig = installed
    op_dep = fetch(k8s_plane, "deployment", f"{release}-deeprec-serving", namespace)
    op_pod = op_dep["spec"]["template"]["spec"]
    _hardened(op_pod["containers"][0], op_pod, "installed operator container")

    op = FaultyOperator(k8s_plane, namespace, kubeconfig, tmp_path / "operator.log").start()
    try:
        k8s_plane.apply(small_model("hardened"), namespace=namespace)
        pods = wait_until(
            lambda: (ps := running(pods_of(k8s_plane, namespace, "hardened"))) and len(ps) == 2 and ps,
            timeout=40,
            message=lambda: f"2 runtime pods; log:\n{op.log()}",
        )
    finally:
        op.stop()
    dep = fetch(k8s_plane, "deployment", "hardened", namespace)
    spec = dep["spec"]["template"]["spec"]
    runtime = next(c for c in spec["containers"] if c["name"] == r.RUNTIME_CONTAINER)
    _hardened(runtime, spec, "runtime container (Deployment)")
    assert spec["automountServiceAccountToken"] is False
    for pod in pods:  # what the API server admitted: no token volume was injected
        pod_spec = pod["spec"]
        _hardened(next(c for c in pod_spec["containers"] if c["name"] == r.RUNTIME_CONTAINER), pod_spec,
                  f"runtime container (pod {pod['metadata']['name']})")
        assert not any("serviceAccountToken" in json.dumps(v) or v["name"].startswith("kube-api-access")
                       for v in pod_spec.get("volumes") or []), pod_spec["volumes"]
        assert not any(m["mountPath"].startswith(TOKEN_PATH) for c in pod_spec["containers"]
                       for m in c.get("volumeMounts") or []), "a ServiceAccount token is mounted"


def test_secret_values_never_leave_the_secret(k8s_plane, namespace, installed, tmp_path):
    values = {key: f"{key.upper()}-{secrets.token_hex(12)}"
              for key in ("oss_access_id", "oss_access_key", "redis_password")}
    k8s_plane.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "model-creds"},
                     "stringData": values}, namespace=namespace)
    # Same values under the wrong keys: the error path names the Secret and the key, never a value.
    k8s_plane.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wrong-keys"},
                     "stringData": {f"not_{k}": v for k, v in values.items()}}, namespace=namespace)
    storage = {"storeType": "oss", "checkpointDir": "oss://b/ckpt/", "savedModelDir": "oss://b/sm/",
               "ossEndpoint": "oss.example"}
    good = small_model("secure", storage={**storage, "credentialsSecretRef": {"name": "model-creds"}},
                  modelConfig={"feature_store_type": "redis"},
                  featureStore={"redisUrl": "redis://redis.example:6379",
                                "passwordSecretRef": {"name": "model-creds"}})
    broken = small_model("broken", storage={**storage, "credentialsSecretRef": {"name": "wrong-keys"}})

    op = FaultyOperator(k8s_plane, namespace, installed[1], tmp_path / "operator.log")
    op.start(extra_args=("--verbose",))  # debug logging: kopf logs patches and bodies
    try:
        k8s_plane.apply([good, broken], namespace=namespace)
        wait_until(lambda: len(running(pods_of(k8s_plane, namespace, "secure"))) == 2, timeout=40,
                   message=lambda: f"secure's pods; log:\n{op.log()}")
        wait_until(
            lambda: (fetch(k8s_plane, "drm", "broken", namespace).get("status") or {}).get("conditions"),
            timeout=30,
            message="broken's status",
        )
        wait_until(
            lambda: (fetch(k8s_plane, "drm", "secure", namespace).get("status") or {}).get("readyReplicas"),
            timeout=30,
            message="secure's status",
        )
    finally:
        op.stop()
    # A credential in the resource itself is refused by the API server without echoing it.
    leaked = small_model("inline", modelConfig={"oss_access_key": values["oss_access_key"]})
    refused = k8s_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(leaked), check=False
    )
    assert refused.returncode != 0

    places = {
        "operator log": op.log_path.read_text(errors="replace"),
        "configmaps": k8s_plane.kubectl("get", "configmaps", "-n", namespace, "-o", "json").stdout,
        "deeprecmodels": k8s_plane.kubectl("get", "drm", "-n", namespace, "-o", "json").stdout,
        "events": k8s_plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout,
        "deployments": k8s_plane.kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout,
        "pods": k8s_plane.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout,
        "apply error": refused.stdout + refused.stderr,
    }
    assert "SecretKeyNotFound" in places["deeprecmodels"] and "wrong-keys" in places["deeprecmodels"]
    assert "model-creds" in places["deployments"], "the Deployment refers to the Secret by name"
    assert len(places["operator log"]) > 10_000, "the verbose log should have something to search"
    for where, text in places.items():
        for key, value in values.items():
            assert value not in text, f"the value of {key} leaked into the {where}"


def test_secret_create_cannot_mint_service_account_tokens(k8s_plane, namespace, installed):
    """RBAC cannot limit create by type; the chart's ValidatingAdmissionPolicy does: acting as the
    operator's ServiceAccount, a ServiceAccount token Secret and an unowned Secret are refused,
    while a Secret controlled by a DeepRecModel (what the operator makes) is admitted."""
    release, _ = installed
    sa = f"system:serviceaccount:{namespace}:{release}-deeprec-serving"
    k8s_plane.apply(small_model("owner"), namespace=namespace)
    owner = fetch(k8s_plane, "drm", "owner", namespace)
    owned = {"apiVersion": "serving.deeprec.io/v1alpha1", "kind": "DeepRecModel", "name": "owner",
             "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}

    def create_as_operator(secret: dict[str, Any]):
        return k8s_plane.kubectl("create", "-n", namespace, "--as", sa, "-f", "-",
                                 input=json.dumps(secret), check=False)

    minted = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
              "metadata": {"name": "minted", "ownerReferences": [owned],
                           "annotations": {"kubernetes.io/service-account.name": "default"}}}
    # The API server enforces a new ValidatingAdmissionPolicy once its informers have seen the
    # policy and its binding, asynchronously after `helm install --wait` returns: until then
    # (seconds at most) a create may pass, so it is undone and tried again.
    deadline = time.monotonic() + 30
    while True:
        mint = create_as_operator(minted)
        if mint.returncode != 0 or time.monotonic() > deadline:
            break
        k8s_plane.kubectl("delete", "secret", "minted", "-n", namespace, check=False)
        time.sleep(0.5)
    assert mint.returncode != 0 and "may only create Opaque Secrets" in mint.stderr, mint.stderr
    unowned = create_as_operator({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "stray"},
                                  "stringData": {"k": "v"}})
    assert unowned.returncode != 0 and "controlled by a DeepRecModel" in unowned.stderr, unowned.stderr
    ok = create_as_operator({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                             "metadata": {"name": "owner-auth-token", "ownerReferences": [owned]},
                             "stringData": {"token": "t"}})
    assert ok.returncode == 0, ok.stderr
    # Users (here: the admin) are not affected by the policy.
    k8s_plane.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "users-own"},
                     "stringData": {"k": "v"}}, namespace=namespace)
