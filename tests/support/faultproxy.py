"""An HTTP proxy on 127.0.0.1 in front of a real registry that injects faults into chosen requests.

Faults, as a client sees them from a registry that is failing for real:

- ``ERROR_BEFORE``: 500 with a registry error body; the request never reached the registry.
- ``ERROR_AFTER``: the registry did the work, the answer is lost on the way back (500 instead).
- ``STALL``: the request reaches the registry (the work may happen) and the answer comes only after
  ``stall`` seconds, longer than the client's timeout: a timeout with an unknown outcome.

It runs on the test's reactor: whoever sends requests through it must not block that reactor.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.web import server
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

ERROR_BEFORE = "error-before"
ERROR_AFTER = "error-after"
STALL = "stall"
FAULTS = (ERROR_BEFORE, ERROR_AFTER, STALL)

Decide = Callable[[str, str], str | None]
"""(method, path) -> a fault to inject into this request, or None to pass it through."""

_HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"te",
    b"trailer",
    b"upgrade",
    b"content-length",
}
_ERROR_BODY = json.dumps({"errors": [{"code": "UNKNOWN", "message": "injected fault"}]}).encode()


class _Forward(Resource):
    isLeaf = True

    def __init__(self, proxy: FaultProxy) -> None:
        super().__init__()
        self._proxy = proxy

    def render(self, request: IRequest) -> Any:
        assert isinstance(request, server.Request)
        Deferred.fromCoroutine(self._proxy._handle(request))
        return server.NOT_DONE_YET


class FaultProxy:
    """``FaultProxy(reactor, target_url, decide)``; ``url`` is what the client under test uses."""

    def __init__(self, reactor: Any, target: str, decide: Decide | None = None, stall: float = 3.0) -> None:
        self.reactor = reactor
        self.target = target.rstrip("/")
        self.decide: Decide = decide or (lambda method, path: None)
        self.stall = stall
        #: Faults injected so far, by kind.
        self.injected: collections.Counter[str] = collections.Counter()
        self.forwarded = 0
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 32
        self._stalled: set[Deferred[None]] = set()
        self._port: IListeningPort = reactor.listenTCP(0, server.Site(_Forward(self)), interface="127.0.0.1")

    @property
    def url(self) -> str:
        address = self._port.getHost()
        assert isinstance(address, IPv4Address)
        return f"http://127.0.0.1:{address.port}"

    async def stop(self) -> None:
        for waiting in list(self._stalled):
            waiting.cancel()
        stopped = self._port.stopListening()
        if stopped is not None:
            await stopped
        await self._pool.closeCachedConnections()

    async def _handle(self, request: server.Request) -> None:
        method = request.method.decode()
        path = request.uri.decode()
        fault = self.decide(method, path.split("?")[0])
        try:
            if fault == ERROR_BEFORE:
                self.injected[fault] += 1
                self._error(request)
                return
            code, headers, body = await self._send(request, method, path)
            if fault == ERROR_AFTER:
                self.injected[fault] += 1
                self._error(request)
                return
            if fault == STALL:
                self.injected[fault] += 1
                waiting = deferLater(self.reactor, self.stall, lambda: None)
                self._stalled.add(waiting)
                try:
                    await waiting
                finally:
                    self._stalled.discard(waiting)
            self._answer(request, code, headers, body)
        except Exception:
            # The registry or the client went away: answer what a broken gateway answers.
            if not request.finished and not getattr(request, "_disconnected", False):
                request.setResponseCode(502)
                request.finish()

    async def _send(self, request: server.Request, method: str, path: str) -> tuple[int, Headers, bytes]:
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in _HOP_BY_HOP:
                headers.setRawHeaders(name, values)
        body = request.content.read() if request.content is not None else b""
        self.forwarded += 1
        response = await treq.request(
            method,
            self.target + path,
            headers=headers,
            data=body if body or method in ("PUT", "POST", "PATCH") else None,
            allow_redirects=False,
            pool=self._pool,
        )
        content = await treq.content(response)
        return response.code, response.headers, content

    def _error(self, request: server.Request) -> None:
        self._answer(request, 500, Headers({b"Content-Type": [b"application/json"]}), _ERROR_BODY)

    def _answer(self, request: server.Request, code: int, headers: Headers, body: bytes) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setResponseCode(code)
        for name, values in headers.getAllRawHeaders():
            if name.lower() not in _HOP_BY_HOP:
                request.responseHeaders.setRawHeaders(name, values)
        request.setHeader(b"content-length", str(len(body)).encode())
        if request.method != b"HEAD":
            request.write(body)
        request.finish()


__all__ = ["ERROR_AFTER", "ERROR_BEFORE", "FAULTS", "STALL", "FaultProxy"]
