"""spec.security read into a typed spec and turned into pod volumes, runtime flags, probes, the
token Secret and the NetworkPolicy (pure: no API), plus the checks made before anything is
written: exposure without authentication, credentials in a Redis URL, children held by others."""

from __future__ import annotations

import json

import pytest

from deeprec_operator import resources as r
from deeprec_operator.spec import SecretKeyRef, SpecError, parse

TLS = {"secretName": "wd-tls"}
MTLS = {"secretName": "wd-tls",
        "clientAuth": {"caSecretName": "clients-ca", "operatorCertificateSecretName": "wd-operator"}}


def _model(spec, name="wd"):
    return parse(name, "ns", spec)


def _error(spec) -> SpecError:
    with pytest.raises(SpecError) as info:
        _model(spec)
    return info.value


def _runtime(model):
    pod = r.deployment(model)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == r.RUNTIME_CONTAINER), pod


def _flag(args, name):
    return args[args.index(name) + 1]


# --- parsing -------------------------------------------------------------------------------------

def test_tls_follows_kubernetes_io_tls_and_cert_manager_keys(spec):
    spec["security"] = {"tls": TLS}
    tls = _model(spec).security.tls
    assert (tls.certificate, tls.private_key, tls.ca) == (
        SecretKeyRef("wd-tls", "tls.crt"), SecretKeyRef("wd-tls", "tls.key"),
        SecretKeyRef("wd-tls", "ca.crt"))
    # Pods are dialled by IP: the name checked is the Service's, which a certificate can carry.
    assert tls.server_name == "wd.ns.svc"
    assert tls.client_auth is None


def test_tls_keys_ca_and_server_name_can_be_overridden(spec):
    spec["security"] = {"tls": {"secretName": "s", "certificateKey": "cert.pem", "privateKeyKey": "key.pem",
                                "caSecretName": "trust", "caKey": "bundle.pem",
                                "serverName": "ranker.example.internal"}}
    tls = _model(spec).security.tls
    assert tls.certificate == SecretKeyRef("s", "cert.pem")
    assert tls.private_key == SecretKeyRef("s", "key.pem")
    assert tls.ca == SecretKeyRef("trust", "bundle.pem")
    assert tls.server_name == "ranker.example.internal"


def test_mutual_tls_names_the_client_ca_and_the_operators_certificate(spec):
    spec["security"] = {"tls": MTLS}
    auth = _model(spec).security.tls.client_auth
    assert auth.ca == SecretKeyRef("clients-ca", "ca.crt")
    assert (auth.operator_certificate, auth.operator_key) == (
        SecretKeyRef("wd-operator", "tls.crt"), SecretKeyRef("wd-operator", "tls.key"))
    spec["security"] = {"tls": {"secretName": "wd-tls", "clientAuth": {"caSecretName": "clients-ca"}}}
    err = _error(spec)
    assert err.field == "spec.security.tls.clientAuth" and "operatorCertificateSecretName" in err.message


def test_bearer_token_from_a_secret_or_generated(spec):
    spec["security"] = {"authentication": {"bearerToken": {"secretName": "callers", "key": "tokens"}}}
    token = _model(spec).security.token
    assert token.secret == SecretKeyRef("callers", "tokens") and not token.generated
    spec["security"] = {"authentication": {"bearerToken": {}}}
    token = _model(spec).security.token
    assert token.secret == SecretKeyRef("wd-auth-token", "token") and token.generated


def test_every_user_secret_is_checked_but_not_the_generated_one(spec):
    spec["security"] = {"tls": MTLS, "authentication": {"bearerToken": {}}}
    refs = {(ref.name, ref.key) for ref in _model(spec).secret_refs}
    assert refs == {("wd-tls", "tls.crt"), ("wd-tls", "tls.key"), ("wd-tls", "ca.crt"),
                    ("clients-ca", "ca.crt"), ("wd-operator", "tls.crt"), ("wd-operator", "tls.key")}
    spec["security"] = {"authentication": {"bearerToken": {"secretName": "callers"}}}
    assert [(ref.name, ref.key) for ref in _model(spec).secret_refs] == [("callers", "token")]


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort"])
def test_exposed_service_without_authentication_is_insecure_exposure(spec, service_type):
    spec["service"] = {"type": service_type}
    err = _error(spec)
    assert (err.reason, err.field) == ("InsecureExposure", "spec.service.type")
    for field in ("spec.security.authentication.bearerToken", "spec.security.tls.clientAuth",
                  "spec.security.allowUnauthenticatedExposure"):
        assert field in err.message
    # TLS alone encrypts but does not say who calls.
    spec["security"] = {"tls": TLS}
    assert _error(spec).reason == "InsecureExposure"


@pytest.mark.parametrize("security", [
    {"authentication": {"bearerToken": {}}},
    {"tls": MTLS},
    {"allowUnauthenticatedExposure": True},
])
def test_exposure_with_authentication_or_said_to_be_intended_is_accepted(spec, security):
    spec["service"] = {"type": "LoadBalancer"}
    spec["security"] = security
    assert r.service(_model(spec))["spec"]["type"] == "LoadBalancer"


def test_cluster_ip_needs_no_authentication(spec):
    spec["service"] = {"type": "ClusterIP"}
    assert _model(spec).security.authenticates_clients is False


@pytest.mark.parametrize("url", [
    "redis://:s3cr3t-pw@redis.example:6379",
    "redis://default:s3cr3t-pw@redis.example:6379/0",
    "rediss://user@redis.example:6380",
    "default:s3cr3t-pw@redis.example:6379",
    "redis://redis.example:6379?password=s3cr3t-pw",
    "redis://redis.example:6379/0?db=1&PASSWORD=s3cr3t-pw",
])
@pytest.mark.parametrize("where", ["featureStore", "modelConfig"])
def test_redis_url_with_credentials_is_refused_without_echoing_them(spec, url, where):
    spec["modelConfig"]["feature_store_type"] = "redis"
    spec["featureStore"] = {"passwordSecretRef": {"name": "redis"}}
    if where == "featureStore":
        spec["featureStore"]["redisUrl"] = url
    else:
        spec["modelConfig"]["redis_url"] = url
    err = _error(spec)
    assert err.reason == "SecretInSpec"
    fields = {"featureStore": "spec.featureStore.redisUrl", "modelConfig": "spec.modelConfig.redis_url"}
    assert err.field == fields[where]
    assert "s3cr3t-pw" not in err.message and "passwordSecretRef" in err.message


@pytest.mark.parametrize("url", ["redis://redis.example:6379/0", "redis.example:6379", "unix:///run/redis@1.sock"])
def test_redis_url_without_credentials_is_accepted(spec, url):
    spec["modelConfig"]["feature_store_type"] = "redis"
    spec["featureStore"] = {"redisUrl": url, "passwordSecretRef": {"name": "redis"}}
    assert json.loads(r.render_config(_model(spec)))["redis_url"] == url


def test_conflicting_redis_urls_are_reported_masked(spec):
    spec["featureStore"] = {"redisUrl": "redis://a:6379"}
    spec["modelConfig"]["redis_url"] = "redis://b:6379?db=0&password=s3cr3t-pw"
    err = _error(spec)
    assert err.reason == "SecretInSpec" and "s3cr3t-pw" not in err.message


def test_network_policy_peer_needs_a_selector(spec):
    spec["security"] = {"networkPolicy": {"allowedClients": [{"podSelector": {}}, {}]}}
    err = _error(spec)
    assert err.field == "spec.security.networkPolicy.allowedClients[1]"


# --- the pod ---------------------------------------------------------------------------------------

def test_plaintext_model_is_unchanged(spec):
    container, pod = _runtime(_model(spec))
    assert not [a for a in container["args"] if a.startswith(("--tls", "--auth"))]
    assert container["readinessProbe"]["grpc"] == {"port": 8500}
    assert not [v for v in pod["volumes"] if v["name"].startswith("deeprec-")]


def test_tls_files_are_mounted_from_the_secrets_and_passed_as_flags(spec):
    spec["security"] = {"tls": {**MTLS, "certificateKey": "cert.pem", "caSecretName": "trust"}}
    container, pod = _runtime(_model(spec))
    args = container["args"]
    assert _flag(args, "--tls-cert") == "/etc/deeprec-tls/tls.crt"
    assert _flag(args, "--tls-key") == "/etc/deeprec-tls/tls.key"
    assert _flag(args, "--tls-client-ca") == "/etc/deeprec-tls/client-ca.crt"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "deeprec-tls")
    assert mount == {"name": "deeprec-tls", "mountPath": "/etc/deeprec-tls", "readOnly": True}
    assert "subPath" not in mount, "subPath mounts never see a rotated Secret"
    volume = next(v for v in pod["volumes"] if v["name"] == "deeprec-tls")
    sources = [(s["secret"]["name"], s["secret"]["items"]) for s in volume["projected"]["sources"]]
    assert sources == [
        ("wd-tls", [{"key": "cert.pem", "path": "tls.crt"}]),
        ("wd-tls", [{"key": "tls.key", "path": "tls.key"}]),
        ("trust", [{"key": "ca.crt", "path": "ca.crt"}]),
        ("clients-ca", [{"key": "ca.crt", "path": "client-ca.crt"}]),
    ]
    # Credentials reach the runtime as files only, never as values in the pod spec.
    assert "env" not in container


def test_token_file_is_mounted_and_passed(spec):
    spec["security"] = {"authentication": {"bearerToken": {"secretName": "callers", "key": "tokens"}}}
    container, pod = _runtime(_model(spec))
    assert _flag(container["args"], "--auth-token-file") == "/etc/deeprec-auth/tokens"
    volume = next(v for v in pod["volumes"] if v["name"] == "deeprec-auth")
    assert volume["secret"] == {"secretName": "callers", "items": [{"key": "tokens", "path": "tokens"}]}
    mount = {"name": "deeprec-auth", "mountPath": "/etc/deeprec-auth", "readOnly": True}
    assert mount in container["volumeMounts"]
    # The health check stays open for the kubelet (the runtime's default): still the gRPC probe.
    assert container["readinessProbe"]["grpc"] == {"port": 8500}


@pytest.mark.parametrize("tls", [TLS, MTLS], ids=["tls", "mutual-tls"])
def test_tls_models_are_probed_on_the_plaintext_health_port(spec, tls):
    """The kubelet's gRPC probe speaks plaintext only: TLS runtimes answer it on --health-port,
    which the container declares and the Service does not expose."""
    spec["security"] = {"tls": tls}
    model = _model(spec)
    container, _ = _runtime(model)
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[name]["grpc"] == {"port": r.HEALTH_PORT}, name
    args = container["args"]
    assert args[args.index("--health-port") + 1] == str(r.HEALTH_PORT)
    assert {"name": "health", "containerPort": r.HEALTH_PORT, "protocol": "TCP"} in container["ports"]
    service_ports = {p["targetPort"] for p in r.service(model)["spec"]["ports"]}
    assert r.HEALTH_PORT not in service_ports


def test_user_pod_template_keeps_its_volumes_beside_the_secret_volumes(spec):
    spec["security"] = {"tls": TLS, "authentication": {"bearerToken": {}}}
    spec["podTemplate"] = {"spec": {"containers": [{"name": "ranker", "image": "ranker:1"}],
                                    "volumes": [{"name": "cache", "emptyDir": {}}]}}
    _, pod = _runtime(_model(spec))
    assert {"cache", "deeprec-tls", "deeprec-auth"} <= {v["name"] for v in pod["volumes"]}
    spec["podTemplate"]["spec"]["volumes"].append({"name": "deeprec-tls", "emptyDir": {}})
    with pytest.raises(r.TemplateError, match="deeprec-tls"):
        r.deployment(_model(spec))


# --- children ----------------------------------------------------------------------------------

def test_generated_token_secret(spec):
    spec["security"] = {"authentication": {"bearerToken": {"key": "bearer"}}}
    secret = r.token_secret(_model(spec), "tok-123")
    assert secret["metadata"]["name"] == "wd-auth-token" and secret["metadata"]["namespace"] == "ns"
    assert secret["type"] == "Opaque"
    assert secret["stringData"] == {"bearer": "tok-123\n"}
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "deeprec-operator"


def test_network_policy_admits_the_allowed_clients_and_the_operator(spec):
    clients = [{"podSelector": {"matchLabels": {"app": "ranker"}}},
               {"namespaceSelector": {"matchLabels": {"team": "ads"}},
                "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]}}]
    spec["security"] = {"networkPolicy": {"allowedClients": clients}}
    operator = r.operator_peer("deeprec-system", {"app.kubernetes.io/name": "deeprec-serving"})
    model = _model(spec)
    policy = r.network_policy(model, operator)
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["metadata"]["name"] == "wd"
    assert policy["spec"]["podSelector"] == {"matchLabels": r.selector_labels("wd")}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [*clients, {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "deeprec-system"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "deeprec-serving"}}}]
    assert rule["ports"] == [{"port": 8500, "protocol": "TCP"}, {"port": 8501, "protocol": "TCP"}]
    kinds = [c["kind"] for c in r.children(model, operator)]
    assert kinds == ["ConfigMap", "NetworkPolicy", "Deployment", "Service"], "the policy precedes the pods"


def test_network_policy_without_any_peer_admits_nobody(spec):
    spec["security"] = {"networkPolicy": {}}
    policy = r.network_policy(_model(spec), None)
    # An empty `from` would mean "everyone"; no rule at all means nobody.
    assert policy["spec"]["ingress"] == []


def test_network_policy_can_be_disabled(spec):
    spec["security"] = {"networkPolicy": {"enabled": False, "allowedClients": [{"podSelector": {}}]}}
    assert r.network_policy(_model(spec)) is None
    assert [c["kind"] for c in r.children(_model(spec))] == ["ConfigMap", "Deployment", "Service"]


def test_operator_peer_needs_namespace_and_labels():
    assert r.operator_peer("", {"a": "b"}) is None and r.operator_peer("ns", {}) is None


def test_controller_uid_and_conflict_message():
    ours = {"metadata": {"ownerReferences": [
        {"kind": "Other", "name": "x", "uid": "u0"},
        {"kind": "DeepRecModel", "name": "wd", "uid": "u1", "controller": True}]}}
    assert r.controller_uid(ours) == "u1"
    assert r.controller_uid({"metadata": {}}) is None
    assert r.controller_uid({"metadata": {"ownerReferences": [{"uid": "u0"}]}}) is None
    message = r.conflict_message("ConfigMap", "wd-config", {"metadata": {}})
    assert message.startswith("ConfigMap wd-config already exists")
    assert "not controlled by any owner" in message
    held = r.conflict_message("Service", "wd", {"metadata": {"ownerReferences": [
        {"kind": "HelmRelease", "name": "shop", "uid": "u9", "controller": True}]}})
    assert "controlled by HelmRelease shop (uid u9)" in held
