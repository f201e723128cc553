"""The record of what unwatched lists read (watch.listed.Listed): lists that shared one registry read
report the same answer; the record takes it once."""

from __future__ import annotations

from collections.abc import Iterator

from payloadtags.names import TagRef
from payloadtags.watch.listed import Listed
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
    assert record.observe("team/app", answer) == 2
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
