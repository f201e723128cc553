"""`LateWrites.wait_out`: the one wait for a process's writes that may still land in a namespace."""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from payloadtags.registry import LateWrites


def outcome(waiting: Deferred[Any]) -> list[object]:
    """What ``waiting`` fired with, once it has (empty until then)."""
    fired: list[object] = []
    waiting.addBoth(fired.append)
    return fired


def test_nothing_to_wait_for_fires_at_once() -> None:
    clock = Clock()
    late = LateWrites(clock)
    assert outcome(late.wait_out("team", deadline=10.0)) == [None]
    late.note("team", "repairing dangling tag team/app:v1", until=0.0)  # its time already passed
    late.sent("other", "deleting tag other/app:v1")  # another namespace's
    assert outcome(late.wait_out("team", deadline=10.0)) == [None]
    assert clock.getDelayedCalls() == []


def test_waits_for_every_write_out_then_for_an_unanswered_ones_time() -> None:
    """Two writes out: one answered, one unanswered with a grace time. Woken by their ends, then by the
    grace's end, well before the deadline; no timer left behind."""
    clock = Clock()
    late = LateWrites(clock)
    answered = late.sent("team", "deleting tag team/app:v1")
    unanswered = late.sent("team", "repairing dangling tag team/app:v2")
    fired = outcome(late.wait_out("team", deadline=100.0))
    [deadline] = clock.getDelayedCalls()
    assert deadline.getTime() == 100.0  # while a write is out, only the deadline is a time to wake at
    clock.advance(1.0)
    late.ended("team", answered, None)
    assert fired == []  # the other is still out
    late.ended("team", unanswered, 5.0)  # may land until 6.0
    assert fired == []
    [grace] = clock.getDelayedCalls()
    assert grace.getTime() == 6.0
    late.note("team", "deleting tag team/app:v3", until=8.0)  # a later one, noted meanwhile
    clock.advance(5.0)
    assert fired == []
    clock.advance(2.0)
    assert fired == [None]
    assert clock.getDelayedCalls() == []


def test_the_deadline_first_gives_the_write_still_out() -> None:
    clock = Clock()
    late = LateWrites(clock)
    late.sent("team", "deleting tag team/app:v1")
    fired = outcome(late.wait_out("team", deadline=10.0))
    clock.advance(9.0)
    assert fired == []
    clock.advance(1.0)
    assert fired == [("deleting tag team/app:v1", math.inf)]
    assert clock.getDelayedCalls() == []


def test_a_write_that_may_land_past_the_deadline_gives_it_at_once() -> None:
    """Nothing shortens a write's time: known past the deadline, it is answered then, not at the
    deadline; as is a write out that ends unanswered with a grace past it."""
    clock = Clock()
    late = LateWrites(clock)
    late.note("team", "repairing dangling tag team/app:v1", until=20.0)
    assert outcome(late.wait_out("team", deadline=20.0)) == [("repairing dangling tag team/app:v1", 20.0)]
    number = late.sent("other", "deleting tag other/app:v1")
    fired = outcome(late.wait_out("other", deadline=10.0))
    clock.advance(1.0)
    late.ended("other", number, 30.0)
    assert fired == [("deleting tag other/app:v1", 31.0)]
    assert clock.getDelayedCalls() == []


def test_the_write_first_ends_the_wait_before_the_deadline() -> None:
    clock = Clock()
    late = LateWrites(clock)
    number = late.sent("team", "deleting tag team/app:v1")
    fired = outcome(late.wait_out("team"))  # no deadline: only the write's end wakes it
    assert clock.getDelayedCalls() == []
    late.ended("team", number, None)
    assert fired == [None]


def test_a_cancelled_wait_leaves_nothing_behind() -> None:
    """The request waiting goes away: its wait is cancelled, and neither its timer nor its place among
    the namespace's waiters stays (a later end of the write wakes nobody)."""
    clock = Clock()
    late = LateWrites(clock)
    number = late.sent("team", "deleting tag team/app:v1")
    waiting = late.wait_out("team", deadline=10.0)
    other = outcome(late.wait_out("team", deadline=10.0))
    failed = outcome(waiting)
    waiting.cancel()
    [failure] = failed
    assert isinstance(failure, Failure) and failure.check(CancelledError)
    assert len(clock.getDelayedCalls()) == 1  # the other wait's
    late.ended("team", number, None)
    assert other == [None]
    assert clock.getDelayedCalls() == []
    assert late._woken == {}
