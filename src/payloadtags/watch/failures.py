"""The log of the registry reads the watch sources make (a scope's resync, one repository's read).

A registry that is down fails every source's resync at every period, and the first read of every
scope a watch asks for: said once a scope and read, the log's volume would be set by the number of
watched scopes, or by a client's rate of watch requests (review r1obs F1). One log shared by a hub's
sources says each cause (the kind of read and the error's type) once per period, naming the scope
or repository it came from, and counts the rest; the registry's own log (`FailureLog`) says the
failure too. Once a resync passes and no other scope's last one failed, the resyncs pass again: the
ones left out since the last line are counted then, and a failure after that is said at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import attrs
from twisted.logger import Logger

from payloadtags.onceper import OncePerPeriod

log = Logger()

LOG_PERIOD: Final = 30.0

_RESYNC: Final = "resync"
_READ: Final = "read"


def _scope(namespace: str | None) -> str:
    return namespace or "all namespaces"


def _error(error: BaseException) -> str:
    return str(error) or repr(error)


@attrs.define
class ReadFailures:
    """Once per ``period`` per cause, for every source of a hub. Timed on ``monotonic``: on the
    reactor's wall clock, stepped back, every line would be left out for as long as the step."""

    monotonic: Callable[[], float]
    period: float = LOG_PERIOD
    _once: OncePerPeriod[tuple[str, str]] = attrs.field(init=False)
    # The scopes whose last resync failed: the episode lasts while one does. Bounded by the hub's
    # sources: a dropped one leaves it (`dropped`).
    _failing: set[str | None] = attrs.field(factory=set, init=False)
    # The causes of the resync failures of the episode (error types: a handful), each with the scope
    # its last line named (when one was said), which the line that ends the episode points to.
    _causes: dict[str, str | None] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self._once = OncePerPeriod(self.period, self.monotonic)

    def resync_failed(self, namespace: str | None, error: BaseException) -> None:
        self._failing.add(namespace)
        cause = type(error).__name__
        said = self._once((_RESYNC, cause))
        if said is None:
            self._causes.setdefault(cause, None)
            return
        self._causes[cause] = _scope(namespace)
        log.warn(
            "watch resync of {scope} failed: {error}{more}",
            scope=_scope(namespace),
            error=_error(error),
            # Of every scope: the cause is the registry's, not the scope's.
            more=said.more(),
            kind=type(error).__name__,
        )

    def resync_passed(self, namespace: str | None) -> None:
        self._failing.discard(namespace)
        if self._causes and not self._failing:
            self._episode_over()

    def dropped(self, namespace: str | None) -> None:
        """The hub dropped the scope's source (and cancelled its resync under way, whose failure
        would put it back): its resyncs no longer tell whether the cause lasts, and the next resync
        of another scope that passes ends the episode. Its going is no pass: the registry may be
        down still."""
        self._failing.discard(namespace)

    def read_failed(self, repository: str, error: BaseException) -> None:
        # A repository's read that passes says nothing of another's (one may be refused alone):
        # these lines are only ever limited by the period.
        said = self._once((_READ, type(error).__name__))
        if said is None:
            return
        log.warn(
            "watch read of {repository} failed: {error}; the next resync covers it{more}",
            repository=repository,
            error=_error(error),
            more=said.more(),
            kind=type(error).__name__,
        )

    def _episode_over(self) -> None:
        causes, self._causes = self._causes, {}
        for cause, scope in sorted(causes.items()):
            # Named, with the scope of the line it counts after: with two causes, two lines that did
            # not say which would each seem to count after the same last line (review r2obs N1).
            like = "the last line" if scope is None else f"the last line, about {scope},"
            more = self._once.over((_RESYNC, cause), like=like)
            if not more:
                continue
            log.info("watch resyncs pass again after {cause}{more}", cause=cause, more=more, kind=cause)
