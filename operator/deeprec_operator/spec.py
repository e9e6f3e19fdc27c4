"""The DeepRecModel spec as one typed object, with the semantic checks the CRD schema cannot make.

The API server already enforces types, enums and ranges (crds/). What is left here needs several
fields at once: a `checkpoint_dir` whose scheme does not match `storeType`, OSS without credentials,
Redis without a password Secret, a name too long for a Service, a Service exposed outside the
cluster without authentication. Such a spec raises SpecError with the field, a reason (CamelCase,
it becomes a condition reason) and a message; handlers turn it into a Degraded condition instead
of retrying. Messages name fields, never credential values.

One module although it is over 400 lines: it is the schema's counterpart, a list of typed fields
and their cross-field checks (the security half needs the service's type, the store half the
config's keys), and reading the spec in one place is what keeps each check next to the field it
guards.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deeprec_api.pod import GRPC_PORT, HTTP_PORT, LATEST
from deeprec_api.redact import redact, url_has_credentials

#: DeepRec keys whose values are credentials. They never come from the CR (the schema rejects
#: them); the runtime reads them from the environment, filled from Secrets.
SECRET_CONFIG_KEYS = ("oss_access_id", "oss_access_key", "redis_password")

STORE_TYPES = ("local", "oss", "hdfs")
_SCHEME_OF_STORE = {"oss": "oss://", "hdfs": "hdfs://"}
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: Children are named `<name>` and `<name>-config`; a Service name is a DNS-1035 label (<= 63).
MAX_NAME_LENGTH = 63
#: Service types that make the model reachable from outside the cluster.
EXPOSED_SERVICE_TYPES = ("NodePort", "LoadBalancer")
#: Key of the bearer token in a Secret the operator creates for a model.
TOKEN_KEY = "token"  # nosec B105  # a Secret key name, not a token


class SpecError(Exception):
    """A spec the operator cannot act on until the user changes it (or a referenced object)."""

    def __init__(self, field_path: str, reason: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path
        self.reason = reason
        self.message = f"{field_path}: {message}"


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str
    optional: bool = False


@dataclass(frozen=True)
class VolumeClaimMount:
    claim_name: str
    mount_path: str
    read_only: bool


@dataclass(frozen=True)
class StorageSpec:
    store_type: str
    checkpoint_dir: str
    savedmodel_dir: str
    oss_endpoint: str
    access_id: SecretKeyRef | None
    access_key: SecretKeyRef | None
    endpoint: SecretKeyRef | None
    volume_claim: VolumeClaimMount | None


@dataclass(frozen=True)
class SessionGroupSpec:
    session_num: int | None
    policy: str | None
    cpusets: str | None


@dataclass(frozen=True)
class FeatureStoreSpec:
    redis_url: str
    password: SecretKeyRef | None


@dataclass(frozen=True)
class ServiceSpec:
    type: str = "ClusterIP"
    grpc_port: int = GRPC_PORT
    http_port: int = HTTP_PORT
    grpc_server: str = "auto"
    fast_predict: bool = True


@dataclass(frozen=True)
class ClientAuthSpec:
    """Mutual TLS: the runtime accepts only clients whose certificate `ca` signed; the operator's
    status probe presents the certificate and key of `operator_certificate` (a kubernetes.io/tls
    Secret in the model's namespace, issued by that CA)."""

    ca: SecretKeyRef
    operator_certificate: SecretKeyRef
    operator_key: SecretKeyRef


@dataclass(frozen=True)
class TLSSpec:
    """Server TLS from a Secret laid out as kubernetes.io/tls (cert-manager writes the same keys)."""

    certificate: SecretKeyRef
    private_key: SecretKeyRef
    ca: SecretKeyRef
    """The CA that signed the server certificate: the operator's probe trusts only it."""
    server_name: str
    """The name checked in the server certificate; pods are dialled by IP, so it is not the address."""
    client_auth: ClientAuthSpec | None = None


@dataclass(frozen=True)
class TokenSpec:
    """Bearer tokens accepted by the runtime: the Secret key holds one token per line."""

    secret: SecretKeyRef
    generated: bool
    """The operator creates this Secret (random token) and owns it."""


@dataclass(frozen=True)
class NetworkPolicySpec:
    #: NetworkPolicyPeer objects (podSelector and/or namespaceSelector) allowed to connect.
    allowed_clients: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class SecuritySpec:
    tls: TLSSpec | None = None
    token: TokenSpec | None = None
    allow_unauthenticated_exposure: bool = False
    network_policy: NetworkPolicySpec | None = None

    @property
    def authenticates_clients(self) -> bool:
        """Callers must prove who they are: a bearer token, or a client certificate (mutual TLS)."""
        return self.token is not None or (self.tls is not None and self.tls.client_auth is not None)


@dataclass(frozen=True)
class ModelSpec:
    """Everything the pure builders need, read once from the CR."""

    name: str
    namespace: str
    version: str
    replicas: int
    image: str
    image_pull_policy: str | None
    resources: Mapping[str, Any]
    model_config: Mapping[str, Any]
    storage: StorageSpec
    session_group: SessionGroupSpec
    warmup_file: str
    feature_store: FeatureStoreSpec
    pod_template: Mapping[str, Any] | None
    service: ServiceSpec
    labels: Mapping[str, str] = field(default_factory=dict)
    security: SecuritySpec = field(default_factory=SecuritySpec)

    @property
    def secret_refs(self) -> list[SecretKeyRef]:
        """Secrets (and keys) the user must provide; not the token Secret the operator creates."""
        refs = [self.storage.access_id, self.storage.access_key, self.storage.endpoint]
        refs.append(self.feature_store.password)
        tls = self.security.tls
        if tls is not None:
            refs += [tls.certificate, tls.private_key, tls.ca]
            if tls.client_auth is not None:
                auth = tls.client_auth
                refs += [auth.ca, auth.operator_certificate, auth.operator_key]
        token = self.security.token
        if token is not None and not token.generated:
            refs.append(token.secret)
        return [r for r in refs if r is not None]


def _get(obj: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
    if not obj:
        return default
    value = obj.get(key, default)
    return default if value is None else value


def _agree(field_path: str, structured: str, config_key: str, config: Mapping[str, Any]) -> str:
    """One value set in two places (a typed field and its DeepRec key) must not disagree."""
    raw = config.get(config_key)
    if structured and raw not in (None, "") and str(raw) != structured:
        raise SpecError(
            field_path,
            "ConflictingFields",
            f"{redact(structured)!r} disagrees with spec.modelConfig.{config_key} {redact(str(raw))!r}; "
            "set it in one place",
        )
    return structured or (str(raw) if raw not in (None, "") else "")


def _check_store_path(field_path: str, store_type: str, path: str) -> None:
    if not path:
        return
    scheme = path.split("://", 1)[0] + "://" if "://" in path else ""
    expected = _SCHEME_OF_STORE.get(store_type, "")
    if scheme and scheme not in _SCHEME_OF_STORE.values():
        raise SpecError(
            field_path,
            "UnknownStoreType",
            f"{path!r} uses {scheme!r}, which no store type serves; supported: "
            "local paths, oss:// (storeType oss), hdfs:// (storeType hdfs)",
        )
    if scheme != expected:
        want = expected or "a local path (no scheme)"
        raise SpecError(
            field_path,
            "StoreTypeMismatch",
            f"{path!r} does not match storeType {store_type!r}: expected {want}",
        )


def parse(name: str, namespace: str, spec: Mapping[str, Any], *, default_image: str = "",
          labels: Mapping[str, str] | None = None) -> ModelSpec:
    """Reads a DeepRecModel spec (as the API server stored it, defaults applied) into ModelSpec."""
    if len(name) > MAX_NAME_LENGTH or not _DNS1035.match(name):
        raise SpecError(
            "metadata.name",
            "InvalidName",
            f"{name!r} must be a DNS-1035 label (lower-case letters, digits, '-', starting with a "
            f"letter, at most {MAX_NAME_LENGTH} characters) because the Service takes this name",
        )
    config: Mapping[str, Any] = dict(_get(spec, "modelConfig", {}))
    for key in SECRET_CONFIG_KEYS:
        if config.get(key) not in (None, ""):
            raise SpecError(
                f"spec.modelConfig.{key}",
                "SecretInSpec",
                "credentials must come from a Secret (spec.storage.credentialsSecretRef or "
                "spec.featureStore.passwordSecretRef), never from the resource itself",
            )

    raw_storage = _get(spec, "storage", {})
    store_type = _agree("spec.storage.storeType", str(_get(raw_storage, "storeType", "")),
                        "model_store_type", config) or "local"
    if store_type not in STORE_TYPES:
        raise SpecError("spec.storage.storeType", "UnknownStoreType",
                        f"{store_type!r} is not one of {', '.join(STORE_TYPES)}")
    checkpoint_dir = _agree("spec.storage.checkpointDir", str(_get(raw_storage, "checkpointDir", "")),
                            "checkpoint_dir", config)
    savedmodel_dir = _agree("spec.storage.savedModelDir", str(_get(raw_storage, "savedModelDir", "")),
                            "savedmodel_dir", config)
    if not savedmodel_dir:
        raise SpecError("spec.storage.savedModelDir", "MissingField",
                        "the SavedModel directory is required (or spec.modelConfig.savedmodel_dir)")
    _check_store_path("spec.storage.checkpointDir", store_type, checkpoint_dir)
    _check_store_path("spec.storage.savedModelDir", store_type, savedmodel_dir)
    oss_endpoint = _agree("spec.storage.ossEndpoint", str(_get(raw_storage, "ossEndpoint", "")),
                          "oss_endpoint", config)

    creds = _get(raw_storage, "credentialsSecretRef")
    access_id = access_key = endpoint = None
    if creds:
        secret = str(creds["name"])
        access_id = SecretKeyRef(secret, str(_get(creds, "accessIdKey", "oss_access_id")))
        access_key = SecretKeyRef(secret, str(_get(creds, "accessKeyKey", "oss_access_key")))
        if _get(creds, "endpointKey"):
            endpoint = SecretKeyRef(secret, str(creds["endpointKey"]), optional=True)
    if store_type == "oss" and access_key is None:
        raise SpecError("spec.storage.credentialsSecretRef", "MissingCredentials",
                        "storeType oss needs a Secret with oss_access_id and oss_access_key")
    if store_type == "oss" and not oss_endpoint and endpoint is None:
        raise SpecError("spec.storage.ossEndpoint", "MissingField",
                        "storeType oss needs an endpoint (ossEndpoint or credentialsSecretRef.endpointKey)")

    claim = _get(raw_storage, "volumeClaim")
    volume_claim = None
    if claim:
        volume_claim = VolumeClaimMount(str(claim["claimName"]), str(_get(claim, "mountPath", "/models")),
                                        bool(_get(claim, "readOnly", True)))

    raw_sg = _get(spec, "sessionGroup", {})
    session_group = SessionGroupSpec(
        session_num=int(raw_sg["sessionNum"]) if _get(raw_sg, "sessionNum") is not None else None,
        policy=_get(raw_sg, "policy"),
        cpusets=_get(raw_sg, "cpusets"),
    )
    for typed, key, path in ((session_group.session_num, "session_num", "sessionNum"),
                             (session_group.policy, "select_session_policy", "policy"),
                             (session_group.cpusets, "cpusets", "cpusets")):
        if typed is not None:
            _agree(f"spec.sessionGroup.{path}", str(typed), key, config)
    if session_group.cpusets and session_group.session_num:
        groups = len([g for g in session_group.cpusets.split(";") if g.strip()])
        if groups != session_group.session_num:
            raise SpecError("spec.sessionGroup.cpusets", "InvalidSessionGroup",
                            f"{groups} cpu groups for sessionNum {session_group.session_num}; "
                            "give one ';'-separated group per session")

    raw_fs = _get(spec, "featureStore", {})
    _check_url_credentials("spec.featureStore.redisUrl", str(_get(raw_fs, "redisUrl", "")))
    _check_url_credentials("spec.modelConfig.redis_url", str(config.get("redis_url") or ""))
    redis_url = _agree("spec.featureStore.redisUrl", str(_get(raw_fs, "redisUrl", "")), "redis_url", config)
    pw = _get(raw_fs, "passwordSecretRef")
    password = SecretKeyRef(str(pw["name"]), str(_get(pw, "key", "redis_password"))) if pw else None
    if str(config.get("feature_store_type", "local")) == "redis":
        if not redis_url:
            raise SpecError("spec.featureStore.redisUrl", "MissingField",
                            "feature_store_type redis needs a Redis URL")
        if password is None:
            raise SpecError("spec.featureStore.passwordSecretRef", "MissingCredentials",
                            "feature_store_type redis needs a Secret holding the Redis password")

    warmup = _agree("spec.warmup.fileName", str(_get(_get(spec, "warmup", {}), "fileName", "")),
                    "warmup_file_name", config)

    image = str(_get(spec, "image", "") or default_image)
    if not image:
        raise SpecError("spec.image", "MissingField",
                        "no runtime image: set spec.image, or start the operator with a default image")

    raw_svc = _get(spec, "service", {})
    service = ServiceSpec(
        type=str(_get(raw_svc, "type", "ClusterIP")),
        grpc_port=int(_get(raw_svc, "grpcPort", GRPC_PORT)),
        http_port=int(_get(raw_svc, "httpPort", HTTP_PORT)),
        grpc_server=str(_get(raw_svc, "grpcServer", "auto")),
        fast_predict=_get(raw_svc, "fastPredict", True),
    )
    if not isinstance(service.fast_predict, bool):
        raise SpecError("spec.service.fastPredict", "InvalidValue",
                        f"spec.service.fastPredict is {service.fast_predict!r}; expected true or false")
    if service.grpc_server not in ("auto", "python", "native"):
        raise SpecError("spec.service.grpcServer", "InvalidValue",
                        f"spec.service.grpcServer is {service.grpc_server!r}; allowed: auto, "
                        "python, native")
    security = parse_security(name, namespace, _get(spec, "security", {}))
    _check_exposure(service, security)

    return ModelSpec(
        name=name,
        namespace=namespace,
        version=str(_get(spec, "version", LATEST)) or LATEST,
        replicas=int(_get(spec, "replicas", 1)),
        image=image,
        image_pull_policy=_get(spec, "imagePullPolicy"),
        resources=dict(_get(spec, "resources", {})),
        model_config=config,
        storage=StorageSpec(store_type, checkpoint_dir, savedmodel_dir, oss_endpoint,
                            access_id, access_key, endpoint, volume_claim),
        session_group=session_group,
        warmup_file=warmup,
        feature_store=FeatureStoreSpec(redis_url, password),
        pod_template=_get(spec, "podTemplate"),
        service=service,
        labels=dict(labels or {}),
        security=security,
    )


def _check_url_credentials(field_path: str, url: str) -> None:
    if url_has_credentials(url):
        raise SpecError(
            field_path,
            "SecretInSpec",
            "the URL carries credentials (a user or password before '@', or a password parameter); "
            "give the Redis address only and put the password in a Secret referenced by "
            "spec.featureStore.passwordSecretRef",
        )


def _check_exposure(service: ServiceSpec, security: SecuritySpec) -> None:
    """A Service reachable from outside the cluster must authenticate callers, unless the user
    says the open exposure is intended (e.g. an authenticating gateway in front of it)."""
    if (service.type in EXPOSED_SERVICE_TYPES and not security.authenticates_clients
            and not security.allow_unauthenticated_exposure):
        raise SpecError(
            "spec.service.type",
            "InsecureExposure",
            f"a {service.type} Service exposes the model outside the cluster without "
            "authentication; set spec.security.authentication.bearerToken or "
            "spec.security.tls.clientAuth, or set spec.security.allowUnauthenticatedExposure: true "
            "if the exposure is intended",
        )


def _secret_ref(raw: Mapping[str, Any], name_field: str, key_field: str, default_key: str,
                default_name: str = "") -> SecretKeyRef:
    return SecretKeyRef(str(_get(raw, name_field, default_name)), str(_get(raw, key_field, default_key)))


def _parse_tls(name: str, namespace: str, raw: Mapping[str, Any]) -> TLSSpec:
    secret = str(_get(raw, "secretName", ""))
    if not secret:
        raise SpecError("spec.security.tls.secretName", "MissingField",
                        "TLS needs the Secret holding the server certificate and key")
    client_auth = None
    raw_auth = _get(raw, "clientAuth")
    if raw_auth:
        operator_secret = str(_get(raw_auth, "operatorCertificateSecretName", ""))
        if not _get(raw_auth, "caSecretName") or not operator_secret:
            raise SpecError(
                "spec.security.tls.clientAuth", "MissingField",
                "mutual TLS needs caSecretName (the CA that signs client certificates) and "
                "operatorCertificateSecretName (the certificate the operator's status probe presents)")
        client_auth = ClientAuthSpec(
            ca=_secret_ref(raw_auth, "caSecretName", "caKey", "ca.crt"),
            operator_certificate=SecretKeyRef(operator_secret, "tls.crt"),
            operator_key=SecretKeyRef(operator_secret, "tls.key"),
        )
    return TLSSpec(
        certificate=SecretKeyRef(secret, str(_get(raw, "certificateKey", "tls.crt"))),
        private_key=SecretKeyRef(secret, str(_get(raw, "privateKeyKey", "tls.key"))),
        ca=_secret_ref(raw, "caSecretName", "caKey", "ca.crt", default_name=secret),
        # Pods are dialled by IP and a pod's IP is in no certificate: the Service's DNS name is
        # what a certificate for this model names (cert-manager: dnsNames).
        server_name=str(_get(raw, "serverName", "")) or f"{name}.{namespace}.svc",
        client_auth=client_auth,
    )


def token_secret_name(name: str) -> str:
    """The Secret the operator creates for a model that asks for a bearer token without one."""
    return f"{name}-auth-token"


def parse_security(name: str, namespace: str, raw: Mapping[str, Any] | None) -> SecuritySpec:
    """spec.security: server TLS (and mutual TLS), bearer tokens, exposure and NetworkPolicy."""
    raw = raw or {}
    tls = _parse_tls(name, namespace, raw["tls"]) if _get(raw, "tls") else None
    token = None
    raw_token = _get(_get(raw, "authentication", {}), "bearerToken")
    if raw_token is not None:
        given = str(_get(raw_token, "secretName", ""))
        key = str(_get(raw_token, "key", TOKEN_KEY))
        token = TokenSpec(SecretKeyRef(given or token_secret_name(name), key), generated=not given)
    network_policy = None
    raw_np = _get(raw, "networkPolicy")
    if raw_np is not None and _get(raw_np, "enabled", True):
        peers = tuple(dict(p) for p in _get(raw_np, "allowedClients", []))
        for i, peer in enumerate(peers):
            # `podSelector: {}` (every pod of the model's namespace) is a choice; a peer with
            # neither selector is refused by the schema too, and would be by the API server when
            # the policy is written: said here with the field's name, before anything is written.
            if "podSelector" not in peer and "namespaceSelector" not in peer:
                raise SpecError(f"spec.security.networkPolicy.allowedClients[{i}]", "InvalidValue",
                                "give podSelector and/or namespaceSelector")
        network_policy = NetworkPolicySpec(peers)
    allow = _get(raw, "allowUnauthenticatedExposure", False)
    if not isinstance(allow, bool):
        raise SpecError("spec.security.allowUnauthenticatedExposure", "InvalidValue",
                        f"expected true or false, got {allow!r}")
    return SecuritySpec(tls=tls, token=token, allow_unauthenticated_exposure=allow,
                        network_policy=network_policy)
