"""Streamed responses: a chunk per reactor turn, paused while the client is slow, stopped when it goes;
a failure before the first byte is the caller's to answer, one after it drops the connection."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource

from payloadtags.api.streaming import write_streamed


class Request:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None
        self.registrations = 0
        self.channel: Request | None = self
        self.aborted = False
        self.code: int | None = None
        self._finish: list[Deferred[None]] = []

    def forceAbortClient(self) -> None:
        self.aborted = True

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming and self.producer is None
        self.producer = producer
        self.registrations += 1

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        assert self.code == 200, "the status is set before the first byte"
        self.written.append(data)

    def notifyFinish(self) -> Deferred[None]:
        finished: Deferred[None] = Deferred()
        self._finish.append(finished)
        return finished

    def lose(self) -> None:
        """The client goes away: Twisted drops the channel and fails notifyFinish."""
        self.channel = None
        waiting, self._finish = self._finish, []
        for finished in waiting:
            finished.errback(Failure(ConnectionLost()))


async def chunks(count: int, made: list[int], fail_at: int | None = None) -> AsyncGenerator[bytes, None]:
    for i in range(count):
        if i == fail_at:
            raise RuntimeError("the registry failed")
        made.append(i)  # formatted only when the writer asks: one chunk in memory at a time
        yield b"%d" % i


def start(
    request: Request, source: AsyncGenerator[bytes, None], clock: Clock
) -> tuple[Deferred[None], list[Any]]:
    def begin() -> None:
        request.code = 200

    results: list[Any] = []
    writing = Deferred.fromCoroutine(write_streamed(request, source, clock, begin))  # type: ignore[arg-type]
    writing.addBoth(results.append)
    return writing, results


def test_one_chunk_per_reactor_turn() -> None:
    clock, request = Clock(), Request()
    made: list[int] = []
    _, done = start(request, chunks(3, made), clock)
    # The first chunk is written, the next waits for the reactor: other work runs in between.
    assert request.written == [b"0"] and made == [0]
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)  # a Clock runs the calls made meanwhile too: the rest goes out
    assert request.written == [b"0", b"1", b"2"]
    assert done == [None] and request.producer is None


def test_a_paused_transport_stops_the_writer_until_it_resumes() -> None:
    clock, request = Clock(), Request()
    made: list[int] = []
    _, done = start(request, chunks(5, made), clock)
    request.producer.pauseProducing()
    clock.advance(0)
    assert request.written == [b"0", b"1"]
    clock.advance(1)
    assert request.written == [b"0", b"1"] and made == [0, 1]  # nothing formatted while paused
    assert not clock.getDelayedCalls()
    request.producer.resumeProducing()
    # The transport resumes the writer from its own write (the reactor's I/O phase): the next chunk
    # waits for a turn of the reactor too, or two chunks would go out in one turn.
    assert request.written == [b"0", b"1"] and made == [0, 1]
    clock.advance(0)
    assert request.written == [b"%d" % i for i in range(5)]
    assert done == [None]


def test_a_client_that_goes_away_ends_the_writing() -> None:
    clock, request = Clock(), Request()
    made: list[int] = []
    _, done = start(request, chunks(1000, made), clock)
    request.producer.stopProducing()
    clock.advance(0)
    assert request.written == [b"0"] and made == [0]
    assert done == [None] and request.producer is None


def test_a_list_cut_short_by_the_deadline_drops_the_connection() -> None:
    """Finishing the response would end the chunked body like a complete list: the client must see a
    broken response instead."""
    clock, request = Clock(), Request()
    made: list[int] = []
    writing, results = start(request, chunks(1000, made), clock)
    writing.cancel()
    assert request.aborted and request.written == [b"0"] and request.producer is None
    assert results == [None]


def test_a_failure_after_the_first_byte_drops_the_connection() -> None:
    clock, request = Clock(), Request()
    made: list[int] = []
    _, results = start(request, chunks(10, made, fail_at=3), clock)
    clock.advance(0)
    assert request.written == [b"0", b"1", b"2"] and request.aborted
    assert results == [None] and request.producer is None


def test_a_failure_before_the_first_byte_is_raised_for_a_status() -> None:
    clock, request = Clock(), Request()
    made: list[int] = []
    _, results = start(request, chunks(10, made, fail_at=0), clock)
    assert isinstance(results[0], Failure) and results[0].check(RuntimeError)
    assert request.written == [] and request.code is None and not request.aborted
    results[0].trap(RuntimeError)


def test_a_client_already_gone_is_not_aborted_again() -> None:
    clock, request = Clock(), Request()
    made: list[int] = []
    writing, _ = start(request, chunks(1000, made), clock)
    request.producer.stopProducing()
    writing.cancel()
    assert not request.aborted


def test_nothing_is_made_or_written_for_a_client_already_gone() -> None:
    clock, request = Clock(), Request()
    request.channel = None
    made: list[int] = []
    _, done = start(request, chunks(3, made), clock)
    assert done == [None] and request.written == [] and made == [] and request.registrations == 0


def test_a_client_that_goes_away_before_the_first_chunk_cancels_its_making() -> None:
    clock, request = Clock(), Request()
    waiting: Deferred[bytes] = Deferred()
    stopped: list[str] = []

    async def slow() -> AsyncGenerator[bytes, None]:
        try:
            yield await waiting
        finally:
            stopped.append("stopped")

    _, done = start(request, slow(), clock)
    request.lose()
    assert done == [None] and stopped == ["stopped"] and waiting.called  # cancelled
    assert request.written == [] and not request.aborted


@pytest.mark.parametrize("count", [0, 1])
def test_an_empty_source_writes_nothing(count: int) -> None:
    clock, request = Clock(), Request()
    made: list[int] = []
    _, done = start(request, chunks(count, made), clock)
    clock.advance(0)
    assert done == [None] and len(request.written) == count


def twisted_request() -> tuple[server.Request, http.HTTPChannel]:
    """A request of Twisted's own on its HTTP channel: what it does when the connection is lost."""
    channel = http.HTTPChannel()
    channel.site = server.Site(Resource())  # type: ignore[attr-defined]
    channel.makeConnection(StringTransport())
    request = server.Request(channel)
    request.method, request.uri, request.clientproto = b"GET", b"/x", b"HTTP/1.1"
    channel.requests.append(request)
    return request, channel


@pytest.mark.parametrize("paused", [False, True], ids=["writing", "paused"])
def test_a_connection_lost_mid_list_ends_the_writing_without_an_error(paused: bool) -> None:
    """A client that goes away, or a connection the server cuts (a stalled client), while a list is
    written or waits for the transport: the writing ends quietly, its chunks closed."""
    clock = Clock()
    request, channel = twisted_request()
    made: list[int] = []
    closed: list[bool] = []

    async def source() -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in chunks(1000, made):
                yield chunk
        finally:
            closed.append(True)

    results: list[Any] = []
    writing = Deferred.fromCoroutine(
        write_streamed(request, source(), clock, lambda: request.setResponseCode(200))
    )
    writing.addBoth(results.append)
    if paused:
        channel.pauseProducing()  # the transport is full
        clock.advance(0)
        assert made == [0, 1] and not clock.getDelayedCalls()  # waits for the transport
    else:
        assert made == [0] and clock.getDelayedCalls()  # waits for the next reactor turn
    channel.connectionLost(Failure(ConnectionLost()))
    clock.advance(0)
    assert results == [None]
    assert made == ([0, 1] if paused else [0]) and closed == [True]  # nothing more made
