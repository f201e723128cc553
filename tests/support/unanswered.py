"""Helpers of the tests of unanswered registry writes (tests/integration/test_unanswered_*.py): the
registry timeout they run with, a proxy fault for the first re-tag, and a removal service whose budget
and waits run on the test's clock (`WaitClock`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from payloadtags.access.authz import AlwaysAllow
from payloadtags.api.options import DeleteOptions, list_options
from payloadtags.api.tags import ResourceVersions, TagsService
from payloadtags.cleanup.cascade import Cascade
from payloadtags.cleanup.removal import NamespaceRemover
from payloadtags.cleanup.sweep import TERMINATING
from payloadtags.inventory import Inventory
from payloadtags.kube import Backoff
from payloadtags.metrics import InstrumentedRegistry, Metrics
from payloadtags.names import encode_name
from payloadtags.registry import LateWrites
from payloadtags.registry.client import LATE_WRITE_GRACE, RegistryClient, RegistrySettings
from payloadtags.registry.errors import RegistryError
from tests.support import images
from tests.support.clocks import SkipAhead
from tests.support.faultproxy import GATEWAY_LATE, FaultProxy
from tests.support.interleaving import USER

# The registry timeout of the servers and removal services below. Every plain request (a read of the
# catalog, of a tag list, a delete's look before its re-tag) must be answered within it in real time
# while the test is about something else: 0.5 s was missed on a loaded machine, 4 runs in 5 of this
# file beside two busy loops (tests3), and 1 s once in 3 (review-misc5 F4). The late writes' times
# derived from it run on the test's clock (`WaitClock`), and a delete's watch of its unanswered write
# on a `SkipAhead`: neither costs real time.
TIMEOUT = 2.0
# How long a write that went unanswered may land after its request ends: `LATE_WRITE_GRACE` timeouts, on
# the test's clock; what the answers name ("may still carry it out within about 4s").
LANDS = LATE_WRITE_GRACE * TIMEOUT


def first_retag(fault: str, puts: list[str]) -> Any:
    """The fault for the first re-tag PUT of v1 only; everything else passes."""

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and path.endswith("/manifests/v1"):
            puts.append(path)
            return fault if len(puts) == 1 else None
        return None

    return decide


class WaitClock(Clock):
    """The removal's clock (its budget, a failed pass's backoff, the wait for a late write): it stands
    still until the test advances it. `waits()` fires with the delay of the next call scheduled on it
    for less than ``shorter_than`` seconds (a backoff, a wait), not the budget's own timers."""

    def __init__(self, shorter_than: float) -> None:
        super().__init__()
        self.shorter_than = shorter_than
        self._waits: list[Deferred[float]] = []

    def waits(self) -> Deferred[float]:
        waited: Deferred[float] = Deferred()
        self._waits.append(waited)
        return waited

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any:
        call = super().callLater(delay, callable, *args, **kw)
        if delay < self.shorter_than and self._waits:
            # Told from the next reactor turn, once the caller waits: the test's reaction runs after it.
            global_reactor.callLater(0, self._waits.pop(0).callback, delay)
        return call


def wired(client: RegistryClient) -> InstrumentedRegistry:
    """``client`` as the server hands it to the inventory and the cascades (`server`): counted and timed
    by `InstrumentedRegistry`, which passes each call's arguments on. A test over the bare client missed
    one it dropped (review-ds4 F4: ``delete_tag``'s ``expected``, whose loss deletes another client's
    push)."""
    return InstrumentedRegistry(client, Metrics())


def removal_service(
    url: str, clock: Clock, budget: float, timeout: float, concurrency: int = 1
) -> tuple[RegistryClient, TagsService]:
    """A replica's deletecollection of a namespace the cluster API reports Terminating (`NamespaceRemover`),
    its budget and waits on ``clock``; registry requests and their timeouts on the reactor. The client
    notes its writes that may still land on ``clock`` as well, in the record the cascade reads, as the
    server's client and cascades share one (`LateWrites`). Both read and write through the client as
    the server wires it (`wired`). A delete's watch of its unanswered write for it to land takes no
    real time (`SkipAhead`): every test here lets a held write land after it, if at all."""
    client = RegistryClient(
        global_reactor,
        RegistrySettings(url=url, timeout=timeout),
        late_writes=LateWrites(clock),
        landing_clock=SkipAhead(),
    )
    registry = wired(client)

    async def terminating(namespace: str) -> tuple[str, str | None]:
        return TERMINATING, None

    cascade = Cascade(
        registry,
        clock,
        concurrency=concurrency,
        backoff=lambda: Backoff(initial=0.2, factor=2.0, cap=2.0),
        late_write_grace=LATE_WRITE_GRACE * timeout,
        late_writes=client.late_writes,
    )
    service = TagsService(
        inventory=Inventory(registry),
        registry_host="registry.test",
        authorizer=AlwaysAllow(),
        versions=ResourceVersions(global_reactor),
        removal=NamespaceRemover(cascade, clock, terminating),
        removal_budget=budget,
        late_writes=client.late_writes,
    )
    return client, service


def first_of(*work: Deferred[Any]) -> Deferred[Any]:
    """Fires once any of ``work`` has (each keeps its own result for whoever awaits it)."""
    either: Deferred[Any] = Deferred()
    told: list[bool] = []

    def ended(result: object) -> object:
        if not told:
            told.append(True)
            # From the next reactor turn: its waiter may await the one that ended, which cannot give
            # a failure from within its own callbacks.
            global_reactor.callLater(0, either.callback, None)
        return result

    for each in work:
        each.addBoth(ended)
    return either


@asynccontextmanager
async def released(
    proxy: FaultProxy, client: RegistryClient, hold: Deferred[None] | None = None
) -> AsyncIterator[None]:
    """The test's body; then the held write let go (if the body did not), the proxy's requests ended
    and the client and proxy closed, whatever the body did."""
    try:
        yield
    finally:
        if hold is not None and not hold.called:
            hold.callback(None)
        await proxy.settled()
        await client.close()
        await proxy.stop()


def retag_removal(
    registry: Any, repo: str, shorter_than: float, budget: float
) -> tuple[Deferred[None], FaultProxy, WaitClock, RegistryClient, TagsService]:
    """v1 pushed to ``repo``; a removal service (registry timeout `TIMEOUT`) through a proxy whose first
    re-tag PUT of v1 gets a gateway's late 5xx and is held until the test lets ``hold`` go."""
    images.push_oci_image(registry, repo, "v1")
    puts: list[str] = []
    hold: Deferred[None] = Deferred()
    proxy = FaultProxy(global_reactor, registry.url, first_retag(GATEWAY_LATE, puts), hold=hold)
    clock = WaitClock(shorter_than=shorter_than)
    client, service = removal_service(proxy.url, clock, budget=budget, timeout=TIMEOUT)
    return hold, proxy, clock, client, service


async def removal_until_it_waits(
    service: TagsService, namespace: str, clock: WaitClock, time_left: float | None = None
) -> tuple[Deferred[Any], list[float]]:
    """A deletecollection of ``namespace`` (``time_left`` before its request's deadline), run until it
    ends or schedules a wait on ``clock``; the call and the delays of the waits seen."""
    waiting = clock.waits()
    delays: list[float] = []
    waiting.addCallback(delays.append)
    removing = Deferred.fromCoroutine(
        service.delete_collection(USER, namespace, list_options({}), DeleteOptions(), time_left=time_left)
    )
    await first_of(removing, waiting)
    return removing, delays


async def land_and_wait_out(
    registry: Any,
    repo: str,
    proxy: FaultProxy,
    hold: Deferred[None],
    clock: WaitClock,
    delays: list[float],
    removing: Deferred[Any],
) -> Any:
    """The held write lands now (within the wait) and brings v1 back; then the wait ends, and the
    call's answer."""
    hold.callback(None)
    await proxy.settled()
    assert images.list_tags(registry, repo) == ["v1"]
    [delay] = delays
    clock.advance(delay)
    return await removing


async def single_delete_fails(service: TagsService, repo: str) -> RegistryError:
    """The single delete of ``repo``:v1 through ``service``, which must fail: its error."""
    namespace, _, path = repo.partition("/")
    with pytest.raises(RegistryError) as caught:
        await service.delete(USER, namespace, encode_name(path, "v1"), DeleteOptions())
    return caught.value
