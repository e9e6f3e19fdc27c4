"""Real runtime processes stand in for kwok's pods: the operator's status reports what they serve.

Each kwok pod gets a loopback IP; a `deeprec-runtime serve` process bound to that IP on 8500, fed
the ConfigMap the operator wrote and a Downward API file bridged from the pod's annotations,
plays the pod's container. So the whole loop runs for real: spec.version -> pod annotation ->
annotations file -> runtime loads the version -> GetServingModelInfo -> DeepRecModel status.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deeprec_operator import resources as r
from tests.e2e.helpers import DownwardAPIBridge, wait_until
from tests.e2e.test_operator import _condition, _get, _pods, _wait_running, installed, operator  # noqa: F401

pytestmark = pytest.mark.e2e
NAME = "demo"


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> Path:
    from deeprec_runtime.training import write_demo_model

    base = tmp_path_factory.mktemp("demo-model")
    write_demo_model(str(base), num_ids=1000, num_full=3, num_deltas=0, hidden=(16,), steps_per_delta=1,
                     batch_size=32)
    return base


def _model(base: Path) -> dict:
    return {
        "apiVersion": "serving.deeprec.io/v1alpha1",
        "kind": "DeepRecModel",
        "metadata": {"name": NAME},
        "spec": {
            "replicas": 2,
            "image": "registry.example/deeprec-runtime:e2e",
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
            "storage": {"storeType": "local", "checkpointDir": str(base / "checkpoints"),
                        "savedModelDir": str(base / "saved_model")},
            "modelConfig": {"update_poll_seconds": 0.2, "warmup_iterations": 0},
        },
    }


def test_status_reports_what_real_runtimes_serve_through_a_rollback(k8s_plane, namespace, operator,  # noqa: F811
                                                                    demo_model, tmp_path):
    k8s_plane.apply(_model(demo_model), namespace=namespace)
    pods = _wait_running(k8s_plane, namespace, 2, name=NAME, operator=operator)
    uids = sorted(p["metadata"]["uid"] for p in pods)
    config = tmp_path / "model_config.json"
    config.write_text(_get(k8s_plane, "configmap", r.config_map_name(NAME), namespace)["data"][r.CONFIG_FILE])

    bridges, runtimes = [], []
    try:
        for pod in pods:
            pod_name, pod_ip = pod["metadata"]["name"], pod["status"]["podIP"]
            annotations = tmp_path / pod_name / "annotations"
            bridges.append(DownwardAPIBridge(k8s_plane.kubeconfig, namespace, pod_name, annotations).start())
            log = open(tmp_path / f"{pod_name}.log", "wb")
            runtimes.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "deeprec-runtime"), "serve", "--config", str(config),
                 "--grpc-port", str(r.GRPC_PORT), "--http-port", "0", "--host", pod_ip,
                 "--annotations-file", str(annotations)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()

        def logs() -> str:
            return "\n".join((tmp_path / f"{p['metadata']['name']}.log").read_text(errors="replace")[-1500:]
                             for p in pods) + "\n--- operator ---\n" + operator.log(30)

        def status_is(active: str, target: str):
            s = _get(k8s_plane, "drm", NAME, namespace).get("status") or {}
            ready = _condition({"status": s}, "Ready")
            return (s.get("activeVersion") == active and s.get("targetVersion") == target
                    and s.get("versions") == [{"name": active, "replicas": 2}]
                    and ready.get("status") == "True" and s)

        status = wait_until(lambda: status_is("checkpoint_3", "latest"), timeout=180, interval=0.5,
                            message=lambda: f"both runtimes serving checkpoint_3 in status\n{logs()}")
        assert _condition({"status": status}, "Degraded")["status"] == "False"

        k8s_plane.kubectl("patch", "drm", NAME, "-n", namespace, "--type", "merge",
                          "-p", '{"spec":{"version":"checkpoint_1"}}')
        status = wait_until(lambda: status_is("checkpoint_1", "checkpoint_1"), timeout=60, interval=0.3,
                            message=lambda: f"both runtimes rolled back to checkpoint_1 in status\n{logs()}")
        assert _condition({"status": status}, "Progressing")["reason"] == "Stable"
        assert sorted(p["metadata"]["uid"] for p in _pods(k8s_plane, namespace, NAME)) == uids
        assert all(proc.poll() is None for proc in runtimes), logs()
    finally:
        for proc in runtimes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in runtimes:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for bridge in bridges:
            bridge.stop()
