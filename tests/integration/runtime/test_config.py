"""model_config parsing: DeepRec's fields, defaults and rules; clear errors naming the field."""

import json
import logging

import pytest

from deeprec_runtime.config import ModelConfig, load_model_config, parse_model_config
from deeprec_runtime.errors import ConfigError

SEED_EXAMPLE = {  # every key of the seed document, with its example values
    "session_num": 2, "select_session_policy": "MOD", "use_per_session_threads": False,
    "cpusets": "0;1", "gpu_ids_list": "", "use_multi_stream": False,
    "enable_device_placement_optimization": False, "enable_inline_execute": False,
    "omp_num_threads": 4, "kmp_blocktime": 0, "feature_store_type": "local",
    "redis_url": "redis_url", "redis_password": "redis_password", "read_thread_num": 4,
    "update_thread_num": 1, "serialize_protocol": "protobuf", "inter_op_parallelism_threads": 10,
    "intra_op_parallelism_threads": 10, "model_update_inter_threads": 4,
    "model_update_intra_threads": 4, "init_timeout_minutes": 1,
    "signature_name": "serving_default", "warmup_file_name": "warm_up.bin",
    "model_store_type": "oss", "checkpoint_dir": "oss://mybucket/test/ckpt_parent_dir/",
    "savedmodel_dir": "oss://mybucket/test/savedmodel/1616466677/",
    "oss_endpoint": "oss_endpoint", "oss_access_id": "oss_access_id",
    "oss_access_key": "oss_access_key", "timeline_start_step": 1, "timeline_interval_step": 2,
    "timeline_trace_count": 3, "timeline_path": "oss://mybucket/timeline/",
    "ev_storage_type": 12, "ev_storage_path": "/ssd/1/", "ev_storage_size": [1024, 1024],
}


def test_every_seed_field_is_accepted_without_warnings(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = parse_model_config(SEED_EXAMPLE, env={})
    assert caplog.records == []
    for key, value in SEED_EXAMPLE.items():
        got = getattr(cfg, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key


def test_defaults_follow_deeprec():
    cfg = parse_model_config({"savedmodel_dir": "/m"}, env={})
    assert cfg.session_num == 1 and cfg.select_session_policy == "MOD"
    assert cfg.omp_num_threads == 4 and cfg.kmp_blocktime == 0
    assert cfg.read_thread_num == 4 and cfg.update_thread_num == 2
    assert cfg.signature_name == "serving_default" and cfg.model_store_type == "local"
    assert cfg.ev_storage_type == 0 and not cfg.batching.enabled
    assert cfg.update_poll_seconds <= 5  # new versions noticed within 5 s


@pytest.mark.parametrize("fields, field, words", [
    ({"select_session_policy": "RANDOM"}, "select_session_policy", ["'MOD'", "'RR'", "RANDOM"]),
    ({"model_store_type": "s3"}, "model_store_type", ["'local'", "'oss'", "'hdfs'"]),
    ({"feature_store_type": "disk"}, "feature_store_type", ["'memory'", "'redis'"]),
    ({"session_num": 0}, "session_num", ["[1, 1024]"]),
    ({"session_num": "two"}, "session_num", ["integer"]),
    ({"read_thread_num": 97}, "read_thread_num", ["[1, 96]"]),
    ({"update_thread_num": 17}, "update_thread_num", ["[1, 16]"]),
    ({"use_per_session_threads": "yes"}, "use_per_session_threads", ["true or false"]),
    ({"ev_storage_type": 2}, "ev_storage_type", ["0, 1, 12"]),
    ({"ev_storage_type": 12}, "ev_storage_path", ["required"]),
    ({"serialize_protocol": "json"}, "serialize_protocol", ["'protobuf'"]),
    ({"feature_store_type": "redis"}, "redis_url", ["required"]),
    ({"model_store_type": "oss", "savedmodel_dir": "oss://b/m"}, "oss_endpoint", ["required"]),
    ({"checkpoint_dir": "s3://b/c"}, "checkpoint_dir", ["unsupported scheme"]),
    ({"checkpoint_dir": "oss://b/c"}, "checkpoint_dir", ["model_store_type"]),
    ({"timeline_trace_count": 3}, "timeline_start_step", ["four timeline fields"]),
    ({"ev_storage_size": "1024"}, "ev_storage_size", ["list"]),
    ({"batching": {"max_batch_size": 8, "allowed_batch_sizes": [2, 4]}},
     "batching.allowed_batch_sizes", ["max_batch_size"]),
    ({"batching": {"max_batch_size": -1}}, "batching.max_batch_size", ["[0,"]),
])
def test_bad_values_fail_naming_the_field_and_allowed_values(fields, field, words):
    with pytest.raises(ConfigError) as err:
        parse_model_config({"savedmodel_dir": "/m", **fields}, env={})
    assert err.value.field == field
    assert f"'{field}'" in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_savedmodel_dir_is_required():
    with pytest.raises(ConfigError) as err:
        parse_model_config({"checkpoint_dir": "/c"}, env={})
    assert err.value.field == "savedmodel_dir"


def test_unknown_fields_are_warned_about_not_fatal(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = parse_model_config({"savedmodel_dir": "/m", "future_knob": 1}, env={})
    assert isinstance(cfg, ModelConfig)
    assert "future_knob" in caplog.text


def test_local_and_memory_both_mean_the_in_process_store():
    for value in ("local", "memory"):
        assert parse_model_config({"savedmodel_dir": "/m", "feature_store_type": value},
                                  env={}).feature_store_type == value


def test_credentials_come_from_the_environment_and_are_redacted():
    cfg = parse_model_config(
        {"savedmodel_dir": "oss://b/m", "model_store_type": "oss", "feature_store_type": "redis",
         "redis_url": "redis://r:6379"},
        env={"OSS_ACCESS_ID": "id-1", "OSS_ACCESS_KEY": "key-SECRET-1", "OSS_ENDPOINT": "oss.local",
             "REDIS_PASSWORD": "pw-SECRET-2"})
    assert cfg.oss_access_key == "key-SECRET-1" and cfg.redis_password == "pw-SECRET-2"
    text = repr(cfg) + json.dumps(cfg.redacted())
    assert "SECRET" not in text


def test_file_errors_name_the_problem(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_model_config(str(empty))
    bad = tmp_path / "bad.json"
    bad.write_text("{" * 100000)
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model_config(str(bad))
    with pytest.raises(ConfigError, match="cannot read"):
        load_model_config(str(tmp_path / "missing.json"))
    wrapped = tmp_path / "eas.json"
    wrapped.write_text(json.dumps({"model_config": {"savedmodel_dir": "/m", "session_num": 3}}))
    assert load_model_config(str(wrapped), env={}).session_num == 3


def test_cli_exits_with_the_field_named(tmp_path, capsys):
    from deeprec_runtime.cli import main

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"savedmodel_dir": "/m", "select_session_policy": "X"}))
    assert main(["serve", "--config", str(path), "--grpc-port", "0"]) == 2
    assert "select_session_policy" in capsys.readouterr().err


def test_a_password_inside_redis_url_never_reaches_the_logs(caplog):
    """DeepRec users write `redis_url` by hand; one with a password in it must be masked in the
    redacted config (what start-up logs) and in any log line, whoever writes it."""
    from deeprec_api import redact

    for url in ("redis://:pw-SECRET-3@r:6379", "redis://user:pw-SECRET-3@r:6379/0",
                "r:6379?password=pw-SECRET-3"):
        cfg = parse_model_config({"savedmodel_dir": "/m", "feature_store_type": "redis",
                                  "redis_url": url}, env={"REDIS_PASSWORD": "x"})
        assert "SECRET" not in json.dumps(cfg.redacted()) + repr(cfg), url
    redact.install()
    logging.getLogger("redis.connection").error("cannot connect to %s", "redis://:pw-SECRET-4@r:6379")
    assert "SECRET" not in caplog.text and "redis://***@r:6379" in caplog.text
