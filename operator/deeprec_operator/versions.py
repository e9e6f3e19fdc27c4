"""Which version each pod should serve, and which pods still carry another decision.

The decision travels as one pod annotation that the runtime reads through the Downward API:
`latest` follows the newest checkpoint, any other value pins that version. Rolling back is
pinning an older one. Today every pod of a model gets the same target; the per-pod shape of these
functions leaves room for canaries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from deeprec_api.pod import LATEST
from deeprec_api.pod import TARGET_VERSION_ANNOTATION as TARGET_ANNOTATION


def target_version(spec_version: str | None) -> str:
    """spec.version as the value the runtime understands (empty or absent means latest)."""
    return (spec_version or "").strip() or LATEST


def is_pinned(target: str) -> bool:
    return target != LATEST


def pod_target(pod: Mapping[str, Any]) -> str | None:
    """The target the pod carries now, None when it has none yet (a pod the operator hasn't seen)."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(TARGET_ANNOTATION)
    return None if value is None else str(value)


class Annotated(Protocol):
    """A pod as decide_targets reads it (pods.PodView)."""

    @property
    def name(self) -> str: ...

    @property
    def target(self) -> str | None: ...

    @property
    def deleting(self) -> bool: ...


def decide_targets(pods: Iterable[Annotated], target: str) -> dict[str, str]:
    """Pod name -> target for every pod whose annotation differs from the decision.

    The one place the operator decides pod annotations; a pod being deleted is left alone.
    """
    return {pod.name: target for pod in pods if not pod.deleting and pod.target != target}


def annotation_patch(target: str) -> dict[str, Any]:
    """A merge patch that sets the annotation and nothing else on the pod."""
    return {"metadata": {"annotations": {TARGET_ANNOTATION: target}}}
