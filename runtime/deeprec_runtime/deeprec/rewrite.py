"""Rewrites a DeepRec serving graph into one stock TensorFlow runs, lookups still in the graph.

Each `KvResourceGather(V1)` node G becomes a small stock subgraph whose last op is an Identity
named G (consumers are untouched):

    row     = LookupTableFind(index[EV], max(ids, -1), default -1)    # int64 key -> row, or -1
    rows    = ResourceGather(values[EV], max(row, 0))
    default = const row of default_value_no_permission              # filter, or older releases
            | ResourceGather(initial_value[part], floormod(ids, default_value_dim))
            | the gather's default_value input                      # is_use_default_value_tensor
    G       = SelectV2(row >= 0, rows, default)

`index` (a MutableDenseHashTable) and `values` (a [rows, dim] resource variable) are one per EV
(the parts of a partitioned EV share them: a key lives in one part, and the graph's partitioning
routes it there); the runtime fills them from checkpoints (tables.py). Negative ids map to -1,
which is never a key, so they always get the default. Everything else DeepRec-only (handles,
initialisers, save / restore / incremental-save subgraphs) is cut away by keeping only what the
signature outputs, the dense variables and the main op need; any op left that stock TensorFlow
does not know refuses the model, naming op and node.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, variable_pb2
from tensorflow.python.framework import graph_util, op_def_registry
from tensorflow.python.util import deprecation

from deeprec_runtime.deeprec import evs, nodes, opnames
from deeprec_runtime.deeprec.savedmodel import ExportedModel
from deeprec_runtime.errors import VersionLoadError

PREFIX = "deeprec_ev"
EMPTY_KEY = np.iinfo(np.int64).min
DELETED_KEY = EMPTY_KEY + 1
_VARIABLE_OPS = ("VariableV2", "VarHandleOp", "Variable")


@dataclass(frozen=True)
class TableNodes:
    """The graph nodes that hold one EV's rows."""

    base: str
    dim: int
    index: str
    """MutableDenseHashTableV2 node: key -> row."""
    values: str
    """VarHandleOp node: float [rows, dim]."""
    parts: tuple[evs.EVPart, ...]


@dataclass(frozen=True)
class DefaultNodes:
    """An EV part whose unseen ids take rows of its initial value."""

    part: evs.EVPart
    variable: str
    """VarHandleOp node: float [default_value_dim, dim], assigned from `part.initial_value`."""


@dataclass
class Rewritten:
    graph_def: graph_pb2.GraphDef
    tables: dict[str, TableNodes]
    defaults: list[DefaultNodes]
    lookups: list[evs.EVLookup]
    dense: list[variable_pb2.VariableDef]
    """VariableDefs of the dense variables the serving graph reads."""
    main_op: str | None
    removed: list[str] = field(default_factory=list)


def _unique_name(taken: set[str], name: str) -> str:
    out, k = name, 1
    while out in taken:
        out = f"{name}_{k}"
        k += 1
    taken.add(out)
    return out


class _Builder:
    def __init__(self, model: ExportedModel, lookups: list[evs.EVLookup]):
        self.model = model
        self.lookups = lookups
        self.taken = {n.name for n in model.graph_def.node}
        self.added: list[node_def_pb2.NodeDef] = []
        self.tables: dict[str, TableNodes] = {}
        self.defaults: dict[str, DefaultNodes] = {}
        self.shared: dict[str, str] = {}

    def add(self, node: node_def_pb2.NodeDef) -> str:
        node.name = _unique_name(self.taken, node.name)
        self.added.append(node)
        return node.name

    def constant(self, key: str, value, np_dtype) -> str:
        """A constant shared by every lookup (one node per value)."""
        name = self.shared.get(key)
        if name is None:
            name = self.shared[key] = self.add(nodes.const(f"{PREFIX}/const/{key}", value, np_dtype))
        return name

    def table(self, part: evs.EVPart) -> TableNodes:
        t = self.tables.get(part.base)
        if t is None:
            empty = self.constant("empty_key", EMPTY_KEY, np.int64)
            deleted = self.constant("deleted_key", DELETED_KEY, np.int64)
            index = self.add(nodes.dense_hash_table(f"{PREFIX}/{part.base}/index", empty, deleted))
            values = self.add(nodes.variable(f"{PREFIX}/{part.base}/values", nodes.FLOAT,
                                             [-1, part.dim]))
            t = self.tables[part.base] = TableNodes(part.base, part.dim, index, values, (part,))
        elif part not in t.parts:
            t = self.tables[part.base] = TableNodes(t.base, t.dim, t.index, t.values,
                                                    (*t.parts, part))
        return t

    def default_variable(self, part: evs.EVPart) -> str:
        d = self.defaults.get(part.node)
        if d is None:
            var = self.add(nodes.variable(f"{PREFIX}/{part.name}/default", nodes.FLOAT,
                                          [part.default_value_dim, part.dim]))
            d = self.defaults[part.node] = DefaultNodes(part, var)
        return d.variable

    def lookup(self, lk: evs.EVLookup) -> None:
        part, g = lk.part, lk.node
        t = self.table(part)
        scope = f"{g}/{PREFIX}"
        keys = lk.ids
        if part.key_dtype != nodes.INT64:
            keys = self.add(nodes.node(f"{scope}/keys", "Cast", [lk.ids], SrcT=nodes.dtype(
                part.key_dtype), DstT=nodes.dtype(nodes.INT64)))
        minus_one = self.constant("minus_one", -1, np.int64)
        zero = self.constant("zero", 0, np.int64)
        safe = self.add(nodes.node(f"{scope}/safe_keys", "Maximum", [keys, minus_one],
                                   T=nodes.dtype(nodes.INT64)))
        row = self.add(nodes.node(f"{scope}/row", "LookupTableFindV2", [t.index, safe, minus_one],
                                  Tin=nodes.dtype(nodes.INT64), Tout=nodes.dtype(nodes.INT64)))
        found = self.add(nodes.node(f"{scope}/found", "GreaterEqual", [row, zero],
                                    T=nodes.dtype(nodes.INT64)))
        safe_row = self.add(nodes.node(f"{scope}/safe_row", "Maximum", [row, zero],
                                       T=nodes.dtype(nodes.INT64)))
        rows = self.add(nodes.node(f"{scope}/rows", "ResourceGather", [t.values, safe_row],
                                   dtype=nodes.dtype(nodes.FLOAT),
                                   Tindices=nodes.dtype(nodes.INT64)))
        if part.default_rule == evs.NO_PERMISSION:
            default = self.constant(f"no_permission_{part.dim}_{part.default_value_no_permission!r}",
                                    np.full([part.dim], part.default_value_no_permission), np.float32)
        elif lk.default_tensor is not None:
            shape = self.add(nodes.node(f"{scope}/rows_shape", "Shape", [rows],
                                        T=nodes.dtype(nodes.FLOAT), out_type=nodes.dtype(nodes.INT64)))
            default = self.add(nodes.node(f"{scope}/default", "Reshape", [lk.default_tensor, shape],
                                          T=nodes.dtype(nodes.FLOAT),
                                          Tshape=nodes.dtype(nodes.INT64)))
        else:
            dim = self.constant(f"default_value_dim_{part.default_value_dim}",
                                part.default_value_dim, np.int64)
            slot = self.add(nodes.node(f"{scope}/default_row", "FloorMod", [keys, dim],
                                       T=nodes.dtype(nodes.INT64)))
            default = self.add(nodes.node(f"{scope}/default", "ResourceGather",
                                          [self.default_variable(part), slot],
                                          dtype=nodes.dtype(nodes.FLOAT),
                                          Tindices=nodes.dtype(nodes.INT64)))
        axis = self.constant("last_axis", -1, np.int32)
        cond = self.add(nodes.node(f"{scope}/found_rows", "ExpandDims", [found, axis],
                                   T=nodes.dtype(nodes.BOOL), Tdim=nodes.dtype(nodes.INT32)))
        select = self.add(nodes.node(f"{scope}/select", "SelectV2", [cond, rows, default],
                                     T=nodes.dtype(nodes.FLOAT)))
        # The gather's own name, so its consumers read the lookup unchanged.
        self.added.append(nodes.node(g, "Identity", [select], T=nodes.dtype(nodes.FLOAT)))


def _dropped(node: node_def_pb2.NodeDef) -> bool:
    return node.op in opnames.DROPPED or node.op == opnames.HANDLE


def _strip_edges(graph_def: graph_pb2.GraphDef) -> None:
    """Cuts control edges to dropped DeepRec ops and colocation constraints naming nodes that
    will not exist: both would otherwise pull EV nodes back in (extract_sub_graph follows
    `_class` too) or make the import fail."""
    by_name = {n.name: n for n in graph_def.node}
    doomed = {n.name for n in graph_def.node if _dropped(n)}
    for n in graph_def.node:
        keep = [i for i in n.input
                if not (i.startswith("^") and evs.clean_input(i) in doomed)]
        if len(keep) != len(n.input):
            del n.input[:]
            n.input.extend(keep)
        if "_class" in n.attr:
            locs = [s for s in n.attr["_class"].list.s
                    if not (s.startswith(b"loc:@") and (s[5:].decode() in doomed
                                                        or s[5:].decode() not in by_name))]
            if locs:
                n.attr["_class"].CopyFrom(attr_value_pb2.AttrValue(
                    list=attr_value_pb2.AttrValue.ListValue(s=locs)))
            else:
                del n.attr["_class"]


def _extract(graph_def: graph_pb2.GraphDef, dests: Iterable[str]) -> graph_pb2.GraphDef:
    names = {n.name for n in graph_def.node}
    wanted = sorted({d for d in dests if d in names})
    # Deprecated only as a TF1 API: it is the tool for a TF1 GraphDef.
    with deprecation.silence():
        return graph_util.extract_sub_graph(graph_def, wanted)


def _check_stock(graph_def: graph_pb2.GraphDef, what: str) -> None:
    unknown = [n for n in graph_def.node if op_def_registry.get(n.op) is None]
    if not unknown:
        return
    parts = []
    for n in unknown[:8]:
        reason = opnames.unsupported_reason(n.op)
        parts.append(f"{n.op} (node {n.name}" + (f": {reason})" if reason else ")"))
    more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
    raise VersionLoadError(f"{what} uses ops stock TensorFlow cannot run: "
                           f"{', '.join(parts)}{more}")


def rewrite(model: ExportedModel, outputs: Sequence[str], inputs: Sequence[str] = ()) -> Rewritten:
    """The stock graph serving `outputs` (signature output tensor names) from `inputs` (kept
    even when no output reads them, so that requests may still feed them)."""
    lookups = evs.find_lookups(model, outputs)
    builder = _Builder(model, lookups)
    for lk in lookups:
        builder.lookup(lk)
    replaced = {lk.node for lk in lookups}
    graph_def = graph_pb2.GraphDef()
    graph_def.versions.CopyFrom(model.graph_def.versions)
    graph_def.library.CopyFrom(model.graph_def.library)
    graph_def.node.extend(n for n in model.graph_def.node if n.name not in replaced)
    graph_def.node.extend(builder.added)
    _strip_edges(graph_def)

    out_nodes = [evs.clean_input(o) for o in (*outputs, *inputs)]
    initial_values = [evs.clean_input(d.part.initial_value) for d in builder.defaults.values()]
    first = _extract(graph_def, out_nodes + initial_values)
    _check_stock(first, "the serving graph")

    # Dense variables read by the serving graph keep their VariableDef nodes (initializer,
    # snapshot), so that they can be rebuilt as variables, assigned and restored.
    by_var = {evs.clean_input(vd.variable_name): vd for vd, is_ev in model.variable_defs()
              if not is_ev}
    internal = {t.values for t in builder.tables.values()} | {
        d.variable for d in builder.defaults.values()}
    dense: list[variable_pb2.VariableDef] = []
    extra: list[str] = []
    for n in first.node:
        if n.op not in _VARIABLE_OPS or n.name in internal:
            continue
        vd = by_var.get(n.name)
        if vd is None:
            raise VersionLoadError(f"variable {n.name} read by the serving graph is not in the "
                                   "SavedModel's variables collection")
        dense.append(vd)
        extra += [evs.clean_input(x) for x in (vd.initializer_name, vd.snapshot_name,
                                               vd.initial_value_name) if x]
    main_op = model.main_op()
    final = _extract(graph_def, out_nodes + initial_values + extra + ([main_op] if main_op else []))
    _check_stock(final, "the serving graph (with its dense variables and main op)")
    kept = {n.name for n in final.node}
    removed = sorted({n.name for n in model.graph_def.node} - kept)
    return Rewritten(final, builder.tables, list(builder.defaults.values()), lookups, dense,
                     main_op if main_op in kept else None, removed)
