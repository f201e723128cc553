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


def numbered(count: int, newline: bool = False) -> list[str]:
    """``count`` sorted tags; with ``newline``, the middle one holds a newline (the list keeps a tuple)."""
    tags = [f"t{i:05d}" for i in range(count)]
    if newline and tags:
        tags[count // 2] += "\nx"
    return tags


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


# The sizes at and around the block bounds, where a slice, `in` or `after` crosses from block to block.
SIZES = [0, 1, 2, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK - 1, 2 * BLOCK, 2 * BLOCK + 1, 3 * BLOCK]


def probes(tags: list[str]) -> list[str]:
    """Each tag, and strings next to it, around it, before and after all of them, and across two blocks."""
    around = ["", "t", "t0", "u", "t99999", "\n", "t00249\n", "t00250\nt00251", "t00249\nt00250"]
    return around + [probe for tag in tags for probe in (tag, tag + "~", tag[:-1], tag + "\n", tag + "\x00")]


@pytest.mark.parametrize("newline", [False, True], ids=["blocks", "tuple"])
@pytest.mark.parametrize("count", SIZES)
def test_a_tag_list_at_the_block_bounds_is_its_tuple(count: int, newline: bool) -> None:
    # Every bound and step a caller may slice with, at every block bound (review r1tags L2: random
    # bounds rarely land on one, and an off-by-one there showed a page the wrong tags or raised).
    tags = numbered(count, newline)
    kept, expected = TagList(tags), tuple(tags)
    assert len(kept) == count and bool(kept) == bool(expected)
    assert list(kept) == tags and list(reversed(kept)) == tags[::-1]
    for index in range(-count - 2, count + 2):
        if -count <= index < count:
            assert kept[index] == expected[index]
        else:
            with pytest.raises(IndexError):
                kept[index]
    near = (-1, 0, 1)
    bounds = {None, *(edge + step for edge in (0, BLOCK, 2 * BLOCK, count, -BLOCK, -count) for step in near)}
    for start in bounds:
        for stop in bounds:
            for step in (None, 1, 2, 3, BLOCK, BLOCK + 1, -1, -2, -BLOCK):
                assert list(kept[start:stop:step]) == tags[start:stop:step], (start, stop, step)
    for probe in [*probes(tags), 1, None, b"t00000", ("t00000",)]:
        assert (probe in kept) == (probe in expected), probe
    for tag in probes(tags):
        assert kept.after(tag) == bisect.bisect_right(expected, tag) == bisect_after(kept, tag), tag


@pytest.mark.parametrize("newline", [False, True], ids=["blocks", "tuple"])
@pytest.mark.parametrize("count", SIZES)
def test_a_tag_list_equals_a_list_or_tuple_of_its_tags_only(count: int, newline: bool) -> None:
    tags = numbered(count, newline)
    kept, expected = TagList(tags), tuple(tags)
    again = TagList(list(tags), plain=not newline)
    assert kept == expected and expected == kept and kept == again and again == kept
    assert not (kept != expected or expected != kept or kept != again)
    assert hash(kept) == hash(again)
    if not count:
        return
    changed = [*tags[:-1], tags[-1] + "~"]
    for other in (tags[:-1], tags[1:], changed, [*tags, "u"]):
        assert kept != tuple(other) and tuple(other) != kept and not (kept == tuple(other))
        assert kept != TagList(other) and TagList(other) != kept and not (kept == TagList(other))


def test_lists_kept_as_tuples_differ_by_their_tags() -> None:
    # Two lists of tags with newlines (no blocks either) of the same length are still told apart.
    assert TagList(["a\nb"]) != TagList(["a\nc"]) and TagList(["a\nb", "c"]) != TagList(["a\nb", "d"])
    assert TagList(["a\nb"]) == TagList(("a\nb",))
