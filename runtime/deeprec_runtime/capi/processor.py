"""The C API's model, in Python: what initialize / process / get_serving_model_info do.

Works on bytes and status codes only, so it is tested in-process; the cffi glue (glue.py) just
moves bytes across the C boundary. Every failure becomes (500, text), never an exception.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.config import ModelConfig, parse_model_config_json
from deeprec_runtime.dataplane import DataPlane
from deeprec_runtime.errors import ConfigError, InvalidArgument, ServingError
from deeprec_runtime.model.manager import Manager
from deeprec_runtime.server.grpc_server import parse

if TYPE_CHECKING:
    from deeprec_runtime.model.servable import Servable
    from deeprec_runtime.native.fast_predict import FastPredict
    from deeprec_runtime.native.plan import FastPlan

log = logging.getLogger(__name__)

OK = 200
FAILED = 500
#: A Downward API annotations file, as `deeprec-runtime serve --annotations-file`: lets a host
#: process pin or roll back versions although DeepRec's C API has no call for it.
ANNOTATIONS_ENV = "DEEPREC_ANNOTATIONS_FILE"


class InitError(Exception):
    """initialize() failed; the message says why (bad config, no loadable version ...)."""


class ProcessorModel:
    """One initialize()d model: a Manager (update thread), the serving version's C++ plan when
    it has one, and a DataPlane for what the plan declines; no servers."""

    def __init__(self, model_entry: str, model_config: str):
        try:
            self.config = parse_model_config_json(model_config, "model_config")
            self.manager = Manager(self.config, os.environ.get(ANNOTATIONS_ENV) or None)
        except ConfigError as exc:  # names the field and the allowed values
            raise InitError(f"invalid model_config: {exc}") from None
        self.model_entry = model_entry
        self.dataplane = DataPlane(self.config, self.manager)
        #: The serving version's C++ plan: process() tries it first, as the gRPC front end does.
        self._plan: FastPlan | None = None
        self.fast = _native_predict(self.config, self.manager, self._serve_plan_of,
                                    self.dataplane.max_decoded_bytes)
        self.manager.start()
        timeout = self.config.init_timeout_minutes * 60.0
        if not self.manager.wait_ready(timeout):
            error = self.manager.last_error or f"no version became ready within {timeout:g} s"
            self.manager.stop()
            raise InitError(f"no model version could be served: {error}")

    def process(self, data: bytes) -> tuple[int, bytes]:
        if not data:
            return OK, self.describe().encode()
        try:
            plan = self._plan
            if plan is not None:
                # None: declined (a closed or blocked plan, a request it does not take): Python
                # answers it, with the same answer or the error naming what was wrong.
                answer = plan.predict(data)
                if answer is not None:
                    return OK, answer
            request = _parse_request(data)
            return OK, self.dataplane.predict(request).SerializeToString()
        except ServingError as exc:
            return FAILED, _failure("predict", f"{exc.grpc_code}: {exc}")
        except Exception as exc:  # never let one request take the host process down
            log.exception("C API process() failed")
            return FAILED, _failure("predict", f"INTERNAL: {type(exc).__name__}: {exc}")

    def model_info(self) -> tuple[int, bytes]:
        try:
            return OK, self.dataplane.model_info().SerializeToString()
        except Exception as exc:
            log.exception("C API get_serving_model_info() failed")
            return FAILED, _failure("get_serving_model_info", f"{type(exc).__name__}: {exc}")

    def describe(self) -> str:
        """Text answer to an empty request (DeepRec returns the model's debug string)."""
        lines = [f"model_path: {self.manager.info().model_path}",
                 f"default signature: {self.config.signature_name}"]
        try:
            with self.manager.hold() as handle:
                servable = handle.servable
                lines.append(f"version: {servable.name}")
                for sig in servable.signatures.values():
                    lines.append(f"signature {sig.name}:")
                    for kind, specs in (("input", sig.inputs), ("output", sig.outputs)):
                        for alias, spec in sorted(specs.items()):
                            shape = "?" if spec.shape is None else [d if d >= 0 else None
                                                                    for d in spec.shape]
                            lines.append(f"  {kind} {alias} ({spec.name}) {spec.dtype.name} {shape}")
        except ServingError as exc:
            lines.append(f"not serving: {exc}")
        return "\n".join(lines) + "\n"

    def _serve_plan_of(self, servable: Servable | None) -> None:
        """The manager's on_serving: the new serving version's plan (None: Python serves it).
        Kept here rather than published in the library, which holds one plan per process while
        a host may initialize() several models."""
        self._plan = (self.fast.plan_for(servable) if self.fast is not None and servable is not None
                      else None)

    def close(self) -> None:
        self.manager.stop()


def _native_predict(config: ModelConfig, manager: Manager,
                    on_serving: Callable[[Servable | None], None],
                    max_decoded_bytes: int) -> FastPredict | None:
    """The C++ fast path for process(), as the servers use it; None (with a warning) where its
    library cannot be built or loaded here."""
    from deeprec_runtime.native.build import BuildError  # TensorFlow's C++ side
    from deeprec_runtime.native.fast_predict import FastPredict

    try:
        fast = FastPredict("default", config.signature_name, None, manager.warmup_request,
                           config.batching, max_decoded_bytes=max_decoded_bytes)
    except (BuildError, OSError) as exc:
        log.warning("C API: fast predict off, its library cannot be built or loaded (%s)", exc)
        return None
    manager.before_serving = fast.plan_for
    manager.on_serving = on_serving
    return fast


def _parse_request(data: bytes) -> pb.PredictRequest:
    try:
        return parse(pb.PredictRequest, data, "PredictRequest")
    except InvalidArgument as exc:
        # DeepRec's wording, so callers matching on it keep working, plus the parser's reason.
        raise InvalidArgument(f"Please check the input data. ({exc})") from None


def _failure(what: str, reason: str) -> bytes:
    text = "Processor predict failed: " if what == "predict" else f"Processor {what} failed: "
    return (text + reason).encode("utf-8", "replace")
