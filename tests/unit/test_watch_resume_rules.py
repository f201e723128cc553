"""A change of a user's rules between the end of a watch's stream and her client's re-watch from its
last resourceVersion or bookmark is a 410, as it is for a running watch (docs/watch.md, "Access")."""

from __future__ import annotations

import attrs
import pytest
from twisted.internet.task import Clock

from payloadtags.access.rbac import RbacAuthorizer, RbacIndex
from payloadtags.identity import UserInfo
from payloadtags.watch import ScopeSource, WatchHub
from payloadtags.watch.rules import RulesLedger
from tests.unit.test_watch import (
    FakeReader,
    gone,
    grant,
    list_sequence,
    rbac_hub,
    rbac_watcher,
    ready,
)


@attrs.define
class Rbac:
    index: RbacIndex
    authorizer: RbacAuthorizer


RBAC: dict[WatchHub, Rbac] = {}


def ended_stream(
    scope: str | None, paths: list[str], reader: FakeReader | None = None
) -> tuple[WatchHub, ScopeSource, int, Clock]:
    """alice, who may see ``paths`` of `team`, lists ``scope`` and watches it from the list; the stream
    ends on its timeout after a last bookmark (as every client-go stream does). Returns the hub, the
    source, the bookmark's sequence and the clock."""
    reader = reader or FakeReader({"team/app": {"v1"}, "team/secret": {"s1"}})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    RBAC[hub] = Rbac(index, authorizer)
    grant(index, "alice", "team", paths, "alice")
    source = ready(hub, scope)
    listed = list_sequence(hub, scope)
    w, _ = rbac_watcher(authorizer, "alice")
    assert hub.start(w, source, since=listed, timeout=5)
    clock.advance(5)
    assert w.reason == "timeout"
    return hub, source, hub.versions.current, clock


def resumed(hub: WatchHub, source: ScopeSource, since: int, user: str = "alice") -> bool:
    w, _ = rbac_watcher(RBAC[hub].authorizer, user)
    started = hub.start(w, source, since=since, timeout=None)
    if started:
        w.end("test")
    return started


@pytest.mark.parametrize("scope", ["team", None])
def test_a_revocation_between_two_streams_is_410_for_the_resume(scope: str | None) -> None:
    hub, source, bookmark, clock = ended_stream(scope, ["app", "secret"])
    grant(RBAC[hub].index, "alice", "team", ["app"], "alice")
    clock.advance(1)
    assert hub.checked_generation == RBAC[hub].index.generation
    # Her client holds secret:s1, which the history after the bookmark never takes away.
    assert not resumed(hub, source, bookmark)
    # The relist's resourceVersion is after the change: its watch is served.
    assert resumed(hub, source, list_sequence(hub, scope))
    hub.stop()


@pytest.mark.parametrize("scope", ["team", None])
def test_a_grant_between_two_streams_is_410_for_the_resume(scope: str | None) -> None:
    hub, source, bookmark, clock = ended_stream(scope, ["app"])
    grant(RBAC[hub].index, "alice", "team", ["app", "secret"], "alice")
    clock.advance(1)
    # Her client lacks secret:s1, which the history after the bookmark never sends.
    assert not resumed(hub, source, bookmark)
    assert resumed(hub, source, list_sequence(hub, scope))
    hub.stop()


def test_a_revocation_told_while_another_of_her_watches_runs_is_410_for_the_resume() -> None:
    """The change is noted by the access check (another of her watches of the scope runs and is not
    affected: `secret` has no tags), before any resume: a resume from before it is 410, one from after
    it (that other watch's later bookmark) is served."""
    reader = FakeReader({"team/app": {"v1"}})
    hub, source, bookmark, clock = ended_stream("team", ["app", "secret"], reader)
    running, _ = rbac_watcher(RBAC[hub].authorizer, "alice")
    assert hub.start(running, source, since=hub.versions.current, timeout=None)
    grant(RBAC[hub].index, "alice", "team", ["app"], "alice")
    clock.advance(1)
    assert not running.closed  # nothing of `secret` to take away
    later = hub.versions.current
    # Granted again: the rules equal those the first stream ran under, but the one after it was
    # decided by others since the check.
    grant(RBAC[hub].index, "alice", "team", ["app", "secret"], "alice")
    assert not resumed(hub, source, bookmark)
    clock.advance(1)
    assert not resumed(hub, source, later)
    assert resumed(hub, source, hub.versions.current)
    hub.stop()


def test_rules_granted_and_taken_back_while_a_stream_ran_and_ended_before_the_check() -> None:
    """`secret` is granted, a tag pushed there is sent, the stream ends and the grant is taken back,
    all before the access check: the rules are again those noted when it started, but what its client
    holds was decided by the grant."""
    reader = FakeReader({"team/app": {"v1"}})
    hub, source, _, _ = ended_stream("team", ["app"], reader)
    w, sink = rbac_watcher(RBAC[hub].authorizer, "alice")
    assert hub.start(w, source, since=hub.versions.current, timeout=None)
    grant(RBAC[hub].index, "alice", "team", ["app", "secret"], "alice")
    reader.repositories["team/secret"] = {"s1"}
    hub.repository_changed("team/secret")
    assert sink.lines[-1].startswith(b"ADDED team/secret:s1")
    last = hub.versions.current
    w.end("client gone", write=False)
    grant(RBAC[hub].index, "alice", "team", ["app"], "alice")
    assert not resumed(hub, source, last)
    hub.stop()


def test_other_users_rules_and_a_change_undone_before_the_resume_keep_it() -> None:
    """Another user's rules change, and hers change and change back while no stream of hers runs
    (nothing was decided under the other rules): the resume is served."""
    hub, source, bookmark, clock = ended_stream("team", ["app"])
    grant(RBAC[hub].index, "bob", "team", ["secret"], "bob")
    clock.advance(1)
    assert resumed(hub, source, bookmark)
    grant(RBAC[hub].index, "alice", "team", ["app", "secret"], "alice")
    clock.advance(1)
    grant(RBAC[hub].index, "alice", "team", ["app"], "alice")
    clock.advance(1)
    assert resumed(hub, source, bookmark)
    # bob's first watch, from before his change: his rules were first known when it started.
    assert resumed(hub, source, bookmark, "bob")
    hub.stop()


def test_the_rules_noted_are_bounded_and_a_forgotten_user_resumes_from_before_with_410() -> None:
    hub, source, bookmark, _ = ended_stream("team", ["app"])
    hub.rules.max_entries = 1
    authorizer = RBAC[hub].authorizer
    w, _ = rbac_watcher(authorizer, "bob")
    assert hub.start(w, source, since=None, timeout=None)
    w.end("test")
    assert hub.rules.size == 1 and [user for _, user in hub.rules.entries] == [UserInfo("bob")]
    assert not resumed(hub, source, bookmark)  # alice was forgotten: her rules may have changed
    assert resumed(hub, source, hub.versions.current)
    hub.stop()


def test_what_was_noted_goes_with_its_scope_s_source() -> None:
    hub, _, _, clock = ended_stream("team", ["app"])
    assert hub.rules.size == 1
    clock.advance(hub.limits.idle_scope_ttl * 2)
    assert "team" not in hub.sources
    assert hub.rules.size == 0 and not hub.rules.entries and not hub.rules.floors
    assert isinstance(hub.rules, RulesLedger)
    hub.stop()


def test_a_resume_after_a_revocation_ended_the_running_watch_is_410_too() -> None:
    """The running watch ends with 410 on the revocation; a client that reconnects from its last
    bookmark anyway (it missed the ERROR: the connection dropped) gets 410 again."""
    hub, source, _, clock = ended_stream("team", ["app", "secret"])
    w, sink = rbac_watcher(RBAC[hub].authorizer, "alice")
    assert hub.start(w, source, since=hub.versions.current, timeout=None)
    before = hub.versions.current
    grant(RBAC[hub].index, "alice", "team", ["app"], "alice")
    clock.advance(1)
    assert gone(sink)
    assert not resumed(hub, source, before)
    hub.stop()
