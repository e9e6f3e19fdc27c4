"""NativeGrpcServer: the same services, bounds and shutdown as GrpcServer, on gRPC C++.

gRPC C++ (grpc_frontend.cc) accepts calls and reads their request bytes; for each call one of its
worker threads calls `_dispatch` here, which finds the method's handler among the same
grpc.GenericRpcHandler objects the grpcio server is given, runs it with a small stand-in for
grpc.ServicerContext, and hands the response bytes back. Health (Check and Watch) is gRPC C++'s
own service, TLS and mutual TLS come from watched PEM files. Not supported here, refused at
start-up by the runtime: authenticated health checks (use `--grpc-server python` for those).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

import grpc

from deeprec_runtime import security as security_settings
from deeprec_runtime.admission import InflightBytes
from deeprec_runtime.errors import Unauthenticated
from deeprec_runtime.native.build import library_path
from deeprec_runtime.server.grpc_server import (
    MAX_CONNECTION_AGE_SECONDS,
    MAX_MESSAGE_BYTES,
    SERVICE,
    wait_until_quiet,
)

log = logging.getLogger(__name__)

_CDEF = """
typedef int (*dr_handler_fn)(const char *method, size_t method_len, const char *data,
                             size_t size, double timeout_s, const char *authorization,
                             size_t authorization_len, const char **out, size_t *out_size);
void *dr_frontend_start(const char *address, int pollers, int workers, int max_concurrent,
                        int max_message_bytes, int64_t max_inflight_bytes,
                        int max_connection_age_ms, const char *tls_key,
                        const char *tls_cert, const char *tls_client_ca, int tls_refresh_seconds,
                        dr_handler_fn handler, int *bound_port, char *error, size_t error_size);
void dr_frontend_set_serving(void *frontend, const char *service, int serving);
int dr_frontend_in_flight(void *frontend);
int64_t dr_frontend_calls_accepted(void *frontend);
int64_t dr_frontend_in_flight_bytes(void *frontend);
int dr_frontend_take_bytes(void *frontend, int64_t size);
void dr_frontend_give_bytes(void *frontend, int64_t size);
void dr_frontend_set_credentials(void *frontend, int required, const char **bearer, int num_bearer,
                                 const char **basic, int num_basic);
int dr_frontend_set_fast(void *frontend, const char *method, void *fn);
int dr_frontend_set_lanes(void *frontend, int lanes, const int *cpus, const int *counts,
                          int round_robin);
void dr_frontend_stop(void *frontend, double grace_seconds);
"""

#: How often gRPC C++ re-reads the TLS files (a Secret update takes the kubelet ~1 min anyway).
TLS_REFRESH_SECONDS = 5
_UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED.value[0]
_UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]


class _Details(NamedTuple):  # grpc.HandlerCallDetails, for GenericRpcHandler.service()
    method: str
    invocation_metadata: tuple


class _Aborted(Exception):
    pass


class NativeContext:
    """What the handlers use of grpc.ServicerContext: abort, code and the deadline."""

    __slots__ = ("_deadline", "_code", "_details", "_authorization")

    def __init__(self, timeout: float, authorization: str | None):
        self._deadline = time.monotonic() + timeout if timeout >= 0 else None
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._authorization = authorization

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def abort(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details
        raise _Aborted(details)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def invocation_metadata(self) -> tuple:
        return (("authorization", self._authorization),) if self._authorization else ()


class NativeGrpcServer:
    """Drop-in for GrpcServer (set_serving, start, drain, port) backed by gRPC C++."""

    def __init__(self, handlers: list[grpc.GenericRpcHandler], port: int, host: str = "[::]",
                 max_workers: int = 16, authenticator: Any = None,
                 open_methods: frozenset[str] = frozenset(), max_concurrent: int | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, pollers: int = 1,
                 tls: tuple[str, str, str] | None = None, max_inflight_bytes: int = 0,
                 max_connection_age: float = MAX_CONNECTION_AGE_SECONDS):
        import cffi


        self._handlers = list(handlers)
        self._resolved: dict[bytes, grpc.RpcMethodHandler | None] = {}
        self._resolve_lock = threading.Lock()
        self._auth = authenticator if authenticator is not None and authenticator.enabled else None
        self._open_methods = open_methods
        self.ffi = ffi = cffi.FFI()
        ffi.cdef(_CDEF)
        # DEEPBIND: gRPC C++ and its OpenSSL must bind to each other, not to the same-named
        # symbols TensorFlow exports process-wide (its BoringSSL: a crash in the TLS set-up).
        self.lib = ffi.dlopen(library_path(), os.RTLD_NOW | os.RTLD_DEEPBIND)
        # Kept on self: the C++ side holds the pointer for the server's whole life. A callback that
        # raises anyway returns INTERNAL.
        self._callback = ffi.callback("dr_handler_fn", self._dispatch, error=_INTERNAL)
        #: Per worker thread: the answer C++ is copying, alive until that thread's next call.
        self._answers = threading.local()
        bound = ffi.new("int *")
        error = ffi.new("char[]", 512)
        if max_concurrent is None:
            max_concurrent = 4 * max_workers
        key, cert, client_ca = (p.encode() for p in tls or ("", "", ""))
        self._frontend = self.lib.dr_frontend_start(
            f"{host}:{port}".encode(), pollers, max_workers, max_concurrent or 0,
            max_message_bytes, max_inflight_bytes, int(max(max_connection_age, 0) * 1000), key,
            cert, client_ca, TLS_REFRESH_SECONDS,
            self._callback, bound, error, 512)
        if self._frontend == ffi.NULL:
            raise OSError(ffi.string(error).decode(errors="replace"))
        self.port = bound[0]
        self._max_inflight_bytes = max_inflight_bytes
        self._stopped = False
        self._stop_refresh = threading.Event()
        self._pushed: tuple | None = None
        self.set_serving(False)
        if self._auth is not None:
            self._push_credentials()
            threading.Thread(target=self._refresh_credentials, name="native-credentials",
                             daemon=True).start()
        # gRPC C++'s threads call into Python: they must be gone before the interpreter is.
        atexit.register(self.drain, 0.0)

    def _handler(self, method: bytes) -> grpc.RpcMethodHandler | None:
        if method in self._resolved:
            return self._resolved[method]
        with self._resolve_lock:
            details = _Details(method.decode(errors="replace"), ())
            handler = None
            for generic in self._handlers:
                handler = generic.service(details)
                if handler is not None:
                    break
            if handler is not None and handler.unary_unary is None:
                handler = None  # streaming methods are not carried by the native front end
            self._resolved[method] = handler
            return handler

    def _dispatch(self, method_ptr, method_len, data, size, timeout, auth_ptr, auth_len, out,
                  out_size) -> int:
        """One call, on a gRPC C++ worker thread: returns the status code and points `out` at the
        response bytes (or the error message), kept alive until this thread's next call."""
        code, answer = self._answer(method_ptr, method_len, data, size, timeout, auth_ptr, auth_len)
        self._answers.keep = answer
        out[0] = self.ffi.from_buffer(answer)
        out_size[0] = len(answer)
        return code

    def _answer(self, method_ptr, method_len, data, size, timeout, auth_ptr,
                auth_len) -> tuple[int, bytes]:
        ffi = self.ffi
        method = ffi.unpack(method_ptr, method_len)
        try:
            handler = self._handler(method)
            if handler is None:
                return _UNIMPLEMENTED, b"unknown method " + method
            authorization = (ffi.unpack(auth_ptr, auth_len).decode(errors="replace")
                             if auth_ptr != ffi.NULL else None)
            if self._auth is not None and method.decode(errors="replace") not in self._open_methods:
                try:
                    self._auth.check(authorization)
                except Unauthenticated as exc:
                    return _UNAUTHENTICATED, str(exc).encode()
            context = NativeContext(timeout, authorization)
            request: Any = ffi.unpack(data, size)
            if handler.request_deserializer is not None:
                request = handler.request_deserializer(request)
            try:
                response = handler.unary_unary(request, context)
            except _Aborted:
                code = context.code() or grpc.StatusCode.UNKNOWN
                return code.value[0], context.details().encode(errors="replace")
            if handler.response_serializer is not None:
                response = handler.response_serializer(response)
            return 0, bytes(response)
        except Exception:  # never let one call take the server down; log with stack
            log.exception("unexpected error in native gRPC dispatch of %s", method)
            return _INTERNAL, b"internal error (see the server log)"

    def _push_credentials(self) -> None:
        """Gives gRPC C++ the credentials that open the fast path (the authenticator's current
        tokens and Basic pairs); unchanged ones are not pushed again."""
        if self._auth is None:
            return
        bearer, basic = self._auth.accepted_credentials()
        if (bearer, basic) == self._pushed:
            return
        ffi = self.ffi
        keep = [ffi.new("char[]", value.encode()) for value in (*bearer, *basic)]
        self.lib.dr_frontend_set_credentials(
            self._frontend, 1, ffi.new("const char *[]", keep[:len(bearer)]), len(bearer),
            ffi.new("const char *[]", keep[len(bearer):]), len(basic))
        self._pushed = (bearer, basic)

    def _refresh_credentials(self) -> None:
        # Calls answered in C++ never ask the authenticator, so a rotated token file would not
        # be noticed without this: it is read as often as the Python handlers read it.
        while not self._stop_refresh.wait(security_settings.RELOAD_SECONDS):
            try:
                self._push_credentials()
            except Exception:  # keep the last credentials; never log their values
                log.exception("cannot refresh the native front end's credentials")

    def set_serving(self, serving: bool) -> None:
        for service in ("", SERVICE):
            self.lib.dr_frontend_set_serving(self._frontend, service.encode(), int(serving))

    def set_fast(self, method: str, fn: Any) -> None:
        """Offers each call of `method` to the C function `fn` first (fast_predict.cc's
        drf_predict); what it does not answer goes to the Python handlers."""
        if self.lib.dr_frontend_set_fast(self._frontend, method.encode(), fn) != 0:
            raise RuntimeError(f"no room for another fast method ({method})")

    def set_lanes(self, cpusets: Sequence[Collection[int]], round_robin: bool) -> None:
        """Serves a session group's lanes: worker i serves lane i % len(cpusets), pinned to its
        cpuset, and the fast path runs that lane's model inline in it (see grpc_frontend.cc);
        `round_robin` queues calls to the lanes in turn (DeepRec's RR), else any worker takes
        the next call (MOD). Once, before serving."""
        ffi = self.ffi
        flat = [c for cpus in cpusets for c in sorted(cpus)]
        if self.lib.dr_frontend_set_lanes(self._frontend, len(cpusets), ffi.new("int[]", flat or [0]),
                                          ffi.new("int[]", [len(c) for c in cpusets] or [0]),
                                          int(round_robin)) != 0:
            raise RuntimeError(f"the front end refused lanes {cpusets}")

    def start(self) -> None:
        """The server accepts calls from construction on (gRPC C++ starts when built)."""

    @property
    def in_flight(self) -> int:
        return int(self.lib.dr_frontend_in_flight(self._frontend))

    @property
    def calls_accepted(self) -> int:
        """Calls accepted since start, including those answered in C++ (fast predict), which
        Python never sees."""
        return int(self.lib.dr_frontend_calls_accepted(self._frontend))

    @property
    def in_flight_bytes(self) -> int:
        """Bytes of the requests read and not yet answered (bounded by max_inflight_bytes)."""
        return int(self.lib.dr_frontend_in_flight_bytes(self._frontend))

    def inflight_budget(self) -> InflightBytes:
        """The front end's request-bytes budget as an InflightBytes, for the other servers of the
        process (REST): one bound on request bytes in progress, whichever port they came in on."""
        return _FrontendBytes(self, self._max_inflight_bytes)

    def drain(self, grace: float, quiet: float = 0.0) -> None:
        """As GrpcServer.drain: NOT_SERVING at once, serve until quiet (or `grace`), then stop."""
        if self._stopped:
            return
        self.set_serving(False)
        deadline = time.monotonic() + grace
        wait_until_quiet(deadline, quiet, queued=lambda: self.in_flight,
                         accepted=lambda: self.calls_accepted)
        self._stopped = True
        self._stop_refresh.set()
        self.lib.dr_frontend_stop(self._frontend, max(deadline - time.monotonic(), 1.0))
        atexit.unregister(self.drain)


class _FrontendBytes(InflightBytes):
    """InflightBytes kept by gRPC C++'s counter (dr_frontend_take_bytes), so gRPC calls and REST
    requests share one budget."""

    def __init__(self, server: NativeGrpcServer, limit: int):
        super().__init__(limit)
        self._server = server

    def try_acquire(self, nbytes: int) -> bool:
        if not self.limit:
            return True
        return bool(self._server.lib.dr_frontend_take_bytes(self._server._frontend, nbytes))

    def release(self, nbytes: int) -> None:
        if self.limit:
            self._server.lib.dr_frontend_give_bytes(self._server._frontend, nbytes)

    @property  # a read of the C++ counter, not a field
    def in_flight(self) -> int:
        return self._server.in_flight_bytes

    @in_flight.setter
    def in_flight(self, value: int) -> None:  # InflightBytes.__init__ sets it; C++ owns it
        pass

