"""Rewrites a DeepRec serving graph into one stock TensorFlow runs, lookups still in the graph.

Each `KvResourceGather(V1)` node G becomes a lookup on storage the runtime owns, under G's name
(consumers are untouched):

    row = LookupTableFind(index[EV], ids, default = fallback)    # per id: its row, or fallback
          fallback = offset[part] + floormod(ids, default_value_dim)   # initial-value rows
                   | offset[part]                   # one row of default_value_no_permission
    G   = ResourceGather(values[EV], row)

With the EV op library loaded (deeprec/kernels.py, deeprec/ev_ops.cc) the three ops are one,
`G = DeepRecEVGather(values[EV], index[EV], ids)` with the fallback's offset and modulus as
attributes, and `index` is its cache-friendly DeepRecKeyIndex; the answers are the same.

`index` (a MutableHashTable or DeepRecKeyIndex, int64 key -> row) and `values` (a float
[rows, dim] resource variable) are one per EV: the parts of a partitioned EV share them (a key
lives in one part, and the graph's partitioning routes it there). `values` starts with each
part's default rows (its initial value, or one no-permission row) and continues with the keys'
rows, so a lookup is one find and one gather whatever the id. The runtime fills both from
checkpoints (tables.py). Negative ids are never keys, so they always get the default. A gather with
`is_use_default_value_tensor` (and no filter) keeps DeepRec's per-position default instead:
`G = SelectV2(row >= 0, gathered rows, default_value input)`.

Everything else DeepRec-only (handles, initialisers, save / restore / incremental-save subgraphs)
is cut away by keeping only what the signature outputs, the dense variables and the main op
need; any op left that stock TensorFlow does not know refuses the model, naming op and node.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, variable_pb2
from tensorflow.python.framework import graph_util, op_def_registry
from tensorflow.python.util import deprecation

from deeprec_runtime.deeprec import evs, kernels, nodes, opnames
from deeprec_runtime.deeprec.savedmodel import ExportedModel
from deeprec_runtime.errors import VersionLoadError

PREFIX = "deeprec_ev"
_VARIABLE_OPS = ("VariableV2", "VarHandleOp", "Variable")


@dataclass(frozen=True)
class DefaultBlock:
    """Rows of `values` that unseen ids of one EV part read."""

    part: evs.EVPart
    offset: int
    rows: int
    initial_value: str | None
    """Tensor name of the part's initial value ([rows, dim]); None: one row filled with
    `part.default_value_no_permission`."""


@dataclass
class TableNodes:
    """The graph nodes that hold one EV's rows."""

    base: str
    dim: int
    index: str
    """MutableHashTableV2 node: key -> row of `values`."""
    values: str
    """VarHandleOp node: float [default rows + key rows, dim]."""
    parts: list[evs.EVPart] = field(default_factory=list)
    blocks: dict[tuple[str, str], DefaultBlock] = field(default_factory=dict)

    @property
    def default_rows(self) -> int:
        return sum(b.rows for b in self.blocks.values())

    def block(self, part: evs.EVPart) -> DefaultBlock:
        key = (part.node, part.default_rule)
        b = self.blocks.get(key)
        if b is None:
            if part.default_rule == evs.INITIALIZER:
                b = DefaultBlock(part, self.default_rows, part.default_value_dim, part.initial_value)
            else:
                b = DefaultBlock(part, self.default_rows, 1, None)
            self.blocks[key] = b
        return b


@dataclass
class Rewritten:
    graph_def: graph_pb2.GraphDef
    tables: dict[str, TableNodes]
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
    def __init__(self, model: ExportedModel, lookups: list[evs.EVLookup], fused: bool):
        self.model = model
        self.lookups = lookups
        self.fused = fused
        self.taken = {n.name for n in model.graph_def.node}
        self.added: list[node_def_pb2.NodeDef] = []
        self.tables: dict[str, TableNodes] = {}
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
            index = self.add(nodes.hash_table(
                f"{PREFIX}/{part.base}/index",
                kernels.INDEX_OP if self.fused else "MutableHashTableV2"))
            values = self.add(nodes.variable(f"{PREFIX}/{part.base}/values", nodes.FLOAT,
                                             [-1, part.dim]))
            t = self.tables[part.base] = TableNodes(part.base, part.dim, index, values)
        if part not in t.parts:
            t.parts.append(part)
        return t

    def op(self, name: str, op: str, inputs, **attrs) -> str:
        return self.add(nodes.node(name, op, inputs, **attrs))

    def lookup(self, lk: evs.EVLookup) -> None:
        part, g = lk.part, lk.node
        t = self.table(part)
        scope = f"{g}/{PREFIX}"
        i64, f32 = nodes.dtype(nodes.INT64), nodes.dtype(nodes.FLOAT)
        keys = lk.ids
        if part.key_dtype != nodes.INT64:
            keys = self.op(f"{scope}/keys", "Cast", [lk.ids], SrcT=nodes.dtype(part.key_dtype),
                           DstT=i64)
        # The last op takes the gather's own name, so its consumers read the lookup unchanged.
        self.taken.discard(g)
        if part.default_rule == evs.INITIALIZER and lk.default_tensor is not None:
            # DeepRec's per-position default rows: any valid row is gathered for a miss, then
            # replaced by the gather's default_value input.
            minus_one = self.constant("minus_one", -1, np.int64)
            zero = self.constant("zero", 0, np.int64)
            row = self.op(f"{scope}/row", "LookupTableFindV2", [t.index, keys, minus_one],
                          Tin=i64, Tout=i64)
            found = self.op(f"{scope}/found", "GreaterEqual", [row, zero], T=i64)
            safe_row = self.op(f"{scope}/safe_row", "Maximum", [row, zero], T=i64)
            rows = self.op(f"{scope}/rows", "ResourceGather", [t.values, safe_row], dtype=f32,
                           Tindices=i64)
            shape = self.op(f"{scope}/rows_shape", "Shape", [rows], T=f32, out_type=i64)
            default = self.op(f"{scope}/default", "Reshape", [lk.default_tensor, shape], T=f32,
                              Tshape=i64)
            axis = self.constant("last_axis", -1, np.int32)
            cond = self.op(f"{scope}/found_rows", "ExpandDims", [found, axis],
                           T=nodes.dtype(nodes.BOOL), Tdim=nodes.dtype(nodes.INT32))
            self.op(g, "SelectV2", [cond, rows, default], T=f32)
            return
        block = t.block(part)
        if self.fused:
            self.op(g, kernels.GATHER_OP, [t.values, t.index, keys],
                    dim=nodes.int_attr(part.dim), default_offset=nodes.int_attr(block.offset),
                    default_rows=nodes.int_attr(block.rows))
            return
        offset = self.constant(f"int64_{block.offset}", block.offset, np.int64)
        if block.initial_value is not None:
            dim = self.constant(f"int64_{part.default_value_dim}", part.default_value_dim, np.int64)
            fallback = self.op(f"{scope}/default_slot", "FloorMod", [keys, dim], T=i64)
            if block.offset:
                fallback = self.op(f"{scope}/default_row", "AddV2", [fallback, offset], T=i64)
        else:
            fallback = offset
        row = self.op(f"{scope}/row", "LookupTableFindV2", [t.index, keys, fallback], Tin=i64,
                      Tout=i64)
        self.op(g, "ResourceGather", [t.values, row], dtype=f32, Tindices=i64)


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


def rewrite(model: ExportedModel, outputs: Sequence[str], inputs: Sequence[str] = (),
            fused: bool | None = None) -> Rewritten:
    """The stock graph serving `outputs` (signature output tensor names) from `inputs` (kept
    even when no output reads them, so that requests may still feed them). `fused`: use the EV
    op library (default: when it is loaded)."""
    lookups = evs.find_lookups(model, outputs)
    builder = _Builder(model, lookups, kernels.fused_lookups() if fused is None else fused)
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
    initial_values = [evs.clean_input(b.initial_value) for t in builder.tables.values()
                      for b in t.blocks.values() if b.initial_value]
    first = _extract(graph_def, out_nodes + initial_values)
    _check_stock(first, "the serving graph")

    # Dense variables read by the serving graph keep their VariableDef nodes (initializer,
    # snapshot), so that they can be rebuilt as variables, assigned and restored.
    by_var = {evs.clean_input(vd.variable_name): vd for vd, is_ev in model.variable_defs()
              if not is_ev}
    internal = {t.values for t in builder.tables.values()}
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
    return Rewritten(final, builder.tables, lookups, dense, main_op if main_op in kept else None,
                     removed)
