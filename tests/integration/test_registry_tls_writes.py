"""A write on a new https connection whose TLS handshake fails (review r2leasestop L1, N2, N3).

A write goes out on a new https connection only once its TLS handshake is done (`HandshakenTLS`),
with a check (`WriteHooks.check`, the cleanup's leadership guard) or without. A handshake that fails
fails the connect: nothing of the write went out, so it is neither said nor held (`LateWrites`) as
one that may still land, and a checked write and an unchecked one say the same. On real servers: the
test registry over TLS, and ports that break the handshake.
"""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, Protocol

from payloadtags.registry import RegistryError, WriteHooks
from tests.support.registry_server import RegistryServer, make_tls_files

DIGEST = "sha256:" + "b" * 64
WENT_OUT = "went out, so the registry may still carry it out"


class Guard:
    def __init__(self) -> None:
        self.checks = 0
        self.told: list[bool] = []

    def check(self) -> None:
        self.checks += 1

    def hooks(self) -> WriteHooks:
        return WriteHooks(check=self.check, sent=self.told.append)


async def _outcome(client: Any, repo: str, checked: bool) -> dict[str, Any]:
    guard = Guard()
    began = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        await client.delete_manifest(repo, DIGEST, hooks=guard.hooks() if checked else None)
    return {
        "message": caught.value.message,
        "unanswered": caught.value.unanswered,
        "late": client.late_writes.pending(repo.split("/")[0]) is not None,
        "checks": guard.checks,
        "told": guard.told,
        "seconds": time.monotonic() - began,
    }


async def _both(
    make_client: Any, url: str, repo: str, *, failed: bool = True, **settings: Any
) -> tuple[dict[str, Any], ...]:
    """An unchecked write's outcome and a checked one's, each on a client of its own (a new connection).
    ``failed``: the handshake failed, so nothing of either went out."""
    plain = await _outcome(make_client(url, **settings), repo, checked=False)
    checked = await _outcome(make_client(url, **settings), repo, checked=True)
    assert checked["message"] == plain["message"]
    if failed:
        for outcome in (plain, checked):
            assert WENT_OUT not in outcome["message"], outcome
            assert not outcome["unanswered"] and not outcome["late"], outcome
    return plain, checked


class Closes(Protocol):
    """A TCP passthrough whose backend is gone: takes the connection, closes it at the first bytes."""

    def dataReceived(self, data: bytes) -> None:
        cast(ITCPTransport, self.transport).loseConnection()


class Silent(Protocol):
    """Takes the connection and never answers: a handshake that does not end."""


@pytest_twisted.ensureDeferred
async def test_a_port_that_closes_the_connection_during_the_handshake_is_said_closed_without_an_answer(
    make_client: Any, reactor: Any, repo: str
) -> None:
    """L1: not Twisted's "Connection to the other side was lost in a non-clean fashion" with "check
    that it runs and is reachable" of a port that took the connection."""
    port = reactor.listenTCP(0, Factory.forProtocol(Closes), interface="127.0.0.1")
    url = f"https://127.0.0.1:{port.getHost().port}"
    try:
        _plain, checked = await _both(make_client, url, repo, timeout=2.0)
    finally:
        await port.stopListening()
    assert checked["message"] == (
        f"registry {url} is unavailable: the connection was closed without an "
        "answer; check the registry's log and what sits in front of it (a proxy or load balancer)"
    ), checked
    assert checked["checks"] == 2  # the turn's and before sending; none on a failed handshake


@pytest_twisted.ensureDeferred
async def test_a_handshake_that_does_not_end_is_bounded_by_the_timeout(
    make_client: Any, reactor: Any, repo: str
) -> None:
    port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    url = f"https://127.0.0.1:{port.getHost().port}"
    try:
        # Cut by the request's deadline: said and held as a write unanswered, as a timeout is.
        plain, checked = await _both(make_client, url, repo, failed=False, timeout=2.0)
    finally:
        await port.stopListening()
    assert plain["seconds"] <= 3.0 and checked["seconds"] <= 3.0


@pytest.fixture(scope="module")
def localhost_only_registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tls = make_tls_files(tmp_path_factory.mktemp("tls-localhost"), hostnames=("localhost",))
    with RegistryServer(tls=tls) as server:
        yield server


@pytest_twisted.ensureDeferred
async def test_a_certificate_that_does_not_name_the_host_fails_the_handshake(
    localhost_only_registry: RegistryServer, make_client: Any, repo: str
) -> None:
    """N2: Twisted calls handshakeCompleted after the host name check aborted the connection: not a
    handshake done, so the write is not checked again on a dead connection, nor held as may land."""
    _plain, checked = await _both(
        make_client, localhost_only_registry.url, repo, ca_file=localhost_only_registry.ca_file
    )
    assert "TLS failure: the server's certificate does not match 127.0.0.1" in checked["message"], checked
    assert checked["checks"] == 2, checked


@pytest_twisted.ensureDeferred
async def test_a_certificate_of_an_untrusted_authority_fails_the_handshake(
    tls_registry: RegistryServer, make_client: Any, repo: str
) -> None:
    """N3: the unchecked write said "the connection closed after DELETE ... went out, so the registry
    may still carry it out", and was held as may land."""
    _plain, checked = await _both(make_client, tls_registry.url, repo)  # no CA file
    assert "TLS failure: certificate verify failed" in checked["message"], checked


@pytest_twisted.ensureDeferred
async def test_https_to_a_plain_http_port_fails_the_handshake(
    registry: RegistryServer, make_client: Any, repo: str
) -> None:
    _plain, checked = await _both(make_client, registry.url.replace("http://", "https://"), repo)
    assert "TLS failure" in checked["message"], checked
