"""The registry seen as PayloadRepositoryTags: which tags a namespace holds, one tag's detail, deletes.

It knows namespaces (a repository's first path segment) but nothing of HTTP or Kubernetes JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence, Set
from typing import Any, Protocol, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from payloadtags.deferreds import bounded_map
from payloadtags.names import TagRef, split_repository
from payloadtags.registry import Catalog, Manifest, Registry, namespace_of, sorts_by_components
from payloadtags.registry.blobcache import BlobCache
from payloadtags.registry.content import (
    MAX_JSON_DEPTH,
    compute_digest,
    digit_nested,
    nested_deeper_than,
    skipped_by_seek,
)
from payloadtags.registry.errors import RegistryAuthFailed, RegistryNotFound
from payloadtags.registry.taglist import bisect_after
from payloadtags.repoindex import RepositoryIndex, catalog_key

T = TypeVar("T")
R = TypeVar("R")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
IMAGE_CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
MAX_CONFIG_BYTES = 4 << 20


@attrs.frozen
class TagDetail:
    ref: TagRef
    digest: str
    media_type: str | None
    artifact_type: str | None
    manifest: dict[str, Any] | None
    config: dict[str, Any] | None


class TagFilter:
    """A selection of tags that can select a repository's tags at once (``select``), cheaper than
    calling it on each tag's reference (the selectors of a request, `api.selectors.tag_filter`)."""

    def __call__(self, ref: TagRef) -> bool:
        return bool(self.select(ref.namespace, ref.repository_path, [ref.tag]))

    def select(self, namespace: str, path: str, tags: Sequence[str]) -> Sequence[str]:
        raise NotImplementedError


# A repository's tags are filtered this many at a time, the reactor free between two slices (a whole
# list's runs only, when the reader is given a ``pause``): a 100,000-tag repository and a selector do
# not hold every other client for the time it takes to check them all, as rendering goes in blocks.
SELECT_SLICE = 5000


@attrs.frozen
class Run:
    """Consecutive tags of one repository in a page, sorted."""

    namespace: str
    repository_path: str
    tags: Sequence[str]


@attrs.frozen
class Page:
    runs: list[Run]
    more: bool
    # The whole tag lists read for this page (or given to it) of the repositories it has not finished
    # showing: the one it ended in and those read past its end. The next page of the walk may take
    # them instead of reading them again. Empty when nothing follows.
    held: Mapping[str, Sequence[str]] = attrs.field(factory=dict)
    # The catalog names the page read past the repository it ended in, and where the catalog goes on
    # after them: the next page of the walk may start from them instead of seeking the catalog. None
    # when nothing follows or the names came from the repository index.
    rest: CatalogRest | None = None
    # For a page that started after a key: every tag list it used, read or held, and the catalog names
    # it went through after that key's repository (None from the repository index). Given to a page
    # that starts after the same key (``held``, ``rest``), they make it the same page.
    used: Mapping[str, Sequence[str]] = attrs.field(factory=dict)
    began: CatalogRest | None = None

    def __len__(self) -> int:
        return sum(len(run.tags) for run in self.runs)

    @property
    def refs(self) -> list[TagRef]:
        return [TagRef(run.namespace, run.repository_path, tag) for run in self.runs for tag in run.tags]

    @property
    def last(self) -> TagRef | None:
        return self.last_of(self.runs)

    @staticmethod
    def last_of(runs: Sequence[Run]) -> TagRef | None:
        for run in reversed(runs):
            if run.tags:
                return TagRef(run.namespace, run.repository_path, run.tags[-1])
        return None


Entry = tuple[str, str, str]  # (repository, namespace, path)

_NONE: frozenset[str] = frozenset()  # one empty set, shared by every rest without guessed names

# A component after the first that starts with a digit (`registry.content.digit_nested`).
_DIGIT_NAMED = re.compile(r"/[0-9]")


def _ended(seen: Sequence[Entry], passed: int, repository: str) -> int:
    """Where the entries a page was handed (``seen``, of which it went through the first ``passed``)
    after ``repository`` begin: after its entry, the last one the page showed, or all of them when the
    page ended in the repository it began in (no entry of theirs). By position, not by a search in
    catalog order: a registry that sorts its catalog plainly hands `team/app/b` after `team/app-x`,
    before it in catalog order. From the end of what the page went through: a page shows a few of the
    names it carries, the last of them near the end of those it went through."""
    for at in range(passed - 1, -1, -1):
        if seen[at][0] == repository:
            return at + 1
    return 0


async def guessed_tags(tags: Callable[[str], Awaitable[Sequence[str]]], repository: str) -> Sequence[str]:
    """The tags of a name a cursor guessed (``CatalogCursor.guessed``): none when the registry has no
    such repository (404: a path's directory, which the catalog never listed). Any other error is
    the list's, as a listed repository's is: such a name may be a real repository 2.8's seek left out
    (`team/app` after `team/app/0`), and a refusal taken for "no repository" would drop its tags from
    the list without a word. A refusal of access to it (a 403, a token without its scope) says why
    the name was read and what to grant: a token service that grants pull by repository name refuses
    a directory too. Rejected or missing credentials keep their own message: no grant helps there."""
    try:
        return await tags(repository)
    except RegistryNotFound:
        return ()
    except RegistryAuthFailed as e:
        if not e.denied:
            raise
        namespace = namespace_of(repository)
        raise RegistryAuthFailed(
            f"{e.message} (reading the tags of {repository}, which is read because distribution 2.8 "
            "leaves it out of a catalog seek from a name nested in it, where a catalog page ends: the "
            "registry account (anonymous access, where none is configured) needs pull access to "
            f"{repository}, or to {namespace}/*, even where it is only a "
            'directory; docs/registry.md, "Catalog")',
            denied=True,
        ) from e


@attrs.frozen
class CatalogRest:
    """Catalog names a page read after ``after``, the repository it ended in (whatever access says of
    them), and where the catalog goes on after them, read for ``namespace`` (None: all).

    The names are ``shared[start:]``: the rests a walk hands out while it reads no catalog page are
    cut from one tuple (``shared``), so that a page keeps and measures it once, not its names again
    on every page (`api.walks`). Its names before ``start`` are ones the walk went past; they are
    dropped with the tuple, once the rests cut from it have passed half of it (`CatalogCursor.rests`).
    """

    namespace: str | None
    after: str
    shared: tuple[Entry, ...]
    last: str | None
    done: bool
    pages: int
    # The last name in catalog order the cursor that read them went through (`CatalogCursor`).
    top: str | None = None
    # Those of ``shared`` the cursor guessed (`CatalogCursor.guessed`).
    guessed: frozenset[str] = _NONE
    # Where its names begin in ``shared``.
    start: int = 0

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self.shared[self.start :]

    def __len__(self) -> int:
        return len(self.shared) - self.start


@attrs.define
class CatalogCursor:
    """Reads the catalog a page at a time, as ``(repository, namespace, path)`` triples.

    For one namespace the catalog is sought with ``last`` and read only until the first name outside
    ``<namespace>/``: a namespace's repositories are contiguous in either order. By components (the
    registry's order, when it is distribution's) they come right after the namespace's own name. A
    registry that sorts plainly puts `team-x/a` and `team.x/a` between `team` and `team/a` ("-" and
    "." sort below "/"): so, until the first name inside, a name that sorts plainly before
    ``<namespace>/`` is passed over, not taken for the end, unless the client knows its registry
    sorts by components (`sorts_by_components`). Until it knows, an empty namespace is read through
    the `<namespace>-*` and `<namespace>.*` names after it (docs/registry.md, "Catalog").

    Names come in catalog order (`catalog_key`), as the repository index has them and lists show
    them, also from distribution 2.8, whose storage walk lists `team/app/0` before `team/app`
    (docs/registry.md, "Catalog"). Its order differs from catalog order only there: a repository
    comes after those nested in it under a component that starts with a digit. So such a repository
    is handed out right before the first of them a page holds. A page that ends among them, with
    more to read, hands it out there whether the page holds it or not: the next page is read with
    ``last=`` its last name, which 2.8 answers without it (`skipped_by_seek`; an empty tag list when
    it is no repository, a path's directory only). 2.8 answers that seek with the repositories
    nested in that name that way too, walked and handed out before it: those are skipped. Names in
    another order (a registry that sorts plainly) are not moved, and a registry that sorts component
    by component pays only for a page that ends among names nested under a directory that is no
    repository. ``key_order=False``: the registry's order and its answers as they are (the cascade,
    which lists what a seek leaves out itself).
    """

    client: Catalog
    namespace: str | None
    last: str | None
    page_size: int
    first_page_size: int = 100
    # distribution 2.8 sends no next link after a page whose last name is followed by a repository it
    # is nested in under a digit-named component (`team/app/0`, then `team/app`), whatever follows
    # (docs/registry.md, "Catalog"). So a full page that ends in a name nested that way (in any
    # directory: the name alone cannot tell) is not taken for the catalog's end; with this, no full
    # page is. At the real end that costs one more (empty) page, when the names left exactly filled
    # the last one.
    full_page_goes_on: bool = False
    # Names in catalog order, see above; False for the cascade, which lists what a seek leaves out.
    key_order: bool = True
    done: bool = False
    _pages: int = 0
    # Names read before (a previous page's rest), handed out before the catalog is read again.
    _ahead: list[Entry] = attrs.field(factory=list)
    _done_after: bool = False
    # The last name in catalog order the cursor has gone through (at first where it began: ``last``).
    _top: str | None = attrs.field(init=False, default=attrs.Factory(lambda self: self.last, takes_self=True))
    # The names it handed out that no page listed, only because the next seek leaves them out: maybe
    # no repository at all, their tags are read with `guessed_tags`. Not counted as repositories.
    guessed: set[str] = attrs.field(init=False, factory=set)
    # The rest it resumed from (`resuming`): while no catalog page is read, its rests are cut from it.
    _resumed: CatalogRest | None = attrs.field(init=False, default=None)
    # Whether the cursor has reached ``<namespace>/`` (a name in it, or began in it): from then on
    # the first name outside ends the namespace, in whatever order (see above).
    _reached: bool = attrs.field(
        init=False,
        default=attrs.Factory(
            lambda self: (
                self.namespace is not None
                and self.last is not None
                and self.last.startswith(self.namespace + "/")
            ),
            takes_self=True,
        ),
    )

    @classmethod
    def resuming(
        cls, client: Catalog, namespace: str | None, rest: CatalogRest, page_size: int
    ) -> CatalogCursor:
        if rest.namespace != namespace:
            # Read for another list: an all-namespaces walk's names are not all in ``namespace``, and a
            # namespace's end is not the end of all of them. Every name a cursor hands out is one it
            # read for its own namespace.
            return cls(client, namespace, rest.after, page_size)
        cursor = cls(client, namespace, rest.last, page_size, done=rest.done and not len(rest))
        cursor._pages, cursor._ahead, cursor._done_after = rest.pages, list(rest.entries), rest.done
        cursor._top = rest.top
        cursor.guessed = set(rest.guessed)
        cursor._resumed = rest
        cursor._reached = True  # it handed out ``rest.after``, a repository in the namespace
        return cursor

    def rests(self, seen: Sequence[Entry], *afters: tuple[str, int] | None) -> list[CatalogRest | None]:
        """What a page that ended in repository ``after`` leaves for the next one, for each of
        ``afters`` (None for None), given with where in ``seen`` the names after it begin (`_ended`):
        of the entries it was handed (``seen``, in the order the cursor handed them) those after
        ``after``, and those it was not handed yet. All are cut from one tuple: while the cursor reads
        no catalog page, the one of the rest it resumed from; and a rest that would be the same as that
        one is that one."""
        resumed = self._resumed
        guessed: frozenset[str] | None = None
        # Whether the rests are cut from the resumed rest's whole tuple, no catalog page read since.
        # Not told by ``shared is resumed.shared``: every empty tuple is the same object, and a page
        # that resumed from no names and then read the catalog to its end handed out the rest it was
        # given, whose catalog goes on: asked for again with it, the page read the catalog again
        # and showed a repository created in between (review r1tags F1).
        kept = False
        if resumed is not None and self._pages == resumed.pages:
            kept = True
            # ``seen`` is the resumed rest's names (or none of them, when the page went through none)
            # and no name is ahead: a page that stays in one repository (or goes through a few of its
            # names) keeps the tuple it was given, however long.
            shared = resumed.shared
            starts = [None if after is None else resumed.start + after[1] for after in afters]
            low = min((start for start in starts if start is not None), default=0)
            if 2 * low <= len(shared):
                low, guessed = 0, resumed.guessed
            else:  # the rests have passed half of it: the names they passed are let go
                shared, kept = shared[low:], False
        else:
            starts = [None if after is None else after[1] for after in afters]
            low = min((start for start in starts if start is not None), default=0)
            shared = (*seen[low:], *self._ahead)  # not the names every rest has passed
        if guessed is None:
            guessed = (
                frozenset(name for name, _, _ in shared if name in self.guessed) if self.guessed else _NONE
            )
            guessed = guessed or _NONE
        # The catalog after the names ahead ends where the rest resumed from said it does.
        done = self._done_after if self._ahead else self.done
        rests: list[CatalogRest | None] = []
        for after, start in zip(afters, starts, strict=True):
            if after is None or start is None:
                rests.append(None)
            elif resumed is not None and kept and (start, after[0]) == (resumed.start, resumed.after):
                rests.append(resumed)
            else:
                rest = CatalogRest(
                    self.namespace,
                    after[0],
                    shared,
                    self.last,
                    done,
                    self._pages,
                    self._top,
                    guessed,
                    start - low,
                )
                rests.append(rest)
        return rests

    def _next_size(self) -> int:
        # distribution fills a page by walking its storage past the namespace, so a namespace list
        # starts small (most namespaces hold few repositories) and grows; an all-namespaces list
        # reads whole pages from the start.
        if self.namespace is None:
            return self.page_size
        growth: int = 4**self._pages  # typeshed types int ** int as Any (a negative power is a float)
        return min(self.page_size, self.first_page_size * growth)

    async def next(self) -> list[tuple[str, str, str]]:
        if self._ahead:
            batch, self._ahead = self._ahead, []
            self.done = self._done_after
            return batch
        if self.done:
            return []
        size = self._next_size()
        sought = self.last
        page = await self.client.catalog(last=sought, n=size)
        self._pages += 1
        names = page.repositories
        # distribution 2.8 sends no next link after a full page that ends in a name nested in the
        # one that follows (see the class): only such a page is read on from without one.
        full = bool(names) and page.full(size)
        more = page.more or (full and (self.full_page_goes_on or digit_nested(names[-1])))
        self.done = not more or not names
        if self.namespace is not None:
            inside = self.namespace + "/"
            # Before the namespace is reached, names that sort plainly before it are passed over
            # (`team-x/a` before `team/a`), unless the registry is known to sort by components.
            passing = not self._reached and not sorts_by_components(self.client)
            start = 0
            for end, repository in enumerate(names):
                if repository.startswith(inside):
                    self._reached = True
                elif passing and not self._reached and repository < inside:
                    start = end + 1
                else:
                    self.done = True
                    names = names[start:end]
                    break
            else:
                names = names[start:]
        if self.key_order:
            names = self._in_key_order(sought, names, None if self.done else page.repositories[-1])
        if page.repositories:
            self.last = page.repositories[-1]
        batch = []
        for repository in names:
            parts = split_repository(repository)
            if parts is not None:
                batch.append((repository, *parts))
        return batch

    def _in_key_order(self, sought: str | None, names: list[str], last: str | None) -> list[str]:
        """A page of the registry's answer to ``last=sought`` in catalog order, without the names
        handed out before (see the class). ``last``: the page's last name, when more pages follow."""
        top = self._top
        floor = None if top is None else catalog_key(top)
        # 2.8 answers with the names nested in ``sought`` under a digit-named component: walked before
        # it, and handed out already when the cursor went through one of them.
        again = floor if top is not None and sought is not None and top.startswith(sought + "/") else None
        if again is None and _DIGIT_NAMED.search("\n".join(names)) is None:
            # No name nested under a digit-named component (most pages): one search, in C.
            if names and (floor is None or catalog_key(names[-1]) > floor):
                self._top = names[-1]
            return names
        listed = set(names)
        # Repositories the next page's seek leaves out: handed out with those nested in them here.
        coming = skipped_by_seek(last) if last is not None else []
        arranged: list[str] = []
        handed: set[str] = set()
        for name in names:
            if name in handed:
                continue
            key = catalog_key(name)
            if again is not None and key <= again:
                continue
            for outer in skipped_by_seek(name):
                # Listed after this name (2.8's walk), or left out by the next seek: its place in
                # catalog order is here, unless the cursor began after it (it was handed out then).
                if (
                    outer not in handed
                    and (outer in listed or outer in coming)
                    and (floor is None or catalog_key(outer) > floor)
                ):
                    arranged.append(outer)
                    handed.add(outer)
                    if outer not in listed:
                        self.guessed.add(outer)
            arranged.append(name)
            handed.add(name)
            if floor is None or key > floor:
                top, floor = name, key
        self._top = top
        return arranged


@attrs.define
class IndexCursor:
    """Repositories from the repository index, no catalog request: a namespace's in one batch, all
    namespaces' a page at a time."""

    index: RepositoryIndex
    namespace: str | None
    last: str | None
    page_size: int = 1000
    done: bool = False

    @property
    def guessed(self) -> frozenset[str]:
        """The names the index took only because 2.8's seek leaves them out (`RepositoryIndex.guessed`)."""
        return self.index.guessed

    async def next(self) -> list[tuple[str, str, str]]:
        if self.done:
            return []
        if self.namespace is None:
            names = self.index.after(self.last, limit=self.page_size)
            self.done = len(names) < self.page_size
            if names:
                self.last = names[-1]
        else:
            names = self.index.namespace_repositories(self.namespace, after=self.last)
            self.done = True
        batch = []
        for repository in names:
            parts = split_repository(repository)
            if parts is not None:
                batch.append((repository, *parts))
        return batch


class Runs(Protocol):
    """A list's runs, a repository at a time: `RunReader`, or a page read before."""

    async def next(self) -> Run | None:
        """The next run; None once the list has ended."""
        ...

    def stop(self) -> None:
        """No more runs are wanted: what is under way for them is cancelled."""
        ...


@attrs.define(eq=False)
class _Read:
    """One repository's tag list being read for a RunReader, and once ended, its outcome."""

    repository: str
    namespace: str
    path: str
    reading: Deferred[Any] | None = None
    ended: bool = False
    outcome: Any = None  # the tags, or the Failure


@attrs.define(eq=False)
class RunReader:
    """A whole list's runs in catalog order, each handed out as soon as its repository's tag list is
    read, with the reads of the repositories after it already under way.

    So the registry reads the next repositories while the caller formats and writes the one it was
    handed. At most ``window + 1`` reads are under way at once, and a new one starts as soon as one
    ends, not only when the caller takes the next run: a slow read at the head of the list does not
    stall the others. Tag lists read ahead and not handed out yet are bounded too (``held``), so
    what is held is a few windows' tag lists, not the list. The next catalog page is read while the
    last names of the one before are still being read. ``stop`` cancels the reads under way and
    starts no more (the client went away, the deadline passed, a read failed).

    Reads and catalog pages are started only from ``next``, in its caller's context (a request's
    coalescing start, see ``registry.asking``, goes with it).
    """

    cursor: CatalogCursor | IndexCursor
    read: Callable[[str], Deferred[Sequence[str]]]
    window: int
    accept: Callable[[TagRef], bool] | None = None
    readable: Callable[[str, str], bool] = lambda namespace, path: True
    observe: Callable[[str, Sequence[str]], None] | None = None
    # Frees the reactor for a turn (between slices of a large repository's tags); None: never.
    pause: Callable[[], Deferred[None]] | None = None
    _listed: deque[Entry] = attrs.field(factory=deque)  # from the catalog, not read yet
    _reads: deque[_Read] = attrs.field(factory=deque)  # in list order
    _running: int = 0  # reads started that have not ended
    _page: Deferred[None] | None = None  # a catalog page being read
    _arrived: list[Entry] | None = None  # the page read, not filtered by ``readable`` yet
    _page_failed: Failure | None = None
    _woken: Deferred[None] | None = None
    _stopped: bool = False

    @property
    def held(self) -> int:
        """How many tag lists may be read ahead of the caller at most, ended or not."""
        return 2 * (self.window + 1)

    async def next(self) -> Run | None:
        """The next repository's run of selected tags; None once the list has ended."""
        try:
            while not self._stopped:
                self._start()
                if self._page_failed is not None:
                    self._page_failed.raiseException()
                if self._reads and self._reads[0].ended:
                    head = self._reads.popleft()
                    self._start()
                    if isinstance(head.outcome, Failure):
                        head.outcome.raiseException()
                    tags: Sequence[str] = head.outcome
                    if self.observe is not None:
                        self.observe(head.repository, tags)
                    chosen = await self._choose(head.namespace, head.path, tags)
                    if chosen:
                        return Run(head.namespace, head.path, chosen)
                elif self._reads or self._page is not None:
                    self._woken = Deferred()
                    await self._woken  # a read or a catalog page has ended
                else:
                    return None
        except BaseException:
            self.stop()
            raise
        return None

    async def _choose(self, namespace: str, path: str, tags: Sequence[str]) -> Sequence[str]:
        """The tags ``accept`` keeps, a slice at a time with the reactor free between slices."""
        if self.accept is None or self.pause is None or len(tags) <= SELECT_SLICE:
            return _select(namespace, path, tags, self.accept)
        chosen: list[str] = []
        for start in range(0, len(tags), SELECT_SLICE):
            if start:
                await self.pause()
            chosen.extend(_select(namespace, path, tags[start : start + SELECT_SLICE], self.accept))
        return chosen

    def _start(self) -> None:
        """Starts what may start now: reads of listed repositories, the next catalog page."""
        while not self._stopped:
            if self._arrived is not None:
                batch, self._arrived = self._arrived, None
                self._listed.extend(entry for entry in batch if self.readable(entry[1], entry[2]))
            while self._listed and self._running <= self.window and len(self._reads) < self.held:
                read = _Read(*self._listed.popleft())
                self._running += 1
                self._reads.append(read)
                reading = self.read(read.repository)
                read.reading = reading
                reading.addBoth(self._ended, read)
            if (
                self._page is not None
                or self._page_failed is not None
                or self.cursor.done
                or len(self._listed) > self.window
            ):
                return
            page = Deferred.fromCoroutine(self._read_page())
            page.addErrback(lambda _: None)  # a stop's cancel; what else fails is kept by _read_page
            if not page.called:
                self._page = page
                return
            # read at once (the repository index, names kept from an earlier page): taken above

    async def _read_page(self) -> None:
        try:
            batch = await self.cursor.next()
        except BaseException:
            if not self._stopped:
                self._page_failed = Failure()
        else:
            if self._arrived is None:
                self._arrived = batch
            else:
                self._arrived.extend(batch)
        finally:
            self._page = None
            self._wake()

    def _ended(self, outcome: Any, read: _Read) -> None:
        read.ended, read.outcome = True, outcome  # a failure is raised by next() in its turn
        self._running -= 1
        self._wake()

    def _wake(self) -> None:
        woken, self._woken = self._woken, None
        if woken is not None and not woken.called:  # called: the caller's cancel
            woken.callback(None)

    def stop(self) -> None:
        self._stopped = True
        self._listed.clear()
        self._arrived = None
        reads, self._reads = self._reads, deque()
        for read in reads:
            if read.reading is not None:
                read.reading.cancel()  # what it then fails with is nobody's concern
        if self._page is not None:
            self._page.cancel()


def _select(
    namespace: str, path: str, tags: Sequence[str], accept: Callable[[TagRef], bool] | None
) -> Sequence[str]:
    if accept is None:
        return tags
    if isinstance(accept, TagFilter):
        return accept.select(namespace, path, tags)
    return [tag for tag in tags if accept(TagRef(namespace, path, tag))]


@attrs.define
class Inventory:
    client: Registry
    concurrency: int = 16
    page_size: int = 1000
    # When given and ready, lists take their repositories from it instead of the catalog.
    index: RepositoryIndex | None = None
    # Image configs already read: a tag's GET then reads only its manifest from the registry.
    configs: BlobCache = attrs.Factory(BlobCache)
    # Frees the reactor for a turn: whole lists filter a large repository's tags in slices between
    # such pauses (`RunReader.pause`). None: in one go.
    pause: Callable[[], Deferred[None]] | None = None

    async def _tags_of(
        self, repositories: Sequence[str], guessed: Set[str] = frozenset()
    ) -> list[Sequence[str]]:
        return await bounded_map(lambda name: self._tags(name, guessed), repositories, self.concurrency)

    async def _tags(self, repository: str, guessed: Set[str]) -> Sequence[str]:
        if repository in guessed:
            return await guessed_tags(self.client.tags, repository)
        return await self.client.tags(repository)

    def _cursor(
        self, namespace: str | None, after: TagRef | None, rest: CatalogRest | None = None
    ) -> CatalogCursor | IndexCursor:
        last = after.repository if after is not None else None
        if self.index is not None and self.index.ready:
            return IndexCursor(self.index, namespace, last, self.page_size)
        if rest is not None:
            return CatalogCursor.resuming(self.client, namespace, rest, self.page_size)
        return CatalogCursor(self.client, namespace, last or namespace, self.page_size)

    def reader(
        self,
        namespace: str | None,
        *,
        accept: Callable[[TagRef], bool] | None = None,
        readable: Callable[[str, str], bool] = lambda namespace, path: True,
        observe: Callable[[str, Sequence[str]], None] | None = None,
    ) -> RunReader:
        """The whole list of ``namespace`` (all namespaces when None), a repository at a time, with
        ``concurrency`` tag lists read ahead; ``accept``, ``readable`` and ``observe`` as for ``list``."""

        cursor = self._cursor(namespace, None)

        def read(repository: str) -> Deferred[Sequence[str]]:
            return Deferred.fromCoroutine(self._tags(repository, cursor.guessed))

        return RunReader(cursor, read, self.concurrency, accept, readable, observe, self.pause)

    async def list(
        self,
        namespace: str | None,
        *,
        limit: int | None = None,
        after: TagRef | None = None,
        accept: Callable[[TagRef], bool] | None = None,
        readable: Callable[[str, str], bool] = lambda namespace, path: True,
        observe: Callable[[str, Sequence[str]], None] | None = None,
        held: Mapping[str, Sequence[str]] | None = None,
        observe_held: bool = True,
        rest: CatalogRest | None = None,
    ) -> Page:
        """Tags in ``namespace`` (all namespaces when None), sorted, starting after ``after``.

        ``readable(namespace, path)`` drops whole repositories before their tags are read (access is
        decided per repository path); ``accept`` then selects single tags (None: all).

        A page reads the tag lists of the repositories it shows, and a slice more at most, except
        those given in ``held`` (the previous page's ``Page.held``: tag lists its walk read before
        and has not finished showing), which it takes as they are. Without ``held`` every list is
        the registry's current one. With ``rest`` (the previous page's ``Page.rest``, ``after`` being
        where that page ended) the catalog is not sought again while names it read remain.

        ``observe(repository, tags)`` is told every tag list the page uses, whole, read or held (the
        watch hub records them; a held list is one it was told before); held ones only with
        ``observe_held`` (the caller knows that ``observe`` was told them before), and then also those
        the page keeps without using them: every list in ``Page.held`` has gone to ``observe``.
        """
        if limit is None and after is None and not held:
            reader = self.reader(namespace, accept=accept, readable=readable, observe=observe)
            runs = []
            while (run := await reader.next()) is not None:
                runs.append(run)
            return Page(runs, more=False)
        page = _PageBuilder(limit, accept)
        known = held or {}
        used: dict[str, Sequence[str]] = {}  # every tag list this page used, read or held
        seen = 0  # tags in the repositories read so far, to guess how many more a page needs
        repositories_read = 0

        async def tags_of(
            repositories: Sequence[str], guessed: Set[str] = frozenset()
        ) -> list[Sequence[str]]:
            missing = [repository for repository in repositories if repository not in known]
            fresh = dict(zip(missing, await self._tags_of(missing, guessed), strict=True)) if missing else {}
            found = [
                fresh[repository] if repository in fresh else known[repository] for repository in repositories
            ]
            for repository, tags in zip(repositories, found, strict=True):
                used[repository] = tags
                if observe is not None and (observe_held or repository in fresh):
                    observe(repository, tags)
            return found

        if after is not None and readable(after.namespace, after.repository_path):
            (tags,) = await tags_of([after.repository])
            page.add(after.namespace, after.repository_path, tags, after.tag)
            seen, repositories_read = len(tags), 1
        if rest is not None and (after is None or after.repository != rest.after):
            rest = None  # another page's (a token of the walk given again): seek
        cursor = self._cursor(namespace, after, rest)
        seen_entries: list[Entry] = []
        passed = 0  # of them, those the page went through
        while not cursor.done and not page.full:
            entries = await cursor.next()
            passed = len(seen_entries)
            seen_entries.extend(entries)
            # Access is decided as the page reaches each repository: a walk's page that carries the
            # catalog names read before (up to a thousand) and shows one or two of them asks about
            # those, not about every name it carries.
            position = 0
            while position < len(entries) and not page.full:
                if limit is None:
                    step = len(entries)
                else:
                    # A limited page reads tag lists a slice at a time, sized from the tags per
                    # repository seen so far, so that a page reads few lists past its end.
                    per_repository = seen / repositories_read if repositories_read else 1.0
                    wanted = math.ceil(page.missing / max(per_repository, 1.0))
                    step = max(1, min(wanted, self.concurrency))
                chunk: list[Entry] = []
                while position < len(entries) and len(chunk) < step:
                    entry = entries[position]
                    position += 1
                    if readable(entry[1], entry[2]):
                        chunk.append(entry)
                if not chunk:
                    break
                tag_lists = await tags_of([repository for repository, _, _ in chunk], cursor.guessed)
                for (_, ns, path), tags in zip(chunk, tag_lists, strict=True):
                    seen += len(tags)
                    repositories_read += 1
                    if not page.full:
                        page.add(ns, path, tags, None)
            passed += position
        runs, more = page.result()
        last = Page.last_of(runs) if more else None
        began = ahead = None
        if isinstance(cursor, CatalogCursor) and (after is not None or last is not None):
            began, ahead = cursor.rests(
                seen_entries,
                (after.repository, 0) if after is not None else None,  # all it was handed come after
                None if last is None else (last.repository, _ended(seen_entries, passed, last.repository)),
            )
        # For a page that started after a key: what it used, to make it again (`Page.used`).
        again: Mapping[str, Sequence[str]] = used if after is not None else {}
        if not more:
            return Page(runs, more, used=again, began=began)
        kept = _unfinished(namespace, last, known, used)
        if observe is not None and observe_held:
            # So that every list a page keeps has gone to ``observe``: the next page may then skip them.
            for repository, tags in kept.items():
                if repository not in used:
                    observe(repository, tags)
        return Page(runs, more, held=kept, rest=ahead, used=again, began=began)

    async def exists(self, ref: TagRef, observe: Callable[[str, Sequence[str]], None] | None = None) -> bool:
        tags = await self.client.tags(ref.repository)
        if observe is not None:
            observe(ref.repository, tags)
        return ref.tag in tags

    async def detail(self, ref: TagRef) -> TagDetail:
        """One tag with its manifest and, for images and JSON-configured artifacts, its config."""
        manifest = await self.client.manifest(ref.repository, ref.tag)
        # The payload, not the bytes as served: what its digest vouches for (`Manifest.payload`).
        body = manifest.document if manifest.document is not None else _json_or_none(manifest.payload)
        document = body if isinstance(body, dict) else {}
        return TagDetail(
            ref=ref,
            digest=manifest.digest,
            media_type=manifest.media_type or _text(document.get("mediaType")),
            artifact_type=_text(document.get("artifactType")),
            manifest=body if isinstance(body, dict) else None,
            config=await self._config(ref, manifest, body),
        )

    async def _config(self, ref: TagRef, manifest: Manifest, body: Any) -> dict[str, Any] | None:
        if not isinstance(body, dict):
            return None
        descriptor = body.get("config")
        if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str):
            return None
        # The registry takes what Go decodes, a null mediaType too (as ""): never assume a string.
        media_type = _text(descriptor.get("mediaType")) or ""
        is_json = (
            media_type in IMAGE_CONFIG_TYPES
            or media_type.endswith("+json")
            or media_type == "application/json"
        )
        size = descriptor.get("size")
        if media_type == EMPTY_CONFIG or not is_json or not isinstance(size, int) or size > MAX_CONFIG_BYTES:
            return None
        digest = descriptor["digest"]
        content = self.configs.get(ref.repository, digest)
        if content is None:
            try:
                content = await self.client.blob(ref.repository, digest, max_bytes=MAX_CONFIG_BYTES)
            except RegistryNotFound:
                # A config blob already garbage-collected or never pushed should not hide the tag itself.
                return None
            if compute_digest(content, digest.partition(":")[0]) == digest:  # kept only when verified
                self.configs.put(ref.repository, digest, content)
        config = _json_or_none(content)
        # Too deeply nested to show: left out, as a config that is not JSON is.
        return (
            config
            if isinstance(config, dict) and not nested_deeper_than(config, MAX_JSON_DEPTH, content)
            else None
        )

    async def digest(self, ref: TagRef) -> str:
        """The digest the tag names now."""
        return await self.client.resolve(ref.repository, ref.tag)

    async def delete(self, ref: TagRef, expected: str | None = None) -> str | None:
        """Deletes the tag (`Registry.delete_tag`): only at ``expected`` when given (else
        RegistryConflict, the tag kept)."""
        return await self.client.delete_tag(ref.repository, ref.tag, expected=expected)

    async def check_delete(self, ref: TagRef) -> None:
        """Raise what `delete` would for a registry that cannot delete now; changes nothing."""
        await self.client.check_delete(ref.repository, ref.tag)


def _unfinished(
    namespace: str | None,
    last: TagRef | None,
    known: Mapping[str, Sequence[str]],
    used: Mapping[str, Sequence[str]],
) -> dict[str, Sequence[str]]:
    """The tag lists a walk of ``namespace`` keeps after a page that ended at ``last``: the repository
    it ended in and those after it (catalog order), taken from what the page used and, unreached, what
    it was given; repositories the walk has passed, or outside its namespace, are finished with."""
    if last is None:
        return {}
    end = catalog_key(last.repository)
    inside = "" if namespace is None else namespace + "/"
    kept = {
        repository: tags
        for repository, tags in known.items()
        if repository.startswith(inside) and catalog_key(repository) >= end
    }
    kept.update((repository, tags) for repository, tags in used.items() if catalog_key(repository) >= end)
    return kept


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


class _PageBuilder:
    """Collects runs of tags until ``limit`` plus one are found (the one more says there are more)."""

    def __init__(self, limit: int | None, accept: Callable[[TagRef], bool] | None) -> None:
        self._limit = limit
        self._accept = accept
        self._runs: list[Run] = []
        self._count = 0

    @property
    def full(self) -> bool:
        return self._limit is not None and self._count > self._limit

    @property
    def missing(self) -> int:
        return 0 if self._limit is None else max(self._limit + 1 - self._count, 0)

    def add(self, namespace: str, path: str, tags: Sequence[str], after: str | None) -> None:
        start = bisect_after(tags, after) if after is not None else 0
        room = None if self._limit is None else self._limit + 1 - self._count
        if self._accept is None:
            chosen: Sequence[str] = tags[start:] if room is None else tags[start : start + room]
        else:
            accept = self._accept
            selected: list[str] = []
            if isinstance(accept, TagFilter):
                selected = list(accept.select(namespace, path, tags[start:]))[:room]
            else:
                for index in range(start, len(tags)):
                    if room is not None and len(selected) >= room:
                        break
                    if accept(TagRef(namespace, path, tags[index])):
                        selected.append(tags[index])
            chosen = selected
        if chosen:
            self._runs.append(Run(namespace, path, chosen))
            self._count += len(chosen)

    def result(self) -> tuple[list[Run], bool]:
        """The page's runs, and whether the list goes on after them."""
        if not self.full:
            return self._runs, False
        # Drop the one tag past the limit: it only told that the list goes on.
        last = self._runs[-1]
        runs = self._runs[:-1]
        if len(last.tags) > 1:
            runs.append(Run(last.namespace, last.repository_path, last.tags[:-1]))
        return runs, True


__all__ = [
    "CatalogCursor",
    "CatalogRest",
    "IndexCursor",
    "Inventory",
    "Page",
    "Run",
    "RunReader",
    "Runs",
    "TagDetail",
    "TagFilter",
    "guessed_tags",
]
