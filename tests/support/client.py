"""An HTTPS client for tests: talks to the server as kube-apiserver or a user would, with a client cert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import treq
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from tests.support.pki import Issued


@implementer(IPolicyForHTTPS)
@attrs.frozen
class _Policy:
    ca_pem: bytes
    client: Issued | None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        client_cert = None
        if self.client is not None:
            client_cert = PrivateCertificate.loadPEM(
                self.client.key_file.read_bytes() + self.client.cert_file.read_bytes()
            )
        return optionsForClientTLS(
            hostname.decode(), trustRoot=Certificate.loadPEM(self.ca_pem), clientCertificate=client_cert
        )


@attrs.frozen
class Response:
    code: int
    headers: dict[str, list[str]]
    body: bytes
    phrase: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


@attrs.define
class ApiClient:
    base_url: str
    ca_file: str
    client: Issued | None = None
    reactor: Any = global_reactor
    _pool: HTTPConnectionPool | None = None

    def as_user(self, client: Issued | None) -> ApiClient:
        return ApiClient(self.base_url, self.ca_file, client, self.reactor)

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str | list[str]] | None = None,
        body: bytes | dict[str, Any] | None = None,
    ) -> Response:
        if self._pool is None:
            self._pool = HTTPConnectionPool(self.reactor, persistent=False)
        policy = _Policy(Path(self.ca_file).read_bytes(), self.client)  # noqa: ASYNC240 - a small local file
        agent = Agent(self.reactor, contextFactory=policy, pool=self._pool)
        http = treq.client.HTTPClient(agent)
        send_headers: dict[bytes | str, list[bytes | str]] = {}
        for key, value in (headers or {}).items():
            send_headers[key] = [*value] if isinstance(value, list) else [value]
        data = body
        if isinstance(body, dict):
            data = json.dumps(body).encode()
            send_headers.setdefault("Content-Type", ["application/json"])
        response = await http.request(method, self.base_url + path, headers=send_headers, data=data)
        content = await treq.content(response)
        raw = {k.decode().lower(): [v.decode() for v in vs] for k, vs in response.headers.getAllRawHeaders()}
        return Response(response.code, raw, content, response.phrase)

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        return await self.request("DELETE", path, **kwargs)


class _Lines(Protocol):
    def __init__(self, sink: Stream) -> None:
        self.sink = sink

    def dataReceived(self, data: bytes) -> None:
        self.sink.feed(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.sink.ended.called:
            self.sink.ended.callback(None)


@attrs.define(eq=False)
class Stream:
    """A response read as it arrives, one line at a time (watch streams)."""

    code: int
    headers: dict[str, list[str]]
    lines: DeferredQueue[bytes] = attrs.field(factory=DeferredQueue)
    ended: Deferred[None] = attrs.field(factory=Deferred)
    protocol: _Lines | None = None
    _partial: bytes = b""

    def feed(self, data: bytes) -> None:
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        for line in complete:
            self.lines.put(line)

    async def next(self, within: float = 10.0) -> Any:
        """The next line, decoded as JSON; fails after ``within`` seconds without one."""
        from twisted.internet import reactor

        waiting = self.lines.get()
        waiting.addTimeout(within, reactor)
        return json.loads(await waiting)

    def close(self) -> None:
        """Drops the connection, as a client that goes away."""
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.stopProducing()  # type: ignore[attr-defined]  # a TransportProxyProducer


async def stream(client: ApiClient, path: str, headers: dict[str, str] | None = None) -> Stream:
    """Opens ``path`` and returns once the response head arrived; lines come in ``Stream.lines``."""
    policy = _Policy(Path(client.ca_file).read_bytes(), client.client)  # noqa: ASYNC240 - a small local file
    pool = HTTPConnectionPool(client.reactor, persistent=False)
    agent = Agent(client.reactor, contextFactory=policy, pool=pool)
    send: dict[bytes | str, list[bytes | str]] = {k: [v] for k, v in (headers or {}).items()}
    response = await treq.client.HTTPClient(agent).request("GET", client.base_url + path, headers=send)
    raw = {k.decode().lower(): [v.decode() for v in vs] for k, vs in response.headers.getAllRawHeaders()}
    result = Stream(response.code, raw)
    result.protocol = _Lines(result)
    response.deliverBody(result.protocol)
    return result
