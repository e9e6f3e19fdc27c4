"""Dense variables of a feature-store model are read with the GIL released."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow.python.training import py_checkpoint_reader

from deeprec_runtime.model.checkpoint_read import read_tensors
from tests.support.runtime import output

KEY = "probability"


def test_dense_restore_never_uses_the_gil_holding_reader(demo, serve, monkeypatch):
    # CheckpointReader.get_tensor holds the GIL for the whole read; a load through it would
    # stall every request while a slow volume is read.
    def refuse(self, name):
        raise AssertionError(f"CheckpointReader.get_tensor({name!r}) holds the GIL")

    monkeypatch.setattr(py_checkpoint_reader.CheckpointReader, "get_tensor", refuse)
    runtime, client = serve(demo.saved_model_dir, demo.checkpoint_dir, ev_storage_type=1)
    assert not runtime.manager.last_error
    feed = demo.model.make_feed(16, np.random.default_rng(7))
    np.testing.assert_allclose(output(client.predict(feed), KEY), demo.model.predict(feed),
                               rtol=1e-5, atol=1e-6)


def test_read_tensors_matches_the_checkpoint_and_names_a_missing_variable(demo):
    import tensorflow as tf

    prefix = tf.train.latest_checkpoint(demo.checkpoint_dir) or _full_prefix(demo.checkpoint_dir)
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    names = sorted(dtypes)
    got = read_tensors(prefix, names, dtypes)
    for name in names:
        np.testing.assert_array_equal(got[name], reader.get_tensor(name))
    assert read_tensors(prefix, [], dtypes) == {}
    with pytest.raises(tf.errors.NotFoundError, match="no_such_variable"):
        read_tensors(prefix, ["no_such_variable"], {"no_such_variable": tf.float32})


def _full_prefix(checkpoint_dir: str) -> str:
    import glob
    import os

    index = sorted(glob.glob(os.path.join(checkpoint_dir, "**", "*.index"), recursive=True))[0]
    return index[: -len(".index")]
