"""Suite-wide settings: quiet TensorFlow, TF1-style graphs for the model builders."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
