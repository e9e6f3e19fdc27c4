"""FastPredict: DeepRec Predict calls answered in C++ (fast_predict.cc), no Python on the way.

The native gRPC front end offers each PredictionService/Predict call to a published plan first:
DeepRec's to the default model's, TF Serving's to that of the model it names (one FastPredict
per model publishes that model's). A plan belongs to one version and names its lanes' prepared
callables, its signature, the shapes and dtypes it accepts and the outputs an output_filter may
name. Whatever a plan does not handle (other signatures, tensor names instead of aliases for
inputs, unknown or repeated output_filter names, any invalid input but one over the cap on
decoded bytes, which it refuses with the Python path's message, a TensorFlow error, a blocked or
closed plan) goes to the Python handler as before, so errors keep their codes and messages.

A version gets a plan when no timeline is recorded, its lanes are CPU lanes and its signature's
inputs and outputs are numeric. With a feature store (Redis, the DRAM and DRAM+SSD tiers) the plan
gets a lookup hook: C++ parses, batches, runs and encodes; the rows are looked up by the same
Python code as on the Python path (features/binding.py, under the GIL), called from C++ per
request. Session groups are served lane by lane, each call on one lane chosen by
`select_session_policy` (MOD or RR, as DeepRec defines them), with that lane's callables, on its
CPUs, batched per lane. When the lanes are bound to cpusets, the front end's workers are pinned
to them (app.py, grpc_frontend.cc), apply the policy, and run each call inline on their own
lane: no hand-off to the lane's pool. Before a plan is published it answers the warmup request
(or a generated one) on every lane, each way the lane runs, and must give the same response as
the Python path; otherwise the version is served by Python alone and the reason is logged (a
warning naming it, for every version refused). With server-side batching on, a plan merges the
calls it answers itself (fast_predict.cc, by the rules of runtime/deeprec_runtime/batching.py,
which merges the calls the Python handlers answer).

Lifetime: Manager has a new version's plan made (and checked) just before the swap and publishes
the serving version's plan (or none) right after every swap and swap-back; a delta blocks
the plan while it holds the version's write gate (the front end's calls meanwhile wait in C++
for it to end, within their deadlines; others take the Python path, which waits on the gate);
Servable.close closes the plan before the session goes. The requests a plan
answered are added to the runtime's request metrics at each scrape and when it closes. The plan
handle itself, with its figures and their flushing, is FastPlan (plan.py).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from deeprec_api import predict_pb2 as pb
from deeprec_runtime import metrics as metrics_mod
from deeprec_runtime.core.handle import ServableHandle
from deeprec_runtime.errors import ServingError
from deeprec_runtime.model import warmup
from deeprec_runtime.native.build import fast_predict_path
from deeprec_runtime.native.plan import API, AUTO, IN_PLACE, POOLED, TFS, FastPlan
from deeprec_runtime.native.tf_handles import SessionHandleError, session_pointer
from deeprec_runtime.predict import predict
from deeprec_runtime.server.grpc_server import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from deeprec_runtime.config import BatchingConfig
    from deeprec_runtime.metrics import Metrics
    from deeprec_runtime.model.servable import Servable
    from deeprec_runtime.model.session_group import Lane

log = logging.getLogger(__name__)

TFS_PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
_CDEF = """
struct drf_tensor { int dtype; int rank; const int64_t *dims; const void *data; size_t bytes; };
void drf_plan_lookup(void *plan, int (*fn)(void *, const struct drf_tensor *, int), int num_rows);
int drf_lookup_put(void *sink, int index, int dtype, int rank, const int64_t *dims,
                   const void *data, size_t bytes);
const void *drf_tf_session_type(void);
const char *drf_tf_session_type_name(void);
const char *drf_type_info_name(void);
int drf_session_ok(const void *tf_session);
void *drf_plan_new(const void *tf_session, const char *signature, int num_inputs,
                   const char **input_aliases, const int *input_wire, const int *input_rank,
                   const int64_t *input_dims, const int *input_feed, int num_outputs,
                   const char **output_aliases, const char **output_names, const int *output_wire,
                   const int *output_fetch, int num_feeds, const char **feed_names,
                   int num_fetches, const char **fetch_names, int round_robin,
                   const double *latency_bounds, int num_latency_bounds, const double *row_bounds,
                   int num_row_bounds, uint64_t max_decoded_bytes);
int drf_plan_lane(void *plan, int64_t callable, const char *run_options, size_t run_options_size,
                  int mode, const int *cpus, int num_cpus);
uint64_t drf_lane_runs(void *plan, int lane, int which);
int drf_lane_subsets(void *plan, int lane);
void drf_publish(void *plan);
void drf_publish_model(const char *name, void *plan);
void drf_block(void *plan);
void drf_unblock(void *plan);
void drf_close(void *plan);
void drf_plan_batching(void *plan, int64_t max_batch_size, int64_t timeout_us, int num_threads,
                       int max_enqueued, const int64_t *allowed, int num_allowed,
                       uint64_t max_batch_bytes);
int drf_queued(void *plan);
void drf_merged(void *plan, uint64_t *runs, uint64_t *rows);
int drf_active(void *plan, int api);
void drf_plan_tfs(void *plan, const char *name, int64_t number, int default_model,
                  const char *label);
void drf_free(void *plan);
void drf_stats(void *plan, int which, uint64_t *count, double *sum, uint64_t *buckets);
int drf_predict_on(void *plan, int api, int lane, int how, const char *data, size_t size,
                   double timeout_s, int counted, const char **out, size_t *out_size);
uint64_t drf_offered(void *plan);
int drf_predict(const char *data, size_t size, double timeout_s, int lane, const char **out,
                size_t *out_size);
int drf_predict_tfs(const char *data, size_t size, double timeout_s, int lane, const char **out,
                    size_t *out_size);
"""

#: The wire dtypes fast_predict.cc carries (float, double, int32, int64).
_CARRIED = frozenset({pb.DT_FLOAT, pb.DT_DOUBLE, pb.DT_INT32, pb.DT_INT64})
#: Their numpy dtypes, for the input feeds a lookup hook reads.
_NUMPY: dict[int, np.dtype] = {
    pb.DT_FLOAT: np.dtype(np.float32), pb.DT_DOUBLE: np.dtype(np.float64),
    pb.DT_INT32: np.dtype(np.int32), pb.DT_INT64: np.dtype(np.int64)}


class FastPredict:
    """The C++ fast path of one model of a runtime: loads the library (one per process), builds
    and publishes the model's plans. DeepRec's Predict names no model: it goes to the default
    model's plan (`default_model`); TF Serving's goes to the plan of the model it names."""

    def __init__(self, model_name: str, signature_name: str, metrics: Metrics | None = None,
                 check_request: pb.PredictRequest | None = None,
                 batching: BatchingConfig | None = None, tfs: bool = False,
                 max_decoded_bytes: int = MAX_MESSAGE_BYTES, max_batch_bytes: int = MAX_MESSAGE_BYTES,
                 default_model: bool = True):
        ffi, self.lib = _load()  # one library per process: the published plan lives there
        self.ffi = ffi
        #: The C functions the front end calls (dr_fast_fn) for DeepRec's and TF Serving's Predict.
        self.entry = ffi.cast("void *", ffi.addressof(self.lib, "drf_predict"))
        self.tfs_entry = ffi.cast("void *", ffi.addressof(self.lib, "drf_predict_tfs"))
        #: Whether plans answer TF Serving's Predict too (its API package is installed).
        self.tfs = tfs
        self.model_name = model_name
        self.default_model = default_model
        self.signature_name = signature_name
        self.metrics = metrics
        #: What a new plan must answer as the Python path does (the warmup request; else one
        #: generated from the signature).
        self.check_request = check_request
        #: Server-side batching of the calls plans answer (deeprec_runtime.batching's rules, in C++).
        self.batching = batching if batching is not None and batching.enabled else None
        #: Memory bounds: the most bytes one request's inputs may decode to in C++ (larger ones go
        #: to Python, which refuses them), and the most feed bytes of a merged batch, padding
        #: included. Both default to the largest message the server takes.
        self.max_decoded_bytes = max_decoded_bytes
        self.max_batch_bytes = max_batch_bytes
        self._lock = threading.Lock()
        self._plans: list[FastPlan] = []
        if metrics is not None:
            metrics.add_request_source(self.flush_stats)
            for api, label in API.items():
                metrics.add_in_flight_source(label, functools.partial(self.in_flight, api))

    # --- plans --------------------------------------------------------------------------------
    def publish(self, servable: Servable | None) -> None:
        """Makes `servable`'s plan the one the model's Predict calls use; no plan when it has none
        (or for None), so calls go to Python, which serves whatever the manager serves."""
        try:
            plan = self.plan_for(servable) if servable is not None else None
        except BaseException:
            self._publish(self.ffi.NULL)  # never leave the previous version's plan serving
            raise
        self._publish(plan.handle if plan is not None else self.ffi.NULL)

    def _publish(self, handle: Any) -> None:
        if self.default_model:
            self.lib.drf_publish(handle)
        if self.tfs:
            self.lib.drf_publish_model(self.model_name.encode(), handle)

    def plan_for(self, servable: Servable) -> FastPlan | None:
        """The servable's plan, made and checked on first use; None (logged once) when it has
        none."""
        if servable.fast_plan is not None or servable.fast_plan_refused:
            return cast("FastPlan | None", servable.fast_plan)
        try:
            plan = self._make_plan(servable)
            self._check(plan, servable)
        except _Ineligible as exc:
            servable.fast_plan_refused = True
            log.warning("version %s is served by the Python handler only: %s", servable.name, exc)
            return None
        if self.tfs:
            try:
                self._enable_tfs(plan, servable)
            except Exception:  # the DeepRec plan stands; TF Serving calls go to Python
                self.lib.drf_plan_tfs(plan.handle, self.ffi.NULL, 0, 0, self.ffi.NULL)
                log.exception("version %s: TF Serving Predict calls are answered by Python only",
                              servable.name)
        # After the check, which must not wait batch_timeout_micros for company; the plan is not
        # published yet, so no call sees it change.
        if self.batching is not None:
            b = self.batching
            self.lib.drf_plan_batching(plan.handle, b.max_batch_size, b.batch_timeout_micros,
                                       b.num_batch_threads, b.max_enqueued_batches,
                                       self.ffi.new("int64_t[]", list(b.allowed_batch_sizes) or [0]),
                                       len(b.allowed_batch_sizes), self.max_batch_bytes)
        servable.fast_plan = plan
        return plan

    def _make_plan(self, servable: Servable) -> FastPlan:
        why = _ineligible(servable, self.signature_name)
        if why:
            raise _Ineligible(why)
        ffi, lib = self.ffi, self.lib
        try:
            session = session_pointer(servable.session, ffi, lib)
        except SessionHandleError as exc:  # a TensorFlow this runtime does not know: say so
            log.error("version %s: the fast path cannot reach the session: %s", servable.name, exc)
            raise _Ineligible(str(exc)) from None
        signature = servable.signature(self.signature_name)
        inputs = sorted(signature.inputs.values(), key=lambda s: s.alias)
        outputs = sorted(signature.outputs.values(), key=lambda s: s.alias)
        # The inputs, then (for a feature store) the gathers' outputs the lookup hook fills: the
        # feeds the Python path's callables have (ExternalTables.feed).
        input_feeds = tuple(sorted({s.name for s in inputs}))
        feed_names = input_feeds + (servable.tables.outputs if servable.tables is not None else ())
        fetch_names = tuple(sorted({s.name for s in outputs}))
        if len(input_feeds) != len(inputs):
            raise _Ineligible("two inputs of the signature name the same tensor")
        keep: list[Any] = []  # cffi buffers must outlive the call

        def strings(values: list[str] | tuple[str, ...]) -> Any:
            items = [ffi.new("char[]", v.encode()) for v in values]
            keep.extend(items)
            return ffi.new("const char *[]", items)

        group = servable.group
        dims = [d for s in inputs if s.shape is not None for d in s.shape]
        handle = lib.drf_plan_new(
            ffi.cast("void *", session), self.signature_name.encode(), len(inputs),
            strings([s.alias for s in inputs]),
            ffi.new("int[]", [s.wire_dtype for s in inputs]),
            ffi.new("int[]", [len(s.shape) if s.shape is not None else -1 for s in inputs]),
            ffi.new("int64_t[]", dims or [0]),
            ffi.new("int[]", [feed_names.index(s.name) for s in inputs]),
            len(outputs), strings([s.alias for s in outputs]), strings([s.name for s in outputs]),
            ffi.new("int[]", [s.wire_dtype for s in outputs]),
            ffi.new("int[]", [fetch_names.index(s.name) for s in outputs]),
            len(feed_names), strings(feed_names), len(fetch_names), strings(fetch_names),
            int(group is not None and group.plan.select_policy == "RR"),
            ffi.new("double[]", list(metrics_mod.LATENCY_BUCKETS)), len(metrics_mod.LATENCY_BUCKETS),
            ffi.new("double[]", [float(b) for b in metrics_mod.BATCH_BUCKETS]),
            len(metrics_mod.BATCH_BUCKETS), self.max_decoded_bytes)
        plan = FastPlan(self, handle, servable.name)
        with self._lock:
            self._plans.append(plan)
        try:
            for index in range(servable.num_lanes):
                # The Python path's callable for requests without output_filter on this lane (the
                # same pool, the same inline-or-pool choice), and the options C++ makes the
                # callables for output subsets from.
                callable_ = servable._make_callable(index, feed_names, fetch_names,
                                                    servable.inline)
                options = servable.callable_options(index, feed_names, fetch_names, servable.inline)
                mode, cpus = _lane_mode(group.lanes[index] if group is not None else None)
                run_options = options.run_options.SerializeToString()
                made = lib.drf_plan_lane(handle,
                                         callable_._handle,  # type: ignore[attr-defined]
                                         run_options, len(run_options), mode,
                                         ffi.new("int[]", cpus or [0]), len(cpus))
                if made != index:
                    raise _Ineligible(f"lane {index}: its run options or cpuset are refused")
                plan.callables.append(callable_)
            if servable.tables is not None:
                hook = self._lookup_hook(servable, input_feeds)
                plan.callables.append(hook)  # alive as long as the plan
                lib.drf_plan_lookup(handle, hook, len(servable.tables.outputs))
        except BaseException:
            plan.close()
            raise
        return plan

    def _lookup_hook(self, servable: Servable, input_feeds: tuple[str, ...]) -> Any:
        """The plan's lookup hook for a version whose embedding rows are in a feature store: C++
        calls it with a request's input feeds (views of its tensors, valid during the call); it
        looks the rows up as the Python path does (ExternalTables.feed, under the GIL) and hands
        each looked-up tensor to C++, which copies it. Any failure (the store, invalid ids) makes
        the request Python's, which answers it with the error."""
        ffi, lib = self.ffi, self.lib
        tables = servable.tables
        if tables is None:
            raise ValueError(f"version {servable.name} has no feature store to look rows up in")
        enums: dict[np.dtype, int] = {}

        def hook(sink: Any, feeds: Any, count: int) -> int:
            arrays = [_feed_array(ffi, feeds[i]) for i in range(count)]
            _, fed = tables.feed(servable._run, input_feeds, arrays)
            for index, rows in enumerate(fed[count:]):
                rows = np.ascontiguousarray(rows)
                dtype = enums.get(rows.dtype)
                if dtype is None:
                    dtype = enums.setdefault(rows.dtype, _datatype_enum(rows.dtype))
                if lib.drf_lookup_put(sink, index, dtype, rows.ndim,
                                      ffi.new("int64_t[]", rows.shape or (0,)),
                                      ffi.from_buffer(rows), rows.nbytes) != 0:
                    return -1
            return 0

        def failed(exc_type: Any, exc: BaseException | None, tb: Any) -> None:
            log.debug("version %s: a lookup in C++ failed, Python answers: %s", servable.name, exc)

        return ffi.callback("int(void *, const struct drf_tensor *, int)", hook, error=-1,
                            onerror=failed)

    def _check(self, plan: FastPlan, servable: Servable) -> None:
        """The plan must answer one real request exactly as the Python path does."""
        request = self.check_request or warmup.generated_request(servable, self.signature_name)
        if request is None:
            plan.close()
            raise _Ineligible("no request to check the plan with")
        data = request.SerializeToString()
        try:
            with ServableHandle.of(servable):  # not serving yet: the manager holds no handle
                expected = predict(servable, request, self.signature_name)
        except ServingError as exc:
            plan.close()
            raise _Ineligible(f"the check request fails on the Python path ({exc})") from None
        # On every lane and each way it runs: each has callables of its own.
        answers = [plan.predict(data, lane=lane, how=how) for lane in range(servable.num_lanes)
                   for how in _hows(servable, lane)]
        plan.flush(count=False)  # the check is not a request anyone sent
        if any(a is None or pb.PredictResponse.FromString(a) != expected for a in answers):
            plan.close()
            raise _Ineligible("the C++ answer to the check request differs from the Python one")

    def _enable_tfs(self, plan: FastPlan, servable: Servable) -> None:
        """Lets the plan answer TF Serving's Predict if it answers the check request, sent the TF
        Serving way, exactly as the Python adapter would; else only DeepRec's (logged)."""
        from deeprec_runtime.models import version_number
        from deeprec_runtime.server import tfs_grpc  # needs the TFS API package

        number = version_number(servable.name, servable.full_step)
        self.lib.drf_plan_tfs(plan.handle, self.model_name.encode(), number,
                              int(self.default_model), servable.name.encode())
        request = self.check_request or warmup.generated_request(servable, self.signature_name)
        why = ""
        if request is None:
            why = "no request to check the plan with"
        else:
            tfs_request = tfs_grpc.tfs_request(request, self.model_name)
            try:
                with ServableHandle.of(servable):
                    result = predict(servable, tfs_grpc.inner_request(tfs_request),
                                     self.signature_name)
            except ServingError as exc:
                why = f"the check request fails on the Python path ({exc})"
        if not why:
            expected = tfs_grpc.predict_response(result, self.model_name, number,
                                                 tfs_request.model_spec.signature_name
                                                 or self.signature_name)
            answer = plan.predict(tfs_request.SerializeToString(), TFS)
            plan.flush(count=False)
            if answer is None or type(expected).FromString(answer) != expected:
                why = "the C++ answer to the check request differs from the Python one"
        if why:
            self.lib.drf_plan_tfs(plan.handle, self.ffi.NULL, 0, 0, self.ffi.NULL)
            log.warning("version %s: TF Serving Predict calls are answered by Python only: %s",
                     servable.name, why)

    # --- metrics ------------------------------------------------------------------------------
    def flush_stats(self) -> None:
        """Adds what each plan answered since the last flush to the runtime's request series."""
        with self._lock:
            plans = list(self._plans)
        for plan in plans:
            plan.flush()

    def in_flight(self, api: int) -> int:
        """Calls of `api` in C++ now (answered there, being decoded before Python takes them, or
        waiting for a delta to end)."""
        with self._lock:
            plans = list(self._plans)
        return sum(plan.active(api) for plan in plans)

    def _forget(self, plan: FastPlan) -> None:
        with self._lock:
            if plan in self._plans:
                self._plans.remove(plan)


@functools.lru_cache(maxsize=1)
def _load() -> tuple[Any, Any]:
    """cffi's FFI and the fast predict library (built on first use), once per process."""
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    return ffi, ffi.dlopen(fast_predict_path(), os.RTLD_NOW)


def check_session_handle() -> None:
    """Raises SessionHandleError unless this TensorFlow's session handle gives the fast path its
    TF_Session (tf_handles.py). `deeprec-runtime native-path` runs it, so an image built with a
    TensorFlow the fast path cannot reach fails to build instead of serving slower."""
    import tensorflow as tf

    ffi, lib = _load()
    session = tf.compat.v1.Session(graph=tf.Graph())
    try:
        session_pointer(session, ffi, lib)
    finally:
        session.close()


class _Ineligible(Exception):
    pass


#: fast_predict.cc's LaneMode.
UNBOUND, PIN_CALLER, BOUND = 0, 1, 2


def _lane_mode(lane: Lane | None) -> tuple[int, list[int]]:
    """How C++ runs a lane, and its cpuset: a lane without one as Python does; an inline lane on
    a cpuset moves its caller there (as Lane.pin_caller); a pooled lane on a cpuset runs on its
    pinned pool, or inline when the caller is on one of its CPUs already (no hand-off)."""
    if lane is None or lane.plan.cpus is None:
        return UNBOUND, []
    return (PIN_CALLER if lane.pins_caller else BOUND), sorted(lane.plan.cpus)


def _hows(servable: Servable, lane: int) -> tuple[int, ...]:
    """The ways lane `lane` runs requests in C++ (each is a callable of its own)."""
    group = servable.group
    if group is not None and _lane_mode(group.lanes[lane])[0] == BOUND:
        return POOLED, IN_PLACE
    return (AUTO,)


def _feed_array(ffi: Any, tensor: Any) -> np.ndarray:
    """A view of one input feed a lookup hook gets (valid during the hook's call)."""
    dims = tuple(tensor.dims[d] for d in range(tensor.rank))
    dtype = _NUMPY[tensor.dtype]
    if tensor.bytes == 0:
        return np.empty(dims, dtype)
    return np.frombuffer(ffi.buffer(tensor.data, tensor.bytes), dtype).reshape(dims)


def _datatype_enum(dtype: np.dtype) -> int:
    import tensorflow as tf

    return int(tf.as_dtype(dtype).as_datatype_enum)


def _ineligible(servable: Servable, signature_name: str) -> str:
    """Why `servable` cannot have a plan ('' when it can)."""
    if servable.tracer is not None:
        return "timelines are recorded (traced in Python per request)"
    group = servable.group
    if group is not None and group.plan.uses_gpu:
        return "the session group runs on GPUs (the fast path is built and tested for CPU lanes)"
    signature = servable.signatures.get(signature_name)
    if signature is None:
        return f"no signature '{signature_name}'"
    for spec in (*signature.inputs.values(), *signature.outputs.values()):
        if spec.wire_dtype not in _CARRIED:
            return f"'{spec.alias}' is {spec.dtype.name} (carried: float, double, int32, int64)"
    return ""
