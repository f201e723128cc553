"""Fixtures for tests that talk to a running payloadtags: certificates, a server per test, kubectl."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.support.harness import Pki, ServerUnderTest, start_server
from tests.support.kubectl import Kubectl
from tests.support.registry_server import RegistryServer


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest_twisted.async_yield_fixture
async def make_server(reactor: Any, pki: Pki) -> Any:
    """make_server(registry_or_url, **settings overrides) -> ServerUnderTest, stopped after the test."""
    servers: list[ServerUnderTest] = []

    async def make(target: RegistryServer | str, **overrides: Any) -> ServerUnderTest:
        url = target if isinstance(target, str) else target.url
        server = await start_server(reactor, pki, url, **overrides)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest_twisted.async_yield_fixture
async def api(make_server: Callable[..., Any], registry: RegistryServer) -> Any:
    """payloadtags in front of the session registry, AlwaysAllow, admin client certificate available."""
    yield await make_server(registry)


@pytest.fixture
def kubectl_for(tmp_path: Path, pki: Pki) -> Callable[..., Kubectl]:
    def make(server: ServerUnderTest, user: Any = None, name: str = "admin") -> Kubectl:
        return Kubectl.write(tmp_path / "kube", server.url, pki.server_ca.cert_file, user or pki.admin, name)

    return make
