"""The operator's view of one runtime pod: the few fields its decisions read.

The pod index (handlers.py) keeps one PodView per pod of a model, so a sync reads the pods from
memory instead of listing them through the API; a pod event matters to the operator only when
it changes one of these fields (`changed`), not on every kubelet status update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deeprec_operator.versions import pod_target


@dataclass(frozen=True)
class PodView:
    name: str
    namespace: str
    ip: str = ""
    ready: bool = False
    #: deletionTimestamp is set: the pod is going and is neither annotated nor counted as ready.
    deleting: bool = False
    #: The target-version annotation it carries; None before the operator first annotated it.
    target: str | None = None
    #: Only to tell a cached view from the object a patch returned (never compared).
    resource_version: str = field(default="", compare=False)


def is_ready(pod: Mapping[str, Any]) -> bool:
    """The pod's Ready condition, False once it is being deleted."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def pod_view(pod: Mapping[str, Any]) -> PodView:
    meta = pod.get("metadata") or {}
    return PodView(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        ip=str((pod.get("status") or {}).get("podIP") or ""),
        ready=is_ready(pod),
        deleting=bool(meta.get("deletionTimestamp")),
        target=pod_target(pod),
        resource_version=str(meta.get("resourceVersion", "")),
    )


def changed(view: PodView | None, seen: PodView | None) -> bool:
    """Whether a pod event tells a sync something new: a pod it has not seen, one that went away,
    or a change of readiness, address, annotation or deletion. (Kubelet heartbeats and the
    operator's own patches, once folded in, are not.)"""
    return view != seen
