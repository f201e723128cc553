"""The headers set in a response's Headers directly (issue #11) are what setHeader would store."""

from __future__ import annotations

import pytest
from twisted.web.http_headers import Headers, _nameEncoder
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from payloadtags.api import app


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


@pytest.mark.parametrize("name", [b"Content-Type", b"Cache-Control", b"Content-Length", b"Server", b"Date"])
def test_the_names_set_directly_are_spelled_as_headers_spells_them(name: bytes) -> None:
    assert _nameEncoder.encode(name.lower()) == name
