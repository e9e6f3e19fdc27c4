"""Pure builders: a ModelSpec in, the ConfigMap / Deployment / Service manifests out.

Nothing here calls the API, so the tests build the expected objects with the same functions and
assert on the fields that matter. Three rules shape the pod template:
- the target-version annotation is NOT part of it: pinning or rolling back patches the pods
  themselves, and a template change would restart every pod;
- the model config's hash IS part of it: a new config only reaches a runtime through a restart;
- TLS material and tokens are Secret volumes (never subPath mounts), so the kubelet's updates of a
  rotated Secret reach the runtime, which re-reads the files, without a restart.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from deeprec_operator.spec import TOKEN_KEY, ModelSpec, SecretKeyRef, token_secret_name

RUNTIME_CONTAINER = "deeprec-runtime"
GRPC_PORT = 8500
HTTP_PORT = 8501
#: Plaintext grpc.health.v1.Health only, for kubelet probes of TLS models (runtime --health-port).
HEALTH_PORT = 8502
CONFIG_FILE = "model_config.json"
CONFIG_DIR = "/etc/deeprec"
PODINFO_DIR = "/etc/podinfo"
MODEL_LABEL = "serving.deeprec.io/model"
CONFIG_HASH_ANNOTATION = "serving.deeprec.io/config-hash"
MANAGED_BY = "deeprec-operator"

#: Credentials reach the runtime only as environment variables (see runtime/deeprec_runtime/config.py).
ENV_OSS_ACCESS_ID = "OSS_ACCESS_ID"
ENV_OSS_ACCESS_KEY = "OSS_ACCESS_KEY"
ENV_OSS_ENDPOINT = "OSS_ENDPOINT"
ENV_REDIS_PASSWORD = "REDIS_PASSWORD"  # nosec B105  # environment variable name; the value comes from a Secret

GPU_RESOURCE = "nvidia.com/gpu"

#: Where the runtime finds its TLS files (one projected volume: certificate, key, the CA that
#: signed them for the in-pod health check, and the client CA under mutual TLS) and its tokens.
#: Top-level folders: a mount point cannot be made inside the read-only ConfigMap volume.
TLS_DIR = "/etc/deeprec-tls"
AUTH_DIR = "/etc/deeprec-auth"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"
TLS_CA_FILE = "ca.crt"
CLIENT_CA_FILE = "client-ca.crt"
TOKENS_FILE = "tokens"


def config_map_name(name: str) -> str:
    return f"{name}-config"


def selector_labels(name: str) -> dict[str, str]:
    """The Deployment selector: immutable once created, so it holds only the model's name."""
    return {MODEL_LABEL: name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def common_labels(spec: ModelSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "deeprec-runtime",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **selector_labels(spec.name),
    }


# --- quantities and the session group ------------------------------------------------------------

def parse_quantity(value: Any) -> Decimal:
    """A Kubernetes quantity ('4', '500m', '2Gi', 3) as a Decimal in base units."""
    text = str(value).strip()
    suffixes = {
        "m": Decimal("0.001"), "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9),
        "T": Decimal(10**12), "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30),
        "Ti": Decimal(2**40),
    }
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            try:
                return Decimal(text[: -len(suffix)]) * suffixes[suffix]
            except InvalidOperation:
                break
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from None


def requested(resources: Mapping[str, Any], name: str) -> Any:
    """A resource's request, falling back to its limit as Kubernetes does."""
    return (resources.get("requests") or {}).get(name, (resources.get("limits") or {}).get(name))


def integer_cpus(resources: Mapping[str, Any]) -> int | None:
    """Whole cores requested, or None when the request is absent or fractional."""
    cpu = requested(resources, "cpu")
    if cpu is None:
        return None
    cores = parse_quantity(cpu)
    return int(cores) if cores == cores.to_integral_value() and cores >= 1 else None


def gpu_count(resources: Mapping[str, Any]) -> int:
    gpus = requested(resources, GPU_RESOURCE)
    return int(parse_quantity(gpus)) if gpus is not None else 0


def default_session_num(cores: int) -> int:
    """Sessions for N whole cores: one per core up to 2 cores, then one per 2 cores (max 16).

    DeepRec's sizing rule is a handful of sessions per pod, each with a few cores; two cores per
    session keeps intra-op parallelism useful while letting requests run side by side.
    """
    return cores if cores <= 2 else min(16, cores // 2)


def session_group_config(spec: ModelSpec) -> dict[str, Any]:
    """session_num / select_session_policy / cpusets / gpu_ids_list for the model config.

    Explicit values (spec.sessionGroup, then spec.modelConfig) win; the rest follow the resources.
    """
    cfg = spec.model_config
    out: dict[str, Any] = {}
    cores = integer_cpus(spec.resources)
    gpus = gpu_count(spec.resources)
    session_num = spec.session_group.session_num or cfg.get("session_num")
    if session_num is None:
        if gpus:
            session_num = 1
        elif cores:
            session_num = default_session_num(cores)
    if session_num is not None:
        out["session_num"] = int(session_num)
    policy = spec.session_group.policy or cfg.get("select_session_policy")
    if policy:
        out["select_session_policy"] = policy
    # cpusets are left empty unless the user gave them: DeepRec's cpusets are node CPU ids, which
    # the static CPU manager picks only when the pod starts, and the runtime splits the CPUs it
    # was actually given evenly over the sessions when cpusets is empty.
    cpusets = spec.session_group.cpusets or cfg.get("cpusets")
    if cpusets:
        out["cpusets"] = cpusets
    gpu_ids = cfg.get("gpu_ids_list")
    if not gpu_ids and gpus:
        # The device plugin sets CUDA_VISIBLE_DEVICES, so the pod's GPUs are always 0..n-1.
        gpu_ids = ",".join(str(i) for i in range(gpus))
    if gpu_ids:
        out["gpu_ids_list"] = gpu_ids
    return out


# --- the model config --------------------------------------------------------------------------

def model_config(spec: ModelSpec) -> dict[str, Any]:
    """The DeepRec model_config JSON for the runtime, credentials left out (they come by env)."""
    cfg: dict[str, Any] = {k: copy.deepcopy(v) for k, v in spec.model_config.items()}
    storage = spec.storage
    cfg["model_store_type"] = storage.store_type
    cfg["savedmodel_dir"] = storage.savedmodel_dir
    if storage.checkpoint_dir:
        cfg["checkpoint_dir"] = storage.checkpoint_dir
    if storage.oss_endpoint:
        cfg["oss_endpoint"] = storage.oss_endpoint
    if spec.warmup_file:
        cfg["warmup_file_name"] = spec.warmup_file
    if spec.feature_store.redis_url:
        cfg["redis_url"] = spec.feature_store.redis_url
    cfg.update(session_group_config(spec))
    for key in ("oss_access_id", "oss_access_key", "redis_password"):
        cfg.pop(key, None)
    return cfg


def render_config(spec: ModelSpec) -> str:
    return json.dumps(model_config(spec), indent=2, sort_keys=True) + "\n"


def config_hash(spec: ModelSpec) -> str:
    return hashlib.sha256(render_config(spec).encode()).hexdigest()[:16]


def config_map(spec: ModelSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(spec.name),
            "namespace": spec.namespace,
            "labels": common_labels(spec),
        },
        "data": {CONFIG_FILE: render_config(spec)},
    }


# --- the pod -----------------------------------------------------------------------------------

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


def security_args(spec: ModelSpec) -> list[str]:
    """The runtime's TLS and token flags, pointing into the Secret volumes (files, not env: a
    rotated Secret reaches files without a restart)."""
    args: list[str] = []
    tls = spec.security.tls
    if tls is not None:
        args += ["--tls-cert", f"{TLS_DIR}/{TLS_CERT_FILE}", "--tls-key", f"{TLS_DIR}/{TLS_KEY_FILE}",
                 "--health-port", str(HEALTH_PORT)]
        if tls.client_auth is not None:
            args += ["--tls-client-ca", f"{TLS_DIR}/{CLIENT_CA_FILE}"]
    if spec.security.token is not None:
        args += ["--auth-token-file", f"{AUTH_DIR}/{TOKENS_FILE}"]
    return args


def _secret_source(ref: SecretKeyRef, path: str) -> dict[str, Any]:
    return {"secret": {"name": ref.name, "items": [{"key": ref.key, "path": path}]}}


def security_volumes(spec: ModelSpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = []
    tls = spec.security.tls
    if tls is not None:
        # One projected volume, several Secrets: each key lands under a fixed file name, so the
        # runtime's flags never depend on how the user named the keys.
        sources = [_secret_source(tls.certificate, TLS_CERT_FILE),
                   _secret_source(tls.private_key, TLS_KEY_FILE),
                   _secret_source(tls.ca, TLS_CA_FILE)]
        if tls.client_auth is not None:
            sources.append(_secret_source(tls.client_auth.ca, CLIENT_CA_FILE))
        volumes.append({"name": "deeprec-tls", "projected": {"sources": sources}})
    token = spec.security.token
    if token is not None:
        volumes.append({"name": "deeprec-auth", "secret": {
            "secretName": token.secret.name, "items": [{"key": token.secret.key, "path": TOKENS_FILE}]}})
    return volumes


def security_mounts(spec: ModelSpec) -> list[dict[str, Any]]:
    mounts = []
    if spec.security.tls is not None:
        mounts.append({"name": "deeprec-tls", "mountPath": TLS_DIR, "readOnly": True})
    if spec.security.token is not None:
        mounts.append({"name": "deeprec-auth", "mountPath": AUTH_DIR, "readOnly": True})
    return mounts


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
            "--annotations-file", f"{PODINFO_DIR}/annotations",
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
                "items": [{"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]
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


def service(spec: ModelSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": common_labels(spec)},
        "spec": {
            "type": spec.service.type,
            "selector": selector_labels(spec.name),
            "ports": [
                {"name": "grpc", "port": spec.service.grpc_port, "targetPort": GRPC_PORT,
                 "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
                {"name": "http", "port": spec.service.http_port, "targetPort": HTTP_PORT,
                 "protocol": "TCP", "appProtocol": "http"},
            ],
        },
    }


def token_secret(spec: ModelSpec, token: str) -> dict[str, Any]:
    """The Secret holding a model's generated bearer token (created once, never re-applied, so a
    token the user rotated in place is kept)."""
    key = spec.security.token.secret.key if spec.security.token is not None else TOKEN_KEY
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": token_secret_name(spec.name), "namespace": spec.namespace,
                     "labels": common_labels(spec)},
        "type": "Opaque",
        "stringData": {key: token + "\n"},
    }


def network_policy(spec: ModelSpec, operator_peer: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Ingress to the runtime pods only from the allowed clients and the operator (its status
    probe), on the gRPC and HTTP ports; None when the model asks for no policy.

    Kubelet probes are not subject to NetworkPolicy on the usual network plugins (they come from
    the node), so they need no rule here.
    """
    policy = spec.security.network_policy
    if policy is None:
        return None
    peers = [copy.deepcopy(dict(p)) for p in policy.allowed_clients]
    if operator_peer:
        peers.append(copy.deepcopy(dict(operator_peer)))
    ingress: dict[str, Any] = {"ports": [{"port": GRPC_PORT, "protocol": "TCP"},
                                         {"port": HTTP_PORT, "protocol": "TCP"}]}
    if peers:
        ingress["from"] = peers
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": common_labels(spec)},
        "spec": {
            "podSelector": {"matchLabels": selector_labels(spec.name)},
            "policyTypes": ["Ingress"],
            # No peer at all would be an empty `from`, which NetworkPolicy reads as "anyone":
            # without allowed clients and an operator peer, nothing is admitted.
            "ingress": [ingress] if peers else [],
        },
    }


def operator_peer(namespace: str, pod_labels: Mapping[str, str]) -> dict[str, Any] | None:
    """The operator's pods as a NetworkPolicyPeer, or None when the operator does not know where it
    runs (outside a cluster)."""
    if not namespace or not pod_labels:
        return None
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchLabels": dict(pod_labels)}}


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
