"""GetServingModelInfo over real gRPC on loopback, as the operator calls each runtime pod: plaintext,
TLS checked against the model's CA and server name, mutual TLS and bearer tokens."""

from __future__ import annotations

from concurrent import futures
from types import SimpleNamespace

import grpc
import pytest

from deeprec_api import predict_pb2
from deeprec_operator.credentials import ProbeCredentials
from deeprec_operator.probe import METHOD, ProbeError, Prober, pod_address


@pytest.fixture
def runtime_stub():
    """A gRPC server on port 0 that answers GetServingModelInfo like a runtime serving checkpoint_2."""
    def info(request_bytes, context):
        predict_pb2.ServingModelInfoRequest.FromString(request_bytes)
        return predict_pb2.ServingModelInfo(
            model_path="/m", version="checkpoint_2", target_version="checkpoint_2", last_update_error=""
        ).SerializeToString()

    handler = grpc.method_handlers_generic_handler("deeprec.serving.PredictionService", {
        "GetServingModelInfo": grpc.unary_unary_rpc_method_handler(info),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(None)


def test_reads_served_version(runtime_stub):
    prober = Prober(timeout=2)
    try:
        info = prober.info(f"127.0.0.1:{runtime_stub}")
    finally:
        prober.close()
    assert (info.version, info.target_version, info.last_update_error) == ("checkpoint_2", "checkpoint_2", "")
    assert METHOD == "/deeprec.serving.PredictionService/GetServingModelInfo"


def test_unreachable_pod_is_an_error_not_an_exception(runtime_stub):
    prober = Prober(timeout=0.5)
    try:
        good, bad, none = prober.info_many([f"127.0.0.1:{runtime_stub}", "127.0.0.1:1", None])
    finally:
        prober.close()
    assert good.version == "checkpoint_2"
    assert isinstance(bad, ProbeError) and "UNAVAILABLE" in str(bad)
    assert isinstance(none, ProbeError)


def test_address_template():
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "status": {"podIP": "10.1.2.3"}}
    assert pod_address(pod, 8500, "{pod_ip}:{port}") == "10.1.2.3:8500"
    assert pod_address(pod, 8500, "unix:///tmp/{namespace}.{pod_name}.sock") == "unix:///tmp/ns.p.sock"
    assert pod_address({"metadata": {"name": "p"}, "status": {}}, 8500, "{pod_ip}:{port}") is None


def test_address_template_from_env(monkeypatch):
    monkeypatch.setenv("DEEPREC_OPERATOR_POD_ADDRESS_TEMPLATE", "127.0.0.1:{port}")
    assert pod_address({"metadata": {"name": "p"}, "status": {}}, 9) == "127.0.0.1:9"


# --- secured runtimes: TLS, mutual TLS, bearer tokens ---------------------------------------------
# The server side is the runtime's own (deeprec_runtime.security: credentials with rotation, the
# auth interceptor), with certificates made for this test; health is the standard servicer.

SERVER_NAME = "wd.ns.svc"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tests.support.operator.pki import CA

    d = tmp_path_factory.mktemp("probe-pki")
    server_ca, client_ca, other_ca = CA("server-ca"), CA("client-ca"), CA("other-ca")
    server = server_ca.server(SERVER_NAME)
    files = {"server.crt": server.cert, "server.key": server.key, "client-ca.crt": client_ca.pem,
             "tokens": b"# callers\nfirst-token\nsecond-token\n"}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return SimpleNamespace(dir=d, server_ca=server_ca, client_ca=client_ca, other_ca=other_ca)


def _secured_server(pki, *, mutual: bool, tokens: bool):
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from deeprec_runtime.security import Security, SecurityConfig

    security = Security(SecurityConfig(
        tls_cert=str(pki.dir / "server.crt"), tls_key=str(pki.dir / "server.key"),
        tls_client_ca=str(pki.dir / "client-ca.crt") if mutual else "",
        auth_token_file=str(pki.dir / "tokens") if tokens else ""))

    def info(request_bytes, context):
        return predict_pb2.ServingModelInfo(version="checkpoint_2").SerializeToString()

    handler = grpc.method_handlers_generic_handler("deeprec.serving.PredictionService", {
        "GetServingModelInfo": grpc.unary_unary_rpc_method_handler(info)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=security.grpc_interceptors())
    server.add_generic_rpc_handlers((handler,))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", security.grpc_credentials())
    server.start()
    return server, port, servicer


@pytest.fixture
def tls_runtime(pki):
    server, port, _ = _secured_server(pki, mutual=False, tokens=True)
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture
def mtls_runtime(pki):
    server, port, _ = _secured_server(pki, mutual=True, tokens=False)
    yield f"127.0.0.1:{port}"
    server.stop(None)


def _ask(address, credentials):
    prober = Prober(timeout=3)
    try:
        return prober.info_many([address], credentials)[0]
    finally:
        prober.close()


def test_probe_verifies_the_server_by_name_over_an_ip_and_sends_the_token(pki, tls_runtime):
    good = ProbeCredentials(root_ca=pki.server_ca.pem, server_name=SERVER_NAME, token="second-token")
    assert _ask(tls_runtime, good).version == "checkpoint_2"
    # The runtime checks the token: none or a wrong one is refused.
    for token in ("", "not-a-token"):
        answer = _ask(tls_runtime, ProbeCredentials(root_ca=pki.server_ca.pem, server_name=SERVER_NAME,
                                                    token=token))
        assert isinstance(answer, ProbeError) and "UNAUTHENTICATED" in str(answer)
        assert "second-token" not in str(answer)
    # The probe trusts only the model's CA, and checks the certificate's name.
    for wrong in (
        ProbeCredentials(root_ca=pki.other_ca.pem, server_name=SERVER_NAME, token="first-token"),
        ProbeCredentials(root_ca=pki.server_ca.pem, server_name="other.ns.svc", token="first-token"),
    ):
        answer = _ask(tls_runtime, wrong)
        assert isinstance(answer, ProbeError) and "UNAVAILABLE" in str(answer)
    # Plaintext to a TLS port gets nowhere.
    assert isinstance(_ask(tls_runtime, ProbeCredentials(token="first-token")), ProbeError)


def test_probe_presents_the_operators_client_certificate_under_mutual_tls(pki, mtls_runtime):
    operator = pki.client_ca.client("deeprec-operator")
    good = ProbeCredentials(root_ca=pki.server_ca.pem, client_certificate=operator.cert,
                            client_key=operator.key, server_name=SERVER_NAME)
    assert _ask(mtls_runtime, good).version == "checkpoint_2"
    stranger = pki.other_ca.client("stranger")
    for creds in (ProbeCredentials(root_ca=pki.server_ca.pem, server_name=SERVER_NAME),
                  ProbeCredentials(root_ca=pki.server_ca.pem, client_certificate=stranger.cert,
                                   client_key=stranger.key, server_name=SERVER_NAME)):
        assert isinstance(_ask(mtls_runtime, creds), ProbeError)


def test_channels_are_kept_per_credentials_and_idle_ones_closed(pki, tls_runtime):
    prober = Prober(timeout=3)
    try:
        first = ProbeCredentials(root_ca=pki.server_ca.pem, server_name=SERVER_NAME, token="first-token")
        second = ProbeCredentials(root_ca=pki.server_ca.pem, server_name=SERVER_NAME, token="second-token")
        assert prober.info(tls_runtime, first).version == prober.info(tls_runtime, first).version
        assert prober.info(tls_runtime, second).version == "checkpoint_2"
        assert prober.sweep(idle_seconds=3600) == 0
        assert prober.sweep(idle_seconds=0) == 2, "one channel per credentials, both closed when idle"
    finally:
        prober.close()
    assert "first-token" not in repr(first) and "BEGIN CERTIFICATE" not in repr(first)
