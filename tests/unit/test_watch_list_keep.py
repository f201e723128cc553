"""A list keeps what the watch from it needs (its record, or the source it was made on) from its end, and
a watch from it keeps its record while it waits for its scope's read (wc84319): however long a list
or that read takes, the watch from the list is served, not 410 again and again."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from payloadtags.access.rbac import RbacAuthorizer, RbacIndex
from payloadtags.identity import UserInfo
from payloadtags.watch import ScopeSource, WatchHub, WatchLimits, WatchSlot
from payloadtags.watch.hub import UNUSED_SCOPE_TTL
from tests.unit.test_watch import FakeReader, from_list, grant, make_hub, rbac_watcher, ready, watcher
from tests.unit.test_watch import rbac_hub as watch_rbac_hub


def rbac_hub(reader: FakeReader, clock: Clock) -> tuple[WatchHub, RbacIndex, RbacAuthorizer]:
    """A running hub with access rules, idle scopes kept 2 minutes."""
    return watch_rbac_hub(reader, clock, WatchLimits(resync_period=10, idle_scope_ttl=120))


def first_page(hub: WatchHub, namespace: str, user: UserInfo | None = None) -> str:
    """A list's first page as api/app.py begins it: its resourceVersion."""
    got: list[tuple[str, object]] = []
    Deferred.fromCoroutine(hub.open_list(namespace, user)).addCallback(got.append)
    assert got, "the scope's source is ready: the list waits for nothing"
    return got[0][0]


def waiting_source(hub: WatchHub, namespace: str, slot: WatchSlot) -> list[ScopeSource]:
    """A watch's wait for its scope's source (`WatchHub.source`): the source once ready."""
    got: list[ScopeSource] = []
    Deferred.fromCoroutine(hub.source(namespace, slot)).addCallback(got.append)
    return got


def test_a_relist_on_the_source_a_410_made_keeps_it_for_its_watch_however_many_pages_it_takes() -> None:
    """The production case of wc84319: a namespace nobody watches, a watch that got 410 made its
    source (never `_wanted`: it did not start, so kept UNUSED_SCOPE_TTL), and the relist is made on
    that source. Only the list's first page kept it: a paged list longer than UNUSED_SCOPE_TTL found it
    dropped, its watch made a new one, whose floor is after the list, with no record: 410 again, on
    every try. Every page keeps it now, for the idle time of a scope a watch used."""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    grant(index, "alice", "team", ["app"], "alice")
    lost, _ = rbac_watcher(authorizer, "alice")
    slot = hub.admit("alice")
    source = waiting_source(hub, "team", slot)[0]
    assert not hub.start(lost, source, since=0, timeout=None, slot=slot)  # 410: it relists
    rv = first_page(hub, "team", UserInfo("alice"))
    for _ in range(4):  # its later pages, each a little under UNUSED_SCOPE_TTL after the one before
        clock.advance(UNUSED_SCOPE_TTL - 1)
        assert hub.observer("team", rv) is not None, "its source went while the list went on"
    clock.advance(UNUSED_SCOPE_TTL - 1)  # the client watches from it
    sequence = hub.versions.parse(rv)
    assert sequence is not None
    slot = hub.admit("alice")
    assert waiting_source(hub, "team", slot) == [source]
    w, _ = rbac_watcher(authorizer, "alice")
    assert hub.start(w, source, since=sequence, timeout=None, slot=slot), "the watch from the relist is 410"
    hub.stop()


def test_a_list_keeps_the_source_it_was_made_on_its_idle_time_from_its_end() -> None:
    """A whole list (one page) longer than the idle time of the source it was made on: the source is
    kept while the list runs and for its idle time from the list's end (`list_ended`), not from its
    start; then dropped once that idle time is over with no other list or watch: a list keeps it no
    longer than that."""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10, idle_scope_ttl=60)
    hub.run()
    source = ready(hub, "team")  # kept for a watch that ended, say
    rv = first_page(hub, "team")
    page = hub.list_began("team")
    assert hub.observer("team", rv) is not None
    clock.advance(100)  # its reads and its writes
    assert hub.sources.get("team") is source, "the source went while the list ran"
    hub.list_ended(page, rv)
    clock.advance(59)
    sequence = hub.versions.parse(rv)
    assert sequence is not None and hub.sources.get("team") is source
    w, _ = watcher()
    assert hub.start(w, source, since=sequence, timeout=None), "the watch from the list is 410"
    w.end("client gone", write=False)
    clock.advance(60 + 30)  # its idle time after the watch, and a reap
    assert "team" not in hub.sources
    hub.stop()


def test_a_list_of_an_unwatched_scope_keeps_its_record_from_its_end() -> None:
    """wc84319 (a), the list's part: a record was used as each page of its list began, and a page (or
    a whole list) longer than the records' idle time let it expire as the list ran. Records of the
    scope used since a running page of it began stay; the list's own is used again as it ends. Older
    records of the scope expire meanwhile, and the list's once unused for its idle time."""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=10, idle_scope_ttl=60)
    hub.run()
    old = hub.versions.parse(first_page(hub, "team"))
    hub.versions.next()  # a change: the next list takes a record of its own
    clock.advance(1)
    rv = first_page(hub, "team")
    sequence = hub.versions.parse(rv)
    page = hub.list_began("team")
    observe = hub.observer("team", rv)
    assert observe is not None and old is not None and sequence is not None and old != sequence
    observe("team/app", ("v1",))
    for _ in range(4):  # the reaps while it reads, 120 s
        clock.advance(30)
    assert hub.listed_at("team", old) is None  # used before the page began
    hub.list_ended(page, rv)
    clock.advance(59)
    reader.repositories["team/app"] = {"v1", "v2"}
    w, sink = watcher()
    assert from_list(hub, w, ready(hub, "team"), sequence), "the list's record expired as it ran: 410"
    assert [line.split()[:2] for line in sink.lines] == [[b"ADDED", b"team/app:v2"]]
    clock.advance(60 + 30)
    assert hub.listed_at("team", sequence) is None
    hub.stop()


def test_only_a_list_by_a_caller_who_may_read_there_keeps_a_source_the_full_idle_time() -> None:
    """A list by one who may read nothing in the namespace keeps its source no longer than before
    (UNUSED_SCOPE_TTL after it): her lists cannot keep rereads going for nobody. One by a caller who may
    read there keeps it for idle_scope_ttl, and no longer once the lists stop."""
    reader = FakeReader({"team/app": {"v1"}, "mine/app": {"v1"}})
    clock = Clock()
    hub, index, _ = rbac_hub(reader, clock)
    grant(index, "alice", "mine", ["app"], "alice")
    ready(hub, "team")
    ready(hub, "mine")
    for namespace in ("team", "mine"):
        rv = first_page(hub, namespace, UserInfo("alice"))
        page = hub.list_began(namespace)
        assert hub.observer(namespace, rv) is not None
        hub.list_ended(page, rv)
    clock.advance(UNUSED_SCOPE_TTL + UNUSED_SCOPE_TTL / 2)
    assert set(hub.sources) == {"mine"}
    clock.advance(120 - UNUSED_SCOPE_TTL)
    assert not hub.sources
    assert not hub._holds and not hub.listed._listing  # the pages let go of what they held
    hub.stop()


def watch_waits_for_its_scope(hub: WatchHub, sequence: int) -> tuple[WatchSlot, list[ScopeSource]]:
    """A watch from a list's ``sequence`` arrives as api/app.py takes it: its slot, its list's record
    held, then the wait for its scope's source."""
    slot = hub.admit("alice")
    hub.hold_listed("team", sequence, slot)
    return slot, waiting_source(hub, "team", slot)


def test_a_watch_from_a_list_keeps_its_record_while_its_scope_s_read_is_slow() -> None:
    """wc84319 (a): the watch took its list's record after its scope's first read; a read longer than
    the records' idle time let the record expire meanwhile, and the watch got 410 (no record, its list
    before the new source's floor). It takes and holds the record before that wait now."""
    held: list[Deferred[None]] = []
    reader = FakeReader({"team/app": {"v1"}}, scope_held=held)
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=3600, idle_scope_ttl=60)
    hub.run()
    rv = first_page(hub, "team")
    sequence = hub.versions.parse(rv)
    assert sequence is not None
    observe = hub.observer("team", rv)
    assert observe is not None
    observe("team/app", ("v1",))
    slot, got = watch_waits_for_its_scope(hub, sequence)
    for _ in range(4):  # the reaps while the baseline is read, 120 s
        clock.advance(30)
    assert not got
    reader.repositories["team/app"] = {"v1", "v2"}
    held[0].callback(None)
    source = got[0]
    listed = hub.listed_at("team", sequence)
    assert sequence < source.floor and listed is not None, "the list's record expired: 410"
    w, sink = watcher()
    assert hub.start(w, source, since=sequence, timeout=None, listed=listed, slot=slot)
    assert [line.split()[:2] for line in sink.lines] == [[b"ADDED", b"team/app:v2"]]
    assert hub.listed.held(listed) == 0  # the watch started: held no more
    clock.advance(60 + 30)
    assert hub.listed_at("team", sequence) is None  # not used since: it expires as any other
    hub.stop()


def test_a_watch_that_gives_up_lets_go_of_its_list_s_record() -> None:
    """Every way a waiting watch ends lets go of the record it held: its client gone before its
    scope's read ended (the slot released), a 410 of another kind (refused by `start`)."""
    held: list[Deferred[None]] = []
    reader = FakeReader({"team/app": {"v1"}}, scope_held=held)
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=3600, idle_scope_ttl=60)
    hub.run()
    rv = first_page(hub, "team")
    sequence = hub.versions.parse(rv)
    assert sequence is not None
    gone, got = watch_waits_for_its_scope(hub, sequence)
    refused, _ = watch_waits_for_its_scope(hub, sequence)
    record = hub.listed_at("team", sequence)
    assert record is not None and hub.listed.held(record) == 2
    gone.release()  # its client went away
    assert hub.listed.held(record) == 1
    held[0].callback(None)
    # Refused (a 410 of another kind: no record given, and its list is before the source's floor).
    assert not hub.start(watcher()[0], got[0], since=sequence, timeout=None, slot=refused)
    assert hub.listed.held(record) == 0 and got
    clock.advance(60 + 30)
    assert hub.listed_at("team", sequence) is None
    hub.stop()
