"""The tag-list rereads registry notifications ask for, a few at a time.

A notification names one repository, and every watched scope covering it rereads that repository's
tag list through the registry client's connection slots, the ones lists and gets wait on too. Started
as they arrive, a burst of notifications (pushes to many repositories at once, or a token holder's
flood) would queue its reads ahead of every user's (review r1events L1); taken from a queue of their
own, they hold at most ``concurrency`` repositories' reads at a time, and a burst only waits longer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from payloadtags.onceper import OncePerPeriod

log = Logger()

# Repositories whose rereads run at once: each may be read by two sources (its namespace's and the
# all-namespaces one), so 4 take at most 8 of the registry client's 16 default connection slots.
CONCURRENCY = 4
# Repositories waiting: one more is dropped (said once per period). Nothing is lost for good: the
# watch resync reads every watched scope, the dropped repository included.
MAX_PENDING = 10_000
DROPPED_LOG_PERIOD = 60.0


@attrs.define
class NotificationRereads:
    """A deduplicated queue of repositories to reread, drained ``concurrency`` at a time."""

    # Starts the rereads of one repository; returns them (none when each source reads it already).
    reread: Callable[[str], Sequence[Deferred[None]]]
    concurrency: int = CONCURRENCY
    max_pending: int = MAX_PENDING
    monotonic: Callable[[], float] = time.monotonic
    _pending: dict[str, None] = attrs.field(factory=dict, init=False)
    _running: int = attrs.field(default=0, init=False)
    _starting: bool = attrs.field(default=False, init=False)
    _dropped: OncePerPeriod[None] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._dropped = OncePerPeriod(DROPPED_LOG_PERIOD, self.monotonic)

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        return self._running

    def add(self, repository: str) -> None:
        """Asks for one reread of ``repository``; one waiting already answers this one too."""
        if repository not in self._pending:
            if len(self._pending) >= self.max_pending:
                said = self._dropped(None)
                if said is not None:
                    log.warn(
                        "registry notifications: {max} repositories wait for their reread; the "
                        "others' are dropped, and watches see their changes at the next resync{more}",
                        max=self.max_pending,
                        more=said.more(),
                    )
                return
            self._pending[repository] = None
        self._start()

    def _start(self) -> None:
        # Not re-entered: a repository whose rereads end at once (none started) ends inside this
        # loop, which then goes on; recursing there would go as deep as the queue is long.
        if self._starting:
            return
        self._starting = True
        try:
            while self._running < self.concurrency and self._pending:
                repository = next(iter(self._pending))
                del self._pending[repository]
                self._running += 1
                Deferred.fromCoroutine(self._one(repository))
        finally:
            self._starting = False

    async def _one(self, repository: str) -> None:
        try:
            # A reread's own failure is logged where it happens (and its Deferred keeps it).
            await DeferredList(list(self.reread(repository)))
        finally:
            self._running -= 1
            self._start()


__all__ = ["NotificationRereads"]
