"""A list shows tags that the scope's source has not read yet (pushed since its last read, no
notification read yet): the watch from that list, running or resumed, is judged by her rules there as
well (docs/watch.md, "Access"). Lists report what they read, as a real one does (`WatchHub.observer`),
and the watch from a list starts at once, as an informer's does."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from twisted.internet.task import Clock

from payloadtags.identity import UserInfo
from payloadtags.watch import ScopeSource, WatchHub
from payloadtags.watch import watcher as watcher_module
from tests.unit.test_watch import FakeReader, from_list, grant, list_sequence, one_turn, ready
from tests.unit.test_watch_resume_rules import RBAC, _as, _hub, _stream_of, resumed

ALICE = UserInfo("alice")


def _list(hub: WatchHub, reader: FakeReader, scope: str | None, namespaces: list[str], how: str) -> int:
    """A list of ``scope`` by alice, one page or a whole list, that decides in ``namespaces`` and reads
    their `app` repositories (reported as a real list reports them); its sequence."""
    listed = list_sequence(hub, scope, ALICE)
    observe = hub.observer(scope, hub.versions.format(listed))
    assert observe is not None
    decide = hub.list_decisions(scope, ALICE) if how == "whole" else None
    decisions = hub.page_decisions(scope, ALICE) if decide is None else None
    for namespace in namespaces:
        (decide or decisions.decided)(namespace)  # type: ignore[union-attr]
    for namespace in namespaces:
        observe(f"{namespace}/app", sorted(reader.repositories.get(f"{namespace}/app", ())))
    if decisions is not None:
        hub.listed_page(scope, ALICE, decisions)
    return listed


def _unconfirmed(source: ScopeSource) -> set[str]:
    """The repositories where lists showed tags the source has not read."""
    return set(source.unconfirmed_in(source.unconfirmed_namespaces()))


def _settle(clock: Clock) -> None:
    while one_turn(clock):
        pass


def _past_her_share(spaces: list[str], extra: list[str]) -> tuple[WatchHub, FakeReader, Clock, ScopeSource]:
    hub, index, reader, clock = _hub({f"{n}/app": {"v1"} for n in spaces})
    hub.rules.max_entries, hub.rules.user_share = 40, 8
    for n in [*spaces, *extra]:
        grant(index, "alice", n, ["app"], f"a-{n}")
    source = ready(hub, None)
    _stream_of(hub, source, clock, ALICE, None)
    return hub, reader, clock, source


def _streamed(hub: WatchHub, source: ScopeSource, clock: Clock, since: int) -> int:
    """The watch from ``since`` at once; it ends on its timeout: the bookmark's sequence."""
    w, _ = _as(RBAC[hub].authorizer, ALICE)
    assert hub.start(w, source, since=since, timeout=5)
    clock.advance(5)
    assert w.reason == "timeout"
    return hub.versions.current


@pytest.mark.parametrize("how", ["page", "whole"])
def test_a_later_list_s_trim_keeps_what_an_earlier_list_showed_unread(how: str) -> None:
    """review-watch13 F1, the informer flow: her list L1 shows y1/app, which the source has not read
    (at her share: no trim); the watch from L1 runs and ends with a bookmark. Another list of hers
    decides only in y2 (new to her): its trim dropped y1, dated at the floor, and once her access in
    y1 was taken back, L1's client resumed from its bookmark was served and kept y1/app."""
    spaces = [f"k{i}" for i in range(7)]
    hub, reader, clock, source = _past_her_share(spaces, ["y1", "y2"])
    reader.repositories["y1/app"] = {"v1"}  # the source reads it not (no notification)
    l1 = _list(hub, reader, None, [*spaces, "y1"], how)
    _settle(clock)
    bookmark = _streamed(hub, source, clock, l1)
    reader.repositories["y2/app"] = {"v1"}
    hub.repository_changed("y2/app")
    _settle(clock)
    _list(hub, reader, None, ["y2"], how)
    noted = hub.rules.entries[(source, ("alice", ""))]
    assert "y1" in noted.rules and "y2" in noted.rules
    grant(RBAC[hub].index, "alice", "y1", ["other"], "a-y1")
    clock.advance(1)
    assert not resumed(hub, source, bookmark)  # her client holds y1/app:v1
    hub.stop()


def test_the_watch_start_s_trim_keeps_what_its_list_showed_unread() -> None:
    """review-watch13 F2, the informer flow: at her share, her list shows y/app, which the source has
    not read, and the watch from it starts at once: its start's trim dropped y, dated at the list's
    resourceVersion; the stream ended with a bookmark, her access in y was taken back, and the resume
    from the bookmark was served: her client kept y/app."""
    spaces = [f"k{i}" for i in range(8)]
    hub, reader, clock, source = _past_her_share(spaces, ["y"])
    reader.repositories["y/app"] = {"v1"}
    listed = _list(hub, reader, None, [*spaces, "y"], "whole")
    _settle(clock)
    bookmark = _streamed(hub, source, clock, listed)
    assert "y" in hub.rules.entries[(source, ("alice", ""))].rules
    grant(RBAC[hub].index, "alice", "y", ["other"], "a-y")
    clock.advance(1)
    assert not resumed(hub, source, bookmark)
    hub.stop()


@pytest.mark.parametrize("scope", [None, "y"])
@pytest.mark.parametrize("past_share", [False, True], ids=["within-share", "past-share"])
def test_a_running_watch_from_a_list_that_showed_an_unread_push_ends_when_her_access_there_goes(
    scope: str | None, past_share: bool
) -> None:
    """review-watch13 F5: her list shows y/app, which the source has not read; the watch from it runs.
    Her access to y/app is taken back: the access check compared only what the source holds (nothing
    of y/app), and the watch ran on; the ADDED the source's read of y/app then makes is decided by
    the new rules, not sent, and her client kept y/app. It ends with a 410 (her client relists)."""
    spaces = [f"k{i}" for i in range(8)]
    # Of all namespaces, the source holds nothing in y; of y, y/lib.
    held = {f"{n}/app": {"v1"} for n in spaces} if scope is None else {"y/lib": {"v1"}}
    hub, index, reader, clock = _hub(held)
    if past_share:
        hub.rules.max_entries, hub.rules.user_share = 40, 8
    for n in spaces:
        grant(index, "alice", n, ["app"], f"a-{n}")
    grant(index, "alice", "y", ["app", "lib"], "a-y")
    source = ready(hub, scope)
    _stream_of(hub, source, clock, ALICE, scope)
    reader.repositories["y/app"] = {"v1"}
    listed = _list(hub, reader, scope, [*spaces, "y"] if scope is None else ["y"], "whole")
    _settle(clock)
    assert "y/app" not in source.tags
    w, _ = _as(RBAC[hub].authorizer, ALICE)
    assert hub.start(w, source, since=listed, timeout=None)
    hub.reap()  # an all-namespaces watch drops the rules of the namespaces out of its scope
    grant(index, "alice", "y", ["lib"], "a-y")  # y/app taken back, y/lib kept
    clock.advance(1)
    assert w.closed and w.reason == "access rules changed"
    hub.stop()


@pytest.mark.parametrize("how", ["page", "whole"])
def test_a_trim_after_a_list_of_the_unwatched_scope_drops_what_it_showed_its_watch_is_410(how: str) -> None:
    """A list made while nobody watched the scope reports its reads to a record of its own, not to
    the source (none then): the source's `unconfirmed` never holds what it showed. Her paged list
    opens a record at R; her first watch starts the source (its floor past R) and notes her; the
    list's next page decides in y (y/app pushed, not read by the source) and ends. A later list of
    hers past her share drops y, dated at the floor at the earliest: past R. Her access in y taken
    back, the watch from R (its client holds y/app) is 410, as every resume from before the source's
    floor and a drop is (watch14, left open)."""
    spaces = [f"k{i}" for i in range(7)]
    hub, index, reader, clock = _hub({f"{n}/app": {"v1"} for n in spaces})
    hub.rules.max_entries, hub.rules.user_share = 40, 8
    for n in [*spaces, "y", "z"]:
        grant(index, "alice", n, ["app"], f"a-{n}")
    listed = list_sequence(hub, None, ALICE)  # no source: a record
    observe = hub.observer(None, hub.versions.format(listed))
    assert observe is not None and hub.listed_at(None, listed) is not None
    for n in spaces:
        observe(f"{n}/app", ["v1"])
    source = ready(hub, None)
    assert source.floor > listed
    _stream_of(hub, source, clock, ALICE, None)  # notes her
    reader.repositories["y/app"] = {"v1"}  # the source reads it not
    decisions = hub.page_decisions(None, ALICE)  # the list's second page
    decisions.decided("y")
    observe("y/app", ["v1"])  # to the record
    hub.listed_page(None, ALICE, decisions)
    del decisions  # the list has ended
    assert "y/app" not in _unconfirmed(source)
    noted = hub.rules.entries[(source, ("alice", ""))]
    assert "y" in noted.rules
    reader.repositories["z/app"] = {"v1"}
    hub.repository_changed("z/app")
    _settle(clock)
    _list(hub, reader, None, [*spaces, "z"], how)  # past her share: y goes
    assert "y" not in noted.rules and noted.changed_at > listed
    grant(index, "alice", "y", ["other"], "a-y")
    clock.advance(1)
    w, _ = _as(RBAC[hub].authorizer, ALICE)
    assert not from_list(hub, w, source, listed)
    hub.stop()


def test_a_grant_of_a_repository_a_list_showed_unread_leaves_the_running_watch_alone() -> None:
    """docs/watch.md ("Access"): only a revocation where a list showed tags the source has not read
    ends the watch from it. Her list of all namespaces does not show y/app (denied), which the source
    has not read; y/app granted, the watch runs on, and the source's read of it sends its ADDED
    (review-watch16 F2: a check that took those repositories as the scope ended it with 410, and
    every all-namespaces watch of hers relisted)."""
    hub, index, reader, clock = _hub({"k0/app": {"v1"}, "y/lib": {"v1"}})
    grant(index, "alice", "k0", ["app"], "a-k0")
    grant(index, "alice", "y", ["lib"], "a-y")
    source = ready(hub, None)
    _stream_of(hub, source, clock, ALICE, None)
    reader.repositories["y/app"] = {"v1"}  # pushed, the source has not read it
    listed = list_sequence(hub, None, ALICE)
    observe = hub.observer(None, hub.versions.format(listed))
    assert observe is not None
    for repository, tags in sorted(reader.repositories.items()):
        observe(repository, sorted(tags))  # as a list of anyone's that showed y/app would
    _settle(clock)
    assert "y/app" in _unconfirmed(source)
    w, sink = _as(RBAC[hub].authorizer, ALICE)
    assert hub.start(w, source, since=listed, timeout=None)
    grant(index, "alice", "y", ["lib", "app"], "a-y")  # y/app granted
    clock.advance(1)
    assert not w.closed, (w.reason, sink.lines)
    hub.repository_changed("y/app")  # the source reads it: its ADDED shows it
    _settle(clock)
    assert any(line.startswith(b"ADDED y/app:v1") for line in sink.lines), sink.lines
    hub.stop()


def test_a_list_once_ended_leaves_nothing_in_her_entry() -> None:
    """docs/watch.md ("Bounds"): about 530 bytes a user and scope. An entry kept the set of her lists
    reading now (`Noted.lists`) once they had ended, empty: about 870 bytes more, for every user who
    listed once (review-watch16 F1). 2,000 users, each noted by a watch, each list a page read and
    ended: the entries hold what they did before."""
    users = [UserInfo(f"u{i}") for i in range(2000)]
    hub, index, _, _ = _hub({"team/app": {"v1"}})
    for user in users:
        grant(index, user.name, "team", ["app"], f"r-{user.name}")
    source = ready(hub, "team")
    for user in users:  # a watch of hers notes her
        w, _ = _as(RBAC[hub].authorizer, user)
        assert hub.start(w, source, since=None, timeout=None)
        w.end("test")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for user in users:
            list_sequence(hub, "team", user)
            decisions = hub.page_decisions("team", user)
            decisions.decided("team")
            hub.listed_page("team", user, decisions)
            del decisions  # the list has ended
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert all(hub.rules.entries[(source, (user.name, ""))].lists is None for user in users)
    assert kept / len(users) < 200, kept / len(users)
    hub.stop()


def test_an_access_check_looks_only_at_the_unread_repositories_of_the_namespaces_whose_rules_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """review-watch16 (its F5 note): one change of alice's rules in k0, with 3,000 repositories in 300
    other namespaces shown by a list and not read by the source, made each of her 20 watches look at
    all of them (60,020 repositories in one check). Now those of k0 only: none here."""
    hub, index, reader, clock = _hub({"k0/app": {"v1"}})
    grant(index, "alice", "k0", ["app"], "a-k0")
    grant(index, "alice", "ns0", ["app"], "a-ns0")
    source = ready(hub, None)
    listed = list_sequence(hub, None, UserInfo("bob"))
    observe = hub.observer(None, hub.versions.format(listed))
    assert observe is not None
    unread = [f"ns{i % 300}/r{i}" for i in range(3000)]
    for repository in unread:
        reader.repositories[repository] = {"v1"}
        reader.unindexed.add(repository)  # the scope's reads do not see it: it stays unread
        observe(repository, ["v1"])
    _settle(clock)
    assert len(_unconfirmed(source)) == len(unread)
    watches = []
    for _ in range(20):
        w, _ = _as(RBAC[hub].authorizer, ALICE)
        assert hub.start(w, source, since=None, timeout=None)
        watches.append(w)
    looked_at: list[str] = []
    split = watcher_module.split_repository

    def counted(repository: str) -> tuple[str, str] | None:
        looked_at.append(repository)
        return split(repository)

    monkeypatch.setattr(watcher_module, "split_repository", counted)
    grant(index, "alice", "k0", ["app", "other"], "a-k0")  # shows her nothing new
    clock.advance(1)
    monkeypatch.undo()
    assert not any(w.closed for w in watches)
    assert set(looked_at) == {"k0/app"}, len(looked_at)
    hub.stop()
