"""The operator under test on the e2e control plane, and small helpers to read what it made.

- :class:`Operator`: ``deeprec-operator --namespace NS`` as a subprocess, its log kept for failure
  reports; :class:`FaultyOperator`: the same with a fault hook of
  ``tests/support/operator/faulty_kube.py`` armed (SIGKILL at a named reconcile step) or not.
- :func:`fetch`, :func:`pods_of`, :func:`running`, :func:`condition`,
  :func:`wait_running`: reads of the plane through ``kubectl``.
- :func:`small_model`: a DeepRecModel with small pods (fifty fit kwok's two nodes);
  :func:`demo_resource`: one that serves the demo model written under ``base`` by real runtimes.

The fixtures built on these (``installed``, ``operator``, ``faulty``, ``demo_model``) are in
``tests/e2e/conftest.py``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from deeprec_operator import resources as r
from tests.support.operator.faulty_kube import ENV as FAULT_ENV
from tests.support.plane import wait_until

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "deeprec-serving"
EXAMPLE = REPO / "examples" / "deeprecmodel.yaml"
#: The DeepRecModel of ``EXAMPLE``.
MODEL = "wide-and-deep"
#: `deeprec-operator` with its API client wrapped in the fault hooks (same arguments).
FAULTY_OPERATOR = REPO / "tests" / "support" / "operator" / "faulty_kube.py"
#: The DeepRecModel of :func:`demo_resource`.
DEMO_NAME = "demo"


class Operator:
    """`deeprec-operator --namespace NS` as a subprocess, with its log kept for failure reports."""

    def __init__(self, plane, namespace: str, kubeconfig: Path, log_path: Path) -> None:
        self.plane, self.namespace, self.kubeconfig, self.log_path = plane, namespace, kubeconfig, log_path
        self.proc: subprocess.Popen | None = None

    def start(self, env_extra: dict[str, str] | None = None) -> Operator:
        env = dict(self.plane.env)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["DEEPREC_OPERATOR_POLL_SECONDS"] = "1"
        env.update(env_extra or {})
        exe = Path(sys.executable).parent / "deeprec-operator"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(exe), "--namespace", self.namespace, "--log-format", "plain"],
                                     env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self, lines: int = 80) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class FaultyOperator(Operator):
    """The operator with a fault hook armed (or not) and an optional kubeconfig of its own.

    Run as a script by path, not `python -m`: a module run from the repository root would find
    the `operator/` folder where Python's `operator` module belongs."""

    def start(self, kill_at: str = "", kubeconfig: Path | None = None, poll_seconds: str = "1",
              extra_args: tuple[str, ...] = ()) -> FaultyOperator:
        env = dict(self.plane.env)
        env["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        env["DEEPREC_OPERATOR_POLL_SECONDS"] = poll_seconds
        env.pop(FAULT_ENV, None)
        if kill_at:
            env[FAULT_ENV] = kill_at
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start (kill at {kill_at or 'nothing'}) =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(FAULTY_OPERATOR),
                    "--namespace",
                    self.namespace,
                    *extra_args,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_killed(self, step: str, timeout: float = 30) -> None:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the operator never reached {step}; log:\n{self.log()}") from None
        assert rc == -signal.SIGKILL, f"exit {rc} instead of SIGKILL at {step}; log:\n{self.log()}"
        assert f"SIGKILL at {step.split('@')[0]}" in self.log(20)


def fetch(plane, kind, name, ns):
    """``kubectl get KIND NAME -n NS``, parsed."""
    return plane.kubectl_json("get", kind, name, "-n", ns)


def pods_of(plane, ns, name=MODEL):
    """The pods of the DeepRecModel ``name`` (by its selector), deleting ones included."""
    return plane.kubectl_json("get", "pods", "-n", ns, "-l", r.selector_string(name))["items"]


def running(pods):
    """The pods that are Running and not being deleted."""
    return [
        p
        for p in pods
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


def condition(obj, kind):
    """The status condition of type ``kind``, or ``{}``."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return c
    return {}


def wait_running(plane, ns, count, name=MODEL, timeout=60, operator=None):
    """Wait until the model has exactly ``count`` pods, all Running; returns them."""
    return wait_until(lambda: len(running(pods_of(plane, ns, name))) == count
                      and len(pods_of(plane, ns, name)) == count and pods_of(plane, ns, name),
                      timeout=timeout,
                      message=lambda: f"{count} Running pods of {name}; operator log:\n"
                                      f"{operator.log() if operator else ''}")


def small_model(name: str, *, replicas: int = 2, version: str = "latest", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.deeprec.io/v1alpha1",
        "kind": "DeepRecModel",
        "metadata": {"name": name},
        "spec": {
            "version": version,
            "replicas": replicas,
            "image": "registry.example/deeprec-runtime:e2e",
            # Small pods: fifty models fit kwok's two 8-core nodes.
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
            "storage": {"storeType": "local", "checkpointDir": "/models/ckpt/",
                        "savedModelDir": "/models/savedmodel/"},
            **spec,
        },
    }


def demo_resource(base: Path) -> dict:
    return {
        "apiVersion": "serving.deeprec.io/v1alpha1",
        "kind": "DeepRecModel",
        "metadata": {"name": DEMO_NAME},
        "spec": {
            "replicas": 2,
            "image": "registry.example/deeprec-runtime:e2e",
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
            "storage": {"storeType": "local", "checkpointDir": str(base / "checkpoints"),
                        "savedModelDir": str(base / "saved_model")},
            "modelConfig": {"update_poll_seconds": 0.2, "warmup_iterations": 0},
        },
    }


def stop_runtimes(procs, bridges) -> None:
    """Stops runtime processes started beside simulated pods (SIGTERM, then kill after 20 s) and
    the Downward API bridges that fed them their annotations."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    for bridge in bridges:
        bridge.stop()
