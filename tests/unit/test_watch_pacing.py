"""A watch's opening written a piece per reactor turn, against what the stream must carry.

A real WatchHub with a Clock: a selective watch (its selectors accept from every tag to none),
in a Table's two forms or not, with bookmarks, starts from a snapshot large enough to take many
turns. At random turns tags are pushed and deleted, periodic bookmarks are due, and the transport
pauses and resumes the watcher. Whatever the interleaving: the opening is exactly the accepted part
of the snapshot, in list order, at the start's resourceVersion, then the initial-events-end bookmark;
each change after it, once; resourceVersions never go back; and the first event line is in the first
(column) form. (Property test by the r10watch review.)
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from tests.unit.test_watch import FakeReader, make_hub, one_turn, ready, watcher

# Tags in 3 repositories: their ADDED lines fill some 6 pieces of an opening, so that the actions
# (at turns up to _LAST_TURN) land before, inside and after it.
_TAGS = 4000
_LAST_TURN = 8
_ACTIONS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=_LAST_TURN),
        st.sampled_from(["push", "delete", "bookmark", "pause", "resume"]),
    ),
    max_size=8,
)
_MODULI = st.sampled_from([1, 2, 7, 50, 100_000])  # a selector accepting all tags, 1 in 2, ..., none


def parse(line: bytes) -> tuple[str, str, int]:
    """(type, what, resourceVersion) of the test's rendered lines; a bookmark's ``what`` says whether
    it ends the initial events."""
    kind, what, sequence = line.decode().split()[:3]
    if kind == "BOOKMARK":
        return kind, sequence, int(what)
    return kind, what, int(sequence)


def check_paced_opening(modulus: int, table: bool, actions: list[tuple[int, str]]) -> None:
    reader = FakeReader({f"team/app{r}": {f"t{i:05d}" for i in range(r, _TAGS, 3)} for r in range(3)})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10_000)
    source = ready(hub, "team")
    w, sink = watcher(bookmarks=True, max_buffered=100_000)
    w.clock = clock
    w.accept = lambda ref: ref.tag.startswith("n") or int(ref.tag[1:]) % modulus == 0
    if table:
        w.render_after = lambda event: b"AFTER " + w.render(event)
    start = hub.versions.current
    assert hub.start(w, source, since=None, timeout=None, initial_events_end=True)
    assert w.opening is not None  # more than one turn's piece
    pushed: list[str] = []
    deleted: list[str] = []
    pending = sorted(actions)
    turn = 0
    while pending or one_turn(clock):
        while pending and pending[0][0] <= turn:
            _, action = pending.pop(0)
            if action == "push":  # accepted by every selector
                tag = f"n{len(pushed):04d}"
                reader.repositories["team/app0"].add(tag)
                pushed.append(tag)
                hub.repository_changed("team/app0")
            elif action == "delete":  # one of team/app0's, each once
                gone = f"t{9 * len(deleted):05d}"
                reader.repositories["team/app0"].discard(gone)
                deleted.append(gone)
                hub.repository_changed("team/app0")
            elif action == "bookmark":
                hub.bookmarks()
            elif action == "pause":  # the transport's buffer is full: the client reads slowly
                w.pauseProducing()
            else:
                w.resumeProducing()
        if not pending and w.paused:
            w.resumeProducing()  # the client reads what is left
        turn += 1
    assert not w.closed, w.reason
    assert w.opening is None and not w.buffer and not w.paused
    if table:  # the first event line (of the opening or not) is in the first form, the others not
        events = [line for line in sink.lines if not line.startswith(b"BOOKMARK")]
        assert not events or not events[0].startswith(b"AFTER ")
        assert all(line.startswith(b"AFTER ") for line in events[1:])
    parsed = [parse(line.removeprefix(b"AFTER ")) for line in sink.lines]
    versions = [sequence for _, _, sequence in parsed]
    assert versions == sorted(versions)
    end = next(i for i, (kind, _, _) in enumerate(parsed) if kind == "BOOKMARK")
    assert parsed[end] == ("BOOKMARK", "True", start)
    expected = [f"team/app{r}:t{i:05d}" for r in range(3) for i in range(r, _TAGS, 3) if i % modulus == 0]
    assert [what for _, what, _ in parsed[:end]] == expected
    assert all(kind == "ADDED" and sequence == start for kind, _, sequence in parsed[:end])
    live = [(kind, what) for kind, what, _ in parsed[end + 1 :] if kind != "BOOKMARK"]
    assert len(live) == len(set(live))
    assert sorted(what for kind, what in live if kind == "ADDED") == [f"team/app0:{tag}" for tag in pushed]
    assert sorted(what for kind, what in live if kind == "DELETED") == [
        f"team/app0:{tag}" for tag in deleted if int(tag[1:]) % modulus == 0
    ]
    hub.stop()


@pytest.mark.property
@given(modulus=_MODULI, table=st.booleans(), actions=_ACTIONS)
@settings(max_examples=25, deadline=None)
def test_a_paced_opening_sends_each_event_once_in_order(
    modulus: int, table: bool, actions: list[tuple[int, str]]
) -> None:
    check_paced_opening(modulus, table, actions)


@pytest.mark.slow
@given(modulus=_MODULI, table=st.booleans(), actions=_ACTIONS)
@settings(max_examples=300, deadline=None)
def test_a_paced_opening_sends_each_event_once_in_order_many(
    modulus: int, table: bool, actions: list[tuple[int, str]]
) -> None:
    check_paced_opening(modulus, table, actions)
