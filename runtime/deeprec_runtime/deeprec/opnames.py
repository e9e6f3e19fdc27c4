"""The vocabulary of DeepRec-only ops a serving graph can contain, and what the rewrite does with
each kind: EV handles and lookups are replaced, initialisation / save / restore / incremental-save
ops are dropped, the rest are refused by name (reference: DeepRec's
`tensorflow/core/ops/kv_variable_ops.cc` and `io_ops.cc`).
"""

from __future__ import annotations

#: An EmbeddingVariable's handle: one per EV, or one per part of a partitioned EV.
HANDLE = "KvVarHandleOp"
#: Creates the EV from its attrs and initial value; older releases emit the first only (sometimes
#: with the settings in a JSON string attr), newer ones the second (plus a restore-time copy).
INITIALIZERS = frozenset({"InitializeKvVariableOp", "InitializeKvVariableV2Op"})
INITIALIZER_V2 = "InitializeKvVariableV2Op"
#: Lookups the rewrite turns into table lookups; V1 carries per-id counts (for the filter),
#: which matter only in training.
GATHERS = frozenset({"KvResourceGather", "KvResourceGatherV1"})

#: Ops that only initialise, save, restore or record for incremental saves. Serving never runs
#: them: they are dropped with everything that depends on them, and control edges to them are cut.
DROPPED = frozenset({
    *INITIALIZERS,
    "KvVarIsInitializedOp", "KvVarIsAllSlotInitializedOp", "KvResourceInitCacheStrategyOp",
    "KvResourceSetCacheStrategyOp", "DestroyKvResourceOp",
    "KvResourceImport", "KvResourceImportV2", "KvResourceImportV3", "KvResourceIncrImport",
    "KvResourceExport", "IncrSave", "IncrRestore", "ActivateSparseRecorder",
    "RecordSparseIndices", "SaveV3", "KvVariableShape", "EVGetFrequency", "EVGetVersion",
    "ImportStorage", "FilterStorage",
})

#: EV lookups that cannot be rewritten one by one (fused, grouped, pointer-based or tiered); a
#: serving path that reaches one is refused with this reason.
UNSUPPORTED = {
    "_OPT_KvResourceLookupID": "an optimized two-step EV lookup (pointer ids)",
    "_OPT_KvResourceCollectEmbedding": "an optimized two-step EV lookup (pointer ids)",
    "KvResourceCollectEmbedding": "an optimized two-step EV lookup (pointer ids)",
    "KvResourceLookupID": "an optimized two-step EV lookup (pointer ids)",
    "GroupEmbeddingVarLookup": "a grouped EV lookup",
    "GroupEmbeddingVarLookupDense": "a grouped EV lookup",
    "GroupVariableLookup": "a grouped embedding lookup",
    "GroupVariableLookupDense": "a grouped embedding lookup",
    "KvResourceLookupTier": "a multi-tier EV lookup",
    "KvResourceLookupResource": "a multi-tier EV lookup",
    "ReadKvVariableOp": "a whole-EV read",
    "KvResourceScatterAdd": "an EV update",
}
#: Prefixes of DeepRec's fused embedding ops (e.g. FusedEmbeddingSparseLookUp).
UNSUPPORTED_PREFIXES = ("FusedEmbedding", "FusedSafeEmbedding", "_OPT_", "GroupEmbedding")


def unsupported_reason(op: str) -> str | None:
    """Why an op left on the serving path cannot be served, for the known DeepRec ones."""
    if op in UNSUPPORTED:
        return UNSUPPORTED[op]
    if op.startswith(UNSUPPORTED_PREFIXES):
        return "a fused embedding lookup"
    if op.startswith("Kv"):
        return "an EmbeddingVariable op this runtime does not rewrite"
    return None
