"""The data plane's core: one PredictRequest against one servable.

Every protocol adapter (DeepRec gRPC, TF Serving gRPC, REST, C API) ends here, so validation
and error messages are the same whichever way a request arrives.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.codec import DEFAULT_MAX_DECODED_BYTES, DecodeBudget, decode_input, encode_array
from deeprec_runtime.errors import InvalidArgument
from deeprec_runtime.model.servable import Servable
from deeprec_runtime.model.signature import Signature


def resolve_feeds(signature: Signature, arrays: Mapping[str, np.ndarray],
                  wire_dtypes: Mapping[str, int] | None = None) -> tuple[tuple[str, ...], list[np.ndarray]]:
    """Matches request inputs (by alias or tensor name) to the signature; returns the tensor names
    in a canonical order (so prepared callables are shared between requests) and the arrays."""
    by_tensor: dict[str, np.ndarray] = {}
    for key, array in arrays.items():
        spec = signature.input(key)
        if spec.name in by_tensor:
            raise InvalidArgument(f"input '{spec.alias}' is given twice (by alias and by tensor name)")
        if wire_dtypes is not None:
            spec.check(wire_dtypes[key], array.shape, key)
        by_tensor[spec.name] = array
    missing = [s.alias for s in signature.inputs.values() if s.name not in by_tensor]
    if missing:
        raise InvalidArgument(
            f"missing input(s) {', '.join(sorted(missing))} for signature '{signature.name}'")
    names = tuple(sorted(by_tensor))
    return names, [by_tensor[n] for n in names]


def predict(servable: Servable, request: pb.PredictRequest, default_signature: str,
            batcher=None, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> pb.PredictResponse:
    """Runs `request` on `servable`; raises InvalidArgument naming what was wrong, also when its
    decoded inputs would take more than `max_decoded_bytes` together (0: no bound). With a
    `batcher` (runtime/deeprec_runtime/batching.py) the run may be merged with concurrent requests."""
    signature = servable.signature(request.signature_name or default_signature)
    budget = DecodeBudget(max_decoded_bytes)
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, int] = {}
    raw = False
    # In the order of their keys, so the input a refusal names does not depend on the map's order
    # (the C++ path refuses a request over the cap with the same figures: request_wire.h).
    for key, proto in sorted(request.inputs.items()):
        arrays[key], content = decode_input(proto, key, budget)
        raw = raw or content
        dtypes[key] = proto.dtype
    feed_names, feed_arrays = resolve_feeds(signature, arrays, dtypes)
    keys = list(request.output_filter) or sorted(signature.outputs)
    specs = [signature.output(k) for k in keys]
    if len(set(keys)) != len(keys):  # the answer is a map: it holds each name once
        twice = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise InvalidArgument(f"output '{twice}' is named twice in output_filter")
    fetch_names = tuple(sorted({s.name for s in specs}))
    if batcher is not None:
        results = batcher.run(servable, feed_names, fetch_names, feed_arrays)
    else:
        results = servable.run(feed_names, fetch_names, feed_arrays)
    by_name = dict(zip(fetch_names, results, strict=True))
    response = pb.PredictResponse()
    # A client that sent raw tensor_content reads it back the same way: one memcpy per output
    # instead of a repeated field.
    for key, spec in zip(keys, specs, strict=True):
        encode_array(by_name[spec.name], response.outputs[key], use_tensor_content=raw)
    return response
