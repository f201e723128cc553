"""The record of what unwatched lists read (watch.listed.Listed): lists that shared one registry read
report the same answer; the record takes it once."""

from __future__ import annotations

from collections.abc import Iterator

from payloadtags.names import TagRef
from payloadtags.registry.taglist import TagList
from payloadtags.watch.listed import REPOSITORY_COST, Listed, ListedScopes
from payloadtags.watch.source import EventType


class Counted(tuple[str, ...]):
    """A registry answer that counts how often it is gone through."""

    walks = 0

    def __iter__(self) -> Iterator[str]:
        Counted.walks += 1
        return super().__iter__()


def test_the_same_answer_again_is_taken_once_and_an_equal_other_one_is_still_recorded() -> None:
    record = Listed(scope="team", sequence=1, touched=0.0)
    answer = Counted(("v1", "v2"))
    Counted.walks = 0
    assert record.observe("team/app", answer) == REPOSITORY_COST + 2
    for _ in range(9):  # nine more lists that shared the read
        assert record.observe("team/app", answer) == 0
    assert Counted.walks == 1
    # Another read (another tuple) is recorded as any read is: it lacks v2, so v2 is a tag some read saw.
    record.observe("team/app", ("v1",))
    assert record.reads["team/app"] == (frozenset({"v1"}), frozenset({"v1", "v2"}))
    assert record.observe("team/app", answer) == 0  # seen before, but not last: taken again, no change
    assert Counted.walks == 2
    changes = list(record.changes({"team/app": frozenset({"v1", "v3"})}))
    assert changes == [
        (EventType.DELETED, TagRef("team", "app", "v2")),
        (EventType.ADDED, TagRef("team", "app", "v3")),
    ]


def test_an_equal_answer_of_another_read_adds_nothing_and_is_not_turned_into_a_set() -> None:
    # A list repeated while nothing changes reads equal answers, each its own tuple.
    record = Listed(scope="team", sequence=1, touched=0.0)
    assert record.observe("team/app", ("v1", "v2"), vouch=False) == REPOSITORY_COST + 2
    assert record.reads["team/app"] == (frozenset(), frozenset({"v1", "v2"}))
    Counted.walks = 0
    assert record.observe("team/app", Counted(("v1", "v2"))) == 0
    assert Counted.walks == 0
    assert record.reads["team/app"] == (frozenset(), frozenset({"v1", "v2"}))  # as before: idempotent
    # One that differs is still taken, and the next equal one compared with it, not the first.
    assert record.observe("team/app", Counted(("v1",))) == 0
    assert Counted.walks == 1
    assert record.observe("team/app", Counted(("v1", "v3"))) == 1
    assert record.reads["team/app"] == (frozenset(), frozenset({"v1", "v2", "v3"}))
    assert record.size == REPOSITORY_COST + 3


def test_a_read_kept_as_a_set_and_an_equal_answer_are_the_same_read() -> None:
    # Another Catalog's read (a list: kept as a set), then the registry's equal answer (a TagList), or
    # the other way round: the same tags, kept once (review r1tags N2: a set never equals a TagList, and
    # each was kept as a new read, two sets grown by their length).
    record = Listed(scope="team", sequence=1, touched=0.0)
    assert record.observe("team/app", ["v1", "v2"]) == REPOSITORY_COST + 2
    kept = record.reads["team/app"]
    assert record.observe("team/app", TagList(["v1", "v2"])) == 0
    assert record.reads["team/app"] is kept
    answer = TagList(["v1"])
    assert record.observe("team/other", answer) == REPOSITORY_COST + 1
    assert record.observe("team/other", ["v1"]) == 0
    assert record.reads["team/other"] == (answer, answer)
    assert record.size == 2 * REPOSITORY_COST + 3
    # An answer that differs is still taken: v2 is a tag some read saw, not one every read saw.
    assert record.observe("team/app", TagList(["v1"])) == 1
    assert record.reads["team/app"] == (frozenset({"v1"}), frozenset({"v1", "v2"}))


def opened(scopes: ListedScopes, scope: str, sequence: int, now: float) -> Listed:
    record = scopes.open(scope, sequence, now)
    assert record is not None, "there is room for it"
    return record


def test_a_list_that_failed_no_longer_counts_so_the_others_are_not_sent_their_own_tags_again() -> None:
    scopes = ListedScopes()
    refused = opened(scopes, "team", 1, now=0.0)  # refused before it read anything (access rules loading)
    scopes.leave(refused)
    record = opened(scopes, "team", 1, now=1.0)  # the retry, shown what it reads
    scopes.observe(record, "team/app", ("v1",))
    assert list(record.changes({"team/app": frozenset({"v1"})})) == []
    # Two lists that both succeed still count each other: the second may never read a repository.
    other = opened(scopes, "team", 2, now=2.0)
    scopes.open("team", 2, now=2.0)
    scopes.observe(other, "team/app", ("v1",))
    assert list(other.changes({"team/app": frozenset({"v1"})})) == [
        (EventType.ADDED, TagRef("team", "app", "v1"))
    ]
