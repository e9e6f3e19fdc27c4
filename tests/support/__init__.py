"""Helpers shared across test folders and the benchmarks; no tests live here.

A module belongs here when more than one test folder, or a benchmark under ``bench/``, uses it.
Import it absolutely (``from tests.support.plane import Plane``); a test module never imports
another test module. Fixtures built on these helpers stay in the ``conftest.py`` of the folder
that uses them.

- :mod:`tests.support.plane`: the control plane of ``scripts/k8s-plane.sh`` (:class:`Plane`),
  ServiceAccount kubeconfigs, the Downward API bridge, ``wait_until``.
- :mod:`tests.support.apiproxy`: :class:`FaultProxy`, a kube-apiserver proxy that fails a share of
  writes with 409/500/503.
- :mod:`tests.support.operator_e2e`: the operator as a subprocess (plain or with fault hooks) and
  reads of what it made on the plane.
- :mod:`tests.support.history_model`: a SavedModel with two unknown dimensions (request bounds
  tests, the fuzzers, ``bench/storm_bench.py``).
"""
