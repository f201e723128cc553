"""Lists of one scope at one resourceVersion share a record (watch.listed): each of its first lists has
a bit of its own, and a repository first read while others had joined waits for them to read it too
before the tags every read saw stand for their clients (review r1user L1: two lists that arrived
together, and a watch from either was sent an ADDED for every tag its list had shown)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from payloadtags.identity import UserInfo
from payloadtags.names import TagRef
from payloadtags.registry.taglist import TagList
from payloadtags.watch.hub import ListReporter, WatchHub
from payloadtags.watch.listed import (
    LIST_COST,
    PENDING_COST,
    RECORD_COST,
    REPOSITORY_COST,
    TRACKED_LISTS,
    USER_COST,
    Listed,
    ListedScopes,
    _kept,
)
from payloadtags.watch.source import EventType
from tests.unit.test_watch_fairness import FakeReader, make_hub

NOW = {"team/app": frozenset({"v1", "v2"})}
ADDED_BOTH = [
    (EventType.ADDED, TagRef("team", "app", "v1")),
    (EventType.ADDED, TagRef("team", "app", "v2")),
]


class Counted(tuple[str, ...]):
    """A registry answer that counts how often it is gone through."""

    walks = 0

    def __iter__(self) -> Iterator[str]:
        Counted.walks += 1
        return super().__iter__()


def join(scopes: ListedScopes, sequence: int = 1, scope: str = "team") -> tuple[Listed, int | None]:
    """A list opens or joins the record of ``scope`` at ``sequence``, and gets its bit (as the hub)."""
    record = scopes.open(scope, sequence, 0.0, "alice")
    assert record is not None
    return record, scopes.track(record, lambda repository, tags: None)


def recounted(record: Listed) -> int:
    """What a record holds, counted again from what it keeps."""
    size = RECORD_COST + LIST_COST * max(len(record.reporters) - 1, 0)
    for repository, reads in record.reads.items():
        size += REPOSITORY_COST + _kept(reads)
        waiting = (record.pending or {}).get(repository)
        if waiting is not None:
            size += PENDING_COST + (0 if waiting[1] is reads[1] else len(waiting[1]))
    return size


def test_two_lists_that_shared_one_read_are_sent_nothing_and_the_second_costs_no_walk() -> None:
    scopes = ListedScopes()
    record, first = join(scopes)
    _, second = join(scopes)
    answer = Counted(("v1", "v2"))
    Counted.walks = 0
    scopes.observe(record, "team/app", answer, bit=first)
    assert record.reads["team/app"][0] == frozenset()  # the second list may never read it
    assert list(record.changes(NOW)) == ADDED_BOTH
    scopes.observe(record, "team/app", answer, bit=second)  # the same tuple: the coalesced read
    assert Counted.walks == 1  # taken once, as before the fix
    assert record.reads["team/app"] == (frozenset({"v1", "v2"}),) * 2
    assert list(record.changes(NOW)) == []  # before: an ADDED for each tag (review r1user L1)
    assert record.size == recounted(record) == RECORD_COST + LIST_COST + REPOSITORY_COST + 2
    assert scopes.size == USER_COST + record.size


def test_two_lists_that_read_equal_answers_each_are_sent_nothing() -> None:
    scopes = ListedScopes()
    record, first = join(scopes)
    _, second = join(scopes)
    scopes.observe(record, "team/app", ("v1", "v2"), bit=second)
    assert record.size == recounted(record) == RECORD_COST + LIST_COST + REPOSITORY_COST + 2 + PENDING_COST
    scopes.observe(record, "team/app", ("v2", "v1"), bit=first)
    assert list(record.changes(NOW)) == []
    assert record.pending is None
    assert record.size == recounted(record)


def test_reads_that_differ_keep_what_every_read_saw_apart_until_the_lists_have_read() -> None:
    scopes = ListedScopes()
    record, first = join(scopes)
    _, second = join(scopes)
    scopes.observe(record, "team/app", ("v1", "v2"), bit=first)
    scopes.observe(record, "team/app", ("v1", "v3"), bit=first)  # the same list again (a later page)
    assert record.reads["team/app"] == (frozenset(), frozenset({"v1", "v2", "v3"}))
    assert record.size == recounted(record)
    scopes.observe(record, "team/app", ("v1",), bit=second)
    assert record.reads["team/app"] == (frozenset({"v1"}), frozenset({"v1", "v2", "v3"}))
    assert record.size == recounted(record)
    assert list(record.changes({"team/app": frozenset({"v1", "v2"})})) == [
        (EventType.DELETED, TagRef("team", "app", "v3")),
        (EventType.ADDED, TagRef("team", "app", "v2")),
    ]


def test_a_list_that_never_reads_a_repository_another_read_is_still_sent_its_tags() -> None:
    """A walk that passed the repository's place before it was pushed: its client has none of them."""
    scopes = ListedScopes()
    record, first = join(scopes)
    join(scopes)
    scopes.observe(record, "team/app", ("v1", "v2"), bit=first)
    scopes.observe(record, "team/app", ("v1", "v2"), bit=first)  # its own read again counts once
    assert list(record.changes(NOW)) == ADDED_BOTH


def test_lists_that_join_between_a_repository_s_reads_are_not_waited_for() -> None:
    """A list that joins after a repository's first read sees it (it was there when it started): only
    the lists joined before are waited for; one read alone, before any other joined, stands."""
    scopes = ListedScopes()
    record, first = join(scopes)
    scopes.observe(record, "team/alone", ("a1",), bit=first)
    _, second = join(scopes)
    scopes.observe(record, "team/app", ("v1", "v2"), bit=second)
    _, third = join(scopes)  # after app's first read
    scopes.observe(record, "team/app", ("v1", "v2"), bit=first)
    now = {**NOW, "team/alone": frozenset({"a1"})}
    assert list(record.changes(now)) == []
    # A repository first read after the third joined waits for it too.
    scopes.observe(record, "team/new", ("n1",), bit=first)
    scopes.observe(record, "team/new", ("n1",), bit=second)
    assert list(record.changes({**now, "team/new": frozenset({"n1"})})) == [
        (EventType.ADDED, TagRef("team", "new", "n1"))
    ]
    scopes.observe(record, "team/new", ("n1",), bit=third)
    assert list(record.changes({**now, "team/new": frozenset({"n1"})})) == []
    assert record.size == recounted(record)


def test_lists_that_read_different_repositories_are_sent_what_one_of_them_may_lack() -> None:
    """Lists of users whose rules differ, or a list of all namespaces beside one pinned to a namespace
    by ``metadata.namespace`` (it reads that namespace only; other selectors read whole tag lists
    alike): a repository only one of them reads waits for the other in vain, and its tags are sent to
    a watch from their resourceVersion. The other user's watch may not be sent them; this one's are
    repeats (docs/watch.md). What both read is not sent."""
    scopes = ListedScopes()
    record, bob = join(scopes)
    _, alice = join(scopes)
    for bit in (bob, alice):
        scopes.observe(record, "team/app", ("v1", "v2"), bit=bit)
    scopes.observe(record, "team/bobs", ("b1",), bit=bob)
    assert list(record.changes({**NOW, "team/bobs": frozenset({"b1"})})) == [
        (EventType.ADDED, TagRef("team", "bobs", "b1"))
    ]


def test_a_list_that_failed_before_it_showed_anything_is_no_longer_waited_for() -> None:
    scopes = ListedScopes()
    record, first = join(scopes)
    _, failed = join(scopes)
    scopes.observe(record, "team/app", ("v1", "v2"), bit=first)
    before = scopes.size
    scopes.leave(record, failed)
    assert list(record.changes(NOW)) == []
    assert record.size == recounted(record) and scopes.size == before - PENDING_COST
    # Repositories first read after it failed wait for it no more either.
    scopes.observe(record, "team/later", ("l1",), bit=first)
    assert list(record.changes({**NOW, "team/later": frozenset({"l1"})})) == []


def test_a_list_that_failed_half_way_is_still_waited_for() -> None:
    """A whole list whose connection dropped after its first chunk, a walk whose client gave up: its
    client was shown something (it does not leave), and it reads no more. Its client has none of the
    tags it never read, should it watch: they are sent."""
    scopes = ListedScopes()
    record, first = join(scopes)
    _, broken = join(scopes)
    for bit in (first, broken):
        scopes.observe(record, "team/app", ("v1", "v2"), bit=bit)
    scopes.observe(record, "team/rest", ("r1",), bit=first)
    assert list(record.changes({**NOW, "team/rest": frozenset({"r1"})})) == [
        (EventType.ADDED, TagRef("team", "rest", "r1"))
    ]


def test_a_list_without_a_bit_makes_a_repository_first_read_after_it_joined_missing_for_good() -> None:
    """Past TRACKED_LISTS lists, or a page whose list the record does not know (its walk kept
    nothing): as before the fix, the repository counts as missing from every read."""
    scopes = ListedScopes()
    record, first = join(scopes)
    bits = [join(scopes)[1] for _ in range(TRACKED_LISTS)]
    assert bits[-1] is None and None not in bits[:-1]
    assert len(record.reporters) == TRACKED_LISTS and record.untracked == 1
    for bit in (first, *bits):
        scopes.observe(record, "team/app", ("v1", "v2"), bit=bit)
    assert list(record.changes(NOW)) == ADDED_BOTH
    assert (
        record.size
        == recounted(record)
        == RECORD_COST + (TRACKED_LISTS - 1) * LIST_COST + REPOSITORY_COST + 2
    )
    # A page the record does not know, with other lists there: it may be any of them, so every one
    # of them is waited for.
    scopes = ListedScopes()
    record, first = join(scopes)
    _, second = join(scopes)
    scopes.observe(record, "team/app", ("v1", "v2"))
    scopes.observe(record, "team/app", ("v1", "v2"), bit=first)
    assert list(record.changes(NOW)) == ADDED_BOTH  # it may have been the first list's page
    scopes.observe(record, "team/app", ("v1", "v2"), bit=second)
    assert list(record.changes(NOW)) == []
    # Alone in its record, whoever reads is that list (as before the fix).
    scopes = ListedScopes()
    record, _ = join(scopes)
    scopes.observe(record, "team/app", ("v1", "v2"))
    assert list(record.changes(NOW)) == []


def test_a_repository_a_list_by_name_read_stays_missing_from_every_read() -> None:
    """It read the repository directly: the scope's lists, even later ones, may never see it."""
    scopes = ListedScopes()
    record, by_name = join(scopes)
    _, whole = join(scopes)
    scopes.observe(record, "team/app", ("v1", "v2"), vouch=False, bit=by_name)
    scopes.observe(record, "team/app", ("v1", "v2"), bit=whole)
    assert list(record.changes(NOW)) == ADDED_BOTH


def test_a_list_s_bit_costs_only_when_it_fits_and_nothing_is_dropped_for_it() -> None:
    scopes = ListedScopes(max_size=RECORD_COST + USER_COST)
    record, first = join(scopes)
    assert first == 0 and scopes.size == scopes.max_size  # the first list's bit is in RECORD_COST
    again, second = join(scopes)
    assert again is record and second is None and not record.dropped
    assert scopes.size == scopes.max_size


def hub_list(hub: WatchHub, namespace: str, user: str = "alice") -> tuple[str, ListReporter]:
    out: list[tuple[str, ListReporter | None]] = []
    Deferred.fromCoroutine(hub.open_list(namespace, UserInfo(name=user))).addCallback(out.append)
    assert out and out[0][1] is not None
    return out[0][0], out[0][1]


def test_through_the_hub_a_list_s_later_pages_report_as_its_first_page_did() -> None:
    """`WatchHub.observer` gives a page the callable its list was given (`open_list`, then its walk's),
    while that is the record's list's; a page without one gets the record's shared callable."""
    hub = make_hub(FakeReader({"team/app": {"v1"}}), Clock())
    version, first = hub_list(hub, "team")
    again, second = hub_list(hub, "team")
    assert again == version and first.record is second.record and first.bit == 0 and second.bit == 1
    assert hub.observer("team", version, joined=first) is first
    assert hub.observer("team", version, joined=second) is second
    shared = hub.observer("team", version)
    assert shared is not None and shared not in (first, second)
    assert hub.observer("team", version, joined=shared) is shared
    stranger = ListReporter(hub, Listed("team", 99, 0.0), 0)
    assert hub.observer("team", version, joined=stranger) is shared
    first("team/app", ("v1",))
    second("team/app", ("v1",))
    assert list(first.record.changes({"team/app": frozenset({"v1"})})) == []
    hub.list_failed(second)
    assert first.record.lists == 1 and first.record.live == 1


# Few tag sets, so that lists often read the same (and what is there now is often what they read).
TAGS = st.sampled_from([frozenset({0, 1}), frozenset({0, 1}), frozenset({1, 2}), frozenset()])
# A read's tags as lists report them: a registry answer (a TagList, or a tuple as before blob8's) or a
# Catalog's list.
FORMS = st.sampled_from([lambda tags: TagList(list(tags)), tuple, list])


def test_through_the_hub_a_list_by_name_is_not_waited_for_by_the_other_repositories() -> None:
    """`kubectl wait --for=delete` or `kubectl get NAME -w` beside a list of the namespace: the list by
    name's client holds one tag at most, and its watch selects that name too, so the repositories the
    other list reads do not wait for it; the one it read directly first stays missing from every read."""
    hub = make_hub(FakeReader({"team/app": {"v1"}}), Clock())
    version, whole = hub_list(hub, "team")
    _, by_name = hub_list(hub, "team")
    direct = hub.observer("team", version, direct=True, joined=by_name)
    assert direct is not None and direct is not by_name
    record = whole.record
    whole("team/other", ("o1",))
    assert list(record.changes({"team/other": frozenset({"o1"})})) == []
    direct("team/app", ("v1",))
    whole("team/app", ("v1",))
    assert list(record.changes({"team/app": frozenset({"v1"})})) == [
        (EventType.ADDED, TagRef("team", "app", "v1"))
    ]
    # Read before the list by name said what it is: it no longer waits either.
    version, whole = hub_list(hub, "made-up")
    _, by_name = hub_list(hub, "made-up")
    whole("made-up/x", ("x1",))
    assert list(whole.record.changes({"made-up/x": frozenset({"x1"})})) != []
    size = hub.listed.size
    hub.observer("made-up", version, direct=True, joined=by_name)
    assert list(whole.record.changes({"made-up/x": frozenset({"x1"})})) == []
    assert hub.listed.size == size - PENDING_COST and whole.record.size == recounted(whole.record)
    hub.list_failed(by_name)  # had it failed after all: the same again, and one list fewer
    assert whole.record.lists == 1 and hub.listed.size == size - PENDING_COST


def test_a_read_while_others_are_waited_for_narrows_what_every_read_saw() -> None:
    """A repository that waits keeps the tags every read saw apart, and each read narrows them, the
    reads of a list already read too (a walk's later page rereads it). The first list reads (t0, t1),
    then (t1, t2); the second reads (t1, t2), the very tuple read last (the fast path takes nothing):
    its client never had t0, so a watch from their resourceVersion is sent it (review r2watch L2)."""
    scopes = ListedScopes()
    record, first = join(scopes)
    _, second = join(scopes)
    scopes.observe(record, "team/app", ("t0", "t1"), bit=first)
    reread = ("t1", "t2")
    scopes.observe(record, "team/app", reread, bit=first)
    scopes.observe(record, "team/app", reread, bit=second)
    assert record.reads["team/app"] == (frozenset({"t1"}), frozenset({"t0", "t1", "t2"}))
    assert (EventType.ADDED, TagRef("team", "app", "t0")) in list(
        record.changes({"team/app": frozenset({"t0", "t1"})})
    )
    assert record.size == recounted(record)


def test_a_record_keeps_no_table_of_waits_once_none_is_left() -> None:
    """``Listed.pending`` is None again once no repository waits: CPython never shrinks a dict, so an
    emptied table stayed as large as the most waits it held at once (4,688 bytes after 100), which the
    record's size no longer counted (review r2watch N1). Waits that end through a list's failure too."""
    scopes = ListedScopes()
    record, first = join(scopes)
    _, second = join(scopes)
    for index in range(100):
        scopes.observe(record, f"team/r{index}", ("v1",), bit=first)
    assert record.pending is not None and len(record.pending) == 100
    for index in range(100):
        scopes.observe(record, f"team/r{index}", ("v1",), bit=second)
    assert record.pending is None, f"an empty table is kept: {record.pending!r}"
    assert record.size == recounted(record)
    scopes.observe(record, "team/late", ("v1",), bit=first)
    assert record.pending is not None
    assert second is not None
    scopes.leave(record, second)
    assert record.pending is None and record.size == recounted(record)


def test_lists_that_wait_for_each_other_take_the_registry_s_tag_lists_as_it_hands_them() -> None:
    """The registry client answers TagLists (`registry.taglist`), not tuples, and a Catalog's list a
    list. Two lists read together, a third read by the first of them with other tags, a fourth list
    that fails and a list by name: a repository's waits narrow and widen on sets (a frozenset and a
    TagList are never ``==``, and ``<=`` between them raises TypeError), and a TagList read is kept as
    it is, counted once, as where no list waits."""
    scopes = ListedScopes()
    record, first = join(scopes)
    _, second = join(scopes)
    _, failing = join(scopes)
    _, by_name = join(scopes)
    assert None not in (first, second, failing, by_name)
    answer = TagList(["v1", "v2"])
    scopes.observe(record, "team/app", answer, bit=first)
    every, some = record.reads["team/app"]
    assert every == frozenset() and some is answer, "a TagList read is kept as it is"
    assert record.pending is not None and record.pending["team/app"][1] is answer
    scopes.observe(record, "team/app", answer, bit=second)  # together: the one read both report
    # A third read, by the first list (a later page of its walk), of other tags.
    scopes.observe(record, "team/app", TagList(["v1", "v3"]), bit=first)
    assert record.reads["team/app"] == (frozenset(), frozenset({"v1", "v2", "v3"}))
    assert record.pending["team/app"][1] == frozenset({"v1"})
    assert record.size == recounted(record)
    # Equal answers of two reads (the fast path keeps none of them apart), and a Catalog's list then
    # an answer: each a read in the waits' path.
    kept = TagList(["o1"])
    scopes.observe(record, "team/other", kept, bit=first)
    scopes.observe(record, "team/other", TagList(["o1"]), bit=second)
    scopes.observe(record, "team/mixed", ["m2", "m1"], bit=first)
    scopes.observe(record, "team/mixed", TagList(["m1", "m2"]), bit=second)
    assert record.size == recounted(record)
    assert failing is not None and by_name is not None
    scopes.leave(record, failing)  # failed before its client was shown anything
    assert record.pending is not None and set(record.pending) == {"team/app", "team/other", "team/mixed"}
    scopes.aside(record, by_name)  # a list by name: nothing waits for it
    assert record.pending is None
    assert record.reads["team/other"] == (kept, kept) and record.reads["team/other"][0] is kept
    every, some = record.reads["team/mixed"]
    assert every is some and every == frozenset({"m1", "m2"})
    assert record.reads["team/app"] == (frozenset({"v1"}), frozenset({"v1", "v2", "v3"}))
    now = {
        "team/app": frozenset({"v1", "v2"}),
        "team/other": frozenset({"o1"}),
        "team/mixed": frozenset({"m1", "m2"}),
    }
    assert list(record.changes(now)) == [
        (EventType.DELETED, TagRef("team", "app", "v3")),
        (EventType.ADDED, TagRef("team", "app", "v2")),
    ]
    assert record.size == recounted(record)
    assert scopes.size == USER_COST + record.size


def test_through_the_hub_a_list_by_name_sets_aside_its_own_bit_only() -> None:
    """Two lists of the namespace and a list by name: the first reads a repository the second never
    reads (its walk passed the place). The list by name is no longer waited for, but the second list
    still is, and its client has none of those tags: a watch from their resourceVersion is sent them
    (review r2watch L3)."""
    hub = make_hub(FakeReader({"team/app": {"v1"}}), Clock())
    version, first = hub_list(hub, "team")
    hub_list(hub, "team")
    _, by_name = hub_list(hub, "team")
    hub.observer("team", version, direct=True, joined=by_name)
    first("team/app", ("v1",))
    assert list(first.record.changes({"team/app": frozenset({"v1"})})) == [
        (EventType.ADDED, TagRef("team", "app", "v1"))
    ]


@pytest.mark.property
@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("join"), st.integers(0, 0), st.just(frozenset())),
            st.tuples(
                st.just("read"),
                st.integers(0, 11),
                st.tuples(st.integers(0, 2), TAGS, FORMS),
            ),
            st.tuples(st.just("fail"), st.integers(0, 11), st.just(frozenset())),
        ),
        max_size=40,
    ),
    now=st.lists(TAGS, min_size=3, max_size=3),
)
def test_every_list_s_client_is_brought_to_now_and_lists_that_read_alike_are_sent_nothing(
    steps: list[tuple[str, int, object]], now: list[frozenset[int]]
) -> None:
    """Random lists joining one record (some past TRACKED_LISTS), reading repositories (each read by a
    list it may repeat, with other tags; a TagList, a tuple or a list), failing before they showed
    anything. For every list that did not fail, the events bring its client to ``now``: an ADDED for every
    tag there now that it did not show (all of a repository it did not read, if it had joined before the
    repository's first read: one that joined after sees it, and is modelled only once it read it), a
    DELETED for every tag it showed that is gone. And a repository every list that joined before its first
    read has read, each time with ``now``'s tags, none past the cap, is sent nothing. The size is what it
    keeps."""
    scopes = ListedScopes(max_size=10**6)
    record: Listed | None = None
    lists: list[tuple[int | None, dict[int, list[frozenset[int]]], bool]] = []  # bit, reads, failed
    first_read_at: dict[int, int] = {}  # repository: how many lists had joined at its first read
    for kind, which, detail in steps:
        if kind == "join" or record is None:
            record, bit = join(scopes)
            lists.append((bit, {}, False))
            continue
        index = which % len(lists)
        bit, reads, failed = lists[index]
        if failed:
            continue
        if kind == "fail":
            if reads:
                continue  # shown something: it stays
            scopes.leave(record, bit)
            lists[index] = (bit, reads, True)
            continue
        assert isinstance(detail, tuple)
        repository, tags, form = detail
        first_read_at.setdefault(repository, len(lists))
        reads.setdefault(repository, []).append(tags)
        answer = form(f"t{tag}" for tag in sorted(tags))
        scopes.observe(record, f"team/r{repository}", answer, bit=bit)
    if record is None:
        return
    assert record.size == recounted(record)
    current = {f"team/r{i}": frozenset(f"t{tag}" for tag in tags) for i, tags in enumerate(now)}
    events = set(record.changes(current))
    for index, (_, reads, failed) in enumerate(lists):
        if failed:
            continue
        for repository in range(3):
            there = current[f"team/r{repository}"]
            seen = reads.get(repository)
            if seen is None:
                if repository not in first_read_at or index >= first_read_at[repository]:
                    continue  # never read, or it joined after the first read: it will see it
                every: frozenset[str] = frozenset()
                some: frozenset[str] = frozenset()
            else:
                every = frozenset.intersection(*(frozenset(f"t{t}" for t in s) for s in seen))
                some = frozenset.union(*(frozenset(f"t{t}" for t in s) for s in seen))
            for tag in there - every:
                assert (EventType.ADDED, TagRef("team", f"r{repository}", tag)) in events
            for tag in some - there:
                assert (EventType.DELETED, TagRef("team", f"r{repository}", tag)) in events
    for repository, joined in first_read_at.items():
        shown = now[repository]
        readers = [lists[i] for i in range(joined)]
        if any(bit is None for bit, _, _ in lists[:joined]):
            continue
        if all(failed or reads.get(repository) for _, reads, failed in readers) and all(
            all(s == shown for s in reads.get(repository, ())) for _, reads, _ in lists
        ):
            assert not [ref for _, ref in events if ref.repository_path == f"r{repository}"]
