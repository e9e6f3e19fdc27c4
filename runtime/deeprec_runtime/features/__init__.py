"""Embedding rows outside the TensorFlow session: Redis shared by replicas, or DRAM + SSD tiers.

`find_tables` reads a SavedModel's serving graph for its embedding lookups; `open_feature_store`
builds the store a model_config asks for (None: rows stay in the session, the default).
Design and formats: docs/feature-stores.md.
"""

from __future__ import annotations

import logging

from deeprec_runtime.features.base import FeatureStore, StoreUnavailable, TableRows, VersionKey
from deeprec_runtime.features.binding import ExternalTables
from deeprec_runtime.features.graph import Lookup, Table, find_tables

log = logging.getLogger(__name__)

__all__ = ["ExternalTables", "FeatureStore", "Lookup", "StoreUnavailable", "Table", "TableRows",
           "VersionKey", "find_tables", "open_feature_store"]


def open_feature_store(config) -> FeatureStore | None:
    """The feature store for a ModelConfig: Redis, DRAM / DRAM+SSD tiers, or None."""
    if config.feature_store_type == "redis":
        from deeprec_runtime.features.redis_store import RedisFeatureStore, namespace_for

        if config.ev_storage_type:
            log.warning("ev_storage_type %d is ignored: embedding rows live in Redis",
                        config.ev_storage_type)
        return RedisFeatureStore(
            config.redis_url, config.redis_password, read_connections=config.read_thread_num,
            update_connections=config.update_thread_num,
            namespace=namespace_for(config.checkpoint_dir or config.savedmodel_dir),
            wait_timeout_s=config.init_timeout_minutes * 60.0)
    if config.ev_storage_type in (1, 12):
        from deeprec_runtime.features.tiered import TieredFeatureStore

        return TieredFeatureStore(config.ev_storage_type, config.ev_storage_path,
                                  config.ev_storage_size)
    return None
