"""Fixtures for end-to-end tests on a real Kubernetes control plane.

The plane is ``scripts/k8s-plane.sh``: etcd, kube-apiserver (RBAC + Node authorization,
service-account tokens), kube-controller-manager (all controllers: garbage collection,
ReplicaSets, ServiceAccounts, ...), kube-scheduler and kwok, whose two fake nodes
(``kwok-node-1``, ``kwok-node-2``: cpu 8, memory 32Gi, pods 110, nvidia.com/gpu 2) report
scheduled pods Running. Pod IPs come from loopback ranges (``plane.pod_cidrs``, e.g.
``127.142.1.0/24``), so a local process bound to a pod's IP can stand in for the pod.

The binaries come from a cache built by ``scripts/k8s-plane.sh build`` (about 10 minutes cold;
CI builds it before the tests). Without the cache the ``k8s_plane`` fixture FAILS the test with
the command to run; it never skips.

Fixtures
--------
``k8s_plane`` (session): a :class:`tests.support.plane.Plane`, started once per test session
in a temporary folder and stopped at the end:

- ``k8s_plane.kubeconfig``: admin kubeconfig path (``O=system:masters``).
- ``k8s_plane.kubectl(*args, check=True, input=None, kubeconfig=None, timeout=120)``: runs
  the plane's kubectl; returns ``subprocess.CompletedProcess`` (text); raises
  ``CommandError`` (an ``AssertionError`` with stderr) on a non-zero exit unless
  ``check=False``.
- ``k8s_plane.kubectl_json(*args)``: ``kubectl ARGS -o json``, parsed.
- ``k8s_plane.apply(yaml_text | dict | [dicts], namespace=None)``.
- ``k8s_plane.helm(*args, check=True, ...)``: the plane's helm, same conventions.
- ``k8s_plane.env``: environment (KUBECONFIG, PATH) for local processes such as the
  operator; ``k8s_plane.logs("kube-apiserver")``: a component's last log lines;
  ``k8s_plane.components()``: which components are alive.
- ``k8s_plane.pod_cidrs`` / ``k8s_plane.nodes``: the kwok nodes' pod ranges and names.

Limits: kwok pods run nothing (start a local process on the pod's IP to stand in, see
``DownwardAPIBridge``); no kubelet, so no ``kubectl logs/exec/port-forward``; Services get no
endpoints for loopback pod IPs (EndpointSlice validation refuses 127.0.0.0/8), so reach
stand-ins by pod IP; no kube-proxy, so ClusterIPs do not route.

``namespace`` (per test): a fresh namespace (``e2e-<test name>-<random>``) whose default
ServiceAccount exists; deleted after the test (without waiting). When a test fails, its
namespace's objects and events are added to the report.

``kubectl``, ``helm``: shorthands for ``k8s_plane.kubectl`` and ``k8s_plane.helm``.

Helpers (``tests/support/plane.py``): ``service_account_kubeconfig(plane, ns, sa, path)``
(run a process with a ServiceAccount's token to prove its RBAC), ``DownwardAPIBridge``
(keep a local file in step with a pod's annotations, in the kubelet's Downward API format),
``format_downward_api``, ``wait_until``.

Operator fixtures (helpers in ``tests/support/operator_e2e.py``): ``installed`` (the chart
installed for ``namespace``; yields ``(release, ServiceAccount kubeconfig)``), ``operator`` (an
``Operator`` started with that kubeconfig), ``faulty`` (a ``FaultyOperator``, not started),
``demo_model`` (module: a demo model written by ``deeprec_runtime.training``, for real runtimes).

Every test collected under ``tests/e2e`` gets the ``e2e`` marker.

Environment
-----------
``DEEPREC_K8S_CACHE``: cache folder (default ``~/.cache/deeprec-serving/k8s-v1.34.4``).
``DEEPREC_E2E_PLANE_DIR``: use a plane already started there with ``scripts/k8s-plane.sh up``
(for quick iterations); it is left running.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.operator_e2e import CHART, FaultyOperator, Operator
from tests.support.paths import REPO as _REPO
from tests.support.plane import (
    CommandError,
    DownwardAPIBridge,
    Plane,
    format_downward_api,
    service_account_kubeconfig,
    wait_until,
)

__all__ = ["CommandError", "DownwardAPIBridge", "Plane", "format_downward_api",
           "service_account_kubeconfig", "wait_until"]

PLANE_SCRIPT = _REPO / "scripts" / "k8s-plane.sh"
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"_e2e_report_{report.when}", report)


def _start_plane(plane_dir: Path) -> None:
    # One retry: a start that fails once (a component that dies in its first second) is reported
    # on stderr and in the failure, but does not fail the whole end-to-end tier by itself.
    started = time.monotonic()
    failures = []
    for _attempt in range(2):
        proc = subprocess.run(
            ["bash", str(PLANE_SCRIPT), "up", str(plane_dir), "--owner-pid", str(os.getpid())],
            capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            break
        failures.append(f"exit {proc.returncode}:\n{proc.stderr[-6000:]}")
        sys.stderr.write(f"\n[e2e] control plane start failed, exit {proc.returncode}:\n"
                         f"{proc.stderr[-6000:]}\n")
    else:
        # Not a skip: CI counts skips as passes, and a missing plane is a broken setup.
        pytest.fail(
            "could not start the Kubernetes control plane (scripts/k8s-plane.sh up, twice).\n"
            "If the binary cache is missing, build it first with:\n"
            "    scripts/k8s-plane.sh build\n--- output ---\n" + "\n--- retry ---\n".join(failures),
            pytrace=False)
    sys.stderr.write(f"\n[e2e] control plane up in {time.monotonic() - started:.1f}s at {plane_dir}"
                     f"{' after a retry' if failures else ''}\n")


@pytest.fixture(scope="session")
def k8s_plane(tmp_path_factory) -> Plane:
    reuse = os.environ.get("DEEPREC_E2E_PLANE_DIR")
    if reuse:
        plane_dir = Path(reuse)
        if not (plane_dir / "env").exists():
            pytest.fail(f"DEEPREC_E2E_PLANE_DIR={reuse} has no env file: start a plane there "
                        f"with scripts/k8s-plane.sh up {reuse}", pytrace=False)
        yield Plane.from_dir(plane_dir)
        return
    plane_dir = tmp_path_factory.mktemp("k8s-plane")
    try:
        _start_plane(plane_dir)
        yield Plane.from_dir(plane_dir)
    finally:
        subprocess.run(["bash", str(PLANE_SCRIPT), "down", str(plane_dir)],
                       capture_output=True, text=True, timeout=120)


@pytest.fixture
def kubectl(k8s_plane):
    return k8s_plane.kubectl


@pytest.fixture
def helm(k8s_plane):
    return k8s_plane.helm


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")
    suffix = uuid.uuid4().hex[:6]
    return f"e2e-{slug[:63 - len('e2e-') - len(suffix) - 1].rstrip('-')}-{suffix}"


@pytest.fixture
def namespace(k8s_plane, request) -> str:
    name = _namespace_name(request.node.name)
    k8s_plane.kubectl("create", "namespace", name)
    # Pods are refused until the namespace's default ServiceAccount exists.
    wait_until(lambda: k8s_plane.kubectl("get", "serviceaccount", "default", "-n", name,
                                         check=False).returncode == 0,
               timeout=30, message=f"the default ServiceAccount in {name}")
    yield name
    report = getattr(request.node, "_e2e_report_call", None)
    if report is not None and report.failed:
        state = k8s_plane.kubectl("get", "all,events,configmaps,serviceaccounts,roles,rolebindings",
                                  "-n", name, "-o", "wide", check=False)
        request.node.add_report_section(
            "teardown", f"namespace {name}", state.stdout + state.stderr)
        dead = [c for c, alive in k8s_plane.components().items() if not alive]
        if dead:
            request.node.add_report_section(
                "teardown", "control plane components that exited",
                "\n\n".join(f"--- {c} ---\n{k8s_plane.logs(c)}" for c in dead))
    k8s_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found",
                      check=False)


@pytest.fixture
def installed(k8s_plane, namespace, tmp_path):
    """The chart installed for `namespace`; yields (release, service account kubeconfig)."""
    release = f"drs-{uuid.uuid4().hex[:8]}"
    k8s_plane.helm("install", release, str(CHART), "-n", namespace,
                   "--set", f"watchNamespaces={{{namespace}}}", "--wait", "--timeout", "90s")
    sa = k8s_plane.kubectl_json("get", "serviceaccount", "-n", namespace,
                                "-l", f"app.kubernetes.io/instance={release}")["items"]
    assert len(sa) == 1, "the chart must create exactly one ServiceAccount"
    kubeconfig = service_account_kubeconfig(k8s_plane, namespace, sa[0]["metadata"]["name"],
                                            tmp_path / "operator.kubeconfig")
    yield release, kubeconfig
    k8s_plane.helm("uninstall", release, "-n", namespace, "--wait", check=False)


def _attach_log(request, op: Operator, lines: int) -> None:
    report = getattr(request.node, "_e2e_report_call", None)
    if report is not None and report.failed:
        request.node.add_report_section("teardown", "operator log", op.log(lines))


@pytest.fixture
def operator(k8s_plane, namespace, installed, tmp_path, request):
    op = Operator(k8s_plane, namespace, installed[1], tmp_path / "operator.log").start()
    yield op
    op.stop()
    _attach_log(request, op, 200)


@pytest.fixture
def faulty(k8s_plane, namespace, installed, tmp_path, request):
    op = FaultyOperator(k8s_plane, namespace, installed[1], tmp_path / "operator.log")
    yield op
    op.stop()
    _attach_log(request, op, 300)


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> Path:
    from deeprec_runtime.training import write_demo_model

    base = tmp_path_factory.mktemp("demo-model")
    write_demo_model(str(base), num_ids=1000, num_full=3, num_deltas=0, hidden=(16,), steps_per_delta=1,
                     batch_size=32)
    return base
