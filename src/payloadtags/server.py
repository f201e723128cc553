"""Wiring: settings → registry client, authentication, authorization, routes, TLS listener; start and stop."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from payloadtags.access.authconfig import AuthenticationConfig, DynamicAuthentication, FlagConfig
from payloadtags.access.authz import AlwaysAllow
from payloadtags.access.rbac import PathMatcher, RbacAuthorizer, RbacIndex
from payloadtags.access.requestheader import RequestHeaderConfig
from payloadtags.access.tokens import REVIEWS_AT_ONCE, TokenReviewAuthenticator
from payloadtags.api.app import ApiServer
from payloadtags.api.continuation import forget_tokens
from payloadtags.api.health import HealthChecks, SharedCheck
from payloadtags.api.render import forget_makers
from payloadtags.api.tags import TagsService
from payloadtags.api.walks import WalkCache
from payloadtags.cleanup import (
    CleanupController,
    CleanupMetrics,
    CleanupOptions,
    LeaderElectionOptions,
)
from payloadtags.cleanup.removal import namespace_remover
from payloadtags.cluster import authentication_reflector, rbac_reflectors, token_reviewer
from payloadtags.deferreds import DeadlineExpired, within
from payloadtags.heap import give_back_free_heap, keep_freed_heap
from payloadtags.http.channel import GuardedSite, GuardedTLSFactory, LimitedConnections
from payloadtags.http.refusals import ConnectionRefusals
from payloadtags.identity import UserInfo
from payloadtags.inventory import Inventory
from payloadtags.kube import ClusterClient, KubeClient, Reflector
from payloadtags.kube.client import MAX_IDLE_CONNECTIONS
from payloadtags.kube.diagnosis import access_log, cause
from payloadtags.kube.errors import KubeError
from payloadtags.lifecycle import OrderedServices, Part, StopSignals
from payloadtags.limits import FRONT_PROXY_CONNECTIONS, held_watch_limits, watch_limits
from payloadtags.listen import listen
from payloadtags.logs import DEBUG_VERBOSITY, begin_logging
from payloadtags.metrics import CountingAuthorizer, InstrumentedRegistry, Metrics
from payloadtags.names import encode_name
from payloadtags.quiet import WhenQuiet, quiet_after
from payloadtags.registry import (
    CARRIED_DELETE_TIMEOUTS,
    LATE_WRITE_GRACE,
    CarriedDelete,
    Catalog,
    LateWrites,
    Registry,
    RegistryClient,
)
from payloadtags.registry_diagnosis import FailureLog, probe
from payloadtags.reloader import FileWatcher
from payloadtags.repoindex import RepositoryIndex
from payloadtags.settings import Settings
from payloadtags.startup import Completed, ConfigurationError, always_allow_warnings, complete
from payloadtags.tls import ContextFactory, ServingCertificate, TlsOptions, load_certificates, server_context
from payloadtags.watch import WatchHub
from payloadtags.watch.failures import ReadFailures
from payloadtags.watch.hub import InventoryReader

log = Logger()

# How long the registry check's outcome answers /readyz probes (docs/hardening.md): a registry request
# per second at most, whatever the number of probes, and a failing registry shows within a second.
REGISTRY_CHECK_TTL = 1.0
# The collector's youngest generation threshold once serving (`serve`).
YOUNG_COLLECTION_THRESHOLD = 10_000


def _flag_authentication(settings: Settings) -> FlagConfig:
    requestheader = None
    if settings.requestheader_client_ca_file:
        requestheader = RequestHeaderConfig(
            authorities=tuple(
                load_certificates(settings.requestheader_client_ca_file, "--requestheader-client-ca-file")
            ),
            allowed_names=settings.requestheader_allowed_names,
            username_headers=settings.requestheader_username_headers,
            group_headers=settings.requestheader_group_headers,
            extra_prefixes=settings.requestheader_extra_headers_prefix,
            uid_headers=settings.requestheader_uid_headers,
        )
    client_cas = None
    if settings.client_ca_file:
        client_cas = tuple(load_certificates(settings.client_ca_file, "--client-ca-file"))
    return FlagConfig(client_cas=client_cas, requestheader=requestheader)


@attrs.define
class CarriedDeletes:
    """The deletes a stop waits for: those that had begun writing when their requests were cut (or
    their cascades stopped). Cut between its writes, such a delete would leave its tag on the copy
    it wrote (docs/consistency.md), so the process goes on until each ends; this says, once each,
    which they are, how long they may take, and what to do if the kubelet kills the process first."""

    client: RegistryClient
    clock: IReactorTime
    # Who asked for a delete of (repository, tag), when a request did (`TagsService.asked_by`).
    asked_by: Callable[[str, str], str | None] = lambda repository, tag: None
    said: set[CarriedDelete] = attrs.Factory(set)

    def say(self, when: str) -> None:
        """One line for each delete begun and not said yet; ``when``: what the stop is doing. Said
        again each time its usual bound has passed while it still runs: the last line before a kill
        is then current (that bound is not a bound: `CARRIED_DELETE_TIMEOUTS`)."""
        for carried in self.client.begun_deletes():
            if carried in self.said:
                continue
            self.said.add(carried)
            who = self.asked_by(carried.repository, carried.tag)
            self._say(
                "{when}: the delete of tag {where} asked by {who} has begun writing and goes on: the "
                "process exits once it has ended, usually within {bound:g}s ({timeouts} x "
                "--registry-timeout; longer on a registry slow to answer, with a tag list in many pages "
                "or tokens to renew)",
                carried,
                who,
                when=when,
            )
            self._say_again(carried, who)

    def _say_again(self, carried: CarriedDelete, who: str | None) -> None:
        began = self.clock.seconds()

        def again() -> None:
            self._say(
                "the delete of tag {where} asked by {who} is still running after {elapsed:g}s: the "
                "process still waits for it",
                carried,
                who,
                elapsed=self.clock.seconds() - began,
            )

        repeat = LoopingCall(again)
        repeat.clock = self.clock
        repeat.start(self.client.carried_bound, now=False)
        carried.ended.addCallback(lambda _: repeat.stop())

    def _say(self, text: str, carried: CarriedDelete, who: str | None, **fields: Any) -> None:
        # What to do after a kill ends with the process: a write of the delete may land up to
        # LATE_WRITE_GRACE timeouts after its request ended, and its requests end with the process.
        log.warn(
            text + ". If the process is killed first, the tag may be left on a copy payloadtags wrote "
            "to delete it: once the process has ended, wait {late:g}s (a write may still land), get the "
            "tag (kubectl get), and if it is still there, delete it again",
            where=carried.name,
            repository=carried.repository,
            tag=carried.tag,
            who=who if who is not None else "a namespace removal (cleanup or deletecollection)",
            bound=self.client.carried_bound,
            timeouts=CARRIED_DELETE_TIMEOUTS,
            late=LATE_WRITE_GRACE * self.client.settings.timeout,
            **fields,
        )

    async def ended(self, when: str) -> None:
        """Says the deletes begun and not said yet, then waits until every one has ended."""
        self.say(when)
        await self.client.carried_ended()


@attrs.define
class Serving:
    """The TLS listener and the drain that ends it: the part started last and stopped first."""

    reactor: Any
    settings: Settings
    factory: GuardedTLSFactory
    connections: LimitedConnections
    api: ApiServer
    mode: str
    carried: CarriedDeletes | None = None
    listener: IListeningPort | None = None
    port: int = 0

    def start(self) -> None:
        settings = self.settings
        self.listener = listen(self.reactor, settings.bind_address, settings.secure_port, self.factory)
        host = self.listener.getHost()
        assert isinstance(host, IPv4Address | IPv6Address), host  # a TCP port
        self.port = host.port
        log.info(
            "serving {group} on https://{address}:{port}, registry {registry}, authorization {mode}",
            group="payload-registry.deckhouse.io/v1alpha1",
            address=f"[{host.host}]" if ":" in host.host else host.host,
            port=self.port,
            registry=settings.registry.url,
            mode=self.mode,
        )

    async def drain(self) -> None:
        """readyz already fails; the listener closes after the shutdown delay, then, as Go's
        http.Server.Shutdown: idle connections close, every other one after its current response
        (which says ``Connection: close``), all within the grace period; what is left is cut."""
        clock, settings = self.reactor, self.settings
        if settings.shutdown_delay > 0:
            # Give endpoints controllers and load balancers time to stop sending new requests here.
            await deferLater(clock, settings.shutdown_delay, lambda: None)
        if self.listener is not None:
            stopped = self.listener.stopListening()
            if stopped is not None:
                await stopped
        closed = self.connections.drain()
        if self.api.watch_hub is not None:
            # Watches would hold the drain for their whole lifetime: end them now; clients
            # re-watch on another replica.
            self.api.watch_hub.stop()

        async def finished() -> None:
            await self.api.idle()
            await closed

        try:
            await within(clock, settings.shutdown_grace_period, finished())
        except DeadlineExpired:
            log.warn(
                "{inflight} request(s) still running and {connections} connection(s) open after the "
                "{grace}s grace period; stopping anyway",
                inflight=self.api.inflight,
                connections=len(self.connections.protocols),
                grace=settings.shutdown_grace_period,
            )
            for connection in list(self.connections.protocols):
                connection.transport.abortConnection()
            if self.carried is not None:
                self.carried.say("the grace period is over")


# What a server does once lists have stopped a while (quiet.WhenQuiet): drops what their requests left
# in the caches requests share (the item makers of their repositories, their tokens' parts and
# decodings, their tags' names), collects the garbage cycles among what they made (objects that
# outlived a young collection wait for a full one, which a quiet server may never run), and then gives
# glibc's free heap back (unless the operator tuned its allocator): the chunks the lists freed below
# what stays in use, 6-7 MiB after lists of 100,000 tags (docs/benchmarks.md, "What keeps the arenas,
# and a quiet server").
WHEN_QUIET: tuple[Callable[[], object], ...] = (
    forget_makers,
    forget_tokens,
    encode_name.cache_clear,
    gc.collect,
    give_back_free_heap,
)


@attrs.define
class RunningServer:
    port: int
    listener: IListeningPort
    connections: LimitedConnections
    registry: Registry
    api: ApiServer
    settings: Settings
    clock: Any
    services: OrderedServices
    kube: ClusterClient | None = None
    reflectors: list[Reflector] = attrs.Factory(list)
    watchers: list[FileWatcher] = attrs.Factory(list)
    cleanup: CleanupController | None = None
    shutting_down: bool = False
    index: RepositoryIndex | None = None
    index_refresh: LoopingCall | None = None
    registry_probe: defer.Deferred[str] | None = None
    quiet: WhenQuiet | None = None

    async def stop(self) -> None:
        """Graceful: readyz fails at once, then the parts stop in the reverse of their start order
        (`start` lists it): serving drains first, the registry client closes last."""
        if self.shutting_down:
            return
        self.shutting_down = True
        log.info(
            "shutting down: readyz now fails; {inflight} request(s) in flight", inflight=self.api.inflight
        )
        await self.services.stopService()
        log.info("stopped")


def _cleanup(
    reactor: Any,
    settings: Settings,
    kube: ClusterClient | None,
    registry: Registry,
    reflector_options: dict[str, Any],
    lease_namespace: str,
    metrics: CleanupMetrics,
    late_writes: LateWrites,
    carried: CarriedDeletes,
    on_failure: Callable[[str, KubeError, bool], bool] | None = None,
) -> CleanupController | None:
    if kube is None or not settings.namespace_cleanup:
        return None
    watch: dict[str, Any] = {}
    if "watch_timeout" in reflector_options:
        watch["watch_timeout"] = reflector_options["watch_timeout"]
    if "backoff" in reflector_options:
        watch["watch_backoff"] = reflector_options["backoff"]
    try:
        election = LeaderElectionOptions(
            lease_name=settings.leader_elect_resource_name, lease_namespace=lease_namespace
        )
        if settings.leader_elect:
            # The durations are checked (startup.complete) and used only with leader election on:
            # without it they are not read, and values client-go would refuse stop nothing.
            election = LeaderElectionOptions(
                lease_name=settings.leader_elect_resource_name,
                lease_namespace=lease_namespace,
                lease_duration=settings.leader_elect_lease_duration,
                renew_deadline=settings.leader_elect_renew_deadline,
                retry_period=settings.leader_elect_retry_period,
            )
        options = CleanupOptions(
            sweep_period=settings.namespace_sweep_period,
            sweep_dry_run=settings.namespace_sweep_dry_run,
            cascade_concurrency=settings.namespace_cleanup_concurrency,
            namespace_concurrency=settings.namespace_cleanup_workers,
            leader_elect=settings.leader_elect,
            late_write_grace=LATE_WRITE_GRACE * settings.registry.timeout,
            leader_election=election,
            **watch,
        )
    except ValueError as error:
        raise ConfigurationError(f"namespace cleanup: {error}") from None
    return CleanupController(
        reactor,
        kube,
        registry,
        options,
        metrics=metrics,
        late_writes=late_writes,
        # The same log as the server's reflectors (a cause they share is said once for each thing it
        # holds back), which says that this watch's failure stops the cleanup, not readiness.
        on_failure=on_failure,
        # Until its deletes carried on have ended, this replica may still write to a namespace
        # that the next leader would clean: the Lease goes only then.
        before_release=lambda: carried.ended("before the lease is released"),
    )


def _rotation_watchers(
    reactor: Any,
    settings: Settings,
    serving: ServingCertificate,
    context_factory: ContextFactory,
    authentication: DynamicAuthentication,
    tls_options: TlsOptions,
) -> list[FileWatcher]:
    """Watchers that swap in rotated certificate files, and CA files given as flags."""

    def trust_changed(config: AuthenticationConfig) -> None:
        # New handshakes verify client certificates against the new CAs; requests on open connections
        # are checked against them by the authenticators (a removed CA stops trusting them).
        context_factory.context = server_context(serving, config.trusted_cas, tls_options)

    authentication.listeners.append(trust_changed)
    watchers: list[FileWatcher] = []
    if settings.tls_cert_file and settings.tls_private_key_file:
        cert_file, key_file = settings.tls_cert_file, settings.tls_private_key_file

        def reload_serving() -> None:
            nonlocal serving
            fresh = ServingCertificate.from_files(cert_file, key_file)
            context_factory.context = server_context(fresh, authentication.config.trusted_cas, tls_options)
            serving = fresh

        watchers.append(
            FileWatcher(
                reactor,
                [cert_file, key_file],
                reload_serving,
                "serving certificate",
                settings.cert_reload_period,
            )
        )
    # One watcher per CA file, as k8s.io/apiserver has: a broken one keeps its previous CAs and does
    # not hold back the other's rotation.
    if settings.client_ca_file:
        client_ca_file = settings.client_ca_file

        def reload_client_cas() -> None:
            client_cas = tuple(load_certificates(client_ca_file, "--client-ca-file"))
            authentication.update_flags(attrs.evolve(authentication.flags, client_cas=client_cas))

        watchers.append(
            FileWatcher(
                reactor, [client_ca_file], reload_client_cas, "client CA file", settings.cert_reload_period
            )
        )
    if settings.requestheader_client_ca_file:
        requestheader_ca_file = settings.requestheader_client_ca_file

        def reload_requestheader_cas() -> None:
            authorities = tuple(load_certificates(requestheader_ca_file, "--requestheader-client-ca-file"))
            flags = authentication.flags
            assert flags.requestheader is not None  # set from this flag at start
            requestheader = attrs.evolve(flags.requestheader, authorities=authorities)
            authentication.update_flags(attrs.evolve(flags, requestheader=requestheader))

        watchers.append(
            FileWatcher(
                reactor,
                [requestheader_ca_file],
                reload_requestheader_cas,
                "requestheader CA file",
                settings.cert_reload_period,
            )
        )
    return watchers


def _index_refresh(reactor: Any, index: RepositoryIndex, registry: Catalog, deadline: float) -> LoopingCall:
    """Refreshes the index every period. Each refresh must end within ``deadline`` (the period): like
    every other registry work, it is cancelled where it waits when its time is up, so a registry that
    pages its catalog forever, or stalls it, cannot hold it (and what it read) for ever."""

    async def refresh() -> None:
        try:
            await within(reactor, deadline, index.refresh(registry))
        except DeadlineExpired:
            log.warn(
                "repository index refresh did not finish within {seconds:g}s "
                "(--registry-index-refresh-period) and was stopped",
                seconds=deadline,
            )
        except Exception as error:
            # Until a first refresh succeeds, namespace lists keep seeking the catalog.
            log.warn("repository index refresh failed: {error}", error=str(error) or repr(error))

    loop = LoopingCall(lambda: defer.Deferred.fromCoroutine(refresh()))
    loop.clock = reactor
    return loop


def _authorization(
    mode: str, kube: ClusterClient | None, reactor: Any, options: dict[str, Any]
) -> tuple[AlwaysAllow | RbacAuthorizer, list[Reflector]]:
    if mode == "AlwaysAllow":
        log.warn("authorization mode AlwaysAllow: every authenticated client may see and delete every tag")
        return AlwaysAllow(), []
    assert kube is not None
    index = RbacIndex()
    sources = rbac_reflectors(kube, reactor, index, **options)
    return RbacAuthorizer(index, ready=lambda: all(r.has_synced for r in sources)), sources


def _access_generation(authorizer: AlwaysAllow | RbacAuthorizer) -> Callable[[], int]:
    if isinstance(authorizer, RbacAuthorizer):
        index = authorizer.index
        return lambda: index.generation
    return lambda: 0


def _access_rules(authorizer: AlwaysAllow | RbacAuthorizer) -> Callable[[UserInfo, str], PathMatcher] | None:
    if isinstance(authorizer, RbacAuthorizer):
        return lambda user, namespace: authorizer.rules(user, "get", namespace)
    return None


def _synced(reflectors: list[Reflector], what: str) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        waiting = [r for r in reflectors if not r.has_synced]
        # Those that failed say why: a refusal (403) is no wait, as "not synced yet" would suggest.
        failing = [f"{r.name}: {cause(r.last_error)}" for r in waiting if r.last_error is not None]
        pending = [r.name for r in waiting if r.last_error is None]
        said = []
        if failing:
            said.append(f"{what} cannot be read: {'; '.join(failing)}")
        if pending:
            said.append(f"{what} not synced yet: {', '.join(pending)}")
        if said:
            raise RuntimeError("; ".join(said))

    return check


async def start(
    reactor: Any,
    settings: Settings,
    reflector_options: dict[str, Any] | None = None,
    completed: Completed | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    quiet_clock: IReactorTime | None = None,
    landing_clock: IReactorTime | None = None,
    review_delays: IReactorTime | None = None,
    auth_log_monotonic: Callable[[], float] | None = None,
) -> RunningServer:
    """``quiet_clock``: the clock of the quiet loop (`quiet.WhenQuiet`; a task.Clock's, to drive it),
    the reactor's unless given. ``landing_clock``: the registry client's for its watch of an
    unanswered write (`RegistryClient`), the reactor's unless given. ``review_delays``: the clock of
    the waits between the attempts of a TokenReview (`TokenReviewAuthenticator`), the reactor's
    unless given. ``auth_log_monotonic``: the clock of the log of authentication failures
    (`ApiServer`), ``monotonic`` unless given."""
    if completed is None:
        # Blocking (reads files, may run a credential plugin): off the reactor thread, once.
        completed = await deferToThread(complete, settings)
    cluster, mode, serving = completed.cluster, completed.authorization_mode, completed.serving
    log.info("serving certificate: {origin}", origin=completed.serving_origin)
    for notice in completed.notices:
        log.info("{notice}", notice=notice)
    for warning in completed.warnings:
        log.warn("{warning}", warning=warning)
    metrics = Metrics()
    tls_options = TlsOptions(settings.tls_min_version, settings.tls_cipher_suites)

    # As many idle connections again as TokenReviews may be under way at once: a review then reuses
    # one rather than making a TLS handshake with the cluster API.
    kube = (
        KubeClient(reactor, cluster, max_idle_connections=MAX_IDLE_CONNECTIONS + REVIEWS_AT_ONCE)
        if cluster is not None
        else None
    )
    reflectors: list[Reflector] = []
    options = dict(reflector_options or {})
    cleanup_failures = None
    if cluster is not None:
        # A refused user, rejected credentials or an unreachable API fail every reflector alike:
        # said once for all, with the fix, and not once a retry each (docs/troubleshooting.md).
        access = access_log(cluster, monotonic)
        options.setdefault("on_failure", access)
        cleanup_failures = access.for_namespace_cleanup()
    token = None
    if kube is not None:
        token = TokenReviewAuthenticator(
            token_reviewer(kube),
            reactor,
            success_ttl=settings.token_cache_ttl,
            failure_ttl=settings.token_failure_cache_ttl,
            delays=review_delays,
        )
    authentication = DynamicAuthentication(_flag_authentication(settings), token=token)
    context_factory = ContextFactory(server_context(serving, authentication.config.trusted_cas, tls_options))

    watchers = _rotation_watchers(reactor, settings, serving, context_factory, authentication, tls_options)
    auth_reflectors: list[Reflector] = []
    if kube is not None and not authentication.flags.complete:
        auth_reflectors.append(authentication_reflector(kube, reactor, authentication, **options))

    authorizer, rbac_sources = _authorization(mode, kube, reactor, options)
    reflectors = auth_reflectors + rbac_sources
    if kube is None:
        log.info(
            "standalone mode: no cluster API; client-certificate authentication only, no namespace cleanup"
        )
        if not authentication.config.trusted_cas:
            log.warn("no --client-ca-file: no client can authenticate; only health endpoints will answer")

    registry_client = RegistryClient(
        reactor, settings.registry, reads_at_turn_end=True, monotonic=monotonic, landing_clock=landing_clock
    )
    registry = InstrumentedRegistry(registry_client, metrics, on_failure=FailureLog(monotonic))
    events_token = completed.events_token
    index = RepositoryIndex() if events_token else None
    # One set of cleanup counters: the leader's cascades and every replica's deletecollection removals.
    cleanup_metrics = CleanupMetrics()
    # The writes of the process that may still land (out, or unanswered: the registry client notes
    # each one it sends, a repair's or a single delete's), which every cascade of the process waits out
    # before it reports a namespace empty: the leader's and deletecollection's alike.
    late_writes = registry_client.late_writes
    remover = (
        namespace_remover(
            reactor,
            kube,
            registry,
            settings.namespace_cleanup_concurrency,
            cleanup_metrics,
            late_write_grace=LATE_WRITE_GRACE * settings.registry.timeout,
            late_writes=late_writes,
        )
        if kube is not None
        else None
    )
    inventory = Inventory(
        registry,
        concurrency=settings.registry_concurrency,
        index=index,
        pause=lambda: deferLater(reactor, 0, lambda: None),
    )
    watch_settings = watch_limits(settings.watch, settings.http)
    held = held_watch_limits(
        settings.watch, watch_settings, settings.http.max_connections, settings.watch_flags
    )
    for flagged, line in held:
        # Each watch holds a connection; the rest stays for other requests and health probes.
        (log.warn if flagged else log.info)("{line}", line=line)
    watch_hub = WatchHub(
        InventoryReader(inventory),
        reactor,
        watch_settings,
        access_generation=_access_generation(authorizer),
        access_rules=_access_rules(authorizer),
        on_end=lambda reason: metrics.watches_ended.labels(reason).inc(),
        failure_log=ReadFailures(monotonic),
    )
    metrics.track_watches(lambda: len(watch_hub.watchers), lambda: len(watch_hub.sources))
    walks = WalkCache(reactor, on_lookup=metrics.walk_lookup)
    metrics.track_walks(lambda: walks.names)
    service = TagsService(
        inventory=inventory,
        registry_host=settings.registry_host,
        authorizer=CountingAuthorizer(authorizer, metrics),
        versions=watch_hub,
        delete_concurrency=settings.delete_concurrency,
        check_concurrency=settings.registry_concurrency,
        removal=remover,
        late_writes=late_writes,
        walks=walks,
        changed=watch_hub.repository_changed,
    )
    quiet = WhenQuiet(
        quiet_clock or reactor,
        lambda: service.lists,
        WHEN_QUIET,
        # Longer than any list lasts (its deadline ends it): none is being served when it runs.
        quiet_after(settings.http.request_timeout),
        # And once the list records are gone, kept --watch-scope-idle-timeout after their last use,
        # or 1.5 timeouts more have passed: an unused one is reaped by then (a reap every half
        # timeout), so one still there is in use, and waiting for it would free nothing.
        held=lambda: bool(watch_hub.listed.records),
        held_at_most=1.5 * watch_hub.limits.idle_scope_ttl,
    )

    async def ping() -> None:
        return None

    running: RunningServer | None = None

    async def not_shutting_down() -> None:
        if running is not None and running.shutting_down:
            raise RuntimeError("the server is shutting down")

    readiness: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("ping", ping),
        ("shutdown", not_shutting_down),
        # Anyone may probe, unthrottled: the probes of a second share one registry request. Timed
        # on the monotonic clock: the reactor's is the wall clock, which NTP may step back.
        (
            "registry",
            SharedCheck(registry.ping, monotonic, REGISTRY_CHECK_TTL, settings.registry.timeout, reactor),
        ),
    ]
    if auth_reflectors:
        readiness.append(("authentication-configmap", _synced(auth_reflectors, "authentication ConfigMap")))
    if rbac_sources:
        readiness.append(("rbac", _synced(rbac_sources, "RBAC objects")))
    liveness: list[tuple[str, Any]] = [("ping", ping)]
    carried = CarriedDeletes(
        registry_client, reactor, lambda repository, tag: service.asked_by.get((repository, tag))
    )
    cleanup = _cleanup(
        reactor,
        settings,
        kube,
        registry,
        options,
        completed.lease_namespace,
        cleanup_metrics,
        late_writes,
        carried,
        cleanup_failures,
    )
    if remover is not None or cleanup is not None:
        metrics.add_cleanup(cleanup_metrics)
    if cleanup is not None:
        if remover is not None:
            remover.running = cleanup.cleaning  # deletecollection waits for the leader's cascade
            cleanup.emptied = remover.forget  # and forgets its walk of a namespace that one emptied
        cleanup.changed = watch_hub.repository_changed
        liveness.append(("leaderElection", cleanup.check_health))
    health = HealthChecks({"healthz": liveness, "livez": liveness, "readyz": readiness}, monotonic)
    # Said here, not with the start's other warnings: the advice names only checks registered above.
    names = {endpoint: [name for name, _ in checks] for endpoint, checks in health.checks.items()}
    for warning in always_allow_warnings(settings.always_allow_paths, names):
        log.warn("{warning}", warning=warning)
    api = ApiServer(
        service=service,
        authenticator=authentication,
        health=health,
        metrics=metrics,
        path_authorizer=authorizer,
        always_allow_paths=settings.always_allow_paths,
        metrics_groups=settings.metrics_allowed_groups,
        metrics_anonymous=settings.metrics_anonymous,
        repository_index=index,
        events_token=events_token,
        clock=reactor,
        request_timeout=settings.http.request_timeout,
        max_inflight=settings.http.max_requests_inflight,
        max_body=settings.http.max_request_body_bytes,
        watch_hub=watch_hub,
        request_log=settings.verbosity >= DEBUG_VERBOSITY,
        standalone=cluster is None,
        monotonic=auth_log_monotonic or monotonic,
    )
    site = GuardedSite(api.resource(), settings.http, api, reactor=reactor, monotonic=monotonic)
    connections = LimitedConnections(
        site,
        settings.http.max_connections,
        on_refused=ConnectionRefusals(settings.http, metrics.connection_refused, monotonic),
        front_proxy=authentication.is_front_proxy,
        # Without a front proxy to verify, no connection could keep a place kept for it.
        front_proxy_connections=FRONT_PROXY_CONNECTIONS if settings.requestheader_client_ca_file else 0,
    )
    front = Serving(
        reactor,
        settings,
        GuardedTLSFactory(context_factory, False, connections, clock=reactor),
        connections,
        api,
        mode,
        carried,
    )
    registry_probe: defer.Deferred[str] | None = None

    def begin_probe() -> None:
        nonlocal registry_probe
        registry_probe = defer.Deferred.fromCoroutine(probe(registry_client, settings.registry.url))
        registry_probe.addErrback(_probe_failed)

    def end_probe() -> None:
        if registry_probe is not None and not registry_probe.called:
            registry_probe.cancel()

    def start_reflectors() -> None:
        for reflector in reflectors:
            reflector.start()

    async def stop_reflectors() -> None:
        for reflector in reflectors:
            await reflector.stop()

    def start_watchers() -> None:
        for watcher in watchers:
            watcher.start()

    def stop_watchers() -> None:
        for watcher in watchers:
            watcher.stop()

    index_refresh = (
        _index_refresh(reactor, index, registry, settings.registry_index_refresh_period)
        if index is not None
        else None
    )

    def begin_index() -> None:
        assert index_refresh is not None
        log.info(
            "repository index enabled: namespace lists read it instead of the catalog once filled; "
            "registry events at POST /registry/events, full refresh every {period}s",
            period=settings.registry_index_refresh_period,
        )
        index_refresh.start(settings.registry_index_refresh_period, now=True)

    def end_index() -> None:
        if index_refresh is not None and index_refresh.running:
            index_refresh.stop()

    async def close_registry() -> None:
        carried.say("stopping")  # those carried on since (a request's own deadline)
        await registry.close()

    # The start order; stop runs it backwards, one part after the other, so the drain comes first
    # and the clients that requests in flight still use close last. The namespace cleanup starts
    # before serving, and its stop (a leader's release of the Lease after the deletes carried on
    # have ended) comes right after the drain.
    parts = [
        Part("registry-client", stop=close_registry),
        Part("cluster-client", stop=kube.close) if kube is not None else None,
        Part("watch", start=watch_hub.run, stop=watch_hub.stop),
        Part("list-walks", start=walks.run, stop=walks.stop),
        Part("when-quiet", start=quiet.run, stop=quiet.stop),
        Part("reflectors", start=start_reflectors, stop=stop_reflectors),
        Part("registry-probe", start=begin_probe, stop=end_probe),
        Part("file-watchers", start=start_watchers, stop=stop_watchers),
        Part("namespace-cleanup", start=cleanup.start, stop=cleanup.stop) if cleanup is not None else None,
        Part("repository-index", start=begin_index, stop=end_index) if index_refresh is not None else None,
        Part("serving", start=front.start, stop=front.drain),
    ]
    services = OrderedServices()
    for part in parts:
        if part is not None:
            part.setServiceParent(services)
    try:
        services.startService()
    except ConfigurationError:
        await services.stopService()
        raise
    assert front.listener is not None
    running = RunningServer(
        front.port,
        front.listener,
        connections,
        registry,
        api,
        settings,
        reactor,
        services,
        kube,
        reflectors,
        watchers,
        cleanup,
        index=index,
        index_refresh=index_refresh,
        registry_probe=registry_probe,
        quiet=quiet,
    )
    return running


def _probe_failed(failure: Failure) -> None:
    if not failure.check(defer.CancelledError):
        log.failure("the registry probe failed unexpectedly", failure)


def serve(settings: Settings, completed: Completed | None = None, signals: StopSignals | None = None) -> int:
    """Run until SIGTERM/SIGINT; 0 after a graceful stop, 1 when the server cannot start or a second
    signal cut the graceful stop short."""
    from twisted.internet import task

    if signals is None:
        signals = StopSignals()
        signals.install()
    if completed is None:
        try:
            completed = complete(settings)
        except ConfigurationError as error:
            for line in error.errors:
                print(f"payloadtags: {line}", file=sys.stderr)
            return 1
    begin_logging(settings.log_format, settings.verbosity)
    # Before the heap takes shape: pages and chunks free what the next one takes again.
    left_alone = keep_freed_heap()
    if left_alone is not None:
        log.info("{why}", why=left_alone)
    exit_code = 0

    async def main(reactor: Any) -> None:
        nonlocal exit_code
        # Nothing listens before the reactor runs and our handlers are in place again (reactor.run
        # puts Twisted's own in): from "serving ..." on, every signal finds the graceful stop.
        running_now: defer.Deferred[None] = defer.Deferred()
        reactor.callWhenRunning(running_now.callback, None)
        await running_now
        signals.attach(reactor)
        if signals.received is not None:
            log.info("received {signal} before serving: exiting", signal=signals.received)
            return
        running: RunningServer | None = None

        async def stop() -> None:
            if running is not None:
                await running.stop()

        # A signal stops the reactor; this trigger runs the graceful stop before it does.
        reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.Deferred.fromCoroutine(stop()))
        try:
            running = await start(reactor, settings, completed=completed)
        except ConfigurationError as error:
            for line in error.errors:
                log.error("payloadtags: {error}", error=line)
            exit_code = 1
            return
        # Everything imported and built so far lives as long as the process: moving it out of the
        # collector's sight makes every later full collection (and so every request) cheaper.
        gc.collect()
        gc.freeze()
        # The youngest generation is collected after 10,000 more container objects were made than
        # freed, not 700. Only what reference counting cannot free (reference cycles) waits for it,
        # and no more than that many objects of it; the rest is freed as before. Measured with
        # gc.callbacks in a server serving pages of 500 through 100,000 tags in 100 repositories
        # (bench/request_cpu.py): at 700, 51 young collections per 1,000 pages, 0.4 ms of CPU a page
        # (of about 3); at 10,000, 2.4 and 0.03 ms. A page cost 0.85 as much and an unpaged list of
        # 100,000 tags 0.73, for the same objects collected; the highest resident memory was 1.2 MB
        # more (84 MB), issue #11.
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
        await defer.Deferred()

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
    except SystemExit as done:
        return exit_code or int(done.code or 0)
    return exit_code
