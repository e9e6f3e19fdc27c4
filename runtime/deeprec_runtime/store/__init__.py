"""Model stores: a small file-system view over local disk, OSS and HDFS.

The version source and loader only speak this interface, so a new backend is one module. Remote
backends fetch what a version needs into a local cache folder, because TensorFlow reads checkpoints
from local paths.
"""

from deeprec_runtime.store.base import FileInfo, ModelStore, open_store

__all__ = ["FileInfo", "ModelStore", "open_store"]
