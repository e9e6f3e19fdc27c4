"""The HTTP server: connections, reading requests under their limits, and the one
ServingError -> HTTP mapping; routes.py decides what a request's path runs.

The standard library's ThreadingHTTPServer: one thread per connection (keep-alive), which suits
a data plane that blocks in TensorFlow, and no dependency to keep current. What it lacks for
production is added here: a cap on concurrent connections (503 beyond it), an idle socket
timeout, a request body limit (413, before anything is read), an overall deadline on receiving
a request's headers and body (so a client trickling bytes cannot hold a connection thread
forever), and the in-flight request-bytes budget (429, by Content-Length, before reading: here
for a client that waits for "100 Continue", in routes.py for every inference request).
bench/api_bench.py measures its CPU per request (TF Serving and Simple TensorFlow Serving REST
next to the gRPC APIs).
"""

from __future__ import annotations

import io
import json
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from deeprec_runtime.admission import InflightBytes
from deeprec_runtime.errors import InvalidArgument, ServingError, Unauthenticated
from deeprec_runtime.models import ModelRegistry
from deeprec_runtime.security import HEALTH_HTTP_PATHS, Security, check_http_auth
from deeprec_runtime.server.rest.routes import HttpError, _App

if TYPE_CHECKING:
    from deeprec_runtime.metrics import Metrics

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_CONNECTIONS = 256
IDLE_TIMEOUT_SECONDS = 60.0
#: Default time a request's headers and body have to arrive, from its first byte.
READ_TIMEOUT_SECONDS = 30.0


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, each bounded by the idle timeout and by the deadline of the
    request being received (`handler.deadline`, time.monotonic(); None between requests)."""

    def __init__(self, handler: _Handler):
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        handler = self._handler
        timeout = handler.timeout
        if handler.deadline is not None:
            timeout = min(timeout, handler.deadline - time.monotonic())
            if timeout <= 0:
                raise TimeoutError("the request was not received in time")
        handler.connection.settimeout(timeout)
        return handler.connection.recv_into(buffer)


class _HandshakeFailed(Exception):
    """A TLS client went away or spoke plaintext: drop the connection quietly."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client's requests share one connection
    server_version = "deeprec-runtime"
    timeout = IDLE_TIMEOUT_SECONDS
    # Headers and body leave in one write (handle_one_request flushes), and without Nagle's delay:
    # separate small writes on a keep-alive connection stall ~40 ms on delayed ACKs.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: _Server
    #: When the request being received must have arrived whole (time.monotonic()); None while
    #: waiting for the next request of a keep-alive connection (the idle timeout applies).
    deadline: float | None = None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    # --- one request --------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        # Every read goes through the deadline: the standard library reads the request line and
        # headers itself, one recv at a time, each under the socket timeout only.
        self.rfile.close()
        self._reader = io.BufferedReader(_DeadlineReader(self), 64 * 1024)
        self.rfile = self._reader
        if isinstance(self.request, ssl.SSLSocket):
            # The TLS handshake runs here, in the connection's own thread with its idle timeout,
            # not in the accept loop, so a client that never finishes it blocks nobody else.
            try:
                self.request.do_handshake()
            except (OSError, ssl.SSLError) as exc:
                log.debug("TLS handshake with %s failed: %s", self.client_address, exc)
                self.close_connection = True
                raise _HandshakeFailed() from None

    def handle(self) -> None:
        try:
            super().handle()
        except _HandshakeFailed:
            pass

    def handle_one_request(self) -> None:
        # The clock starts at the request's first byte: an idle keep-alive connection only has
        # the idle timeout. A request not received whole in time is dropped (the standard
        # library closes the connection on TimeoutError); a body gets a 408 (read_body).
        self.deadline = None
        try:
            if not self._reader.peek(1):
                self.close_connection = True
                return
        except OSError:  # TimeoutError included: idle past the timeout, or reset
            self.close_connection = True
            return
        self.deadline = time.monotonic() + self.server.app.read_timeout
        super().handle_one_request()

    def _received(self) -> None:
        """The request is in: writes get the idle timeout, not what is left of the deadline."""
        if self.deadline is not None:
            self.deadline = None
            self.connection.settimeout(self.timeout)

    def _handle(self, method: str) -> None:
        app = self.server.app
        url = urlsplit(self.path)
        try:
            check_http_auth(app.security, url.path, self.headers)
        except Unauthenticated as exc:
            self.close_connection = self.close_connection or method == "POST"
            self._send(401, _error(str(exc)), "application/json",
                       # only a configured Security raises Unauthenticated
                       {"WWW-Authenticate": app.security.www_authenticate() if app.security else ""})
            return
        if method == "GET" and url.path == "/metrics":
            self._send(200, app.metrics.exposition() if app.metrics else b"",
                       app.metrics_content_type)
            return
        if method == "GET" and url.path in HEALTH_HTTP_PATHS:
            # As gRPC health: SERVING once every model has a warmed-up version, NOT_SERVING
            # (503) before that and while draining. /livez only says the process answers.
            serving = app.serving or url.path == "/livez"
            self._send(200 if serving else 503,
                       json.dumps({"status": "SERVING" if serving else "NOT_SERVING"}).encode(),
                       "application/json")
            return
        metrics = app.metrics
        started = metrics.begin("rest") if metrics else 0.0
        status = 500
        self._body_read = False
        try:
            status, payload, content_type = app.route(self, method, url.path, parse_qs(url.query))
        except ServingError as exc:
            status = exc.http_status
            payload, content_type = _error(str(exc)), "application/json"
        except Exception:
            log.exception("unexpected error in %s %s", method, url.path)
            payload, content_type = _error("internal error (see the server log)"), "application/json"
        finally:
            if metrics:
                metrics.end("rest", str(status), started)
        if method == "POST" and not self._body_read:
            self.close_connection = True  # refused before reading the body: do not parse it
        self._send(status, payload, content_type)

    def handle_expect_100(self) -> bool:
        """A client that waits for "100 Continue" before sending its body (curl does for large
        ones) learns here, before sending it, that it is too large (413) or would not fit in the
        request bytes in progress now (429)."""
        if self.command == "POST":
            try:
                length = self.content_length()
                if self.server.app.admission is not None:
                    self.server.app.admission.check(length)
            except ServingError as exc:
                self.close_connection = True
                self._send(exc.http_status, _error(str(exc)), "application/json")
                self.wfile.flush()
                return False
        go_on = super().handle_expect_100()
        # The interim answer must leave now: the client waits for it before sending the body,
        # and the buffered writer would hold it until the final answer.
        self.wfile.flush()
        return go_on

    def content_length(self) -> int:
        """The declared body size, checked before anything is read: 411 without one (chunked
        bodies included), 413 over the limit."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise HttpError(411, "chunked request bodies are not supported; send Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise HttpError(411, "a request body with Content-Length is required")
        try:
            length = int(length_text)
        except ValueError:
            raise HttpError(400, f"invalid Content-Length {length_text!r}") from None
        if length < 0:
            raise HttpError(400, f"invalid Content-Length {length}")
        if length > self.server.app.max_body_bytes:
            raise HttpError(413, f"request body of {length} bytes exceeds the limit of "
                                 f"{self.server.app.max_body_bytes} bytes")
        return length

    def read_body(self, length: int) -> bytes:
        """The body, whole, within what is left of the request's deadline (408 past it)."""
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise HttpError(408, f"request body of {length} bytes was not received within "
                                 f"{self.server.app.read_timeout:g} s") from None
        self._body_read = True
        self._received()
        if len(data) != length:
            self.close_connection = True
            raise InvalidArgument(f"request body ended after {len(data)} of {length} bytes")
        return data

    def _send(self, status: int, payload: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self._received()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # client went away; nothing to answer
            self.close_connection = True


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode("utf-8")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: _App, max_connections: int):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            body = _error("too many connections; retry later")
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                                b"application/json\r\nConnection: close\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class RestServer:
    """REST on its own port; start() serves from a background thread."""

    def __init__(self, models: ModelRegistry, port: int, host: str = "[::]",
                 metrics: Metrics | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 max_connections: int = MAX_CONNECTIONS, security: Security | None = None,
                 max_concurrent: int = 0, admission: InflightBytes | None = None,
                 read_timeout: float = READ_TIMEOUT_SECONDS):
        bind = host.strip("[]") or "::"
        app = _App(models, metrics, max_body_bytes, security, max_concurrent, admission,
                   read_timeout)
        self._server = _Server((bind, port), app, max_connections)
        context = security.http_ssl_context() if security else None
        if context is not None:
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="deeprec-rest",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    def set_serving(self, serving: bool) -> None:
        """What the health paths answer (the Runtime sets it with gRPC health's status)."""
        self._server.app.serving = serving

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
