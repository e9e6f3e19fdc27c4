"""The pure child builders: ConfigMap, Deployment and Service from a spec."""

from __future__ import annotations

import json

import pytest

from deeprec_operator import resources as r
from deeprec_operator.spec import SpecError, parse
from deeprec_operator.versions import TARGET_ANNOTATION


def _model(spec, name="wd"):
    return parse(name, "ns", spec)


def _runtime(deployment):
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == r.RUNTIME_CONTAINER)


def test_config_map_carries_deeprec_keys_without_secrets(spec):
    spec["storage"] = {"storeType": "oss", "checkpointDir": "oss://b/ckpt/", "savedModelDir": "oss://b/sm/",
                       "ossEndpoint": "oss.example", "credentialsSecretRef": {"name": "oss"}}
    spec["modelConfig"].update({"omp_num_threads": 2, "ev_storage_size": [1024, 1024]})
    cm = r.config_map(_model(spec))
    assert cm["metadata"]["name"] == "wd-config"
    cfg = json.loads(cm["data"]["model_config.json"])
    assert cfg["model_store_type"] == "oss"
    assert cfg["checkpoint_dir"] == "oss://b/ckpt/"
    assert cfg["savedmodel_dir"] == "oss://b/sm/"
    assert cfg["oss_endpoint"] == "oss.example"
    assert cfg["omp_num_threads"] == 2 and cfg["ev_storage_size"] == [1024, 1024]
    for secret_key in ("oss_access_id", "oss_access_key", "redis_password"):
        assert secret_key not in cfg


def test_secrets_reach_the_container_as_env_from_secret_refs(spec):
    spec["storage"] = {"storeType": "oss", "checkpointDir": "oss://b/ckpt/", "savedModelDir": "oss://b/sm/",
                       "credentialsSecretRef": {"name": "oss", "accessKeyKey": "key", "endpointKey": "ep"}}
    spec["modelConfig"]["feature_store_type"] = "redis"
    spec["featureStore"] = {"redisUrl": "redis://r:6379", "passwordSecretRef": {"name": "redis", "key": "pw"}}
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in _runtime(r.deployment(_model(spec)))["env"]}
    assert env["OSS_ACCESS_ID"] == {"name": "oss", "key": "oss_access_id"}
    assert env["OSS_ACCESS_KEY"] == {"name": "oss", "key": "key"}
    assert env["OSS_ENDPOINT"] == {"name": "oss", "key": "ep", "optional": True}
    assert env["REDIS_PASSWORD"] == {"name": "redis", "key": "pw"}
    assert json.loads(r.render_config(_model(spec)))["redis_url"] == "redis://r:6379"


@pytest.mark.parametrize(
    ("cores", "sessions"), [(1, 1), (2, 2), (4, 2), (8, 4), (7, 3)],
)
def test_session_group_follows_whole_cores(spec, cores, sessions):
    spec["resources"] = {"requests": {"cpu": str(cores), "memory": "1Gi"}}
    cfg = r.model_config(_model(spec))
    assert cfg["session_num"] == sessions
    # The runtime splits the cores the CPU manager gives the pod; node CPU ids are unknown here.
    assert "cpusets" not in cfg


def test_fractional_cpu_gives_no_cpusets(spec):
    spec["resources"] = {"requests": {"cpu": "1500m", "memory": "1Gi"}}
    cfg = r.model_config(_model(spec))
    assert "cpusets" not in cfg and "session_num" not in cfg


def test_explicit_session_group_wins(spec):
    spec["resources"] = {"requests": {"cpu": "6", "memory": "1Gi"}}
    spec["sessionGroup"] = {"sessionNum": 3, "policy": "RR", "cpusets": "0-1;2-3;4-5"}
    cfg = r.model_config(_model(spec))
    assert (cfg["session_num"], cfg["select_session_policy"], cfg["cpusets"]) == (3, "RR", "0-1;2-3;4-5")


def test_gpus_give_visible_ordinals(spec):
    spec["resources"] = {"limits": {"nvidia.com/gpu": 2, "cpu": "8", "memory": "16Gi"}}
    model = _model(spec)
    cfg = r.model_config(model)
    assert cfg["gpu_ids_list"] == "0,1"
    assert cfg["session_num"] == 1 and "cpusets" not in cfg
    res = _runtime(r.deployment(model))["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "2"


def test_whole_cores_give_guaranteed_qos(spec):
    spec["resources"] = {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    res = _runtime(r.deployment(_model(spec)))["resources"]
    assert res["requests"] == res["limits"] == {"cpu": "4", "memory": "8Gi"}


def test_fractional_cores_keep_the_users_requests(spec):
    spec["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    res = _runtime(r.deployment(_model(spec)))["resources"]
    assert res == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}


def test_runtime_container_contract(spec):
    d = r.deployment(_model(spec))
    c = _runtime(d)
    assert c["command"] == ["deeprec-runtime"]
    assert c["args"] == ["serve", "--config", "/etc/deeprec/model_config.json", "--grpc-port", "8500",
                         "--http-port", "8501", "--annotations-file", "/etc/podinfo/annotations"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["grpc"] == {"port": 8500}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    pod = d["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    podinfo = next(v for v in pod["volumes"] if v["name"] == "podinfo")
    assert podinfo["downwardAPI"]["items"] == [{"path": "annotations",
                                                "fieldRef": {"fieldPath": "metadata.annotations"}}]
    assert d["spec"]["selector"] == {"matchLabels": {"serving.deeprec.io/model": "wd"}}
    assert d["spec"]["replicas"] == 2


def test_target_version_is_never_in_the_pod_template(spec):
    before = r.deployment(_model(spec))
    spec["version"] = "checkpoint_2"
    after = r.deployment(_model(spec))
    assert before == after, "a version change must not change the Deployment (it would restart pods)"
    assert TARGET_ANNOTATION not in after["spec"]["template"]["metadata"]["annotations"]


def test_config_change_rolls_the_pods(spec):
    before = r.deployment(_model(spec))["spec"]["template"]["metadata"]["annotations"][
        r.CONFIG_HASH_ANNOTATION
    ]
    spec["modelConfig"]["omp_num_threads"] = 8
    after = r.deployment(_model(spec))["spec"]["template"]["metadata"]["annotations"][
        r.CONFIG_HASH_ANNOTATION
    ]
    assert before != after


def test_user_pod_template_gets_the_runtime_as_sidecar(spec):
    spec["podTemplate"] = {
        "metadata": {"labels": {"team": "ads"}},
        "spec": {"serviceAccountName": "ranker", "containers": [{"name": "ranker", "image": "ranker:1"}],
                 "volumes": [{"name": "cache", "emptyDir": {}}]},
    }
    tpl = r.deployment(_model(spec))["spec"]["template"]
    assert [c["name"] for c in tpl["spec"]["containers"]] == ["ranker", "deeprec-runtime"]
    assert tpl["spec"]["serviceAccountName"] == "ranker"
    assert {"cache", "model-config", "podinfo"} <= {v["name"] for v in tpl["spec"]["volumes"]}
    assert tpl["metadata"]["labels"]["team"] == "ads"
    assert tpl["metadata"]["labels"]["serving.deeprec.io/model"] == "wd"


def test_reserved_container_name_is_refused(spec):
    spec["podTemplate"] = {"spec": {"containers": [{"name": "deeprec-runtime", "image": "x"}]}}
    with pytest.raises(r.TemplateError, match="reserved"):
        r.deployment(_model(spec))


def test_ssd_tier_and_claim_get_volumes(spec):
    spec["modelConfig"].update({"ev_storage_type": 12, "ev_storage_path": "/ssd/1/"})
    spec["storage"]["volumeClaim"] = {"claimName": "models", "mountPath": "/models"}
    d = r.deployment(_model(spec))
    mounts = {m["mountPath"]: m for m in _runtime(d)["volumeMounts"]}
    assert "/ssd/1/" in mounts and mounts["/models"]["readOnly"] is True
    volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "models"


def test_service_ports(spec):
    spec["service"] = {"type": "ClusterIP", "grpcPort": 9000, "httpPort": 9001}
    svc = r.service(_model(spec))
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {"grpc": (9000, 8500), "http": (9001, 8501)}
    assert svc["spec"]["selector"] == r.selector_labels("wd")


def test_grpc_server_choice_reaches_the_runtime_args(spec):
    assert "--grpc-server" not in _runtime(r.deployment(_model(spec)))["args"]  # auto: default
    for choice in ("native", "python"):
        spec["service"] = {"grpcServer": choice}
        args = _runtime(r.deployment(_model(spec)))["args"]
        assert args[args.index("--grpc-server") + 1] == choice
    spec["service"] = {"grpcServer": "cython"}
    with pytest.raises(SpecError) as err:
        _model(spec)
    assert err.value.field == "spec.service.grpcServer"


def test_fast_predict_can_be_turned_off(spec):
    assert "--fast-predict" not in _runtime(r.deployment(_model(spec)))["args"]  # on: default
    spec["service"] = {"fastPredict": False}
    args = _runtime(r.deployment(_model(spec)))["args"]
    assert args[args.index("--fast-predict") + 1] == "off"
    spec["service"] = {"fastPredict": "no"}
    with pytest.raises(SpecError) as err:
        _model(spec)
    assert err.value.field == "spec.service.fastPredict"


def test_children_are_deterministic(spec):
    assert r.children(_model(spec)) == r.children(_model(spec))
    assert [c["kind"] for c in r.children(_model(spec))] == ["ConfigMap", "Deployment", "Service"]


def test_quantities():
    assert r.parse_quantity("500m") == r.parse_quantity("0.5")
    assert r.parse_quantity("2Gi") == 2 * 2**30
    with pytest.raises(ValueError):
        r.parse_quantity("lots")
