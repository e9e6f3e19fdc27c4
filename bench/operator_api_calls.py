"""API requests the operator makes per model, by verb and resource: while models converge, and
per minute once they have (watch streams not counted: one per resource kind, not per model).

    .venv/bin/python bench/operator_api_calls.py [--models 5] [--replicas 2] [--seconds 60]
        [--plane-dir DIR]            # reuse a plane started with `scripts/k8s-plane.sh up DIR`
        [--operator 'CMD ...']       # another operator command line, e.g. an older checkout

The operator runs with the chart's ServiceAccount behind a counting proxy (tests/support/apiproxy.py,
no faults injected) in a fresh namespace. kwok's pods run nothing, so every status probe fails the
same way and the steady state is stable. Prints the figures; not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeprec_operator.versions import TARGET_ANNOTATION  # noqa: E402
from tests.support.apiproxy import FaultProxy  # noqa: E402
from tests.support.plane import Plane, plane_for, service_account_kubeconfig  # noqa: E402

CHART = REPO / "helm" / "deeprec-serving"


def resource_of(path: str) -> tuple[str, bool]:
    """(resource, a collection?): /api/v1/namespaces/ns/pods -> (pods, True);
    .../deeprecmodels/m/status -> (deeprecmodels/status, False)."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    if not rest:
        return path, False
    return rest[0] + (f"/{rest[2]}" if len(rest) > 2 else ""), len(rest) == 1


class CountingProxy(FaultProxy):
    """Counts each non-watch request as (verb, resource)."""

    def __init__(self, plane: Plane, **kw) -> None:
        super().__init__(plane, rate=0.0, **kw)
        self.requests: Counter[tuple[str, str]] = Counter()

    async def _handle(self, request):  # type: ignore[no-untyped-def]
        if request.query.get("watch") not in ("true", "1"):
            resource, collection = resource_of(request.path)
            verb = "LIST" if request.method == "GET" and collection else request.method
            self.requests[(verb, resource)] += 1
        return await super()._handle(request)


def model(name: str, replicas: int) -> dict:
    return {"apiVersion": "serving.deeprec.io/v1alpha1", "kind": "DeepRecModel", "metadata": {"name": name},
            "spec": {"replicas": replicas, "image": "registry.example/deeprec-runtime:bench",
                     "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                     "storage": {"storeType": "local", "checkpointDir": "/models/ckpt",
                                 "savedModelDir": "/models/sm"}}}


def converged(plane: Plane, ns: str, models: int, replicas: int, version: str) -> bool:
    drms = plane.kubectl_json("get", "drm", "-n", ns)["items"]
    pods = plane.kubectl_json("get", "pods", "-n", ns)["items"]
    annotated = [p for p in pods if p["status"].get("phase") == "Running"
                 and (p["metadata"].get("annotations") or {}).get(TARGET_ANNOTATION) == version]
    return (len(drms) == models and len(annotated) == models * replicas
            and all((d.get("status") or {}).get("observedGeneration") == d["metadata"]["generation"]
                    and (d.get("status") or {}).get("targetVersion") == version
                    and (d.get("status") or {}).get("updatedReplicas") == replicas
                    and (d.get("status") or {}).get("readyReplicas") == replicas for d in drms))


def settle(plane: Plane, proxy: CountingProxy, ns: str, args: argparse.Namespace, version: str,
           what: str, start_counts: Counter, started: float) -> tuple[Counter, float]:
    """Waits for convergence on `version`, then a little more for the last status writes; returns
    the requests counted since `start_counts` and the seconds convergence took since `started`."""
    while not converged(plane, ns, args.models, args.replicas, version):
        assert time.monotonic() - started < 180, f"{what}: no convergence"
        time.sleep(0.5)
    took = time.monotonic() - started
    time.sleep(2 * float(args.poll_seconds))
    return Counter(proxy.requests) - start_counts, took


def table(counts: Counter, per: float) -> dict[str, float]:
    return {f"{verb} {res}": round(n / per, 2) for (verb, res), n in sorted(counts.items())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--poll-seconds", default="3",
                        help="DEEPREC_OPERATOR_POLL_SECONDS (the chart's default)")
    parser.add_argument("--plane-dir", default=os.environ.get("DEEPREC_E2E_PLANE_DIR"))
    parser.add_argument("--operator", default=str(Path(sys.executable).parent / "deeprec-operator"))
    args = parser.parse_args()
    with plane_for(args.plane_dir) as plane:
        return run(plane, args)


def run(plane: Plane, args: argparse.Namespace) -> int:
    ns, release = f"calls-{uuid.uuid4().hex[:6]}", f"drs-{uuid.uuid4().hex[:6]}"
    plane.kubectl("create", "namespace", ns)
    deadline = time.monotonic() + 30
    while plane.kubectl("get", "sa", "default", "-n", ns, check=False).returncode != 0:
        assert time.monotonic() < deadline, "no default ServiceAccount"
        time.sleep(0.2)
    plane.helm("install", release, str(CHART), "-n", ns, "--set", f"watchNamespaces={{{ns}}}", "--wait")
    work = Path(tempfile.mkdtemp(prefix="calls-"))
    token_config = service_account_kubeconfig(plane, ns, f"{release}-deeprec-serving", work / "sa.kubeconfig")
    operator = None
    try:
        with CountingProxy(plane, ca_dir=work) as proxy:
            env = dict(plane.env, KUBECONFIG=str(proxy.kubeconfig(token_config, work / "proxied.kubeconfig")),
                       DEEPREC_OPERATOR_POLL_SECONDS=args.poll_seconds)
            log = open(work / "operator.log", "wb")
            command = [*shlex.split(args.operator), "--namespace", ns, "--log-format", "plain"]
            operator = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=work)
            time.sleep(5)  # start-up (CRD discovery, login, first lists) is not per model
            names = [f"m{i:02d}" for i in range(args.models)]
            # Requests a converging model makes, from its creation until its status settled.
            counts, started = Counter(proxy.requests), time.monotonic()
            plane.apply([model(name, args.replicas) for name in names], namespace=ns)
            converging, took = settle(plane, proxy, ns, args, "latest", "creation", counts, started)
            before = Counter(proxy.requests)
            time.sleep(args.seconds)
            steady = Counter(proxy.requests) - before
            counts, started = Counter(proxy.requests), time.monotonic()
            plane.kubectl("patch", "drm", *names, "-n", ns, "--type", "merge",
                          "-p", '{"spec":{"version":"checkpoint_2"}}')
            rollback, rolled = settle(plane, proxy, ns, args, "checkpoint_2", "rollback", counts, started)
        minutes = args.seconds / 60
        report = {
            "operator": args.operator, "models": args.models, "replicas": args.replicas,
            "poll_seconds": float(args.poll_seconds), "converged_s": round(took, 1),
            "converging_per_model": table(converging, args.models),
            "converging_total_per_model": round(sum(converging.values()) / args.models, 1),
            "rollback_s": round(rolled, 1),
            "rollback_per_model": table(rollback, args.models),
            "rollback_total_per_model": round(sum(rollback.values()) / args.models, 1),
            "steady_per_model_per_minute": table(steady, args.models * minutes),
            "steady_total_per_model_per_minute": round(sum(steady.values()) / args.models / minutes, 1),
        }
        print(json.dumps(report, indent=2))
    finally:
        if operator is not None:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                operator.kill()
        plane.helm("uninstall", release, "-n", ns, check=False)
        plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
