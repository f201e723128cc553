"""A web server on 127.0.0.1 whose answers a test scripts: a registry that says what no real one
would (a storage backend behind a redirect, headers that are not UTF-8, absurdly nested JSON)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from twisted.web import resource, server

from tests.support.listening import stop_listening, tcp_port

Answer = Callable[[server.Request, str], bytes]
"""(request, path with its query) -> the body; the status and headers are set on the request."""


class Scripted(resource.Resource):
    """Answers every request with ``answer`` and records (method, path, Authorization header)."""

    isLeaf = True

    def __init__(self, answer: Answer) -> None:
        super().__init__()
        self.answer = answer
        self.seen: list[tuple[str, str, str | None]] = []

    def render(self, request: server.Request) -> bytes:
        path = request.uri.decode()
        self.seen.append((request.method.decode(), path, request.getHeader("authorization")))
        return self.answer(request, path)


@asynccontextmanager
async def serving(reactor: Any, answer: Answer) -> AsyncIterator[tuple[str, Scripted]]:
    """(its URL, the resource) while the block runs."""
    scripted = Scripted(answer)
    port = reactor.listenTCP(0, server.Site(scripted), interface="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{tcp_port(port)}", scripted
    finally:
        await stop_listening(port)
