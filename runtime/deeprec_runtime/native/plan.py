"""FastPlan: one version's plan in the C++ fast path (a handle in fast_predict.cc).

FastPredict (fast_predict.py) makes, checks and publishes plans; this is the handle it hands
out: calls on it (the check's and the tests'), blocking it around a delta, its figures
(answered calls, lane runs, merged batches), the flushing of those figures into the runtime's
request metrics, and a close that frees the handle only once no call is inside it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from deeprec_runtime import metrics as metrics_mod

if TYPE_CHECKING:
    from deeprec_runtime.native.fast_predict import FastPredict

#: fast_predict.cc's Api -> the runtime's metrics label of that API.
DEEPREC, TFS = 0, 1
API = {DEEPREC: "deeprec_grpc", TFS: "tfs_grpc"}

#: fast_predict.cc's How: where a call on a lane runs.
AUTO, POOLED, IN_PLACE = 0, 1, 2

# The plan's histograms (drf_stats' `which`), and for latencies the API and code they count.
_LATENCY, _ROWS, _REFUSED, _TFS_LATENCY, _TFS_REFUSED, _OVER_CAP, _TFS_OVER_CAP = range(7)
_COUNTED = {_LATENCY: (API[DEEPREC], "OK"), _REFUSED: (API[DEEPREC], "RESOURCE_EXHAUSTED"),
            _OVER_CAP: (API[DEEPREC], "INVALID_ARGUMENT"),
            _TFS_LATENCY: (API[TFS], "OK"), _TFS_REFUSED: (API[TFS], "RESOURCE_EXHAUSTED"),
            _TFS_OVER_CAP: (API[TFS], "INVALID_ARGUMENT")}
_HISTOGRAMS = (_LATENCY, _ROWS, _REFUSED, _TFS_LATENCY, _TFS_REFUSED, _OVER_CAP, _TFS_OVER_CAP)


class FastPlan:
    """One version's plan (a handle in fast_predict.cc).

    The handle is freed by close(); no call reaches it afterwards. Calls that may wait in C++
    (predict, block, unblock) run outside the lock but count themselves as users, and close()
    frees the handle only once they have returned; once closing, they are no-ops. So a delta's
    block/unblock racing a version's close at shutdown never touches freed memory.
    """

    def __init__(self, owner: FastPredict, handle: Any, version: str):
        self._owner = owner
        self.handle = handle
        self.version = version
        #: The lanes' callables (TensorFlow's _Callable objects): alive as long as the plan.
        self.callables: list[Any] = []
        #: Figures already added to the metrics: which -> (count, sum, per-bucket counts).
        self._flushed: dict[int, tuple[int, float, list[int]]] = {
            which: (0, 0.0, []) for which in _HISTOGRAMS}
        self._closing = False
        self._closed = False  # the handle is freed
        self._users = 0  # calls in C++ made outside the lock
        self._answered_at_close = 0
        self._lock = threading.Condition()  # the handle is freed under it

    def _enter(self) -> bool:
        with self._lock:
            if self._closing:
                return False
            self._users += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._lock.notify_all()

    def predict(self, data: bytes, api: int = DEEPREC, lane: int = -1,
                how: int = AUTO, counted: bool = True) -> bytes | None:
        """One call on this plan (published or not), on `lane` (-1: the one its policy picks for
        this thread), placed as `how` says (on a bound lane: POOLED on its pool, IN_PLACE inline
        with this thread held on its cpuset; AUTO as this thread's CPU allows): the response, or
        None when the plan does not answer it with one (a closed plan answers nothing). `counted`
        False: a call the data plane offers for an adapter that counts it itself (REST), in none
        of the plan's request figures but `offered`."""
        answer = self.call(data, api, lane, how, counted)
        return answer[1] if answer is not None and answer[0] == 0 else None

    def call(self, data: bytes, api: int = DEEPREC, lane: int = -1, how: int = AUTO,
             counted: bool = True) -> tuple[int, bytes] | None:
        """predict(), with what the front end gets: None when not handled, else the gRPC status
        code and the response (code 0) or the error message."""
        if not self._enter():
            return None
        try:
            ffi, lib = self._owner.ffi, self._owner.lib
            out = ffi.new("const char **")
            size = ffi.new("size_t *")
            code = lib.drf_predict_on(self.handle, api, lane, how, data, len(data), -1.0,
                                      int(counted), out, size)
            if code < 0:
                return None
            return code, ffi.unpack(out[0], size[0])  # this thread's buffer: read before leaving
        finally:
            self._leave()

    def block(self) -> None:
        """Requests stop using the plan until unblock() (the front end's wait for it in C++,
        others take the Python path); returns once none uses it. A no-op once the plan is
        closing."""
        if self._enter():
            try:
                self._owner.lib.drf_block(self.handle)
            finally:
                self._leave()

    def unblock(self) -> None:
        if self._enter():
            try:
                self._owner.lib.drf_unblock(self.handle)
            finally:
                self._leave()

    @property
    def queued(self) -> int:
        """Requests waiting in the plan's open batches (0 after close)."""
        with self._lock:
            return 0 if self._closed else int(self._owner.lib.drf_queued(self.handle))

    @property
    def offered(self) -> int:
        """Calls the data plane offered (predict(counted=False)) that this plan answered."""
        with self._lock:
            return 0 if self._closed else int(self._owner.lib.drf_offered(self.handle))

    @property
    def answered(self) -> int:
        """DeepRec requests this plan has answered (the check request included)."""
        with self._lock:
            return self._answered_at_close if self._closed else self._read(_LATENCY)[0]

    @property
    def tfs_answered(self) -> int:
        """TF Serving requests this plan has answered (the check request included; 0 once
        closed)."""
        with self._lock:
            return 0 if self._closed else self._read(_TFS_LATENCY)[0]

    def active(self, api: int = DEEPREC) -> int:
        """Calls of `api` using the plan now, or waiting for a delta to end (0 once closed)."""
        with self._lock:
            return 0 if self._closed else int(self._owner.lib.drf_active(self.handle, api))

    def lane_runs(self, lane: int, in_place: bool = False) -> int:
        """Requests lane `lane` of this plan answered, or with `in_place` the runs of a bound lane
        that ran inline in their caller (0 once closed)."""
        with self._lock:
            return 0 if self._closed else int(
                self._owner.lib.drf_lane_runs(self.handle, lane, int(in_place)))

    def subset_callables(self, lane: int) -> int:
        """Callables lane `lane` made for output_filter subsets (0 once closed)."""
        with self._lock:
            return 0 if self._closed else int(self._owner.lib.drf_lane_subsets(self.handle, lane))

    @property
    def merged(self) -> tuple[int, int]:
        """Merged batch runs of this plan so far and the rows they carried (0, 0 after close)."""
        with self._lock:
            if self._closed:
                return 0, 0
            ffi = self._owner.ffi
            runs, rows = ffi.new("uint64_t *"), ffi.new("uint64_t *")
            self._owner.lib.drf_merged(self.handle, runs, rows)
            return int(runs[0]), int(rows[0])

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """No request uses the plan after this; its figures are flushed and the handle freed
        (once the calls still in C++ have returned)."""
        with self._lock:
            if self._closing:
                self._lock.wait_for(lambda: self._closed)
                return
            self._closing = True
            self._owner.lib.drf_close(self.handle)  # C++ requests end; block() calls return
            self._flush_locked()
            self._answered_at_close = self._read(_LATENCY)[0]
            self._lock.wait_for(lambda: self._users == 0)
            self._closed = True
            self._owner.lib.drf_free(self.handle)
            self.callables = []
            self._lock.notify_all()
        self._owner._forget(self)

    def flush(self, count: bool = True) -> None:
        """Adds the requests answered since the last flush to the metrics (with count False:
        only moves the mark past them)."""
        with self._lock:
            if not self._closed:
                self._flush_locked(count)

    def _read(self, which: int) -> tuple[int, float, list[int]]:
        """Count, sum and per-bucket counts of one of the plan's _HISTOGRAMS."""
        ffi = self._owner.ffi
        bounds = metrics_mod.BATCH_BUCKETS if which == _ROWS else metrics_mod.LATENCY_BUCKETS
        count, total = ffi.new("uint64_t *"), ffi.new("double *")
        buckets = ffi.new("uint64_t[]", len(bounds) + 1)
        self._owner.lib.drf_stats(self.handle, which, count, total, buckets)
        return int(count[0]), float(total[0]), [int(b) for b in buckets]

    def _flush_locked(self, count_them: bool = True) -> None:
        metrics = self._owner.metrics
        if metrics is None:
            return
        for which in _HISTOGRAMS:
            now = self._read(which)
            before_count, before_sum, before_buckets = self._flushed[which]
            if now[0] == before_count or not count_them:
                self._flushed[which] = now
                continue
            delta = [n - (before_buckets[i] if before_buckets else 0) for i, n in enumerate(now[2])]
            if which in _COUNTED:
                api, code = _COUNTED[which]
                metrics.add_requests(api, self._owner.model_name, self.version, code,
                                     now[0] - before_count, now[1] - before_sum, delta)
            else:
                metrics.add_batches(self._owner.model_name, now[0] - before_count,
                                    now[1] - before_sum, delta)
            self._flushed[which] = now
