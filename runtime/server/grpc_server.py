"""gRPC adapter: deeprec.serving.PredictionService and grpc.health.v1.Health on one port.

Handlers take raw bytes (identity deserializer) and parse inside the handler: grpcio would answer
a request that does not parse with INTERNAL, and it must be INVALID_ARGUMENT.
"""

from __future__ import annotations

import logging
import time
from concurrent import futures
from typing import Callable

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deeprec_runtime.errors import InvalidArgument, ServingError
from deeprec_runtime.protos import predict_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = "deeprec.serving.PredictionService"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


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


def unary(fn: Callable[[bytes, grpc.ServicerContext], bytes]) -> grpc.RpcMethodHandler:
    def handler(data: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            return fn(data, context)
        except ServingError as exc:
            abort_with(context, exc)
        except Exception:  # never let one request take the server down; log with stack
            log.exception("unexpected error in %s", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")
        return b""  # unreachable: abort raises

    return grpc.unary_unary_rpc_method_handler(handler, request_deserializer=_identity,
                                               response_serializer=_identity)


def deeprec_service(dataplane) -> grpc.GenericRpcHandler:
    def predict(data: bytes, context: grpc.ServicerContext) -> bytes:
        request = parse(pb.PredictRequest, data, "deeprec.serving.PredictRequest")
        return dataplane.predict(request).SerializeToString()

    def model_info(data: bytes, context: grpc.ServicerContext) -> bytes:
        return dataplane.model_info().SerializeToString()

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Predict": unary(predict),
        "GetServingModelInfo": unary(model_info),
    })


class GrpcServer:
    """Owns the grpc.Server, the health service and graceful shutdown."""

    def __init__(self, handlers: list[grpc.GenericRpcHandler], port: int, host: str = "[::]",
                 max_workers: int = 16):
        self.health = health.HealthServicer()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc-worker"),
            handlers=handlers,
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.so_reuseport", 0)],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind gRPC port {host}:{port}")
        self.set_serving(False)

    def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", SERVICE):
            self.health.set(service, status)

    def start(self) -> None:
        self.server.start()

    def drain(self, grace: float, delay: float = 0.0) -> None:
        """Graceful shutdown. Health goes NOT_SERVING at once, but calls are still accepted for
        `delay` seconds: clients and Kubernetes endpoints need that long to stop sending, and a
        call that reaches a stopped server fails. Then in-flight calls get `grace` seconds."""
        self.set_serving(False)
        if delay > 0:
            time.sleep(delay)
        self.server.stop(grace).wait()
