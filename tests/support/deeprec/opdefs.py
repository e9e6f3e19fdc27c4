"""OpDefs of DeepRec's own ops, written from DeepRec's registrations
(`tensorflow/core/ops/kv_variable_ops.cc`, `io_ops.cc`, `incr_save_restore_ops.cc`), for the
stripped op lists of hand-built DeepRec exports. Stock TensorFlow does not have them."""

from __future__ import annotations

from google.protobuf import text_format
from tensorflow.core.framework import op_def_pb2

_INIT_ATTRS = """
  attr { name: "slot_num" type: "int" default_value { i: 0 } }
  attr { name: "Tkeys" type: "type" allowed_values { list { type: DT_INT64 type: DT_INT32 } } }
  attr { name: "dtype" type: "type" }
  attr { name: "shape" type: "shape" }
  attr { name: "initial_num_buckets" type: "int" default_value { i: 131072 } }
  attr { name: "max_load_factor" type: "float" default_value { f: 0.8 } }
  attr { name: "steps_to_live" type: "int" default_value { i: 0 } }
  attr { name: "ht_type" type: "string" default_value { s: "" } }
  attr { name: "emb_index" type: "int" default_value { i: 0 } }
  attr { name: "block_num" type: "int" default_value { i: 1 } }
  attr { name: "slot_index" type: "int" default_value { i: 0 } }
  attr { name: "ht_partition_num" type: "int" default_value { i: 1000 } }
  attr { name: "filter_freq" type: "int" default_value { i: 0 } }
  attr { name: "max_freq" type: "int" default_value { i: 999999 } }
  attr { name: "max_element_size" type: "int" default_value { i: 0 } }
  attr { name: "counter_type" type: "type" }
  attr { name: "false_positive_probability" type: "float" default_value { f: -1.0 } }
  attr { name: "l2_weight_threshold" type: "float" default_value { f: -1.0 } }
  attr { name: "layout" type: "string" default_value { s: "" } }
  attr { name: "storage_type" type: "int" default_value { i: 0 } }
  attr { name: "storage_path" type: "string" default_value { s: "." } }
  attr { name: "storage_size" type: "list(int)" default_value { list { } } }
  attr { name: "default_value_dim" type: "int" default_value { i: 4096 } }
  attr { name: "default_value_no_permission" type: "float" default_value { f: 0.0 } }
  attr { name: "record_freq" type: "bool" default_value { b: false } }
  attr { name: "record_version" type: "bool" default_value { b: false } }
"""
_INIT_INPUTS = """
  input_arg { name: "resource_self" type: DT_RESOURCE }
  input_arg { name: "resource_primary" type: DT_RESOURCE }
  input_arg { name: "value" type_attr: "dtype" }
  input_arg { name: "empty_key" type_attr: "Tkeys" }
"""
_GATHER_COMMON = """
  input_arg { name: "resource" type: DT_RESOURCE }
  input_arg { name: "indices" type_attr: "Tkeys" }
  input_arg { name: "default_value" type_attr: "dtype" }
  output_arg { name: "output" type_attr: "dtype" }
  attr { name: "is_use_default_value_tensor" type: "bool" default_value { b: false } }
  attr { name: "validate_indices" type: "bool" default_value { b: true } }
  attr { name: "is_inference" type: "bool" default_value { b: false } }
  attr { name: "dtype" type: "type" }
  attr { name: "Tkeys" type: "type" allowed_values { list { type: DT_INT64 type: DT_INT32 } } }
"""

_TEXT = {
    "KvVarHandleOp": """
  name: "KvVarHandleOp"
  output_arg { name: "resource" type: DT_RESOURCE }
  attr { name: "container" type: "string" default_value { s: "" } }
  attr { name: "shared_name" type: "string" default_value { s: "" } }
  attr { name: "dtype" type: "type" }
  attr { name: "shape" type: "shape" }
  attr { name: "Tkeys" type: "type" default_value { type: DT_INT64 }
         allowed_values { list { type: DT_INT64 type: DT_INT32 } } }
  is_stateful: true""",
    "KvVarIsInitializedOp": """
  name: "KvVarIsInitializedOp"
  input_arg { name: "resource" type: DT_RESOURCE }
  output_arg { name: "is_initialized" type: DT_BOOL }
  attr { name: "Tkeys" type: "type" allowed_values { list { type: DT_INT64 type: DT_INT32 } } }
  attr { name: "dtype" type: "type" default_value { type: DT_FLOAT } }""",
    "InitializeKvVariableOp": 'name: "InitializeKvVariableOp"' + _INIT_INPUTS + _INIT_ATTRS
    + 'attr { name: "attr_json_str" type: "string" default_value { s: "" } }',
    "InitializeKvVariableV2Op": 'name: "InitializeKvVariableV2Op"' + _INIT_INPUTS + _INIT_ATTRS
    + 'attr { name: "embedding_variable_type" type: "int" default_value { i: 0 } }',
    "KvResourceGather": 'name: "KvResourceGather"' + _GATHER_COMMON,
    "KvResourceGatherV1": 'name: "KvResourceGatherV1"' + _GATHER_COMMON + """
  input_arg { name: "counts" type_attr: "counts_type" }
  attr { name: "counts_type" type: "type" default_value { type: DT_INT32 }
         allowed_values { list { type: DT_INT32 type: DT_INT64 } } }""",
    "KvResourceImportV2": """
  name: "KvResourceImportV2"
  input_arg { name: "prefix" type: DT_STRING }
  input_arg { name: "resource_self" type: DT_RESOURCE }
  input_arg { name: "resource_primary" type: DT_RESOURCE }
  input_arg { name: "value" type_attr: "dtype" }
  input_arg { name: "tensor_names" type: DT_STRING }
  input_arg { name: "empty_key" type_attr: "Tkeys" }
  attr { name: "shape" type: "shape" }
  attr { name: "Tkeys" type: "type" }
  attr { name: "dtype" type: "type" }
  attr { name: "counter_type" type: "type" }
  attr { name: "partition_id" type: "int" default_value { i: 0 } }
  attr { name: "partition_num" type: "int" default_value { i: 1 } }
  attr { name: "filter_freq" type: "int" default_value { i: 0 } }
  attr { name: "default_value_dim" type: "int" default_value { i: 4096 } }
  attr { name: "default_value_no_permission" type: "float" default_value { f: 0.0 } }
  attr { name: "attr_json_str" type: "string" default_value { s: "" } }
  is_stateful: true""",
    "KvResourceImportV3": """
  name: "KvResourceImportV3"
  input_arg { name: "prefix" type: DT_STRING }
  input_arg { name: "resource_self" type: DT_RESOURCE }
  input_arg { name: "tensor_names" type: DT_STRING }
  input_arg { name: "empty_key" type_attr: "Tkeys" }
  attr { name: "shape" type: "shape" }
  attr { name: "partition_id" type: "int" default_value { i: 0 } }
  attr { name: "partition_num" type: "int" default_value { i: 1 } }
  attr { name: "Tkeys" type: "type" }
  attr { name: "dtype" type: "type" }
  attr { name: "reset_version" type: "bool" default_value { b: false } }
  is_stateful: true""",
    "KvResourceIncrImport": """
  name: "KvResourceIncrImport"
  input_arg { name: "prefix" type: DT_STRING }
  input_arg { name: "resource_handle" type: DT_RESOURCE }
  input_arg { name: "tensor_names" type: DT_STRING }
  input_arg { name: "empty_key" type_attr: "Tkeys" }
  input_arg { name: "value" type_attr: "dtype" }
  attr { name: "Tkeys" type: "type" }
  attr { name: "dtype" type: "type" }
  attr { name: "partition_id" type: "int" default_value { i: 0 } }
  attr { name: "partition_num" type: "int" default_value { i: 1 } }
  is_stateful: true""",
    "IncrSave": """
  name: "IncrSave"
  input_arg { name: "prefix" type: DT_STRING }
  input_arg { name: "tensor_names" type: DT_STRING }
  input_arg { name: "shape_and_slices" type: DT_STRING }
  input_arg { name: "is_sparse" type: DT_BOOL }
  input_arg { name: "tensors" type_list_attr: "dtypes" }
  attr { name: "dtypes" type: "list(type)" }
  is_stateful: true""",
    "ActivateSparseRecorder": """
  name: "ActivateSparseRecorder"
  input_arg { name: "tensor_names" type: DT_STRING }""",
    "SaveV2": """
  name: "SaveV2"
  input_arg { name: "prefix" type: DT_STRING }
  input_arg { name: "tensor_names" type: DT_STRING }
  input_arg { name: "shape_and_slices" type: DT_STRING }
  input_arg { name: "tensors" type_list_attr: "dtypes" }
  attr { name: "dtypes" type: "list(type)" has_minimum: true minimum: 1 }
  attr { name: "ev_key_types" type: "list(type)" default_value { list { } } }
  attr { name: "has_ev" type: "bool" default_value { b: false } }
  is_stateful: true""",
    "_OPT_KvResourceLookupID": """
  name: "_OPT_KvResourceLookupID"
  input_arg { name: "resource" type: DT_RESOURCE }
  input_arg { name: "indices" type_attr: "Tkeys" }
  output_arg { name: "pointer" type: DT_INT64 }
  attr { name: "dtype" type: "type" }
  attr { name: "Tkeys" type: "type" }""",
    "_OPT_KvResourceCollectEmbedding": """
  name: "_OPT_KvResourceCollectEmbedding"
  input_arg { name: "resource" type: DT_RESOURCE }
  input_arg { name: "indices" type_attr: "Tkeys" }
  input_arg { name: "pointer" type: DT_INT64 }
  input_arg { name: "default_value" type_attr: "dtype" }
  output_arg { name: "output" type_attr: "dtype" }
  attr { name: "is_use_default_value_tensor" type: "bool" default_value { b: false } }
  attr { name: "validate_indices" type: "bool" default_value { b: true } }
  attr { name: "dtype" type: "type" }
  attr { name: "Tkeys" type: "type" }""",
}


def deeprec_op_defs() -> dict[str, op_def_pb2.OpDef]:
    """DeepRec's OpDefs by name (the union of the releases' attrs)."""
    out = {}
    for name, text in _TEXT.items():
        op = op_def_pb2.OpDef()
        text_format.Parse(text, op)
        out[name] = op
    return out
