"""Routing of the REST port: which dialect (TF Serving's REST API or Simple TensorFlow Serving's
JSON API) answers a path, and how an inference request is admitted.

An inference request is admitted by its declared size against the in-flight request-bytes
budget (429), its body read whole under the request's deadline, parsed as JSON that cannot
crash a thread (deep nesting -> 400), and only then given one of the --max-concurrent-requests
slots, so slow uploads never starve the model of requests. The connection side (limits, reading,
the HTTP status of errors) is server.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from deeprec_runtime.admission import InflightBytes, admitted
from deeprec_runtime.errors import InvalidArgument, NotFound, ResourceExhausted, ServingError
from deeprec_runtime.models import ModelRegistry
from deeprec_runtime.security import Security
from deeprec_runtime.server.rest import stfs, tfs

if TYPE_CHECKING:
    from deeprec_runtime.metrics import Metrics
    from deeprec_runtime.server.rest.server import _Handler

_MODEL_URL = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>[A-Za-z]+)|/(?P<tail>metadata|gen_json|gen_client))?/?$")


def parse_json_body(data: bytes) -> dict[str, Any]:
    """A request body as a JSON object; InvalidArgument (HTTP 400) for anything else."""
    try:
        body = json.loads(data)
    except RecursionError:
        raise InvalidArgument("request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    return body


class HttpError(ServingError):
    """A protocol-level refusal with its own HTTP status (413, 411, 405 ...)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.http_status = status


def _json(status: int, obj: Any) -> tuple[int, bytes, str]:
    try:
        return status, json.dumps(obj).encode("utf-8"), "application/json"
    except (TypeError, ValueError) as exc:
        raise ServingError(f"response cannot be written as JSON: {exc}") from None


class _App:
    """Routes a request to the TF Serving or Simple TensorFlow Serving dialect. RestServer
    (server.py) makes it with every setting, so their defaults live in one place."""

    def __init__(self, models: ModelRegistry, metrics: Metrics | None, max_body_bytes: int,
                 security: Security | None, max_concurrent: int,
                 admission: InflightBytes | None, read_timeout: float):
        self.models = models
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        #: Request bytes in progress (shared with grpcio's server); None: no bound.
        self.admission = admission
        #: Seconds a request's headers and body have to arrive, from its first byte.
        self.read_timeout = read_timeout
        self.security = security
        #: What /healthz, /readyz and /v1/health answer: SERVING (200) or NOT_SERVING (503).
        self.serving = False
        #: Inference requests in progress past which more are answered 429 at once (0: no bound).
        self.max_concurrent = max_concurrent
        self._inference_slots = threading.BoundedSemaphore(max_concurrent) if max_concurrent else None
        from deeprec_runtime.metrics import CONTENT_TYPE

        self.metrics_content_type = CONTENT_TYPE

    @contextlib.contextmanager
    def _inference_slot(self):
        """Holds one of --max-concurrent-requests slots for an inference request, or raises
        ResourceExhausted (HTTP 429) at once: a burst never queues without bound."""
        slots = self._inference_slots
        if slots is None:
            yield
            return
        if not slots.acquire(blocking=False):
            raise ResourceExhausted(f"server overloaded: {self.max_concurrent} requests already "
                                    "in progress; retry later")
        try:
            yield
        finally:
            slots.release()

    def _infer(self, handler: _Handler, run: Callable[[dict[str, Any]], Any]) -> tuple[int, bytes, str]:
        """An inference request: admitted by its declared size, its body read whole under the
        deadline, and only then given an inference slot, so slow uploads cannot hold slots."""
        length = handler.content_length()
        with admitted(self.admission, length):
            data = handler.read_body(length)
            with self._inference_slot():
                return _json(200, run(parse_json_body(data)))

    def route(self, handler: _Handler, method: str, path: str,
              query: dict[str, list[str]]) -> tuple[int, bytes, str]:
        if path == "/":
            if method != "POST":
                raise HttpError(405, "POST a Simple TensorFlow Serving request to /")
            return self._infer(handler, lambda body: stfs.predict(self.models, body)[1])
        if path in ("/v1/gen_json", "/v1/gen_client"):
            model = self._model(query.get("model_name", [""])[0])
            return self._helper(handler, model, path.rsplit("/", 1)[1], query)
        m = _MODEL_URL.match(path)
        if m is None:
            raise NotFound(f"no such endpoint: {method} {path}")
        model = self._model(unquote(m["name"]))
        number, label = tfs.version_choice(
            unquote(m["version"]) if m["version"] else None,
            unquote(m["label"]) if m["label"] else None)
        verb, tail = m["verb"], m["tail"]
        if verb is not None:
            if method != "POST":
                raise HttpError(405, f":{verb} needs POST")
            if verb not in ("predict", "classify", "regress"):
                raise NotFound(f"unknown method ':{verb}'; use :predict, :classify or :regress")
            version = model.resolve(number, label)
            run = {"predict": tfs.predict, "classify": tfs.classify_json,
                   "regress": tfs.regress_json}[verb]
            return self._infer(handler, lambda body: run(model, version, body))
        if method != "GET":
            raise HttpError(405, f"{path} answers GET")
        if tail == "metadata":
            return _json(200, tfs.metadata_json(model, model.resolve(number, label)))
        if tail in ("gen_json", "gen_client"):
            return self._helper(handler, model, tail, query)
        return _json(200, tfs.status_json(model, number, label))

    def _model(self, name: str):
        model = self.models.get(name)
        if self.metrics is not None:
            self.metrics.note(model.name)
        return model

    @staticmethod
    def _helper(handler: _Handler, model, what: str,
                query: dict[str, list[str]]) -> tuple[int, bytes, str]:
        if what == "gen_json":
            return _json(200, stfs.gen_json(model))
        language = query.get("language", ["python"])[0]
        host = handler.headers.get("Host") or f"127.0.0.1:{handler.server.server_address[1]}"
        code = stfs.gen_client(model, language, f"http://{host}/")
        return 200, code.encode("utf-8"), "text/plain; charset=utf-8"
