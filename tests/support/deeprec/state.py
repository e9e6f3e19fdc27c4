"""The parameters of the hand-built DeepRec model as numpy, written as DeepRec writes them (full
checkpoints with `-keys`/`-values`/`-freqs`/`-keys_filtered`/partition offsets per EV part,
incremental checkpoints with `-sparse_incr_*`), and the model's answers computed from them
independently of TensorFlow (`predict`)."""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from tests.support.deeprec.export import DENSE_WIDTH, ITEMS_PER_EXAMPLE, SPECS, WIDTH, EVSpec, initial_value

BUCKETS = 1000
NEW_RELEASE, OLD_RELEASE = "new", "old"


@dataclass
class EVState:
    rows: dict[int, np.ndarray] = field(default_factory=dict)
    filtered: dict[int, int] = field(default_factory=dict)
    """Keys seen in training but not admitted -> their frequency."""


@dataclass
class ModelState:
    evs: dict[str, EVState]
    w: np.ndarray
    b: np.ndarray
    step: int = 0

    def copy(self) -> ModelState:
        return copy.deepcopy(self)


def random_state(seed: int, keys_per_ev: int = 40) -> ModelState:
    rng = np.random.default_rng(seed)
    evs = {}
    for name, spec in SPECS.items():
        keys = rng.choice(5000, keys_per_ev, replace=False) + (0 if name != "tag_emb" else 10)
        st = EVState({int(k): rng.normal(size=spec.dim).astype(np.float32) for k in keys})
        if spec.filter_freq:
            for k in rng.choice(np.arange(5000, 6000), 10, replace=False):
                st.filtered[int(k)] = int(rng.integers(1, spec.filter_freq))
        evs[name] = st
    return ModelState(evs, rng.normal(size=(WIDTH, 1)).astype(np.float32) * 0.3,
                      rng.normal(size=[1]).astype(np.float32), step=100)


def _key_np(spec: EVSpec):
    return np.int64 if spec.key_dtype == types_pb2.DT_INT64 else np.int32


def _bucketed(keys: list[int], rng) -> tuple[list[int], np.ndarray]:
    """Keys in bucket order (key % 1000, as DeepRec writes them, unsorted inside a bucket) and
    the [1001] offsets."""
    by_bucket: dict[int, list[int]] = {}
    for k in keys:
        by_bucket.setdefault(k % BUCKETS, []).append(k)
    out, offsets = [], np.zeros(BUCKETS + 1, np.int32)
    for b in range(BUCKETS):
        ks = by_bucket.get(b, [])
        rng.shuffle(ks)
        out += ks
        offsets[b + 1] = offsets[b] + len(ks)
    return out, offsets


def _save(prefix: str, tensors: dict[str, np.ndarray], slices: dict[str, list] | None = None) -> None:
    names, specs, values = [], [], []
    for name, value in tensors.items():
        names.append(name)
        specs.append("")
        values.append(value)
    for name, parts in (slices or {}).items():
        for spec, value in parts:
            names.append(name)
            specs.append(spec)
            values.append(value)
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=specs, tensors=values)


def _dense(state: ModelState) -> tuple[dict, dict]:
    # dnn/w is partitioned in 2 parts in the graph: saved as two slices of the full tensor.
    half = (WIDTH + 1) // 2
    slices = {"dnn/w": [(f"{WIDTH} 1 0,{half}:-", state.w[:half]),
                        (f"{WIDTH} 1 {half},{WIDTH - half}:-", state.w[half:])]}
    return {"dnn/b": state.b, "global_step": np.int64(state.step),
            "dnn/b/Adagrad": np.ones(1, np.float32)}, slices


def write_full(prefix: str, state: ModelState, seed: int = 0, parts: dict[str, int] | None = None,
               drop: tuple[str, ...] = ()) -> str:
    """A DeepRec full checkpoint of `state` at `prefix` (e.g. .../model.ckpt-100). `parts`
    writes an EV in another number of parts than the graph has (training repartitioned);
    `drop` leaves tensors out (a broken checkpoint)."""
    rng = np.random.default_rng(seed)
    tensors, slices = _dense(state)
    for name, spec in SPECS.items():
        if parts and name in parts:
            spec = dataclasses.replace(spec, parts=parts[name])
        st = state.evs[name]
        for k, part in enumerate(spec.part_names()):
            keys, offsets = _bucketed([x for x in st.rows if spec.part_of(x) == k], rng)
            fkeys, foffsets = _bucketed([x for x in st.filtered if spec.part_of(x) == k], rng)
            n = len(keys)
            tensors[f"{part}-keys"] = np.array(keys, _key_np(spec))
            tensors[f"{part}-values"] = (np.stack([st.rows[x] for x in keys]) if n else
                                         np.zeros([0, spec.dim], np.float32))
            # -freqs / -versions are empty unless a filter (or recording) needs them.
            tensors[f"{part}-freqs"] = (np.full([n], spec.filter_freq + 5, np.int64)
                                        if spec.filter_freq else np.zeros([0], np.int64))
            tensors[f"{part}-versions"] = np.zeros([0], np.int64)
            tensors[f"{part}-keys_filtered"] = np.array(fkeys, _key_np(spec))
            tensors[f"{part}-freqs_filtered"] = np.array([st.filtered[x] for x in fkeys], np.int64)
            tensors[f"{part}-versions_filtered"] = np.zeros([0], np.int64)
            tensors[f"{part}-partition_offset"] = offsets
            tensors[f"{part}-partition_filter_offset"] = foffsets
    # An optimizer slot EV, which serving must ignore.
    tensors["user_emb/Adagrad-keys"] = np.array([1, 2], np.int64)
    tensors["user_emb/Adagrad-values"] = np.ones([2, SPECS["user_emb"].dim], np.float32)
    for name in drop:
        del tensors[name]
    _save(prefix, tensors, slices)
    return prefix


def write_delta(prefix: str, state: ModelState, changed: dict[str, list[int]], seed: int = 0) -> str:
    """A DeepRec incremental checkpoint: for each EV the rows of `changed` keys (all changes
    since the full save: deltas are cumulative), dense variables whole."""
    rng = np.random.default_rng(seed)
    tensors, slices = _dense(state)
    for name, spec in SPECS.items():
        st = state.evs[name]
        for k, part in enumerate(spec.part_names()):
            mine = sorted(x for x in changed.get(name, []) if spec.part_of(x) == k)
            keys, offsets = _bucketed(mine, rng)
            n = len(keys)
            tensors[f"{part}-incr_partition_offset"] = offsets
            tensors[f"{part}-sparse_incr_keys"] = np.array(keys, _key_np(spec))
            tensors[f"{part}-sparse_incr_values"] = (np.stack([st.rows[x] for x in keys]) if n
                                                     else np.zeros([0, spec.dim], np.float32))
            tensors[f"{part}-sparse_incr_versions"] = np.zeros([n], np.int64)
            tensors[f"{part}-sparse_incr_freqs"] = np.full([n], spec.filter_freq + 1, np.int64)
    _save(prefix, tensors, slices)
    return prefix


def write_state_file(folder: str, names: list[str]) -> None:
    lines = [f'model_checkpoint_path: "{names[-1]}"'] + [
        f'all_model_checkpoint_paths: "{n}"' for n in names]
    with open(os.path.join(folder, "checkpoint"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


# --- the model's answers, computed with numpy ------------------------------------------------
def _default(spec: EVSpec, release: str, key: int, position: int, dense: np.ndarray,
             no_permission: float) -> np.ndarray:
    if spec.filter_freq > 0 or release == OLD_RELEASE:
        return np.full(spec.dim, no_permission, np.float32)
    if spec.default_tensor:
        return dense[position].astype(np.float32)
    return initial_value(spec, spec.part_of(key))[key % spec.default_value_dim]


def lookup(state: ModelState, name: str, ids: np.ndarray, release: str = NEW_RELEASE,
           dense: np.ndarray | None = None, no_permission: dict | None = None) -> np.ndarray:
    spec = SPECS[name]
    np_value = (no_permission or {}).get(name, spec.no_permission)
    rows = state.evs[name].rows
    out = [rows[int(k)] if int(k) in rows else _default(spec, release, int(k), i, dense, np_value)
           for i, k in enumerate(ids.reshape(-1))]
    return np.array(out, np.float32).reshape(ids.shape + (spec.dim,))


def predict(state: ModelState, feed: dict[str, np.ndarray], release: str = NEW_RELEASE,
            no_permission: dict | None = None) -> dict[str, np.ndarray]:
    dense = feed["dense"]
    kw = {"release": release, "dense": dense, "no_permission": no_permission}
    user = lookup(state, "user_emb", feed["user_ids"], **kw)
    item = lookup(state, "item_emb", feed["item_ids"], **kw).mean(axis=1)
    tag = lookup(state, "tag_emb", feed["tag_ids"], **kw)
    ctx = lookup(state, "ctx_emb", feed["ctx_ids"], **kw)
    x = np.concatenate([user, item, tag, ctx, dense], axis=1)
    logits = x @ state.w + state.b
    return {"probability": 1 / (1 + np.exp(-logits)), "user_vec": user, "item_vec": item,
            "tag_vec": tag, "ctx_vec": ctx}


def make_feed(state: ModelState, batch: int, rng) -> dict[str, np.ndarray]:
    """Ids mixing stored keys, filtered keys, never-seen keys and negative ids."""
    def pick(name: str, size) -> np.ndarray:
        st = state.evs[name]
        pools = [np.array(sorted(st.rows)), np.arange(7000, 7100), np.array([-1, -7, -1003])]
        if st.filtered:
            pools.append(np.array(sorted(st.filtered)))
        choice = rng.integers(0, len(pools), size)
        return np.array([rng.choice(pools[c]) for c in choice.reshape(-1)]).reshape(size)

    return {"user_ids": pick("user_emb", (batch,)).astype(np.int64),
            "item_ids": pick("item_emb", (batch, ITEMS_PER_EXAMPLE)).astype(np.int64),
            "tag_ids": pick("tag_emb", (batch,)).astype(np.int32),
            "ctx_ids": pick("ctx_emb", (batch,)).astype(np.int64),
            "dense": rng.normal(size=(batch, DENSE_WIDTH)).astype(np.float32)}
