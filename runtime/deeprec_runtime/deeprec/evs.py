"""Finds the EmbeddingVariables a DeepRec serving graph looks up, and their settings.

Each `KvVarHandleOp` is one EV, or one part of a partitioned EV (`.../part_K`, whose parts are
served as one table under the base name). Its settings come from its initialiser op
(`InitializeKvVariableOp` / `...V2Op`, input 0 = the handle): attrs with the producer's defaults,
overridden by the JSON string attr some releases write, and the initial value (input 2) that gives
unseen ids their default rows. Example: `emb/part_1` (dim 8, filter_freq 3) is part 1 of the EV
`emb`; a lookup routed to it returns `default_value_no_permission` for ids not admitted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tensorflow.core.framework import attr_value_pb2, node_def_pb2, types_pb2

from deeprec_runtime.deeprec import opnames
from deeprec_runtime.deeprec.savedmodel import ExportedModel
from deeprec_runtime.errors import VersionLoadError

_PART = re.compile(r"/part_(\d+)$")

#: How an unseen id's row is made when no frequency filter applies (see default_rule).
INITIALIZER = "initializer"
"""Row `id % default_value_dim` of the EV's initial value (DeepRec's Storage-era releases)."""
NO_PERMISSION = "no_permission"
"""Every element `default_value_no_permission` (filtered EVs; older releases for every EV)."""

# DeepRec's registered defaults, for exports whose stripped op list lacks the OpDef.
_FALLBACK = {"filter_freq": 0, "default_value_dim": 4096, "default_value_no_permission": 0.0,
             "storage_type": 0, "block_num": 1, "initial_num_buckets": 131072}
_SETTINGS = tuple(_FALLBACK)


@dataclass(frozen=True)
class EVPart:
    """One KvVarHandleOp: an EV or one part of a partitioned EV."""

    node: str
    name: str
    """Its checkpoint prefix (`shared_name`), e.g. "emb/part_1"."""
    base: str
    """The EV's name with any `/part_K` removed: all parts share one table."""
    dim: int
    key_dtype: int
    """types_pb2 enum: DT_INT64 or DT_INT32."""
    initializer: str
    """Node name of its initialiser op."""
    initial_value: str
    """Tensor name of the initial value, [default_value_dim, dim]."""
    filter_freq: int
    default_value_dim: int
    default_value_no_permission: float
    default_rule: str
    """INITIALIZER or NO_PERMISSION: what an unseen (or not admitted) id gets."""


@dataclass(frozen=True)
class EVLookup:
    """One KvResourceGather(V1) on the serving path."""

    node: str
    part: EVPart
    ids: str
    """Tensor name of the ids (input 1)."""
    default_tensor: str | None
    """Tensor name of per-id default rows (input 2) when is_use_default_value_tensor is set."""


def clean_input(name: str) -> str:
    """Node name of a NodeDef input ("^a", "a:1", "a" -> "a")."""
    return name.lstrip("^").split(":")[0]


def tensor_name(name: str) -> str:
    """A NodeDef input as a tensor name ("a" -> "a:0", "a:1" -> "a:1")."""
    return name if ":" in name else name + ":0"


def serving_nodes(nodes: dict[str, node_def_pb2.NodeDef], outputs: Iterable[str]) -> set[str]:
    """Names of every node the given tensors depend on (data and control inputs)."""
    stack = [clean_input(o) for o in outputs]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        stack.extend(clean_input(i) for i in nodes[name].input)
    return seen


def _json_settings(text: str) -> dict[str, object]:
    """Settings from an `attr_json_str` attr (any nesting; keys named as the attrs)."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    found: dict[str, object] = {}

    def walk(v: object) -> None:
        if isinstance(v, dict):
            for k, item in v.items():
                if k in _SETTINGS and not isinstance(item, (dict, list)):
                    found[k] = item
                else:
                    walk(item)
        elif isinstance(v, list):
            for item in v:
                walk(item)

    walk(value)
    return found


def _attr_value(a: attr_value_pb2.AttrValue | None) -> object:
    if a is None:
        return None
    kind = a.WhichOneof("value")
    return getattr(a, kind) if kind else None


class _Graph:
    def __init__(self, model: ExportedModel):
        self.model = model
        self.nodes = {n.name: n for n in model.graph_def.node}
        self.initializers: dict[str, list[node_def_pb2.NodeDef]] = {}
        for n in model.graph_def.node:
            if n.op in opnames.INITIALIZERS and n.input:
                self.initializers.setdefault(clean_input(n.input[0]), []).append(n)
        # Storage-era releases emit the V2 initialiser or restore through ImportV3; both return
        # the initializer's row for unseen ids when no filter applies.
        self.storage_era = any(n.op in (opnames.INITIALIZER_V2, "KvResourceImportV3")
                               for n in model.graph_def.node)

    def handle_of(self, name: str) -> node_def_pb2.NodeDef | None:
        node = self.nodes.get(clean_input(name))
        while node is not None and node.op == "Identity" and node.input:
            node = self.nodes.get(clean_input(node.input[0]))
        return node if node is not None and node.op == opnames.HANDLE else None

    def part(self, handle: node_def_pb2.NodeDef) -> EVPart:
        m = self.model
        name = _attr_value(m.attr(handle, "shared_name")) or handle.name
        name = name.decode() if isinstance(name, bytes) else str(name)
        key_dtype: Any = _attr_value(m.attr(handle, "Tkeys")) or types_pb2.DT_INT64
        dtype = _attr_value(m.attr(handle, "dtype"))
        where = f"EmbeddingVariable '{name}' (node {handle.name})"
        if key_dtype not in (types_pb2.DT_INT64, types_pb2.DT_INT32):
            raise VersionLoadError(f"{where} has {types_pb2.DataType.Name(key_dtype)} keys; "
                                   "only int64 and int32 keys can be served")
        if dtype != types_pb2.DT_FLOAT:
            raise VersionLoadError(f"{where} holds {types_pb2.DataType.Name(dtype or 0)} values; "
                                   "DeepRec saves float EVs only")
        shape = m.attr(handle, "shape")
        dims = [d.size for d in shape.shape.dim] if shape is not None else []
        if not dims or dims[-1] <= 0:
            raise VersionLoadError(f"{where} has no known embedding dimension (shape {dims})")
        inits = self.initializers.get(handle.name, [])
        if not inits:
            raise VersionLoadError(f"{where} has no InitializeKvVariableOp: cannot tell its "
                                   "default values")
        # The restore-time copy of the V2 initialiser has initial_num_buckets 0.
        init = next((i for i in inits if self._setting(i, "initial_num_buckets") != 0), inits[0])
        settings = {k: self._setting(init, k) for k in _SETTINGS}
        if settings["storage_type"] not in (0, 1):
            raise VersionLoadError(
                f"{where} uses EV storage_type {settings['storage_type']} (multi-tier or "
                "non-DRAM storage from training); only single-tier DRAM EVs (0, 1) can be "
                "served")
        if settings["block_num"] != 1:
            raise VersionLoadError(f"{where} has block_num {settings['block_num']} (a dynamic-"
                                   "dimension EV); only block_num 1 can be served")
        filter_freq = int(settings["filter_freq"])
        rule = NO_PERMISSION if filter_freq > 0 or not (
            init.op == opnames.INITIALIZER_V2 or self.storage_era) else INITIALIZER
        if len(init.input) < 3:
            raise VersionLoadError(f"{where}: initialiser {init.name} has no initial value input")
        return EVPart(node=handle.name, name=name, base=_PART.sub("", name), dim=int(dims[-1]),
                      key_dtype=int(key_dtype), initializer=init.name,
                      initial_value=tensor_name(init.input[2]), filter_freq=filter_freq,
                      default_value_dim=int(settings["default_value_dim"]),
                      default_value_no_permission=float(settings["default_value_no_permission"]),
                      default_rule=rule)

    def _setting(self, init: node_def_pb2.NodeDef, key: str) -> Any:
        json_attr = _attr_value(self.model.attr(init, "attr_json_str"))
        if json_attr:
            text = json_attr.decode() if isinstance(json_attr, bytes) else str(json_attr)
            from_json = _json_settings(text)
            if key in from_json:
                return from_json[key]
        value = _attr_value(self.model.attr(init, key))
        return _FALLBACK[key] if value is None else value


def find_lookups(model: ExportedModel, outputs: Iterable[str]) -> list[EVLookup]:
    """The EV lookups the given signature outputs depend on. Raises VersionLoadError naming the
    EV and node when an EV cannot be served (string keys, multi-tier storage, ...)."""
    g = _Graph(model)
    serving = serving_nodes(g.nodes, outputs)
    parts: dict[str, EVPart] = {}
    lookups = []
    for name in sorted(serving):
        node = g.nodes[name]
        if node.op not in opnames.GATHERS:
            continue
        handle = g.handle_of(node.input[0]) if node.input else None
        if handle is None:
            raise VersionLoadError(f"{node.op} node {name} does not read a KvVarHandleOp")
        part = parts.get(handle.name)
        if part is None:
            part = parts[handle.name] = g.part(handle)
        use_tensor = _attr_value(model.attr(node, "is_use_default_value_tensor"))
        lookups.append(EVLookup(node=name, part=part, ids=tensor_name(node.input[1]),
                                default_tensor=tensor_name(node.input[2]) if use_tensor else None))
    bases: dict[str, EVPart] = {}
    for part in parts.values():
        other = bases.setdefault(part.base, part)
        if (other.dim, other.key_dtype) != (part.dim, part.key_dtype):
            raise VersionLoadError(f"parts {other.name} and {part.name} of EmbeddingVariable "
                                   f"'{part.base}' differ in dimension or key type")
    return lookups
