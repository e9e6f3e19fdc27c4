"""Several models in one runtime, and TF Serving's integer versions over our named versions.

A runtime serves one or more named models (TF Serving's model config list, Simple TensorFlow
Serving's `model_config_file`); each has its own DeepRec model_config, manager, versions and data
plane. The first model is the default one: the DeepRec gRPC service, which has no model name
field, serves it. Example list file (JSON or YAML):

    {"model_config_list": [
        {"name": "ranking", "model_config": "ranking/model_config.json"},
        {"name": "recall", "model_config": {"savedmodel_dir": "/models/recall/saved_model",
                                            "checkpoint_dir": "/models/recall/ckpts"}}]}

Version numbers: TF Serving names versions by int64; ours are folders ("checkpoint_2") holding a
full checkpoint of some global step plus deltas. A version's number is its full checkpoint's step
(the N of `model.ckpt-N`), which stays the same while deltas apply; a model without
checkpoint_dir (SavedModel variables only) has the single version 1. A version label is the
version's folder name ("checkpoint_2").
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from deeprec_api import predict_pb2 as pb
from deeprec_api.pod import TARGET_VERSION_ANNOTATION, target_version_annotation
from deeprec_runtime.config import ModelConfig, load_model_config, parse_model_config
from deeprec_runtime.core import SAVEDMODEL_VERSION
from deeprec_runtime.core import VersionState as State
from deeprec_runtime.dataplane import DataPlane
from deeprec_runtime.errors import ConfigError, InvalidArgument, NotFound
from deeprec_runtime.model.manager import Manager
from deeprec_runtime.model.servable import Servable
from deeprec_runtime.model.signature import Signature

DEFAULT_MODEL_NAME = "default"
SAVEDMODEL_VERSION_NUMBER = 1

# Our version states -> TF Serving's ModelVersionStatus.State names.
TFS_STATES = {State.NEW.value: "START", State.LOADING.value: "LOADING",
              State.AVAILABLE.value: "AVAILABLE", State.SERVING.value: "AVAILABLE",
              State.UNLOADING.value: "UNLOADING", State.END.value: "END", State.ERROR.value: "END"}


def version_number(name: str, full_step: int) -> int:
    """TF Serving's int version of one of our versions (see the module docstring)."""
    return SAVEDMODEL_VERSION_NUMBER if name == SAVEDMODEL_VERSION else full_step


@dataclass(frozen=True)
class ModelEntry:
    """One model of a runtime: its name and its DeepRec model_config."""

    name: str
    config: ModelConfig


@dataclass(frozen=True)
class VersionState:
    """One version as TF Serving's model status reports it."""

    number: int
    name: str
    state: str
    """TF Serving state name: START, LOADING, AVAILABLE, UNLOADING or END."""
    error: str


# --- the model config list ----------------------------------------------------------------
def load_model_config_list(path: str) -> list[ModelEntry]:
    """Reads a model config list file (JSON, or YAML when it ends in .yaml/.yml)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError("<model config list>", f"cannot read {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        raise ConfigError("<model config list>", f"{path} does not parse: {exc}") from None
    return parse_model_config_list(raw, os.path.dirname(os.path.abspath(path)))


def parse_model_config_list(raw: Any, base_dir: str = ".") -> list[ModelEntry]:
    """`{"model_config_list": [{"name", "model_config"}]}` (or the bare list) -> entries;
    a model_config given as a path is read relative to `base_dir`."""
    items = raw.get("model_config_list") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise ConfigError("model_config_list", "expected a non-empty list of "
                          "{name, model_config} entries")
    entries: list[ModelEntry] = []
    for i, item in enumerate(items):
        where = f"model_config_list[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(where, f"expected an object, got {item!r}")
        name = item.get("name")
        if not isinstance(name, str) or not name or "/" in name or ":" in name:
            raise ConfigError(f"{where}.name", "must be a non-empty string without '/' or ':'")
        if any(e.name == name for e in entries):
            raise ConfigError(f"{where}.name", f"model '{name}' is listed twice")
        source = item.get("model_config")
        try:
            if isinstance(source, str) and source:
                config = load_model_config(os.path.join(base_dir, source))
            elif isinstance(source, dict):
                inner = source.get("model_config", source)
                config = parse_model_config(inner if isinstance(inner, dict) else source)
            else:
                raise ConfigError(f"{where}.model_config",
                                  "expected a path to a model_config JSON file or an inline object")
        except ConfigError as exc:
            raise ConfigError(f"{where} ({name})", str(exc)) from None
        entries.append(ModelEntry(name, config))
    return entries


# --- one served model ---------------------------------------------------------------------
class ServedModel:
    """A named model: its manager (versions), its data plane and TF Serving's view of them."""

    def __init__(self, name: str, config: ModelConfig, annotations_file: str | None,
                 annotation_key: str = TARGET_VERSION_ANNOTATION):
        self.name = name
        self.config = config
        self.manager = Manager(config, annotations_file, annotation_key=annotation_key)
        self.dataplane = DataPlane(config, self.manager, name)
        self.dataplane.observer = self._observe
        #: Extra per-request observer (metrics): (model name, version name, request).
        self.on_request: Callable[[str, str, pb.PredictRequest], None] | None = None

    def _observe(self, version: str, request: pb.PredictRequest) -> None:
        if self.on_request is not None:
            self.on_request(self.name, version, request)

    def predict(
        self, request: pb.PredictRequest, version: str | None = None, offer_native: bool = False
    ) -> tuple[pb.PredictResponse, str]:
        """Runs the request; returns the response and the name of the version that served it
        (`offer_native`: see DataPlane.predict_versioned)."""
        return self.dataplane.predict_versioned(request, version, offer_native=offer_native)

    # --- versions -----------------------------------------------------------------------------
    def resolve(self, number: int | None = None, label: str | None = None) -> str | None:
        """A TF Serving version choice -> the name of a loaded version (None: the serving one).
        NotFound when the version does not exist or is not loaded."""
        if number is None and not label:
            return None
        loaded = self.manager.loaded()
        if label:
            if any(s.name == label for s in loaded):
                return label
            known = any(v.name == label for v in self.manager.known_versions)
            raise NotFound(f"version label '{label}' of model '{self.name}' "
                           + ("is not loaded" if known else "does not exist")
                           + self._serving_note(loaded))
        for s in loaded:
            if version_number(s.name, s.full_step) == number:
                return s.name
        known = any(v.full_step == number for v in self.manager.known_versions)
        raise NotFound(f"version {number} of model '{self.name}' "
                       + ("is not loaded" if known else "does not exist") + self._serving_note(loaded))

    @staticmethod
    def _serving_note(loaded: list[Servable]) -> str:
        if not loaded:
            return "; no version is loaded yet"
        return "; loaded: " + ", ".join(
            f"{version_number(s.name, s.full_step)} ({s.name})" for s in loaded)

    def number_of(self, name: str) -> int:
        """The int version of a loaded or known version name (0 when unknown)."""
        if name == SAVEDMODEL_VERSION:
            return SAVEDMODEL_VERSION_NUMBER
        for s in self.manager.loaded():
            if s.name == name:
                return s.full_step
        for v in self.manager.known_versions:
            if v.name == name:
                return v.full_step
        return 0

    def version_states(self, number: int | None = None, label: str | None = None) -> list[VersionState]:
        """TF Serving's model status: every version, or the one asked for (NotFound if none)."""
        info = self.manager.info()
        states = [VersionState(version_number(v.name, v.full_step), v.name,
                               TFS_STATES.get(v.state, "UNKNOWN"), v.error)
                  for v in info.versions]
        if label:
            states = [s for s in states if s.name == label]
        elif number is not None:
            states = [s for s in states if s.number == number]
        else:
            return states
        if not states:
            what = f"label '{label}'" if label else str(number)
            raise NotFound(f"model '{self.name}' has no version {what}")
        return states

    # --- signatures ---------------------------------------------------------------------------
    def signatures(self, version: str | None = None) -> tuple[dict[str, Signature], str]:
        """The signatures of the serving (or named) version and that version's name."""
        with self.manager.hold(version) as handle:
            return handle.servable.signatures, handle.version

    def signature(self, name: str, version: str | None = None) -> Signature:
        with self.manager.hold(version) as handle:
            return handle.servable.signature(name or self.config.signature_name)

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self.manager.start()

    def stop(self) -> None:
        self.dataplane.close()  # wakes batched callers before the versions go
        self.manager.stop()


class ModelRegistry:
    """The models of one runtime, by name; the first is the default."""

    def __init__(self, entries: list[ModelEntry], annotations_file: str | None = None):
        if not entries:
            raise ConfigError("model_config_list", "at least one model is needed")
        # The pod's plain target-version annotation pins the default model; the others are pinned
        # by serving.deeprec.io/target-version.<name> (absent: their latest version).
        self.models: dict[str, ServedModel] = {}
        for i, entry in enumerate(entries):
            key = target_version_annotation(None if i == 0 else entry.name)
            self.models[entry.name] = ServedModel(entry.name, entry.config, annotations_file, key)
        self.default = next(iter(self.models.values()))

    def get(self, name: str | None) -> ServedModel:
        """The model called `name` (the default one when `name` is empty); NotFound otherwise."""
        if not name:
            return self.default
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"model '{name}' is not served here; models: {', '.join(self.models)}")
        return model

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)

    def start(self) -> None:
        for m in self:
            m.start()

    def stop_updates(self) -> None:
        for m in self:
            m.manager.stop_updates()

    def stop(self) -> None:
        for m in self:
            m.stop()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return all(m.manager.wait_ready(timeout) for m in self)


def parse_version_number(text: str, what: str = "version") -> int:
    """A version number from a URL or JSON value; InvalidArgument naming `what` otherwise."""
    try:
        number = int(text)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what} must be an integer, got {text!r}") from None
    if number < 0:
        raise InvalidArgument(f"{what} must not be negative, got {number}")
    return number
