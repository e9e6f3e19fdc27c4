"""Small real recommendation models for the demo, tests and benchmarks.

``build_wide_deep`` is a Wide&Deep-like CTR model (embeddings + MLP) trained by plain SGD, so
every training step changes only the embedding rows of the ids it saw: exactly the workload that
incremental checkpoints are for. ``build_seed_example`` reproduces the signature of the example
in DeepRec's serving documentation.

Tensor names the serving side may rely on (all in the graph's root name scope):

=======================  ==========================================================
``sparse_ids:0``         int64 [batch, num_sparse] row ids into ``embedding``
``dense:0``              float32 [batch, num_dense]
``probability:0``        float32 [batch, 1]
``embedding``            the deep embedding variable, [num_ids, dim]
``embedding_lookup:0``   float32 [batch, num_sparse, dim]: gathered ``embedding`` rows;
                         feed it to serve rows from another store (Redis, SSD tier)
``wide_embedding``       the wide (linear) embedding variable, [num_ids, 1]
``wide_lookup:0``        float32 [batch, num_sparse, 1]: gathered ``wide_embedding`` rows
=======================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1

#: tensor name of the gather output for each embedding variable of build_wide_deep
WIDE_DEEP_LOOKUPS = {"embedding": "embedding_lookup:0", "wide_embedding": "wide_lookup:0"}


@dataclass
class DemoModel:
    """A built model: its graph, a session with initialized variables, and its signature."""

    graph: tf.Graph
    session: tf.compat.v1.Session
    #: signature input alias -> tensor
    inputs: dict[str, tf.Tensor]
    #: signature output alias -> tensor
    outputs: dict[str, tf.Tensor]
    embedding_variables: list[tf.Variable]
    dense_variables: list[tf.Variable]
    #: embedding variable name -> name of the tensor holding its gathered rows
    lookup_tensors: dict[str, str] = field(default_factory=dict)
    #: the writer train_step records touched ids in, when none is passed
    writer: Any = None
    steps: int = 0

    def variable_values(self) -> dict[str, np.ndarray]:
        """Current value of every global variable, by checkpoint name."""
        with self.graph.as_default():
            variables = tf1.global_variables()
        values = self.session.run(variables)
        return {v.op.name: np.array(x) for v, x in zip(variables, values, strict=True)}

    def close(self) -> None:
        self.session.close()


@dataclass
class WideDeepModel(DemoModel):
    num_ids: int = 0
    dim: int = 0
    num_sparse: int = 0
    num_dense: int = 0
    label: tf.Tensor | None = None
    train_op: Any = None

    def make_feed(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A random request: signature alias -> array. Ids are skewed like real traffic."""
        return {
            "sparse_ids": self.sample_ids(batch_size, rng),
            "dense": rng.standard_normal((batch_size, self.num_dense)).astype(np.float32),
        }

    def sample_ids(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        # Power-law ids: a few hot rows and a long tail, so a delta touches a small share.
        u = rng.random((batch_size, self.num_sparse))
        ids = np.floor(self.num_ids * u**3).astype(np.int64)
        return np.minimum(ids, self.num_ids - 1)

    def feed_dict(self, feed: dict[str, np.ndarray]) -> dict[tf.Tensor, np.ndarray]:
        return {self.inputs[k]: v for k, v in feed.items()}

    def predict(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(self.outputs["probability"], self.feed_dict(feed))

    def train_step(
        self, batch_size: int = 256, rng: np.random.Generator | None = None, writer: Any = None
    ) -> np.ndarray:
        """One SGD step on a synthetic label; records the touched ids in ``writer``.

        Returns the ids of the batch. Only rows of those ids change in both embedding tables;
        every dense variable changes.
        """
        rng = rng if rng is not None else np.random.default_rng(self.steps)
        feed = self.make_feed(batch_size, rng)
        ids = feed["sparse_ids"]
        # A learnable label: depends on the first dense feature and on the ids' parity.
        logit = feed["dense"][:, 0] + 0.5 * ((ids % 2).sum(axis=1) - self.num_sparse / 2)
        label = (logit > 0).astype(np.float32)[:, None]
        fd = self.feed_dict(feed)
        fd[self.label] = label
        self.session.run(self.train_op, fd)
        self.steps += 1
        writer = writer if writer is not None else self.writer
        if writer is not None:
            for var in self.embedding_variables:
                writer.record_touched(var, ids)
        return ids


def _dense_layer(x: tf.Tensor, n_in: int, n_out: int, name: str, seed: int) -> tf.Tensor:
    with tf1.variable_scope(name):
        w = tf1.get_variable(
            "kernel",
            [n_in, n_out],
            initializer=tf1.glorot_uniform_initializer(seed=seed),
        )
        b = tf1.get_variable("bias", [n_out], initializer=tf1.zeros_initializer())
    return tf.matmul(x, w) + b


def _session(graph: tf.Graph) -> tf.compat.v1.Session:
    config = tf1.ConfigProto(device_count={"GPU": 0})
    return tf1.Session(graph=graph, config=config)


def build_wide_deep(
    num_ids: int = 100_000,
    dim: int = 16,
    num_sparse: int = 8,
    num_dense: int = 13,
    hidden: Sequence[int] = (256, 128),
    seed: int = 0,
    learning_rate: float = 0.05,
) -> WideDeepModel:
    """Builds the Wide&Deep demo model (names in the module docstring), variables initialized."""
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(seed)
        sparse_ids = tf1.placeholder(tf.int64, [None, num_sparse], name="sparse_ids")
        dense = tf1.placeholder(tf.float32, [None, num_dense], name="dense")
        label = tf1.placeholder(tf.float32, [None, 1], name="label")
        embedding = tf1.get_variable(
            "embedding",
            [num_ids, dim],
            initializer=tf1.random_normal_initializer(stddev=0.05, seed=seed),
        )
        wide_embedding = tf1.get_variable(
            "wide_embedding", [num_ids, 1], initializer=tf1.zeros_initializer()
        )
        # Identity gives the gathered rows a fixed name that callers can feed.
        emb = tf.identity(tf.gather(embedding, sparse_ids), name="embedding_lookup")
        wide = tf.identity(tf.gather(wide_embedding, sparse_ids), name="wide_lookup")
        x = tf.concat([tf.reshape(emb, [-1, num_sparse * dim]), dense], axis=1)
        n_in = num_sparse * dim + num_dense
        for i, n_out in enumerate(hidden):
            x = tf.nn.relu(_dense_layer(x, n_in, n_out, f"mlp/layer_{i}", seed + i + 1))
            n_in = n_out
        deep_logit = _dense_layer(x, n_in, 1, "mlp/logit", seed + 100)
        wide_bias = tf1.get_variable("wide_bias", [1], initializer=tf1.zeros_initializer())
        logit = deep_logit + tf.reduce_sum(wide, axis=1) + wide_bias
        probability = tf.sigmoid(logit, name="probability")
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logit))
        train_op = tf1.train.GradientDescentOptimizer(learning_rate).minimize(loss, name="train")
        init = tf1.global_variables_initializer()
        dense_vars = [v for v in tf1.trainable_variables() if v not in (embedding, wide_embedding)]
    session = _session(graph)
    session.run(init)
    return WideDeepModel(
        graph=graph,
        session=session,
        inputs={"sparse_ids": sparse_ids, "dense": dense},
        outputs={"probability": probability},
        embedding_variables=[embedding, wide_embedding],
        dense_variables=dense_vars,
        lookup_tensors=dict(WIDE_DEEP_LOOKUPS),
        num_ids=num_ids,
        dim=dim,
        num_sparse=num_sparse,
        num_dense=num_dense,
        label=label,
        train_op=train_op,
    )


@dataclass
class SeedExampleModel(DemoModel):
    num_ids: int = 0
    bump: Any = None
    bump_ids: tf.Tensor | None = None
    bump_amount: tf.Tensor | None = None

    def make_feed(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {
            "input1": rng.standard_normal(batch_size).astype(np.float64),
            "input2": rng.integers(0, self.num_ids, batch_size).astype(np.int32),
        }

    def predict(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(
            self.outputs["probabilities"], {self.inputs[k]: v for k, v in feed.items()}
        )

    def train_step(
        self, batch_size: int = 4, rng: np.random.Generator | None = None, writer: Any = None
    ) -> np.ndarray:
        """Adds a small random amount to the rows of a few ids and to the weight."""
        rng = rng if rng is not None else np.random.default_rng(self.steps)
        ids = rng.integers(0, self.num_ids, batch_size).astype(np.int64)
        amount = rng.standard_normal(batch_size).astype(np.float32)
        self.session.run(self.bump, {self.bump_ids: ids, self.bump_amount: amount})
        self.steps += 1
        writer = writer if writer is not None else self.writer
        if writer is not None:
            writer.record_touched(self.embedding_variables[0], ids)
        return ids


def build_seed_example(num_ids: int = 100, seed: int = 0) -> SeedExampleModel:
    """The model behind DeepRec's documented example signature ("serving_default").

    Inputs: ``input1`` -> ``input1:0`` DT_DOUBLE [-1], ``input2`` -> ``input2:0`` DT_INT32 [-1];
    output ``probabilities`` -> ``prediction:0`` DT_FLOAT [-1].
    ``prediction = sigmoid(weight * input1 + seed_embedding[input2 mod num_ids, 0] + bias)``,
    with a double ``weight`` and ``bias`` and a float [num_ids, 1] embedding, so both full
    checkpoints and deltas change the answer.
    """
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(seed)
        input1 = tf1.placeholder(tf.float64, [None], name="input1")
        input2 = tf1.placeholder(tf.int32, [None], name="input2")
        weight = tf1.get_variable(
            "weight", [], tf.float64, initializer=tf1.constant_initializer(0.5)
        )
        bias = tf1.get_variable("bias", [], tf.float64, initializer=tf1.constant_initializer(2.0))
        table = tf1.get_variable(
            "seed_embedding",
            [num_ids, 1],
            tf.float32,
            initializer=tf1.random_normal_initializer(stddev=0.1, seed=seed),
        )
        ids = tf.math.floormod(tf.cast(input2, tf.int64), num_ids)
        row = tf.identity(tf.gather(table, ids), name="seed_embedding_lookup")
        z = weight * input1 + tf.cast(row[:, 0], tf.float64) + bias
        prediction = tf.cast(tf.sigmoid(z), tf.float32, name="prediction")
        bump_ids = tf1.placeholder(tf.int64, [None], name="bump_ids")
        bump_amount = tf1.placeholder(tf.float32, [None], name="bump_amount")
        bump = tf.group(
            tf1.scatter_add(table, bump_ids, bump_amount[:, None]),
            tf1.assign_add(weight, tf.constant(0.01, tf.float64)),
            name="bump",
        )
        init = tf1.global_variables_initializer()
    session = _session(graph)
    session.run(init)
    return SeedExampleModel(
        graph=graph,
        session=session,
        inputs={"input1": input1, "input2": input2},
        outputs={"probabilities": prediction},
        embedding_variables=[table],
        dense_variables=[weight, bias],
        lookup_tensors={"seed_embedding": "seed_embedding_lookup:0"},
        num_ids=num_ids,
        bump=bump,
        bump_ids=bump_ids,
        bump_amount=bump_amount,
    )
