"""Serving DeepRec exports on stock TensorFlow: SavedModels with EmbeddingVariables, DeepRec's
EV checkpoints and its incremental checkpoints (format: docs/checkpoint-format.md).

`has_embedding_variables` tells a DeepRec EV export from a plain one; `import_ev_graph` rewrites
its serving graph (lookups stay in the graph, on tables the runtime owns) and `EVVersion` fills
and updates those tables from checkpoints.
"""

from deeprec_runtime.deeprec.loader import EVGraph, EVVersion, import_ev_graph
from deeprec_runtime.deeprec.savedmodel import has_embedding_variables

__all__ = ["EVGraph", "EVVersion", "has_embedding_variables", "import_ev_graph"]
