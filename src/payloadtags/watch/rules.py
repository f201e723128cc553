"""Which rules decided what a watch's client holds, kept past the end of its stream.

A stream ends (its timeout, a dropped connection, a slow client cut) and client-go watches again from
the last resourceVersion it saw. A running watch ends with 410 when its user's rules change what it may
show (`Watcher.access_changed`); a change between two streams must be told as well, or the resumed
watch goes on from a client cache decided by the old rules (a revoked repository's tags kept, a
granted one's never sent).

So each scope's source keeps, per user and namespace, the rules last noted for her there and the
sequence they were noted at when they changed (``changed_at``: a number of its own, after every
resourceVersion issued under the old rules). A resume from below it is 410. The rules are noted when a
watch starts, at each access check for the users watching (`WatchHub.check_access`), and when a watch
ends (every set of rules that decided something it sent: rules granted and taken back between two
checks included). The rules noted first are no change. Bounded: past ``max_entries`` (user, namespace)
pairs in all, the least recently used user of a scope is forgotten and the scope's ``floor`` moves past
every resourceVersion issued so far: a resume of a scope from below its floor by a user with nothing
noted is 410. Entries go with their scope's source (`WatchHub.reap`), whose history a resume then
cannot use anyway. Each replica keeps its own, in its own numbers.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable

import attrs

from payloadtags.access.rbac import PathMatcher
from payloadtags.identity import UserInfo
from payloadtags.watch.source import ScopeSource

# (user, namespace) pairs kept in all: about 150 bytes each.
MAX_ENTRIES = 100_000


@attrs.define(eq=False)
class Noted:
    rules: PathMatcher
    # The sequence this user's rules here were seen changed at (0: never changed while noted).
    changed_at: int = 0


def _same(old: PathMatcher, new: PathMatcher) -> bool:
    return old is new or old.same_rules(new)


@attrs.define(eq=False)
class RulesLedger:
    max_entries: int = MAX_ENTRIES
    # Per (source, user), least recently used first: per namespace, the rules noted.
    entries: collections.OrderedDict[tuple[ScopeSource, UserInfo], dict[str, Noted]] = attrs.field(
        factory=collections.OrderedDict
    )
    size: int = 0
    # Per source: a user with nothing noted resuming from below it may have been forgotten.
    floors: dict[ScopeSource, int] = attrs.field(factory=dict)

    def admits(
        self,
        source: ScopeSource,
        user: UserInfo,
        namespaces: Iterable[str],
        rules_of: Callable[[str], PathMatcher],
        since: int | None,
        stamp: Callable[[], int],
    ) -> bool:
        """Notes ``user``'s rules now in ``namespaces`` (of ``source``'s scope) and in every namespace
        noted for her there before; whether a watch of hers from ``since`` (None: one that starts from
        a snapshot) may be served: no change of them after ``since``."""
        key = (source, user)
        mine = self.entries.get(key)
        if mine is None:
            mine = {}
            fresh = True
        else:
            self.entries.move_to_end(key)
            fresh = False
        admitted = since is None or not fresh or since >= self.floors.get(source, 0)
        for namespace in {*mine, *namespaces}:
            noted = self._note(mine, namespace, (rules_of(namespace),), rules_of, stamp)
            if since is not None and since < noted.changed_at:
                admitted = False
        if fresh and mine:
            self.entries[key] = mine
            self.size += len(mine)
            self._bound()
        return admitted

    def saw(
        self,
        source: ScopeSource,
        user: UserInfo,
        seen: Iterable[tuple[str, Iterable[PathMatcher]]],
        rules_of: Callable[[str], PathMatcher],
        stamp: Callable[[], int],
    ) -> None:
        """Notes the rules that decided what a watch of ``user`` sent, per namespace (``seen``), and
        those in force now: any that differ from the rules noted is a change."""
        key = (source, user)
        mine = self.entries.get(key)
        if mine is None:
            return  # forgotten (the bound): the scope's floor covers her resumes
        self.entries.move_to_end(key)
        before = len(mine)
        for namespace, rules in seen:
            self._note(mine, namespace, (*rules, rules_of(namespace)), rules_of, stamp)
        self.size += len(mine) - before
        self._bound()

    def recheck(
        self,
        source: ScopeSource,
        user: UserInfo,
        rules_of: Callable[[str], PathMatcher],
        stamp: Callable[[], int],
    ) -> None:
        """After a change of the access rules: notes ``user``'s rules now in each namespace noted."""
        for namespace, noted in self.entries.get((source, user), {}).items():
            now = rules_of(namespace)
            if not _same(noted.rules, now):
                noted.rules, noted.changed_at = now, stamp()

    def drop(self, source: ScopeSource, user: UserInfo) -> None:
        """Forgets ``user`` in ``source``'s scope (her rules could not be told): her resumes from before
        now are 410."""
        dropped = self.entries.pop((source, user), None)
        if dropped is not None:
            self.size -= len(dropped)
            self.floors[source] = self._stamp_floor(source)

    def forget(self, current: Callable[[ScopeSource], bool]) -> None:
        """Drops what was noted for sources that are no longer their scope's."""
        for key in [key for key in self.entries if not current(key[0])]:
            self.size -= len(self.entries.pop(key))
        self.floors = {source: floor for source, floor in self.floors.items() if current(source)}

    def _note(
        self,
        mine: dict[str, Noted],
        namespace: str,
        seen: tuple[PathMatcher, ...],
        rules_of: Callable[[str], PathMatcher],
        stamp: Callable[[], int],
    ) -> Noted:
        noted = mine.get(namespace)
        if noted is None:
            # Known from now on: the rules noted first are no change (one noted at a watch's start
            # decided all it sends; a list before it is the documented limit, docs/watch.md).
            noted = mine[namespace] = Noted(seen[-1])
            seen = seen[:-1]
        if any(not _same(noted.rules, rules) for rules in seen):
            noted.rules, noted.changed_at = rules_of(namespace), stamp()
        return noted

    def _bound(self) -> None:
        while self.size > self.max_entries and self.entries:
            (source, _), dropped = self.entries.popitem(last=False)
            self.size -= len(dropped)
            self.floors[source] = self._stamp_floor(source)

    def _stamp_floor(self, source: ScopeSource) -> int:
        # Past every resourceVersion issued so far: the sequence moves on (`ScopeSource.versions`).
        return source.versions.next()


__all__ = ["MAX_ENTRIES", "Noted", "RulesLedger"]
