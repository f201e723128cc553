"""The registry's repository names kept in memory, fed by registry notifications.

distribution 2.8 answers ``/v2/_catalog?last=<namespace>`` by walking its storage from the first
repository, so seeking a namespace costs as much as the catalog before it. The index answers a namespace's
repositories from memory instead: a full catalog read fills it (and, periodically, repairs missed
events), push notifications add new repositories between reads. Names are never removed: the registry
keeps repositories whose tags were all deleted in its catalog too (their tag list is empty).
"""

from __future__ import annotations

import bisect
import time

from twisted.logger import Logger

from payloadtags.registry import Catalog
from payloadtags.registry.content import catalog_key, digit_nested, skipped_by_seek

log = Logger()

CATALOG_PAGE = 1000
# Names events may add between two refreshes: this many, or as many as the last refresh read if
# more. Past it the index takes no more, and namespace lists seek the catalog again until the next
# refresh (review r1events L2): a token holder's flood of made-up names costs that, not memory.
MIN_ADDED_BETWEEN_REFRESHES = 10_000

Key = tuple[str, ...]


class RepositoryIndex:
    """A sorted set of repository names, in catalog order."""

    def __init__(self) -> None:
        self._keys: list[Key] = []
        self._members: set[str] = set()
        self.ready = False
        # Names added while a refresh reads the catalog: the catalog may have been read past them
        # before they were pushed, and the refresh must not drop them.
        self._added_during_refresh: set[str] | None = None
        # A name dropped past `max_added` while a refresh reads the catalog: the walk may have passed
        # its place before it was pushed, so that refresh cannot make the index whole (r2events L1).
        self._dropped_during_refresh = False
        # Names the catalog never listed, taken because 2.8's seek leaves them out (`refresh`): maybe
        # only a path's directory, whose tag list's 404 reads as empty (`inventory.guessed_tags`).
        self.guessed: frozenset[str] = frozenset()
        self._added = 0  # names events added since the last refresh
        self._refreshed = 0  # how many names the last refresh read

    @property
    def max_added(self) -> int:
        """How many names events may add between two refreshes."""
        return max(MIN_ADDED_BETWEEN_REFRESHES, self._refreshed)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, repository: object) -> bool:
        return repository in self._members

    def add(self, repository: str) -> bool:
        """Adds a name; True when it was new. Past `max_added` new names since the last refresh, none
        is added and the index is no longer ready: lists seek the catalog until the next refresh (the
        one after it, when the name was dropped while a refresh ran)."""
        if repository not in self._members and self._added >= self.max_added:
            if self.ready:
                self.ready = False
                log.warn(
                    "repository index: registry events added {count} repositories since the last "
                    "refresh; it takes no more, and namespace lists read the catalog until the next one",
                    count=self._added,
                )
            if self._added_during_refresh is not None:
                self._dropped_during_refresh = True
            return False
        if self._added_during_refresh is not None:
            self._added_during_refresh.add(repository)
        if repository in self.guessed:
            self.guessed = self.guessed - {repository}  # a push named it: a repository
        if repository in self._members:
            return False
        self._added += 1
        bisect.insort(self._keys, catalog_key(repository))
        self._members.add(repository)
        return True

    def replace(self, repositories: list[str]) -> None:
        self._members = set(repositories)
        self._keys = sorted(catalog_key(name) for name in self._members)

    def namespace_repositories(self, namespace: str, after: str | None = None) -> list[str]:
        """Full names under ``<namespace>/`` in catalog order, only those after ``after`` when given."""
        start = (namespace,) if after is None else max((namespace,), catalog_key(after))
        lo = bisect.bisect_right(self._keys, start)
        # Every key whose first component is `namespace` sorts before (namespace + "\0",).
        hi = bisect.bisect_left(self._keys, (namespace + "\0",), lo)
        return ["/".join(key) for key in self._keys[lo:hi]]

    def after(self, repository: str | None, limit: int | None = None) -> list[str]:
        """Names after ``repository`` (from the first when None), all namespaces, in catalog order."""
        lo = 0 if repository is None else bisect.bisect_right(self._keys, catalog_key(repository))
        hi = len(self._keys) if limit is None else lo + limit
        return ["/".join(key) for key in self._keys[lo:hi]]

    async def refresh(self, client: Catalog) -> int:
        """Reads the whole catalog and replaces the contents; returns the number of names."""
        started = time.monotonic()
        self._added_during_refresh = set()
        self._dropped_during_refresh = False
        try:
            names: list[str] = []
            guesses: list[str] = []
            last: str | None = None
            while True:
                page = await client.catalog(last=last, n=CATALOG_PAGE)
                names.extend(page.repositories)
                if not page.repositories:
                    break
                last = page.repositories[-1]
                # distribution 2.8 sends no next link after a full page that ends in a name nested in
                # the one that follows (`team/app/0`, then `team/app`), and answers the seek from it
                # without the repositories it is nested in that way (docs/registry.md, "Catalog"):
                # read on, and take those names, as guesses: a directory that is no repository may
                # be among them, listed with no tags (its tag list's 404 reads as empty).
                if not page.more and not (page.full(CATALOG_PAGE) and digit_nested(last)):
                    break
                guesses.extend(skipped_by_seek(last))
            read = len(names)
            names.extend(self._added_during_refresh)
        finally:
            added, self._added_during_refresh = self._added_during_refresh, None
        self.replace(names + guesses)
        self.guessed = frozenset(guesses).difference(names)
        # The bound follows the catalog, not a flood of names added meanwhile: those are kept, and
        # count towards it.
        self._refreshed, self._added = read, len(self._keys) - len(set(names[:read]).union(guesses))
        # A name dropped meanwhile may be missing: lists go on seeking the catalog until a refresh
        # that dropped none.
        self.ready = not self._dropped_during_refresh
        if not self.ready:
            log.warn(
                "repository index: registry events past its bound were dropped while it was refreshed; "
                "namespace lists read the catalog until the next refresh"
            )
        log.info(
            "repository index refreshed: {count} repositories in {ms:.0f}ms "
            "({added} added by events meanwhile)",
            count=len(self._keys),
            ms=(time.monotonic() - started) * 1000,
            added=len(added),
        )
        return len(self._keys)


__all__ = ["RepositoryIndex", "catalog_key"]
