"""NamespaceRemover: deletecollection's digest deletes of a namespace that is being deleted."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from payloadtags.cleanup.removal import NamespaceRemover
from payloadtags.cleanup.sweep import ABSENT, EXISTS, TERMINATING, UNKNOWN
from payloadtags.registry.errors import RegistryUnavailable
from tests.unit.test_cleanup_cascade import FakeRegistry, fill, make_cascade


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
