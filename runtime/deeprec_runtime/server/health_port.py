"""A plaintext port that answers grpc.health.v1.Health and nothing else, for kubelet probes.

The kubelet's gRPC probe speaks plaintext only, so once the serving port requires TLS (or mutual
TLS, where the pod holds no client certificate) it cannot ask that port whether the runtime
serves. This port answers the same SERVING / NOT_SERVING as the serving port, follows it through
start-up and drain, and carries no model data: an open health status is all it gives away.
"""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deeprec_runtime.server.grpc_server import SERVICE


class HealthPort:
    """grpc.health.v1.Health on its own plaintext port (0: any free port, read back in .port)."""

    def __init__(self, port: int, host: str = "[::]"):
        self._health = health.HealthServicer()
        # Watch streams hold a thread each while open: a few threads are enough for probes.
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4,
                                                              thread_name_prefix="health-port"))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind the health port {host}:{port} (in use?)")
        self.set_serving(False)

    def start(self) -> None:
        self._server.start()

    def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", SERVICE):
            self._health.set(service, status)

    def stop(self) -> None:
        self._health.enter_graceful_shutdown()
        self._server.stop(0.5)
