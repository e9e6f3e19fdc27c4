"""Secret access in the chart's RBAC: `get` (and `create`, for generated tokens) in each watched
namespace by default, never cluster-wide unless rbac.secretCheck asks for it; where create is
granted, a ValidatingAdmissionPolicy narrows it to Opaque Secrets owned by a DeepRecModel
(rendered by the real helm binary)."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.support.operator.manifests import CHART_DIR, HELM

RBAC_KINDS = ("Role", "ClusterRole")


def _render(*sets: str) -> list[dict]:
    if not HELM.exists():
        # Not a skip: CI counts skips as passes, and the chart must be checked.
        pytest.fail(f"helm not found at {HELM}; build it with scripts/k8s-plane.sh build", pytrace=False)
    args = [str(HELM), "template", "rel", str(CHART_DIR), "-n", "ops", "--kube-version", "1.34.4"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _secret_grants(docs: list[dict]) -> dict[str, list[list[str]]]:
    """Kind/namespace of every Role or ClusterRole -> verbs of its rules on Secrets."""
    grants: dict[str, list[list[str]]] = {}
    for doc in docs:
        if doc["kind"] not in RBAC_KINDS:
            continue
        verbs = [r["verbs"] for r in doc["rules"] if "secrets" in r["resources"]]
        if verbs:
            where = doc["metadata"].get("namespace", "cluster")
            grants[f"{doc['kind']}/{where}"] = verbs
    return grants


GET_CREATE = [["get", "create"]]


@pytest.mark.parametrize(("sets", "expected"), [
    # Every namespace watched: no Secret access anywhere unless asked for.
    ((), {}),
    (("rbac.secretCheck=false",), {}),
    (("rbac.secretCheck=true",), {"ClusterRole/cluster": GET_CREATE}),
    (("rbac.secretCheck=true", "rbac.tokenSecrets=false"), {"ClusterRole/cluster": [["get"]]}),
    # Watched namespaces: get and create in each of them by default, nothing cluster-wide.
    (("watchNamespaces={models-a,models-b}",),
     {"Role/models-a": GET_CREATE, "Role/models-b": GET_CREATE}),
    (("watchNamespaces={models-a,models-b}", "rbac.secretCheck=true"),
     {"Role/models-a": GET_CREATE, "Role/models-b": GET_CREATE}),
    (("watchNamespaces={models-a,models-b}", "rbac.tokenSecrets=false"),
     {"Role/models-a": [["get"]], "Role/models-b": [["get"]]}),
    # create rides on get: no create without it.
    (("watchNamespaces={models-a,models-b}", "rbac.secretCheck=false"), {}),
    (("watchNamespaces={models-a,models-b}", "rbac.secretCheck=false", "rbac.tokenSecrets=true"), {}),
])
def test_secret_access_is_granted_only_where_asked(sets, expected):
    docs = _render(*sets)
    assert _secret_grants(docs) == expected
    # Secret creation always comes with the policy that narrows it; no creation, no policy.
    policies = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    creates = any("create" in verbs for grants in expected.values() for verbs in grants)
    assert len(policies) == (1 if creates else 0)
    # The rest of the operator's rules do not depend on the switch.
    models = [d for d in docs if d["kind"] in RBAC_KINDS and not d["metadata"]["name"].endswith("-discovery")]
    assert models and all(any("deeprecmodels" in r["resources"] for r in d["rules"]) for d in models)


def test_secret_policy_admits_only_owned_opaque_secrets_of_the_operator():
    docs = _render("watchNamespaces={models-a}")
    policy = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")
    binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"][0]["resources"] == ["secrets"]
    # Only the operator's own requests are checked: users keep creating what they like.
    (condition,) = spec["matchConditions"]
    operator = "system:serviceaccount:ops:rel-deeprec-serving"
    assert condition["expression"] == f'request.userInfo.username == "{operator}"'
    rules = " ".join(v["expression"] for v in spec["validations"])
    assert 'object.type == "Opaque"' in rules and '"DeepRecModel"' in rules and "o.controller" in rules
    # The enforcement itself is proved on the control plane (tests/e2e/test_security.py).


def test_clusters_before_admission_policies_get_no_policy():
    args = [str(HELM), "template", "rel", str(CHART_DIR), "-n", "ops", "--kube-version", "1.29.0",
            "--set", "watchNamespaces={models-a}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(proc.stdout) if d]
    assert "ValidatingAdmissionPolicy" not in kinds and "Role" in kinds
