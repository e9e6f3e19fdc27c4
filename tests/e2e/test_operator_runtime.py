"""Real runtime processes stand in for kwok's pods: the operator's status reports what they serve.

Each kwok pod gets a loopback IP; a `deeprec-runtime serve` process bound to that IP on 8500, fed
the ConfigMap the operator wrote and a Downward API file bridged from the pod's annotations,
plays the pod's container. So the whole loop runs for real: spec.version -> pod annotation ->
annotations file -> runtime loads the version -> GetServingModelInfo -> DeepRecModel status.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deeprec_operator import resources as r
from tests.support.operator_e2e import (
    DEMO_NAME,
    condition,
    demo_resource,
    fetch,
    pods_of,
    stop_runtimes,
    wait_running,
)
from tests.support.plane import DownwardAPIBridge, wait_until

pytestmark = pytest.mark.e2e


def test_status_reports_what_real_runtimes_serve_through_a_rollback(k8s_plane, namespace, operator,
                                                                    demo_model, tmp_path):
    k8s_plane.apply(demo_resource(demo_model), namespace=namespace)
    pods = wait_running(k8s_plane, namespace, 2, name=DEMO_NAME, operator=operator)
    uids = sorted(p["metadata"]["uid"] for p in pods)
    config = tmp_path / "model_config.json"
    config_map = fetch(k8s_plane, "configmap", r.config_map_name(DEMO_NAME), namespace)
    config.write_text(config_map["data"][r.CONFIG_FILE])

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
            s = fetch(k8s_plane, "drm", DEMO_NAME, namespace).get("status") or {}
            ready = condition({"status": s}, "Ready")
            return (s.get("activeVersion") == active and s.get("targetVersion") == target
                    and s.get("versions") == [{"name": active, "replicas": 2}]
                    and ready.get("status") == "True" and s)

        status = wait_until(lambda: status_is("checkpoint_3", "latest"), timeout=180, interval=0.5,
                            message=lambda: f"both runtimes serving checkpoint_3 in status\n{logs()}")
        assert condition({"status": status}, "Degraded")["status"] == "False"

        k8s_plane.kubectl("patch", "drm", DEMO_NAME, "-n", namespace, "--type", "merge",
                          "-p", '{"spec":{"version":"checkpoint_1"}}')
        status = wait_until(lambda: status_is("checkpoint_1", "checkpoint_1"), timeout=60, interval=0.3,
                            message=lambda: f"both runtimes rolled back to checkpoint_1 in status\n{logs()}")
        assert condition({"status": status}, "Progressing")["reason"] == "Stable"
        assert sorted(p["metadata"]["uid"] for p in pods_of(k8s_plane, namespace, DEMO_NAME)) == uids
        assert all(proc.poll() is None for proc in runtimes), logs()
    finally:
        stop_runtimes(runtimes, bridges)
