"""What a watch from a list of a scope nobody watched holds while its client does not read: no event
of its opening it has not been sent (docs/watch.md, "Bounds"), however large the opening."""

from __future__ import annotations

import gc

from twisted.internet.task import Clock

from payloadtags.watch.openings import Openings
from payloadtags.watch.source import Event
from tests.unit.test_watch import FakeReader, from_list, listed_small_alone, listing, make_hub, ready, watcher


def events_alive() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is Event)


def test_a_watch_from_a_list_by_name_holds_no_event_of_its_opening_it_has_not_sent() -> None:
    """A list by name of `small:v1` (as `kubectl wait` makes) while nobody watches the namespace, then
    watches from it without a selector whose clients do not read: each one's opening is an ADDED for
    every tag of `big` (the list did not read it). They used to be made all at once and held until
    written (about 180 bytes an event); now none is made before its client takes it, and none of these
    openings, larger than its user may keep, is kept for resumes either."""
    clock = Clock()
    hub, source, sequence = listed_small_alone(3000, clock)
    hub.openings = Openings(max_user_events=1000)
    before = events_alive()
    stalled = []
    for _ in range(3):
        w, sink = watcher()
        w.pauseProducing()  # its transport is full from the first line on
        assert from_list(hub, w, source, sequence)
        stalled.append((w, sink))
    assert events_alive() - before <= 3  # at most the one each is writing
    assert hub.openings.live == 0 and hub.openings.size == 0
    # What they are sent: every tag of `big`, numbered one after the other, each watch its own block.
    blocks = []
    for w, sink in stalled:
        while w.opening is not None:
            w.resumeProducing()
        assert [line.split()[0] for line in sink.lines] == [b"ADDED"] * 3000
        assert [line.split()[1] for line in sink.lines] == [f"ns/big:t{i:04d}".encode() for i in range(3000)]
        numbers = [int(line.split()[2]) for line in sink.lines]
        assert numbers == list(range(numbers[0], numbers[0] + 3000))
        blocks.append(numbers)
    assert blocks[0][-1] < blocks[1][0] and blocks[1][-1] < blocks[2][0]
    assert hub.versions.current == blocks[2][-1]
    hub.stop()


def test_an_opening_its_user_may_keep_is_kept_once_and_served_to_a_resume() -> None:
    """Within the bound the copy for resumes is the only list of the opening's events; a watch resumed
    from inside it is sent its rest."""
    clock = Clock()
    hub, source, sequence = listed_small_alone(300, clock)
    before = events_alive()
    w, sink = watcher()
    w.pauseProducing()
    assert from_list(hub, w, source, sequence)
    assert hub.openings.live == 1 and hub.openings.size == 300
    assert events_alive() - before <= 300 + 1
    w.resumeProducing()
    cut = int(sink.lines[99].split()[2])
    w.end("client gone", write=False)
    again, rest = watcher()
    assert hub.start(again, source, since=cut, timeout=None)
    assert [line.split()[1] for line in rest.lines] == [f"ns/big:t{i:04d}".encode() for i in range(100, 300)]
    hub.stop()


def test_an_opening_is_made_from_the_state_it_was_counted_from() -> None:
    """An opening is counted (its resourceVersions taken as one block) when the watch starts and made
    as its client reads, from copies of the scope's and the list record's repositories: a push between
    the two changes neither what it holds nor its count. Made from the live maps, the push would shift
    it (an ADDED of the pushed tag in place of the counted ones) and the count would cut off one that
    is sent nowhere else."""
    reader = FakeReader({"ns/r1": set(), "ns/r2": {"y"}})
    clock = Clock()
    hub = make_hub(reader, clock)
    sequence, observe = listing(hub, "ns")
    observe("ns/r1", ("x",))  # the list showed r1:x (gone now) and r2 empty
    observe("ns/r2", ())
    source = ready(hub, "ns")
    w, sink = watcher()
    w.pauseProducing()
    assert from_list(hub, w, source, sequence)  # counted: DELETED r1:x, ADDED r2:y
    reader.repositories["ns/r1"] = {"z"}  # pushed before the client read its opening
    hub.repository_changed("ns/r1")
    clock.advance(0)
    w.resumeProducing()
    w.resumeProducing()
    got = [b" ".join(line.split()[:2]).decode() for line in sink.lines]
    assert got == ["DELETED ns/r1:x", "ADDED ns/r2:y", "ADDED ns/r1:z"]
    hub.stop()
