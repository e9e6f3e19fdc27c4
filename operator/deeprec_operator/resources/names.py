"""Names every builder shares: ports, mount paths, labels, annotation keys, environment names."""

from __future__ import annotations

from deeprec_operator.spec import ModelSpec

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
