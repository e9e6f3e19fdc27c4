"""The manager's decisions, as a table."""

import pytest

from deeprec_runtime.core.policy import (
    ApplyDeltas,
    Idle,
    Load,
    LoadedState,
    Missing,
    SwapBack,
    load_key,
    next_action,
)
from deeprec_runtime.model.source import Delta, VersionInfo


def v(name, full, deltas=(), mtime=0.0):
    return VersionInfo(name, f"/c/{name}", full, f"/c/{name}/model.ckpt-{full}",
                       tuple(Delta(d, f"p{d}") for d in deltas), mtime)


V3 = v("checkpoint_3", 30, (31, 32), mtime=3)
V2 = v("checkpoint_2", 20, (21,), mtime=2)
S2 = LoadedState("checkpoint_2", 20, 21, 2)
S3 = LoadedState("checkpoint_3", 30, 31, 3)


@pytest.mark.parametrize("versions, target, current, previous, failed, expected", [
    ([], "latest", None, None, set(), Idle),
    ([V3, V2], "latest", None, None, set(), Load),
    ([V3, V2], "latest", S2, None, set(), Load),
    ([V3, V2], "latest", S3, S2, set(), ApplyDeltas),  # delta 32 is new
    ([V3, V2], "checkpoint_2", S3, S2, set(), SwapBack),
    ([V3, V2], "checkpoint_2", S3, None, set(), Load),
    ([V3, V2], "checkpoint_2", S2, S3, set(), Idle),
    ([V3, V2], "checkpoint_7", S3, None, set(), Missing),
    ([V3, V2], "latest", S2, None, {load_key(V3)}, Idle),  # failed load is not retried
    ([v("checkpoint_3", 40, (), 4), V2], "latest", S3, None, set(), Load),  # new full, same folder
])
def test_next_action(versions, target, current, previous, failed, expected):
    action = next_action(versions, target, current, previous, failed)
    assert type(action) is expected


def test_rewritten_folder_is_retried_after_a_failure():
    failed = {load_key(V3)}
    rewritten = v("checkpoint_3", 30, (31, 32), mtime=9)
    assert type(next_action([rewritten, V2], "latest", S2, None, failed)) is Load
