"""The async primitives: timeouts, cancellation, gathering. Everything that waits uses these.

- `within` bounds an awaitable by a deadline on an injected clock and tells a caller's cancel apart
  from the deadline and from the work's own failures;
- `noting_cancel` relays a Deferred while noting that its caller cancelled it; `is_cancellation`
  tells a cancellation that a transport reported as a failure;
- `carried_through` lets work that must not stop half-way go on when its caller stops waiting;
- `gather` runs coroutines concurrently, failing as the first failure; `bounded_map` and `bounded_each`
  run a call per item, a few at a time, without holding anything for the items not reached yet;
- `cancel_and_wait` stops background tasks and waits until they have ended;
- `InFlight` shares one piece of work among the callers who ask for it while it runs;
- `Fresh` shares one run at a time of some work among callers, each told the outcome of a run that
  started after it asked;
- `Waiters` holds the callers waiting for something to happen, each on a Deferred of its own;
- `FairSlots` lets a few holders at a time through, the others served in turns by key.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable, Iterator
from typing import Any, Final, Generic, TypeVar

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    FirstError,
    gatherResults,
    succeed,
)
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K")

_WAIT_FOR_WORK: Final = object()


def noting_cancel(work: Deferred[T], on_cancel: Callable[[], object]) -> Deferred[T]:
    """A Deferred with the outcome of `work`; cancelling it calls `on_cancel`, then cancels `work`.

    Like the Deferred of a coroutine, it still waits for `work` to end when `work` does not end at
    once on cancel: what `work` started (a request, its connection slot) is not left running unobserved.
    The clients use it to know that a failure after a cancel is the cancel's doing: some transport
    failures carry no trace of it (HostnameEndpoint's DNSLookupError).
    """

    def cancel(outer: Deferred[Any]) -> None:
        on_cancel()
        work.cancel()
        if not outer.called:
            outer.callback(_WAIT_FOR_WORK)  # `outer` now waits for `work` (see below)

    def relay(result: Any) -> Any:
        if outer.called:
            return result  # `outer` waits on `work` and takes this result from it
        if isinstance(result, Failure):
            outer.errback(result)
        else:
            outer.callback(result)
        return None

    outer: Deferred[Any] = Deferred(cancel)
    outer.addCallback(lambda result: work if result is _WAIT_FOR_WORK else result)
    work.addBoth(relay)
    return outer


class GoesOn(CancelledError):
    """The caller stopped waiting for work that goes on to its own end (`carried_through`).

    ``ended`` fires (with None, however the work ends) once it has ended: what must follow the
    work's end, and not merely its caller's, waits for it there."""

    def __init__(self, ended: Deferred[None] | None = None) -> None:
        super().__init__()
        self.ended: Deferred[None] = ended if ended is not None else Deferred()


def carried_through(
    work: Deferred[T], begun: Callable[[], bool], orphaned: Callable[[Any], object]
) -> Deferred[T]:
    """A Deferred with the outcome of ``work``. Cancelling it cancels ``work`` as long as ``begun()``
    is false; once it is true, ``work`` goes on to its own end, the returned Deferred alone fails
    with GoesOn (a CancelledError) at once, and ``orphaned`` gets what ``work`` ends with (a Failure
    or not), then the GoesOn's ``ended`` fires."""
    ended: Deferred[None] = Deferred()

    def cancel(outer: Deferred[Any]) -> None:
        if not begun():
            work.cancel()
        else:
            outer.errback(Failure(GoesOn(ended)))

    def relay(result: Any) -> None:
        if outer.called:
            try:
                orphaned(result)
            finally:
                ended.callback(None)
        elif isinstance(result, Failure):
            outer.errback(result)
        else:
            outer.callback(result)

    outer: Deferred[Any] = Deferred(cancel)
    work.addBoth(relay)
    return outer


async def cancel_and_wait(*tasks: Deferred[Any]) -> None:
    """Cancel every task, then wait until each has ended, so that nothing it started outlives the
    caller's stop. A task's cancellation is the expected end and is not raised; any other failure is."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except CancelledError:
            pass


def is_cancellation(error: BaseException) -> bool:
    """Whether a failure says it is a cancellation: CancelledError itself, Agent's
    ConnectingCancelledError, or a transport failure (ResponseNeverReceived, ResponseFailed) whose
    reasons include a CancelledError.

    A cancellation must stay a cancellation, so that callers stopping work are not told to retry. Not
    every cancelled request says so (HostnameEndpoint's DNSLookupError does not): `within` also notes
    the caller's cancel as it comes in.
    """
    if isinstance(error, CancelledError | ConnectingCancelledError):
        return True
    reasons = getattr(error, "reasons", None) or ()
    return any(isinstance(reason, Failure) and reason.check(CancelledError) for reason in reasons)


class DeadlineExpired(Exception):
    """`within`'s deadline passed; the work was cancelled. ``__cause__`` is what the work failed with."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within {seconds:g}s")
        self.seconds = seconds


async def within(
    clock: IReactorTime,
    seconds: float,
    work: Awaitable[T],
    *,
    cut_if: Callable[[], bool] | None = None,
    look_first: bool = False,
    progress: Callable[[], int] | None = None,
) -> T:
    """The result of `work`, which is cancelled if it has not ended `seconds` after the call.

    Raises DeadlineExpired when the deadline cancelled the work, and CancelledError when the caller
    cancelled: whatever `work` then fails with (a transport may report a cancel as a lookup or
    connection failure), the cancel is noted as it comes in. Other failures pass through unchanged.
    With ``cut_if``, the deadline cancels the work only if ``cut_if()`` is true then; else the work
    goes on unbounded.

    With ``look_first``, the deadline, once due, first gives the reactor a turn (``callLater(0)``),
    in which it polls its sockets, and cuts only if the work has still not ended then. In one turn
    the reactor reads at most 64 KiB of a socket (Twisted's ``bufferSize``), so an answer that takes
    more reads takes more turns: with ``progress`` too (a count of what the work has taken in, such as
    the bytes of an answer's body), it looks again each turn while the last turn raised that count,
    for at most ``seconds`` after the deadline ran. So an answer still coming in when the deadline is
    due is read on, for at most about twice ``seconds`` in all (plus however late the reactor ran the
    deadline); one that brought nothing in the last turn, silent, stalled or trickling, is cut then:
    one turn after the deadline, or two when the look read what had piled up.
    """
    # A coroutine is run as it is; another awaitable (a Deferred the caller may hold) is awaited by
    # one of ours, so that the callbacks below are not added to it.
    d = Deferred.fromCoroutine(work if inspect.iscoroutine(work) else _as_coroutine(work))
    expired = cancelled = False
    looks_until: float | None = None  # set when the deadline first runs, if it looks
    seen = 0  # progress() when the deadline last ran or looked
    call: IDelayedCall  # the deadline's timed call, then each of its looks (see expire)

    def look_again() -> bool:
        nonlocal looks_until, seen
        if not look_first:
            return False
        now_seen = progress() if progress is not None else 0
        if looks_until is None:
            # After a stretch without a poll (its thread busy, or not scheduled on a loaded
            # machine), the reactor runs the timed calls then due before it polls its sockets: an
            # answer that came in time may be waiting there, unread. The next turn polls first.
            looks_until, seen = clock.seconds() + seconds, now_seen
            return True
        # A turn that brought nothing: what was waiting has been read. The bound holds against an
        # answer that goes on coming in (a registry streaming a large body slowly).
        if now_seen == seen or clock.seconds() >= looks_until:
            return False
        seen = now_seen
        return True

    def expire() -> None:
        nonlocal expired, call
        if look_again():
            call = clock.callLater(0, expire)
            return
        if cut_if is not None and not cut_if():
            return
        expired = True
        d.cancel()

    def note_cancel() -> None:
        nonlocal cancelled
        cancelled = True

    call = clock.callLater(seconds, expire)
    try:
        return await noting_cancel(d, note_cancel)
    except Exception as error:
        if cancelled:
            raise CancelledError() from error
        if expired:
            raise DeadlineExpired(seconds) from error
        raise
    finally:
        if call.active():
            call.cancel()


async def _as_coroutine(work: Awaitable[T]) -> T:
    return await work


async def gather(coroutines: Iterable[Coroutine[Any, Any, T]], *, cancel_rest: bool = True) -> list[T]:
    """Run coroutines concurrently; results in input order.

    The first failure is raised as itself (not as Twisted's FirstError). With ``cancel_rest`` the
    siblings still running are cancelled, so that nothing the operation started is left running
    unobserved; without it they run to their end (a registry delete cut short halfway could leave
    the tag on a placeholder manifest).
    """
    pending = [Deferred.fromCoroutine(c) for c in coroutines]
    if not pending:
        return []
    try:
        return await gatherResults(pending, consumeErrors=True)
    except FirstError as error:
        for d in pending if cancel_rest else ():
            if not d.called:
                d.cancel()
        error.subFailure.raiseException()
        raise  # pragma: no cover - raiseException always raises


async def bounded_map(fn: Callable[[T], Awaitable[R]], items: Iterable[T], limit: int) -> list[R]:
    """``fn`` over ``items`` with at most ``limit`` in flight; results in input order. As `bounded_each`,
    an item is taken from ``items`` only when a call ends, so nothing is held for the items not reached
    yet: cancelling a map of thousands cancels ``limit`` calls, not a coroutine per item waiting for a
    slot, which was one long synchronous burst on the reactor (r2kubectl N3). The first failure is
    raised as itself and no further item is taken; the calls already started run to their end."""
    if limit < 1:
        raise ValueError(f"bounded_map needs a limit of at least 1, not {limit}")
    results: dict[int, R] = {}
    remaining = enumerate(items)
    failed = False

    async def worker() -> None:
        nonlocal failed
        while not failed:
            taken = next(remaining, None)
            if taken is None:
                return
            at, item = taken
            try:
                results[at] = await fn(item)
            except BaseException:
                failed = True
                raise

    await gather([worker() for _ in range(limit)], cancel_rest=False)
    return [results[at] for at in range(len(results))]


async def bounded_each(fn: Callable[[T], Awaitable[object]], items: Iterable[T], limit: int) -> None:
    """``fn`` over ``items``, at most ``limit`` calls at a time, each item taken from ``items`` only
    when a call ends: however many items there are, the work under way is ``limit`` calls. The first
    failure is raised as itself and cancels the calls under way; no further item is taken."""
    remaining = iter(items)

    async def worker() -> None:
        for item in remaining:
            await fn(item)

    await gather([worker() for _ in range(limit)])


class Waiters(Generic[T]):
    """Callers waiting for something to happen, each on a Deferred of its own.

    A caller's cancel takes its Deferred off the list (then ``on_leave`` runs, where the owner may stop
    work nobody waits for any more); the others go on waiting. ``fire`` and ``fail`` tell the callers
    waiting at that moment, and only them: who waits after starts waiting for the next time.
    """

    def __init__(self) -> None:
        self._waiting: list[Deferred[T]] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self, on_leave: Callable[[], object] | None = None) -> Deferred[T]:
        def leave(waiter: Deferred[T]) -> None:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            if on_leave is not None:
                on_leave()

        waiter: Deferred[T] = Deferred(leave)
        self._waiting.append(waiter)
        return waiter

    def fire(self, result: T | Failure) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if waiter.called:
                continue  # cancelled by another waiter's callbacks while these were told
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def fail(self, error: BaseException) -> None:
        self.fire(Failure(error))


class InFlight(Generic[K, T]):
    """Work in flight by key, shared by every caller who asks for the same key while it runs.

    Each caller waits on a Deferred of its own, so that one caller's cancel (its client gone, its
    deadline passed) neither cancels the work for the others nor fails them. With
    ``cancel_when_abandoned`` the work is cancelled once nobody waits for it any more, and the next
    caller starts it anew; without, it runs to its end, and what it keeps on the way (a cache entry)
    serves the callers after it. (The registry's read coalescing has rules of its own about which
    caller a read may serve: registry/coalesce.py.)
    """

    def __init__(self, *, cancel_when_abandoned: bool = False) -> None:
        self._cancel_when_abandoned = cancel_when_abandoned
        self._flights: dict[K, _Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __iter__(self) -> Iterator[K]:
        return iter(self._flights)

    def join(self, key: K, start: Callable[[], Coroutine[Any, Any, T]]) -> Deferred[T]:
        """The outcome of the work in flight for ``key``, started as ``start()`` when none is."""
        flight = self._flights.get(key)
        if flight is not None:
            return self._wait(key, flight)
        flight = self._flights[key] = _Flight()
        waiter = self._wait(key, flight)  # before the work starts: it may end at once
        flight.work = Deferred.fromCoroutine(start())
        flight.work.addBoth(self._ended, key, flight)
        return waiter

    def _wait(self, key: K, flight: _Flight[T]) -> Deferred[T]:
        return flight.waiters.wait(lambda: self._leave(key, flight))

    def _leave(self, key: K, flight: _Flight[T]) -> None:
        if flight.waiters or not self._cancel_when_abandoned:
            return
        if flight.work is not None and not flight.work.called:
            self._forget(key, flight)  # a caller from now on starts the work anew
            flight.work.cancel()

    def _ended(self, result: T | Failure, key: K, flight: _Flight[T]) -> None:
        self._forget(key, flight)
        # Work cancelled for want of waiters has nobody to tell; its failure ends here.
        flight.waiters.fire(result)

    def _forget(self, key: K, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]


class Fresh(Generic[T]):
    """Runs of some work (a question), one at a time, each caller told the outcome of a run that
    started after it asked, never of one already under way.

    A caller who asks while nothing runs starts a run at once. Who asks while one runs waits for the
    next, which starts when that one ends and serves everyone who asked meanwhile, including the
    callers who ask again as they are told the last outcome: at most one run is ever under way, and
    callers who ask close together share one. Each caller waits on a Deferred of its own; once
    nobody waits for the run under way any more, it is cancelled.
    """

    def __init__(self, start: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._start = start
        self._running: Deferred[T] | None = None
        self._telling = False  # the last outcome is being told: the next run starts after that
        self._current: Waiters[T] = Waiters()  # told the outcome of the run under way (or next)
        self._next: Waiters[T] = Waiters()  # asked while a run was under way: told the next one's

    def ask(self) -> Deferred[T]:
        if self._running is not None:
            return self._next.wait(self._left)
        waiter = self._current.wait(self._left)  # before the run starts: it may end at once
        if not self._telling:
            self._run()
        return waiter

    def _run(self) -> None:
        # A loop, not a callback calling the next run: runs that end at once (a test's answers) and
        # callers who ask again as they are told would otherwise nest one stack frame per run.
        while True:
            work = Deferred.fromCoroutine(self._start())
            if not work.called:
                self._running = work
                work.addBoth(self._ended)
                return
            outcome: list[T | Failure] = []
            work.addBoth(outcome.append)
            if not self._tell(outcome[0]):
                return

    def _ended(self, result: T | Failure) -> None:
        self._running = None
        if self._tell(result):
            self._run()

    def _tell(self, result: T | Failure) -> bool:
        """Tells the run's outcome to who waits for it; whether callers wait for another run."""
        told, self._current, self._next = self._current, self._next, Waiters()
        self._telling = True
        try:
            # A run cancelled for want of waiters has nobody to tell; its failure ends here.
            told.fire(result)
        finally:
            self._telling = False
        return bool(self._current)

    def _left(self) -> None:
        if self._running is not None and not self._current:
            self._running.cancel()


class FairSlots:
    """At most ``size`` holders at once, each holding its slot for a key. Who asks while every slot is
    held waits, and the next free slot goes to a waiter of the key that holds the fewest slots (of
    those equal, the one whose turn came least recently; a key's own waiters in the order they came).
    So however many wait under some keys, another key's first waiter is let through at the next free
    slot. No key holds more than ``per_key`` (all of them by default): one at it waits even while a
    slot is free, so that a key whose holders are slow cannot take every slot while nobody else
    waits and make the next key wait for one of them to end. A waiter's cancel takes it off the queue
    at once: it never gets a slot."""

    def __init__(self, size: int, per_key: int | None = None) -> None:
        self.size = size
        self.per_key = size if per_key is None else per_key
        self.held = 0
        self._holding: dict[Hashable, int] = {}  # slots held, by key
        # Waiters by key; the dict's order is the turn order (a key served goes to its end).
        self._queues: dict[Hashable, deque[Deferred[None]]] = {}
        self._handing = False

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def acquire(self, key: Hashable) -> Deferred[None]:
        """Fires once the caller holds a slot for ``key``, to be given back with `release`; cancelled
        before, the caller holds none."""
        # Between hand-ons nobody below their cap waits while a slot is free (a key that waits is at
        # its cap); during one, the waiters come first.
        free = self.held < self.size and not self._handing
        if free and self._holding.get(key, 0) < self.per_key and key not in self._queues:
            self._take(key)
            return succeed(None)

        def leave(waiter: Deferred[None]) -> None:
            queue = self._queues.get(key)
            if queue is not None and waiter in queue:
                queue.remove(waiter)
                if not queue:
                    del self._queues[key]

        waiter: Deferred[None] = Deferred(leave)
        self._queues.setdefault(key, deque()).append(waiter)
        return waiter

    def release(self, key: Hashable) -> None:
        self.held -= 1
        left = self._holding[key] - 1
        if left:
            self._holding[key] = left
        else:
            del self._holding[key]
        self._hand_on()

    def _take(self, key: Hashable) -> None:
        self.held += 1
        self._holding[key] = self._holding.get(key, 0) + 1

    def _hand_on(self) -> None:
        # A loop, not a call per waiter: a holder that ends at once (a test's answers) releases from
        # within the callback that gave it its slot, and would nest a stack frame per waiter.
        if self._handing:
            return
        self._handing = True
        try:
            while self.held < self.size:
                below = [k for k in self._queues if self._holding.get(k, 0) < self.per_key]
                if not below:
                    return
                key = min(below, key=lambda k: self._holding.get(k, 0))  # the first of equals
                queue = self._queues.pop(key)
                waiter = queue.popleft()
                if queue:
                    self._queues[key] = queue  # to the end of the turns
                self._take(key)
                waiter.callback(None)
        finally:
            self._handing = False


class _Flight(Generic[T]):
    def __init__(self) -> None:
        self.waiters: Waiters[T] = Waiters()
        self.work: Deferred[T] | None = None
