"""kopf handlers: thin glue between events and the pure modules.

- create / update / resume: apply the children (server-side apply), annotate the pods, refresh status.
- spec.version field: annotate every pod at once (the rollback path), with an Event.
- pod events: a new pod (or one whose annotation drifted) gets the model's target at once.
- timer: ask every runtime what it serves and fold it into status; re-annotates, and reconciles a
  generation whose event kopf lost, as a safety net.
- delete: children go with the owner (ownerReferences); the handler only records it.
Spec errors become Degraded and wait for the next spec change; a missing Secret, a child of the
model's name that belongs to someone else (ChildConflict: left untouched) or a forbidden Secret
write are Degraded and retried.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import secrets
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from deeprec_operator import GROUP, PLURAL, VERSION, faults, resources
from deeprec_operator.credentials import (
    PLAINTEXT,
    CredentialError,
    ProbeCredentials,
    SecretCache,
    probe_credentials,
)
from deeprec_operator.kube import ApiError, Kube, collection_path, object_path, path_of
from deeprec_operator.probe import ProbeError, Prober, pod_address
from deeprec_operator.spec import ModelSpec, SpecError, parse, parse_security
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
#: Where the operator's own pods run (the chart sets both): the NetworkPolicies it writes admit
#: them, so the status probe still reaches the runtimes.
OPERATOR_NAMESPACE_ENV = "DEEPREC_OPERATOR_NAMESPACE"
OPERATOR_POD_LABELS_ENV = "DEEPREC_OPERATOR_POD_LABELS"

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
    if getattr(memo, "secrets", None) is None:
        memo.secrets = SecretCache(memo.kube)
    if getattr(memo, "operator_peer", None) is None:
        labels = parse_labels(os.environ.get(OPERATOR_POD_LABELS_ENV, ""))
        memo.operator_peer = resources.operator_peer(os.environ.get(OPERATOR_NAMESPACE_ENV, ""), labels)
        if memo.operator_peer is None:
            log.info("%s / %s unset (running outside a cluster?): NetworkPolicies admit only the "
                     "clients their models name", OPERATOR_NAMESPACE_ENV, OPERATOR_POD_LABELS_ENV)


def parse_labels(text: str) -> dict[str, str]:
    """`k=v,k2=v2` (a label selector of equalities) as a dict."""
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {k.strip(): v.strip() for k, v in pairs if k.strip()}


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


def probe_credentials_of(memo: kopf.Memo, namespace: str, name: str,
                         spec: Mapping[str, Any]) -> ProbeCredentials | ProbeError:
    """What the status probe needs for this model's runtimes (TLS trust, client certificate,
    token), or the reason it cannot have it (a missing Secret, a forbidden get)."""
    try:
        security = parse_security(name, namespace, spec.get("security"))
    except SpecError:
        return PLAINTEXT  # Degraded by reconcile already; no pod runs with this spec
    if security.tls is None and security.token is None:
        return PLAINTEXT
    cache = getattr(memo, "secrets", None) or SecretCache(memo.kube)
    memo.secrets = cache
    try:
        return probe_credentials(security, cache.reader(namespace))
    except CredentialError as e:
        return ProbeError(f"cannot probe: {e}")
    except ApiError as e:
        return ProbeError(f"cannot probe: reading a Secret failed: {e.status} {e.reason}")


def report_pods(prober: Prober, pods: list[dict[str, Any]],
                credentials: ProbeCredentials | ProbeError = PLAINTEXT) -> list[PodReport]:
    ready = [p for p in pods if _pod_ready(p)]
    addresses = [pod_address(p, resources.GRPC_PORT) for p in ready]
    answers: list[Any] = ([credentials] * len(ready) if isinstance(credentials, ProbeError)
                          else prober.info_many(addresses, credentials))
    by_name = {p["metadata"]["name"]: a for p, a in zip(ready, answers, strict=True)}
    prober.sweep()
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
    reports = report_pods(memo.prober, pods, probe_credentials_of(memo, namespace, name, spec))
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
        manifests = resources.children(model, getattr(memo, "operator_peer", None))
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
    if failure is None:
        failure = ensure_owned_children(kube, memo, body, model, manifests)
    if failure is not None:
        _record_failure(memo, body, failure)
        # The Secret may be created later, the foreign child removed: retry, without ever
        # creating pods that cannot start or taking over an object that is not ours.
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
    remove_disabled_network_policy(kube, model, body)
    pods = _list_pods(kube, namespace, name)
    annotate_pods(kube, namespace, pods, target_version(model.version))
    if getattr(memo, "failure", None) is not None:
        kopf.event(
            body, type="Normal", reason="Recovered", message="children applied; previous failure resolved"
        )
    memo.failure = None
    memo.observed_generation = meta.get("generation")
    logger.info("applied %s for %s (generation %s)", ", ".join(m["kind"] for m in manifests), name,
                meta.get("generation"))
    refresh_status(memo, body, pods=_list_pods(kube, namespace, name))


def _get_child(kube: Kube, manifest: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return kube.get(path_of(manifest))


def ensure_owned_children(kube: Kube, memo: kopf.Memo, body: Mapping[str, Any], model: ModelSpec,
                          manifests: list[dict[str, Any]]) -> Failure | None:
    """Refuses to touch a child name held by an object this model does not control, and creates
    the model's token Secret when it asks for a generated one.

    Server-side apply with force would take over any object of the child's name (a user's
    ConfigMap, another tool's Service); checking the controller UID first leaves it as it is.
    Runs before any write, so a conflict leaves every child untouched.
    """
    uid = body["metadata"]["uid"]
    token = model.security.token
    wanted = list(manifests)
    if token is not None and token.generated:
        wanted.append(resources.token_secret(model, ""))
    for manifest in wanted:
        kind, child = manifest["kind"], manifest["metadata"]["name"]
        try:
            existing = _get_child(kube, manifest)
        except ApiError as e:
            if e.status != 403:
                raise
            return Failure("ChildRejected", f"cannot read {kind} {child}: {e.message}")
        if existing is not None and resources.controller_uid(existing) != uid:
            return Failure("ChildConflict", resources.conflict_message(kind, child, existing))
        if existing is None and kind == "Secret":
            failure = create_token_secret(kube, body, model)
            if failure is not None:
                return failure
    return None


def create_token_secret(kube: Kube, body: Mapping[str, Any], model: ModelSpec) -> Failure | None:
    """Creates the model's token Secret, owned by the model. The token exists only in it: it is
    not logged, and not put in any Event, status or ConfigMap."""
    secret = resources.token_secret(model, secrets.token_urlsafe(32))
    kopf.adopt(secret, owner=dict(body))
    name = secret["metadata"]["name"]
    try:
        kube.create(secret)
    except ApiError as e:
        if e.status == 409:
            return None  # created meanwhile (a retried POST that had landed): the next pass checks it
        if e.status == 403:
            return Failure("SecretForbidden",
                           f"cannot create Secret {name} for the generated bearer token: {e.message}; "
                           "grant the operator create on secrets in this namespace (chart: "
                           "rbac.tokenSecrets) or set spec.security.authentication.bearerToken.secretName")
        raise
    log.info("created Secret %s/%s with a generated bearer token for %s", model.namespace, name, model.name)
    kopf.event(dict(body), type="Normal", reason="TokenSecretCreated",
               message=f"generated a bearer token in Secret {name} (key {next(iter(secret['stringData']))})")
    return None


def remove_disabled_network_policy(kube: Kube, model: ModelSpec, body: Mapping[str, Any]) -> None:
    """A NetworkPolicy this model made and no longer asks for is deleted (only ours, by UID):
    left in place it would keep restricting ingress after the user turned it off."""
    if model.security.network_policy is not None:
        return
    path = object_path("networking.k8s.io/v1", "networkpolicies", model.namespace, model.name)
    try:
        existing = kube.get(path)
        if existing is not None and resources.controller_uid(existing) == body["metadata"]["uid"]:
            kube.delete(path, uid=existing["metadata"]["uid"])
            log.info("deleted NetworkPolicy %s/%s: the model no longer asks for one", model.namespace,
                     model.name)
    except ApiError as e:
        if e.status not in (403, 404, 409):  # not granted (older chart), gone, or replaced meanwhile
            raise


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
