"""Real pods on a real kubelet: both images, the chart and a DeepRecModel, as a user runs them.

`scripts/k8s-plane.sh up DIR --real-node` starts the control plane with a real node (containerd,
runc, CNI bridge, kubelet with the static CPU manager, kube-proxy) in a network namespace of its
own, with the images of `scripts/images.sh build` (from the unchanged Dockerfiles) loaded. Then,
as a user: `helm install` (the operator runs as a pod of its image with the chart's RBAC),
`kubectl apply` of a DeepRecModel whose model is on a PersistentVolume, and an in-cluster client
pod (the runtime image) calling the model's Service over gRPC with the DeepRec and TensorFlow
Serving APIs. What only a real node shows: gRPC probes run by the kubelet, the Downward API file
refreshed by it (rollback latency), a uid-10001 runtime on a read-only root file system, graceful
drain on pod deletion behind kube-proxy, and exclusive cores from the static CPU manager.

The tests are steps of one scenario on one model and run in file order. Each measured figure is
printed at the end of the module (and written to $DEEPREC_REALNODE_FIGURES when set).

If the node cannot start (no images, no root, missing packages), every test here FAILS with the
reason; nothing is skipped. The binaries come from `scripts/k8s-plane.sh build`, the images from
`scripts/images.sh build` (`make test` runs both first).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from deeprec_operator.versions import TARGET_ANNOTATION
from tests.e2e.helpers import Plane, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
PLANE_SCRIPT = REPO / "scripts" / "k8s-plane.sh"
IMAGES_SCRIPT = REPO / "scripts" / "images.sh"
CHART = REPO / "helm" / "deeprec-serving"
CLIENT_SCRIPT = Path(__file__).resolve().parent / "realnode_client.py"

OPERATOR_NS = "deeprec-system"
MODELS_NS = "models"
MODEL = "wide-deep"
REPLICAS = 2
MODEL_LABEL = "serving.deeprec.io/model"

FIGURES: dict[str, Any] = {}


def _images() -> dict[str, str]:
    out = subprocess.run(["bash", str(IMAGES_SCRIPT), "names"], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split("=", 1) for line in out.split())


# --- the node --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Plane:
    reuse = os.environ.get("DEEPREC_E2E_REALNODE_DIR")
    if reuse:  # a node left running by `scripts/k8s-plane.sh up DIR --real-node`, for iterations
        try:
            yield Plane.from_dir(reuse)
        finally:
            _report_figures()
        return
    plane_dir = tmp_path_factory.mktemp("real-node")
    started = time.monotonic()
    try:
        proc = subprocess.run(
            ["bash", str(PLANE_SCRIPT), "up", str(plane_dir), "--owner-pid", str(os.getpid()),
             "--real-node"], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            # Not a skip: a node that cannot start is a broken setup, and CI counts skips as passes.
            pytest.fail("could not start the real node (scripts/k8s-plane.sh up DIR --real-node).\n"
                        "It needs root, the Debian packages of .ci/run (containerd, runc, "
                        "containernetworking-plugins, buildah, iptables), the binaries of "
                        "'scripts/k8s-plane.sh build' and the images of 'scripts/images.sh build'."
                        f"\n--- output ---\n{proc.stderr[-8000:]}", pytrace=False)
        FIGURES["node up (control plane + containerd + images loaded + kubelet Ready), s"] = round(
            time.monotonic() - started, 1)
        yield Plane.from_dir(plane_dir)
    finally:
        subprocess.run(["bash", str(PLANE_SCRIPT), "down", str(plane_dir)], capture_output=True,
                       text=True, timeout=300)
        _report_figures()


def _report_figures() -> None:
    if not FIGURES:
        return
    text = "\n".join(f"  {k}: {v}" for k, v in FIGURES.items())
    sys.__stderr__.write(f"\n[real node] figures:\n{text}\n")
    target = os.environ.get("DEEPREC_REALNODE_FIGURES")
    if target:
        Path(target).write_text(json.dumps(FIGURES, indent=2) + "\n")


# --- the model store: a PersistentVolume on the node's disk ----------------------------------------

@pytest.fixture(scope="module")
def store():
    """The demo model in a folder the runtime's uid (10001) can read, served through a PV."""
    from deeprec_runtime.training import write_demo_model

    base = Path(tempfile.mkdtemp(prefix="deeprec-realnode-store-"))
    base.chmod(0o755)  # mkdtemp makes 0700; the pods run as uid 10001
    old = os.umask(0o022)
    try:
        art = write_demo_model(str(base), num_ids=1000, num_full=3, num_deltas=1, hidden=(16,),
                               steps_per_delta=1, batch_size=32)
    finally:
        os.umask(old)
    yield art
    art.close()
    shutil.rmtree(base, ignore_errors=True)


def _storage(node: Plane, store) -> None:
    pv = f"{MODELS_NS}-demo-store"
    node.apply([
        {"apiVersion": "v1", "kind": "PersistentVolume",
         "metadata": {"name": pv, "labels": {"deeprec-e2e": "real-node"}},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                  "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "deeprec-static",
                  "hostPath": {"path": store.base_dir, "type": "Directory"},
                  "claimRef": {"namespace": MODELS_NS, "name": "demo-store"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": "demo-store", "namespace": MODELS_NS},
         "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "deeprec-static",
                  "volumeName": pv, "resources": {"requests": {"storage": "1Gi"}}}},
    ])
    wait_until(lambda: node.kubectl_json("get", "pvc", "demo-store", "-n", MODELS_NS)
               .get("status", {}).get("phase") == "Bound", timeout=60, message="the PVC bound")


def _model(name: str, replicas: int, resources: dict, **spec: Any) -> dict:
    return {
        "apiVersion": "serving.deeprec.io/v1alpha1", "kind": "DeepRecModel",
        "metadata": {"name": name, "namespace": MODELS_NS},
        "spec": {
            "replicas": replicas,
            "resources": resources,
            "storage": {"storeType": "local", "checkpointDir": "/models/checkpoints",
                        "savedModelDir": "/models/saved_model",
                        "volumeClaim": {"claimName": "demo-store", "mountPath": "/models",
                                        "readOnly": True}},
            "modelConfig": {"update_poll_seconds": 0.2, "warmup_iterations": 1,
                            "init_timeout_minutes": 3},
            **spec,
        },
    }


# --- pods ------------------------------------------------------------------------------------------

def _pods(node: Plane, name: str, ns: str = MODELS_NS) -> list[dict]:
    return node.kubectl_json("get", "pods", "-n", ns, "-l", f"{MODEL_LABEL}={name}")["items"]


def _is_ready(pod: dict) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions", []))


def _ready_pods(node: Plane, name: str, count: int, timeout: float = 240) -> list[dict]:
    def ready():
        pods = [p for p in _pods(node, name) if not p["metadata"].get("deletionTimestamp")]
        return pods if len(pods) == count and all(_is_ready(p) for p in pods) else None

    return wait_until(ready, timeout=timeout, interval=0.2,
                      message=lambda: f"{count} Ready pods of {name}\n{_describe(node, name)}")


def _describe(node: Plane, name: str) -> str:
    out = node.kubectl("get", "pods,events", "-n", MODELS_NS, "-o", "wide", check=False).stdout
    for pod in _pods(node, name):
        out += f"\n--- logs {pod['metadata']['name']} ---\n"
        out += node.kubectl("logs", "-n", MODELS_NS, pod["metadata"]["name"], "--tail", "30",
                            check=False).stdout
    return out


def _addrs(pods: list[dict]) -> list[str]:
    return [f"{p['status']['podIP']}:8500" for p in pods]


def _restarts(pod: dict) -> int:
    return sum(c.get("restartCount", 0) for c in pod.get("status", {}).get("containerStatuses", []))


# --- the in-cluster client -------------------------------------------------------------------------

class InClusterClient:
    """`python realnode_client.py` in the client pod, over one `kubectl exec -i` session."""

    def __init__(self, node: Plane, pod: str, log_path: Path) -> None:
        self.log_path = log_path
        self._stderr = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [str(node.bin_dir / "kubectl"), "--kubeconfig", str(node.kubeconfig), "exec", "-i", "-n",
             MODELS_NS, pod, "--", "python", "-u", "/client/realnode_client.py"],
            env=node.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True, bufsize=1)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("ready", timeout=180)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def next(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer from the in-cluster client in {timeout}s\n"
                                 f"{self.log()}") from None
        if line is None:
            raise AssertionError(f"the in-cluster client exited ({self.proc.poll()})\n{self.log()}")
        return json.loads(line)

    def expect(self, event: str, timeout: float) -> dict:
        msg = self.next(timeout)
        assert msg.get("event") == event, f"expected {event!r}, got {msg}\n{self.log()}"
        return msg

    def send(self, op: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 60) -> dict:
        msg = self.next(timeout)
        assert msg.get("ok") is True, f"in-cluster client: {msg}"
        return msg

    def call(self, op: str, timeout: float = 60, **args: Any) -> dict:
        self.send(op, **args)
        return self.result(timeout)

    def log(self) -> str:
        self._stderr.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._stderr.close()


def _client_pod(runtime_image: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client", "namespace": MODELS_NS},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 2,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "client", "image": runtime_image, "imagePullPolicy": "Never",
                # Idle until the test execs into it; exits at once on SIGTERM.
                "command": ["python", "-c", "import signal, sys; signal.signal(signal.SIGTERM, "
                            "lambda *a: sys.exit(0)); signal.pause()"],
                "resources": {"requests": {"cpu": "50m", "memory": "256Mi"},
                              "limits": {"memory": "2Gi"}},
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "client", "mountPath": "/client", "readOnly": True},
                                 {"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "client", "configMap": {"name": "realnode-client"}},
                        {"name": "tmp", "emptyDir": {}}],
        },
    }


# --- fixtures for the scenario ---------------------------------------------------------------------

def _clean(node: Plane) -> None:
    """What an earlier run on a reused node left (nothing on a fresh node)."""
    node.helm("uninstall", "deeprec", "-n", OPERATOR_NS, "--wait", check=False)
    node.kubectl("delete", "namespace", MODELS_NS, "--ignore-not-found", "--timeout", "180s")
    node.kubectl("delete", "pv", "-l", "deeprec-e2e=real-node", "--ignore-not-found")


@pytest.fixture(scope="module")
def operator_release(node: Plane):
    _clean(node)
    node.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": MODELS_NS}})
    started = time.monotonic()
    node.helm("install", "deeprec", str(CHART), "-n", OPERATOR_NS, "--create-namespace",
              "--set", f"watchNamespaces={{{MODELS_NS}}}", "--wait", "--timeout", "180s")
    FIGURES["helm install -> operator pod Ready, s"] = round(time.monotonic() - started, 1)
    return "deeprec"


@pytest.fixture(scope="module")
def model(node: Plane, operator_release, store):
    _storage(node, store)
    started = time.monotonic()
    node.apply(_model(MODEL, REPLICAS, {"requests": {"cpu": "100m", "memory": "512Mi"},
                                        "limits": {"memory": "1536Mi"}}))
    pods = _ready_pods(node, MODEL, REPLICAS)
    FIGURES[f"kubectl apply -> {REPLICAS} runtime pods Ready (gRPC probes), s"] = round(
        time.monotonic() - started, 1)
    return pods


@pytest.fixture(scope="module")
def client(node: Plane, model, tmp_path_factory):
    images = _images()
    node.kubectl("create", "configmap", "realnode-client", "-n", MODELS_NS,
                 f"--from-file=realnode_client.py={CLIENT_SCRIPT}")
    node.apply(_client_pod(images["runtime"]))
    wait_until(lambda: _is_ready(node.kubectl_json("get", "pod", "client", "-n", MODELS_NS)),
               timeout=120, message="the client pod Ready")
    session = InClusterClient(node, "client", tmp_path_factory.mktemp("client") / "client.log")
    yield session
    session.close()


def _service_addr(node: Plane, name: str = MODEL) -> str:
    svc = node.kubectl_json("get", "service", name, "-n", MODELS_NS)
    return f"{svc['spec']['clusterIP']}:8500"


class Watched(NamedTuple):
    answered: list[float]
    """Per address: seconds until its first TF Serving Predict answered from the version."""
    delivered: list[float]
    """Per address: seconds until the runtime reported the target version (empty without one)."""
    action_s: float
    """How long the action itself took (a kubectl process: about 0.5 s on a busy 2-core node)."""


def _watch(client: InClusterClient, addrs: list[str], version: str, action, timeout: float = 120,
           from_end: bool = False, target: str | None = None) -> Watched:
    """Starts watching `addrs`, runs `action`, and times each address from the moment `action`
    began (or ended, with from_end): until it answers from `version` and, with `target`, until
    its runtime reports that target version (read from its Downward API file)."""
    client.send("watch", addrs=addrs, version=version, target=target, timeout=timeout)
    client.expect("watching", timeout=60)
    t0 = time.time()
    action()
    took = time.time() - t0
    if from_end:
        t0 += took
    result = client.result(timeout=timeout + 30)
    return Watched([round(result["first_seen"][a] - t0, 3) for a in addrs],
                   [round(result["target_seen"][a] - t0, 3) for a in addrs] if target else [],
                   round(took, 3))


def _containerd_time(node: Plane, needle: str) -> float:
    """Unix time of the first line of the node's containerd log that contains `needle`."""
    from datetime import datetime

    for line in (node.dir / "logs" / "containerd.log").read_text(errors="replace").splitlines():
        if needle in line and line.startswith('time="'):
            stamp = line[len('time="'):line.index('"', len('time="'))]
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    raise AssertionError(f"no containerd log line with {needle!r}")


# --- the scenario ----------------------------------------------------------------------------------

def test_images_run_as_pods_operator_from_the_chart_with_its_rbac(node, operator_release):
    pods = node.kubectl_json("get", "pods", "-n", OPERATOR_NS)["items"]
    assert len(pods) == 1
    pod = pods[0]
    images = _images()
    assert pod["spec"]["containers"][0]["image"] == images["operator"]
    account = pod["spec"]["serviceAccountName"]
    chart_accounts = node.kubectl("get", "serviceaccounts", "-n", OPERATOR_NS, "-o", "name", "-l",
                                  f"app.kubernetes.io/instance={operator_release}").stdout.split()
    assert f"serviceaccount/{account}" in chart_accounts
    # A uid without a passwd entry once crash-looped in kopf: Ready at one instant proves little,
    # so it must stay up without restarts while it works.
    time.sleep(5)
    pod = node.kubectl_json("get", "pod", pod["metadata"]["name"], "-n", OPERATOR_NS)
    assert _is_ready(pod) and _restarts(pod) == 0, node.kubectl(
        "logs", "-n", OPERATOR_NS, pod["metadata"]["name"], "--tail", "40", check=False).stdout
    uid = node.kubectl("exec", "-n", OPERATOR_NS, pod["metadata"]["name"], "--", "id", "-u").stdout.strip()
    assert uid == "10001"
    # Its own token only: the operator's API access is exactly the chart's RBAC.
    assert node.kubectl("auth", "can-i", "list", "secrets", "-A",
                        "--as", f"system:serviceaccount:{OPERATOR_NS}:{account}",
                        check=False).stdout.strip() == "no"


def test_model_on_a_persistent_volume_is_ready_through_the_kubelets_grpc_probes(node, model):
    for pod in model:
        container = pod["spec"]["containers"][0]
        assert container["readinessProbe"]["grpc"]["port"] == 8500
        assert pod["status"]["qosClass"] == "Burstable"
        name = pod["metadata"]["name"]
        log = node.kubectl("logs", "-n", MODELS_NS, name).stdout
        # The native front end was built into the image: nothing compiles in the pod (there is
        # no compiler, and the root file system is read-only).
        assert "gRPC server: native (gRPC C++)" in log, log[-3000:]
        uid = node.kubectl("exec", "-n", MODELS_NS, name, "--", "id", "-u").stdout.strip()
        assert uid == "10001"
        write = node.kubectl("exec", "-n", MODELS_NS, name, "--", "touch", "/opt/x", check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr
        assert _restarts(node.kubectl_json("get", "pod", name, "-n", MODELS_NS)) == 0


def test_client_pod_calls_the_service_with_deeprec_and_tf_serving_apis(node, model, client):
    service = _service_addr(node)
    answer = client.call("predict", addr=service)
    assert len(answer["deeprec"]) == 1 and 0.0 < answer["deeprec"][0] < 1.0
    # The same request through both APIs gets the same answer from the same version.
    assert answer["tfs"] == pytest.approx(answer["deeprec"], rel=1e-6)
    assert answer["info"]["version"] == "checkpoint_3"
    assert answer["tfs_version"] == answer["info"]["full_step"]
    assert {"version": answer["tfs_version"], "state": "AVAILABLE"} in answer["tfs_status"]
    # And every replica behind the Service serves the newest version.
    info = client.call("info", addrs=_addrs(model))["info"]
    assert {v["version"] for v in info.values()} == {"checkpoint_3"}, info


def test_new_version_dropped_into_the_store_is_served_by_every_replica(node, model, client, store):
    pods = _ready_pods(node, MODEL, REPLICAS)
    old = os.umask(0o022)
    try:
        # Timed from the moment the version is complete (its checkpoint state file is written).
        delays = _watch(client, _addrs(pods), "checkpoint_4", lambda: store.write_full(),
                        from_end=True).answered
    finally:
        os.umask(old)
    FIGURES["new full version written -> every replica answers from it, s"] = delays
    assert max(delays) < 30


def test_rollback_patch_reaches_every_replica_through_the_downward_api(node, model, client):
    pods = _ready_pods(node, MODEL, REPLICAS)
    uids = sorted(p["metadata"]["uid"] for p in pods)

    def patch(version: str):
        return lambda: node.kubectl("patch", "drm", MODEL, "-n", MODELS_NS, "--type", "merge",
                                    "-p", json.dumps({"spec": {"version": version}}))

    def rollback(version: str) -> Watched:
        return _watch(client, _addrs(pods), version, patch(version), target=version)

    # Back to the version served before the last swap: kept loaded, so this measures the path
    # operator -> pod annotation -> kubelet's Downward API file -> runtime.
    runs = [rollback("checkpoint_3")]
    for _ in range(4):
        _watch(client, _addrs(pods), "checkpoint_4", patch("latest"))
        runs.append(rollback("checkpoint_3"))
    # A version not in memory: the runtime loads and warms it up first.
    cold = rollback("checkpoint_1")
    answered = [max(run.answered) for run in runs]
    delivered = [max(run.delivered) for run in runs]
    # Without kubectl's own start-up: from the API server's answer to the patch.
    after_api = [round(max(run.delivered) - run.action_s, 3) for run in runs]
    FIGURES["kubectl patch -> every runtime read the new target from its annotations file, s "
            "(median / max of 5)"] = [round(statistics.median(delivered), 3), max(delivered)]
    FIGURES["  of which after kubectl patch returned (operator, kubelet's Downward API refresh, "
            "the runtime's 0.2 s poll), s (median / max)"] = [round(statistics.median(after_api), 3),
                                                              max(after_api)]
    FIGURES["kubectl patch (rollback to the retained previous version) -> every replica answers "
            "from it, s (median / max of 5)"] = [round(statistics.median(answered), 3), max(answered)]
    FIGURES["kubectl patch (pin a version not loaded) -> every replica answers from it, s"] = max(
        cold.answered)
    for pod in _pods(node, MODEL):
        assert pod["metadata"]["annotations"][TARGET_ANNOTATION] == "checkpoint_1"
        assert _restarts(pod) == 0
        # The kubelet delivered it to the file the runtime reads.
        seen = node.kubectl("exec", "-n", MODELS_NS, pod["metadata"]["name"], "--", "cat",
                            "/etc/podinfo/annotations").stdout
        assert f'{TARGET_ANNOTATION}="checkpoint_1"' in seen
    assert sorted(p["metadata"]["uid"] for p in _pods(node, MODEL)) == uids, "a rollback restarted a pod"
    assert max(answered) < 5
    _watch(client, _addrs(pods), "checkpoint_4", patch("latest"))


def test_deleted_pod_and_scaling_recover(node, model, client):
    pods = _ready_pods(node, MODEL, REPLICAS)
    victim = pods[0]["metadata"]["name"]
    started = time.monotonic()
    node.kubectl("delete", "pod", victim, "-n", MODELS_NS, "--wait=false")

    def replaced():
        ps = [p for p in _pods(node, MODEL) if not p["metadata"].get("deletionTimestamp")]
        ok = len(ps) == REPLICAS and all(_is_ready(p) for p in ps) and victim not in {
            p["metadata"]["name"] for p in ps}
        return ps if ok else None

    pods = wait_until(replaced, timeout=240,
                      message=lambda: f"a replacement pod Ready\n{_describe(node, MODEL)}")
    FIGURES["kubectl delete pod -> replacement Ready, s"] = round(time.monotonic() - started, 1)
    info = client.call("info", addrs=_addrs(pods))["info"]
    assert {v["version"] for v in info.values()} == {"checkpoint_4"}, info

    started = time.monotonic()
    node.kubectl("scale", "drm", MODEL, "-n", MODELS_NS, "--replicas", "3")
    pods = _ready_pods(node, MODEL, 3)
    FIGURES["kubectl scale 2 -> 3: new pod Ready, s"] = round(time.monotonic() - started, 1)
    info = client.call("info", addrs=_addrs(pods))["info"]
    assert {v["version"] for v in info.values()} == {"checkpoint_4"}, info
    node.kubectl("scale", "drm", MODEL, "-n", MODELS_NS, "--replicas", str(REPLICAS))
    _ready_pods(node, MODEL, REPLICAS)

    def status_at_two():
        status = node.kubectl_json("get", "drm", MODEL, "-n", MODELS_NS).get("status", {})
        return status if status.get("readyReplicas") == REPLICAS else None

    status = wait_until(status_at_two, timeout=60, message="the model's status at 2 ready replicas")
    assert status["activeVersion"] == "checkpoint_4"


def test_pod_deleted_under_load_drains_without_a_failed_request(node, model, client, tmp_path):
    pods = _ready_pods(node, MODEL, REPLICAS)
    ips = [p["status"]["podIP"] for p in pods]
    stop_file = f"/tmp/stop-load-{time.time_ns()}"
    # Eight connections to the Service: kube-proxy spreads them over both pods. The load runs
    # until the deleted pod is gone and a little longer (at most 5 minutes).
    client.send("load", target=_service_addr(node), channels=8, seconds=300, stop_file=stop_file,
                metrics=ips)
    client.expect("loading", timeout=60)
    probe = InClusterClient(node, "client", tmp_path / "probe.log")
    try:
        def counts() -> dict[str, float]:
            text = {ip: probe.call("http", url=f"http://{ip}:8501/metrics")["body"] for ip in ips}
            return {ip: sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                            if line.startswith("deeprec_requests_total{")) for ip, body in text.items()}

        time.sleep(2)
        before = counts()
        time.sleep(1)
        after = counts()
    finally:
        probe.close()
    busy = [ip for ip in ips if after[ip] > before[ip]]
    assert busy, f"no pod took requests: {before} -> {after}"
    victim_ip = busy[0]
    victim = next(p["metadata"]["name"] for p in pods if p["status"]["podIP"] == victim_ip)
    deleted = time.time()
    node.kubectl("delete", "pod", victim, "-n", MODELS_NS, "--wait=false")
    container = next(p for p in pods if p["metadata"]["name"] == victim)["status"]["containerStatuses"][0]
    container_id = container["containerID"].split("://", 1)[1]
    wait_until(lambda: node.kubectl("get", "pod", victim, "-n", MODELS_NS, check=False).returncode != 0,
               timeout=240, interval=0.2, message=f"{victim} gone")
    gone = time.time()
    time.sleep(3)  # the load goes on a little after the pod is gone: no failure then either
    node.kubectl("exec", "-n", MODELS_NS, "client", "--", "touch", stop_file)
    result = client.result(timeout=120)
    assert result["seconds"] < 290, "the load ran out of time before the pod was gone"
    # When the kubelet asked containerd to stop the container (SIGTERM), from containerd's log.
    stop_asked = _containerd_time(node, f'StopContainer for \\"{container_id}\\" with timeout')

    # What the deleted pod answered after its deletion: its counter while it drained.
    samples = [(t, n) for t, n in result["metrics"][victim_ip] if isinstance(n, float)]
    at_delete = max((n for t, n in samples if t <= deleted), default=0.0)
    drained = max(n for _, n in samples) - at_delete
    FIGURES["pod deleted under load (8 connections via the Service ClusterIP)"] = {
        "requests sent": result["sent"], "failed": result["failed"],
        "answered by the deleted pod after its deletion": int(drained),
        "deletion -> kubelet stops the container (SIGTERM), s": round(stop_asked - deleted, 1),
        "deletion -> pod gone, s": round(gone - deleted, 1),
        "longest wait for an answer on one connection, s": result["max_gap_s"]}
    assert result["failed"] == 0, result["errors"]
    assert drained > 0, "the deleted pod answered nothing after its deletion: the load missed it"
    _ready_pods(node, MODEL, REPLICAS)


# --- secured model (spec.security: TLS + bearer token from Secrets) --------------------------------
# The operator's spec.security is being built separately; its real-node test belongs here, on the
# same node and client: a DeepRecModel with spec.security whose pods mount the TLS Secret and the
# token, gRPC probes still passing, and the in-cluster client calling the Service over TLS with the
# token (and refused without it).


def test_guaranteed_pod_gets_exclusive_cores_and_its_lanes_run_on_them(node, model, client):
    name = "pinned"
    node.apply(_model(name, 1, {"requests": {"cpu": "1", "memory": "1536Mi"},
                                "limits": {"cpu": "1", "memory": "1536Mi"}},
                      sessionGroup={"sessionNum": 2}))
    try:
        pod = _ready_pods(node, name, 1)[0]
        assert pod["status"]["qosClass"] == "Guaranteed"
        pod_name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]

        # What the kubelet's CPU manager assigned, from its own checkpoint file.
        state = json.loads((node.dir / "kubelet" / "cpu_manager_state").read_text())
        assigned = state["entries"][uid]["deeprec-runtime"]
        shared = state["defaultCpuSet"]
        assert assigned and assigned != shared

        inspect = (
            "import glob, json, os\n"
            "def field(path, key):\n"
            "    for line in open(path):\n"
            "        if line.startswith(key + ':'):\n"
            "            return line.split(':', 1)[1].strip()\n"
            "threads = {}\n"
            "for task in glob.glob('/proc/1/task/*'):\n"
            "    try:\n"
            "        threads[os.path.basename(task)] = [open(task + '/comm').read().strip(),\n"
            "                                           field(task + '/status', 'Cpus_allowed_list')]\n"
            "    except OSError:\n"
            "        pass\n"
            "cpuset = next(open(p).read().strip() for p in ('/sys/fs/cgroup/cpuset/cpuset.cpus',\n"
            "              '/sys/fs/cgroup/cpuset.cpus.effective') if os.path.exists(p))\n"
            "print(json.dumps({'cgroup_cpuset': cpuset, 'threads': threads,\n"
            "                  'self': field('/proc/self/status', 'Cpus_allowed_list')}))\n"
        )
        seen = json.loads(node.kubectl("exec", "-n", MODELS_NS, pod_name, "--", "python", "-c",
                                       inspect).stdout)
        lanes = {tid: cpus for tid, (comm, cpus) in seen["threads"].items() if comm.startswith("tf_Compute")}
        FIGURES["exclusive cores"] = {
            "kubelet cpu_manager_state: runtime container": assigned, "shared pool": shared,
            "container cgroup cpuset": seen["cgroup_cpuset"],
            "runtime threads": len(seen["threads"]),
            "tf_Compute (lane pool) threads -> Cpus_allowed_list": sorted(lanes.values()),
            "distinct Cpus_allowed_list over all threads": sorted({c for _, c in seen["threads"].values()})}
        assert seen["cgroup_cpuset"] == assigned
        assert seen["self"] == assigned
        assert {cpus for _, cpus in seen["threads"].values()} == {assigned}, seen["threads"]
        assert len(lanes) >= 2, f"expected the pools of 2 lanes, threads: {seen['threads']}"
        log = node.kubectl("logs", "-n", MODELS_NS, pod_name).stdout
        assert f"session group: 2 lane(s) on cpusets {assigned}; {assigned}" in log, log[-3000:]

        # The other runtimes share what is left, never the exclusive core.
        # The kubelet moves them off it at its next reconcile (every 10 s).
        other = _ready_pods(node, MODEL, REPLICAS)[0]["metadata"]["name"]

        def others() -> str:
            return node.kubectl("exec", "-n", MODELS_NS, other, "--", "grep", "Cpus_allowed_list",
                                "/proc/1/status").stdout.split(":", 1)[1].strip()

        wait_until(lambda: others() == shared, timeout=30,
                   message=lambda: f"the shared pool {shared} for {other}, not {others()}")
        # And the pinned pod serves.
        answer = client.call("predict", addr=f"{pod['status']['podIP']}:8500")
        assert answer["info"]["version"] == "checkpoint_4"
    finally:
        node.kubectl("delete", "drm", name, "-n", MODELS_NS, "--wait=false", check=False)
