"""SIGTERM and SIGINT as k8s.io/apiserver takes them, and the drain as Go's http.Server.Shutdown does it:
`payloadtags serve` as a child process, a registry stand-in that answers when the test lets it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.integration.test_operations import collection, serve_args
from tests.support.harness import Pki
from tests.support.process import ServerProcess
from tests.support.registry_server import free_port

SERVING = "serving payload-registry.deckhouse.io/v1alpha1"
# A held registry request is not to end in a 504 before the test lets it go.
PATIENT = ("--registry-timeout=5m",)


class _HeldRegistry(Resource):
    """Just enough of a registry for a list: an empty catalog, held until `release` (but for the
    start-up probe's read of one name)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.arrived: defer.Deferred[None] = defer.Deferred()
        self.held: list[Request] = []

    def render_GET(self, request: Request) -> bytes | int:
        request.setHeader(b"content-type", b"application/json")
        if request.path != b"/v2/_catalog":
            return b"{}"
        if request.args.get(b"n") == [b"1"]:
            return b'{"repositories":[]}'
        self.held.append(request)
        request.notifyFinish().addBoth(lambda _: self.held.remove(request) if request in self.held else None)
        if not self.arrived.called:
            self.arrived.callback(None)
        return NOT_DONE_YET

    def release(self) -> None:
        for request in list(self.held):
            request.write(b'{"repositories":[]}')
            request.finish()


def _connection(pki: Pki, port: int) -> http.client.HTTPSConnection:
    """A kept-alive connection of the admin's, with blocking calls (run them in a thread)."""
    context = ssl.create_default_context(cafile=str(pki.server_ca.cert_file))
    context.check_hostname = False
    context.load_cert_chain(pki.admin.cert_file, pki.admin.key_file)
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)


def _get(connection: http.client.HTTPSConnection, path: str) -> tuple[int, str | None]:
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response.status, response.getheader("connection")


def _closed_by_server(connection: http.client.HTTPSConnection) -> bool:
    """Waits (up to the socket's timeout) for the server to close the connection."""
    assert connection.sock is not None
    return connection.sock.recv(1) == b""


async def _start(
    reactor: Any, pki: Pki, registry: Resource, *flags: str
) -> tuple[ServerProcess, int, IListeningPort]:
    fake = reactor.listenTCP(0, Site(registry), interface="127.0.0.1")
    port = free_port()
    process = ServerProcess(reactor, serve_args(pki, f"http://127.0.0.1:{fake.getHost().port}", port, *flags))
    process.start()
    await process.wait_for_log(SERVING)
    return process, port, fake


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
@pytest_twisted.ensureDeferred
async def test_a_signal_the_moment_serving_is_logged_gets_the_graceful_stop(reactor, pki, number):
    # The signal goes out in the turn that reads the line: it used to find Python's defaults there
    # (the handlers came with reactor.run, later): SIGTERM killed the process undrained, SIGINT a
    # KeyboardInterrupt traceback.
    process = ServerProcess(reactor, serve_args(pki, "http://127.0.0.1:1", free_port()))
    process.signal_when_logged(SERVING, number)
    process.start()
    try:
        assert await process.wait() == 0
        assert f"received {signal.Signals(number).name}: stopping gracefully" in process.log, process.log
        assert "shutting down: readyz now fails" in process.log
        assert "stopped" in process.log
        assert "Traceback" not in process.log
    finally:
        await process.kill()


def _plugin_kubeconfig(tmp_path: Path, script: str) -> Path:
    """A kubeconfig whose user's credential comes from an exec plugin running ``script`` (sh)."""
    plugin = tmp_path / "plugin"
    plugin.write_text("#!/bin/sh\n" + script)
    plugin.chmod(0o755)
    kubeconfig = tmp_path / "kubeconfig"
    api = "client.authentication.k8s.io/v1"
    kubeconfig.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"exec": {"apiVersion": api, "command": str(plugin)}}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return kubeconfig


STOPPED_CHECKS = "during the start-up checks: stopped them; exiting without serving"


@pytest_twisted.ensureDeferred
async def test_a_signal_before_serving_exits_cleanly_without_serving(reactor, pki, tmp_path):
    # The kubeconfig's credential plugin runs during the start-up checks, before anything listens; it
    # interrupts payloadtags there (which used to end in a KeyboardInterrupt traceback).
    kubeconfig = _plugin_kubeconfig(
        tmp_path,
        "kill -INT $PPID\n"
        'echo \'{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",'
        '"status":{"token":"tok"}}\'\n',
    )
    args = serve_args(pki, "http://127.0.0.1:1", free_port(), f"--kubeconfig={kubeconfig}")
    process = ServerProcess(reactor, args)
    process.start()
    try:
        assert await process.wait() == 0
        assert f"received SIGINT {STOPPED_CHECKS}" in process.log, process.log
        assert SERVING not in process.log
        assert "Traceback" not in process.log
    finally:
        await process.kill()


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
@pytest_twisted.ensureDeferred
async def test_a_signal_during_a_hanging_start_up_check_stops_it_at_once(reactor, pki, tmp_path, number):
    # A credential plugin that does not answer (it may take 60 s) held the start-up checks, and a signal
    # took effect only once they ended: it ends them now, the plugin killed, and the process exits as a
    # stop while serving does. The registry accepts connections and never answers (it is first asked
    # once serving, so it holds nothing here).
    started = tmp_path / "plugin-started"
    kubeconfig = _plugin_kubeconfig(
        tmp_path, f"echo $$ > {started}.new && mv {started}.new {started}\nexec sleep 600\n"
    )
    silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    registry = f"http://127.0.0.1:{silent.getHost().port}"
    process = ServerProcess(reactor, serve_args(pki, registry, free_port(), f"--kubeconfig={kubeconfig}"))
    process.start()
    try:
        for _ in range(600):
            if started.exists() or not process.running:
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert started.exists(), process.log
        plugin = int(started.read_text())
        process.signal(number)
        # Well within the plugin's 60 s, which the checks used to wait out.
        assert await process.wait(within=30) == 0
        name = signal.Signals(number).name
        assert process.log.splitlines()[-1].endswith(
            f"[payloadtags.lifecycle#info] received {name} {STOPPED_CHECKS}"
        )
        assert SERVING not in process.log and "Traceback" not in process.log, process.log
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(plugin, 0)
    finally:
        await process.kill()
        await defer.maybeDeferred(silent.stopListening)


@pytest_twisted.ensureDeferred
async def test_a_second_signal_while_draining_exits_at_once_with_1(reactor, pki):
    registry = _HeldRegistry()
    process, port, fake = await _start(reactor, pki, registry, "--shutdown-grace-period=120s", *PATIENT)
    connection = _connection(pki, port)
    try:
        listing = deferToThread(_get, connection, collection("team"))
        listing.addErrback(lambda _: None)  # cut by the exit
        await registry.arrived  # in flight, and held: the drain would wait up to the grace period
        process.terminate()
        await process.wait_for_log("shutting down")
        process.signal(signal.SIGINT)
        assert await process.wait(within=60) == 1
        assert "received SIGINT again while stopping: exiting at once, with code 1" in process.log
        assert "Traceback" not in process.log
        assert "stopped" not in process.log
    finally:
        connection.close()
        await process.kill()
        registry.release()
        await defer.maybeDeferred(fake.stopListening)


@pytest_twisted.ensureDeferred
async def test_the_drain_ends_keep_alive_closes_idle_connections_and_awaits_the_response(reactor, pki):
    registry = _HeldRegistry()
    process, port, fake = await _start(reactor, pki, registry, "--shutdown-grace-period=120s", *PATIENT)
    idle, busy = _connection(pki, port), _connection(pki, port)
    try:
        for connection in (idle, busy):
            assert await deferToThread(_get, connection, "/apis") == (200, None)  # kept alive
        listing = deferToThread(_get, busy, collection("team"))
        await registry.arrived
        process.terminate()
        await process.wait_for_log("shutting down")
        # The idle connection closes at once, while the list is still held ...
        assert await deferToThread(_closed_by_server, idle) is True
        assert not listing.called
        # ... and the list, in flight past any fixed few seconds, gets its answer, the connection's last.
        registry.release()
        assert await listing == (200, "close")
        assert await process.wait() == 0
        assert "still running" not in process.log
    finally:
        idle.close()
        busy.close()
        await process.kill()
        registry.release()
        await defer.maybeDeferred(fake.stopListening)


@pytest_twisted.ensureDeferred
async def test_what_the_grace_period_does_not_see_end_is_cut(reactor, pki):
    registry = _HeldRegistry()
    process, port, fake = await _start(reactor, pki, registry, "--shutdown-grace-period=1s")
    connection = _connection(pki, port)
    try:
        listing = deferToThread(_get, connection, collection("team"))
        await registry.arrived  # held until the test ends: longer than the grace period
        process.terminate()
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError, ssl.SSLError)):
            await listing
        assert await process.wait() == 0
        cut = "1 request(s) still running and 1 connection(s) open after the 1.0s grace period"
        assert cut in process.log
    finally:
        connection.close()
        await process.kill()
        registry.release()
        await defer.maybeDeferred(fake.stopListening)
