"""DeepRec `model_config` as one typed, validated object.

Every key of DeepRec's Processor `model_config` JSON is accepted under its own name, with DeepRec's
defaults and rules; fields this runtime adds are marked "extension". A bad value raises ConfigError
naming the field and the allowed values; an unknown key is logged and ignored, so a config written
for a newer runtime still starts. Credentials may come from the environment instead of the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deeprec_api.pod import ENV_OSS_ACCESS_ID, ENV_OSS_ACCESS_KEY, ENV_OSS_ENDPOINT, ENV_REDIS_PASSWORD
from deeprec_api.redact import redact
from deeprec_runtime.errors import ConfigError

log = logging.getLogger(__name__)

#: Environment variables that supply credentials when the JSON file leaves them out (the operator
#: injects them from Kubernetes Secrets so that secrets never sit in a ConfigMap).
CREDENTIAL_ENV = {
    "oss_access_id": ENV_OSS_ACCESS_ID,
    "oss_access_key": ENV_OSS_ACCESS_KEY,
    "oss_endpoint": ENV_OSS_ENDPOINT,
    "redis_password": ENV_REDIS_PASSWORD,
    "redis_url": "REDIS_URL",
    "webhdfs_address": "WEBHDFS_ADDRESS",
    "hdfs_user": "HADOOP_USER_NAME",
}
SECRET_FIELDS = frozenset({"oss_access_id", "oss_access_key", "redis_password"})


@dataclass(frozen=True)
class BatchingConfig:
    """Extension: server-side request batching, as TensorFlow Serving's batching parameters."""

    max_batch_size: int = 0
    """Largest merged batch (rows); 0 disables batching (the default)."""
    batch_timeout_micros: int = 1000
    """How long the first request of a batch waits for others."""
    num_batch_threads: int = 1
    """Threads that run merged batches."""
    max_enqueued_batches: int = 16
    """Bound on waiting batches; past it requests get RESOURCE_EXHAUSTED at once."""
    allowed_batch_sizes: tuple[int, ...] = ()
    """Merged batches are padded up to the next allowed size (the last must be max_batch_size)."""

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 0


@dataclass(frozen=True)
class ModelConfig:
    """One model's serving configuration, keyed exactly as DeepRec's model_config JSON."""

    # --- model location ---------------------------------------------------------------------
    savedmodel_dir: str
    """SavedModel with the serving graph and signatures; read once at start-up."""
    checkpoint_dir: str = ""
    """Parent of version folders (checkpoint_1/, checkpoint_2/ ...). Empty: serve the
    SavedModel's own variables and never update."""
    model_store_type: str = "local"
    """"local", "oss" or "hdfs"."""
    signature_name: str = "serving_default"
    """Default signature; a request's own signature_name wins."""
    warmup_file_name: str = ""
    """One serialized PredictRequest run on every new version before it serves."""
    serialize_protocol: str = "protobuf"
    init_timeout_minutes: int = 1
    """How long start-up may wait for the first version to load."""

    # --- OSS --------------------------------------------------------------------------------
    oss_endpoint: str = ""
    oss_access_id: str = ""
    oss_access_key: str = dataclasses.field(default="", repr=False)

    # --- remote stores (extensions) -----------------------------------------------------------
    model_cache_dir: str = ""
    """Extension: local folder for files fetched from oss:// or hdfs:// (a pod's emptyDir keeps
    them across container restarts); empty = a temporary folder."""
    webhdfs_address: str = ""
    """Extension: the NameNode's WebHDFS URL for hdfs:// paths, e.g. "http://namenode:9870";
    empty = http://<host of the hdfs:// path>:9870."""
    hdfs_user: str = ""
    """Extension: user name for WebHDFS (simple auth; also HADOOP_USER_NAME)."""

    # --- session group ----------------------------------------------------------------------
    session_num: int = 1
    select_session_policy: str = "MOD"
    use_per_session_threads: bool = False
    cpusets: str = ""
    gpu_ids_list: str = ""
    use_multi_stream: bool = False
    enable_device_placement_optimization: bool = False
    enable_inline_execute: bool = False
    omp_num_threads: int = 4
    kmp_blocktime: int = 0
    inter_op_parallelism_threads: int = 0
    """0 lets TensorFlow choose (one thread per core)."""
    intra_op_parallelism_threads: int = 0
    model_update_inter_threads: int = 0
    """Threads of the separate pool that runs version loads; 0 = the session's own pool."""
    model_update_intra_threads: int = 0

    # --- feature store ----------------------------------------------------------------------
    feature_store_type: str = "memory"
    """"memory" or "local" (in-process, the same thing) or "redis"."""
    redis_url: str = ""
    redis_password: str = dataclasses.field(default="", repr=False)
    read_thread_num: int = 4
    update_thread_num: int = 2

    # --- embedding storage tiers ------------------------------------------------------------
    ev_storage_type: int = 0
    ev_storage_path: str = ""
    ev_storage_size: tuple[int, ...] = ()

    # --- timeline ---------------------------------------------------------------------------
    timeline_start_step: int = 0
    timeline_interval_step: int = 0
    timeline_trace_count: int = 0
    timeline_path: str = ""

    # --- extensions -------------------------------------------------------------------------
    update_poll_seconds: float = 1.0
    """Extension: how often checkpoint_dir and the annotations file are polled (DeepRec: 60 s)."""
    warmup_iterations: int = 5
    """Extension: runs of the warmup request per version (DeepRec runs it 5 times)."""
    retain_previous_version: bool = True
    """Extension: keep the version served before the last swap loaded, so rolling back to it is
    instant (costs one more copy of the parameters). False frees it as soon as its requests end."""
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    custom_op_paths: tuple[str, ...] = ()
    """Extension: shared libraries of custom TensorFlow ops, loaded with tf.load_op_library
    before any model loads (a graph that uses them cannot be imported otherwise)."""

    @property
    def timeline_enabled(self) -> bool:
        return self.timeline_trace_count > 0

    def __repr__(self) -> str:  # repr() reaches logs and tracebacks: the redacted form only
        fields = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"ModelConfig({fields})"

    def redacted(self) -> dict[str, Any]:
        """The config as a dict with secrets masked: the only form that may reach logs."""
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if out.get(name):
                out[name] = "***"
        for name, value in out.items():  # a password written into a URL (redis_url, ...)
            if isinstance(value, str):
                out[name] = redact(value)
        return out


_CHOICES: dict[str, tuple[Any, ...]] = {
    "model_store_type": ("local", "oss", "hdfs"),
    "select_session_policy": ("MOD", "RR"),
    "feature_store_type": ("memory", "local", "redis"),
    "serialize_protocol": ("protobuf",),
    "ev_storage_type": (0, 1, 12),
}
_RANGES: dict[str, tuple[float, float]] = {
    "session_num": (1, 1024),
    "omp_num_threads": (1, 4096),
    "kmp_blocktime": (0, 2**31 - 1),
    "inter_op_parallelism_threads": (0, 4096),
    "intra_op_parallelism_threads": (0, 4096),
    "model_update_inter_threads": (0, 4096),
    "model_update_intra_threads": (0, 4096),
    "read_thread_num": (1, 96),
    "update_thread_num": (1, 16),
    "init_timeout_minutes": (1, 24 * 60),
    "timeline_start_step": (0, 2**62),
    "timeline_interval_step": (0, 2**62),
    "timeline_trace_count": (0, 2**31 - 1),
    "update_poll_seconds": (0.05, 3600),
    "warmup_iterations": (0, 1000),
}
_BATCH_RANGES: dict[str, tuple[int, int]] = {
    "max_batch_size": (0, 1 << 20),
    "batch_timeout_micros": (0, 60_000_000),
    "num_batch_threads": (1, 1024),
    "max_enqueued_batches": (1, 1 << 20),
}


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Converts a JSON value to the field's type, or raises ConfigError naming the field."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(name, f"expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(name, f"expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(name, f"expected an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(name, f"expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(name, f"expected a number, got {value!r}") from None
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"expected a string, got {value!r}")
        return value
    raise AssertionError(f"unhandled field type for {name}")


_FIELD_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def _parse_batching(raw: Any) -> BatchingConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError("batching", f"expected an object, got {raw!r}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(BatchingConfig):
        if f.name not in raw:
            continue
        label = f"batching.{f.name}"
        if f.name == "allowed_batch_sizes":
            sizes = raw[f.name]
            if not isinstance(sizes, list):
                raise ConfigError(label, f"expected a list of integers, got {sizes!r}")
            values[f.name] = tuple(_coerce(label, s, int) for s in sizes)
        else:
            values[f.name] = _coerce(label, raw[f.name], int)
            lo, hi = _BATCH_RANGES[f.name]
            if not lo <= values[f.name] <= hi:
                raise ConfigError(label, f"must be in [{lo}, {hi}], got {values[f.name]}")
    for key in raw:
        if key not in {f.name for f in dataclasses.fields(BatchingConfig)}:
            log.warning("model_config: unknown field 'batching.%s' ignored", key)
    cfg = BatchingConfig(**values)
    sizes = cfg.allowed_batch_sizes
    if sizes:
        if any(b <= 0 for b in sizes) or list(sizes) != sorted(set(sizes)):
            raise ConfigError("batching.allowed_batch_sizes", "must be positive and increasing")
        if cfg.enabled and sizes[-1] != cfg.max_batch_size:
            raise ConfigError(
                "batching.allowed_batch_sizes",
                f"the last size must equal max_batch_size ({cfg.max_batch_size}), got {sizes[-1]}",
            )
    return cfg


def parse_model_config(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ModelConfig:
    """Builds a ModelConfig from the decoded JSON object, applying DeepRec's rules."""
    if not isinstance(raw, Mapping):
        raise ConfigError("<root>", "model_config must be a JSON object")
    env = os.environ if env is None else env
    known = {f.name: f for f in dataclasses.fields(ModelConfig)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        f = known.get(key)
        if f is None:
            log.warning("model_config: unknown field '%s' ignored", key)
            continue
        if key == "batching":
            values[key] = _parse_batching(value)
        elif key == "custom_op_paths":
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(key, f"expected a list of .so paths, got {value!r}")
            values[key] = tuple(value)
        elif key == "ev_storage_size":
            if not isinstance(value, list):
                raise ConfigError(key, f"expected a list of byte sizes, got {value!r}")
            values[key] = tuple(_coerce(key, v, int) for v in value)
            if any(v <= 0 for v in values[key]):
                raise ConfigError(key, "sizes must be positive")
        else:
            values[key] = _coerce(key, value, _FIELD_TYPES[str(f.type)])
    for key, var in CREDENTIAL_ENV.items():
        if not values.get(key) and env.get(var):
            values[key] = env[var]
    if not values.get("savedmodel_dir"):
        raise ConfigError("savedmodel_dir", "is required (the SavedModel folder with the graph)")

    for key, allowed in _CHOICES.items():
        if key in values and values[key] not in allowed:
            raise ConfigError(key, f"must be one of {', '.join(map(repr, allowed))}, got {values[key]!r}")
    for key, (lo, hi) in _RANGES.items():
        if key in values and not lo <= values[key] <= hi:
            raise ConfigError(key, f"must be in [{lo:g}, {hi:g}], got {values[key]}")
    cfg = ModelConfig(**values)
    _check_cross_field_rules(cfg)
    return cfg


def _check_cross_field_rules(cfg: ModelConfig) -> None:
    if cfg.model_store_type == "oss":
        for name in ("oss_endpoint", "oss_access_id", "oss_access_key"):
            if not getattr(cfg, name):
                raise ConfigError(name, "is required when model_store_type is 'oss' "
                                        f"(or set {CREDENTIAL_ENV[name]})")
    for name in ("savedmodel_dir", "checkpoint_dir"):
        path = getattr(cfg, name)
        if not path:
            continue
        scheme = path.split("://", 1)[0] if "://" in path else "local"
        expected = {"local": "local", "oss": "oss", "hdfs": "hdfs"}.get(scheme)
        if expected is None:
            raise ConfigError(name, f"unsupported scheme in {path!r}; use a local path, oss:// or hdfs://")
        if scheme != "local" and scheme != cfg.model_store_type:
            raise ConfigError(name, f"{path!r} is a {scheme} path but model_store_type is "
                                    f"{cfg.model_store_type!r}")
    if cfg.feature_store_type == "redis":
        if not cfg.redis_url:
            raise ConfigError(
                "redis_url", "is required when feature_store_type is 'redis' (or set REDIS_URL)"
            )
    timeline = ("timeline_start_step", "timeline_interval_step", "timeline_trace_count", "timeline_path")
    if cfg.timeline_trace_count or cfg.timeline_path:
        for name in timeline:
            if not getattr(cfg, name):
                raise ConfigError(name, "all four timeline fields are needed to collect timelines")
    if cfg.ev_storage_type == 12 and not cfg.ev_storage_path:
        raise ConfigError("ev_storage_path", "is required when ev_storage_type is 12 (DRAM + SSD)")
    if cfg.batching.enabled and cfg.batching.allowed_batch_sizes and (
        cfg.batching.allowed_batch_sizes[-1] != cfg.batching.max_batch_size
    ):
        raise ConfigError("batching.allowed_batch_sizes", "the last size must equal max_batch_size")


def load_model_config(path: str, env: Mapping[str, str] | None = None) -> ModelConfig:
    """Reads and validates a model_config JSON file. The file may hold the config itself or wrap
    it as {"model_config": {...}} (the EAS form the seed documents)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("<file>", f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    return parse_model_config_json(text, path, env)


def parse_model_config_json(text: str, origin: str = "model_config",
                            env: Mapping[str, str] | None = None) -> ModelConfig:
    """Validates model_config JSON text (the C API's initialize() receives the text itself);
    `origin` names where it came from in error messages."""
    if not text.strip():
        raise ConfigError("<file>", f"{origin} is empty")
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError("<file>", f"{origin} is not valid JSON: {exc}") from None
    if isinstance(raw, dict) and isinstance(raw.get("model_config"), dict):
        raw = raw["model_config"]
    return parse_model_config(raw, env)
