"""The runtime pod: its container (command line, probes, resources, hardening), its volumes, the
pod template (the runtime alone or as a sidecar in the user's template) and the Deployment."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

from deeprec_api.pod import (
    ANNOTATIONS_FILE,
    ENV_OSS_ACCESS_ID,
    ENV_OSS_ACCESS_KEY,
    ENV_OSS_ENDPOINT,
    ENV_REDIS_PASSWORD,
    GRPC_PORT,
    HEALTH_PORT,
    HTTP_PORT,
    PODINFO_DIR,
)
from deeprec_api.resource import CONFIG_HASH_ANNOTATION
from deeprec_operator.resources.config import config_hash, integer_cpus, requested
from deeprec_operator.resources.names import (
    CONFIG_DIR,
    CONFIG_FILE,
    RUNTIME_CONTAINER,
    common_labels,
    config_map_name,
    selector_labels,
)
from deeprec_operator.resources.security import security_args, security_mounts, security_volumes
from deeprec_operator.spec import ModelSpec, SecretKeyRef


def container_resources(resources: Mapping[str, Any]) -> dict[str, Any]:
    """Requests and limits, made equal for cpu and memory when whole cores are asked for.

    Equal requests and limits give the pod the Guaranteed QoS class, the condition for the
    kubelet's static CPU manager to hand it exclusive cores that the session group can pin.
    """
    requests = dict(resources.get("requests") or {})
    limits = dict(resources.get("limits") or {})
    if integer_cpus(resources) is not None and requested(resources, "memory") is not None:
        for name in ("cpu", "memory"):
            value = requested(resources, name)
            requests[name] = limits[name] = value
    for name, value in list(limits.items()):
        if name not in ("cpu", "memory"):
            # Extended resources (GPUs) must have requests == limits.
            requests[name] = value
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = {k: str(v) for k, v in requests.items()}
    if limits:
        out["limits"] = {k: str(v) for k, v in limits.items()}
    return out


def _secret_env(var: str, ref: SecretKeyRef | None) -> list[dict[str, Any]]:
    if ref is None:
        return []
    key_ref: dict[str, Any] = {"name": ref.name, "key": ref.key}
    if ref.optional:
        key_ref["optional"] = True
    return [{"name": var, "valueFrom": {"secretKeyRef": key_ref}}]


def runtime_env(spec: ModelSpec) -> list[dict[str, Any]]:
    return [
        *_secret_env(ENV_OSS_ACCESS_ID, spec.storage.access_id),
        *_secret_env(ENV_OSS_ACCESS_KEY, spec.storage.access_key),
        *_secret_env(ENV_OSS_ENDPOINT, spec.storage.endpoint),
        *_secret_env(ENV_REDIS_PASSWORD, spec.feature_store.password),
    ]


def probe_port(spec: ModelSpec) -> int:
    """Where the kubelet's gRPC probes ask the runtime whether it serves.

    Plaintext: the gRPC port itself (grpc.health.v1.Health stays open without credentials).
    TLS or mutual TLS: the kubelet's gRPC probe speaks plaintext only (KEP-4939 proposes TLS) and
    under mutual TLS the pod holds no client certificate, so the runtime answers health, and
    nothing else, in plaintext on HEALTH_PORT (`--health-port`): same meaning (SERVING once a
    version is loaded and warmed up, NOT_SERVING from SIGTERM), no model data.
    """
    return HEALTH_PORT if spec.security.tls is not None else GRPC_PORT


def _probe(spec: ModelSpec, period: int, failures: int) -> dict[str, Any]:
    return {"grpc": {"port": probe_port(spec)}, "periodSeconds": period,
            "failureThreshold": failures, "timeoutSeconds": 2}


def runtime_container(spec: ModelSpec) -> dict[str, Any]:
    init_minutes = int(spec.model_config.get("init_timeout_minutes", 1) or 1)
    mounts = [
        {"name": "model-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "podinfo", "mountPath": PODINFO_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},  # nosec B108  # the pod's own emptyDir mount, not a temp file here
    ]
    ev_path = spec.model_config.get("ev_storage_path")
    if ev_path and int(spec.model_config.get("ev_storage_type", 0) or 0) == 12:
        mounts.append({"name": "ev-storage", "mountPath": str(ev_path)})
    claim = spec.storage.volume_claim
    if claim:
        mounts.append({"name": "models", "mountPath": claim.mount_path, "readOnly": claim.read_only})
    mounts += security_mounts(spec)
    container: dict[str, Any] = {
        "name": RUNTIME_CONTAINER,
        "image": spec.image,
        "command": ["deeprec-runtime"],
        "args": [
            "serve",
            "--config", f"{CONFIG_DIR}/{CONFIG_FILE}",
            "--grpc-port", str(GRPC_PORT),
            "--http-port", str(HTTP_PORT),
            "--annotations-file", ANNOTATIONS_FILE,
            # The default server needs no flag: the contract's command line stays as it was.
            *(["--grpc-server", spec.service.grpc_server]
              if spec.service.grpc_server != "auto" else []),
            *([] if spec.service.fast_predict else ["--fast-predict", "off"]),
            *security_args(spec),
        ],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            # Not in the Service: only the kubelet's probes use it.
            *([{"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}]
              if spec.security.tls is not None else []),
        ],
        "env": runtime_env(spec),
        "resources": container_resources(spec.resources),
        # The first version may take init_timeout_minutes to load; liveness waits for it.
        "startupProbe": _probe(spec, 5, init_minutes * 12 + 6),
        "readinessProbe": _probe(spec, 2, 2),
        "livenessProbe": _probe(spec, 10, 3),
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if not container["env"]:
        del container["env"]
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    return container


def runtime_volumes(spec: ModelSpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "model-config", "configMap": {"name": config_map_name(spec.name)}},
        {
            "name": "podinfo",
            "downwardAPI": {
                "items": [{"path": os.path.basename(ANNOTATIONS_FILE),
                           "fieldRef": {"fieldPath": "metadata.annotations"}}]
            },
        },
        {"name": "tmp", "emptyDir": {}},
    ]
    ev_path = spec.model_config.get("ev_storage_path")
    if ev_path and int(spec.model_config.get("ev_storage_type", 0) or 0) == 12:
        volumes.append({"name": "ev-storage", "emptyDir": {}})
    claim = spec.storage.volume_claim
    if claim:
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": claim.claim_name,
                                                                    "readOnly": claim.read_only}})
    return volumes + security_volumes(spec)


class TemplateError(ValueError):
    """The user's podTemplate collides with what the runtime needs (a name taken twice)."""


def pod_template(spec: ModelSpec) -> dict[str, Any]:
    """The runtime alone, or the user's podTemplate with the runtime joined as a sidecar."""
    user = copy.deepcopy(dict(spec.pod_template or {}))
    meta = dict(user.get("metadata") or {})
    pod_spec = dict(user.get("spec") or {})
    labels = {**dict(meta.get("labels") or {}), **common_labels(spec)}
    annotations = {**dict(meta.get("annotations") or {}), CONFIG_HASH_ANNOTATION: config_hash(spec)}

    containers = list(pod_spec.get("containers") or [])
    if any(c.get("name") == RUNTIME_CONTAINER for c in containers):
        raise TemplateError(f"spec.podTemplate.spec.containers: the name {RUNTIME_CONTAINER!r} is reserved")
    containers.append(runtime_container(spec))
    pod_spec["containers"] = containers

    volumes = list(pod_spec.get("volumes") or [])
    taken = {v.get("name") for v in volumes}
    for volume in runtime_volumes(spec):
        if volume["name"] in taken:
            raise TemplateError(f"spec.podTemplate.spec.volumes: the name {volume['name']!r} is reserved")
        volumes.append(volume)
    pod_spec["volumes"] = volumes

    # The runtime learns its target version from the Downward API, so it needs no API token.
    pod_spec.setdefault("automountServiceAccountToken", False)
    pod_spec.setdefault("enableServiceLinks", False)
    security = dict(pod_spec.get("securityContext") or {})
    security.setdefault("runAsNonRoot", True)
    security.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    pod_spec["securityContext"] = security
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}


def deployment(spec: ModelSpec) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": common_labels(spec)},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(spec.name)},
            # Availability first: a new pod must be Ready (its model loaded) before an old one goes.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": pod_template(spec),
        },
    }
