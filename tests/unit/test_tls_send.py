"""When the server's TLS layer (GuardedTLS) sends what the channel writes: a whole response in the turn
of the reactor that ends it, the pieces of a response written over several turns together in the next
turn, nothing past what the client reads, and a failed send closing the connection.

The stack is the server's own from the TLS layer up (GuardedTLSFactory, LimitedConnections,
GuardedChannel), with real TLS to a client in the test; under it a TCP transport (Twisted's
FileDescriptor, as the reactor's TCP connections are) whose socket the test plays, on a clock whose
turns the test makes: a turn runs the calls due, then asks each transport registered for writing to
write, as the reactor does once its socket is writable."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet import main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from payloadtags.api.errors import ApiError
from payloadtags.http.channel import (
    BUFFERED_PIECES,
    CLOSE_GRACE,
    STALL_CHECK,
    ClientConnection,
    GuardedChannel,
    GuardedSite,
    GuardedTLS,
    GuardedTLSFactory,
    LimitedConnections,
    _no_front_proxy,
)
from payloadtags.limits import HttpLimits
from payloadtags.tls import (
    DEFAULT_TLS12_SUITES,
    ContextFactory,
    ServingCertificate,
    TlsOptions,
    server_context,
)
from tests.support.held_site import Admitting as _Admitting
from tests.support.held_site import Held as _Held

# Also a CBC suite, as --tls-cipher-suites may name (the default has none), for the TLS 1.2 CBC client.
_SUITES = (*DEFAULT_TLS12_SUITES, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA")
_SERVER_CONTEXT = ContextFactory(
    server_context(ServingCertificate.self_signed(), (), TlsOptions(cipher_suites=_SUITES))
)


class _Loop:
    """The reactor under the TCP transport: the test's clock, and the transports registered for
    writing, each asked to write once a turn (its socket is always writable: how much it takes is
    the socket's)."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.writers: list[FileDescriptor] = []
        self.readers: set[object] = set()  # the transports reading: only they get what the client sends

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kwargs)

    def addReader(self, reader: object) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: object) -> None:
        self.readers.discard(reader)

    def addWriter(self, writer: FileDescriptor) -> None:
        if writer not in self.writers:
            self.writers.append(writer)

    def removeWriter(self, writer: FileDescriptor) -> None:
        if writer in self.writers:
            self.writers.remove(writer)

    def turn(self) -> None:
        self.clock.advance(0)
        for writer in list(self.writers):
            why = writer.doWrite()
            if why is not None:  # as the reactor: the transport is closed with the reason
                self.removeWriter(writer)
                writer.connectionLost(Failure(why))


class _PlayedSocket:
    """The TCP transport's socket (``tcp.Connection.socket``), played by the test: its sends are the
    transport's `_Socket.take` (GuardedTLS sends to it when the transport holds nothing)."""

    def __init__(self, transport: _Socket) -> None:
        self.transport = transport

    def send(self, data: Any, flags: int = 0) -> int:
        if self.transport.reset:
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        return self.transport.take(bytes(data))


class _Socket(FileDescriptor):
    """Twisted's TCP transport with the socket played by the test: it takes what the client reads
    (``room``: None for everything) into ``sent``, or fails as a reset connection does. ``sends``: the
    size of each send (the transport's own, and GuardedTLS's to its socket)."""

    def __init__(self, loop: _Loop) -> None:
        super().__init__(reactor=loop)  # type: ignore[arg-type]
        self.connected = 1
        self.sent = bytearray()
        self.sends: list[int] = []
        self.room: int | None = None
        self.reset = False
        self.lost: list[Failure] = []
        self.protocol: Any = None
        self.socket = _PlayedSocket(self)
        self.startReading()  # as tcp.Connection

    def take(self, data: bytes) -> int:
        taken = len(data) if self.room is None else min(len(data), self.room)
        if self.room is not None:
            self.room -= taken
        self.sent += data[:taken]
        self.sends.append(taken)
        return taken

    def writeSomeData(self, data: bytes) -> int | Exception:
        if self.reset:
            return main.CONNECTION_LOST  # tcp.Connection.writeSomeData's answer to ECONNRESET
        return self.take(data[: self.SEND_LIMIT])  # as tcp.Connection.writeSomeData: at most this a send

    def abortConnection(self) -> None:
        # tcp.Connection's (_AbortingMixin): the protocol hears of it in the next turn.
        self.stopReading()
        self.stopWriting()
        self.reactor.callLater(0, self.connectionLost, Failure(ConnectionAborted()))  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure) -> None:
        if self.lost:
            return
        self.lost.append(reason)
        super().connectionLost(reason)
        self.protocol.connectionLost(reason)

    def unsent(self) -> int:
        return len(self.dataBuffer) - self.offset + self._tempDataLen

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.9", 5555)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 443)

    def getHandle(self) -> None:
        return None

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class _Connection:
    """One client connection to the server's TLS layer, over a _Socket, handshake done."""

    def __init__(self, idle_timeout: float = 60.0, client_context: SSL.Context | None = None) -> None:
        self.loop = _Loop()
        self.resource = _Held()
        site = GuardedSite(
            self.resource,
            HttpLimits(idle_timeout=idle_timeout),
            _Admitting(),
            reactor=self.loop.clock,
            monotonic=self.loop.clock.seconds,
        )
        table = LimitedConnections(site, 10, front_proxy=_no_front_proxy)
        factory = GuardedTLSFactory(_SERVER_CONTEXT, False, table, clock=self.loop.clock)
        tls = factory.buildProtocol(IPv4Address("TCP", "127.0.0.9", 5555))
        assert isinstance(tls, GuardedTLS)
        self.tls = tls
        self.socket = _Socket(self.loop)
        self.socket.protocol = tls
        tls.makeConnection(self.socket)
        self.loop.turn()  # the connection's turn to read
        wrapper = tls.wrappedProtocol
        assert isinstance(wrapper, ClientConnection)
        assert isinstance(wrapper.wrappedProtocol, GuardedChannel)
        self.channel = wrapper.wrappedProtocol
        context = client_context or SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.client = SSL.Connection(context, None)
        self.client.set_connect_state()
        self.plain = bytearray()
        for _ in range(10):
            try:
                self.client.do_handshake()
                break
            except SSL.WantReadError:
                self._to_server()
                self.loop.turn()
                self._from_server()
        else:
            raise AssertionError("no TLS handshake")
        self.loop.turn()

    def _to_server(self) -> None:
        while True:
            try:
                data = self.client.bio_read(1 << 16)
            except SSL.WantReadError:
                return
            self.tls.dataReceived(data)

    def _from_server(self) -> None:
        data, self.socket.sent = bytes(self.socket.sent), bytearray()
        if data:
            self.client.bio_write(data)

    def send(self, data: bytes) -> None:
        self.client.sendall(data)
        self._to_server()

    def received(self) -> bytes:
        """What the client has read of the server's answers so far (from what the socket took)."""
        self._from_server()
        while True:
            try:
                self.plain += self.client.recv(1 << 16)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                return bytes(self.plain)


def _get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n"


def _answer(request: Request, body: bytes) -> None:
    request.setHeader(b"content-length", str(len(body)).encode())
    request.write(body)
    request.finish()


def test_a_whole_response_is_on_the_socket_in_the_turn_that_ends_it() -> None:
    """Without this, Twisted's TLS layer held the response until the reactor's next turn, and the
    TCP transport sent it once the reactor, a turn later, found its socket writable: here no turn
    passes between the response's end and the socket's send."""
    connection = _Connection()
    connection.send(_get(b"/a"))
    connection.loop.turn()  # the request's turn: the resource holds it
    (request,) = connection.resource.held
    _answer(request, b"the answer")
    received = connection.received()  # no turn of the clock or the loop since
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.endswith(b"\r\n\r\nthe answer")
    assert connection.socket.unsent() == 0
    assert connection.loop.writers == []  # nothing left for the reactor to send


def test_the_writes_of_a_response_written_over_turns_go_out_together_in_the_next_turn() -> None:
    """A response written in pieces (a list in chunks, a watch) is held and sent a turn later, its
    pieces in one TLS record, as Twisted's BufferingTLSTransport does; its last piece goes at once."""
    connection = _Connection()
    connection.send(_get(b"/a"))
    connection.loop.turn()
    (request,) = connection.resource.held
    request.write(b"one ")
    request.write(b"two ")
    assert connection.received() == b""  # held for the turn
    connection.loop.turn()
    first = connection.received()
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"one \r\n4\r\ntwo \r\n")
    request.write(b"three")
    request.finish()
    assert connection.received() == first + b"5\r\nthree\r\n0\r\n\r\n"


def test_pipelined_requests_are_answered_in_order_each_in_the_turn_that_ends_it() -> None:
    connection = _Connection()
    connection.send(_get(b"/a") + _get(b"/b") + _get(b"/c"))
    connection.loop.turn()
    answered = b""
    for index, path in enumerate((b"/a", b"/b", b"/c")):
        request = connection.resource.held[index]
        assert request.path == path
        assert len(connection.resource.held) == index + 1  # the next waits for this one's answer
        _answer(request, path)
        answered = connection.received()
        assert answered.count(b"HTTP/1.1 200 OK") == index + 1 and answered.endswith(b"\r\n\r\n" + path)
        connection.loop.turn()  # the next pipelined request is parsed in the next turn
    assert answered.count(b"HTTP/1.1 200 OK") == 3


def test_a_client_that_does_not_read_a_large_response_holds_it_alone_and_the_next_request_waits() -> None:
    """Backpressure: a large answer to a client that reads nothing stays in the TCP transport (one
    response's worth), the pipelined request behind it is not parsed, and once the client reads it
    all, the next request is answered and sent as before."""
    connection = _Connection()
    connection.socket.room = 0  # the client reads nothing
    connection.send(_get(b"/big") + _get(b"/small"))
    connection.loop.turn()
    (big,) = connection.resource.held
    _answer(big, b"x" * 300_000)
    for _ in range(5):
        connection.loop.turn()
    assert connection.received() == b""
    assert 300_000 < connection.socket.unsent() < 310_000  # the one response, in TLS records
    assert len(connection.resource.held) == 1  # the next request waits for the client to read
    assert connection.channel._waitingForTransport
    connection.socket.room = None  # it reads again
    for _ in range(3):
        connection.loop.turn()
    assert len(connection.resource.held) == 2
    _answer(connection.resource.held[1], b"small")
    received = connection.received()
    assert received.count(b"HTTP/1.1 200 OK") == 2 and received.endswith(b"\r\n\r\nsmall")
    assert connection.socket.unsent() == 0


class _Answering(_Held):
    """Answers every request at once with a body of ``size`` bytes, counting them."""

    size = 0

    def render_GET(self, request: Request) -> bytes:  # type: ignore[override]
        self.held.append(request)
        body = b"y" * self.size
        request.setHeader(b"content-length", str(len(body)).encode())
        return body


@pytest.mark.parametrize("size", [200, 18_000, 64_000])
def test_a_client_that_does_not_read_holds_the_transports_buffer_and_one_answer(size: int) -> None:
    """docs/hardening.md's bound: the next pipelined request is parsed while the TCP transport holds
    no more than its buffer (64 KiB) of unsent answers, so a client that reads nothing holds those
    and the answer that crossed them, whatever the answers' size; the requests behind wait unparsed."""
    connection = _Connection()
    resource = _Answering()
    resource.size = size
    connection.channel.site.resource = resource
    connection.socket.room = 0  # the client reads nothing
    count = 2 + 2 * connection.socket.bufferSize // size
    connection.send(b"".join(_get(b"/%03d" % index) for index in range(count)))
    for _ in range(count + 5):
        connection.loop.turn()
    unsent = connection.socket.unsent()
    answer = size + 1_000  # its head and TLS framing
    assert connection.socket.bufferSize < unsent <= connection.socket.bufferSize + answer
    assert unsent // answer <= len(resource.held) < count  # the rest are not parsed
    assert connection.channel._waitingForTransport


def test_a_response_whose_send_fails_closes_the_connection() -> None:
    """The client reset the connection while its answer was being made: the send at the answer's end
    fails, and the connection is closed (its request told so) in the next turn, as the reactor
    closes one whose send fails."""
    connection = _Connection()
    connection.send(_get(b"/a"))
    connection.loop.turn()
    (request,) = connection.resource.held
    gone: list[Failure] = []
    request.notifyFinish().addErrback(gone.append)
    connection.socket.reset = True
    _answer(request, b"the answer")
    assert not connection.socket.lost  # not under the channel finishing its response
    connection.loop.turn()
    (reason,) = connection.socket.lost
    assert reason.check(ConnectionLost)
    assert connection.channel._lost
    assert connection.loop.writers == []


class _FailingSend:
    """The server's OpenSSL connection, but its sends after the first ``good`` fail as OpenSSL's
    SSL_write does on a fatal error; the failing one first has OpenSSL write a record of ``wrote``
    (standing for what OpenSSL writes for the error, an alert)."""

    def __init__(self, real: SSL.Connection, good: int = 0, wrote: bytes = b"") -> None:
        self.real = real
        self.good = good
        self.wrote = wrote

    def send(self, data: Any, flags: int = 0) -> int:
        if self.good == 0:
            if self.wrote:
                self.real.send(self.wrote)
            raise SSL.Error([("SSL routines", "", "simulated fatal error")])
        self.good -= 1
        return self.real.send(data, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_tls_error_while_encrypting_a_response_closes_the_connection() -> None:
    """As Twisted's TLS layer does: an error from OpenSSL while it encrypts a response ends the TLS
    connection and closes the transport; the client is not left waiting until the idle timeout for
    an answer that will never come."""
    connection = _Connection()
    connection.send(_get(b"/a"))
    connection.loop.turn()
    (request,) = connection.resource.held
    connection.tls._tlsConnection = _FailingSend(connection.tls._tlsConnection)  # type: ignore[assignment]
    request.setHeader(b"content-length", b"100000")
    request.write(b"z" * 100_000)  # past HOLD: encrypted now
    for _ in range(3):
        connection.loop.turn()
    assert connection.tls._lostTLSConnection
    assert connection.socket.lost or connection.socket.disconnecting


def test_the_records_made_before_a_tls_error_reach_the_client_before_the_connection_closes() -> None:
    """As Twisted's TLS layer, which hands each record to the transport as it is made: what OpenSSL
    encrypted of a response before an error is sent, then what it wrote for the error (by Twisted's
    own shutdown of the TLS connection, which flushes OpenSSL's output), then the connection is
    closed. Out of order the client could not decrypt them (each record's MAC counts its place)."""
    connection = _Connection()
    connection.send(_get(b"/a"))
    connection.loop.turn()
    (request,) = connection.resource.held
    failing = _FailingSend(connection.tls._tlsConnection, good=1, wrote=b"<for the error>")
    connection.tls._tlsConnection = failing  # type: ignore[assignment]
    request.setHeader(b"content-length", b"100000")
    request.write(b"z" * 100_000)  # past HOLD: encrypted now, its first record only
    assert b"z" * 1000 in connection.received()  # the record made before: out at once
    for _ in range(3):
        connection.loop.turn()
    received = connection.received()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.endswith(b"z" * 1000 + b"<for the error>") and len(received) <= 16_384 + 15
    assert connection.tls._lostTLSConnection
    assert connection.socket.lost


def test_a_client_gone_mid_response_closes_the_connection_and_its_request_hears_of_it() -> None:
    connection = _Connection()
    connection.send(_get(b"/a"))
    connection.loop.turn()
    (request,) = connection.resource.held
    ended: list[object] = []
    request.notifyFinish().addBoth(ended.append)
    request.write(b"part of it")
    connection.loop.turn()
    assert connection.received().endswith(b"part of it\r\n")
    connection.socket.reset = True
    request.write(b"more")
    connection.loop.turn()  # the held piece's send fails: the reactor closes the connection
    assert connection.socket.lost and connection.channel._lost
    assert len(ended) == 1 and isinstance(ended[0], Failure)
    request.write(b"written after the close")  # dropped, as Twisted's TLS layer drops them
    connection.loop.turn()
    assert connection.loop.writers == []


@implementer(IPushProducer)
class _Producer:
    def __init__(self) -> None:
        self.told: list[str] = []

    def pauseProducing(self) -> None:
        self.told.append("pause")

    def resumeProducing(self) -> None:
        self.told.append("resume")

    def stopProducing(self) -> None:
        self.told.append("stop")


def test_the_tcp_transports_write_called_by_the_tls_layer_resumes_only_a_paused_producer() -> None:
    """GuardedTLS.send_response calls the TCP transport's doWrite (what the reactor calls once the
    socket is writable) first thing in the channel's requestDone. There a whole send stops writing
    and tells the producer (the channel) nothing unless the transport had paused it, and a failed
    send answers the reason and leaves the transport as it was, its bytes kept and registered for
    writing, closing nothing. Twisted changing any of that would make the call unsafe there (a channel
    resumed in the middle of requestDone, a connection closed under it): re-check send_response."""
    loop = _Loop()
    tcp = _Socket(loop)
    producer = _Producer()
    tcp.registerProducer(producer, True)
    tcp.write(b"a response")
    assert loop.writers == [tcp] and not tcp.producerPaused
    assert tcp.doWrite() is None
    assert bytes(tcp.sent) == b"a response" and tcp.unsent() == 0
    assert loop.writers == [] and producer.told == []
    tcp.write(b"x" * (tcp.bufferSize + 1))  # more than its buffer: the producer is paused
    assert producer.told == ["pause"] and tcp.producerPaused
    assert tcp.doWrite() is None
    assert tcp.unsent() == 0 and producer.told == ["pause", "resume"] and loop.writers == []
    tcp.write(b"another")
    tcp.reset = True
    assert tcp.doWrite() is main.CONNECTION_LOST
    assert tcp.unsent() == len(b"another") and loop.writers == [tcp]
    assert producer.told == ["pause", "resume"] and not tcp.disconnected and not tcp.lost


def test_a_page_past_the_transports_buffer_goes_to_the_socket_in_one_send_its_channel_never_paused() -> None:
    """A page of 500 tags (170 kB) written at once, to a socket that takes it all (the kernel's send
    buffer, SEND_BUFFER, is larger): one send, in the turn it is written, and the channel is never
    paused. Twisted's TLS layer handed the TCP transport a write per 16 kB record, the transport
    paused the channel (stalled, its eviction rank told) past its 64 kB buffer, and sent 128 kB a
    turn: two sends a reactor turn apart, and a stall and resume, for every page (issue #11)."""
    connection = _Connection()
    connection.send(_get(b"/page"))
    connection.loop.turn()
    (page,) = connection.resource.held
    kinds: list[str] = []
    arm = connection.channel._arm

    def noted(seconds: float, kind: str) -> None:
        kinds.append(kind)
        arm(seconds, kind)

    connection.channel._arm = noted  # type: ignore[method-assign]
    connection.received()  # what was sent before (the handshake's last records)
    connection.socket.sends.clear()
    body = b"x" * 170_000
    _answer(page, body)
    assert connection.received().endswith(b"\r\n\r\n" + body)  # all of it, in this turn
    assert len(connection.socket.sends) == 1  # head, body and their records in one send
    assert "stalled" not in kinds and not connection.socket.producerPaused
    assert connection.socket.unsent() == 0 and connection.loop.writers == []


class _Encrypting:
    """The server's OpenSSL connection, watched: how much plain text it has encrypted into its memory
    BIO and not yet given out (``held``), and the most it ever held (``most``). A memory BIO gives
    what it holds up to the size asked, so a read that gives less than asked, or nothing, empties
    it."""

    def __init__(self, real: SSL.Connection) -> None:
        self.real = real
        self.held = 0
        self.most = 0

    def send(self, data: Any, flags: int = 0) -> int:
        taken = self.real.send(data, flags)
        self.held += taken
        self.most = max(self.most, self.held)
        return taken

    def bio_read(self, size: int) -> bytes:
        try:
            piece = self.real.bio_read(size)
        except SSL.WantReadError:
            self.held = 0
            raise
        if len(piece) < size:
            self.held = 0
        return piece

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _tls12_cbc_without_encrypt_then_mac() -> SSL.Context:
    # Go's TLS 1.2 client has no encrypt-then-MAC; with a CBC suite OpenSSL then encrypts up to eight
    # records in one SSL_write (its multi-block path) when handed more than 64 kB (review r5send F1).
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.set_cipher_list(b"ECDHE-ECDSA-AES128-SHA")
    context.set_options(0x80000)  # SSL_OP_NO_ENCRYPT_THEN_MAC
    return context


@pytest.mark.parametrize(
    "client_context", [None, _tls12_cbc_without_encrypt_then_mac], ids=["tls13", "tls12-cbc"]
)
def test_a_pages_records_are_read_out_of_openssl_one_by_one_and_still_sent_in_one_send(
    client_context: Callable[[], SSL.Context] | None,
) -> None:
    """OpenSSL's memory BIO grows to the most it ever held and never gives the memory back: a page
    (170 kB) encrypted whole before it was read out kept 170 kB allocated for as long as its
    kept-alive connection lived, idle or not (about 128 kB a connection more, measured on the real
    server). Each record is made from 16 kB at most and read out as it is made, so the BIO never
    holds more than one (16 kB of plain text), whatever the suite; the records still go to the
    socket in one send."""
    connection = _Connection(client_context=client_context() if client_context else None)
    connection.send(_get(b"/page"))
    connection.loop.turn()
    (page,) = connection.resource.held
    watched = _Encrypting(connection.tls._tlsConnection)
    connection.tls._tlsConnection = watched  # type: ignore[assignment]
    connection.received()  # what was sent before (the handshake's last records)
    connection.socket.sends.clear()
    body = b"x" * 170_000
    _answer(page, body)
    assert connection.received().endswith(b"\r\n\r\n" + body)
    assert len(connection.socket.sends) == 1
    assert watched.held == 0
    assert 0 < watched.most <= 16_384  # a record's plain text at most (TLS's 2**14)


def test_a_large_response_the_socket_does_not_take_whole_goes_on_in_the_next_turns() -> None:
    """A page larger than what the socket takes at once: what it takes goes in the turn the page is
    written, the rest waits in the TCP transport (which pauses the channel) and goes in the
    reactor's next turns, and the next pipelined request is answered once all of it is sent."""
    connection = _Connection()
    connection.send(_get(b"/big") + _get(b"/small"))
    connection.loop.turn()
    (big,) = connection.resource.held
    connection.socket.room = 100_000  # what the socket's buffer has room for now
    _answer(big, b"x" * 300_000)
    sent = len(connection.received())
    assert 0 < sent < 300_000  # in this turn: what the socket took
    assert connection.channel._waitingForTransport and len(connection.resource.held) == 1
    connection.socket.room = None  # the client reads on
    for _ in range(4):
        connection.loop.turn()
    assert len(connection.resource.held) == 2
    _answer(connection.resource.held[1], b"small")
    received = connection.received()
    assert received.count(b"HTTP/1.1 200 OK") == 2 and received.endswith(b"\r\n\r\nsmall")
    assert received.count(b"x") >= 300_000


def test_a_write_held_while_the_transport_still_holds_an_earlier_one_goes_out_after_it() -> None:
    """A streamed answer: a 300 kB piece the socket takes a third of (the TCP transport holds the
    rest), then, the client reading again, a small piece sent in the next turn before the reactor
    asks the transport to write. The small piece's records go behind the transport's, not to the
    socket ahead of them: the client's TLS fails on records out of order."""
    connection = _Connection()
    connection.send(_get(b"/stream"))
    connection.loop.turn()
    (request,) = connection.resource.held
    connection.socket.room = 100_000
    request.write(b"a" * 300_000)  # past HOLD: encrypted and sent at once
    assert connection.socket.unsent() > 0
    connection.socket.room = None  # the client reads again
    request.write(b"tail")  # held for the next turn
    connection.loop.turn()  # its sending runs before the transport's doWrite
    for _ in range(5):
        connection.loop.turn()
    try:
        received = connection.received()
    except SSL.Error as error:
        raise AssertionError(f"the client's TLS failed: records out of order ({error})") from None
    assert received.endswith(b"a" * 1000 + b"\r\n4\r\ntail\r\n")
    assert connection.socket.unsent() == 0


def test_a_response_past_the_buffer_sent_whole_at_its_end_leaves_the_next_request_to_the_next_turn() -> None:
    """A response larger than the TCP transport's buffer pauses the channel; when the socket takes it
    in one send at its end, that send resumes the channel. requestDone sends first, while its request
    is still being handled, so the resume only notes that the transport has room: sent later in
    requestDone, the resume parsed the next pipelined request inside Request.finish, before the
    finished request's notifyFinish callbacks ran (where the API gives back its in-flight seat)."""
    connection = _Connection()
    connection.send(_get(b"/big") + _get(b"/next"))
    connection.loop.turn()
    (big,) = connection.resource.held
    parsed_when_told: list[int] = []
    big.notifyFinish().addCallback(lambda _: parsed_when_told.append(len(connection.resource.held)))
    body = b"x" * (connection.socket.bufferSize + 4_000)  # pauses the channel, within one send
    assert len(body) + 1_000 < connection.socket.SEND_LIMIT
    _answer(big, body)
    assert connection.socket.unsent() == 0  # all of it on the socket in this turn
    assert parsed_when_told == [1]  # its end told with the next request not yet parsed
    assert len(connection.resource.held) == 1
    connection.loop.turn()
    assert [request.path for request in connection.resource.held] == [b"/big", b"/next"]
    _answer(connection.resource.held[1], b"next")
    received = connection.received()
    assert received.count(b"HTTP/1.1 200 OK") == 2 and received.endswith(b"\r\n\r\nnext")


def test_a_failed_send_at_a_responses_end_parses_no_request_pipelined_behind_it() -> None:
    """The send at a response's end fails (the client reset the connection) and the TCP transport is
    aborted there: the abort's connectionLost is due before requestDone's parse of the next pipelined
    request, so that request is never parsed, admitted or served for a client that is gone. Left to
    the reactor, the broken socket would be found at its next poll, after that parse."""
    connection = _Connection()
    connection.send(_get(b"/a") + _get(b"/b"))
    connection.loop.turn()
    (request,) = connection.resource.held
    connection.socket.reset = True
    _answer(request, b"the answer")
    for _ in range(3):
        connection.loop.turn()
    assert [held.path for held in connection.resource.held] == [b"/a"]  # /b never parsed
    (reason,) = connection.socket.lost
    assert reason.check(ConnectionAborted)  # closed by the abort, not by the reactor
    assert connection.channel._lost


def test_what_is_held_goes_out_before_a_close_made_in_the_same_turn() -> None:
    """A piece of a response is held for the turn's end, and the connection is closed in the same
    turn (a deadline, a drain): the held bytes are sent first, then the connection closes, as
    Twisted's BufferingTLSTransport did. Twisted's TLS layer drops what is written once it is
    closing, so without the send they were lost."""
    connection = _Connection()
    connection.send(_get(b"/a"))
    connection.loop.turn()
    (request,) = connection.resource.held
    request.write(b"part")
    assert connection.received() == b""  # held for the turn
    connection.channel._close()  # in the same turn as the write, as a deadline closes it
    for _ in range(3):
        connection.loop.turn()
    received = connection.received()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"\r\n4\r\npart\r\n")
    assert connection.tls.disconnecting
    connection.loop.clock.advance(CLOSE_GRACE)  # the client sends no close_notify back
    connection.loop.turn()
    assert connection.socket.lost and connection.channel._lost


def _send_on_while_read(connection: _Connection) -> tuple[bytes, int]:
    """The client pipelines 100 requests at a time (about 3.3 kB) for 300 turns, each delivered only
    while the connection is read, as the kernel delivers it: that chunk, and how much was sent."""
    chunk = b"".join(_get(b"/%05d" % index) for index in range(100))
    sent = 0
    for _ in range(300):
        if connection.socket in connection.loop.readers:
            connection.send(chunk)
            sent += len(chunk)
        connection.loop.turn()
    return chunk, sent


@pytest.mark.parametrize("size", [200, 18_000, 300_000])
def test_a_client_that_reads_no_answer_and_sends_on_is_not_read_past_16_kB_of_requests(size: int) -> None:
    """docs/hardening.md's bound on requests: once 16 kB of pipelined requests wait behind an answer
    the client does not read, the connection is no longer read (what the client sends on stays in its
    kernel's buffers), whatever the answers' size; once the client reads, every request is answered."""
    connection = _Connection()
    resource = _Answering()
    resource.size = size
    connection.channel.site.resource = resource
    connection.socket.room = 0  # the client reads nothing
    chunk, sent = _send_on_while_read(connection)
    buffered = sum(map(len, connection.channel._dataBuffer))
    assert buffered <= 16_384 + len(chunk)  # 16 kB and the read that went past them
    assert connection.socket not in connection.loop.readers  # the rest stays with the client
    assert connection.channel._waitingForTransport
    connection.socket.room = None  # it reads again: every request sent is answered, in order
    resource.size = 10  # (the rest small: the test is not about large answers sent)
    for _ in range(10 * sent // len(chunk) + 50):
        connection.loop.turn()
        connection.received()
    assert len(resource.held) == sent // len(_get(b"/00000"))
    assert [request.uri for request in resource.held] == [
        b"/%05d" % (i % 100) for i in range(len(resource.held))
    ]
    assert connection.received().count(b"HTTP/1.1 200 OK") == len(resource.held)
    assert connection.socket in connection.loop.readers


def test_a_client_that_reads_nothing_of_a_whole_response_is_closed_after_the_idle_timeout() -> None:
    connection = _Connection(idle_timeout=3.0)
    connection.socket.room = 0
    connection.send(_get(b"/big"))
    connection.loop.turn()
    (big,) = connection.resource.held
    _answer(big, b"x" * 300_000)
    connection.loop.turn()
    unsent = connection.socket.unsent()
    assert unsent > 300_000
    connection.loop.clock.pump([0.5] * 5)
    assert not connection.tls.disconnecting
    assert connection.socket.unsent() == unsent  # nothing more was buffered meanwhile
    connection.loop.clock.advance(STALL_CHECK)
    assert connection.tls.disconnecting  # closed: its answer is dropped with the connection
    connection.loop.clock.advance(CLOSE_GRACE)
    connection.loop.turn()
    assert connection.socket.lost and connection.channel._lost


def test_a_response_ending_on_a_closing_transport_is_left_to_the_reactor_which_closes_it_cleanly() -> None:
    """The TCP transport is already closing (its last bytes out, then the close) when a response ends:
    sending there would close it under the channel, so the reactor sends and closes it, cleanly."""
    connection = _Connection()
    connection.send(_get(b"/a"))
    connection.loop.turn()
    (request,) = connection.resource.held
    request.write(b"part")
    connection.socket.loseConnection()
    request.write(b" and the rest")
    request.finish()
    assert not connection.socket.lost
    connection.loop.turn()
    (reason,) = connection.socket.lost
    assert reason.check(ConnectionDone)
    assert connection.received().endswith(b"part\r\nd\r\n and the rest\r\n0\r\n\r\n")


class _HeldPosts(_Held):
    """Holds every request, one with a body too, until the test answers it."""

    def render_POST(self, request: Request) -> int:
        return self.render_GET(request)


def _post(body: bytes, framing: str) -> bytes:
    head = b"POST /body HTTP/1.1\r\nHost: a\r\n"
    if framing == "chunked":
        return head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    if framing == "100-continue":
        head += b"Expect: 100-continue\r\n"
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.mark.parametrize("framing", ["content-length", "chunked", "100-continue"])
def test_requests_pipelined_behind_a_body_are_not_read_past_16_kB(framing: str) -> None:
    """docs/hardening.md's bound on requests after a request with a body: what follows the body is
    kept for later, and once that passes 16 kB reading stops, whether or not the answer waits for
    the client. Twisted checks nothing there: a body ending in a large read (here the requests
    replayed from a full buffer) was followed by one more read, 130 kB held on a real server
    (review r3pipe F1)."""
    connection = _Connection()
    connection.resource = connection.channel.site.resource = _HeldPosts()
    behind = b"".join(_get(b"/%05d" % index) for index in range(800))  # about 26 kB
    connection.send(_get(b"/first") + _post(b"b" * 1000, framing) + behind)
    connection.loop.turn()
    (first,) = connection.resource.held
    assert connection.socket not in connection.loop.readers  # Twisted's own pause
    _answer(first, b"first")
    connection.loop.turn()  # the requests buffered are replayed: the POST is read whole
    post = connection.resource.held[1]
    assert post.content is not None and post.content.read() == b"b" * 1000
    channel = connection.channel
    assert channel._handlingRequest and not channel._waitingForTransport
    assert 16_384 < sum(map(len, channel._dataBuffer)) <= len(behind)
    assert connection.socket not in connection.loop.readers  # the rest stays with the client
    _answer(post, b"done")
    for index in range(3):  # and reading goes on with the requests held
        connection.loop.turn()
        _answer(connection.resource.held[index + 2], b"ok")
    assert connection.received().count(b"HTTP/1.1 200 OK") == 5


def test_a_body_over_16_kB_is_read_whole_and_the_request_behind_it_waits() -> None:
    """The bound on pipelined requests does not stop a body being read: reading stops only once a
    request is whole and being answered."""
    connection = _Connection()
    connection.resource = connection.channel.site.resource = _HeldPosts()
    body = bytes(range(256)) * 400  # 102 kB, over 16 kB and over one read
    connection.send(_post(body, "content-length") + _get(b"/next"))
    connection.loop.turn()
    (post,) = connection.resource.held
    assert post.content is not None and post.content.read() == body
    assert connection.socket in connection.loop.readers  # 40 bytes are buffered: still reading
    _answer(post, b"done")
    connection.loop.turn()
    assert [request.path for request in connection.resource.held] == [b"/body", b"/next"]


def test_requests_pipelined_in_one_byte_tls_records_are_held_in_a_bounded_number_of_pieces() -> None:
    """A client that sends each byte of its pipelined requests in its own TLS record, behind an answer
    it does not read: the channel gets one piece per record. Held one object each and summed whole
    after each, 16 kB of them were 571 kB of objects and a quadratic count of additions (seconds of
    CPU, review r3pipe L1); here they are joined past BUFFERED_PIECES, so the pieces held and the
    work per record stay bounded."""
    connection = _Connection()
    resource = _Answering()
    resource.size = 300_000
    connection.channel.site.resource = resource
    connection.socket.room = 0  # the client reads nothing
    connection.send(_get(b"/first"))
    for _ in range(5):
        connection.loop.turn()
    channel = connection.channel
    assert channel._waitingForTransport
    stream = b"".join(_get(b"/%05d" % index) for index in range(1000))  # 30 kB
    pieces = objects = sent = 0
    while connection.socket in connection.loop.readers:
        for byte in range(sent, sent + 2800):  # about one TCP read (64 KiB) of 1-byte records
            connection.client.send(stream[byte : byte + 1])
        sent += 2800
        connection._to_server()
        pieces = max(pieces, len(channel._dataBuffer))
        objects = max(objects, sum(map(sys.getsizeof, channel._dataBuffer)))
        connection.loop.turn()
    assert pieces <= BUFFERED_PIECES + 1
    assert objects < 2 * (16_384 + 2800)  # the bytes held, and little else
    assert 16_384 < sum(map(len, channel._dataBuffer)) <= 16_384 + 2800


class _LaterAdmission(_Admitting):
    """Admits each request when the test says so (an authentication that asks the cluster API)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Deferred[ApiError | None]] = []

    def admit(self, request: Request) -> Deferred[ApiError | None]:
        self.waiting.append(Deferred())
        return self.waiting[-1]


def test_what_comes_with_a_head_in_one_byte_tls_records_is_held_in_a_bounded_number_of_pieces() -> None:
    """What comes in the read that brought the head of a request with a body is kept while the
    request is authenticated, a piece per TLS record; in one-byte records, a read of 2,850 was 2,850
    objects (120 kB for 2,850 bytes) for as long as a TokenReview takes (review r4chan L2). Here they
    are joined past BUFFERED_PIECES, and read as they came once the request is admitted."""
    connection = _Connection()
    admission = _LaterAdmission()
    connection.channel.site.admission = admission
    connection.resource = connection.channel.site.resource = _HeldPosts()
    head = b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n"
    behind = b"".join(_get(b"/%05d" % index) for index in range(100))
    stream = head + b"{}" + behind
    for byte in range(len(stream)):  # 1-byte records, read before admission answers
        connection.client.send(stream[byte : byte + 1])
    connection._to_server()
    held = connection.channel._held
    assert len(admission.waiting) == 1 and connection.resource.held == []
    assert len(held) <= BUFFERED_PIECES + 1
    assert sum(map(len, held)) == len(b"{}" + behind)
    assert sum(map(sys.getsizeof, held)) < 2 * len(b"{}" + behind)  # the bytes held, and little else
    admission.waiting[0].callback(None)
    connection.loop.turn()
    (post,) = connection.resource.held
    assert post.content is not None and post.content.read() == b"{}"
    for _ in range(110):
        for request in connection.resource.held:
            if not request.finished:
                _answer(request, b"ok")
        connection.loop.turn()
    assert [request.path for request in connection.resource.held[1:]] == [b"/%05d" % i for i in range(100)]


def test_a_client_that_reads_no_streamed_answer_and_sends_on_is_not_read_past_16_kB_of_requests() -> None:
    """The bound on requests while the answer is still being written (a list in chunks, a watch) to a
    client that does not read it: the answer is not whole, so no replay is pending, and reading stops
    all the same; once the answer ends and the client reads, the requests behind it are answered."""
    connection = _Connection()
    connection.socket.room = 0  # the client reads nothing
    connection.send(_get(b"/stream"))
    connection.loop.turn()
    (stream,) = connection.resource.held
    for _ in range(10):
        stream.write(b"s" * 30_000)
        connection.loop.turn()
    channel = connection.channel
    assert channel._waitingForTransport and not channel._replay_pending
    chunk, sent = _send_on_while_read(connection)
    assert 16_384 < sum(map(len, channel._dataBuffer)) <= 16_384 + len(chunk)
    assert connection.socket not in connection.loop.readers
    assert len(connection.resource.held) == 1
    stream.finish()
    connection.socket.room = None  # it reads again: the requests behind are answered
    answered = 1
    for _ in range(sent // len(_get(b"/00000")) + 50):  # one request a turn
        connection.loop.turn()
        for request in connection.resource.held[answered:]:
            _answer(request, b"ok")
            answered += 1
        connection.received()
    assert answered == 1 + sent // len(_get(b"/00000"))
    assert connection.received().count(b"HTTP/1.1 200 OK") == answered


def _flight(client: SSL.Connection) -> bytes:
    """What the client sends next in its handshake."""
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    out = b""
    while True:
        try:
            out += client.bio_read(1 << 16)
        except SSL.WantReadError:
            return out


def _one_turn(clock: Clock) -> None:
    """The calls due now, as one turn of the reactor runs them: not those they make for now (Clock's
    advance would run those too, and so every round of the turns at once)."""
    due = [call for call in clock.calls if call.getTime() <= clock.seconds()]
    for call in sorted(due, key=lambda call: call.getTime()):
        if call.active():
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


def test_the_handshake_flights_of_one_address_are_handled_one_a_turn_whenever_they_come() -> None:
    """Connections of one address that had their turns to read, their ClientHellos sent at once, then
    their second flights (in TLS 1.3, the client's Finished; with a client certificate, also its chain
    to verify) at once: each flight is handled in a turn of its address, one a turn, not all as they
    are read (review r1hostile2 F1: only the first read waited for a turn, so a burst's 40 chains were
    verified back to back and stalled the reactor for 2 s)."""
    loop = _Loop()
    site = GuardedSite(_Held(), HttpLimits(), _Admitting(), reactor=loop.clock, monotonic=loop.clock.seconds)
    table = LimitedConnections(site, 10, front_proxy=_no_front_proxy)
    factory = GuardedTLSFactory(_SERVER_CONTEXT, False, table, clock=loop.clock)
    pairs: list[tuple[GuardedTLS, _Socket, SSL.Connection]] = []
    for _ in range(4):
        tls = factory.buildProtocol(IPv4Address("TCP", "127.0.0.9", 5555))
        assert isinstance(tls, GuardedTLS)
        socket = _Socket(loop)
        socket.protocol = tls
        tls.makeConnection(socket)
        client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        client.set_connect_state()
        pairs.append((tls, socket, client))
    for _ in range(8):
        loop.turn()  # every connection had its turn to read, long before it sends anything

    def answered() -> int:
        return sum(1 for _, socket, _ in pairs if socket.sent or socket.unsent())

    def done() -> int:
        return sum(1 for tls, _, _ in pairs if tls._handshakeDone)

    for tls, _, client in pairs:
        tls.dataReceived(_flight(client))  # the four ClientHellos, read in one poll
    assert answered() == 1
    for turn in range(2, 5):
        _one_turn(loop.clock)  # a turn of the address
        assert answered() == turn
    loop.turn()
    for _, socket, client in pairs:
        client.bio_write(bytes(socket.sent))
        socket.sent = bytearray()
    for tls, _, client in pairs:
        tls.dataReceived(_flight(client))  # the four second flights, read in one poll
    assert done() == 1
    for turn in range(2, 5):
        _one_turn(loop.clock)
        assert done() == turn
