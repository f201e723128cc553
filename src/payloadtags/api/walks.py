"""Tag lists a paginated walk has read and not finished showing, kept briefly for its next pages.

distribution 2.8 answers tags/list whole (it ignores ``n`` and ``last``), so a page that resumes inside
a repository would read that repository's whole list again, and a page that ends at the end of one
reads the next ones only to learn whether the list goes on. Kept here per walk, those lists are read
once per walk: the continue token carries a random walk id, and a continued page takes the lists its
walk read before instead of reading them again (docs/api.md, "List options"). The catalog names a page
read past its end are kept too, so the next page does not seek the catalog again while they last.

Only registry data is kept (whole tag lists); access and selectors are applied on every page. Entries
are keyed by the caller's identity as well as the walk id, so nothing is shared between users. A walk
is dropped once its last page is served, when it was not continued for ``ttl`` seconds, and, least
recently continued first, when all walks together hold more than ``max_tags`` tags. A page that finds
nothing kept (dropped, another replica, a restart, an older token) reads the registry, as a first page
does.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from payloadtags.identity import UserInfo
from payloadtags.inventory import CatalogRest

# A walk id: random, URL-safe, carried in the (opaque) continue token.
WALK_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
WALK_ID_MAX = 64

# kubectl asks for the next page as soon as it has the previous one; a minute covers a slow client
# and costs at most the bound below.
DEFAULT_TTL = 60.0
# About 15 MiB of tag names with the lists' own overhead.
DEFAULT_MAX_TAGS = 250_000


def new_walk_id() -> str:
    return secrets.token_urlsafe(12)


def is_walk_id(text: object) -> bool:
    # Checked on every continued page: stripping the alphabet runs in C, a test per character does not.
    return isinstance(text, str) and 0 < len(text) <= WALK_ID_MAX and not text.strip(WALK_ID_ALPHABET)


@attrs.define(eq=False)
class _Walk:
    lists: Mapping[str, Sequence[str]]
    size: int
    touched: float
    reported_to: object = None
    rest: CatalogRest | None = None


Key = tuple[UserInfo, str]


@attrs.define(eq=False)
class WalkCache:
    clock: IReactorTime
    max_tags: int = DEFAULT_MAX_TAGS
    ttl: float = DEFAULT_TTL
    # Told of each continued page's lookup: True when its walk's lists were found (metrics).
    on_lookup: Callable[[bool], None] | None = None
    _walks: OrderedDict[Key, _Walk] = attrs.field(factory=OrderedDict)  # least recently used first
    size: int = 0  # tags kept, all walks
    _sweep: LoopingCall | None = None

    def run(self) -> None:
        """Frees abandoned walks within ``ttl`` and a half, also when no list comes to notice them."""
        self._sweep = LoopingCall(self._expire)
        self._sweep.clock = self.clock
        self._sweep.start(self.ttl / 2, now=False)

    def stop(self) -> None:
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        self._sweep = None

    def __len__(self) -> int:
        return len(self._walks)

    def held(self, who: UserInfo, walk: str) -> Mapping[str, Sequence[str]] | None:
        """The lists ``who``'s walk ``walk`` kept from its previous pages; None when none are kept."""
        self._expire()
        entry = self._walks.get((who, walk))
        if entry is not None:
            entry.touched = self.clock.seconds()
            self._walks.move_to_end((who, walk))
        if self.on_lookup is not None:
            self.on_lookup(entry is not None)
        return entry.lists if entry is not None else None

    def reported_to(self, who: UserInfo, walk: str | None) -> object:
        """Where the page that kept the walk's lists reported them (the watch hub's record), or None."""
        entry = self._walks.get((who, walk)) if walk is not None else None
        return entry.reported_to if entry is not None else None

    def rest(self, who: UserInfo, walk: str | None) -> CatalogRest | None:
        """The catalog names the walk's last page read past its end (`inventory.Page.rest`), or None."""
        entry = self._walks.get((who, walk)) if walk is not None else None
        return entry.rest if entry is not None else None

    def keep(
        self,
        who: UserInfo,
        walk: str,
        lists: Mapping[str, Sequence[str]],
        reported_to: object = None,
        rest: CatalogRest | None = None,
    ) -> None:
        """What the walk keeps after a page, replacing what it kept before; ``reported_to``: where
        that page reported every one of them (`reported_to`); ``rest``: the catalog names it read
        past its end (a name counts as a tag towards the bound)."""
        self.forget(who, walk)
        self._expire()
        size = sum(len(tags) for tags in lists.values()) + (len(rest) if rest is not None else 0)
        if size == 0 or size > self.max_tags:
            return
        self._walks[(who, walk)] = _Walk(dict(lists), size, self.clock.seconds(), reported_to, rest)
        self.size += size
        while self.size > self.max_tags:
            self._drop(next(iter(self._walks)))

    def forget(self, who: UserInfo, walk: str) -> None:
        """The walk is over: its last page was served."""
        if (who, walk) in self._walks:
            self._drop((who, walk))

    def _expire(self) -> None:
        before = self.clock.seconds() - self.ttl
        while self._walks:
            key, oldest = next(iter(self._walks.items()))
            if oldest.touched >= before:
                return
            self._drop(key)

    def _drop(self, key: Key) -> None:
        self.size -= self._walks.pop(key).size


__all__ = ["DEFAULT_MAX_TAGS", "DEFAULT_TTL", "WalkCache", "is_walk_id", "new_walk_id"]
