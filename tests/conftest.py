"""Shared fixtures.

Registries are session-scoped (each starts in well under a second, but there is no need to pay that per
test); tests keep out of each other's way with unique repository names from the ``repo`` fixture.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import settings

from payloadtags.registry import RegistryClient, RegistrySettings
from tests.support.registry_server import (
    RegistryServer,
    TLSFiles,
    TokenServer,
    make_tls_files,
    need_registry,
)

# Hypothesis fails an example that runs past 200 ms by default: a timed assertion, which a loaded CI
# machine trips on checks that have nothing to do with speed (speed is measured under bench/).
settings.register_profile("payloadtags", deadline=None)
settings.load_profile("payloadtags")

# --- tiers ----------------------------------------------------------------------------------------

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier, the directory it lives in, so that `scripts/test -m unit` runs
    the fast tier. Packaging builds, property checks and slow runs stay out of it."""
    tiers: dict[Path, str] = {}  # one resolve() per file, not per test
    for item in items:
        if item.path not in tiers:
            parts = item.path.resolve().relative_to(TESTS).parts
            tiers[item.path] = parts[0] if len(parts) > 1 else ""
        tier = tiers[item.path]
        if tier == "unit" and any(item.get_closest_marker(m) for m in ("packaging", "property", "slow")):
            continue
        if tier in TIERS:
            item.add_marker(tier)


# --- registries -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def registry() -> Iterator[RegistryServer]:
    """A running registry with deletes enabled, shared by the whole session."""
    need_registry()
    with RegistryServer() as server:
        yield server


@pytest.fixture(scope="session")
def readonly_registry(registry: RegistryServer) -> Iterator[RegistryServer]:
    """The same storage as ``registry``, served in read-only (maintenance) mode."""
    with RegistryServer(root=registry.root, readonly=True) as server:
        yield server


@pytest.fixture(scope="session")
def nodelete_registry(registry: RegistryServer) -> Iterator[RegistryServer]:
    """The same storage as ``registry``, served with storage deletes disabled."""
    with RegistryServer(root=registry.root, delete_enabled=False) as server:
        yield server


@pytest.fixture(scope="session")
def schema1_registry(registry: RegistryServer) -> Iterator[RegistryServer]:
    """The same storage as ``registry``, served taking pushes of signed Docker schema 1 manifests, as
    registries did (``registry`` refuses them, as distribution does by default)."""
    with RegistryServer(
        root=registry.root, extra_config={"compatibility": {"schema1": {"enabled": True}}}
    ) as server:
        yield server


BASIC_USER = ("pusher", "s3cret-basic")


@pytest.fixture(scope="session")
def htpasswd_registry() -> Iterator[RegistryServer]:
    """A registry demanding HTTP basic auth (htpasswd, bcrypt) as BASIC_USER."""
    need_registry()
    with RegistryServer(htpasswd=dict([BASIC_USER])) as server:
        yield server


TOKEN_USER = ("robot", "s3cret-token")


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    """The token service of ``token_registry``; it wants TOKEN_USER's basic credentials."""
    server = TokenServer(tmp_path_factory.mktemp("token"), users=dict([TOKEN_USER]))
    yield server
    server.close()


@pytest.fixture(scope="session")
def token_registry(token_server: TokenServer) -> Iterator[RegistryServer]:
    """A registry with ``auth: token`` whose realm is ``token_server``."""
    need_registry()
    username, password = TOKEN_USER
    with RegistryServer(token_server=token_server, username=username, password=password) as server:
        yield server


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tls_registry(tls_files: TLSFiles) -> Iterator[RegistryServer]:
    """A registry serving HTTPS with a certificate from a test CA (``tls_files.ca_file``)."""
    need_registry()
    with RegistryServer(tls=tls_files) as server:
        yield server


# --- names and clients ------------------------------------------------------------------------------

_counter = itertools.count()


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name no other test uses: ``t<n>/<test name>``."""
    # Cut first, then trimmed: a name cut at a dash would end in one, which no repository name may.
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:60].strip("-") or "test"
    return f"t{next(_counter)}/{name}"


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as global_reactor

    return global_reactor


@pytest_twisted.async_yield_fixture
async def make_client(reactor: Any) -> Any:
    """make_client(server_or_url, **settings) -> RegistryClient, closed after the test."""
    clients: list[RegistryClient] = []

    def make(target: RegistryServer | str, **overrides: Any) -> RegistryClient:
        if isinstance(target, str):
            fields: dict[str, Any] = {"url": target}
        else:
            fields = {
                "url": target.url,
                "username": target.username,
                "password": target.password,
                "ca_file": target.ca_file,
            }
        fields.setdefault("timeout", 5.0)
        fields.update(overrides)
        client = RegistryClient(reactor, RegistrySettings(**fields))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def registry_client(make_client: Callable[..., RegistryClient], registry: RegistryServer) -> RegistryClient:
    return make_client(registry)


# --- payloadtags under test ---------------------------------------------------------------------------
from tests.support.api_fixtures import api, kubectl_for, make_server, pki  # noqa: E402, F401
from tests.support.cleanup_fixtures import fresh_registry, make_controller, registry_reaper  # noqa: E402, F401
from tests.support.kubeapi.fixtures import kube_api, kube_client, kube_kubeconfig  # noqa: E402, F401
