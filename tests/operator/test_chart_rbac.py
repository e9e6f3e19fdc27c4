"""Secret `get` in the chart's RBAC: in each watched namespace by default, never cluster-wide
unless rbac.secretCheck asks for it (rendered by the real helm binary)."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from conftest import CHART_DIR
from test_chart import HELM

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


@pytest.mark.parametrize(("sets", "expected"), [
    # Every namespace watched: no Secret access anywhere unless asked for.
    ((), {}),
    (("rbac.secretCheck=false",), {}),
    (("rbac.secretCheck=true",), {"ClusterRole/cluster": [["get"]]}),
    # Watched namespaces: get in each of them by default, nothing cluster-wide.
    (("watchNamespaces={models-a,models-b}",),
     {"Role/models-a": [["get"]], "Role/models-b": [["get"]]}),
    (("watchNamespaces={models-a,models-b}", "rbac.secretCheck=true"),
     {"Role/models-a": [["get"]], "Role/models-b": [["get"]]}),
    (("watchNamespaces={models-a,models-b}", "rbac.secretCheck=false"), {}),
])
def test_secret_get_is_granted_only_where_asked(sets, expected):
    docs = _render(*sets)
    assert _secret_grants(docs) == expected
    # The rest of the operator's rules do not depend on the switch.
    models = [d for d in docs if d["kind"] in RBAC_KINDS and not d["metadata"]["name"].endswith("-discovery")]
    assert models and all(any("deeprecmodels" in r["resources"] for r in d["rules"]) for d in models)
