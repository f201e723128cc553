"""What a resumed watch holds while its client does not read: its place in the scope's history (and in
its opening), not a copy of the events it has still to send (docs/watch.md, "Bounds")."""

from __future__ import annotations

import gc

from twisted.internet.task import Clock

from payloadtags.names import TagRef
from payloadtags.watch.source import Event, EventType
from tests.unit.test_watch import FakeReader, from_list, listing, make_hub, ready, watcher


def lists_of_events(at_least: int) -> int:
    """How many lists of at least ``at_least`` events are alive."""
    gc.collect()
    return sum(
        1
        for obj in gc.get_objects()
        if type(obj) is list and len(obj) >= at_least and all(type(item) is Event for item in obj[:3])
    )


def test_a_resumed_watch_holds_no_copy_of_the_history_it_has_still_to_send() -> None:
    reader = FakeReader({"ns/app": set()})
    clock = Clock()
    hub = make_hub(reader, clock, history=2000)
    source = ready(hub, "ns")
    oldest = hub.versions.current
    for i in range(1000):
        source.emit(*_added(i))
    before = lists_of_events(900)
    stalled = []
    for _ in range(3):
        w, sink = watcher()
        w.pauseProducing()  # its transport is full from the first line on
        assert hub.start(w, source, since=oldest, timeout=None)
        stalled.append((w, sink))
    assert lists_of_events(900) == before
    source.emit(*_added(1000))  # live: after what it resumed with
    for w, sink in stalled:
        while w.opening is not None:
            w.resumeProducing()
        w.resumeProducing()
        assert [line.split()[1] for line in sink.lines] == [f"ns/app:t{i:04d}".encode() for i in range(1001)]
    hub.stop()


def test_a_watch_resumed_inside_an_opening_holds_no_copy_of_its_rest() -> None:
    reader = FakeReader({"ns/big": {f"t{i:04d}" for i in range(1000)}, "ns/small": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock)
    sequence, observe = listing(hub, "ns")
    observe("ns/small", ("v1",))
    source = ready(hub, "ns")
    w, sink = watcher()
    w.pauseProducing()
    assert from_list(hub, w, source, sequence)
    w.resumeProducing()
    w.end("client gone", write=False)
    first = int(sink.lines[0].split()[2])
    before = lists_of_events(900)
    again, rest = watcher()
    again.pauseProducing()
    assert hub.start(again, source, since=first, timeout=None)
    assert lists_of_events(900) == before  # the opening's own copy only
    while again.opening is not None:
        again.resumeProducing()
    assert [line.split()[1] for line in rest.lines] == [f"ns/big:t{i:04d}".encode() for i in range(1, 1000)]
    hub.stop()


def test_a_resumed_watch_whose_next_event_the_history_dropped_is_cut_as_a_slow_one() -> None:
    """More new events than the history keeps came before the client read what it resumed with: the
    stream is cut (its client resumes from its last event, which is 410 then) rather than skip them."""
    reader = FakeReader({"ns/app": set()})
    clock = Clock()
    hub = make_hub(reader, clock, history=5)
    source = ready(hub, "ns")
    oldest = hub.versions.current
    for i in range(5):
        source.emit(*_added(i))
    w, sink = watcher()
    w.pauseProducing()
    assert hub.start(w, source, since=oldest, timeout=None)
    for i in range(5, 11):
        source.emit(*_added(i))
    clock.advance(0)  # the fan-out's turn: the live events wait behind what it resumed with
    w.resumeProducing()
    assert w.closed and w.reason == "slow" and sink.aborted
    assert [line.split()[1] for line in sink.lines] == []
    assert source.since(oldest) is None
    hub.stop()


def _added(i: int) -> tuple[EventType, TagRef]:
    return EventType.ADDED, TagRef("ns", "app", f"t{i:04d}")
