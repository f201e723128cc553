"""What a server does once it has been quiet a while after serving lists: forget what they left.

A list of a big namespace fills the caches its requests share (the item makers of its repositories,
its continue tokens' parts, the names of its tags), and those entries outlive it: each bounded, they
are the few blocks left in the arenas of 1 MiB that Python's allocator took for the list's short-lived
objects, and an arena goes back to the system only once all of it is free. The walks and the watch
hub's list records free themselves after their lifetimes; these are only ever pushed out by newer
entries. So, once no list has begun for ``after`` seconds (checked every ``after / 3``) and what
frees itself later is gone (``held``: the list records, kept ``--watch-scope-idle-timeout`` after
their last use, a list's or a watch's from its resourceVersion) or has been waited for
``held_at_most`` (a client watching again and again from its list's resourceVersion keeps its record
for as long as it does so), they are emptied, once per quiet spell: the next request makes its
entries again, at the cost of its first request (a few microseconds a repository). Everything runs
on ``clock``, in a turn of its own, on no request's path. With ``after`` from `quiet_after` no list
is still being served then: the last one began longer ago than its deadline, which ends it, its
streaming included. Watches are not lists: they may be served meanwhile (their next events wait that
turn), and what they hold stays theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

# After the walks' lifetime (60 s after a walk's last page, freed within 90 s) and, at the default
# --watch-scope-idle-timeout, the watch hub's list records' (120 s unused, dropped within 180 s): what
# they kept is gone by then too. Records kept longer (a longer timeout, a watch from a list's
# resourceVersion using its record later) are waited for (`WhenQuiet.held`), up to 1.5 timeouts more.
QUIET_AFTER = 180.0
# Past a list's deadline: the two minutes the default deadline (60 s) leaves of QUIET_AFTER, which
# outlast its walk (freed within 90 s of its last page).
_AFTER_THE_DEADLINE = 120.0


def quiet_after(request_timeout: float) -> float:
    """How long no list may have begun before the server goes quiet: QUIET_AFTER, or longer where
    ``--request-timeout`` lets a list last longer, so that none is still being served then."""
    return max(QUIET_AFTER, request_timeout + _AFTER_THE_DEADLINE)


@attrs.define(eq=False)
class WhenQuiet:
    """Runs ``actions`` once after each spell of lists, when ``begun`` (the lists begun so far) has not
    changed for ``after`` seconds and ``held`` answers False, or ``held_at_most`` seconds after that."""

    clock: IReactorTime
    begun: Callable[[], int]
    actions: Sequence[Callable[[], object]]
    after: float = QUIET_AFTER
    # Whether what lists left that frees itself later is still there (the watch hub's list records):
    # the actions wait for it to go, else what it held would stay in the heap and the arenas until
    # the next spell's action (review r10quiet L1).
    held: Callable[[], bool] = lambda: False
    # How long past ``after`` ``held`` is waited for at most: what is still held then is kept by its
    # users (a watch from a list's resourceVersion renewing its record), and waiting frees none of it;
    # and a ``held`` that answers True for good (the hub's reap loop stopped) costs no later spell
    # its actions (review r12quiet L1, N1).
    held_at_most: float = float("inf")
    _seen: int = 0
    _since: float = 0.0
    _done: bool = True  # nothing served yet: nothing to forget
    _loop: LoopingCall | None = None

    def run(self) -> None:
        self._seen, self._since = self.begun(), self.clock.seconds()
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.after / 3, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def check(self) -> None:
        begun, now = self.begun(), self.clock.seconds()
        if begun != self._seen:
            self._seen, self._since, self._done = begun, now, False
            return
        if self._done:
            return
        # ``after`` is three looks; ``held`` is waited for until the first look due at or after
        # ``after + held_at_most``.
        looks = self._looks_since(now)
        # Compared in looks, with a tolerance: a bound of a whole number of looks must not miss its
        # look by float noise in the settings (review r15quiet L1).
        if looks >= 3 and (looks >= 3 + self.held_at_most / (self.after / 3) - 1e-9 or not self.held()):
            self._done = True
            for action in self.actions:
                # One that fails must cost neither the actions after it nor the later spells: the
                # LoopingCall stops for good at the first exception that escapes.
                try:
                    action()
                except Exception:
                    log.failure("a quiet action failed: {action!r}", action=action)

    def _looks_since(self, now: float) -> int:
        """The looks since the one that saw the last list begin (``_since``), each ``after / 3``.
        Counted rather than timed: the loop's looks are due at whole intervals from its start, but each
        runs at or after its time, late by an amount that varies, so the time between two is off by
        that; timed, a first look late by a millisecond cost a whole look more (review r14misc L1).
        A look later than half an interval counts as the next one. A list that began while the look
        that saw it was late has begun that much less than ``after`` before the action: within the 2
        minutes ``quiet_after`` leaves past a list's deadline unless the reactor stalled for longer
        (or half a look, ``after / 6``, is longer, past --request-timeout=10m); such a list is over
        by its deadline all the same, and one still running would only fill the caches again."""
        return round((now - self._since) / (self.after / 3))
