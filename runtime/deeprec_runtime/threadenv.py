"""Process-wide threading environment, exported before TensorFlow creates its first session.

Importing this module never imports TensorFlow, so `deeprec-runtime serve` calls
`export_thread_env(config)` before anything TensorFlow-heavy is imported.

What is honoured when (tensorflow-cpu 2.21, checked):
- TF_OVERRIDE_GLOBAL_THREADPOOL=1 (always set): every session gets its own intra-op pool sized by
  its ConfigProto instead of sharing the pool the process's FIRST session created. TensorFlow
  reads it when a session creates its devices, so it works even when TensorFlow was imported
  earlier, as long as no session exists yet.
- OMP_NUM_THREADS / KMP_BLOCKTIME (`omp_num_threads`, `kmp_blocktime`): read by OpenMP/MKL
  runtimes when they initialise, i.e. only if exported before the library loads. Stock
  tensorflow-cpu runs oneDNN on TensorFlow's own thread pools, not OpenMP, so these two matter
  for MKL/OpenMP builds (DeepRec, intel-tensorflow); they are exported for those builds and are
  inert on stock wheels.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)


def thread_env(cfg) -> dict[str, str]:
    """The variables a ModelConfig asks for (pure)."""
    return {
        "OMP_NUM_THREADS": str(cfg.omp_num_threads),
        "KMP_BLOCKTIME": str(cfg.kmp_blocktime),
        "TF_OVERRIDE_GLOBAL_THREADPOOL": "1",
    }


def export_thread_env(cfg, environ: MutableMapping[str, str] | None = None,
                      modules: Mapping[str, object] | None = None) -> dict[str, str]:
    """Exports thread_env(cfg). The config wins over inherited values, as in DeepRec. Warns when
    TensorFlow is already imported: the OpenMP variables may then come too late."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    values = thread_env(cfg)
    environ.update(values)
    if "tensorflow" in modules:
        log.info("TensorFlow was imported before the thread environment was exported: "
                 "OMP_NUM_THREADS/KMP_BLOCKTIME only reach OpenMP runtimes not yet loaded")
    return values


# Per-session intra-op pools must be in place before any session of this process exists, and
# importing the runtime's session code always happens before it builds one.
os.environ.setdefault("TF_OVERRIDE_GLOBAL_THREADPOOL", "1")
