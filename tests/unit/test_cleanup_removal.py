"""NamespaceRemover: deletecollection's digest deletes of a namespace that is being deleted."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock, deferLater

from payloadtags.cleanup.removal import NamespaceRemover
from payloadtags.cleanup.sweep import ABSENT, EXISTS, TERMINATING, UNKNOWN
from payloadtags.kube import Backoff
from payloadtags.registry.errors import (
    RegistryAuthFailed,
    RegistryDeleteDisabled,
    RegistryError,
    RegistryProtocolError,
    RegistryReadOnly,
    RegistryTimeout,
    RegistryUnavailable,
)
from tests.unit.test_cleanup_cascade import (
    FakeRegistry,
    ListingRegistry,
    SlowRegistry,
    fill,
    fill_large,
    make_cascade,
)


def make(
    states: dict[str, str], running: Deferred[None] | None = None
) -> tuple[NamespaceRemover, FakeRegistry, Clock]:
    clock = Clock()
    registry = FakeRegistry()
    fill(registry)

    async def check(namespace: str) -> tuple[str, str | None]:
        return states.get(namespace, ABSENT), None

    remover = NamespaceRemover(make_cascade(registry, clock), clock, check)
    if running is not None:
        remover.running = lambda namespace: running if namespace == "team" else None
    return remover, registry, clock


def outcome(coroutine: Any) -> list[Any]:
    seen: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(seen.append)
    return seen


def test_only_a_namespace_the_cluster_api_calls_terminating_or_gone_is_removed_by_digest() -> None:
    remover, _, _ = make({"t": TERMINATING, "a": ABSENT, "e": EXISTS, "u": UNKNOWN})
    assert [outcome(remover.deleting(ns))[0] for ns in ("t", "a", "e", "u")] == [True, True, False, False]


def test_waits_for_the_leaders_cascade_instead_of_duplicating_it() -> None:
    leader: Deferred[None] = Deferred()
    seen_by_leader: list[Any] = []
    remover, registry, _clock = make({}, running=leader)
    done = outcome(remover.remove("team", 10.0))
    assert not done and registry.remaining("team/")  # waiting, not deleting
    leader.addBoth(seen_by_leader.append)  # the controller's own callbacks come after ours
    leader.callback(None)
    assert done == [None] and registry.remaining("team/") == {}
    assert seen_by_leader == [None]  # the leader's task sees its own result, untouched


def test_tells_each_repository_as_each_of_its_deletes_ends_not_at_the_removal_s_end() -> None:
    """Review r2moved F1: the watch hub heard of a removal's deletes only once the whole call ended
    (up to its budget later), and a list made meanwhile shared the record of one made before."""
    remover, registry, _clock = make({})
    told: list[tuple[str, list[str]]] = []  # each repository told, with its tags left then
    done = outcome(
        remover.remove(
            "team",
            10.0,
            changed=lambda repository: told.append(
                (repository, registry.remaining(repository).get(repository, []))
            ),
        )
    )
    assert done == [None] and registry.remaining("team/") == {}
    # team/app: two digests (v1 and latest share one), each told as its delete ended, the first
    # while the other's tags were still there.
    app = [left for repository, left in told if repository == "team/app"]
    assert len(app) == 2 and app[0] in (["latest", "v1"], ["v2"]) and app[1] == []
    assert [repository for repository, _ in told if repository != "team/app"] == ["team/deep/nested/repo"]


def test_tells_nothing_of_a_delete_that_sent_nothing() -> None:
    # Stopped before its write left (the namespace exists again): nothing changed, no watch is told.
    remover, registry, clock = make({"team": EXISTS})
    told: list[str] = []
    done = outcome(remover.remove("team", 5.0, changed=told.append))
    for _ in range(10):
        clock.advance(1.0)
    assert len(done) == 1 and done[0].check(RegistryError)
    assert told == [] and registry.deletes == []


def test_a_stuck_leader_cascade_is_not_waited_for_beyond_the_budget_nor_cancelled() -> None:
    leader: Deferred[None] = Deferred()
    remover, registry, clock = make({}, running=leader)
    registry.fail("delete", RegistryUnavailable("down"), times=1000)
    done = outcome(remover.remove("team", 5.0))
    clock.advance(5.0)
    for _ in range(20):
        clock.advance(1.0)
    assert len(done) == 1 and done[0].check(RegistryUnavailable)
    assert "not finished within 5s" in str(done[0].value)
    assert not leader.called  # never cancelled by a deletecollection that gave up waiting


def test_a_call_that_waited_its_budget_for_a_cascade_with_a_late_write_is_a_timeout() -> None:
    # The leader's cascade waits for a repair's write that went unanswered (shared with the process's
    # removals: `LateWrites`). A call that spent its budget waiting for it answered a 503, and then a
    # listing that found the namespace empty made that a 200 before the write could land: it is a 504
    # (RegistryTimeout, unanswered) that says what may land and when.
    leader: Deferred[None] = Deferred()
    remover, _registry, clock = make({}, running=leader)
    remover.cascade.late_writes.note("team", "repairing dangling tag team/app:v1", 20.0)
    done = outcome(remover.remove("team", 5.0))
    clock.advance(5.0)
    [failure] = done
    assert failure.check(RegistryTimeout) and failure.value.unanswered
    message = str(failure.value)
    assert "not finished within 5s" in message
    assert "repairing dangling tag team/app:v1, and may still carry it out within about 15s" in message
    clock.advance(15.0)  # past the time it could land: an ordinary 503 again
    again = outcome(remover.remove("team", 5.0))
    clock.advance(5.0)
    [failure] = again
    assert failure.check(RegistryUnavailable) and not failure.value.unanswered


def test_a_namespace_created_anew_meanwhile_stops_the_removal() -> None:
    """Once an earlier call emptied it, the namespace may be created again while this call runs:
    what its new owner pushes is not this call's to remove."""
    states = {"team": ABSENT}
    remover, registry, clock = make(states)
    first, *rest = sorted(registry.remaining("team/"))
    read = registry.tags

    async def tags(repository: str) -> tuple[str, ...]:
        found = await read(repository)
        if repository == first and states["team"] == ABSENT:
            states["team"] = EXISTS
            for other in rest:
                registry.push(other, "new", "the new namespace's content")
        return found

    registry.tags = tags  # type: ignore[method-assign]
    done = outcome(remover.remove("team", 40.0))
    for _ in range(10):
        clock.advance(1.0)
    assert len(done) == 1 and done[0].check(RegistryUnavailable)
    assert "the cluster API says the namespace exists" in str(done[0].value)
    left = registry.remaining("team/")
    assert rest and all("new" in left.get(other, ()) for other in rest)


def test_a_cluster_api_that_cannot_tell_holds_the_removal_within_its_budget() -> None:
    states = {"team": ABSENT}
    remover, registry, clock = make(states)
    before = registry.remaining("team/")
    states["team"] = UNKNOWN
    done = outcome(remover.remove("team", 5.0))
    for _ in range(20):
        clock.advance(1.0)
    assert len(done) == 1 and done[0].check(RegistryUnavailable)
    assert registry.remaining("team/") == before  # nothing deleted while the namespace's fate is unknown


@pytest.mark.parametrize(
    ("repositories", "tags", "calls"),
    [
        # 12,000 requests of 10 ms, four at a time: 30 s of work, four calls of 10 s.
        (100, 60, 4),
        # One repository's deletes go one after the other (docs/consistency.md): 1.25 s per chunk of
        # 100 tags (resolved four at a time, then deleted one by one), 800 tags per call.
        (1, 6000, 8),
    ],
)
def test_every_call_on_a_large_namespace_deletes_and_ends_at_its_budget(
    repositories: int, tags: int, calls: int
) -> None:
    """The namespace controller's deletecollection is the only path when no replica can lead: each
    call must get somewhere within its budget, so that its retries empty the namespace. A call used to
    resolve every tag of a catalog batch (100 repositories) before its first delete, run out of its
    budget with nothing deleted, and overrun it by the resolves already queued."""
    latency, budget = 0.010, 10.0
    clock = Clock()
    registry = SlowRegistry(clock, latency)
    fill_large(registry, repositories, tags)  # resolving them all takes 15 s, four at a time

    async def check(namespace: str) -> tuple[str, str | None]:
        return ABSENT, None

    # namespace_remover's settings, on the test's clock.
    cascade = make_cascade(registry, clock, backoff=lambda: Backoff(initial=0.2, factor=2.0, cap=2.0))
    remover = NamespaceRemover(cascade, clock, check)
    left = [sum(map(len, registry.remaining("team/").values()))]
    for _call in range(20):
        started = clock.seconds()
        done = outcome(remover.remove("team", budget))
        while not done:
            clock.advance(latency)
        left.append(sum(map(len, registry.remaining("team/").values())))
        assert left[-1] < left[-2]  # progress, every call
        # It stops once the request under way when its budget ran out is answered.
        assert clock.seconds() - started <= budget + latency + 1e-6
        if done == [None]:
            break
        assert done[0].check(RegistryUnavailable) and "not finished within 10s" in str(done[0].value)
    assert done == [None] and left[-1] == 0
    assert registry.remaining("team-a/") == {"team-a/keep": ["x"]}
    assert len(left) - 1 == calls


def test_every_call_on_a_repository_whose_first_chunk_outlasts_the_budget_makes_progress() -> None:
    """A repository's first delete waits for its first chunk of 100 resolves. With 2 s per request,
    four at a time, those take 50 s: a call of 40 s was stopped before deleting anything, kept nothing
    of what it resolved, and the next resolved the same tags again, so calls alone never emptied the
    repository (r1cleanup N1). What a call resolved goes with the walk, and the next one deletes it."""
    latency, budget = 2.0, 40.0
    clock = Clock()
    registry = SlowRegistry(clock, latency)
    fill_large(registry, repositories=1, tags=100)

    async def check(namespace: str) -> tuple[str, str | None]:
        return ABSENT, None

    cascade = make_cascade(registry, clock, backoff=lambda: Backoff(initial=0.2, factor=2.0, cap=2.0))
    remover = NamespaceRemover(cascade, clock, check)
    left = [100]
    for _call in range(12):
        done = outcome(remover.remove("team", budget))
        while not done:
            clock.advance(0.5)
        left.append(sum(map(len, registry.remaining("team/").values())))
        if done == [None]:
            break
        assert done[0].check(RegistryUnavailable) and "not finished within 40s" in str(done[0].value)
        # The first call only resolves; every later one deletes (one after the other: 2 s each).
        assert left[-1] < left[-2] or (len(left) == 2 and left[-1] == 100)
    # About 19 deletes a call once the first has resolved 72 tags: seven calls.
    assert done == [None] and left[-1] == 0 and len(left) - 1 == 7, left
    assert registry.remaining("team-a/") == {"team-a/keep": ["x"]}


def test_every_call_on_a_namespace_of_many_repositories_goes_on_where_the_last_one_stopped() -> None:
    """distribution keeps an emptied repository in its catalog. Each call used to begin at the
    namespace's first repository and list again every one the earlier calls had emptied: with 6,000
    repositories of one tag, 10 ms per request and a 10 s budget, the calls deleted 1,328, 884, 588,
    … tags, and none from the 18th on, 2,031 tags left for good."""
    latency, budget = 0.010, 10.0
    clock = Clock()
    registry = SlowRegistry(clock, latency)
    fill_large(registry, repositories=6000, tags=1)

    async def check(namespace: str) -> tuple[str, str | None]:
        return ABSENT, None

    cascade = make_cascade(registry, clock, backoff=lambda: Backoff(initial=0.2, factor=2.0, cap=2.0))
    remover = NamespaceRemover(cascade, clock, check)
    left = [6000]
    for _call in range(10):
        done = outcome(remover.remove("team", budget))
        while not done:
            clock.advance(latency)
        left.append(sum(map(len, registry.remaining("team/").values())))
        if done == [None]:
            break
        assert done[0].check(RegistryUnavailable)
        # 4,000 requests a call, three per repository (list, resolve, delete): 1,333 at most.
        assert left[-1] == 0 or left[-2] - left[-1] >= 1300
    # 18,000 requests to delete and 6,000 to verify, 4,000 a call, and catalog pages: seven calls.
    assert done == [None] and left[-1] == 0 and len(left) - 1 == 7
    assert registry.remaining("team-a/") == {"team-a/keep": ["x"]}
    assert not remover._walks  # forgotten once done


def test_a_namespace_created_anew_is_walked_from_its_first_repository_and_done_is_forgotten() -> None:
    registry, clock = ListingRegistry(), Clock()
    for r in range(6):
        registry.push(f"team/app{r}", "v1")
    uids = {"team": "uid-1"}

    async def check(namespace: str) -> tuple[str, str | None]:
        return TERMINATING, None

    async def identify(namespace: str) -> str | None:
        return uids.get(namespace)

    remover = NamespaceRemover(make_cascade(registry, clock, concurrency=1), clock, check, identify=identify)
    # Every repository's list takes 1 s: a call of 2.5 s lists and deletes two, and the third list,
    # still under way when the budget ends, is cut off then.
    read = registry.tags

    async def slow(repository: str) -> tuple[str, ...]:
        await deferLater(clock, 1.0)
        return await read(repository)

    registry.tags = slow  # type: ignore[method-assign]
    done = outcome(remover.remove("team", 2.5))
    clock.pump([0.5] * 6)
    assert done[0].check(RegistryUnavailable)
    assert registry.listed == ["team/app0", "team/app1"]
    assert remover._walks["team"].after == "team/app1"
    registry.listed.clear()
    done = outcome(remover.remove("team", 2.5))  # the same namespace: goes on after app1
    clock.pump([0.5] * 6)
    assert registry.listed[0] == "team/app2"
    registry.listed.clear()
    uids["team"] = "uid-2"  # finalized, created anew, deleted again
    registry.tags = read  # type: ignore[method-assign]
    done = outcome(remover.remove("team", 40.0))
    assert done == [None] and registry.remaining("team/") == {}
    assert registry.listed[0] == "team/app0"
    assert not remover._walks


def test_the_walks_kept_are_bounded() -> None:
    registry, clock = FakeRegistry(), Clock()
    for ns in ("a", "b", "c"):
        registry.push(f"{ns}/app", "v1")

    async def check(namespace: str) -> tuple[str, str | None]:
        return ABSENT, None

    registry.fail("catalog", RegistryUnavailable("down"), times=100)
    remover = NamespaceRemover(make_cascade(registry, clock), clock, check, walks_kept=2)
    for ns in ("a", "b", "c"):
        done = outcome(remover.remove(ns, 0.5))
        clock.pump([0.5])
        assert done[0].check(RegistryUnavailable)
    assert list(remover._walks) == ["b", "c"]


def test_the_digests_the_walks_keep_are_bounded_in_all_the_most_recently_stopped_first() -> None:
    """A walk whose call stopped in chunks of resolves keeps what they resolved (`_Pass.resolved`):
    here 4 repositories x 100 tags, resolved four at a time at 0.39 s each, nearly all resolved and
    none deleted when the 40 s call ends. A namespace then emptied by the other replica calls here no
    more, and its walk stayed until 1000 newer pushed it out: 1000 x 400 digests, about 115 MiB
    (review r2fix L1). The walks keep `digests_kept` (10,000) in all, the latest walks' first: the
    namespace still being called keeps its progress, the stale ones keep none (their next call, if
    one comes, resolves again)."""
    clock = Clock()
    registry = SlowRegistry(clock, 0.39)
    namespaces = [f"ns{n:02d}" for n in range(30)]
    for namespace in namespaces:
        for r in range(4):
            for t in range(120):
                registry.push(f"{namespace}/app{r}", f"v{t:03d}")

    async def check(namespace: str) -> tuple[str, str | None]:
        return ABSENT, None

    cascade = make_cascade(registry, clock, backoff=lambda: Backoff(initial=0.2, factor=2.0, cap=2.0))
    remover = NamespaceRemover(cascade, clock, check)
    for namespace in namespaces:
        done = outcome(remover.remove(namespace, 40.0))
        while not done:
            clock.advance(0.13)
        assert done[0].check(RegistryUnavailable)
    kept = [
        sum(map(len, walk.state.resolved.values())) if walk.state is not None else 0
        for walk in remover._walks.values()
    ]
    assert sum(kept) <= 10_000, kept  # `digests_kept`
    # The least recently stopped keep none; the 25 most recent (about 390 each) keep theirs.
    assert kept[:5] == [0] * 5 and min(kept[5:]) > 300, kept


@pytest.mark.parametrize(("fault", "budget", "ends_by"), [("cluster API", 1.0, 1.0), ("registry", 5.0, 5.0)])
def test_a_removal_that_cannot_delete_ends_within_its_budget(
    fault: str, budget: float, ends_by: float
) -> None:
    """Nor does it begin a wait that would end past its budget: a confirmation asked again after a
    backoff, or a failed pass's backoff. The confirmation's used to be begun, and sat out up to 2 s
    past the budget, with one more cluster API GET after it."""
    states = {"team": ABSENT}
    remover, registry, clock = make(states)
    if fault == "cluster API":
        states["team"] = UNKNOWN
    else:
        # Denied, not failed: a pass failed only with 5xx stops at once (`Stalled`), where a
        # refusal of access passes again until the budget ends.
        registry.fail("delete", RegistryAuthFailed("denied", denied=True), times=1000)
    done = outcome(remover.remove("team", budget))
    while not done:
        clock.advance(0.5)
    assert done[0].check(RegistryError) and f"not finished within {budget:g}s" in str(done[0].value)
    assert clock.seconds() <= ends_by


def slow_listing(clock: Clock) -> ListingRegistry:
    """Four repositories of one tag; every tag list takes 1 s on the clock."""
    registry = ListingRegistry()
    for r in range(4):
        registry.push(f"team/app{r}", "v1")
    read = registry.tags

    async def slow(repository: str) -> tuple[str, ...]:
        await deferLater(clock, 1.0)
        return await read(repository)

    registry.tags = slow  # type: ignore[method-assign]
    return registry


def test_a_call_that_arrives_while_the_first_asks_the_namespaces_uid_waits_for_it() -> None:
    """The wait for work under way on the namespace was decided before the call asked the cluster
    API for the namespace's uid, and the call was known to be under way only after: a second call
    arriving meanwhile walked the whole namespace alongside the first, and whichever ended last kept
    its walk for the next call."""
    clock = Clock()
    registry = slow_listing(clock)
    asked: list[Deferred[str | None]] = []

    async def check(namespace: str) -> tuple[str, str | None]:
        return TERMINATING, None

    def identify(namespace: str) -> Deferred[str | None]:
        asked.append(Deferred())
        return asked[-1]

    remover = NamespaceRemover(make_cascade(registry, clock, concurrency=1), clock, check, identify=identify)
    first = outcome(remover.remove("team", 40.0))
    second = outcome(remover.remove("team", 40.0))  # while the first waits for the cluster API
    assert len(asked) == 1  # the second waits for the first instead
    asked[0].callback("uid-1")
    clock.pump([0.5] * 20)
    assert first == [None] and registry.remaining("team/") == {}
    assert len(asked) == 2
    asked[1].callback("uid-1")
    clock.pump([0.5] * 20)
    assert second == [None]
    # The first call's two passes (delete, verify), then the second's verifying one: never both at once.
    assert registry.listed == [f"team/app{r}" for r in range(4)] * 3


def test_the_namespaces_uid_is_not_asked_past_the_budget_nor_waited_for_beyond_it() -> None:
    """A call that waited its whole budget for the leader's cascade then asked the cluster API for
    the namespace's uid anyway, and ended only when it was answered (a cluster API slow to answer
    kept it up to the client's 30 s timeout past its budget)."""
    clock = Clock()
    registry = FakeRegistry()
    fill(registry)
    asked: list[float] = []

    async def check(namespace: str) -> tuple[str, str | None]:
        return TERMINATING, None

    async def identify(namespace: str) -> str | None:
        asked.append(clock.seconds())
        await deferLater(clock, 5.0)  # a slow cluster API
        return "uid-1"

    leader: Deferred[None] = Deferred()
    remover = NamespaceRemover(make_cascade(registry, clock), clock, check, identify=identify)
    remover.running = lambda namespace: leader
    done = outcome(remover.remove("team", 10.0))
    while not done:
        clock.advance(0.5)
    assert done[0].check(RegistryUnavailable) and "not finished within 10s" in str(done[0].value)
    assert asked == [] and clock.seconds() == 10.0
    # The leader's cascade ends at 9 s: the GET is sent, and the call ends at its budget all the same.
    started = clock.seconds()
    leader2: Deferred[None] = Deferred()
    remover.running = lambda namespace: leader2
    done = outcome(remover.remove("team", 10.0))
    clock.advance(9.0)
    leader2.callback(None)
    while not done:
        clock.advance(0.5)
    assert done[0].check(RegistryUnavailable) and "not finished within 10s" in str(done[0].value)
    assert asked == [started + 9.0] and clock.seconds() == started + 10.0
    assert registry.remaining("team/")  # nothing deleted: the call never knew which namespace it had


def test_a_deletes_confirmation_is_not_asked_past_the_budget() -> None:
    """A delete that got its registry slot after the budget ran out still asked the cluster API, and
    the call ended only when that GET was answered."""
    clock = Clock()
    registry = SlowRegistry(clock, 1.0)  # 1 s per registry request
    registry.push("team/app", "t0")
    asked: list[float] = []

    async def check(namespace: str) -> tuple[str, str | None]:
        asked.append(clock.seconds())
        await deferLater(clock, 5.0)  # a slow cluster API
        return TERMINATING, None

    remover = NamespaceRemover(make_cascade(registry, clock, concurrency=1), clock, check)
    # The catalog page is answered at 1 s, the tag list at 2 s; the resolve, under way at the budget
    # (it would be answered at 3 s), is cut off then.
    done = outcome(remover.remove("team", 2.5))
    while not done:
        clock.advance(0.5)
    assert done[0].check(RegistryUnavailable) and "not finished within 2.5s" in str(done[0].value)
    assert asked == [] and clock.seconds() == 2.5
    assert registry.remaining("team/") == {"team/app": ["t0"]}


def test_a_call_whose_client_went_away_while_it_waited_for_other_work_runs_no_cascade() -> None:
    """The wait for the leader's cascade took the request's cancellation (its client gone) for the
    end of its own wait, and the call went on to a whole cascade nobody waited for."""
    leader: Deferred[None] = Deferred()
    remover, registry, clock = make({}, running=leader)
    before = registry.remaining("team/")
    work = Deferred.fromCoroutine(remover.remove("team", 40.0))
    seen: list[Any] = []
    work.addBoth(seen.append)
    work.cancel()  # as app.py does when the client goes away
    assert len(seen) == 1 and seen[0].check(CancelledError)
    leader.callback(None)
    clock.pump([0.5] * 10)
    assert registry.remaining("team/") == before and registry.deletes == []
    assert "team" not in remover._inflight


class TakingTurns(ListingRegistry):
    """Every tag list takes 1 s on the clock; notes the most that were in flight at once."""

    def __init__(self, clock: Clock, repositories: int) -> None:
        super().__init__()
        self.clock = clock
        self.in_flight = self.most_at_once = 0
        for r in range(repositories):
            self.push(f"team/app{r:03d}", "v1")

    async def tags(self, repository: str) -> tuple[str, ...]:
        self.in_flight += 1
        self.most_at_once = max(self.most_at_once, self.in_flight)
        try:
            await deferLater(self.clock, 1.0)
            return await super().tags(repository)
        finally:
            self.in_flight -= 1


def taking_turns(repositories: int = 6) -> tuple[NamespaceRemover, TakingTurns, Clock]:
    clock = Clock()
    registry = TakingTurns(clock, repositories)

    async def check(namespace: str) -> tuple[str, str | None]:
        return TERMINATING, None

    # One registry request at a time per call: two tag lists in flight are two calls walking at once.
    return NamespaceRemover(make_cascade(registry, clock, concurrency=1), clock, check), registry, clock


@pytest.mark.parametrize("awaited", ["another call", "the leader's cascade"])
def test_calls_that_wait_for_the_same_work_take_turns_when_it_ends(awaited: str) -> None:
    """The work under way was looked for once, when a call arrived: two calls that waited for the
    same work (another call, the leader's cascade) both walked the namespace when it ended, each
    listing every repository alongside the other, and the one that registered second took the
    first's place as the work under way (review-cascade4 G1)."""
    remover, registry, clock = taking_turns()
    leader: Deferred[None] = Deferred()
    remover.running = lambda namespace: leader if awaited == "the leader's cascade" else None
    first = outcome(remover.remove("team", 40.0)) if awaited == "another call" else None
    clock.advance(0.5)
    second = outcome(remover.remove("team", 40.0))
    third = outcome(remover.remove("team", 40.0))
    if first is not None:
        while not first:
            clock.advance(0.5)
        assert first == [None] and registry.remaining("team/") == {}
    else:
        assert registry.listed == []  # both wait for the leader
        for tags in registry.repos.values():  # which empties the namespace
            tags.clear()
        leader.callback(None)
    assert registry.most_at_once == 1
    registry.listed.clear()
    while not (second and third):
        assert registry.in_flight <= 1, registry.listed
        clock.advance(0.5)
    assert second == third == [None]
    # The second's round, then the third's, each verifying: never both at once.
    assert registry.listed == [f"team/app{r:03d}" for r in range(6)] * 2
    assert registry.most_at_once == 1 and remover._inflight == {}


def test_the_walk_kept_is_the_furthest_when_calls_waited_for_the_same_one() -> None:
    """Of two calls that waited for a call that stopped at its budget, one carried its walk on and
    the other, finding none left, began a fresh one from the first repository at the same time; the
    one that ended last kept its walk for the next call, behind the other's (review-cascade4 G1)."""
    remover, registry, clock = taking_turns(repositories=100)
    first = outcome(remover.remove("team", 10.0))
    clock.advance(1.0)
    second = outcome(remover.remove("team", 40.0))
    clock.advance(1.0)
    third = outcome(remover.remove("team", 40.0))
    while not (first and second and third):
        clock.advance(0.5)
    assert all(done[0].check(RegistryUnavailable) for done in (first, second, third))
    # Each call went on where the one before stopped (the second from 10 s to 41 s, the third, which
    # waited for it, to 42 s), redoing only the repository whose list its budget cut short (the last
    # one each listed): one walk forward, one tag list a second.
    listed = registry.listed
    forward = [name for i, name in enumerate(listed) if i == 0 or name != listed[i - 1]]
    assert forward == [f"team/app{r:03d}" for r in range(40)] and len(listed) == 42
    assert remover._walks["team"].after == "team/app038"  # the next call goes on after the furthest
    assert registry.most_at_once == 1 and remover._inflight == {}


def test_a_call_that_waited_its_whole_budget_leaves_the_work_under_way_known() -> None:
    """A call whose wait ran out registered itself as the namespace's work under way anyway, over
    the call it had waited for, and took the entry away when it ended at once: a call arriving next
    found nothing under way and walked alongside the first (review-cascade4 G1)."""
    remover, registry, clock = taking_turns()
    first = outcome(remover.remove("team", 40.0))
    clock.advance(0.5)
    second = outcome(remover.remove("team", 2.0))
    clock.advance(2.0)
    assert len(second) == 1 and second[0].check(RegistryUnavailable)
    assert "not finished within 2s" in str(second[0].value)
    third = outcome(remover.remove("team", 40.0))
    while not (first and third):
        assert registry.in_flight <= 1, registry.listed
        clock.advance(0.5)
    assert first == third == [None] and registry.most_at_once == 1 and remover._inflight == {}


def test_a_waiting_call_whose_client_went_away_leaves_the_queue() -> None:
    """Cancelled while it waits for another call, a call ends there; the calls behind it still take
    their turn, one at a time, and nothing is left registered."""
    remover, registry, clock = taking_turns()
    first = outcome(remover.remove("team", 40.0))
    clock.advance(0.5)
    gone = Deferred.fromCoroutine(remover.remove("team", 40.0))
    seen: list[Any] = []
    gone.addBoth(seen.append)
    third = outcome(remover.remove("team", 40.0))
    gone.cancel()
    assert len(seen) == 1 and seen[0].check(CancelledError)
    while not (first and third):
        assert registry.in_flight <= 1, registry.listed
        clock.advance(0.5)
    assert first == third == [None] and remover._inflight == {}
    # The first call's two passes, then the third's verifying one.
    assert registry.listed == [f"team/app{r:03d}" for r in range(6)] * 3


def test_a_call_waits_for_a_cascade_the_leader_began_while_it_waited_for_another_call() -> None:
    remover, registry, clock = taking_turns()
    first = outcome(remover.remove("team", 40.0))
    clock.advance(0.5)
    second = outcome(remover.remove("team", 40.0))
    leader: Deferred[None] = Deferred()
    remover.running = lambda namespace: leader  # the leader begins one meanwhile
    while not first:
        clock.advance(0.5)
    assert first == [None]
    listed = len(registry.listed)
    clock.advance(5.0)
    assert not second and len(registry.listed) == listed  # waiting for the leader's
    leader.callback(None)
    while not second:
        clock.advance(0.5)
    assert second == [None] and remover._inflight == {}


def test_a_call_does_not_wait_for_a_leader_cascade_queued_for_a_worker() -> None:
    """The leader's cascade of `team` waits for one of its workers, busy with other namespaces: it
    cleans nothing meanwhile. A deletecollection must not wait for it (each call waited out its 40 s
    and answered 503 with nothing read, and so did every retry); once the cascade holds a worker,
    calls wait for it again."""
    from payloadtags.cleanup.controller import CleanupController, CleanupOptions

    clock = Clock()
    registry = ListingRegistry()
    for r in range(5):
        registry.push(f"team/app{r}", "v1")
    options = CleanupOptions(leader_elect=False, namespace_concurrency=1)
    controller = CleanupController(clock, kube=None, registry=registry, options=options)  # type: ignore[arg-type]
    controller._leading = True
    busy = controller._slots.acquire()  # the one worker, held by another namespace's cascade
    assert busy.called
    controller._trigger("team", "deleted", None)
    assert controller.busy and controller.cleaning("team") is None  # queued: cleaning nothing

    async def check(namespace: str) -> tuple[str, None]:
        return TERMINATING, None

    remover = NamespaceRemover(make_cascade(registry, clock), clock, check)
    remover.running = controller.cleaning
    done = outcome(remover.remove("team", 40.0))
    clock.advance(40.0)
    assert done == [None], done
    assert registry.remaining("team/") == {}
    # The worker is free: the queued cascade takes it (and waits for its namespace store to sync).
    controller._reflector = _Unsynced()  # type: ignore[assignment]
    controller._slots.release()
    assert controller.cleaning("team") is not None


class _Unsynced:
    def wait_for_sync(self) -> Deferred[None]:
        return Deferred()


def _not_implemented() -> RegistryError:
    error = RegistryProtocolError("registry r does not support DELETE (HTTP 501 Not Implemented)")
    error.certain = True  # as the client makes a 501 or 505
    return error


@pytest.mark.parametrize(
    "refusal",
    [
        _not_implemented(),
        RegistryDeleteDisabled("registry r does not allow deletes (storage.delete.enabled is false)"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_removal_whose_deletes_meet_a_certain_refusal_stops_at_its_first_failed_pass(
    refusal: RegistryError,
) -> None:
    """Every delete is refused in a way a retry certainly meets again: the removal does not pass
    again (and send every delete again) until its budget ends, answered "retry"; it ends after that
    pass with the registry's words, an error a retry cannot fix (`RegistryError.certain`)."""
    remover, registry, clock = make({"team": ABSENT})
    registry.fail("delete", refusal, times=1000)
    done = outcome(remover.remove("team", 10.0))
    assert done, "it sat out a backoff to pass again"
    error = done[0].value
    assert isinstance(error, RegistryError) and not isinstance(error, RegistryUnavailable)
    assert error.lasting, error
    assert str(refusal) in str(error) and "not finished within" not in str(error)
    assert 1000 - len(registry.failures["delete"]) == 3  # each of the namespace's digests, once
    assert clock.seconds() == 0


@pytest.mark.parametrize(
    "refusal",
    [
        RegistryAuthFailed("registry r refused the configured credentials"),
        RegistryAuthFailed("registry r denied access: the token does not grant delete", denied=True),
        RegistryProtocolError("registry r failed deleting: unexpected HTTP 408"),
    ],
    ids=["rejected", "denied", "unexpected"],
)
def test_a_removal_whose_deletes_are_refused_for_access_passes_again_until_its_budget(
    refusal: RegistryError,
) -> None:
    """A refusal of access or credentials, or an answer the client does not understand, is lasting
    but not certain: a grant still being rolled out, or a proxy's passing 408, lets the next pass
    through (review-dscheck2 G2). The removal passes again after each backoff until its budget ends,
    and then answers without Retry-After, saying what was refused."""
    remover, registry, clock = make({"team": ABSENT})
    registry.fail("delete", refusal, times=1000)
    done = outcome(remover.remove("team", 10.0))
    assert not done  # sitting out its first backoff
    clock.pump([1.0] * 10)
    assert done
    error = done[0].value
    assert isinstance(error, RegistryError) and not isinstance(error, RegistryUnavailable)
    assert error.lasting, error
    assert "not finished within 10s" in str(error) and str(refusal) in str(error)
    assert 1000 - len(registry.failures["delete"]) > 3  # passed again


def test_a_removal_whose_refusal_was_granted_meanwhile_finishes() -> None:
    """The namespace's deletes are denied on the first pass only (access being granted): the next
    pass empties it (review-dscheck2 G2)."""
    remover, registry, clock = make({"team": ABSENT})
    registry.fail("delete", RegistryAuthFailed("registry r denied access", denied=True), times=1)
    done = outcome(remover.remove("team", 10.0))
    assert not done
    clock.pump([1.0] * 3)
    assert done == [None] and registry.remaining("team/") == {}


@pytest.mark.parametrize(
    ("failure", "passes", "said"),
    [
        (
            RegistryReadOnly("registry r is in read-only mode (garbage collection?); retry later"),
            1,
            "stopped: its last pass made no progress, the registry refusing its deletes in read-only "
            "mode (garbage collection)",
        ),
        (
            RegistryUnavailable("registry r failed deleting manifest with HTTP 500 (UNKNOWN); retry later"),
            2,
            "stopped: its last two passes made no progress, the registry failing its deletes (a 5xx)",
        ),
    ],
    ids=["read-only", "500"],
)
def test_a_removal_whose_pass_fails_every_delete_without_progress_stops_at_once_untold_to_retry_now(
    failure: RegistryError, passes: int, said: str
) -> None:
    """Read-only mode (garbage collection), or every delete a 500 (a storage refusing deletes): the
    removal passed again until its 40 s budget ended and then told its caller to retry in 1 s, which
    client-go does by itself ten times, holding a namespace controller's worker for some 7.5 min per
    namespace (review r1cleanup F1). It ends after its first pass in read-only mode (certain), after
    its second in a row otherwise (one blip is retried: review r2fixstall L1), marked `stalled` (no
    Retry-After): a retry at once meets the same. Not `lasting`: one later may get through."""
    remover, registry, clock = make({"team": ABSENT})
    registry.fail("delete", failure, times=1000)
    done = outcome(remover.remove("team", 40.0))
    assert bool(done) == (passes == 1)  # at once in read-only mode; else after one backoff (1 s)
    clock.advance(1.0)
    assert done, "it passed again until its budget ended"
    error = done[0].value
    assert isinstance(error, RegistryUnavailable) and error.stalled and not error.lasting, error
    assert not error.unanswered
    assert said in str(error) and str(failure) in str(error)
    assert 1000 - len(registry.failures["delete"]) == 3 * passes  # each of the namespace's digests
    assert registry.remaining("team/")  # nothing lost: all of it is still there, for a later call
    registry.failures["delete"].clear()  # garbage collection ends
    done = outcome(remover.remove("team", 40.0))
    assert done == [None] and registry.remaining("team/") == {}


class _OneFails(FakeRegistry):
    """Every delete of one digest fails with a 500 (a corrupt tag link on it, say)."""

    def __init__(self, failing: str) -> None:
        super().__init__()
        self.failing = failing

    async def delete_manifest(self, repository: str, manifest: str, *, hooks: Any = None) -> None:
        if manifest == self.failing:
            raise RegistryUnavailable(
                f"registry r failed deleting manifest {repository}@{manifest} (HTTP 500)"
            )
        await super().delete_manifest(repository, manifest, hooks=hooks)


def test_a_removal_that_made_progress_keeps_retry_after_and_the_next_call_without_any_does_not() -> None:
    """One digest's delete always fails, the others go: the call that deleted them made progress, its
    next pass none, and it stops then (`Stalled`) with Retry-After kept (not `stalled`): a retry at
    once may get further. The next call makes no progress at all: no Retry-After."""
    registry = _OneFails("")
    fill(registry)
    registry.failing = registry.repos["team/app"]["v2"]
    clock = Clock()

    async def check(namespace: str) -> tuple[str, str | None]:
        return ABSENT, None

    remover = NamespaceRemover(make_cascade(registry, clock), clock, check)
    done = outcome(remover.remove("team", 40.0))
    assert not done  # its first pass made progress: it passes again after a backoff
    clock.advance(1.0)
    assert not done  # its second made none: one blip is retried (review r2fixstall L1)
    clock.advance(2.0)
    assert done, "it passed again until its budget ended"
    first = done[0].value
    assert isinstance(first, RegistryUnavailable) and not first.stalled, first
    assert "stopped: its last two passes made no progress" in str(first)
    assert registry.remaining("team/") == {"team/app": ["v2"]}
    done = outcome(remover.remove("team", 40.0))
    clock.advance(1.0)
    assert done and clock.seconds() == 4.0
    second = done[0].value
    assert isinstance(second, RegistryUnavailable) and second.stalled, second


def test_a_removal_whose_single_delete_failed_once_passes_again_and_finishes() -> None:
    """A transient failure among deletes that went (progress): the removal passes again within the
    call, as before, and finishes."""
    remover, registry, clock = make({"team": ABSENT})
    registry.fail("delete", RegistryUnavailable("registry r failed with HTTP 503; retry later"), times=1)
    done = outcome(remover.remove("team", 40.0))
    clock.pump([1.0] * 3)
    assert done == [None] and registry.remaining("team/") == {}


def test_the_leaders_cascade_keeps_passing_in_read_only_mode() -> None:
    """No budget (the leader's cascade): it does not stop on a pass without progress, and finishes
    once the registry deletes again. Nothing is left to the namespace controller alone."""
    registry = FakeRegistry()
    fill(registry)
    clock = Clock()
    registry.fail("delete", RegistryReadOnly("registry r is in read-only mode"), times=9)
    done = outcome(make_cascade(registry, clock).run("team"))
    clock.pump([4.0] * 10)
    assert len(done) == 1 and not isinstance(done[0], Exception), done
    assert registry.remaining("team/") == {}


def _one_image() -> tuple[NamespaceRemover, FakeRegistry, Clock]:
    """A namespace of one digest (two tags on it): one DELETE empties it."""
    clock = Clock()
    registry = FakeRegistry()
    registry.push("team/app", "v1", "same")
    registry.push("team/app", "latest", "same")

    async def check(namespace: str) -> tuple[str, str | None]:
        return ABSENT, None

    return NamespaceRemover(make_cascade(registry, clock), clock, check), registry, clock


@pytest.mark.parametrize(
    ("operation", "failure"),
    [
        ("delete", RegistryUnavailable("registry r failed deleting manifest with HTTP 500 (UNKNOWN)")),
        ("catalog", RegistryUnavailable("registry r failed listing the catalog with HTTP 503")),
    ],
    ids=["delete-500", "catalog-503"],
)
def test_a_single_blip_in_a_pass_without_progress_is_retried_within_the_call(
    operation: str, failure: RegistryError
) -> None:
    """One 500 on the only digest's DELETE, or one 503 on the catalog (a load balancer's blip): the pass
    makes no progress, and stopping then answered "retry later" without Retry-After where a retry after
    the backoff answers 200, as before (review r2fixstall L1): it stops only at the second such pass."""
    remover, registry, clock = _one_image()
    registry.fail(operation, failure, times=1)
    done = outcome(remover.remove("team", 40.0))
    assert not done  # sitting out its backoff
    clock.advance(1.0)
    assert done == [None], [getattr(d, "value", d) for d in done]
    assert registry.remaining("team/") == {}


class _SlowReadsInGc(FakeRegistry):
    """Read-only mode (garbage collection) with a loaded storage: one tag's resolve times out."""

    async def resolve_typed(self, repository: str, tag: str) -> Any:
        if tag == "slow":
            raise RegistryTimeout(
                f"registry r did not answer HEAD /v2/{repository}/manifests/{tag} within 10s"
            )
        return await super().resolve_typed(repository, tag)


def test_a_read_timeout_counts_as_a_stall_as_a_reads_5xx_does() -> None:
    """Read-only mode, and one tag's read times out at each pass: nothing of a read can land, yet a
    timeout (`unanswered`) was never a stall, and the call passed until its 40 s budget to answer 503
    with Retry-After: 1, client-go's ten repeats with it (review r2fixstall L2). It stops at the second
    pass, without Retry-After, and says what failed."""
    registry = _SlowReadsInGc()
    registry.push("team/app", "v1")
    registry.push("team/other", "slow")
    registry.fail("delete", RegistryReadOnly("registry r is read-only (maintenance)"), times=1000)
    clock = Clock()

    async def check(namespace: str) -> tuple[str, str | None]:
        return ABSENT, None

    remover = NamespaceRemover(make_cascade(registry, clock), clock, check)
    done = outcome(remover.remove("team", 40.0))
    clock.advance(1.0)
    assert done, "it passed again until its budget ended"
    error = done[0].value
    assert isinstance(error, RegistryUnavailable) and error.stalled and not error.unanswered, error
    assert "its last two passes made no progress, the registry failing its deletes and reads" in str(error)


def test_every_read_timing_out_ends_the_call_early_without_retry_after() -> None:
    """Every resolve times out (an overloaded registry): no write was sent, nothing can land; the call
    stops at its second pass, stalled, and says that reads fail."""
    remover, registry, clock = make({"team": ABSENT})
    registry.fail("resolve", RegistryTimeout("registry r did not answer HEAD within 10s"), times=1000)
    done = outcome(remover.remove("team", 40.0))
    clock.advance(1.0)
    assert done, "it passed again until its budget ended"
    error = done[0].value
    assert isinstance(error, RegistryUnavailable) and error.stalled and not error.unanswered, error
    assert "the registry failing its reads (a 5xx, a timeout, a refused connection)" in str(error)
    assert "deletes" not in str(error).split("; the last pass failed")[0]


def test_a_delete_timing_out_is_no_stall_the_call_passes_until_its_budget() -> None:
    """A DELETE that timed out may still land: not a stall (the removal does not stop early on it)."""
    remover, registry, clock = make({"team": ABSENT})
    registry.fail("delete", RegistryTimeout("registry r did not answer DELETE within 10s"), times=1000)
    done = outcome(remover.remove("team", 10.0))
    clock.advance(1.0)
    clock.advance(2.0)
    assert not done  # passed a third time
    clock.pump([1.0] * 10)
    assert done
    assert "not finished within 10s" in str(done[0].value)


def test_a_call_with_no_progress_ended_by_its_budget_has_no_retry_after() -> None:
    """A call that made no progress of its own and after which no write may land answers without
    Retry-After whatever ended it (review r2fixstall L2): here its budget, spent waiting for the
    leader's pass under way on this replica."""
    leader: Deferred[None] = Deferred()
    remover, registry, clock = make({"team": ABSENT}, running=leader)
    done = outcome(remover.remove("team", 40.0))
    clock.pump([1.0] * 41)
    assert done
    error = done[0].value
    assert isinstance(error, RegistryUnavailable) and error.stalled and not error.unanswered, error
    assert "not finished within 40s" in str(error)
    assert registry.remaining("team/")  # nothing of its own done, nothing lost
    leader.callback(None)


def test_a_call_with_progress_ended_by_its_budget_keeps_retry_after() -> None:
    """A call that deleted something before its budget ended keeps Retry-After: the next gets further."""
    remover, registry, clock = make({"team": ABSENT})
    registry.fail("delete", RegistryTimeout("registry r did not answer DELETE within 10s"), times=1)
    done = outcome(remover.remove("team", 0.5))  # its backoff (1 s) ends past it
    clock.pump([0.5] * 5)
    assert done
    error = done[0].value
    assert isinstance(error, RegistryUnavailable) and not error.stalled, error
