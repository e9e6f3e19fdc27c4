"""spec.security and the operator's refusals on a real control plane.

- A secured model served by real runtime processes standing in for kwok's pods: each runs the
  Deployment's own command line, with the TLS and token files written from the Secrets its pod
  mounts (what the kubelet would do). The status reports the served version through the
  operator's TLS (+ client certificate) + token probe; clients without credentials are refused;
  the pods' exec health check passes against the real runtime; the generated token Secret is
  owned by the model and its value appears nowhere else.
- A LoadBalancer without authentication: Degraded InsecureExposure until the spec says it is
  intended.
- A redisUrl carrying a password: refused by the API server (CEL), without echoing it.
- A ConfigMap of the child's name that the model does not control: Degraded ChildConflict, an
  Event, the ConfigMap untouched; the model proceeds once it is gone.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deeprec_api import predict_pb2
from deeprec_operator import resources as r
from tests.support.operator.pki import CA
from tests.support.operator_e2e import (
    Operator,
    condition,
    fetch,
    pods_of,
    running,
    stop_runtimes,
)
from tests.support.plane import DownwardAPIBridge, standin_args, wait_until, write_pod_volumes

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
SECURED_EXAMPLE = REPO / "examples" / "deeprecmodel-secured.yaml"
INFO = "/deeprec.serving.PredictionService/GetServingModelInfo"
PREDICT = "/deeprec.serving.PredictionService/Predict"


@pytest.fixture
def operator(k8s_plane, namespace, installed, tmp_path, request):
    """The operator told where it 'runs' (the chart's namespace and pod labels), as the chart's
    Deployment tells it, so its NetworkPolicies admit it."""
    release, kubeconfig = installed
    labels = (f"app.kubernetes.io/name=deeprec-serving,app.kubernetes.io/instance={release},"
              "app.kubernetes.io/component=operator")
    op = Operator(k8s_plane, namespace, kubeconfig, tmp_path / "operator.log").start(
        {"DEEPREC_OPERATOR_NAMESPACE": namespace, "DEEPREC_OPERATOR_POD_LABELS": labels})
    yield op
    op.stop()
    report = getattr(request.node, "_e2e_report_call", None)
    if report is not None and report.failed:
        request.node.add_report_section("teardown", "operator log", op.log(200))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _secret(name: str, data: dict[str, bytes], type_: str = "Opaque") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": type_,
            "data": {k: _b64(v) for k, v in data.items()}}


def _model(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "serving.deeprec.io/v1alpha1", "kind": "DeepRecModel", "metadata": {"name": name},
            "spec": {"replicas": 1, "image": "registry.example/deeprec-runtime:e2e",
                     "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                     "storage": {"storeType": "local", "checkpointDir": "/models/ckpt/",
                                 "savedModelDir": "/models/savedmodel/"},
                     **spec}}


def _events(plane, namespace: str, name: str) -> list[dict[str, Any]]:
    return plane.kubectl_json("get", "events", "-n", namespace,
                              "--field-selector", f"involvedObject.name={name}")["items"]


@contextlib.contextmanager
def _standins(plane, namespace: str, pods: list[dict[str, Any]], workdir: Path):
    """One `deeprec-runtime` process per pod, bound to the pod's IP, running the runtime
    container's own arguments with its ConfigMap and Secret volumes written locally and its
    annotations file bridged; yields a function returning their recent logs."""
    bridges, procs, logs = [], [], []
    try:
        for pod in pods:
            pod_name, pod_ip = pod["metadata"]["name"], pod["status"]["podIP"]
            root = workdir / pod_name
            mounts = write_pod_volumes(plane, namespace, pod, r.RUNTIME_CONTAINER, root / "volumes")
            annotations = root / "podinfo" / "annotations"
            bridges.append(DownwardAPIBridge(plane.kubeconfig, namespace, pod_name, annotations).start())
            mounts[r.PODINFO_DIR] = root / "podinfo"
            container = next(c for c in pod["spec"]["containers"] if c["name"] == r.RUNTIME_CONTAINER)
            # Port 8501 may be taken on this machine; the pod IP is the stand-in's own address.
            args = standin_args(container["args"], mounts, {"--http-port": "0", "--host": pod_ip})
            log_path = workdir / f"{pod_name}.log"
            logs.append(log_path)
            with open(log_path, "wb") as log:
                procs.append(subprocess.Popen(
                    [str(Path(sys.executable).parent / container["command"][0]), *args],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        yield lambda: "\n".join(p.read_text(errors="replace")[-1500:] for p in logs)
    finally:
        stop_runtimes(procs, bridges)


def _call(address: str, method: str, *, ca: bytes | None, server_name: str = "", token: str = "",
          client: Any = None, request: bytes = b"") -> tuple[str, bytes]:
    """One unary call as any client would make it; returns (status code name, reply bytes)."""
    options = [("grpc.enable_http_proxy", 0)]
    if ca is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        key, cert = (client.key, client.cert) if client else (None, None)
        creds = grpc.ssl_channel_credentials(ca, key, cert)
        options.append(("grpc.ssl_target_name_override", server_name))
        channel = grpc.secure_channel(address, creds, options=options)
    metadata = [("authorization", f"Bearer {token}")] if token else None
    try:
        with channel:
            return "OK", channel.unary_unary(method)(request, timeout=5, metadata=metadata)
    except grpc.RpcError as e:
        return e.code().name, b""


@pytest.mark.parametrize("mode", ["tls-generated-token", "mutual-tls-token-secret"])
def test_secured_model_is_served_and_probed_over_tls_with_a_token(k8s_plane, namespace, operator, demo_model,
                                                                 tmp_path, mode):
    name, mutual = "secured", mode.startswith("mutual")
    server_name = f"{name}.{namespace}.svc"
    server_ca, client_ca = CA("server-ca"), CA("client-ca")
    server = server_ca.server(server_name, f"{server_name}.cluster.local")
    operator_client, caller = client_ca.client("deeprec-operator"), client_ca.client("ranker")
    tls_files = {"tls.crt": server.cert, "tls.key": server.key, "ca.crt": server_ca.pem}
    secrets = [_secret(f"{name}-tls", tls_files, "kubernetes.io/tls")]
    security: dict[str, Any] = {"tls": {"secretName": f"{name}-tls"},
                                "networkPolicy": {"allowedClients": [{"podSelector": {"matchLabels":
                                                                                      {"app": "ranker"}}}]}}
    if mutual:
        secrets += [_secret("clients-ca", {"ca.crt": client_ca.pem}),
                    _secret(f"{name}-operator", {"tls.crt": operator_client.cert,
                                                 "tls.key": operator_client.key}, "kubernetes.io/tls"),
                    _secret("callers", {"token": b"caller-token-1\ncaller-token-2\n"})]
        security["tls"]["clientAuth"] = {"caSecretName": "clients-ca",
                                         "operatorCertificateSecretName": f"{name}-operator"}
        security["authentication"] = {"bearerToken": {"secretName": "callers"}}
    else:
        security["authentication"] = {"bearerToken": {}}
    model = _model(name, {
        "replicas": 2, "security": security,
        "storage": {"storeType": "local", "checkpointDir": str(demo_model / "checkpoints"),
                    "savedModelDir": str(demo_model / "saved_model")},
        "modelConfig": {"update_poll_seconds": 0.2, "warmup_iterations": 0}})
    k8s_plane.apply([*secrets, model], namespace=namespace)
    pods = wait_until(lambda: (ps := running(pods_of(k8s_plane, namespace, name))) and len(ps) == 2 and ps,
                      timeout=60, message=lambda: f"2 Running pods; operator log:\n{operator.log()}")
    drm = fetch(k8s_plane, "drm", name, namespace)
    uid = drm["metadata"]["uid"]

    # The token: generated into a Secret the model controls, or the user's own.
    token_secret = "callers" if mutual else f"{name}-auth-token"
    secret = fetch(k8s_plane, "secret", token_secret, namespace)
    token = base64.b64decode(secret["data"]["token"]).decode().split()[0]
    if not mutual:
        (owner,) = secret["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("DeepRecModel", name, uid)
        assert owner["controller"] is True
        assert len(token) >= 40 and secret["type"] == "Opaque"
        assert any(e["reason"] == "TokenSecretCreated" for e in _events(k8s_plane, namespace, name))

    # The NetworkPolicy: owned, the pods selected, ingress from the ranker pods and the operator.
    # (This plane has no network plugin, so it is checked as an object, not enforced.)
    policy = fetch(k8s_plane, "networkpolicy", name, namespace)
    assert policy["metadata"]["ownerReferences"][0]["uid"] == uid
    assert policy["spec"]["podSelector"] == {"matchLabels": r.selector_labels(name)}
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"][0] == {"podSelector": {"matchLabels": {"app": "ranker"}}}
    assert rule["from"][1]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    assert rule["from"][1]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"

    with _standins(k8s_plane, namespace, pods, tmp_path) as logs:
        def status_serving():
            s = fetch(k8s_plane, "drm", name, namespace).get("status") or {}
            return (s.get("activeVersion") == "checkpoint_3" and s.get("versions") == [
                {"name": "checkpoint_3", "replicas": 2}] and condition({"status": s}, "Ready").get("status")
                == "True" and s)

        status = wait_until(status_serving, timeout=180, interval=0.5,
                            message=lambda: f"status through the secured probe\n{logs()}\n--- operator ---\n"
                                            f"{operator.log(40)}\n{fetch(k8s_plane, 'drm', name, namespace)}")
        assert condition({"status": status}, "Degraded")["status"] == "False"

        address = f"{pods[0]['status']['podIP']}:{r.GRPC_PORT}"
        client = caller if mutual else None
        code, reply = _call(address, INFO, ca=server_ca.pem, server_name=server_name, token=token,
                            client=client)
        assert code == "OK" and predict_pb2.ServingModelInfo.FromString(reply).version == "checkpoint_3"
        # Without credentials, nothing but health answers.
        for method in (INFO, PREDICT):
            assert _call(address, method, ca=server_ca.pem, server_name=server_name,
                         client=client)[0] == "UNAUTHENTICATED"
            assert _call(address, method, ca=server_ca.pem, server_name=server_name, token="guess",
                         client=client)[0] == "UNAUTHENTICATED"
        assert _call(address, INFO, ca=None, token=token)[0] == "UNAVAILABLE", "plaintext reached a TLS port"
        if mutual:  # no client certificate, or one of another CA: no connection at all
            stranger = CA("stranger-ca").client("stranger")
            for who in (None, stranger):
                assert _call(address, INFO, ca=server_ca.pem, server_name=server_name, token=token,
                             client=who)[0] == "UNAVAILABLE"

        # The kubelet's probes, run as the kubelet would run them against this pod: plaintext
        # gRPC health on the health port, while the serving port refuses plaintext.
        container = next(c for c in pods[0]["spec"]["containers"] if c["name"] == r.RUNTIME_CONTAINER)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == r.HEALTH_PORT, probe
        pod_ip = address.rsplit(":", 1)[0]
        with grpc.insecure_channel(f"{pod_ip}:{r.HEALTH_PORT}",
                                   options=[("grpc.enable_http_proxy", 0)]) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING

    # The token's value is in its Secret and nowhere else.
    places = {
        "operator log": operator.log_path.read_text(errors="replace"),
        "configmaps": k8s_plane.kubectl("get", "configmaps", "-n", namespace, "-o", "json").stdout,
        "deeprecmodels": k8s_plane.kubectl("get", "drm", "-n", namespace, "-o", "json").stdout,
        "events": k8s_plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout,
        "deployments": k8s_plane.kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout,
        "pods": k8s_plane.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout,
    }
    for where, text in places.items():
        assert token not in text, f"the token leaked into the {where}"
        assert server.key.decode().splitlines()[1] not in text, f"the TLS key leaked into the {where}"


def test_load_balancer_without_authentication_is_refused_until_intended(k8s_plane, namespace, operator):
    k8s_plane.apply(_model("exposed", {"service": {"type": "LoadBalancer"}}), namespace=namespace)
    cond = wait_until(
        lambda: (c := condition(fetch(k8s_plane, "drm", "exposed", namespace), "Degraded")).get("reason")
        == "InsecureExposure" and c,
        timeout=30, message=lambda: f"Degraded/InsecureExposure; log:\n{operator.log()}")
    assert cond["status"] == "True"
    for field in ("spec.service.type", "spec.security.authentication.bearerToken",
                  "spec.security.allowUnauthenticatedExposure"):
        assert field in cond["message"]
    wait_until(lambda: any(e["reason"] == "InsecureExposure" and e["type"] == "Warning"
                           for e in _events(k8s_plane, namespace, "exposed")),
               timeout=10, message="an InsecureExposure warning Event")
    for kind in ("service", "deployment"):
        assert k8s_plane.kubectl("get", kind, "exposed", "-n", namespace, check=False).returncode != 0

    k8s_plane.kubectl("patch", "drm", "exposed", "-n", namespace, "--type", "merge",
                      "-p", '{"spec":{"security":{"allowUnauthenticatedExposure":true}}}')
    svc = wait_until(lambda: _get_or_none(k8s_plane, "service", "exposed", namespace), timeout=30,
                     message=lambda: f"the Service once the exposure is intended; log:\n{operator.log()}")
    assert svc["spec"]["type"] == "LoadBalancer"
    wait_until(lambda: condition(fetch(k8s_plane, "drm", "exposed", namespace), "Degraded").get("status")
               == "False", timeout=20, message="Degraded cleared")


@pytest.mark.parametrize("where", ["featureStore.redisUrl", "modelConfig.redis_url"])
@pytest.mark.parametrize("url", ["redis://:pw-6d1f0b@redis.example:6379",
                                 "default:pw-6d1f0b@redis.example:6379",
                                 "redis://redis.example:6379/0?password=pw-6d1f0b"])
def test_redis_url_with_a_password_is_refused_by_the_api_server(k8s_plane, namespace, installed,
                                                               where, url):
    section, key = where.split(".")
    spec: dict[str, Any] = {"modelConfig": {"feature_store_type": "redis"},
                            "featureStore": {"passwordSecretRef": {"name": "redis"}}}
    spec[section][key] = url
    doc = yaml.safe_dump(_model("leaky", spec))
    proc = k8s_plane.kubectl("apply", "-n", namespace, "-f", "-", input=doc, check=False)
    assert proc.returncode != 0, proc.stdout
    assert f"spec.{where}" in proc.stderr and "must not carry credentials" in proc.stderr, proc.stderr
    assert "pw-6d1f0b" not in proc.stderr + proc.stdout
    assert k8s_plane.kubectl("get", "drm", "leaky", "-n", namespace, check=False).returncode != 0
    # The same address without the password is accepted (server-side dry run: nothing stored).
    spec[section][key] = "redis://redis.example:6379/0"
    k8s_plane.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                      input=yaml.safe_dump(_model("leaky", spec)))


def test_unowned_configmap_of_the_childs_name_is_left_untouched(k8s_plane, namespace, operator):
    theirs = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": r.config_map_name("taken"), "labels": {"owner": "someone-else"}},
              "data": {"model_config.json": '{"not": "yours"}'}}
    k8s_plane.apply(theirs, namespace=namespace)
    before = fetch(k8s_plane, "configmap", r.config_map_name("taken"), namespace)
    k8s_plane.apply(_model("taken", {}), namespace=namespace)
    cond = wait_until(
        lambda: (c := condition(fetch(k8s_plane, "drm", "taken", namespace), "Degraded")).get("reason")
        == "ChildConflict" and c,
        timeout=30, message=lambda: f"Degraded/ChildConflict; log:\n{operator.log()}")
    assert f"ConfigMap {r.config_map_name('taken')}" in cond["message"]
    wait_until(lambda: any(e["reason"] == "ChildConflict" and e["type"] == "Warning"
                           and r.config_map_name("taken") in e["message"]
                           for e in _events(k8s_plane, namespace, "taken")),
               timeout=10, message="a ChildConflict warning Event naming the ConfigMap")
    after = fetch(k8s_plane, "configmap", r.config_map_name("taken"), namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["data"] == theirs["data"] and "ownerReferences" not in after["metadata"]
    assert all(f["manager"] != "deeprec-operator" for f in after["metadata"].get("managedFields") or [])
    assert k8s_plane.kubectl("get", "deployment", "taken", "-n", namespace, check=False).returncode != 0

    # Once the name is free, the model goes ahead (the conflict is retried, not final).
    k8s_plane.kubectl("delete", "configmap", r.config_map_name("taken"), "-n", namespace)
    wait_until(lambda: _get_or_none(k8s_plane, "deployment", "taken", namespace), timeout=40, interval=0.5,
               message=lambda: f"the Deployment after the conflict cleared; log:\n{operator.log()}")
    cm = fetch(k8s_plane, "configmap", r.config_map_name("taken"), namespace)
    assert cm["metadata"]["ownerReferences"][0]["name"] == "taken"


def test_secured_example_is_accepted_by_the_api_server(k8s_plane, namespace, installed):
    out = k8s_plane.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(SECURED_EXAMPLE),
                            "-o", "json").stdout
    kinds = [item["kind"] for item in json.loads(out)["items"]]
    assert kinds == ["Secret", "DeepRecModel"]


def _get_or_none(plane, kind, name, ns):
    result = plane.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None
