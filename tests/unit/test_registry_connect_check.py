"""A write's last check (`WriteHooks.check`: the cleanup's leadership and namespace guard) is made
again once a new connection to the registry is ready, right before the request is written to it.

The first check is made before the client connects. With no idle kept connection, the write then
waits for the registry's name to resolve, the TCP connection and, for https, the TLS handshake: up to
--registry-timeout (10 s), twice the 5 s margin that fences a replica's writes after it lost the
Lease (leasestop2). On the client's real Agent and connection pool over a MemoryReactorClock whose
name resolver the test drives; the connection is the test's (a StringTransport), and for https a TLS
server in memory that the test hands bytes to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from payloadtags.registry import RegistryClient, RegistrySettings, RegistryTimeout, WriteHooks
from tests.support.pki import Authority
from tests.support.resolver import HeldResolver, held_reactor

DIGEST = "sha256:" + "a" * 64
REPOSITORY = "team/app"


class NoLongerLeading(Exception):
    pass


class Guard:
    """The caller's check, and what its `sent` hook was told."""

    def __init__(self) -> None:
        self.leading = True
        self.checks = 0
        self.told: list[bool] = []

    def check(self) -> None:
        self.checks += 1
        if not self.leading:
            raise NoLongerLeading("this replica no longer leads")

    def hooks(self) -> WriteHooks:
        return WriteHooks(check=self.check, sent=self.told.append)


def track(d: Deferred[Any]) -> list[Any]:
    results: list[Any] = []
    d.addBoth(results.append)
    return results


class Wire(StringTransport):
    """A TCP connection's transport as the test sees it (what was written to it)."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def connected(clock: MemoryReactorClock, resolver: HeldResolver) -> tuple[Any, StringTransport]:
    """Resolves the name and makes the TCP connection the client asked for: its protocol, its wire."""
    resolver.finish("192.0.2.1")
    [(_host, port, factory, _timeout, _bind)] = clock.tcpClients
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", port))
    assert protocol is not None
    wire = Wire(peerAddress=IPv4Address("TCP", "192.0.2.1", port))
    protocol.makeConnection(wire)
    return protocol, wire


def test_a_write_is_checked_again_once_its_new_connection_is_made() -> None:
    clock, resolver = held_reactor()
    client = RegistryClient(clock, RegistrySettings(url="http://registry.test:5000", timeout=10))
    guard = Guard()
    results = track(Deferred.fromCoroutine(client.delete_manifest(REPOSITORY, DIGEST, hooks=guard.hooks())))
    assert resolver.names == ["registry.test"]
    guard.leading = False  # the Lease is lost while the name resolves and the connection is made
    clock.advance(6.0)
    _protocol, wire = connected(clock, resolver)
    assert wire.value() == b""  # nothing written: the check said no once the connection was made
    assert len(results) == 1 and isinstance(results[0], Failure), results
    assert results[0].check(NoLongerLeading)
    assert guard.told == [True, False]  # told back: nothing is out
    assert wire.disconnecting  # the connection is closed, not kept for nothing
    assert client.late_writes.pending("team") is None  # nothing sent: nothing may land


def test_a_write_whose_check_passes_on_its_new_connection_goes_out() -> None:
    clock, resolver = held_reactor()
    client = RegistryClient(clock, RegistrySettings(url="http://registry.test:5000", timeout=10))
    guard = Guard()
    results = track(Deferred.fromCoroutine(client.delete_manifest(REPOSITORY, DIGEST, hooks=guard.hooks())))
    assert guard.checks >= 1
    checks = guard.checks
    _protocol, wire = connected(clock, resolver)
    assert guard.checks == checks + 1
    assert wire.value().startswith(b"DELETE /v2/team/app/manifests/" + DIGEST.encode() + b" HTTP/1.1\r\n")
    assert guard.told == [True] and results == []
    assert client.late_writes.pending("team") is not None  # out: it may land


class TlsServer:
    """The registry's end of a TLS connection, in memory."""

    def __init__(self, tmp_path: Path) -> None:
        authority = Authority.create(tmp_path, "registry-ca")
        serving = authority.server(hosts=("registry.test",))
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate_file(str(serving.cert_file))
        context.use_privatekey_file(str(serving.key_file))
        self.connection = SSL.Connection(context, None)
        self.connection.set_accept_state()
        self.ca_file = str(authority.cert_file)
        self.received = b""
        self.closed = False

    def pump(self, protocol: Any, wire: StringTransport) -> None:
        """Hands the client's bytes to the server and the server's answer back, until neither has more."""
        for _ in range(20):
            sent = wire.value()
            wire.clear()
            if sent:
                self.connection.bio_write(sent)
            try:
                self.connection.do_handshake()
                while True:
                    self.received += self.connection.recv(1 << 16)
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                self.closed = True  # the client's close_notify
            try:
                answer = self.connection.bio_read(1 << 16)
            except SSL.WantReadError:
                answer = b""
            if answer:
                protocol.dataReceived(answer)
            elif not sent:
                return


@pytest.mark.parametrize("leading", [False, True], ids=["lost", "leading"])
def test_an_https_write_is_checked_once_the_tls_handshake_is_done(tmp_path: Path, leading: bool) -> None:
    """Twisted's TLS endpoint hands the connection over when TCP connects: a request written then waits
    in the TLS layer, and leaves when the handshake is done, however long that takes. The check is made
    once it is done, with nothing of the request out yet."""
    server = TlsServer(tmp_path)
    clock, resolver = held_reactor()
    client = RegistryClient(
        clock, RegistrySettings(url="https://registry.test:5000", timeout=10, ca_file=server.ca_file)
    )
    guard = Guard()
    results = track(Deferred.fromCoroutine(client.delete_manifest(REPOSITORY, DIGEST, hooks=guard.hooks())))
    checks = guard.checks
    protocol, wire = connected(clock, resolver)
    assert wire.value()  # the ClientHello
    assert guard.checks == checks  # not checked at the TCP connection: the request would wait there
    guard.leading = leading
    clock.advance(6.0)  # a slow handshake
    server.pump(protocol, wire)
    assert guard.checks == checks + 1
    clock.advance(0)  # the TLS layer gathers small writes for a reactor turn
    server.pump(protocol, wire)
    if leading:
        assert server.received.startswith(b"DELETE /v2/team/app/manifests/" + DIGEST.encode())
        assert results == []
    else:
        assert server.received == b"" and server.closed
        assert len(results) == 1 and isinstance(results[0], Failure), results
        assert results[0].check(NoLongerLeading)
        assert client.late_writes.pending("team") is None


def test_a_write_whose_tls_handshake_does_not_end_times_out_with_nothing_sent(tmp_path: Path) -> None:
    """Waiting for the handshake is bounded by the request's timeout, as the rest of the exchange: the
    connection is aborted, the check not made."""
    server = TlsServer(tmp_path)
    clock, resolver = held_reactor()
    client = RegistryClient(
        clock, RegistrySettings(url="https://registry.test:5000", timeout=10, ca_file=server.ca_file)
    )
    guard = Guard()
    results = track(Deferred.fromCoroutine(client.delete_manifest(REPOSITORY, DIGEST, hooks=guard.hooks())))
    checks = guard.checks
    _protocol, wire = connected(clock, resolver)
    clock.advance(10.5)  # the server never answers the ClientHello
    assert guard.checks == checks
    assert len(results) == 1 and isinstance(results[0], Failure), results
    assert results[0].check(RegistryTimeout), results[0]
    assert wire.disconnected or wire.disconnecting
