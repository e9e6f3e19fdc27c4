"""Prometheus metrics of one runtime: requests, versions, updates, freshness, batch sizes.

Per-request work is a few dictionary lookups and prometheus-client increments (labelled children
are cached, so no label resolution happens on the hot path; `bench/metrics_overhead.py` measures
it). Everything about versions is computed when /metrics is scraped, from the managers, so it
costs requests nothing.

A request's model and version become known only once the data plane holds a version; the data
plane's observer writes them into a per-thread slot that the adapter reads when the request ends
(every adapter runs a request on one thread: the gRPC worker or the HTTP connection thread).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import grpc
from deeprec_runtime.model.manager import UpdateEvent
from deeprec_runtime.protos import predict_pb2 as pb
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from deeprec_runtime.models import ModelRegistry, ServedModel

APIS = ("deeprec_grpc", "tfs_grpc", "rest")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
UPDATE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The runtime's metrics, in a registry of their own (several runtimes may share a process,
    as in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("api", "model", "version", "code")
        self.requests = Counter("deeprec_requests", "Requests answered, by API, model, version "
                                "and status code (gRPC code name or HTTP status)", labels,
                                registry=self.registry)
        self.latency = Histogram("deeprec_request_duration_seconds", "Time to answer a request, "
                                 "from the adapter's view", labels, buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.in_flight = Gauge("deeprec_requests_in_flight", "Requests being answered", ("api",),
                               registry=self.registry)
        self.batch_size = Histogram("deeprec_batch_size", "Rows per predict request (first "
                                    "dimension of its first input)", ("model",),
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.updates = Counter("deeprec_model_updates", "Model updates (load, delta, swap_back, "
                               "unload) by result", ("model", "kind", "result"),
                               registry=self.registry)
        self.update_seconds = Histogram("deeprec_model_update_duration_seconds",
                                        "Time an update took", ("model", "kind"),
                                        buckets=UPDATE_BUCKETS, registry=self.registry)
        self._children: dict[tuple[str, str, str, str], tuple[Counter, Histogram]] = {}
        self._in_flight = {api: self.in_flight.labels(api) for api in APIS}
        self._batch: dict[str, Histogram] = {}
        self._slot = threading.local()
        self._models: list[ServedModel] = []
        self.registry.register(_VersionCollector(self._models))

    # --- models -------------------------------------------------------------------------------
    def attach(self, models: ModelRegistry) -> None:
        """Observes the requests and updates of every model of `models`."""
        for model in models:
            self._models.append(model)
            model.on_request = self.observe_request
            model.manager.listeners.append(self._update_listener(model.name))

    def _update_listener(self, model: str) -> Callable[[UpdateEvent], None]:
        def on_update(event: UpdateEvent) -> None:
            self.updates.labels(model, event.kind, "success" if event.ok else "failure").inc()
            self.update_seconds.labels(model, event.kind).observe(event.seconds)

        return on_update

    # --- requests -----------------------------------------------------------------------------
    def begin(self, api: str) -> float:
        """A request of `api` starts; returns the start time to hand to end()."""
        self._in_flight[api].inc()
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
                hist = self._batch.get(model)
                if hist is None:
                    hist = self._batch[model] = self.batch_size.labels(model)
                hist.observe(dims[0])
            break

    def end(self, api: str, code: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        slot = self._slot
        key = (api, slot.model, slot.version, code)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(*key), self.latency.labels(*key))
        children[0].inc()
        children[1].observe(elapsed)
        self._in_flight[api].dec()

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

    def service(self, handler_call_details):  # type: ignore[no-untyped-def]
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

    def _wrap(self, fn):  # type: ignore[no-untyped-def]
        metrics, api = self._metrics, self._api

        def call(request, context):  # type: ignore[no-untyped-def]
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
