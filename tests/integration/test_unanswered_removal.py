"""A namespace's removal (`NamespaceRemover`) and a registry write that went unanswered and may still
land: a repair's placeholder PUT, a single delete's re-tag, the removal's own DELETE by digest. The
removal is not done, nor answers 200, while the write may land; it waits within its budget (on the
test's clock) and deletes what the write left, or answers 504 naming it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, globalLogPublisher

from payloadtags.api.errors import ApiError
from payloadtags.api.options import DeleteOptions, list_options
from payloadtags.api.tags import TagsService
from payloadtags.cleanup.cascade import Cascade, CascadeResult
from payloadtags.kube import Backoff
from payloadtags.registry import LateWrites
from payloadtags.registry.client import RegistryClient, RegistrySettings
from payloadtags.registry.errors import RegistryError
from payloadtags.registry.late import Scope
from tests.support import images
from tests.support.clocks import SkipAhead
from tests.support.dangling import make_dangling
from tests.support.faultproxy import DROPPED_LATE, GATEWAY_LATE, LATE, STALL, FaultProxy
from tests.support.interleaving import USER
from tests.support.registry_server import RegistryServer
from tests.support.unanswered import (
    LANDS,
    TIMEOUT,
    WaitClock,
    first_of,
    land_and_wait_out,
    released,
    removal_service,
    removal_until_it_waits,
    retag_removal,
    single_delete_fails,
    wired,
)


def first_placeholder(fault: str, repo: str, puts: list[str]) -> Any:
    """The fault for the first placeholder PUT of the dangling tag v1 (a repair's write) only."""

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and path.endswith(f"/{repo}/manifests/v1"):
            puts.append(path)
            return fault if len(puts) == 1 else None
        return None

    return decide


def placeholder_removal(
    registry: Any, repo: str, fault: str, shorter_than: float, budget: float, timeout: float
) -> tuple[list[str], Deferred[None], FaultProxy, WaitClock, RegistryClient, TagsService]:
    """A dangling tag v1 in ``repo``; a removal service through a proxy that gives the first
    placeholder PUT of v1 ``fault`` and holds it until the test lets ``hold`` go. The PUTs of v1 seen
    are noted in the list returned."""
    make_dangling(registry, repo, images.push_oci_image(registry, repo, "v1"))
    puts: list[str] = []
    hold: Deferred[None] = Deferred()
    proxy = FaultProxy(global_reactor, registry.url, first_placeholder(fault, repo, puts), hold=hold)
    clock = WaitClock(shorter_than=shorter_than)
    client, service = removal_service(proxy.url, clock, budget=budget, timeout=timeout)
    return puts, hold, proxy, clock, client, service


@pytest.mark.parametrize("fault", [GATEWAY_LATE, DROPPED_LATE])
@pytest_twisted.ensureDeferred
async def test_a_namespace_removal_is_not_done_while_a_repairs_placeholder_may_still_land(
    fault: str, registry, repo
) -> None:
    """A dangling tag in a Terminating namespace; the repair's first placeholder PUT goes unanswered
    and is held. The pass fails, the next repairs the tag again, and the one after lists the
    namespace empty: the removal answered 200 there, and the held PUT then landed, leaving a tag in
    the namespace the namespace controller had been told was empty (review-gateway4 finding 2). The
    cascade now waits, after a write that went unanswered, as long as it may still land (two
    registry timeouts, as the single delete's error says), and passes again: the PUT lands meanwhile,
    and that pass deletes the tag it left.

    The order is told, not timed (review-dscheck2 G4): a read slower than the registry timeout (wall
    time; 2 s, four times what it was) on a loaded machine fails a pass, whose backoff the test took
    for the one after the PUT, or for the wait for the late write. Backoffs are sat out until the PUT
    has been seen, and then until the cascade says (its log) that it found the namespace empty and
    waits for the write; every wait of the test also ends when the call does (a failure, not a
    hang)."""
    namespace = repo.partition("/")[0]
    puts, hold, proxy, clock, client, service = placeholder_removal(
        registry, repo, fault, shorter_than=50.0, budget=100.0, timeout=2.0
    )
    backoff = clock.waits()
    events: list[dict[str, Any]] = []  # the log, where the cascade says why it waits
    observe = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observe)
    removing = Deferred.fromCoroutine(
        service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
    )
    async with released(proxy, client, hold):
        try:
            while True:  # a pass that failed before its placeholder PUT (a read) is passed again
                backoffs: list[float] = []
                backoff.addCallback(backoffs.append)
                await first_of(removing, backoff)
                assert not removing.called, "the removal ended before its repair's placeholder PUT"
                clock.advance(backoffs[0])
                if puts:
                    break
                backoff = clock.waits()
            # The pass that sent it failed: its placeholder PUT went unanswered.
            assert len(puts) == 1
            while True:  # the next pass repairs the tag again, the one after finds the namespace empty
                seen = len(events)
                waiting = clock.waits()
                delays: list[float] = []
                waiting.addCallback(delays.append)
                await first_of(removing, waiting)
                assert not removing.called, (
                    "the removal answered while its first placeholder PUT could still land"
                )
                if any("found empty, but" in event.get("log_format", "") for event in events[seen:]):
                    break
                clock.advance(delays[0])  # a failed pass's backoff (a read failed)
            assert len(puts) == 2 and images.list_tags(registry, repo) == []
            # The first placeholder PUT lands now, within the wait; the wait (for the late write, after
            # the pass that found nothing) ends.
            items, _ = await land_and_wait_out(registry, repo, proxy, hold, clock, delays, removing)
        finally:
            globalLogPublisher.removeObserver(observe)
    assert [item.spec.tag for item in items] == ["v1"]
    assert images.list_tags(registry, repo) == []  # the pass after the wait deleted what the PUT left


@pytest_twisted.ensureDeferred
async def test_a_namespace_removal_whose_wait_for_a_late_write_outlasts_its_budget_is_a_timeout(
    registry, repo
) -> None:
    """As above, with a 1 s budget and a late write that may land for `LANDS` (two timeouts) after its
    pass: the call ends at its budget, the namespace listed empty. It answered 200; it is now a
    504 without Retry-After that says what may still land, and when. The next call, past that time,
    deletes what the write left and answers 200."""
    namespace = repo.partition("/")[0]
    puts, hold, proxy, clock, client, service = placeholder_removal(
        registry, repo, GATEWAY_LATE, shorter_than=0.5, budget=1.0, timeout=TIMEOUT
    )
    backoff = clock.waits()
    removing = Deferred.fromCoroutine(
        service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
    )
    async with released(proxy, client, hold):
        clock.advance(await backoff)  # the first pass failed: its placeholder PUT went unanswered
        with pytest.raises(ApiError) as caught:
            await removing
        assert len(puts) == 2 and images.list_tags(registry, repo) == []
        error = caught.value
        assert (error.code, error.reason, error.retry_after) == (504, "Timeout", None), error.message
        assert error.details is None or error.details.retry_after_seconds is None
        message = " ".join(error.message.split())
        assert f"repairing dangling tag {repo}:v1" in message, message
        assert f"may still carry it out within about {LANDS:g}s" in message, message
        assert "(it would leave the tag in the namespace)" in message, message
        assert "a deletecollection after that deletes whatever the write left" in message, message
        hold.callback(None)  # the first placeholder PUT lands now
        await proxy.settled()
        assert images.list_tags(registry, repo) == ["v1"]
        clock.advance(LANDS)  # past the time it could land
        items, _ = await service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
    assert [item.spec.tag for item in items] == ["v1"]
    assert images.list_tags(registry, repo) == []


def arrival(arrived: Deferred[None], fault: str) -> str:
    """``fault``, once the test has been told (from the next reactor turn) that the request reached
    the proxy."""

    def tell() -> None:
        if not arrived.called:
            arrived.callback(None)

    global_reactor.callLater(0, tell)
    return fault


@pytest.mark.parametrize("how", ["budget", "client gone"])
@pytest_twisted.ensureDeferred
async def test_a_removal_stopped_while_its_repairs_write_is_out_leaves_the_write_known(
    how: str, registry, repo
) -> None:
    """A dangling tag and a second repository; the repair's first placeholder PUT is held, and so is
    the other repository's read. The call is stopped meanwhile: its budget ends (the other read stops
    waiting, and the repair, carried on alone, with it) or its client goes away. The write was noted
    only when its error reached the cascade, which a stopped call never sees: the call answered a
    503, and the next one, once the repair carried on had let the repository go, repaired the tag
    again, listed the namespace empty and answered 200; then the first PUT landed (review-removal2
    finding 1). The registry client notes each write when it is sent: the stopped call answers 504,
    and the next waits until the write can no longer land, deleting what it left."""
    namespace = repo.partition("/")[0]
    other = f"{namespace}/zz-other"
    make_dangling(registry, repo, images.push_oci_image(registry, repo, "v1"))
    images.push_oci_image(registry, other, "w1")
    puts: list[str] = []
    put_out: Deferred[None] = Deferred()
    read_out: Deferred[None] = Deferred()

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and path.endswith(f"/{repo}/manifests/v1"):
            puts.append(path)
            return arrival(put_out, LATE) if len(puts) == 1 else None
        if how == "budget" and method == "HEAD" and path.endswith(f"/{other}/manifests/w1"):
            return arrival(read_out, STALL) if not read_out.called else None
        return None

    hold: Deferred[None] = Deferred()
    proxy = FaultProxy(global_reactor, registry.url, decide, hold=hold)
    clock = WaitClock(shorter_than=5.0)
    client, service = removal_service(proxy.url, clock, budget=10.0, timeout=TIMEOUT, concurrency=2)
    first = Deferred.fromCoroutine(
        service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
    )
    async with released(proxy, client, hold):
        await put_out
        if how == "budget":
            await read_out
            clock.advance(10.0)  # the call's budget ends while the other repository's read waits
            with pytest.raises(ApiError) as caught:
                await first
            error = caught.value
            assert (error.code, error.retry_after) == (504, None), error.message
            assert f"repairing dangling tag {repo}:v1" in error.message, error.message
        else:
            first.cancel()  # the deletecollection's client went away
            with pytest.raises(CancelledError):
                await first
        # The namespace controller calls again.
        second, delays = await removal_until_it_waits(service, namespace, clock)
        # It repaired the tag again and found the namespace empty, and waits for the first PUT.
        assert len(puts) == 2 and images.list_tags(registry, repo) == []
        assert not second.called, "the removal answered while the first placeholder PUT could still land"
        # The first placeholder PUT lands now.
        items, _ = await land_and_wait_out(registry, repo, proxy, hold, clock, delays, second)
    assert "v1" in [item.spec.tag for item in items]
    assert images.list_tags(registry, repo) == []  # the pass after the wait deleted what the PUT left


@pytest_twisted.ensureDeferred
async def test_a_removal_waits_for_a_single_deletes_unanswered_retag(registry, repo) -> None:
    """A single delete's re-tag goes unanswered (its user gets a 504: "the write may still land
    within about 4s"); the namespace's removal right after deleted the tag by digest, listed the
    namespace empty and answered 200, and then the re-tag landed, leaving the tag on the delete's copy
    (review-removal2 finding 2): only a cascade's repairs were noted. The registry client notes every
    write of its own: the removal waits until the re-tag can no longer land, and deletes what it
    left."""
    namespace = repo.partition("/")[0]
    hold, proxy, clock, client, service = retag_removal(registry, repo, shorter_than=50.0, budget=100.0)
    async with released(proxy, client, hold):
        assert (await single_delete_fails(service, repo)).unanswered
        removing, delays = await removal_until_it_waits(service, namespace, clock)
        assert images.list_tags(registry, repo) == []
        assert not removing.called, "the removal answered while the delete's re-tag could still land"
        # The re-tag lands now, within the time its 504 named.
        items, _ = await land_and_wait_out(registry, repo, proxy, hold, clock, delays, removing)
    assert [item.spec.tag for item in items] == ["v1"]
    assert images.list_tags(registry, repo) == []


def digest_delete_held(
    registry: RegistryServer, repo: str, fault: str
) -> tuple[str, list[str], Deferred[None], FaultProxy]:
    """``repo``'s v1 pushed (its digest), and a proxy before the registry giving ``fault`` to the first
    DELETE by digest, held until ``hold`` fires; ``deletes``: the DELETE paths the proxy saw."""
    digest = images.push_oci_image(registry, repo, "v1")
    deletes: list[str] = []
    hold: Deferred[None] = Deferred()
    proxy = FaultProxy(global_reactor, registry.url, first_digest_delete(fault, deletes), hold=hold)
    return digest, deletes, hold, proxy


def first_digest_delete(fault: str, deletes: list[str]) -> Any:
    """The fault for the first DELETE by digest only (a cascade's); everything else passes. The
    DELETEs by digest seen are noted in ``deletes``."""

    def decide(method: str, path: str) -> str | None:
        if method == "DELETE" and "/manifests/sha256:" in path:
            deletes.append(path)
            return fault if len(deletes) == 1 else None
        return None

    return decide


async def until_found_empty(
    work: Deferred[Any], clock: WaitClock, events: list[dict[str, Any]]
) -> list[float]:
    """Sits out ``work``'s backoffs on ``clock`` (a pass failed: its DELETE went unanswered, or a read
    was slow) until the cascade says (its log) that it found the namespace empty and waits for a write
    that may still land: the delay of that wait. ``work`` must not end meanwhile."""
    while True:
        seen = len(events)
        waiting = clock.waits()
        delays: list[float] = []
        waiting.addCallback(delays.append)
        await first_of(work, waiting)
        assert not work.called, "the removal was done while its own DELETE by digest could still land"
        if any("found empty, but" in event.get("log_format", "") for event in events[seen:]):
            return delays
        clock.advance(delays[0])


@asynccontextmanager
async def logged() -> AsyncIterator[list[dict[str, Any]]]:
    """The log events while the body runs."""
    events: list[dict[str, Any]] = []
    observe = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


# DROPPED_LATE: the DELETE's kept connection closes without an answer. Twisted's connection pool sent
# such a DELETE once more by itself, whose answer hid that the first was out (review latedelete).
@pytest.mark.parametrize("fault", [GATEWAY_LATE, LATE, DROPPED_LATE])
@pytest_twisted.ensureDeferred
async def test_a_namespace_removal_is_not_done_while_its_own_digest_delete_may_still_land(
    fault: str, registry, repo
) -> None:
    """The removal's DELETE of v1's digest goes unanswered (a gateway's 504, a timeout) and is held;
    the pass fails, the next deletes the digest again (answered) and the one after lists the
    namespace empty. The removal answered 200 there, in the same call, and the held DELETE landed
    later: in the namespace created anew meanwhile, with the same image pushed again, it removed the
    new push (review r1replica F1: only manifest PUTs were noted as writes that may land). The
    registry client notes a cascade's DELETE by digest as it does a PUT: the removal waits until the
    DELETE can no longer land (two registry timeouts, on the test's clock) before its 200, and a push
    after that 200 stays."""
    namespace = repo.partition("/")[0]
    digest, deletes, hold, proxy = digest_delete_held(registry, repo, fault)
    clock = WaitClock(shorter_than=50.0)
    client, service = removal_service(proxy.url, clock, budget=100.0, timeout=TIMEOUT)
    async with logged() as events, released(proxy, client, hold):
        removing = Deferred.fromCoroutine(
            service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
        )
        delays = await until_found_empty(removing, clock, events)
        assert deletes == [f"/v2/{repo}/manifests/{digest}"] * 2 and images.list_tags(registry, repo) == []
        waits = [event for event in events if "found empty, but" in event.get("log_format", "")]
        assert f"deleting manifest {repo}@{digest}" in waits[-1]["what"]
        # The held DELETE lands now, within the wait; then the wait ends, and the call answers.
        hold.callback(None)
        await proxy.settled()
        [delay] = delays
        clock.advance(delay)
        items, _ = await removing
        # The namespace is created anew and the same image pushed again: nothing of the removal lands.
        assert images.push_oci_image(registry, repo, "v1") == digest
    assert [item.spec.tag for item in items] == ["v1"]
    assert images.list_tags(registry, repo) == ["v1"]


@pytest.mark.parametrize("fault", [GATEWAY_LATE, LATE, DROPPED_LATE])
@pytest_twisted.ensureDeferred
async def test_the_leaders_cascade_is_not_done_while_its_own_digest_delete_may_still_land(
    fault: str, registry, repo
) -> None:
    """As above for the leader's cascade (no budget): it reported the namespace cleaned while its
    DELETE by digest was held, and the namespace controller's deletecollection on the same process
    then answered 200 at once (review r1replica F1, its "cascade" form). It now waits until the
    DELETE can no longer land before it ends."""
    namespace = repo.partition("/")[0]
    digest, deletes, hold, proxy = digest_delete_held(registry, repo, fault)
    clock = WaitClock(shorter_than=50.0)
    client = RegistryClient(
        global_reactor,
        RegistrySettings(url=proxy.url, timeout=TIMEOUT),
        late_writes=LateWrites(clock),
        landing_clock=SkipAhead(),
    )
    cascade = Cascade(
        wired(client),
        clock,
        concurrency=1,
        backoff=lambda: Backoff(initial=0.2, factor=2.0, cap=2.0),
        late_write_grace=LANDS,
        late_writes=client.late_writes,
    )
    async with logged() as events, released(proxy, client, hold):
        cleaning = Deferred.fromCoroutine(cascade.run(namespace))
        delays = await until_found_empty(cleaning, clock, events)
        assert deletes == [f"/v2/{repo}/manifests/{digest}"] * 2 and images.list_tags(registry, repo) == []
        hold.callback(None)
        await proxy.settled()
        [delay] = delays
        clock.advance(delay)
        result = await cleaning
        assert images.push_oci_image(registry, repo, "v1") == digest
    assert isinstance(result, CascadeResult) and result.errors >= 1
    assert images.list_tags(registry, repo) == ["v1"]


@pytest_twisted.ensureDeferred
async def test_a_removal_whose_wait_for_its_own_digest_delete_outlasts_its_budget_says_what_it_removes(
    registry, repo
) -> None:
    """The removal's first DELETE by digest goes unanswered (a gateway's 504) and is held; the budget
    (3 s) ends before the DELETE's grace: a 504 naming the DELETE and what it would do landing then,
    remove that manifest and its tags. It said the DELETE "would leave the tag in the namespace" and that
    a deletecollection after it "deletes whatever the write left": a PUT's landing (review r2latedelete
    L1)."""
    namespace = repo.partition("/")[0]
    digest, _, hold, proxy = digest_delete_held(registry, repo, GATEWAY_LATE)
    clock = WaitClock(shorter_than=2.1)
    client, service = removal_service(proxy.url, clock, budget=3.0, timeout=TIMEOUT)
    async with released(proxy, client, hold):
        removing = Deferred.fromCoroutine(
            service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
        )
        while not removing.called:  # sits out the backoffs up to the budget
            waiting = clock.waits()
            delays: list[float] = []
            waiting.addCallback(delays.append)
            await first_of(removing, waiting)
            if not removing.called:
                clock.advance(delays[0])
        with pytest.raises(ApiError) as caught:
            await removing
    error = caught.value
    assert (error.code, error.retry_after) == (504, None), error.message
    message = " ".join(error.message.split())
    assert f"a write made while deleting manifest {repo}@{digest}" in message, message
    assert "(it would remove that manifest and every tag on it, one pushed again meanwhile too)" in message
    assert "leave the tag" not in message and "whatever the write left" not in message, message


@pytest_twisted.ensureDeferred
async def test_a_digest_delete_is_noted_in_its_repository(registry, repo) -> None:
    """A DELETE by digest that goes unanswered is noted in its own repository: a look scoped to
    another repository of the namespace neither waits for it nor names it (review r2latedelete L2:
    noted under the namespace alone, every test passed)."""
    namespace = repo.partition("/")[0]
    digest, _, hold, proxy = digest_delete_held(registry, repo, GATEWAY_LATE)
    late = LateWrites(Clock())
    client = RegistryClient(
        global_reactor,
        RegistrySettings(url=proxy.url, timeout=TIMEOUT),
        late_writes=late,
        landing_clock=SkipAhead(),
    )
    async with released(proxy, client, hold):
        with pytest.raises(RegistryError) as caught:
            await client.delete_manifest(repo, digest)
        assert caught.value.unanswered
        assert late.pending(namespace) == (f"deleting manifest {repo}@{digest}", LANDS)
        assert late.pending(namespace, Scope(f"{namespace}/other".__eq__)) is None
        assert late.pending(namespace, Scope(repo.__eq__)) is not None
        assert late.repositories(namespace) == {repo}


@pytest_twisted.ensureDeferred
async def test_a_cancelled_digest_delete_is_noted(registry, repo) -> None:
    """A DELETE by digest cancelled once sent (a leader's cascade cancelled as it loses its Lease, a
    cut call) may reach the registry all the same: it is noted as unanswered, not forgotten as if
    answered (review r2latedelete L2)."""
    namespace = repo.partition("/")[0]
    digest, deletes, hold, proxy = digest_delete_held(registry, repo, STALL)
    late = LateWrites(Clock())
    client = RegistryClient(
        global_reactor,
        RegistrySettings(url=proxy.url, timeout=30.0),
        late_writes=late,
        landing_clock=SkipAhead(),
    )
    async with released(proxy, client, hold):
        deleting = Deferred.fromCoroutine(client.delete_manifest(repo, digest))
        while not deletes:  # until the DELETE has reached the proxy
            await deferLater(global_reactor, 0.05)
        deleting.cancel()
        with pytest.raises(CancelledError):
            await deleting
        assert late.pending(namespace) == (f"deleting manifest {repo}@{digest}", 60.0)
