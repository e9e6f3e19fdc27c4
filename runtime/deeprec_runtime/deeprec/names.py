"""Tensor names DeepRec gives checkpoint entries, shared by the readers here and the project's
own training writer (training/), so the two never disagree (docs/checkpoint-format.md).

Full checkpoint, per EmbeddingVariable part `N`: `N-keys`, `N-values`, `N-freqs`, `N-versions`,
`N-keys_filtered`, ... Incremental checkpoint: `N-sparse_incr_keys` / `N-sparse_incr_values` for
EVs, and for normal 2-D variables whose changed rows are saved (`incremental_include_normal_var`:
keys = row indices); every other variable whole under its own name.
"""

FULL_KEYS, FULL_VALUES, FILTERED = "-keys", "-values", "-keys_filtered"
DELTA_KEYS, DELTA_VALUES = "-sparse_incr_keys", "-sparse_incr_values"
#: Every per-EV / per-table suffix DeepRec writes; such tensors are not variables.
EV_SUFFIXES = ("-keys", "-values", "-freqs", "-versions", "-keys_filtered", "-freqs_filtered",
               "-versions_filtered", "-partition_offset", "-partition_filter_offset",
               "-sparse_incr_keys", "-sparse_incr_values", "-sparse_incr_versions",
               "-sparse_incr_freqs", "-incr_partition_offset")


def is_ev_tensor(name: str) -> bool:
    """Whether a checkpoint entry is one of DeepRec's per-EV tensors, not a variable."""
    return name.endswith(EV_SUFFIXES)
