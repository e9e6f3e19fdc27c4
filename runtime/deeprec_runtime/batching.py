"""Server-side request batching, as TensorFlow Serving's `BasicBatchScheduler`.

Concurrent small requests that run the same graph call (same version, feeds, fetches, and the
same per-row shape and dtype of every input) are concatenated on axis 0 into one session run and
the outputs are split back, so each caller gets exactly its own rows. Example: eight callers with
batch 1 arriving within `batch_timeout_micros` become one batch-8 run.

A batch closes when it holds `max_batch_size` rows or its first request has waited
`batch_timeout_micros`; `num_batch_threads` threads run closed batches. At most
`max_enqueued_batches` batches (open or waiting) exist at once: past that a request fails at
once with ResourceExhausted rather than queueing without bound. Merged batches are padded (with
copies of their first row) up to the next of `allowed_batch_sizes`, so the model only ever sees
those sizes. Requests larger than max_batch_size, or whose inputs do not share a leading batch
dimension, run on their own.

Memory: a merged batch's input bytes, padding included, never exceed `max_batch_bytes` (default
64 MiB, the default --max-message-bytes; 0: no bound), so padding never multiplies a request's
size. A request whose own inputs are over the cap runs on its own, as without batching; one that
would push an open batch past the cap does not join it (that batch closes and the request opens
the next one); a batch that padding up to its allowed size would push past the cap runs unpadded,
request by request, as without batching. Strings count their bytes. The fast path's C++ batcher
(native/) is held to the same rule.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from deeprec_runtime.config import BatchingConfig
from deeprec_runtime.errors import InvalidArgument, ResourceExhausted, Unavailable

if TYPE_CHECKING:
    from deeprec_runtime.model.servable import Servable

log = logging.getLogger(__name__)

#: Default bound on a merged batch's input bytes, padding included (= the default max message size).
DEFAULT_MAX_BATCH_BYTES = 64 * 1024 * 1024


@dataclass
class _Task:
    arrays: Sequence[np.ndarray]
    rows: int
    nbytes: int
    done: threading.Event = field(default_factory=threading.Event)
    result: list[np.ndarray] | None = None
    error: BaseException | None = None


@dataclass
class _Batch:
    servable: Servable
    feed_names: tuple[str, ...]
    fetch_names: tuple[str, ...]
    deadline: float
    tasks: list[_Task] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0


class Batcher:
    def __init__(self, config: BatchingConfig, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES):
        self.config = config
        self.max_batch_bytes = max_batch_bytes
        """Bound on a merged batch's input bytes, padding included (0: none)."""
        self._cond = threading.Condition(threading.Lock())
        self._open: dict[tuple, _Batch] = {}
        self._ready: deque[_Batch] = deque()
        self._stopped = False
        self.batches_run = 0
        """Merged runs so far (for tests and metrics)."""
        self._threads = [threading.Thread(target=self._work, name=f"deeprec-batch-{i}", daemon=True)
                         for i in range(config.num_batch_threads)]
        for t in self._threads:
            t.start()

    # --- the caller's side ------------------------------------------------------------------
    def run(self, servable, feed_names: tuple[str, ...], fetch_names: tuple[str, ...],
            arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Same contract as Servable.run; blocks until this request's rows are back."""
        rows = _batch_rows(arrays)
        if rows is None or rows == 0 or rows > self.config.max_batch_size:
            return servable.run(feed_names, fetch_names, arrays)
        nbytes = sum(_nbytes(a) for a in arrays)
        cap = self.max_batch_bytes
        if cap and nbytes > cap:
            return servable.run(feed_names, fetch_names, arrays)
        key = (id(servable), feed_names, fetch_names,
               tuple((a.dtype.str, a.shape[1:]) for a in arrays))
        task = _Task(arrays, rows, nbytes)
        with self._cond:
            if self._stopped:
                raise Unavailable("the server is shutting down")
            batch = self._open.get(key)
            if batch is not None and (batch.rows + rows > self.config.max_batch_size
                                      or (cap and batch.nbytes + nbytes > cap)):
                self._close(key)
                self._cond.notify()
                batch = None
            if batch is None:
                if len(self._open) + len(self._ready) >= self.config.max_enqueued_batches:
                    raise ResourceExhausted(
                        f"batching queue is full ({self.config.max_enqueued_batches} batches "
                        "waiting); retry later")
                batch = _Batch(servable, feed_names, fetch_names,
                               time.monotonic() + self.config.batch_timeout_micros / 1e6)
                self._open[key] = batch
            batch.tasks.append(task)
            batch.rows += rows
            batch.nbytes += nbytes
            if batch.rows >= self.config.max_batch_size or self.config.batch_timeout_micros == 0:
                self._close(key)
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        if task.result is None:
            raise RuntimeError("batched run ended with neither a result nor an error")
        return task.result

    def _close(self, key: tuple) -> None:
        self._ready.append(self._open.pop(key))

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            for key in list(self._open):
                self._close(key)
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=10)

    # --- the batch threads ------------------------------------------------------------------
    def _next_batch(self) -> _Batch | None:
        with self._cond:
            while True:
                if self._ready:
                    return self._ready.popleft()
                if self._stopped:
                    return None
                now = time.monotonic()
                due = [k for k, b in self._open.items() if b.deadline <= now]
                if due:
                    for k in due:
                        self._close(k)
                    continue
                wait = min((b.deadline for b in self._open.values()), default=now + 1.0) - now
                self._cond.wait(max(wait, 0.0))

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as exc:  # noqa: BLE001 (every waiting caller must be woken, whatever happened)
                for t in batch.tasks:
                    if not t.done.is_set():
                        t.error = exc
                        t.done.set()

    def _run(self, batch: _Batch) -> None:
        tasks = batch.tasks
        if len(tasks) == 1:
            self._run_alone(batch, tasks[0])
            return
        size = _padded_size(batch.rows, self.config.allowed_batch_sizes)
        if size > batch.rows and self._padding_passes_cap(batch, size):
            # Padding would take the batch past its byte bound: run as without batching.
            for t in tasks:
                self._run_alone(batch, t)
            return
        merged = []
        for i in range(len(tasks[0].arrays)):
            parts = [t.arrays[i] for t in tasks]
            if size > batch.rows:
                first = parts[0][:1]
                parts.append(np.repeat(first, size - batch.rows, axis=0))
            merged.append(np.concatenate(parts, axis=0))
        try:
            outputs = batch.servable.run(batch.feed_names, batch.fetch_names, merged)
        except InvalidArgument:
            # One request may be what the model rejects: run each alone so that only its
            # caller gets the error.
            for t in tasks:
                self._run_alone(batch, t)
            return
        self.batches_run += 1
        if any(np.ndim(o) == 0 or np.shape(o)[0] != size for o in outputs):
            # An output without the batch on axis 0 cannot be split by rows.
            for t in tasks:
                self._run_alone(batch, t)
            return
        start = 0
        for t in tasks:
            # Views into the merged output: no copy per caller.
            t.result = [o[start:start + t.rows] for o in outputs]
            start += t.rows
            t.done.set()

    def _padding_passes_cap(self, batch: _Batch, size: int) -> bool:
        """True when `batch`, padded to `size` rows with copies of its first row, would hold more
        than max_batch_bytes."""
        cap = self.max_batch_bytes
        if not cap:
            return False
        first_row = sum(_nbytes(a[:1]) for a in batch.tasks[0].arrays)
        return batch.nbytes + (size - batch.rows) * first_row > cap

    @staticmethod
    def _run_alone(batch: _Batch, task: _Task) -> None:
        try:
            task.result = batch.servable.run(batch.feed_names, batch.fetch_names, task.arrays)
        except BaseException as exc:  # noqa: BLE001 (the caller re-raises it, whatever it is)
            task.error = exc
        task.done.set()


def _batch_rows(arrays: Sequence[np.ndarray]) -> int | None:
    """The shared leading dimension of every input, or None when they do not share one."""
    rows = None
    for a in arrays:
        if a.ndim == 0:
            return None
        if rows is None:
            rows = a.shape[0]
        elif a.shape[0] != rows:
            return None
    return rows


def _nbytes(array: np.ndarray) -> int:
    """The bytes an input takes in a batch: its buffer, plus the bytes of each string (an object
    array holds only pointers, but the session copies every string into its tensor)."""
    if array.dtype != object:
        return array.nbytes
    return array.nbytes + sum(len(v) for v in array.reshape(-1))


def _padded_size(rows: int, allowed: Sequence[int]) -> int:
    for size in allowed:
        if size >= rows:
            return size
    return rows
