"""Pure builders: a ModelSpec in, the manifests of a DeepRecModel's children out.

Nothing here calls the API, so the tests build the expected objects with the same functions and
assert on the fields that matter. One module per concern: `names` (container, paths, labels; the
ports and keys the runtime reads too come from deeprec_api), `config` (model_config.json, the
session group, the ConfigMap), `pod` (container, volumes, pod template, Deployment), `security`
(TLS and token files, the generated token Secret), `network` (Service, NetworkPolicy); this
package re-exports them. Three rules shape the pod template:
- the target-version annotation is NOT part of it: pinning or rolling back patches the pods
  themselves, and a template change would restart every pod;
- the model config's hash IS part of it: a new config only reaches a runtime through a restart;
- TLS material and tokens are Secret volumes (never subPath mounts), so the kubelet's updates of a
  rotated Secret reach the runtime, which re-reads the files, without a restart.
"""

from __future__ import annotations

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
from deeprec_api.resource import CONFIG_HASH_ANNOTATION, MODEL_LABEL
from deeprec_operator.resources.config import (
    config_hash,
    config_map,
    default_session_num,
    gpu_count,
    integer_cpus,
    model_config,
    parse_quantity,
    render_config,
    requested,
    session_group_config,
)
from deeprec_operator.resources.names import (
    AUTH_DIR,
    CLIENT_CA_FILE,
    CONFIG_DIR,
    CONFIG_FILE,
    GPU_RESOURCE,
    MANAGED_BY,
    RUNTIME_CONTAINER,
    TLS_CA_FILE,
    TLS_CERT_FILE,
    TLS_DIR,
    TLS_KEY_FILE,
    TOKENS_FILE,
    common_labels,
    config_map_name,
    selector_labels,
    selector_string,
)
from deeprec_operator.resources.network import network_policy, operator_peer, service
from deeprec_operator.resources.pod import (
    TemplateError,
    container_resources,
    deployment,
    pod_template,
    probe_port,
    runtime_container,
    runtime_env,
    runtime_volumes,
)
from deeprec_operator.resources.security import (
    security_args,
    security_mounts,
    security_volumes,
    token_secret,
)
from deeprec_operator.spec import ModelSpec

__all__ = [
    "ANNOTATIONS_FILE", "AUTH_DIR", "CLIENT_CA_FILE", "CONFIG_DIR", "CONFIG_FILE", "CONFIG_HASH_ANNOTATION",
    "ENV_OSS_ACCESS_ID", "ENV_OSS_ACCESS_KEY", "ENV_OSS_ENDPOINT", "ENV_REDIS_PASSWORD",
    "GPU_RESOURCE", "GRPC_PORT", "HEALTH_PORT", "HTTP_PORT", "MANAGED_BY", "MODEL_LABEL",
    "PODINFO_DIR", "RUNTIME_CONTAINER", "TLS_CA_FILE", "TLS_CERT_FILE", "TLS_DIR", "TLS_KEY_FILE",
    "TOKENS_FILE", "TemplateError", "children", "common_labels", "config_hash", "config_map",
    "config_map_name", "conflict_message", "container_resources", "controller_uid",
    "default_session_num", "deployment", "gpu_count", "integer_cpus", "model_config",
    "network_policy", "operator_peer", "parse_quantity", "pod_template", "probe_port",
    "render_config", "requested", "runtime_container", "runtime_env", "runtime_volumes",
    "security_args", "security_mounts", "security_volumes", "selector_labels", "selector_string",
    "service", "session_group_config", "token_secret",
]


def children(spec: ModelSpec, operator: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every applied child in creation order: the ConfigMap before the pods that mount it, the
    NetworkPolicy before the pods it protects. (The generated token Secret is created, not applied:
    token_secret.)"""
    policy = network_policy(spec, operator)
    return [config_map(spec), *([policy] if policy else []), deployment(spec), service(spec)]


def conflict_message(kind: str, name: str, existing: Mapping[str, Any]) -> str:
    """Why a child was left alone, naming the object and who controls it."""
    owner = next((ref for ref in (existing.get("metadata") or {}).get("ownerReferences") or []
                  if ref.get("controller")), None)
    held = (f"controlled by {owner.get('kind')} {owner.get('name')} (uid {owner.get('uid')})" if owner
            else "not controlled by any owner")
    return (f"{kind} {name} already exists and is {held}, not by this DeepRecModel; it was left "
            f"untouched: delete or rename it, or give the model another name")


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The UID of the object's controlling owner (ownerReferences with controller: true)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None
