"""Every helper module of the tests and the benchmarks' test helpers; no tests live here.

A helper belongs here whether several test folders use it or one does: test folders hold test
modules and ``conftest.py`` files, and a ``conftest.py`` holds fixtures only (it may import them
from here, ``from tests.support.runtime import serve  # noqa: F401``). Import helpers absolutely
(``from tests.support.plane import Plane``); a test module never imports another test module, a
``conftest.py`` or a sibling file.

Runtime and models:

- :mod:`tests.support.runtime`: small models on disk, runtimes in-process and as
  ``deeprec-runtime serve`` subprocesses, the gRPC client (fixtures ``demo``, ``seed_model``,
  ``serve``, ``serve_process``).
- :mod:`tests.support.runtime_server`: the two models one runtime serves side by side for the
  server tests, HTTP and metrics helpers, raw and DeepRec Predict calls.
- :mod:`tests.support.sequence_model`: a model with two unknown dimensions and requests written
  at the protobuf wire level.
- :mod:`tests.support.history_model`: a SavedModel with two unknown dimensions (request bounds
  tests, the fuzzers, ``bench/storm_bench.py``).
- :mod:`tests.support.core_fakes`: a fake loader and source for the lifecycle core.
- :mod:`tests.support.training`: an independent reader of the checkpoint format.
- :mod:`tests.support.capi`: the C API's library build, requests and C host.
- :mod:`tests.support.faults`: the fault tests' model config.
- :mod:`tests.support.cpus`: CPU facts for the session-group tests.
- :mod:`tests.support.redis_server`: a real redis-server per test.
- :mod:`tests.support.deeprec`: DeepRec-format exports, models on disk and their expected answers.
- :mod:`tests.support.stores`: a local OSS server, a real HDFS, the store tests' account, retry
  policy and uploader.
- :mod:`tests.support.fuzz`: the fuzz targets' seed model and field-by-field requests.

Operator and control plane:

- :mod:`tests.support.operator`: the in-memory API client and other fakes, the fault-injecting
  client wrapper (also run as the operator), test-time certificates, the manifests tests read.
- :mod:`tests.support.plane`: the control plane of ``scripts/k8s-plane.sh`` (:class:`Plane`),
  ServiceAccount kubeconfigs, the Downward API bridge, ``wait_until``.
- :mod:`tests.support.apiproxy`: :class:`FaultProxy`, a kube-apiserver proxy that fails a share of
  writes with 409/500/503.
- :mod:`tests.support.operator_e2e`: the operator as a subprocess (plain or with fault hooks) and
  reads of what it made on the plane.

The repository root, for tests and helpers at any depth: ``tests.support.paths.REPO``.
"""
