"""`TagList`: a repository's sorted tags as blocks of text behave as the tuple of the same tags."""

from __future__ import annotations

import bisect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payloadtags.registry.taglist import BLOCK, TagList, bisect_after

# Tags of the registry's grammar and of other JSON strings (a newline, non-ASCII), few characters so
# that lists hold prefixes of each other.
TAGS = st.lists(st.text(alphabet="ab.-\n\u00e9", max_size=4), max_size=40).map(lambda t: sorted(set(t)))


def numbered(count: int) -> list[str]:
    return [f"t{i:05d}" for i in range(count)]


@given(TAGS)
def test_a_tag_list_is_its_tuple(tags: list[str]) -> None:
    kept, expected = TagList(tags), tuple(tags)
    assert kept == expected and expected == kept and kept == TagList(tuple(tags))
    assert hash(kept) == hash(TagList(list(tags)))
    assert (
        len(kept) == len(expected)
        and tuple(kept) == expected
        and list(reversed(kept)) == list(expected[::-1])
    )
    for index in range(-len(tags), len(tags)):
        assert kept[index] == expected[index]
    for tag in [*tags, "", "a", "ab", "b\n", "zz", "\u00e9a"]:
        assert (tag in kept) == (tag in expected)
    assert 1 not in kept  # type: ignore[comparison-overlap]
    for tag in [*tags, "", "a", "ab", "b\n", "zz", "\u00e9a"]:
        assert bisect_after(kept, tag) == bisect.bisect_right(expected, tag) == bisect_after(expected, tag)


@settings(max_examples=60)
@given(st.integers(0, 3 * BLOCK + 7), st.data())
def test_slices_across_blocks_are_the_tuples(count: int, data: st.DataObject) -> None:
    tags = numbered(count)
    kept = TagList(tags)
    bound = st.integers(-count - 2, count + 2) | st.none()
    for _ in range(5):
        start, stop = data.draw(bound), data.draw(bound)
        step = data.draw(st.sampled_from([None, 1, 2, 7, -1, -3]))
        assert list(kept[start:stop:step]) == tags[start:stop:step]
    assert all(tag in kept for tag in tags[:: max(count // 50, 1)])
    for tag in [*tags[:: max(count // 50, 1)], "", "t", "t0", "t00249~", "u"]:
        assert kept.after(tag) == bisect.bisect_right(tags, tag)
    assert "t" not in kept and "u" not in kept and "t99999" not in kept and "" not in kept


@pytest.mark.parametrize("count", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK])
def test_indexes_out_of_range_are_refused(count: int) -> None:
    kept = TagList(numbered(count))
    with pytest.raises(IndexError):
        kept[count]
    with pytest.raises(IndexError):
        kept[-count - 1]


def test_lists_of_other_tags_or_lengths_differ() -> None:
    tags = numbered(BLOCK + 1)
    assert TagList(tags) != TagList(tags[:-1])
    assert TagList(tags) != tuple(tags[1:])
    assert TagList(["a\nb"]) != TagList(["a", "b"])
    assert TagList(tags) != list(tags)  # a list is not an answer: as a tuple compares to a list


def test_blocks_are_long_texts_and_a_block_each_is_held() -> None:
    tags = numbered(10 * BLOCK)
    kept = TagList(tags)
    # Ten texts and the tuple holding them, about the tags' characters: the tags' 2,500 str (about
    # 55 bytes each) are not made.
    assert kept.held() < len("\n".join(tags)) + 1024
