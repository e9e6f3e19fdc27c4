"""Serving DeepRec exports on stock TensorFlow: SavedModels with EmbeddingVariables, DeepRec's
EV checkpoints and its incremental checkpoints (format: docs/checkpoint-format.md).

savedmodel.py reads the export, evs.py finds its EVs and their settings, rewrite.py turns the
serving graph into a stock one whose lookups read tables the runtime owns (nodes.py builds the
NodeDefs, opnames.py says what each DeepRec op becomes), tables.py holds those tables in a
version's session, ckpt.py reads EV rows from checkpoints (names.py: the tensor names), keyed.py
describes EVs to a feature store instead, and loader.py ties them together for model/servable.py.
"""
