"""Before any write, the operator checks every child name: an object it does not control is left
untouched (ChildConflict); a model asking for a generated token gets its Secret created once, owned
by the model, and never rewritten; a NetworkPolicy the model stopped asking for is deleted (only
the model's own). A small in-memory API server answers over real HTTP, as in
test_operator_kube.py; tests/e2e/test_secured_models.py does the same on a real control plane."""

from __future__ import annotations

import copy
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from deeprec_operator import children
from deeprec_operator import kube as kube_module
from deeprec_operator import resources as r
from deeprec_operator.kube import Kube
from deeprec_operator.spec import parse
from tests.support.operator.fakes import RecordedEvents
from tests.support.operator.manifests import BASE_SPEC

UID = "11111111-2222-3333-4444-555555555555"
BODY = {"apiVersion": "serving.deeprec.io/v1alpha1", "kind": "DeepRecModel",
        "metadata": {"name": "wd", "namespace": "ns", "uid": UID, "labels": {}}}


class _Api(BaseHTTPRequestHandler):
    """GET / POST / DELETE on a dict of objects keyed by path; 403 for (method, path) in `forbidden`."""

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str) -> None:
        self._send(code, {"kind": "Status", "code": code, "reason": reason,
                          "message": f"{reason} {self.path}"})

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        self.server.calls.append(("GET", path))
        if ("GET", path) in self.server.forbidden:
            return self._status(403, "Forbidden")
        obj = self.server.objects.get(path)
        return self._send(200, obj) if obj is not None else self._status(404, "NotFound")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        path = self.path.split("?")[0] + "/" + body["metadata"]["name"]
        self.server.calls.append(("POST", path))
        if ("POST", path) in self.server.forbidden:
            return self._status(403, "Forbidden")
        if path in self.server.objects:
            return self._status(409, "AlreadyExists")
        body["metadata"]["uid"] = "created-uid"
        self.server.objects[path] = body
        return self._send(201, body)

    def do_DELETE(self) -> None:
        path = self.path.split("?")[0]
        length = int(self.headers.get("Content-Length") or 0)
        options = json.loads(self.rfile.read(length)) if length else {}
        self.server.calls.append(("DELETE", path))
        obj = self.server.objects.get(path)
        if obj is None:
            return self._status(404, "NotFound")
        if options.get("preconditions", {}).get("uid") not in (None, obj["metadata"].get("uid")):
            return self._status(409, "Conflict")
        del self.server.objects[path]
        return self._send(200, {"kind": "Status", "status": "Success"})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setattr(kube_module, "RETRY_BACKOFFS", (0.01,))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    server.objects, server.forbidden, server.calls = {}, set(), []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg = SimpleNamespace(host=f"http://127.0.0.1:{server.server_port}", verify_ssl=False, ssl_ca_cert=None,
                          cert_file=None, key_file=None, get_api_key_with_prefix=lambda _: "Bearer t")
    yield Kube(cfg, timeout=5), server
    server.shutdown()
    server.server_close()


@pytest.fixture
def events():
    return RecordedEvents()


def _model(**security):
    spec = copy.deepcopy(BASE_SPEC)
    if security:
        spec["security"] = security
    return parse("wd", "ns", spec)


def _owned(obj: dict, uid: str = UID) -> dict:
    obj = copy.deepcopy(obj)
    obj["metadata"]["ownerReferences"] = [{"apiVersion": "serving.deeprec.io/v1alpha1",
                                           "kind": "DeepRecModel", "name": "wd", "uid": uid,
                                           "controller": True}]
    obj["metadata"]["uid"] = "child-uid"
    return obj


CM_PATH = "/api/v1/namespaces/ns/configmaps/wd-config"
SECRET_PATH = "/api/v1/namespaces/ns/secrets/wd-auth-token"
NP_PATH = "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/wd"


def test_children_that_do_not_exist_or_are_ours_pass(api, events):
    kube, server = api
    model = _model()
    manifests = r.children(model)
    server.objects[CM_PATH] = _owned(manifests[0])
    assert children.ensure_owned_children(kube, events, BODY, model, manifests) is None
    assert [m for m, _ in server.calls] == ["GET", "GET", "GET"] and not events.posted


@pytest.mark.parametrize("owner_uid", [None, "another-models-uid"])
def test_a_child_name_held_by_someone_else_is_a_conflict_and_nothing_is_written(api, events, owner_uid):
    kube, server = api
    model = _model(authentication={"bearerToken": {}})
    manifests = r.children(model)
    users = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "wd-config", "namespace": "ns"},
             "data": {"mine": "yes"}}
    server.objects[CM_PATH] = _owned(users, owner_uid) if owner_uid else users
    failure = children.ensure_owned_children(kube, events, BODY, model, manifests)
    assert failure.reason == "ChildConflict"
    assert failure.message.startswith("ConfigMap wd-config already exists")
    # The check comes first: not even the token Secret was created.
    assert {m for m, _ in server.calls} == {"GET"} and server.objects[CM_PATH]["data"] == {"mine": "yes"}


def test_generated_token_secret_is_created_once_owned_by_the_model(api, events, caplog):
    kube, server = api
    caplog.set_level(logging.DEBUG)
    model = _model(authentication={"bearerToken": {}})
    assert children.ensure_owned_children(kube, events, BODY, model, r.children(model)) is None
    secret = server.objects[SECRET_PATH]
    token = secret["stringData"]["token"].strip()
    assert len(token) >= 40 and secret["type"] == "Opaque"
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"], owner["blockOwnerDeletion"]) == (
        "DeepRecModel", UID, True, True)
    assert events.reasons() == ["TokenSecretCreated"]
    assert token not in json.dumps(events.posted) and token not in caplog.text

    # The next reconcile finds it (ours) and leaves it: a token rotated in place is kept.
    server.objects[SECRET_PATH]["stringData"]["token"] = "rotated\n"
    server.calls.clear()
    assert children.ensure_owned_children(kube, events, BODY, model, r.children(model)) is None
    assert ("POST", SECRET_PATH) not in server.calls
    assert server.objects[SECRET_PATH]["stringData"]["token"] == "rotated\n"
    # Each reconcile makes a new token value, but never writes it over the existing one.
    assert children.create_token_secret(kube, events, BODY, model) is None  # 409: already there
    assert server.objects[SECRET_PATH]["stringData"]["token"] == "rotated\n"


def test_a_token_secret_of_someone_else_is_a_conflict(api, events):
    kube, server = api
    model = _model(authentication={"bearerToken": {}})
    server.objects[SECRET_PATH] = {"kind": "Secret", "metadata": {"name": "wd-auth-token"}, "data": {}}
    failure = children.ensure_owned_children(kube, events, BODY, model, r.children(model))
    assert failure.reason == "ChildConflict" and "Secret wd-auth-token" in failure.message


def test_forbidden_secret_access_says_how_to_fix_it(api, events):
    kube, server = api
    model = _model(authentication={"bearerToken": {}})
    server.forbidden = {("GET", SECRET_PATH)}
    failure = children.ensure_owned_children(kube, events, BODY, model, r.children(model))
    assert failure.reason == "ChildRejected" and "Secret wd-auth-token" in failure.message
    server.forbidden = {("POST", SECRET_PATH)}
    failure = children.ensure_owned_children(kube, events, BODY, model, r.children(model))
    assert failure.reason == "SecretForbidden"
    assert "rbac.tokenSecrets" in failure.message and "bearerToken.secretName" in failure.message


def test_a_network_policy_no_longer_asked_for_is_deleted_only_if_ours(api):
    kube, server = api
    enabled = _model(networkPolicy={})
    policy = r.network_policy(enabled)
    server.objects[NP_PATH] = _owned(policy)
    children.remove_disabled_network_policy(kube, enabled, BODY)  # still wanted: kept
    assert NP_PATH in server.objects
    disabled = _model()
    children.remove_disabled_network_policy(kube, disabled, BODY)
    assert NP_PATH not in server.objects
    server.objects[NP_PATH] = _owned(policy, "someone-else")
    children.remove_disabled_network_policy(kube, disabled, BODY)
    assert NP_PATH in server.objects, "a policy this model does not control is never deleted"
