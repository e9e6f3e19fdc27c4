"""Real pods on a real kubelet: both images, the chart and a DeepRecModel, as a user runs them.

`scripts/k8s-plane.sh up DIR --real-node` starts the control plane with a real node (containerd,
runc, CNI bridge, kubelet with the static CPU manager, kube-proxy) in a network namespace of its
own, with the images of `scripts/images.sh build` (from the unchanged Dockerfiles) loaded. Then,
as a user: `helm install` (the operator runs as a pod of its image with the chart's RBAC),
`kubectl apply` of a DeepRecModel whose model is on a PersistentVolume, and an in-cluster client
pod (the runtime image) calling the model's Service over gRPC with the DeepRec and TensorFlow
Serving APIs. What only a real node shows: gRPC probes run by the kubelet, the Downward API file
refreshed by it (rollback latency), a uid-10001 runtime on a read-only root file system, graceful
drain on pod deletion behind kube-proxy, exclusive cores from the static CPU manager, and a
secured model (TLS, a generated bearer token, then mutual TLS) probed by the kubelet on its
plaintext health port while clients and the operator reach it only with their credentials.

The tests are steps of one scenario on one model and run in file order. Each measured figure is
printed at the end of the module (and written to $DEEPREC_REALNODE_FIGURES when set).

If the node cannot start (no images, no root, missing packages), every test here FAILS with the
reason; nothing is skipped. The binaries come from `scripts/k8s-plane.sh build`, the images from
`scripts/images.sh build` (`make test` runs both first).
"""

from __future__ import annotations

import base64
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
from tests.support.plane import Plane, wait_until

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


def _client_pod(runtime_image: str, name: str = "client", labels: dict | None = None,
                mounts: dict[str, dict] | None = None) -> dict:
    """A pod of the runtime image that idles until the test execs the client script in it;
    `mounts`: mount path -> volume source (a user's client mounts its Secrets this way)."""
    extra = sorted((mounts or {}).items())
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": MODELS_NS, "labels": labels or {}},
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
                                 {"name": "tmp", "mountPath": "/tmp"},
                                 *({"name": f"extra-{i}", "mountPath": path, "readOnly": True}
                                   for i, (path, _) in enumerate(extra))],
            }],
            "volumes": [{"name": "client", "configMap": {"name": "realnode-client"}},
                        {"name": "tmp", "emptyDir": {}},
                        *({"name": f"extra-{i}", **source} for i, (_, source) in enumerate(extra))],
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
           from_end: bool = False, target: str | None = None, auth: dict | None = None) -> Watched:
    """Starts watching `addrs`, runs `action`, and times each address from the moment `action`
    began (or ended, with from_end): until it answers from `version` and, with `target`, until
    its runtime reports that target version (read from its Downward API file). `auth`: the
    client's credentials for a secured model (see realnode_client.py)."""
    client.send("watch", addrs=addrs, version=version, target=target, timeout=timeout, auth=auth)
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
# A second model on the same node, store and operator, secured as a user secures one: a
# kubernetes.io/tls Secret for the Service's DNS names with its CA, a bearer token the operator
# generates, later mutual TLS; clients in a pod that mounts the token Secret, its client
# certificate and the CA bundle. (No NetworkPolicy here: the node's CNI bridge enforces none.)

SECURED = "secured"
#: The name the server certificate carries and everyone checks. No cluster DNS runs on this node,
#: so clients dial the Service's ClusterIP (or a pod IP, as the operator does) and check this name,
#: which is what a resolver would have had them dial.
SECURED_DNS = f"{SECURED}.{MODELS_NS}.svc"
SECURED_MOUNTS = "/etc/secured"
#: What the rollbacks pin: a version in the store that the model has not loaded at start.
PINNED = "checkpoint_2"


def _secret(name: str, data: dict[str, bytes], type_: str = "Opaque") -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": MODELS_NS},
            "type": type_, "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def _auth(*, token: bool = True, cert: str | None = None, wrong_token: bool = False) -> dict:
    """What the ranker pod presents (files it mounts): TLS trusting the model's CA, and optionally
    the generated token, a wrong one, and a client certificate (`cert`: its mount folder)."""
    auth: dict[str, str] = {"ca": f"{SECURED_MOUNTS}/ca/ca.crt", "server_name": SECURED_DNS}
    if token:
        auth["token_file"] = f"{SECURED_MOUNTS}/token/token"
    if wrong_token:
        auth["token"] = "not-the-token"  # nosec B105  # a wrong token, on purpose
    if cert:
        auth |= {"cert": f"{SECURED_MOUNTS}/{cert}/tls.crt", "key": f"{SECURED_MOUNTS}/{cert}/tls.key"}
    return auth


class Secured(NamedTuple):
    client: InClusterClient
    """The in-cluster client, in the `ranker` pod that mounts the credentials."""
    token: str
    server_key: bytes
    newest: str
    """The version the model serves at `latest`."""


def _served_status(node: Plane, version: str | None, replicas: int = REPLICAS) -> dict | None:
    """The model's status once the operator's probe found every replica serving `version` (None:
    any one version; `versions` counts the replicas that answered the probe) for the current
    generation."""
    drm = node.kubectl_json("get", "drm", SECURED, "-n", MODELS_NS)
    status = drm.get("status") or {}
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
    active = status.get("activeVersion")
    ok = (status.get("observedGeneration") == drm["metadata"]["generation"]
          and active and active == (version or active) and ready.get("status") == "True"
          and status.get("versions") == [{"name": active, "replicas": replicas}])
    return status if ok else None


def _template_pods(node: Plane, flag: str | None, count: int = REPLICAS, timeout: float = 240) -> list[dict]:
    """`count` Ready pods of the secured model, all of the template whose runtime has (or, with
    flag None, may have) `flag` on its command line, and no other pod left."""
    def ready():
        pods = _pods(node, SECURED)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        ok = (len(pods) == count and all(_is_ready(p) for p in live) and len(live) == count
              and (flag is None or all(flag in p["spec"]["containers"][0]["args"] for p in live)))
        return live if ok else None

    return wait_until(ready, timeout=timeout, interval=0.2,
                      message=lambda: f"{count} Ready pods of {SECURED} ({flag})\n{_describe(node, SECURED)}")


@pytest.fixture(scope="class")
def secured(node: Plane, operator_release, model, client, tmp_path_factory):
    """The secured model applied and Ready, and the ranker client pod (it runs the script of the
    `client` fixture's ConfigMap); deleted afterwards, so the cores it holds are free for the
    exclusive-cores test."""
    from tests.support.operator.pki import CA

    server_ca, client_ca, stranger_ca = CA("models-ca"), CA("ranking-clients-ca"), CA("stranger-ca")
    server = server_ca.server(SECURED_DNS, f"{SECURED_DNS}.cluster.local", f"{SECURED}.{MODELS_NS}")
    operator_cert = client_ca.client("deeprec-operator")
    ranker_cert, stranger_cert = client_ca.client("ranker"), stranger_ca.client("ranker")
    drm = _model(SECURED, REPLICAS, {"requests": {"cpu": "100m", "memory": "512Mi"},
                                     "limits": {"memory": "1536Mi"}},
                 security={"tls": {"secretName": f"{SECURED}-tls"},
                           "authentication": {"bearerToken": {}}})
    try:
        # What cert-manager would write: the certificate, its key and the CA, in one Secret.
        # The mutual-TLS Secrets are there from the start; the model asks for them later.
        started = time.monotonic()
        node.apply([
            _secret(f"{SECURED}-tls", {"tls.crt": server.cert, "tls.key": server.key,
                                       "ca.crt": server_ca.pem}, "kubernetes.io/tls"),
            _secret(f"{SECURED}-clients-ca", {"ca.crt": client_ca.pem}),
            _secret(f"{SECURED}-operator-client", {"tls.crt": operator_cert.cert,
                                                   "tls.key": operator_cert.key}, "kubernetes.io/tls"),
            drm,
        ])
        _template_pods(node, "--tls-cert")
        FIGURES["secured model: kubectl apply (TLS + generated token) -> 2 runtime pods Ready "
                "(kubelet gRPC probes on the plaintext health port), s"] = round(
            time.monotonic() - started, 1)
        # The newest version in the store (checkpoint_4 once the earlier steps wrote it).
        newest = wait_until(
            lambda: (s := _served_status(node, None)) and s["activeVersion"], timeout=60, interval=0.2,
            message=lambda: f"the secured model's status Ready through the operator's TLS + token "
                            f"probe\n{_operator_log(node)}")
        FIGURES["secured model: kubectl apply -> status Ready with activeVersion (the operator's "
                "TLS + token probe), s"] = round(time.monotonic() - started, 1)

        # The clients' side: the CA bundle is public (a ConfigMap, as trust bundles are
        # distributed); the token Secret the operator made and the client certificates are
        # mounted as Secrets.
        node.apply([
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": f"{SECURED}-ca", "namespace": MODELS_NS},
             "data": {"ca.crt": server_ca.pem.decode()}},
            _secret("ranker-client", {"tls.crt": ranker_cert.cert, "tls.key": ranker_cert.key},
                    "kubernetes.io/tls"),
            _secret("stranger-client", {"tls.crt": stranger_cert.cert, "tls.key": stranger_cert.key},
                    "kubernetes.io/tls"),
            _client_pod(_images()["runtime"], "ranker", {"app": "ranker"}, {
                f"{SECURED_MOUNTS}/ca": {"configMap": {"name": f"{SECURED}-ca"}},
                f"{SECURED_MOUNTS}/token": {"secret": {"secretName": f"{SECURED}-auth-token"}},
                f"{SECURED_MOUNTS}/client": {"secret": {"secretName": "ranker-client"}},
                f"{SECURED_MOUNTS}/stranger": {"secret": {"secretName": "stranger-client"}}}),
        ])
        wait_until(lambda: _is_ready(node.kubectl_json("get", "pod", "ranker", "-n", MODELS_NS)),
                   timeout=120, message="the ranker pod Ready")
        token_data = node.kubectl_json("get", "secret", f"{SECURED}-auth-token", "-n", MODELS_NS)["data"]
        token = base64.b64decode(token_data["token"]).decode().strip()
        client = InClusterClient(node, "ranker", tmp_path_factory.mktemp("ranker") / "client.log")
        try:
            yield Secured(client, token, server.key, newest)
        finally:
            client.close()
    finally:
        node.kubectl("delete", "pod", "ranker", "-n", MODELS_NS, "--ignore-not-found", check=False)
        node.kubectl("delete", "drm", SECURED, "-n", MODELS_NS, "--ignore-not-found", check=False)
        # The garbage collector removes the pods; wait for them, they hold CPU requests.
        wait_until(lambda: not _pods(node, SECURED) and node.kubectl(
                       "get", "pod", "ranker", "-n", MODELS_NS, check=False).returncode != 0,
                   timeout=120, message="the secured model's pods and the ranker pod gone")


def _operator_log(node: Plane, tail: int | None = 60) -> str:
    pod = node.kubectl_json("get", "pods", "-n", OPERATOR_NS)["items"][0]["metadata"]["name"]
    args = ["--tail", str(tail)] if tail else []
    return node.kubectl("logs", "-n", OPERATOR_NS, pod, *args, check=False).stdout


def _patch_version(node: Plane, name: str, version: str):
    return lambda: node.kubectl("patch", "drm", name, "-n", MODELS_NS, "--type", "merge",
                                "-p", json.dumps({"spec": {"version": version}}))


class TestSecuredModel:
    """The steps of the secured model, in order, on one model: TLS and a generated token, then
    mutual TLS turned on by a patch."""

    def test_pods_are_ready_through_the_kubelets_probes_on_the_plaintext_health_port(self, node, secured):
        pods = _template_pods(node, "--tls-cert")
        service = node.kubectl_json("get", "service", SECURED, "-n", MODELS_NS)
        # The health port is only the kubelet's: not in the Service.
        assert {p["port"] for p in service["spec"]["ports"]} == {8500, 8501}
        for pod in pods:
            container = pod["spec"]["containers"][0]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["grpc"]["port"] == 8502, (probe, container[probe])
            assert {"name": "health", "containerPort": 8502, "protocol": "TCP"} in container["ports"]
            assert _restarts(pod) == 0
            log = node.kubectl("logs", "-n", MODELS_NS, pod["metadata"]["name"]).stdout
            # TLS and tokens keep the C++ front end.
            assert "gRPC server: native (gRPC C++)" in log, log[-3000:]
            assert "plaintext health on port 8502" in log, log[-3000:]
            ip = pod["status"]["podIP"]
            # What the kubelet asks, asked from another pod: SERVING in plaintext on 8502, which
            # answers nothing else ...
            health = secured.client.call("health", addr=f"{ip}:8502")
            assert health["status"] == "SERVING" and health["deeprec_info"] == "UNIMPLEMENTED", health
            # ... while the serving port takes no plaintext, and TLS + token gets answers.
            codes = secured.client.call("codes", addr=f"{ip}:8500",
                                        variants={"plaintext": None, "tls+token": _auth()})["codes"]
            assert set(codes["plaintext"].values()) == {"UNAVAILABLE"}, codes
            assert set(codes["tls+token"].values()) == {"OK"}, codes

    def test_client_calls_the_service_over_tls_with_the_token_and_is_refused_without(self, node, secured):
        service = _service_addr(node, SECURED)
        answer = secured.client.call("predict", addr=service, auth=_auth())
        assert len(answer["deeprec"]) == 1 and 0.0 < answer["deeprec"][0] < 1.0
        assert answer["tfs"] == pytest.approx(answer["deeprec"], rel=1e-6)
        assert answer["info"]["version"] == secured.newest
        assert answer["tfs_version"] == answer["info"]["full_step"]
        info = secured.client.call("info", addrs=_addrs(_template_pods(node, "--tls-cert")),
                                   auth=_auth())["info"]
        assert {v["version"] for v in info.values()} == {secured.newest}, info
        codes = secured.client.call("codes", addr=service, variants={
            "tls+token": _auth(), "tls, no token": _auth(token=False),
            "tls, wrong token": _auth(token=False, wrong_token=True), "plaintext": None})["codes"]
        assert codes == {
            "tls+token": dict.fromkeys(("deeprec_info", "deeprec_predict", "tfs_predict"), "OK"),
            "tls, no token": dict.fromkeys(("deeprec_info", "deeprec_predict", "tfs_predict"),
                                           "UNAUTHENTICATED"),
            "tls, wrong token": dict.fromkeys(("deeprec_info", "deeprec_predict", "tfs_predict"),
                                              "UNAUTHENTICATED"),
            "plaintext": dict.fromkeys(("deeprec_info", "deeprec_predict", "tfs_predict"),
                                       "UNAVAILABLE")}, codes

    def test_operator_reports_the_served_version_through_its_tls_and_token_probe(self, node, secured):
        status = wait_until(lambda: _served_status(node, secured.newest), timeout=30,
                            message=lambda: f"status Ready at {secured.newest}\n{_operator_log(node)}")
        degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
        assert degraded["status"] == "False", status
        drm = node.kubectl_json("get", "drm", SECURED, "-n", MODELS_NS)
        secret = node.kubectl_json("get", "secret", f"{SECURED}-auth-token", "-n", MODELS_NS)
        (owner,) = secret["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner.get("controller")) == ("DeepRecModel",
                                                                        drm["metadata"]["uid"], True)
        assert len(secured.token) >= 40
        # The operator pod runs as the chart made it: its ServiceAccount reads Secrets by name and
        # cannot list them.
        pod = node.kubectl_json("get", "pods", "-n", OPERATOR_NS)["items"][0]
        assert _restarts(pod) == 0
        account = f"system:serviceaccount:{OPERATOR_NS}:{pod['spec']['serviceAccountName']}"
        can = {verb: node.kubectl("auth", "can-i", verb, "secrets", "-n", MODELS_NS, "--as", account,
                                  check=False).stdout.strip() for verb in ("get", "list")}
        assert can == {"get": "yes", "list": "no"}, can

    def test_rollback_patch_reaches_every_replica_of_the_secured_model(self, node, secured):
        pods = _template_pods(node, "--tls-cert")
        uids = sorted(p["metadata"]["uid"] for p in pods)
        addrs, auth = _addrs(pods), _auth()

        def rollback(version: str) -> Watched:
            return _watch(secured.client, addrs, version, _patch_version(node, SECURED, version),
                          target=version, auth=auth)

        # A version not loaded first (this model started at the newest), then back and forth
        # between it and the newest, each kept loaded by the other's swap.
        cold = rollback(PINNED)
        status = wait_until(lambda: _served_status(node, PINNED), timeout=30,
                            message=lambda: f"status at {PINNED} after the pin\n{_operator_log(node)}")
        assert status["targetVersion"] == PINNED
        runs = []
        for _ in range(3):
            _watch(secured.client, addrs, secured.newest, _patch_version(node, SECURED, "latest"),
                   auth=auth)
            runs.append(rollback(PINNED))
        answered = [max(run.answered) for run in runs]
        FIGURES["secured model: kubectl patch (rollback to the retained previous version) -> every "
                "replica answers from it over TLS, s (median / max of 3)"] = [
            round(statistics.median(answered), 3), max(answered)]
        FIGURES["secured model: kubectl patch (pin a version not loaded) -> every replica answers "
                "from it, s"] = max(cold.answered)
        # Where a slow one spent its time: before or after the runtimes read the new target.
        FIGURES["  of which until every runtime read the target from its annotations file, s"] = max(
            cold.delivered)
        assert sorted(p["metadata"]["uid"] for p in _pods(node, SECURED)) == uids, "a pod restarted"
        assert max(answered) < 5
        _watch(secured.client, addrs, secured.newest, _patch_version(node, SECURED, "latest"), auth=auth)
        wait_until(lambda: _served_status(node, secured.newest), timeout=30,
                   message=lambda: f"status back at {secured.newest}\n{_operator_log(node)}")

    def test_mutual_tls_patch_rolls_the_pods_and_refuses_clients_without_a_certificate(self, node, secured):
        started = time.monotonic()
        node.kubectl("patch", "drm", SECURED, "-n", MODELS_NS, "--type", "merge", "-p", json.dumps(
            {"spec": {"security": {"tls": {"clientAuth": {
                "caSecretName": f"{SECURED}-clients-ca",
                "operatorCertificateSecretName": f"{SECURED}-operator-client"}}}}}))
        pods = _template_pods(node, "--tls-client-ca")
        FIGURES["secured model: kubectl patch (turn on mutual TLS) -> pods rolled, each Ready "
                "(probes on the health port), s"] = round(time.monotonic() - started, 1)
        # The status counts the new pods only if the operator's probe, with its client
        # certificate, got answers from each.
        wait_until(lambda: _served_status(node, secured.newest), timeout=60, interval=0.2,
                   message=lambda: f"status Ready through the mutual-TLS probe\n{_operator_log(node)}")
        FIGURES["secured model: kubectl patch (turn on mutual TLS) -> status Ready (the operator's "
                "probe with its client certificate), s"] = round(time.monotonic() - started, 1)
        for pod in pods:
            assert pod["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] == 8502
            assert _restarts(pod) == 0
        all_ok = dict.fromkeys(("deeprec_info", "deeprec_predict", "tfs_predict"), "OK")
        for addr in [_service_addr(node, SECURED), *_addrs(pods)]:
            codes = secured.client.call("codes", addr=addr, variants={
                "certificate + token": _auth(cert="client"),
                "certificate, no token": _auth(cert="client", token=False),
                "token, no certificate": _auth(),
                "certificate of another CA + token": _auth(cert="stranger"),
                "plaintext": None})["codes"]
            assert codes["certificate + token"] == all_ok, (addr, codes)
            assert set(codes["certificate, no token"].values()) == {"UNAUTHENTICATED"}, (addr, codes)
            for refused in ("token, no certificate", "certificate of another CA + token", "plaintext"):
                assert set(codes[refused].values()) == {"UNAVAILABLE"}, (addr, refused, codes)
        answer = secured.client.call("predict", addr=_service_addr(node, SECURED), auth=_auth(cert="client"))
        assert answer["info"]["version"] == secured.newest
        assert answer["tfs"] == pytest.approx(answer["deeprec"], rel=1e-6)
        # A pin under mutual TLS: the replicas and the operator's status follow it.
        pinned = _watch(secured.client, _addrs(pods), PINNED,
                        _patch_version(node, SECURED, PINNED), target=PINNED,
                        auth=_auth(cert="client"))
        FIGURES["secured model, mutual TLS: kubectl patch (pin) -> every replica answers from it, s"] = max(
            pinned.answered)
        wait_until(lambda: _served_status(node, PINNED), timeout=30,
                   message=lambda: f"status at {PINNED} under mutual TLS\n{_operator_log(node)}")
        _watch(secured.client, _addrs(pods), secured.newest, _patch_version(node, SECURED, "latest"),
               auth=_auth(cert="client"))

    def test_token_and_key_appear_in_no_log_config_map_status_or_event(self, node, secured):
        runtime_logs = "\n".join(node.kubectl("logs", "-n", MODELS_NS, p["metadata"]["name"]).stdout
                                 for p in _pods(node, SECURED))
        places = {
            "operator pod's log": _operator_log(node, tail=None),
            "runtime pods' logs": runtime_logs,
            "ConfigMaps": node.kubectl("get", "configmaps", "-A", "-o", "json").stdout,
            "DeepRecModels (spec and status)": node.kubectl("get", "drm", "-A", "-o", "json").stdout,
            "Events": node.kubectl("get", "events", "-A", "-o", "json").stdout,
            "Deployments, ReplicaSets, Pods": node.kubectl("get", "deployments,replicasets,pods", "-A",
                                                           "-o", "json").stdout,
        }
        assert "TokenSecretCreated" in places["Events"]
        assert len(places["operator pod's log"].splitlines()) > 10  # the whole log, not an empty one
        key_line = secured.server_key.decode().splitlines()[1]
        for where, text in places.items():
            assert secured.token not in text, f"the bearer token appears in the {where}"
            assert key_line not in text, f"the TLS key appears in the {where}"


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
