"""The walk cache (api/walks.py): what a paginated walk keeps for its next pages, for how long, for whom.

On a twisted Clock; the service-level tests walk a double of distribution 2.8's listing
(tests/unit/test_inventory_paging.py) through TagsService with continue tokens, as a client does.
"""

from __future__ import annotations

import random
import sys
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from payloadtags.access.authz import AlwaysAllow
from payloadtags.api import continuation, walks
from payloadtags.api.errors import ApiError
from payloadtags.api.options import list_options
from payloadtags.api.tags import Observe, ResourceVersions, TagsService
from payloadtags.api.walks import (
    Kept,
    Listed,
    Reported,
    WalkCache,
    _list_size,
    identity_size,
    is_walk_id,
    kept_size,
    new_walk_id,
)
from payloadtags.identity import UserInfo
from payloadtags.inventory import CatalogRest, Inventory
from payloadtags.metrics import Metrics
from payloadtags.names import TagRef, encode_name, split_repository
from payloadtags.registry import CatalogPage
from tests.unit.test_inventory_paging import Distribution28, Lexical, Registry
from tests.unit.test_registry_cancellation import track
from tests.unit.test_registry_reads import Held, client_for, tags_reply
from tests.unit.test_repoindex import run

ALICE = UserInfo("alice", groups=("devs",))
BOB = UserInfo("bob", groups=("devs",))
# What the cache counts for ALICE's identity, once, whatever her walks keep.
IDENTITY = identity_size(ALICE)


@attrs.frozen
class Only:
    """Allows one repository path of one namespace, to anyone."""

    namespace: str
    path: str

    def allowed(self, user: UserInfo, verb: str, namespace: str, path: str) -> bool:
        return (namespace, path) == (self.namespace, self.path)

    def allowed_everywhere(self, user: UserInfo, verb: str, namespace: str) -> bool:
        return False  # one path only


def lists(**repositories: int) -> dict[str, list[str]]:
    return {name: [f"v{i}" for i in range(count)] for name, count in repositories.items()}


# --- the cache on its own ---------------------------------------------------------------------------

TEAM = Listed("team", "team")
AT = TagRef("team", "a", "v1")  # where the token that continues from what is kept points


def cost(**repositories: int) -> int:
    """The bytes a walk keeping these lists counts."""
    return kept_size({AT: Kept(lists(**repositories))})[0]


def keep(cache: WalkCache, who: UserInfo, walk: str, **repositories: int) -> None:
    """What a walk's page keeps for the token it hands out, as a first page does."""
    cache.keep(who, walk, TEAM, None, (AT, Kept(lists(**repositories))))


def held(cache: WalkCache, who: UserInfo, walk: str, at: TagRef = AT) -> Any:
    kept = cache.continued(who, walk, TEAM, at)[1]
    return kept.lists if kept is not None else None


def walked(cache: WalkCache, who: UserInfo, walk: str) -> Listed | None:
    """The list ``who``'s walk ``walk`` keeps data for (None: none), as a continued page's look tells
    it, asked by a page of a scope no walk here lists: a look that restarts no walk's ttl."""
    return cache.continued(who, walk, Listed("elsewhere", "elsewhere"), AT)[0]


def test_a_walk_is_kept_until_it_was_not_continued_for_the_ttl() -> None:
    clock = Clock()
    cache = WalkCache(clock, ttl=60)
    keep(cache, ALICE, "w", a=3)
    clock.advance(59)
    assert held(cache, ALICE, "w") == lists(a=3)  # a lookup is a page: it restarts the ttl
    clock.advance(59)
    keep(cache, ALICE, "w", b=2)  # the page's end replaces what the walk keeps
    clock.advance(60)
    assert held(cache, ALICE, "w") == lists(b=2)
    clock.advance(60.5)
    assert held(cache, ALICE, "w") is None
    assert cache.size == cache.names == 0 and len(cache) == 0


def test_expired_walks_are_dropped_when_any_walk_is_used() -> None:
    clock = Clock()
    cache = WalkCache(clock, ttl=60)
    keep(cache, ALICE, "old", a=5)
    clock.advance(61)
    keep(cache, ALICE, "new", b=1)
    assert len(cache) == 1 and cache.names == 1


def test_abandoned_walks_are_freed_without_another_list() -> None:
    clock = Clock()
    cache = WalkCache(clock, ttl=60)
    cache.run()
    keep(cache, ALICE, "w", a=5)
    clock.advance(30)
    clock.advance(30)
    assert cache.names == 5  # not expired yet: a page could still come
    clock.advance(30)
    assert cache.size == cache.names == 0 and len(cache) == 0
    cache.stop()
    assert not clock.getDelayedCalls()


def test_past_the_total_bound_the_least_recently_continued_walks_go() -> None:
    clock = Clock()
    cache = WalkCache(clock, max_bytes=cost(a=4) * 5 // 2 + IDENTITY)
    keep(cache, ALICE, "w1", a=4)
    clock.advance(1)
    keep(cache, ALICE, "w2", b=4)
    clock.advance(1)
    assert held(cache, ALICE, "w1") is not None  # w1 is now the more recently used
    keep(cache, ALICE, "w3", c=4)  # three walks' bytes are over the bound: w2 goes
    assert held(cache, ALICE, "w2") is None
    assert held(cache, ALICE, "w1") == lists(a=4)
    assert held(cache, ALICE, "w3") == lists(c=4)
    assert cache.size == cost(a=4) + cost(c=4) + IDENTITY and cache.names == 8
    keep(cache, BOB, "huge", d=100)  # larger than the bound on its own: not kept, nothing evicted
    assert held(cache, BOB, "huge") is None
    assert cache.names == 8 and len(cache) == 2


MALLORY = UserInfo("mallory", groups=("devs",))
CAROL = UserInfo("carol")


def test_one_callers_many_walks_evict_that_callers_own_not_other_callers() -> None:
    # Each list is a walk, kept a minute: one caller listing in a loop (or handing out many walk ids)
    # filled the bound and evicted everyone else's walks, least recently continued first, and their
    # next pages read the registry again. A caller over the fair share now loses its own first.
    clock = Clock()
    one = cost(a=4)
    identities = IDENTITY + identity_size(BOB) + identity_size(MALLORY)
    cache = WalkCache(clock, max_bytes=12 * one + identities)
    assert 2 * one < cache.max_bytes // walks.FAIR_SHARE  # Alice's two walks: within her share
    keep(cache, ALICE, "a1", a=4)
    keep(cache, ALICE, "a2", b=4)
    keep(cache, BOB, "b1", c=4)
    clock.advance(1)
    for i in range(50):
        keep(cache, MALLORY, f"m{i}", d=4)
        clock.advance(0.1)
    assert cache.size <= cache.max_bytes
    assert [held(cache, ALICE, "a1"), held(cache, ALICE, "a2"), held(cache, BOB, "b1")] == [
        lists(a=4),
        lists(b=4),
        lists(c=4),
    ]
    # Mallory's newest walks, as many as the rest of the bound takes; her oldest went.
    kept = [i for i in range(50) if walked(cache, MALLORY, f"m{i}") is not None]
    assert kept == list(range(41, 50))
    # Among her walks too, the least recently continued goes first.
    assert held(cache, MALLORY, "m41") == lists(d=4)
    keep(cache, MALLORY, "m50", d=4)
    assert walked(cache, MALLORY, "m41") is not None and walked(cache, MALLORY, "m42") is None


def test_the_fair_share_is_per_user_name_and_uid_however_the_users_extra_varies() -> None:
    # r2notesfix L1: the share was counted per whole identity. A service account's bound tokens carry
    # an extra of their own per token (credential-id) or per pod (pod-name, pod-uid), as
    # Impersonate-Extra-* may: each of one user's lists was a caller of one walk, never over the
    # share, and evicted everyone else's walks, least recently continued first.
    clock = Clock()
    one = cost(a=4)
    mallories = [
        UserInfo(
            "system:serviceaccount:ns:mallory",
            extra=(("authentication.kubernetes.io/credential-id", (f"JTI=token-{i:04d}",)),),
        )
        for i in range(50)
    ]
    identities = IDENTITY + identity_size(BOB) + identity_size(mallories[0])
    cache = WalkCache(clock, max_bytes=12 * one + identities + 8 * identity_size(mallories[0]))
    keep(cache, ALICE, "a1", a=4)
    keep(cache, ALICE, "a2", b=4)
    keep(cache, BOB, "b1", c=4)
    clock.advance(1)
    for i, who in enumerate(mallories):
        keep(cache, who, f"m{i}", d=4)
        clock.advance(0.1)
    assert cache.size <= cache.max_bytes
    assert [held(cache, ALICE, "a1"), held(cache, ALICE, "a2"), held(cache, BOB, "b1")] == [
        lists(a=4),
        lists(b=4),
        lists(c=4),
    ]
    # Her newest walks are kept, each under its own identity; her oldest went, with their identities.
    kept = [i for i in range(50) if walked(cache, mallories[i], f"m{i}") is not None]
    assert kept and kept == list(range(50 - len(kept), 50))
    assert walked(cache, mallories[-2], "m49") is None  # the data stays the identity's own
    assert len(cache._identities) == 2 + len(kept)
    # Another uid is another user: a user of the same name's walks are not over its share.
    other = UserInfo("system:serviceaccount:ns:mallory", uid="2")
    keep(cache, other, "o", a=4)
    assert walked(cache, other, "o") is not None and held(cache, BOB, "b1") == lists(c=4)


def test_the_fair_share_decides_only_past_the_bound_and_a_callers_one_walk_goes_as_anyones() -> None:
    clock = Clock()
    one = cost(a=4)
    big = cost(a=40)
    identities = IDENTITY + identity_size(BOB) + identity_size(CAROL)
    cache = WalkCache(clock, max_bytes=big + 5 * one + identities)
    assert big > cache.max_bytes // walks.FAIR_SHARE
    keep(cache, BOB, "big", a=40)  # more than the share, in one walk
    clock.advance(1)
    for i in range(5):  # over the share too, in five walks: within the bound, all kept
        keep(cache, ALICE, f"a{i}", b=4)
        clock.advance(1)
    assert len(cache) == 6
    keep(cache, CAROL, "c", c=4)  # past the bound: Alice's least recently continued, not Bob's older one
    assert walked(cache, BOB, "big") is not None and walked(cache, ALICE, "a0") is None
    assert [walked(cache, ALICE, f"a{i}") is not None for i in range(1, 5)] == [True] * 4
    # No caller over the share with two walks: the least recently continued goes, whoever's.
    cache = WalkCache(clock, max_bytes=big + 2 * one + identities)
    keep(cache, BOB, "big", a=40)
    clock.advance(1)
    keep(cache, ALICE, "a", b=4)
    keep(cache, CAROL, "c", c=4)
    assert len(cache) == 3
    keep(cache, MALLORY, "m", d=4)
    assert walked(cache, BOB, "big") is None
    assert [
        walked(cache, who, walk) is not None for who, walk in ((ALICE, "a"), (CAROL, "c"), (MALLORY, "m"))
    ] == [True] * 3


def test_walks_are_kept_per_caller() -> None:
    cache = WalkCache(Clock())
    keep(cache, ALICE, "w", a=2)
    assert held(cache, BOB, "w") is None
    assert held(cache, UserInfo("alice", groups=("admins",)), "w") is None  # same name, other identity
    assert held(cache, ALICE, "w") == lists(a=2)


def test_a_callers_identity_is_held_once_for_all_her_walks_counted_once_and_freed_with_the_last() -> None:
    # Every request authenticates to a new UserInfo, its strings new too: each walk's key held the one
    # of the page that last kept it, uncounted (review-walks W1). One object per identity now.
    def alice() -> UserInfo:
        return UserInfo("".join(["ali", "ce"]), groups=("".join(["de", "vs"]),))

    clock = Clock()
    cache = WalkCache(clock)
    first = alice()
    keep(cache, first, "w1", a=1)
    keep(cache, alice(), "w1", a=1)  # w1's next page
    clock.advance(1)
    keep(cache, alice(), "w2", a=1)
    assert cache.size == 2 * cost(a=1) + IDENTITY
    assert [who for who, _ in cache._walks] == [first, first]
    assert all(who is first for who, _ in cache._walks)
    # Found by any object of the same identity, by no other identity.
    assert held(cache, alice(), "w2") == lists(a=1)
    assert held(cache, UserInfo("alice", groups=("admins",)), "w2") is None
    assert held(cache, UserInfo("alice", groups=("devs",), uid="1"), "w2") is None
    # Another identity is counted on its own, and each goes with its last walk.
    keep(cache, BOB, "w3", a=1)
    assert cache.size == 3 * cost(a=1) + IDENTITY + identity_size(BOB)
    clock.advance(59.5)
    assert walked(cache, alice(), "w1") is None and walked(cache, alice(), "w2") is not None
    assert cache.size == 2 * cost(a=1) + IDENTITY + identity_size(BOB)
    clock.advance(1)
    assert walked(cache, BOB, "w3") is None
    assert (cache.size, len(cache), cache.names) == (0, 0, 0)


def test_a_walk_keeps_for_its_last_two_tokens_and_only_for_the_list_it_walks() -> None:
    cache = WalkCache(Clock())
    later, last = TagRef("team", "b", "v1"), TagRef("team", "c", "v1")
    keep(cache, ALICE, "w", a=2)
    used = lists(a=2, b=3)
    # The page asked with AT used a's list and b's, and hands out a token at b with b's (one object).
    cache.keep(ALICE, "w", TEAM, (AT, Kept(used)), (later, Kept({"b": used["b"]})))
    assert held(cache, ALICE, "w") == used and held(cache, ALICE, "w", later) == lists(b=3)
    # b's list: counted once (the second token's mapping and its entry count besides).
    assert cache.names == 5
    assert cache.size == kept_size({AT: Kept(used), later: Kept({"b": used["b"]})}, AT)[0] + IDENTITY
    cache.keep(ALICE, "w", TEAM, (later, Kept(lists(b=3))), (last, Kept(lists(c=1))))
    assert held(cache, ALICE, "w") is None  # a token two pages back: read again
    assert held(cache, ALICE, "w", later) == lists(b=3) and held(cache, ALICE, "w", last) == lists(c=1)
    # The walk's last page, asked with the token at c: what it used stays for that token only.
    cache.keep(ALICE, "w", TEAM, (last, Kept(lists(c=1))), None)
    assert held(cache, ALICE, "w", later) is None and held(cache, ALICE, "w", last) == lists(c=1)
    # Another list does not get them, and is told which list the walk walks.
    assert cache.continued(ALICE, "w", Listed("", None), last)[1] is None
    assert cache.continued(ALICE, "w", Listed("", "team"), last)[1] is None
    assert walked(cache, ALICE, "w") == TEAM and walked(cache, BOB, "w") is None


def test_a_continued_pages_one_look_is_listed_then_held() -> None:
    # `continued` answers a continued page in one look: the list the walk walks, and what it kept for
    # that page when the list is the page's; a walk of another scope (its token given to another list,
    # which refuses it) tells no lookup.
    looked: list[bool] = []
    clock = Clock()
    cache = WalkCache(clock, on_lookup=looked.append)
    keep(cache, ALICE, "w", a=2)
    assert cache.continued(ALICE, "w", TEAM, AT) == (TEAM, Kept(lists(a=2)))
    assert cache.continued(ALICE, "w", TEAM, AT) == (TEAM, Kept(lists(a=2)))
    assert looked == [True, True]
    assert cache.continued(ALICE, "w", Listed("team", None), AT) == (TEAM, None)
    assert cache.continued(ALICE, "w", TEAM, TagRef("team", "b", "v1")) == (TEAM, None)
    assert cache.continued(BOB, "w", TEAM, AT) == (None, None)
    assert looked == [True, True, False, False, False]
    assert cache.continued(ALICE, "w", Listed("", None), AT) == (TEAM, None)
    assert looked == [True, True, False, False, False]
    # A lookup that finds its page restarts the walk's ttl.
    clock.advance(59)
    assert cache.continued(ALICE, "w", TEAM, AT)[1] is not None
    clock.advance(59)
    assert cache.continued(ALICE, "w", TEAM, AT)[1] is not None
    clock.advance(60.5)
    assert cache.continued(ALICE, "w", TEAM, AT) == (None, None) and len(cache) == 0


def test_past_the_bound_a_walk_keeps_what_its_next_page_starts_from() -> None:
    # Lists long enough that one of them and its caller's identity fit where both lists do not.
    cache = WalkCache(Clock(), max_bytes=cost(a=12) * 3 // 2)
    later = TagRef("team", "b", "v1")
    cache.keep(ALICE, "w", TEAM, (AT, Kept(lists(a=12))), (later, Kept(lists(b=12))))
    assert held(cache, ALICE, "w") is None and held(cache, ALICE, "w", later) == lists(b=12)
    assert cache.size == kept_size({later: Kept(lists(b=12))})[0] + IDENTITY and cache.names == 12


def rest(*repositories: str) -> CatalogRest:
    """Catalog names read past a page's end, as `inventory.CatalogCursor` keeps them."""
    entries = tuple((f"team/{name}", "team", name) for name in repositories)
    return CatalogRest("team", "team/a", entries, None, True, 1)


def test_what_a_walk_keeps_counts_the_bytes_of_its_names() -> None:
    # The bound is on memory: a name counts its characters and the objects that hold it, so longer
    # names count more, and catalog names read past a page's end count as well as tag lists.
    short = kept_size({AT: Kept({"team/a": ("v1",) * 100})})
    long = kept_size({AT: Kept({"team/a": ("v" * 128,) * 100})})
    assert short[1] == long[1] == 100
    assert long[0] - short[0] == 100 * 126  # the characters, the rest per tag alike
    assert short[0] > 100 * 50  # a string's header, and the reference to it, count too
    names = kept_size({AT: Kept({}, rest("b" * 200, "c" * 200))})
    assert names[1] == 2 and names[0] > 2 * 2 * 200  # the repository and its path, each a string
    assert kept_size({AT: Kept({}, rest("b", "c"))})[0] == names[0] - 2 * 2 * 199


def test_the_bound_evicts_by_bytes_not_by_count() -> None:
    clock = Clock()
    small = kept_size({AT: Kept({}, rest(*"bcdefghijk"))})[0]
    cache = WalkCache(clock, max_bytes=small * 3 + IDENTITY)
    for walk in ("w1", "w2", "w3"):  # three walks of short names: within the bound
        cache.keep(ALICE, walk, TEAM, None, (AT, Kept({}, rest(*"bcdefghijk"))))
    assert len(cache) == 3 and cache.names == 30
    # As many names, longer: the bytes go over the bound, and the least recently used walks go.
    cache.keep(ALICE, "long", TEAM, None, (AT, Kept({}, rest(*(c * 100 for c in "bcdefghijk")))))
    assert walked(cache, ALICE, "long") == TEAM
    assert walked(cache, ALICE, "w1") is None
    assert cache.size <= small * 3 + IDENTITY and cache.names < 40


def _counting_measures(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[object], Callable[..., tuple[int, int, walks.Measured]]]:
    """`walks._measure` patched to note each call: the calls' arguments, and the measure itself (to
    measure with outside the count)."""
    calls: list[object] = []
    measure = walks._measure

    def counted(*args: Any) -> Any:
        calls.append(args)
        return measure(*args)

    monkeypatch.setattr(walks, "_measure", counted)
    return calls, measure


def test_a_pages_keep_is_measured_exactly_only_when_the_size_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # Which strings of a walk are whose (its keys', its rests', its catalog entries') was most of a
    # page's keep, and the walk's next page replaced that count before anything read it (issue #11).
    # A page's keep counts an upper bound; the exact measure is made when the size is read (or the
    # bound comes near max_bytes: test_the_bound_evicts_by_bytes_not_by_count), once.
    measures, measure = _counting_measures(monkeypatch)
    big = tuple(f"v{i}" for i in range(100))
    cache = WalkCache(Clock())
    asked: tuple[TagRef, Kept] | None = None
    for number in range(5):
        handed = (
            TagRef("team", "a", f"v{number}"),
            Kept({"team/a": big, f"team/s{number}": ("x1",)}, rest("b")),
        )
        cache.keep(ALICE, "w", TEAM, asked, handed)
        kept = dict(pair for pair in (asked, handed) if pair is not None)
        at = asked[0] if asked is not None else None
        asked = (handed[0], Kept({"team/a": big}, handed[1].rest))
    exact = measure(kept, at, {}, TEAM)  # not through the patch
    assert cache.names == exact[1] and measures == []  # the names are counted exactly as kept
    assert cache.size == exact[0] + IDENTITY and len(measures) == 1
    assert cache.size == exact[0] + IDENTITY and len(measures) == 1  # measured once


def test_no_pages_keep_measures_more_than_its_own_walk_and_one_other(monkeypatch: pytest.MonkeyPatch) -> None:
    # review-walks8 F1: the page whose bound first took the total over max_bytes measured every walk
    # kept since the last exact measure, on the reactor thread (12,047 walks, 2 s at the default 32
    # MiB). A page's keep measures its own walk and at most one other, whatever the cache holds.
    calls, measure = _counting_measures(monkeypatch)

    def handed(number: int) -> tuple[TagRef, Kept]:
        lists = {f"team/r{number}-{j}": tuple(f"v{k}" for k in range(5)) for j in range(4)}
        return TagRef("team", f"r{number}-0", "v1"), Kept(lists)

    one = measure(dict([handed(0)]), None, {}, TEAM)[0]
    cache = WalkCache(Clock(), max_bytes=one * 1000)  # about 1,000 such walks by exact measure
    most = 0
    for number in range(3000):
        before = len(calls)
        cache.keep(ALICE, f"w{number:015d}", TEAM, None, handed(number))
        most = max(most, len(calls) - before)
    assert most <= 2, f"one page's keep measured {most} walks"
    # The walks an exact count per page keeps: the most recent, as many as fit.
    kept = [number for number in range(3000) if (ALICE, f"w{number:015d}") in cache._walks]
    assert kept == list(range(3000 - len(kept), 3000))
    assert cache.size + measure(dict([handed(kept[0] - 1)]), None, {}, TEAM)[0] > cache.max_bytes


def test_a_walk_over_its_bound_but_within_its_measure_keeps_both_tokens() -> None:
    # review-walks8 F2: a walk's own "too much for both tokens" is decided on its exact measure, not
    # on its bound (tags of one character are CPython's own strings, bounded at 50 bytes each).
    ones = ("x",) * 5000
    asked = (TagRef("team", "a", "x"), Kept({"team/a": ones}))
    handed = (TagRef("team", "b", "v1"), Kept({"team/b": ("v1", "v2")}))
    kept = dict([asked, handed])
    exact = walks._measure(kept, asked[0], {}, TEAM)[0]
    cache = WalkCache(Clock(), max_bytes=exact + IDENTITY + 100)
    assert walks._bound(kept, {}, TEAM)[0] > cache.max_bytes
    cache.keep(ALICE, "w", TEAM, asked, handed)
    assert cache.continued(ALICE, "w", TEAM, handed[0])[1] is not None
    assert cache.continued(ALICE, "w", TEAM, asked[0])[1] is not None  # a retry of the asked token


@pytest.mark.parametrize("asked_kept", ["nothing", "too much for both"])
def test_a_walk_holds_no_key_of_a_token_whose_data_it_does_not_keep(asked_kept: str) -> None:
    # review-walks12 N3: the walk held the asked token's key (a `TagRef` and strings decoded for it
    # alone) for its exact measure even when nothing was kept for that token, and counted none of it.
    import gc

    handed = (TagRef("team", "b", "v1"), Kept({"team/b": ("v1", "v2")}))
    at = TagRef("team", "a", "".join(["v", "0"]))
    if asked_kept == "nothing":
        asked, max_bytes = (at, Kept({})), walks.DEFAULT_MAX_BYTES
    else:
        asked = (at, Kept({"team/a": tuple(f"v{i}" for i in range(5000))}))
        max_bytes = walks._measure(dict([handed]), None, {}, TEAM)[0] + IDENTITY + 100
    cache = WalkCache(Clock(), max_bytes=max_bytes)
    cache.keep(ALICE, "w", TEAM, asked, handed)
    assert cache.continued(ALICE, "w", TEAM, handed[0])[1] is not None
    assert cache.continued(ALICE, "w", TEAM, at)[1] is None
    key = weakref.ref(at)
    del at, asked
    gc.collect()
    assert key() is None
    assert cache.size == walks._measure(dict([handed]), None, {}, TEAM)[0] + IDENTITY


def test_a_measure_that_raises_while_a_page_is_fitted_leaves_its_walk_its_identitys_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # review-walks8 note: were a walk's exact measure to raise once the page's entry is made, keep's
    # release of the identity (for a page that kept nothing) took the hold the entry holds, and
    # dropping the walks later raised KeyError.
    clock = Clock()
    page = (AT, Kept(lists(a=3)))
    exact = walks._measure(dict([page]), None, {}, TEAM)[0]
    assert walks._bound(dict([page]), {}, TEAM)[0] > exact
    cache = WalkCache(clock, max_bytes=2 * exact + IDENTITY)  # both fit, but not both bounds
    cache.keep(ALICE, "w1", TEAM, None, page)

    def fails(*args: Any) -> Any:
        raise RuntimeError("measure")

    monkeypatch.setattr(walks, "_measure", fails)
    with pytest.raises(RuntimeError):
        cache.keep(ALICE, "w2", TEAM, None, (AT, Kept(lists(a=3))))
    monkeypatch.undo()
    assert walked(cache, ALICE, "w2") == TEAM
    clock.advance(cache.ttl + 1)
    assert walked(cache, ALICE, "w1") is None and len(cache) == 0  # both dropped, no KeyError
    assert cache.size == 0 and cache.names == 0


@pytest.mark.parametrize(
    "kept",
    [
        pytest.param({AT: Kept(lists(a=3))}, id="one list"),
        # Long enough that the bound's slack on keys and mappings cannot hide a tag counted short
        # (review-walks12 L1: at 70 tags it did).
        pytest.param({AT: Kept({"team/a": tuple(f"v{i}" for i in range(1_000))})}, id="a list of 1,000 tags"),
        pytest.param({AT: Kept({"team/a": ("x", "y", "v1")})}, id="tags of one character"),
        pytest.param({AT: Kept({"team/a": ("x", "\u00fc", "v1", "\u6f22" * 9)})}, id="tags not ascii"),
        pytest.param({AT: Kept({}, rest(*(c * 100 for c in "bcd")))}, id="long catalog names"),
        pytest.param(
            {
                AT: Kept({"team/a": tuple(f"v{i}" for i in range(70)), "team/b": ()}, rest("b", "c")),
                TagRef("team", "b", "x1"): Kept({"team/b": ()}, rest("c")),
            },
            id="two tokens",
        ),
    ],
)
def test_a_pages_count_is_at_least_its_measure(kept: dict[TagRef, Kept]) -> None:
    # The bound drops walks by their exact measure: a page's count may be more, never less, and
    # counts the same names and remembers the same measures.
    for at in (None, AT):
        bound, names, measured = walks._bound(kept, {}, TEAM)
        exact = walks._measure(kept, at, {}, TEAM)
        assert bound >= exact[0] and names == exact[1] and measured.keys() == exact[2].keys()
        # And from a page before's measures, exact or bounds.
        assert walks._bound(kept, measured, TEAM)[0] == bound
        assert walks._bound(kept, exact[2], TEAM)[0] >= exact[0]


def _reporter(repository: str, tags: Sequence[str]) -> None:
    pass


def test_a_pages_count_covers_where_it_reported_as_its_measure_does() -> None:
    # A walk's `Reported` is its own, counted by the measure; the bound counts it too, whatever its
    # slack elsewhere.
    for kept in ({AT: Kept(lists(a=3))}, {AT: Kept({}, rest("b"))}):
        reported = {ref: attrs.evolve(one, reported_to=Reported(_reporter)) for ref, one in kept.items()}
        more = walks._measure(reported, AT, {}, TEAM)[0] - walks._measure(kept, AT, {}, TEAM)[0]
        assert more > 0
        assert walks._bound(reported, {}, TEAM)[0] - walks._bound(kept, {}, TEAM)[0] >= more


class Counted(tuple[str, ...]):
    """A tag list that counts how often its tags are gone through (measuring it does that)."""

    passes = 0

    def __iter__(self) -> Any:
        type(self).passes += 1
        return super().__iter__()


def test_a_page_measures_only_the_lists_it_brought() -> None:
    # A walk through one big repository keeps its list for every page, the same object: measured once
    # when first kept, not on every page (300,000 tags cost milliseconds a page, seconds a walk).
    Counted.passes = 0
    big = Counted(f"v{i}" for i in range(1000))
    cache = WalkCache(Clock())
    asked: tuple[TagRef, Kept] | None = None
    kept: dict[TagRef, Kept] = {}
    for number in range(20):
        # Each page also reads a small repository of its own, and hands out the big list again.
        small = Counted((f"s{number}",))
        handed = (TagRef("team", "a", f"v{number}"), Kept({"team/a": big, f"team/s{number}": small}))
        cache.keep(ALICE, "w", TEAM, asked, handed)
        kept = dict(pair for pair in (asked, handed) if pair is not None)
        at = asked[0] if asked is not None else None
        asked = (handed[0], Kept({"team/a": big}))
    assert Counted.passes == 1 + 20  # the big list once, each small one once
    # What is counted is what the walk keeps now: the big list (once) and the last page's small one.
    assert (cache.size - IDENTITY, cache.names) == kept_size(kept, at)
    assert cache.names == 1000 + 1


class CountedName(str):
    """A catalog name that counts how often its length is taken (measuring a catalog entry does)."""

    lengths = 0

    def __len__(self) -> int:
        type(self).lengths += 1
        return super().__len__()


class CountedCatalog(Registry):
    """Answers the catalog with `CountedName`s, and counts the names it answered."""

    names_read = 0

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        page = await super().catalog(last, n)
        self.names_read += len(page.repositories)
        return CatalogPage([CountedName(name) for name in page.repositories], page.more)


def test_a_continued_page_does_not_measure_the_catalog_names_its_walk_keeps_again() -> None:
    # A walk keeps the catalog names its pages read past their end (a hundred, then hundreds); a page
    # measured every one of them again for the walk cache's count, on each page (14% of a served
    # page of one tag through 100 repositories, issue #11). Now each name is measured when read, and
    # again at most once when the walk has gone past half of the names read with it.
    registry = CountedCatalog(
        {"team/a": {f"t{i:02d}" for i in range(30)}, **{f"team/r{i:04d}": {"x"} for i in range(300)}}
    )
    tags = service(registry, Clock())
    shown, token = page(tags, ALICE, None, limit=1)
    assert tags.walks is not None and tags.walks.names > 90  # the names read past team/a, kept
    for number in range(1, 20):  # pages inside team/a: the kept names measured on none of them
        before = CountedName.lengths
        shown, token = page(tags, ALICE, token, limit=1)
        assert shown == [f"a:t{number:02d}"]
        assert CountedName.lengths - before <= 4  # where the catalog goes on (a name or two), no more
    before, pages = CountedName.lengths, 0
    while token is not None and pages < 200:  # through the one-tag repositories, one a page
        shown, token = page(tags, ALICE, token, limit=1)
        pages += 1
    assert shown == ["r0189:x"] and registry.names_read == 301  # each name read once
    assert CountedName.lengths - before <= 2 * registry.names_read + 4 * pages


def test_a_walk_reads_a_catalog_that_ended_once() -> None:
    # The first page read the whole catalog (it ended there); the pages inside team/a hand its names on
    # without going through them, and said the catalog went on after them: the walk read it again.
    registry = Registry(
        {"team/a": {f"t{i:02d}" for i in range(5)}, **{f"team/r{i}": {"x"} for i in range(3)}}
    )
    tags = service(registry, Clock())
    shown, token = page(tags, ALICE, None, limit=1)
    walked = shown
    while token is not None:
        shown, token = page(tags, ALICE, token, limit=1)
        walked += shown
    assert walked == [f"a:t{i:02d}" for i in range(5)] + ["r0:x", "r1:x", "r2:x"]
    assert registry.catalog_reads == 1


def test_a_repository_created_after_a_walk_read_the_catalogs_end_shows_in_the_next_walk() -> None:
    # As kube-apiserver serves a walk's continued pages at its first page's snapshot: the first page
    # read the namespace's whole catalog (it ended there), so team/c, created after, is not in the
    # rest of that walk, wherever it sorts. The next walk shows it.
    registry = Registry({"team/a": {f"t{i}" for i in range(3)}, "team/b": {"x"}})
    tags = service(registry, Clock())
    shown, token = page(tags, ALICE, None, limit=1)
    registry.content["team/c"] = {"new"}
    walked = shown
    while token is not None:
        shown, token = page(tags, ALICE, token, limit=1)
        walked += shown
    assert walked == ["a:t0", "a:t1", "a:t2", "b:x"]
    assert registry.catalog_reads == 1
    walked, token = [], None
    while (token is not None) or not walked:
        shown, token = page(tags, ALICE, token, limit=1)
        walked += shown
    assert walked == ["a:t0", "a:t1", "a:t2", "b:x", "c:new"]


def test_a_repository_created_after_the_last_name_read_while_the_catalog_goes_on_shows() -> None:
    # Catalog pages of two names: the first page read team/a and team/b, and the catalog went on. A
    # repository created after team/b (the last name read) is in the next page of names the walk reads.
    registry = Registry({"team/a": {f"t{i}" for i in range(3)}, "team/b": {"x"}, "team/d": {"y"}})
    tags = TagsService(
        inventory=Inventory(registry, concurrency=4, page_size=2),  # type: ignore[arg-type]
        registry_host="registry.test",
        authorizer=AlwaysAllow(),
        versions=ResourceVersions(Clock()),
        walks=WalkCache(Clock()),
    )
    shown, token = page(tags, ALICE, None, limit=1)
    registry.content["team/c"] = {"new"}  # after team/b, the last name read
    registry.content["team/a0"] = {"old"}  # between names read (team/a, team/b): not shown
    walked = shown
    while token is not None:
        shown, token = page(tags, ALICE, token, limit=1)
        walked += shown
    assert walked == ["a:t0", "a:t1", "a:t2", "b:x", "c:new", "d:y"]


def test_walk_ids_are_random_and_token_safe() -> None:
    ids = {new_walk_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(is_walk_id(walk) for walk in ids)
    assert not is_walk_id("") and not is_walk_id("a/b") and not is_walk_id(7)
    # Of the minted length only: a token's id is the walk's key, counted at that length (an id of 64
    # characters, which a forged token could carry, was counted as 16: review-walks6 F3).
    assert not is_walk_id("x" * 15) and not is_walk_id("x" * 17) and not is_walk_id("x" * 64)
    assert is_walk_id("x" * 16)


# --- walks through the service ----------------------------------------------------------------------


def service(registry: Registry, clock: Clock, metrics: Metrics | None = None) -> TagsService:
    return TagsService(
        inventory=Inventory(registry, concurrency=4),  # type: ignore[arg-type]
        registry_host="registry.test",
        authorizer=AlwaysAllow(),
        versions=ResourceVersions(clock),
        walks=WalkCache(clock, on_lookup=metrics.walk_lookup if metrics is not None else None),
    )


def page(tags: TagsService, who: UserInfo, token: str | None, limit: int = 3) -> tuple[list[str], str | None]:
    query = {"limit": [str(limit)], **({"continue": [token]} if token else {})}
    result, meta = run(tags.list(who, "team", list_options(query)))
    return [f"{ref.repository_path}:{ref.tag}" for ref in result.refs], meta.continue_


def walk_id(token: str) -> str | None:
    return continuation.decode(token, "team").walk


def test_a_continued_page_shows_the_repository_as_its_walk_read_it() -> None:
    content = {"team/a": {"v1", "v3", "v5", "v7"}, **{f"team/{name}": {"x"} for name in "bcdez"}}
    registry = Registry(content)
    clock = Clock()
    tags = service(registry, clock)
    shown, token = page(tags, ALICE, None)
    assert shown == ["a:v1", "a:v3", "a:v5"] and token is not None
    # The first page read a and, past its end, a slice of the repositories after it (b to d).
    assert registry.tag_reads == ["team/a", "team/b", "team/c", "team/d"]
    registry.content["team/a"] |= {"v4", "v6", "v8"}  # pushed after the first page read a
    registry.content["team/b"].add("y")  # and b
    registry.content["team/z"].add("y")  # into a repository the walk has not read yet
    registry.tag_reads.clear()
    rest, end = page(tags, ALICE, token, limit=10)
    assert rest == ["a:v7", "b:x", "c:x", "d:x", "e:x", "z:x", "z:y"] and end is None
    assert registry.tag_reads == ["team/e", "team/z"]
    everything = page(tags, ALICE, None, limit=20)[0]
    assert everything[:9] == [f"a:v{i}" for i in (1, 3, 4, 5, 6, 7, 8)] + ["b:x", "b:y"]


def test_without_its_walk_kept_a_page_reads_live() -> None:
    registry = Registry({"team/a": {"v1", "v3", "v5", "v7"}})
    clock = Clock()
    tags = service(registry, clock)
    _, token = page(tags, ALICE, None)
    assert token is not None and walk_id(token) is not None
    registry.content["team/a"].add("v6")
    # Expired, evicted, another replica: the page reads the registry and shows the new tag.
    clock.advance(61)
    assert page(tags, ALICE, token)[0] == ["a:v6", "a:v7"]
    # Another caller with the same token does not get alice's lists either.
    _, token = page(tags, ALICE, None)
    assert token is not None
    registry.content["team/a"].add("v8")
    assert page(tags, BOB, token)[0] == ["a:v6", "a:v7", "a:v8"]
    assert page(tags, ALICE, token)[0] == ["a:v6", "a:v7"]


def test_a_token_without_a_walk_id_reads_live_and_its_next_token_has_one() -> None:
    registry = Registry({"team/a": {f"v{i}" for i in range(8)}})
    clock = Clock()
    tags = service(registry, clock)
    _, token = page(tags, ALICE, None)
    assert token is not None
    old = continuation.decode(token, "team")
    older = continuation.encode(continuation.Continuation(old.resource_version, old.scope, old.last))
    registry.content["team/a"].add("v31")
    registry.tag_reads.clear()
    shown, token = page(tags, ALICE, older)
    assert shown == ["a:v3", "a:v31", "a:v4"] and registry.tag_reads == ["team/a"]
    assert token is not None and walk_id(token) is not None
    registry.tag_reads.clear()
    assert page(tags, ALICE, token)[0] == ["a:v5", "a:v6", "a:v7"]
    assert registry.tag_reads == []


def test_a_walk_keeps_only_the_repositories_it_has_not_passed_and_its_last_page_until_the_ttl() -> None:
    registry = Registry({f"team/r{i}": {"a", "b"} for i in range(4)})
    clock = Clock()
    tags = service(registry, clock)
    walks = tags.walks
    assert walks is not None
    shown, token = page(tags, ALICE, None)  # r0:a r0:b r1:a, and r1 read to the end
    assert shown == ["r0:a", "r0:b", "r1:a"] and token is not None
    first = continuation.decode(token, "team")
    walk = first.walk
    assert walk is not None
    kept = walks.continued(ALICE, walk, TEAM, first.last)[1]
    assert kept is not None and "team/r0" not in kept.lists and "team/r1" in kept.lists
    shown, token = page(tags, ALICE, token)
    assert shown == ["r1:b", "r2:a", "r2:b"] and token is not None and walk_id(token) == walk
    second = continuation.decode(token, "team")
    kept = walks.continued(ALICE, walk, TEAM, second.last)[1]
    assert kept is not None and set(kept.lists) <= {"team/r2", "team/r3"} and "team/r2" in kept.lists
    shown, token = page(tags, ALICE, token)
    assert shown == ["r3:a", "r3:b"] and token is None
    assert sorted(registry.tag_reads) == [f"team/r{i}" for i in range(4)]  # each read once
    # After the last page, what it used, for the token it was asked with; nothing after the ttl.
    assert walks.continued(ALICE, walk, TEAM, first.last)[1] is None
    kept = walks.continued(ALICE, walk, TEAM, second.last)[1]
    assert kept is not None and set(kept.lists) == {"team/r2", "team/r3"}
    clock.advance(61)
    assert walks.continued(ALICE, walk, TEAM, second.last)[1] is None and walks.size == 0


def test_the_same_token_given_again_selects_the_same_tags() -> None:
    """A retried page, or a deletecollection's dry run and then the same request, with pushes in
    between: the repositories its page read show as they were read, as the rest of the walk shows
    them (docs/api.md, "List options"). It once read them again for the second use."""
    registry = Registry({"team/a": {"v1", "v2", "v3", "v4"}, "team/b": {"x"}, "team/c": {"y"}})
    clock = Clock()
    tags = service(registry, clock)
    _, token = page(tags, ALICE, None, limit=2)
    assert token is not None
    shown, following = page(tags, ALICE, token, limit=2)
    assert shown == ["a:v3", "a:v4"] and following is not None
    for repository, tag in (("a", "v35"), ("b", "w"), ("c", "z")):
        registry.content[f"team/{repository}"].add(tag)
    assert page(tags, ALICE, token, limit=2) == (shown, following)
    final = page(tags, ALICE, following, limit=10)
    assert final == (["b:x", "c:y", "c:z"], None)  # b was read with the page before, c was not
    registry.content["team/c"].add("z2")
    assert page(tags, ALICE, following, limit=10) == final  # the last page too
    clock.advance(61)  # no longer kept: read as a first page reads
    assert page(tags, ALICE, following, limit=10)[0] == ["b:w", "b:x", "c:y", "c:z", "c:z2"]


def test_a_token_naming_a_walk_of_another_list_is_400_and_reads_nothing_of_it() -> None:
    """The token of an all-namespaces page, given a namespace's scope: its walk holds names and lists of
    other namespaces, which once made the namespace's list and deletecollection show and delete them."""
    registry = Registry({"team/a": {"v1", "v2"}, "team-x/victim": {"x"}, "zz/b": {"y"}})
    clock = Clock()
    tags = service(registry, clock)
    _, meta = run(tags.list(ALICE, None, list_options({"limit": ["1"]})))
    issued = continuation.decode(meta.continue_, "")
    assert issued.last == TagRef("team", "a", "v1") and issued.walk is not None
    crafted = continuation.encode(attrs.evolve(issued, scope="team"))
    query = {"limit": ["10"], "continue": [crafted]}
    with pytest.raises(ApiError) as caught:
        run(tags.list(ALICE, "team", list_options(query)))
    assert caught.value.code == 400
    assert caught.value.message == "continue key is not valid: the token was issued for a different list"
    clock.advance(61)  # the walk gone, the token is one of the namespace's as far as anyone can tell
    result, _ = run(tags.list(ALICE, "team", list_options(query)))
    assert [(ref.repository, ref.tag) for ref in result.refs] == [("team/a", "v2")]


def test_a_walk_pinned_to_a_namespace_does_not_end_an_all_namespaces_list_there() -> None:
    registry = Registry({"team/a": {"v1", "v2"}, "team/b": {"x"}, "zz/c": {"y"}})
    tags = service(registry, Clock())
    pinned = list_options({"limit": ["1"], "fieldSelector": ["metadata.namespace=team"]})
    _, meta = run(tags.list(ALICE, None, pinned))
    # The client goes on without the selector: every namespace's tags after a:v1.
    result, _ = run(tags.list(ALICE, None, list_options({"limit": ["10"], "continue": [meta.continue_]})))
    assert [(ref.repository, ref.tag) for ref in result.refs] == [
        ("team/a", "v2"),
        ("team/b", "x"),
        ("zz/c", "y"),
    ]


def test_the_selectors_and_access_are_applied_to_kept_lists_on_every_page() -> None:
    registry = Registry({"team/a": {f"v{i}" for i in range(6)}, "team/b": {"x"}})
    clock = Clock()
    tags = service(registry, clock)
    _, token = page(tags, ALICE, None, limit=1)
    assert token is not None
    # The page holds a's whole list; a field selector given with the continue token applies to it.
    query = {
        "limit": ["3"],
        "continue": [token],
        "fieldSelector": [f"metadata.name!={encode_name('a', 'v3')}"],
    }
    result, meta = run(tags.list(ALICE, "team", list_options(query)))
    assert [ref.tag for ref in result.refs] == ["v1", "v2", "v4"]
    # Access is decided on every page: once a is denied, its kept list shows nothing.
    tags.authorizer = Only("team", "b")
    assert page(tags, ALICE, meta.continue_)[0] == ["b:x"]


def test_lookups_are_counted_as_hits_and_misses() -> None:
    registry = Registry({"team/a": {f"v{i}" for i in range(8)}})
    clock = Clock()
    metrics = Metrics()
    tags = service(registry, clock, metrics)
    _, token = page(tags, ALICE, None)
    _, token = page(tags, ALICE, token)
    clock.advance(120)
    page(tags, ALICE, token)

    def count(outcome: str) -> Any:
        return metrics.registry.get_sample_value(
            "payloadtags_list_walk_cache_lookups_total", {"outcome": outcome}
        )

    assert (count("hit"), count("miss")) == (1.0, 1.0)


@pytest.mark.parametrize("walk", ["no/slashes", "x" * 15, "x" * 17, "x" * 64])
def test_a_malformed_walk_id_is_a_bad_token(walk: str) -> None:
    token = continuation.encode(continuation.Continuation("5", "team", TagRef("team", "a", "v1"), walk=walk))
    with pytest.raises(ApiError) as caught:
        continuation.decode(token, "team")
    assert caught.value.code == 400


@attrs.define
class Records:
    """A version source whose record takes reports through one callable until it is made anew (as
    the watch hub's record of an unwatched scope's lists)."""

    reports: list[tuple[int, str, int]] = attrs.field(factory=list)
    generation: int = 0
    _report: Observe | None = None

    def current(self) -> str:
        return "5"

    def ahead(self, resource_version: str) -> bool:
        return int(resource_version) > int(self.current())

    def observer(
        self, scope: str | None, resource_version: str, direct: bool = False, joined: Observe | None = None
    ) -> Observe | None:
        if self._report is None:
            generation = self.generation
            self._report = lambda repository, tags: self.reports.append((generation, repository, len(tags)))
        return self._report

    def remake(self) -> None:
        self.generation += 1
        self._report = None


def test_a_walk_reports_each_list_to_the_watch_record_once_and_again_to_a_new_record() -> None:
    clock = Clock()
    registry = Registry({"team/big": {f"v{i:04d}" for i in range(1200)}, "team/small": {"a", "b"}})
    records = Records()
    tags = TagsService(
        inventory=Inventory(registry, concurrency=4),  # type: ignore[arg-type]
        registry_host="registry.test",
        authorizer=AlwaysAllow(),
        versions=records,
        walks=WalkCache(clock),
    )
    token: str | None = None
    pages = 0
    while pages == 0 or token:
        _, token = page(tags, ALICE, token, limit=100)
        pages += 1
    assert pages == 13
    # The kept list of big went to the record when read, not again on each of the 12 pages after.
    assert records.reports == [(0, "team/big", 1200), (0, "team/small", 2)]
    records.reports.clear()
    token = None
    for _ in range(3):
        _, token = page(tags, ALICE, token, limit=100)
    reporter = weakref.ref(records.observer("team", "5"))
    records.remake()  # the record expired, and one was made under the same resourceVersion
    # The walk does not hold the record's callable: gone from the source, it is gone (review-walks6 F2).
    assert reporter() is None
    while token:
        _, token = page(tags, ALICE, token, limit=100)
    # The first page read both (a slice of reads); the new record learns the kept lists from the page
    # after it was made, once.
    first = [(0, "team/big", 1200), (0, "team/small", 2)]
    assert records.reports == [*first, (1, "team/big", 1200), (1, "team/small", 2)]


@attrs.define
class Counting:
    """Allows every repository path but those in ``denied``; counts what it was asked."""

    denied: frozenset[str]
    asked: list[str] = attrs.field(factory=list)

    def allowed(self, user: UserInfo, verb: str, namespace: str, path: str) -> bool:
        self.asked.append(path)
        return path not in self.denied

    def allowed_everywhere(self, user: UserInfo, verb: str, namespace: str) -> bool:
        return not self.denied


def test_a_walk_asks_about_each_repository_as_it_reaches_it_not_about_every_name_it_carries() -> None:
    """Pages of a walk carry the catalog names read before; access is decided for the repositories a
    page reaches, so a walk of P pages over R repositories asks about R + P of them at most, not
    about R on every page; the pages are the unpaged list of the readable repositories."""
    names = [f"r{i:02d}" for i in range(40)]
    registry = Registry({f"team/{name}": {f"v{j}" for j in range(3)} for name in names})
    tags = service(registry, Clock())
    denied = frozenset(names[5::7])
    tags.authorizer = Counting(denied)
    shown: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        items, token = page(tags, ALICE, token, limit=2)
        shown += items
        pages += 1
        if token is None:
            break
    expected = [f"{name}:v{j}" for name in names if name not in denied for j in range(3)]
    assert shown == expected
    assert pages == -(-len(expected) // 2)
    assert len(tags.authorizer.asked) <= len(names) + 2 * pages


def walk_all(
    tags: TagsService, namespace: str | None, limit: int, retry: random.Random | None = None
) -> list[str]:
    """A walk's pages joined; with ``retry``, some of its tokens are given twice first (a client's retry)."""
    shown: list[str] = []
    token: str | None = None
    while True:
        query = {"limit": [str(limit)], **({"continue": [token]} if token else {})}
        if token and retry is not None and retry.random() < 0.25:
            run(tags.list(ALICE, namespace, list_options(query)))
        result, meta = run(tags.list(ALICE, namespace, list_options(query)))
        shown += [str(ref) for ref in result.refs]
        token = meta.continue_
        if token is None:
            return shown


def test_a_walk_of_a_lexically_sorted_catalog_shows_every_repository() -> None:
    # Plainly, `team/app-x` comes before `team/app/b`; by components after it. The rest a page handed
    # on began after its last repository in catalog order: `team/app/b`, after `team/app-x` in the
    # registry's order, was cut from it and never shown.
    registry = Lexical({"team/app-x": {"a"}, "team/app/b": {"a"}, "team/b": {"a", "b"}})
    for limit in (1, 2, 3):
        tags = service(registry, Clock())
        whole, _ = run(tags.list(ALICE, "team", list_options({})))
        assert [ref.repository_path for ref in whole.refs] == ["app-x", "app/b", "b", "b"]
        assert walk_all(tags, "team", limit) == [str(ref) for ref in whole.refs], limit


@pytest.mark.parametrize("seed", range(60))
def test_a_walk_shows_what_the_unpaged_list_shows_in_either_catalog_order(seed: int) -> None:
    # Random repositories nested in one another, with names that sort differently plainly and by
    # components (`app-x` and `app/b`, `b.c` and `b/z`, `team-x/a` and `team/a`) or in distribution
    # 2.8's walk (`app/0` before `app`); catalog pages of a few names; tokens given again (a client's
    # retry).
    rng = random.Random(seed)
    double = (Lexical, Registry, Distribution28)[seed % 3]
    parts = ["app", "app-x", "0", "b", "b.c", "z"]
    content = {
        f"{namespace}/" + "/".join(rng.choice(parts) for _ in range(rng.randint(1, 3))): {
            f"t{i}" for i in range(rng.randint(1, 3))
        }
        # `team-x` and `team.x` sort plainly between `team` and `team/…`.
        for namespace in ("team", "team-x", "team.x", "ops")
        for _ in range(rng.randint(1, 15))
    }
    clock = Clock()
    registry = double(content)
    inventory = Inventory(registry, concurrency=rng.choice([1, 4]), page_size=rng.choice([2, 3, 1000]))  # type: ignore[arg-type]
    tags = TagsService(
        inventory=inventory,
        registry_host="registry.test",
        authorizer=AlwaysAllow(),
        versions=ResourceVersions(clock),
        walks=WalkCache(clock),
    )
    namespace = rng.choice(["team", None])
    whole, _ = run(tags.list(ALICE, namespace, list_options({})))
    assert len(whole.refs) == sum(
        len(found)
        for name, found in content.items()
        # `team.x` is no namespace (a DNS label): its repositories hold no objects.
        if (namespace is None and split_repository(name) is not None) or name.startswith("team/")
    )
    for limit in (1, 2, 3, 5):
        assert walk_all(tags, namespace, limit, rng) == [str(ref) for ref in whole.refs], limit


@pytest.mark.parametrize(
    "tags",
    [
        ("v1", "v22", "v333"),
        ("a", "v22", "v333"),
        ("v1", "b", "v333"),
        ("v1", "v22", "c"),
        ("x",),
        ("v1", "", "v333"),
        (*(f"t{i}" for i in range(300)), "7", *(f"u{i}" for i in range(300))),
    ],
)
def test_a_tag_list_is_measured_as_a_length_per_tag_measures_it(tags: tuple[str, ...]) -> None:
    # A list is measured by joining its tags (one pass in C); a tag of one character anywhere in it is
    # CPython's own string all the same, not the list's.
    lengths = list(map(len, tags))
    own = len(lengths) - lengths.count(1)
    expected = sys.getsizeof(tags) + own * sys.getsizeof("") + sum(lengths) - (len(lengths) - own)
    assert _list_size(tags) == (expected, len(tags))


def test_a_page_with_more_to_come_says_nothing_of_how_many_items_remain() -> None:
    # docs/api.md ("List options"): counting them would read every repository the walk has not reached.
    tags = service(Registry({"team/a": {"v1", "v2", "v3"}, "team/b": {"v1"}}), Clock())
    _, meta = run(tags.list(ALICE, "team", list_options({"limit": ["1"]})))
    assert meta.continue_ is not None and meta.remaining_item_count is None


# Tags a registry may list outside the tag grammar (ECR's reach 300 characters; a registry that is
# not distribution may list anything).
LISTED_OUTSIDE_THE_GRAMMAR = ["-rc1", ".hidden", "a+b", "t" * 129, "t" * 300, "with space", "\u00fc"]


def test_the_registry_client_hands_out_tags_outside_the_grammar() -> None:
    clock, held = MemoryReactorClock(), Held()
    client = client_for(held, clock)
    got = track(Deferred.fromCoroutine(client.tags("team/app")))
    held.pending[0][1].callback(tags_reply("v1", *LISTED_OUTSIDE_THE_GRAMMAR))
    assert got and set(got[0]) == {"v1", *LISTED_OUTSIDE_THE_GRAMMAR}


@pytest.mark.parametrize("tag", LISTED_OUTSIDE_THE_GRAMMAR)
@pytest.mark.parametrize("pinned", [False, True], ids=["namespace", "pinned"])
def test_a_walk_goes_past_a_page_ending_on_a_listed_tag_outside_the_grammar(tag: str, pinned: bool) -> None:
    # Its token was 400 "the token is malformed" at the next page (e6e0d53): kubectl stopped halfway,
    # an informer's relist failed at the same page every time.
    tags = service(Registry({"team/app": {tag, "zz"}, "team/b": {"v1"}}), Clock())
    seen: list[str] = []
    token: str | None = None
    for _ in range(3):
        query = {"limit": ["1"], **({"continue": [token]} if token else {})}
        if pinned:
            query["fieldSelector"] = ["metadata.namespace=team"]
        result, meta = run(tags.list(ALICE, None if pinned else "team", list_options(query)))
        seen += [f"{ref.repository_path}:{ref.tag}" for ref in result.refs]
        token = meta.continue_
        continuation._decoded.clear()  # the next page decodes its token again, as another replica would
    assert token is None
    assert seen == [*(f"app:{t}" for t in sorted([tag, "zz"])), "b:v1"]
