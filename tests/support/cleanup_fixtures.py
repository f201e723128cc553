"""Fixtures and helpers for the namespace cleanup tests (and the reliability script).

- `fresh_registry`: a registry of the test's own. The sweep deletes every namespace's content that
  the test's cluster API double does not know, so cleanup tests must not share the session registry.
- `RegistryProxy`: a TCP forwarder in front of a registry that can go down, come back on the same
  port, or be pointed at another registry on the same storage (read-only mode) without the client
  noticing anything but what a real outage or maintenance window shows it.
- `make_controller`: a `CleanupController` with its own `KubeClient` (as a separate replica has) and
  its own `RegistryClient`, with short durations; stopped after the test.

Use them with ``from tests.support.cleanup_fixtures import *``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.interfaces import IListeningPort, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.protocols import portforward
from twisted.python.failure import Failure

from payloadtags.cleanup import CleanupController, CleanupOptions, LeaderElectionOptions
from payloadtags.kube import Backoff, KubeClient, load_cluster_config
from payloadtags.registry import RegistryClient, RegistrySettings
from tests.support.listening import stop_listening, tcp_port
from tests.support.registry_server import RegistryServer, need_registry, reap, stop_all

__all__ = [
    "FAST_LEADER_ELECTION",
    "RegistryProxy",
    "fast_options",
    "fresh_registry",
    "make_controller",
    "registry_reaper",
    "unique_namespace",
]

_names = itertools.count()


def unique_namespace(stem: str = "ns") -> str:
    """A namespace name no other test of this process uses."""
    return f"{stem}{next(_names)}"


# Lease 2 s, renew deadline 1.2 s, retry period 0.25 s: failover within about two seconds and a
# half. Shorter deadlines make a leader on a busy 2-core machine (CI, several replicas and the API
# double in one process) miss renewals and flap, which is not what the tests are about.
FAST_LEADER_ELECTION: dict[str, Any] = {"lease_duration": 2.0, "renew_deadline": 1.2, "retry_period": 0.25}


def fast_options(identity: str, election: dict[str, Any] | None = None, **overrides: Any) -> CleanupOptions:
    election_options = LeaderElectionOptions(identity=identity, **(election or FAST_LEADER_ELECTION))
    values: dict[str, Any] = {
        "sweep_period": 0.0,
        "retry_initial": 0.05,
        "retry_cap": 0.3,
        "watch_timeout": 30.0,
        "watch_backoff": Backoff(initial=0.05, cap=0.3),
        "leader_election": election_options,
    }
    values.update(overrides)
    return CleanupOptions(**values)


# -- registries ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def registry_reaper() -> Iterator[list[RegistryServer]]:
    """Registries to stop at the end of the session, all at once (each takes ~2 s to exit)."""
    servers: list[RegistryServer] = []
    yield servers
    stop_all(servers)


@pytest.fixture
def fresh_registry(registry_reaper: list[RegistryServer]) -> Iterator[RegistryServer]:
    need_registry()
    server = RegistryServer()
    registry_reaper.append(server)
    yield server
    server.signal_stop()
    reap(registry_reaper)  # the earlier tests' registries, exited by now


class _Forward(portforward.ProxyServer):
    factory: _ForwardFactory

    def connectionMade(self) -> None:
        self.factory.open.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.open.discard(self)
        super().connectionLost(reason)


class _ForwardFactory(portforward.ProxyFactory):
    protocol = _Forward

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.open: set[_Forward] = set()


@attrs.define
class RegistryProxy:
    """127.0.0.1:<port> forwarding to a registry; `url` is what the client under test uses."""

    reactor: Any
    target: RegistryServer
    port: int = 0
    _factory: _ForwardFactory | None = None
    _listener: IListeningPort | None = None

    def __attrs_post_init__(self) -> None:
        self._factory = _ForwardFactory("127.0.0.1", self.target.port)
        self.come_up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def come_up(self) -> None:
        if self._listener is None:
            self._listener = self.reactor.listenTCP(self.port, self._factory, interface="127.0.0.1")
            self.port = tcp_port(self._listener)

    async def go_down(self) -> None:
        """Connection refused from now on; open connections are reset."""
        self._drop()
        listener, self._listener = self._listener, None
        if listener is not None:
            await stop_listening(listener)

    def point_at(self, target: RegistryServer) -> None:
        """Forward new connections to `target`; open ones are reset so none stays on the old one."""
        assert self._factory is not None
        self.target = target
        self._factory.host, self._factory.port = "127.0.0.1", target.port
        self._drop()

    def _drop(self) -> None:
        assert self._factory is not None
        for connection in list(self._factory.open):
            if connection.transport is not None:
                ITCPTransport(connection.transport).abortConnection()


# -- controllers -------------------------------------------------------------------------------------


@attrs.define
class Replica:
    """One controller with the clients it owns, as one payloadtags process would have them."""

    controller: CleanupController
    kube: KubeClient
    registry: RegistryClient
    stopped: bool = False

    async def stop(self, *, release: bool = True) -> None:
        if self.stopped:
            return
        self.stopped = True
        await self.controller.stop(release=release)
        await self.kube.close()
        await self.registry.close()


@pytest_twisted.async_yield_fixture
async def make_controller(kube_kubeconfig: Path) -> AsyncIterator[Any]:
    """make_controller(registry_url, identity="a", start=True, **option overrides) -> Replica."""
    from twisted.internet import reactor

    replicas: list[Replica] = []

    def make(registry_url: str, identity: str = "a", *, start: bool = True, **overrides: Any) -> Replica:
        config = load_cluster_config(str(kube_kubeconfig))
        assert config is not None
        kube = KubeClient(reactor, config, request_timeout=2.0)
        registry = RegistryClient(reactor, RegistrySettings(url=registry_url, timeout=2.0))
        controller = CleanupController(reactor, kube, registry, fast_options(identity, **overrides))
        replica = Replica(controller, kube, registry)
        replicas.append(replica)
        if start:
            controller.start()
        return replica

    yield make
    for replica in replicas:
        await replica.stop()
