"""Runtime: wires config, manager, data plane and protocol adapters into one server."""

from __future__ import annotations

import logging
import threading

from deeprec_runtime.config import ModelConfig
from deeprec_runtime.dataplane import DataPlane
from deeprec_runtime.model.manager import Manager
from deeprec_runtime.server.grpc_server import GrpcServer, deeprec_service

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, config: ModelConfig, grpc_port: int = 8500, http_port: int = 0,
                 host: str = "[::]", annotations_file: str | None = None,
                 model_name: str = "default", workers: int = 16):
        self.config = config
        self.manager = Manager(config, annotations_file)
        self.dataplane = DataPlane(config, self.manager, model_name)
        self.grpc = GrpcServer([deeprec_service(self.dataplane)], grpc_port, host, workers)
        self.grpc_port = self.grpc.port
        self.http_port = 0
        self._health_thread: threading.Thread | None = None

    def start(self) -> None:
        log.info("starting with config %s", self.config.redacted())
        self.grpc.start()
        self.manager.start()
        # Health turns SERVING only once a version is loaded and warmed up.
        self._health_thread = threading.Thread(target=self._mark_serving_when_ready,
                                               name="deeprec-health", daemon=True)
        self._health_thread.start()

    def _mark_serving_when_ready(self) -> None:
        self.manager.wait_ready()
        if not self._stopping:
            self.grpc.set_serving(True)

    _stopping = False

    def stop(self, grace: float = 10.0, drain_delay: float = 0.0) -> None:
        self._stopping = True
        self.grpc.drain(grace, drain_delay)
        self.manager.stop()
