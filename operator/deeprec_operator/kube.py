"""A small JSON client for the Kubernetes API: server-side apply, merge patches, lists.

The official client supplies the credentials (kubeconfig or in-cluster, token refresh included);
the requests are plain JSON so the rest of the operator works with the same dicts the pure
builders return. Server-side apply makes every reconcile level-based and idempotent: the operator
states the whole child each time and the API server works out the difference.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import urllib3

FIELD_MANAGER = "deeprec-operator"

#: Answers worth another try: a conflict, throttling, an API server (or etcd) in trouble.
RETRY_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
#: Seconds between tries (4 retries, about 3.5 s in all); after that the error goes to kopf, which
#: retries the handler. Every request here is idempotent (GET, server-side apply, a merge patch of
#: absolute values), so repeating one that may have landed is harmless.
RETRY_BACKOFFS = (0.1, 0.4, 1.0, 2.0)

log = logging.getLogger(__name__)

_PLURALS = {"ConfigMap": "configmaps", "Service": "services", "Deployment": "deployments",
            "Pod": "pods", "Secret": "secrets", "Event": "events",  # nosec B105  # resource plural
            "NetworkPolicy": "networkpolicies", "DeepRecModel": "deeprecmodels"}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def load_configuration() -> Any:
    """KUBECONFIG (or ~/.kube/config) when present, else the in-cluster service account."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if os.environ.get("KUBECONFIG") or os.path.exists(os.path.expanduser("~/.kube/config")):
        config.load_kube_config(client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)
    return cfg


def collection_path(api_version: str, kind_plural: str, namespace: str | None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        return f"{base}/namespaces/{quote(namespace)}/{kind_plural}"
    return f"{base}/{kind_plural}"


def object_path(api_version: str, kind_plural: str, namespace: str | None, name: str) -> str:
    return f"{collection_path(api_version, kind_plural, namespace)}/{quote(name)}"


def path_of(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return object_path(obj["apiVersion"], _PLURALS[obj["kind"]], meta.get("namespace"), meta["name"])


def collection_of(obj: Mapping[str, Any]) -> str:
    return collection_path(obj["apiVersion"], _PLURALS[obj["kind"]], obj["metadata"].get("namespace"))


class KubeClient(Protocol):
    """The calls the operator makes: Kube implements them; tests pass a fake that records them,
    or a wrapper that injects faults at chosen calls (tests/support/operator/faulty_kube.py)."""

    def get(self, path: str) -> Any: ...

    def apply(self, obj: Mapping[str, Any]) -> Any: ...

    def create(self, obj: Mapping[str, Any]) -> Any: ...

    def delete(self, path: str, *, uid: str | None = None) -> Any: ...

    def merge_patch(self, path: str, patch: Mapping[str, Any], *, subresource: str | None = None) -> Any: ...


class Kube:
    """Thread-safe: kopf runs sync handlers on a thread pool and they share one instance."""

    def __init__(self, configuration: Any, *, timeout: float = 15.0) -> None:
        self._cfg = configuration
        self._timeout = timeout
        kwargs: dict[str, Any] = {"maxsize": 32, "retries": False}
        if configuration.verify_ssl:
            kwargs["cert_reqs"] = "CERT_REQUIRED"
            if configuration.ssl_ca_cert:
                kwargs["ca_certs"] = configuration.ssl_ca_cert
        else:
            kwargs["cert_reqs"] = "CERT_NONE"
        if configuration.cert_file:
            kwargs["cert_file"] = configuration.cert_file
            kwargs["key_file"] = configuration.key_file
        if getattr(configuration, "tls_server_name", None):
            kwargs["server_hostname"] = configuration.tls_server_name
        self._http = urllib3.PoolManager(**kwargs)
        self._lock = threading.Lock()

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        with self._lock:
            token = (self._cfg.get_api_key_with_prefix("BearerToken")
                     or self._cfg.get_api_key_with_prefix("authorization"))
        if token:
            headers["Authorization"] = token if " " in token else f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def request(self, method: str, path: str, body: Any = None, *, params: Mapping[str, Any] | None = None,
                content_type: str = "application/json", retry: frozenset[int] = RETRY_STATUSES) -> Any:
        """One API call, retried on `retry` statuses and on connection errors (a restarting API server)."""
        for attempt, pause in enumerate((*RETRY_BACKOFFS, None), start=1):
            try:
                return self._request_once(method, path, body, params=params, content_type=content_type)
            except ApiError as e:
                if pause is None or e.status not in retry:
                    raise
                reason = f"{e.status} {e.reason}"
            except urllib3.exceptions.HTTPError as e:
                if pause is None:
                    raise
                reason = type(e).__name__
            log.info("%s %s failed (%s), try %d of %d in %.1fs", method, path, reason, attempt + 1,
                     len(RETRY_BACKOFFS) + 1, pause)
            time.sleep(pause)
        raise AssertionError("unreachable")

    def _request_once(self, method: str, path: str, body: Any, *, params: Mapping[str, Any] | None,
                      content_type: str) -> Any:
        url = self._cfg.host.rstrip("/") + path
        if params:
            url += "?" + urlencode({k: v for k, v in params.items() if v is not None})
        data = None if body is None else json.dumps(body).encode()
        resp = self._http.request(
            method,
            url,
            body=data,
            headers=self._headers(content_type if data else None),
            timeout=self._timeout,
        )
        payload = resp.data
        if resp.status >= 400:
            try:
                err = json.loads(payload)
                raise ApiError(resp.status, str(err.get("reason", "")), str(err.get("message", "")))
            except (ValueError, AttributeError):
                raise ApiError(resp.status, "", payload[:300].decode(errors="replace")) from None
        return json.loads(payload) if payload else None

    def get(self, path: str) -> Any:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(self, path: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"labelSelector": label_selector, "limit": 500}
        while True:
            page = self.request("GET", path, params=params)
            items.extend(page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return items
            params["continue"] = cont

    def apply(self, obj: Mapping[str, Any]) -> Any:
        """Server-side apply with this operator's field manager; takes over conflicting fields."""
        return self.request("PATCH", path_of(obj), obj,
                            params={"fieldManager": FIELD_MANAGER, "force": "true"},
                            content_type="application/apply-patch+yaml")

    def create(self, obj: Mapping[str, Any]) -> Any:
        """POST: fails with 409 when an object of that name exists (nothing is overwritten). A 409
        here is an answer, not a conflict worth retrying."""
        return self.request("POST", collection_of(obj), obj, params={"fieldManager": FIELD_MANAGER},
                            retry=RETRY_STATUSES - {409})

    def delete(self, path: str, *, uid: str | None = None) -> Any:
        """DELETE, with a UID precondition when given: an object replaced meanwhile is kept (409)."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}} if uid else None
        return self.request("DELETE", path, body, retry=RETRY_STATUSES - {409})

    def merge_patch(self, path: str, patch: Mapping[str, Any], *, subresource: str | None = None) -> Any:
        full = f"{path}/{subresource}" if subresource else path
        return self.request("PATCH", full, patch, params={"fieldManager": FIELD_MANAGER},
                            content_type="application/merge-patch+json")
