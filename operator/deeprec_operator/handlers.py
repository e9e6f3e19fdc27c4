"""kopf wiring: which events reach the controller. Every decision is in sync.py.

- Two indexes: each model's body, and each model's pods (as PodViews), so a sync reads pods
  from memory, never by listing them.
- create / update / resume of a model: sync it now; a Failure becomes kopf's PermanentError
  (a spec to fix: no retry until it changes) or TemporaryError (re-tried every 15 s).
- pod events: queue a sync of the pod's model when the pod is new, gone, or changed readiness,
  address, annotation or deletion; kubelet heartbeats are ignored.
- start-up: settings, the shared Context and the Controller (its resync loop), all in kopf's memo;
  clean-up stops them.
- delete: nothing to do (no finalizer): the children go with their owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from deeprec_api.resource import GROUP, PLURAL, VERSION
from deeprec_operator import resources
from deeprec_operator.controller import Controller
from deeprec_operator.credentials import SecretCache
from deeprec_operator.environment import (
    OPERATOR_NAMESPACE_ENV,
    OPERATOR_POD_LABELS_ENV,
    POLL_SECONDS_ENV,
    RUNTIME_IMAGE_ENV,
)
from deeprec_operator.events import EventRecorder
from deeprec_operator.kube import Kube, load_configuration
from deeprec_operator.pods import PodView, pod_view
from deeprec_operator.probe import Prober
from deeprec_operator.sync import RETRY_SECONDS, Context

#: Delay before kopf re-runs a handler that raised (the client already retried transient API
#: errors for a few seconds); kopf's default of 60 s would leave a model stale for a minute.
ERROR_BACKOFF_SECONDS = 3.0

log = logging.getLogger(__name__)


def parse_labels(text: str) -> dict[str, str]:
    """`k=v,k2=v2` (a label selector of equalities) as a dict."""
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {k.strip(): v.strip() for k, v in pairs if k.strip()}


# --- operator-wide set-up ------------------------------------------------------------------------

@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo,
                    models: kopf.Index[Any, Any], model_pods: kopf.Index[Any, PodView], **_: Any) -> None:
    # Progress and diff-base live in annotations under our own prefix, so status stays typed
    # (the CRD's status schema is strict) and nothing of kopf's leaks into it.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    # Only warnings from handler logs become Events; the operator's own Events go through
    # events.EventRecorder.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 32
    settings.watching.server_timeout = 270
    settings.networking.request_timeout = 30

    kube = getattr(memo, "kube", None) or Kube(load_configuration())
    prober = getattr(memo, "prober", None) or Prober()
    operator_peer = resources.operator_peer(os.environ.get(OPERATOR_NAMESPACE_ENV, ""),
                                            parse_labels(os.environ.get(OPERATOR_POD_LABELS_ENV, "")))
    if operator_peer is None:
        log.info("%s / %s unset (running outside a cluster?): NetworkPolicies admit only the "
                 "clients their models name", OPERATOR_NAMESPACE_ENV, OPERATOR_POD_LABELS_ENV)
    ctx = Context(
        kube=kube, prober=prober, secrets=SecretCache(kube),
        events=EventRecorder(kube, component=settings.posting.reporting_component,
                             instance=settings.posting.reporting_instance),
        default_image=getattr(memo, "default_image", None) or os.environ.get(RUNTIME_IMAGE_ENV, ""),
        operator_peer=operator_peer)
    interval = float(os.environ.get(POLL_SECONDS_ENV, "3"))
    memo.controller = Controller(ctx, models, model_pods, interval=interval)
    memo.controller_task = asyncio.create_task(memo.controller.run(), name="deeprec resync")


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """The same credentials as the JSON client: KUBECONFIG first, else in-cluster."""
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
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = getattr(memo, "controller_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    controller: Controller | None = getattr(memo, "controller", None)
    if controller is not None:
        controller.close()
        controller.ctx.prober.close()


# --- indexes -------------------------------------------------------------------------------------

@kopf.index(GROUP, VERSION, PLURAL)
def models(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """(namespace, name) -> the model as the watch last delivered it (a copy: kopf reuses bodies)."""
    return {(namespace, name): copy.deepcopy(dict(body))}


@kopf.index("", "v1", "pods", labels={resources.MODEL_LABEL: kopf.PRESENT})
def model_pods(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, PodView]:
    """(namespace, model name) -> one PodView per pod of the model."""
    return {(namespace, labels[resources.MODEL_LABEL]): pod_view(body)}


# --- DeepRecModel handlers -----------------------------------------------------------------------

@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=ERROR_BACKOFF_SECONDS)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=ERROR_BACKOFF_SECONDS)
@kopf.on.update(GROUP, VERSION, PLURAL, backoff=ERROR_BACKOFF_SECONDS)
def reconcile(body: kopf.Body, name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    controller: Controller = memo.controller
    result = controller.sync_now((namespace, name), dict(body))
    if result.failure is None:
        return
    if result.permanent:
        raise kopf.PermanentError(result.failure.message)
    # The Secret may be created later, the foreign child removed: kopf tries again.
    raise kopf.TemporaryError(result.failure.message, delay=RETRY_SECONDS)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def deleted(name: str, namespace: str, logger: logging.Logger, **_: Any) -> None:
    # No finalizer: the garbage collector removes the owned children even when the operator is down.
    logger.info("DeepRecModel %s/%s deleted; its children go with it", namespace, name)


# --- pods ----------------------------------------------------------------------------------------

@kopf.on.event("", "v1", "pods", labels={resources.MODEL_LABEL: kopf.PRESENT})
async def pod_event(event: Mapping[str, Any], body: kopf.Body, name: str, namespace: str,
                    labels: Mapping[str, str], memo: kopf.Memo, **_: Any) -> None:
    controller: Controller = memo.controller
    gone = event.get("type") == "DELETED"
    controller.pod_event((namespace, labels[resources.MODEL_LABEL]), name, None if gone else pod_view(body))
