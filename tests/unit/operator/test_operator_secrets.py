"""The Secret existence check: a missing Secret or key is a Failure; a Secret get the operator is
not granted (403, the chart's rbac.secretCheck off) is "cannot verify", logged once, no Failure.

A local HTTP server plays the API server (real HTTP, Kubernetes Status bodies), as in
test_operator_kube.py."""

from __future__ import annotations

import copy
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from deeprec_operator import children
from deeprec_operator.kube import ApiError, Kube
from deeprec_operator.spec import parse
from tests.support.operator.manifests import BASE_SPEC

# namespace -> (status, body) answered for any Secret in it
ANSWERS = {
    "locked": (403, {"kind": "Status", "code": 403, "reason": "Forbidden",
                     "message": 'secrets "oss" is forbidden: User cannot get resource "secrets"'}),
    "empty": (404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "not found"}),
    "full": (200, {"kind": "Secret", "metadata": {"name": "oss"},
                   "data": {"oss_access_id": "aWQ=", "oss_access_key": "a2V5"}}),
    "broken": (500, {"kind": "Status", "code": 500, "reason": "InternalError", "message": "etcd"}),
}


class _Api(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        namespace = self.path.split("/namespaces/")[1].split("/")[0]
        self.server.seen.append(self.path)
        code, body = ANSWERS[namespace]
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def kube(monkeypatch):
    monkeypatch.setattr("deeprec_operator.kube.RETRY_BACKOFFS", (0.01,))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg = SimpleNamespace(host=f"http://127.0.0.1:{server.server_port}", verify_ssl=False,
                          ssl_ca_cert=None, cert_file=None, key_file=None,
                          get_api_key_with_prefix=lambda _: "Bearer t")
    yield Kube(cfg, timeout=5), server
    server.shutdown()
    server.server_close()


def _model(namespace: str):
    spec = copy.deepcopy(BASE_SPEC)
    spec["storage"] = {"storeType": "oss", "savedModelDir": "oss://b/sm/", "ossEndpoint": "e",
                       "credentialsSecretRef": {"name": "oss"}}
    return parse("wd", namespace, spec)


def test_forbidden_secret_get_is_logged_once_and_not_a_failure(kube, caplog):
    client, server = kube
    caplog.set_level(logging.WARNING, logger=children.log.name)
    unverifiable: set[str] = set()
    assert children.missing_secrets(client, _model("locked"), unverifiable) is None
    assert children.missing_secrets(client, _model("locked"), unverifiable) is None
    assert unverifiable == {"locked"}
    warnings = [r for r in caplog.records if "cannot verify Secrets" in r.getMessage()]
    assert len(warnings) == 1 and "'locked'" in warnings[0].getMessage()
    assert "rbac.secretCheck" in warnings[0].getMessage()
    # One refused get per reconcile: the first 403 ends the check (the other key needs no try).
    assert len(server.seen) == 2


def test_missing_and_present_secrets_still_checked(kube):
    client, _ = kube
    failure = children.missing_secrets(client, _model("empty"), set())
    assert failure is not None and failure.reason == "SecretNotFound" and "'oss'" in failure.message
    assert children.missing_secrets(client, _model("full"), set()) is None


def test_other_api_errors_still_raise(kube):
    client, _ = kube
    with pytest.raises(ApiError) as info:
        children.missing_secrets(client, _model("broken"), set())
    assert info.value.status == 500
