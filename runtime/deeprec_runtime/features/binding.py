"""The glue between a servable and its feature store: turns a request's feeds into feeds that
also carry the looked-up embedding rows.

For each table lookup found in the graph (see graph.py) the ids come from the request itself when
the ids tensor is fed (the usual case: `sparse_ids:0`), otherwise from one extra session run that
computes only the ids tensors. Ids are de-duplicated per table across all its lookups, so each
distinct row is fetched once per request, and the rows are fed in place of the gathers' outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from deeprec_runtime.errors import InvalidArgument
from deeprec_runtime.features.base import TableRows
from deeprec_runtime.features.graph import Table

RunFn = Callable[[tuple[str, ...], tuple[str, ...], Sequence[np.ndarray]], list[np.ndarray]]


class ExternalTables:
    """A servable's embedding tables that live in a feature store rather than in its session.

    Keyed tables (DeepRec EmbeddingVariables, deeprec/keyed.py) take any int64 id; an id the store
    does not hold gets its lookup's fallback: a fill value, a row of the EV part's initial value
    (`defaults`, part -> matrix, drawn when the version loaded) or a row of a graph tensor."""

    def __init__(self, tables: Mapping[str, Table], rows: TableRows,
                 defaults: Mapping[str, np.ndarray] | None = None):
        self.tables = dict(tables)
        self.rows = rows
        self.defaults = dict(defaults or {})
        self._lookups = [(t, lk) for t in self.tables.values() for lk in t.lookups]
        self._outputs = tuple(lk.output for _, lk in self._lookups)
        self._fallback_tensors = {lk.fallback.tensor for _, lk in self._lookups
                                  if lk.fallback is not None and lk.fallback.tensor}

    @property
    def outputs(self) -> tuple[str, ...]:
        """The gathers' outputs feed() adds to the feeds, in the order it adds them."""
        return self._outputs

    def owns(self, variable: str) -> bool:
        return variable in self.tables

    def feed(self, run: RunFn, feed_names: tuple[str, ...],
             arrays: Sequence[np.ndarray]) -> tuple[tuple[str, ...], list[np.ndarray]]:
        """Returns the feeds extended with the gathered rows of every lookup."""
        index = {name: i for i, name in enumerate(feed_names)}
        wanted = {lk.ids for _, lk in self._lookups} | self._fallback_tensors
        derived = tuple(sorted(t for t in wanted if t not in index))
        computed = dict(zip(derived, run(feed_names, derived, arrays), strict=True)) if derived else {}

        def value(name: str) -> np.ndarray:
            return np.asarray(arrays[index[name]] if name in index else computed[name])

        ids_of = []
        for table, lk in self._lookups:
            ids = value(lk.ids)
            if ids.dtype.kind not in "iu":
                raise InvalidArgument(f"ids for embedding table '{table.name}' ({lk.ids}) must be "
                                      f"integers, got {ids.dtype}")
            if not table.keyed and ids.size and (ids.min() < 0 or ids.max() >= table.rows):
                raise InvalidArgument(
                    f"ids for embedding table '{table.name}' ({lk.ids}) must be in "
                    f"[0, {table.rows}), got values in [{ids.min()}, {ids.max()}]")
            ids_of.append(ids)
        # One de-duplicated id set per table, so a row wanted by several lookups (or several
        # times in a batch) is read once.
        order = list(self.tables.values())
        uniques, inverses = [], {}
        for table in order:
            parts = [ids.reshape(-1) for (t, _), ids in zip(self._lookups, ids_of, strict=True)
                     if t is table]
            flat = np.concatenate(parts).astype(np.int64, copy=False) if parts else np.empty(0, np.int64)
            unique, inverse = np.unique(flat, return_inverse=True)
            uniques.append((table, unique))
            inverses[table.name] = inverse
        fetched = dict(zip((t.name for t in order), self.rows.lookup(uniques), strict=True))
        offsets = dict.fromkeys(self.tables, 0)
        fed = []
        for (table, lk), ids in zip(self._lookups, ids_of, strict=True):
            start = offsets[table.name]
            offsets[table.name] = start + ids.size
            at = inverses[table.name][start:start + ids.size]
            if table.keyed:
                rows, found = fetched[table.name]
                picked = rows[at]
                missing = ~found[at]
                if missing.any():
                    picked[missing] = self._fallback(table, lk, ids.reshape(-1), missing, value)
            else:
                picked = fetched[table.name][at]
            fed.append(picked.reshape(ids.shape + table.row_shape))
        return feed_names + self._outputs, [*arrays, *fed]

    def _fallback(self, table: Table, lk, ids: np.ndarray, missing: np.ndarray,
                  value: Callable[[str], np.ndarray]) -> np.ndarray:
        """The rows of the ids a keyed table does not hold (DeepRec's defaults)."""
        fb = lk.fallback
        if fb is None or fb.fill is not None:
            fill = fb.fill if fb is not None else 0.0
            return np.full((int(missing.sum()), *table.row_shape), fill, table.dtype)
        if fb.tensor:
            rows = value(fb.tensor).reshape(ids.shape[0], *table.row_shape)
            return rows[missing]
        return self.defaults[fb.part][np.mod(ids[missing], fb.modulus)]

    def apply_delta(self, step: int, updates: list) -> list:
        """Writes the delta's rows of external tables to the store; returns the updates that stay
        in the session (dense variables). `updates` is deltas.read_delta's plan:
        (updater, ("scatter", ids, rows) | ("assign", value))."""
        rows, rest = {}, []
        for updater, args in updates:
            if updater.name in self.tables and args[0] == "scatter":
                rows[updater.name] = (args[1], args[2])
            elif updater.name in self.tables:
                # A whole table in a delta: write every row.
                value = args[1]
                rows[updater.name] = (np.arange(value.shape[0], dtype=np.int64), value)
            else:
                rest.append((updater, args))
        if rows:
            self.rows.apply_delta(step, rows)
        return rest

    def close(self) -> None:
        self.rows.close()


def serving_tables(graph, meta_graph_def) -> dict[str, Table]:
    """The embedding tables read by any signature's outputs (see graph.find_tables)."""
    from deeprec_runtime.features.graph import find_tables

    fetches = sorted({t.name for sig in meta_graph_def.signature_def.values()
                      for t in sig.outputs.values() if t.name})
    return find_tables(graph, fetches)


def restore_dense(prefix: str, updaters: Mapping, tables: Mapping[str, Table]) -> None:
    """Restores every variable except the external tables from a checkpoint, through the
    servable's prepared assign callables; the tables are never read into the process."""
    import tensorflow as tf

    from deeprec_runtime.errors import VersionLoadError
    from deeprec_runtime.model.checkpoint_read import read_tensors

    reader = tf.train.load_checkpoint(prefix)
    have = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    for name, updater in updaters.items():
        if name in tables:
            continue
        if name not in have:
            raise VersionLoadError(f"checkpoint {prefix} has no variable '{name}'")
        # One variable per read (GIL released, see checkpoint_read) keeps at most one dense
        # variable in flight besides the graph's copy.
        updater.apply(updater.check_whole(read_tensors(prefix, [name], dtypes)[name]))
