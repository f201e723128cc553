"""A --registry-url that writes its scheme's default port out (``https://host:443``, ``http://host:80``),
or a proxy that writes it into the URLs the registry names, repairs a dangling tag as any other URL
does (review r3leasestop L1).

The registry builds an upload location from the request's Host header, which Twisted and
`OriginRequests` send without a default port: ``https://host:443`` got back ``https://host/v2/…``,
refused as "the upload location points elsewhere". Ports 80 and 443 need root, so the client's reactor
connects them to the test registry's (or a proxy's) port: the client sends what it sends to a default
port, and the real registry answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.interfaces import IConnector
from twisted.internet.protocol import ClientFactory
from zope.interface import directlyProvides, providedBy

from payloadtags.registry import RegistryClient, RegistrySettings, WriteHooks
from tests.support import images
from tests.support.dangling import make_dangling
from tests.support.faultproxy import FaultProxy
from tests.support.registry_server import RegistryServer


class PortsMapped:
    """The test's reactor, except that a TCP connect to a port of ``ports`` goes to the port it maps
    to: a client of ``https://127.0.0.1:443`` reaches a server on an unprivileged port."""

    def __init__(self, reactor: Any, ports: dict[int, int]) -> None:
        self._reactor = reactor
        self._ports = ports
        # The interfaces Twisted looks for (IReactorPluggableNameResolver, IReactorTime, …).
        directlyProvides(self, providedBy(reactor))

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> IConnector:
        connector: IConnector = self._reactor.connectTCP(
            host, self._ports.get(port, port), factory, timeout, bindAddress
        )
        return connector

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


@pytest_twisted.async_yield_fixture
async def clients() -> AsyncIterator[list[RegistryClient]]:
    made: list[RegistryClient] = []
    yield made
    for client in made:
        await client.close()


class Sent:
    """The writes this client sent through treq rather than to the registry's origin by path
    (`OriginRequests`: a new connection's checks and TLS handshake)."""

    def __init__(self, client: RegistryClient) -> None:
        self.by_treq: list[str] = []
        http: Any = client._http
        request = http.request

        def recorded(method: str, url: str, **kwargs: Any) -> Any:
            self.by_treq.append(f"{method} {url}")
            return request(method, url, **kwargs)

        http.request = recorded


async def _repairs(client: RegistryClient, server: RegistryServer, repo: str, checked: bool) -> None:
    """A tag delete, and a dangling tag's (its repair uploads a blob to the location the registry
    names), each done: the tags are gone, and no write went anywhere but to the registry's origin."""
    sent = Sent(client)
    images.push_oci_image(server, repo, "v1")
    images.tag_manifest(server, repo, "v1", "v2")
    dangling = images.push_oci_image(server, repo, "dang", seed="dangle-" + repo)
    make_dangling(server, repo, dangling)
    for tag in ("v1", "dang"):
        await client.delete_tag(repo, tag, hooks=WriteHooks(check=lambda: None) if checked else None)
    assert images.list_tags(server, repo) == ["v2"]
    assert sent.by_treq == []


@pytest.mark.parametrize("checked", [False, True], ids=["unchecked", "checked"])
@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_a_url_with_its_default_port_written_out_repairs_a_dangling_tag(
    registry: RegistryServer,
    tls_registry: RegistryServer,
    reactor: Any,
    clients: list[RegistryClient],
    repo: str,
    scheme: str,
    checked: bool,
) -> None:
    server = registry if scheme == "http" else tls_registry
    default = 80 if scheme == "http" else 443
    settings = RegistrySettings(url=f"{scheme}://127.0.0.1:{default}", ca_file=server.ca_file, timeout=5.0)
    client = RegistryClient(PortsMapped(reactor, {default: server.port}), settings)
    clients.append(client)
    await _repairs(client, server, repo, checked)


@pytest.mark.parametrize("checked", [False, True], ids=["unchecked", "checked"])
@pytest_twisted.ensureDeferred
async def test_an_upload_location_a_proxy_writes_the_default_port_into_is_uploaded_to(
    registry: RegistryServer, reactor: Any, clients: list[RegistryClient], repo: str, checked: bool
) -> None:
    """``http://127.0.0.1`` and a proxy in front of the registry that writes ``:80`` into the
    Location it passes on."""
    written: list[bytes] = []

    def location(value: bytes) -> bytes:
        assert value.startswith(b"http://127.0.0.1/v2/"), value
        written.append(value)
        return b"http://127.0.0.1:80/" + value.removeprefix(b"http://127.0.0.1/")

    proxy = FaultProxy(reactor, registry.url, location=location)
    try:
        port = int(proxy.url.rpartition(":")[2])
        settings = RegistrySettings(url="http://127.0.0.1", timeout=5.0)
        client = RegistryClient(PortsMapped(reactor, {80: port}), settings)
        clients.append(client)
        await _repairs(client, registry, repo, checked)
    finally:
        await proxy.stop()
    assert written  # the repair's upload location, at least
