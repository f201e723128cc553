"""RepositoryQueue: one repository's holders run one after the other, in arrival order."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred

from payloadtags.registry import RepositoryQueue


async def _hold(
    queue: RepositoryQueue, repository: str, log: list[str], name: str, gate: Deferred[None]
) -> None:
    async with queue.hold(repository):
        log.append(f"{name} in")
        await gate
        log.append(f"{name} out")


def test_one_repository_runs_in_arrival_order_others_do_not_wait() -> None:
    queue = RepositoryQueue()
    log: list[str] = []
    gates = {name: Deferred[None]() for name in ("a1", "a2", "a3", "b1")}
    tasks = [
        Deferred.fromCoroutine(_hold(queue, repository, log, name, gates[name]))
        for name, repository in (("a1", "ns/a"), ("a2", "ns/a"), ("a3", "ns/a"), ("b1", "ns/b"))
    ]
    assert log == ["a1 in", "b1 in"]  # another repository does not wait
    assert queue.depth("ns/a") == 3 and queue.waits == 2
    gates["a3"].callback(None)  # finishing out of order changes nothing: a2 is next
    assert log == ["a1 in", "b1 in"]
    gates["a1"].callback(None)
    assert log[-2:] == ["a1 out", "a2 in"]
    gates["a2"].callback(None)
    assert log[-3:] == ["a2 out", "a3 in", "a3 out"]
    gates["b1"].callback(None)
    assert all(task.called for task in tasks)
    assert queue.depth("ns/a") == 0 and queue.max_depth == 3
    assert not queue._slots  # idle repositories are forgotten


def test_a_cancelled_waiter_leaves_the_line() -> None:
    queue = RepositoryQueue()
    log: list[str] = []
    first, second, third = Deferred[None](), Deferred[None](), Deferred[None]()
    Deferred.fromCoroutine(_hold(queue, "r", log, "1", first))
    cancelled = Deferred.fromCoroutine(_hold(queue, "r", log, "2", second))
    Deferred.fromCoroutine(_hold(queue, "r", log, "3", third))
    cancelled.cancel()
    failures: list[object] = []
    cancelled.addErrback(lambda f: failures.append(f.trap(CancelledError)))
    assert failures == [CancelledError]
    first.callback(None)
    assert log == ["1 in", "1 out", "3 in"]
    third.callback(None)
    assert queue.depth("r") == 0


def test_an_error_inside_releases_the_repository() -> None:
    queue = RepositoryQueue()

    async def fail() -> None:
        async with queue.hold("r"):
            raise ValueError("boom")

    failed = Deferred.fromCoroutine(fail())
    errors: list[object] = []
    failed.addErrback(lambda f: errors.append(f.trap(ValueError)))
    assert errors == [ValueError]
    log: list[str] = []
    gate: Deferred[None] = Deferred()
    Deferred.fromCoroutine(_hold(queue, "r", log, "next", gate))
    assert log == ["next in"]
    gate.callback(None)
