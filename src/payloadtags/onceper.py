"""Once per period per key: the rate limit of the log lines that say a lasting failure.

A failure that lasts (a cluster API that refuses, a registry that is down, a readiness check that
fails, a Lease that cannot be written) is met on every retry or probe; said every time, it would fill
the log. Each of those logs says it once, then at most once per period per cause (its key), and the
next line counts the ones left out since. This is that table, kept in one place; the words stay with
each log.

Timed on ``monotonic`` (a reactor ``Clock``'s ``seconds`` in tests): on the wall clock, stepped back,
every line would be left out for as long as the step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

import attrs

K = TypeVar("K", bound=Hashable)

# Keys are causes, a handful per log; the bound only keeps a log whose keys were to grow (a bug, or
# words chosen by a caller) from holding them all.
MAX_KEYS: Final = 256


@attrs.frozen
class Said:
    """A key said again: how many times it was left out since it was last said, ``since`` seconds
    ago (None when it was not said before, or was forgotten)."""

    suppressed: int
    since: float | None

    def more(self) -> str:
        """The usual suffix of the line: the count left out and the interval it was counted in (the
        period, or much longer when the failures had stopped); empty when none was left out."""
        if not self.suppressed or self.since is None:
            return ""
        return f" ({self.suppressed} more like it in the {self.since:.0f}s since the last line)"

    def ended(self, like: str = "the last line") -> str:
        """The suffix of the line that ends an episode (the failures stopped): the count left out
        since ``like`` (the last line said of the key, as the reader finds it in the log) and the
        time they were counted in; empty when none was left out."""
        if not self.suppressed or self.since is None:
            return ""
        return f" ({self.suppressed} more like {like} in the {self.since:.0f}s after it)"


@attrs.define
class OncePerPeriod(Generic[K]):
    """Lets each key through at most once per ``period``, counting the times it was held back.

    At most ``max_keys`` keys are kept: when a new key would pass the bound, those whose period is
    over with nothing held back go first (forgetting them changes nothing: they would pass, and have
    nothing to count), then the ones said longest ago."""

    period: float
    monotonic: Callable[[], float] = time.monotonic
    max_keys: int = MAX_KEYS
    # Ordered by when each key was last let through, oldest first.
    _last: dict[K, float] = attrs.field(factory=dict, init=False)
    _suppressed: dict[K, int] = attrs.field(factory=dict, init=False)

    def __call__(self, key: K) -> Said | None:
        """None when ``key`` was let through less than ``period`` ago (this time is counted);
        otherwise what was held back since it last was, and the key's period starts again."""
        now = self.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if last is None:
            self._make_room(now)
        else:
            del self._last[key]  # to the end: the order is the order of the lines
        self._last[key] = now
        return Said(self._suppressed.pop(key, 0), None if last is None else now - last)

    def forget(self, key: K) -> Said | None:
        """Ends ``key``'s period: it is let through at once next time, counting nothing. What was
        held back since it was last said, or None when it was not (or was forgotten already)."""
        last = self._last.pop(key, None)
        suppressed = self._suppressed.pop(key, 0)
        if last is None:
            return None
        return Said(suppressed, self.monotonic() - last)

    def over(self, key: K, like: str = "the last line") -> str:
        """Ends ``key``'s episode (`forget`): the suffix of a line saying the ones left out since its
        last line (`Said.ended`), to be logged once, or empty when none was (nothing to say). They
        belong to this episode, not the next, whose first line is said at once."""
        ended = self.forget(key)
        return "" if ended is None else ended.ended(like)

    def __len__(self) -> int:
        return len(self._last)

    def _make_room(self, now: float) -> None:
        if len(self._last) < self.max_keys:
            return
        for key, last in list(self._last.items()):
            if now - last >= self.period and key not in self._suppressed:
                del self._last[key]
        while len(self._last) >= self.max_keys:
            oldest = next(iter(self._last))
            del self._last[oldest]
            self._suppressed.pop(oldest, None)
