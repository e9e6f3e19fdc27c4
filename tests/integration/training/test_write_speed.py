"""Write cost for a 1M x 16 table: prints the times (a benchmark, not a timed assertion)."""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from deeprec_runtime.training import CheckpointWriter, read_delta

tf1 = tf.compat.v1

ROWS, DIM = 1_000_000, 16


def test_one_million_by_16_table_with_a_one_percent_delta(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        table = tf1.get_variable(
            "embedding", [ROWS, DIM], initializer=tf1.random_uniform_initializer(seed=0)
        )
        tf1.get_variable("dense/kernel", [256, 128], initializer=tf1.zeros_initializer())
        ids_ph = tf1.placeholder(tf.int64, [None])
        bump = tf1.scatter_add(table, ids_ph, tf.ones([tf.size(ids_ph), DIM]))
        init = tf1.global_variables_initializer()
    sess = tf1.Session(graph=graph)
    sess.run(init)
    writer = CheckpointWriter(sess, str(tmp_path), "checkpoint_1", [table])
    rng = np.random.default_rng(0)

    t0 = time.perf_counter()
    writer.save_full(1)
    t_full = time.perf_counter() - t0

    ids = rng.choice(ROWS, ROWS // 100, replace=False).astype(np.int64)
    sess.run(bump, {ids_ph: ids})
    t0 = time.perf_counter()
    writer.record_touched(table, ids)
    prefix = writer.save_delta(2)
    t_recorded = time.perf_counter() - t0
    delta = read_delta(prefix)
    np.testing.assert_array_equal(delta.embeddings["embedding"][0], np.sort(ids))

    # Deltas hold every row changed since the full save: a diff needs a version in which
    # nothing was recorded.
    writer.start_version("checkpoint_2")
    writer.save_full(3)
    ids2 = rng.choice(ROWS, ROWS // 100, replace=False).astype(np.int64)
    sess.run(bump, {ids_ph: ids2})
    t0 = time.perf_counter()
    prefix = writer.save_delta(4)  # nothing recorded: diff against the full save
    t_diff = time.perf_counter() - t0
    delta = read_delta(prefix)
    np.testing.assert_array_equal(delta.embeddings["embedding"][0], np.sort(ids2))
    current = sess.run(table)
    np.testing.assert_array_equal(delta.embeddings["embedding"][1], current[np.sort(ids2)])
    sess.close()
    print(
        f"\n1M x {DIM} float32: full save {t_full * 1e3:.0f} ms; 1% delta "
        f"(10k rows) from recorded ids {t_recorded * 1e3:.0f} ms, by diff {t_diff * 1e3:.0f} ms"
    )
