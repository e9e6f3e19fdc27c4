"""The test-only fault wrapper around the operator's API client (tests/support/operator/faulty_kube.py):
it fires at the calls that make up each step, the Nth time, exactly once, and passes every call
through; the e2e fault tests rely on it to SIGKILL the operator mid-sync."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from deeprec_operator.versions import annotation_patch
from tests.support.operator.fakes import FakeKube, pod
from tests.support.operator.faulty_kube import ENV, FaultyKube
from tests.support.paths import REPO

CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}, "data": {}}
DEP = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "ns"}}
MODEL = {"apiVersion": "serving.deeprec.io/v1alpha1", "kind": "DeepRecModel",
         "metadata": {"name": "m", "namespace": "ns"}}
MODEL_PATH = "/apis/serving.deeprec.io/v1alpha1/namespaces/ns/deeprecmodels/m"


class Killed(Exception):
    pass


def _kill(step: str, nth: int) -> None:
    raise Killed(f"{step}@{nth}")


def _wrapped(kill_at: str) -> tuple[FakeKube, FaultyKube]:
    inner = FakeKube()
    inner.put(MODEL)
    for i in range(4):
        inner.put(pod(f"p{i}"))
    return inner, FaultyKube(inner, kill_at, kill=_kill)


def test_an_applied_step_fires_after_the_apply_landed():
    inner, kube = _wrapped("deployment-applied")
    kube.apply(CM)
    with pytest.raises(Killed, match="deployment-applied@1"):
        kube.apply(DEP)
    assert [c[0] for c in inner.calls] == ["APPLY", "APPLY"], "the Deployment's apply was sent first"


def test_status_write_fires_before_the_patch_and_status_written_after():
    inner, kube = _wrapped("status-write")
    with pytest.raises(Killed):
        kube.merge_patch(MODEL_PATH, {"status": {"x": 1}}, subresource="status")
    assert inner.calls == []
    inner, kube = _wrapped("status-written")
    with pytest.raises(Killed):
        kube.merge_patch(MODEL_PATH, {"status": {"x": 1}}, subresource="status")
    assert inner.calls == [("PATCH", f"{MODEL_PATH}/status")]


def test_pod_annotate_fires_once_at_the_nth_patch_even_from_parallel_callers():
    inner, kube = _wrapped("pod-annotate@2")
    paths = [f"/api/v1/namespaces/ns/pods/p{i}" for i in range(4)]

    def patch(path: str) -> str:
        try:
            kube.merge_patch(path, annotation_patch("checkpoint_2"))
            return "sent"
        except Killed:
            return "killed"

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(patch, paths))
    assert sorted(outcomes) == ["killed", "sent", "sent", "sent"]
    assert len(inner.calls) == 3, "the Nth patch never reaches the API server"
    kube.merge_patch(paths[0], {"metadata": {"labels": {"x": "y"}}})  # not an annotation: no step


def test_other_calls_pass_through_untouched():
    inner, kube = _wrapped("configmap-applied")
    assert kube.get(MODEL_PATH)["metadata"]["name"] == "m"
    kube.create({**CM, "metadata": {"name": "other", "namespace": "ns"}})
    kube.delete("/api/v1/namespaces/ns/configmaps/other")
    assert [c[0] for c in inner.calls] == ["GET", "CREATE", "DELETE"]
    assert kube.pods() == inner.pods(), "attributes the wrapper does not define are the inner client's"


def test_an_unknown_step_is_refused():
    with pytest.raises(ValueError, match="unknown step"):
        FaultyKube(FakeKube(), "configmap-aplied")


def test_the_default_kill_is_a_real_sigkill_of_the_process():
    code = "\n".join([
        f"import sys; sys.path.insert(0, {str(REPO)!r})",
        "from tests.support.operator.fakes import FakeKube",
        "from tests.support.operator.faulty_kube import FaultyKube",
        "kube = FaultyKube(FakeKube(), 'configmap-applied')",
        "print('before', flush=True)",
        f"kube.apply({CM!r})",
        "print('after', flush=True)",
    ])
    env = {k: v for k, v in os.environ.items() if k != ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                          cwd=REPO)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.split() == ["before"] and "SIGKILL at configmap-applied (#1)" in proc.stderr
