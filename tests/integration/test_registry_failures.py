"""What users and the log see when the registry's token service fails, or when the registry pages its
catalog without end: payloadtags servers over HTTPS, in front of a real registry or a scripted one."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.web.server import Request

from payloadtags import logs
from payloadtags.cleanup.cascade import Cascade
from payloadtags.cleanup.removal import NamespaceRemover
from payloadtags.cleanup.sweep import ABSENT
from payloadtags.kube import Backoff
from payloadtags.names import encode_name
from payloadtags.registry import RegistryClient, RegistrySettings
from payloadtags.registry.client import _Reply
from payloadtags.registry.redaction import REDACTED
from payloadtags.registry.transport import OriginRequests
from tests.conftest import BASIC_USER, TOKEN_USER
from tests.integration.test_api import B, assert_status, collection
from tests.support import images
from tests.support.cleanup_fixtures import unique_namespace
from tests.support.clocks import SkipAhead
from tests.support.rbac import ensure_namespace, eventually
from tests.support.registry_server import RegistryServer, TokenServer
from tests.support.scripted_http import Answer, serving
from tests.support.unanswered import first_of


@pytest_twisted.ensureDeferred
async def test_a_token_service_answering_404_is_503_never_not_found(
    make_server: Any, token_registry: RegistryServer, token_server: TokenServer, repo: str
) -> None:
    # A realm with a wrong path answers 404: that says nothing about the tag, which is still there.
    images.push_oci_image(token_registry, repo, "v1")
    namespace, _, path = repo.partition("/")
    user, password = TOKEN_USER
    token_server.fail_with = 404
    try:
        server = await make_server(
            token_registry,
            registry=RegistrySettings(url=token_registry.url, username=user, password=password, timeout=5.0),
        )
        client = server.client(server.pki.admin)
        item = f"{collection(namespace)}/{encode_name(path, 'v1')}"
        for reply in (
            await client.get(item),
            await client.delete(item),
            await client.get(collection(namespace)),
        ):
            status = assert_status(reply, 503, "ServiceUnavailable")
            assert status["message"] == (
                f"the token service {token_server.realm} of registry {token_registry.url} answered HTTP 404, "
                "not a token; check the realm the registry's challenge names"
            )
    finally:
        token_server.fail_with = None
    assert images.list_tags(token_registry, repo) == ["v1"]


@pytest_twisted.ensureDeferred
async def test_a_catalog_that_ignores_last_ends_the_index_refresh_and_the_list_with_an_error(
    make_server: Any, reactor: Any, pki: Any, tmp_path: Path
) -> None:
    # A registry that ignores last= and keeps sending a next link. Past 10 pages it fails, so that a
    # walk that does not see the loop ends all the same here (it read forever, holding every page).
    pages: list[str] = []

    def answer(request: Request, path: str) -> bytes:
        request.setHeader("Content-Type", "application/json")
        if path == "/v2/":
            return b"{}"
        if path.startswith("/v2/_catalog"):
            pages.append(path)
            if len(pages) > 10:
                request.setResponseCode(500)
                return b'{"errors": [{"code": "UNKNOWN"}]}'
            request.setHeader("Link", '</v2/_catalog?last=team%2Fb&n=1000>; rel="next"')
            return json.dumps({"repositories": ["team/a", "team/b"]}).encode()
        request.setResponseCode(404)
        return b'{"errors": [{"code": "NAME_UNKNOWN"}]}'

    token_file = tmp_path / "events-token"
    token_file.write_text("events-token-value\n")
    refused = "the repository catalog page after 'team/b' holds 'team/a', which does not come after it"
    async with serving(reactor, answer) as (url, _):
        with capturedLogs() as events:
            server = await make_server(url, registry_events_token_file=str(token_file))

            def failures() -> list[str]:
                warned = [formatEvent(event) for event in events if event.get("log_level") == LogLevel.warn]
                return [line for line in warned if line.startswith("repository index refresh failed")]

            async def refresh_failed() -> bool:
                return bool(failures())

            assert await eventually(refresh_failed, within=10), events
            [line] = failures()
        assert line.startswith(f"repository index refresh failed: registry {url}: {refused}")
        # The first page, and the one that came back to it (besides the start-up probe's n=1).
        assert [page for page in pages if page != "/v2/_catalog?n=1"] == [
            "/v2/_catalog?n=1000",
            "/v2/_catalog?n=1000&last=team%2Fb",
        ]
        assert server.running.index is not None and not server.running.index.ready

        # A list of every namespace walks the catalog itself (the index is not ready): it ends too.
        reply = await server.client(pki.admin).get(f"{B}/payloadrepositorytags")
        status = assert_status(reply, 503, "ServiceUnavailable")
        assert refused in status["message"]
        assert len(pages) == 5, pages


@pytest_twisted.ensureDeferred
async def test_a_removal_passes_again_after_an_access_refusal_the_next_pass_may_not_meet(
    token_registry: RegistryServer, token_server: TokenServer
) -> None:
    """The token service grants the namespace's `delete` only from its third token request on (an
    ACL or RBAC grant still being rolled out): the removal's first pass is refused ("denied
    access"). That is no refusal a retry certainly meets again (deletes turned off, a 501): the
    removal passes again after its backoff, within its budget, and empties the namespace
    (review-dscheck2 G2). The backoff is sat out on a `Clock` the test advances when told."""
    namespace = unique_namespace("granting")
    repository = f"{namespace}/app"
    images.push_oci_image(token_registry, repository, "a", seed=f"{namespace}-a")
    asked: list[list[str]] = []

    def grant(user: str | None, rtype: str, name: str, actions: list[str]) -> list[str]:
        if name == repository and "delete" in actions:
            asked.append(actions)
            if len(asked) <= 2:
                return [action for action in actions if action != "delete"]
        return actions

    backing_off: list[Deferred[float]] = []

    class Told(Backoff):
        def next_delay(self) -> float:
            delay = super().next_delay()
            if backing_off:
                # From the next reactor turn, once the cascade waits on the clock.
                reactor.callLater(0, backing_off.pop(0).callback, delay)
            return delay

    original = token_server.grant
    token_server.grant = grant
    username, password = TOKEN_USER
    client = RegistryClient(
        reactor,
        RegistrySettings(url=token_registry.url, timeout=30.0, username=username, password=password),
    )
    clock = Clock()

    async def gone(name: str) -> tuple[str, str | None]:
        return ABSENT, None

    remover = NamespaceRemover(Cascade(client, clock, concurrency=1, backoff=Told), clock, gone)
    try:
        told: Deferred[float] = Deferred()
        backing_off.append(told)
        removal = Deferred.fromCoroutine(remover.remove(namespace, 60.0))
        passes_failed = 0
        while True:
            delays: list[float] = []
            told.addCallback(delays.append)
            await first_of(removal, told)
            if removal.called:
                break
            passes_failed += 1
            told = Deferred()
            backing_off.append(told)
            clock.advance(delays[0])  # the backoff's delay
        await removal  # finished (a refusal would raise here)
    finally:
        token_server.grant = original
        await client.close()
    assert passes_failed >= 1  # the first pass was refused
    assert images.list_tags(token_registry, repository) == []


# --- credentials echoed in the registry's errors (review r1obs L1) ----------------------------------

ECHO_USER = "reguser"
ECHO_PASSWORD = "S3cretRegPass"
# What the fake token service issues: a bearer token of catalog and delete scope, as good as the login.
ECHO_TOKEN = "tok.eyJzY29wZSI6ImNhdGFsb2cifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
ECHO_BASIC = base64.b64encode(f"{ECHO_USER}:{ECHO_PASSWORD}".encode()).decode()
# A refresh token the token service may add to its answer: the client never sends it, nor notes it.
REFRESH_TOKEN = "refresh.c2Vzc2lvbi1vZi10aGUtcmVmcmVzaA"


def _echoing(
    status: int, *, bearer: bool = False, token_status: int | None = None, refresh: str | None = None
) -> Answer:
    """A registry (and its token service, at /token) that answers every authenticated request with
    ``status`` and an error document echoing the request's Authorization header, as sent and decoded,
    as a proxy or registry that reflects it might. ``bearer``: it asks for a token, from a token service
    that answers ``token_status`` with the same echo, or issues ECHO_TOKEN (and ``refresh``, a
    refresh token)."""

    def echoed(request: Request, what: str, code: int) -> bytes:
        sent = request.getHeader("authorization") or ""
        scheme, _, credential = sent.partition(" ")
        decoded = base64.b64decode(credential).decode() if scheme == "Basic" else credential
        request.setResponseCode(code)
        message = f"{what} for Authorization: {sent} (that is {decoded})"
        return json.dumps({"errors": [{"code": "DENIED", "message": message}]}).encode()

    def answer(request: Request, path: str) -> bytes:
        request.setHeader("Content-Type", "application/json")
        if path.startswith("/token"):
            if token_status is not None:
                return echoed(request, "no token", token_status)
            issued = {"token": ECHO_TOKEN, "expires_in": 300}
            return json.dumps(issued if refresh is None else {**issued, "refresh_token": refresh}).encode()
        if request.getHeader("authorization") is None:
            port = request.getHost().port
            request.setResponseCode(401)
            request.setHeader(
                "WWW-Authenticate",
                f'Bearer realm="http://127.0.0.1:{port}/token",service="echo"'
                if bearer
                else 'Basic realm="echo"',
            )
            return b'{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}'
        return echoed(request, "denied", status)

    return answer


SECRETS = (ECHO_PASSWORD, ECHO_BASIC, ECHO_TOKEN)


def _leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


async def _echoed_reads(make_server: Any, pki: Any, url: str) -> tuple[list[Any], Sequence[dict[str, Any]]]:
    """A server in front of the echoing registry at ``url`` with its login, and its answers to a
    namespace's list, an all-namespaces list and a get, with what was logged meanwhile."""
    with capturedLogs() as events:
        server = await make_server(
            url,
            registry=RegistrySettings(url=url, username=ECHO_USER, password=ECHO_PASSWORD, timeout=5.0),
        )
        client = server.client(pki.admin)
        replies = [
            await client.get(path)
            for path in (
                collection("ns"),
                f"{B}/payloadrepositorytags",
                f"{collection('ns')}/{encode_name('app', 'v1')}",
            )
        ]
    return replies, events


@pytest.mark.parametrize(
    ("status", "bearer", "token_status"),
    [
        (400, False, None),
        (403, False, None),
        (418, False, None),
        (500, False, None),
        (501, False, None),
        (403, True, None),
        (500, True, None),
        (400, True, 400),
        (400, True, 500),
    ],
)
@pytest_twisted.ensureDeferred
async def test_credentials_a_registry_echoes_reach_neither_the_caller_nor_the_log(
    make_server: Any, reactor: Any, pki: Any, status: int, bearer: bool, token_status: int | None
) -> None:
    """A registry, or its token service, whose error text echoes the Authorization header it was sent
    (the Basic header, the password a proxy decodes from it, a token issued with catalog scope): its
    text is passed on, with each of those redacted, in the Status message of every request that fails
    there and in the log."""
    async with serving(reactor, _echoing(status, bearer=bearer, token_status=token_status)) as (url, seen):
        replies, events = await _echoed_reads(make_server, pki, url)
    messages = []
    for reply in replies:
        assert reply.code in (503, 504), reply.body
        messages.append(reply.json()["message"])
        # The echoing server was asked with each credential (the test asks what it means to).
        sent = {authorization for _, _, authorization in seen.seen if authorization}
        assert f"Basic {ECHO_BASIC}" in sent
        assert (f"Bearer {ECHO_TOKEN}" in sent) == (bearer and token_status is None)
        for message in messages:
            assert not _leaked(message), message
            # The registry's own words still reach the caller, the credential in them replaced.
            assert "for Authorization: Basic <redacted> (that is reguser:<redacted>)" in message or (
                "for Authorization: Bearer <redacted> (that is <redacted>)" in message
            ), message
        logged = [formatEvent(event) for event in events] + [repr(event) for event in events]
        assert not [line for line in logged if _leaked(line)]
        assert any("<redacted>" in line for line in logged)


def _echoing_in(route: str) -> Answer:
    """A registry with Basic auth that echoes the request's Authorization in a text other than its
    error document's message (review r2redact F1, F2, F3, F5, L1), by ``route``: a Link header (to
    another origin, back to a page read, with a space in it, not a URL), a 401's challenge (its
    scheme, its insufficient_scope), a redirect's Location, a manifest's Docker-Content-Digest."""

    def answer(request: Request, path: str) -> bytes:
        request.setHeader("Content-Type", "application/json")
        sent = request.getHeader("authorization")
        if sent is None:
            request.setResponseCode(401)
            # A proxy's challenge whose first word echoes the password it was last sent.
            scheme = ECHO_PASSWORD if route == "scheme" else "Basic"
            request.setHeader("WWW-Authenticate", f'{scheme} realm="echo"')
            return b'{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}'
        quoted = sent.replace(" ", "%20")
        if route == "scope":
            if path.startswith("/token"):
                return json.dumps({"token": ECHO_TOKEN, "expires_in": 300}).encode()
            # A token service's grant echoed back in the scope a token lacks.
            request.setResponseCode(401)
            realm = f"http://127.0.0.1:{request.getHost().port}/token"
            request.setHeader(
                "WWW-Authenticate",
                f'Bearer realm="{realm}",error="insufficient_scope",scope="Basic {ECHO_BASIC}"',
            )
            return b'{"errors": [{"code": "DENIED", "message": "denied"}]}'
        if path.startswith("/v2/_catalog"):
            if route == "catalog-elsewhere":
                request.setHeader(
                    "Link", f'<http://other.example/v2/_catalog?last=ns/app&auth={quoted}>; rel="next"'
                )
            return json.dumps({"repositories": ["ns/app"]}).encode()
        if "/tags/list" in path:
            if route == "tags-loop":
                request.setHeader("Link", f'</v2/ns/app/tags/list?n=1&auth={quoted}>; rel="next"')
            if route == "tags-space" and "auth=" not in path:
                request.setHeader("Link", f'</v2/ns/app/tags/list?n=1&auth={sent}>; rel="next"')
            if route == "link-not-url":
                request.setHeader("Link", f'<http://[{quoted}/v2/ns/app/tags/list?n=1>; rel="next"')
            return json.dumps({"name": "ns/app", "tags": ["v1"]}).encode()
        if "/manifests/" in path:
            request.setHeader("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            request.setHeader("Docker-Content-Digest", f"sha256:{sent}")
            return json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": "sha256:" + "0" * 64,
                        "size": 2,
                    },
                    "layers": [],
                }
            ).encode()
        return b"{}"

    return answer


# What each route's error says, so that the test knows the route was taken.
_ECHO_ROUTES = {
    "catalog-elsewhere": "the next page link points elsewhere: http://other.example",
    "tags-loop": "the next page link (to /v2/ns/app/tags/list) does not move past",
    "tags-space": "the next page link has a space or control character",
    "link-not-url": "the next page link is not a URL",
    "scheme": "authentication, which this client does not support",
    "scope": "the token does not grant Basic <redacted>",
    "digest": "invalid digest",
}


def _echo_leaked(text: str) -> list[str]:
    # The password lower-cased too: a challenge's scheme is compared lower-cased (review r2redact L1).
    return [secret for secret in (*SECRETS, ECHO_PASSWORD.lower()) if secret in text]


@pytest.mark.parametrize("route", sorted(_ECHO_ROUTES))
@pytest_twisted.ensureDeferred
async def test_credentials_a_registry_echoes_outside_its_error_document_reach_neither_the_caller_nor_the_log(
    make_server: Any, reactor: Any, pki: Any, route: str
) -> None:
    """Every registry text a message quotes is redacted, whichever text it is (review r2redact F3):
    a Link, a challenge, a Location, a digest header. A malformed Link is a protocol error, said
    without a traceback (F5)."""
    async with serving(reactor, _echoing_in(route)) as (url, seen):
        replies, events = await _echoed_reads(make_server, pki, url)
    messages = [reply.json().get("message", "") for reply in replies]
    if route != "scheme":  # that proxy never asks for the login
        assert f"Basic {ECHO_BASIC}" in {authorization for _, _, authorization in seen.seen}
    assert any(_ECHO_ROUTES[route] in message for message in messages), messages
    for message in messages:
        assert not _echo_leaked(message), message
    # The scripted registry's own access log names the pages it was asked for, echo and all: not ours.
    ours = [event for event in events if not formatEvent(event).startswith('"127.0.0.1" - - [')]
    logged = [formatEvent(event) for event in ours] + [repr(event) for event in ours]
    assert not [line for line in logged if _echo_leaked(line)]
    assert not [event for event in ours if "log_failure" in event]


def _realm_echo(request: Request, path: str) -> bytes:
    """A registry whose Bearer challenge names a token realm echoing the Authorization it was sent, as
    received: "Basic <base64>", a space in it."""
    request.setHeader("Content-Type", "application/json")
    sent = request.getHeader("authorization")
    request.setResponseCode(401)
    if sent is None:
        request.setHeader("WWW-Authenticate", 'Basic realm="r"')
    else:
        port = request.getHost().port
        request.setHeader(
            "WWW-Authenticate", f'Bearer realm="http://127.0.0.1:{port}/token?echo={sent}",service="r"'
        )
    return b'{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}'


def _ftp_realm(request: Request, path: str) -> bytes:
    request.setHeader("Content-Type", "application/json")
    request.setResponseCode(401)
    request.setHeader("WWW-Authenticate", 'Bearer realm="ftp://127.0.0.1/token",service="r"')
    return b'{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}'


@pytest.mark.parametrize(
    ("route", "refused"),
    [("space-echo", "a space or control character in it"), ("ftp", "not http or https")],
)
@pytest_twisted.ensureDeferred
async def test_a_token_realm_the_client_cannot_request_is_a_protocol_error_said_once_without_the_realm(
    make_server: Any, reactor: Any, pki: Any, route: str, refused: str
) -> None:
    """A token realm with a space in it (an echo of the Basic header) or of another scheme reached the
    Agent: a traceback per token fetch, the realm's URL in it unredacted (review r3redact F2). Now it
    is refused before it is requested, a protocol error naming the token service, said once a period."""
    answer = _realm_echo if route == "space-echo" else _ftp_realm
    user, password = (ECHO_USER, ECHO_PASSWORD) if route == "space-echo" else (None, None)
    async with serving(reactor, answer) as (url, _):
        with capturedLogs() as events:
            server = await make_server(
                url, registry=RegistrySettings(url=url, username=user, password=password, timeout=5.0)
            )
            client = server.client(pki.admin)
            messages = []
            # Basic sent first gets a Bearer challenge after it: "rejected" on the first and third
            # list (r3redact N2), the token realm on the second; the ftp realm on all three.
            for path in (collection("ns"), f"{B}/payloadrepositorytags", collection("ns")):
                reply = await client.get(path)
                messages.append(reply.json().get("message", ""))
    assert any(
        f"the token service {'ftp://127.0.0.1' if route == 'ftp' else url}/token of registry {url}: "
        f"a URL the registry named cannot be requested ({refused})" in message
        for message in messages
    ), messages
    for message in messages:
        assert not _echo_leaked(message), message
    ours = [event for event in events if not formatEvent(event).startswith('"127.0.0.1" - - [')]
    logged = [formatEvent(event) for event in ours] + [repr(event) for event in ours]
    assert not [line for line in logged if _echo_leaked(line)]
    assert not [event for event in ours if "log_failure" in event]
    # FailureLog's line, once for the lists (the startup check says it too, once, in its own words).
    said = [
        event
        for event in ours
        if "cannot be requested" in formatEvent(event) and event.get("operation") is not None
    ]
    assert len(said) == 1 and said[0]["log_level"] == LogLevel.warn, [formatEvent(e) for e in said]


class _StatusLineEcho(Protocol):
    """A server that answers an authenticated request with a status line echoing its Authorization
    (Twisted's ParseError quotes the line it cannot parse: review r2redact F2)."""

    def connectionMade(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        sent = [line for line in head.split(b"\r\n") if line.lower().startswith(b"authorization:")]
        assert self.transport is not None
        if not sent:
            self.transport.write(
                b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="x"\r\nContent-Length: 0\r\n\r\n'
            )
            return
        self.transport.write(b"HTTP/1.1 4O3 denied " + sent[0].split(b":", 1)[1].strip() + b"\r\n\r\n")
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_status_line_that_echoes_the_credentials_reaches_neither_the_caller_nor_the_log(
    make_server: Any, reactor: Any, pki: Any
) -> None:
    port = reactor.listenTCP(0, Factory.forProtocol(_StatusLineEcho), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    try:
        with capturedLogs() as events:
            server = await make_server(
                url,
                registry=RegistrySettings(url=url, username=ECHO_USER, password=ECHO_PASSWORD, timeout=5.0),
            )
            client = server.client(pki.admin)
            messages = [
                (await client.get(path)).json()["message"]
                for path in (collection("ns"), f"{B}/payloadrepositorytags")
            ]
    finally:
        await port.stopListening()
    for message in messages:
        assert "is unavailable: not an HTTP answer (non-integer status code)" in message, message
        assert not _echo_leaked(message), message
    logged = [formatEvent(event) for event in events] + [repr(event) for event in events]
    assert not [line for line in logged if _echo_leaked(line)]


@pytest.mark.parametrize("registry", ["error-document", "catalog-link"])
@pytest_twisted.ensureDeferred
async def test_a_caller_without_access_rules_meets_the_registry_error_redacted(
    make_server: Any, reactor: Any, pki: Any, kube_api: Any, kube_kubeconfig: Path, registry: str
) -> None:
    """Every authenticated user may list (docs/access.md): the list reads the catalog before it decides
    which repositories the caller sees, so one with no access rules at all meets a registry's error
    too, and is shown its text: without the credentials it echoes."""
    answer = _echoing(403) if registry == "error-document" else _echoing_in("catalog-elsewhere")
    async with serving(reactor, answer) as (url, _):
        server = await make_server(
            url,
            registry=RegistrySettings(url=url, username=ECHO_USER, password=ECHO_PASSWORD, timeout=5.0),
            kubeconfig=str(kube_kubeconfig),
            authorization_mode="RBAC",
            review_delays=SkipAhead(),
        )

        async def synced() -> bool:
            return bool((await server.client(None).get("/readyz/rbac")).code == 200)

        assert await eventually(synced, within=30) is True
        ensure_namespace(kube_api, "ns")
        nobody = server.client(pki.client_ca.client("nobody"))
        for path in (collection("ns"), f"{B}/payloadrepositorytags"):
            status = assert_status(await nobody.get(path), 503, "ServiceUnavailable")
            assert (
                "denied for Authorization: Basic <redacted> (that is reguser:<redacted>)" in status["message"]
                if registry == "error-document"
                else _ECHO_ROUTES["catalog-elsewhere"] in status["message"]
            )
            assert not _leaked(status["message"]), status["message"]


def _written(events: Sequence[dict[str, Any]]) -> dict[str, str]:
    """What the observer the server installs (`logs.observer`) writes of ``events``, in each format."""
    written = {}
    for log_format in logs.FORMATS:
        out = io.StringIO()
        observer = logs.observer(log_format, out=out)
        for event in events:
            observer(event)
        written[log_format] = out.getvalue()
    return written


class _TransportBug(Exception):
    """What a bug below the client might raise: the request's Authorization header in its text."""


@pytest.mark.parametrize("login", ["basic", "token"])
@pytest_twisted.ensureDeferred
async def test_an_unexpected_failure_quoting_the_credentials_is_logged_with_its_traceback_redacted(
    make_server: Any, pki: Any, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, login: str
) -> None:
    """An exception the client does not expect is logged with its traceback (`_transport_error`'s
    log.failure), its text as raised: the Status message was redacted, the log's traceback was not. A
    transport that raises with the Authorization header in its text now has the password, the Basic
    base64 and the token replaced in what the log writes, in either format, the traceback kept."""
    registry = request.getfixturevalue("htpasswd_registry" if login == "basic" else "token_registry")
    user, password = BASIC_USER if login == "basic" else TOKEN_USER
    sent: list[str] = []
    requested = OriginRequests.request

    def leaky_request(
        self: OriginRequests, method: bytes, path: bytes, headers: Any, body: Any = None
    ) -> Any:
        authorization = headers.getRawHeaders(b"authorization")
        if not authorization:
            return requested(self, method, path, headers, body)
        value = authorization[0].decode()
        scheme, _, credential = value.partition(" ")
        sent.append(credential)
        bare = base64.b64decode(credential).decode() if scheme == "Basic" else credential
        raise _TransportBug(f"cannot send Authorization: {value} (that is {bare}) to {path.decode()}")

    monkeypatch.setattr(OriginRequests, "request", leaky_request)
    with capturedLogs() as events:
        server = await make_server(
            registry,
            registry=RegistrySettings(
                url=registry.url, username=user, password=password, ca_file=registry.ca_file, timeout=5.0
            ),
        )
        reply = await server.client(pki.admin).get(collection("ns"))
    secrets = [password, *sent]
    assert sent and sent[0].startswith("eyJ" if login == "token" else "")
    message = reply.json()["message"]
    shown = (
        "<redacted> (that is <redacted>)" if login == "token" else f"<redacted> (that is {user}:<redacted>)"
    )
    assert (
        f"unexpected failure: cannot send Authorization: {'Bearer' if login == 'token' else 'Basic'} {shown}"
        in (message)
    ), message
    failures = [event["log_failure"].getTraceback() for event in events if "log_failure" in event]
    # The test means something: the traceback logged holds the credentials as raised.
    assert [text for text in failures if sent[0] in text and (login == "token" or password in text)]
    for log_format, text in _written(events).items():
        assert not [secret for secret in secrets if secret in text], (log_format, text)
        assert "Traceback (most recent call last):" in text, log_format
        assert "in leaky_request" in text, log_format
        assert (
            f"_TransportBug: cannot send Authorization: {'Bearer' if login == 'token' else 'Basic'} {shown}"
            in (text)
        ), (log_format, text)


@pytest_twisted.ensureDeferred
async def test_a_parser_bug_that_quotes_the_registry_answer_is_logged_with_its_traceback_redacted(
    make_server: Any, reactor: Any, pki: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in reading a registry's answer (here the error document's parser, raising with the body it
    read) is logged with its traceback by whoever meets it first; the body, an echo of the request's
    Authorization, is written with the credentials replaced, the traceback kept."""

    def errors(self: _Reply) -> list[tuple[str, str]]:
        raise ValueError(f"cannot read the error document {self.body.decode()}")

    monkeypatch.setattr(_Reply, "errors", errors)
    async with serving(reactor, _echoing(403)) as (url, _):
        with capturedLogs() as events:
            server = await make_server(
                url,
                registry=RegistrySettings(url=url, username=ECHO_USER, password=ECHO_PASSWORD, timeout=5.0),
            )
            reply = await server.client(pki.admin).get(collection("ns"))
    assert reply.code == 500, reply.body
    assert not _leaked(reply.body.decode()), reply.body
    failures = [event["log_failure"].getTraceback() for event in events if "log_failure" in event]
    assert [text for text in failures if ECHO_PASSWORD in text and ECHO_BASIC in text]
    for log_format, text in _written(events).items():
        assert not _leaked(text), (log_format, text)
        assert "Traceback (most recent call last):" in text, log_format
        assert ", in errors" in text, log_format
        assert (
            "ValueError: cannot read the error document "
            '{"errors": [{"code": "DENIED", "message": "denied for Authorization: Basic <redacted> '
            '(that is reguser:<redacted>)"}]}'
        ) in text.replace('\\"', '"'), (log_format, text)


@pytest_twisted.ensureDeferred
async def test_a_bug_reading_the_token_answer_is_logged_without_its_tokens(
    make_server: Any, reactor: Any, pki: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token service's answer is read before its token is noted for redaction, and its refresh
    token never is (review r2tbredact F1): a bug raising with the answer's body (here the client's JSON
    reader) is logged with its traceback, and the caller answered, without the tokens."""
    json_of = RegistryClient._json

    def buggy(self: RegistryClient, reply: _Reply, what: str, *args: Any, **kwargs: Any) -> Any:
        if what.startswith("the token"):
            raise ValueError(f"cannot read {what}: {reply.body.decode()}")
        return json_of(self, reply, what, *args, **kwargs)

    monkeypatch.setattr(RegistryClient, "_json", buggy)
    async with serving(reactor, _echoing(403, bearer=True, refresh=REFRESH_TOKEN)) as (url, _):
        with capturedLogs() as events:
            server = await make_server(
                url,
                registry=RegistrySettings(url=url, username=ECHO_USER, password=ECHO_PASSWORD, timeout=5.0),
            )
            reply = await server.client(pki.admin).get(collection("ns"))
    tokens = (ECHO_TOKEN, REFRESH_TOKEN)
    assert reply.code == 500, reply.body
    assert not [token for token in tokens if token in reply.body.decode()], reply.body
    failures = [event["log_failure"].getTraceback() for event in events if "log_failure" in event]
    # The test means something: the traceback logged holds both tokens as raised.
    assert [text for text in failures if all(token in text for token in tokens)]
    for log_format, text in _written(events).items():
        assert not [token for token in tokens if token in text], (log_format, text)
        assert "Traceback (most recent call last):" in text, log_format
        assert ", in buggy" in text, log_format
        assert f'"token": "{REDACTED}"' in text.replace('\\"', '"'), (log_format, text)
        assert f'"refresh_token": "{REDACTED}"' in text.replace('\\"', '"'), (log_format, text)


@pytest_twisted.ensureDeferred
async def test_a_short_password_in_an_unexpected_failure_reaches_neither_the_caller_nor_a_log_line(
    make_server: Any, reactor: Any, pki: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password under 8 characters is not replaced by the net every message and log line passes
    (`in_message`); an unexpected failure's text, as raised, went into the caller's Status message and
    the log lines quoting that error with it (review r2tbredact L1). The client's own redaction, short
    ones included, now replaces it there; the traceback logged with it is the documented limit."""
    short = "hunt3r2"
    requested = OriginRequests.request

    def leaky_request(
        self: OriginRequests, method: bytes, path: bytes, headers: Any, body: Any = None
    ) -> Any:
        authorization = headers.getRawHeaders(b"authorization")
        if not authorization:
            return requested(self, method, path, headers, body)
        value = authorization[0].decode()
        bare = base64.b64decode(value.partition(" ")[2]).decode()
        raise _TransportBug(f"cannot send Authorization: {value} (that is {bare})")

    monkeypatch.setattr(OriginRequests, "request", leaky_request)
    async with serving(reactor, _echoing(403)) as (url, _):
        with capturedLogs() as events:
            server = await make_server(
                url, registry=RegistrySettings(url=url, username=ECHO_USER, password=short, timeout=5.0)
            )
            reply = await server.client(pki.admin).get(collection("ns"))
    message = reply.json()["message"]
    assert (
        f"unexpected failure: cannot send Authorization: Basic {REDACTED} (that is {ECHO_USER}:{REDACTED})"
        in message
    ), message
    lines = [formatEvent(event) for event in events]
    # The test means something: the start-up probe's and the list's log lines quote the error.
    assert len([line for line in lines if f"(that is {ECHO_USER}:{REDACTED})" in line]) >= 2, lines
    assert not [line for line in lines if short in line], lines
