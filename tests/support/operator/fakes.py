"""Fakes for the operator's unit tests: an in-memory API at the client's interface, a prober,
an Events sink and a clock. The fake API records every call, so tests assert on what a sync
asked of the API server, as kopf's testing examples assert on the requests an operator made."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any

from deeprec_operator.kube import ApiError, collection_of, path_of
from deeprec_operator.pods import PodView, pod_view
from deeprec_operator.probe import ProbeError, ServingInfo
from deeprec_operator.versions import TARGET_ANNOTATION


def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """RFC 7386 JSON merge patch, in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeKube:
    """Objects by path. `calls` holds (verb, path) in order: GET, APPLY, CREATE, DELETE, PATCH
    (a status patch as PATCH .../status). `fail[(verb, path)]` is raised for that call."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str], ApiError] = {}
        self._versions = itertools.count(100)

    def _call(self, verb: str, path: str) -> None:
        self.calls.append((verb, path))
        error = self.fail.get((verb, path))
        if error is not None:
            raise error

    def _store(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))
        obj["metadata"].setdefault("uid", f"uid-{path.rsplit('/', 1)[-1]}")
        self.objects[path] = obj
        return copy.deepcopy(obj)

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Creates an object without recording a call (the test's own setup)."""
        return self._store(path_of(obj), copy.deepcopy(dict(obj)))

    def get(self, path: str) -> Any:
        self._call("GET", path)
        obj = self.objects.get(path)
        return copy.deepcopy(obj) if obj is not None else None

    def apply(self, obj: Mapping[str, Any]) -> Any:
        path = path_of(obj)
        self._call("APPLY", path)
        current = copy.deepcopy(self.objects.get(path) or {})
        merge(current, obj)
        return self._store(path, current)

    def create(self, obj: Mapping[str, Any]) -> Any:
        meta = obj["metadata"]
        name = meta.get("name") or f"{meta['generateName']}{len(self.objects)}"
        path = f"{collection_of(obj)}/{name}"
        self._call("CREATE", path)
        if path in self.objects:
            raise ApiError(409, "AlreadyExists", f"{path} already exists")
        created = copy.deepcopy(dict(obj))
        created["metadata"]["name"] = name
        return self._store(path, created)

    def delete(self, path: str, *, uid: str | None = None) -> Any:
        self._call("DELETE", path)
        obj = self.objects.get(path)
        if obj is None:
            raise ApiError(404, "NotFound", path)
        if uid is not None and obj["metadata"].get("uid") != uid:
            raise ApiError(409, "Conflict", "uid precondition")
        del self.objects[path]
        return {"kind": "Status", "status": "Success"}

    def merge_patch(self, path: str, patch: Mapping[str, Any], *, subresource: str | None = None) -> Any:
        self._call("PATCH", f"{path}/{subresource}" if subresource else path)
        obj = self.objects.get(path)
        if obj is None:
            raise ApiError(404, "NotFound", path)
        obj = copy.deepcopy(obj)
        merge(obj, patch)
        return self._store(path, obj)

    # --- what the tests look at ------------------------------------------------------------------

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] != "GET"]

    def pods(self, namespace: str = "ns") -> list[PodView]:
        """The pods as the pod index holds them once the watch caught up."""
        prefix = f"/api/v1/namespaces/{namespace}/pods/"
        return [pod_view(o) for p, o in sorted(self.objects.items()) if p.startswith(prefix)]

    def events(self) -> list[dict[str, Any]]:
        return [o for p, o in self.objects.items() if "/events/" in p]


def pod(name: str, *, model: str = "wd", namespace: str = "ns", ready: bool = True, ip: str = "10.0.0.1",
        target: str | None = None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace,
                            "labels": {"serving.deeprec.io/model": model}, "annotations": {}}
    if target is not None:
        meta["annotations"][TARGET_ANNOTATION] = target
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    ready_condition = {"type": "Ready", "status": "True" if ready else "False"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "status": {"podIP": ip, "conditions": [ready_condition]}}


class FakeProber:
    """Answers GetServingModelInfo from `answers` (address -> ServingInfo or ProbeError); an
    address it does not know refuses the connection."""

    def __init__(self, answers: Mapping[str, ServingInfo | ProbeError] | None = None) -> None:
        self.answers = dict(answers or {})
        self.asked: list[str | None] = []

    def info_many(self, addresses, credentials=None):
        self.asked.extend(addresses)
        return [self.answers.get(a, ProbeError("UNAVAILABLE: connection refused")) if a else
                ProbeError("pod has no IP yet") for a in addresses]

    def sweep(self, idle_seconds: float = 0.0) -> int:
        return 0

    def close(self) -> None:
        pass


class RecordedEvents:
    """The Events a sync posted, as (type, reason, message)."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []

    def normal(self, obj, reason: str, message: str) -> None:
        self.posted.append(("Normal", reason, message))

    def warning(self, obj, reason: str, message: str) -> None:
        self.posted.append(("Warning", reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.posted]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def views(pods: list[dict[str, Any]]) -> list[PodView]:
    return [pod_view(p) for p in pods]
