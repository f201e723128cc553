"""The async primitives every client and the cleanup use: deadlines, cancellation, gathering."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError, DNSLookupError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

from payloadtags.deferreds import (
    DeadlineExpired,
    FairSlots,
    Fresh,
    GoesOn,
    InFlight,
    Waiters,
    bounded_each,
    bounded_map,
    cancel_and_wait,
    carried_through,
    gather,
    is_cancellation,
    within,
)


def run(coroutine: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(coroutine)


def failure_of(d: Deferred[Any]) -> BaseException:
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures, "still running or succeeded"
    assert failures[0].value is not None
    return failures[0].value


def test_within_passes_the_result_and_cancels_its_timer() -> None:
    clock = Clock()
    work: Deferred[str] = Deferred()
    d = run(within(clock, 5, work))
    work.callback("done")
    assert d.result == "done"
    assert clock.getDelayedCalls() == []


def test_within_cancels_the_work_at_the_deadline() -> None:
    clock = Clock()
    work: Deferred[str] = Deferred()
    d = run(within(clock, 5, work))
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.1)
    error = failure_of(d)
    assert isinstance(error, DeadlineExpired) and error.seconds == 5
    assert isinstance(error.__cause__, CancelledError)


def test_within_cuts_the_work_only_if_its_condition_holds_at_the_deadline() -> None:
    """``cut_if``: a deletecollection cuts its deletes before the request's deadline only while a write
    may land (review-ds8 F1); else they go on, and the deadline's own answer stands."""
    clock = Clock()
    work: Deferred[str] = Deferred()
    d = run(within(clock, 5, work, cut_if=lambda: False))
    clock.advance(5)
    assert not d.called and not work.called
    work.callback("done")
    assert d.result == "done"
    held: Deferred[str] = Deferred()
    cut = run(within(clock, 5, held, cut_if=lambda: True))
    clock.advance(5)
    assert isinstance(failure_of(cut), DeadlineExpired)


class Turns(Clock):
    """A Clock that runs its calls turn by turn, as the reactor does: a call made during a turn, even
    a ``callLater(0)``, runs in the next one (Clock.advance would run it in the same advance). So a
    deadline that looked forever would show as a test failure, not a hang."""

    def turn(self, amount: float = 0) -> None:
        self.rightNow += amount
        due = sorted(
            (call for call in self.calls if call.getTime() <= self.rightNow), key=lambda c: c.getTime()
        )
        for call in due:
            if call in self.calls:  # not cancelled by an earlier call of this turn
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


@pytest.mark.parametrize("look_first", [False, True])
def test_within_look_first_takes_an_answer_due_with_the_deadline_and_cuts_if_none(look_first: bool) -> None:
    """``look_first``: the deadline and the work's end are due in the same turn, the deadline first
    (a reactor resuming after a stall runs its timed calls before it polls its sockets). Only with it
    does the work's end win; with nothing to end it, the deadline still cuts a turn later."""
    clock = Turns()
    work: Deferred[str] = Deferred()
    d = run(within(clock, 5, work, look_first=look_first))
    clock.callLater(5, work.callback, "done")  # due with the deadline, after it
    clock.turn(5)
    if look_first:
        assert d.result == "done"
        assert clock.getDelayedCalls() == []
    else:
        assert isinstance(failure_of(d), DeadlineExpired)
    held: Deferred[str] = Deferred()
    cut = run(within(clock, 5, held, look_first=look_first))
    clock.turn(5)
    if look_first:
        assert not cut.called  # its look is the next turn
        clock.turn()
    assert isinstance(failure_of(cut), DeadlineExpired)
    assert clock.getDelayedCalls() == []


def test_within_looks_again_while_the_answer_comes_in_and_cuts_in_the_first_turn_without() -> None:
    """With ``progress``: an answer longer than one read (64 KiB a turn) that was waiting when the
    deadline ran is read on, turn after turn, while each turn brings some of it; the first turn that
    brings nothing cuts. What came before the deadline does not count."""
    clock = Turns()
    received = [0]
    held: Deferred[str] = Deferred()
    d = run(within(clock, 5, held, look_first=True, progress=lambda: received[0]))
    received[0] += 100  # the head and a first part, before the deadline
    clock.turn(5)  # the deadline: looks
    for _ in range(3):
        received[0] += 65536  # what the look's turn read
        clock.turn()
        assert not d.called
    clock.turn()  # nothing more came
    assert isinstance(failure_of(d), DeadlineExpired)
    assert clock.getDelayedCalls() == []

    ends: Deferred[str] = Deferred()
    received[0] = 0
    d = run(within(clock, 5, ends, look_first=True, progress=lambda: received[0]))
    clock.turn(5)
    received[0] += 65536
    clock.turn()
    ends.callback("all of it")  # the next turn read the rest
    assert d.result == "all of it"
    assert clock.getDelayedCalls() == []

    # Nothing in the look's turn: cut then, as without ``progress``.
    silent: Deferred[str] = Deferred()
    d = run(within(clock, 5, silent, look_first=True, progress=lambda: received[0]))
    clock.turn(5)
    clock.turn()
    assert isinstance(failure_of(d), DeadlineExpired)


def test_within_looks_on_for_at_most_its_seconds_after_the_deadline_ran() -> None:
    """An answer that never stops coming in (each turn brings some) is cut once the looks have gone on
    for ``seconds`` after the deadline ran, here 5 s: not in the turn at 9 s, in the one at 10 s."""
    clock = Turns()
    received = [0]
    streaming: Deferred[str] = Deferred()
    d = run(within(clock, 5, streaming, look_first=True, progress=lambda: received[0]))
    clock.turn(5)
    for _ in range(4):
        received[0] += 1
        clock.turn(1)
        assert not d.called, clock.seconds()
    received[0] += 1
    clock.turn(1)
    assert isinstance(failure_of(d), DeadlineExpired)
    assert clock.getDelayedCalls() == []


def test_within_progress_without_look_first_cuts_at_the_deadline() -> None:
    clock = Turns()
    received = [0]
    held: Deferred[str] = Deferred()
    d = run(within(clock, 5, held, progress=lambda: received[0]))
    received[0] += 1
    clock.turn(5)
    assert isinstance(failure_of(d), DeadlineExpired)
    assert clock.getDelayedCalls() == []


def test_a_callers_cancel_stays_a_cancel_whatever_the_work_fails_with() -> None:
    clock = Clock()
    # A transport that reports a cancel as something else (HostnameEndpoint's DNSLookupError).
    work: Deferred[str] = Deferred(lambda d: d.errback(DNSLookupError("no such host")))
    d = run(within(clock, 5, work))
    d.cancel()
    assert isinstance(failure_of(d), CancelledError)
    assert clock.getDelayedCalls() == []


def test_other_failures_pass_through_unchanged() -> None:
    work: Deferred[str] = Deferred()
    d = run(within(Clock(), 5, work))
    work.errback(ValueError("boom"))
    assert isinstance(failure_of(d), ValueError)


@pytest.mark.parametrize(
    "error, expected",
    [
        (CancelledError(), True),
        (ConnectingCancelledError(None), True),
        (ResponseNeverReceived([Failure(CancelledError())]), True),
        (ResponseNeverReceived([Failure(ConnectionError()), Failure(CancelledError())]), True),
        (ResponseNeverReceived([Failure(ConnectionError())]), False),
        (DNSLookupError("x"), False),
    ],
)
def test_is_cancellation(error: BaseException, expected: bool) -> None:
    assert is_cancellation(error) is expected


def test_gather_keeps_the_order_and_raises_the_first_failure_as_itself() -> None:
    first: Deferred[int] = Deferred()
    second: Deferred[int] = Deferred()

    async def wait(d: Deferred[int]) -> int:
        return await d

    d = run(gather([wait(first), wait(second)]))
    second.callback(2)
    first.callback(1)
    assert d.result == [1, 2]

    failing: Deferred[int] = Deferred()
    running: Deferred[int] = Deferred()
    d = run(gather([wait(failing), wait(running)]))
    failing.errback(KeyError("k"))
    assert isinstance(failure_of(d), KeyError)
    assert running.called  # cancelled (cancel_rest): nothing else fires it


def test_bounded_map_limits_concurrency_and_lets_started_calls_finish() -> None:
    pending: list[Deferred[int]] = []

    async def call(item: int) -> int:
        d: Deferred[int] = Deferred()
        pending.append(d)
        return await d + item

    d = run(bounded_map(call, [10, 20, 30], limit=2))
    assert len(pending) == 2
    pending[0].callback(1)
    assert len(pending) == 3
    pending[1].errback(KeyError("k"))
    assert isinstance(failure_of(d), KeyError)
    assert not pending[2].called  # not cancelled: a delete cut short could leave a half-done change


def test_bounded_map_takes_an_item_only_when_a_call_ends_and_answers_in_input_order() -> None:
    # r2kubectl N3: one coroutine per item, made up front, each waiting for a slot, held thousands.
    pending: dict[int, Deferred[int]] = {}
    taken: list[int] = []

    def items() -> Any:
        for item in range(1, 6):
            taken.append(item)
            yield item

    async def call(item: int) -> int:
        pending[item] = Deferred()
        return await pending[item] * 10

    d = run(bounded_map(call, items(), limit=2))
    assert taken == [1, 2]  # the generator's other items are not even made
    pending[2].callback(2)
    assert taken == [1, 2, 3] and not d.called
    pending[3].callback(3)
    pending[1].callback(1)
    assert taken == [1, 2, 3, 4, 5] and not d.called
    pending[5].callback(5)
    pending[4].callback(4)
    assert d.result == [10, 20, 30, 40, 50]


def test_cancelling_a_bounded_map_of_thousands_cancels_only_the_calls_under_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # r2kubectl N3: cancelling a map of 10,000 items at a request's deadline cancelled a coroutine per
    # item, one synchronous burst that froze the reactor for seconds. Counted, not timed: the
    # Deferreds cancelled are a few per call under way, whatever the number of items.
    limit = 16
    pending: list[Deferred[None]] = []

    async def call(item: int) -> None:
        pending.append(Deferred())
        await pending[-1]

    d = run(bounded_map(call, range(10_000), limit=limit))
    assert len(pending) == limit
    cancelled: list[Deferred[Any]] = []
    cancel = Deferred.cancel

    def counted(self: Deferred[Any]) -> None:
        cancelled.append(self)
        cancel(self)

    monkeypatch.setattr(Deferred, "cancel", counted)
    d.cancel()
    assert isinstance(failure_of(d), CancelledError)
    assert len(cancelled) <= 4 * limit, len(cancelled)
    assert all(call.called for call in pending) and len(pending) == limit  # no item taken after


def test_bounded_each_takes_an_item_only_when_a_call_ends_and_a_failure_stops_the_rest() -> None:
    pending: dict[int, Deferred[None]] = {}
    taken: list[int] = []

    def items() -> Any:
        for item in range(1, 100):
            taken.append(item)
            yield item

    async def call(item: int) -> None:
        pending[item] = Deferred()
        await pending[item]

    d = run(bounded_each(call, items(), limit=2))
    assert taken == [1, 2]  # the generator's other items are not even made
    pending[2].callback(None)
    assert taken == [1, 2, 3] and not d.called
    pending[3].errback(KeyError("k"))
    assert isinstance(failure_of(d), KeyError)
    assert pending[1].called and taken == [1, 2, 3]  # the call under way is cancelled, nothing else taken

    ended: list[int] = []

    async def record(item: int) -> None:
        ended.append(item)

    done = run(bounded_each(record, range(5), limit=3))
    assert done.called and ended == [0, 1, 2, 3, 4]


def test_cancel_and_wait_cancels_every_task_before_waiting_and_swallows_only_cancellation() -> None:
    order: list[str] = []
    cleanup: Deferred[None] = Deferred()

    async def stubborn() -> None:
        # Ends only after its own cleanup once cancelled: the other task must be cancelled meanwhile.
        try:
            await Deferred()
        except CancelledError:
            order.append("slow cancelled")
            await cleanup
            raise

    slow = run(stubborn())
    quick: Deferred[None] = Deferred(lambda d: order.append("quick cancelled"))
    d = run(cancel_and_wait(slow, quick))
    assert order == ["slow cancelled", "quick cancelled"]
    assert not d.called  # `slow` is still cleaning up
    cleanup.callback(None)
    assert d.called and d.result is None


def test_cancel_and_wait_raises_a_failure_that_is_not_a_cancellation() -> None:
    broken: Deferred[None] = Deferred(lambda d: d.errback(ValueError("cleanup failed")))
    assert isinstance(failure_of(run(cancel_and_wait(broken))), ValueError)


def test_cancel_and_wait_of_finished_tasks_returns_at_once() -> None:
    done: Deferred[None] = Deferred()
    done.callback(None)
    d = run(cancel_and_wait(done))
    assert d.called and d.result is None


# --- carried_through -----------------------------------------------------------------------------------


def test_carried_through_cancels_work_that_has_not_begun() -> None:
    work: Deferred[str] = Deferred()
    orphaned: list[Any] = []
    outer = carried_through(work, lambda: False, orphaned.append)
    outer.cancel()
    assert isinstance(failure_of(outer), CancelledError)
    assert work.called and not orphaned  # the work itself was cancelled, and its end went to the caller


def test_carried_through_lets_begun_work_end_on_its_own_and_reports_how() -> None:
    work: Deferred[str] = Deferred()
    orphaned: list[Any] = []
    outer = carried_through(work, lambda: True, orphaned.append)
    outer.cancel()
    assert isinstance(failure_of(outer), CancelledError)  # the caller is told at once
    assert not work.called
    work.callback("done")
    assert orphaned == ["done"]
    failed: Deferred[str] = Deferred()
    reported: list[Any] = []
    outer = carried_through(failed, lambda: True, reported.append)
    outer.cancel()
    failure_of(outer)
    failed.errback(ValueError("registry down"))
    assert len(reported) == 1 and reported[0].check(ValueError)


@pytest.mark.parametrize("fails", [False, True])
def test_the_goes_on_a_caller_is_told_fires_once_the_work_has_ended(fails: bool) -> None:
    """What must follow the work's own end (a watch's reread after a delete) waits for it there."""
    work: Deferred[str] = Deferred()
    reported: list[Any] = []
    outer = carried_through(work, lambda: True, reported.append)
    outer.cancel()
    going = failure_of(outer)
    assert isinstance(going, GoesOn)
    ended: list[int] = []
    going.ended.addCallback(lambda _: ended.append(len(reported)))
    assert not ended  # not when the caller stopped waiting
    if fails:
        work.errback(ValueError("registry down"))
    else:
        work.callback("done")
    assert ended == [1]  # after the outcome was reported, however it ended


def test_carried_through_relays_what_work_ends_with_when_nobody_cancels() -> None:
    work: Deferred[str] = Deferred()
    outer = carried_through(work, lambda: True, lambda outcome: pytest.fail("not orphaned"))
    work.callback("done")
    assert outer.result == "done"


# --- Waiters -----------------------------------------------------------------------------------------


def test_waiters_tell_only_those_waiting_and_a_cancel_leaves_the_others_waiting() -> None:
    waiters: Waiters[str] = Waiters()
    left: list[int] = []
    first, second = waiters.wait(lambda: left.append(len(waiters))), waiters.wait()
    first.cancel()
    # Off the list before on_leave runs: the owner sees who still waits.
    assert left == [1] and len(waiters) == 1 and not second.called
    waiters.fire("done")
    assert second.result == "done" and isinstance(failure_of(first), CancelledError)
    later = waiters.wait()  # after a fire, a caller waits for the next one
    assert not later.called and len(waiters) == 1
    waiters.fail(ValueError("broken"))
    assert isinstance(failure_of(later), ValueError) and len(waiters) == 0


def test_waiters_skip_a_waiter_cancelled_by_another_waiters_callback() -> None:
    waiters: Waiters[None] = Waiters()
    first, second = waiters.wait(), waiters.wait()
    first.addCallback(lambda _: second.cancel())
    waiters.fire(None)
    assert first.called and isinstance(failure_of(second), CancelledError)


# --- InFlight ----------------------------------------------------------------------------------------


class Work:
    """Coroutines for InFlight to start, each awaiting a Deferred the test fires."""

    def __init__(self) -> None:
        self.started: list[Deferred[str]] = []
        self.cancelled = 0

    def start(self) -> Any:
        def cancel(d: Deferred[str]) -> None:
            self.cancelled += 1

        self.started.append(Deferred(cancel))
        held = self.started[-1]

        async def work() -> str:
            return await held

        return work()


@pytest.mark.parametrize("cancel_when_abandoned", [False, True])
def test_in_flight_shares_one_run_per_key_and_tells_every_waiter(cancel_when_abandoned: bool) -> None:
    flights: InFlight[str, str] = InFlight(cancel_when_abandoned=cancel_when_abandoned)
    work = Work()
    a1, a2 = flights.join("a", work.start), flights.join("a", work.start)
    b = flights.join("b", work.start)
    assert len(work.started) == 2 and sorted(flights) == ["a", "b"]
    work.started[0].callback("one")
    work.started[1].errback(Failure(ValueError("two")))
    assert [d.result for d in (a1, a2)] == ["one", "one"]
    assert isinstance(failure_of(b), ValueError)
    assert len(flights) == 0
    again = flights.join("a", work.start)  # after its end, a key starts anew
    assert len(work.started) == 3 and not again.called


def test_in_flight_one_waiter_cancelling_neither_fails_the_others_nor_stops_the_work() -> None:
    flights: InFlight[str, str] = InFlight()
    work = Work()
    first, second = flights.join("k", work.start), flights.join("k", work.start)
    first.cancel()
    second.cancel()
    assert isinstance(failure_of(first), CancelledError) and isinstance(failure_of(second), CancelledError)
    assert work.cancelled == 0 and "k" in list(flights)
    late = flights.join("k", work.start)  # still the run in flight: what it keeps serves later callers
    work.started[0].callback("token")
    assert late.result == "token" and len(work.started) == 1


def test_in_flight_cancel_when_abandoned_stops_the_work_once_nobody_waits() -> None:
    flights: InFlight[str, str] = InFlight(cancel_when_abandoned=True)
    work = Work()
    first, second = flights.join("k", work.start), flights.join("k", work.start)
    first.cancel()
    assert work.cancelled == 0 and not second.called
    second.cancel()
    assert work.cancelled == 1 and len(flights) == 0
    assert isinstance(failure_of(first), CancelledError) and isinstance(failure_of(second), CancelledError)
    fresh = flights.join("k", work.start)  # a caller after the cancel starts the work anew
    assert len(work.started) == 2
    work.started[1].callback("again")
    assert fresh.result == "again"


def test_in_flight_work_that_ends_at_once_and_a_waiter_cancelled_while_others_are_told() -> None:
    flights: InFlight[str, str] = InFlight(cancel_when_abandoned=True)

    async def at_once() -> str:
        return "now"

    assert flights.join("k", at_once).result == "now" and len(flights) == 0
    work = Work()
    first, second = flights.join("k", work.start), flights.join("k", work.start)

    def cancel_second(result: str) -> str:
        second.cancel()
        return result

    first.addCallback(cancel_second)
    work.started[0].callback("v")
    assert first.result == "v" and isinstance(failure_of(second), CancelledError)


# --- Fresh -------------------------------------------------------------------------------------------


def test_fresh_tells_a_caller_only_a_run_started_after_it_asked_one_run_at_a_time() -> None:
    work = Work()
    fresh: Fresh[str] = Fresh(work.start)
    first = fresh.ask()
    late, later = fresh.ask(), fresh.ask()  # the run under way started before they asked
    assert len(work.started) == 1
    work.started[0].callback("old")
    assert first.result == "old" and not late.called and not later.called
    assert len(work.started) == 2  # the next run, shared by everyone who asked meanwhile
    work.started[1].errback(Failure(ValueError("new")))
    assert isinstance(failure_of(late), ValueError) and isinstance(failure_of(later), ValueError)
    again = fresh.ask()  # nothing under way: a run starts at once
    assert len(work.started) == 3 and not again.called


def test_fresh_callers_who_ask_again_as_they_are_told_share_the_next_run() -> None:
    work = Work()
    fresh: Fresh[str] = Fresh(work.start)
    asked_again: list[Deferred[str]] = []

    def ask_again(result: str) -> str:
        asked_again.append(fresh.ask())
        return result

    fresh.ask()
    for _ in range(2):
        fresh.ask().addCallback(ask_again)  # told the second run's outcome
    work.started[0].callback("one")
    work.started[1].callback("two")
    # Both asked again as they were told: one run after that, which they share.
    assert len(asked_again) == 2 and len(work.started) == 3
    work.started[2].callback("three")
    assert [d.result for d in asked_again] == ["three", "three"]


def test_fresh_cancels_a_run_nobody_waits_for_and_starts_the_next_for_who_asked_meanwhile() -> None:
    work = Work()
    fresh: Fresh[str] = Fresh(work.start)
    first = fresh.ask()
    waiting = fresh.ask()
    waiting.cancel()  # waiting for the next run: the one under way has its caller still
    assert work.cancelled == 0
    second = fresh.ask()
    first.cancel()
    assert work.cancelled == 1 and len(work.started) == 2
    work.started[1].callback("next")
    assert second.result == "next"
    assert isinstance(failure_of(first), CancelledError) and isinstance(failure_of(waiting), CancelledError)


def test_fresh_runs_that_end_at_once_do_not_nest() -> None:
    held: Deferred[int] = Deferred()
    runs = [0]

    async def answer() -> int:
        runs[0] += 1
        if runs[0] == 1:
            return await held
        return runs[0]  # at once, from the second run on

    fresh: Fresh[int] = Fresh(answer)

    async def caller(told: list[int]) -> None:
        while len(told) < 5000:  # past the interpreter's recursion limit, were each run a frame deeper
            told.append(await fresh.ask())

    first: list[int] = []
    second: list[int] = []
    ended = [run(caller(first)), run(caller(second))]
    held.callback(1)
    assert all(d.called for d in ended)
    # The second caller asked while the first run was under way; they shared every run after it.
    assert first == list(range(1, 5001)) and second == list(range(2, 5002))


def test_fair_slots_go_to_the_key_holding_fewest_then_in_turns() -> None:
    slots = FairSlots(2)
    given: list[str] = []

    def ask(key: str, name: str) -> Deferred[None]:
        waiter = slots.acquire(key)
        waiter.addCallback(lambda _: given.append(name))
        return waiter

    ask("a", "a1"), ask("a", "a2")
    waiting = [ask("a", "a3"), ask("a", "a4"), ask("b", "b1"), ask("b", "b2"), ask("c", "c1")]
    assert given == ["a1", "a2"] and slots.waiting == 5
    slots.release("a")  # a holds 1, b and c none: b first (it waited before c)
    slots.release("a")  # a none, b 1, c none: a waited first
    assert given == ["a1", "a2", "b1", "a3"]
    waiting[-1].cancel()  # c1 leaves: never given a slot
    waiting[-1].addErrback(lambda failure: failure.trap(CancelledError))
    slots.release("b")  # a 1, b none: b
    slots.release("a")
    assert given == ["a1", "a2", "b1", "a3", "b2", "a4"]
    assert slots.waiting == 0 and slots.held == 2


def test_fair_slots_given_to_holders_that_end_at_once_do_not_nest() -> None:
    slots = FairSlots(1)
    first = slots.acquire("a")
    ended: list[int] = []
    failures: list[Failure] = []

    def hold(_: None, i: int) -> None:  # and end at once
        ended.append(i)
        slots.release(f"k{i % 7}")

    for i in range(5000):  # past the interpreter's recursion limit, were each hand-on a frame deeper
        waiter = slots.acquire(f"k{i % 7}")
        waiter.addCallback(hold, i)
        waiter.addErrback(failures.append)
    assert first.called
    slots.release("a")
    assert failures == [] and len(ended) == 5000 and slots.held == 0


def test_fair_slots_of_equals_go_first_to_the_key_served_least_recently() -> None:
    """A key served goes to the end of the turns, though it still waits (review r2tokcap L1): without
    it, of keys holding alike the first to wait would drain its whole queue before the others."""
    slots = FairSlots(1)
    given: list[str] = []
    for key in ("b", "a", "a", "c"):
        slots.acquire(key).addCallback(lambda _, key: given.append(key), key)
    slots.release("b")  # a and c hold none: a waited first
    slots.release("a")  # a and c hold none: c, as a was just served
    assert given == ["b", "a", "c"]
    slots.release("c")
    assert given == ["b", "a", "c", "a"]


def test_fair_slots_hold_no_more_than_per_key_for_one_key() -> None:
    slots = FairSlots(4, per_key=2)
    given: list[str] = []

    def ask(key: str, name: str) -> None:
        slots.acquire(key).addCallback(lambda _: given.append(name))

    for i in range(1, 5):
        ask("a", f"a{i}")
    assert given == ["a1", "a2"] and slots.held == 2 and slots.waiting == 2  # two slots left free
    ask("b", "b1")
    ask("c", "c1")
    ask("b", "b2")
    assert given == ["a1", "a2", "b1", "c1"] and slots.waiting == 3
    slots.release("c")  # free, but a is at its cap: b's
    assert given == ["a1", "a2", "b1", "c1", "b2"]
    slots.release("b")
    slots.release("b")  # two slots free, a still at its cap
    assert given == ["a1", "a2", "b1", "c1", "b2"] and slots.held == 2 and slots.waiting == 2
    slots.release("a")  # a's next, one at a time as its holders end
    assert given[-1] == "a3" and slots.held == 2
    slots.release("a")
    assert given[-1] == "a4" and slots.held == 2 and slots.waiting == 0


def test_fair_slots_asked_during_a_hand_on_wait_behind_who_waited() -> None:
    """A holder given its slot ends at once and asks for another key: the slot it freed goes to the
    key that waited before, not to the new one."""
    slots = FairSlots(1)
    given: list[str] = []
    slots.acquire("x")

    def c_holds(_: None) -> None:
        given.append("c")
        slots.release("c")
        slots.acquire("e").addCallback(lambda _: given.append("e"))

    slots.acquire("c").addCallback(c_holds)
    slots.acquire("d").addCallback(lambda _: given.append("d"))
    slots.release("x")
    assert given == ["c", "d"] and slots.held == 1 and slots.waiting == 1
    slots.release("d")
    assert given == ["c", "d", "e"]
