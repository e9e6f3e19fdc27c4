"""Kubernetes Events about a DeepRecModel, posted through the operator's API client.

kopf.event() posts only from inside kopf's per-object handler context, and a sync also runs from
the operator's resync loop and from pod events, so Events go out here instead, as core/v1 Events
with the fields kopf gives its own (source and reporting component, involvedObject with UID), so
`kubectl describe drm` shows them as before. Events are auxiliary: a failed post is logged, never
raised into the sync.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import urllib3

from deeprec_operator.kube import ApiError, KubeClient

#: Longer messages are cut in the middle, as kopf cuts them (the API server refuses over 1 kB).
MAX_MESSAGE = 1024
_INFIX = "..."

log = logging.getLogger(__name__)


def _cut(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    keep = MAX_MESSAGE - len(_INFIX)
    return message[: keep // 2] + _INFIX + message[-(keep - keep // 2):]


def event_body(obj: Mapping[str, Any], type_: str, reason: str, message: str, *, component: str,
               instance: str, now: datetime.datetime | None = None) -> dict[str, Any]:
    """The Event object for `obj` (a DeepRecModel body), as kopf writes one."""
    meta = obj.get("metadata") or {}
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).isoformat()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"namespace": meta.get("namespace"), "generateName": "kopf-event-"},
        "action": "Action?",
        "type": type_,
        "reason": reason,
        "message": _cut(message),
        "reportingComponent": component,
        "reportingInstance": instance,
        "source": {"component": component},
        "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                           "name": meta.get("name"), "namespace": meta.get("namespace"),
                           "uid": meta.get("uid")},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "eventTime": stamp,
    }


class Events(Protocol):
    """Where a sync reports what users should see in `kubectl describe drm` (a fake in tests)."""

    def normal(self, obj: Mapping[str, Any], reason: str, message: str) -> None: ...

    def warning(self, obj: Mapping[str, Any], reason: str, message: str) -> None: ...


class EventRecorder:
    """Posts Normal and Warning Events; thread-safe as its client is."""

    def __init__(self, kube: KubeClient, *, component: str = "kopf", instance: str = "dev") -> None:
        self._kube, self._component, self._instance = kube, component, instance

    def normal(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self._post(obj, "Normal", reason, message)

    def warning(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self._post(obj, "Warning", reason, message)

    def _post(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        body = event_body(obj, type_, reason, message, component=self._component, instance=self._instance)
        try:
            self._kube.create(body)
        except (ApiError, urllib3.exceptions.HTTPError) as e:
            log.warning("could not post Event %s/%s for %s: %s", type_, reason,
                        (obj.get("metadata") or {}).get("name"), e)
