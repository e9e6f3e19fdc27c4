"""TLS material and bearer tokens as the runtime receives them: flags pointing into Secret
volumes (files, never subPath mounts, so a rotated Secret reaches the runtime without a restart),
and the Secret holding a generated token."""

from __future__ import annotations

from typing import Any

from deeprec_api.pod import HEALTH_PORT
from deeprec_operator.resources.names import (
    AUTH_DIR,
    CLIENT_CA_FILE,
    TLS_CA_FILE,
    TLS_CERT_FILE,
    TLS_DIR,
    TLS_KEY_FILE,
    TOKENS_FILE,
    common_labels,
)
from deeprec_operator.spec import TOKEN_KEY, ModelSpec, SecretKeyRef, token_secret_name


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
