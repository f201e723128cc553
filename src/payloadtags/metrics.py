"""Prometheus metrics of one server: API requests, registry calls, authorization decisions.

Each server has its own CollectorRegistry, so several servers in one process (tests) do not mix.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import attrs
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.defer import CancelledError

from payloadtags.access.authn import UserInfo
from payloadtags.access.authz import Authorizer
from payloadtags.registry import Before, CatalogPage, Check, Manifest, Registry, Resolved, WriteHooks
from payloadtags.registry.client import MAX_CATALOG_PAGE
from payloadtags.registry.errors import (
    RegistryConflict,
    RegistryDeleteDisabled,
    RegistryError,
    RegistryNotFound,
    RegistryReadOnly,
    RegistryTimeout,
    RegistryUnavailable,
)

T = TypeVar("T")

# prometheus_client adds a `*_created` sample to every counter and histogram child: it doubles the label
# sets a scrape stores, for a timestamp kube-apiserver's exposition does not carry. The switch is the
# library's, one per process.
disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_LATEST

# How many label sets of the request metrics keep their looked-up children (methods and codes are few;
# a client inventing methods only makes its requests take the slower look-up).
MAX_CACHED_LABELS = 256
# payloadtags_connections_refused_total's reasons: http.refusals.REASONS (http is above this layer).
CONNECTION_REFUSALS = ("client_limit", "server_full", "evicted")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@attrs.define
class Metrics:
    registry: CollectorRegistry = attrs.field(factory=CollectorRegistry)
    requests: Counter = attrs.field(init=False)
    request_duration: Histogram = attrs.field(init=False)
    registry_requests: Counter = attrs.field(init=False)
    registry_duration: Histogram = attrs.field(init=False)
    authorization: Counter = attrs.field(init=False)
    watches: Gauge = attrs.field(init=False)
    watch_scopes: Gauge = attrs.field(init=False)
    watches_ended: Counter = attrs.field(init=False)
    walk_cache_lookups: Counter = attrs.field(init=False)
    walk_cache_tags: Gauge = attrs.field(init=False)
    connections_refused: Counter = attrs.field(init=False)
    _request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = attrs.field(
        factory=dict, init=False
    )
    _walk_children: dict[bool, Counter] = attrs.field(factory=dict, init=False)
    _refusal_children: dict[str, Counter] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self.requests = Counter(
            "payloadtags_apiserver_requests",
            "API requests served, by verb, resource and HTTP status code.",
            ["verb", "resource", "code"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "payloadtags_apiserver_request_duration_seconds",
            "Time to serve an API request, by verb and resource.",
            ["verb", "resource"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry_requests = Counter(
            "payloadtags_registry_operations",
            "Registry operations, by operation and outcome.",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.registry_duration = Histogram(
            "payloadtags_registry_operation_duration_seconds",
            "Time a registry operation took, by operation.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.authorization = Counter(
            "payloadtags_authorization_decisions",
            "PayloadRepositoryAccess decisions, by access verb and decision.",
            ["verb", "decision"],
            registry=self.registry,
        )

        self.watches = Gauge(
            "payloadtags_watches", "Watch streams open on this replica.", registry=self.registry
        )
        self.watch_scopes = Gauge(
            "payloadtags_watch_scopes",
            "Scopes (namespaces, or all namespaces) reread periodically for watches and lists.",
            registry=self.registry,
        )
        self.watches_ended = Counter(
            "payloadtags_watches_ended",
            "Watch streams ended, by reason: timeout, client gone, slow (send buffer full), access rules "
            "changed, shutting down, error.",
            ["reason"],
            registry=self.registry,
        )
        self.walk_cache_lookups = Counter(
            "payloadtags_list_walk_cache_lookups",
            "Continued list pages that looked for their walk's kept tag lists, by outcome: hit (found), "
            "miss (expired, evicted, or kept by another replica: the page read the registry).",
            ["outcome"],
            registry=self.registry,
        )
        self.walk_cache_tags = Gauge(
            "payloadtags_list_walk_cache_tags",
            "Tags and catalog names kept for the next pages of paginated walks, all walks together.",
            registry=self.registry,
        )

        self.connections_refused = Counter(
            "payloadtags_connections_refused",
            "Connections the connection limits closed, by reason: client_limit (the address has "
            "--max-connections-per-client open), server_full (--max-connections open, none to evict), "
            "evicted (closed to make room for a new one).",
            ["reason"],
            registry=self.registry,
        )
        # Each at 0 from the start (a rate over a series that appears only with the first refusal misses
        # that one), looked up once: a flood is refused at every connect.
        self._refusal_children = {
            reason: self.connections_refused.labels(reason) for reason in CONNECTION_REFUSALS
        }

    def connection_refused(self, reason: str) -> None:
        """A connection a limit closed (http.refusals: ``reason`` is one of CONNECTION_REFUSALS)."""
        self._refusal_children[reason].inc()

    def track_walks(self, tags: Callable[[], int]) -> None:
        self.walk_cache_tags.set_function(tags)

    def walk_lookup(self, hit: bool) -> None:
        # Once per continued page: the labelled child is looked up once (as in observe_request).
        child = self._walk_children.get(hit)
        if child is None:
            child = self._walk_children[hit] = self.walk_cache_lookups.labels("hit" if hit else "miss")
        child.inc()

    def track_watches(self, open_watches: Callable[[], int], scopes: Callable[[], int]) -> None:
        self.watches.set_function(open_watches)
        self.watch_scopes.set_function(scopes)

    def observe_request(self, verb: str, resource: str, code: int, seconds: float) -> None:
        # The labelled children are looked up once per label set: ``labels()`` costs more than the
        # count and the observation together, on every request.
        key = (verb, resource, code)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(verb, resource, str(code)),
                self.request_duration.labels(verb, resource),
            )
            if len(self._request_children) < MAX_CACHED_LABELS:
                self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def add_cleanup(self, counters: Any) -> None:
        """Expose the namespace cleanup's counters (``CleanupMetrics``) with the rest."""
        self.registry.register(_CleanupCollector(counters))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def outcome_of(error: BaseException | None) -> str:
    match error:
        case None:
            return "ok"
        case RegistryNotFound():
            return "not_found"
        case RegistryTimeout():
            return "timeout"
        case RegistryReadOnly():
            return "read_only"
        case RegistryUnavailable():
            return "unavailable"
        case RegistryDeleteDisabled():
            return "delete_disabled"
        case CancelledError():
            # Its caller gave it up (the client went away, the request's deadline): neither the
            # registry's failure nor a bug. As "error", every list cut short fired the alert on
            # "error" (rejected credentials, a 403, answers not understood: docs/metrics.md).
            return "cancelled"
        case RegistryConflict() if isinstance(error.__cause__, RegistryError):
            # A delete the registry failed (a 5xx, no answer), then found moved by a push: the
            # registry's failure is what happened to the operation; as "conflict" the "registry is
            # failing" alert left it out (review r2obs N2).
            return outcome_of(error.__cause__)
        case RegistryConflict():
            # A tag changed under a conditional write (a push racing a delete): an answer, the
            # registry works.
            return "conflict"
        case RegistryError():
            return "error"
        case _:
            return "error"


@attrs.define
class InstrumentedRegistry:
    """The registry client with every public operation counted and timed."""

    inner: Registry
    metrics: Metrics
    clock: Callable[[], float] = time.monotonic
    # Told of every failed operation (payloadtags.registry_diagnosis.FailureLog logs them).
    on_failure: Callable[[str, BaseException], None] | None = None
    # The labelled children by (operation, outcome): ``labels()`` looks them up under a lock each
    # time, a noticeable part of a small read's CPU when a list makes thousands.
    _counted: dict[tuple[str, str], tuple[Any, Any]] = attrs.field(factory=dict, init=False, repr=False)

    async def _measure(
        self,
        operation: str,
        call: Awaitable[T],
        checks: _Checks | None = None,
        *,
        cancel_is_timeout: bool = False,
    ) -> T:
        """``checks``: the caller's checks of a mutation (`WriteHooks`). One that stopped the
        operation stopped it before a request, for the caller's reasons, not the registry's: then it
        is neither counted nor told as a failure. The time they took is not the registry's either.
        With ``cancel_is_timeout``, a cancel is counted and told as a timeout: the caller gives the
        operation up only once it has taken the registry timeout."""
        started = self.clock()
        error: BaseException | None = None
        stopped = False
        try:
            return await call
        except CancelledError as exc:
            if not cancel_is_timeout:
                error = exc  # the caller's: neither a failure nor logged
                raise
            # Told as the failure it is: the caller's give-up fires before the registry client's
            # own timeout (armed only when the request leaves), so against a hung registry this is
            # the only failure there is to log.
            error = RegistryTimeout(
                "no answer to GET /v2/ within --registry-timeout (the readiness check gave it up, its "
                "wait for a registry connection included)"
            )
            if self.on_failure is not None:
                self.on_failure(operation, error)
            raise
        except BaseException as exc:
            error = exc
            stopped = checks is not None and checks.stopped
            if self.on_failure is not None and not stopped:
                self.on_failure(operation, exc)
            raise
        finally:
            if not stopped:
                spent = checks.spent if checks is not None else 0.0
                self._count(operation, error, self.clock() - started - spent)

    def _count(self, operation: str, error: BaseException | None, duration: float) -> None:
        key = (operation, outcome_of(error))
        counted = self._counted.get(key)
        if counted is None:
            counted = self._counted[key] = (
                self.metrics.registry_requests.labels(*key),
                self.metrics.registry_duration.labels(operation),
            )
        counted[0].inc()
        counted[1].observe(duration)

    async def ping(self) -> None:
        # Its caller, the readiness check (api/health.py SharedCheck), cancels a ping only to give it
        # up at --registry-timeout, its wait for a connection included: the registry's slowness.
        return await self._measure("ping", self.inner.ping(), cancel_is_timeout=True)

    @property
    def catalog_order(self) -> str | None:
        """The inner client's (`registry.sorts_by_components`)."""
        order: str | None = getattr(self.inner, "catalog_order", None)
        return order

    async def catalog(self, last: str | None = None, n: int = MAX_CATALOG_PAGE) -> CatalogPage:
        return await self._measure("catalog", self.inner.catalog(last=last, n=n))

    async def tags(self, repository: str) -> Sequence[str]:
        return await self._measure("tags", self.inner.tags(repository))

    async def manifest(self, repository: str, reference: str) -> Manifest:
        return await self._measure("manifest", self.inner.manifest(repository, reference))

    async def resolve(self, repository: str, reference: str) -> str:
        return await self._measure("resolve", self.inner.resolve(repository, reference))

    async def resolve_typed(self, repository: str, reference: str) -> Resolved:
        return await self._measure("resolve", self.inner.resolve_typed(repository, reference))

    async def blob(self, repository: str, digest: str, max_bytes: int = 4 << 20) -> bytes:
        return await self._measure("blob", self.inner.blob(repository, digest, max_bytes=max_bytes))

    async def delete_tag(
        self,
        repository: str,
        tag: str,
        *,
        hooks: WriteHooks | None = None,
        expected: str | None = None,
    ) -> str | None:
        checks = _Checks(self.clock, hooks if hooks is not None else WriteHooks())
        call = self.inner.delete_tag(repository, tag, hooks=checks.hooks(), expected=expected)
        return await self._measure("delete_tag", call, checks)

    async def delete_manifest(
        self,
        repository: str,
        digest: str,
        *,
        hooks: WriteHooks | None = None,
    ) -> None:
        checks = _Checks(self.clock, hooks if hooks is not None else WriteHooks())
        call = self.inner.delete_manifest(repository, digest, hooks=checks.hooks())
        return await self._measure("delete_manifest", call, checks)

    async def check_delete(self, repository: str, tag: str) -> None:
        return await self._measure("check_delete", self.inner.check_delete(repository, tag))

    async def close(self) -> None:
        await self.inner.close()


@attrs.define
class _Checks:
    """A mutation's checks (`WriteHooks.before`, `WriteHooks.check`), noting whether one stopped it
    (raised) and how long the confirmations took, with its waits for the repository's turn, a
    confirmation's turn and a connection slot (`WriteHooks.waiting`): another delete's cluster-API
    `GET` is no more the registry's time than this delete's own."""

    clock: Callable[[], float]
    _hooks: WriteHooks
    stopped: bool = False
    spent: float = 0.0
    _waited_from: float | None = None

    def hooks(self) -> WriteHooks:
        """The hooks the registry client is given: the caller's, watched; `sent` as it is."""
        return WriteHooks(
            before=self.before(), check=self.check(), sent=self._hooks.sent, waiting=self.waiting
        )

    def waiting(self, begins: bool) -> None:
        if begins:
            self._waited_from = self.clock()
        elif self._waited_from is not None:
            self.spent += self.clock() - self._waited_from
            self._waited_from = None
        if self._hooks.waiting is not None:
            self._hooks.waiting(begins)

    def before(self) -> Before | None:
        before = self._hooks.before
        if before is None:
            return None

        async def checked() -> None:
            started = self.clock()
            try:
                await before()
            except BaseException:
                self.stopped = True
                raise
            finally:
                self.spent += self.clock() - started

        return checked

    def check(self) -> Check | None:
        check = self._hooks.check
        if check is None:
            return None

        def checked() -> None:
            try:
                check()
            except BaseException:
                self.stopped = True
                raise

        return checked


@attrs.define
class CountingAuthorizer:
    inner: Authorizer
    metrics: Metrics
    # The labelled children by (verb, decision): a list asks once per repository.
    _counted: dict[tuple[str, bool], Any] = attrs.field(factory=dict, init=False, repr=False)

    def allowed(self, user: UserInfo, verb: str, namespace: str, repository_path: str) -> bool:
        decision = self.inner.allowed(user, verb, namespace, repository_path)
        counted = self._counted.get((verb, decision))
        if counted is None:
            label = "allow" if decision else "deny"
            counted = self._counted[verb, decision] = self.metrics.authorization.labels(verb, label)
        counted.inc()
        return decision

    def allowed_everywhere(self, user: UserInfo, verb: str, namespace: str) -> bool:
        return self.inner.allowed_everywhere(user, verb, namespace)


@attrs.define(eq=False)  # the prometheus registry keeps collectors in a set
class _CleanupCollector:
    counters: Any

    def collect(self) -> Any:
        for name, value in self.counters.samples().items():
            if name.endswith("_total"):
                yield CounterMetricFamily(name.removesuffix("_total"), _HELP, value=value)
            else:
                yield GaugeMetricFamily(name, _HELP, value=value)


_HELP = "Namespace cleanup (see docs/namespace-cleanup.md)."
