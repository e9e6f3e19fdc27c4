"""Reads a SavedModel exported by DeepRec with stock protobufs.

DeepRec's protos are stock TensorFlow's plus a few fields: `MetaGraphDef.incr_saver_def` (field 8)
and `VariableDef.is_embedding_var` (field 91). Stock protobuf keeps them as unknown fields, where
this module reads them. Attributes an export stripped because they had their default value are
read back from the producer's op list (`meta_info_def.stripped_op_list`), which also carries the
OpDefs of DeepRec's own ops that the stock registry lacks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from google.protobuf import text_format, unknown_fields
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, op_def_pb2, variable_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2, saver_pb2

from deeprec_runtime.deeprec import opnames
from deeprec_runtime.errors import VersionLoadError

SERVE_TAG = "serve"
INCR_SAVER_DEF_FIELD = 8
IS_EMBEDDING_VAR_FIELD = 91
_LENGTH_DELIMITED = 2


@dataclass(frozen=True)
class ExportedModel:
    """The serving MetaGraphDef of a SavedModel and what DeepRec adds to it."""

    path: str
    meta: meta_graph_pb2.MetaGraphDef
    op_defs: dict[str, op_def_pb2.OpDef]
    """The producer's OpDefs (stripped_op_list), by op name."""
    incr_saver: saver_pb2.SaverDef | None
    """DeepRec's incremental saver (present when exported with save_incr_model=True)."""

    @property
    def graph_def(self) -> graph_pb2.GraphDef:
        return self.meta.graph_def

    def attr(self, node: node_def_pb2.NodeDef, name: str) -> attr_value_pb2.AttrValue | None:
        """The node's attr, or the producer's default for it when the export stripped it."""
        if name in node.attr:
            return node.attr[name]
        op_def = self.op_defs.get(node.op)
        if op_def is not None:
            for a in op_def.attr:
                if a.name == name and a.HasField("default_value"):
                    return a.default_value
        return None

    def variable_defs(self) -> list[tuple[variable_pb2.VariableDef, bool]]:
        """Every VariableDef of the `variables` collection, with whether DeepRec marked it as an
        EmbeddingVariable (field 91)."""
        found = []
        seen = set()
        for key in ("variables", "trainable_variables"):
            if key not in self.meta.collection_def:
                continue
            for raw in self.meta.collection_def[key].bytes_list.value:
                vd = variable_pb2.VariableDef.FromString(raw)
                if vd.variable_name in seen:
                    continue
                seen.add(vd.variable_name)
                found.append((vd, _is_embedding_var(vd)))
        return found

    def main_op(self) -> str | None:
        """The op a SavedModel runs after restoring (main_op, else legacy_init_op)."""
        for key in ("saved_model_main_op", "legacy_init_op"):
            col = self.meta.collection_def.get(key)
            if col is not None and col.node_list.value:
                return col.node_list.value[0].split(":")[0].lstrip("^")
        return None


def _is_embedding_var(vd: variable_pb2.VariableDef) -> bool:
    for f in unknown_fields.UnknownFieldSet(vd):
        if f.field_number == IS_EMBEDDING_VAR_FIELD and f.data:
            return True
    return False


def _incr_saver(meta: meta_graph_pb2.MetaGraphDef) -> saver_pb2.SaverDef | None:
    for f in unknown_fields.UnknownFieldSet(meta):
        if f.field_number == INCR_SAVER_DEF_FIELD and f.wire_type == _LENGTH_DELIMITED:
            try:
                return saver_pb2.SaverDef.FromString(f.data)
            except Exception:  # noqa: BLE001  (a malformed optional field: ignore it, as DeepRec would not need it)
                return None
    return None


def read_saved_model(savedmodel_dir: str) -> saved_model_pb2.SavedModel:
    """The SavedModel proto (binary or text); VersionLoadError when neither file parses."""
    pb_path = os.path.join(savedmodel_dir, "saved_model.pb")
    txt_path = os.path.join(savedmodel_dir, "saved_model.pbtxt")
    model = saved_model_pb2.SavedModel()
    try:
        if os.path.isfile(pb_path):
            with open(pb_path, "rb") as fh:
                model.ParseFromString(fh.read())
        elif os.path.isfile(txt_path):
            with open(txt_path, encoding="utf-8") as fh:
                text_format.Parse(fh.read(), model)
        else:
            raise VersionLoadError(f"no saved_model.pb or saved_model.pbtxt in {savedmodel_dir}")
    except (OSError, text_format.ParseError, ValueError) as exc:
        raise VersionLoadError(f"cannot read the SavedModel in {savedmodel_dir}: {exc}") from None
    except Exception as exc:  # noqa: BLE001  (protobuf's DecodeError is a plain Exception)
        raise VersionLoadError(f"cannot parse the SavedModel in {savedmodel_dir}: {exc}") from None
    return model


def serving_meta_graph(model: saved_model_pb2.SavedModel, path: str) -> meta_graph_pb2.MetaGraphDef:
    for meta in model.meta_graphs:
        if SERVE_TAG in meta.meta_info_def.tags:
            return meta
    tags = [list(m.meta_info_def.tags) for m in model.meta_graphs]
    raise VersionLoadError(f"the SavedModel in {path} has no MetaGraphDef tagged 'serve' (tags: {tags})")


def load_exported(savedmodel_dir: str) -> ExportedModel:
    meta = serving_meta_graph(read_saved_model(savedmodel_dir), savedmodel_dir)
    op_defs = {op.name: op for op in meta.meta_info_def.stripped_op_list.op}
    return ExportedModel(savedmodel_dir, meta, op_defs, _incr_saver(meta))


def has_embedding_variables(savedmodel_dir: str) -> bool:
    """Whether the SavedModel's serving graph holds DeepRec EmbeddingVariables. False when the
    SavedModel cannot be read (the stock loader then reports what is wrong)."""
    try:
        meta = serving_meta_graph(read_saved_model(savedmodel_dir), savedmodel_dir)
    except VersionLoadError:
        return False
    return any(node.op == opnames.HANDLE for node in meta.graph_def.node)
