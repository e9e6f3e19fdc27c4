"""gRPC adapter: deeprec.serving.PredictionService and grpc.health.v1.Health on one port.

Handlers take raw bytes (identity deserializer) and parse inside the handler: grpcio would answer
a request that does not parse with INTERNAL, and it must be INVALID_ARGUMENT.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deeprec_api import predict_pb2 as pb
from deeprec_api.service import PREDICTION_SERVICE
from deeprec_runtime.admission import InflightBytes, admitted
from deeprec_runtime.errors import InvalidArgument, ServingError

log = logging.getLogger(__name__)

SERVICE = PREDICTION_SERVICE
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Default bound on requests in progress, queued ones included, per worker thread (see GrpcServer).
REQUESTS_PER_WORKER = 4
#: A client connection is closed gracefully (GOAWAY, its calls finish, the client reconnects)
#: after this long. Behind a Kubernetes Service ClusterIP a connection stays on the pod kube-proxy
#: picked when it opened, even once that pod is terminating: only a new connection leaves it. So a
#: draining pod gets quiet within this age (plus --drain-seconds), well inside --grace-seconds,
#: instead of being stopped with calls still arriving; and new pods get their share of old
#: clients. Measured on a real node: docs/operator.md. Default of --max-connection-age-seconds.
MAX_CONNECTION_AGE_SECONDS = 10.0


def _identity(data: bytes) -> bytes:
    return data


def abort_with(context: grpc.ServicerContext, exc: ServingError) -> None:
    """The one place a ServingError becomes a gRPC status."""
    context.abort(getattr(grpc.StatusCode, exc.grpc_code), str(exc))


def parse(message_type, data: bytes, what: str):
    try:
        return message_type.FromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise InvalidArgument(f"request is not a valid {what}: {exc}") from None


class CallTracker:
    """Counts calls in progress and remembers when the last one started, so a shutdown can wait
    until traffic has really stopped (see GrpcServer.drain)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.last_start = 0.0

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.last_start = time.monotonic()

    def exit(self) -> None:
        with self._lock:
            self.in_flight -= 1


CALLS = CallTracker()


def expired(context: grpc.ServicerContext) -> bool:
    """True once the call's deadline has passed (never for a call without one)."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def unary(fn: Callable[[bytes, grpc.ServicerContext], bytes],
          admission: InflightBytes | None = None) -> grpc.RpcMethodHandler:
    """A unary method over raw bytes. With `admission` (grpcio's server; the native front end
    admits in C++) the call holds its request's size in the in-flight budget while it runs, or is
    answered RESOURCE_EXHAUSTED at once when that would pass the bound."""
    def handler(data: bytes, context: grpc.ServicerContext) -> bytes:
        if expired(context):
            # It waited in the queue past the client's deadline: nobody waits for the answer,
            # so the model is not run for it.
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired before the "
                          "request was started")
        CALLS.enter()
        try:
            with admitted(admission, len(data)):
                return fn(data, context)
        except ServingError as exc:
            abort_with(context, exc)
        except Exception:  # never let one request take the server down; log with stack
            log.exception("unexpected error in %s", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")
        finally:
            CALLS.exit()
        return b""  # unreachable: abort raises

    return grpc.unary_unary_rpc_method_handler(handler, request_deserializer=_identity,
                                               response_serializer=_identity)


def deeprec_service(dataplane, admission: InflightBytes | None = None) -> grpc.GenericRpcHandler:
    def predict(data: bytes, context: grpc.ServicerContext) -> bytes:
        request = parse(pb.PredictRequest, data, "deeprec.serving.PredictRequest")
        return dataplane.predict(request, expired=lambda: expired(context)).SerializeToString()

    def model_info(data: bytes, context: grpc.ServicerContext) -> bytes:
        return dataplane.model_info().SerializeToString()

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Predict": unary(predict, admission),
        "GetServingModelInfo": unary(model_info, admission),
    })


class GrpcServer:
    """Owns the grpc.Server, the health service and graceful shutdown.

    Overload: at most `max_concurrent` calls are in progress, running or queued for a worker
    (default REQUESTS_PER_WORKER x `max_workers`; 0: no bound). A call past the bound is answered
    RESOURCE_EXHAUSTED at once instead of waiting in an unbounded queue, so latency stays bounded
    and clients can retry elsewhere. Messages over `max_message_bytes` are refused with
    RESOURCE_EXHAUSTED. The request bytes in progress are bounded by the services' handlers
    (`unary(..., admission)`, deeprec_runtime.admission), a budget shared with REST."""

    def __init__(self, handlers: list[grpc.GenericRpcHandler], port: int, host: str = "[::]",
                 max_workers: int = 16, credentials: grpc.ServerCredentials | None = None,
                 interceptors: list[grpc.ServerInterceptor] | None = None,
                 max_concurrent: int | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 max_connection_age: float = MAX_CONNECTION_AGE_SECONDS):
        self.health = health.HealthServicer()
        if max_concurrent is None:
            max_concurrent = REQUESTS_PER_WORKER * max_workers
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc-worker"),
            handlers=handlers,
            interceptors=interceptors or (),  # authentication (runtime/deeprec_runtime/security.py)
            options=[("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.max_send_message_length", max_message_bytes),
                     ("grpc.so_reuseport", 0),
                     *([("grpc.max_connection_age_ms", int(max_connection_age * 1000))]
                       if max_connection_age > 0 else [])],
            maximum_concurrent_rpcs=max_concurrent or None,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = f"{host}:{port}"
        try:  # grpcio returns 0 or raises RuntimeError, depending on its version
            self.port = (self.server.add_secure_port(address, credentials)
                         if credentials is not None else self.server.add_insecure_port(address))
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot bind gRPC port {host}:{port} (in use?)")
        self.set_serving(False)

    def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", SERVICE):
            self.health.set(service, status)

    def start(self) -> None:
        self.server.start()

    def drain(self, grace: float, quiet: float = 0.0) -> None:
        """Graceful shutdown. Health goes NOT_SERVING at once, but calls are still accepted until
        none is running and none has started for `quiet` seconds (clients and Kubernetes
        endpoints take that long to stop sending), or until `grace` runs out. Only then does the
        server stop: gRPC fails calls that reach a stopping server, even ones queued inside it."""
        self.set_serving(False)
        deadline = time.monotonic() + grace
        wait_until_quiet(deadline, quiet)
        self.server.stop(max(deadline - time.monotonic(), 1.0)).wait()


def wait_until_quiet(deadline: float, quiet: float,
                     queued: Callable[[], int] = lambda: 0,
                     accepted: Callable[[], int] = lambda: 0) -> None:
    """Returns once no call is running or `queued` (not yet in a handler) and none has started
    for `quiet` seconds, or at `deadline` (time.monotonic()). `accepted` counts the calls a
    server took that Python does not see start (the native front end answers Predict in C++):
    a change in it is a call starting too."""
    started = time.monotonic()
    seen, seen_at = accepted(), started
    while time.monotonic() < deadline:
        now = time.monotonic()
        count = accepted()
        if count != seen:
            seen, seen_at = count, now
        if (CALLS.in_flight == 0 and queued() == 0
                and now - max(CALLS.last_start, started, seen_at) >= quiet):
            return
        time.sleep(0.02)
