"""The registry's origin is compared as an origin, not as text (review r3leasestop L1): a URL the
registry names (an upload location, a next page, where a redirect led) that writes its scheme's default
port out (``https://reg:443``) or leaves it out, or writes the host or scheme in another case, is the
registry's; another port, host or scheme never is."""

from __future__ import annotations

import urllib.parse

import pytest
from twisted.internet.task import Clock

from payloadtags.registry import RegistryClient, RegistryNotFound, RegistryProtocolError, RegistrySettings
from payloadtags.registry.client import _origin, _plain_origin
from tests.unit.test_registry_client_unit import Answer, ScriptedAgent, Sent, digest_of, json_answer, result

SAME = [
    ("https://reg.example:443", "https://reg.example"),
    ("http://reg.example:80", "http://reg.example"),
    ("https://reg.example", "https://reg.example:443/v2/ns/app/blobs/uploads/1?_state=x"),
    ("https://reg.example:443", "HTTPS://REG.Example/v2/"),
    ("http://127.0.0.1:80", "http://127.0.0.1/v2/"),
    ("https://[::1]:443", "https://[::1]/v2/"),
    ("https://reg.example:5000", "https://Reg.Example:5000/v2/"),
    ("http://reg.example:", "http://reg.example:80"),  # an empty port is the default (RFC 3986 6.2.3)
    ("https://xn--bcher-kva.example", "https://b\u00fccher.example:443/v2/"),  # IDNA, as --registry-url's
]

DIFFERENT = [
    ("https://reg.example", "https://reg.example:8443"),
    ("https://reg.example", "https://reg.example:80"),  # http's default port, not https's
    ("http://reg.example", "https://reg.example"),
    ("https://reg.example:443", "http://reg.example:443"),
    ("https://reg.example", "https://other.example:443"),
    ("https://reg.example", "https://reg.example.:443"),  # another name for DNS and TLS
    ("https://reg.example", "https://user@reg.example:443"),
    ("http://reg.example", "http://reg.example:8o"),  # a port that is no number is no default one
    ("https://xn--bcher-kva.example", "https://bucher.example"),
]


@pytest.mark.parametrize(("base", "url"), SAME)
def test_an_origin_written_otherwise_is_the_same_origin(base: str, url: str) -> None:
    assert _origin(url) == _origin(base)
    assert _origin(base) == _origin(url)


@pytest.mark.parametrize(("base", "url"), DIFFERENT)
def test_another_port_host_or_scheme_is_another_origin(base: str, url: str) -> None:
    assert _origin(url) != _origin(base)
    assert _origin(base) != _origin(url)


def _client(base: str, handler: ScriptedAgent) -> RegistryClient:
    return RegistryClient(Clock(), RegistrySettings(url=base), agent=handler, monotonic=Clock().seconds)


# (--registry-url, the upload Location the registry answers, where the upload PUT goes)
UPLOADS = [
    (
        "https://reg.example:443",
        "https://reg.example/v2/ns/app/blobs/uploads/1?_state=s",
        "https://reg.example:443/v2/ns/app/blobs/uploads/1?_state=s",
    ),
    (
        "http://reg.example:80",
        "http://reg.example/v2/ns/app/blobs/uploads/1",
        "http://reg.example:80/v2/ns/app/blobs/uploads/1",
    ),
    (
        "https://reg.example",
        "https://reg.example:443/v2/ns/app/blobs/uploads/1?_state=s",
        "https://reg.example/v2/ns/app/blobs/uploads/1?_state=s",
    ),
    (
        "https://reg.example",
        "HTTPS://REG.EXAMPLE:443/v2/ns/app/blobs/uploads/1",
        "https://reg.example/v2/ns/app/blobs/uploads/1",
    ),
    (
        "https://reg.example:5000",
        "/v2/ns/app/blobs/uploads/1",
        "https://reg.example:5000/v2/ns/app/blobs/uploads/1",
    ),
]


@pytest.mark.parametrize(("base", "location", "put"), UPLOADS)
def test_an_upload_location_with_the_default_port_written_otherwise_is_uploaded_to(
    base: str, location: str, put: str
) -> None:
    """The upload goes where the registry said, written as --registry-url writes its origin: the
    request goes as every request to the registry does (its checks, its TLS handshake first)."""

    def handler(sent: Sent) -> Answer:
        if sent.method == "HEAD":
            return Answer(404)
        if sent.method == "POST":
            return Answer(202, {"Location": location})
        return Answer(201)

    agent = ScriptedAgent(handler)
    client = _client(base, agent)
    digest = result(client._ensure_blob("ns/app", b"{}", "deleting tag ns/app:v1"))
    assert digest == digest_of(b"{}")
    # As the client writes it (treq, on an injected Agent, then leaves a default port out).
    assert client._as_written(urllib.parse.urljoin(base + "/v2/ns/app/blobs/uploads/", location)) == put
    puts = [sent.url for sent in agent.sent if sent.method == "PUT"]
    assert len(puts) == 1
    assert _origin(puts[0]) == _origin(base)
    sent, said = urllib.parse.urlsplit(puts[0]), urllib.parse.urlsplit(put)
    assert sent.path == said.path == "/v2/ns/app/blobs/uploads/1"
    assert sent.query == "&".join([*filter(None, [said.query]), f"digest={urllib.parse.quote(digest)}"])


@pytest.mark.parametrize(
    ("base", "location"),
    [
        ("https://reg.example", "https://reg.example:8443/v2/ns/app/blobs/uploads/1"),
        ("https://reg.example:443", "http://reg.example:443/v2/ns/app/blobs/uploads/1"),
        ("http://reg.example", "http://reg.example:8080/v2/ns/app/blobs/uploads/1"),
        ("https://reg.example", "https://other.example:443/v2/ns/app/blobs/uploads/1"),
    ],
)
def test_an_upload_location_on_another_port_or_host_is_still_refused(base: str, location: str) -> None:
    def handler(sent: Sent) -> Answer:
        return Answer(404) if sent.method == "HEAD" else Answer(202, {"Location": location})

    agent = ScriptedAgent(handler)
    client = _client(base, agent)
    with pytest.raises(RegistryProtocolError) as caught:
        result(client._ensure_blob("ns/app", b"{}", "deleting tag ns/app:v1"))
    assert "the upload location points elsewhere" in caught.value.message
    assert [sent.method for sent in agent.sent] == ["HEAD", "POST"]


def test_a_next_page_link_with_the_default_port_written_out_is_followed() -> None:
    base = "https://reg.example"

    def handler(sent: Sent) -> Answer:
        if "last=" in sent.url:
            return json_answer({"tags": ["v2"]})
        return json_answer(
            {"tags": ["v1"]}, Link='<https://reg.example:443/v2/ns/app/tags/list?last=v1&n=1>; rel="next"'
        )

    agent = ScriptedAgent(handler)
    client = _client(base, agent)
    assert list(result(client.tags("ns/app"))) == ["v1", "v2"]
    assert [sent.url for sent in agent.sent] == [
        f"{base}/v2/ns/app/tags/list",
        f"{base}/v2/ns/app/tags/list?last=v1&n=1",
    ]


@pytest.mark.parametrize("port", ["", ":443"])
def test_a_redirect_to_the_registrys_own_origin_written_otherwise_is_the_registrys(port: str) -> None:
    """A read the registry redirects to its own origin, written otherwise: its 404 is the registry's
    "not found", not a redirect target's storage failing."""
    base = "https://reg.example:443" if not port else "https://reg.example"
    digest = "sha256:" + "a" * 64
    moved = f"https://REG.example{port}/moved/{digest}"

    def handler(sent: Sent) -> Answer:
        if "/moved/" in sent.url:
            return json_answer({"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}, 404)
        return Answer(307, {"Location": moved})

    client = _client(base, ScriptedAgent(handler))
    with pytest.raises(RegistryNotFound) as caught:
        result(client.blob("ns/app", digest))
    assert str(caught.value) == f"blob ns/app@{digest} not found in registry {base} (BLOB_UNKNOWN)"


@pytest.mark.parametrize(
    ("base", "moved", "credentials"),
    [
        ("https://reg.example", "https://reg.example:443/moved", True),
        ("https://reg.example:443", "https://reg.example/moved", True),
        ("https://reg.example", "https://reg.example:8443/moved", False),
        ("https://reg.example:443", "https://reg.example:80/moved", False),
        ("https://reg.example", "http://reg.example:443/moved", False),
    ],
)
def test_a_redirected_read_keeps_the_registrys_credentials_on_its_origin_only(
    base: str, moved: str, credentials: bool
) -> None:
    data = b'{"architecture": "amd64"}'

    def handler(sent: Sent) -> Answer:
        if "/moved" in sent.url:
            return Answer(200, {}, data)
        if sent.header("Authorization") != "Basic dTpw":  # u:p
            return Answer(401, {"WWW-Authenticate": 'Basic realm="registry"'})
        return Answer(307, {"Location": moved})

    agent = ScriptedAgent(handler)
    client = RegistryClient(
        Clock(),
        RegistrySettings(url=base, username="u", password="p"),
        agent=agent,
        monotonic=Clock().seconds,
    )
    assert result(client.blob("ns/app", digest_of(data))) == data
    assert [sent.url for sent in agent.sent][-1] == moved
    assert (agent.sent[-1].header("Authorization") == "Basic dTpw") is credentials


def test_the_http_origins_that_answered_are_noted_as_origins() -> None:
    """`_plain_answered` (whether a port served plain HTTP) notes an origin however it is written."""
    assert (
        _plain_origin("http://Reg.example:80/v2/")
        == _plain_origin("http://reg.example")
        == "http://reg.example"
    )
    assert _plain_origin("http://reg.example:8080/v2/") == "http://reg.example:8080"
    assert _plain_origin("https://reg.example/v2/") is None
