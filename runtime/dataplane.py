"""The data plane: what every protocol adapter calls.

It owns the model manager (which version serves) and turns a PredictRequest into a
PredictResponse on the serving version; adapters only convert wire formats and status codes.
"""

from __future__ import annotations

from deeprec_runtime.config import ModelConfig
from deeprec_runtime.model.manager import Manager
from deeprec_runtime.predict import predict
from deeprec_runtime.protos import predict_pb2 as pb


class DataPlane:
    def __init__(self, config: ModelConfig, manager: Manager, model_name: str = "default"):
        self.config = config
        self.manager = manager
        self.model_name = model_name

    def predict(self, request: pb.PredictRequest) -> pb.PredictResponse:
        servable = self.manager.acquire()
        try:
            return predict(servable, request, self.config.signature_name)
        finally:
            servable.gate.release_read()

    def model_info(self) -> pb.ServingModelInfo:
        return self.manager.info()
