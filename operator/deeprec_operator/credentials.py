"""What the operator's status probe needs to talk to a secured runtime, read from the model's Secrets.

The same Secrets the pods mount: the CA that signed the server certificate (the only one the probe
trusts), the operator's client certificate under mutual TLS, and the bearer token (the first one
of the token file; the runtime accepts every line, so tokens rotate by adding the new one second,
moving it first once every pod has it, then dropping the old). Values stay in memory: the
dataclass hides them from repr, and errors name Secrets and keys only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from deeprec_operator.kube import ApiError, KubeClient, object_path
from deeprec_operator.spec import SecretKeyRef, SecuritySpec, SpecError, parse_security

#: Seconds a Secret read for the probe is reused: a poll every few seconds per model must not
#: become a GET per Secret per poll. The kubelet takes about a minute to bring a rotated Secret
#: to the pods, so the probe follows a rotation about as fast as the runtimes do.
SECRET_TTL_SECONDS = 30.0


class CredentialError(Exception):
    """A Secret or key the probe needs is missing or unreadable; the message is safe for status."""


@dataclass(frozen=True)
class ProbeCredentials:
    """TLS trust, client identity and token for one model's runtimes. Empty: plaintext, no token."""

    root_ca: bytes | None = field(default=None, repr=False)
    client_certificate: bytes | None = field(default=None, repr=False)
    client_key: bytes | None = field(default=None, repr=False)
    server_name: str = ""
    token: str = field(default="", repr=False)

    @property
    def tls(self) -> bool:
        return self.root_ca is not None

    def fingerprint(self) -> str:
        """Identifies the material without revealing it: channels are cached per address and
        fingerprint, so rotated certificates get a new channel."""
        digest = hashlib.sha256()
        for part in (self.root_ca, self.client_certificate, self.client_key,
                     self.server_name.encode(), self.token.encode()):
            digest.update(b"%d:" % len(part or b""))
            digest.update(part or b"")
        return digest.hexdigest()[:16]


PLAINTEXT = ProbeCredentials()

#: Reads a Secret's data (values decoded), or None when it does not exist.
SecretReader = Callable[[str], "Mapping[str, bytes] | None"]


def _value(read: SecretReader, ref: SecretKeyRef) -> bytes:
    data = read(ref.name)
    if data is None:
        raise CredentialError(f"Secret {ref.name!r} not found")
    if ref.key not in data:
        raise CredentialError(f"Secret {ref.name!r} has no key {ref.key!r}")
    return data[ref.key]


def first_token(text: bytes) -> str:
    """The first token of a token file (one per line, `#` comments), as the runtime reads it."""
    for line in text.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    return ""


def probe_credentials(security: SecuritySpec, read: SecretReader) -> ProbeCredentials:
    """The probe's credentials for a model; raises CredentialError naming what is missing."""
    tls, token_spec = security.tls, security.token
    root_ca = cert = key = None
    server_name = ""
    if tls is not None:
        root_ca, server_name = _value(read, tls.ca), tls.server_name
        if tls.client_auth is not None:
            cert = _value(read, tls.client_auth.operator_certificate)
            key = _value(read, tls.client_auth.operator_key)
    token = ""  # nosec B105  # no token yet: filled from the Secret below
    if token_spec is not None:
        token = first_token(_value(read, token_spec.secret))
        if not token:
            raise CredentialError(f"Secret {token_spec.secret.name!r} key {token_spec.secret.key!r} "
                                  "holds no token")
    return ProbeCredentials(root_ca, cert, key, server_name, token)


def decode_secret_data(secret: Mapping[str, Any]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value or "", validate=True)
        except (binascii.Error, ValueError):
            continue
    return out


class SecretCache:
    """Secrets the probe reads, kept SECRET_TTL_SECONDS (data only, never logged)."""

    def __init__(self, kube: KubeClient, ttl: float = SECRET_TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube, self._ttl, self._clock = kube, ttl, clock
        self._entries: dict[tuple[str, str], tuple[float, dict[str, bytes] | None]] = {}
        self._lock = threading.Lock()

    def reader(self, namespace: str) -> SecretReader:
        return lambda name: self.get(namespace, name)

    def get(self, namespace: str, name: str) -> dict[str, bytes] | None:
        now = self._clock()
        with self._lock:
            hit = self._entries.get((namespace, name))
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        try:
            secret = self._kube.get(object_path("v1", "secrets", namespace, name))
        except ApiError as e:
            if e.status == 403:
                raise CredentialError(
                    f"cannot read Secret {name!r} (get forbidden; the chart grants it with "
                    "rbac.secretCheck)") from None
            raise
        data = decode_secret_data(secret) if secret is not None else None
        with self._lock:
            self._entries[(namespace, name)] = (now, data)
        return data

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._entries.pop((namespace, name), None)


def credentials_for(cache: SecretCache, name: str, namespace: str,
                    spec: Mapping[str, Any]) -> ProbeCredentials | CredentialError:
    """What the status probe needs for a model's runtimes (TLS trust, client certificate, token),
    or why it cannot have it (a missing Secret or key, a forbidden or failed get)."""
    try:
        security = parse_security(name, namespace, spec.get("security"))
    except SpecError:
        return PLAINTEXT  # Degraded by the sync already; no pod runs with this spec
    if security.tls is None and security.token is None:
        return PLAINTEXT
    try:
        return probe_credentials(security, cache.reader(namespace))
    except CredentialError as e:
        return e
    except ApiError as e:
        return CredentialError(f"reading a Secret failed: {e.status} {e.reason}")
