"""Manager: the core's lifecycle (core/manager.py) with the TensorFlow loader, for one model.

It wires a ModelConfig to the core: the version source on the store (checkpoint_dir), the target
version from the pod annotation, the TensorFlow loader (model/tf_loader.py), and turns the
manager's view into the status API's ServingModelInfo. Requests hold a version through `hold()`.
"""

from __future__ import annotations

from collections.abc import Callable

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.config import ModelConfig
from deeprec_runtime.core.manager import STOP_WAIT_SECONDS
from deeprec_runtime.core.manager import Manager as CoreManager
from deeprec_runtime.core.states import UpdateEvent, VersionState
from deeprec_runtime.errors import NotFound, Unavailable
from deeprec_runtime.model.annotations import TARGET_VERSION_ANNOTATION, read_target_version
from deeprec_runtime.model.custom_ops import load_custom_ops
from deeprec_runtime.model.servable import Servable
from deeprec_runtime.model.source import VersionSource
from deeprec_runtime.model.tf_loader import TFLoader
from deeprec_runtime.store.base import ModelStore, open_store

__all__ = ["STOP_WAIT_SECONDS", "Manager", "UpdateEvent"]


class Manager(CoreManager[Servable]):
    def __init__(self, config: ModelConfig, annotations_file: str | None = None,
                 store: ModelStore | None = None,
                 annotation_key: str = TARGET_VERSION_ANNOTATION):
        self.config = config
        self.annotations_file = annotations_file
        #: The pod annotation that pins this model's version (see model/annotations.py).
        self.annotation_key = annotation_key
        load_custom_ops(config.custom_op_paths)  # before any graph that may use them is imported
        self.store = store or open_store(config)
        source = (VersionSource(self.store, config.checkpoint_dir) if config.checkpoint_dir
                  else None)
        self.tf_loader = TFLoader(config, self.store)
        #: The session group every version runs on (lanes, pools, cpusets), from the config.
        self.group_plan = self.tf_loader.options.plan
        self._hooks: dict[str, Callable] = {}
        super().__init__(self.tf_loader, source, self._target, config.update_poll_seconds,
                         config.retain_previous_version, config.checkpoint_dir)

    def _target(self) -> str:
        return read_target_version(self.annotations_file, self.annotation_key)

    def _nothing_serving(self, message: str) -> Exception:
        return Unavailable(message)

    def _not_loaded(self, message: str) -> Exception:
        return NotFound(message)

    # --- what the loader holds ----------------------------------------------------------------
    @property
    def features(self):
        """Where embedding rows live when not in the session (Redis, DRAM+SSD tiers), or None."""
        return self.tf_loader.features

    @property
    def load_thread(self):
        return self.tf_loader.load_thread

    @property
    def tracer(self):
        return self.tf_loader.tracer

    @property
    def warmup_request(self) -> pb.PredictRequest | None:
        return self.tf_loader.warmup_request

    # --- subscribers --------------------------------------------------------------------------
    @property
    def listeners(self) -> list[Callable[[UpdateEvent], object]]:
        """The subscribers of `updates` (append to subscribe)."""
        return self.updates.subscribers

    @property
    def before_serving(self) -> Callable[[Servable], object] | None:
        """The native fast path's subscriber to `prepare` (native/fast_predict.py): it makes and
        checks a version's plan before the swap, so that publishing it costs nothing."""
        return self._hooks.get("prepare")

    @before_serving.setter
    def before_serving(self, hook: Callable[[Servable], object] | None) -> None:
        self._set_hook("prepare", self.prepare.subscribers, hook)

    @property
    def on_serving(self) -> Callable[[Servable | None], object] | None:
        """The native fast path's subscriber to `serving`: publishes the serving version's plan."""
        return self._hooks.get("serving")

    @on_serving.setter
    def on_serving(self, hook: Callable[[Servable | None], object] | None) -> None:
        self._set_hook("serving", self.serving.subscribers, hook)

    def _set_hook(self, topic: str, subscribers: list, hook: Callable | None) -> None:
        old = self._hooks.pop(topic, None)
        if old is not None and old in subscribers:
            subscribers.remove(old)
        if hook is not None:
            self._hooks[topic] = hook
            subscribers.append(hook)

    # --- status -------------------------------------------------------------------------------
    def info(self) -> pb.ServingModelInfo:
        current, statuses = self.snapshot()
        info = pb.ServingModelInfo(
            model_path=(current.version.path if current and current.version
                        else self.config.savedmodel_dir),
            target_version=self.target, last_update_error=self.last_error,
            signature_name=self.config.signature_name)
        if current is not None:
            info.version = current.name
            info.full_step = current.full_step
            info.delta_step = current.delta_step
            info.load_time = current.load_time
            info.update_time = current.update_time
        known = self._known
        order = [v.name for v in known]
        for name in order + sorted(set(statuses) - set(order)):
            if name in statuses:
                s = statuses[name]
                info.versions.append(pb.VersionStatus(name=name, full_step=s.full_step,
                                                      delta_step=s.delta_step,
                                                      state=s.state.value, error=s.error))
            else:
                v = next(x for x in known if x.name == name)
                info.versions.append(pb.VersionStatus(name=name, full_step=v.full_step,
                                                      delta_step=v.delta_step,
                                                      state=VersionState.NEW.value))
        return info
