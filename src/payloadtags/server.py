"""Wiring: settings → registry client, authentication, authorization, routes, TLS listener; start and stop."""

from __future__ import annotations

import os
import sys
from typing import Any

import attrs
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.web.server import Site

from payloadtags.access.authn import AuthenticatorChain, ClientCertificateAuthenticator
from payloadtags.access.authz import AlwaysAllow, Authorizer
from payloadtags.api.app import ApiServer
from payloadtags.api.health import HealthChecks
from payloadtags.api.tags import ResourceVersions, TagsService
from payloadtags.inventory import Inventory
from payloadtags.registry import RegistryClient
from payloadtags.settings import Settings
from payloadtags.tls import ContextFactory, ServingCertificate, read_bundle, server_context

log = Logger()

SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class ConfigurationError(Exception):
    """The settings cannot make a working server; the message says what to change."""


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(SERVICE_ACCOUNT_TOKEN)


def _authorizer(settings: Settings) -> Authorizer:
    cluster = settings.kubeconfig is not None or in_cluster()
    mode = settings.authorization_mode or ("RBAC" if cluster else None)
    if mode == "AlwaysAllow":
        return AlwaysAllow()
    if not cluster:
        raise ConfigurationError(
            "no cluster API is configured (no --kubeconfig, not in a pod), so PayloadRepositoryAccess rules "
            "cannot be read: pass --authorization-mode=AlwaysAllow to run standalone, where every "
            "authenticated client may see and delete every tag"
        )
    raise ConfigurationError("--authorization-mode=RBAC is not available in this version; use AlwaysAllow")


class _QuietSite(Site):
    """Request logging is done by the API layer, with the user; Site's own access log is noise."""

    def log(self, request: Any) -> None:
        pass


@attrs.define
class RunningServer:
    port: int
    listener: IListeningPort
    registry: RegistryClient
    api: ApiServer

    async def stop(self) -> None:
        await self.listener.stopListening()
        await self.registry.close()


async def start(reactor: Any, settings: Settings) -> RunningServer:
    authorizer = _authorizer(settings)
    if settings.tls_cert_file and settings.tls_private_key_file:
        serving = ServingCertificate.from_files(settings.tls_cert_file, settings.tls_private_key_file)
    else:
        log.info("no --tls-cert-file: serving with a self-signed certificate for localhost")
        serving = ServingCertificate.self_signed()
    client_cas = read_bundle(settings.client_ca_file)
    if isinstance(authorizer, AlwaysAllow):
        log.warn("authorization mode AlwaysAllow: every authenticated client may see and delete every tag")
    if settings.kubeconfig is None and not in_cluster():
        log.info(
            "standalone mode: no cluster API; client-certificate authentication only, no namespace cleanup"
        )
    if not client_cas:
        log.warn("no --client-ca-file: no client can authenticate; only health endpoints will answer")

    registry = RegistryClient(reactor, settings.registry)
    inventory = Inventory(registry, concurrency=settings.registry_concurrency)
    service = TagsService(
        inventory=inventory,
        registry_host=settings.registry_host,
        authorizer=authorizer,
        versions=ResourceVersions(reactor),
        delete_concurrency=settings.delete_concurrency,
    )

    async def ping() -> None:
        return None

    health = HealthChecks(
        {
            "healthz": [("ping", ping)],
            "livez": [("ping", ping)],
            "readyz": [("ping", ping), ("registry", registry.ping)],
        }
    )
    api = ApiServer(
        service=service,
        authenticator=AuthenticatorChain([ClientCertificateAuthenticator(client_cas)]),
        health=health,
    )
    site = _QuietSite(api.resource())
    endpoint = SSL4ServerEndpoint(
        reactor,
        settings.secure_port,
        ContextFactory(server_context(serving, client_cas)),
        interface=settings.bind_address,
    )
    listener = await endpoint.listen(site)
    port = listener.getHost().port
    log.info(
        "serving {group} on https://{address}:{port}, registry {registry}",
        group="payload-registry.deckhouse.io/v1alpha1",
        address=settings.bind_address,
        port=port,
        registry=settings.registry.url,
    )
    return RunningServer(port=port, listener=listener, registry=registry, api=api)


def _begin_logging(verbose: bool) -> None:
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug if verbose else LogLevel.info)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])], redirectStandardIO=False
    )


def serve(settings: Settings, verbose: bool = False) -> int:
    from twisted.internet import defer, task

    _begin_logging(verbose)
    exit_code = 0

    async def main(reactor: Any) -> None:
        nonlocal exit_code
        try:
            running = await start(reactor, settings)
        except ConfigurationError as error:
            log.error("payloadtags: {error}", error=str(error))
            exit_code = 2
            return
        except OSError as error:
            log.error("payloadtags: cannot start: {error}", error=str(error))
            exit_code = 1
            return
        stopped: defer.Deferred[None] = defer.Deferred()
        reactor.addSystemEventTrigger(
            "before", "shutdown", lambda: defer.Deferred.fromCoroutine(running.stop())
        )
        await stopped

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
    except SystemExit as done:
        return exit_code or int(done.code or 0)
    return exit_code
