"""Twisted's HTTP/1.1 server, held to bounds a hostile client cannot push past.

What Twisted does on its own and what is changed here:

* a request body of 100 kB or more goes to a temporary file: here every body is kept in memory and
  refused (413) as soon as it passes ``max_request_body_bytes``, whether declared or chunked;
* the body is read whatever the headers say: here reading stops at the first bytes past the headers
  (until then it goes on, so that a client gone is seen and its admission cancelled), the site's
  ``Admission`` (authentication) decides, and only an admitted request's body is read;
* the response to a pipelined request is written whether or not the client reads: here the next
  pipelined request waits until the previous response is whole and the transport holds no more than
  its buffer (64 KiB) unsent, so one connection holds at most that and the response that went past it;
* Twisted stops reading a connection past 16 kB of requests pipelined behind the one being answered,
  but not while that answer waits for the client to read it nor after the read that ends a body, and
  keeps each TLS record's bytes as an object of their own, summed again after each: here it stops
  whenever a request is being answered, so a connection holds 16 kB of requests and what one read
  brings (the TCP read, 64 KiB, with the part of a TLS record the read before left), under 100 kB,
  in at most ``BUFFERED_PIECES`` + 1 pieces however small the client's records;
* errors found by the HTTP parser are a bare ``400`` with no body: here every refusal is a Kubernetes
  ``Status`` in JSON;
* a client may dribble a request head or body forever: here the head must arrive within
  ``header_timeout`` and the body within ``request_timeout``; an idle connection is closed after
  ``idle_timeout`` and one whose client stops reading after the same time, whether the response is
  whole or still being written (a watch);
* every request runs as soon as it is whole: here requests take turns between clients, and one
  source address is held to its share of connections and of unauthenticated work (clients.py);
* nothing ends keep-alive but the client: here, once the server drains, idle connections close and
  every other one closes after its current response, which says ``Connection: close``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import re
import socket
import string
import sys
import time
from collections.abc import Callable
from typing import Any, Final, Protocol
from urllib.parse import unquote_to_bytes

from cryptography import x509
from OpenSSL.SSL import Error as SSLError
from OpenSSL.SSL import WantReadError
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IDelayedCall, IHandshakeListener
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import Protocol as BaseProtocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web import http, resource
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from twisted.web.server import Request, Site, version
from zope.interface import directlyProvides, implementer, providedBy

from payloadtags.api.errors import (
    CLIENT_CLOSED_REQUEST,
    ApiError,
    bad_request,
    did_not_complete,
    internal,
    too_many_requests,
)
from payloadtags.deferreds import Waiters
from payloadtags.http.clients import (
    ClientKey,
    Clients,
    FairScheduler,
    Ticket,
    address_key,
    connection_key,
)
from payloadtags.http.eviction import EvictionOrder
from payloadtags.limits import (
    FRONT_PROXY_CONNECTIONS,
    FRONT_PROXY_HEAD_BYTES,
    HEAD_BYTES,
    HEADER_LINE_COST,
    LARGE_HEADS,
    LINGER,
    PARSED_LARGE_HEADS,
    PROBE_CONNECTIONS,
    PROBE_CONNECTIONS_PER_CLIENT,
    SEND_BUFFER,
    HttpLimits,
)
from payloadtags.model import to_json
from payloadtags.tls import Verdicts, client_chain, connection_verdicts

log = Logger()

# After a clean close is asked for, a peer that does not read gets this long before the connection is
# dropped.
CLOSE_GRACE = 2.0

# While a client does not take all it was sent, how often the connection looks whether it took some:
# the transport asks for more only once it has sent everything, and a steady slow reader of a large
# chunk (a list's is hundreds of kB) takes longer than the idle timeout to empty it.
STALL_CHECK = 1.0

# twisted.web.http is a module with deprecated attributes: each attribute read from it goes through
# twisted.python.deprecate's proxy (microseconds), and the transfer decoder's class was read for every
# header of every request.
_ChunkedTransferDecoder = http._ChunkedTransferDecoder


class Admission(Protocol):
    """Decides, from the head of a request with a body, whether its body may be read."""

    def admit(self, request: Request) -> Deferred[ApiError | None]: ...

    def is_probe(self, path: bytes) -> bool:
        """Whether the request target is a health probe's (never queued nor throttled)."""
        ...

    def proves(self, request: Request) -> bool:
        """Whether answering this request showed its client to be someone: an authenticated user (not
        a probe's answer, a 401, a 404 of an unknown path). Eviction spares such connections."""
        ...

    def received(self, request: Request) -> None:
        """The head of ``request`` is read (told once, before anything else of it): its deadline and
        its time count from now, whatever its authentication, body and wait for its turn take."""
        ...

    def refused(self, request: Request, code: int) -> None:
        """The channel ended ``request`` itself with ``code`` (refused by admission, a body too large
        or late, ...; 499 for a client gone while its request waited for its turn): the site never
        saw it, and the request is counted here as one it answered is."""
        ...


def status_body(error: ApiError) -> bytes:
    return json.dumps(to_json(error.status()), separators=(",", ":")).encode() + b"\n"


def refusal_bytes(error: ApiError) -> bytes:
    """The whole response of a refusal that closes the connection: a Status, no request to answer."""
    if error.details is not None:
        return _refusal(error.code, error.reason, error.message, error.retry_after, status_body(error))
    return _fixed_refusal(error.code, error.reason, error.message, error.retry_after)


def reason_phrase(code: int) -> bytes:
    """The status line's reason phrase: Go's net/http's (and so kube-apiserver's) for every code
    payloadtags sends, Twisted's for any other."""
    return _GO_PHRASES.get(code) or http.RESPONSES.get(code, b"Unknown Status")


# Fixed here, not taken from a library: Twisted's table lacks 422, 429 and 431 ("Unknown Status") and
# spells 408 and 504 "Time-out"; Python's HTTPStatus follows the running version (3.13 says
# "Unprocessable Content" and "Content Too Large").
_GO_PHRASES: Final[dict[int, bytes]] = {
    200: b"OK",
    201: b"Created",
    304: b"Not Modified",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    406: b"Not Acceptable",
    408: b"Request Timeout",
    409: b"Conflict",
    410: b"Gone",
    413: b"Request Entity Too Large",
    415: b"Unsupported Media Type",
    422: b"Unprocessable Entity",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


@functools.lru_cache(maxsize=64)
def _fixed_refusal(code: int, reason: str, message: str, retry_after: int | None) -> bytes:
    # Refusals are a handful of fixed answers (401, 408, 413, 431, the 400 of a request that is not
    # HTTP): a flood of them costs the bytes made once, not a Status rendered per connection.
    error = ApiError(code, reason, message, retry_after=retry_after)
    return _refusal(code, reason, message, retry_after, status_body(error))


def _refusal(code: int, reason: str, message: str, retry_after: int | None, body: bytes) -> bytes:
    head = [
        b"HTTP/1.1 %d %s" % (code, reason_phrase(code)),
        b"content-type: application/json",
        b"cache-control: no-cache, private",
        b"content-length: %d" % len(body),
        b"connection: close",
    ]
    if retry_after is not None:
        head.append(b"retry-after: %d" % retry_after)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, "RequestEntityTooLarge", f"the request body is larger than the limit of {limit} bytes"
    )


def read_timeout(what: str) -> ApiError:
    return ApiError(408, "Timeout", f"Timeout: the {what} did not arrive in time")


def connections_full() -> ApiError:
    """The answer on a connection taken in for probes only (LimitedConnections) to anything else."""
    return too_many_requests(
        message="Too many requests, please try again later: the server holds its maximum of "
        "connections (--max-connections), and a new one may only ask a health probe"
    )


def head_too_large(limit: int) -> ApiError:
    return ApiError(
        431,
        "BadRequest",
        f"the request head is larger than the limit of {limit} bytes (each header line counts "
        f"{HEADER_LINE_COST} bytes more)",
    )


# The longest line of a head (Twisted's HTTPChannel.MAX_LENGTH), its line end not counted.
MAX_LINE = 16384

# The pieces (TLS records) of pipelined requests kept apart before they are joined into one: enough
# that requests sent whole are not copied, few enough that sizing them stays cheap.
BUFFERED_PIECES = 32

# The ranks of GuardedChannel.eviction_rank: 0 to 5.
EVICTION_RANKS = 6

# Go's parseHexUint: a chunk size of more than 16 hex digits is over 64 bits.
MAX_CHUNK_SIZE_DIGITS = 16


class HeadPool:
    """The bytes of request heads past HEAD_BYTES (the verified front proxy's large heads), shared by
    every connection. GuardedSite has two: ``head_pool``, which a head takes from as it arrives and gives
    back once it is parsed, refused, or its connection is gone (never held for a response); and
    ``parsed_heads``, which a parsed head takes from for as long as its request lasts (a watch's up to
    an hour), so that heads being read are never held back by such watches."""

    def __init__(self, capacity: int = LARGE_HEADS) -> None:
        self.capacity = capacity
        self.taken = 0

    def take(self, size: int) -> bool:
        if self.taken + size > self.capacity:
            return False
        self.taken += size
        return True

    def give_back(self, size: int) -> None:
        self.taken -= size


class GuardedChunks(_ChunkedTransferDecoder):
    """Twisted's chunked decoder, answering at once what it would otherwise wait for: a chunk size
    over 64 bits (Go: 400), and a chunk declared larger than what the body may still hold (the 413
    of ``--max-request-body-bytes`` is due as soon as the size says so, not after the body deadline)."""

    def __init__(self, channel: GuardedChannel, request: GuardedRequest) -> None:
        super().__init__(request.handleContentChunk, channel._finishRequestBody)
        self._channel = channel
        self._request = request

    def _bare_lf(self) -> bool:
        """Whether the line at the start of the buffer ends with a bare LF: refused, as Go does
        ("chunked line ends with bare LF"), where Twisted would wait for a CRLF until the body's
        deadline."""
        end = self._buffer.find(b"\n")
        if end == -1 or (end > 0 and self._buffer[end - 1] == 0x0D):
            return False
        self._channel.refuse(bad_request("the request body's chunked line ends with bare LF"))
        return True

    def _dataReceived_TRAILER(self) -> bool:
        if self._bare_lf():
            return False
        return bool(super()._dataReceived_TRAILER())

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        if self._bare_lf():
            return False
        end = self._buffer.find(b"\r\n", self._start)
        if end != -1:
            size = self._buffer[:end].split(b";", 1)[0]
            if len(size) > MAX_CHUNK_SIZE_DIGITS:
                self._channel.refuse(bad_request("the request body's chunk length is too large"))
                return False
        if not super()._dataReceived_CHUNK_LENGTH():
            return False
        if self.state == "BODY":
            limit = self._channel.limits.max_request_body_bytes
            if self._request._body_bytes + self.length > limit:
                self._channel.refuse(too_large(limit))
                return False
        return True


class GuardedRequest(Request):
    """Keeps the body in memory, counted against the limit as it arrives; errors are Status JSON."""

    channel: GuardedChannel
    _body_bytes = 0

    def __init__(self, channel: GuardedChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, parsePOSTFormSubmission=False, **kwargs)

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        super().setResponseCode(code, reason_phrase(code) if message is None else message)

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        self._body_bytes += len(data)
        limit = self.channel.limits.max_request_body_bytes
        if self._body_bytes > limit:
            self.channel.refuse(too_large(limit))
            return
        assert self.content is not None  # set by gotLength, before any chunk
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole request is in: it runs at its client's turn (probes at once)."""
        run = super().requestReceived
        channel = self.channel
        if channel.site.admission.is_probe(path):
            run(command, path, version)
            return

        def start() -> None:
            if channel._lost:
                # Its client left while it waited: counted as the site counts a request whose client
                # went away before its answer, which it never sees.
                channel.site.admission.refused(self, CLIENT_CLOSED_REQUEST)
                return
            run(command, path, version)

        channel.site.scheduler.submit(channel.client_key, start)

    def process(self) -> None:
        if self.path == b"*" and self.method != b"OPTIONS":
            # Twisted answers these itself, with an empty 405.
            self.write_status(ApiError(405, "MethodNotAllowed", "only OPTIONS applies to the target *"))
            return
        # twisted.web.server.Request.process (TWISTED_PROCESS_SHA256), with the Date header's text
        # made once a second (_http_date) rather than for every request.
        self.site = self.channel.site
        # What setHeader stores, set directly (names as Headers spells them, values Twisted's and
        # _http_date's bytes), not encoded and checked again per request (issue #11); the private
        # _rawHeaders's shape is checked by tests/unit/test_app_headers.py.
        raw = self.responseHeaders._rawHeaders
        raw[b"Server"] = [version]
        raw[b"Date"] = [_http_date()]
        self.prepath = []
        self.postpath = list(map(_unquote, self.path[1:].split(b"/")))
        if self.path == b"*":
            self._handleStar()
            return
        try:
            found = self.site.getResourceFor(self)
            if resource._IEncodingResource.providedBy(found):
                encoder = found.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(found)
        except BaseException:
            self.processingFailed(Failure())

    def processingFailed(self, reason: Failure) -> None:
        log.failure("unhandled error serving {uri}", failure=reason, uri=self.uri)
        self.write_status(internal("the server could not complete the request"))

    def write_status(self, error: ApiError) -> None:
        body = status_body(error)
        self.setResponseCode(error.code)
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"content-length", str(len(body)).encode())
        self.write(body)
        self.finish()


# The SHA-256 of the source of twisted.web.server.Request.process (Twisted 26.10.0) that
# GuardedRequest.process copies: tests/unit/test_app_headers.py fails when the installed Twisted's
# differs, so that an upgrade re-checks the copy before it serves (and then records the new digest).
TWISTED_PROCESS_SHA256: Final = "f75c1431d226a2298ad3aaa14130a9ad7c9b4e4a5f435cf63b46586e5a35563d"

_date: tuple[int, bytes] = (-1, b"")
_NOT_LOOKED = object()


def _http_date(clock: Callable[[], float] = time.time) -> bytes:
    """The Date header's text for now on ``clock``, as twisted.web.http.datetimeToString gives it (to
    the second): made once per second."""
    global _date
    now = clock()
    second = int(now)
    if _date[0] != second:
        _date = (second, http.datetimeToString(now))
    return _date[1]


INVALID_TARGET: Final = 'invalid URI for request: the target must be a path beginning with "/"'
INVALID_AUTHORITY: Final = "invalid URI for request: the authority of the absolute-form target is malformed"
INVALID_ESCAPE: Final = 'invalid URI for request: a "%" in the path is not followed by two hex digits'


class InvalidTarget(ValueError):
    """A request target Go's url.ParseRequestURI refuses; its text is the refusal's message."""


# An absolute-form request target of an http or https URL (RFC 9112 3.2.2): its scheme and, as group 1,
# its authority (to the path, the query or the end: Go cuts the query off first).
_ABSOLUTE_FORM = re.compile(rb"https?://([^/?]*)", re.IGNORECASE)
# What Go's net/url takes in an authority (parseAuthority; compared with Go 1.19's, which the Go that
# builds kube-apiserver 1.32 keeps): a userinfo of its validUserinfo characters and well-formed
# escapes; a host of its host characters (shouldEscape's exceptions, and any byte past ASCII) where an
# escape is of a byte past ASCII or %25 only; after the last ":" (outside a bracketed literal) a port of
# digits alone.
_USERINFO = re.compile(rb"(?:[-A-Za-z0-9._:~!$&'()*+,;=@]|%[0-9A-Fa-f]{2})*")
_HOST_ASCII = string.ascii_letters.encode() + string.digits.encode() + b"-._~!$&'()*+,;=:[]<>\""
_HOST_BYTE = b"[" + re.escape(_HOST_ASCII) + rb"\x80-\xff]"
_HOST = re.compile(rb"(?:" + _HOST_BYTE + rb"|%25|%[89A-Fa-f][0-9A-Fa-f])*")
# An IPv6 literal's zone (after its "%25"): an escape is of a space, a "%" or an ASCII host character.
_ZONE = re.compile(rb"(?:" + _HOST_BYTE + rb"|%[0-9A-Fa-f]{2})*")
_ZONE_ESCAPED = frozenset(b" %" + _HOST_ASCII)
_PORT = re.compile(rb"(?::[0-9]*)?")
# A "%" not followed by two hex digits: in a path (not a query), Go's unescape refuses the target.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def _valid_authority(authority: bytes) -> bool:
    """Whether Go's url.ParseRequestURI takes this authority of an absolute-form target."""
    userinfo, at, host = authority.rpartition(b"@")
    if at and _USERINFO.fullmatch(userinfo) is None:
        return False
    if host.startswith(b"["):
        end = host.rfind(b"]")
        if end < 0 or _PORT.fullmatch(host, end + 1) is None:
            return False
        zone = host.find(b"%25", 0, end)
        if zone >= 0:
            escapes = re.findall(rb"%([0-9A-Fa-f]{2})", host[zone + 3 : end])
            return (
                _HOST.fullmatch(host, 0, zone) is not None
                and _ZONE.fullmatch(host, zone + 3, end) is not None
                and all(int(escape, 16) in _ZONE_ESCAPED for escape in escapes)
            )
    else:
        colon = host.rfind(b":")
        if colon >= 0 and _PORT.fullmatch(host, colon) is None:
            return False
    return _HOST.fullmatch(host) is not None


def origin_form(target: bytes) -> bytes:
    """The request target as the path (and query) it is served as, as Go's net/http (kube-apiserver)
    reads a target (url.ParseRequestURI): a path and "*" as they are; an absolute-form one
    ("https://host/apis?x") as its path and query ("/" for an empty path), its authority checked as Go
    checks it and then ignored. Raises InvalidTarget for anything else, and for a path holding a "%"
    not followed by two hex digits. (Go takes any scheme, and "http:/apis" too: only http and https
    URLs with an authority are absolute-form for RFC 9112, the rest are refused.)"""
    if target.startswith(b"/"):
        path = target
    elif target == b"*":
        return target
    else:
        absolute = _ABSOLUTE_FORM.match(target)
        if absolute is None:
            raise InvalidTarget(INVALID_TARGET)
        if not _valid_authority(absolute[1]):
            raise InvalidTarget(INVALID_AUTHORITY)
        rest = target[absolute.end() :]
        path = rest if rest.startswith(b"/") else b"/" + rest
    # Most targets have no "%": one scan of the bytes, the path cut from its query only when one does.
    if b"%" in path and _BAD_ESCAPE.search(path, 0, len(path.partition(b"?")[0])):
        raise InvalidTarget(INVALID_ESCAPE)
    return path


def _kept(pieces: list[bytes], data: bytes) -> list[bytes]:
    """``pieces`` with ``data`` added: the bytes kept of a connection, a piece per TLS record the
    channel was handed, joined into one once there are more than BUFFERED_PIECES. Kept one object
    each, a client sending one-byte records made each byte an object of its own (review r3pipe L1,
    r4chan L2); joined at once, requests sent whole would be copied for nothing."""
    pieces.append(data)
    return [b"".join(pieces)] if len(pieces) > BUFFERED_PIECES else pieces


def _unquote(segment: bytes) -> bytes:
    # What twisted.web.server.Request.process unquotes each path segment with; most have no escape.
    return unquote_to_bytes(segment) if b"%" in segment else segment


class GuardedChannel(http.HTTPChannel):
    site: GuardedSite
    # Lines end with LF, a CR before it dropped (RFC 9112 2.2; Go reads heads so): a head with bare LF
    # line ends is answered, not left unparsed until the head deadline.
    delimiter = b"\n"
    # Twisted's 16 kB for a line, its CR (a part of the line read up to the LF) not counted: as
    # before bare LF was read, a line holds 16,384 bytes before its CRLF, or before a bare LF
    # (lineReceived holds a line without a CR to the 16,384).
    MAX_LENGTH = MAX_LINE + 1
    # Twisted's own bounds on a head (16 kB, 500 headers, answered 400) give way to the channel's
    # (HEAD_BYTES, FRONT_PROXY_HEAD_BYTES, answered 431), which count each header line's cost.
    totalHeadersSize = 1 << 62
    maxHeaders = 1 << 62
    front_proxy = False  # the connection's certificate is the verified front proxy's
    _head_cost = 0  # what the head being read costs so far
    _pooled = 0  # the part of it taken from the site's head_pool while it is read
    _parsed = 0  # what the parsed head costs past HEAD_BYTES, taken from the site's parsed_heads
    _refusing = False
    _admitting = False
    # The admission under way (site.admit), cancelled when nobody is left to answer (connectionLost,
    # refuse): its TokenReview is then cancelled once no other request waits for it.
    _admission: Deferred[ApiError | None] | None = None
    # Reading goes on during admission until the first byte past the head (rawDataReceived), so that
    # a client that leaves is seen.
    _admission_paused = False
    _lost = False
    _replaying = False  # behind the property _replay_pending
    _handling = False  # behind the property _handlingRequest
    proven = 0  # requests of an authenticated user answered on this connection: eviction spares them
    # A byte came on this connection (its TLS handshake's first): closed without one, it was a bare
    # connect, which its address pays for (Clients.flooding).
    heard = False
    # Taken in over --max-connections while every connection was being answered: it may only ask a
    # health probe, and closes after its answer (LimitedConnections).
    probe_only = False
    host = ""  # the source address
    client_key: ClientKey = ("address", "")  # whose turn a request of this connection takes
    _deadline: IDelayedCall | None = None
    _kind = ""  # behind the property _deadline_kind
    # Told the connection's rank for eviction (eviction_rank) whenever it changes, by the table that
    # may evict it (LimitedConnections); None while nobody is to be told.
    ranked: Callable[[int | None], None] | None = None
    _rank: int | None = None  # the rank last told
    # While "stalled": when the client last took something (as far as the looks tell), and the bytes
    # that waited to be sent at the last look (None: the transport does not tell).
    _reading_at = 0.0
    _unsent: int | None = None
    _found_sender: object = _NOT_LOOKED  # _sender's
    _peer: IAddress | None = None  # getPeer's
    _local: IAddress | None = None  # getHost's
    # The request whose head is read and which the site has not been handed yet (its body is being
    # admitted or read): a refusal of it is told to the admission (`refuse`), which counts it as the
    # site counts what it answers.
    _unhanded: Request | None = None

    def __init__(self) -> None:
        super().__init__()
        self._held: list[bytes] = []

    # A connection's addresses are its own for its life: asked of the transport once, not for each
    # request (Twisted's Request asks both as it is made, through the connection's and the TLS layer's
    # wrappers, and the TCP transport's getHost is a getsockname system call) (issue #11).

    def getPeer(self) -> IAddress:
        peer = self._peer
        if peer is None:
            peer = self._peer = super().getPeer()
        return peer

    def getHost(self) -> IAddress:
        local = self._local
        if local is None:
            local = self._local = super().getHost()
        return local

    @property
    def limits(self) -> HttpLimits:
        return self.site.limits

    @property
    def serving(self) -> bool:
        """Whether a request of this connection is being answered (eviction spares such ones)."""
        return bool(self._handlingRequest) and not self._replay_pending

    @property
    def stalled(self) -> bool:
        """Whether its client has stopped taking the response being written (eviction takes such
        ones before it refuses a new connection)."""
        return self._deadline_kind == "stalled"

    # -- the rank for eviction ----------------------------------------------------------------------
    # What the rank depends on is set through these properties (Twisted's own code sets
    # _handlingRequest), so that the table that evicts is told every change as it happens and keeps
    # its candidates in order, rather than looking at every connection for each new one.

    @property
    def _handlingRequest(self) -> bool:
        return self._handling

    # A setter that leaves its field as it was changes no rank: nothing to tell (most of a response's
    # sets are such ones).

    @_handlingRequest.setter
    def _handlingRequest(self, value: bool) -> None:
        if value == self._handling:
            return
        self._handling = value
        self.rerank()

    @property
    def _replay_pending(self) -> bool:
        return self._replaying

    @_replay_pending.setter
    def _replay_pending(self, value: bool) -> None:
        if value == self._replaying:
            return
        self._replaying = value
        self.rerank()

    @property
    def _deadline_kind(self) -> str:
        return self._kind

    @_deadline_kind.setter
    def _deadline_kind(self, value: str) -> None:
        if value == self._kind:
            return
        # Of the kinds, the rank tells only "stalled" from the rest: a request's head, body and idle
        # deadlines (three sets a request) leave it as it was.
        changes_rank = "stalled" in (value, self._kind)
        self._kind = value
        if changes_rank:
            self.rerank()

    def eviction_rank(self) -> int | None:
        """Which connections a new one evicts first (LimitedConnections._evict), lowest first; None:
        this one is not to be evicted (being answered to a client that reads, or closed).

        0. of no proven client, not being answered: a flood of bare, idle or slow connections, or of
           ones that were answered only probes, 401s or 404s (which anyone gets), and fresh ones
           whose handshake is under way or waits for its turn, the oldest first. No "bare connect
           first" rank: the connections of a burst wait for their address's turn, paused, no byte
           read, and one that ranked first for it was evicted by the next of the same burst
           (kube-apiserver's 30 at once, 29 closed); a flood above its rate is kept to its own
           connections instead (LimitedConnections._evict);
        1. of an authenticated client, idle between requests;
        2. whose client has stopped taking the response written to it (a list it does not read, a
           watch it left): it loses nothing it was reading;
        3-5. the same three of the verified front proxy's (which has made its handshake):
           kube-apiserver carries every user of the aggregated API on its connections, and a request
           it sends on one closed under it fails when it may not be retried (a DELETE)."""
        # The fields behind the properties (serving, stalled): this runs on every change of them.
        if self._lost:
            return None
        if self._handling and not self._replaying:
            if self._kind != "stalled":
                return None
            rank = 2
        else:
            rank = 1 if self.proven > 0 else 0
        return rank + 3 if self.front_proxy else rank

    def rerank(self) -> None:
        ranked = self.ranked
        if ranked is None:
            return
        rank = self.eviction_rank()
        if rank != self._rank:
            self._rank = rank
            ranked(rank)

    # -- deadlines ----------------------------------------------------------------------------------
    # A connection has one delayed call, kept for its life and moved as its deadline changes (the head
    # due, the body due, idle, lingering after a refusal, the grace of a close): Twisted's reactor
    # keeps a heap of them, and a call made and cancelled per request or state of each of a thousand
    # connections is work for nothing.

    def _arm(self, seconds: float, kind: str) -> None:
        self._deadline_kind = kind
        deadline = self._deadline
        if deadline is not None and deadline.active():
            deadline.reset(seconds)
        else:
            self._deadline = self.callLater(seconds, self._expired)

    def _disarm(self) -> None:
        """No deadline applies for now; the call stays, to be moved by the next _arm (when it fires
        meanwhile, it does nothing)."""
        self._deadline_kind = ""

    def _stall(self) -> None:
        """The client does not take what it was sent: the connection is closed once it has taken
        nothing of it for the idle timeout. Until the transport asks for more, which it does only once
        it has sent everything, the connection looks every STALL_CHECK whether what waits to be sent
        went down."""
        self._reading_at = self.site.reactor.seconds()
        self._unsent = _unsent(self._sender())
        self._arm(min(STALL_CHECK, self.limits.idle_timeout), "stalled")

    def _sender(self) -> object:
        """The TCP transport under the wrappers (ClientConnection, TLS), looked for once per connection:
        each look is a few attribute reads that miss and go through every wrapper's __getattr__, and a
        large response looks twice (the client reads it more slowly than it is written)."""
        sender = self._found_sender
        if sender is _NOT_LOOKED:
            sender = self._found_sender = _sending_transport(self.transport)
        return sender

    def _stall_check(self) -> None:
        now = self.site.reactor.seconds()
        unsent = _unsent(self._sender())
        if unsent is not None and self._unsent is not None and unsent < self._unsent:
            self._reading_at = now  # the client took some
        self._unsent = unsent
        left = self._reading_at + self.limits.idle_timeout - now
        if left <= 0:
            self._close()
        else:
            self._arm(min(STALL_CHECK, left), "stalled")

    def _expired(self) -> None:
        kind, self._deadline, self._deadline_kind = self._deadline_kind, None, ""
        if kind == "head" and not self.requests and not self._buffer and not self._head_cost:
            self._close()  # nothing of a request arrived: nobody to answer
        elif kind == "head":
            self.refuse(read_timeout("request head"))
        elif kind == "body" and self._admitting:
            # Still authenticating (TokenReviews retried), the server has not read the body: not the
            # client's lateness, but a request past its deadline, kube-apiserver's 504.
            self.refuse(did_not_complete(self.limits.request_timeout))
        elif kind == "body":
            self.refuse(read_timeout("request body"))
        elif kind == "stalled":
            self._stall_check()
        elif kind in ("idle", "linger"):  # idle, done lingering
            self._close()
        elif kind == "grace":
            self._abort()

    # -- the connection -----------------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        # Covers the TLS handshake too: the head of the first request is due this long after connecting.
        self._arm(self.limits.header_timeout, "head")

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._lost = True
        self._cancel_admission()
        self._deadline_kind = ""
        self.rerank()  # out of the eviction order
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self._held = []
        self._give_back_head()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._refusing:
            return  # read and dropped while lingering
        if self._deadline_kind == "idle" and not self._handlingRequest:
            self._arm(self.limits.header_timeout, "head")
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self._refusing:
            return
        if self._admitting:
            # Past the head: reading stops until admission, but the rest of the TCP read that
            # brought these bytes still comes, a piece per TLS record. Until these, reading went on
            # so that a client gone during admission is seen (connectionLost) with no body read.
            self._held = _kept(self._held, data)
            if not self._admission_paused:
                self._admission_paused = True
                self._networkProducer.pauseProducing()
            return
        if self._handlingRequest:
            # A request is being answered: what comes is the requests pipelined behind it, kept for
            # _replay. Twisted's own branch for this appends each piece (one TLS record) and sums
            # them all after each: a client sending one-byte records made that quadratic, 16 kB of
            # them half a megabyte of objects and seconds of CPU (review r3pipe L1).
            self._dataBuffer = _kept(self._dataBuffer, data)
        else:
            # A body; what follows its end is put in _dataBuffer (Twisted's _finishRequestBody).
            super().rawDataReceived(data)
        if self._handlingRequest and sum(map(len, self._dataBuffer)) > self._optimisticEagerReadSize:
            # Twisted stops reading past 16 kB of pipelined requests only while the answer is being
            # made, not while it waits for the client (review r2e F1), nor after the read that ended
            # a body (r3pipe F1). Here it stops whenever one is answered; _replay reads on.
            self._networkProducer.pauseProducing()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(ApiError(431, "BadRequest", "a request header line is too long"))

    def lineReceived(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        elif len(line) > MAX_LINE:
            self.lineLengthExceeded(line)
            return
        if line:
            # The request line and each header line (an obs-fold continuation too) cost their bytes
            # and what Python holds for them.
            self._head_cost += len(line) + 2 + HEADER_LINE_COST
            if not self._head_fits():
                return
        requests = len(self.requests)
        super().lineReceived(line)
        if len(self.requests) > requests and not self._refusing:
            # That was a request line: its target is read before anything else of the request.
            self._read_target()

    def _read_target(self) -> None:
        try:
            self._path = origin_form(self._path)
        except InvalidTarget as refused:
            # Twisted would serve "xapis" as /apis (it drops a target's first byte, whatever it is).
            self.refuse(bad_request(str(refused)))

    def _head_fits(self) -> bool:
        """Whether the head read so far is within its limit; when not, it has been refused."""
        over = self._head_cost - HEAD_BYTES
        if over <= self._pooled:
            return True
        if not self.front_proxy:
            self.refuse(head_too_large(HEAD_BYTES))
            return False
        if self._head_cost > FRONT_PROXY_HEAD_BYTES:
            self.refuse(head_too_large(FRONT_PROXY_HEAD_BYTES))
            return False
        # Taken in steps of 64 kB: the pool is asked once per 64 kB of head, not per line.
        step = min(max(over - self._pooled, HEAD_BYTES), FRONT_PROXY_HEAD_BYTES - HEAD_BYTES - self._pooled)
        if not self.site.head_pool.take(step):
            self.refuse(
                ApiError(
                    429,
                    "TooManyRequests",
                    "too many large request heads are being served at once; retry",
                    retry_after=1,
                )
            )
            return False
        self._pooled += step
        return True

    def _give_back_head(self) -> None:
        pooled, self._pooled = self._pooled, 0
        if pooled:
            self.site.head_pool.give_back(pooled)
        parsed, self._parsed = self._parsed, 0
        if parsed:
            self.site.parsed_heads.give_back(parsed)

    def _keep_head(self) -> bool:
        """Whether the head just parsed may live on in its request (its headers, and the identity
        built from them). What it costs past HEAD_BYTES is counted against the site's parsed_heads
        until its response ends: a front-proxied watch of a user in many groups would otherwise hold
        its ~1 MiB for an hour, bounded only by --max-watches. With it spent, 429."""
        over = self._head_cost - HEAD_BYTES
        if over <= 0:
            return True
        if not self.site.parsed_heads.take(over):
            self.refuse(
                too_many_requests(
                    message="too many requests with large request heads (users in many groups) are "
                    "being answered at once; retry"
                )
            )
            return False
        self._parsed = over
        return True

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        chosen = bool(super()._maybeChooseTransferDecoder(header, data))
        decoder = self._transferDecoder
        if chosen and isinstance(decoder, _ChunkedTransferDecoder) and not isinstance(decoder, GuardedChunks):
            self._transferDecoder = GuardedChunks(self, self.requests[-1])
        return chosen

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse(bad_request("the request is not valid HTTP/1.1"))

    # -- the head and the body ----------------------------------------------------------------------

    def allHeadersReceived(self) -> None:
        # The head is parsed: its share of the pool of heads being read goes back now, not when its
        # response ends (a watch's lasts up to an hour). Its headers live on in the request, bounded
        # by the head's own limit, with one request read or answered at a time per connection, and
        # past HEAD_BYTES by parsed_heads (_keep_head).
        self._give_back_head()
        request = self.requests[-1]
        # Twisted sets these once the body is in; admission, and a refusal's count, need them before.
        request.method, request.uri = self._command, self._path
        # Every request's deadline and time count from here, with a body or without, refused or not.
        self.site.admission.received(request)
        self._unhanded = request
        if self.probe_only and not self.site.admission.is_probe(self._path):
            self.refuse(connections_full())
            return
        if not self._keep_head():
            return
        request.parseCookies()
        self.persistent = self.checkPersistence(request, self._version)
        limit = self.limits.max_request_body_bytes
        if self.length is not None and self.length > limit:
            self.refuse(too_large(limit))
            return
        request.gotLength(self.length)
        if self.length == 0:
            self._disarm()
            return
        self._arm(self.limits.request_timeout, "body")
        self._admitting = True
        self._admission_paused = False
        admission = self.site.admit(request)
        if not admission.called:
            self._admission = admission
        admission.addCallbacks(self._admitted, self._admission_failed)

    def _cancel_admission(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission.cancel()

    def _admitted(self, error: ApiError | None) -> None:
        self._admission = None
        if self._lost or self._refusing:
            return
        self._admitting = False
        if error is not None:
            self.refuse(error)
            return
        request = self.requests[-1]
        expect = request.requestHeaders.getRawHeaders(b"expect")
        if expect and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1":
            self._send100Continue()
        held, self._held = b"".join(self._held), []
        if self._admission_paused:
            self._admission_paused = False
            self._networkProducer.resumeProducing()
        if held:
            self.rawDataReceived(held)

    def _admission_failed(self, failure: Failure) -> None:
        self._admission = None
        if (self._lost or self._refusing) and failure.check(CancelledError):
            return  # cancelled by _cancel_admission: nobody is left to answer
        log.failure("admission of a request failed", failure=failure)
        self._admitting = False
        if not self._lost:
            self.refuse(internal("the server could not admit the request"))

    def allContentReceived(self) -> None:
        if self._refusing:
            return  # refused on its head (a connection for probes only), and the request had no body
        self._disarm()
        self._head_cost = 0  # the next head counts afresh (its pooled part went back with the head)
        self._unhanded = None  # the site answers it, and counts it
        super().allContentReceived()

    # -- responses ----------------------------------------------------------------------------------

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        if self.persistent and (self.site.draining or self.probe_only):
            # The server is draining: this response is the connection's last, and says so, as Go's
            # http.Server does once Shutdown has begun. A connection taken in over the limit for a
            # probe is given back as soon as the probe is answered.
            self.persistent = False
            headers.setRawHeaders(b"connection", [b"close"])
        super().writeHeaders(version, code, reason, headers)

    def requestDone(self, request: http.Request) -> None:
        # The response's last byte is written (Request.finish, for Klein's routes and the direct ones
        # alike): it goes to the client in this turn of the reactor, not in its next round. First, while
        # the request is still being handled: a transport that sends all and resumes the channel
        # then only clears _waitingForTransport, which the rest of this method reads.
        send = getattr(self.transport, "send_response", None)
        if send is not None:
            send()
        if isinstance(request, Request) and self.site.admission.proves(request):
            self.proven += 1
            if self.proven == 1:  # the rank reads only whether one was
                self.rerank()
        self._give_back_head()
        if request.code == 401 and self.client_key[0] == "address":
            self.site.clients.unauthenticated(self.host)
        if self.site.draining:
            self.persistent = False  # a response begun before the drain: the connection closes after it
        if not self.persistent:
            super().requestDone(request)
            return
        if request is not self.requests[0]:
            raise TypeError
        del self.requests[0]
        if self._waitingForTransport:
            # The client has not read this response yet: the next pipelined request waits for it.
            self._replay_pending = True
            self._stall()
            return
        self._arm(self.limits.idle_timeout, "idle")
        # The next pipelined request is parsed on the reactor's next turn, not in this call: a client
        # that pipelines hundreds of requests takes turns with every other connection instead of
        # holding the reactor until all of them are answered.
        self._replay_pending = True
        self.callLater(0, self._replay)

    def pauseProducing(self) -> None:
        """The transport is full: the client does not read what it was sent."""
        super().pauseProducing()
        if self._handlingRequest and not self._replay_pending and not self._deadline_kind:
            # A response still being written (a watch, a paced list) to a client that stopped
            # reading it: closed after the idle timeout, unless the client reads meanwhile.
            self._stall()

    def resumeProducing(self) -> None:
        if not self._replay_pending:
            if self._deadline_kind == "stalled":
                self._disarm()  # the client reads again
            super().resumeProducing()
            return
        self._waitingForTransport = False
        self._arm(self.limits.idle_timeout, "idle")
        self._replay()

    def _replay(self) -> None:
        """Go on with the requests that arrived while the previous one was being answered."""
        if not self._replay_pending or self._lost or self._refusing:
            return
        if self._waitingForTransport:
            self._stall()  # resumeProducing goes on
            return
        # Not handling first: the connection goes from waiting to replay (idle) to idle, one rank,
        # where the other order passed through "being answered" (not to be evicted) and told the
        # eviction order twice for nothing, on every request.
        self._handlingRequest = False
        self._replay_pending = False
        data, self._dataBuffer = b"".join(self._dataBuffer), []
        if not data and self.site.draining:
            self._close()  # idle, and the server is draining
            return
        self._networkProducer.resumeProducing()
        self.setLineMode(data)

    def close_if_idle(self) -> None:
        """The server began draining: an idle connection closes now; one that is reading or answering
        a request closes after its response (writeHeaders, requestDone)."""
        if not self.requests and not self._dataBuffer and not self._buffer:
            self._close()

    def refuse(self, error: ApiError) -> None:
        """Answer with a Status and close; whatever the client still sends is read and dropped for a
        moment, so that it sees this answer rather than a reset connection."""
        if self._refusing or self._lost:
            return
        if error.code == 401 and self.client_key[0] == "address":
            self.site.clients.unauthenticated(self.host)  # as a 401 answered the ordinary way
        self._refusing = True
        self._admitting = False
        self._cancel_admission()
        self._held = []
        self._give_back_head()
        self.paused = True  # stops the line parser on the rest of what is buffered
        self.clearLineBuffer()
        self._dataBuffer = []
        self._disarm()
        if not self._handlingRequest:
            assert self.transport is not None
            self.transport.write(refusal_bytes(error))
            unhanded, self._unhanded = self._unhanded, None
            if unhanded is not None:
                self.site.admission.refused(unhanded, error.code)
        _drop_before_decrypting(self.transport)
        self._networkProducer.resumeProducing()
        self._arm(LINGER, "linger")

    def _close(self) -> None:
        if self._lost:
            return
        self._arm(CLOSE_GRACE, "grace")
        self.loseConnection()

    def _abort(self) -> None:
        abort = getattr(self.transport, "abortConnection", None)
        if not self._lost and abort is not None:
            abort()


def _sending_transport(transport: object) -> object:
    """The TCP transport under the wrappers (ClientConnection, TLS): a FileDescriptor, whose dataBuffer
    is its own (each wrapper's __getattr__ hands an attribute it lacks down to its transport: read
    through them, every attribute is two or three lookups that miss). Otherwise the first that has a
    dataBuffer of bytes; None when none has (a test's)."""
    layer = transport
    for _ in range(4):
        if layer is None:
            break
        if isinstance(layer, FileDescriptor):
            return layer
        layer = getattr(layer, "transport", None)
    for _ in range(4):
        if transport is None:
            return None
        if isinstance(getattr(transport, "dataBuffer", None), bytes):
            return transport
        transport = getattr(transport, "transport", None)
    return None


def _unsent(transport: object) -> int | None:
    """The bytes written to the connection and not yet sent, as the TCP transport (`_sending_transport`)
    counts them; None when there is no such transport to ask."""
    if transport is None:
        return None
    buffered = getattr(transport, "dataBuffer", None)
    if not isinstance(buffered, bytes):
        return None
    # twisted.internet.abstract.FileDescriptor: dataBuffer from offset on, then the writes not joined to
    # it yet.
    offset = getattr(transport, "offset", 0)
    return len(buffered) - offset + getattr(transport, "_tempDataLen", 0)


def _drop_before_decrypting(transport: object) -> None:
    """From now on, what the client sends is dropped as it arrives, before the TLS layer under this
    connection decrypts it. Lingering after a refusal reads what the client still sends only so that
    the connection is not reset under the answer; decrypting it was most of the server's cost of a
    refused request (an unauthenticated client streaming a 3 MiB body after its 401: about 10 ms).
    What the server writes is not affected.

    The TCP connection under it then reads into one scratch buffer, as much as is there in one go,
    instead of making a new string of at most 64 kB per read for the layers above to drop: a refused
    client that streams its 3 MiB body anyway costs a few reads, not 48."""
    for _ in range(3):  # the channel, the per-client wrapper, then TLS
        if isinstance(transport, TLSMemoryBIOProtocol):
            # The TCP transport looks its protocol's dataReceived up on every read.
            setattr(transport, "dataReceived", _discard)  # noqa: B010
            tcp = transport.transport
            sock = getattr(tcp, "socket", None)
            if isinstance(sock, socket.socket) and hasattr(tcp, "doRead"):
                # The reactor looks doRead up on every read too.
                setattr(tcp, "doRead", functools.partial(_drain, sock))  # noqa: B010
            return
        transport = getattr(transport, "transport", None)


def _discard(data: bytes) -> None:
    pass


# Where lingering connections' input goes; nobody reads it. On Linux, MSG_TRUNC on a TCP socket drops
# what it reads without even copying it here (so these pages are never touched).
_SCRATCH = memoryview(bytearray(1 << 20))
_DROP = socket.MSG_TRUNC if sys.platform == "linux" else 0


def _drain(sock: socket.socket) -> ConnectionLost | ConnectionDone | None:
    """tcp.Connection.doRead for a connection whose input is dropped: what it answers means the same
    to the reactor (None: go on reading; CONNECTION_DONE: the client closed; CONNECTION_LOST)."""
    for _ in range(8):  # at most 8 MiB a turn
        try:
            count = sock.recv_into(_SCRATCH, len(_SCRATCH), _DROP)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return CONNECTION_LOST
        if count == 0:
            return CONNECTION_DONE
        if count < len(_SCRATCH):
            return None
    return None


class GuardedSite(Site):
    """A Site whose channels are GuardedChannels; no access log (the API layer logs with the user)."""

    protocol = GuardedChannel  # type: ignore[assignment]
    requestFactory = GuardedRequest
    _parsePOSTFormSubmission = False
    # Set when the server begins draining (LimitedConnections.drain): keep-alive ends.
    draining = False

    def __init__(
        self,
        resource: IResource,
        limits: HttpLimits,
        admission: Admission,
        reactor: Any = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # Twisted's own idle timer would fire in the middle of a long response: the channel keeps its own.
        super().__init__(resource, timeout=None, reactor=reactor)
        self.limits = limits
        self.admission = admission
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.monotonic = monotonic
        self.clients = Clients(limits, reactor, monotonic)
        self.scheduler = FairScheduler(reactor, self.clients.ready_in)
        self.head_pool = HeadPool()
        self.parsed_heads = HeadPool(PARSED_LARGE_HEADS)

    def admit(self, request: Request) -> Deferred[ApiError | None]:
        return self.admission.admit(request)

    def log(self, request: Any) -> None:
        pass


@implementer(IHandshakeListener)
class ClientConnection(ProtocolWrapper):
    """One connection as its source address's limits see it: its TLS handshake waits for the
    address's token; once done, the connection counts against its address's cap (closed if the
    address reached it meanwhile), unless it showed the front proxy's verified certificate, which
    makes it a client of its own for the turns."""

    factory: LimitedConnections
    wrappedProtocol: GuardedChannel
    transport: Any  # the TLS layer (GuardedTLS), or a test's stand-in
    host = ""
    front_proxy = False
    counted = False  # against its address's cap: its handshake is done, and it is not the front proxy's
    # The server holds its reading paused: it waits for its address's handshake token or turn, so no
    # byte can come on it yet.
    held = False
    # Held waiting for its address's handshake token (not yet its turn): the address is past its
    # handshake burst, a flood by definition (Clients.flooding).
    tokenless = False
    # Evicted while held for its address's turn with its token taken: closed without a byte, but
    # never let speak, so not a bare connect its address pays for (a burst within its handshake burst,
    # kube-apiserver's connections made at once, evicting one another as they wait for their turn is
    # not a flood). One evicted while it waits for a token is charged: sparing those let a flood in
    # bursts past its handshake burst erase its own record (review-conns5 F1). Its connect stays paid
    # for until a connection of its address shows the front proxy's certificate (Bucket.show).
    spared = False
    # Evicted before its handshake was done, its token taken: held for its turn (spared), or let read
    # and evicted while its handshake was under way (connects a few ms apart evict one another so, or
    # a slow handshake is evicted by the next connect). Never let show whose it was, so its connect is
    # given back with those spared once a connection of its address shows the front proxy's
    # certificate (Address.pending; review-conns9 F1). Whether it closed bare is decided apart: one
    # no byte came on after its turn looks exactly like a bare flood's, and is charged as one.
    unshown = False
    # Its takes of its address's buckets (Clients.opened): left out of them once it is unshown and a
    # connection of its address shows the front proxy's certificate (Bucket.show).
    ticket: Ticket | None = None
    # The server aborted it (LimitedConnections._drop); until its connectionLost is seen, its token or
    # turn, if they come, are not taken: resuming an aborted transport fails.
    dropped = False
    _lost = False
    # The scheduler's round in which its address's turn was given to it (its reading resumed): the
    # handshake's bytes read in that round are handled in that turn (handshake_turn).
    _turn_round = -1

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper.makeConnection, with the interface declaration made once (_provide_as).
        _provide_as(self, transport)
        BaseProtocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self.wrappedProtocol.makeConnection(self)

    # What the channel asks its transport most, forwarded without ProtocolWrapper.__getattr__ (which
    # Python reaches only after a failed lookup).
    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def abortConnection(self) -> None:
        self.transport.abortConnection()

    def send_response(self) -> None:
        send = getattr(self.transport, "send_response", None)
        if send is not None:
            send()

    def connectionMade(self) -> None:
        _limit_send_buffer(self.transport)
        # Nothing is read, so no handshake is made, until the address has a token and then its turn;
        # after that, each read of the handshake is handled in a turn of the address too
        # (handshake_turn): a burst of connections from one address costs at most one handshake
        # flight (a ClientHello, or a certificate chain to verify) a turn of the reactor.
        # The transport is reading already: when the handshake may start now, it just goes on.
        if not self.factory.clients.handshake(self.host, self._start, self.ticket):
            self.held = True
            self.tokenless = True
            self.pauseProducing()
        elif not self.factory.scheduler.claim(address_key(self.host)):
            self.held = True
            self.pauseProducing()
            self._take_turn()
        else:
            self._turn_round = self.factory.scheduler.round

    def _start(self) -> bool:
        if self._lost or self.dropped:
            return False
        self.tokenless = False
        self._take_turn()
        return True

    def _take_turn(self) -> None:
        self.factory.scheduler.submit(address_key(self.host), self._read)

    def _read(self) -> None:
        if not self._lost and not self.dropped:
            self.held = False
            self._turn_round = self.factory.scheduler.round
            self.resumeProducing()

    def handshake_turn(self, handle: Callable[[], None]) -> bool:
        """Whether the TLS layer may handle, now, the bytes of the handshake it just read: yes in the
        round its address's turn was given to this connection (the first read after it), or when its
        address may take its turn now. Otherwise its reading is paused, and ``handle`` (which handles
        those bytes) is called at its address's next turn. So the flights of a burst's handshakes are
        handled one per address a turn, whenever they come: not only the first (review r1hostile2 F1:
        40 certificate chains handled back to back stalled the reactor for 2 s)."""
        scheduler = self.factory.scheduler
        if self._turn_round == scheduler.round:
            self._turn_round = -1
            return True
        key = address_key(self.host)
        if scheduler.claim(key):
            return True
        self.held = True
        self.pauseProducing()

        def turn() -> None:
            if not self._lost and not self.dropped:
                self.held = False
                self.resumeProducing()
                handle()

        scheduler.submit(key, turn)
        return False

    def heard(self) -> None:
        """The first byte came on this connection (to its TLS layer): no longer a bare connect."""
        self.wrappedProtocol.heard = True

    def dataReceived(self, data: bytes) -> None:
        self.heard()  # where no TLS layer is (tests)
        self.wrappedProtocol.dataReceived(data)

    def handshakeCompleted(self) -> None:
        if self._lost:
            return
        handle = getattr(self.transport, "getHandle", None)
        connection = handle() if handle is not None else None
        chain = client_chain(connection)
        front_proxy = bool(chain) and self.factory.front_proxy(chain, connection_verdicts(connection))
        if not self.factory.clients.handshaken(self.host, front_proxy, self.ticket):
            self.factory.over_cap(self)  # its address reached its cap during the handshake
            return
        self.counted = not front_proxy
        if front_proxy:
            self.front_proxy = True
            self.wrappedProtocol.client_key = connection_key()
            self.wrappedProtocol.front_proxy = True
            self.wrappedProtocol.rerank()
        self.factory.handshaken(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if not self._lost:
            self._lost = True
            bare = not self.wrappedProtocol.heard and not self.spared
            self.factory.clients.closed(
                self.host, counted=self.counted, bare=bare, spared=self.unshown, ticket=self.ticket
            )
        super().connectionLost(reason)


def _limit_send_buffer(transport: object) -> None:
    """Caps the kernel's send buffer of the TCP connection under the TLS layer (see SEND_BUFFER)."""
    tcp = getattr(transport, "transport", None)
    handle = getattr(tcp, "getHandle", None)
    sock = handle() if handle is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


def _no_front_proxy(chain: tuple[x509.Certificate, ...], verdicts: Verdicts | None = None) -> bool:
    return False


class LimitedConnections(WrappingFactory):
    """Holds at most ``limit`` connections, and a few more for health probes and for the front proxy.
    At the limit, a new connection evicts one (see GuardedChannel.eviction_rank): first those of no
    proven client (a flood's, idle, dribbling its head, or answered only probes and 401s), then those
    idle between requests, then those whose client stopped reading what is written to it; the verified
    front proxy's (kube-apiserver's) only when no other can go; an address whose connections close
    bare faster than its handshake rate evicts only its own (see _evict). The candidates are kept in
    that order as their state changes (EvictionOrder), of all connections and of each address: a
    choice looks at a few connections, not at every one.

    When every connection is being answered (watches, lists being read), the new one is still taken
    in, over the limit:

    * into FRONT_PROXY_CONNECTIONS places kept for the verified front proxy, provisionally: only its
      TLS handshake can tell whose it is. The front proxy's keeps its place and is served as any
      other; any other leaves it as soon as its handshake is done, for a probe place or closed. A full
      pool gives a provisional place up only to an address holding fewer of them than another (see
      _room_among), so a flood holds them for no more than its handshakes take, and never all of them
      against kube-apiserver's address;
    * else into PROBE_CONNECTIONS more: it may only ask a health probe and closes after the answer
      (anything else gets 429), so a full server still answers the kubelet; one address holds at most
      PROBE_CONNECTIONS_PER_CLIENT of those.

    Otherwise the new connection is closed at once, as is one from an address at its cap, before
    anyone is evicted."""

    protocol = ClientConnection

    def __init__(
        self,
        site: GuardedSite,
        limit: int,
        on_refused: Callable[[str, str], None] | None = None,
        # Whether a verified chain is the front proxy's; its connection's verdicts keep the answer for
        # the connection's requests (access.authn.ChainDecisions).
        front_proxy: Callable[[tuple[x509.Certificate, ...], Verdicts | None], bool] = _no_front_proxy,
        probe_connections: int = PROBE_CONNECTIONS,
        front_proxy_connections: int = FRONT_PROXY_CONNECTIONS,
    ):
        super().__init__(site)
        self.limit = limit
        self.probe_connections = probe_connections
        # Without a front proxy to verify (no --requestheader-client-ca-file), no connection could keep
        # such a place: each would only cost a handshake.
        self.front_proxy_connections = 0 if front_proxy is _no_front_proxy else front_proxy_connections
        # Told (why, the address) of each connection closed for a limit: "client-limit", "refused" (the
        # server full, none to evict), "evicted" (http.refusals counts and logs them).
        self.on_refused = on_refused
        self.front_proxy = front_proxy
        self.site = site
        self.clients = site.clients
        self.scheduler = site.scheduler
        self._evicted: set[ProtocolWrapper] = set()
        # Connections taken in over the limit, never among the evicted, each oldest first: for a probe
        # only; provisionally for the front proxy, until their handshake is done; the front proxy's.
        self._probes: dict[ClientConnection, None] = {}
        self._provisional: dict[ClientConnection, None] = {}
        self._front_proxy_places: dict[ClientConnection, None] = {}
        # The others, as eviction would take them; each numbered in the order they came. And the same,
        # of each address apart: whom an address that floods may evict (see _evict).
        self._order: EvictionOrder[ClientConnection] = EvictionOrder(EVICTION_RANKS)
        self._own: dict[str, EvictionOrder[ClientConnection]] = {}
        self._own_examined = 0
        self._numbers = itertools.count()
        self._closed: Waiters[None] = Waiters()

    @property
    def examined(self) -> int:
        """Connections looked at to choose whom to evict, all told (the tests count them)."""
        return self._order.examined + self._own_examined

    def _place(self, wrapper: ClientConnection, number: int, rank: int | None) -> None:
        """``wrapper`` is now of ``rank`` for eviction (None: not to be evicted), in the order of all
        connections and in its address's."""
        self._order.place(wrapper, number, rank)
        own = self._own.get(wrapper.host)
        if own is None:
            if rank is None:
                return
            own = self._own[wrapper.host] = EvictionOrder(EVICTION_RANKS)
        own.place(wrapper, number, rank)
        # An address's order emptied by a connection being answered is kept for it to come back to
        # (every request of a lone connection would make and fill a new one, issue #11); it goes once
        # a connection of the address leaves the table (ranked no more) while it is empty, so none
        # outlives its address's connections.
        if not len(own) and wrapper.wrappedProtocol.ranked is None:
            self._own_examined += own.examined
            del self._own[wrapper.host]

    def drain(self) -> Deferred[None]:
        """What Go's http.Server.Shutdown does to its connections: idle ones close now, every other
        one after its current response, which says ``Connection: close``. Fires once all are closed
        (the caller bounds the wait and aborts what is left)."""
        self.site.draining = True
        for wrapper in list(self.protocols):
            wrapper.wrappedProtocol.close_if_idle()
        return self._closed.wait() if self.protocols else succeed(None)

    def unregisterProtocol(self, p: BaseProtocol) -> None:
        super().unregisterProtocol(p)
        if isinstance(p, ClientConnection):
            p.wrappedProtocol.ranked = None
            self._place(p, 0, None)
            self._probes.pop(p, None)
            self._provisional.pop(p, None)
            self._front_proxy_places.pop(p, None)
        self._evicted.discard(p)
        if not self.protocols:
            self._closed.fire(None)

    def buildProtocol(self, addr: Any) -> BaseProtocol | None:  # type: ignore[override]
        """None refuses the connection: the listening port closes it at once, before any TLS byte
        (GuardedTLSFactory builds no TLS layer for it)."""
        host = str(getattr(addr, "host", addr))
        # The address's cap first: a connection refused for it takes no one's place (evicts no one).
        ticket = self.clients.opened(host)
        if ticket is None:
            if self.on_refused is not None:
                self.on_refused("client-limit", host)
            return None
        over = len(self._evicted) + len(self._probes) + len(self._provisional) + len(self._front_proxy_places)
        place: dict[ClientConnection, None] | None = None
        if len(self.protocols) - over >= self.limit and not self._evict(host):
            if self._provisional_place(host):
                place = self._provisional
            elif self._probe_place(host):
                place = self._probes
            else:
                self.clients.closed(host, counted=False, bare=True, ticket=ticket)
                if self.on_refused is not None:
                    self.on_refused("refused", host)
                return None
        wrapper = super().buildProtocol(addr)
        assert isinstance(wrapper, ClientConnection)
        channel = wrapper.wrappedProtocol
        wrapper.host = channel.host = host
        wrapper.ticket = ticket
        channel.client_key = address_key(host)
        if place is not None:
            channel.probe_only = True
            place[wrapper] = None
        else:
            channel.ranked = functools.partial(self._place, wrapper, next(self._numbers))
            channel.rerank()
        return wrapper

    def handshaken(self, wrapper: ClientConnection) -> None:
        """A connection's TLS handshake is done (ClientConnection has seen whether it is the front
        proxy's). One taken in provisionally keeps its place if it is the front proxy's, and is served
        as any other connection; any other leaves it at once: for a probe place, as a new connection
        over the limit would take one, or closed."""
        if wrapper not in self._provisional:
            return
        del self._provisional[wrapper]
        if wrapper.front_proxy:
            self._front_proxy_places[wrapper] = None
            wrapper.wrappedProtocol.probe_only = False
        elif self._probe_place(wrapper.host):
            self._probes[wrapper] = None
        else:
            self._evicted.add(wrapper)
            if self.on_refused is not None:
                self.on_refused("refused", wrapper.host)
            wrapper.transport.abortConnection()

    def _provisional_place(self, host: str) -> bool:
        """Whether a connection from ``host`` may be taken in provisionally for the front proxy. Only
        the front proxy's stays once its handshake is done; until then a full pool gives a provisional
        place up to an address that holds fewer than another (see _room_among): kube-apiserver's
        address, whose connections stay in the pool only as the front proxy's, holds none of the
        provisional places but while it makes a handshake."""
        if not self.front_proxy_connections:
            return False
        taken = len(self._provisional) + len(self._front_proxy_places)
        return self._room_among(self._provisional, host, taken < self.front_proxy_connections)

    def _probe_place(self, host: str) -> bool:
        """Whether a connection from ``host`` may be taken in for a probe: each address holds at most
        PROBE_CONNECTIONS_PER_CLIENT of those places, and a full pool gives one up only for an address
        that holds fewer than the one it is taken from. One address's flood of bare connections, each
        costing it only a connect, so never churns the kubelet's probe connection out of the pool."""
        return self._room_among(
            self._probes, host, len(self._probes) < self.probe_connections, PROBE_CONNECTIONS_PER_CLIENT
        )

    def _room_among(
        self, places: dict[ClientConnection, None], host: str, free: bool, cap: int | None = None
    ) -> bool:
        """Whether ``places`` (a pool of at most a few dozen) has room for a connection from ``host``:
        the address holds fewer than ``cap``, and the pool is not full (``free``) or gives up the
        oldest of its connections not answering a probe, of the address holding most, if that holds
        more than ``host`` does."""
        held: dict[str, int] = {}
        for wrapper in places:
            held[wrapper.host] = held.get(wrapper.host, 0) + 1
        mine = held.get(host, 0)
        if cap is not None and mine >= cap:
            return False
        if free:
            return True
        best: ClientConnection | None = None
        most = mine
        for wrapper in places:  # oldest first
            if wrapper in self._evicted or getattr(wrapper.wrappedProtocol, "serving", True):
                continue
            if held[wrapper.host] > most:
                best, most = wrapper, held[wrapper.host]
        if best is None:
            return False
        self._drop(best)
        return True

    def over_cap(self, wrapper: ClientConnection) -> None:
        """A connection's handshake is done, and its address reached its cap meanwhile: closed, as
        one from an address at its cap is before its handshake."""
        self._drop(wrapper, "client-limit")

    def _drop(self, wrapper: ClientConnection, why: str = "evicted") -> None:
        # Closed before its handshake was done, its token taken (not for its address's cap, which
        # only a done handshake reaches): its connect may be given back (unshown). Closed while the
        # server held it paused for its turn, so: not a bare connect either (spared).
        wrapper.unshown = (
            why == "evicted" and not wrapper.tokenless and not wrapper.counted and not wrapper.front_proxy
        )
        wrapper.spared = wrapper.held and wrapper.unshown
        wrapper.dropped = True
        wrapper.wrappedProtocol.ranked = None
        self._place(wrapper, 0, None)
        self._probes.pop(wrapper, None)
        self._provisional.pop(wrapper, None)
        self._front_proxy_places.pop(wrapper, None)
        self._evicted.add(wrapper)
        if self.on_refused is not None:
            self.on_refused(why, wrapper.host)
        wrapper.transport.abortConnection()

    def _evict(self, host: str) -> bool:
        """Closes the first connection of the eviction order to make room for one from ``host`` (none
        taken in over the limit); False when there is none: every one is being answered to a client
        that reads.

        An address whose connections close bare (no byte come) faster than its handshake rate, whose
        handshakes wait for a token, or whose connects are past its burst and rate (Clients.flooding:
        a flood of connects), evicts only its own, the first of its address's order: its churn never
        closes the fresh connection of another client, which is the first to go while its handshake
        and first request are under way (the kubelet's probe, kube-apiserver's new connection before
        its certificate is seen). kube-apiserver's connections made at once, which all send their
        handshake, never make its address flood (up to --handshake-burst-per-client of them at once):
        each evicts another client's connection of the first rank while there is one, else one of its
        own still waiting for its turn with its token taken, not charged to its address as a bare
        close (spared)."""
        if self.clients.flooding(host):
            own = self._own.get(host)
            if own is None:
                return False
            before = own.examined
            first = own.first()
            self._own_examined += own.examined - before
        else:
            first = self._order.first()
        if first is None:
            return False
        self._drop(first)
        return True


# A TLS record's plain text at most (2**14), and more than any cipher suite adds to it (TLS 1.3's AES-GCM: 22
# bytes; TLS 1.2's: 29).
_RECORD = 16_384
_RECORD_FRAMING = 64
# A bio_read: a record and its framing in one call (a TLS 1.3 session ticket or alert, more, in another).
_READ = _RECORD + 4 * _RECORD_FRAMING


class GuardedTLS(TLSMemoryBIOProtocol):
    """Twisted's TLS layer, connected at less cost (see makeConnection), holding small writes as its
    BufferingTLSTransport does, but sending a whole response at once (send_response).

    Twisted's BufferingTLSTransport holds writes until the reactor's next turn (a timed call), so
    that the pieces of a response (its head, its body, a chunk's framing) become one TLS record
    rather than several; only then does the TCP transport take the record, and it sends it once a
    poll reports the socket writable. A response to a kept-alive request so cost the reactor one more
    round (the timed call, a poll and the dispatch of its write) before the client had it: 6 system
    calls a request where 5 do. Here, once the channel has written the last byte of a response, what
    is held is encrypted at once and handed to the socket in the same turn, as much as it takes
    (issue #11). The writes of a response written over several turns (a long list in chunks, a
    watch) are still held until the next turn, as before; what the socket does not take waits in
    the TCP transport as before, and pauses the channel when it is more than the transport's buffer."""

    # Twisted's _AggregateSmallWrites.MAX_BUFFER_SIZE: more than this is encrypted at once.
    HOLD = 64_000
    _heard = False
    # Bytes of the handshake read while the connection waits for its address's turn (at most one
    # read: its reading is paused meanwhile; see ClientConnection.handshake_turn).
    _waiting: bytes = b""
    _flush: IDelayedCall | None = None  # the next turn's sending of what is held
    _closed = False  # connectionLost: writes are dropped

    def __init__(self, factory: GuardedTLSFactory, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self._held: list[bytes] = []
        self._room = self.HOLD

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        # As Twisted's aggregator: a TypeError now for what is not bytes, and a copy of a bytearray
        # the caller may change before it is sent.
        self._held.append(data + b"")
        self._room -= len(data)
        if self._room < 0:
            self._send_held()
        elif self._flush is None:
            # The factory's clock: TLSMemoryBIOFactory keeps it for its own BufferingTLSTransport.
            self._flush = self.factory._clock.callLater(0, self._flush_held)

    def writeSequence(self, sequence: Any) -> None:
        self.write(b"".join(sequence))

    def _flush_held(self) -> None:
        self._flush = None
        self._send_held()

    def _no_flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    def _send_held(self) -> None:
        held = self._held
        if held:
            self._held = []
            self._room = self.HOLD
            data = held[0] if len(held) == 1 else b"".join(held)
            if not self._send_records(data):
                TLSMemoryBIOProtocol.write(self, data)

    def _send_records(self, data: bytes) -> bool:
        """Whether ``data`` was encrypted and sent (or handed to the TCP transport) here; False, with
        nothing done, where Twisted's TLS layer is to write it (a handshake under way, writes it
        buffered, a TLS connection lost or closing).

        Twisted's TLS layer encrypts a write record by record, each 16 kB cut from it as a copy, each
        record read out of OpenSSL and handed to the TCP transport as a write of its own; the TCP
        transport pauses the connection once it holds more than 64 kB and sends at most 128 kB per
        turn of the reactor. A page of 500 tags (170 kB) so took two sends a reactor turn apart, and
        its channel was paused, stalled and resumed in between (issue #11). Here the records are made
        from a view of ``data`` (no copies), each read out of OpenSSL as it is made (its memory BIO
        never holds more than a record), and all sent to the socket in one call when the TCP
        transport holds nothing (the kernel's send buffer, SEND_BUFFER, takes a page whole): the
        same records and bytes in the same order; what the socket does not take goes to the TCP
        transport as before."""
        tls = self._tlsConnection
        if (
            self._lostTLSConnection
            or not self._handshakeDone
            or self._appSendBuffer
            or self.disconnecting
            or tls is None
        ):
            return False
        view = memoryview(data)
        end = len(data)
        at = 0
        pieces: list[bytes] = []
        try:
            while at < end:
                # One record a call, as Twisted's 16 kB cuts make: handed more than 64 kB, OpenSSL may
                # encrypt several records at once (TLS 1.2 CBC without encrypt-then-MAC: up to eight),
                # and the memory BIO would keep their size (review r5send F1).
                at += tls.send(view[at : at + _RECORD])
                # Each record read out as it is made: OpenSSL's memory BIO grows to the most it ever
                # held and never shrinks, so a whole response left in it would keep that much memory
                # for the connection's life (a kept-alive client's, idle too).
                self._read_out(pieces)
        except WantReadError:
            # Encrypted so far (and what OpenSSL wrote before it stopped) goes out first; the rest
            # waits in Twisted's TLS layer for what OpenSSL wants to read (as its own _write does).
            self._read_out(pieces)
            self._send_encrypted(pieces)
            self._bufferedWrite(data[at:])
            return True
        except SSLError:
            # What was encrypted before goes out, as Twisted's _write had sent it record by record;
            # then whatever OpenSSL wrote for the error (an alert), which _tlsShutdownFinished
            # flushes to the TCP transport itself, after these.
            self._send_encrypted(pieces)
            self._tlsShutdownFinished(Failure())
            return True
        self._send_encrypted(pieces)
        return True

    def _read_out(self, pieces: list[bytes]) -> None:
        """What OpenSSL has encrypted (a record, and anything it had to send ahead of it), appended
        to ``pieces``: the memory BIO is left empty."""
        tls = self._tlsConnection
        while True:
            try:
                piece = tls.bio_read(_READ)
            except WantReadError:
                return
            pieces.append(piece)
            if len(piece) < _READ:  # all there was: a memory BIO gives what it holds, up to the size asked
                return

    def _send_encrypted(self, pieces: list[bytes]) -> None:
        """The records read out, sent at once: to the socket when the TCP transport holds nothing
        unsent (what the socket does not take, and anything when it holds some, to the transport,
        which keeps the order)."""
        if not pieces:
            return
        records = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        tcp = self.transport
        # A TCP connection's socket (tcp.Connection.socket); a transport without one is left to write.
        send = getattr(getattr(tcp, "socket", None), "send", None)
        if (
            isinstance(tcp, FileDescriptor)
            and send is not None
            and tcp.connected
            and not tcp.disconnecting
            and not tcp.disconnected
            and not _unsent(tcp)
        ):
            try:
                sent = send(records)
            except OSError:
                # Full (EWOULDBLOCK), or the connection failed: the transport's own send finds out
                # which, and closes it if it has to.
                sent = 0
            if sent == len(records):
                return
            records = records[sent:]
        tcp.write(records)  # type: ignore[union-attr]

    def send_response(self) -> None:
        """A response is whole (called first thing in the channel's requestDone): encrypt what is held
        now, and send what the socket takes of what waits in the TCP transport, in this turn."""
        self._no_flush()
        self._send_held()
        tcp = self.transport
        if not isinstance(tcp, FileDescriptor) or tcp.disconnecting or tcp.disconnected or not _unsent(tcp):
            return
        # What the reactor calls once the socket is writable (IWriteDescriptor.doWrite), here
        # before its turn. When it sends everything and had paused its producer (the response
        # was larger than its buffer), it resumes the channel, which, its request still being
        # handled, only notes that the transport wants more (requestDone goes on with that). It
        # answers why the connection is lost when the send fails (a reset, a closed socket),
        # where the reactor would close the transport with that reason: here the transport is
        # aborted (its connectionLost, ConnectionAborted, comes in the next turn; not in this
        # call, under the channel that is finishing a response), ahead of the next pipelined
        # request's parse, which requestDone schedules after this call: nothing more is parsed
        # or served for a client that is gone. Not while it is closing: its last send would
        # close it there and then.
        if tcp.doWrite() is not None:
            abort = getattr(tcp, "abortConnection", None)
            if abort is not None:
                abort()

    def loseConnection(self) -> None:
        self._no_flush()
        self._send_held()
        super().loseConnection()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._no_flush()
        self._closed = True
        self._held = []
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if not self._heard:
            self._heard = True
            heard = getattr(self.wrappedProtocol, "heard", None)
            if heard is not None:
                heard()
        if not self._handshakeDone:
            if self._waiting:  # a read before the turn came (the pause takes effect at the next one)
                self._waiting += data
                return
            turn = getattr(self.wrappedProtocol, "handshake_turn", None)
            if turn is not None and not turn(self._handle_waiting):
                self._waiting = data
                return
        super().dataReceived(data)

    def _handle_waiting(self) -> None:
        data, self._waiting = self._waiting, b""
        if data and not self._closed:
            TLSMemoryBIOProtocol.dataReceived(self, data)

    def makeConnection(self, transport: Any) -> None:
        """TLSMemoryBIOProtocol.makeConnection, less what it does in vain for every connection: it
        declares the transport's interfaces one by one (building a zope declaration, with its
        resolution order, for each of about ten), each replacing the one before, then all of them at
        once (ProtocolWrapper.makeConnection), connecting and registering itself twice. Here the one
        declaration that stays is made once per transport type (_provide_as)."""
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        _provide_as(self, transport)
        BaseProtocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self.wrappedProtocol.makeConnection(self)
        self._checkHandshakeStatus()

    # Reading from the TCP connection, paused and resumed, forwarded without ProtocolWrapper.__getattr__.
    def pauseProducing(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


class GuardedTLSFactory(TLSMemoryBIOFactory):
    """TLS around LimitedConnections; a connection it refuses gets no TLS layer (no OpenSSL
    connection made for it) and is closed by the listening port."""

    protocol = GuardedTLS

    def buildProtocol(self, addr: Any) -> GuardedTLS | None:  # type: ignore[override]
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)


# What a wrapper provides (what its transport provides) for each pair of wrapper type and transport
# declaration: a handful in a process.
_declarations: dict[tuple[type, object], Any] = {}


def _provide_as(wrapper: object, transport: object) -> None:
    """``directlyProvides(wrapper, providedBy(transport))``, as Twisted's wrappers declare themselves,
    with the declaration built once and shared: zope keeps declarations only while an object holds
    them, so each new connection rebuilt it."""
    spec = providedBy(transport)
    key = (type(wrapper), spec)
    declared = _declarations.get(key)
    if declared is None:
        directlyProvides(wrapper, spec)
        if len(_declarations) < 64:
            _declarations[key] = wrapper.__provides__  # type: ignore[attr-defined]
    else:
        wrapper.__provides__ = declared  # type: ignore[attr-defined]
