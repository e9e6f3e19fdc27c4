"""DeepRec EmbeddingVariables served from a feature store (Redis) instead of the session.

Each EV becomes a keyed feature-store table (features/graph.py `Table(keyed=True)`): the store
holds its rows by EV key, requests feed the rewritten lookups' outputs (the gathers' names) with
the rows it returns, and ids it does not hold take the lookup's fallback, DeepRec's default for
that EV part: `default_value_no_permission`, a row of the part's initial value, or the gather's
default tensor (rules: deeprec/evs.py). Example: `item_emb` (3 parts, filter_freq 3) becomes one
table `item_emb` whose three lookups fall back to 0.5-filled rows.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from tensorflow.core.protobuf import config_pb2

from deeprec_runtime.deeprec import evs
from deeprec_runtime.errors import VersionLoadError
from deeprec_runtime.features.graph import Fallback, Lookup, Table


def fallback_of(lk: evs.EVLookup) -> Fallback:
    part = lk.part
    if part.default_rule == evs.NO_PERMISSION:
        return Fallback(fill=part.default_value_no_permission)
    if lk.default_tensor is not None:
        return Fallback(tensor=lk.default_tensor)
    return Fallback(part=part.name, modulus=part.default_value_dim)


def keyed_tables(lookups: list[evs.EVLookup]) -> dict[str, Table]:
    """One keyed table per EV (the parts of a partitioned EV together), with its lookups."""
    by_base: dict[str, list[evs.EVLookup]] = {}
    for lk in lookups:
        by_base.setdefault(lk.part.base, []).append(lk)
    tables = {}
    for base, lks in sorted(by_base.items()):
        found = tuple(sorted((Lookup(lk.ids, f"{lk.node}:0", fallback_of(lk)) for lk in lks),
                             key=lambda x: x.output))
        tables[base] = Table(base, 0, (lks[0].part.dim,), np.dtype(np.float32), found, keyed=True)
    return tables


def initial_values(lookups: list[evs.EVLookup]) -> dict[str, tuple[str, tuple[int, int]]]:
    """EV part -> (initial value tensor, expected shape) for the parts whose fallback reads it."""
    return {lk.part.name: (lk.part.initial_value, (lk.part.default_value_dim, lk.part.dim))
            for lk in lookups if fallback_of(lk).part}


def evaluate_initial_values(session, wanted: Mapping[str, tuple[str, tuple[int, int]]],
                            run_options: config_pb2.RunOptions) -> dict[str, np.ndarray]:
    """The parts' initial values, drawn once per version as DeepRec draws them once per process."""
    out = {}
    for part, (tensor, shape) in wanted.items():
        value = session.run(tensor, options=run_options)
        if value.shape != shape:
            raise VersionLoadError(f"EmbeddingVariable '{part}': its initial value has shape "
                                   f"{list(value.shape)}, expected [default_value_dim, dim] = "
                                   f"{list(shape)}")
        out[part] = np.asarray(value, np.float32)
    return out
