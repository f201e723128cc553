"""Doubles for the HTTP channel's unit tests: a site's admission that lets every request in, and a
resource that holds each request until the test answers it."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from payloadtags.api.errors import ApiError


class Admitting:
    """Admits every request; none is a probe, none proves its client. Keeps what the channel ended
    itself (method, target, code, seconds on ``clock`` since it was told the head was read), which
    the site would count."""

    def __init__(self, clock: Callable[[], float] = lambda: 0.0) -> None:
        self.clock = clock
        self.heads: dict[Request, float] = {}
        self.refusals: list[tuple[bytes, bytes, int, float]] = []

    def received(self, request: Request) -> None:
        assert request not in self.heads, "told twice of one head"
        self.heads[request] = self.clock()

    def refused(self, request: Request, code: int) -> None:
        self.refusals.append((request.method, request.uri, code, self.clock() - self.heads[request]))

    def admit(self, request: Request) -> Deferred[ApiError | None]:
        return succeed(None)

    def is_probe(self, path: bytes) -> bool:
        return False

    def proves(self, request: Request) -> bool:
        return False


class Held(Resource):
    """Answers nothing until the test writes and finishes the request."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []

    def render_GET(self, request: Request) -> int:
        self.held.append(request)
        return NOT_DONE_YET
