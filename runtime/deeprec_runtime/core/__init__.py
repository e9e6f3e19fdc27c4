"""The model lifecycle without TensorFlow, split as TensorFlow Serving's core/ is.

- versions: what a version is (a full checkpoint and its deltas);
- source: which versions exist (model/source.py reads them from a store);
- policy: which version to serve and what to do next (pure functions);
- loader: the contract a loader meets (model/tf_loader.py is the TensorFlow one);
- manager: loads on its update thread, swaps, rolls back, retires, and publishes each version's
  state (states) and each update's outcome (events);
- handle: the one way a request holds a version;
- gate: the read/write gate behind a handle and a delta apply.

Nothing here imports TensorFlow, numpy, gRPC or the rest of deeprec_runtime (.importlinter).
"""

from deeprec_runtime.core.events import Topic
from deeprec_runtime.core.gate import ReadWriteGate
from deeprec_runtime.core.handle import ServableHandle
from deeprec_runtime.core.loader import Loader, LoadError, Servable, TransientLoadError
from deeprec_runtime.core.manager import Manager, NoVersionServing, VersionNotLoaded
from deeprec_runtime.core.source import Source
from deeprec_runtime.core.states import StateEvent, UpdateEvent, VersionState
from deeprec_runtime.core.versions import SAVEDMODEL_VERSION, BadVersion, Delta, VersionInfo

__all__ = [
    "SAVEDMODEL_VERSION", "BadVersion", "Delta", "LoadError", "Loader", "Manager",
    "NoVersionServing", "ReadWriteGate", "Servable", "ServableHandle", "Source", "StateEvent",
    "Topic", "TransientLoadError", "UpdateEvent", "VersionInfo", "VersionNotLoaded",
    "VersionState",
]
