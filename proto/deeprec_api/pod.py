"""The runtime pod as the operator builds it and the runtime reads it.

The operator decides which version each pod serves and writes it into one pod annotation; the
runtime reads its own annotations from a Downward API file and follows it (`latest`: the newest
checkpoint; anything else pins that version). Credentials arrive as environment variables from
Secrets, never in the configuration file.
"""

from __future__ import annotations

from deeprec_api.resource import GROUP

#: deeprec.serving.PredictionService, TF Serving's gRPC APIs and grpc.health.v1.Health.
GRPC_PORT = 8500
#: REST: TF Serving's and simple-tensorflow-serving's, /metrics, /healthz.
HTTP_PORT = 8501
#: Plaintext grpc.health.v1.Health only, for kubelet probes of TLS models (runtime --health-port).
HEALTH_PORT = 8502

#: The version the operator asks a pod to serve. A runtime serving several models reads
#: `<key>.<model>` for all but its first (target_version_annotation).
TARGET_VERSION_ANNOTATION = f"{GROUP}/target-version"
#: The target that follows the newest version; also the value when the annotation is absent.
LATEST = "latest"

#: Where the pod's annotations are mounted (Downward API volume) and the file in it.
PODINFO_DIR = "/etc/podinfo"
ANNOTATIONS_FILE = f"{PODINFO_DIR}/annotations"

#: Storage and feature-store credentials (runtime config keys oss_access_id, oss_access_key,
#: oss_endpoint, redis_password may name them instead of holding the values).
ENV_OSS_ACCESS_ID = "OSS_ACCESS_ID"
ENV_OSS_ACCESS_KEY = "OSS_ACCESS_KEY"
ENV_OSS_ENDPOINT = "OSS_ENDPOINT"
ENV_REDIS_PASSWORD = "REDIS_PASSWORD"  # nosec B105  # environment variable name; the value comes from a Secret


def target_version_annotation(model_name: str | None = None) -> str:
    """The annotation that pins a model: the plain key for a runtime's default (first) model,
    `serving.deeprec.io/target-version.<model>` for the others of a multi-model runtime."""
    return TARGET_VERSION_ANNOTATION if not model_name else f"{TARGET_VERSION_ANNOTATION}.{model_name}"
