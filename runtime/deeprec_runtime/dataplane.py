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


def _native_answer(servable, request: pb.PredictRequest) -> pb.PredictResponse | None:
    """The request run by the version's C++ plan (native/fast_predict.cc: the same prepared
    call, lanes and batcher the native gRPC front end uses), or None where the version has no
    plan or the plan declines it: it answers only successes, and the Python executor then gives
    the same answer or the error naming what was wrong. The adapter counts the call, not the
    plan."""
    plan = servable.fast_plan
    if plan is None:
        return None
    answer = plan.predict(request.SerializeToString(), counted=False)
    return None if answer is None else pb.PredictResponse.FromString(answer)


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
                          expired: Callable[[], bool] | None = None, offer_native: bool = False
                          ) -> tuple[pb.PredictResponse, str]:
        """predict(), and the name of the version that answered. `offer_native`: the version's
        C++ plan, when it has one, runs the request first (the adapters whose requests the
        native front end has not already offered it: REST)."""
        with self.manager.hold(version) as handle:
            if expired is not None and expired():
                raise DeadlineExceeded("deadline expired before the model ran")
            if self.observer is not None:
                self.observer(handle.version, request)
            if offer_native:
                answer = _native_answer(handle.servable, request)
                if answer is not None:
                    return answer, handle.version
            return predict(handle.servable, request, self.config.signature_name, self.batcher,
                           self.max_decoded_bytes), handle.version

    def model_info(self) -> pb.ServingModelInfo:
        return self.manager.info()

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
