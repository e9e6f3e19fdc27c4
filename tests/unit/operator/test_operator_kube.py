"""The operator's API client retries what an API server under stress answers, and only that.

A local HTTP server plays the API server with scripted answers (status codes in order), so the
retry policy is checked without a control plane; tests/e2e/test_operator_faults.py checks it
against the real one through a fault-injecting proxy.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import urllib3

from deeprec_operator import kube as kube_module
from deeprec_operator.kube import ApiError, Kube


class _Scripted(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        server = self.server
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        server.seen.append((self.command, self.path))
        code = server.script.pop(0) if server.script else 200
        body = ({"kind": "Status", "code": code, "reason": "Scripted", "message": f"scripted {code}"}
                if code >= 400 else {"kind": "ConfigMap", "metadata": {"name": "x"}})
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.script, server.seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def fast_backoffs(monkeypatch):
    monkeypatch.setattr(kube_module, "RETRY_BACKOFFS", (0.01, 0.01, 0.01, 0.01))


def _client(port: int) -> Kube:
    cfg = SimpleNamespace(host=f"http://127.0.0.1:{port}", verify_ssl=False, ssl_ca_cert=None, cert_file=None,
                          key_file=None, get_api_key_with_prefix=lambda _: "Bearer t")
    return Kube(cfg, timeout=5)


@pytest.mark.parametrize("code", [409, 429, 500, 502, 503, 504])
def test_transient_answers_are_retried(api, code):
    api.script = [code, code]
    out = _client(api.server_port).merge_patch("/api/v1/namespaces/n/pods/p", {"metadata": {}})
    assert out["kind"] == "ConfigMap"
    assert len(api.seen) == 3 and {m for m, _ in api.seen} == {"PATCH"}


@pytest.mark.parametrize("code", [400, 403, 404, 422])
def test_answers_about_the_request_are_not_retried(api, code):
    api.script = [code]
    with pytest.raises(ApiError) as info:
        _client(api.server_port).request("PATCH", "/api/v1/namespaces/n/pods/p", {})
    assert info.value.status == code and info.value.message == f"scripted {code}"
    assert len(api.seen) == 1


def test_retries_are_bounded(api):
    api.script = [503] * 10
    with pytest.raises(ApiError) as info:
        _client(api.server_port).get("/api/v1/namespaces/n/configmaps/x")
    assert info.value.status == 503
    assert len(api.seen) == len(kube_module.RETRY_BACKOFFS) + 1


def test_a_refused_connection_is_retried_then_raised():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(urllib3.exceptions.HTTPError):
        _client(port).get("/api/v1/namespaces/n/configmaps/x")
