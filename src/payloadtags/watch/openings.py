"""The first events of watches from lists of unwatched scopes (openings), kept briefly so that a stream
cut among them resumes where it was cut.

An opening is private to the watch that needed it: it holds only the events that watch may be sent (its
selectors, its user's access when it starts), each with a resourceVersion of its own (the next numbers
of the replica's sequence, one after the other); they are not kept in the scope's history nor sent to
its other watchers. A watch of the same user with the same selectors resumed from one of them is sent
the rest of the opening, then the scope's history after the opening's last event.

Openings are bounded per user (``max_user_events``, ``max_user_spans``) and in all (``max_events``,
``max_spans``): a user over her bound loses her own oldest openings first, and one opening larger than
a user may keep is not kept at all, so neither pushes other users' openings out. What is left of an
opening that went is its span of numbers: a watch resumed from inside it is answered 410 Gone (its
client relists), never the scope's history alone, which lacks the rest of the opening. Past the bound
on spans, the oldest two of the user (in all: the oldest two) are merged into one span covering both:
a watch resumed from anywhere inside that interval, the scope's events between them included, is
answered 410 too, while resumes from outside it are served as before. No scope's history is ever cut
short because of openings.
"""

from __future__ import annotations

import bisect
import collections
import heapq
from collections.abc import Callable, Hashable, Iterator

import attrs

from payloadtags.watch.source import Event, HistoryLost, ScopeSource


@attrs.define(eq=False)
class Opening:
    """One opening of ``user``'s watch: the events it may be sent, numbered ``first`` to ``last`` one
    after the other; the scope's history continues after ``last``."""

    source: ScopeSource
    user: str
    events: list[Event]
    kept_at: float
    first: int
    last: int
    dropped: bool = False
    # The selectors of the watch it was made for (`Watcher.selectors`): they chose what it holds.
    selectors: Hashable = None
    # Whom its user's access decided it for (`WatchHub._identity`): the same name with other groups or
    # another uid may read other repositories.
    identity: Hashable = None

    @property
    def sources(self) -> frozenset[ScopeSource]:
        return frozenset((self.source,))

    def after(self, sequence: int) -> Iterator[Event]:
        """The events of the opening after ``sequence`` (one of them), taken as they are iterated, not
        copied; HistoryLost when the opening is dropped before they are all taken."""
        index = sequence - self.first + 1
        while True:
            # By its span, not its events (a dropped opening has none): a watch that took the last one
            # needs nothing more of it, dropped or not.
            if index > self.last - self.first:
                return
            if self.dropped:
                raise HistoryLost(self.source.namespace)
            yield self.events[index]
            index += 1


@attrs.define(eq=False)
class Merged:
    """Spans merged past a bound: every resume from inside (``first`` up to, not including, ``last``)
    of one of ``sources`` is 410 Gone. ``user`` None: merged from several users' spans."""

    sources: frozenset[ScopeSource]
    user: str | None
    first: int
    last: int


Span = Opening | Merged


@attrs.define(eq=False)
class Openings:
    max_events: int = 100_000
    max_spans: int = 10_000
    max_user_events: int = 20_000
    max_user_spans: int = 1_000
    # Every opening whose own span is still known (kept or dropped), by numbers (which is by time).
    exact: list[Opening] = attrs.field(factory=list)
    merged: list[Merged] = attrs.field(factory=list)
    # Per user (None: merged from several users), her spans, oldest first.
    spans_of: dict[str | None, collections.deque[Span]] = attrs.field(factory=dict)
    spans: int = 0
    # The openings whose events are kept, oldest first, in all and per user; dropped ones are skipped
    # (and cleared out now and then).
    kept: collections.deque[Opening] = attrs.field(factory=collections.deque)
    kept_of: dict[str, collections.deque[Opening]] = attrs.field(factory=dict)
    live: int = 0
    size: int = 0
    size_of: collections.Counter[str] = attrs.field(factory=collections.Counter)

    @property
    def bound(self) -> int:
        """The most events one opening may have and be kept."""
        return min(self.max_user_events, self.max_events)

    def keep(
        self,
        source: ScopeSource,
        user: str,
        first: int,
        last: int,
        events: list[Event] | None,
        now: float,
        selectors: Hashable = None,
        identity: Hashable = None,
    ) -> None:
        """Keeps the opening numbered ``first`` to ``last``: its ``events`` (those ``selectors`` chose),
        or None when it has more than ``bound`` (only its span is kept); ``identity``, whom it was decided
        for."""
        if last < first:
            return
        opening = Opening(
            source, user, events or [], now, first, last, selectors=selectors, identity=identity
        )
        self.exact.append(opening)
        self.spans_of.setdefault(user, collections.deque()).append(opening)
        self.spans += 1
        if events is None or len(events) > self.bound:
            # Not kept, and nobody else's opening goes for it: a resume from inside it is 410.
            opening.dropped = True
            opening.events = []
        else:
            self.kept.append(opening)
            self.kept_of.setdefault(user, collections.deque()).append(opening)
            self.live += 1
            self.size += len(events)
            self.size_of[user] += len(events)
            while self.size_of[user] > self.max_user_events:
                self._drop(self.kept_of[user][0])
            while self.size > self.max_events:
                self._drop(self.kept[0])
        while len(self.spans_of[user]) > self.max_user_spans:
            mine = self.spans_of[user]
            self._merge(mine[0], mine[1])
        while self.spans > self.max_spans:
            self._merge(*self._oldest_two())

    def find(self, source: ScopeSource, sequence: int) -> Span | None:
        """The span of ``source`` that ``sequence`` is inside of (an opening: not its last event, after
        which comes the scope's history), or None."""
        index = bisect.bisect_left(self.exact, sequence, key=lambda opening: opening.last)
        if index < len(self.exact):
            opening = self.exact[index]
            if opening.first <= sequence and opening.source is source:
                return opening if sequence < opening.last else None
        for merged in self.merged:
            if merged.first <= sequence < merged.last and source in merged.sources:
                return merged
        return None

    def expire(self, before: float, current: Callable[[ScopeSource], bool]) -> None:
        """Drops the events of openings kept since before ``before``, and forgets the spans nobody can
        resume from any more (below their sources' floors, or of sources no longer ``current``)."""
        while self.kept and self.kept[0].kept_at < before:
            self._drop(self.kept[0])

        def alive(span: Span) -> bool:
            return any(current(source) and span.last >= source.floor for source in span.sources)

        for opening in self.exact:
            if not alive(opening):
                self._drop(opening)
        self.exact = [opening for opening in self.exact if alive(opening)]
        self.merged = [merged for merged in self.merged if alive(merged)]
        spans_of: dict[str | None, collections.deque[Span]] = {}
        for user, spans in self.spans_of.items():
            left = collections.deque(span for span in spans if alive(span))
            if left:
                spans_of[user] = left
        self.spans_of = spans_of
        self.spans = sum(len(spans) for spans in spans_of.values())
        self.kept = collections.deque(opening for opening in self.kept if not opening.dropped)
        self.kept_of = {}
        for opening in self.kept:
            self.kept_of.setdefault(opening.user, collections.deque()).append(opening)

    def _oldest_two(self) -> tuple[Span, Span]:
        heads = [spans[0] for spans in self.spans_of.values()]
        heads += [spans[1] for spans in self.spans_of.values() if len(spans) > 1]
        older, newer = heapq.nsmallest(2, heads, key=lambda span: span.first)
        return older, newer

    def _merge(self, older: Span, newer: Span) -> None:
        """Replaces the two oldest spans of a user (or in all) by one covering both."""
        user = older.user if older.user == newer.user else None
        merged = Merged(older.sources | newer.sources, user, older.first, max(older.last, newer.last))
        for span in (older, newer):
            # Each is the oldest of its user's spans once the one before it is gone.
            removed = self.spans_of[span.user].popleft()
            assert removed is span, (removed, span)
            if not self.spans_of[span.user]:
                del self.spans_of[span.user]
            if isinstance(span, Opening):
                self._drop(span)
                self.exact.remove(span)
            else:
                self.merged.remove(span)
        self.spans -= 1
        self.merged.append(merged)
        self.spans_of.setdefault(user, collections.deque()).appendleft(merged)

    def _drop(self, opening: Opening) -> None:
        if opening.dropped:
            return
        opening.dropped = True
        self.live -= 1
        self.size -= len(opening.events)
        self.size_of[opening.user] -= len(opening.events)
        if self.size_of[opening.user] <= 0:
            del self.size_of[opening.user]
        opening.events = []
        # Dropped openings are cleared out of the front of the queues, and out of all of the queue
        # once it holds mostly dropped ones (a user's openings dropped for her bound, behind others').
        while self.kept and self.kept[0].dropped:
            self.kept.popleft()
        if len(self.kept) > 2 * self.live + 64:
            self.kept = collections.deque(kept for kept in self.kept if not kept.dropped)
        mine = self.kept_of[opening.user]
        while mine and mine[0].dropped:
            mine.popleft()
        if len(mine) > 2 * self.size_of[opening.user] + 64:
            mine = self.kept_of[opening.user] = collections.deque(kept for kept in mine if not kept.dropped)
        if not mine:
            del self.kept_of[opening.user]


__all__ = ["Merged", "Opening", "Openings", "Span"]
