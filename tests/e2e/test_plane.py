"""Smoke tests: the control plane from scripts/k8s-plane.sh is a working Kubernetes.

Each test checks behaviour that a fake API would not give: the scheduler placing pods by
resources, kwok reporting them Running with loopback pod IPs, RBAC denying and granting, the
garbage collector deleting owned objects, helm installing a chart and waiting for it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.support.plane import (
    CommandError,
    DownwardAPIBridge,
    format_downward_api,
    service_account_kubeconfig,
    wait_until,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PLANE_SCRIPT = REPO / "scripts" / "k8s-plane.sh"


def _pods(plane, namespace, selector):
    return plane.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]


def _running_and_ready(pod):
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    return pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True"


def _deployment(name, replicas, resources=None, image="registry.example/none:1"):
    container = {"name": "main", "image": image}
    if resources:
        container["resources"] = resources
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [container]}},
        },
    }


def test_server_version_and_nodes_ready(k8s_plane):
    version = json.loads(k8s_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.34.4"
    assert version["clientVersion"]["gitVersion"] == "v1.34.4"

    nodes = {n["metadata"]["name"]: n for n in k8s_plane.kubectl_json("get", "nodes")["items"]}
    assert set(k8s_plane.nodes) <= set(nodes)
    for name in k8s_plane.nodes:
        node = nodes[name]
        conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert conditions["Ready"] == "True", (name, conditions)
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
        assert node["status"]["allocatable"]["cpu"] == "8"
        assert node["status"]["allocatable"]["memory"] == "32Gi"
        assert node["status"]["allocatable"]["pods"] == "110"
        net = ipaddress.ip_network(node["spec"]["podCIDR"])
        assert net.subnet_of(ipaddress.ip_network("127.0.0.0/8")), net
    # Readiness of the components, as the API server reports it.
    assert k8s_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_deployment_pods_run_on_kwok_nodes(k8s_plane, namespace):
    k8s_plane.apply(_deployment("web", 3), namespace=namespace)
    started = time.monotonic()
    pods = wait_until(
        lambda: (lambda ps: ps if len(ps) == 3 and all(map(_running_and_ready, ps)) else None)(
            _pods(k8s_plane, namespace, "app=web")),
        timeout=60, message="3 Running and Ready pods of deployment web")
    elapsed = time.monotonic() - started
    cidrs = [ipaddress.ip_network(c) for c in k8s_plane.pod_cidrs]
    ips = set()
    for pod in pods:
        assert pod["spec"]["nodeName"] in k8s_plane.nodes
        ip = ipaddress.ip_address(pod["status"]["podIP"])
        assert any(ip in c for c in cidrs), (ip, cidrs)
        ips.add(ip)
    assert len(ips) == 3, "pod IPs must be distinct"
    # The deployment controller sees them too (status computed from the ReplicaSet).
    wait_until(lambda: k8s_plane.kubectl_json("get", "deployment", "web", "-n", namespace)
               ["status"].get("readyReplicas") == 3, timeout=30,
               message="deployment web status.readyReplicas == 3")
    print(f"3 pods Running in {elapsed:.1f}s")

    # Scale down through the scale subresource: the ReplicaSet controller deletes pods and kwok
    # completes their deletion.
    k8s_plane.kubectl("scale", "deployment", "web", "-n", namespace, "--replicas", "1")
    wait_until(lambda: len(_pods(k8s_plane, namespace, "app=web")) == 1, timeout=60,
               message="deployment web scaled down to 1 pod")


def test_scheduler_honours_gpu_capacity(k8s_plane, namespace):
    # Each node has nvidia.com/gpu: 2. A pod asking for 2 fits; one asking for 3 fits nowhere.
    gpus = lambda n: {"limits": {"nvidia.com/gpu": str(n)}}  # noqa: E731
    k8s_plane.apply([_deployment("fits", 1, gpus(2)), _deployment("too-big", 1, gpus(3))],
                    namespace=namespace)
    wait_until(lambda: any(map(_running_and_ready, _pods(k8s_plane, namespace, "app=fits"))),
               timeout=60, message="the 2-GPU pod Running")

    def unschedulable():
        pods = _pods(k8s_plane, namespace, "app=too-big")
        if len(pods) != 1:
            return False
        conds = {c["type"]: c for c in pods[0]["status"].get("conditions", [])}
        sched = conds.get("PodScheduled")
        return (pods[0]["status"].get("phase") == "Pending" and sched is not None
                and sched["status"] == "False" and sched.get("reason") == "Unschedulable"
                and "nvidia.com/gpu" in sched.get("message", ""))

    wait_until(unschedulable, timeout=60, message="the 3-GPU pod reported Unschedulable")


def test_rbac_denies_bare_service_account(k8s_plane, namespace, tmp_path):
    k8s_plane.kubectl("create", "serviceaccount", "bare", "-n", namespace)
    user = f"system:serviceaccount:{namespace}:bare"
    can_i = k8s_plane.kubectl("auth", "can-i", "list", "pods", "-n", namespace, "--as", user,
                              check=False)
    assert can_i.stdout.strip() == "no"

    kubeconfig = service_account_kubeconfig(k8s_plane, namespace, "bare", tmp_path / "bare.kubeconfig")
    denied = k8s_plane.kubectl("get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr and user in denied.stderr, denied.stderr

    # The Python client (what the operator uses) reads the same kubeconfig and is refused too.
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    with pytest.raises(ApiException) as refused:
        api.list_namespaced_pod(namespace)
    assert refused.value.status == 403

    # The token does authenticate: granting a Role makes the same call succeed, and only that.
    k8s_plane.kubectl("create", "role", "pod-reader", "-n", namespace, "--verb", "get,list",
                      "--resource", "pods")
    k8s_plane.kubectl("create", "rolebinding", "bare-reads-pods", "-n", namespace,
                      "--role", "pod-reader", "--serviceaccount", f"{namespace}:bare")
    wait_until(lambda: k8s_plane.kubectl("get", "pods", "-n", namespace, kubeconfig=kubeconfig,
                                         check=False).returncode == 0,
               timeout=15, message="pod list allowed after the RoleBinding")
    for args in (["get", "secrets", "-n", namespace],
                 ["get", "pods", "-n", "kube-system"],
                 ["delete", "pod", "anything", "-n", namespace]):
        proc = k8s_plane.kubectl(*args, kubeconfig=kubeconfig, check=False)
        assert proc.returncode != 0 and "Forbidden" in proc.stderr, (args, proc.stderr)
    assert api.list_namespaced_pod(namespace).items == []
    api.api_client.close()


def test_garbage_collector_deletes_owned_children(k8s_plane, namespace):
    k8s_plane.kubectl("create", "configmap", "owner", "-n", namespace, "--from-literal", "a=1")
    owner_uid = k8s_plane.kubectl_json("get", "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    k8s_plane.apply({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "child", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}]},
        "data": {"b": "2"},
    }, namespace=namespace)
    k8s_plane.kubectl("create", "configmap", "unowned", "-n", namespace, "--from-literal", "c=3")

    k8s_plane.apply(_deployment("gc", 2), namespace=namespace)
    wait_until(lambda: len(_pods(k8s_plane, namespace, "app=gc")) == 2, timeout=60,
               message="2 pods of deployment gc")

    k8s_plane.kubectl("delete", "configmap", "owner", "-n", namespace)
    k8s_plane.kubectl("delete", "deployment", "gc", "-n", namespace, "--cascade=background")
    wait_until(lambda: k8s_plane.kubectl("get", "configmap", "child", "-n", namespace,
                                         check=False).returncode != 0,
               timeout=60, message="the owned ConfigMap deleted by the garbage collector")
    wait_until(lambda: not k8s_plane.kubectl_json("get", "replicasets", "-n", namespace)["items"]
               and not _pods(k8s_plane, namespace, "app=gc"),
               timeout=60, message="ReplicaSet and pods of deployment gc deleted")
    # Objects without an owner stay.
    k8s_plane.kubectl("get", "configmap", "unowned", "-n", namespace)


def test_helm_installs_a_chart(k8s_plane, namespace, tmp_path):
    k8s_plane.helm("create", tmp_path / "demo")
    chart = tmp_path / "demo"
    (chart / "templates" / "greeting.yaml").write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: {{ .Release.Name }}-greeting
        data:
          greeting: {{ .Values.greeting | default "hello" | quote }}
        """))
    started = time.monotonic()
    k8s_plane.helm("install", "demo", chart, "-n", namespace, "--set", "greeting=hi",
                   "--wait", "--timeout", "2m")
    print(f"helm install --wait took {time.monotonic() - started:.1f}s")
    releases = json.loads(k8s_plane.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("demo", "deployed")]
    cm = k8s_plane.kubectl_json("get", "configmap", "demo-greeting", "-n", namespace)
    assert cm["data"] == {"greeting": "hi"}
    dep = k8s_plane.kubectl_json("get", "deployment", "demo", "-n", namespace)
    assert dep["status"].get("readyReplicas") == 1

    k8s_plane.helm("upgrade", "demo", chart, "-n", namespace, "--set", "greeting=bye", "--wait")
    cm = k8s_plane.kubectl_json("get", "configmap", "demo-greeting", "-n", namespace)
    assert cm["data"] == {"greeting": "bye"}

    k8s_plane.helm("uninstall", "demo", "-n", namespace, "--wait")
    gone = k8s_plane.kubectl("get", "configmap", "demo-greeting", "-n", namespace, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_kubectl_helper_raises_with_stderr(k8s_plane):
    with pytest.raises(CommandError, match="NotFound"):
        k8s_plane.kubectl("get", "configmap", "does-not-exist", "-n", "default")
    proc = k8s_plane.kubectl("get", "configmap", "does-not-exist", "-n", "default", check=False)
    assert proc.returncode == 1 and "NotFound" in proc.stderr


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"served from {self.server.server_address[0]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_local_process_stands_in_for_a_kwok_pod(k8s_plane, namespace, tmp_path):
    """A pod's IP is a loopback address: a local server bound there answers on the pod's
    address, and the Downward API bridge follows the pod's annotations into a local file.

    (Services cannot route to such pods: the API refuses loopback addresses in EndpointSlices,
    so tests reach stand-ins by pod IP.)"""
    k8s_plane.apply(
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "standin", "labels": {"app": "standin"},
                      "annotations": {"serving.deeprec.io/target-version": "latest"}},
         "spec": {"containers": [{"name": "main", "image": "registry.example/none:1",
                                  "ports": [{"containerPort": 8080, "name": "http"}]}]}},
        namespace=namespace)
    pod = wait_until(lambda: (lambda p: p if _running_and_ready(p) else None)(
        k8s_plane.kubectl_json("get", "pod", "standin", "-n", namespace)),
        timeout=60, message="pod standin Running")
    pod_ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip).is_loopback

    server = HTTPServer((pod_ip, 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection((pod_ip, server.server_address[1]), timeout=5) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = conn.makefile("rb").read().decode()
        assert reply.endswith(f"served from {pod_ip}")
    finally:
        server.shutdown()
        server.server_close()

    path = tmp_path / "podinfo" / "annotations"
    with DownwardAPIBridge(k8s_plane.kubeconfig, namespace, "standin", path, interval=0.1) as bridge:
        first = path.read_text()
        assert 'serving.deeprec.io/target-version="latest"' in first.splitlines()
        k8s_plane.kubectl("annotate", "pod", "standin", "-n", namespace, "--overwrite",
                          'serving.deeprec.io/target-version=checkpoint_2',
                          'note=say "hi"\nbye')
        bridge.wait_for("serving.deeprec.io/target-version", "checkpoint_2", timeout=10)
        text = path.read_text()
        annotations = k8s_plane.kubectl_json("get", "pod", "standin", "-n", namespace)[
            "metadata"]["annotations"]
        assert text == format_downward_api(annotations)
        assert 'note="say \\"hi\\"\\nbye"' in text.splitlines()
        assert bridge.writes >= 2


# Produced by k8s.io/kubernetes/pkg/fieldpath.FormatMap (v1.34.4; strconv.Quote per value),
# the function the kubelet uses for metadata.annotations Downward API files.
_GOLDEN_INPUT = {
    "serving.deeprec.io/target-version": "checkpoint_2",
    "plain": "a b",
    "quotes": 'say "hi" \\ back',
    "control": "tab\there\nnewline\r\x00nul\x07bell\x1besc\x7fdel",
    "unicode": "héllo 世界 🎉",
    "nonprint": "zero\u200bwidth nbsp\u00a0 ls\u2028 bom\ufeff",
    "json": '{"a": [1, 2], "b": "c"}',
    "empty": "",
    "kubectl.kubernetes.io/last-applied-configuration": '{"apiVersion":"v1"}\n',
}
_GOLDEN_OUTPUT = json.loads(
    r'''"control=\"tab\\there\\nnewline\\r\\x00nul\\abell\\x1besc\\x7fdel\"\nempty=\"\"\njson=\"{\\\"a\\\": [1, 2], \\\"b\\\": \\\"c\\\"}\"\nkubectl.kubernetes.io/last-applied-configuration=\"{\\\"apiVersion\\\":\\\"v1\\\"}\\n\"\nnonprint=\"zero\\u200bwidth nbsp\\u00a0 ls\\u2028 bom\\ufeff\"\nplain=\"a b\"\nquotes=\"say \\\"hi\\\" \\\\ back\"\nserving.deeprec.io/target-version=\"checkpoint_2\"\nunicode=\"héllo 世界 🎉\""'''  # noqa: E501  (golden kubelet output, one line)
)


def test_downward_api_format_matches_kubelet():
    assert format_downward_api(_GOLDEN_INPUT) == _GOLDEN_OUTPUT
    assert format_downward_api({}) == ""


def _plane_pids(plane_dir):
    return {p.stem: int(p.read_text()) for p in (plane_dir / "pids").glob("*.pid")}


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_up_without_cache_fails_clearly(tmp_path):
    env = dict(os.environ, DEEPREC_K8S_CACHE=str(tmp_path / "no-cache"))
    proc = subprocess.run(["bash", PLANE_SCRIPT, "up", tmp_path / "plane"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "k8s-plane.sh build" in proc.stderr, proc.stderr


def test_plane_stops_when_its_owner_dies(k8s_plane, tmp_path):
    """A second plane started with --owner-pid stops itself when the owner is killed, so a killed
    test run leaves no servers behind; `down` is then a no-op."""
    owner = subprocess.Popen(["sleep", "600"])
    plane_dir = tmp_path / "second"
    try:
        proc = subprocess.run(["bash", PLANE_SCRIPT, "up", plane_dir, "--owner-pid", str(owner.pid)],
                              capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, K8S_PLANE_POD_NET="99"))
        assert proc.returncode == 0, proc.stderr
        pids = _plane_pids(plane_dir)
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager",
                             "kube-scheduler", "kwok", "watch"}
        assert all(_alive(p) for p in pids.values())
        assert k8s_plane.components() == {c: True for c in ("etcd", "kube-apiserver",
                                          "kube-controller-manager", "kube-scheduler", "kwok")}
        env = (plane_dir / "env").read_text()
        assert "127.99.1.0/24" in env
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        wait_until(lambda: not any(_alive(p) for p in pids.values()), timeout=60,
                   message=lambda: f"second plane stopped; alive: "
                                   f"{[n for n, p in pids.items() if _alive(p)]}")
    finally:
        if owner.poll() is None:
            owner.kill()
        subprocess.run(["bash", PLANE_SCRIPT, "down", plane_dir], capture_output=True, timeout=120)
