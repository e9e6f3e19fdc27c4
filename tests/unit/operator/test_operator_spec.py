"""Semantic checks of the DeepRecModel spec that the schema cannot express."""

from __future__ import annotations

import pytest

from deeprec_operator.spec import SpecError, parse


def _error(spec, name="wd") -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(name, "ns", spec)
    return info.value


def test_parse_reads_typed_fields(spec):
    model = parse("wd", "ns", spec)
    assert model.version == "latest"
    assert model.replicas == 2
    assert model.storage.store_type == "local"
    assert model.storage.checkpoint_dir == "/models/ckpt/"
    assert model.secret_refs == []


def test_empty_version_means_latest(spec):
    spec["version"] = ""
    assert parse("wd", "ns", spec).version == "latest"


def test_checkpoint_dir_scheme_must_match_store_type(spec):
    spec["storage"]["checkpointDir"] = "oss://bucket/ckpt/"
    err = _error(spec)
    assert err.reason == "StoreTypeMismatch"
    assert "spec.storage.checkpointDir" in err.message and "local" in err.message


def test_unknown_scheme_is_unknown_store_type(spec):
    spec["storage"]["checkpointDir"] = "s3://bucket/ckpt/"
    err = _error(spec)
    assert err.reason == "UnknownStoreType"
    assert "oss://" in err.message and "hdfs://" in err.message


def test_oss_needs_credentials_secret(spec):
    spec["storage"] = {"storeType": "oss", "savedModelDir": "oss://b/sm/", "ossEndpoint": "e"}
    assert _error(spec).reason == "MissingCredentials"


def test_oss_with_secret_ref_uses_default_keys(spec):
    spec["storage"] = {"storeType": "oss", "savedModelDir": "oss://b/sm/", "ossEndpoint": "e",
                       "credentialsSecretRef": {"name": "oss"}}
    model = parse("wd", "ns", spec)
    assert [(r.name, r.key) for r in model.secret_refs] == [
        ("oss", "oss_access_id"),
        ("oss", "oss_access_key"),
    ]


def test_secret_in_model_config_is_refused(spec):
    spec["modelConfig"]["oss_access_key"] = "s3cr3t"
    err = _error(spec)
    assert err.reason == "SecretInSpec"
    assert "s3cr3t" not in err.message


def test_conflicting_duplicate_fields_are_refused(spec):
    spec["modelConfig"]["checkpoint_dir"] = "/elsewhere/"
    err = _error(spec)
    assert err.reason == "ConflictingFields"
    assert "/elsewhere/" in err.message


def test_same_value_in_both_places_is_fine(spec):
    spec["modelConfig"]["checkpoint_dir"] = "/models/ckpt/"
    assert parse("wd", "ns", spec).storage.checkpoint_dir == "/models/ckpt/"


def test_model_config_alone_can_locate_the_model(spec):
    del spec["storage"]
    spec["modelConfig"].update(
        {"model_store_type": "local", "savedmodel_dir": "/m/sm", "checkpoint_dir": "/m/c"}
    )
    model = parse("wd", "ns", spec)
    assert (model.storage.savedmodel_dir, model.storage.checkpoint_dir) == ("/m/sm", "/m/c")


def test_redis_needs_url_and_password_secret(spec):
    spec["modelConfig"]["feature_store_type"] = "redis"
    assert _error(spec).field == "spec.featureStore.redisUrl"
    spec["featureStore"] = {"redisUrl": "redis://r:6379"}
    assert _error(spec).reason == "MissingCredentials"
    spec["featureStore"]["passwordSecretRef"] = {"name": "redis"}
    assert parse("wd", "ns", spec).feature_store.password.key == "redis_password"


def test_cpusets_must_have_one_group_per_session(spec):
    spec["sessionGroup"] = {"sessionNum": 3, "cpusets": "0-1;2-3"}
    assert _error(spec).reason == "InvalidSessionGroup"


def test_name_must_fit_a_service(spec):
    assert _error(spec, name="a" * 64).reason == "InvalidName"
    assert _error(spec, name="9lives").reason == "InvalidName"


def test_image_falls_back_to_operator_default(spec):
    del spec["image"]
    assert _error(spec).field == "spec.image"
    assert parse("wd", "ns", spec, default_image="img:2").image == "img:2"


def test_cli_parses_namespaces_and_formats():
    from deeprec_operator.main import build_parser

    args = build_parser().parse_args(
        ["--namespace", "a", "-n", "b", "--liveness-port", "8080", "--log-format", "json"]
    )
    assert (args.namespaces, args.liveness_port, args.log_format) == (["a", "b"], 8080, "json")
    assert build_parser().parse_args([]).namespaces == []
