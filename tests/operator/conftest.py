"""Shared builders for the operator's unit tests: a DeepRecModel spec as the API server stores it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "deeprecmodels.serving.deeprec.io.yaml"
CHART_DIR = REPO / "helm" / "deeprec-serving"
EXAMPLE_PATH = REPO / "examples" / "deeprecmodel.yaml"

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


@pytest.fixture
def spec() -> dict[str, Any]:
    return copy.deepcopy(BASE_SPEC)


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def example_model() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(EXAMPLE_PATH.read_text()) if d]
    return next(d for d in docs if d["kind"] == "DeepRecModel")


SECURED_EXAMPLE_PATH = REPO / "examples" / "deeprecmodel-secured.yaml"


def secured_example_model() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(SECURED_EXAMPLE_PATH.read_text()) if d]
    return next(d for d in docs if d["kind"] == "DeepRecModel")
