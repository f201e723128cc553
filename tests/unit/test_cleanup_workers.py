"""What a deletecollection waits for of the leader's cascades: only a stint of one on a worker
(`CleanupController.cleaning`), and nothing of a cascade that is gone."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from payloadtags.cleanup.controller import CleanupController, CleanupOptions
from payloadtags.cleanup.removal import NamespaceRemover
from payloadtags.cleanup.sweep import TERMINATING
from payloadtags.registry.errors import RegistryUnavailable
from tests.unit.test_cleanup_cascade import FakeRegistry, SlowRegistry, make_cascade
from tests.unit.test_cleanup_removal import outcome


class _Synced:
    def wait_for_sync(self) -> Deferred[None]:
        synced: Deferred[None] = Deferred()
        synced.callback(None)
        return synced


def _leader(registry: Any, clock: Clock) -> CleanupController:
    options = CleanupOptions(leader_elect=False, namespace_concurrency=1)
    controller = CleanupController(clock, kube=None, registry=registry, options=options)  # type: ignore[arg-type]
    controller._leading = True
    return controller


def test_a_call_waiting_for_a_cascade_goes_on_when_the_cascade_gives_its_worker_up() -> None:
    """The call began following the leader's cascade while it held the one worker; the cascade's pass
    failed and it gave the worker up to another namespace's cascade, to back off and queue again. It
    cleans nothing then: the call must not wait out its budget (503) for it, but do the work."""
    clock = Clock()
    registry = SlowRegistry(clock, 0.1)
    for r in range(5):
        registry.push(f"team/app{r}", "v1")
    registry.fail("delete", RegistryUnavailable("down"), times=1)  # the leader's pass fails once
    controller = _leader(registry, clock)
    controller._reflector = _Synced()  # type: ignore[assignment]
    controller._guard = lambda namespace: None  # type: ignore[method-assign]

    async def gone(namespace: str, uid: str | None) -> None:
        return None

    controller._confirm_gone = gone  # type: ignore[method-assign]

    async def check(namespace: str) -> tuple[str, None]:
        return TERMINATING, None

    remover = NamespaceRemover(make_cascade(registry, clock), clock, check)
    remover.running = controller.cleaning
    controller._trigger("team", "deleted", None)
    assert controller.cleaning("team") is not None  # on the worker
    other = controller._slots.acquire()  # another namespace's cascade queues for the one worker
    done = outcome(remover.remove("team", 40.0))  # follows the leader's cascade
    for _ in range(200):
        if controller.cleaning("team") is None:
            break
        clock.advance(0.05)
    assert other.called and controller.cleaning("team") is None  # backing off, behind `other`
    for _ in range(100):
        if done:
            break
        clock.advance(0.1)
    assert done == [None], done  # within 10 s of its 40: it did the work itself
    assert registry.remaining("team/") == {}


def test_cascades_cancelled_while_queued_for_a_worker_leave_nothing_behind() -> None:
    clock = Clock()
    controller = _leader(FakeRegistry(), clock)
    assert controller._slots.acquire().called  # the one worker, held by another namespace's cascade
    for i in range(5):
        controller._trigger(f"ns{i}", "deleted", None)
    assert len(controller._workers) == 5
    assert Deferred.fromCoroutine(controller._stop_leading()).called  # leadership lost
    assert controller._running == {} and controller._workers == {}


def test_the_leaders_cascade_waits_for_a_late_write_off_its_worker() -> None:
    """Found empty while a write of the process to the namespace is out (it may yet land): the
    cascade waits for its answer off its worker, as it backs off, so that another namespace's cascade
    (and a deletecollection following this one) goes on meanwhile; then it queues for a worker again
    and passes once more."""
    clock = Clock()
    controller = _leader(FakeRegistry(), clock)
    controller._reflector = _Synced()  # type: ignore[assignment]
    controller._guard = lambda namespace: None  # type: ignore[method-assign]
    late = controller.cascade.late_writes
    number = late.sent("team", "deleting tag team/app:v1")
    controller._trigger("team", "deleted", None)
    assert "team" in controller._running and controller.cleaning("team") is None  # waiting, off its worker
    other = controller._slots.acquire()  # another namespace's cascade takes the one worker
    assert other.called
    late.ended("team", number, None)  # answered: nothing may land now
    assert "team" in controller._running and not controller.results  # queued behind `other`
    controller._slots.release()
    assert "team" not in controller._running
    [result] = controller.results
    assert result.namespace == "team" and result.passes == 2


def test_a_namespace_the_leaders_cascade_empties_is_forgotten_by_the_deletecollection_walks() -> None:
    """A deletecollection call stopped in chunks of resolves leaves its walk with the digests it
    resolved. Emptied by the leader's cascade then, the namespace calls no more, and that walk stayed
    until 1000 newer ones pushed it out (review r2fix L1): the cascade that finds it empty has the
    remover forget it (`emptied`, wired by the server), kept digests and all."""
    clock = Clock()
    registry = SlowRegistry(clock, 0.39)
    for r in range(2):
        for t in range(120):
            registry.push(f"team/app{r}", f"v{t:03d}")
    controller = _leader(registry, clock)
    controller._reflector = _Synced()  # type: ignore[assignment]
    controller._guard = lambda namespace: None  # type: ignore[method-assign]

    async def gone(namespace: str, uid: str | None) -> None:
        return None

    controller._confirm_gone = gone  # type: ignore[method-assign]

    async def check(namespace: str) -> tuple[str, None]:
        return TERMINATING, None

    remover = NamespaceRemover(make_cascade(registry, clock), clock, check)
    controller.emptied = remover.forget
    done = outcome(remover.remove("team", 20.0))
    while not done:
        clock.advance(0.13)
    assert done[0].check(RegistryUnavailable)
    walk = remover._walks["team"]
    assert walk.state is not None and sum(map(len, walk.state.resolved.values())) > 50
    controller._trigger("team", "deleted", None)
    while "team" in controller._running:
        clock.advance(0.39)
    assert registry.remaining("team/") == {} and [r.namespace for r in controller.results] == ["team"]
    assert "team" not in remover._walks
