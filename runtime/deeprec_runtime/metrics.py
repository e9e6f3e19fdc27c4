"""Prometheus metrics of one runtime: requests, versions, updates, freshness, batch sizes.

Per-request work is a dictionary lookup and a few additions under an uncontended lock per series
(`_Series`), about 3-10 us per request depending on machine load; prometheus-client turns the
series into its text format only when /metrics is scraped (its own labelled children cost ~40%
more for the same work; bench/api_bench.py prints both). Everything about versions is computed at
scrape time from the managers, so it costs requests nothing.

A request's model and version become known only once the data plane holds a version; the data
plane's observer writes them into a per-thread slot that the adapter reads when the request ends
(every adapter runs a request on one thread: the gRPC worker or the HTTP connection thread).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.core.states import UpdateEvent

if TYPE_CHECKING:
    from deeprec_runtime.models import ModelRegistry, ServedModel

APIS = ("deeprec_grpc", "tfs_grpc", "rest")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
UPDATE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Series:
    """Count, sum and bucket counts of one label set: the per-request path."""

    __slots__ = ("_bounds", "_lock", "buckets", "count", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self._lock = threading.Lock()
        self._bounds = bounds
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        i = bisect_left(self._bounds, value)  # first bound >= value: Prometheus' `le`
        with self._lock:
            self.count += 1
            self.sum += value
            self.buckets[i] += 1

    def add(self, count: int, total: float, buckets: list[int]) -> None:
        """Adds observations counted elsewhere (per bucket, not cumulative)."""
        with self._lock:
            self.count += count
            self.sum += total
            for i, n in enumerate(buckets):
                self.buckets[i] += n

    def snapshot(self) -> tuple[int, float, list[tuple[str, float]]]:
        with self._lock:
            count, total, counts = self.count, self.sum, list(self.buckets)
        cumulative, running = [], 0
        for bound, n in zip([*map(str, self._bounds), "+Inf"], counts, strict=True):
            running += n
            cumulative.append((bound, float(running)))
        return count, total, cumulative


class _Level:
    """A gauge moved up and down by requests (in flight)."""

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


class Metrics:
    """The runtime's metrics, in a registry of their own (several runtimes may share a process,
    as in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.updates = Counter("deeprec_model_updates", "Model updates (load, delta, swap_back, "
                               "unload) by result", ("model", "kind", "result"),
                               registry=self.registry)
        self.update_seconds = Histogram("deeprec_model_update_duration_seconds",
                                        "Time an update took", ("model", "kind"),
                                        buckets=UPDATE_BUCKETS, registry=self.registry)
        self._requests: dict[tuple[str, str, str, str], _Series] = {}
        self._in_flight = {api: _Level() for api in APIS}
        self._batch: dict[str, _Series] = {}
        self._slot = threading.local()
        self._models: list[ServedModel] = []
        #: Called before each scrape: requests answered outside the Python handlers (the native
        #: fast path) are added to the series then.
        self._request_sources: list[Callable[[], None]] = []
        #: Calls in progress outside the Python handlers, by API (read at each scrape).
        self._in_flight_sources: list[tuple[str, Callable[[], int]]] = []
        self.registry.register(_RequestCollector(self))
        self.registry.register(_VersionCollector(self._models))

    # --- models -------------------------------------------------------------------------------
    def attach(self, models: ModelRegistry) -> None:
        """Observes the requests and updates of every model of `models`."""
        for model in models:
            self._models.append(model)
            model.on_request = self.observe_request
            model.manager.updates.subscribe(self._update_listener(model.name))

    def _update_listener(self, model: str) -> Callable[[UpdateEvent], None]:
        def on_update(event: UpdateEvent) -> None:
            self.updates.labels(model, event.kind, "success" if event.ok else "failure").inc()
            self.update_seconds.labels(model, event.kind).observe(event.seconds)

        return on_update

    # --- requests -----------------------------------------------------------------------------
    def begin(self, api: str) -> float:
        """A request of `api` starts; returns the start time to hand to end()."""
        self._in_flight[api].add(1)
        slot = self._slot
        slot.model = slot.version = ""
        return time.perf_counter()

    def note(self, model: str, version: str = "") -> None:
        """Names the model (and version) a request is about, when no predict names it."""
        self._slot.model = model
        self._slot.version = version

    def observe_request(self, model: str, version: str, request: pb.PredictRequest) -> None:
        """Called by the data plane once a request holds its version."""
        self._slot.model = model
        self._slot.version = version
        for array in request.inputs.values():
            dims = array.array_shape.dim
            if dims:
                self._batch_series(model).observe(dims[0])
            break

    def end(self, api: str, code: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        slot = self._slot
        self._request_series((api, slot.model, slot.version, code)).observe(elapsed)
        self._in_flight[api].add(-1)

    def add_request_source(self, flush: Callable[[], None]) -> None:
        self._request_sources.append(flush)

    def add_in_flight_source(self, api: str, count: Callable[[], int]) -> None:
        self._in_flight_sources.append((api, count))

    def in_flight(self, api: str) -> int:
        """Calls of `api` in progress: in the Python handlers and in any other source."""
        return self._in_flight[api].value + sum(
            count() for source_api, count in list(self._in_flight_sources) if source_api == api)

    def add_requests(self, api: str, model: str, version: str, code: str, count: int,
                     total: float, buckets: list[int]) -> None:
        """Requests answered outside the Python handlers: `buckets` per LATENCY_BUCKETS bound."""
        self._request_series((api, model, version, code)).add(count, total, buckets)

    def add_batches(self, model: str, count: int, total: float, buckets: list[int]) -> None:
        self._batch_series(model).add(count, total, buckets)

    def _request_series(self, key: tuple[str, str, str, str]) -> _Series:
        series = self._requests.get(key)
        if series is None:  # setdefault: two threads creating it keep one
            series = self._requests.setdefault(key, _Series(LATENCY_BUCKETS))
        return series

    def _batch_series(self, model: str) -> _Series:
        series = self._batch.get(model)
        if series is None:
            series = self._batch.setdefault(model, _Series(BATCH_BUCKETS))
        return series

    # --- exposition ---------------------------------------------------------------------------
    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def observed_service(self, inner: grpc.GenericRpcHandler, api: str) -> grpc.GenericRpcHandler:
        """Wraps a gRPC service's unary handlers so that every call is counted and timed."""
        return _ObservedService(inner, api, self)


class _ObservedService(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, api: str, metrics: Metrics):
        self._inner, self._api, self._metrics = inner, api, metrics
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        wrapped = self._cache.get(method)
        if wrapped is not None:
            return wrapped
        handler = self._inner.service(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._wrap(handler.unary_unary), request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
        self._cache[method] = wrapped
        return wrapped

    def _wrap(self, fn):
        metrics, api = self._metrics, self._api

        def call(request, context):
            started = metrics.begin(api)
            code = "OK"
            try:
                return fn(request, context)
            except BaseException:
                status = context.code()  # context.abort() set it before raising
                code = status.name if status is not None else "UNKNOWN"
                raise
            finally:
                metrics.end(api, code, started)

        return call


class _RequestCollector:
    """Scrape-time view of the per-request series."""

    def __init__(self, metrics: Metrics):
        self._m = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        for flush in list(self._m._request_sources):
            flush()
        labels = ("api", "model", "version", "code")
        count = CounterMetricFamily("deeprec_requests", "Requests answered, by API, model, "
                                    "version and status code (gRPC code name or HTTP status)",
                                    labels=labels)
        latency = HistogramMetricFamily("deeprec_request_duration_seconds", "Time to answer a "
                                        "request, from the adapter's view", labels=labels)
        for key, series in list(self._m._requests.items()):
            n, total, buckets = series.snapshot()
            count.add_metric(key, n)
            latency.add_metric(key, buckets, total)
        in_flight = GaugeMetricFamily("deeprec_requests_in_flight", "Requests being answered",
                                      labels=("api",))
        for api in self._m._in_flight:
            in_flight.add_metric((api,), self._m.in_flight(api))
        batch = HistogramMetricFamily("deeprec_batch_size", "Rows per predict request (first "
                                      "dimension of its first input)", labels=("model",))
        for model, series in list(self._m._batch.items()):
            _, total, buckets = series.snapshot()
            batch.add_metric((model,), buckets, total)
        return [count, latency, in_flight, batch]


class _VersionCollector:
    """Scrape-time gauges from the managers: version info, serving steps, freshness, readiness."""

    def __init__(self, models: list[ServedModel]):
        self._models = models

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # computed at scrape time; nothing to check at registration

    def collect(self) -> Iterable[GaugeMetricFamily]:
        from deeprec_runtime.models import version_number

        info = GaugeMetricFamily("deeprec_model_version_info", "1 for every version the runtime "
                                 "knows; labels say its TF Serving number and state",
                                 labels=("model", "version", "version_number", "state"))
        full = GaugeMetricFamily("deeprec_model_serving_full_step", "Full checkpoint step of "
                                 "the serving version", labels=("model", "version"))
        delta = GaugeMetricFamily("deeprec_model_serving_delta_step", "Newest delta step applied "
                                  "to the serving version (0: none)", labels=("model", "version"))
        age = GaugeMetricFamily("deeprec_model_checkpoint_age_seconds", "Age of the serving "
                                "version's files (now - mtime of its checkpoint state file)",
                                labels=("model", "version"))
        ready = GaugeMetricFamily("deeprec_model_ready", "1 once a version serves",
                                  labels=("model",))
        now = time.time()
        for model in self._models:
            status = model.manager.info()
            for v in status.versions:
                info.add_metric((model.name, v.name, str(version_number(v.name, v.full_step)),
                                 v.state), 1.0)
            ready.add_metric((model.name,), 1.0 if status.version else 0.0)
            if not status.version:
                continue
            full.add_metric((model.name, status.version), float(status.full_step))
            delta.add_metric((model.name, status.version), float(status.delta_step))
            mtime = _serving_mtime(model, status.version)
            if mtime:
                age.add_metric((model.name, status.version), max(0.0, now - mtime))
        return [info, full, delta, age, ready]


def _serving_mtime(model: ServedModel, version: str) -> float:
    """When the data being served was written: the newest delta applied to the serving version
    (its .index file), else the version's state file; 0 for a SavedModel-only model. One stat
    per scrape, none per request."""
    loaded = model.manager.loaded()
    servable = loaded[0] if loaded and loaded[0].name == version else None
    info = next((v for v in model.manager.known_versions if v.name == version), None)
    info = info or (servable.version if servable is not None else None)
    if info is None:
        return 0.0
    applied = [d for d in info.deltas if servable is not None and d.step <= servable.delta_step]
    if applied:
        try:
            stat = model.manager.store.stat(applied[-1].prefix + ".index")
        except Exception:  # noqa: BLE001 (a scrape must not fail on a store hiccup of any kind)
            stat = None
        if stat is not None:
            return max(stat.mtime, info.mtime)
    return info.mtime
