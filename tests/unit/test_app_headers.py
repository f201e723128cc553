"""The headers set in a response's Headers directly (issue #11) are what setHeader would store, and
what the server copies of Twisted, or relies on of its private parts, is still as it was: an upgrade
of Twisted fails here, saying what to re-check, rather than serve on a copy of a method it changed."""

from __future__ import annotations

import functools
import hashlib
import inspect
import time
from typing import Any, cast

import pytest
from twisted.web import http
from twisted.web.http_headers import Headers, _nameEncoder
from twisted.web.server import Request, version
from twisted.web.test.requesthelper import DummyChannel

from payloadtags.api import app
from payloadtags.http import channel


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/yaml", "application/json;as=Table;v=v1;g=meta.k8s.io", "a\r\nb"],
)
def test_the_head_of_an_answer_is_what_set_header_stores(content_type: str) -> None:
    request = Request(DummyChannel())
    app._head(request, 200, content_type)
    expected = Headers()
    expected.setRawHeaders(b"content-type", [content_type.encode()])
    expected.setRawHeaders(b"cache-control", [b"no-cache, private"])
    assert request.responseHeaders == expected
    assert request.code == 200


@pytest.mark.parametrize(
    "name", [b"Content-Type", b"Cache-Control", b"Content-Length", b"Server", b"Date", b"ETag", b"Vary"]
)
def test_the_names_set_directly_are_spelled_as_headers_spells_them(name: bytes) -> None:
    assert _nameEncoder.encode(name.lower()) == name


class _Documents:
    """What ApiServer._cached reads of its server: the rendered documents."""

    def __init__(self) -> None:
        self._documents: dict[int, tuple[Any, str, bytes]] = {}

    def _rendered(self, body: Any) -> tuple[str, bytes]:
        return app.ApiServer._rendered(cast(Any, self), body)

    def _cached(self, request: Request, body: Any, content_type: str) -> bytes:
        return app.ApiServer._cached(cast(Any, self), request, body, content_type)


@pytest.mark.parametrize("matching", [False, True])
def test_a_documents_head_is_what_set_header_stores_in_the_same_order(matching: bool) -> None:
    """Discovery and OpenAPI documents set ETag and Vary in the Headers directly (issue #11)."""
    documents = _Documents()
    body = {"kind": "APIGroupList", "groups": []}
    tag = app.discovery.etag(body)
    request = Request(DummyChannel())
    if matching:
        request.requestHeaders.setRawHeaders(b"if-none-match", [tag.encode()])
    answer = documents._cached(request, body, "application/json;g=apidiscovery.k8s.io")
    expected = Headers()
    expected.setRawHeaders(b"etag", [tag.encode()])
    expected.setRawHeaders(b"vary", [b"Accept"])
    if not matching:
        expected.setRawHeaders(b"content-type", [b"application/json;g=apidiscovery.k8s.io"])
        expected.setRawHeaders(b"cache-control", [b"no-cache, private"])
    assert list(request.responseHeaders.getAllRawHeaders()) == list(expected.getAllRawHeaders())
    assert (request.code, answer) == ((304, b"") if matching else (200, documents._rendered(body)[1]))


def test_a_request_without_a_query_parses_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most requests (discovery, gets, a whole list) have no query: nothing to parse (issue #11)."""
    parsed: list[str] = []

    def parse_qs(text: str, keep_blank_values: bool) -> dict[str, list[str]]:
        parsed.append(text)
        return {"x": [""]}

    monkeypatch.setattr(app, "parse_qs", parse_qs)
    for uri, query in [(b"/apis", {}), (b"/apis?", {}), (b"/apis#?", {}), (b"/apis?x", {"x": [""]})]:
        request = Request(DummyChannel())
        request.uri = uri
        assert dict(app._query(request)) == query, uri
    assert parsed == ["x"]
    # A "#" is the query's, as in Go's RawQuery (review r4chan N3): no client sends a fragment.
    request = Request(DummyChannel())
    request.uri = b"/apis?#x"
    assert dict(app._query(request)) == {"x": [""]} and parsed == ["x", "#x"]
    with pytest.raises(TypeError):
        app._NO_QUERY["x"] = [""]  # type: ignore[index]


def test_the_copy_of_twisteds_request_process_is_of_the_installed_twisteds() -> None:
    """GuardedRequest.process is twisted.web.server.Request.process with the Date header made once a
    second and the Server and Date headers set in the Headers directly (3149345, 5541b07). Twisted
    changing its process (a header, the path's parsing, the encoder, the error path) would leave the
    copy serving the old way, unsaid."""
    source = inspect.getsource(Request.process)
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert digest == channel.TWISTED_PROCESS_SHA256, (
        "twisted.web.server.Request.process is not the one GuardedRequest.process "
        "(src/payloadtags/http/channel.py) was copied from (Twisted 26.10.0): compare the two (the "
        "Server and Date headers, prepath and postpath and their unquoting, the '*' path, the "
        "resource's encoder, render and processingFailed), carry what changed over to the copy, then "
        f"set TWISTED_PROCESS_SHA256 to {digest}. The installed one:\n{source}"
    )


def test_the_raw_headers_have_the_shape_the_server_writes_into() -> None:
    """GuardedRequest.process, app._head and a page's Content-Length write Headers._rawHeaders, a
    private attribute: a dict of the name as Headers spells it to the list of the values' bytes, which
    getRawHeaders reads and the response's head is written from (getAllRawHeaders)."""
    headers = Headers()
    assert type(headers._rawHeaders) is dict and not headers._rawHeaders
    headers.setRawHeaders(b"content-type", [b"application/json"])
    assert headers._rawHeaders == {b"Content-Type": [b"application/json"]}
    headers._rawHeaders[b"Content-Length"] = [b"12"]
    assert headers.getRawHeaders(b"content-length") == [b"12"]
    assert headers.hasHeader(b"content-length")
    assert list(headers.getAllRawHeaders()) == [
        (b"Content-Type", [b"application/json"]),
        (b"Content-Length", [b"12"]),
    ]
    headers.removeHeader(b"content-length")
    assert headers._rawHeaders == {b"Content-Type": [b"application/json"]}


def test_the_server_and_date_headers_process_sets_are_what_set_header_stores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The Date on the test's clock: Twisted's datetimeToString() reads a coarser clock than
    # time.time(), a few ms behind it past a second, so a real-time before/after did not always hold it.
    at = 1_700_000_000.5
    monkeypatch.setattr(
        channel, "_http_date", functools.partial(channel._http_date, functools.partial(float, at))
    )
    request = channel.GuardedRequest(cast(Any, DummyChannel()))
    request.method, request.path, request.uri, request.clientproto = b"GET", b"/x", b"/x", b"HTTP/1.1"
    request.process()
    written = dict(request.responseHeaders.getAllRawHeaders())
    expected = Headers()
    expected.setRawHeaders(b"server", [version])
    expected.setRawHeaders(b"date", [http.datetimeToString(at)])
    assert written[b"Server"] == expected.getRawHeaders(b"server")
    assert written[b"Date"] == expected.getRawHeaders(b"date")


def test_the_date_header_process_sets_is_the_wall_clock_s() -> None:
    # Review r14misc N1: the tests above give the Date their own clocks, so a default clock of
    # _http_date other than the wall clock (time.monotonic: a Date in January 1970) passed them all.
    # Here it is read from time.time itself, to the second: no real-time bound of Twisted's coarser clock.
    request = channel.GuardedRequest(cast(Any, DummyChannel()))
    request.method, request.path, request.uri, request.clientproto = b"GET", b"/x", b"/x", b"HTTP/1.1"
    before = int(time.time())
    request.process()
    after = int(time.time())
    date = request.responseHeaders.getRawHeaders(b"date", [b""])[0]
    assert before <= http.stringToDatetime(date) <= after, date
