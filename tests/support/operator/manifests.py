"""The operator's manifests as tests read them: a DeepRecModel spec as the API server stores it,
the CRD, the Helm chart (and the helm binary that renders it) and the example models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import REPO

CRD_PATH = REPO / "crds" / "deeprecmodels.serving.deeprec.io.yaml"
CHART_DIR = REPO / "helm" / "deeprec-serving"
EXAMPLE_PATH = REPO / "examples" / "deeprecmodel.yaml"
SECURED_EXAMPLE_PATH = REPO / "examples" / "deeprecmodel-secured.yaml"

#: The helm binary of the control-plane cache that scripts/k8s-plane.sh builds.
HELM = Path(os.environ.get("DEEPREC_K8S_CACHE",
                           Path.home() / ".cache" / "deeprec-serving" / "k8s-v1.34.4")) / "bin" / "helm"

BASE_SPEC: dict[str, Any] = {
    "version": "latest",
    "replicas": 2,
    "image": "registry.example/deeprec-runtime:1",
    "resources": {"requests": {"cpu": "4", "memory": "8Gi"}},
    "storage": {
        "storeType": "local",
        "checkpointDir": "/models/ckpt/",
        "savedModelDir": "/models/savedmodel/",
    },
    "modelConfig": {"signature_name": "serving_default", "feature_store_type": "memory"},
}


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def example_model() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(EXAMPLE_PATH.read_text()) if d]
    return next(d for d in docs if d["kind"] == "DeepRecModel")


def secured_example_model() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(SECURED_EXAMPLE_PATH.read_text()) if d]
    return next(d for d in docs if d["kind"] == "DeepRecModel")
