"""DeepRec-format fixtures built with stock TensorFlow: hand-built exports with DeepRec's op names
(export.py, opdefs.py), the independent numpy model of their answers (state.py), models on disk
in DeepRec's checkpoint layouts (layout.py), and the checks and training steps the deeprec and C
API tests share (serving.py)."""
