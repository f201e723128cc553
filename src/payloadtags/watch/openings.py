"""The first events of watches from lists of unwatched scopes (openings), kept briefly so that a stream
cut among them resumes where it was cut.

An opening is private to the watch that needed it: its events take resourceVersions of their own (the
next numbers of the replica's sequence, one after the other) but are not kept in the scope's history
nor sent to its other watchers; a watch resumed from one of them is sent the rest of the opening, then
the scope's history after the opening's last event. Openings are bounded in total events and by age;
the oldest go first. What is left of one that went is its span of numbers: a watch resumed from inside
it is answered 410 Gone (its client relists), never the scope's history alone, which lacks the rest of
the opening. Spans are bounded too (``max_spans``); past that the oldest goes, and the scope's history
no longer serves watches from before its end (`WatchHub`).
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable

import attrs

from payloadtags.watch.source import Event, ScopeSource


@attrs.define(eq=False)
class Opening:
    """One opening: its events (all of them, whoever may see them), numbered ``first`` to ``last`` one
    after the other; the scope's history continues after ``last``."""

    source: ScopeSource
    events: list[Event]
    kept_at: float
    first: int
    last: int
    dropped: bool = False

    def after(self, sequence: int) -> list[Event]:
        """The events of the opening after ``sequence`` (one of them)."""
        return self.events[sequence - self.first + 1 :]


@attrs.define(eq=False)
class Openings:
    max_events: int = 100_000
    max_spans: int = 10_000
    # Told the opening whose span is forgotten (past ``max_spans``), still above its source's floor.
    on_forget: Callable[[Opening], None] = lambda opening: None
    # Every opening kept or dropped whose span may still be resumed from, oldest first (by numbers,
    # which is by time too).
    spans: collections.deque[Opening] = attrs.field(factory=collections.deque)
    # The openings whose events are kept, oldest first.
    kept: collections.deque[Opening] = attrs.field(factory=collections.deque)
    size: int = 0

    def keep(self, source: ScopeSource, events: list[Event], now: float) -> None:
        if not events:
            return
        opening = Opening(source, events, now, events[0].sequence, events[-1].sequence)
        self.spans.append(opening)
        self.kept.append(opening)
        self.size += len(events)
        while self.size > self.max_events:
            self._drop(self.kept[0])
        while len(self.spans) > self.max_spans:
            forgotten = self.spans.popleft()
            self._drop(forgotten)
            self.on_forget(forgotten)

    def find(self, source: ScopeSource, sequence: int) -> Opening | None:
        """The opening of ``source`` that ``sequence`` is inside of (not its last event: what follows
        that is the scope's history), kept or dropped."""
        index = bisect.bisect_left(self.spans, sequence, key=lambda opening: opening.last)
        if index < len(self.spans):
            opening = self.spans[index]
            if opening.first <= sequence < opening.last and opening.source is source:
                return opening
        return None

    def expire(self, before: float, current: Callable[[ScopeSource], bool]) -> None:
        """Drops the events of openings kept since before ``before``, and forgets the spans nobody can
        resume from any more (below their source's floor, or of a source that is no longer
        ``current``)."""
        while self.kept and self.kept[0].kept_at < before:
            self._drop(self.kept[0])
        spans: collections.deque[Opening] = collections.deque()
        for opening in self.spans:
            if current(opening.source) and opening.last >= opening.source.floor:
                spans.append(opening)
            else:
                self._drop(opening)
        self.spans = spans

    def _drop(self, opening: Opening) -> None:
        if not opening.dropped:
            opening.dropped = True
            self.size -= len(opening.events)
            opening.events = []
            if self.kept and self.kept[0] is opening:
                self.kept.popleft()
            else:
                # Rare (a forgotten span that still had its events): not at the front.
                self.kept = collections.deque(kept for kept in self.kept if kept is not opening)


__all__ = ["Opening", "Openings"]
