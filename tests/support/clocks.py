"""A Clock that moves on by itself, for waits a test needs ended rather than timed."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock


class SkipAhead(Clock):
    """A clock that moves on to each call scheduled on it, from the next reactor turn: a wait on it
    takes no real time, and its calls fire in their order, each at the time it asked for.

    For the registry client's watch of an unanswered write (`RegistryClient`'s ``landing_clock``)
    where the test lets the write land only after the watch: the watch, while it is the clock's only
    user, reads the tag as often as on the reactor (watches that overlap move one clock, each reading
    less often) and ends at its own deadline, without the seconds of real time it cost every such test.
    A test that proves a write landing within the watch is caught keeps the reactor, or drives a
    Clock of its own to the watch's last pause."""

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> IDelayedCall:
        call = super().callLater(delay, callable, *args, **kw)
        global_reactor.callLater(0, self._next)
        return call

    def _next(self) -> None:
        # Only as far as the earliest call still pending: a later one's time is not skipped past it.
        if self.calls:
            self.advance(self.calls[0].getTime() - self.seconds())
