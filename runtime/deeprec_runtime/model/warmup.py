"""Warm-up: run requests on a new version before it serves, so its first real request does not
pay for lazy initialisation (memory pools, kernels, prepared callables).

With `warmup_file_name` the file holds one serialized PredictRequest (DeepRec's format); without
one, a batch-1 request of ones is generated from the signature (string inputs get "").
"""

from __future__ import annotations

import logging

import numpy as np

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.codec import encode_array
from deeprec_runtime.core.handle import ServableHandle
from deeprec_runtime.errors import ServingError, VersionLoadError
from deeprec_runtime.model import execution
from deeprec_runtime.model.servable import Servable
from deeprec_runtime.model.session_group import SessionGroup
from deeprec_runtime.predict import predict

log = logging.getLogger(__name__)


def load_warmup_request(path: str) -> pb.PredictRequest:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        return pb.PredictRequest.FromString(data)
    except OSError as exc:
        raise VersionLoadError(f"warmup file {path}: {exc.strerror}") from None
    except Exception as exc:  # noqa: BLE001 (protobuf raises DecodeError, a plain Exception subclass)
        raise VersionLoadError(f"warmup file {path} is not a serialized PredictRequest: {exc}") from None


def generated_request(servable: Servable, signature_name: str) -> pb.PredictRequest | None:
    signature = servable.signatures.get(signature_name)
    if signature is None:
        return None
    request = pb.PredictRequest(signature_name=signature_name)
    for alias, spec in signature.inputs.items():
        shape = tuple(1 if d < 0 else d for d in spec.shape) if spec.shape is not None else (1,)
        if spec.dtype.is_numpy_compatible and spec.dtype.as_numpy_dtype is not object:
            array = np.ones(shape, dtype=spec.dtype.as_numpy_dtype)
        else:
            array = np.full(shape, b"", dtype=object)
        encode_array(array, request.inputs[alias])
    return request


def warm_up(servable: Servable, signature_name: str, request: pb.PredictRequest | None,
            iterations: int, known_inline: bool | None = None) -> bool | None:
    """Raises VersionLoadError when a warmup file's request fails (the version is then not
    served); a generated request that the model rejects only logs, since ones may simply be
    invalid input for that model. Returns the inline-or-pool choice when one was made;
    `known_inline` (the choice for an earlier version of the same graph) is reused instead of
    measuring again."""
    explicit = request is not None
    if request is None:
        request = generated_request(servable, signature_name)
        if request is None:
            return None
    if known_inline is not None and servable.can_choose_inline:
        # Same graph as the version serving now: warm the mode it will serve in, so that its
        # first requests do not prepare callables (~20 ms, other requests queue behind that).
        servable.inline = known_inline
    # Every lane of the session group is warmed (DeepRec warms every session): each has its own
    # prepared callables and thread pool.
    for lane in range(servable.num_lanes):
        for _ in range(iterations):
            try:
                with ServableHandle.of(servable), SessionGroup.using(lane):
                    predict(servable, request, signature_name)
            except ServingError as exc:
                if explicit:
                    raise VersionLoadError(f"warmup of {servable.name} failed: {exc}") from None
                log.warning("generated warmup request failed on %s (%s); serving without warmup",
                            servable.name, exc)
                return None
    if not (iterations and servable.can_choose_inline):
        return None
    if known_inline is not None:
        # Same graph, new parameters: the measurement (~0.2 s of CPU, pool threads spinning)
        # would only compete with the requests the serving version is answering meanwhile (it
        # was set before the warmup runs above).
        log.info("version %s runs %s, as the previous version of the same graph", servable.name,
                 "inline" if known_inline else "on the thread pool")
        return known_inline
    choose_execution(servable, signature_name, request)
    return servable.inline


def choose_execution(servable: Servable, signature_name: str, request: pb.PredictRequest) -> None:
    """Inline or pool for this version, by measuring both on the warmup request (see
    model/execution.py); the version is not serving yet, so nothing else runs on it."""
    def set_inline(inline: bool) -> None:
        servable.inline = inline

    def run() -> None:
        with ServableHandle.of(servable), SessionGroup.using(0):
            predict(servable, request, signature_name)

    choice = execution.measure(set_inline, run)
    log.info("version %s runs %s", servable.name, choice.describe())
