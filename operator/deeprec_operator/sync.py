"""The level-based reconcile of one DeepRecModel.

`sync` reads what is (the model, its pods as the pod index holds them, what each runtime says it
serves) and makes what should be (the children, every pod's target-version annotation, the
status), the same way whatever triggered it and however often it runs: a second sync with nothing
changed makes no API call (a secured model's probe re-reads its Secrets every 30 s). It is the
only code that decides pod annotations.

Everything it uses comes in as arguments (an API client, the prober, an Events sink, clocks),
so tests drive it with fakes and assert on the calls it made; the controller (controller.py) and
the kopf handlers only decide when it runs, one sync per model at a time.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from deeprec_api.resource import GROUP, PLURAL, VERSION
from deeprec_operator import resources
from deeprec_operator.children import (
    apply_children,
    ensure_owned_children,
    missing_secrets,
    remove_disabled_network_policy,
)
from deeprec_operator.credentials import CredentialError, SecretCache, credentials_for
from deeprec_operator.events import Events
from deeprec_operator.kube import ApiError, KubeClient, object_path
from deeprec_operator.pods import PodView, pod_view
from deeprec_operator.probe import ProbeError, Prober, report_pods
from deeprec_operator.spec import SpecError, parse
from deeprec_operator.status import Failure, differs, next_status
from deeprec_operator.versions import annotation_patch, decide_targets, target_version

#: A Failure that waits on something outside the spec (a missing Secret, a child name held by
#: another object, a refused write) is re-checked this often; one in the spec waits for a change.
RETRY_SECONDS = 15.0

log = logging.getLogger(__name__)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fan_out() -> Executor:
    # A rollback is only as fast as its slowest pod, so the patches go out together.
    return ThreadPoolExecutor(max_workers=16, thread_name_prefix="annotate")


@dataclass
class Context:
    """What every sync shares; built once at start-up and kept in kopf's memo."""

    kube: KubeClient
    prober: Prober
    secrets: SecretCache
    events: Events
    default_image: str = ""
    operator_peer: Mapping[str, Any] | None = None
    #: Namespaces where Secret get is forbidden: logged once each, then the check is skipped.
    unverifiable: set[str] = field(default_factory=set)
    fan_out: Executor = field(default_factory=_fan_out)
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], str] = _utc_now


@dataclass
class ModelState:
    """What the operator remembers about one model between syncs. In memory only: a restarted
    operator starts from the cluster, and its first sync applies the children again."""

    uid: str
    #: Held for the whole sync: a model is never synced twice at once.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    failure: Failure | None = None
    #: Digest of the children last applied; equal to the wanted one, nothing is written.
    applied: str | None = None
    #: Digest whose apply ended in a Failure, tried again from retry_at on.
    failed: str | None = None
    retry_at: float = 0.0
    #: The target version last acted on (TargetVersionChanged is posted when it changes).
    announced: str | None = None
    #: The pods as the last sync left them: a pod event that differs from these triggers a sync.
    seen: dict[str, PodView] = field(default_factory=dict)
    #: Pod -> (resourceVersion the patch was made on, the pod the patch returned), kept until the
    #: pod index has caught up, so that a sync right after a patch does not patch again.
    patched: dict[str, tuple[str, PodView]] = field(default_factory=dict)
    #: (resourceVersion of the model the status was computed from, the status written).
    written: tuple[str, dict[str, Any]] | None = None
    #: When the controller's resync is due (a sync from anywhere moves it on).
    next_sync: float = 0.0


@dataclass(frozen=True)
class Result:
    failure: Failure | None
    #: The failure is in the spec: retrying will not help until the spec changes.
    permanent: bool
    status: dict[str, Any]


def sync(ctx: Context, state: ModelState, body: Mapping[str, Any], pods: Sequence[PodView], *,
         retry_now: bool = False) -> Result:
    """Brings one model's children, pod annotations and status in line with its spec.

    `pods` are the model's pods as the pod index has them. A Failure is recorded in status and
    announced once by a Warning Event; `retry_now` re-tries a failed apply before RETRY_SECONDS
    have passed (a kopf handler retrying). API errors that outlast the client's retries propagate.
    """
    meta, spec = body["metadata"], body.get("spec") or {}
    target = target_version(spec.get("version"))
    failure, permanent = _children(ctx, state, body, retry_now)
    current = _fold_own_patches(state, pods)
    # Pods of a Deployment the model does not control are not the model's to steer.
    if failure is None or failure.reason != "ChildConflict":
        current, patched = _annotate(ctx, state, meta["namespace"], current, target)
        _announce(ctx, state, body, target, patched, len(current))
    _record(ctx, state, body, failure)
    try:
        status = _write_status(ctx, state, body, current, target)
    except ApiError as e:
        if failure is None:
            raise
        # The failure is what the caller must see (it decides the retry); status follows later.
        log.warning("could not write status of %s: %s", meta["name"], e)
        status = {}
    state.seen = {p.name: p for p in current}
    return Result(failure, permanent, status)


def children_digest(manifests: Sequence[Mapping[str, Any]], uid: str) -> str:
    """Identifies what is applied: the same manifests for the same model need no second apply."""
    text = json.dumps([uid, *manifests], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _children(ctx: Context, state: ModelState, body: Mapping[str, Any],
              retry_now: bool) -> tuple[Failure | None, bool]:
    """Applies the children when they differ from what was last applied; (failure, permanent)."""
    meta = body["metadata"]
    try:
        model = parse(meta["name"], meta["namespace"], body.get("spec") or {},
                      default_image=ctx.default_image, labels=meta.get("labels") or {})
        manifests = resources.children(model, ctx.operator_peer)
    except SpecError as e:
        return Failure(e.reason, e.message), True
    except resources.TemplateError as e:
        return Failure("InvalidPodTemplate", str(e)), True
    except ValueError as e:  # a malformed resource quantity
        return Failure("InvalidSpec", str(e)), True
    digest = children_digest(manifests, meta["uid"])
    if state.applied == digest:
        return None, False
    if not retry_now and state.failed == digest and ctx.clock() < state.retry_at:
        return state.failure, False
    # Checks first: no pod is created that could not start, no object of someone else is taken.
    failure = (missing_secrets(ctx.kube, model, ctx.unverifiable)
               or ensure_owned_children(ctx.kube, ctx.events, body, model, manifests)
               or apply_children(ctx.kube, body, manifests))
    if failure is not None:
        state.applied, state.failed, state.retry_at = None, digest, ctx.clock() + RETRY_SECONDS
        return failure, False
    remove_disabled_network_policy(ctx.kube, model, body)
    state.applied, state.failed = digest, None
    log.info("applied %s for %s (generation %s)", ", ".join(m["kind"] for m in manifests), meta["name"],
             meta.get("generation"))
    return None, False


def _fold_own_patches(state: ModelState, pods: Sequence[PodView]) -> list[PodView]:
    """The pods as indexed, with this operator's patches the index has not caught up with yet."""
    out, kept = [], {}
    for pod in pods:
        own = state.patched.get(pod.name)
        if own is not None and own[0] == pod.resource_version:
            out.append(own[1])
            kept[pod.name] = own
        else:
            out.append(pod)
    state.patched = kept
    return sorted(out, key=lambda p: p.name)


def _annotate(ctx: Context, state: ModelState, namespace: str, pods: list[PodView],
              target: str) -> tuple[list[PodView], int]:
    """Patches the annotation onto every pod that lacks the decision (in parallel); returns the
    pods as the patches left them and how many were patched."""
    wanted = decide_targets(pods, target)
    if not wanted:
        return pods, 0
    by_name = {p.name: p for p in pods}

    def patch(name: str) -> PodView | None:
        try:
            obj = ctx.kube.merge_patch(object_path("v1", "pods", namespace, name),
                                       annotation_patch(wanted[name]))
        except ApiError as e:
            if e.status == 404:  # a pod that just went away needs nothing
                return None
            raise
        return pod_view(obj) if obj else dataclasses.replace(by_name[name], target=wanted[name])

    names = list(wanted)
    views = list(ctx.fan_out.map(patch, names)) if len(names) > 1 else [patch(names[0])]
    for name, view in zip(names, views, strict=True):
        if view is None:
            del by_name[name]
        else:
            state.patched[name] = (by_name[name].resource_version, view)
            by_name[name] = view
    return sorted(by_name.values(), key=lambda p: p.name), sum(v is not None for v in views)


def _announce(ctx: Context, state: ModelState, body: Mapping[str, Any], target: str, patched: int,
              total: int) -> None:
    """TargetVersionChanged when the decision differs from the one last acted on (remembered in
    memory, else read from status): a creation announces nothing."""
    before = state.announced if state.announced is not None else (body.get("status") or {}).get(
        "targetVersion")
    state.announced = target
    if before is None or before == target:
        return
    log.info("%s: target version %s -> %s: annotated %d of %d pods", body["metadata"]["name"], before,
             target, patched, total)
    ctx.events.normal(body, "TargetVersionChanged",
                      f"target version {before!r} -> {target!r}; annotated {patched} of {total} pods")


def _record(ctx: Context, state: ModelState, body: Mapping[str, Any], failure: Failure | None) -> None:
    """A failure is announced once (Warning Event), its end once (Recovered)."""
    previous, state.failure = state.failure, failure
    if failure is not None and failure != previous:
        log.warning("%s: %s: %s", body["metadata"]["name"], failure.reason, failure.message)
        ctx.events.warning(body, failure.reason, failure.message)
    elif failure is None and previous is not None:
        ctx.events.normal(body, "Recovered", "children applied; previous failure resolved")


def _last_status(state: ModelState, body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The status to compare with: the model's, unless it predates this operator's last write
    (the watch has not delivered that write yet), then the one written."""
    rv = (body.get("metadata") or {}).get("resourceVersion", "")
    if state.written is not None and state.written[0] == rv:
        return state.written[1]
    return body.get("status") or {}


def _write_status(ctx: Context, state: ModelState, body: Mapping[str, Any], pods: list[PodView],
                  target: str) -> dict[str, Any]:
    """Probes the ready pods, and writes the status they add up to when it changed; posts the
    Events of its transitions."""
    meta, spec = body["metadata"], body.get("spec") or {}
    name, namespace = meta["name"], meta["namespace"]
    credentials = credentials_for(ctx.secrets, name, namespace, spec)
    reports = report_pods(ctx.prober, pods, resources.GRPC_PORT,
                          ProbeError(f"cannot probe: {credentials}")
                          if isinstance(credentials, CredentialError) else credentials)
    old = _last_status(state, body)
    new = next_status(target=target, desired_replicas=int(spec.get("replicas", 1)), reports=reports,
                      failure=state.failure, old=old, now=ctx.wall(), generation=meta.get("generation"),
                      selector=resources.selector_string(name))
    if not differs(old, new):
        return new
    ctx.kube.merge_patch(object_path(f"{GROUP}/{VERSION}", PLURAL, namespace, name), {"status": new},
                         subresource="status")
    state.written = (meta.get("resourceVersion", ""), new)
    if new["activeVersion"] and new["activeVersion"] != old.get("activeVersion"):
        was_active = old.get("activeVersion") or "none"
        ctx.events.normal(body, "ActiveVersionChanged",
                          f"replicas serve {new['activeVersion']!r} (was {was_active!r})")
    degraded = next(c for c in new["conditions"] if c["type"] == "Degraded")
    was: Mapping[str, Any] = next(
        (c for c in old.get("conditions") or [] if c.get("type") == "Degraded"), {})
    if (any(r.last_update_error for r in reports)
            and (was.get("status") != "True" or was.get("reason") != degraded["reason"])):
        ctx.events.warning(body, "UpdateFailed", degraded["message"])
    return new
