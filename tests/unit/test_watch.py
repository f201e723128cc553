"""The watch core on a fake registry and a fake clock: resourceVersions, sources, fan-out, limits."""

from __future__ import annotations

import ast
import gc
import itertools
import json
import random
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from payloadtags.access.authz import AuthorizationNotReady, Readable
from payloadtags.access.rbac import RbacAuthorizer, RbacIndex
from payloadtags.api.selectors import parse_field_selector, parse_label_selector
from payloadtags.identity import UserInfo
from payloadtags.names import TagRef, split_repository
from payloadtags.registry import RegistryClient
from payloadtags.registry.coalesce import asking
from payloadtags.watch import (
    ListedScopes,
    ReplicaVersions,
    ScopeSource,
    TooManyWatches,
    Watcher,
    WatchHub,
    WatchLimits,
)
from payloadtags.watch.fanout import Lines
from payloadtags.watch.hub import MAX_UNCONFIRMED_READS, UNUSED_SCOPE_TTL, ListReporter
from payloadtags.watch.listed import RECORD_COST, REPOSITORY_COST, USER_COST
from payloadtags.watch.openings import Openings
from payloadtags.watch.source import Event, EventType
from payloadtags.watch.versions import EPOCH_MAX
from payloadtags.watch.watcher import _EXAMINED, _WRITE_BYTES
from tests.support.looked_at import LookedAt
from tests.unit.test_registry_reads import Held, client_for, tags_reply

GROUP = "payload-registry.deckhouse.io"


@attrs.define
class FakeReader:
    repositories: dict[str, set[str]] = attrs.field(factory=dict)
    scope_reads: int = 0
    broken: bool = False
    repository_reads: list[str] = attrs.field(factory=list)
    # Repositories a scope read leaves out (an index that has not learnt of them).
    unindexed: set[str] = attrs.field(factory=set)
    # When set, each repository read waits on a Deferred appended here, which the test fires.
    held: list[Deferred[list[str]]] | None = None
    # When set, each scope read waits on a Deferred appended here before it reads.
    scope_held: list[Deferred[None]] | None = None

    async def scope_tags(self, namespace: str | None) -> dict[str, list[str]]:
        self.scope_reads += 1
        if self.scope_held is not None:
            self.scope_held.append(Deferred())
            await self.scope_held[-1]
        if self.broken:
            raise ConnectionError("registry down")
        refs: list[TagRef] = []
        for repository, tags in sorted(self.repositories.items()):
            parts = split_repository(repository)
            assert parts is not None
            if (namespace is None or parts[0] == namespace) and repository not in self.unindexed:
                refs.extend(TagRef(parts[0], parts[1], tag) for tag in sorted(tags))
        return by_repository(refs)

    async def repository_tags(self, repository: str) -> list[str]:
        self.repository_reads.append(repository)
        if self.held is not None:
            self.held.append(Deferred())
            return await self.held[-1]
        return sorted(self.repositories.get(repository, set()))


@attrs.define
class FakeSink:
    lines: list[bytes] = attrs.field(factory=list)
    closed: bool = False
    aborted: bool = False

    writes: int = 0

    def write(self, data: bytes) -> None:
        # A watcher writes the events handed to it together in one write.
        self.writes += 1
        self.lines.extend(data.splitlines())

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def by_repository(refs: Sequence[TagRef]) -> dict[str, list[str]]:
    """A scope read as the reader gives it: the tags by repository, those without tags left out."""
    seen: dict[str, list[str]] = {}
    for ref in refs:
        seen.setdefault(ref.repository, []).append(ref.tag)
    return seen


def render(event: Event) -> bytes:
    return f"{event.type.value} {event.ref.repository}:{event.ref.tag} {event.sequence}\n".encode()


def bookmark(sequence: int, initial_end: bool) -> bytes:
    return f"BOOKMARK {sequence} {initial_end}\n".encode()


def watcher(
    user: str = "alice",
    readable: set[str] | None = None,
    max_buffered: int = 1000,
    bookmarks: bool = False,
) -> tuple[Watcher, FakeSink]:
    sink = FakeSink()
    w = Watcher(
        user=user,
        sink=sink,
        render=render,
        accept=lambda ref: True,
        readable=lambda ns, path: readable is None or f"{ns}/{path}" in readable,
        max_buffered=max_buffered,
        bookmark=bookmark if bookmarks else None,
    )
    return w, sink


def ready(hub: WatchHub, namespace: str | None) -> ScopeSource:
    result: list[ScopeSource] = []
    Deferred.fromCoroutine(hub.source(namespace)).addCallback(result.append)
    assert result, "the source became ready without waiting on the fake reader"
    return hub.sources[namespace]


def make_hub(reader: FakeReader, clock: Clock, **limits: float) -> WatchHub:
    return WatchHub(reader, clock, WatchLimits(**limits))  # type: ignore[arg-type]


# -- resourceVersions --------------------------------------------------------------------------------


def test_versions_round_trip_and_refuse_foreign_ones() -> None:
    mine, other = ReplicaVersions(epoch=12_345_678), ReplicaVersions(epoch=12_345_679)
    for _ in range(5):
        mine.next()
        other.next()
    assert mine.parse(mine.latest()) == 6
    assert mine.parse(mine.format(3)) == 3
    assert mine.parse(other.latest()) is None  # another replica, or an earlier run
    assert mine.parse(mine.format(7)) is None  # not issued yet: from the future
    assert mine.parse("12a") is None and mine.parse("") is None
    # Numbers no replica issues, up to past int()'s 4300 digits: foreign, never an exception.
    for text in ("18446744073709551616", "9" * 309, "9" * 4301, "9" * 5000):
        assert mine.parse(text) is None
    assert mine.parse("0" * 5000 + mine.latest()) == 6  # as strconv.ParseUint reads leading zeros
    # Ahead: this run's, not issued yet (a list at exactly it is kube-apiserver's "too large").
    assert mine.ahead(mine.format(7)) and not mine.ahead(mine.latest())
    assert not mine.ahead(other.format(99)) and not mine.ahead("12a") and not mine.ahead("")
    assert mine.ahead("0" * 5000 + mine.format(7)) and not mine.ahead("9" * 5000)
    assert int(ReplicaVersions(epoch=EPOCH_MAX, current=10**11 - 1).latest()) < 2**64
    with pytest.raises(ValueError):
        ReplicaVersions(epoch=5)


# -- sources -----------------------------------------------------------------------------------------


def test_baseline_has_no_events_then_resync_diffs() -> None:
    reader = FakeReader({"team/app": {"v1", "v2"}, "other/x": {"a"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    source = ready(hub, "team")
    assert not source.ring and source.ready
    w, sink = watcher()
    assert hub.start(w, source, since=hub.versions.current, timeout=None)
    reader.repositories["team/app"] = {"v2", "v3"}
    reader.repositories["other/x"] = {"b"}  # another scope: not this source's business
    clock.advance(10)
    assert [line.rsplit(b" ", 1)[0] for line in sink.lines] == [b"DELETED team/app:v1", b"ADDED team/app:v3"]
    sequences = [int(line.rsplit(b" ", 1)[1]) for line in sink.lines]
    assert sequences == sorted(sequences) and len(set(sequences)) == 2


def test_one_resync_per_scope_whatever_the_number_of_watchers() -> None:
    reader = FakeReader({f"ns{i}/repo": {"t"} for i in range(3)})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    source = ready(hub, "ns0")
    for _ in range(100):
        assert hub.start(watcher()[0], source, since=None, timeout=None) or True
    baseline = reader.scope_reads
    clock.advance(10)
    clock.advance(10)
    assert reader.scope_reads - baseline == 2


def test_notification_rereads_one_repository_only() -> None:
    reader = FakeReader({"team/app": {"v1"}, "team/web": {"x"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=1000)
    source = ready(hub, "team")
    all_ns = ready(hub, None)
    w, sink = watcher()
    hub.start(w, source, since=hub.versions.current, timeout=None)
    w_all, sink_all = watcher()
    hub.start(w_all, all_ns, since=hub.versions.current, timeout=None)
    scope_reads = reader.scope_reads
    reader.repositories["team/app"].add("v2")
    hub.repository_changed("team/app")
    hub.repository_changed("elsewhere/app")  # only the all-namespaces source covers it
    assert reader.repository_reads == ["team/app", "team/app", "elsewhere/app"]
    assert reader.scope_reads == scope_reads
    assert [line.split(b" ")[:2] for line in sink.lines] == [[b"ADDED", b"team/app:v2"]]
    assert [line.split(b" ")[:2] for line in sink_all.lines] == [[b"ADDED", b"team/app:v2"]]


@attrs.define
class ClientReader:
    """A source's reads of one repository through the real registry client (its coalescing)."""

    client: RegistryClient
    baseline: list[TagRef]

    async def scope_tags(self, namespace: str | None) -> dict[str, list[str]]:
        return by_repository(self.baseline)

    async def repository_tags(self, repository: str) -> Sequence[str]:
        return await self.client.tags(repository)


@attrs.define(eq=False)
class Collected:
    events: list[Event] = attrs.field(factory=list)
    taken: int = 0

    def take(self, events: Sequence[Event], lines: Sequence[Lines]) -> None:
        self.events.extend(events)


def test_a_reread_told_by_a_request_is_not_served_by_a_read_sent_before_the_change() -> None:
    """A deletecollection marks itself asking when it begins (registry.coalesce) and tells the hub
    after its deletes. A read of the repository sent in between (another list's) shows the tags
    before the deletes: the source's reread must be a read of its own, not share that one."""
    clock, held = MemoryReactorClock(), Held()
    client = client_for(held, clock, slots=4)
    source = ScopeSource("team", ClientReader(client, [TagRef("team", "app", "v1")]), ReplicaVersions())
    source.when_ready()
    events = Collected()
    source.subscribers.add(events)
    deleted: Deferred[None] = Deferred()

    async def request() -> None:
        asking()
        await deleted  # its deletes
        source.repository_changed("team/app")

    Deferred.fromCoroutine(request())
    Deferred.fromCoroutine(client.tags("team/app"))  # sent now, while the deletes run
    deleted.callback(None)
    held.pending[0][1].callback(tags_reply("v1"))
    assert len(held.pending) == 2, "the reread shared the read sent before the deletes"
    held.pending[1][1].callback(tags_reply())
    assert [(e.type, e.ref.tag) for e in events.events] == [(EventType.DELETED, "v1")]


def test_stale_read_does_not_undo_a_newer_one() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    source = ScopeSource("team", reader, ReplicaVersions())
    source.when_ready()
    assert source.ready
    source._apply("team/app", frozenset({"v1", "v2"}), mark=10)
    source._apply("team/app", frozenset({"v1"}), mark=5)  # started before the one above
    assert source.tags["team/app"] == {"v1", "v2"}


def test_a_failed_resync_keeps_the_snapshot() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    source = ready(hub, "team")
    w, sink = watcher()
    hub.start(w, source, since=hub.versions.current, timeout=None)
    reader.broken = True
    reader.repositories.clear()
    clock.advance(10)
    assert sink.lines == [] and source.tags == {"team/app": frozenset({"v1"})} and source.failures == 1


# -- history and resuming ----------------------------------------------------------------------------


def test_resume_replays_retained_events_and_refuses_older_ones() -> None:
    reader = FakeReader({"team/app": set()})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=1, history=3)
    source = ready(hub, "team")
    start = hub.versions.current
    for tag in ("a", "b", "c", "d"):
        reader.repositories["team/app"].add(tag)
        clock.advance(1)
    w, sink = watcher()
    assert not hub.start(w, source, since=start, timeout=None)  # "a" left the history: 410
    assert not hub.watchers
    w, sink = watcher()
    assert hub.start(w, source, since=start + 1, timeout=None)
    assert [line.split(b" ")[1] for line in sink.lines] == [b"team/app:b", b"team/app:c", b"team/app:d"]


def test_initial_events_then_bookmark_then_live() -> None:
    reader = FakeReader({"team/app": {"v1", "v2"}, "team/secret": {"s"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    source = ready(hub, "team")
    w, sink = watcher(readable={"team/app"}, bookmarks=True)
    assert hub.start(w, source, since=None, timeout=None, initial_events_end=True)
    rv = hub.versions.current
    assert sink.lines == [
        f"ADDED team/app:v1 {rv}".encode(),
        f"ADDED team/app:v2 {rv}".encode(),
        f"BOOKMARK {rv} True".encode(),
    ]
    reader.repositories["team/secret"].add("t")  # not readable by this watcher
    reader.repositories["team/app"].add("v3")
    clock.advance(10)
    assert sink.lines[-1].startswith(b"ADDED team/app:v3") and len(sink.lines) == 4


def test_a_source_nobody_uses_is_dropped_and_old_versions_get_gone() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10, idle_scope_ttl=60)
    hub.run()
    ready(hub, "team")
    listed = hub.versions.current
    hub.versions.next()  # other scopes move the sequence meanwhile
    clock.advance(61)
    clock.advance(30)
    assert "team" not in hub.sources
    source = ready(hub, "team")
    assert not hub.start(watcher()[0], source, since=listed, timeout=None)
    hub.stop()


def test_a_source_is_not_dropped_while_a_watch_waits_for_its_baseline() -> None:
    """The baseline takes longer than the idle timeout; the watch waiting for it is no subscriber
    yet. Dropped meanwhile, the source would have served that watch with no resync and no
    notification, while bookmarks gave it the replica's newest resourceVersion: a resume from one on
    a later source of the scope would never be sent the change."""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10, idle_scope_ttl=60, bookmark_interval=60)
    hub.run()
    reader.scope_held = []
    slot = hub.admit("alice")
    got: list[ScopeSource] = []
    Deferred.fromCoroutine(hub.source("team", slot)).addCallback(got.append)
    clock.advance(61)  # reap runs while the baseline is read
    reader.scope_held[0].callback(None)
    reader.scope_held = None
    assert got and hub.sources.get("team") is got[0]
    clock.advance(120)  # and while the watch waits on (a fresh read, app.py), holding its slot
    assert hub.sources.get("team") is got[0]
    w, sink = watcher(bookmarks=True)
    assert hub.start(w, got[0], since=None, timeout=600, slot=slot)
    reader.repositories["team/app"] = {"v1", "v2"}
    hub.repository_changed("team/app")
    clock.advance(60)  # a bookmark
    assert [line.split()[0] for line in sink.lines] == [b"ADDED", b"ADDED", b"BOOKMARK"]
    assert sink.lines[1].startswith(b"ADDED team/app:v2")
    hub.stop()


def test_a_source_is_dropped_once_the_watch_that_waited_on_it_gave_up() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10, idle_scope_ttl=60)
    hub.run()
    slot = hub.admit("alice")
    source = ready(hub, "team")
    Deferred.fromCoroutine(hub.source("team", slot))
    clock.advance(120)
    assert hub.sources.get("team") is source
    slot.release()  # its request went away before the watch started
    clock.advance(UNUSED_SCOPE_TTL - 1)
    assert hub.sources.get("team") is source  # idle from then on
    # No watch started on it: kept a reconnect's worth, not idle_scope_ttl.
    clock.advance(UNUSED_SCOPE_TTL)
    assert "team" not in hub.sources
    # A watch never starts on a dropped source: its client relists.
    assert not hub.start(watcher()[0], source, since=None, timeout=None)
    assert not hub.watchers and not hub._reserved
    hub.stop()


def test_a_source_keeps_no_read_number_for_a_repository_without_tags() -> None:
    """Review r6watch F2: a source numbered every repository it ever read, tags or none (a watch by
    a made-up name reads its repository first; a deleted repository), for its whole life. A number
    is needed only to tell an older read still under way as stale: without tags and none under way,
    it goes."""
    reader = FakeReader({"team/app": {"v1"}, "team/gone": {"g"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    source = ready(hub, "team")
    for i in range(30):
        Deferred.fromCoroutine(source.read(f"team/made-up-{i}"))
    del reader.repositories["team/gone"]
    source.repository_changed("team/gone")
    assert set(source._marks) <= {"team/app"}, source._marks
    clock.advance(10)
    assert set(source._marks) <= {"team/app"} and set(source.tags) == {"team/app"}


def test_a_read_older_than_a_tagless_one_is_still_stale_when_it_lands() -> None:
    """A resync under way reads team/app with its tag; meanwhile a notification's read finds it
    deleted. The older read, landing after, must not bring the tag back: the tagless read's number
    is kept until no older read is under way, then forgotten."""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=1000)
    source = ready(hub, "team")
    w, sink = watcher()
    assert hub.start(w, source, since=None, timeout=None)
    reader.scope_held = []
    source.resync()  # its read is numbered now, before the delete
    del reader.repositories["team/app"]
    hub.repository_changed("team/app")
    assert "team/app" in source._marks  # the resync's read, older, is still under way
    reader.repositories["team/app"] = {"v1"}  # what that older read saw
    reader.scope_held[0].callback(None)
    assert [line.split()[:2] for line in sink.lines] == [
        [b"ADDED", b"team/app:v1"],
        [b"DELETED", b"team/app:v1"],
    ]
    assert "team/app" not in source.tags and not source._marks


def test_a_notification_read_older_than_a_tagless_read_stays_stale_across_a_resync() -> None:
    """Review r7watch L1, the other order: a notification's read of team/app (the oldest) is under
    way with its tag; a read in a request's context (newer) finds the repository deleted; then a
    whole resync (newest) runs and ends. The older read, landing last, must not bring the tag back:
    the resync's pruning keeps the tagless read's number while a read older than it is under way.
    (A resync pruning below its own number instead passed every other test.)"""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=1000)
    source = ready(hub, "team")
    w, sink = watcher()
    assert hub.start(w, source, since=None, timeout=None)
    reader.held = []
    hub.repository_changed("team/app")  # read A, sees v1
    Deferred.fromCoroutine(source.read("team/app"))  # read B
    del reader.repositories["team/app"]
    reader.held[1].callback([])  # B: deleted
    source.resync()  # C: a read of the scope, done at once, team/app absent
    reader.held[0].callback(["v1"])  # A lands last
    assert [line.split()[:2] for line in sink.lines] == [
        [b"ADDED", b"team/app:v1"],
        [b"DELETED", b"team/app:v1"],
    ]
    assert "team/app" not in source.tags


# -- how many sources are kept ----------------------------------------------------------------------


def open_and_close(hub: WatchHub, w: Watcher, namespace: str) -> bool:
    """A watch of ``namespace`` as api/app.py starts one (its slot, its scope's source, the start),
    ended by its client at once: whether it was served (False: TooManyWatches, a 429)."""
    try:
        slot = hub.admit(w.user)
    except TooManyWatches:
        return False
    got: list[ScopeSource | Failure] = []
    Deferred.fromCoroutine(hub.source(namespace, slot)).addBoth(got.append)
    assert got, "the source became ready without waiting on the fake reader"
    if isinstance(got[0], Failure):
        got[0].trap(TooManyWatches)
        slot.release()
        return False
    assert hub.start(w, got[0], since=None, timeout=None, slot=slot)
    w.end("client gone", write=False)
    return True


def test_watches_opened_and_closed_keep_no_more_sources_than_max_watches_nor_their_rereads() -> None:
    """Review r6watch F1: one user opens and closes 1,000 watches of made-up namespaces, 100 a
    second. Each used to leave its scope's source behind, rereading it every resync period (10 s)
    for idle_scope_ttl (2 min): 1,000 sources, 100 scope reads a second once her flood is over.
    Now at most max_watches are kept (the one idle longest dropped to make room), and an empty
    scope's idle source goes after UNUSED_SCOPE_TTL: then only bob's namespace is reread. His watch
    is served as before, and so is carol's new one."""
    reader = FakeReader({"team/app": {"v1"}, "other/web": {"w1"}})
    clock = Clock()
    hub = make_hub(reader, clock, max_watches=4, max_watches_per_user=4, resync_period=10, idle_scope_ttl=120)
    hub.run()
    bob, bob_sink = watcher("bob")
    assert hub.start(bob, ready(hub, "team"), since=None, timeout=None)
    flood_reads = 0
    for i in range(1_000):
        before = reader.scope_reads
        assert open_and_close(hub, watcher("mallory")[0], f"made-up-{i}")
        flood_reads += reader.scope_reads - before - 1  # past the baseline her watch asked for
        assert len(hub.sources) <= 4
        clock.advance(0.01)
    # What her flood made rerun while it lasted: next to nothing (a source lives 0.03 s here).
    assert flood_reads <= 3, flood_reads
    assert len(hub.sources) == 4
    clock.advance(UNUSED_SCOPE_TTL + UNUSED_SCOPE_TTL / 2)
    assert set(hub.sources) == {"team"}  # hers are empty: dropped a reconnect's worth after
    before = reader.scope_reads
    for _ in range(6):
        clock.advance(10)
    assert reader.scope_reads - before == 6  # team's, every 10 s
    reader.repositories["team/app"].add("v2")
    clock.advance(10)
    assert [line.split()[:2] for line in bob_sink.lines] == [
        [b"ADDED", b"team/app:v1"],
        [b"ADDED", b"team/app:v2"],
    ]
    carol, carol_sink = watcher("carol")
    slot = hub.admit("carol")
    got: list[ScopeSource] = []
    Deferred.fromCoroutine(hub.source("other", slot)).addCallback(got.append)
    assert hub.start(carol, got[0], since=None, timeout=None, slot=slot)
    assert carol_sink.lines[0].startswith(b"ADDED other/web:w1") and not bob.closed
    hub.stop()


def test_a_new_scope_is_refused_while_every_kept_source_is_in_use() -> None:
    """With max_watches sources kept and none idle (a watch on one, a list waiting for the other's
    first read), a watch of a third scope gets TooManyWatches (a 429 with Retry-After) rather than a
    source past the bound; once one is idle, it is dropped to make room and the watch is served."""
    reader = FakeReader({"a/app": {"v1"}, "b/app": {"v1"}, "c/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, max_watches=2, max_watches_per_user=2)
    hub.run()
    assert hub.start(watcher()[0], ready(hub, "a"), since=None, timeout=None)
    reader.scope_held = []
    slot = hub.admit("bob")
    waiting = Deferred.fromCoroutine(hub.source("b", slot))
    listed: list[str] = []
    Deferred.fromCoroutine(hub.list_version("b")).addCallback(listed.append)
    # Bob's watch gave up (its request cancelled, as api/app.py's is when its client goes); the
    # list still waits for b's first read.
    waiting.addErrback(lambda failure: failure.trap(CancelledError))
    waiting.cancel()
    slot.release()
    assert not open_and_close(hub, watcher("carol")[0], "c")
    assert set(hub.sources) == {"a", "b"} and not hub._reserved
    reader.scope_held[0].callback(None)
    reader.scope_held = None
    assert listed
    assert open_and_close(hub, watcher("carol")[0], "c")
    assert set(hub.sources) == {"a", "c"}
    hub.stop()


def test_a_flood_of_made_up_scopes_does_not_evict_a_scope_someone_resumes_in() -> None:
    """Review r7watch N1: bob's watch of team (tags he may read) ends, as a reflector's does at its
    timeout, and he resumes 2 s later. Meanwhile mallory opens and closes watches of made-up
    namespaces (empty, nobody resumes there). With room for 4 sources, her 4th new scope dropped
    bob's, the one idle longest, though 3 of hers were idle too and worth nothing to anyone: bob's
    resume was 410 and his client relisted. Hers make room among themselves now."""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, max_watches=4, max_watches_per_user=4, resync_period=10, idle_scope_ttl=120)
    hub.run()
    bob, _ = watcher("bob")
    assert hub.start(bob, ready(hub, "team"), since=None, timeout=None)
    clock.advance(1)
    since = hub.versions.current
    bob.end("timeout", write=False)
    for i in range(4):
        clock.advance(0.4)
        assert open_and_close(hub, watcher("mallory")[0], f"made-up-{i}")
    assert len(hub.sources) == 4 and "team" in hub.sources
    clock.advance(0.4)
    again, _ = watcher("bob")
    assert hub.start(again, ready(hub, "team"), since=since, timeout=None), "bob's resume is 410"
    hub.stop()


def test_a_scope_nobody_could_read_in_or_without_tags_is_dropped_soon_after_its_watch() -> None:
    """A watch of a namespace its user may read nothing in (another team's), or of one with no tags
    (a made-up name), keeps its source for UNUSED_SCOPE_TTL once it ends, not idle_scope_ttl:
    nobody resumes there with anything to lose. One her rules let her read in is kept as before."""
    reader = FakeReader({"team/app": {"v1"}, "mine/app": {"v1"}})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock, WatchLimits(resync_period=10, idle_scope_ttl=120))
    grant(index, "mallory", "mine", ["app"], "mallory")
    grant(index, "mallory", "empty", ["app"], "mallory-empty")
    for namespace in ("team", "mine", "empty"):
        w, _ = rbac_watcher(authorizer, "mallory")
        assert open_and_close(hub, w, namespace)
    clock.advance(UNUSED_SCOPE_TTL + UNUSED_SCOPE_TTL / 2)
    assert set(hub.sources) == {"mine"}
    before = reader.scope_reads
    for _ in range(10):
        clock.advance(10)
    assert set(hub.sources) == {"mine"} and reader.scope_reads - before == 10
    clock.advance(30)
    assert not hub.sources  # idle_scope_ttl after her watch
    hub.stop()


# -- lists of scopes nobody watches -----------------------------------------------------------------


def listing(hub: WatchHub, namespace: str | None) -> tuple[int, Callable[[str, Sequence[str]], None]]:
    """A list's first page: its resourceVersion's sequence and where it reports its reads."""
    rv: list[str] = []
    Deferred.fromCoroutine(hub.list_version(namespace)).addCallback(rv.append)
    assert rv, "a list of a scope without a source waits for nothing"
    observe = hub.observer(namespace, rv[0])
    sequence = hub.versions.parse(rv[0])
    assert observe is not None and sequence is not None
    return sequence, observe


def listed_small_alone(big: int, clock: Clock) -> tuple[WatchHub, ScopeSource, int]:
    """A hub where a list of `ns` read `small:v1` alone while nobody watched it (not `big`, of ``big``
    tags), and `ns`'s source is ready since: the hub, the source and the list's sequence. A watch from
    that list opens with an ADDED for every tag of `big`."""
    reader = FakeReader({"ns/big": {f"t{i:04d}" for i in range(big)}, "ns/small": {"v1"}})
    hub = make_hub(reader, clock)
    sequence, observe = listing(hub, "ns")
    observe("ns/small", ("v1",))
    return hub, ready(hub, "ns"), sequence


def from_list(hub: WatchHub, w: Watcher, source: ScopeSource, sequence: int) -> bool:
    """A watch from a list of a scope that had no source, started as api/app.py does: the list's
    record, the reads of the repositories it showed that the baseline lacks, then the watch."""
    listed = hub.listed_at(source.namespace, sequence) if sequence < source.floor else None
    if listed is None:
        return hub.start(w, source, since=sequence, timeout=None)
    confirmed: list[frozenset[str] | None] = []
    Deferred.fromCoroutine(hub.confirm_listed(source, listed)).addCallback(confirmed.append)
    assert confirmed, "the reads wait on the fake reader"
    if confirmed[0] is None:
        return False
    return hub.start(w, source, since=sequence, timeout=None, listed=listed, confirmed=confirmed[0])


def test_a_list_of_an_unwatched_scope_starts_no_source_and_nothing_rereads_it() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10, idle_scope_ttl=60)
    hub.run()
    sequence, observe = listing(hub, "team")
    observe("team/app", ["v1"])
    assert hub.listed_at("team", sequence) is not None
    clock.advance(10 * 20)
    assert reader.scope_reads == 0 and not hub.sources
    assert hub.listed_at("team", sequence) is None  # dropped with nobody using it
    hub.stop()


def test_a_record_takes_its_reports_through_one_callable_and_a_new_record_through_another() -> None:
    """A walk tells by the callable that its kept lists went to this record already (api/tags.py)."""
    clock = Clock()
    hub = make_hub(FakeReader({}), clock, idle_scope_ttl=60)
    sequence, observe = listing(hub, "team")
    version = hub.versions.format(sequence)
    assert hub.observer("team", version) is observe
    observe("team/app", ["v1"])
    clock.advance(61)
    hub.reap()  # the record expired
    assert hub.observer("team", version) is None
    hub.listed.open("team", sequence, clock.seconds())  # a record made anew under the same key
    again = hub.observer("team", version)
    assert again is not None and again is not observe
    again("team/app", ["v1"])
    record = hub.listed_at("team", sequence)
    assert record is not None and record.reads["team/app"] == (frozenset({"v1"}), frozenset({"v1"}))


def test_a_list_of_a_watched_scope_waits_for_its_source_and_reports_to_it() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    source = ready(hub, "team")
    rv: list[str] = []
    Deferred.fromCoroutine(hub.list_version("team")).addCallback(rv.append)
    assert rv and reader.scope_reads == 1 and not hub.listed.records
    sequence = hub.versions.parse(rv[0])
    assert sequence is not None
    assert hub.observer("team", rv[0]) is source.reporter(sequence) is hub.observer("team", rv[0])
    report(source, "team/app", ["v1"])  # what the source holds: nothing to send, nothing to reread
    assert not source.ring and reader.repository_reads == []


def report(source: ScopeSource, repository: str, tags: Sequence[str]) -> None:
    """What a list of the scope at the current sequence reports of one repository it read."""
    source.reporter(source.versions.current)(repository, tags)


def watched_list(reader: FakeReader) -> tuple[WatchHub, ScopeSource, int, FakeSink]:
    """A scope with a source and a watch from a list's resourceVersion, taken before the list reads."""
    hub = make_hub(reader, Clock(), resync_period=10)
    source = ready(hub, "team")
    rv: list[str] = []
    Deferred.fromCoroutine(hub.list_version("team")).addCallback(rv.append)
    sequence = hub.versions.parse(rv[0])
    assert sequence is not None
    w, sink = watcher()
    assert hub.start(w, source, since=sequence, timeout=None)
    return hub, source, sequence, sink


def texts(sink: FakeSink) -> list[str]:
    return [line.decode().rsplit(" ", 1)[0] for line in sink.lines]


def test_a_tag_a_list_of_a_watched_scope_showed_is_deleted_even_when_gone_before_any_reread() -> None:
    """Pushed after the source's last read, listed, deleted before the source read it: the watch
    from the list's resourceVersion is still told it is gone (kubectl wait --for=delete)."""
    reader = FakeReader({"team/app": {"v1"}})
    hub, source, sequence, sink = watched_list(reader)
    observe = hub.observer("team", hub.versions.format(sequence))
    assert observe is not None
    # The list read v1 and new; new is deleted before anything else reads the repository.
    reader.repositories["team/app"] = {"v1"}
    observe("team/app", ("v1", "new"))
    assert reader.repository_reads == ["team/app"]
    lines = [line.decode().rsplit(" ", 1) for line in sink.lines]
    assert [text for text, _ in lines] == ["DELETED team/app:new"]
    assert all(int(number) > sequence for _, number in lines)
    assert source.tags["team/app"] == {"v1"}


def test_a_tag_a_list_of_a_watched_scope_did_not_show_is_added_when_the_reread_finds_it() -> None:
    """The list read the repository without v2 (deleted after the source's last read, pushed again
    after the list's read): its client is sent v2 when the reread finds it; the snapshot, which
    holds v2 all along, is not touched, so no watcher is told v2 went."""
    reader = FakeReader({"team/app": {"v1", "v2"}})
    _, source, _, sink = watched_list(reader)
    report(source, "team/app", ("v1",))
    assert texts(sink) == ["ADDED team/app:v2"]
    assert source.tags["team/app"] == {"v1", "v2"}


def test_a_list_read_older_than_the_snapshot_tells_no_watcher_of_a_change_undone() -> None:
    """A list read before v2 was pushed reports after the source learnt of v2 (a notification); and a
    list read before v3 was deleted reports after the source saw it go. No watcher is told that v2
    went or that v3 came back: only repeats of what is true (an ADDED for v2, a DELETED for v3)."""
    reader = FakeReader({"team/app": {"v1", "v3"}})
    hub, source, _, sink = watched_list(reader)
    reader.repositories["team/app"] = {"v1", "v2"}
    hub.repository_changed("team/app")
    assert texts(sink) == ["DELETED team/app:v3", "ADDED team/app:v2"]
    report(source, "team/app", ("v1", "v3"))  # read before both changes
    assert texts(sink)[2:] == ["DELETED team/app:v3", "ADDED team/app:v2"]
    assert source.tags["team/app"] == {"v1", "v2"}


def test_tags_of_a_repository_the_scope_reads_do_not_see_are_confirmed_without_entering_the_snapshot() -> (
    None
):
    """A list by name read a repository the scope's reads do not list yet (the index has not learnt
    of it): nothing is sent while its tag is there, however many resyncs pass, and its DELETED once
    it is gone."""
    reader = FakeReader({"team/app": {"v1"}})
    _, source, _, sink = watched_list(reader)
    reader.unindexed.add("team/new")
    reader.repositories["team/new"] = {"n1"}
    report(source, "team/new", ("n1",))
    for _ in range(2):
        Deferred.fromCoroutine(source.fresh())
    assert sink.lines == [] and "team/new" not in source.tags
    assert reader.repository_reads == ["team/new"] * 3  # the report's check, then one per resync
    del reader.repositories["team/new"]
    Deferred.fromCoroutine(source.fresh())
    assert texts(sink) == ["DELETED team/new:n1"]
    Deferred.fromCoroutine(source.fresh())
    assert texts(sink) == ["DELETED team/new:n1"] and reader.repository_reads.count("team/new") == 4


def test_reports_while_a_check_is_out_are_confirmed_by_one_more_read() -> None:
    """Ten lists report around one push while the check of the first is out: two reads in all, and
    one repeat of the push's ADDED at most."""
    reader = FakeReader({"team/app": {"v1", "v2"}})
    _, source, _, sink = watched_list(reader)
    held = reader.held = []
    for i in range(10):
        report(source, "team/app", ("v1", "v2") if i % 2 else ("v1",))
    assert len(held) == 1
    held[0].callback(["v1", "v2"])
    assert len(held) == 2
    held[1].callback(["v1", "v2"])
    assert len(held) == 2 and texts(sink) == ["ADDED team/app:v2"]


def test_a_read_out_before_a_list_reported_does_not_confirm_what_that_list_showed() -> None:
    """b is pushed while the check of an earlier list's report is out; a later list shows b. The check
    that went out before, which cannot have seen b, must not send b's DELETED: the next read decides
    (for a too: what a read may confirm is decided per repository)."""
    reader = FakeReader({"team/app": {"v1"}})
    _, source, _, sink = watched_list(reader)
    held = reader.held = []
    report(source, "team/app", ("v1", "a"))  # a: pushed and deleted again since the last reread
    report(source, "team/app", ("v1", "b"))  # b: pushed after the check below went out
    held[0].callback(["v1"])
    assert texts(sink) == [] and len(held) == 2  # the next read, out after both reports, decides
    held[1].callback(["v1", "b"])
    assert texts(sink) == ["DELETED team/app:a"]  # b is there: nothing to send for it yet


@pytest.mark.parametrize("reread_fails", [False, True])
def test_a_tag_the_list_did_not_show_pushed_again_before_the_snapshot_lost_it_is_added(
    reread_fails: bool,
) -> None:
    """v2 was deleted (the snapshot still holds it) and the list did not show it; the check read finds
    it gone and starts a reread; v2 is pushed again before any read applied to the snapshot saw it
    go. The snapshot never changes, so only the note can send the list's client its ADDED: it stays
    until a read applied to the snapshot (the reread, or after it failed, the resync's check)."""
    reader = FakeReader({"team/app": {"v1", "v2"}})
    _, source, _, sink = watched_list(reader)
    reader.repositories["team/app"] = {"v1"}
    held = reader.held = []
    report(source, "team/app", ("v1",))
    held[0].callback(["v1"])  # the check: v2 gone, so a reread of the snapshot's repository
    assert len(held) == 2
    reader.repositories["team/app"] = {"v1", "v2"}  # pushed again
    if reread_fails:
        held[1].errback(ConnectionError("registry blip"))
        reader.held = None
        Deferred.fromCoroutine(source.fresh())
    else:
        held[1].callback(["v1", "v2"])
    assert texts(sink) == ["ADDED team/app:v2"] and source.tags["team/app"] == {"v1", "v2"}


def test_after_the_bound_lists_wait_for_a_resync_so_their_watches_are_served() -> None:
    """More tags than the bound changed since the last resync: the first list's report ends the
    scope's watches with 410; the relists wait for a resync that started after that, and compare
    their reads with a snapshot brought up to date: their watches are served, not 410 again."""
    reader = FakeReader({"team/app": {"v1"}})
    hub, source, _, sink = watched_list(reader)
    source.max_pending = 3
    reader.repositories["team/app"] = {"v1", "a", "b", "c", "d"}
    read = tuple(sorted(reader.repositories["team/app"]))
    report(source, "team/app", read)
    assert sink.closed and not source.catching_up  # the fake reader's resync ended at once
    for _ in range(3):
        rv: list[str] = []
        Deferred.fromCoroutine(hub.list_version("team")).addCallback(rv.append)
        observe = hub.observer("team", rv[0])
        assert observe is not None
        observe("team/app", read)
        assert hub.start(watcher()[0], source, since=hub.versions.parse(rv[0]), timeout=None)


def test_lists_after_the_bound_wait_for_the_resync_it_started() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    hub, source, _, _ = watched_list(reader)
    source.max_pending = 1
    scope_reads = reader.scope_held = []
    reader.held = []  # the report's check read stays out
    report(source, "team/app", ("v1", "a", "b"))
    assert source.catching_up and len(scope_reads) == 1
    rv: list[str] = []
    Deferred.fromCoroutine(hub.list_version("team")).addCallback(rv.append)
    assert rv == []
    scope_reads[0].callback(None)
    assert rv and not source.catching_up


def test_a_late_report_of_a_list_from_before_a_reset_is_dropped() -> None:
    """L0 read team/app before many tags were pushed and reports it only later (behind a slower
    repository); meanwhile L1's report reset the scope and the relist's client watches. L0's
    resourceVersion is below the floor now (its watch is 410): its report must not reset the scope
    again and end the relist's watch."""
    reader = FakeReader({"team/app": {"v1"}})
    hub = make_hub(reader, Clock(), resync_period=10)
    source = ready(hub, "team")
    source.max_pending = 3

    def listed() -> str:
        rv: list[str] = []
        Deferred.fromCoroutine(hub.list_version("team")).addCallback(rv.append)
        assert rv
        return rv[0]

    rv0 = listed()
    observe0 = hub.observer("team", rv0)
    assert observe0 is not None
    reader.repositories["team/app"] = {"v1", "a", "b", "c", "d"}
    grown = ("a", "b", "c", "d", "v1")
    first = hub.observer("team", listed())
    assert first is not None
    first("team/app", grown)  # over the bound: a reset, and a resync brings the snapshot up to date
    rv2 = listed()  # the relist
    observe2 = hub.observer("team", rv2)
    assert observe2 is not None
    observe2("team/app", grown)
    w, sink = watcher()
    assert hub.start(w, source, since=hub.versions.parse(rv2), timeout=None)
    floor = source.floor
    observe0("team/app", ("v1",))  # L0's late report
    assert not sink.closed and source.floor == floor and hub.observer("team", rv0) is None


def test_too_many_tags_to_confirm_end_the_scopes_watches_with_410() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    hub, source, sequence, sink = watched_list(reader)
    source.max_pending = 3
    held = reader.held = []
    report(source, "team/app", ("v1", "a", "b"))
    assert not sink.closed
    report(source, "team/app", ("v1", "c", "d"))
    assert sink.closed and b"410" in sink.lines[-1] and not hub.watchers
    assert source.since(sequence) is None  # a watch from before is 410 Gone too
    held[0].callback(["v1"])  # the check out meanwhile confirms nothing it gave up
    assert b"DELETED" not in b"".join(sink.lines)


def test_a_watch_from_an_unwatched_list_starts_with_the_changes_since_its_reads() -> None:
    reader = FakeReader({"team/app": {"v1", "v2"}, "team/gone": {"g"}, "other/x": {"o"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    sequence, observe = listing(hub, "team")
    for repository in ("team/app", "team/gone"):
        observe(repository, sorted(reader.repositories[repository]))
    reader.repositories["team/app"] = {"v2", "v3"}
    del reader.repositories["team/gone"]
    reader.repositories["team/new"] = {"n"}
    source = ready(hub, "team")  # the watch starts the source: its baseline is read after the list
    assert sequence < source.floor
    assert not hub.start(watcher()[0], source, since=sequence, timeout=None)  # no record: 410
    w, sink = watcher()
    reader.repository_reads.clear()
    assert from_list(hub, w, source, sequence)
    rv = source.floor
    # Each with a resourceVersion of its own. team/gone, which the baseline lacks altogether (as it
    # would a repository the index does not know), is DELETED once a read of it, made before the
    # watch starts, says it is gone.
    assert sink.lines == [
        f"DELETED team/app:v1 {rv + 1}".encode(),
        f"ADDED team/app:v3 {rv + 2}".encode(),
        f"DELETED team/gone:g {rv + 3}".encode(),
        f"ADDED team/new:n {rv + 4}".encode(),
    ]
    assert reader.repository_reads == ["team/gone"]
    reader.repositories["team/app"].add("v4")
    clock.advance(10)
    assert sink.lines[4:] == [f"ADDED team/app:v4 {rv + 5}".encode()]


def test_a_repository_one_list_of_a_shared_record_never_read_is_added_for_its_watch() -> None:
    """Two lists of an unwatched scope at one resourceVersion share a record. The first walk passed
    the place of team/new before it was pushed and never read it; the second read it. A watch from
    the first list must still be sent its tag (the second's client gets a repeat)."""
    reader = FakeReader({"team/app": {"v1"}, "team/new": {"n"}})
    hub = make_hub(reader, Clock(), resync_period=10)
    sequence, observe = listing(hub, "team")
    observe("team/app", ["v1"])
    again, observe_again = listing(hub, "team")
    assert again == sequence
    observe_again("team/app", ["v1"])
    observe_again("team/new", ["n"])
    source = ready(hub, "team")
    w, sink = watcher()
    assert from_list(hub, w, source, sequence)
    assert sink.lines == [f"ADDED team/new:n {hub.versions.current}".encode()]


@pytest.mark.parametrize("scope", ["team", None])
@pytest.mark.parametrize("change", ["delete", "push"])
def test_a_change_told_between_two_lists_gives_the_later_one_a_record_of_its_own(
    scope: str | None, change: str
) -> None:
    """Review newcomer F2: a list, a delete (through payloadtags, or a registry notification), a later
    list of the scope still nobody watches. Both took one resourceVersion and shared one record, which
    says a read saw the tag: the later list's watch was sent its DELETED, though that list never
    showed it (with a push, an ADDED of a tag its list showed). The change moves the sequence on: the
    earlier list's watch still gets the change, the later one's nothing. A namespace's list and one
    of all namespaces alike."""
    reader = FakeReader({"team/app": {"v1", "v2"}})
    hub = make_hub(reader, Clock(), resync_period=10)
    first, observe = listing(hub, scope)
    observe("team/app", ["v1", "v2"])
    if change == "delete":
        reader.repositories["team/app"] = {"v2"}
    else:
        reader.repositories["team/app"].add("v3")
    hub.repository_changed("team/app")
    later, observe_later = listing(hub, scope)
    assert later == first + 1  # before: first, one record for both
    observe_later("team/app", sorted(reader.repositories["team/app"]))
    source = ready(hub, scope)
    w, sink = watcher()
    assert from_list(hub, w, source, later)
    assert sink.lines == []
    w, sink = watcher()
    assert from_list(hub, w, source, first)
    kind, tag = ("DELETED", "v1") if change == "delete" else ("ADDED", "v3")
    assert sink.lines == [f"{kind} team/app:{tag} {hub.versions.current}".encode()]


def test_a_change_moves_the_sequence_once_for_each_list_made_meanwhile_not_per_change() -> None:
    """A deletecollection of 10,000 tags tells the hub of each: with nobody listing, nothing moves;
    after a list, the first change moves the sequence past its record and the others find none at
    the new one. A change outside the scope a list recorded moves nothing: lists of a namespace made
    before and after it still share one record (docs/watch.md, "Lists that arrive together")."""
    hub = make_hub(FakeReader({}), Clock(), resync_period=10)
    start = hub.versions.current
    for i in range(10_000):
        hub.repository_changed(f"team/app-{i}")
    assert hub.versions.current == start
    first, _ = listing(hub, "team")
    hub.repository_changed("other/app")
    assert listing(hub, "team")[0] == first  # shared
    for i in range(10_000):
        hub.repository_changed(f"team/app-{i}")
    assert hub.versions.current == first + 1
    for _ in range(5):
        listing(hub, None)
        for i in range(100):
            hub.repository_changed(f"other/app-{i}")
    assert hub.versions.current == first + 6


# -- seeded random lists, changes and watches (review r2moved N1) ------------------------------------

_REPOS = ("team/a", "team/b", "team/c", "other/d")
_TAGS = ("t0", "t1", "t2")
_SCOPES: tuple[str | None, ...] = ("team", "other", None)


def _in_scope(repository: str, scope: str | None) -> bool:
    return scope is None or repository.split("/", 1)[0] == scope


@attrs.define
class _RandomList:
    scope: str | None
    sequence: int
    rv: str
    joined: ListReporter | None
    taken_at: int  # the operation at which it took its resourceVersion
    unread: list[str]  # its repositories not read yet, in its walk's order
    held: dict[str, set[str]] = attrs.Factory(dict)  # what it showed, by repository

    def read_next(self, hub: WatchHub, reader: FakeReader) -> None:
        repository = self.unread.pop(0)
        tags = sorted(reader.repositories[repository])
        observe = hub.observer(self.scope, self.rv, joined=self.joined)
        if observe is not None:
            observe(repository, tags)
        self.held[repository] = set(tags)


def _random_run(seed: int, untold: float, sources: bool, operations: int) -> list[str]:
    """Lists of a namespace, another, all namespaces (each read a repository at a time, as a walk's
    pages do, interleaved with the rest), changes told to the hub (a delete through this replica, a
    notification) or, with probability ``untold``, not told, other moves of the sequence, and (with
    ``sources``) sources started part-way; then a watch from every list and a resync. What each watch
    got wrong: an event lost (its list's tags with its events applied are not the registry's now), a
    resourceVersion not after its list's or not rising, and an event for a tag whose last change was
    told before its list took its resourceVersion (kube-apiserver never sends a watch what happened
    before its list: newcomer F2)."""
    rng = random.Random(seed)
    reader = FakeReader({repository: set(rng.sample(_TAGS, rng.randint(0, 2))) for repository in _REPOS})
    hub = make_hub(reader, Clock(), resync_period=10_000)
    hub.run()
    lists: list[_RandomList] = []
    told_at: dict[tuple[str, str], int] = {}  # each tag's last told change
    never_told: set[tuple[str, str]] = set()
    for op in range(operations):
        r = rng.random()
        if r < 0.25:
            scope = rng.choice(_SCOPES)
            opened: list[tuple[str, ListReporter | None]] = []
            Deferred.fromCoroutine(hub.open_list(scope)).addCallback(opened.append)
            rv, joined = opened[0]
            sequence = hub.versions.parse(rv)
            assert sequence is not None
            unread = [repository for repository in _REPOS if _in_scope(repository, scope)]
            lists.append(_RandomList(scope, sequence, rv, joined, op, unread))
        elif r < 0.55:
            walking = [each for each in lists if each.unread]
            if walking:
                rng.choice(walking).read_next(hub, reader)
        elif r < 0.85:
            repository, tag = rng.choice(_REPOS), rng.choice(_TAGS)
            reader.repositories[repository] ^= {tag}  # pushed, or deleted
            if rng.random() < untold:
                never_told.add((repository, tag))
            else:
                told_at[(repository, tag)] = op
                hub.repository_changed(repository)
        elif r < 0.9:
            hub.versions.next()  # an access round, a dropped record
        elif sources and r < 0.95:
            ready(hub, rng.choice(_SCOPES))
    for each in lists:
        while each.unread:
            each.read_next(hub, reader)
    problems: list[str] = []
    started: list[tuple[str, _RandomList, Watcher, FakeSink]] = []
    for index, each in enumerate(lists):
        source = ready(hub, each.scope)
        w, sink = watcher()
        name = f"seed {seed}, list {index} ({each.scope}, at {each.sequence}, op {each.taken_at})"
        if from_list(hub, w, source, each.sequence):
            started.append((name, each, w, sink))
        else:
            problems.append(f"{name}: 410")
    # What was never told reaches the watches at a resync, as the guarantee says.
    for source in list(hub.sources.values()):
        source.resync()
    for name, each, w, sink in started:
        held = {(repository, tag) for repository, tags in each.held.items() for tag in tags}
        last = each.sequence
        for line in sink.lines:
            kind, key, sequence_text = line.decode().split()
            repository, tag = key.rsplit(":", 1)
            sequence = int(sequence_text)
            if sequence <= last:
                problems.append(f"{name}: {line!r} after {last}")
            last = sequence
            repeat = (kind == "ADDED") == ((repository, tag) in held)
            told = told_at.get((repository, tag))
            if repeat and (repository, tag) not in never_told and told is not None and told < each.taken_at:
                problems.append(f"{name}: {line!r}, changed and told at op {told}, before the list")
            (held.add if kind == "ADDED" else held.discard)((repository, tag))
        now = {
            (repository, tag)
            for repository, tags in reader.repositories.items()
            if _in_scope(repository, each.scope)
            for tag in tags
        }
        if held != now:
            problems.append(f"{name}: ends holding {sorted(held ^ now)} unlike the registry")
        w.end("done", write=False)
    hub.stop()
    if untold:
        # A change never told may come again to a watch of a later list: a documented repeat
        # ("Limits of this design"); only losses and order count there.
        problems = [problem for problem in problems if "told at op" not in problem]
    return problems


def _random_runs(seeds: range, operations: int) -> None:
    problems = [
        problem
        for seed in seeds
        for untold in (0.0, 0.3)
        for sources in (False, True)
        for problem in _random_run(seed, untold, sources, operations)
    ]
    assert not problems, "\n".join(problems[:30]) + f"\n({len(problems)} in all)"


def test_random_lists_changes_and_watches_lose_nothing_and_send_no_change_told_before_the_list() -> None:
    """Each seed in four configurations: every change told, or some never told; sources started
    part-way, or none before the watches. Without the move of `repository_changed` (review newcomer
    F2), or with one that looks at the namespace's scope only or at all namespaces' only, seeds of
    these fail."""
    _random_runs(range(84000, 84030), operations=60)


@pytest.mark.slow
def test_random_lists_changes_and_watches_lose_nothing_and_send_no_change_told_before_the_list_many() -> None:
    _random_runs(range(84000, 86000), operations=120)


def test_reads_that_disagree_send_whatever_any_of_them_may_have_shown_wrongly() -> None:
    reader = FakeReader({"team/app": {"b", "c"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    sequence, observe = listing(hub, "team")
    observe("team/app", ["a", "b"])  # page 1
    observe("team/app", ["b", "c"])  # the next page rereads the repository it resumes in
    again, observe_again = listing(hub, "team")  # another list at the same sequence shares the record
    assert again == sequence
    observe_again("team/app", ["b", "c"])
    source = ready(hub, "team")
    w, sink = watcher()
    assert from_list(hub, w, source, sequence)
    rv = hub.versions.current
    # "a" may have been shown and is gone; "c" may have been missed and is there; "b" was in every read.
    assert sink.lines == [f"DELETED team/app:a {rv - 1}".encode(), f"ADDED team/app:c {rv}".encode()]


def _sequence_of(line: bytes) -> int:
    return int(line.split()[-1])


def _applied(state: set[str], lines: Sequence[bytes]) -> set[str]:
    """A client's cache after the events ``lines`` (rendered by ``render``)."""
    state = set(state)
    for line in lines:
        kind, tag = line.decode().split()[:2]
        if kind == "ADDED":
            state.add(tag)
        elif kind == "DELETED":
            state.discard(tag)
    return state


def _cut_opening(cut: int | None) -> tuple[list[bytes], set[str], set[str]]:
    """A watch from a list of an unwatched scope whose first events are cut after ``cut`` of them
    (None: the whole stream), and resumed from the last resourceVersion its client saw, as a
    reflector does: the two streams' lines, the client's cache, and the registry's tags."""
    reader = FakeReader({"team/app": {"v1", "v2"}, "team/gone": {"g"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    sequence, observe = listing(hub, "team")
    for repository in ("team/app", "team/gone"):
        observe(repository, sorted(reader.repositories[repository]))
    listed_state = {f"{repository}:{tag}" for repository, tags in reader.repositories.items() for tag in tags}
    reader.repositories["team/app"] = {"v2"} | {f"n{i}" for i in range(4)}
    del reader.repositories["team/gone"]
    reader.repositories["team/new"] = {"x", "y"}
    source = ready(hub, "team")
    first, sink = watcher()
    assert from_list(hub, first, source, sequence)
    lines = sink.lines if cut is None else sink.lines[:cut]
    first.end("client gone")  # the timeout, the slow-client abort, a dropped connection
    state = _applied(listed_state, lines)
    resume = hub.versions.format(_sequence_of(lines[-1]) if lines else sequence)
    again, sink_again = watcher()
    resumed = hub.sequence_of(resume)
    assert resumed is not None
    assert from_list(hub, again, source, resumed)
    clock.advance(10)  # a resync: the snapshot is the registry, nothing more to send
    state = _applied(state, sink_again.lines)
    registry = {f"{repository}:{tag}" for repository, tags in reader.repositories.items() for tag in tags}
    return [*lines, *sink_again.lines], state, registry


def test_a_watch_from_an_unwatched_list_cut_anywhere_in_its_first_events_resumes_without_a_gap() -> None:
    """Its first events each carry a resourceVersion of their own, in order, and a resume from any
    of them is sent exactly what followed it (before, they all carried one resourceVersion: a
    stream cut among them resumed from it, and the rest never came)."""
    whole, state, registry = _cut_opening(None)
    opening = [line for line in whole if line.startswith((b"ADDED", b"DELETED"))]
    assert len(opening) == 8 and state == registry
    for cut in range(len(opening) + 1):
        lines, state, registry = _cut_opening(cut)
        sequences = [_sequence_of(line) for line in lines]
        assert sequences == sorted(set(sequences)), (cut, lines)
        assert state == registry, (cut, lines)
        # Nothing repeated, nothing lost (a resume from the list's own resourceVersion is a watch
        # from the list again: the same events, numbered anew).
        assert [line.split()[:2] for line in lines] == [line.split()[:2] for line in whole], (cut, lines)


def test_the_first_events_of_a_watch_from_a_list_reach_no_other_watch_nor_the_scope_s_history() -> None:
    reader = FakeReader({"team/app": {"v1", "v2"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    sequence, observe = listing(hub, "team")
    observe("team/app", ["v1", "v2"])
    reader.repositories["team/app"] = {"v2", "v3"}
    source = ready(hub, "team")
    other, other_sink = watcher()
    assert hub.start(other, source, since=None, timeout=None)  # holds the snapshot: v2, v3
    held = list(other_sink.lines)
    w, sink = watcher()
    assert from_list(hub, w, source, sequence)
    assert [line.split()[:2] for line in sink.lines] == [
        [b"DELETED", b"team/app:v1"],
        [b"ADDED", b"team/app:v3"],
    ]
    assert other_sink.lines == held and not source.ring
    # Both go on with the scope's changes, numbered after the opening.
    reader.repositories["team/app"].add("v4")
    clock.advance(10)
    assert (
        other_sink.lines[-1]
        == sink.lines[-1]
        == f"ADDED team/app:v4 {_sequence_of(sink.lines[1]) + 1}".encode()
    )


def test_a_watch_resumed_inside_its_first_events_gets_their_rest_then_the_scope_s_later_events() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    sequence, observe = listing(hub, "team")
    observe("team/app", ["v1"])
    reader.repositories["team/app"] = {"a", "b", "c"}
    source = ready(hub, "team")
    w, sink = watcher()
    assert from_list(hub, w, source, sequence)
    assert [line.split()[1] for line in sink.lines] == [
        b"team/app:v1",
        b"team/app:a",
        b"team/app:b",
        b"team/app:c",
    ]
    w.end("client gone")  # its client had read two of them
    reader.repositories["team/app"] = {"a", "c", "d"}
    clock.advance(10)  # changes while it was away: events of the scope's history
    again, sink_again = watcher()
    assert hub.start(again, source, since=_sequence_of(sink.lines[1]), timeout=None)
    assert [line.split()[:2] for line in sink_again.lines] == [
        [b"ADDED", b"team/app:b"],
        [b"ADDED", b"team/app:c"],
        [b"DELETED", b"team/app:b"],
        [b"ADDED", b"team/app:d"],
    ]
    sequences = [_sequence_of(line) for line in [*sink.lines[:2], *sink_again.lines]]
    assert sequences == sorted(set(sequences))
    # The opening holds what its watch may be sent, nothing more: another user resuming from inside
    # it is answered 410 (his client relists), not sent what she may see as if it were all.
    assert not hub.start(watcher(user="bob")[0], source, since=_sequence_of(sink.lines[1]), timeout=None)


def test_one_user_s_watches_from_a_list_by_name_neither_flush_the_scope_s_history_nor_reach_others() -> None:
    """A list by name records one repository; each watch of the whole namespace from its
    resourceVersion opens with an ADDED for every other tag. Those were put in the scope's history
    and sent to its every watcher: anyone could flush the history (others' resumes got 410) or
    have slow watchers cut, at will."""
    reader = FakeReader({"team/app": {f"t{i:03}" for i in range(60)}, "team/one": {"x"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10, history=50)
    sequence, observe = listing(hub, "team")
    observe("team/one", ["x"])  # kubectl get prt one.x
    source = ready(hub, "team")
    victim, victim_sink = watcher(user="bob")
    assert hub.start(victim, source, since=None, timeout=None)
    reader.repositories["team/app"].add("new")
    clock.advance(10)
    last = _sequence_of(victim_sink.lines[-1])
    victim.end("timeout")
    slow, slow_sink = watcher(user="carol", max_buffered=10)
    assert hub.start(slow, source, since=last, timeout=None)
    slow.pauseProducing()  # its client reads slowly
    for _ in range(4):
        w, sink = watcher(user="mallory")
        assert from_list(hub, w, source, sequence)
        assert len(sink.lines) == 61
        w.end("client gone")
    assert not slow.closed and not slow.buffer and slow_sink.lines == []
    again, _ = watcher(user="bob")
    assert hub.start(again, source, since=last, timeout=None), "the victim's resume is 410 Gone"


@attrs.define
class SnapReader(FakeReader):
    """A scope read that reads the registry when it starts, and answers when the test says."""

    hold_scope: list[Deferred[None]] = attrs.field(factory=list)
    holding: bool = False

    async def scope_tags(self, namespace: str | None) -> dict[str, list[str]]:
        self.scope_reads += 1
        refs: list[TagRef] = []
        for repository, tags in sorted(self.repositories.items()):
            parts = split_repository(repository)
            assert parts is not None
            if namespace is None or parts[0] == namespace:
                refs.extend(TagRef(parts[0], parts[1], tag) for tag in sorted(tags))
        if self.holding:
            self.hold_scope.append(Deferred())
            await self.hold_scope[-1]
        return by_repository(refs)


def test_a_watch_s_first_events_never_tell_another_watch_a_tag_it_holds_is_deleted() -> None:
    """W2's fresh read (for its watch from an unwatched list) misses t, deleted and pushed again
    while it ran; Carol, who listed the watched scope meanwhile and holds t, got W2's DELETED of t
    as a "repeat": her informer dropped a live tag, and kubectl wait --for=delete ended wrongly."""
    reader = SnapReader({"team/app": {"v0", "t"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=30)
    sequence, observe = listing(hub, "team")
    observe("team/app", ["t", "v0"])  # W2's list of the unwatched namespace
    source = ready(hub, "team")
    w1, _ = watcher(user="bob")
    assert hub.start(w1, source, since=None, timeout=None)
    reader.repositories["team/app"].discard("t")
    hub.repository_changed("team/app")
    assert source.tags["team/app"] == frozenset({"v0"})
    # W2's watch arrives: the scope is watched, so it waits for a fresh read, which reads team/app
    # (t absent) and is still out.
    reader.holding = True
    fresh: list[object] = []
    Deferred.fromCoroutine(source.fresh()).addBoth(fresh.append)
    reader.holding = False
    assert not fresh
    # t is pushed again (its notification lost); Carol lists the watched namespace (t is there) and
    # watches from her list's resourceVersion.
    reader.repositories["team/app"].add("t")
    rv: list[str] = []
    Deferred.fromCoroutine(hub.list_version("team")).addCallback(rv.append)
    carol_sequence = hub.versions.parse(rv[0])
    carol_report = hub.observer("team", rv[0])
    assert carol_sequence is not None and carol_report is not None
    carol_report("team/app", ["t", "v0"])
    carol, carol_sink = watcher(user="carol")
    assert hub.start(carol, source, since=carol_sequence, timeout=None)
    reader.hold_scope[0].callback(None)
    assert fresh == [None]
    w2, w2_sink = watcher(user="dave")
    assert from_list(hub, w2, source, sequence)
    assert w2_sink.lines[0].startswith(b"DELETED team/app:t")  # W2's own client: true as of its read
    for _ in range(3):
        clock.advance(10)
    assert not any(line.startswith(b"DELETED team/app:t") for line in carol_sink.lines), carol_sink.lines


def test_a_repository_deleted_after_a_list_ends_no_other_watch_of_the_scope() -> None:
    """A list of the unwatched namespace read team/ci (10,001 tags), deleted before the watch from
    that list arrived. Its tags were noted for a confirming read past the scope's bound: every
    watch of the namespace ended with 410. Now a read of team/ci before the watch starts shows it
    gone: that watch alone is sent their DELETED."""
    big = {f"b{i:05}" for i in range(10_001)}
    reader = FakeReader({"team/app": {"v1"}, "team/ci": set(big)})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    sequence, observe = listing(hub, "team")
    observe("team/app", ["v1"])
    observe("team/ci", sorted(big))
    del reader.repositories["team/ci"]
    source = ready(hub, "team")
    bob, bob_sink = watcher(user="bob")
    assert hub.start(bob, source, since=None, timeout=None)
    w, sink = watcher(user="alice")
    assert from_list(hub, w, source, sequence)
    assert not bob.closed and bob_sink.lines == [f"ADDED team/app:v1 {source.floor}".encode()]
    assert len(sink.lines) == 10_001 and all(line.startswith(b"DELETED team/ci:") for line in sink.lines)
    assert not w.closed


def test_too_many_repositories_to_read_for_a_watch_s_first_events_is_410_for_that_watch_alone() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    sequence, observe = listing(hub, "team")
    observe("team/app", ["v1"])
    gone = [f"team/r{i:03}" for i in range(MAX_UNCONFIRMED_READS + 1)]
    for repository in gone:
        observe(repository, ["t"])
    source = ready(hub, "team")
    bob, _ = watcher(user="bob")
    assert hub.start(bob, source, since=None, timeout=None)
    reader.repository_reads.clear()
    assert not from_list(hub, watcher()[0], source, sequence)
    assert reader.repository_reads == [] and not bob.closed
    observe_fewer = hub.listed_at("team", sequence)
    assert observe_fewer is not None
    del observe_fewer.reads[gone[0]]
    w, sink = watcher()
    assert from_list(hub, w, source, sequence)  # as many as the bound: read
    assert sorted(reader.repository_reads) == gone[1:]
    assert [line.split()[0] for line in sink.lines] == [b"DELETED"] * MAX_UNCONFIRMED_READS


def test_the_reads_before_a_watch_s_first_events_run_a_few_at_a_time() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    hub = make_hub(reader, Clock(), resync_period=10)
    sequence, observe = listing(hub, "team")
    for i in range(20):
        observe(f"team/r{i:02}", ["t"])  # deleted since, or unknown to the index
    source = ready(hub, "team")
    listed = hub.listed_at("team", sequence)
    assert listed is not None
    reader.held = []
    confirmed: list[frozenset[str] | None] = []
    Deferred.fromCoroutine(hub.confirm_listed(source, listed)).addCallback(confirmed.append)
    fired = 0
    while fired < 20:
        assert len(reader.held) - fired == min(8, 20 - fired) and not confirmed
        reader.held[fired].callback(["t"] if fired == 0 else [])
        fired += 1
    assert confirmed and confirmed[0] is not None and "team/r05" in confirmed[0]
    assert source.tags["team/r00"] == frozenset({"t"})  # there: in the snapshot, as a notification's read


def test_a_watch_resumed_inside_first_events_no_longer_kept_gets_gone() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10, idle_scope_ttl=60)
    hub.openings = Openings(max_user_events=4)
    sequence, observe = listing(hub, "team")
    observe("team/app", ["v1"])
    reader.repositories["team/app"] = {"a", "b", "c"}
    source = ready(hub, "team")
    floor = source.floor
    first, first_sink = watcher()
    assert from_list(hub, first, source, sequence)  # 4 events: kept
    second, second_sink = watcher()
    assert from_list(hub, second, source, sequence)  # 4 more: her first opening's events go
    inside_first, inside_second = _sequence_of(first_sink.lines[1]), _sequence_of(second_sink.lines[1])
    assert not hub.start(watcher()[0], source, since=inside_first, timeout=None)
    # From its last event: the history after it, as from any sequence.
    assert hub.start(watcher()[0], source, since=_sequence_of(first_sink.lines[-1]), timeout=None)
    resumed, resumed_sink = watcher()
    assert hub.start(resumed, source, since=inside_second, timeout=None)
    assert len(resumed_sink.lines) == 2
    # Past her bound on spans her oldest two are merged: a resume from anywhere inside them is 410,
    # the end of the first included; the scope's history is not cut short.
    hub.openings.max_user_spans = 2
    third, third_sink = watcher()
    assert from_list(hub, third, source, sequence)
    assert not hub.start(watcher()[0], source, since=inside_second, timeout=None)
    assert not hub.start(watcher()[0], source, since=_sequence_of(first_sink.lines[-1]), timeout=None)
    assert hub.start(watcher()[0], source, since=_sequence_of(second_sink.lines[-1]), timeout=None)
    assert hub.start(watcher()[0], source, since=_sequence_of(third_sink.lines[1]), timeout=None)
    assert source.floor == floor
    clock.advance(61)
    hub.reap()  # kept too long
    assert not hub.start(watcher()[0], source, since=_sequence_of(third_sink.lines[1]), timeout=None)


def test_one_user_s_many_openings_never_cost_another_user_his_resumes_from_before_them() -> None:
    """Each watch from a list by name of a scope nobody watched has an opening of its own. Past
    10,000 of them the oldest span was forgotten and the scope's history cut short there: one user's
    watches (one cheap list, then watch after watch from it) had every other watch's resume 410."""
    reader = FakeReader({"team/app": {"v1"}, "team/one": {"x", "y", "z"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=30)
    sequence, observe = listing(hub, "team")
    observe("team/one", ["x"])  # mallory: kubectl get prt one.x -n team
    observe("team/app", ["v1"])  # bob's list of the namespace at the same resourceVersion
    source = ready(hub, "team")
    floor = source.floor
    bob, bob_sink = watcher(user="bob")
    assert from_list(hub, bob, source, sequence)  # his opening: ADDED team/one:y, team/one:z
    assert [line.split()[1] for line in bob_sink.lines] == [b"team/one:y", b"team/one:z"]
    bob.end("timeout")
    reader.repositories["team/app"].add("v2")
    clock.advance(30)
    later, later_sink = watcher(user="bob")
    assert hub.start(later, source, since=_sequence_of(bob_sink.lines[-1]), timeout=None)
    last = _sequence_of(later_sink.lines[-1])  # ADDED team/app:v2, of the scope's history
    later.end("timeout")
    for i in range(10_001):
        m, m_sink = watcher(user="mallory", readable={"team/one"})
        assert from_list(hub, m, source, sequence)
        assert [line.split()[1] for line in m_sink.lines] == [b"team/one:y", b"team/one:z"]
        m.end("client gone")
        if i == 0:  # his second opening falls inside the interval her oldest spans are merged into
            inner, inner_sink = watcher(user="bob")
            assert from_list(hub, inner, source, sequence)
            inner.end("timeout")
    assert source.floor == floor
    assert hub.openings.spans_of.keys() == {"bob", "mallory"}
    assert len(hub.openings.spans_of["mallory"]) == hub.openings.max_user_spans
    again, again_sink = watcher(user="bob")
    assert hub.start(again, source, since=last, timeout=None)
    assert again_sink.lines == []
    # His opening is his own: past her bounds, it is still kept, and his resumes from the history too.
    inside, inside_sink = watcher(user="bob")
    assert hub.start(inside, source, since=_sequence_of(bob_sink.lines[0]), timeout=None)
    assert inside_sink.lines == [bob_sink.lines[1], *later_sink.lines]
    assert hub.start(watcher(user="bob")[0], source, since=floor, timeout=None)
    assert hub.start(watcher(user="bob")[0], source, since=_sequence_of(inner_sink.lines[0]), timeout=None)
    assert hub.start(watcher(user="bob")[0], source, since=_sequence_of(inner_sink.lines[1]), timeout=None)
    assert not hub.start(
        watcher(user="bob")[0], source, since=_sequence_of(inner_sink.lines[0]) - 1, timeout=None
    )
    assert hub.start(watcher(user="bob")[0], source, since=_sequence_of(bob_sink.lines[-1]), timeout=None)


def test_a_watch_s_opening_holds_only_what_it_may_be_sent() -> None:
    """Openings were kept whole, whoever could see their events: a user who may read one repository
    made openings of a namespace's every other tag, and pushed other users' openings out (their
    resumes from inside them got 410)."""
    reader = FakeReader(
        {
            "team/app": {f"t{i:05}" for i in range(50_000)},
            "team/one": {"x"},
            "team/alice": {"a1", "a2", "a3"},
        }
    )
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=30)
    sequence, observe = listing(hub, "team")
    observe("team/alice", [])
    observe("team/one", ["x"])
    source = ready(hub, "team")
    alice, alice_sink = watcher(user="alice", readable={"team/alice"})
    assert from_list(hub, alice, source, sequence)
    assert len(alice_sink.lines) == 3
    alice.end("client gone")  # her client had read the first
    for _ in range(3):
        before = hub.versions.current
        m, m_sink = watcher(user="mallory", readable={"team/one"})
        assert from_list(hub, m, source, sequence)
        assert m_sink.lines == [] and hub.versions.current == before  # nothing, not even numbers
        m.end("client gone")
    assert hub.openings.size == 3
    again, again_sink = watcher(user="alice", readable={"team/alice"})
    assert hub.start(again, source, since=_sequence_of(alice_sink.lines[0]), timeout=None)
    assert again_sink.lines == alice_sink.lines[1:]


def test_a_watch_resumed_inside_an_opening_with_other_selectors_gets_gone() -> None:
    """An opening holds what its watch's selectors chose: a watch of the same user resumed inside it
    with other selectors (none) was sent its rest, then the scope's later events, and never the
    changes the first watch's selector left out (`v4`, which has no resourceVersion anywhere else)."""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock)
    sequence, observe = listing(hub, "team")
    observe("team/app", ["v1"])
    reader.repositories["team/app"] |= {"v2", "v3", "v4"}
    source = ready(hub, "team")
    first, first_sink = watcher()
    first.accept = lambda ref: ref.tag != "v4"
    first.selectors = "metadata.name!=app-v4"
    assert from_list(hub, first, source, sequence)
    assert [line.split()[1] for line in first_sink.lines] == [b"team/app:v2", b"team/app:v3"]
    first.end("client gone", write=False)
    cut = _sequence_of(first_sink.lines[0])
    plain, _ = watcher()
    assert not hub.start(plain, source, since=cut, timeout=None)
    same, same_sink = watcher()
    same.accept, same.selectors = first.accept, "metadata.name!=app-v4"
    assert hub.start(same, source, since=cut, timeout=None)
    assert same_sink.lines == first_sink.lines[1:]
    hub.stop()


@pytest.mark.parametrize(
    ("identity", "served"),
    [
        (UserInfo("alice", groups=("g3", "g1")), True),  # the same groups in another order
        (UserInfo("alice", groups=("g1", "g3", "g2")), False),  # a token refreshed with a new group
        (UserInfo("alice", uid="u2", groups=("g2",)), False),  # another alice, whom nothing is noted for
    ],
)
def test_a_watch_resumed_inside_an_opening_by_another_identity_of_the_same_name_gets_gone(
    identity: UserInfo, served: bool
) -> None:
    """An opening holds what the identity of its watch (her name, uid and groups) may read: resumed
    inside it by the same name with other groups or another uid, the watch was sent its rest and never
    the tags the new identity may read (`secret`'s, which have no resourceVersion anywhere else). The
    rules ledger tells a change of groups of a user it noted, not of another uid."""
    reader = FakeReader({"team/app": {"v1", "v2"}, "team/secret": {"s1", "s2"}})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    grant(index, "alice", "team", ["app"], "alice")
    rule = {"apiGroups": [GROUP], "resources": ["payloadrepositoryaccesses"], "verbs": ["get"]}
    meta = {"namespace": "team", "name": "g2"}
    index.upsert("Role", {"kind": "Role", "metadata": meta, "rules": [{**rule, "resourceNames": ["secret"]}]})
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "g2"}
    subjects = [{"kind": "Group", "name": "g2"}]
    index.upsert(
        "RoleBinding", {"kind": "RoleBinding", "metadata": meta, "roleRef": ref, "subjects": subjects}
    )
    sequence, _ = listing(hub, "team")  # a list of the unwatched scope that read nothing yet
    source = ready(hub, "team")
    sink = FakeSink()
    first = Watcher(
        "alice", sink, render, lambda ref: True, Readable(authorizer, UserInfo("alice", groups=("g1", "g3")))
    )
    assert from_list(hub, first, source, sequence)
    assert [line.split()[1] for line in sink.lines] == [b"team/app:v1", b"team/app:v2"]
    first.end("client gone", write=False)
    again_sink = FakeSink()
    again = Watcher("alice", again_sink, render, lambda ref: True, Readable(authorizer, identity))
    assert hub.start(again, source, since=_sequence_of(sink.lines[0]), timeout=None) is served
    if served:
        assert again_sink.lines == sink.lines[1:]
    hub.stop()


def test_a_watch_resumed_inside_an_opening_with_the_same_selectors_in_another_order_is_served() -> None:
    """Selectors are a conjunction: the same terms in another order choose the same tags, and a resume
    inside an opening with them is served, not 410."""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock)
    sequence, observe = listing(hub, "team")
    observe("team/app", ["v1"])
    reader.repositories["team/app"] |= {"v2", "v3", "v4", "v5"}
    source = ready(hub, "team")

    def make(fields: str, labels: str) -> tuple[Watcher, FakeSink]:
        w, sink = watcher()
        chosen, labelled = parse_field_selector(fields), parse_label_selector(labels)
        w.accept = lambda ref: chosen.matches({"metadata.name": f"{ref.repository_path}-{ref.tag}"})
        w.selectors = (labelled, chosen)
        return w, sink

    first, first_sink = make("metadata.name!=app-v4,metadata.name!=app-v5", "a!=x,b!=y")
    assert from_list(hub, first, source, sequence)
    assert [line.split()[1] for line in first_sink.lines] == [b"team/app:v2", b"team/app:v3"]
    first.end("client gone", write=False)
    again, again_sink = make("metadata.name!=app-v5,metadata.name!=app-v4", "b!=y,a!=x")
    assert hub.start(again, source, since=_sequence_of(first_sink.lines[0]), timeout=None)
    assert again_sink.lines == first_sink.lines[1:]
    other, _ = make("metadata.name!=app-v5", "b!=y,a!=x")
    assert not hub.start(other, source, since=_sequence_of(first_sink.lines[0]), timeout=None)
    hub.stop()


def test_an_opening_larger_than_its_user_may_keep_is_not_kept_and_drops_no_other() -> None:
    reader = FakeReader({"team/app": {"v1", "v2"}, "team/big": {f"t{i:06}" for i in range(100_001)}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=30)
    sequence, observe = listing(hub, "team")
    observe("team/app", [])
    observe("team/big", [])
    source = ready(hub, "team")
    bob, bob_sink = watcher(user="bob", readable={"team/app"})
    assert from_list(hub, bob, source, sequence)
    alice, alice_sink = watcher(user="alice")
    assert from_list(hub, alice, source, sequence)
    assert len(alice_sink.lines) == 100_003
    again, again_sink = watcher(user="bob", readable={"team/app"})
    assert hub.start(again, source, since=_sequence_of(bob_sink.lines[0]), timeout=None)
    assert again_sink.lines == bob_sink.lines[1:]
    # Hers is not kept: a resume from inside it is 410; from its end, the history after it.
    assert not hub.start(watcher()[0], source, since=_sequence_of(alice_sink.lines[1]), timeout=None)
    assert hub.start(watcher()[0], source, since=_sequence_of(alice_sink.lines[-1]), timeout=None)


def test_past_the_bound_on_spans_in_all_the_oldest_two_are_merged() -> None:
    reader = FakeReader({"team/app": {"v1"}, "team/one": {"x", "y"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=30)
    hub.openings = Openings(max_spans=3)
    sequence, observe = listing(hub, "team")
    observe("team/one", ["x"])
    source = ready(hub, "team")
    sinks: list[list[bytes]] = []
    for user in ("ann", "bob", "cat", "dan"):
        w, sink = watcher(user=user)
        assert from_list(hub, w, source, sequence)
        assert len(sink.lines) == 2  # ADDED team/app:v1 and team/one:y
        sinks.append(sink.lines)
        w.end("timeout")
    # ann's and bob's spans are now one: a resume from inside it is 410, from anywhere else it is not.
    assert [type(span).__name__ for span in hub.openings.spans_of[None]] == ["Merged"]
    assert not hub.start(watcher(user="bob")[0], source, since=_sequence_of(sinks[1][0]), timeout=None)
    assert not hub.start(watcher(user="ann")[0], source, since=_sequence_of(sinks[0][-1]), timeout=None)
    assert hub.start(watcher(user="bob")[0], source, since=_sequence_of(sinks[1][-1]), timeout=None)
    assert hub.start(watcher(user="cat")[0], source, since=_sequence_of(sinks[2][0]), timeout=None)
    assert hub.start(watcher(user="dan")[0], source, since=_sequence_of(sinks[3][0]), timeout=None)
    assert hub.start(watcher(user="eve")[0], source, since=source.floor, timeout=None)


def test_a_read_older_than_one_applied_leaves_a_repository_read_alone_as_it_is() -> None:
    """A watch's opening reads a repository the index lacks (m1); a notification reads it again (m2),
    which answers first. m1's late empty answer is stale: it left the snapshot alone but not the note
    that the repository was read alone, so a resync whose read went through the index sent every
    watcher DELETED for a tag the registry has."""
    reader = FakeReader({"team/app": {"v1"}, "team/x": {"t"}})
    reader.unindexed.add("team/x")
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=30)
    sequence, observe = listing(hub, "team")
    observe("team/x", ("t",))
    source = ready(hub, "team")
    bob, bob_sink = watcher(user="bob")
    assert hub.start(bob, source, since=None, timeout=None)
    listed = hub.listed_at("team", sequence)
    assert listed is not None
    holds: list[Deferred[list[str]]] = []
    reader.held = holds
    Deferred.fromCoroutine(hub.confirm_listed(source, listed))
    assert reader.repository_reads[-1] == "team/x" and len(holds) == 1  # m1
    hub.repository_changed("team/x")  # deleted, pushed again: m2
    assert len(holds) == 2
    scope_holds: list[Deferred[None]] = []
    reader.scope_held = scope_holds
    clock.advance(30)  # a resync begins; its read goes through the index, which lacks team/x
    assert len(scope_holds) == 1
    reader.repositories["team/x"] = {"t2"}
    holds[1].callback(["t2"])
    holds[0].callback([])  # stale
    assert source.tags["team/x"] == frozenset({"t2"})
    scope_holds[0].callback(None)
    assert not any(line.startswith(b"DELETED team/x:") for line in bob_sink.lines), bob_sink.lines
    assert source.tags["team/x"] == frozenset({"t2"})


def test_a_tag_a_list_by_name_showed_of_a_repository_the_index_lacks_is_not_deleted_unread() -> None:
    """kubectl wait --for=delete: a list by name of an unwatched scope reads the tag's repository
    directly, and the watch's baseline goes through the index, which lacks it (its push notification
    was lost). The tag is there: no DELETED. Deleted later, it is, once a read says it is gone."""
    reader = FakeReader({"team/app": {"v1"}, "team/new": {"t"}})
    reader.unindexed.add("team/new")
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    sequence, observe = listing(hub, "team")
    observe("team/new", ("t",))  # Inventory.exists reports its direct read
    source = ready(hub, "team")
    w, sink = watcher()
    reader.repository_reads.clear()
    assert from_list(hub, w, source, sequence)
    assert not any(line.startswith(b"DELETED") for line in sink.lines), sink.lines
    assert reader.repository_reads == ["team/new"]  # read before the watch started
    assert source.tags["team/new"] == frozenset({"t"})  # now in the snapshot, as a notification's read
    # A read of the scope that lacks it (begun before the index learnt of it) is not taken for its
    # deletion: a read of the repository tells.
    reader.repository_reads.clear()
    clock.advance(10)
    assert reader.repository_reads == ["team/new"]
    assert not any(line.startswith(b"DELETED") for line in sink.lines), sink.lines
    del reader.repositories["team/new"]
    clock.advance(10)
    assert sink.lines[-1] == f"DELETED team/new:t {hub.versions.current}".encode()


def test_records_past_their_bound_are_dropped_and_their_watches_get_gone() -> None:
    reader = FakeReader({"a/x": {"1", "2"}, "b/y": {"1", "2"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10)
    # Room for two records of one repository of two tags each, less one.
    hub.listed = ListedScopes(max_size=2 * (RECORD_COST + REPOSITORY_COST + 2) - 1)
    first, observe_a = listing(hub, "a")
    observe_a("a/x", ["1", "2"])
    clock.advance(1)
    second, observe_b = listing(hub, "b")
    assert second == first
    observe_b("b/y", ["1", "2"])  # over the bound: the oldest record goes
    assert hub.listed_at("a", first) is None and hub.listed_at("b", second) is not None
    assert hub.versions.current > first  # later lists never add to the dropped record's key
    assert listing(hub, "a")[0] > first
    source = ready(hub, "a")
    assert not hub.start(watcher()[0], source, since=first, timeout=None, listed=None)
    big, observe_big = listing(hub, "b")
    record = hub.listed_at("b", big)
    observe_big("b/y", [str(tag) for tag in range(20)])  # alone over the bound
    assert record is not None and record.dropped
    assert not hub.start(watcher()[0], ready(hub, "b"), since=big, timeout=None, listed=record)


def test_records_of_made_up_namespaces_and_repositories_count_against_the_bound() -> None:
    """Review r7watch F1: a record, and a repository a record read without tags, counted nothing
    against the bound (tags only). Lists of made-up namespaces kept a record each, lists by name of
    tags in made-up repositories an entry each in their namespace's record, as many as were made: not
    bounded by the 250,000 the bound's memory (docs/watch.md) was reckoned for. Now each costs what
    it holds: the oldest go as for tags, the sequence moves on, a watch from a dropped record's
    resourceVersion gets 410 and a list after the flood is served from its record."""
    reader = FakeReader({"team/app": {"v1"}, "prod/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10, idle_scope_ttl=120)
    hub.listed = ListedScopes(max_size=10 * RECORD_COST)
    flooded, _ = listing(hub, "made-up-0")
    for i in range(1, 1000):
        clock.advance(0.01)
        listing(hub, f"made-up-{i}")
        kept = sum(record.size for record in hub.listed.records.values())
        assert hub.listed.size == kept + USER_COST * len(hub.listed.holders)
        assert hub.listed.size <= hub.listed.max_size and len(hub.listed.records) <= 10
    assert hub.listed_at("made-up-0", flooded) is None
    assert listing(hub, "made-up-0")[0] > flooded  # its key is never given out again
    gone, _ = watcher()
    assert not hub.start(gone, ready(hub, "made-up-0"), since=flooded, timeout=None, listed=None)
    # Lists by name of tags in made-up repositories: one record of the namespace, an entry a list.
    clock.advance(1)
    sequence, _ = listing(hub, "team")
    for i in range(1000):
        clock.advance(0.01)
        by_name = hub.observer("team", hub.versions.format(sequence), direct=True)
        if by_name is None:  # the record went for the bound: the next list opens another
            sequence, _ = listing(hub, "team")
            continue
        by_name(f"team/made-up-{i}", ())
        kept = sum(record.size for record in hub.listed.records.values())
        assert hub.listed.size == kept + USER_COST * len(hub.listed.holders)
        assert hub.listed.size <= hub.listed.max_size
    assert sum(len(record.reads) for record in hub.listed.records.values()) < 10
    # A list made after the flood is served from its record, as before.
    clock.advance(1)
    bob_at, observe = listing(hub, "prod")
    observe("prod/app", ("v1",))
    reader.repositories["prod/app"] = {"v1", "v2"}
    w, sink = watcher()
    assert from_list(hub, w, ready(hub, "prod"), bob_at)
    assert [line.split()[:2] for line in sink.lines] == [[b"ADDED", b"prod/app:v2"]]


def test_the_records_bound_drops_the_least_recently_used_looking_at_no_other_record() -> None:
    """Review r8watch F1: at the records' bound, each drop (for a list of a made-up namespace, or a
    read that grows a record past the bound) sorted every record by when it was last used: 62,500
    records at the default bound, sorted again for each list, in the reactor thread. The records are
    kept in the order they were last used (a list joining one, a later page of its walk): a drop
    looks at the oldest only, and what was used since goes last."""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10, idle_scope_ttl=120)
    hub.listed = ListedScopes(max_size=1000 * RECORD_COST + USER_COST)  # one user's lists
    paged, _ = listing(hub, "paged")
    clock.advance(0.01)
    joined, _ = listing(hub, "joined")
    for i in range(998):
        clock.advance(0.01)
        listing(hub, f"made-up-{i}")
    assert len(hub.listed.records) == 1000 and hub.listed.size == hub.listed.max_size
    clock.advance(0.01)
    assert hub.observer("paged", hub.versions.format(paged)) is not None  # a later page of its walk
    clock.advance(0.01)
    rv: list[str] = []
    Deferred.fromCoroutine(hub.list_version("joined")).addCallback(rv.append)
    assert rv == [hub.versions.format(joined)]  # another list joins the record (its first page)
    hub.listed.records = records = LookedAt(hub.listed.records)
    holder = hub.listed.holders[""]  # one user's lists: her records are all of them
    holder.records = mine = LookedAt(holder.records)
    for i in range(998):
        clock.advance(0.01)
        listing(hub, f"later-{i}")
    looked_at = records.looked_at + mine.looked_at
    # A handful a list (her oldest record; her key, which names it, checked and pushed anew), never
    # the 1,000 records.
    assert looked_at <= 8 * 998, looked_at
    assert ("paged", paged) in records and ("joined", joined) in records  # the made-up ones went first
    assert not any(str(key[0]).startswith("made-up-") for key in records)
    # A read that grows a record past the bound drops the oldest as well.
    clock.advance(0.01)
    sequence, observe = listing(hub, "team")
    records.looked_at = mine.looked_at = 0
    observe("team/app", ("v1",))
    looked_at = records.looked_at + mine.looked_at
    assert looked_at <= 8 * 2, looked_at  # the two oldest (4 each) go, for a read that counts 5
    assert ("joined", joined) not in records and ("team", sequence) in records
    assert hub.listed.size <= hub.listed.max_size


def test_an_expired_record_s_resource_version_is_never_taken_again() -> None:
    """A list whose record expired, then a list of the same scope while nothing moved the sequence:
    a watch from the first list must get 410, not the second list's reads (a silent gap)."""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10, idle_scope_ttl=120)
    first, observe = listing(hub, "team")
    observe("team/app", ["v1"])
    clock.advance(121)
    hub.reap()
    assert hub.listed_at("team", first) is None
    reader.repositories["team/app"] = {"v2"}
    _, observe_again = listing(hub, "team")
    observe_again("team/app", ["v2"])
    source = ready(hub, "team")
    # As the HTTP handler does: a resourceVersion below the floor is served from its list's record.
    assert first < source.floor
    assert not hub.start(watcher()[0], source, since=first, timeout=None, listed=hub.listed_at("team", first))


def test_a_bookmark_of_a_dropped_source_is_not_taken_for_a_later_list() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10, idle_scope_ttl=60)
    source = ready(hub, "team")
    w, sink = watcher(bookmarks=True)
    assert hub.start(w, source, since=None, timeout=None)
    hub.bookmarks()
    mark = hub.versions.current
    assert sink.lines[-1] == f"BOOKMARK {mark} False".encode()
    w.end("timeout")
    clock.advance(61)
    hub.reap()
    assert "team" not in hub.sources
    reader.repositories["team/app"] = {"v2"}
    _, observe = listing(hub, "team")  # the reflector's resume from the bookmark is not this list's
    observe("team/app", ["v2"])
    source = ready(hub, "team")
    # As the HTTP handler does: a resourceVersion below the floor is served from its list's record.
    assert mark < source.floor
    assert not hub.start(watcher()[0], source, since=mark, timeout=None, listed=hub.listed_at("team", mark))


# -- watchers ----------------------------------------------------------------------------------------


def headed(event: Event) -> bytes:
    return b"H " + render(event)


@pytest.mark.parametrize("paused", [False, True])
def test_a_watch_writes_its_first_event_in_the_first_form_and_the_others_in_the_later_one(
    paused: bool,
) -> None:
    """Review r6watch L1: a Table watch's columns go in its first event only (render_after). Live
    events taken while what it starts with is not written yet (paused: its client reads slowly) are
    written after it; the first line written is in the first form whatever came first."""
    sink = FakeSink()
    w = Watcher("alice", sink, headed, lambda ref: True, lambda ns, path: True, render_after=render)
    w.form, w.form_after = "headed", "plain"
    w.paused = paused
    w.begin(Event(1, EventType.ADDED, TagRef("team", "app", t)) for t in ("a", "b"))
    live = [
        Event(2, EventType.ADDED, TagRef("team", "app", "c")),
        Event(3, EventType.ADDED, TagRef("team", "app", "d")),
    ]
    lines: list[Lines] = [{}, {}]
    w.take(live, lines)
    w.resumeProducing()
    assert [line.split()[0] for line in sink.lines][:1] == [b"H"]
    assert [line.split()[-2] for line in sink.lines] == [
        b"team/app:a",
        b"team/app:b",
        b"team/app:c",
        b"team/app:d",
    ]
    assert lines[1] == {"plain": render(live[1])}  # shared with the scope's other watchers of that form
    assert sum(line.startswith(b"H") for line in sink.lines) == (2 if paused else 1)
    # A watch that starts with nothing: its first live event carries the first form.
    empty_sink = FakeSink()
    empty = Watcher("bob", empty_sink, headed, lambda ref: True, lambda ns, path: True, render_after=render)
    empty.begin([])
    empty.take(live, [{}, {}])
    assert [line.split()[0] for line in empty_sink.lines] == [b"H", b"ADDED"]


def test_a_slow_watcher_is_disconnected_not_buffered_without_bound() -> None:
    reader = FakeReader({"team/app": set()})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=1)
    source = ready(hub, "team")
    slow, slow_sink = watcher(max_buffered=2)
    fast, fast_sink = watcher()
    hub.start(slow, source, since=hub.versions.current, timeout=None)
    hub.start(fast, source, since=hub.versions.current, timeout=None)
    slow.pauseProducing()
    for tag in ("a", "b"):
        reader.repositories["team/app"].add(tag)
        clock.advance(1)
    assert len(slow.buffer) == 2 and not slow.closed
    slow.resumeProducing()
    assert len(slow_sink.lines) == 2 and not slow.buffer
    slow.pauseProducing()
    for tag in ("c", "d", "e"):
        reader.repositories["team/app"].add(tag)
        clock.advance(1)
    assert slow.closed and slow_sink.aborted and slow.reason == "slow" and not slow.buffer
    assert slow not in source.subscribers and hub.per_user["alice"] == 1
    assert len(fast_sink.lines) == 5 and not fast.closed


def one_turn(clock: Clock) -> bool:
    """One iteration of a reactor: the calls due now, not those they schedule (Clock.advance runs
    those too). False when nothing was due."""
    due = [call for call in clock.calls if call.getTime() <= clock.seconds()]
    for call in due:
        if call.active():
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)
    return bool(due)


def test_fan_out_is_spread_over_reactor_turns_and_rendered_once_per_form() -> None:
    """A resync that finds many new tags in a scope many clients watch: the events are handed to the
    watchers a bounded number per turn of the reactor (other requests, a liveness probe, are served
    between the turns), each watcher's in order and in a few writes, each rendered once per form of
    output; a bookmark meanwhile is never ahead of an event not yet handed to its watcher, and a watch
    that starts meanwhile is not sent the events its start covered."""
    reader = FakeReader({"team/app": {"v000"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=1000)
    source = ready(hub, "team")
    source.fanout.per_turn = 100
    renders: dict[tuple[str, int], int] = {}

    def rendering(form: str) -> Callable[[Event], bytes]:
        def counted(event: Event) -> bytes:
            renders[form, event.sequence] = renders.get((form, event.sequence), 0) + 1
            return render(event)

        return counted

    sinks: list[FakeSink] = []
    for i in range(30):
        form = "table" if i % 3 == 0 else "json"
        sinks.append(FakeSink())
        w = Watcher("alice", sinks[-1], rendering(form), lambda ref: True, lambda ns, path: True, bookmark)
        w.form = form
        assert hub.start(w, source, since=hub.versions.current, timeout=None)
    new = [f"v{i:03d}" for i in range(1, 201)]
    reader.repositories["team/app"] |= set(new)

    def handed() -> int:
        return sum(len(sink.lines) for sink in sinks)

    source.resync()
    counts = [handed()]
    hub.bookmarks()
    marks = [handed() - counts[0]]
    late, late_sink = watcher()
    assert hub.start(late, source, since=None, timeout=None)
    for _ in range(1000):
        if not one_turn(clock):
            break
        counts.append(handed() - sum(marks))
    assert 0 < counts[0] <= 100
    assert all(0 <= b - a <= 100 for a, b in itertools.pairwise(counts)) and len(counts) > 60
    assert counts[-1] == 30 * 200
    for sink in sinks:
        events = [line for line in sink.lines if not line.startswith(b"BOOKMARK")]
        assert [line.split()[1] for line in events] == [f"team/app:{tag}".encode() for tag in new]
        sequences = [int(line.split()[-1]) for line in sink.lines if not line.startswith(b"BOOKMARK")]
        assert sequences == sorted(sequences)
        # The bookmark: every event before it is at or below it, every one after it above it.
        at = next(i for i, line in enumerate(sink.lines) if line.startswith(b"BOOKMARK"))
        mark = int(sink.lines[at].split()[1])
        assert all(int(line.split()[-1]) <= mark for line in sink.lines[:at])
        assert all(int(line.split()[-1]) > mark for line in sink.lines[at + 1 :])
        assert sink.writes <= 20  # not one per event
    assert renders == {(form, sequence): 1 for form in ("table", "json") for sequence in sequences}
    # Started while the events were being handed over: its snapshot has them all, and nothing after.
    assert len(late_sink.lines) == 201 and all(line.startswith(b"ADDED") for line in late_sink.lines)


def test_watch_limits_per_user_and_in_total() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    hub = make_hub(reader, Clock(), max_watches=3, max_watches_per_user=2)
    source = ready(hub, "team")
    hub.start(watcher("alice")[0], source, since=None, timeout=None)
    hub.start(watcher("alice")[0], source, since=None, timeout=None)
    with pytest.raises(TooManyWatches, match="user alice"):
        hub.start(watcher("alice")[0], source, since=None, timeout=None)
    bob, _ = watcher("bob")
    hub.start(bob, source, since=None, timeout=None)
    with pytest.raises(TooManyWatches, match="on this server"):
        hub.start(watcher("carol")[0], source, since=None, timeout=None)
    bob.end("done")
    hub.start(watcher("carol")[0], source, since=None, timeout=None)


def test_slots_taken_by_waiting_watches_count_against_the_limits() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    hub = make_hub(reader, Clock(), max_watches=2, max_watches_per_user=1)
    source = ready(hub, "team")
    # Two watches of alice arrive before either started (both wait on a read): the second is
    # refused on arrival, not when the first has started.
    first = hub.admit("alice")
    with pytest.raises(TooManyWatches, match="user alice"):
        hub.admit("alice")
    bob = hub.admit("bob")
    with pytest.raises(TooManyWatches, match="on this server"):
        hub.admit("carol")
    w, _ = watcher("alice")
    assert hub.start(w, source, since=None, timeout=None, slot=first)  # takes its slot: no second check
    assert not first.held and hub.per_user["alice"] == 1
    first.release()  # the request's own release, after the watch took the slot: nothing
    bob.release()  # bob's request failed before its watch started
    bob.release()
    with pytest.raises(TooManyWatches, match="user alice"):
        hub.admit("alice")
    carol = hub.admit("carol")
    # A watch from a resourceVersion no longer retained gives its slot back.
    source.floor = hub.versions.current + 1
    assert not hub.start(watcher("carol")[0], source, since=hub.versions.current, timeout=None, slot=carol)
    assert not carol.held
    hub.admit("dave")
    hub.stop()
    with pytest.raises(TooManyWatches, match="shutting down"):
        hub.check_running()


def test_timeout_ends_with_a_bookmark_and_bookmarks_are_periodic() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=1000, bookmark_interval=60)
    hub.run()
    source = ready(hub, "team")
    w, sink = watcher(bookmarks=True)
    plain, plain_sink = watcher()
    hub.start(w, source, since=hub.versions.current, timeout=90)
    hub.start(plain, source, since=hub.versions.current, timeout=90)
    clock.advance(60)
    assert sink.lines == [f"BOOKMARK {hub.versions.current} False".encode()]
    clock.advance(30)
    assert len(sink.lines) == 2 and sink.closed and w.reason == "timeout"
    assert plain_sink.lines == [] and plain_sink.closed
    assert not hub.watchers
    hub.stop()


def grant(index: RbacIndex, user: str, namespace: str, paths: list[str], name: str) -> None:
    """A Role on payloadrepositoryaccesses for ``paths`` and its RoleBinding to ``user``."""
    rule = {"apiGroups": [GROUP], "resources": ["payloadrepositoryaccesses"], "verbs": ["get"]}
    meta = {"namespace": namespace, "name": name}
    index.upsert("Role", {"kind": "Role", "metadata": meta, "rules": [{**rule, "resourceNames": paths}]})
    subject = {"kind": "User", "name": user}
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    index.upsert(
        "RoleBinding", {"kind": "RoleBinding", "metadata": meta, "roleRef": ref, "subjects": [subject]}
    )


def rbac_hub(
    reader: FakeReader, clock: Clock, limits: WatchLimits | None = None
) -> tuple[WatchHub, RbacIndex, RbacAuthorizer]:
    """A running hub with access rules (none yet: `grant` adds them)."""
    index = RbacIndex()
    authorizer = RbacAuthorizer(index, ready=lambda: True)
    hub = WatchHub(
        reader,
        clock,
        limits or WatchLimits(),
        access_generation=lambda: index.generation,
        access_rules=lambda user, namespace: authorizer.rules(user, "get", namespace),
    )
    hub.run()
    return hub, index, authorizer


def rbac_watcher(
    authorizer: RbacAuthorizer, user: str, sink: FakeSink | None = None
) -> tuple[Watcher, FakeSink]:
    sink = sink or FakeSink()
    w = Watcher(user, sink, render, lambda ref: True, Readable(authorizer, UserInfo(user)))
    return w, sink


def alice_and_bob(clock: Clock) -> tuple[WatchHub, RbacIndex, RbacAuthorizer, ScopeSource]:
    """A hub over `team`, where alice may see `app` and bob `web`."""
    reader = FakeReader({"team/app": {"v1"}, "team/web": {"w"}})
    hub, index, authorizer = rbac_hub(reader, clock)
    grant(index, "alice", "team", ["app"], "alice")
    grant(index, "bob", "team", ["web"], "bob")
    return hub, index, authorizer, ready(hub, "team")


def gone(sink: FakeSink) -> bool:
    """Ended by a 410 Expired ERROR, the end that makes a reflector relist."""
    last = json.loads(sink.lines[-1]) if sink.lines else {}
    return sink.closed and last.get("type") == "ERROR" and last["object"]["code"] == 410


def test_access_change_ends_only_the_watches_it_affects() -> None:
    clock = Clock()
    hub, index, authorizer, source = alice_and_bob(clock)
    watchers = {}
    for user in ("alice", "bob"):
        w, sink = rbac_watcher(authorizer, user)
        hub.start(w, source, since=None, timeout=None)
        watchers[user] = (w, sink)
    grant(index, "bob", "team", ["app", "web"], "bob")
    clock.advance(1)
    bob, bob_sink = watchers["bob"]
    assert bob.closed and bob.reason == "access rules changed" and gone(bob_sink)
    alice, _ = watchers["alice"]
    assert not alice.closed
    hub.stop()
    assert alice.closed and alice.reason == "shutting down"
    with pytest.raises(TooManyWatches):
        hub.admit("alice")


def test_a_revocation_while_a_repository_s_last_deletions_wait_in_the_fan_out_ends_the_watch() -> None:
    """Every tag of alice's repository is deleted, and she loses it while the DELETED events still wait
    in the fan-out (handed over a few per turn). The repository has no tags any more, yet what her
    client holds of it was decided by the old rules: the watch ends with a 410, rather than the
    DELETED being dropped under the new ones and her client keeping the deleted tag."""
    clock = Clock()
    hub, index, authorizer, source = alice_and_bob(clock)
    source.fanout.per_turn = 1
    w, sink = rbac_watcher(authorizer, "alice")
    assert hub.start(w, source, since=None, timeout=None)
    assert [line.split()[:2] for line in sink.lines] == [[b"ADDED", b"team/app:v1"]]
    reader = hub.reader
    assert isinstance(reader, FakeReader)
    reader.repositories["team/web"] |= {f"w{i}" for i in range(5)}  # bob's events come first
    hub.repository_changed("team/web")
    reader.repositories.pop("team/app")
    hub.repository_changed("team/app")
    assert "team/app" not in source.tags and source.fanout.behind(w)
    grant(index, "alice", "team", ["other"], "alice")
    hub.check_access()
    while one_turn(clock):
        pass
    assert [line.split()[:2] for line in sink.lines[:-1]] == [[b"ADDED", b"team/app:v1"]]
    assert gone(sink) and w.reason == "access rules changed"


def test_a_revocation_while_a_resumed_watch_has_not_written_a_deletion_it_starts_with_ends_it() -> None:
    """The same with the events a resumed watch starts with: decided as its client reads them, they
    are judged on an access change even when their repository has no tags any more."""
    clock = Clock()
    hub, index, authorizer, source = alice_and_bob(clock)
    since = hub.versions.current
    reader = hub.reader
    assert isinstance(reader, FakeReader)
    reader.repositories.pop("team/app")
    hub.repository_changed("team/app")
    assert "team/app" not in source.tags
    w, sink = rbac_watcher(authorizer, "alice")
    w.pauseProducing()  # its client does not read yet
    assert hub.start(w, source, since=since, timeout=None)
    assert sink.lines == [] and w.opening is not None
    grant(index, "alice", "team", ["other"], "alice")
    hub.check_access()
    w.resumeProducing()
    assert sink.lines and gone(sink) and w.reason == "access rules changed"


@pytest.mark.parametrize("scope", ["team", None])
def test_a_grant_or_a_revocation_ends_a_watch_told_nothing_of_the_repository(scope: str | None) -> None:
    """A watch from a list's resourceVersion was sent nothing about `secret`; what the user may see of
    the scope changed all the same, and only a relist brings `secret:v1` (or takes it away)."""
    reader = FakeReader({"team/app": {"v1"}, "team/secret": {"v1"}})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    grant(index, "alice", "team", ["app"], "alice")
    source = ready(hub, scope)
    w, sink = rbac_watcher(authorizer, "alice")
    assert hub.start(w, source, since=hub.versions.current, timeout=None)
    grant(index, "alice", "team", ["app", "secret"], "alice")
    clock.advance(1)
    assert w.reason == "access rules changed" and gone(sink)
    w, sink = rbac_watcher(authorizer, "alice")
    assert hub.start(w, source, since=hub.versions.current, timeout=None)
    index.remove("RoleBinding", {"metadata": {"namespace": "team", "name": "alice"}})
    clock.advance(1)
    assert w.reason == "access rules changed" and gone(sink)
    hub.stop()


def alice_watching(reader: FakeReader, clock: Clock) -> tuple[WatchHub, RbacIndex, Watcher, FakeSink]:
    """Alice, who may see `app` of `team`, watching `team` from its snapshot."""
    hub, index, authorizer = rbac_hub(reader, clock)
    grant(index, "alice", "team", ["app"], "alice")
    source = ready(hub, "team")
    w, sink = rbac_watcher(authorizer, "alice")
    assert hub.start(w, source, since=None, timeout=None)
    return hub, index, w, sink


def test_a_change_of_the_rules_that_shows_nothing_new_keeps_the_watch() -> None:
    reader = FakeReader({"team/app": {"v1"}, "team/later": {"l1"}})
    clock = Clock()
    hub, index, w, sink = alice_watching(reader, clock)
    assert sink.lines == [f"ADDED team/app:v1 {hub.versions.current}".encode()]
    del reader.repositories["team/later"]  # not hers: decided, and no event
    clock.advance(30)
    grant(index, "bob", "team", ["app"], "bob")  # another user's rules
    grant(index, "alice", "team", ["app", "later"], "alice")  # a repository that has no tags now
    clock.advance(1)
    assert not w.closed and hub.checked_generation == index.generation
    # Decided again by the new rules: a tag pushed there now is hers.
    reader.repositories["team/later"] = {"l2"}
    clock.advance(30)
    assert sink.lines[1:] == [f"ADDED team/later:l2 {hub.versions.current}".encode()]
    hub.stop()


def test_rules_granted_and_taken_back_between_two_checks_end_a_watch_they_showed_something_to() -> None:
    """`secret` is granted, a tag is pushed there and sent, and the grant is taken back, all between
    two checks: the rules are again those the watch started under, but the tag was shown under the
    grant; the watch ends with 410 and nothing later from `secret` reaches it."""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub, index, w, sink = alice_watching(reader, clock)
    clock.advance(1)
    grant(index, "alice", "team", ["app", "secret"], "alice")
    reader.repositories["team/secret"] = {"s1"}
    hub.repository_changed("team/secret")
    assert sink.lines[-1] == f"ADDED team/secret:s1 {hub.versions.current}".encode()
    grant(index, "alice", "team", ["app"], "alice")
    clock.advance(1)
    assert w.reason == "access rules changed" and gone(sink)
    reader.repositories["team/secret"] = {"s1", "s2"}
    hub.repository_changed("team/secret")
    assert not any(b"secret:s2" in line for line in sink.lines)
    hub.stop()


def list_sequence(hub: WatchHub, namespace: str | None, user: UserInfo | None = None) -> int:
    """The sequence of the resourceVersion a list of ``namespace`` reports (a watched one), made by
    ``user`` (None: by nobody the hub is told of)."""
    rv: list[str] = []
    Deferred.fromCoroutine(hub.list_version(namespace, user)).addCallback(rv.append)
    sequence = hub.versions.parse(rv[0])
    assert sequence is not None
    return sequence


def test_a_watch_from_a_list_resumes_across_changes_of_other_rules() -> None:
    """Rules change all the time in a cluster (other users', controllers' updates that change
    nothing): a watch from a list, or resumed from its last event or bookmark, made before such a
    change starts as usual. A 410 for every change anywhere made clients relist in a loop wherever
    rules changed more often than a list took."""
    reader = FakeReader({"team/app": {"v1"}, "team/secret": {"s1"}})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    grant(index, "alice", "team", ["app"], "alice")
    source = ready(hub, "team")
    listed = list_sequence(hub, "team")
    for i in range(3):
        grant(index, "bob", "team", ["secret"] if i % 2 else ["app"], "bob")
        clock.advance(1)
    w, _ = rbac_watcher(authorizer, "alice")
    assert hub.start(w, source, since=listed, timeout=None)
    clock.advance(5)
    assert not w.closed
    hub.stop()


def test_a_watch_is_not_started_before_the_rules_are_loaded() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub, index, _ = rbac_hub(reader, clock)
    loaded = False
    authorizer = RbacAuthorizer(index, ready=lambda: loaded)
    hub.access_rules = lambda user, namespace: authorizer.rules(user, "get", namespace)
    source = ready(hub, "team")
    for scope in ("team", None):
        with pytest.raises(AuthorizationNotReady):
            hub.authorize(UserInfo("alice"), scope)
    w, sink = rbac_watcher(authorizer, "alice")
    slot = hub.admit("alice")
    with pytest.raises(AuthorizationNotReady):
        hub.start(w, source, since=None, timeout=None, slot=slot)
    slot.release()
    assert not hub.watchers and not hub.per_user and not source.subscribers and not sink.lines
    hub.authorize(UserInfo("admin", groups=("system:masters",)), "team")  # decided without rules
    hub.stop()


def test_a_watch_that_fails_to_begin_leaves_nothing_registered() -> None:
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    ended: list[str] = []
    hub = make_hub(reader, clock)
    hub.on_end = ended.append
    source = ready(hub, "team")

    def broken(event: Event) -> bytes:
        raise RuntimeError("a bug")

    w = Watcher("alice", FakeSink(), broken, lambda ref: True, lambda ns, path: True)
    with pytest.raises(RuntimeError):
        hub.start(w, source, since=None, timeout=None)
    assert w.closed and w.done.called and ended == ["error"]
    assert not hub.watchers and not hub.per_user and not source.subscribers
    clock.advance(hub.limits.max_timeout)
    assert ended == ["error"]
    hub.stop()


@attrs.define
class FinishedSink(FakeSink):
    """A response its handler already finished: twisted refuses writes to it."""

    def write(self, data: bytes) -> None:
        raise RuntimeError("Request.write called on a request after Request.finish was called.")


def test_a_watch_that_cannot_be_ended_does_not_stop_later_revocations_ending_others() -> None:
    clock = Clock()
    hub, index, authorizer, source = alice_and_bob(clock)
    finished, _ = rbac_watcher(authorizer, "alice", FinishedSink())
    assert hub.start(finished, source, since=hub.versions.current, timeout=None)
    bob, bob_sink = rbac_watcher(authorizer, "bob")
    assert hub.start(bob, source, since=hub.versions.current, timeout=None)
    index.remove("RoleBinding", {"metadata": {"namespace": "team", "name": "alice"}})
    clock.advance(1)
    assert finished.closed and finished not in hub.watchers and not bob.closed
    index.remove("RoleBinding", {"metadata": {"namespace": "team", "name": "bob"}})
    clock.advance(1)
    assert bob.reason == "access rules changed" and gone(bob_sink)
    assert not hub.watchers and not hub.per_user
    hub.stop()


def test_event_type_values_are_the_wire_names() -> None:
    assert {t.value for t in EventType} == {"ADDED", "DELETED"}


@attrs.define
class HangingReader:
    pending: list[Deferred[dict[str, list[str]]]] = attrs.field(factory=list)

    async def scope_tags(self, namespace: str | None) -> dict[str, list[str]]:
        d: Deferred[dict[str, list[str]]] = Deferred()
        self.pending.append(d)
        return await d

    async def repository_tags(self, repository: str) -> list[str]:
        return []


def test_a_baseline_nobody_waits_for_any_more_is_cancelled_and_resyncs_are_bounded() -> None:
    reader = HangingReader()
    clock = Clock()
    hub = WatchHub(reader, clock, WatchLimits(resync_period=10))
    listing = Deferred.fromCoroutine(hub.source("team"))
    assert len(reader.pending) == 1
    listing.cancel()  # the list's deadline, or its client gone
    assert reader.pending[0].called  # the registry read was cancelled with it
    listing.addErrback(lambda failure: None)
    source = hub.sources["team"]
    assert not source.ready
    # A resync that never answers is cut after its timeout, so the loop goes on.
    clock.advance(10)
    assert len(reader.pending) == 2
    clock.advance(10 * 4 + 60)
    assert reader.pending[1].called
    hub.stop()


@attrs.define
class PushingBackSink(FakeSink):
    """A transport whose buffer is full after every 4 lines."""

    watcher: Watcher | None = None

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.lines) % 4 == 0 and self.watcher is not None:
            self.watcher.pauseProducing()


def test_what_a_watch_starts_with_is_paced_by_the_client_not_buffered() -> None:
    """A snapshot far larger than the send buffer, to a client that reads slowly: written a line at a
    time as the transport takes it (never cut), and live events wait behind it, in order."""
    reader = FakeReader({"team/app": {f"v{i:03d}" for i in range(50)}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=1)
    source = ready(hub, "team")
    w, _ = watcher(max_buffered=3, bookmarks=True)
    sink = PushingBackSink(watcher=w)
    w.sink = sink
    assert hub.start(w, source, since=None, timeout=None, initial_events_end=True)
    assert len(sink.lines) == 4 and w.paused and not w.closed
    reader.repositories["team/app"].add("z")  # a live event while the snapshot waits
    clock.advance(1)
    assert len(w.buffer) == 1 and len(sink.lines) == 4
    for _ in range(20):  # the client reads, a little at a time
        w.resumeProducing()
    lines = [line.decode() for line in sink.lines]
    assert [line.split()[1] for line in lines[:50]] == [f"team/app:v{i:03d}" for i in range(50)]
    assert lines[50].startswith("BOOKMARK") and lines[51].startswith("ADDED team/app:z")
    assert len(lines) == 52 and not w.closed and not w.buffer


def test_with_a_clock_what_a_watch_starts_with_goes_a_piece_per_turn() -> None:
    """A transport that never pushes back (a client on loopback) still gets the opening a piece per
    reactor turn; a resume while the next piece waits for its turn writes nothing more, live events
    wait behind the opening in order, and a watch that ends leaves no call behind."""
    clock = Clock()
    w, sink = watcher(max_buffered=10)
    w.clock = clock
    events = [Event(i, EventType.ADDED, TagRef("team", "app", f"t{i:05d}" + "x" * 200)) for i in range(1500)]
    lines = [*map(render, events), bookmark(1500, True), b"ADDED team/app:live 1501\n"]
    w.begin(iter(events), [lines[1500]])
    per_turn = [sum(map(len, sink.lines)) + len(sink.lines)]
    w.resumeProducing()  # the transport drained: the piece waits for its turn all the same
    assert sum(map(len, sink.lines)) + len(sink.lines) == per_turn[0]
    w.send(lines[1501])  # a live event, behind the opening
    while clock.getDelayedCalls():
        before = sum(map(len, sink.lines)) + len(sink.lines)
        one_turn(clock)
        per_turn.append(sum(map(len, sink.lines)) + len(sink.lines) - before)
    assert [line + b"\n" for line in sink.lines] == lines and w.opening is None and not w.buffer
    assert len(per_turn) >= 5 and max(per_turn) <= _WRITE_BYTES + len(lines[0])
    stopped, _ = watcher()
    stopped.clock = clock
    stopped.begin(iter(events))
    assert clock.getDelayedCalls()
    stopped.end("client gone", write=False)
    assert not clock.getDelayedCalls()


def test_with_a_clock_a_selective_watch_examines_a_bounded_number_of_events_per_turn() -> None:
    """A watch whose selectors reject all but the last of a large snapshot writes almost nothing, yet
    examines (decides, renders) only a bounded number of its events a turn: the rest of the reactor
    (a liveness probe) is served between them as for a watch that writes them all (review r9stall L2)."""
    clock = Clock()
    w, sink = watcher()
    w.clock = clock
    examined = [0]

    def accept(ref: TagRef) -> bool:
        examined[0] += 1
        return ref.tag == "t04999"

    w.accept = accept
    events = [Event(i, EventType.ADDED, TagRef("team", "app", f"t{i:05d}")) for i in range(5000)]
    w.begin(iter(events), [bookmark(5000, True)])
    per_turn = [examined[0]]
    while clock.getDelayedCalls():
        before = examined[0]
        one_turn(clock)
        per_turn.append(examined[0] - before)
    assert [line + b"\n" for line in sink.lines] == [render(events[-1]), bookmark(5000, True)]
    assert sum(per_turn) == 5000 and w.opening is None and not w.closed
    assert len(per_turn) >= 4 and max(per_turn) <= _WRITE_BYTES // _EXAMINED + 1, per_turn


def test_with_a_clock_written_events_count_as_examined_too() -> None:
    """Each event of an opening counts as examined whether it is written or not: a full watch of short
    lines examines per turn no more events than a selective one, about a thousand (docs/watch.md),
    not the 2,400 and more of its lines of at most 27 bytes that fill a piece's bytes (review r10watch N4)."""
    clock = Clock()
    w, sink = watcher()
    w.clock = clock
    examined = [0]

    def accept(ref: TagRef) -> bool:
        examined[0] += 1
        return True

    w.accept = accept
    events = [Event(i, EventType.ADDED, TagRef("team", "app", f"t{i:05d}")) for i in range(5000)]
    assert len(render(events[-1])) <= 27
    w.begin(iter(events))
    per_turn = [examined[0]]
    while clock.getDelayedCalls():
        before = examined[0]
        one_turn(clock)
        per_turn.append(examined[0] - before)
    assert [line + b"\n" for line in sink.lines] == list(map(render, events))
    assert sum(per_turn) == 5000 and w.opening is None and not w.closed
    assert max(per_turn) <= _WRITE_BYTES // _EXAMINED + 1, per_turn


def test_with_a_clock_a_failure_in_a_later_piece_ends_the_watch_as_an_error() -> None:
    """A bug while a later piece of the opening is rendered (raised from a delayed call, where nothing
    else would end the watch) cuts the watch, logged, rather than leaving it open and silent with its
    client waiting (review r9stall N1)."""
    clock = Clock()
    w, sink = watcher()
    w.clock = clock
    ended: list[Watcher] = []
    w.on_close.append(ended.append)

    def failing(event: Event) -> bytes:
        if event.sequence == 1000:
            raise ValueError("a bug")
        return render(event)

    w.render = failing
    w.begin(Event(i, EventType.ADDED, TagRef("team", "app", f"t{i:05d}" + "x" * 200)) for i in range(1500))
    assert w.opening is not None and 0 < len(sink.lines) < 1000
    with capturedLogs() as logged:
        while clock.getDelayedCalls():
            one_turn(clock)
    assert w.closed and w.reason == "error" and sink.aborted and ended == [w]
    assert w.opening is None and w._piece is None and not clock.getDelayedCalls()
    assert [event for event in logged if "log_failure" in event]
    written = len(sink.lines)
    w.send(b"ADDED team/app:live 1501\n")
    assert len(sink.lines) == written and not w.buffer


def test_a_failure_in_a_piece_written_on_the_transports_resume_ends_the_watch_as_an_error() -> None:
    """A client that reads slowly pauses the watcher mid-opening; the rest is written when the transport
    resumes it. A bug there is the watch's failure, logged and counted as an error, not raised into the
    transport (which would log it as Twisted's own and drop the connection as "client gone"; review
    r10watch L2). Any bug: an exception of no particular kind (review r11watch N3: with ValueError only,
    a guard that caught ValueError alone passed)."""
    clock = Clock()
    w, _ = watcher()
    w.clock = clock
    sink = PushingBackSink(watcher=w)
    w.sink = sink
    ended: list[Watcher] = []
    w.on_close.append(ended.append)

    class ABug(Exception):
        pass

    def failing(event: Event) -> bytes:
        if event.sequence == 6:
            raise ABug("a bug")
        return render(event)

    w.render = failing
    w.begin(Event(i, EventType.ADDED, TagRef("team", "app", f"t{i:05d}")) for i in range(100))
    assert len(sink.lines) == 4 and w.paused and w.opening is not None and not clock.getDelayedCalls()
    with capturedLogs() as logged:
        w.resumeProducing()  # the client read 4 lines: the transport resumes the watcher
    assert w.closed and w.reason == "error" and sink.aborted and ended == [w]
    assert len(sink.lines) == 6
    assert w.opening is None and w._piece is None and not clock.getDelayedCalls()
    assert [event for event in logged if "log_failure" in event]


def test_a_watch_whose_client_does_not_read_holds_no_copy_of_the_scope() -> None:
    """Clients that start a watch and never read it hold, each, a line of what it starts with and the
    list of the scope's repositories, not a reference for every tag of the scope; what they are sent
    is the snapshot as the watch started, in list order, whatever the source reads meanwhile."""
    tags = {
        f"ns{n}/{path}": {f"t{i:04d}" for i in range(400)} for n in (1, 0) for path in ("b", "a/b", "a-b")
    }
    reader = FakeReader({repository: set(names) for repository, names in tags.items()})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=1)
    source = ready(hub, None)
    stalled = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            w, sink = watcher(max_buffered=5000)
            w.pauseProducing()  # its transport is full from the first line on
            assert hub.start(w, source, since=None, timeout=None)
            stalled.append((w, sink))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 2,400 tags: a reference for each is about 150 kB a watch; a line and the repositories, a few kB.
    assert held < 5 * 20_000, held
    reader.repositories = {"ns0/b": {"new"}}  # read before the clients read anything
    clock.advance(1)
    expected = sorted(
        (TagRef(*repository.partition("/")[::2], tag) for repository, names in tags.items() for tag in names),
        key=lambda ref: ref.sort_key,
    )
    for w, sink in stalled:
        while w.opening is not None:
            w.resumeProducing()
        snapshot = [line.split()[1].decode() for line in sink.lines[: len(expected)]]
        assert snapshot == [f"{ref.repository}:{ref.tag}" for ref in expected]
        assert len(sink.lines) == len(expected) + 2400 + 1 and not w.closed  # then the resync's events


def test_every_reason_a_watch_ends_with_is_documented_with_its_metric() -> None:
    """The values of ``payloadtags_watches_ended_total``'s ``reason``: what the watch core passes to
    ``Watcher.end``, each listed in docs/metrics.md."""
    root = Path(__file__).resolve().parents[2]
    reasons = set()
    for module in (root / "src/payloadtags/watch").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "end"
            ):
                if (
                    node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    reasons.add(node.args[0].value)
    assert {"slow", "timeout", "too many listed tags to confirm"} <= reasons
    (row,) = [line for line in (root / "docs/metrics.md").read_text().splitlines() if "watches_ended" in line]
    assert {reason for reason in reasons if f"`{reason}`" not in row} == set()


# Where the watch core ends a watch as an "error", and the words that name that case in docs/metrics.md.
_ERROR_CASES = {
    "start": "failed to start",
    "_pump_or_end": "failed while what it starts with was written",
    "check_access": "could not be checked after an access change",
}


def test_every_way_a_watch_ends_as_an_error_is_named_with_its_metric() -> None:
    """``reason="error"`` counts unrelated failures: docs/metrics.md names each, so that an operator
    reading the counter knows what it may mean (review r10watch N3: a failed later piece of an opening
    was not named). A new ``end("error")`` fails here until its case is named there and here."""
    root = Path(__file__).resolve().parents[2]
    ending: set[str] = set()
    for module in (root / "src/payloadtags/watch").glob("*.py"):
        for function in ast.walk(ast.parse(module.read_text())):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "end"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "error"
                for node in ast.walk(function)
            ):
                ending.add(function.name)
    assert ending == set(_ERROR_CASES)
    (row,) = [line for line in (root / "docs/metrics.md").read_text().splitlines() if "watches_ended" in line]
    error = row[row.index("`error`") :]
    assert [words for words in _ERROR_CASES.values() if words not in error] == []


def test_a_grant_while_the_snapshot_is_unwritten_ends_the_watch_rather_than_show_a_deleted_tag() -> None:
    """alice (app only) starts a watch from the snapshot, her client not reading yet. team/secret's
    last tag is deleted (hidden from her: dropped), then she is granted secret. The unwritten
    snapshot's ADDED secret:s1, decided as it is written, would be shown by the new rules with no
    DELETED after it: a rules change while the start is unwritten ends the watch with 410."""
    reader = FakeReader({"team/app": {"v1"}, "team/secret": {"s1"}})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    grant(index, "alice", "team", ["app"], "alice")
    source = ready(hub, "team")
    w, sink = rbac_watcher(authorizer, "alice")
    w.pauseProducing()  # her client has not read the opening yet (a large scope)
    assert hub.start(w, source, since=None, timeout=None)
    assert sink.lines == [] and w.opening is not None
    reader.repositories.pop("team/secret")
    hub.repository_changed("team/secret")
    assert "team/secret" not in source.tags
    grant(index, "alice", "team", ["app", "secret"], "alice")
    hub.check_access()
    w.resumeProducing()
    shown = [line.split()[:2] for line in sink.lines]
    assert [b"ADDED", b"team/secret:s1"] not in shown and w.closed, shown
    assert w.reason == "access rules changed"


def test_a_grant_of_an_emptied_repository_while_its_deletions_wait_keeps_the_stream() -> None:
    """A change that shows the user nothing new (a rule for a repository without tags) leaves the
    stream alone (docs/watch.md), also while that repository's deletions wait in the fan-out: only a
    revocation of one of those needs the relist."""
    clock = Clock()
    reader = FakeReader({"team/app": {"v1"}, "team/web": {"w"}, "team/secret": {"s1"}})
    hub, index, authorizer = rbac_hub(reader, clock)
    grant(index, "alice", "team", ["app"], "alice")
    grant(index, "bob", "team", ["web"], "bob")
    source = ready(hub, "team")
    source.fanout.per_turn = 1
    w, sink = rbac_watcher(authorizer, "alice")
    assert hub.start(w, source, since=None, timeout=None)
    reader.repositories["team/web"] |= {f"w{i}" for i in range(5)}
    hub.repository_changed("team/web")
    reader.repositories.pop("team/secret")
    hub.repository_changed("team/secret")
    assert "team/secret" not in source.tags and source.fanout.behind(w)
    grant(index, "alice", "team", ["app", "secret"], "alice")
    hub.check_access()
    while one_turn(clock):
        pass
    assert not w.closed, sink.lines


def test_a_stale_scope_read_does_not_undo_what_a_newer_read_of_a_repository_noted() -> None:
    """A resync begins; team/x is deleted and pushed again, and the notification's read (newer)
    answers t2 first and is applied. The resync's older answer is stale for team/x: it must not undo
    the note that team/x was read alone, or the next resync, through an index that lacks team/x, sends
    DELETED team/x:t2 for a tag that exists. (The real index never forgets a name; a guard all the
    same, as a stale read changes nothing else.)"""
    reader = FakeReader({"team/app": {"v1"}, "team/x": {"t"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=30)
    source = ready(hub, "team")
    bob, bob_sink = watcher(user="bob")
    assert hub.start(bob, source, since=None, timeout=None)
    scope_holds: list[Deferred[None]] = []
    reader.scope_held = scope_holds
    clock.advance(30)  # resync R begins
    assert len(scope_holds) == 1
    holds: list[Deferred[list[str]]] = []
    reader.held = holds
    hub.repository_changed("team/x")  # notification: deleted and pushed again
    assert len(holds) == 1
    holds[0].callback(["t2"])  # the newer read answers first
    assert source.tags["team/x"] == frozenset({"t2"})
    scope_holds[0].callback(None)  # R's answer (index read before the delete): team/x: t -- stale
    assert source.tags["team/x"] == frozenset({"t2"})
    reader.scope_held = None
    reader.held = None
    reader.repositories["team/x"] = {"t2"}
    reader.unindexed.add("team/x")  # the index has not learnt of the push again
    clock.advance(30)  # resync R2
    assert not any(line.startswith(b"DELETED team/x:t2") for line in bob_sink.lines), bob_sink.lines
