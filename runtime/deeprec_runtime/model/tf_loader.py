"""The TensorFlow loader: turns a version into a Servable (model/servable.py) for the manager.

It meets the core's Loader contract (core/loader.py). `load` fetches the version's files from the
store, imports the SavedModel graph (or reuses the previous version's when saved_model.pb is the
same), creates the session group and restores the full checkpoint on the low-priority load thread;
`apply_delta` applies an incremental checkpoint in place; `warm_up` runs the warmup requests and
chooses inline or pool execution for the graph once. Store and TensorFlow errors become the core's
LoadError (this version cannot be served) or TransientLoadError (try again next poll).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import tensorflow as tf
from tensorflow.python.saved_model import loader_impl

from deeprec_runtime.config import ModelConfig
from deeprec_runtime.core.loader import LoadError, TransientLoadError
from deeprec_runtime.core.versions import SAVEDMODEL_VERSION, Delta, VersionInfo
from deeprec_runtime.deeprec.keyed import keyed_tables
from deeprec_runtime.deeprec.loader import EVGraph, EVVersion, import_ev_graph
from deeprec_runtime.deeprec.savedmodel import has_embedding_variables
from deeprec_runtime.errors import ServingError, VersionLoadError
from deeprec_runtime.features import (
    ExternalTables,
    FeatureStore,
    StoreUnavailable,
    VersionKey,
    open_feature_store,
)
from deeprec_runtime.features.binding import restore_dense, serving_tables
from deeprec_runtime.model.deltas import _check_shapes, _first_line, _UpdateOps, _VariableUpdater
from deeprec_runtime.model.load_thread import LoadThread
from deeprec_runtime.model.servable import (
    SERVE_TAGS,
    Servable,
    SessionOptions,
    session_options_from,
)
from deeprec_runtime.model.session_group import create_session, place_graph
from deeprec_runtime.model.signature import Signature, parse_signatures
from deeprec_runtime.model.warmup import load_warmup_request, warm_up
from deeprec_runtime.store.base import ModelStore, StoreError
from deeprec_runtime.timeline import TimelineRecorder

log = logging.getLogger(__name__)


class TFLoader:
    """Loads the versions of one model (its ModelConfig) from `store`."""

    def __init__(self, config: ModelConfig, store: ModelStore):
        self.config = config
        self.store = store
        self.options = session_options_from(config)  # first: a bad cpuset opens no connection
        #: Where embedding rows live when not in the session (Redis, DRAM+SSD tiers), or None.
        self.features: FeatureStore | None = open_feature_store(config)
        #: Restores and warmups of new versions run here, at a lower CPU priority than requests.
        self.load_thread = LoadThread()
        self.tracer = TimelineRecorder.from_config(config, getattr(store, "write_bytes", None))
        self.warmup_request = (load_warmup_request(config.warmup_file_name)
                               if config.warmup_file_name else None)
        #: The graph of the last version loaded: the next one reuses it if the SavedModel is the
        #: same (only the parameters differ).
        self.imported: ImportedGraph | None = None
        #: (graph fingerprint, inline?) of the last version whose execution mode was chosen.
        self._execution_choice: tuple[str, bool] | None = None

    def load(self, version: VersionInfo | None) -> Servable:
        try:
            # Fetch before building anything: a store outage or a half-uploaded version is
            # retried on the next poll instead of marking the version as failed.
            savedmodel_dir = self.store.localize_tree(self.config.savedmodel_dir)
            if version:
                self.store.localize_checkpoint(version.full_prefix)
        except StoreError as exc:
            raise TransientLoadError(str(exc)) from None
        except PermissionError as exc:  # its files lead outside the store (a symlink): final
            raise LoadError(str(exc)) from None
        with _load_errors():
            return load_servable(savedmodel_dir, version, self.store.localize_checkpoint,
                                 self.options, self.features, self.imported, self.load_thread.run)

    def apply_delta(self, servable: Servable, delta: Delta) -> None:
        try:
            servable.apply_delta(delta, self.store.localize_checkpoint(delta.prefix))
        except (VersionLoadError, StoreError, PermissionError) as exc:
            raise LoadError(str(exc)) from None

    def warm_up(self, servable: Servable) -> None:
        with _load_errors():
            graph = servable.imported.fingerprint if servable.imported else ""
            memo = self._execution_choice
            known = memo[1] if memo and memo[0] == graph else None
            warm = functools.partial(warm_up, servable, self.config.signature_name,
                                     self.warmup_request, self.config.warmup_iterations,
                                     known_inline=known)
            # A first version of a graph measures inline against pool execution, which must
            # not run at a lower priority than the pool's threads: that one warms up here.
            inline = warm() if known is None else self.load_thread.run(warm)
            if inline is not None:
                self._execution_choice = (graph, inline)
        servable.tracer = self.tracer  # after warmup: timeline steps count real requests only
        self.imported = servable.imported

    def unload(self, servable: Servable) -> None:
        servable.close()

    def needs_reload(self, servable: Servable) -> str:
        if servable.tables is not None and servable.tables.rows.lost():
            return (f"embedding rows of {servable.name} are gone from the feature store; "
                    "importing again")
        return ""

    def retain(self, loaded: Sequence[Servable]) -> None:
        """Remote stores drop local copies of versions that are neither serving nor retained."""
        keep = [self.config.savedmodel_dir] + [s.version.path for s in loaded
                                               if s.version is not None]
        try:
            self.store.retain(keep)
        except OSError as exc:
            log.warning("could not free cached model files: %s", exc)

    def close(self) -> None:
        self.load_thread.close()
        if self.features is not None:
            self.features.close()


@contextmanager
def _load_errors() -> Iterator[None]:
    """VersionLoadError -> LoadError; a feature store outage is retried (TransientLoadError)."""
    try:
        yield
    except StoreUnavailable as exc:
        raise TransientLoadError(str(exc)) from None
    except VersionLoadError as exc:
        raise LoadError(str(exc)) from None


@dataclass(frozen=True)
class ImportedGraph:
    """A SavedModel's graph: imported, placed and given its update ops once, then finalized.

    Each version of the same SavedModel gets its own session on it (sessions share no variables,
    so versions share no parameters) and skips the import: ~60 ms of mostly GIL-holding work that
    the serving version's requests would otherwise queue behind during every swap."""

    fingerprint: str
    """Digest of saved_model.pb (see graph_fingerprint); versions with the same one share this."""
    graph: tf.Graph
    loader: loader_impl.SavedModelLoader | None
    """None for a DeepRec EV export (its graph is rewritten, see `ev`)."""
    saver: tf.compat.v1.train.Saver | None
    meta: object
    """The MetaGraphDef of the serving tags."""
    signatures: dict[str, Signature]
    update_ops: dict[str, _UpdateOps]
    tables: dict
    """Embedding tables a feature store serves (empty without one)."""
    ev: EVGraph | None = None
    """A DeepRec export's EmbeddingVariables (deeprec/), served from tables in the session."""


def graph_fingerprint(savedmodel_dir: str) -> str:
    """Identifies the SavedModel's graph (its saved_model.pb): full versions of one model share
    it and differ only in their parameters. "" when there is no graph file to read."""
    digest = hashlib.sha256()
    found = False
    for name in ("saved_model.pb", "saved_model.pbtxt"):
        try:
            with open(os.path.join(savedmodel_dir, name), "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            found = True
        except OSError:
            continue
    return digest.hexdigest() if found else ""


def import_graph(savedmodel_dir: str, options: SessionOptions, features=None) -> ImportedGraph:
    """Imports the SavedModel's serving graph (see ImportedGraph)."""
    if has_embedding_variables(savedmodel_dir):
        return _import_ev_graph(savedmodel_dir, options, features)
    graph = tf.Graph()
    loader = loader_impl.SavedModelLoader(savedmodel_dir)
    with graph.as_default():
        saver, _ = loader.load_graph(graph, SERVE_TAGS)
        if options.plan is not None and options.plan.uses_gpu:
            place_graph(graph, options.plan.lanes[0].device, options.plan.embeddings_on_cpu)
        meta = loader.get_meta_graph_def_from_tags(SERVE_TAGS)
        variables = graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
        update_ops = {v.op.name: _UpdateOps.build(v) for v in variables}
        tables = serving_tables(graph, meta) if features is not None else {}
    graph.finalize()
    return ImportedGraph(graph_fingerprint(savedmodel_dir), graph, loader, saver, meta,
                         parse_signatures(meta), update_ops, tables)


def _import_ev_graph(savedmodel_dir: str, options: SessionOptions, features) -> ImportedGraph:
    """A DeepRec EmbeddingVariable export, rewritten for stock TensorFlow (deeprec/). Its EVs live
    in the session's own tables (DeepRec's DRAM storage, so `ev_storage_type` 1 serves them there
    too, within its byte budget), or in a feature store that keeps rows by key (Redis, the
    DRAM + SSD tier); a store that cannot is refused rather than silently bypassed."""
    keyed = features is not None and getattr(features, "serves_keyed_tables", False)
    if features is not None and not keyed and getattr(features, "storage_type", None) != 1:
        raise VersionLoadError(f"the feature store {type(features).__name__} cannot hold DeepRec "
                               "EmbeddingVariables (rows by key)")

    def place(graph: tf.Graph) -> None:
        if options.plan is not None and options.plan.uses_gpu:
            place_graph(graph, options.plan.lanes[0].device, options.plan.embeddings_on_cpu)

    graph, meta, variables, ev = import_ev_graph(savedmodel_dir, place)
    with graph.as_default():
        update_ops = {v.op.name: _UpdateOps.build(v) for v in variables}
    graph.finalize()
    tables = keyed_tables(list(ev.lookups)) if keyed else {}
    return ImportedGraph(graph_fingerprint(savedmodel_dir), graph, None, None, meta,
                         parse_signatures(meta), update_ops, tables, ev)


def load_servable(savedmodel_dir: str, version: VersionInfo | None,
                  localize: Callable[[str], str],
                  options: SessionOptions, features=None,
                  imported: ImportedGraph | None = None,
                  background: Callable[[Callable[[], None]], None] | None = None) -> Servable:
    """Builds a servable: SavedModel graph + the version's full checkpoint (the manager applies
    the latest delta afterwards, so that a bad delta does not discard a good full checkpoint).

    `imported`, the graph of a version loaded earlier, is used when its fingerprint is still the
    SavedModel's; otherwise the SavedModel is imported. `Servable.imported` is the one used.

    With a feature store (`features`, see deeprec_runtime.features) the graph's embedding tables
    are not restored: the store makes the version's rows available and requests feed them.

    `localize` turns a checkpoint prefix on the store into a local one (remote stores fetch).
    `background`, when given, runs the restore (the manager's low-priority loading thread); the
    session is created here, by the caller's thread. Raises VersionLoadError with the reason when
    anything is missing or inconsistent.
    """
    started = time.monotonic()
    session = None
    external = None
    try:
        shared = imported is not None and imported.fingerprint != "" and \
            imported.fingerprint == graph_fingerprint(savedmodel_dir)
        if imported is None or not shared:
            imported = import_graph(savedmodel_dir, options, features)
        graph, loader, saver, tables = (imported.graph, imported.loader, imported.saver,
                                        imported.tables)
        group = None
        with graph.as_default():
            if options.plan is not None:
                group = create_session(graph, options.plan)
                session = group.session
            else:
                session = tf.compat.v1.Session(graph=graph, config=options.config_proto)
            updaters = {name: _VariableUpdater(session, ops, options.update_run_options)
                        for name, ops in imported.update_ops.items()}
        prefix = restore_op = filename_tensor = ""
        ev = (EVVersion(imported.ev, session, options.update_run_options,
                        getattr(features, "dram_bytes", 0), keyed=bool(tables))
              if imported.ev else None)
        if ev is not None or tables:
            prefix = (localize(version.full_prefix) if version is not None
                      else os.path.join(savedmodel_dir, "variables", "variables"))
        elif version is not None:
            if saver is None:
                raise VersionLoadError("the SavedModel has no saver; cannot restore checkpoints")
            prefix = localize(version.full_prefix)
            _check_shapes(prefix, updaters, version.name)
            restore_op = saver.saver_def.restore_op_name
            filename_tensor = saver.saver_def.filename_tensor_name

        def restore() -> None:  # the bulk of a load's CPU: on `background` when given
            with graph.as_default():
                if ev is not None:
                    ev.restore(prefix, updaters, options.restore_run_options)
                    return
                if loader is None:  # only EV exports have none, and they returned above
                    raise VersionLoadError("internal: a plain export without its loader")
                if tables:
                    restore_dense(prefix, updaters, tables)
                elif version is None:
                    loader.restore_variables(session, saver)
                else:
                    session.run(restore_op, {filename_tensor: prefix},
                                options=options.restore_run_options)
                loader.run_init_ops(session, SERVE_TAGS)

        if background is not None:
            background(restore)
        else:
            restore()
        if tables:  # outside the graph context: the store reads checkpoint slices eagerly
            key = VersionKey(version.name if version else SAVEDMODEL_VERSION,
                             version.full_step if version else 0)
            external = ExternalTables(tables, features.open_version(key, tables, prefix),
                                      ev.defaults if ev is not None else {})
        servable = Servable(version.name if version else SAVEDMODEL_VERSION, graph, session,
                            imported.signatures, options, updaters, version, group)
        servable.tables = external
        servable.ev = ev
        servable.imported = imported
    except VersionLoadError:
        if session is not None:
            session.close()
        if external is not None:
            external.close()
        raise
    except (tf.errors.OpError, OSError, ValueError, RuntimeError, IndexError, ServingError) as exc:
        if session is not None:
            session.close()
        if external is not None:
            external.close()
        what = version.name if version else savedmodel_dir
        raise VersionLoadError(f"loading {what} failed: {_first_line(exc)}") from None
    log.info("loaded version %s (full step %d, delta step %d) in %.2fs%s", servable.name,
             servable.full_step, servable.delta_step, time.monotonic() - started,
             " on the graph of the previous version" if shared else "")
    return servable
