"""deeprec_api's names are the ones the other artefacts spell out: the CRD, the runtime image and
the .proto. The runtime and operator tests pin the values themselves (golden manifests,
annotation files), so a changed name fails there too."""

from __future__ import annotations

import re

import yaml

from deeprec_api import pod, resource, service
from tests.support.paths import REPO


def test_resource_names_are_the_crds():
    crd = yaml.safe_load((REPO / "crds" / "deeprecmodels.serving.deeprec.io.yaml").read_text())
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{resource.PLURAL}.{resource.GROUP}"
    assert (spec["group"], spec["names"]["plural"], spec["names"]["kind"]) == (
        resource.GROUP, resource.PLURAL, resource.KIND)
    assert resource.VERSION in [v["name"] for v in spec["versions"] if v.get("storage")]


def test_runtime_image_exposes_the_api_ports():
    text = (REPO / "Dockerfile.runtime").read_text()
    assert re.search(rf"^EXPOSE {pod.GRPC_PORT} {pod.HTTP_PORT}$", text, re.M)
    assert f'"--grpc-port", "{pod.GRPC_PORT}", "--http-port", "{pod.HTTP_PORT}"' in text


def test_service_names_are_the_protos():
    proto = (REPO / "proto" / "deeprec" / "serving" / "predict.proto").read_text()
    package = re.search(r"^package ([\w.]+);", proto, re.M)[1]
    assert service.PREDICTION_SERVICE == f"{package}.PredictionService"
    for method in ("Predict", "GetServingModelInfo"):
        assert re.search(rf"rpc {method}\(", proto)
    assert service.PREDICT_METHOD.endswith("/Predict")
    assert service.MODEL_INFO_METHOD.endswith("/GetServingModelInfo")


def test_per_model_annotation_keys():
    assert pod.target_version_annotation() == pod.TARGET_VERSION_ANNOTATION
    assert pod.target_version_annotation("") == pod.TARGET_VERSION_ANNOTATION
    assert pod.target_version_annotation("second") == "serving.deeprec.io/target-version.second"
    assert pod.ANNOTATIONS_FILE.startswith(pod.PODINFO_DIR + "/")
