"""TLS, mutual TLS and authentication on the gRPC port, and the HTTP helpers, with certificates
made at test time (cryptography) and real gRPC over loopback."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
import os
import socket
import ssl
import threading
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deeprec_runtime import security as sec
from deeprec_runtime.app import Runtime
from deeprec_runtime.config import parse_model_config
from deeprec_runtime.errors import Unauthenticated
from deeprec_runtime.security import Security, SecurityConfig, SecurityConfigError
from tests.support.runtime import Client, output, wait_for

TOKEN = "s3cr3t-token-value"


# --- certificates ---------------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer_name, issuer_key, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files."""
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, _name("test-ca"), ca_key, ca=True)
    files = {}
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"test-{role}", key, ca.subject, ca_key, server=role == "server")
        (d / f"{role}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{role}.key").write_bytes(_pem_key(key))
        files[role] = (str(d / f"{role}.crt"), str(d / f"{role}.key"))
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["ca"] = str(d / "ca.crt")
    return SimpleNamespace(**files, dir=d)


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


# --- a runtime with security ----------------------------------------------------------------------
@pytest.fixture
def secure_serve(seed_model, tmp_path):
    _, _, base = seed_model
    started = []

    def start(config: SecurityConfig, grpc_server: str = "python", **kwargs) -> Runtime:
        raw = {"savedmodel_dir": str(base / "saved_model"), "checkpoint_dir": str(base / "checkpoints"),
               "warmup_iterations": 1, "update_poll_seconds": 0.2}
        runtime = Runtime(parse_model_config(raw), grpc_port=0, host="127.0.0.1",
                          annotations_file=str(tmp_path / "none"), security=Security(config),
                          grpc_server=grpc_server, **kwargs)
        runtime.start()
        started.append(runtime)
        assert runtime.manager.wait_ready(60), runtime.manager.last_error
        return runtime

    yield start
    for runtime in started:
        runtime.stop(0.5)


FEED = {"input1": np.array([0.5, 1.5]), "input2": np.array([3, 4], np.int32)}


def _tls_channel(pki, port: int, client_cert: bool = False) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(pki.ca),
        private_key=_read(pki.client[1]) if client_cert else None,
        certificate_chain=_read(pki.client[0]) if client_cert else None)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


@pytest.mark.parametrize("grpc_server", ["python", "native"])
def test_tls_serves_verified_clients_and_refuses_plaintext(pki, secure_serve, grpc_server):
    runtime = secure_serve(SecurityConfig(tls_cert=pki.server[0], tls_key=pki.server[1]),
                           grpc_server)
    with _tls_channel(pki, runtime.grpc_port) as channel:
        response = Client(channel).predict(FEED)
        assert output(response, "probabilities").shape == (2,)
    with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as plain:
        assert _code(lambda: Client(plain).predict(FEED, timeout=3)) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("grpc_server", ["python", "native"])
def test_plaintext_health_port_answers_probes_of_a_mutual_tls_server(pki, secure_serve, grpc_server):
    """The kubelet's gRPC probe speaks plaintext only: the health port answers it for a server
    that requires mutual TLS, with the serving port's status, and carries nothing else."""
    runtime = secure_serve(SecurityConfig(tls_cert=pki.server[0], tls_key=pki.server[1],
                                          tls_client_ca=pki.ca), grpc_server, health_port=0)
    assert runtime.health is not None and runtime.health.port not in (0, runtime.grpc_port)
    with grpc.insecure_channel(f"127.0.0.1:{runtime.health.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status ==
                 health_pb2.HealthCheckResponse.SERVING, message="SERVING on the health port")
        service = health.Check(health_pb2.HealthCheckRequest(
            service="deeprec.serving.PredictionService"), timeout=5)
        assert service.status == health_pb2.HealthCheckResponse.SERVING
        assert _code(lambda: Client(channel).predict(FEED, timeout=3)) == grpc.StatusCode.UNIMPLEMENTED
        runtime.health.set_serving(False)  # what stop() does first, before draining
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("grpc_server", ["python", "native"])
def test_rotated_certificate_is_used_for_new_connections_without_restart(pki, tmp_path,
                                                                          secure_serve, grpc_server):
    # The Secret's files are replaced (as the kubelet does) by a certificate from another CA.
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(_read(pki.server[0]))
    key.write_bytes(_read(pki.server[1]))
    runtime = secure_serve(SecurityConfig(tls_cert=str(cert), tls_key=str(key)), grpc_server)
    with _tls_channel(pki, runtime.grpc_port) as channel:
        assert output(Client(channel).predict(FEED), "probabilities").shape == (2,)
    new_ca_key = ec.generate_private_key(ec.SECP256R1())
    new_ca = _cert("rotated-ca", new_ca_key, _name("rotated-ca"), new_ca_key, ca=True)
    new_key = ec.generate_private_key(ec.SECP256R1())
    new_cert = _cert("rotated-server", new_key, new_ca.subject, new_ca_key, server=True)
    (tmp_path / "next.key").write_bytes(_pem_key(new_key))
    (tmp_path / "next.crt").write_bytes(new_cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_path / "next.key", key)
    os.replace(tmp_path / "next.crt", cert)
    trusted = grpc.ssl_channel_credentials(new_ca.public_bytes(serialization.Encoding.PEM))

    def rotated_accepted() -> bool:
        with grpc.secure_channel(f"127.0.0.1:{runtime.grpc_port}", trusted) as channel:
            try:
                Client(channel).predict(FEED, timeout=3)
                return True
            except grpc.RpcError:
                return False

    wait_for(rotated_accepted, timeout=30, interval=0.5, message="the rotated certificate served")
    with _tls_channel(pki, runtime.grpc_port) as old:  # the old CA no longer verifies the server
        assert _code(lambda: Client(old).predict(FEED, timeout=3)) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("grpc_server", ["python", "native"])
def test_mutual_tls_requires_a_client_certificate_signed_by_the_ca(pki, secure_serve, grpc_server):
    runtime = secure_serve(SecurityConfig(tls_cert=pki.server[0], tls_key=pki.server[1],
                                          tls_client_ca=pki.ca), grpc_server)
    with _tls_channel(pki, runtime.grpc_port, client_cert=False) as anonymous:
        assert _code(lambda: Client(anonymous).predict(FEED, timeout=3)) == grpc.StatusCode.UNAVAILABLE
    with _tls_channel(pki, runtime.grpc_port, client_cert=True) as channel:
        assert output(Client(channel).predict(FEED), "probabilities").shape == (2,)


@pytest.mark.parametrize("grpc_server", ["python", "native"])
def test_bearer_token_guards_every_service_but_health(tmp_path, secure_serve, caplog, grpc_server):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# rotated weekly\n{TOKEN}\n")
    runtime = secure_serve(SecurityConfig(auth_token_file=str(tokens)), grpc_server)
    channel = grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    client = Client(channel)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(grpc.RpcError) as err:
        client.predict(FEED)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        client._predict(pb_request(), metadata=[("authorization", "Bearer wrong-" + TOKEN)], timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in err.value.details() and TOKEN not in caplog.text
    # every service on the port, including one registered by another adapter and raw-bytes calls
    info = channel.unary_unary("/deeprec.serving.PredictionService/GetServingModelInfo")
    assert _code(lambda: info(b"", timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: client.raw_predict(b"\xff\xff garbage", timeout=5)) == \
        grpc.StatusCode.UNAUTHENTICATED  # refused before the request is even parsed
    ok = client._predict(pb_request(), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10)
    assert output(ok, "probabilities").shape == (2,)
    # health stays open: kubelet gRPC probes carry no credentials
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_native_front_end_verifies_credentials_and_answers_them_in_cpp(tmp_path, secure_serve,
                                                                      monkeypatch):
    """With authentication on, the native front end still answers Predict in C++, but only for
    calls whose credentials it has verified (bearer or Basic, scheme in any case); everything
    else goes to Python, which refuses it. A rotated token file reaches the C++ side too: the
    old token stops working on both paths."""
    from tests.support.runtime import plan_of

    monkeypatch.setattr(sec, "RELOAD_SECONDS", 0.1)
    tokens, users = tmp_path / "tokens", tmp_path / "users"
    tokens.write_text(f"{TOKEN}\n")
    users.write_text("alice:pa55word\n")
    runtime = secure_serve(SecurityConfig(auth_token_file=str(tokens), basic_auth_file=str(users)),
                           "native")
    plan = plan_of(runtime)
    assert plan is not None, "authentication must not turn the C++ path off"
    checked = plan.answered  # the plan's own check request at load
    basic = "Basic " + base64.b64encode(b"alice:pa55word").decode()
    with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        client = Client(channel)

        def call(authorization):
            metadata = [("authorization", authorization)] if authorization else None
            return client._predict(pb_request(), metadata=metadata, timeout=10)

        for refused in (None, f"Bearer wrong-{TOKEN}", f"Bearer {TOKEN[:-1]}", f"Token {TOKEN}",
                        "Basic " + base64.b64encode(b"alice:wrong").decode(), "Bearer "):
            assert _code(lambda refused=refused: call(refused)) == grpc.StatusCode.UNAUTHENTICATED
        assert plan.answered == checked, "a call without valid credentials was answered in C++"
        for accepted in (f"Bearer {TOKEN}", f"bearer   {TOKEN} ", basic):
            assert output(call(accepted), "probabilities").shape == (2,)
        assert plan.answered == checked + 3

        tokens.write_text("rotated-token-value\n")  # the kubelet updates the Secret's file
        wait_for(lambda: _code_or_ok(lambda: call(f"Bearer {TOKEN}")) == grpc.StatusCode.UNAUTHENTICATED,
                 timeout=10, message="the old token refused")
        before = plan.answered
        assert output(call("Bearer rotated-token-value"), "probabilities").shape == (2,)
        wait_for(lambda: (call("Bearer rotated-token-value"), plan.answered > before)[1],
                 timeout=10, message="the rotated token answered in C++")


def _code_or_ok(call) -> grpc.StatusCode:
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def test_health_can_be_protected_and_tokens_rotate_without_restart(tmp_path, secure_serve,
                                                                    monkeypatch):
    monkeypatch.setattr(sec, "RELOAD_SECONDS", 0.0)
    tokens = tmp_path / "tokens"
    tokens.write_text("old-token\n")
    runtime = secure_serve(SecurityConfig(auth_token_file=str(tokens), protect_health=True))
    with grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        def check(token):
            return health.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5,
                metadata=[("authorization", f"Bearer {token}")] if token else None)
        assert _code(lambda: check(None)) == grpc.StatusCode.UNAUTHENTICATED
        assert check("old-token").status == health_pb2.HealthCheckResponse.SERVING
        tokens.write_text("new-token-longer\n")  # a Secret update (size differs: mtime may not)
        assert _code(lambda: check("old-token")) == grpc.StatusCode.UNAUTHENTICATED
        assert check("new-token-longer").status == health_pb2.HealthCheckResponse.SERVING


def pb_request():
    from tests.support.runtime import make_request

    return make_request(FEED)


# --- HTTP helpers and configuration -----------------------------------------------------------------
def test_check_http_auth_bearer_basic_and_open_paths(tmp_path):
    users = tmp_path / "users"
    users.write_text("alice:correct horse\n")
    security = Security(SecurityConfig(auth_token=TOKEN, basic_auth_file=str(users)))
    basic = "Basic " + base64.b64encode(b"alice:correct horse").decode()
    security.check_http_auth("/v1/models/m:predict", {"Authorization": f"Bearer {TOKEN}"})
    security.check_http_auth("/v1/models/m:predict", {"authorization": basic})
    for headers in ({}, {"Authorization": "Bearer nope"},
                    {"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()},
                    {"Authorization": "Basic !!!notbase64"}, {"Authorization": "Digest x"}):
        with pytest.raises(Unauthenticated) as err:
            security.check_http_auth("/v1/models/m:predict", headers)
        assert err.value.http_status == 401 and "correct horse" not in str(err.value)
    for path in ("/metrics", "/healthz", "/readyz?verbose=1"):
        security.check_http_auth(path, {})
    assert security.www_authenticate() == 'Bearer realm="deeprec-serving", Basic realm="deeprec-serving"'
    closed = Security(SecurityConfig(auth_token=TOKEN, protect_metrics=True, protect_health=True))
    for path in ("/metrics", "/healthz"):
        with pytest.raises(Unauthenticated):
            closed.check_http_auth(path, {})
    sec.check_http_auth(None, "/anything", {})  # no Security: open server


def test_http_ssl_context_completes_a_mutual_tls_handshake(pki):
    context = Security(SecurityConfig(tls_cert=pki.server[0], tls_key=pki.server[1],
                                      tls_client_ca=pki.ca)).http_ssl_context()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received = []

    def serve_one():
        conn, _ = listener.accept()
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                received.append(tls.getpeercert()["subject"])
                tls.sendall(b"ok")
        except ssl.SSLError as exc:
            received.append(exc)

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=pki.ca)
    client_ctx.load_cert_chain(*pki.client)
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.recv(2) == b"ok"
    thread.join(5)
    listener.close()
    assert received and "test-client" in str(received[0])


def test_settings_come_from_flags_or_environment_never_the_token_from_flags(tmp_path, pki):
    env = {"DEEPREC_AUTH_TOKEN": f" {TOKEN}\n", "DEEPREC_TLS_CERT": pki.server[0],
           "DEEPREC_TLS_KEY": pki.server[1]}
    cfg = sec.security_config_from(SimpleNamespace(tls_cert=None, tls_key=None), env)
    assert cfg.auth_token == TOKEN and cfg.tls_cert == pki.server[0] and cfg.auth_enabled
    assert TOKEN not in repr(cfg)
    flagged = sec.security_config_from(SimpleNamespace(tls_cert="/from/flag"), env)
    assert flagged.tls_cert == "/from/flag"


@pytest.mark.parametrize("fields, flag", [
    ({"tls_cert": "CERT"}, "--tls-cert/--tls-key"),
    ({"tls_client_ca": "CA"}, "--tls-client-ca"),
    ({"auth_token_file": "/no/such/file"}, "--auth-token-file"),
    ({"tls_cert": "CERT", "tls_key": "NOTAKEY"}, "--tls-cert/--tls-key/--tls-client-ca"),
    ({"basic_auth_file": "BADUSERS"}, "--basic-auth-file"),
])
def test_unusable_settings_fail_at_start_up_naming_the_flag(tmp_path, pki, fields, flag):
    (tmp_path / "notakey").write_text("not a key")
    (tmp_path / "users").write_text("no-colon-here\n")
    subst = {"CERT": pki.server[0], "CA": pki.ca, "NOTAKEY": str(tmp_path / "notakey"),
             "BADUSERS": str(tmp_path / "users")}
    with pytest.raises(SecurityConfigError) as err:
        Security(SecurityConfig(**{k: subst.get(v, v) for k, v in fields.items()}))
    assert err.value.flag == flag


# --- REST ---------------------------------------------------------------------------------------
def _https(pki, port: int, path: str, body: bytes | None = None, token: str | None = None):
    import http.client
    import ssl

    context = ssl.create_default_context(cafile=pki.ca)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request("POST" if body is not None else "GET", path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_rest_over_tls_requires_the_token_except_on_health_and_metrics(tmp_path, pki, seed_model):
    import json
    import socket

    _, _, base = seed_model
    tokens = tmp_path / "tokens"
    tokens.write_text("rest-token-1\n")
    raw = {"savedmodel_dir": str(base / "saved_model"), "checkpoint_dir": str(base / "checkpoints"),
           "warmup_iterations": 1}
    config = SecurityConfig(tls_cert=pki.server[0], tls_key=pki.server[1],
                            auth_token_file=str(tokens))
    runtime = Runtime(parse_model_config(raw), grpc_port=0, http_port=0, host="127.0.0.1",
                      annotations_file=str(tmp_path / "none"), security=Security(config))
    runtime.start()
    try:
        assert runtime.manager.wait_ready(60)
        body = json.dumps({"inputs": {"input1": [0.5], "input2": [3]}}).encode()
        path = "/v1/models/default:predict"
        status, headers, payload = _https(pki, runtime.http_port, path, body)
        assert status == 401 and "Bearer" in headers["WWW-Authenticate"]
        assert b"rest-token-1" not in payload
        status, _, _ = _https(pki, runtime.http_port, path, body, token="wrong")
        assert status == 401
        status, _, payload = _https(pki, runtime.http_port, path, body, token="rest-token-1")
        assert status == 200, payload
        assert "outputs" in json.loads(payload)
        assert _https(pki, runtime.http_port, "/metrics")[0] == 200  # open for scrapers
        # Plaintext HTTP to the TLS port gets no answer, and the server keeps serving.
        with socket.create_connection(("127.0.0.1", runtime.http_port), timeout=5) as sock:
            sock.sendall(b"GET /v1/models/default HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" not in sock.recv(4096)
        assert _https(pki, runtime.http_port, "/v1/models/default", token="rest-token-1")[0] == 200
    finally:
        runtime.stop(0.5)
