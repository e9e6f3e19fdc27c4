"""Runtime: wires config, manager, data plane and protocol adapters into one server."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from deeprec_api.pod import GRPC_PORT
from deeprec_api.service import PREDICT_METHOD
from deeprec_runtime.admission import DEFAULT_MAX_INFLIGHT_BYTES, InflightBytes
from deeprec_runtime.config import BatchingConfig, ModelConfig
from deeprec_runtime.cpus import format_cpu_list
from deeprec_runtime.metrics import Metrics
from deeprec_runtime.models import ModelEntry, ModelRegistry
from deeprec_runtime.security import Security, SecurityConfigError
from deeprec_runtime.server.grpc_server import (
    MAX_CONNECTION_AGE_SECONDS,
    MAX_MESSAGE_BYTES,
    REQUESTS_PER_WORKER,
    GrpcServer,
    deeprec_service,
)
from deeprec_runtime.server.health_port import HealthPort
from deeprec_runtime.server.rest import RestServer
from deeprec_runtime.server.rest.server import READ_TIMEOUT_SECONDS

if TYPE_CHECKING:
    from deeprec_runtime.native.fast_predict import FastPredict
    from deeprec_runtime.native.server import NativeGrpcServer

log = logging.getLogger(__name__)

WORKERS_PER_CPU = 2
MIN_WORKERS = 4
MIN_CONCURRENT_REQUESTS = 64


MAX_BATCHING_WORKERS = 256


def default_workers(batching: BatchingConfig | None = None) -> int:
    """gRPC worker threads when none are configured: 2 per CPU the process may use (affinity
    capped by the cgroup CPU limit), at least 4. Each worker runs a request to its end (TensorFlow
    releases the GIL meanwhile), so ~1 per CPU keeps the CPUs busy and the second covers requests
    blocked on I/O (feature store lookups); more only add GIL hand-offs and context switches
    (measured on 2 CPUs, Wide&Deep batch 1: 16 workers 509-668 us of server CPU per request,
    4 workers 456-481 us).

    With batching on, a worker waits with its call while the batch fills, so merging up to
    `max_batch_size` single-row calls while `num_batch_threads` other batches run needs that
    many workers (capped at MAX_BATCHING_WORKERS); waiting workers cost no CPU."""
    from deeprec_runtime.cpus import cpu_budget

    workers = max(MIN_WORKERS, WORKERS_PER_CPU * cpu_budget())
    if batching is not None and batching.enabled:
        wanted = (batching.num_batch_threads + 1) * batching.max_batch_size
        workers = max(workers, min(MAX_BATCHING_WORKERS, wanted))
    return workers


def _tfs_services(models: ModelRegistry, metrics: Metrics,
                  admission: InflightBytes | None) -> list:
    """TF Serving's gRPC services, when the tensorflow-serving-api package is installed."""
    try:
        from deeprec_runtime.server.tfs_grpc import tfs_services
    except ImportError as exc:
        log.warning("TensorFlow Serving gRPC API disabled (%s); install it with "
                    "'pip install --no-deps tensorflow-serving-api'", exc)
        return []
    return tfs_services(models, metrics, admission)


GRPC_SERVERS = ("auto", "python", "native")


def choose_grpc_server(choice: str, security: Security) -> str:
    """`auto` (the default): the native front end, unless health checks must be authenticated
    (only grpcio's server does that) or the native library cannot be built here; the choice and
    its reason are logged."""
    if choice not in GRPC_SERVERS:
        raise SecurityConfigError("--grpc-server", f"{choice!r} is not one of {', '.join(GRPC_SERVERS)}")
    if choice != "auto":
        return choice
    if security.config.protect_health:
        log.info("gRPC server: python (--auth-protect-health is set; the native front end "
                 "answers health checks without credentials)")
        return "python"
    from deeprec_runtime.native.build import BuildError, library_path

    try:
        library_path()
    except BuildError as exc:
        log.warning("gRPC server: python, the native front end cannot be built here (%s)", exc)
        return "python"
    log.info("gRPC server: native (gRPC C++)")
    return "native"


def _native_grpc_server(services: list, port: int, host: str, workers: int, security: Security,
                        max_concurrent: int, max_message_bytes: int,
                        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
                        max_connection_age: float = MAX_CONNECTION_AGE_SECONDS) -> NativeGrpcServer:
    """The gRPC C++ front end (runtime/deeprec_runtime/native), after refusing what it does not carry."""
    from deeprec_runtime.native.server import NativeGrpcServer

    if security.config.protect_health:
        raise SecurityConfigError("--grpc-server", "native answers health checks in gRPC C++, "
                                  "without credentials; use --grpc-server python with "
                                  "--auth-protect-health")
    cfg = security.config
    tls = (cfg.tls_key, cfg.tls_cert, cfg.tls_client_ca or "") if cfg.tls_enabled else None
    return NativeGrpcServer(services, port, host, workers, authenticator=security.authenticator,
                            open_methods=security.grpc_open_methods(), tls=tls,
                            max_concurrent=max_concurrent, max_message_bytes=max_message_bytes,
                            max_inflight_bytes=max_inflight_bytes,
                            max_connection_age=max_connection_age)


class Runtime:
    """One or more models (`models`; else `config` named `model_name`) behind DeepRec gRPC,
    TF Serving gRPC (same port), REST and /metrics (`http_port`; None: no HTTP server).

    Memory bounds per request (docs/reliability.md): `max_message_bytes` on a gRPC message or a
    REST body; `max_decoded_bytes` (default: `max_message_bytes`) on one request's decoded input
    tensors; `max_batch_bytes` (default: `max_message_bytes`) on a merged batch, padding
    included; `max_inflight_bytes` on the request bytes in progress (one budget for grpcio's
    server and REST; the native front end keeps its own); `http_read_timeout` seconds for a REST
    request's headers and body to arrive. 0 turns a byte bound off."""

    def __init__(self, config: ModelConfig, grpc_port: int = GRPC_PORT, http_port: int | None = None,
                 host: str = "[::]", annotations_file: str | None = None,
                 model_name: str = "default", workers: int | None = None,
                 models: list[ModelEntry] | None = None, security: Security | None = None,
                 max_concurrent_requests: int | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, grpc_server: str = "auto",
                 fast_predict: bool = True, health_port: int | None = None,
                 max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
                 max_decoded_bytes: int | None = None, max_batch_bytes: int | None = None,
                 http_read_timeout: float = READ_TIMEOUT_SECONDS,
                 max_connection_age: float = MAX_CONNECTION_AGE_SECONDS):
        self.config = config
        #: TLS + authentication for both ports (deeprec_runtime.security); default: plaintext, open.
        self.security = security or Security()
        self.models = ModelRegistry(models or [ModelEntry(model_name, config)], annotations_file)
        self.manager = self.models.default.manager
        self.dataplane = self.models.default.dataplane
        #: Bytes one request may decode to, and a merged batch may hold (padding included).
        self.max_decoded_bytes = max_message_bytes if max_decoded_bytes is None else max_decoded_bytes
        self.max_batch_bytes = max_message_bytes if max_batch_bytes is None else max_batch_bytes
        for model in self.models:
            model.dataplane.set_limits(self.max_decoded_bytes, self.max_batch_bytes)
        self.metrics = Metrics()
        self.metrics.attach(self.models)
        #: Request bytes in progress, shared by grpcio's server and REST (admission.py).
        self.admission = InflightBytes(max_inflight_bytes)
        self.grpc: GrpcServer | NativeGrpcServer
        self.grpc_server = choose_grpc_server(grpc_server, self.security)
        # The native front end admits gRPC calls in C++; its Python handlers must not count them
        # a second time.
        grpc_admission = self.admission if self.grpc_server == "python" else None
        # The DeepRec service has no model name: it serves the default (first) model.
        services = [self.metrics.observed_service(deeprec_service(self.dataplane, grpc_admission),
                                                  "deeprec_grpc")]
        tfs = _tfs_services(self.models, self.metrics, grpc_admission)
        services += [self.metrics.observed_service(s, "tfs_grpc") for s in tfs]
        self._tfs = bool(tfs)
        workers = workers or default_workers(config.batching)
        if max_concurrent_requests is None:
            # The bound on calls in progress stays what it was with the former 16 workers on small
            # hosts: fewer workers must not turn a burst into RESOURCE_EXHAUSTED.
            max_concurrent_requests = max(MIN_CONCURRENT_REQUESTS, REQUESTS_PER_WORKER * workers)
        if self.grpc_server == "native":
            self.grpc = _native_grpc_server(services, grpc_port, host, workers, self.security,
                                            max_concurrent_requests, max_message_bytes,
                                            max_inflight_bytes, max_connection_age)
        else:
            self.grpc = GrpcServer(services, grpc_port, host, workers,
                                   credentials=self.security.grpc_credentials(),
                                   interceptors=self.security.grpc_interceptors(),
                                   max_concurrent=max_concurrent_requests,
                                   max_message_bytes=max_message_bytes,
                                   max_connection_age=max_connection_age)
        self.grpc_port = self.grpc.port
        if self.grpc_server == "native":
            # One budget for the whole process: REST takes its bytes from the front end's counter.
            self.admission = self.grpc.inflight_budget()  # type: ignore[union-attr]  # native only
        #: The C++ path for DeepRec Predict calls (native/fast_predict.py), or None.
        self.fast_predict = (self._start_fast_predict()
                             if fast_predict and self.grpc_server == "native" else None)
        if not fast_predict:
            log.info("fast predict: off (--fast-predict off): Predict calls are answered by the "
                     "Python handlers")
        elif self.grpc_server != "native":
            log.info("fast predict: off, it needs the native gRPC front end (the server is %s)",
                     self.grpc_server)
        self.http = (RestServer(self.models, http_port, host, self.metrics,
                                max_body_bytes=max_message_bytes, security=self.security,
                                max_concurrent=max_concurrent_requests,
                                admission=self.admission, read_timeout=http_read_timeout)
                     if http_port is not None else None)
        self.http_port = self.http.port if self.http else 0
        #: Plaintext health for kubelet probes when the serving port needs TLS (None: not asked).
        self.health = HealthPort(health_port, host) if health_port is not None else None
        self._health_thread: threading.Thread | None = None

    def _start_fast_predict(self) -> FastPredict | None:
        """Hands DeepRec (and TF Serving) Predict calls to C++ first (the native front end only):
        every model gets plans of its own; DeepRec's calls go to the default model's, TF
        Serving's to those of the model they name. With authentication on, only calls whose
        credentials the front end has verified take that path. With batching on, the calls C++
        answers are merged in C++ and the rest in the Python handlers. Returns the default
        model's FastPredict."""
        from deeprec_runtime.native.build import BuildError
        from deeprec_runtime.native.fast_predict import TFS_PREDICT_METHOD, FastPredict

        fasts: list[FastPredict] = []
        for model in self.models:
            try:
                fast = FastPredict(model.name, model.config.signature_name, self.metrics,
                                   model.manager.warmup_request, model.config.batching,
                                   tfs=self._tfs, max_decoded_bytes=self.max_decoded_bytes,
                                   max_batch_bytes=self.max_batch_bytes,
                                   default_model=model is self.models.default)
            except (BuildError, OSError) as exc:
                log.warning("fast predict: off, its library cannot be built or loaded (%s)", exc)
                return None
            model.manager.before_serving = fast.plan_for
            model.manager.on_serving = fast.publish
            fasts.append(fast)
        fast = fasts[0]
        self.grpc.set_fast(PREDICT_METHOD, fast.entry)  # type: ignore[union-attr]  # native only
        if self._tfs:
            self.grpc.set_fast(TFS_PREDICT_METHOD, fast.tfs_entry)  # type: ignore[union-attr]
        log.info("fast predict: on (DeepRec%s Predict calls are answered in C++ when they can be)",
                 " and TF Serving" if self._tfs else "")
        plan = self.manager.group_plan
        if plan is not None and not plan.uses_gpu and all(lane.cpus for lane in plan.lanes):
            # Lanes bound to cpusets: each worker serves one lane, pinned to its CPUs, so the fast
            # path runs the lane's model inline in the worker (no hand-off to the lane's pool).
            cpusets = [sorted(lane.cpus or ()) for lane in plan.lanes]
            self.grpc.set_lanes(cpusets, plan.select_policy == "RR")  # type: ignore[union-attr]
            log.info("gRPC workers serve %d lane(s) on cpusets %s (%s)", len(cpusets),
                     "; ".join(format_cpu_list(c) for c in cpusets), plan.select_policy)
        return fast

    def start(self) -> None:
        log.info("starting with config %s", self.config.redacted())
        self.grpc.start()
        if self.health:
            self.health.start()
        if self.http:
            self.http.start()
        self.models.start()
        # Health turns SERVING only once a version is loaded and warmed up.
        self._health_thread = threading.Thread(target=self._mark_serving_when_ready,
                                               name="deeprec-health", daemon=True)
        self._health_thread.start()

    def _mark_serving_when_ready(self) -> None:
        self.models.wait_ready()
        if not self._stopping:
            self.grpc.set_serving(True)
            if self.health:
                self.health.set_serving(True)
            if self.http:
                self.http.set_serving(True)

    _stopping = False

    def stop(self, grace: float = 10.0, quiet: float = 0.0) -> None:
        self._stopping = True
        self.models.stop_updates()  # no delta or new version starts while draining
        if self.health:
            self.health.set_serving(False)
        if self.http:
            self.http.set_serving(False)
        self.grpc.drain(grace, quiet)
        if self.health:
            self.health.stop()
        if self.http:
            self.http.stop()
        self.models.stop()
