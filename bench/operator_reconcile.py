"""Operator benchmark on a real control plane (scripts/k8s-plane.sh): reconcile and rollback times.

    .venv/bin/python bench/operator_reconcile.py [--models 50] [--replicas 20] [--rounds 5]
        [--plane-dir DIR]   # reuse a plane started with `scripts/k8s-plane.sh up DIR`

1. Reconcile: N DeepRecModels applied at once; time until every one has its Deployment, until
   every status has observedGeneration, and until every pod (1 per model) carries the target
   annotation.
2. Rollback: one model with R replicas; `spec.version` patched back and forth; time from the
   patch until every pod's annotation shows the new version (pod UIDs checked unchanged).
Prints the figures; not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeprec_operator.kube import Kube, collection_path, load_configuration  # noqa: E402
from deeprec_operator.versions import TARGET_ANNOTATION  # noqa: E402
from tests.support.plane import Plane, plane_for  # noqa: E402

CRD = REPO / "crds" / "deeprecmodels.serving.deeprec.io.yaml"


def model(name: str, replicas: int) -> dict:
    return {
        "apiVersion": "serving.deeprec.io/v1alpha1",
        "kind": "DeepRecModel",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "image": "registry.example/deeprec-runtime:bench",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            "storage": {"storeType": "local", "checkpointDir": "/models/ckpt", "savedModelDir": "/models/sm"},
        },
    }


def wait(predicate, timeout: float, what: str, interval: float = 0.02) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--plane-dir", default=os.environ.get("DEEPREC_E2E_PLANE_DIR"))
    args = parser.parse_args()
    with plane_for(args.plane_dir) as plane:
        return run(plane, args)


def run(plane: Plane, args: argparse.Namespace) -> int:
    os.environ["KUBECONFIG"] = str(plane.kubeconfig)
    kube = Kube(load_configuration())
    ns = f"bench-{int(time.time())}"
    plane.kubectl("apply", "-f", str(CRD))
    plane.kubectl("wait", "--for=condition=Established", "crd/deeprecmodels.serving.deeprec.io")
    plane.kubectl("create", "namespace", ns)
    wait(
        lambda: plane.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0, 30, "default SA"
    )

    log = open(plane.dir / f"operator-{ns}.log", "wb")
    env = dict(plane.env, DEEPREC_OPERATOR_POLL_SECONDS="3")
    operator = subprocess.Popen([str(Path(sys.executable).parent / "deeprec-operator"), "--namespace", ns,
                                 "--log-format", "plain"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    models_path = collection_path("serving.deeprec.io/v1alpha1", "deeprecmodels", ns)
    pods_path = collection_path("v1", "pods", ns)
    deployments_path = collection_path("apps/v1", "deployments", ns)
    try:
        time.sleep(2)  # operator start-up (login, CRD discovery) is not part of a reconcile
        print(f"== reconcile: {args.models} DeepRecModels (1 replica each), namespace {ns}")
        docs = [model(f"m{i:03d}", 1) for i in range(args.models)]
        start = time.monotonic()
        for doc in docs:
            kube.request("POST", models_path, doc)
        created = time.monotonic() - start

        def deployments() -> int:
            return len(kube.list(deployments_path))

        def observed() -> int:
            return sum(1 for m in kube.list(models_path) if (m.get("status") or {}).get("observedGeneration"))

        def annotated() -> int:
            pods = kube.list(pods_path)
            return sum(1 for p in pods if (p["metadata"].get("annotations") or {}).get(TARGET_ANNOTATION))

        t_dep = wait(lambda: deployments() == args.models, 300, "Deployments", 0.1) + created
        t_status = wait(lambda: observed() == args.models, 300, "statuses", 0.1) + t_dep
        t_pods = wait(lambda: annotated() == args.models, 300, "annotated pods", 0.1) + t_status
        print(f"   create requests: {created:.2f} s")
        print(
            f"   all {args.models} Deployments applied: {t_dep:.2f} s  "
            f"({t_dep / args.models * 1000:.0f} ms/model)"
        )
        print(f"   all statuses observed:        {t_status:.2f} s")
        print(f"   all pods scheduled+annotated: {t_pods:.2f} s")
        for doc in docs:
            kube.request("DELETE", f"{models_path}/{doc['metadata']['name']}")

        print(f"== rollback: 1 DeepRecModel with {args.replicas} replicas, {args.rounds} patches")
        name = "rollback"
        kube.request("POST", models_path, model(name, args.replicas))
        selector = f"serving.deeprec.io/model={name}"

        def pods() -> list[dict]:
            return [p for p in kube.list(pods_path, label_selector=selector)
                    if not p["metadata"].get("deletionTimestamp")]

        wait(lambda: len([p for p in pods() if p["status"].get("phase") == "Running"
                          and (p["metadata"].get("annotations") or {}).get(TARGET_ANNOTATION) == "latest"])
             == args.replicas, 300, "replicas Running and annotated", 0.1)
        uids = sorted(p["metadata"]["uid"] for p in pods())
        times = []
        for i in range(args.rounds):
            version = "checkpoint_1" if i % 2 == 0 else "checkpoint_2"
            start = time.monotonic()
            kube.merge_patch(f"{models_path}/{name}", {"spec": {"version": version}})
            elapsed = wait(
                lambda version=version: all(
                    (p["metadata"].get("annotations") or {}).get(TARGET_ANNOTATION) == version for p in pods()
                ),
                60,
                f"{version} on every pod",
            )
            times.append(elapsed)
            assert sorted(p["metadata"]["uid"] for p in pods()) == uids, "pods were replaced"
            time.sleep(0.5)
        print(f"   patch -> annotation on all {args.replicas} pods: min {min(times) * 1000:.0f} ms, "
              f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
              f"(pod UIDs unchanged)")
        print(
            json.dumps(
                {
                    "models": args.models,
                    "reconcile_deployments_s": round(t_dep, 3),
                    "reconcile_status_s": round(t_status, 3),
                    "reconcile_pods_annotated_s": round(t_pods, 3),
                    "replicas": args.replicas,
                    "rollback_ms": [round(t * 1000) for t in times],
                }
            )
        )
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(timeout=15)
        except subprocess.TimeoutExpired:
            operator.kill()
        plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
