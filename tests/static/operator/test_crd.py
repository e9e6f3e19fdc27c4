"""CRD sanity: names, subresources, columns, every DeepRec key typed, example valid, chart copy identical."""

from __future__ import annotations

import re
from typing import Any

from tests.support.operator.manifests import CHART_DIR, CRD_PATH, example_model, load_crd

# Every key of DeepRec's model_config, as the Processor's configuration document lists them.
DEEPREC_KEYS = [
    "session_num", "select_session_policy", "use_per_session_threads", "cpusets", "gpu_ids_list",
    "use_multi_stream", "enable_device_placement_optimization", "enable_inline_execute",
    "omp_num_threads", "kmp_blocktime", "feature_store_type", "redis_url", "redis_password",
    "read_thread_num", "update_thread_num", "serialize_protocol", "inter_op_parallelism_threads",
    "intra_op_parallelism_threads", "model_update_inter_threads", "model_update_intra_threads",
    "init_timeout_minutes", "signature_name", "warmup_file_name", "model_store_type",
    "checkpoint_dir", "savedmodel_dir", "oss_endpoint", "oss_access_id", "oss_access_key",
    "timeline_start_step", "timeline_interval_step", "timeline_trace_count", "timeline_path",
    "ev_storage_type", "ev_storage_path", "ev_storage_size",
]


def _version() -> dict[str, Any]:
    return load_crd()["spec"]["versions"][0]


def _schema() -> dict[str, Any]:
    return _version()["schema"]["openAPIV3Schema"]


def validate(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """The subset of OpenAPI v3 structural-schema validation the CRD uses (no CEL)."""
    errors: list[str] = []
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errors.append(f"{path}: not int-or-string")
        elif isinstance(value, str) and "pattern" in schema and not re.match(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        return errors
    kind = schema.get("type")
    checks = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "integer": int,
        "number": (int, float),
    }
    if (
        kind
        and not isinstance(value, checks[kind])
        or (kind in ("integer", "number") and isinstance(value, bool))
    ):
        return [f"{path}: expected {kind}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: below minimum")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: above maximum")
    if kind == "string":
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 30):
            errors.append(f"{path}: length out of range")
    if kind == "object":
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        props = schema.get("properties")
        for key, item in value.items():
            if props is not None and key in props:
                errors += validate(item, props[key], f"{path}.{key}")
            elif "additionalProperties" in schema:
                errors += validate(item, schema["additionalProperties"], f"{path}.{key}")
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{key}: unknown field")
    if kind == "array":
        for i, item in enumerate(value):
            errors += validate(item, schema.get("items", {}), f"{path}[{i}]")
    return errors


def _walk(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_names_and_scope():
    crd = load_crd()
    assert crd["metadata"]["name"] == "deeprecmodels.serving.deeprec.io"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == ("serving.deeprec.io", "Namespaced")
    assert spec["names"]["kind"] == "DeepRecModel"
    assert spec["names"]["plural"] == "deeprecmodels"
    assert spec["names"]["shortNames"] == ["drm"]
    assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]


def test_status_and_scale_subresources():
    sub = _version()["subresources"]
    assert sub["status"] == {}
    assert sub["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.readyReplicas",
        "labelSelectorPath": ".status.selector",
    }


def test_printer_columns():
    columns = {c["name"]: c["jsonPath"] for c in _version()["additionalPrinterColumns"]}
    assert columns["Ready"] == ".status.readyReplicas"
    assert columns["Active"] == ".status.activeVersion"
    assert columns["Target"] == ".status.targetVersion"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_every_deeprec_model_config_key_is_typed():
    props = _schema()["properties"]["spec"]["properties"]["modelConfig"]["properties"]
    missing = [k for k in DEEPREC_KEYS if k not in props]
    assert not missing, f"modelConfig lacks DeepRec keys {missing}"
    for key in DEEPREC_KEYS:
        assert "type" in props[key] and props[key].get("description"), key
    assert props["select_session_policy"]["enum"] == ["MOD", "RR"]
    assert props["feature_store_type"]["enum"] == ["local", "memory", "redis"]
    assert props["model_store_type"]["enum"] == ["local", "oss", "hdfs"]
    assert props["ev_storage_type"]["enum"] == [0, 1, 12]
    assert (props["read_thread_num"]["minimum"], props["read_thread_num"]["maximum"]) == (1, 96)


def test_secret_keys_are_rejected_by_rules():
    rules = _schema()["properties"]["spec"]["properties"]["modelConfig"]["x-kubernetes-validations"]
    text = " ".join(r["rule"] for r in rules)
    for key in ("oss_access_id", "oss_access_key", "redis_password"):
        assert f"!has(self.{key})" in text


def test_schema_is_structural_and_documented():
    for path, node in _walk(_schema()):
        if path in ("", ".apiVersion", ".kind", ".metadata"):
            continue
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
    spec = _schema()["properties"]["spec"]
    for name, prop in spec["properties"].items():
        assert prop.get("description"), f"spec.{name} has no description for kubectl explain"
    assert spec["properties"]["version"]["default"] == "latest"
    assert spec["properties"]["storage"]["properties"]["storeType"]["enum"] == ["local", "oss", "hdfs"]


def test_status_names():
    props = _schema()["properties"]["status"]["properties"]
    for name in ("activeVersion", "targetVersion", "readyReplicas", "observedGeneration", "conditions",
                 "versions", "selector"):
        assert name in props


def test_example_matches_schema():
    model = example_model()
    assert model["apiVersion"] == "serving.deeprec.io/v1alpha1"
    assert validate(model["spec"], _schema()["properties"]["spec"], "spec") == []


def test_validator_catches_bad_specs():
    schema = _schema()["properties"]["spec"]
    bad = example_model()["spec"]
    bad["modelConfig"]["select_session_policy"] = "RANDOM"
    bad["replicas"] = -1
    bad["storage"]["storeType"] = "s3"
    errors = validate(bad, schema, "spec")
    assert any("select_session_policy" in e for e in errors)
    assert any("replicas" in e for e in errors)
    assert any("storeType" in e for e in errors)


def test_chart_ships_the_same_crd():
    chart_copy = CHART_DIR / "crds" / CRD_PATH.name
    assert chart_copy.read_bytes() == CRD_PATH.read_bytes(), "helm/deeprec-serving/crds/ drifted from crds/"


def test_example_parses_into_a_model():
    from deeprec_operator.resources import children
    from deeprec_operator.spec import parse

    model = example_model()
    kinds = [c["kind"] for c in children(parse(model["metadata"]["name"], "default", model["spec"]))]
    assert kinds == ["ConfigMap", "Deployment", "Service"]


def _spec_props() -> dict[str, Any]:
    return _schema()["properties"]["spec"]["properties"]


def test_security_schema():
    security = _spec_props()["security"]["properties"]
    tls = security["tls"]
    assert tls["required"] == ["secretName"]
    defaults = {k: tls["properties"][k]["default"] for k in ("certificateKey", "privateKeyKey", "caKey")}
    assert defaults == {"certificateKey": "tls.crt", "privateKeyKey": "tls.key", "caKey": "ca.crt"}
    assert tls["properties"]["clientAuth"]["required"] == ["caSecretName", "operatorCertificateSecretName"]
    assert security["authentication"]["properties"]["bearerToken"]["properties"]["key"]["default"] == "token"
    assert security["allowUnauthenticatedExposure"]["default"] is False
    peer = security["networkPolicy"]["properties"]["allowedClients"]["items"]
    assert set(peer["properties"]) == {"podSelector", "namespaceSelector"}
    (rule,) = peer["x-kubernetes-validations"]
    assert rule["rule"] == "has(self.podSelector) || has(self.namespaceSelector)"
    for path, node in _walk(_spec_props()["security"]):
        if path and "[]" not in path and node.get("type") == "object":
            assert node.get("description"), f"spec.security{path} has no description for kubectl explain"


def test_redis_urls_with_credentials_are_refused_by_rules():
    from deeprec_api.redact import url_has_credentials

    for node in (_spec_props()["featureStore"]["properties"]["redisUrl"],
                 _spec_props()["modelConfig"]["properties"]["redis_url"]):
        (rule,) = node["x-kubernetes-validations"]
        assert "spec.featureStore.passwordSecretRef" in rule["message"]
        # The rule's two RE2 patterns, run here with Python's re, agree with the operator's check.
        patterns = re.findall(r"matches\('([^']*)'\)", rule["rule"])
        assert len(patterns) == 2
        for url in ("redis://:pw@h:6379", "u:p@h:6379", "redis://h:6379?password=x", "redis://h:6379",
                    "h:6379", "redis://h:6379/0?db=1", "unix:///run/redis@1.sock", "rediss://u@h:6380"):
            refused = any(re.search(p.replace("(?i)", ""), url, re.I if "(?i)" in p else 0) for p in patterns)
            assert refused == url_has_credentials(url), url


def test_secured_example_matches_schema_and_parses():
    from deeprec_operator.resources import children
    from deeprec_operator.spec import parse
    from tests.support.operator.manifests import secured_example_model

    model = secured_example_model()
    assert validate(model["spec"], _schema()["properties"]["spec"], "spec") == []
    parsed = parse(model["metadata"]["name"], "models", model["spec"])
    assert parsed.security.tls.server_name == "wide-and-deep.models.svc"
    assert parsed.security.token.generated
    kinds = [c["kind"] for c in children(parsed)]
    assert kinds == ["ConfigMap", "NetworkPolicy", "Deployment", "Service"]
