"""The walk cache's byte count (api/walks.py) against the memory its walks hold, measured with tracemalloc.

Walks go through TagsService as a client makes them, on a double of distribution 2.8 whose answers are
fresh objects as `RegistryClient`'s are (a tag list a tuple of new strings, the one ``()`` when no tag
is left; catalog names new strings). What the cache counts is compared with what dropping its walks
frees: a ratio, never a time.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import pytest
from twisted.internet.task import Clock

from payloadtags.access.authz import AlwaysAllow
from payloadtags.api import continuation
from payloadtags.api.options import list_options
from payloadtags.api.tags import ResourceVersions, TagsService, VersionSource
from payloadtags.api.walks import DEFAULT_TTL, Kept, Listed, WalkCache, kept_size
from payloadtags.identity import UserInfo
from payloadtags.inventory import Inventory
from payloadtags.names import TagRef
from payloadtags.registry import CatalogPage
from payloadtags.repoindex import RepositoryIndex
from tests.support.frozen_heap import frozen_heap  # noqa: F401  (a fixture)
from tests.unit.test_inventory_paging import Registry
from tests.unit.test_repoindex import run

ALICE = UserInfo("alice", groups=("devs",))
AT = TagRef("team", "e00000", "v1")
# How far the count may be from the memory (docs/api.md, "List options").
WITHIN = 0.05

# gc.collect() three times a measurement: see frozen_heap.
pytestmark = pytest.mark.usefixtures("frozen_heap")


class FreshRegistry(Registry):
    """Answers with new objects each time, as `RegistryClient` does."""

    async def tags(self, repository: str) -> tuple[str, ...]:
        # Not recorded in ``tag_reads``: that would hold the repository names the walk holds.
        return tuple("".join(tag) for tag in sorted(self.content.get(repository, ())))

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        page = await super().catalog(last, n)
        return CatalogPage(["".join(name) for name in page.repositories], page.more)


def service(
    content: dict[str, set[str]], clock: Clock, indexed: bool = False, versions: VersionSource | None = None
) -> TagsService:
    index = None
    if indexed:  # the repository index (--registry-events-token-file): no catalog reads, no rests
        index = RepositoryIndex()
        index.replace(list(content))
        index.ready = True
    return TagsService(
        inventory=Inventory(FreshRegistry(content), concurrency=4, index=index),  # type: ignore[arg-type]
        registry_host="registry.test",
        authorizer=AlwaysAllow(),
        versions=versions if versions is not None else ResourceVersions(clock),
        walks=WalkCache(clock),
    )


def counted_and_held(
    content: dict[str, set[str]],
    limit: int,
    pages: int,
    indexed: bool = False,
    walks: int = 1,
    user: Callable[[int], UserInfo] = lambda walk: ALICE,
    namespace: str = "team",
    pinned: bool = False,
    versions: VersionSource | None = None,
    before_walk: Callable[[], object] = lambda: None,
) -> float:
    """Walks ``pages`` pages of ``limit`` tags (``walks`` times, each a walk of its own); what the cache
    then counts over what expiring them frees. ``user(walk)``: the caller of each page of the walk.
    ``namespace``: the one listed, a string of each request's own as the URL's is; ``pinned``: an
    all-namespaces list pinned to it by ``fieldSelector=metadata.namespace=``, whose value is too.
    ``versions``: where the lists take their resourceVersion (on a clock of its own: expiring the walks
    runs nothing of it), ``before_walk`` called before each walk's first page."""
    # Tokens decoded by earlier walks (tests) are nobody's here; this one's are counted as they come.
    continuation._decoded.clear()
    clock = Clock()
    tags = service(content, clock, indexed, versions)
    gc.collect()  # empties CPython's free lists, so that what the walk holds is all traced
    tracemalloc.start()
    try:
        for walk in range(walks):
            before_walk()
            token = None
            for _ in range(pages):
                # The URL's namespace, or the selector's value: a string of the request's own.
                asked = "".join(list(namespace))
                query = {"limit": [str(limit)], **({"continue": [token]} if token else {})}
                if pinned:
                    query["fieldSelector"] = [f"metadata.namespace={asked}"]
                result, meta = run(tags.list(user(walk), None if pinned else asked, list_options(query)))
                token = meta.continue_
                del result, meta
        assert tags.walks is not None and len(tags.walks) == walks
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        counted = tags.walks.size
        clock.advance(DEFAULT_TTL + 1)
        # A continued page's look expires every walk.
        assert tags.walks.continued(ALICE, "none", Listed("team", "team"), AT) == (None, None)
        assert len(tags.walks) == 0 and tags.walks.size == 0
        gc.collect()
        freed = before - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return counted / freed


def near(ratio: float) -> None:
    assert 1 - WITHIN <= ratio <= 1 + WITHIN, f"counted / held = {ratio:.3f}"


def one_tag_each(count: int, name: Callable[[int], str] = lambda i: f"r{i:04d}") -> dict[str, set[str]]:
    return {f"team/{name(i)}": {"x"} for i in range(count)}


def test_a_first_page_is_counted_as_the_memory_it_keeps() -> None:
    near(counted_and_held(one_tag_each(600), limit=5, pages=1))


def test_continued_pages_count_the_catalog_names_both_their_tokens_keep_once() -> None:
    # A continued page keeps the catalog names it began from (for the token it was asked with) and
    # those it hands out: the same entries, held once.
    near(counted_and_held(one_tag_each(600), limit=5, pages=3))
    near(counted_and_held(one_tag_each(600, lambda i: f"r{i:04d}-" + "y" * 200), limit=5, pages=3))
    # Pages of 500 tags through repositories of five; and the same from the repository index (no rests).
    fives = {f"team/r{i:04d}": {f"t{j}" for j in range(5)} for i in range(3000)}
    near(counted_and_held(fives, limit=500, pages=3))
    near(counted_and_held(fives, limit=500, pages=3, indexed=True))


def test_catalog_names_kept_from_page_to_page_are_counted_as_held() -> None:
    # The rests a walk's pages hand out are cut from one tuple of names while no catalog page is read:
    # pages inside one repository keep the very rest they were given; pages through the names keep the
    # tuple, the names they went past with it, until past half of it they are let go (a shorter tuple).
    around = {"team/a": {f"t{i:02d}" for i in range(40)}, **one_tag_each(600)}
    near(counted_and_held(around, limit=1, pages=12))
    near(counted_and_held(one_tag_each(600), limit=5, pages=8))  # 40 of the 100 names first read
    near(counted_and_held(one_tag_each(600), limit=5, pages=14))  # 70: the first 65 let go
    near(counted_and_held(one_tag_each(600, lambda i: f"r{i:04d}-" + "y" * 200), limit=5, pages=14))


def test_small_walks_under_long_names_count_their_keys_and_where_their_rests_begin() -> None:
    # Walks of a few tags in a repository of a long name keep as much in their tokens' keys (the one
    # decoded from the token asked, the strings of the one handed out) and their catalog rests' starts
    # as in their tag lists; each counted with the walk (review-walks3 F1: 0.70-0.80 before).
    long = {"team/r0000-" + "y" * 200: {f"t{j}" + "z" * 120 for j in range(3)}}
    near(counted_and_held(long, limit=1, pages=1, walks=200))
    near(counted_and_held(long, limit=1, pages=2, walks=200))
    near(counted_and_held(long, limit=1, pages=2, walks=200, indexed=True))
    longest = {"team/r0000-" + "y" * 234: {f"t{j}" + "z" * 126 for j in range(3)}}
    near(counted_and_held(longest, limit=1, pages=1, walks=200))
    near(counted_and_held(longest, limit=1, pages=2, walks=200))
    # Short names, a few repositories each: the keys and rests weigh less, counted all the same.
    near(counted_and_held(one_tag_each(3), limit=1, pages=2, walks=200))


@pytest.mark.parametrize("char", ["\u00fc", "\u6f22", "\U0001f600"], ids=["latin-1", "cjk", "emoji"])
def test_tags_that_are_not_ascii_are_counted_as_held(char: str) -> None:
    # The registry client hands out every tag the registry lists (4b2d434), and CPython gives a string
    # with a character beyond ASCII a longer header and 1, 2 or 4 bytes a character: counted a byte a
    # character, such walks were 0.8, 0.6 and 0.4 of their memory (review-walks12 L2).
    listed = {"team/a": {f"v{i:04d}" + char * 30 for i in range(2_000)}, **one_tag_each(3)}
    near(counted_and_held(listed, limit=500, pages=1))
    near(counted_and_held(listed, limit=500, pages=3))
    # A few tags each: the keys' tags (the one decoded from the token asked, the one handed out).
    few = {f"team/r{i}": {f"t{j}" + char * 250 for j in range(3)} for i in range(3)}
    near(counted_and_held(few, limit=1, pages=2, walks=200))
    near(counted_and_held(few, limit=2, pages=2, walks=200))


def test_the_namespace_of_the_list_a_walk_walks_is_counted() -> None:
    # Each walk keeps the list it walks (`Listed`): in an all-namespaces list pinned to a namespace,
    # that namespace is the selector's value, a string of the request's own, which no key or catalog
    # name of the walk holds. Uncounted: 0.93 for walks of two pages in a 63-character namespace
    # (review-unrev F5). A namespace list's walks alongside.
    long = "n" * 63
    content = {f"{long}/r{i}": {"x1"} for i in range(3)}
    for pinned in (True, False):
        for pages in (1, 2):
            near(counted_and_held(content, limit=1, pages=pages, walks=300, namespace=long, pinned=pinned))


def test_the_namespace_of_every_page_of_a_walk_is_counted() -> None:
    # A pinned walk keeps a catalog rest of its first page, whose namespace is that page's selector
    # value, not the last page's its Listed keeps: uncounted, two pages over two repositories were
    # counted at 0.93 (review-walks4 F2).
    long = "n" * 63
    two = {f"{long}/r{i}": {"x1"} for i in range(2)}
    near(counted_and_held(two, limit=1, pages=2, walks=300, namespace=long, pinned=True))
    near(counted_and_held(two, limit=1, pages=2, walks=300, namespace=long))


def test_walks_past_the_decoded_tokens_kept_count_their_namespace() -> None:
    # A namespace list's namespace is the URL's, a string of each request's own, which its walk keeps:
    # counted, and not held past the walk by the tokens decoded (`continuation._decoded` kept a token's
    # scope uncopied). With more walks than it keeps, they were counted at 0.90-0.95 (review-walks4 F3).
    long = "n" * 63
    walks = continuation.DECODED_MAX * 2
    for repositories in (2, 3):
        content = {f"{long}/r{i}": {"x1"} for i in range(repositories)}
        for pages in (1, 2):
            near(counted_and_held(content, limit=1, pages=pages, walks=walks, namespace=long))


def test_walks_ending_in_the_last_repository_count_no_catalog_names() -> None:
    # A page ending in the namespace's last repository keeps an empty catalog rest: the one empty
    # tuple, never freed, and no index of its names. Counted as 104 bytes, 1.05-1.065 (review-walks4 F4).
    for namespace in ("n" * 63, "team"):
        content = {f"{namespace}/r": {"a1", "a2", "a3"}}
        for pinned in (False, True):
            near(counted_and_held(content, limit=1, pages=1, walks=300, namespace=namespace, pinned=pinned))


def test_a_long_tag_list_kept_for_every_page_is_counted_once() -> None:
    big = {"team/a": {f"v{i:05d}" for i in range(5000)}}
    near(counted_and_held(big, limit=100, pages=3))
    near(counted_and_held({**big, **one_tag_each(300)}, limit=100, pages=3))


def emptied(count: int) -> dict[str, set[str]]:
    """Repositories whose tags were all deleted (distribution keeps them in the catalog) between two
    that have tags: a continued page goes through all of them."""
    around = {f"v{i}" for i in range(10)}
    return {"team/a": around, **{f"team/e{i:05d}-" + "q" * 30: set() for i in range(count)}, "team/z": around}


def test_repositories_with_no_tags_left_are_counted_each() -> None:
    # Each reads as the one empty tuple: the repository and its place in the walk's mapping are held
    # for each of them all the same.
    near(counted_and_held(emptied(2000), limit=5, pages=2))
    near(counted_and_held(emptied(5000), limit=5, pages=2, indexed=True))


def test_a_mapping_entry_is_counted_per_repository_and_a_tag_list_once() -> None:
    one = kept_size({AT: Kept({"team/e00000": ()})})[0]
    many = kept_size({AT: Kept({f"team/e{i:05d}": () for i in range(2000)})})[0]
    # At least each repository name (a string of 11 characters) and its dict slot.
    assert many - one >= 1999 * (len("team/e00000") + 49 + 24)
    shared = ("v1", "v2")
    assert kept_size({AT: Kept({"team/a": shared, "team/b": shared})})[1] == 2  # the list's tags once
