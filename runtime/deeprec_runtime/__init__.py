"""deeprec_runtime: serves TensorFlow / DeepRec recommendation models with live updates."""

__version__ = "0.1.0"
