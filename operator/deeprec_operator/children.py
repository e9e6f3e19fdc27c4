"""Writing a model's children: the checks made before any write (referenced Secrets exist, no
child name is held by an object the model does not control), the generated token Secret,
server-side apply, and removing a NetworkPolicy the model no longer asks for.

Each step returns a Failure the user has to act on (it becomes Degraded) or None; API errors a
retry may cure propagate to the caller.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

import kopf

from deeprec_operator import resources
from deeprec_operator.events import Events
from deeprec_operator.kube import ApiError, KubeClient, object_path, path_of
from deeprec_operator.spec import ModelSpec
from deeprec_operator.status import Failure

log = logging.getLogger(__name__)


def missing_secrets(kube: KubeClient, model: ModelSpec, unverifiable: set[str]) -> Failure | None:
    """A referenced Secret or key that is absent. Values are never read into anything but this check.

    Without Secret get (the chart's rbac.secretCheck, off by default when every namespace is
    watched) the check cannot be made: a 403 is logged once per namespace (remembered in
    `unverifiable`) and the model goes on, not Degraded; a missing Secret then shows as runtime
    pods that do not start."""
    for ref in model.secret_refs:
        try:
            secret = kube.get(object_path("v1", "secrets", model.namespace, ref.name))
        except ApiError as e:
            if e.status != 403:
                raise
            if model.namespace not in unverifiable:
                unverifiable.add(model.namespace)
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


def ensure_owned_children(kube: KubeClient, events: Events, body: Mapping[str, Any], model: ModelSpec,
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
            existing = kube.get(path_of(manifest))
        except ApiError as e:
            if e.status != 403:
                raise
            return Failure("ChildRejected", f"cannot read {kind} {child}: {e.message}")
        if existing is not None and resources.controller_uid(existing) != uid:
            return Failure("ChildConflict", resources.conflict_message(kind, child, existing))
        if existing is None and kind == "Secret":
            failure = create_token_secret(kube, events, body, model)
            if failure is not None:
                return failure
    return None


def create_token_secret(kube: KubeClient, events: Events, body: Mapping[str, Any],
                        model: ModelSpec) -> Failure | None:
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
    events.normal(body, "TokenSecretCreated",
                  f"generated a bearer token in Secret {name} (key {next(iter(secret['stringData']))})")
    return None


def apply_children(kube: KubeClient, body: Mapping[str, Any],
                   manifests: list[dict[str, Any]]) -> Failure | None:
    """Server-side applies each child, owned by the model, in creation order. A child the API
    server refuses (a field it rejects, a write RBAC forbids) is a Failure naming it; the rest are
    not written after it."""
    kopf.adopt(manifests, owner=dict(body))
    for manifest in manifests:
        try:
            kube.apply(manifest)
        except ApiError as e:
            if e.status in (400, 403, 422):
                return Failure("ChildRejected", f"{manifest['kind']} {body['metadata']['name']}: {e.message}")
            raise
    return None


def remove_disabled_network_policy(kube: KubeClient, model: ModelSpec, body: Mapping[str, Any]) -> None:
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
