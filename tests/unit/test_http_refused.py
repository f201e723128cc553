"""The channel tells its admission of each request it answers itself once the request's head is read
(refused by admission, a body too large or late): the site never sees those, and the admission counts
them as the site counts what it answers (review r1obs F2). Nothing is told of a head it refused (no
request to name) nor of a request handed to the site (the site counts it)."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.server import Request

from payloadtags.api.errors import ApiError
from payloadtags.http.channel import GuardedChannel, GuardedSite
from payloadtags.limits import HEAD_BYTES, HttpLimits
from tests.support.held_site import Admitting, Held


class _Deciding(Admitting):
    """Refuses with ``answer``, at once, or when the test fires the admission (``later``)."""

    def __init__(self, answer: ApiError | None, later: bool = False) -> None:
        super().__init__()
        self.answer = answer
        self.later = later
        self.pending: list[Deferred[ApiError | None]] = []

    def admit(self, request: Request) -> Deferred[ApiError | None]:
        if not self.later:
            return succeed(self.answer)
        self.pending.append(Deferred())
        return self.pending[-1]


def _site(admission: Admitting, clock: Clock, limits: HttpLimits | None = None) -> tuple[Held, GuardedSite]:
    held = Held()
    admission.clock = clock.seconds  # the seconds it is told a refusal took are the test's
    return held, GuardedSite(held, limits or HttpLimits(), admission, reactor=clock, monotonic=clock.seconds)


def _connected(site: GuardedSite) -> tuple[GuardedChannel, StringTransport]:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.9", 5555))
    assert isinstance(channel, GuardedChannel)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def test_a_body_refused_by_admission_is_told_with_its_method_target_and_code() -> None:
    clock = Clock()
    admission = _Deciding(ApiError(401, "Unauthorized", "Unauthorized"))
    _, site = _site(admission, clock)
    channel, transport = _connected(site)
    channel.dataReceived(b"DELETE /x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 401 ")
    assert admission.refusals == [(b"DELETE", b"/x?y=1", 401, 0.0)]


def test_a_request_past_its_deadline_while_admitted_is_told_with_the_time_since_its_head() -> None:
    clock = Clock()
    admission = _Deciding(None, later=True)
    _, site = _site(admission, clock)
    channel, transport = _connected(site)
    clock.advance(3)  # the head is slow to come: not counted, as a request's time starts once it is read
    channel.dataReceived(b"DELETE /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    clock.advance(HttpLimits().request_timeout)
    assert transport.value().startswith(b"HTTP/1.1 504 ")
    assert admission.refusals == [(b"DELETE", b"/x", 504, HttpLimits().request_timeout)]


def test_bodies_too_large_declared_or_sent_are_told() -> None:
    clock = Clock()
    admission = _Deciding(None)
    _, site = _site(admission, clock, HttpLimits(max_request_body_bytes=100))
    declared, declared_out = _connected(site)
    declared.dataReceived(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n")
    chunked, chunked_out = _connected(site)
    chunked.dataReceived(b"PATCH /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunked.dataReceived(b"40\r\n" + b"a" * 64 + b"\r\n40\r\n")
    assert declared_out.value().startswith(b"HTTP/1.1 413 ")
    assert chunked_out.value().startswith(b"HTTP/1.1 413 ")
    assert admission.refusals == [(b"PUT", b"/x", 413, 0.0), (b"PATCH", b"/y", 413, 0.0)]


def test_neither_a_refused_head_nor_a_request_the_site_answers_is_told() -> None:
    clock = Clock()
    admission = _Deciding(None)
    held, site = _site(admission, clock)
    answered, _ = _connected(site)
    answered.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    clock.advance(0)
    (request,) = held.held
    request.setResponseCode(401)  # the site counts its own answers, whatever their code
    request.finish()
    too_big, too_big_out = _connected(site)
    too_big.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\nX: " + b"a" * HEAD_BYTES + b"\r\n\r\n")
    assert too_big_out.value().startswith(b"HTTP/1.1 431 ")
    assert admission.refusals == []


def test_a_head_refused_after_an_answered_request_on_the_same_connection_tells_nothing_of_it() -> None:
    # Review r2obs L1: the request handed to the site is no longer the channel's to tell (the site
    # counted it); the refused head of the next one on the keep-alive connection must not tell it again.
    clock = Clock()
    admission = _Deciding(None)
    held, site = _site(admission, clock)
    channel, transport = _connected(site)
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    clock.advance(0)
    (request,) = held.held
    request.setResponseCode(200)
    request.finish()
    clock.advance(0)
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\nX: " + b"a" * HEAD_BYTES + b"\r\n\r\n")
    assert b"HTTP/1.1 200 " in transport.value()
    assert b"HTTP/1.1 431 " in transport.value()
    assert admission.refusals == []


def test_every_request_is_told_once_as_its_head_is_read_with_a_body_or_without() -> None:
    # Review r2dead F2: only a request with a body was timed from its head (by its admission); one
    # without was timed from its handler, after any wait for its client's turn.
    clock = Clock()
    admission = _Deciding(None)
    held, site = _site(admission, clock)
    bare, _ = _connected(site)
    with_body, _ = _connected(site)
    clock.advance(2)
    bare.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    clock.advance(1)
    with_body.dataReceived(b"GET /y HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}")
    clock.advance(0)
    assert [request.uri for request in held.held] == [b"/x", b"/y"]
    assert [(request.uri, at) for request, at in admission.heads.items()] == [(b"/x", 2.0), (b"/y", 3.0)]
