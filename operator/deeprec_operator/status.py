"""What the pods report, folded into the DeepRecModel status.

Modelled on KServe's modelStatus: the version every ready replica actually serves
(GetServingModelInfo), the target the operator decided, replica counts per served version, and
three conditions with a reason and a message each:
- Ready: every desired replica is ready and serves the target.
- Progressing: something is on its way (pods starting, annotations not yet seen, a version loading).
- Degraded: a failure needs attention (a spec the operator cannot act on, a missing Secret, a
  runtime that failed to load a version).
Conditions keep their lastTransitionTime while their status stays the same, as Kubernetes does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deeprec_operator.versions import is_pinned

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class Failure:
    """A failure that blocks reconciling (reason is CamelCase; message names the field)."""

    reason: str
    message: str


@dataclass(frozen=True)
class PodReport:
    """One pod, as the API server and its runtime describe it."""

    name: str
    ready: bool
    annotated_target: str | None
    reachable: bool = False
    served_version: str = ""
    runtime_target: str = ""
    last_update_error: str = ""
    probe_error: str = ""


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason,
            "message": _truncate(message)}


def _served_counts(reports: Sequence[PodReport]) -> Counter[str]:
    return Counter(r.served_version for r in reports if r.ready and r.reachable and r.served_version)


def active_version(reports: Sequence[PodReport], target: str) -> str:
    """The version served by most ready replicas; on a tie the target wins, then the name."""
    counts = _served_counts(reports)
    if not counts:
        return ""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] != target, kv[0]))[0][0]


def aggregate(
    *,
    target: str,
    desired_replicas: int,
    reports: Sequence[PodReport],
    failure: Failure | None = None,
) -> dict[str, Any]:
    """The status body (without timestamps or observedGeneration) for one model."""
    ready = [r for r in reports if r.ready]
    updated = [r for r in reports if r.annotated_target == target]
    reachable = [r for r in ready if r.reachable]
    unreachable = [r for r in ready if not r.reachable]
    counts = _served_counts(reports)
    active = active_version(reports, target)
    load_errors = [r for r in reachable if r.last_update_error]

    # What is still in motion, first match wins (most basic first).
    progress: tuple[str, str] | None = None
    if len(ready) < desired_replicas:
        progress = ("ReplicasStarting", f"{len(ready)} of {desired_replicas} replicas ready")
    elif len(reports) > desired_replicas:
        progress = ("ScalingDown", f"{len(reports)} pods for {desired_replicas} replicas")
    elif len(updated) < len(reports):
        progress = ("PropagatingTarget",
                    f"{len(updated)} of {len(reports)} pods annotated with target {target!r}")
    else:
        unseen = [r for r in reachable if r.runtime_target and r.runtime_target != target]
        if unseen:
            progress = ("PropagatingTarget",
                        f"{len(unseen)} runtimes have not read target {target!r} yet "
                        f"(e.g. {unseen[0].name} aims at {unseen[0].runtime_target!r})")
        elif is_pinned(target) and any(r.served_version != target for r in reachable):
            others = sorted({r.served_version or '(none)' for r in reachable if r.served_version != target})
            progress = ("LoadingVersion", f"loading {target!r}; still serving {', '.join(others)}")
        elif not is_pinned(target) and len(counts) > 1:
            progress = ("LoadingVersion",
                        "replicas serve different versions: "
                        + ", ".join(f"{v}={n}" for v, n in sorted(counts.items())))

    degraded: tuple[str, str] | None = None
    if failure is not None:
        degraded = (failure.reason, failure.message)
    elif load_errors:
        first = load_errors[0]
        degraded = (
            "UpdateFailed",
            f"{len(load_errors)} replicas report a failed update; {first.name}: {first.last_update_error}",
        )

    conditions = []
    if degraded is not None:
        conditions.append(_condition(READY, False, degraded[0], degraded[1]))
    elif progress is not None:
        conditions.append(_condition(READY, False, progress[0], progress[1]))
    elif unreachable:
        first = unreachable[0]
        conditions.append(_condition(
            READY, False, "RuntimeUnreachable",
            f"{len(unreachable)} of {len(ready)} ready replicas did not answer GetServingModelInfo "
            f"({first.name}: {first.probe_error or 'no answer'})"))
    else:
        what = f"version {active!r}" if active else "no version (0 replicas)"
        conditions.append(_condition(READY, True, "AllReplicasServing",
                                     f"{len(ready)} replicas ready, serving {what}"))
    if progress is not None and failure is None:
        conditions.append(_condition(PROGRESSING, True, progress[0], progress[1]))
    elif failure is not None:
        conditions.append(_condition(PROGRESSING, False, "Blocked", failure.message))
    else:
        conditions.append(_condition(PROGRESSING, False, "Stable", f"target {target!r} propagated"))
    if degraded is not None:
        conditions.append(_condition(DEGRADED, True, degraded[0], degraded[1]))
    else:
        conditions.append(_condition(DEGRADED, False, "NoFailures", "no failures reported"))

    return {
        "targetVersion": target,
        "activeVersion": active,
        "replicas": len(reports),
        "readyReplicas": len(ready),
        "updatedReplicas": len(updated),
        "versions": [{"name": v, "replicas": n}
                     for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))],
        "conditions": conditions,
    }


def stamp_conditions(new: Iterable[Mapping[str, str]], old: Iterable[Mapping[str, Any]] | None,
                     now: str, generation: int | None) -> list[dict[str, Any]]:
    """Adds lastTransitionTime (kept from `old` while the status is unchanged) and observedGeneration."""
    previous = {c.get("type"): c for c in (old or [])}
    out = []
    for cond in new:
        before = previous.get(cond["type"])
        since = (
            before.get("lastTransitionTime") if before and before.get("status") == cond["status"] else None
        )
        stamped: dict[str, Any] = {**cond, "lastTransitionTime": since or now}
        if generation is not None:
            stamped["observedGeneration"] = generation
        out.append(stamped)
    return out


def condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def next_status(*, target: str, desired_replicas: int, reports: Sequence[PodReport], failure: Failure | None,
                old: Mapping[str, Any], now: str, generation: int | None, selector: str) -> dict[str, Any]:
    """The whole status to write: aggregate's body, conditions stamped against `old`, the
    generation acted on and the pods' selector (for the scale subresource)."""
    new = aggregate(target=target, desired_replicas=desired_replicas, reports=reports, failure=failure)
    new["conditions"] = stamp_conditions(new["conditions"], old.get("conditions"), now, generation)
    new["selector"] = selector
    if generation is not None:
        new["observedGeneration"] = generation
    return new


def differs(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether writing `new` changes anything (fields the operator does not own are ignored)."""
    return any(old.get(k) != v for k, v in new.items())
