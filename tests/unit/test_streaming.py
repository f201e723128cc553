"""Streamed responses: a chunk per reactor turn, paused while the client is slow, stopped when it goes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from payloadtags.api.streaming import write_incrementally


class Request:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None
        self.registrations = 0
        self.channel = self
        self.aborted = False

    def forceAbortClient(self) -> None:
        self.aborted = True

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming and self.producer is None
        self.producer = producer
        self.registrations += 1

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)


def chunks(count: int, made: list[int]) -> Iterator[bytes]:
    for i in range(count):
        made.append(i)  # formatted only when the writer asks: one chunk in memory at a time
        yield b"%d" % i


def start(request: Request, count: int, clock: Clock, made: list[int]) -> list[Any]:
    results: list[Any] = []
    Deferred.fromCoroutine(write_incrementally(request, chunks(count, made), clock)).addBoth(results.append)  # type: ignore[arg-type]
    return results


def test_one_chunk_per_reactor_turn() -> None:
    clock, request = Clock(), Request()
    made: list[int] = []
    done = start(request, 3, clock, made)
    # The first chunk is written, the next waits for the reactor: other work runs in between.
    assert request.written == [b"0"] and made == [0]
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)  # a Clock runs the calls made meanwhile too: the rest goes out
    assert request.written == [b"0", b"1", b"2"]
    assert done == [None] and request.producer is None


def test_a_paused_transport_stops_the_writer_until_it_resumes() -> None:
    clock, request = Clock(), Request()
    made: list[int] = []
    done = start(request, 5, clock, made)
    request.producer.pauseProducing()
    clock.advance(0)
    assert request.written == [b"0", b"1"]
    clock.advance(1)
    assert request.written == [b"0", b"1"] and made == [0, 1]  # nothing formatted while paused
    assert not clock.getDelayedCalls()
    request.producer.resumeProducing()
    clock.advance(0)
    assert request.written == [b"%d" % i for i in range(5)]
    assert done == [None]


def test_a_client_that_goes_away_ends_the_writing() -> None:
    clock, request = Clock(), Request()
    made: list[int] = []
    done = start(request, 1000, clock, made)
    request.producer.stopProducing()
    clock.advance(0)
    assert request.written == [b"0"] and made == [0]
    assert done == [None] and request.producer is None


def test_a_list_cut_short_by_the_deadline_drops_the_connection() -> None:
    """Finishing the response would end the chunked body like a complete list: the client must see a
    broken response instead."""
    clock, request = Clock(), Request()
    made: list[int] = []
    writing = Deferred.fromCoroutine(write_incrementally(request, chunks(1000, made), clock))  # type: ignore[arg-type]
    results: list[Any] = []
    writing.addBoth(results.append)
    writing.cancel()
    assert request.aborted and request.written == [b"0"] and request.producer is None
    assert len(results) == 1


def test_a_client_already_gone_is_not_aborted_again() -> None:
    clock, request = Clock(), Request()
    made: list[int] = []
    writing = Deferred.fromCoroutine(write_incrementally(request, chunks(1000, made), clock))  # type: ignore[arg-type]
    request.producer.stopProducing()
    writing.cancel()
    assert not request.aborted


def test_nothing_is_written_for_a_client_already_gone() -> None:
    clock, request = Clock(), Request()
    request.channel = None  # type: ignore[assignment]
    made: list[int] = []
    done = start(request, 3, clock, made)
    assert done == [None] and request.written == [] and made == [] and request.registrations == 0
