"""The EV op library's kernels (deeprec/ev_ops.cc) on their own, in eager TensorFlow: the key
index through TensorFlow's stock lookup-table ops, and the fused gather against numpy."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from deeprec_runtime.deeprec import kernels

_names = itertools.count()


@pytest.fixture(scope="module")
def lib():
    module = kernels.library()
    assert module is not None, "the EV op library must build wherever the tests run"
    return module


def new_index(lib):
    return lib.deep_rec_key_index(key_dtype=tf.int64, value_dtype=tf.int64,
                                  shared_name=f"index_{next(_names)}")


def insert(index, keys, rows) -> None:
    tf.raw_ops.LookupTableInsertV2(table_handle=index, keys=np.asarray(keys, np.int64),
                                   values=np.asarray(rows, np.int64))


def find(index, keys, default=-1) -> np.ndarray:
    return tf.raw_ops.LookupTableFindV2(table_handle=index, keys=np.asarray(keys, np.int64),
                                        default_value=np.asarray(default, np.int64)).numpy()


def test_the_index_keeps_every_key_through_growth_and_overwrites(lib):
    index = new_index(lib)
    rng = np.random.default_rng(0)
    keys = rng.choice(2**62, 50_000, replace=False).astype(np.int64) - 2**61  # negatives too
    keys[:1000] = np.arange(1000)  # sequential ids must not cluster
    for start in range(0, keys.size, 997):  # many small inserts: the table grows many times
        insert(index, keys[start:start + 997], np.arange(start, min(start + 997, keys.size)))
    assert int(tf.raw_ops.LookupTableSizeV2(table_handle=index)) == keys.size
    np.testing.assert_array_equal(find(index, keys), np.arange(keys.size))
    unseen = np.setdiff1d(rng.integers(-2**40, 2**40, 5000), keys)
    np.testing.assert_array_equal(find(index, unseen), -1)
    # A per-key default, as the stock rewrite passes it.
    np.testing.assert_array_equal(find(index, unseen[:4], default=[7, 8, 9, 10]), [7, 8, 9, 10])
    insert(index, keys[:3], [100, 101, 102])
    np.testing.assert_array_equal(find(index, keys[:4]), [100, 101, 102, 3])
    assert int(tf.raw_ops.LookupTableSizeV2(table_handle=index)) == keys.size


def test_export_and_import_round_trip(lib):
    index = new_index(lib)
    insert(index, [5, -9, 2**40], [1, 2, 3])
    keys, rows = tf.raw_ops.LookupTableExportV2(table_handle=index, Tkeys=tf.int64,
                                                Tvalues=tf.int64)
    assert dict(zip(keys.numpy().tolist(), rows.numpy().tolist(), strict=True)) == {
        5: 1, -9: 2, 2**40: 3}
    other = new_index(lib)
    insert(other, [77], [7])
    tf.raw_ops.LookupTableImportV2(table_handle=other, keys=keys, values=rows)
    np.testing.assert_array_equal(find(other, [5, -9, 2**40, 77]), [1, 2, 3, -1])


@pytest.mark.parametrize("keys, rows, words", [
    ([np.iinfo(np.int64).min], [0], "cannot be stored"),
    ([4], [-2], "is negative"),
])
def test_bad_inserts_are_refused_and_change_nothing(lib, keys, rows, words):
    index = new_index(lib)
    insert(index, [1], [1])
    with pytest.raises(tf.errors.InvalidArgumentError, match=words):
        insert(index, [2, *keys], [2, *rows])
    np.testing.assert_array_equal(find(index, [1, 2]), [1, -1])


def test_removing_keys_is_refused(lib):
    index = new_index(lib)
    with pytest.raises(tf.errors.UnimplementedError):
        tf.raw_ops.LookupTableRemoveV2(table_handle=index, keys=np.asarray([1], np.int64))


def _gather(lib, values, index, ids, offset, rows):
    return lib.deep_rec_ev_gather(values=values.handle, index=index, ids=np.asarray(ids, np.int64),
                                  dim=values.shape[1], default_offset=offset,
                                  default_rows=rows).numpy()


def test_the_fused_gather_answers_rows_and_deeprecs_default_rows(lib):
    """Values: 2 no-permission-like rows of another part, then a part's 5 default rows, then
    the keys' rows. Held ids read their row; unseen ids (negative ones too) read default row
    floormod(id, 5) of their part."""
    rng = np.random.default_rng(1)
    dim, offset, default_rows = 4, 2, 5
    keys = rng.choice(10**9, 300, replace=False).astype(np.int64)
    base = offset + default_rows
    values = rng.normal(size=(base + keys.size + 10, dim)).astype(np.float32)
    var = tf.Variable(values)
    index = new_index(lib)
    insert(index, keys, np.arange(base, base + keys.size))
    ids = np.concatenate([keys[rng.integers(0, keys.size, 50)],
                          rng.integers(-10**6, 10**6, 50)]).reshape(10, 10)
    held = dict(zip(keys.tolist(), range(base, base + keys.size), strict=True))
    expected = np.stack([values[held.get(i, offset + i % default_rows)] for i in ids.ravel()])
    got = _gather(lib, var, index, ids, offset, default_rows)
    assert got.shape == (10, 10, dim)
    np.testing.assert_array_equal(got.reshape(-1, dim), expected)
    # The no-permission rule: one default row for every id not held.
    got = _gather(lib, var, index, [keys[0], 123456789012, -3], 1, 1)
    np.testing.assert_array_equal(got, values[[base, 1, 1]])
    # The extremes a request may send: the index's empty marker (INT64_MIN) is never a key.
    extremes = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max], np.int64)
    got = _gather(lib, var, index, extremes, offset, default_rows)
    np.testing.assert_array_equal(
        got, values[[offset + int(i) % default_rows for i in extremes]])
    # Empty requests give an empty answer of the right shape.
    assert _gather(lib, var, index, np.zeros((0, 3), np.int64), offset, default_rows).shape == (
        0, 3, dim)


def test_a_corrupt_table_is_an_error_not_a_read_outside_the_values(lib):
    var = tf.Variable(np.ones((4, 2), np.float32))
    index = new_index(lib)
    insert(index, [10], [400])  # a row the values do not have
    with pytest.raises(tf.errors.InternalError, match="row 400 of 4"):
        _gather(lib, var, index, [10], 0, 1)
    with pytest.raises(tf.errors.FailedPreconditionError, match="fewer than its default rows"):
        _gather(lib, var, index, [11], 3, 5)
    stock = tf.raw_ops.MutableHashTableV2(key_dtype=tf.int64, value_dtype=tf.int64,
                                          shared_name=f"stock_{next(_names)}")
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a DeepRecKeyIndex"):
        _gather(lib, var, stock, [10], 0, 1)
    wrong = tf.Variable(np.ones((4, 3), np.float32))
    with pytest.raises(tf.errors.FailedPreconditionError, match="float \\[rows, 2\\]"):
        lib.deep_rec_ev_gather(values=wrong.handle, index=index, ids=np.asarray([1], np.int64),
                               dim=2, default_offset=0, default_rows=1)


def test_native_path_builds_the_ev_op_library_and_checks_that_tensorflow_loads_it(tmp_path):
    """What the image build runs: every native library into DEEPREC_NATIVE_DIR, then checks."""
    env = dict(os.environ, DEEPREC_NATIVE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "deeprec_runtime.cli", "native-path"], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == str(tmp_path / kernels.LIBRARY_NAME)


def test_without_a_compiler_the_stock_ops_serve_and_the_reason_is_logged(tmp_path):
    """No cached library and no C++ compiler: the library cannot be built, a warning says why,
    and EV lookups fall back to TensorFlow's stock ops instead of failing the load."""
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", kernels.STOCK_ENV,
                                                             "DEEPREC_NATIVE_DIR")}
    env.update(PATH=str(tmp_path / "no-tools"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    code = ("import logging; logging.basicConfig(level=logging.WARNING); "
            "from deeprec_runtime.deeprec import kernels; print('fused', kernels.fused_lookups())")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "fused False"
    assert "EV op library is not available: no C++ compiler found" in done.stderr
