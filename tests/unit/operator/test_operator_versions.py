"""Target-version decisions per pod."""

from deeprec_operator.pods import pod_view
from deeprec_operator.versions import (
    TARGET_ANNOTATION,
    annotation_patch,
    decide_targets,
    is_pinned,
    pod_target,
    target_version,
)


def _pod(name, target=None, deleting=False):
    meta = {"name": name, "annotations": {}}
    if target is not None:
        meta["annotations"][TARGET_ANNOTATION] = target
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta}


def test_target_defaults_to_latest():
    assert target_version(None) == "latest"
    assert target_version("  ") == "latest"
    assert target_version("checkpoint_2") == "checkpoint_2"
    assert not is_pinned("latest") and is_pinned("checkpoint_2")


def test_only_pods_with_another_or_no_target_are_patched():
    pods = [_pod("a", "checkpoint_2"), _pod("b", "latest"), _pod("c"), _pod("d", "latest", deleting=True)]
    assert decide_targets([pod_view(p) for p in pods], "checkpoint_2") == {"b": "checkpoint_2",
                                                                          "c": "checkpoint_2"}
    assert pod_target(pods[2]) is None


def test_patch_touches_only_the_annotation():
    assert annotation_patch("checkpoint_1") == {
        "metadata": {"annotations": {TARGET_ANNOTATION: "checkpoint_1"}}
    }
