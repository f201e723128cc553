"""Lists written at the same time that show the same registry answer whole format it once
(api.render.SharedText): the same bytes as a list written alone, one formatting for all, bounded
memory, and a list that stops half way breaks none of the others.

The lists here are interleaved by hand, a chunk at a time, as write_streamed interleaves them (one
chunk per list per reactor turn); tests/integration/test_shared_lists.py runs them on the real
registry and the real server."""

from __future__ import annotations

from collections.abc import Generator, Sequence

import pytest

from payloadtags.api import render
from payloadtags.api.negotiation import MediaType
from payloadtags.api.render import SharedText, list_chunks
from payloadtags.inventory import Run
from payloadtags.model import ListMeta
from payloadtags.names import TagRef
from tests.unit.test_render import _MEDIA, HOST, META, _reference

CHUNK = 50


def _tags(count: int, prefix: str = "v") -> tuple[str, ...]:
    return tuple(f"{prefix}{i:05d}" for i in range(count))


def _refs(runs: Sequence[Run]) -> list[TagRef]:
    return [TagRef(run.namespace, run.repository_path, tag) for run in runs for tag in run.tags]


def _lists(
    count: int, runs: Sequence[Run], media: MediaType, include: str, shared: SharedText
) -> list[Generator[bytes, None, None]]:
    return [list_chunks(runs, META, media, HOST, include, CHUNK, shared) for _ in range(count)]


def _interleave(lists: list[Generator[bytes, None, None]], steps: list[int] | None = None) -> list[bytes]:
    """Every list a chunk at a time in turn (list i ``steps[i]`` chunks per turn) until all end."""
    bodies: list[list[bytes]] = [[] for _ in lists]
    running = set(range(len(lists)))
    while running:
        for index in sorted(running):
            for _ in range((steps or [1] * len(lists))[index]):
                chunk = next(lists[index], None)
                if chunk is None:
                    running.discard(index)
                    break
                bodies[index].append(chunk)
    return [b"".join(body) for body in bodies]


class Counted:
    """Counts the items ``render._ItemMaker`` makes, whoever asks."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.items = 0
        original = render._ItemMaker.laid

        def counting(maker: render._ItemMaker, tags: Sequence[str], pieces: list[str]) -> list[str]:
            self.items += len(tags)
            return original(maker, tags, pieces)

        monkeypatch.setattr(render._ItemMaker, "laid", counting)


@pytest.mark.parametrize("media", list(_MEDIA), ids=list(_MEDIA))
@pytest.mark.parametrize("include", ["Metadata", "Object", "None"])
def test_lists_sharing_runs_are_the_bytes_of_a_list_alone_and_format_them_once(
    media: str, include: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One big run (blocks of CHUNK items and a short last one), small runs that share a chunk, and a
    # run that is not a registry answer (a selector's list): never shared.
    runs = [
        Run("team", "app", _tags(4 * CHUNK + 7)),
        Run("team", "small-a", _tags(3)),
        Run("team", "small-b", _tags(CHUNK - 1)),
        Run("team", "selected", list(_tags(9))),
        Run("team", "z", _tags(1)),
    ]
    expected = _reference(_refs(runs), META, _MEDIA[media], include)
    counted = Counted(monkeypatch)
    shared = SharedText()
    bodies = _interleave(_lists(5, runs, _MEDIA[media], include, shared))
    assert bodies == [expected] * 5
    tuples = sum(len(run.tags) for run in runs if isinstance(run.tags, tuple))
    # The shared runs once, the list run once per list.
    assert counted.items == tuples + 5 * 9
    assert shared.formatted == 5 + 1 + 1 + 1  # blocks: 5 of app, one of each small run
    assert len(shared) == 0 and shared.held == 0  # nothing kept once the lists are done


def test_chunks_stay_about_chunk_items_long_with_shared_runs() -> None:
    runs = [Run("team", f"r{i:02d}", _tags(7)) for i in range(40)]
    (chunks,) = [list(list_chunks(runs, META, _MEDIA["full"], HOST, "Metadata", CHUNK, SharedText()))]
    # Small shared runs are gathered into chunks of at least CHUNK items, not written one by one.
    assert len(chunks) == (40 * 7) // CHUNK + 1
    assert b"".join(chunks) == _reference(_refs(runs), META, _MEDIA["full"], "Metadata")


def test_a_list_alone_keeps_only_the_block_it_is_writing() -> None:
    shared = SharedText()
    run = Run("team", "app", _tags(20 * CHUNK))
    held = []
    for _ in list_chunks([run], META, _MEDIA["table"], HOST, "Object", CHUNK, shared):
        held.append(shared.held)
    assert max(held) == 1
    assert len(shared) == 0


def test_a_list_that_lags_is_bounded_and_formats_what_was_dropped_for_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One list reads ten chunks for each of the other's (a slow client): what is kept between them
    # stays at max_blocks; the slow list formats the blocks dropped before it came to them.
    counted = Counted(monkeypatch)
    shared = SharedText(max_blocks=3)
    run = Run("team", "app", _tags(30 * CHUNK))
    lists = _lists(2, [run], _MEDIA["full"], "Metadata", shared)
    bodies: list[list[bytes]] = [[], []]
    most = 0
    for chunk in lists[1]:
        bodies[1].append(chunk)
        for _ in range(10):
            fast = next(lists[0], None)
            if fast is not None:
                bodies[0].append(fast)
            most = max(most, shared.held)
    expected = _reference(_refs([run]), META, _MEDIA["full"], "Metadata")
    assert [b"".join(body) for body in bodies] == [expected, expected]
    assert most <= 3
    assert 30 * CHUNK < counted.items < 2 * 30 * CHUNK  # shared while within reach, again for itself after
    assert len(shared) == 0


def test_a_list_stopped_half_way_leaves_the_others_whole() -> None:
    shared = SharedText(max_blocks=2)
    run = Run("team", "app", _tags(12 * CHUNK))
    lists = _lists(4, [run], _MEDIA["partial"], "Metadata", shared)
    bodies: list[list[bytes]] = [[] for _ in lists]
    for turn in range(6):
        for index, chunks in enumerate(lists):
            if index == 1 and turn == 3:
                chunks.close()  # the client went away: its generator is closed, as aclose does
            if index == 1 and turn >= 3:
                continue
            bodies[index].append(next(chunks))
    assert len(shared) == 1 and len(next(iter(shared._runs.values()))[0].places) == 3
    for index, chunks in enumerate(lists):
        if index != 1:
            bodies[index].extend(chunks)
    expected = _reference(_refs([run]), META, _MEDIA["partial"], "Metadata")
    assert [b"".join(bodies[i]) for i in (0, 2, 3)] == [expected] * 3
    assert len(shared) == 0 and shared.held == 0


def test_the_last_list_to_stop_lets_everything_go() -> None:
    shared = SharedText()
    run = Run("team", "app", _tags(10 * CHUNK))
    lists = _lists(3, [run], _MEDIA["full"], "Metadata", shared)
    for chunks in lists:
        next(chunks)
        next(chunks)
    assert shared.held >= 1
    for chunks in lists:
        chunks.close()
    assert len(shared) == 0 and shared.held == 0


def test_equal_answers_read_apart_are_formatted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two registry reads that answered the same tags (lists that came after the first read went out
    # read again): other tuples, the same text, formatted once.
    counted = Counted(monkeypatch)
    shared = SharedText()
    first, second = Run("team", "app", _tags(3 * CHUNK)), Run("team", "app", _tags(3 * CHUNK))
    assert first.tags is not second.tags
    bodies = _interleave(
        [
            list_chunks([first], META, _MEDIA["full"], HOST, "Metadata", CHUNK, shared),
            list_chunks([second], META, _MEDIA["full"], HOST, "Metadata", CHUNK, shared),
        ]
    )
    assert bodies[0] == bodies[1] == _reference(_refs([first]), META, _MEDIA["full"], "Metadata")
    assert counted.items == 3 * CHUNK
    assert len(shared) == 0 and shared.held == 0


def test_answers_that_differ_are_formatted_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tag pushed between two reads: each list shows its own answer.
    counted = Counted(monkeypatch)
    shared = SharedText()
    runs = [
        Run("team", "app", _tags(3 * CHUNK)),
        Run("team", "app", _tags(3 * CHUNK + 1)),
        Run("team", "app", (*_tags(3 * CHUNK - 1), "w")),
    ]
    bodies = _interleave(
        [list_chunks([run], META, _MEDIA["full"], HOST, "Metadata", CHUNK, shared) for run in runs]
    )
    assert bodies == [_reference(_refs([run]), META, _MEDIA["full"], "Metadata") for run in runs]
    assert counted.items == sum(len(run.tags) for run in runs)
    assert len(shared) == 0 and shared.held == 0


def test_lists_that_come_later_to_an_equal_answer_take_what_is_kept_and_share_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three lists are four blocks into a run when three more come with an equal answer (read after
    # theirs): the late ones format the four dropped blocks once among themselves and take the others
    # from the first ones; one of them goes away half way. What is kept stays within max_blocks.
    counted = Counted(monkeypatch)
    shared = SharedText(max_blocks=12)
    early = [Run("team", "app", _tags(12 * CHUNK)) for _ in range(3)]
    late = [Run("team", "app", _tags(12 * CHUNK)) for _ in range(3)]
    lists = [list_chunks([run], META, _MEDIA["table"], HOST, "Object", CHUNK, shared) for run in early]
    bodies: list[list[bytes]] = [[] for _ in range(6)]
    for _ in range(4):
        for index, chunks in enumerate(lists):
            bodies[index].append(next(chunks))
    lists += [list_chunks([run], META, _MEDIA["table"], HOST, "Object", CHUNK, shared) for run in late]
    most, turn, running = 0, 0, set(range(6))
    while running:
        for index in sorted(running):
            if index == 4 and turn == 3:
                lists[index].close()  # the client went away
                running.discard(index)
                continue
            chunk = next(lists[index], None)
            if chunk is None:
                running.discard(index)
            else:
                bodies[index].append(chunk)
            most = max(most, shared.held)
        turn += 1
    expected = _reference(_refs(early[:1]), META, _MEDIA["table"], "Object")
    assert [b"".join(bodies[i]) for i in (0, 1, 2, 3, 5)] == [expected] * 5
    assert counted.items == (12 + 4) * CHUNK  # the whole run once, its first four blocks again
    assert most <= 12
    assert len(shared) == 0 and shared.held == 0


def test_lists_far_apart_on_an_equal_answer_keep_max_blocks_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    # The late lists need every block the early ones make from where they joined: what is kept is
    # still bounded, and what was dropped is formatted again, once for the late lists together.
    counted = Counted(monkeypatch)
    shared = SharedText(max_blocks=3)
    runs = [Run("team", "app", _tags(20 * CHUNK)) for _ in range(4)]
    lists = [list_chunks([run], META, _MEDIA["full"], HOST, "Metadata", CHUNK, shared) for run in runs]
    bodies: list[list[bytes]] = [[] for _ in lists]
    for _ in range(5):
        for index in (0, 1):
            bodies[index].append(next(lists[index]))
    most = 0
    for _ in range(40):
        for index, chunks in enumerate(lists):
            chunk = next(chunks, None)
            if chunk is not None:
                bodies[index].append(chunk)
            most = max(most, shared.held)
    expected = _reference(_refs(runs[:1]), META, _MEDIA["full"], "Metadata")
    assert [b"".join(body) for body in bodies] == [expected] * 4
    assert most <= 3
    assert 20 * CHUNK < counted.items < 2 * 20 * CHUNK
    assert len(shared) == 0 and shared.held == 0


def test_other_forms_of_the_same_answer_are_formatted_apart() -> None:
    shared = SharedText()
    run = Run("team", "app", _tags(2 * CHUNK))
    lists = [
        list_chunks([run], META, _MEDIA[media], HOST, include, CHUNK, shared)
        for media, include in [
            ("full", "Metadata"),
            ("table", "Metadata"),
            ("table", "None"),
            ("partial", "Metadata"),
        ]
    ]
    bodies = _interleave(lists)
    for body, (media, include) in zip(
        bodies,
        [("full", "Metadata"), ("table", "Metadata"), ("table", "None"), ("partial", "Metadata")],
        strict=True,
    ):
        assert body == _reference(_refs([run]), META, _MEDIA[media], include)
    assert shared.formatted == 4 * 2 and shared.taken == 0


def test_another_list_meta_shares_the_items() -> None:
    # The envelope (resourceVersion) is each list's own; the items are shared.
    shared = SharedText()
    run = Run("team", "app", _tags(2 * CHUNK))
    metas = [META, ListMeta(resource_version="7")]
    lists = [list_chunks([run], meta, _MEDIA["full"], HOST, "Metadata", CHUNK, shared) for meta in metas]
    bodies = _interleave(lists)
    assert bodies == [_reference(_refs([run]), meta, _MEDIA["full"], "Metadata") for meta in metas]
    assert shared.formatted == 2 and shared.taken == 2


def test_a_list_alone_through_small_runs_keeps_two_chunks_at_most() -> None:
    # It stays in the runs of its last two chunks (lists coming to them in the same turn find them),
    # never more: what it keeps does not grow with the list.
    shared = SharedText()
    runs = [Run("team", f"r{i:03d}", _tags(7)) for i in range(200)]
    most = 0
    for _ in list_chunks(runs, META, _MEDIA["full"], HOST, "Metadata", CHUNK, shared):
        most = max(most, shared.held)
    assert 7 * most <= 2 * CHUNK + 2 * 7
    assert len(shared) == 0 and shared.held == 0
