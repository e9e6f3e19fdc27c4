"""A fault-injecting HTTP proxy in front of the plane's kube-apiserver.

The operator's kubeconfig points at the proxy (plain HTTP on 127.0.0.1); the proxy forwards every
request over TLS to the real API server and streams the answer back (watches included). For a
fraction of writes (POST, PUT, PATCH, DELETE) it answers itself instead, with what an API server
under stress answers: 409 Conflict, 500 InternalError or 503 ServiceUnavailable, each as a real
`Status` object. The injected write never reaches the API server, so a client that does not retry
loses it. Reads and watches always pass, so what the tests see is the operator's handling of
failed writes, not a broken cache.

Usage::

    with FaultProxy(plane, rate=0.2, seed=1) as proxy:
        kubeconfig = proxy.kubeconfig(service_account_kubeconfig_path, out_path)
        ...
        proxy.injected  # Counter of (method, status) -> count
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import threading
from collections import Counter
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from tests.support.plane import Plane, kubeconfig_ca_file

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "host", "content-length"}
_WRITES = {"POST", "PUT", "PATCH", "DELETE"}
_REASONS = {409: "Conflict", 500: "InternalError", 503: "ServiceUnavailable"}
_MESSAGES = {
    409: "Operation cannot be fulfilled: the object has been modified; please apply your changes to "
         "the latest version and try again (injected by the test proxy)",
    500: "Internal error occurred: etcdserver: request timed out (injected by the test proxy)",
    503: "the server is currently unable to handle the request (injected by the test proxy)",
}


class FaultProxy:
    def __init__(self, plane: Plane, *, rate: float = 0.0, codes: tuple[int, ...] = (409, 500, 503),
                 seed: int = 0, ca_dir: Path | None = None) -> None:
        self.plane = plane
        self.rate = rate
        self.codes = codes
        self.injected: Counter[tuple[str, int]] = Counter()
        self.forwarded: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        ca = kubeconfig_ca_file(plane, (ca_dir or plane.dir) / "proxy-upstream-ca.crt")
        self._ssl = ssl.create_default_context(cafile=str(ca))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self.rate = rate

    def kubeconfig(self, source: Path, out: Path) -> Path:
        """A copy of kubeconfig `source` (a token user) whose server is this proxy."""
        config = yaml.safe_load(Path(source).read_text())
        for cluster in config["clusters"]:
            cluster["cluster"] = {"server": self.url}
        out.write_text(yaml.safe_dump(config))
        out.chmod(0o600)
        return out

    def _decide(self, method: str) -> int | None:
        if method not in _WRITES:
            return None
        with self._lock:
            if self._random.random() >= self.rate:
                return None
            code = self._random.choice(self.codes)
            self.injected[(method, code)] += 1
            return code

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._handle)
        # Open watches would hold a graceful shutdown for a minute; the proxy just drops them.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        code = self._decide(request.method)
        if code is not None:
            await request.read()
            status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": _MESSAGES[code], "reason": _REASONS[code], "code": code}
            return web.Response(status=code, text=json.dumps(status), content_type="application/json")
        self.forwarded[request.method] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        upstream = self.plane.server.rstrip("/") + request.rel_url.raw_path_qs
        try:
            async with self._session.request(request.method, upstream, headers=headers,  # type: ignore[union-attr]
                                             data=body or None, allow_redirects=False) as resp:
                out = web.StreamResponse(status=resp.status, reason=resp.reason)
                for key, value in resp.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        out.headers.add(key, value)
                await out.prepare(request)
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
        except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError):
            # The API server went away mid-request (a restart): drop the client's connection the
            # way the server itself would have.
            if request.transport is not None:
                request.transport.close()
            raise
