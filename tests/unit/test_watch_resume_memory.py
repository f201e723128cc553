"""What a resumed watch holds while its client does not read: its place in the scope's history (and in
its opening), not a copy of the events it has still to send (docs/watch.md, "Bounds")."""

from __future__ import annotations

import gc

import attrs
import pytest
from twisted.internet.task import Clock

from payloadtags.names import TagRef
from payloadtags.watch.hub import WatchHub
from payloadtags.watch.source import Event, EventType, ScopeSource
from payloadtags.watch.watcher import Watcher
from tests.unit.test_watch import (
    FakeReader,
    FakeSink,
    from_list,
    listed_small_alone,
    make_hub,
    ready,
    render,
    watcher,
)


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
    clock = Clock()
    hub, source, sequence = listed_small_alone(1000, clock)
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


@pytest.mark.parametrize("new", [3, 4])
def test_a_resumed_watch_is_cut_only_when_its_client_is_a_send_buffer_behind_the_history(new: int) -> None:
    """A watch resumed from the history's oldest event has to send all of it. New events come before
    its client read any: the history drops the ones it still needs, which are kept for it up to a send
    buffer's worth (3 here); one more, and the stream is cut as a slow client's is (its client resumes
    from its last event, which is 410 then) rather than skip them. Before, two new events cut it."""
    clock = Clock()
    hub, source, oldest = _a_full_history(clock)
    w, sink = watcher()  # its own send buffer holds every live event here: only the history cuts
    w.pauseProducing()
    assert hub.start(w, source, since=oldest, timeout=None)
    for i in range(5, 5 + new):
        source.emit(*_added(i))
    clock.advance(0)  # the fan-out's turn: the live events wait behind what it resumed with
    w.resumeProducing()
    sent = [line.split()[1] for line in sink.lines]
    if new <= 3:
        assert not w.closed, w.reason
        assert sent == [f"ns/app:t{i:04d}".encode() for i in range(5 + new)]
    else:
        assert w.closed and w.reason == "slow" and sink.aborted
        assert sent == []
    assert source.since(oldest) is None
    hub.stop()


@pytest.mark.parametrize("read", [0, 2])
def test_the_history_keeps_nothing_it_dropped_once_no_resumed_watch_reads_it(read: int) -> None:
    """What the history dropped is kept for resumed watches while one reads it, and let go as the last
    ends (before its client read a line, or partway): not only at the scope's next event, which a quiet
    scope may not have for long."""
    clock = Clock()
    hub, source, oldest = _a_full_history(clock)
    w, sink = _slow_resumer()
    assert hub.start(w, source, since=oldest, timeout=None)
    other, _ = watcher()
    other.pauseProducing()
    assert hub.start(other, source, since=oldest, timeout=None)
    for i in range(5, 8):
        source.emit(*_added(i))
    assert len(source.behind) == 3
    for _ in range(read):
        w.resumeProducing()  # one line, then its transport is full
    assert len(sink.lines) == read
    other.end("client gone", write=False)  # before its client read a line
    assert len(source.behind) == 3  # w still reads them
    w.end("client gone", write=False)
    assert not source.behind
    source.emit(*_added(8))
    assert not source.behind
    hub.stop()


@attrs.define
class OneLineSink(FakeSink):
    """A transport that is full after every write: a slow but steady client."""

    owner: Watcher | None = None

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.owner is not None:
            self.owner.pauseProducing()


def test_a_watch_resumed_inside_an_opening_dropped_before_it_took_the_rest_is_cut_not_served_a_gap() -> None:
    """The rest of an opening is nowhere but in its kept copy: dropped (here as it expires) while the
    resumed watch still has some to send, the stream is cut as a slow client's is (its client's resume
    is 410, and it relists) rather than go on with the history and skip them."""
    clock = Clock()
    hub, source, sequence = listed_small_alone(10, clock)
    w, sink = watcher()
    assert from_list(hub, w, source, sequence)
    seqs = [int(line.split()[2]) for line in sink.lines]
    assert len(seqs) == 10
    w.end("client gone", write=False)
    again, rest = _slow_resumer()
    assert hub.start(again, source, since=seqs[0], timeout=None)
    again.resumeProducing()  # one of the 9 events left, then its transport is full
    assert [int(line.split()[2]) for line in rest.lines] == [seqs[1]]
    clock.advance(hub.limits.idle_scope_ttl + 1)
    hub.reap()  # the opening's kept events go
    source.emit(EventType.ADDED, TagRef("ns", "small", "v2"))
    clock.advance(0)
    again.resumeProducing()
    assert again.closed and again.reason == "slow" and rest.aborted
    assert [int(line.split()[2]) for line in rest.lines] == [seqs[1]]
    hub.stop()


def test_a_watch_resumed_inside_an_opening_that_took_its_last_event_is_not_cut_when_it_is_dropped() -> None:
    """All it needs after the opening's last event is in the history: the opening dropped then (here as
    it expires) is no reason to cut the stream."""
    clock = Clock()
    hub, source, sequence = listed_small_alone(10, clock)
    w, sink = watcher()
    assert from_list(hub, w, source, sequence)
    seqs = [int(line.split()[2]) for line in sink.lines]
    w.end("client gone", write=False)
    again, rest = _slow_resumer()
    assert hub.start(again, source, since=seqs[-2], timeout=None)
    again.resumeProducing()  # the opening's last event, then its transport is full
    assert [int(line.split()[2]) for line in rest.lines] == [seqs[-1]]
    clock.advance(hub.limits.idle_scope_ttl + 1)
    hub.reap()
    source.emit(EventType.ADDED, TagRef("ns", "small", "v2"))
    clock.advance(0)
    again.resumeProducing()
    again.resumeProducing()
    assert not again.closed, again.reason
    assert [line.split()[1] for line in rest.lines] == [sink.lines[-1].split()[1], b"ns/small:v2"]
    hub.stop()


def _a_full_history(clock: Clock) -> tuple[WatchHub, ScopeSource, int]:
    """`ns`'s source with a history of 5 events, all kept, and a send buffer of 3: the hub, the source
    and the sequence before the oldest of them."""
    hub = make_hub(FakeReader({"ns/app": set()}), clock, history=5, send_buffer=3)
    source = ready(hub, "ns")
    oldest = hub.versions.current
    for i in range(5):
        source.emit(*_added(i))
    return hub, source, oldest


def _slow_resumer() -> tuple[Watcher, OneLineSink]:
    """alice's watch whose transport is full after every line, paused before it starts."""
    rest = OneLineSink()
    again = Watcher(
        user="alice", sink=rest, render=render, accept=lambda ref: True, readable=lambda ns, path: True
    )
    rest.owner = again
    again.pauseProducing()
    return again, rest


def _added(i: int) -> tuple[EventType, TagRef]:
    return EventType.ADDED, TagRef("ns", "app", f"t{i:04d}")
