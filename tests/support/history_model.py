"""A model with two unknown dimensions, the usual shape of history / sequence features, for the
request-bound tests, fuzzers and bench/storm_bench.py.

    serving_default: history int64 [-1, -1] -> total int64 [-1] (each row's sum, times `scale`)
    tags:            tags string [-1, -1]   -> tag_bytes int64 [-1] (bytes of each row's strings)
"""

import os


def export_history_model(workdir: str) -> str:
    """Exports the SavedModel under `workdir` once; returns its folder."""
    path = os.path.join(workdir, "history_model")
    if os.path.exists(path):
        return path
    import tensorflow as tf

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        history = tf1.placeholder(tf.int64, [None, None], name="history")
        # One variable, so the SavedModel has a checkpoint the runtime restores as any model's.
        scale = tf1.get_variable("scale", initializer=tf.constant(1, tf.int64))
        total = tf.identity(tf.reduce_sum(history, axis=1) * scale, name="total")
        tags = tf1.placeholder(tf.string, [None, None], name="tags")
        tag_bytes = tf.reduce_sum(tf.cast(tf.strings.length(tags), tf.int64), axis=1,
                                  name="tag_bytes")
        signature = tf1.saved_model.signature_def_utils.predict_signature_def
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            builder = tf1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
                "serving_default": signature({"history": history}, {"total": total}),
                "tags": signature({"tags": tags}, {"tag_bytes": tag_bytes}),
            }, saver=tf1.train.Saver())
            builder.save()
    return path
