"""Notification rereads run a few at a time, from a queue of their own (review r1events L1), and a
repository notified again while its reread is out is read once more (review r2events F2)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from payloadtags.watch.rereads import NotificationRereads
from tests.unit.test_watch import FakeReader, make_hub, ready, watcher


class Rereads:
    """What the hub's reread would start: one unfinished read per call, finished by the test."""

    def __init__(self, reads_per_call: int = 2) -> None:
        self.reads_per_call = reads_per_call
        self.started: list[str] = []
        self.reads: dict[str, list[Deferred[None]]] = {}

    def __call__(self, repository: str) -> list[Deferred[None]]:
        self.started.append(repository)
        reads: list[Deferred[None]] = [Deferred() for _ in range(self.reads_per_call)]
        self.reads[repository] = reads
        return reads

    def finish(self, repository: str) -> None:
        for read in self.reads.pop(repository):
            read.callback(None)


def test_a_burst_holds_at_most_concurrency_repositories_reads_and_waits_its_turn():
    rereads = Rereads()
    queue = NotificationRereads(rereads, concurrency=2)
    for n in range(100):
        queue.add(f"ns/r{n}")
    assert rereads.started == ["ns/r0", "ns/r1"] and queue.running == 2 and len(queue) == 98
    rereads.reads["ns/r0"][0].callback(None)
    assert rereads.started == ["ns/r0", "ns/r1"]  # both of a repository's reads end first
    rereads.reads["ns/r0"][1].callback(None)
    del rereads.reads["ns/r0"]
    assert rereads.started == ["ns/r0", "ns/r1", "ns/r2"]
    for n in range(1, 100):
        rereads.finish(f"ns/r{n}")
    assert rereads.started == [f"ns/r{n}" for n in range(100)] and queue.running == 0 and len(queue) == 0


def test_a_repository_asked_for_again_while_it_waits_is_read_once():
    rereads = Rereads()
    queue = NotificationRereads(rereads, concurrency=1)
    for repository in ("ns/a", "ns/b", "ns/b", "ns/b"):
        queue.add(repository)
    assert len(queue) == 1
    rereads.finish("ns/a")
    rereads.finish("ns/b")
    assert rereads.started == ["ns/a", "ns/b"]


def test_rereads_that_start_nothing_drain_a_long_queue_without_recursing():
    rereads = Rereads(reads_per_call=0)  # every source reads the repository already
    queue = NotificationRereads(rereads, concurrency=1, max_pending=100_000)
    blocker = Rereads()
    queue.reread = lambda repository: blocker(repository) if repository == "ns/first" else rereads(repository)
    queue.add("ns/first")
    for n in range(20_000):
        queue.add(f"ns/r{n}")
    blocker.finish("ns/first")
    assert len(rereads.started) == 20_000 and queue.running == 0


def test_past_max_pending_a_repository_is_dropped_and_said_once_per_period():
    now = [0.0]
    rereads = Rereads()
    queue = NotificationRereads(rereads, concurrency=1, max_pending=3, monotonic=lambda: now[0])
    with capturedLogs() as events:
        for n in range(10):
            queue.add(f"ns/r{n}")
    assert rereads.started == ["ns/r0"] and len(queue) == 3
    warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 1 and "watches see their changes at the next resync" in warnings[0]


def test_a_notification_while_the_same_repository_s_reread_is_out_reads_it_once_more():
    """Review r2events F2: a push notified while the previous push's reread is out is read by one
    more read after it (the source's ``_again``), not left to the watch resync."""
    reader = FakeReader({"team/app": {"v1"}})
    hub = make_hub(reader, Clock(), resync_period=3600)
    source = ready(hub, "team")
    w, sink = watcher()
    assert hub.start(w, source, since=hub.versions.current, timeout=None)
    reader.held = []
    queue = NotificationRereads(hub.reads)
    queue.add("team/app")  # a first push's notification
    assert len(reader.held) == 1 and queue.running == 1
    reader.repositories["team/app"].add("v2")
    queue.add("team/app")  # the second push's, while the first read is out
    assert queue.running <= 1 and len(queue) == 0
    reader.held[0].callback(["v1"])  # the first read was answered before the second push
    assert len(reader.held) == 2, "no second read: the second change waits for the resync"
    reader.held[1].callback(["v1", "v2"])
    assert [line.split()[:2] for line in sink.lines] == [[b"ADDED", b"team/app:v2"]]
    assert queue.running == 0
