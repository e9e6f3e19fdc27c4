"""Transport security (TLS, mutual TLS) and caller authentication for the runtime's ports.

Secrets never come from the model_config JSON (it lives in a ConfigMap): tokens come from the
environment or from files mounted from a Kubernetes Secret, and are re-read when the kubelet
rotates those files. One `Security` object serves both adapters: the gRPC server takes its
credentials and interceptor, the HTTP server calls `check_http_auth(path, headers)` and
`http_ssl_context()`. Health and metrics stay open by default so probes and scrapers work.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message

import grpc

from deeprec_runtime.errors import Unauthenticated

log = logging.getLogger(__name__)

#: A single bearer token (e.g. a Secret key injected with `valueFrom.secretKeyRef`).
TOKEN_ENV = "DEEPREC_AUTH_TOKEN"  # nosec B105  # environment variable name, not a token
#: Environment forms of the command-line flags, for pods whose args are fixed.
FILE_ENVS = {"auth_token_file": "DEEPREC_AUTH_TOKEN_FILE",  # nosec B105  # variable names
             "basic_auth_file": "DEEPREC_BASIC_AUTH_FILE",
             "tls_cert": "DEEPREC_TLS_CERT", "tls_key": "DEEPREC_TLS_KEY",
             "tls_client_ca": "DEEPREC_TLS_CLIENT_CA"}

HEALTH_GRPC_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
HEALTH_HTTP_PATHS = frozenset({"/healthz", "/readyz", "/livez", "/v1/health"})
METRICS_HTTP_PATHS = frozenset({"/metrics"})
#: How often credential files are checked for changes (a Secret update takes the kubelet ~1 min).
RELOAD_SECONDS = 5.0


class SecurityConfigError(ValueError):
    """A TLS or auth setting is unusable; names the flag (and its environment variable)."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag = flag


@dataclass(frozen=True)
class SecurityConfig:
    tls_cert: str = ""
    """PEM certificate chain of the server; with tls_key turns TLS on for gRPC and HTTP."""
    tls_key: str = ""
    tls_client_ca: str = ""
    """PEM CA bundle: clients must present a certificate it signed (mutual TLS)."""
    auth_token_file: str = ""
    """Accepted bearer tokens, one per line (several allow rotation without downtime)."""
    auth_token: str = field(default="", repr=False)
    """One accepted bearer token, from DEEPREC_AUTH_TOKEN only."""
    basic_auth_file: str = ""
    """`user:password` lines accepted as HTTP Basic credentials (gRPC: `authorization` metadata)."""
    protect_health: bool = False
    """Require credentials on health checks too (default open: kubelet probes send none)."""
    protect_metrics: bool = False
    """Require credentials on /metrics too (default open for Prometheus)."""

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_token_file or self.auth_token or self.basic_auth_file)

    def validate(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SecurityConfigError("--tls-cert/--tls-key", "give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise SecurityConfigError("--tls-client-ca", "mutual TLS needs --tls-cert and --tls-key")
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key),
                           ("--tls-client-ca", self.tls_client_ca),
                           ("--auth-token-file", self.auth_token_file),
                           ("--basic-auth-file", self.basic_auth_file)):
            if path and not os.access(path, os.R_OK):
                raise SecurityConfigError(flag, f"cannot read {path!r}")


def security_config_from(args=None, env: Mapping[str, str] | None = None) -> SecurityConfig:
    """Flags win over their environment variables; the token itself only comes from the env."""
    env = os.environ if env is None else env

    def pick(name: str) -> str:
        value = getattr(args, name, None) if args is not None else None
        return value or env.get(FILE_ENVS[name], "")

    return SecurityConfig(
        tls_cert=pick("tls_cert"), tls_key=pick("tls_key"), tls_client_ca=pick("tls_client_ca"),
        auth_token_file=pick("auth_token_file"), basic_auth_file=pick("basic_auth_file"),
        auth_token=env.get(TOKEN_ENV, "").strip(),
        protect_health=bool(getattr(args, "auth_protect_health", False)),
        protect_metrics=bool(getattr(args, "auth_protect_metrics", False)))


class _WatchedFile:
    """A file's parsed content, parsed again when its mtime or size changes (Secret rotation)."""

    def __init__(self, path: str, parse: Callable[[str], object]):
        self.path, self._parse = path, parse
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.value = self._load()

    def _load(self):
        st = os.stat(self.path)
        with open(self.path, encoding="utf-8") as fh:
            value = self._parse(fh.read())
        self._stamp = (st.st_mtime, st.st_size)
        return value

    def get(self):
        now = time.monotonic()
        if now - self._checked < RELOAD_SECONDS:
            return self.value
        with self._lock:
            self._checked = now
            try:
                st = os.stat(self.path)
                if (st.st_mtime, st.st_size) != self._stamp:
                    self.value = self._load()
                    log.info("reloaded %s", self.path)
            except (OSError, ValueError) as exc:  # keep the last good content; never log secrets
                log.warning("cannot reload %s (%s); keeping the previous credentials",
                            self.path, type(exc).__name__)
        return self.value


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _parse_basic(text: str) -> dict[str, str]:
    users = {}
    for number, line in enumerate(_lines(text), 1):
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"line {number} is not user:password")
        users[user] = password
    return users


class Authenticator:
    """Checks an `authorization` value: `Bearer <token>` or `Basic base64(user:password)`."""

    def __init__(self, config: SecurityConfig):
        self._static_tokens = [config.auth_token] if config.auth_token else []
        try:
            self._tokens = (_WatchedFile(config.auth_token_file, _lines)
                            if config.auth_token_file else None)
            self._users = (_WatchedFile(config.basic_auth_file, _parse_basic)
                           if config.basic_auth_file else None)
        except ValueError as exc:
            raise SecurityConfigError("--basic-auth-file", str(exc)) from None
        self.enabled = config.auth_enabled
        self.schemes = (["Bearer"] if self._static_tokens or self._tokens else []) + (
            ["Basic"] if self._users else [])

    def accepted_credentials(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What a valid `authorization` value carries after its scheme, for a checker outside
        Python (the native front end): the bearer tokens, and the base64 of each Basic
        `user:password`. Files are re-read here as in check()."""
        tokens = tuple(self._static_tokens + (self._tokens.get() if self._tokens else []))
        users = self._users.get() if self._users else {}
        basic = tuple(base64.b64encode(f"{user}:{password}".encode()).decode()
                      for user, password in users.items())
        return tokens, basic

    def check(self, authorization: str | None) -> None:
        if not self.enabled:
            return
        if not authorization:
            raise Unauthenticated(f"credentials required: send 'authorization: "
                                  f"{' or '.join(self.schemes)} ...'")
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and "Bearer" in self.schemes:
            tokens = self._static_tokens + (self._tokens.get() if self._tokens else [])
            # compare against every token so the time taken does not say which one was close
            if sum(hmac.compare_digest(credentials.encode(), t.encode()) for t in tokens):
                return
            raise Unauthenticated("invalid bearer token")
        if scheme.lower() == "basic" and "Basic" in self.schemes and self._users:
            try:
                user, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise Unauthenticated("malformed basic credentials") from None
            expected = self._users.get().get(user)
            if expected is not None and hmac.compare_digest(password.encode(), expected.encode()):
                return
            raise Unauthenticated("invalid user or password")
        raise Unauthenticated(f"unsupported authorization scheme; use {' or '.join(self.schemes)}")


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming shape that only answers UNAUTHENTICATED. It takes the
    request as raw bytes: an unauthenticated caller never reaches the real deserializer."""

    def abort(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def abort_stream(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover (makes this a generator, as streaming handlers must be)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    return grpc.unary_unary_rpc_method_handler(abort)


class AuthInterceptor(grpc.ServerInterceptor):
    """Covers every service on the gRPC port (DeepRec, TF Serving, reflection ...); only the
    methods in `open_methods` (health, by default) pass without credentials."""

    def __init__(self, authenticator: Authenticator, open_methods: frozenset[str]):
        self.auth = authenticator
        self.open_methods = open_methods

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method in self.open_methods:
            return continuation(handler_call_details)
        authorization = next((v for k, v in handler_call_details.invocation_metadata or ()
                              if k == "authorization"), None)
        try:
            self.auth.check(authorization if isinstance(authorization, str) else None)
        except Unauthenticated as exc:
            handler = continuation(handler_call_details)
            return None if handler is None else _deny(handler, str(exc))
        return continuation(handler_call_details)


class Security:
    """TLS material and the authenticator for one runtime, shared by the gRPC and HTTP servers."""

    def __init__(self, config: SecurityConfig | None = None):
        self.config = config or SecurityConfig()
        self.config.validate()
        self.authenticator = Authenticator(self.config)
        if self.config.tls_enabled:  # read now: a bad file fails start-up, not the first handshake
            self._check_tls()

    def _check_tls(self) -> None:
        try:
            self.http_ssl_context()
        except (ssl.SSLError, OSError) as exc:
            raise SecurityConfigError("--tls-cert/--tls-key/--tls-client-ca",
                                      f"unusable certificate or key: {exc}") from None

    # --- gRPC -----------------------------------------------------------------------------------
    def grpc_credentials(self) -> grpc.ServerCredentials | None:
        """None: plaintext. Certificates are re-read for new connections when the files change."""
        cfg = self.config
        if not cfg.tls_enabled:
            return None
        paths = [p for p in (cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if p]

        def stamp() -> tuple:
            return tuple(os.stat(p).st_mtime_ns for p in paths)

        def configuration() -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration(
                [(_read(cfg.tls_key), _read(cfg.tls_cert))],
                root_certificates=_read(cfg.tls_client_ca) if cfg.tls_client_ca else None)

        state = {"stamp": stamp()}

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by gRPC before each handshake: returning None keeps the current material.
            try:
                now = stamp()
                if now == state["stamp"]:
                    return None
                new = configuration()
                state["stamp"] = now
                log.info("TLS certificate files changed; new connections use the new ones")
                return new
            except Exception as exc:  # noqa: BLE001 (a half-rotated Secret: retry next handshake)
                log.warning("cannot reload TLS files (%s); keeping the current ones",
                            type(exc).__name__)
                return None

        return grpc.dynamic_ssl_server_credentials(
            configuration(), fetch, require_client_authentication=bool(cfg.tls_client_ca))

    def grpc_open_methods(self) -> frozenset[str]:
        return frozenset() if self.config.protect_health else HEALTH_GRPC_METHODS

    def grpc_interceptors(self) -> list[grpc.ServerInterceptor]:
        if not self.authenticator.enabled:
            return []
        return [AuthInterceptor(self.authenticator, self.grpc_open_methods())]

    # --- HTTP -----------------------------------------------------------------------------------
    def http_ssl_context(self) -> ssl.SSLContext | None:
        """For the HTTP server's socket (`context.wrap_socket(sock, server_side=True)`)."""
        cfg = self.config
        if not cfg.tls_enabled:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        if cfg.tls_client_ca:
            context.load_verify_locations(cfg.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def is_open_path(self, path: str) -> bool:
        path = path.split("?", 1)[0]
        return ((not self.config.protect_health and path in HEALTH_HTTP_PATHS)
                or (not self.config.protect_metrics and path in METRICS_HTTP_PATHS))

    def check_http_auth(self, path: str, headers: Mapping[str, str] | Message) -> None:
        """Raises Unauthenticated (HTTP 401) unless `path` is open or the headers carry valid
        credentials. `headers` may be http.client.HTTPMessage (case-insensitive get)."""
        if not self.authenticator.enabled or self.is_open_path(path):
            return
        self.authenticator.check(headers.get("Authorization") or headers.get("authorization"))

    def www_authenticate(self) -> str:
        """Value of the WWW-Authenticate header a 401 response carries."""
        return ", ".join(f'{scheme} realm="deeprec-serving"' for scheme in self.authenticator.schemes)


def check_http_auth(security: Security | None, path: str, headers: Mapping[str, str] | Message) -> None:
    """For the HTTP adapter: no Security object means an open server."""
    if security is not None:
        security.check_http_auth(path, headers)
