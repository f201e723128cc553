"""The request target as the channel reads it (review r3misc F1, N2): a path is served as it is, an
absolute-form http(s) URL as its path, anything else is refused with a 400 Status before the request is
authenticated or routed, as Go's net/http (kube-apiserver) refuses it ("invalid URI for request")."""

from __future__ import annotations

import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Request

from payloadtags.api.errors import ApiError
from payloadtags.http.channel import (
    INVALID_AUTHORITY,
    INVALID_ESCAPE,
    INVALID_TARGET,
    GuardedChannel,
    GuardedSite,
)
from payloadtags.limits import HttpLimits
from tests.support.held_site import Admitting


class _Counting(Admitting):
    """Admission (where a request with a body is authenticated) that admits all and counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.admitted: list[bytes] = []

    def admit(self, request: Request) -> Deferred[ApiError | None]:
        self.admitted.append(request.uri)
        return super().admit(request)


class _Echo(Resource):
    """Answers every request with the path and query it was served as."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        return b"served " + request.uri


def _exchange(data: bytes) -> tuple[bytes, StringTransport, _Counting]:
    root = Resource()
    root.putChild(b"apis", _Echo())
    root.putChild(b"", _Echo())
    admission = _Counting()
    site = GuardedSite(root, HttpLimits(), admission, reactor=Clock())
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.9", 5555))
    assert isinstance(channel, GuardedChannel)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(data)
    return transport.value(), transport, admission


def _refused_before_admission(target: bytes, message: str) -> tuple[bytes, StringTransport]:
    """A DELETE with a body to the target is 400 with this message, its body never admitted (nor
    served); the answer's head and the transport."""
    answer, transport, admission = _exchange(
        b"DELETE " + target + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert json.loads(body)["message"] == message
    assert b"served" not in answer and admission.admitted == []
    return head, transport


@pytest.mark.parametrize(
    "target",
    [
        b"xapis",
        b"*apis",
        b".apis",
        b"Xapis/a/b",
        b"x/apis",
        b"ftp://x/apis",
        b"http:/apis",
        b"x:apis",
        b"?a=1",
    ],
)
def test_a_target_that_is_no_path_is_refused_with_a_status_not_served_as_its_path_minus_a_byte(
    target: bytes,
) -> None:
    answer, transport, _ = _exchange(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    status = json.loads(body)
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 400, "BadRequest")
    assert status["message"] == INVALID_TARGET
    assert b"served" not in answer
    assert transport.disconnecting or b"connection: close" in head.lower()


def test_a_target_that_is_no_path_is_refused_before_its_body_is_admitted() -> None:
    # A DELETE with a body: admission (authentication) would come first, then routing as /apis.
    request = b"DELETE x/apis HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"
    answer, _, admission = _exchange(request)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert admission.admitted == []
    # The same request to the path it used to be served as is admitted, then served.
    answer, _, admission = _exchange(request.replace(b"x/apis", b"/apis", 1))
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"served /apis"), answer
    assert admission.admitted == [b"/apis"]


@pytest.mark.parametrize(
    ("target", "served"),
    [
        (b"http://x/apis", b"/apis"),
        (b"HTTPS://payloadtags.example:443/apis/a?limit=1", b"/apis/a?limit=1"),
        (b"https://user@x/apis", b"/apis"),
        (b"http://x", b"/"),
        (b"http://x?limit=1", b"/?limit=1"),
        # Authorities Go 1.19's net/http takes (compared side by side, review r4chan L1).
        (b"http://u:p@h:8443/apis", b"/apis"),
        (b"http://a@b@h/apis", b"/apis"),
        (b"http://[::1]:8443/apis", b"/apis"),
        (b"https://[fe80::1%25eth0]/apis", b"/apis"),
        (b"https://h%C3%A9/apis", b"/apis"),
        (b"https://h:99999/apis", b"/apis"),
        (b"http://h:/apis", b"/apis"),
        (b"http://h]/apis", b"/apis"),
        (b"https:///apis", b"/apis"),
        (b"https://h?x/apis", b"/?x/apis"),
        (b"http://a:b:80/apis", b"/apis"),  # the port is after the last ":" (review r5chan L1)
        (b"https://[::1]]/apis", b"/apis"),  # the literal ends at the last "]"
    ],
)
def test_an_absolute_form_http_target_is_served_as_its_path_as_go_serves_it(
    target: bytes, served: bytes
) -> None:
    answer, _, _ = _exchange(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"served " + served), answer


def test_the_asterisk_target_is_still_for_options_alone() -> None:
    answer, _, _ = _exchange(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    answer, _, _ = _exchange(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405 "), answer


@pytest.mark.parametrize(
    "target",
    [
        b"https://h#x/apis",
        b"https://h%41/apis",  # only a byte past ASCII may be escaped in a host
        b"https://h%zz/apis",
        b"https://u%zz@h/apis",
        b"https://u^@h/apis",
        b"https://h:abc/apis",
        b"https://a:b:8x/apis",
        b"https://[::1/apis",
        b"http://[::1]x/apis",
        b"https://[fe80::1%25e%C3%A9]/apis",  # a zone escapes ASCII host characters only
        b"https://h\\x/apis",
        b"https://h|x/apis",
        b"https://h{x}?limit=1",
    ],
)
def test_an_absolute_form_target_with_a_malformed_authority_is_refused_as_go_refuses_it(
    target: bytes,
) -> None:
    """Go's url.ParseRequestURI checks the authority it then ignores (review r4chan L1): these are 400
    there, where they were served as their path here."""
    head, transport = _refused_before_admission(target, INVALID_AUTHORITY)
    assert transport.disconnecting or b"connection: close" in head.lower()


@pytest.mark.parametrize(
    "target", [b"/%zz", b"/apis%", b"/apis/%4", b"/apis%g1?limit=1", b"https://h/%zz", b"/apis#%zz"]
)
def test_a_bad_percent_escape_in_the_path_is_refused_as_go_refuses_it(target: bytes) -> None:
    """Go's url.ParseRequestURI refuses a "%" of the path not followed by two hex digits (400); it was
    routed here, and not found (404; review r4chan N1)."""
    _refused_before_admission(target, INVALID_ESCAPE)


@pytest.mark.parametrize(
    ("target", "served"),
    [
        (b"/apis?limit=%zz", b"/apis?limit=%zz"),  # Go keeps the query raw: its handler decides
        (b"/apis?a=%", b"/apis?a=%"),
        (b"/apis/%41", b"/apis/%41"),
        (b"https://h/apis?a=%zz", b"/apis?a=%zz"),
    ],
)
def test_a_bad_escape_in_the_query_and_a_good_one_in_the_path_are_served(
    target: bytes, served: bytes
) -> None:
    answer, _, _ = _exchange(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"served " + served), answer
