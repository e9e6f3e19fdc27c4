"""The model's DeepRec config: resource quantities, the session group they imply, and the
ConfigMap holding model_config.json (credentials left out: they reach the runtime by env)."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from deeprec_operator.resources.names import CONFIG_FILE, GPU_RESOURCE, common_labels, config_map_name
from deeprec_operator.spec import ModelSpec


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
