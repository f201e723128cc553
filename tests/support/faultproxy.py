"""An HTTP proxy on 127.0.0.1 in front of a real registry that injects faults into chosen requests.

Faults, as a client sees them from a registry that is failing for real:

- ``ERROR_BEFORE``: 500 with a registry error body; the request never reached the registry.
- ``ERROR_AFTER``: the registry did the work, the answer is lost on the way back (500 instead).
- ``STALL``: the request reaches the registry (the work may happen) and the answer comes only after
  ``stall`` seconds, longer than the client's timeout: a timeout with an unknown outcome.
- ``LATE``: the request reaches the registry only after ``stall`` seconds, when the client has long
  given up on it (a timeout), and the work happens then: what a slow network or an overloaded
  registry does to a request the client no longer waits for.
- ``GATEWAY_LATE``: a gateway in front of the registry (an ingress, a load balancer, a sidecar) gives
  up first: the client gets its ``504 Gateway Time-out`` page (HTML, not the registry's JSON error) at
  once, and the request reaches the registry ``stall`` seconds later and is carried out then.
- ``DROPPED_LATE``: the connection is closed at once with no answer, and the request reaches the
  registry ``stall`` seconds later and is carried out then.

It runs on the test's reactor: whoever sends requests through it must not block that reactor.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Callable
from typing import Any

import attrs
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
LATE = "late"
GATEWAY_LATE = "gateway-late"
DROPPED_LATE = "dropped-late"
# What the seeded interleavings pick from; GATEWAY_LATE and DROPPED_LATE are not among them, so that a
# seed keeps replaying the run it names.
FAULTS = (ERROR_BEFORE, ERROR_AFTER, STALL, LATE)

Decide = Callable[[str, str], str | None]
"""(method, path) -> a fault to inject into this request, or None to pass it through."""


@attrs.frozen
class Exchange:
    """One request: the client sent it by ``received`` (when the proxy had it); it reached the
    registry at ``sent`` and was answered at ``answered`` (the proxy's reactor clock), whatever the
    client then got. A write took effect inside [sent, answered], however late after the client
    gave up on it; ``answered`` is None when the registry never answered (the effect is unknown).
    ``body_digest``: a PUT's body as a digest, for a manifest PUT the digest the registry stores it
    under (what the write put at its tag). ``listed``: the tags a tag listing (``GET .../tags/list``
    answered 200) named, None for any other request."""

    method: str
    path: str
    received: float
    sent: float
    answered: float | None
    status: int | None
    fault: str | None
    body_digest: str | None = None
    listed: tuple[str, ...] | None = None


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
_GATEWAY_TIMEOUT_PAGE = b"<html><body><h1>504 Gateway Time-out</h1></body></html>"


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

    def __init__(
        self,
        reactor: Any,
        target: str,
        decide: Decide | None = None,
        stall: float = 3.0,
        hold: Deferred[None] | None = None,
        location: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.reactor = reactor
        self.target = target.rstrip("/")
        self.decide: Decide = decide or (lambda method, path: None)
        self.stall = stall
        # Given, a stalled or late request waits for it to fire instead of ``stall`` seconds: the test
        # says when a late write lands (after the client's answer, however slow the machine is).
        self.hold = hold
        # Given, each Location header of the registry's answers is passed on as it returns: what a
        # proxy that writes the URLs it passes on otherwise (a default port written in) does.
        self.location = location
        #: Faults injected so far, by kind.
        self.injected: collections.Counter[str] = collections.Counter()
        self.forwarded = 0
        #: Every request forwarded to the registry, in the order they reached it.
        self.exchanges: list[Exchange] = []
        #: Requests being handled (waiting, forwarded, or being answered).
        self.in_flight = 0
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
        received = float(self.reactor.seconds())
        self.in_flight += 1
        # Taken now: a late request is forwarded after its client has gone, and its Request with it.
        sent_headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in _HOP_BY_HOP:
                sent_headers.setRawHeaders(name, values)
        sent_body = request.content.read() if request.content is not None else b""
        try:
            if fault == ERROR_BEFORE:
                self.injected[fault] += 1
                self._error(request)
                return
            if fault == LATE:
                self.injected[fault] += 1
                await self._wait(self.stall)
            if fault == GATEWAY_LATE:
                self.injected[fault] += 1
                self._answer(request, 504, Headers({b"Content-Type": [b"text/html"]}), _GATEWAY_TIMEOUT_PAGE)
                await self._wait(self.stall)  # then on to the registry; the answer goes nowhere
            if fault == DROPPED_LATE:
                self.injected[fault] += 1
                transport: Any = request.transport  # an ITCPTransport: it can abort
                transport.abortConnection()
                await self._wait(self.stall)
            code, headers, body = await self._send(method, path, sent_headers, sent_body, fault, received)
            locations = headers.getRawHeaders(b"location")
            if self.location is not None and locations:
                headers.setRawHeaders(b"location", [self.location(value) for value in locations])
            if fault == ERROR_AFTER:
                self.injected[fault] += 1
                self._error(request)
                return
            if fault == STALL:
                self.injected[fault] += 1
                await self._wait(self.stall)
            self._answer(request, code, headers, body)
        except Exception:
            # The registry or the client went away: answer what a broken gateway answers.
            if not request.finished and not getattr(request, "_disconnected", False):
                request.setResponseCode(502)
                request.finish()
        finally:
            self.in_flight -= 1

    async def settled(self, within: float = 60.0) -> None:
        """Wait until every request it holds has been through the registry and answered (stalled and
        late ones too), however slow the machine is; AssertionError after ``within`` seconds."""
        waited = 0.0
        while self.in_flight:
            if waited >= within:
                raise AssertionError(
                    f"{self.in_flight} request(s) still in the fault proxy after {within:g}s"
                )
            await deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05

    async def _wait(self, seconds: float) -> None:
        if self.hold is not None:
            waiting: Deferred[None] = Deferred()
            self.hold.addBoth(lambda result: waiting.callback(None) if not waiting.called else None)
            self._stalled.add(waiting)
            try:
                await waiting
            finally:
                self._stalled.discard(waiting)
            return
        waiting = deferLater(self.reactor, seconds, lambda: None)
        self._stalled.add(waiting)
        try:
            await waiting
        finally:
            self._stalled.discard(waiting)

    async def _send(
        self, method: str, path: str, headers: Headers, body: bytes, fault: str | None, received: float
    ) -> tuple[int, Headers, bytes]:
        self.forwarded += 1
        sent = float(self.reactor.seconds())
        index = len(self.exchanges)
        put = "sha256:" + hashlib.sha256(body).hexdigest() if method == "PUT" else None
        self.exchanges.append(Exchange(method, path.split("?")[0], received, sent, None, None, fault, put))
        response = await treq.request(
            method,
            self.target + path,
            headers=headers,
            data=body if body or method in ("PUT", "POST", "PATCH") else None,
            allow_redirects=False,
            pool=self._pool,
        )
        content = await treq.content(response)
        self.exchanges[index] = attrs.evolve(
            self.exchanges[index],
            answered=float(self.reactor.seconds()),
            status=response.code,
            listed=_listed(method, path, response.code, content),
        )
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


__all__ = [
    "DROPPED_LATE",
    "ERROR_AFTER",
    "ERROR_BEFORE",
    "FAULTS",
    "GATEWAY_LATE",
    "LATE",
    "STALL",
    "Exchange",
    "FaultProxy",
]


def _listed(method: str, path: str, code: int, content: bytes) -> tuple[str, ...] | None:
    """The tags a tag listing's answer named (`Exchange.listed`); None for anything else."""
    if method != "GET" or code != 200 or not path.split("?")[0].endswith("/tags/list"):
        return None
    try:
        return tuple(json.loads(content).get("tags") or ())
    except (ValueError, AttributeError):
        return None
