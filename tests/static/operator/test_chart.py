"""The chart rendered by the real helm binary: lint, RBAC scope, hardened operator pod."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.operator.manifests import CHART_DIR, HELM

READ_ONLY = {"get", "list", "watch"}


@pytest.fixture(scope="module")
def helm() -> Path:
    if not HELM.exists():
        # Not a skip: CI counts skips as passes, and the chart must be checked.
        pytest.fail(f"helm not found at {HELM}; build it with scripts/k8s-plane.sh build", pytrace=False)
    return HELM


def _run(helm: Path, *args: str) -> str:
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _render(helm: Path, *values: str) -> list[dict]:
    args = ["template", "rel", str(CHART_DIR), "-n", "ops", "--kube-version", "1.34.4"]
    for v in values:
        args += ["-f", str(CHART_DIR / "ci" / v)] if v.endswith(".yaml") else ["--set", v]
    return [d for d in yaml.safe_load_all(_run(helm, *args)) if d]


def _by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("values", [None, "namespaced-values.yaml", "clusterwide-values.yaml"])
def test_lint_is_clean(helm, values):
    args = ["lint", "--strict", str(CHART_DIR)]
    if values:
        args += ["-f", str(CHART_DIR / "ci" / values)]
    out = _run(helm, *args)
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


def test_watched_namespaces_get_namespaced_roles_only(helm):
    docs = _render(helm, "namespaced-values.yaml")
    roles = _by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["models-a", "models-b"]
    assert sorted(b["metadata"]["namespace"] for b in _by_kind(docs, "RoleBinding")) == [
        "models-a",
        "models-b",
    ]
    for binding in _by_kind(docs, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "rel-deeprec-serving", "namespace": "ops"}
        ]
    cluster_rules = [rule for cr in _by_kind(docs, "ClusterRole") for rule in cr["rules"]]
    assert {res for rule in cluster_rules for res in rule["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
    }
    assert all(set(rule["verbs"]) <= READ_ONLY for rule in cluster_rules)
    rules = roles[0]["rules"]
    secrets = [r for r in rules if "secrets" in r["resources"]]
    # get: existence checks and the probe's TLS material and token; create: generated tokens.
    # Never list, watch, update or delete.
    assert [r["verbs"] for r in secrets] == [["get", "create"]]
    assert not any("*" in r["verbs"] for r in rules)
    # The one delete: a NetworkPolicy the operator made and the model no longer asks for.
    assert [r["resources"] for r in rules if "delete" in r["verbs"]] == [["networkpolicies"]]
    args = _by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=models-a" in args and "--namespace=models-b" in args


def test_all_namespaces_use_a_cluster_role_and_existing_account(helm):
    docs = _render(helm, "clusterwide-values.yaml")
    assert not _by_kind(docs, "Role") and not _by_kind(docs, "ServiceAccount")
    names = {cr["metadata"]["name"] for cr in _by_kind(docs, "ClusterRole")}
    assert names == {"rel-deeprec-serving-discovery", "rel-deeprec-serving-models"}
    pod = _by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "deeprec-operator"
    assert not any(a.startswith("--namespace") for a in pod["containers"][0]["args"])


def test_rbac_can_be_left_to_the_user(helm):
    docs = _render(helm, "rbac.create=false")
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]


def test_operator_pod_is_hardened(helm):
    deployment = _by_kind(_render(helm), "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["image"] == "ghcr.io/deeprec-serving/deeprec-operator:0.1.0"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["DEEPREC_RUNTIME_IMAGE"] == "ghcr.io/deeprec-serving/deeprec-runtime:0.1.0"
    # Where the operator runs: the NetworkPolicies it writes admit exactly its own pods.
    assert env["DEEPREC_OPERATOR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    labels = dict(kv.split("=") for kv in env["DEEPREC_OPERATOR_POD_LABELS"].split(","))
    assert labels == deployment["spec"]["selector"]["matchLabels"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
