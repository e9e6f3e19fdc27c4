"""kopf handlers: thin glue between events and the pure modules.

- create / update / resume: apply the children (server-side apply), annotate the pods, refresh status.
- spec.version field: annotate every pod at once (the rollback path), with an Event.
- pod events: a new pod (or one whose annotation drifted) gets the model's target at once.
- timer: ask every runtime what it serves and fold it into status; re-annotates, and reconciles a
  generation whose event kopf lost, as a safety net.
- delete: children go with the owner (ownerReferences); the handler only records it.
Spec errors become Degraded and wait for the next spec change; a missing Secret is retried.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from deeprec_operator import GROUP, PLURAL, VERSION, faults, resources
from deeprec_operator.kube import ApiError, Kube, collection_path, object_path
from deeprec_operator.probe import ProbeError, Prober, pod_address
from deeprec_operator.spec import ModelSpec, SpecError, parse
from deeprec_operator.status import Failure, PodReport, aggregate, stamp_conditions
from deeprec_operator.versions import annotation_patch, desired_targets, pod_target, target_version

TIMER_INTERVAL = float(os.environ.get("DEEPREC_OPERATOR_POLL_SECONDS", "3"))
SECRET_RETRY_SECONDS = 15
#: Delay before kopf re-runs a handler that raised (the client already retried transient API
#: errors for a few seconds). kopf's default is 60 s, which left a model unreconciled, and its
#: status stale, for a minute after an API server restart.
RETRY_SECONDS = 3.0
#: A generation left unreconciled this long is reconciled by the poll (see lost_change).
LOST_CHANGE_SECONDS = max(5.0, 3 * TIMER_INTERVAL)
RUNTIME_IMAGE_ENV = "DEEPREC_RUNTIME_IMAGE"

log = logging.getLogger(__name__)
_PATCH_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="annotate")


# --- operator-wide set-up ------------------------------------------------------------------------

@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Progress and diff-base live in annotations under our own prefix, so status stays typed
    # (the CRD's status schema is strict) and nothing of kopf's leaks into it.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    # Only warnings from handler logs become Events; Normal Events are posted explicitly
    # (kopf.event), since kopf.info() is filtered by this same level.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 32
    settings.watching.server_timeout = 270
    settings.networking.request_timeout = 30
    if getattr(memo, "kube", None) is None:
        from deeprec_operator.kube import load_configuration
        memo.kube = Kube(load_configuration())
    if getattr(memo, "prober", None) is None:
        memo.prober = Prober()
    if getattr(memo, "default_image", None) is None:
        memo.default_image = os.environ.get(RUNTIME_IMAGE_ENV, "")


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """The same credentials as the JSON client: KUBECONFIG first, else in-cluster."""
    from deeprec_operator.kube import load_configuration

    cfg = load_configuration()
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (
        (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    )
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        trust_env=settings.networking.trust_env,
    )


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    prober = getattr(memo, "prober", None)
    if prober is not None:
        prober.close()


# --- helpers (API calls only; decisions are in the pure modules) -------------------------------

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _model_path(namespace: str, name: str) -> str:
    return object_path(f"{GROUP}/{VERSION}", PLURAL, namespace, name)


def _list_pods(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    return kube.list(collection_path("v1", "pods", namespace), label_selector=resources.selector_string(name))


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def annotate_pods(kube: Kube, namespace: str, pods: list[dict[str, Any]], target: str) -> int:
    """Writes the target onto every pod that lacks it, in parallel; returns how many were patched.

    A rollback is only as fast as its slowest pod, so the patches go out together.
    """
    wanted = desired_targets(pods, target)

    def patch(pod_name: str) -> int:
        faults.reached("pod-annotate")
        try:
            kube.merge_patch(
                object_path("v1", "pods", namespace, pod_name), annotation_patch(wanted[pod_name])
            )
            return 1
        except ApiError as e:
            if e.status == 404:  # a pod that just went away needs nothing
                return 0
            raise

    if len(wanted) <= 1:
        return sum(patch(name) for name in wanted)
    return sum(_PATCH_POOL.map(patch, wanted))


#: Namespaces where Secret get was refused (logged once each; see missing_secrets).
_SECRETS_FORBIDDEN: set[str] = set()


def missing_secrets(kube: Kube, model: ModelSpec) -> Failure | None:
    """A referenced Secret or key that is absent. Values are never read into anything but this check.

    Without Secret get (the chart's rbac.secretCheck, off by default when every namespace is
    watched) the check cannot be made: a 403 is logged once per namespace and the model goes on,
    not Degraded; a missing Secret then shows as runtime pods that do not start."""
    for ref in model.secret_refs:
        try:
            secret = kube.get(object_path("v1", "secrets", model.namespace, ref.name))
        except ApiError as e:
            if e.status != 403:
                raise
            if model.namespace not in _SECRETS_FORBIDDEN:
                _SECRETS_FORBIDDEN.add(model.namespace)
                log.warning("cannot verify Secrets in namespace %r (get forbidden; the chart grants "
                            "it with rbac.secretCheck=true): continuing without the check",
                            model.namespace)
            return None
        if secret is None:
            if ref.optional:
                continue
            return Failure(
                "SecretNotFound", f"Secret {ref.name!r} not found in namespace {model.namespace!r}"
            )
        keys = set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())
        if ref.key not in keys and not ref.optional:
            return Failure("SecretKeyNotFound", f"Secret {ref.name!r} has no key {ref.key!r}")
    return None


def report_pods(prober: Prober, pods: list[dict[str, Any]]) -> list[PodReport]:
    ready = [p for p in pods if _pod_ready(p)]
    answers = prober.info_many([pod_address(p, resources.GRPC_PORT) for p in ready])
    by_name = {p["metadata"]["name"]: a for p, a in zip(ready, answers, strict=True)}
    prober.forget_except({a for a in (pod_address(p, resources.GRPC_PORT) for p in ready) if a})
    reports = []
    for pod in pods:
        name = pod["metadata"]["name"]
        answer = by_name.get(name)
        base = {"name": name, "ready": name in by_name, "annotated_target": pod_target(pod)}
        if answer is None:
            reports.append(PodReport(**base))
        elif isinstance(answer, ProbeError):
            reports.append(PodReport(**base, reachable=False, probe_error=str(answer)))
        else:
            reports.append(PodReport(**base, reachable=True, served_version=answer.version,
                                     runtime_target=answer.target_version,
                                     last_update_error=answer.last_update_error))
    return reports


def refresh_status(memo: kopf.Memo, body: Mapping[str, Any], *, pods: list[dict[str, Any]] | None = None,
                   ) -> dict[str, Any]:
    """Recomputes status from the pods and writes it when it changed; posts Events on transitions."""
    kube: Kube = memo.kube
    meta, spec = body["metadata"], body.get("spec") or {}
    namespace, name = meta["namespace"], meta["name"]
    target = target_version(spec.get("version"))
    if pods is None:
        pods = _list_pods(kube, namespace, name)
    reports = report_pods(memo.prober, pods)
    old = dict(body.get("status") or {})
    generation = getattr(memo, "observed_generation", None) or old.get("observedGeneration")
    new = aggregate(target=target, desired_replicas=int(spec.get("replicas", 1)), reports=reports,
                    failure=getattr(memo, "failure", None))
    new["conditions"] = stamp_conditions(new["conditions"], old.get("conditions"), _now(), generation)
    new["selector"] = resources.selector_string(name)
    if generation is not None:
        new["observedGeneration"] = generation
    if any(old.get(k) != v for k, v in new.items()):
        faults.reached("status-write")
        kube.merge_patch(_model_path(namespace, name), {"status": new}, subresource="status")
        faults.reached("status-written")
        if new["activeVersion"] and new["activeVersion"] != old.get("activeVersion"):
            kopf.event(
                dict(body),
                type="Normal",
                reason="ActiveVersionChanged",
                message=f"replicas serve {new['activeVersion']!r} "
                f"(was {old.get('activeVersion') or 'none'!r})",
            )
        errors = [r for r in reports if r.last_update_error]
        degraded = next(c for c in new["conditions"] if c["type"] == "Degraded")
        was: dict[str, Any] = next(
            (c for c in old.get("conditions") or [] if c.get("type") == "Degraded"), {})
        if errors and (was.get("status") != "True" or was.get("reason") != degraded["reason"]):
            kopf.warn(dict(body), reason="UpdateFailed", message=degraded["message"])
    return new


def _record_failure(memo: kopf.Memo, body: Mapping[str, Any], failure: Failure) -> None:
    previous = getattr(memo, "failure", None)
    memo.failure = failure
    memo.observed_generation = body["metadata"].get("generation")
    if previous != failure:
        kopf.warn(dict(body), reason=failure.reason, message=failure.message)
    try:
        refresh_status(memo, body)
    except ApiError as e:
        log.warning("could not write status of %s: %s", body["metadata"]["name"], e)


# --- DeepRecModel handlers -----------------------------------------------------------------------

@kopf.index(GROUP, VERSION, PLURAL)
def model_targets(namespace: str, name: str, spec: Mapping[str, Any], **_: Any) -> dict[Any, str]:
    """(namespace, name) -> target version, so pod events decide without an API call."""
    return {(namespace, name): target_version(spec.get("version"))}


@kopf.on.field(GROUP, VERSION, PLURAL, field="spec.version", backoff=RETRY_SECONDS)
def version_changed(old: Any, new: Any, body: kopf.Body, namespace: str, name: str, memo: kopf.Memo,
                    logger: logging.Logger, **_: Any) -> None:
    if old is None and body.get("status") is None:
        return  # creation: reconcile annotates the pods it creates
    before, target = target_version(old), target_version(new)
    pods = _list_pods(memo.kube, namespace, name)
    patched = annotate_pods(memo.kube, namespace, pods, target)
    logger.info("target version %s -> %s: annotated %d of %d pods", before, target, patched, len(pods))
    kopf.event(body, type="Normal", reason="TargetVersionChanged",
              message=f"target version {before!r} -> {target!r}; annotated {patched} of {len(pods)} pods")


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=RETRY_SECONDS)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=RETRY_SECONDS)
@kopf.on.update(GROUP, VERSION, PLURAL, backoff=RETRY_SECONDS)
def reconcile(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, name: str, namespace: str,
              memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    kube: Kube = memo.kube
    try:
        model = parse(name, namespace, spec, default_image=memo.default_image, labels=meta.labels)
        manifests = resources.children(model)
    except SpecError as e:
        _record_failure(memo, body, Failure(e.reason, e.message))
        raise kopf.PermanentError(e.message) from None
    except resources.TemplateError as e:
        _record_failure(memo, body, Failure("InvalidPodTemplate", str(e)))
        raise kopf.PermanentError(str(e)) from None
    except ValueError as e:  # a malformed resource quantity
        _record_failure(memo, body, Failure("InvalidSpec", str(e)))
        raise kopf.PermanentError(str(e)) from None

    failure = missing_secrets(kube, model)
    if failure is not None:
        _record_failure(memo, body, failure)
        # The Secret may be created later: retry, without ever creating pods that cannot start.
        raise kopf.TemporaryError(failure.message, delay=SECRET_RETRY_SECONDS)

    kopf.adopt(manifests, owner=body)
    for manifest in manifests:
        try:
            kube.apply(manifest)
        except ApiError as e:
            if e.status in (400, 403, 422):
                _record_failure(
                    memo, body, Failure("ChildRejected", f"{manifest['kind']} {name}: {e.message}")
                )
                raise kopf.TemporaryError(e.message, delay=SECRET_RETRY_SECONDS) from None
            raise
        faults.reached(f"{manifest['kind'].lower()}-applied")
    pods = _list_pods(kube, namespace, name)
    annotate_pods(kube, namespace, pods, target_version(model.version))
    if getattr(memo, "failure", None) is not None:
        kopf.event(
            body, type="Normal", reason="Recovered", message="children applied; previous failure resolved"
        )
    memo.failure = None
    memo.observed_generation = meta.get("generation")
    logger.info(
        "applied ConfigMap, Deployment and Service for %s (generation %s)", name, meta.get("generation")
    )
    refresh_status(memo, body, pods=_list_pods(kube, namespace, name))


def lost_change(memo: kopf.Memo, body: Mapping[str, Any], now: float) -> bool:
    """True once a generation has gone unreconciled, with no failure recorded, for LOST_CHANGE_SECONDS.

    kopf handles each watch event once: when its own bookkeeping patch fails (a 409 from the API
    server), it drops the event and skips the ones that arrive while it backs off, so a creation or
    a spec change can go unhandled until the next change. The poll sees every model every few
    seconds and compares generations, which makes reconciling level-based whatever happened to
    the events.
    """
    generation = body["metadata"].get("generation")
    observed = getattr(memo, "observed_generation", None) or (body.get("status") or {}).get(
        "observedGeneration"
    )
    if getattr(memo, "failure", None) is not None or observed == generation:
        memo.unreconciled_since = None
        return False
    since = getattr(memo, "unreconciled_since", None)
    if since is None:
        memo.unreconciled_since = now
        return False
    return now - since >= LOST_CHANGE_SECONDS


@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_INTERVAL, initial_delay=1.0, backoff=TIMER_INTERVAL)
def poll(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, name: str, namespace: str, memo: kopf.Memo,
         logger: logging.Logger, **_: Any) -> None:
    kube: Kube = memo.kube
    if lost_change(memo, body, time.monotonic()):
        logger.info("generation %s was never reconciled; reconciling from the poll", meta.get("generation"))
        memo.unreconciled_since = None
        try:
            reconcile(
                body=body, spec=spec, meta=meta, name=name, namespace=namespace, memo=memo, logger=logger
            )
        except (kopf.PermanentError, kopf.TemporaryError):
            pass  # already recorded as Degraded; an exception here would stop this timer
        return
    pods = _list_pods(kube, namespace, name)
    target = target_version(spec.get("version"))
    if getattr(memo, "failure", None) is None and annotate_pods(kube, namespace, pods, target):
        pods = _list_pods(kube, namespace, name)
    refresh_status(memo, body, pods=pods)


def _poll_needs_no_finalizer(registry: Any) -> None:
    """Registers the poll without the finalizer kopf gives every object that has a timer.

    kopf adds that finalizer so it can stop a timer before its object goes. The poll holds
    nothing to clean up, and the finalizer costs: a model deleted while the operator is down
    stays Terminating (with its children, and its namespace if that is being deleted) until the
    operator is back, and a finalizer-removal patch lost to a 409 leaves it Terminating for good.
    Without it, children go with the garbage collector, as the delete handler below says; kopf
    removes its finalizer from models that still carry one. kopf has no option for this (timers
    hard-code requires_finalizer=True in kopf 1.45), hence the edit of the registration.
    """
    spawning = registry._spawning
    spawning._handlers = [dataclasses.replace(h, requires_finalizer=False) if h.fn is poll else h
                          for h in spawning._handlers]


_poll_needs_no_finalizer(kopf.get_default_registry())


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def deleted(name: str, namespace: str, logger: logging.Logger, **_: Any) -> None:
    # No finalizer: the garbage collector removes the owned children even when the operator is down.
    logger.info("DeepRecModel %s/%s deleted; its children go with it", namespace, name)


# --- pods ----------------------------------------------------------------------------------------

@kopf.on.event("", "v1", "pods", labels={resources.MODEL_LABEL: kopf.PRESENT})
def pod_event(event: Mapping[str, Any], body: kopf.Body, namespace: str, labels: Mapping[str, str],
              model_targets: kopf.Index[Any, str], memo: kopf.Memo, **_: Any) -> None:
    if event.get("type") == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        return
    store = model_targets.get((namespace, labels[resources.MODEL_LABEL]))
    if not store:
        return
    target = next(iter(store))
    if pod_target(body) != target:
        faults.reached("pod-annotate")
        try:
            memo.kube.merge_patch(object_path("v1", "pods", namespace, body["metadata"]["name"]),
                                  annotation_patch(target))
        except ApiError as e:
            if e.status != 404:
                raise
