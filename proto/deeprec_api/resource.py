"""The DeepRecModel resource (crds/deeprecmodels.serving.deeprec.io.yaml) and every label and
annotation key under its group, so that no two parts of the project spell one differently."""

from __future__ import annotations

GROUP = "serving.deeprec.io"
VERSION = "v1alpha1"
PLURAL = "deeprecmodels"
KIND = "DeepRecModel"

#: On every object the operator makes for a model (and the Deployment's selector): the model's name.
MODEL_LABEL = f"{GROUP}/model"
#: On the pod template: a hash of the runtime's configuration, so that a change rolls the pods.
CONFIG_HASH_ANNOTATION = f"{GROUP}/config-hash"
