"""Start payloadtags in-process on the test reactor, on 127.0.0.1, with test certificates."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from payloadtags.kube import Backoff
from payloadtags.registry import RegistrySettings
from payloadtags.server import RunningServer, start
from payloadtags.settings import Settings
from tests.support.client import ApiClient
from tests.support.pki import Authority, Issued

REGISTRY_HOST = "payload-registry.example.com"


@attrs.frozen
class Pki:
    server_ca: Authority
    serving: Issued
    client_ca: Authority
    admin: Issued

    @classmethod
    def create(cls, directory: Path) -> Pki:
        server_ca = Authority.create(directory / "server", "serving")
        client_ca = Authority.create(directory / "clients", "clients")
        return cls(
            server_ca=server_ca,
            serving=server_ca.server(),
            client_ca=client_ca,
            admin=client_ca.client("admin", ("admins",)),
        )

    def standalone_args(self, port: int, registry_url: str) -> list[str]:
        """`payloadtags serve` flags for standalone mode on 127.0.0.1 with these certificates."""
        return [
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={self.serving.cert_file}",
            f"--tls-private-key-file={self.serving.key_file}",
            f"--client-ca-file={self.client_ca.cert_file}",
            "--authorization-mode=AlwaysAllow",
            f"--registry-url={registry_url}",
        ]


@attrs.define
class ServerUnderTest:
    running: RunningServer
    pki: Pki
    settings: Settings

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.running.port}"

    def client(self, user: Issued | None = None, reactor: Any = None) -> ApiClient:
        kwargs = {"reactor": reactor} if reactor is not None else {}
        return ApiClient(self.url, str(self.pki.server_ca.cert_file), user, **kwargs)

    async def stop(self) -> None:
        await self.running.stop()


def settings_for(pki: Pki, registry_url: str, **overrides: Any) -> Settings:
    registry = overrides.pop("registry", None) or RegistrySettings(url=registry_url, timeout=5.0)
    values: dict[str, Any] = {
        "registry": registry,
        "registry_host": REGISTRY_HOST,
        "bind_address": "127.0.0.1",
        "secure_port": 0,
        "tls_cert_file": str(pki.serving.cert_file),
        "tls_private_key_file": str(pki.serving.key_file),
        "client_ca_file": str(pki.client_ca.cert_file),
        "authorization_mode": "AlwaysAllow",
        # Most tests share one registry; a sweep would delete every namespace the API double does not
        # know. The cleanup tests turn it on against registries of their own.
        "namespace_cleanup": False,
    }
    values.update(overrides)
    return Settings(**values)


# Reflectors of a server under test reconnect fast: outages in tests last fractions of a second.
FAST_REFLECTORS = {"watch_timeout": 30.0, "backoff": Backoff(initial=0.05, cap=0.5)}


async def start_server(
    reactor: Any,
    pki: Pki,
    registry_url: str,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    quiet_clock: IReactorTime | None = None,
    landing_clock: IReactorTime | None = None,
    review_delays: IReactorTime | None = None,
    auth_log_monotonic: Callable[[], float] | None = None,
    **overrides: Any,
) -> ServerUnderTest:
    """``monotonic``: the clock of the server's intervals (a task.Clock's, to drive them);
    ``quiet_clock``: its quiet loop's; ``landing_clock``: its registry client's watch for an
    unanswered write to land; ``review_delays``: its waits between TokenReview attempts (each the
    reactor's unless given); ``auth_log_monotonic``: its log of authentication failures'
    (``monotonic`` unless given)."""
    settings = settings_for(pki, registry_url, **overrides)
    running = await start(
        reactor,
        settings,
        reflector_options=FAST_REFLECTORS,
        monotonic=monotonic,
        quiet_clock=quiet_clock,
        landing_clock=landing_clock,
        review_delays=review_delays,
        auth_log_monotonic=auth_log_monotonic,
    )
    return ServerUnderTest(running, pki, settings)
