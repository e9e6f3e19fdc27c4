"""Names every builder shares: the container, mount paths, files, labels.

What the runtime reads too (ports, the annotations file, credential variables, label and annotation
keys) is in deeprec_api.
"""

from __future__ import annotations

from deeprec_api.resource import MODEL_LABEL
from deeprec_operator.spec import ModelSpec

RUNTIME_CONTAINER = "deeprec-runtime"
CONFIG_FILE = "model_config.json"
CONFIG_DIR = "/etc/deeprec"
MANAGED_BY = "deeprec-operator"

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
