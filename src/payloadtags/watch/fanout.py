"""A scope's new events on their way to its watchers: a bounded amount of work per reactor turn.

A resync that finds a thousand new tags in a scope a thousand clients watch makes a million event
lines. Handed to every watcher in the call that found them, each watcher rendering and writing each
one, they held the reactor for seconds, liveness probes included (300 watchers and 1,000 new tags:
8.6 s). Here an event is rendered once per form of output (``Lines``), whatever the number of watchers
that take it, and the watchers take the events in turns: each takes, in order and in one go, those it
has not taken yet, and all together take at most ``per_turn`` in one turn of the reactor; the others
wait for the next turns, which begin with the watchers that waited.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

if TYPE_CHECKING:
    from payloadtags.watch.source import Event

# Events handed to a scope's watchers in one turn of the reactor, all of them together: a few
# milliseconds of work (an event a watcher's selectors reject costs their check, one they choose an
# access decision, a couple of lookups in the authorizer's memos; one it shows a line of a write; the
# first watcher of each form renders it).
PER_TURN = 2000

# An event's lines by form of output, rendered by the first watcher of each form that takes it.
Lines = dict[Hashable, bytes]


class Subscriber(Protocol):
    # The sequence up to which the scope's events are this subscriber's past: it was handed them, or
    # what it started with covered them.
    taken: int

    def take(self, events: Sequence[Event], lines: Sequence[Lines]) -> None:
        """The events after ``taken``, in order, with the lines already rendered of each (shared)."""


@attrs.define(eq=False)
class Fanout:
    """Hands a source's events to its subscribers. Without a clock, everything in the call."""

    subscribers: set[Subscriber]
    clock: IReactorTime | None = None
    per_turn: int = PER_TURN
    # Events not yet handed to every subscriber, their sequences (for bisect) and lines.
    _events: list[Event] = attrs.field(factory=list)
    _sequences: list[int] = attrs.field(factory=list)
    _lines: list[Lines] = attrs.field(factory=list)
    _spent: int = 0
    # Marks the end of the current turn: the budget renews when it runs.
    _turn: IDelayedCall | None = None
    # The subscriber that goes first in the next turn (the one after the last served).
    _next: Subscriber | None = None

    def push(self, event: Event) -> None:
        self._events.append(event)
        self._sequences.append(event.sequence)
        self._lines.append({})
        if self.clock is None or self._spent < self.per_turn:
            self._hand()

    def behind(self, subscriber: Subscriber) -> bool:
        """Whether events wait for ``subscriber``: a bookmark at the newest sequence would pass them."""
        return bool(self._sequences) and subscriber.taken < self._sequences[-1]

    def waiting(self, subscriber: Subscriber) -> set[str]:
        """The repositories of the events not yet handed to ``subscriber``: what it shows of them is
        decided when they are, by the access rules in force then."""
        first = bisect.bisect_right(self._sequences, subscriber.taken)
        return {event.ref.repository for event in self._events[first:]}

    def _new_turn(self) -> None:
        self._turn = None
        self._spent = 0
        if self._events:
            self._hand()

    def _hand(self) -> None:
        if self.clock is not None and self._turn is None:
            self._turn = self.clock.callLater(0, self._new_turn)
        subscribers = list(self.subscribers)
        start = subscribers.index(self._next) if self._next in self.subscribers else 0
        newest = self._sequences[-1]
        for step in range(len(subscribers)):
            subscriber = subscribers[(start + step) % len(subscribers)]
            if subscriber.taken >= newest:
                continue
            left = self.per_turn - self._spent if self.clock is not None else len(self._events)
            if left <= 0:
                self._next = subscriber
                break
            first = bisect.bisect_right(self._sequences, subscriber.taken)
            end = min(len(self._events), first + left)
            self._spent += end - first
            subscriber.taken = self._sequences[end - 1]
            subscriber.take(self._events[first:end], self._lines[first:end])
            self._next = subscribers[(start + step + 1) % len(subscribers)]
        # What every subscriber has taken is needed no more.
        oldest = min((subscriber.taken for subscriber in self.subscribers), default=newest)
        done = bisect.bisect_right(self._sequences, oldest)
        if done:
            del self._events[:done], self._sequences[:done], self._lines[:done]


__all__ = ["PER_TURN", "Fanout", "Lines", "Subscriber"]
