"""The data plane: what every protocol adapter calls.

It owns the model manager (which version serves) and turns a PredictRequest into a
PredictResponse on the serving version; adapters only convert wire formats and status codes.
"""

from __future__ import annotations

from collections.abc import Callable

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.batching import DEFAULT_MAX_BATCH_BYTES, Batcher
from deeprec_runtime.codec import DEFAULT_MAX_DECODED_BYTES
from deeprec_runtime.config import ModelConfig
from deeprec_runtime.errors import DeadlineExceeded
from deeprec_runtime.model.manager import Manager
from deeprec_runtime.predict import predict


class DataPlane:
    def __init__(self, config: ModelConfig, manager: Manager, model_name: str = "default",
                 max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
                 max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES):
        self.config = config
        self.manager = manager
        self.model_name = model_name
        #: Called with (version name, request) once a request holds its version (metrics).
        self.observer: Callable[[str, pb.PredictRequest], None] | None = None
        #: Bound on the bytes one request's decoded inputs take (0: none); past it the request
        #: is InvalidArgument. The TF Serving and REST converters apply it too.
        self.max_decoded_bytes = max_decoded_bytes
        #: Merges concurrent small requests into one run when `batching` is configured.
        self.batcher = (Batcher(config.batching, max_batch_bytes) if config.batching.enabled
                        else None)

    def set_limits(self, max_decoded_bytes: int, max_batch_bytes: int) -> None:
        """The server's per-request bounds (app.py: both default to --max-message-bytes)."""
        self.max_decoded_bytes = max_decoded_bytes
        if self.batcher is not None:
            self.batcher.max_batch_bytes = max_batch_bytes

    def predict(self, request: pb.PredictRequest, version: str | None = None,
                expired: Callable[[], bool] | None = None) -> pb.PredictResponse:
        """Runs `request` on the serving version, or on the loaded version named `version`.
        `expired` (the caller's deadline, when it has one) is asked once the version is held,
        just before the model runs: a request that waited past its deadline (behind a delta
        apply, say) is not run."""
        return self.predict_versioned(request, version, expired)[0]

    def predict_versioned(self, request: pb.PredictRequest, version: str | None = None,
                          expired: Callable[[], bool] | None = None
                          ) -> tuple[pb.PredictResponse, str]:
        """predict(), and the name of the version that answered."""
        with self.manager.hold(version) as handle:
            if expired is not None and expired():
                raise DeadlineExceeded("deadline expired before the model ran")
            if self.observer is not None:
                self.observer(handle.version, request)
            return predict(handle.servable, request, self.config.signature_name, self.batcher,
                           self.max_decoded_bytes), handle.version

    def model_info(self) -> pb.ServingModelInfo:
        return self.manager.info()

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
