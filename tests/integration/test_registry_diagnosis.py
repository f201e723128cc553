"""The start-up probe against real registries, and rate-limited failure lines."""

from __future__ import annotations

import shutil
import time
from typing import Any, cast
from urllib.parse import urlsplit

import attrs
import pytest
import pytest_twisted
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.web.pages import notFound
from twisted.web.server import Site
from zope.interface import implementer

from payloadtags.api.errors import ApiError
from payloadtags.api.registry_errors import api_error_for
from payloadtags.registry import RegistryAuthFailed, RegistryClient, RegistryNotFound, RegistryUnavailable
from payloadtags.registry.client import RootAnswer
from payloadtags.registry_diagnosis import FailureLog, _hint, probe
from tests.support import images
from tests.support.rbac import eventually
from tests.support.registry_server import RegistryServer, TokenServer, free_port


@implementer(ILogObserver)
class Captured:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "payloadtags.registry_diagnosis":
            self.events.append(event)

    def __enter__(self) -> Captured:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)


@pytest_twisted.ensureDeferred
async def test_a_healthy_registry_is_described(make_client, registry):
    with Captured() as captured:
        line = await probe(make_client(registry), registry.url)
    assert line == (
        f"registry {registry.url} reachable: API version registry/2.0, authentication none, catalog allowed"
    )
    assert [e["log_level"] for e in captured.events] == [LogLevel.info]


@pytest_twisted.ensureDeferred
async def test_a_registry_with_deletes_turned_off_is_said_at_start(make_client, registry, nodelete_registry):
    # review-newcomer 3: the probe said "reachable … catalog allowed" and nothing more; the operator
    # learnt that deletes were off from a user's failed delete. One warning now says it, and what
    # it means; the server still starts (the probe's line is the same as before).
    images.push_oci_image(registry, "diagnosis/deletes", "v1")
    with Captured() as captured:
        line = await probe(make_client(nodelete_registry), nodelete_registry.url)
    assert line == (
        f"registry {nodelete_registry.url} reachable: API version registry/2.0, authentication none, "
        "catalog allowed"
    )
    said = [(e["log_level"], formatEvent(e)) for e in captured.events]
    assert said == [
        (LogLevel.info, line),
        (
            LogLevel.warn,
            f"registry {nodelete_registry.url} does not allow deletes (storage.delete.enabled is false): "
            "every delete, deletecollection and namespace cleanup will fail with 503 until its "
            "administrator sets storage.delete.enabled to true",
        ),
    ]


@pytest_twisted.ensureDeferred
async def test_a_registry_with_deletes_turned_off_and_no_repository_is_said_at_start(make_client):
    # The same before anything was pushed (a registry just installed): the check needs no repository.
    with RegistryServer(delete_enabled=False) as empty, Captured() as captured:
        await probe(make_client(empty), empty.url)
    assert [e["log_level"] for e in captured.events] == [LogLevel.info, LogLevel.warn]
    assert "does not allow deletes (storage.delete.enabled is false)" in formatEvent(captured.events[1])


@pytest_twisted.ensureDeferred
async def test_basic_auth_is_named_and_wrong_credentials_name_the_flags(make_client, htpasswd_registry):
    good = await probe(make_client(htpasswd_registry), htpasswd_registry.url)
    assert "authentication basic, catalog allowed" in good
    with Captured() as captured:
        bad = await probe(make_client(htpasswd_registry, password="wrong"), htpasswd_registry.url)
    assert bad.startswith(f"registry {htpasswd_registry.url} is reachable but refuses this server: ")
    assert "--registry-username-file/--registry-password-file" in bad
    assert captured.events[0]["log_level"] == LogLevel.error


@pytest_twisted.ensureDeferred
async def test_token_auth_is_named(make_client, token_registry):
    assert "authentication bearer, catalog allowed" in await probe(
        make_client(token_registry), token_registry.url
    )


@pytest_twisted.ensureDeferred
async def test_an_untrusted_certificate_names_the_ca_flag(make_client, tls_registry):
    line = await probe(make_client(tls_registry, ca_file=None), tls_registry.url)
    # ops3: no "check that it runs and is reachable" either: it ran and answered, with its certificate.
    assert line == (
        f"registry {tls_registry.url} cannot be used: it is unavailable: TLS failure: certificate verify "
        "failed; if the registry's certificate is signed by a private CA, give that CA with "
        "--registry-ca-file (and check that --registry-url names a host in the certificate)"
    )


@pytest_twisted.ensureDeferred
async def test_https_to_a_plain_http_registry_says_to_use_http(make_client, registry):
    # review-newcomer L3: the README's registry is plain HTTP; written https://, the advice was a private CA.
    url = registry.url.replace("http://", "https://")
    line = await probe(make_client(url), url)
    # ops3: without the client's "check that it runs and is reachable" before the hint: it answered.
    # review r2b N4: following the advice sends a password in clear; the line says so.
    assert line == (
        f"registry {url} cannot be used: it is unavailable: TLS failure: wrong version number; "
        f"port {urlsplit(url).port} does not speak TLS (it answered in plain text): use {registry.url} in "
        "--registry-url (registry credentials, if any, would then cross the network unencrypted)"
    )


@pytest_twisted.ensureDeferred
async def test_http_to_a_tls_registry_says_to_use_https(make_client, tls_registry):
    # review-newcomer L3: distribution answers plain HTTP on its TLS port with a 400, which read as
    # "is --registry-url the registry's API?".
    url = tls_registry.url.replace("https://", "http://")
    line = await probe(make_client(url), url)
    assert line == (
        f"registry {url} answered HTTP 400 to GET /v2/: port {urlsplit(url).port} serves HTTPS, not plain "
        f"HTTP: use {tls_registry.url} in --registry-url"
    )


class ClosesUnanswered(Protocol):
    """What a port that serves HTTPS only does with a plain-HTTP request (openssl s_server, a TCP
    passthrough proxy, payloadtags' own port): takes it, then closes the connection without a byte of
    answer, cleanly or with a reset."""

    def __init__(self, reset: bool) -> None:
        self.reset = reset

    def dataReceived(self, data: bytes) -> None:
        transport = cast(ITCPTransport, self.transport)
        if self.reset:
            transport.abortConnection()
        else:
            transport.loseConnection()


def closing_port(reactor: Any, reset: bool) -> Any:
    return reactor.listenTCP(0, Factory.forProtocol(lambda: ClosesUnanswered(reset)), interface="127.0.0.1")


def closed_advice(port: int) -> str:
    return (
        f"the connection was closed without an answer; if port {port} serves HTTPS only (such a port "
        f"closes a plain-HTTP connection without an answer), use https://127.0.0.1:{port} in --registry-url; "
        "otherwise check the registry's log and what sits in front of it (a proxy or load balancer)"
    )


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
@pytest_twisted.ensureDeferred
async def test_http_to_a_port_that_closes_unanswered_says_to_try_https(make_client, reactor, reset):
    # review r1user L3: "it is unavailable: Connection was closed cleanly.; check that it runs and is
    # reachable": Twisted's words, and advice to check what had just taken the connection.
    port = closing_port(reactor, reset)
    number = port.getHost().port
    url = f"http://127.0.0.1:{number}"
    try:
        line = await probe(make_client(url), url)
    finally:
        await port.stopListening()
    assert line == f"registry {url} cannot be used: it is unavailable: {closed_advice(number)}"


@pytest_twisted.ensureDeferred
async def test_the_503_of_a_port_that_closes_unanswered_says_to_try_https(make_client, reactor):
    # review r1user L3: a user meets the probe's words again in every 503 while serving.
    port = closing_port(reactor, reset=False)
    number = port.getHost().port
    url = f"http://127.0.0.1:{number}"
    error = await _unavailable_tags(make_client(url), port)
    assert (error.code, error.retry_after) == (503, 1)
    assert str(error) == f"registry {url} is unavailable: {closed_advice(number)}"


async def _unavailable_tags(client: RegistryClient, port: Any, ping: bool = False) -> ApiError:
    """What a user is answered for a tag list of ``client`` the registry at ``port`` drops (its 503),
    the port closed after; with ``ping``, after the registry answered its ping."""
    try:
        if ping:
            await client.ping()
        with pytest.raises(RegistryUnavailable) as caught:
            await client.tags("team-a/app")
    finally:
        await port.stopListening()
    return api_error_for(caught.value)


OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDocker-Distribution-Api-Version: registry/2.0\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)


class AnswersOnce(Protocol):
    """A plain-HTTP registry that answers one request, then takes each and closes it unanswered: one that
    crashes or restarts mid-request, or a proxy whose backend is gone."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers

    def dataReceived(self, data: bytes) -> None:
        transport = cast(ITCPTransport, self.transport)
        if self.answers[0] > 0:
            self.answers[0] -= 1
            transport.write(OK)
        else:
            transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_registry_that_answered_plain_http_then_drops_a_read_is_not_told_to_try_https(
    make_client, reactor
):
    # review r2doc L1: the port had just answered GET /v2/ over plain HTTP, yet the 503 led with "if port
    # N serves HTTPS only …, use https://…". A port that has answered plain HTTP does serve it. (Twisted
    # retries a read a reused connection drops once, on a new one; that one is dropped too here.)
    answers = [1]
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: AnswersOnce(answers)), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    assert str(await _unavailable_tags(make_client(url), port, ping=True)) == (
        f"registry {url} is unavailable: the connection was closed without an answer; check the registry's "
        "log and what sits in front of it (a proxy or load balancer)"
    )


class HalfAnswers(Protocol):
    """A registry (or proxy) that dies partway through its answer: a status line, headers and 1 of the 100
    body bytes they announce, then a clean close."""

    def dataReceived(self, data: bytes) -> None:
        transport = cast(ITCPTransport, self.transport)
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_connection_closed_partway_through_the_answer_is_said_in_our_words(make_client, reactor):
    # review r2doc N2: "is unavailable: Connection was closed cleanly.; check that it runs and is
    # reachable": Twisted's words, a stray ".;", and advice to check what had just begun to answer.
    port = reactor.listenTCP(0, Factory.forProtocol(HalfAnswers), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    error = await _unavailable_tags(make_client(url), port)
    assert (error.code, error.retry_after) == (503, 1)
    assert str(error) == (
        f"registry {url} is unavailable: the connection was closed partway through the answer; check the "
        "registry's log and what sits in front of it (a proxy or load balancer)"
    )


# review r2b L6: the advice swapped the scheme and kept the rest, so a URL without a port was sent to
# the other scheme's default port (https://reg on 443 -> http://reg, port 80), not the one that
# answered. No registry here can listen on 443 or 80 (privileged ports): the advice is a function of
# the URL and of the client's error, given as RegistryClient words it.
@pytest.mark.parametrize(
    ("url", "tried", "advice"),
    [
        ("https://reg.example", "port 443 (https's default)", "http://reg.example:443"),
        ("https://[fd00::1]", "port 443 (https's default)", "http://[fd00::1]:443"),
        ("https://reg.example:5000", "port 5000", "http://reg.example:5000"),
    ],
)
def test_the_http_advice_keeps_the_port_that_answered(url, tried, advice):
    error = RegistryUnavailable(f"registry {url} is unavailable: TLS failure: wrong version number")
    assert _hint(error, url) == (
        f"registry {url} is unavailable: TLS failure: wrong version number; {tried} does not speak TLS "
        f"(it answered in plain text): use {advice} in --registry-url (registry credentials, if any, would "
        "then cross the network unencrypted)"
    )


@pytest.mark.parametrize(
    ("url", "tried", "advice"),
    [
        ("http://reg.example", "port 80 (http's default)", "https://reg.example:80"),
        ("http://reg.example:5000", "port 5000", "https://reg.example:5000"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_the_https_advice_keeps_the_port_that_answered(url, tried, advice):
    # distribution's answer on its TLS port (test_http_to_a_tls_registry_says_to_use_https), on port 80.
    @attrs.define
    class AnswersPlainHttpWith400:
        async def root(self) -> RootAnswer:
            return RootAnswer(400, None, None, b"Client sent an HTTP request to an HTTPS server.\n")

    line = await probe(AnswersPlainHttpWith400(), url)  # type: ignore[arg-type]
    assert line == (
        f"registry {url} answered HTTP 400 to GET /v2/: {tried} serves HTTPS, not plain HTTP: "
        f"use {advice} in --registry-url"
    )


@pytest_twisted.ensureDeferred
async def test_a_token_service_that_fails_is_not_called_a_refusal(make_client, tmp_path):
    # ops3: "is reachable but refuses this server" was said of every failure of the authenticated GET
    # /v2/, though only rejected credentials are a refusal; a token service that is down or answers 5xx
    # refuses nothing.
    tokens = TokenServer(tmp_path, users={"robot": "pw"})
    try:
        with RegistryServer(token_server=tokens, username="robot", password="pw") as registry:
            rejected = await probe(make_client(registry, password="wrong"), registry.url)
            tokens.fail_with = 503
            failing = await probe(make_client(registry), registry.url)
            tokens.close()
            down = await probe(make_client(registry), registry.url)
    finally:
        tokens.close()  # again after the test's own close: a no-op
    service = f"the token service {tokens.realm} of registry {registry.url}"
    assert failing == (
        f"registry {registry.url} is reachable but cannot be used: {service} answered HTTP 503; retry later"
    )
    assert down == (
        f"registry {registry.url} is reachable but cannot be used: {service} is unavailable: connection "
        "refused; check that it runs and is reachable"
    )
    assert rejected.startswith(f"registry {registry.url} is reachable but refuses this server: "), rejected


@pytest_twisted.ensureDeferred
async def test_a_token_realm_of_the_wrong_scheme_is_not_blamed_on_registry_url(make_client, tmp_path):
    # ops3: the registry's auth.token.realm says https:// for a plain-HTTP token service; the line said
    # "use http:// in --registry-url", which was already http:// and is not where the realm comes from.
    tokens = TokenServer(tmp_path, users={"robot": "pw"})
    realm = tokens.realm.replace("http://", "https://")
    token = {"realm": realm, "service": tokens.service, "issuer": tokens.issuer}
    auth = {"auth": {"token": {**token, "rootcertbundle": str(tokens.cert_file)}}}
    try:
        with RegistryServer(extra_config=auth, username="robot", password="pw") as registry:
            line = await probe(make_client(registry), registry.url)
    finally:
        tokens.close()
    assert line == (
        f"registry {registry.url} is reachable but cannot be used: the token service {realm} of registry "
        f"{registry.url} is unavailable: TLS failure: wrong version number; that server does not speak TLS "
        "(it answered in plain text): the registry's configuration names it (its token realm, or where its "
        "storage redirects reads), and should give it with http:// (registry credentials, if any, would then "
        "cross the network unencrypted)"
    )


@pytest_twisted.ensureDeferred
async def test_a_catalog_that_fails_is_not_called_denied(make_client, tmp_path):
    # ops3: "catalog denied (… HTTP 500 …; retry later)": a registry failing the catalog denies nothing
    # (no credentials are needed here). Its storage's repositories folder is a file: distribution answers
    # the catalog 500, and GET /v2/ 200.
    with RegistryServer() as registry:
        repositories = registry.root / "docker" / "registry" / "v2" / "repositories"
        repositories.parent.mkdir(parents=True, exist_ok=True)
        repositories.write_text("not a folder")
        line = await probe(make_client(registry), registry.url)
    assert line == (
        f"registry {registry.url} reachable: API version registry/2.0, authentication none, catalog failed "
        f"(registry {registry.url} failed the repository catalog with HTTP 500 (UNKNOWN: unknown error); "
        "retry later); namespace lists need the catalog"
    )


@pytest_twisted.ensureDeferred
async def test_a_failing_registry_is_not_asked_whether_the_url_is_its_api(make_client):
    # ops3: a 503 to GET /v2/ read "is --registry-url the registry's API?", though the URL was right.
    # distribution answers every request 503 once its storage health check fails: here its storage root
    # is made a symbolic link to itself, which the check's stat cannot follow.
    health = {"health": {"storagedriver": {"enabled": True, "interval": "100ms", "threshold": 1}}}
    with RegistryServer(extra_config=health) as registry:
        shutil.rmtree(registry.root)
        registry.root.symlink_to(registry.root)
        client: RegistryClient = make_client(registry)

        async def unhealthy() -> bool:
            return (await client.root()).status == 503

        assert await eventually(unhealthy, within=10.0), registry.log_tail()
        line = await probe(client, registry.url)
    assert line == (
        f"registry {registry.url} answered HTTP 503 to GET /v2/: the registry (or a proxy in front of it) "
        "is failing: check that it runs, and its log"
    )


@pytest_twisted.ensureDeferred
async def test_nothing_listening_says_unavailable(make_client):
    url = f"http://127.0.0.1:{free_port()}"
    line = await probe(make_client(url), url)
    # review-newcomer 6: the URL once, where it read "registry URL cannot be used: registry URL is …".
    assert line.startswith(f"registry {url} cannot be used: it is unavailable: connection refused")
    assert line.count(url) == 1, line


@pytest_twisted.ensureDeferred
async def test_a_web_server_that_is_not_a_registry_says_so(make_client, reactor):
    port = reactor.listenTCP(0, Site(notFound()), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    try:
        line = await probe(make_client(url), url)
    finally:
        await port.stopListening()
    assert line == (
        f"registry {url} answered 404 to GET /v2/: --registry-url does not point at an OCI distribution "
        "API; give the registry's root (scheme and host[:port]), not a path or a web UI"
    )


def test_failures_are_logged_with_the_operation_once_per_period():
    clock = Clock()
    failures = FailureLog(clock.seconds, period=30.0)
    down = RegistryUnavailable("registry http://r is unavailable: connection refused")
    with Captured() as captured:
        failures("tags", down)
        failures("tags", down)
        failures("tags", down)
        failures("catalog", down)  # another operation: its own line
        failures("manifest", RegistryNotFound("manifest not found"))  # an answer, not a failure
        clock.advance(31)
        failures("tags", RegistryAuthFailed("registry http://r rejected the credentials"))
        failures("tags", down)
    lines = [(e["operation"], e["kind"], e["more"]) for e in captured.events]
    assert lines == [
        ("tags", "RegistryUnavailable", ""),
        ("catalog", "RegistryUnavailable", ""),
        ("tags", "RegistryAuthFailed", ""),
        ("tags", "RegistryUnavailable", " (2 more like it in the 31s since the last line)"),
    ]
    assert "--registry-username-file/--registry-password-file" in captured.events[2]["error"]


def test_the_count_left_out_says_the_real_interval_on_the_monotonic_clock():
    # Counted since the last line, which may be much longer ago than the period; and on the monotonic
    # clock: on the reactor's wall clock, stepped back, every line was left out for the step.
    clock = Clock()
    failures = FailureLog(clock.seconds)
    down = RegistryUnavailable("registry http://r is unavailable: connection refused")
    with Captured() as captured:
        failures("tags", down)
        failures("tags", down)
        clock.advance(3600)
        failures("tags", down)
    assert [e["more"] for e in captured.events] == ["", " (1 more like it in the 3600s since the last line)"]
    assert FailureLog().monotonic is time.monotonic
