"""Loads the custom TensorFlow op libraries a model_config names (`custom_op_paths`).

A graph that uses ops from such a library cannot even be imported until the library is loaded,
so this runs before the first version loads. Loading is process-wide and idempotent: the same
path is loaded once however many managers ask for it.
"""

from __future__ import annotations

import logging
import os
import threading

from deeprec_runtime.errors import ConfigError

log = logging.getLogger(__name__)

_loaded: set[str] = set()
_lock = threading.Lock()


def load_custom_ops(paths: tuple[str, ...]) -> None:
    """Loads each library; a missing or unloadable one raises ConfigError naming the field."""
    if not paths:
        return
    import tensorflow as tf

    with _lock:
        for path in paths:
            real = os.path.realpath(path)
            if real in _loaded:
                continue
            if not os.path.isfile(real):
                raise ConfigError("custom_op_paths", f"{path!r} is not a file")
            try:
                tf.load_op_library(real)
            except Exception as exc:  # noqa: BLE001 (TF raises NotFoundError (bad ELF, missing symbols) and others)
                raise ConfigError("custom_op_paths",
                                  f"cannot load {path!r}: {str(exc).strip().splitlines()[0]}") from None
            _loaded.add(real)
            log.info("loaded custom op library %s", path)
