"""A change of a user's rules between the end of a watch's stream and her client's re-watch from its
last resourceVersion or bookmark is a 410, as it is for a running watch (docs/watch.md, "Access")."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from payloadtags.access.authz import Readable
from payloadtags.access.rbac import PathMatcher, RbacAuthorizer, RbacIndex
from payloadtags.identity import UserInfo
from payloadtags.watch import ScopeSource, Watcher, WatchHub, WatchLimits
from payloadtags.watch.rules import RulesLedger
from tests.unit.test_rbac import cluster_role, cluster_role_binding, role_ref, user_subject
from tests.unit.test_watch import (
    GROUP,
    FakeReader,
    FakeSink,
    gone,
    grant,
    list_sequence,
    one_turn,
    rbac_hub,
    rbac_watcher,
    ready,
    render,
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
    assert hub.rules.size == 1 and [user for _, user in hub.rules.entries] == [("bob", "")]
    assert not resumed(hub, source, bookmark)  # alice was forgotten: her rules may have changed
    assert resumed(hub, source, hub.versions.current)
    hub.stop()


def test_the_bound_is_the_watch_limits_one() -> None:
    """`--watch-resume-rules`: a cluster with more (user, namespace) pairs watched sizes it."""
    hub = WatchHub(FakeReader(), Clock(), WatchLimits(resume_rules=5000))
    assert hub.rules.max_entries == 5000
    assert WatchHub(FakeReader(), Clock()).rules.max_entries == WatchLimits().resume_rules == 100_000


def test_what_was_noted_goes_with_its_scope_s_source() -> None:
    hub, _, _, clock = ended_stream("team", ["app"])
    assert hub.rules.size == 1
    clock.advance(hub.limits.idle_scope_ttl * 2)
    assert "team" not in hub.sources
    assert hub.rules.size == 0 and not hub.rules.entries
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


# -- review-watch2: who is noted, when, and what a change is -------------------------------------------


def _grant_group(index: RbacIndex, group: str, namespace: str, paths: list[str], name: str) -> None:
    rule = {"apiGroups": [GROUP], "resources": ["payloadrepositoryaccesses"], "verbs": ["get"]}
    meta = {"namespace": namespace, "name": name}
    index.upsert("Role", {"kind": "Role", "metadata": meta, "rules": [{**rule, "resourceNames": paths}]})
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    subjects = [{"kind": "Group", "name": group}]
    index.upsert(
        "RoleBinding", {"kind": "RoleBinding", "metadata": meta, "roleRef": ref, "subjects": subjects}
    )


def _as(authorizer: RbacAuthorizer, info: UserInfo) -> tuple[Watcher, FakeSink]:
    sink = FakeSink()
    return Watcher(info.name, sink, render, lambda ref: True, Readable(authorizer, info)), sink


def _stream_of(
    hub: WatchHub, source: ScopeSource, clock: Clock, info: UserInfo, scope: str | None = "team"
) -> int:
    """A list of ``scope`` by ``info`` and a watch from it, which ends on its timeout; its bookmark."""
    listed = list_sequence(hub, scope)
    w, _ = _as(RBAC[hub].authorizer, info)
    assert hub.start(w, source, since=listed, timeout=5)
    clock.advance(5)
    assert w.reason == "timeout"
    return hub.versions.current


def _resumed_as(hub: WatchHub, source: ScopeSource, since: int, info: UserInfo) -> bool:
    w, _ = _as(RBAC[hub].authorizer, info)
    started = hub.start(w, source, since=since, timeout=None)
    if started:
        w.end("test")
    return started


def _hub(repositories: dict[str, set[str]]) -> tuple[WatchHub, RbacIndex, FakeReader, Clock]:
    reader = FakeReader(repositories)
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    RBAC[hub] = Rbac(index, authorizer)
    return hub, index, reader, clock


def _changer(hub: WatchHub, reader: FakeReader, clock: Clock) -> Callable[[str, set[str] | None], None]:
    """``change(repository, tags)``: the registry's tags of ``repository`` are ``tags`` now (None: it is
    gone), the hub told, and every turn of its sources run."""

    def change(repository: str, tags: set[str] | None) -> None:
        if tags is None:
            del reader.repositories[repository]
        else:
            reader.repositories[repository] = tags
        hub.repository_changed(repository)
        while one_turn(clock):
            pass

    return change


def test_leaving_a_group_between_two_streams_is_410_for_the_resume() -> None:
    """Her rules are those of her name and her groups: a request of hers with other groups (a new
    certificate, an OIDC groups claim, a front proxy's X-Remote-Group) is hers all the same."""
    hub, index, _, clock = _hub({"team/app": {"v1"}, "team/secret": {"s1"}})
    grant(index, "alice", "team", ["app"], "alice")
    _grant_group(index, "devs", "team", ["secret"], "devs")
    source = ready(hub, "team")
    in_devs = UserInfo("alice", groups=("devs", "system:authenticated"))
    bookmark = _stream_of(hub, source, clock, in_devs)
    clock.advance(1)
    # Her client holds secret:s1, which she no longer sees.
    assert not _resumed_as(hub, source, bookmark, UserInfo("alice", groups=("system:authenticated",)))
    hub.stop()


@pytest.mark.parametrize("revoked", [True, False])
def test_a_resume_with_a_rotated_credential_is_hers(revoked: bool) -> None:
    """A bound service-account token's credential-id (an extra) changes at each rotation: a revocation
    between two streams is a 410 whatever her extras, and her extras alone are no change."""
    hub, index, _, clock = _hub({"team/app": {"v1"}, "team/secret": {"s1"}})
    name = "system:serviceaccount:team:ctl"
    grant(index, name, "team", ["app", "secret"], "ctl")
    source = ready(hub, "team")

    def extra(jti: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return (("authentication.kubernetes.io/credential-id", (f"JTI={jti}",)),)

    before = UserInfo(name, uid="u1", groups=("system:serviceaccounts",), extra=extra("a"))
    bookmark = _stream_of(hub, source, clock, before)
    if revoked:
        grant(index, name, "team", ["app"], "ctl")
    clock.advance(1)
    assert _resumed_as(hub, source, bookmark, attrs.evolve(before, extra=extra("b"))) is not revoked
    assert len(hub.rules.entries) == 1
    hub.stop()


def test_an_all_namespaces_watch_begun_on_an_empty_scope_is_noted() -> None:
    hub, index, reader, clock = _hub({})
    grant(index, "alice", "team", ["app"], "alice")
    source = ready(hub, None)
    alice = UserInfo("alice")
    w, sink = _as(RBAC[hub].authorizer, alice)
    assert hub.start(w, source, since=list_sequence(hub, None), timeout=5)
    reader.repositories["team/app"] = {"v1"}
    hub.repository_changed("team/app")
    assert any(line.startswith(b"ADDED team/app:v1") for line in sink.lines), sink.lines
    clock.advance(5)
    assert w.reason == "timeout"
    bookmark = hub.versions.current
    grant(index, "alice", "team", ["other"], "alice")  # app revoked
    clock.advance(1)
    assert not _resumed_as(hub, source, bookmark, alice)  # her client holds team/app:v1
    hub.stop()


@pytest.mark.parametrize("checked", [True, False])
def test_a_user_forgotten_while_her_watch_runs_is_noted_again(checked: bool) -> None:
    """Past the bound her entry goes while her watch runs: what it sent is noted again from the rules
    it ran under (at the access check, or at its end), so a later change is still a 410."""
    hub, index, _, clock = _hub({"team/app": {"v1"}, "team/secret": {"s1"}})
    hub.rules.max_entries = 1
    grant(index, "alice", "team", ["app", "secret"], "alice")
    grant(index, "bob", "team", ["app"], "bob")
    source = ready(hub, "team")
    alice = UserInfo("alice")
    w, _ = _as(RBAC[hub].authorizer, alice)
    assert hub.start(w, source, since=list_sequence(hub, "team"), timeout=60)
    b, _ = _as(RBAC[hub].authorizer, UserInfo("bob"))
    assert hub.start(b, source, since=None, timeout=None)  # alice is forgotten (the bound)
    if checked:
        b.end("test")
        grant(index, "carol", "team", ["app"], "carol")  # some change: the check runs
        clock.advance(1)
        assert [key for _, key in hub.rules.entries] == [("alice", "")]  # noted again (bob forgotten)
    clock.advance(60)
    assert w.reason == "timeout"
    bookmark = hub.versions.current
    grant(index, "alice", "team", ["app"], "alice")  # secret revoked while no stream of hers runs
    clock.advance(1)
    assert not _resumed_as(hub, source, bookmark, alice)  # her client holds team/secret:s1
    hub.stop()


def test_past_the_bound_only_the_user_forgotten_resumes_with_410() -> None:
    """A user forgotten costs a 410 to her resumes from before then, not to everyone else's: a user
    who lists while another is forgotten watches from her list."""
    hub, index, _, clock = _hub({"team/app": {"v1"}})
    hub.rules.max_entries = 2
    users = [UserInfo(f"u{i}") for i in range(4)]
    for user in users:
        grant(index, user.name, "team", ["app"], user.name)
    source = ready(hub, "team")
    marks = {user: _stream_of(hub, source, clock, user) for user in users[:3]}  # u2 forgets u0
    listed = list_sequence(hub, "team")  # u3's list
    assert not _resumed_as(hub, source, marks[users[0]], users[0])  # forgets u1
    assert _resumed_as(hub, source, listed, users[3])  # forgets u2
    assert _resumed_as(hub, source, hub.versions.current, users[0])
    assert not _resumed_as(hub, source, marks[users[1]], users[1])
    assert [key for _, key in hub.rules.entries] == [("u0", ""), ("u1", "")]
    hub.stop()


def test_a_list_made_after_her_rules_changed_and_its_watch_are_served() -> None:
    """No watch of hers ran when her rules changed: the access check that saw the change numbers it,
    and a list after that check was decided by the new rules."""
    hub, index, _, clock = _hub({"team/app": {"v1"}, "team/secret": {"s1"}})
    grant(index, "alice", "team", ["app", "secret"], "alice")
    source = ready(hub, "team")
    alice = UserInfo("alice")
    bookmark = _stream_of(hub, source, clock, alice)
    grant(index, "alice", "team", ["app"], "alice")
    clock.advance(1)
    assert hub.checked_generation == index.generation
    assert _resumed_as(hub, source, list_sequence(hub, "team"), alice)
    assert not _resumed_as(hub, source, bookmark, alice)
    hub.stop()


def test_her_rules_in_another_order_are_no_change() -> None:
    """An RBAC relist refills the bindings in the API's order (by name): the same rules, another order."""
    hub, index, _, clock = _hub({"team/app": {"v1"}, "team/secret": {"s1"}})
    grant(index, "alice", "team", ["app"], "zz")
    grant(index, "alice", "team", ["Secret"], "aa")
    source = ready(hub, "team")
    alice = UserInfo("alice")
    before = RBAC[hub].authorizer.rules(alice, "get", "team")
    bookmark = _stream_of(hub, source, clock, alice)
    for store, kind in ((index.roles, "Role"), (index.role_bindings, "RoleBinding")):
        index.replace(kind, [store[key] for key in sorted(store)])
    after = RBAC[hub].authorizer.rules(alice, "get", "team")
    assert {p.source for p in before.patterns} == {p.source for p in after.patterns}
    clock.advance(1)
    assert _resumed_as(hub, source, bookmark, alice)
    hub.stop()


def test_what_is_noted_keeps_no_rules_object() -> None:
    """A fingerprint of the rules, not the matcher (and the decisions it memoized)."""
    hub, index, _, clock = _hub({"team/app": {"v1"}})
    grant(index, "alice", "team", ["app", "a*"], "alice")
    source = ready(hub, "team")
    _stream_of(hub, source, clock, UserInfo("alice"))
    [noted] = hub.rules.entries.values()
    assert all(
        isinstance(fingerprint, bytes) and len(fingerprint) <= 16 for fingerprint in noted.rules.values()
    )
    hub.stop()


# -- review-watch5: a list under rules changed back before its watch; groups as a set; from now on ---------


@pytest.mark.parametrize("checked", [True, False])
@pytest.mark.parametrize("between", ["revoked", "granted"])
@pytest.mark.parametrize("scope", ["team", None])
def test_her_rules_changed_back_between_her_list_and_its_watch_is_410(
    scope: str | None, between: str, checked: bool
) -> None:
    """Her rules A are noted (a stream of hers ran); they become B while none of her watches runs; she
    lists under B (an informer's relist, `kubectl get -w`); A again before her watch from that list.
    Her client holds what B decided (`secret:s1`, revoked since; or lacks it, granted since), and
    A equals what was noted before B: unless the list noted B, the watch is served and her client
    keeps the revoked tag for good (or never gets the granted one). With or without an access check
    between the change and the list."""
    hub, index, _, clock = _hub({"team/app": {"v1"}, "team/secret": {"s1"}})
    first, then = (["app"], ["app", "secret"]) if between == "revoked" else (["app", "secret"], ["app"])
    grant(index, "alice", "team", first, "alice")
    source = ready(hub, scope)
    alice = UserInfo("alice")
    _stream_of(hub, source, clock, alice, scope)
    grant(index, "alice", "team", then, "alice")
    if checked:
        clock.advance(1)
    listed = list_sequence(hub, scope, alice)
    grant(index, "alice", "team", first, "alice")
    clock.advance(1)
    assert not _resumed_as(hub, source, listed, alice)
    assert _resumed_as(hub, source, list_sequence(hub, scope, alice), alice)
    hub.stop()


def test_a_list_notes_only_users_already_noted_and_only_a_change() -> None:
    """A list looks her up once: a user never noted in the scope is not noted by her list (that would
    cost an entry per user and namespace of every list), and rules that did not change date nothing
    (her resumes from before the list are served)."""
    hub, index, _, clock = _hub({"team/app": {"v1"}})
    grant(index, "alice", "team", ["app"], "alice")
    grant(index, "bob", "team", ["app"], "bob")
    source = ready(hub, "team")
    alice = UserInfo("alice")
    bookmark = _stream_of(hub, source, clock, alice)
    [(noted_before, changed_before)] = [(dict(n.rules), n.changed_at) for n in hub.rules.entries.values()]
    list_sequence(hub, "team", UserInfo("bob"))
    list_sequence(hub, "team", alice)
    assert [key for _, key in hub.rules.entries] == [("alice", "")] and hub.rules.size == 1
    [noted] = hub.rules.entries.values()
    assert (noted.rules, noted.changed_at) == (noted_before, changed_before)
    assert _resumed_as(hub, source, bookmark, alice)
    hub.stop()


@pytest.mark.parametrize("groups", [("g1", "g2"), ("g2", "g1")])
def test_her_groups_in_another_order_are_the_same_groups(groups: tuple[str, str]) -> None:
    """A change of her rules through an RBAC object, seen as she watches, is dated by the access check
    that saw it (a list made after it was decided by the new rules) whatever order her request gives
    her groups in: they were compared in order, and another order dated the change now, a 410 for the
    watch from that list. (The list here notes nothing: `list_sequence` without her.)"""
    hub, index, _, clock = _hub({"team/app": {"v1"}, "team/secret": {"s1"}})
    _grant_group(index, "g1", "team", ["app"], "g1")
    source = ready(hub, "team")
    _stream_of(hub, source, clock, UserInfo("alice", groups=("g1", "g2")))
    _grant_group(index, "g2", "team", ["secret"], "g2")
    clock.advance(1)  # the access check saw it (no watch of hers runs)
    listed = list_sequence(hub, "team")
    assert _resumed_as(hub, source, listed, UserInfo("alice", groups=groups))
    hub.stop()


@pytest.mark.parametrize("how", ["rules", "groups"])
def test_a_watch_of_the_changes_from_now_on_is_never_410_for_her_rules(how: str) -> None:
    """`sendInitialEvents=false` from `""` or `"0"` asks for the changes from now on, no past: a change
    of her rules not yet dated by an access check (or one through her groups, dated when seen) was
    dated after "now", and the watch got a 410, which kube-apiserver never answers to an unset
    resourceVersion. Her rules are noted all the same: a resume of hers from before them is 410."""
    hub, index, _, clock = _hub({"team/app": {"v1"}, "team/secret": {"s1"}})
    grant(index, "alice", "team", ["app"], "alice")
    _grant_group(index, "devs", "team", ["secret"], "devs")
    source = ready(hub, "team")
    alice = UserInfo("alice", groups=("staff",))
    bookmark = _stream_of(hub, source, clock, alice)
    if how == "rules":
        grant(index, "alice", "team", ["app", "secret"], "alice")  # no access check yet
    else:
        alice = UserInfo("alice", groups=("staff", "devs"))
    w, _ = _as(RBAC[hub].authorizer, alice)
    assert hub.start(w, source, since=hub.versions.current, timeout=None, from_now=True)
    w.end("test")
    assert not _resumed_as(hub, source, bookmark, alice)
    hub.stop()


# -- watchfix: a page is checked by the rules of each of its decisions, recorded as made ---------------


@pytest.mark.parametrize("between", ["revoked", "granted"])
@pytest.mark.parametrize("scope", ["team", None])
def test_a_page_decided_by_rules_changed_back_before_it_ended_is_a_change(
    scope: str | None, between: str
) -> None:
    """Her rules A are noted; her list's first page takes its resourceVersion under A; a later page
    decides under A, then B (checked), then A again (its reads span reactor turns). Once it is read her
    rules equal those noted, but the page showed what B decided: each decision is compared with the
    rules noted as it is made (B's is a change, noted then), and the watch from the list is 410. A page
    decided under A alone notes nothing."""
    hub, index, _, clock = _hub({"team/app": {"v1"}, "team/secret": {"s1"}})
    first, then = (["app", "secret"], ["app"]) if between == "revoked" else (["app"], ["app", "secret"])
    grant(index, "alice", "team", first, "alice")
    source = ready(hub, scope)
    alice = UserInfo("alice")
    _stream_of(hub, source, clock, alice, scope)
    listed = list_sequence(hub, scope, alice)
    unchanged = hub.page_decisions(scope, alice)
    unchanged.decided("team")
    unchanged.decided("team")
    hub.listed_page(scope, alice, unchanged)
    assert _resumed_as(hub, source, listed, alice)
    decisions = hub.page_decisions(scope, alice)
    decisions.decided("team")
    grant(index, "alice", "team", then, "alice")
    clock.advance(1)
    decisions.decided("team")
    grant(index, "alice", "team", first, "alice")
    clock.advance(1)
    decisions.decided("team")
    assert decisions.namespaces == {"team"}
    hub.listed_page(scope, alice, decisions)
    assert not _resumed_as(hub, source, listed, alice)
    assert _resumed_as(hub, source, list_sequence(hub, scope, alice), alice)
    hub.stop()


@pytest.mark.parametrize("how", ["page", "whole"])
def test_a_list_s_decisions_note_no_user_not_noted_and_namespaces_only_hers_within_her_share(
    how: str,
) -> None:
    """As a list: a page's decisions (or a whole list's) add no entry for a user not noted in the scope
    (bob's: a user who only lists costs nothing), and note a namespace not noted for a user noted there
    (here one with no tags: an all-namespaces scope notes those with tags) with her rules in it, as a
    first noting (no change), within her share: past it, those out of her scope go (their leaving
    dated), and the ledger's size is that of its entries."""
    hub, index, _, clock = _hub({"team/app": {"v1"}})
    hub.rules.max_entries, hub.rules.user_share = 100, 4
    grant(index, "alice", "team", ["app"], "alice")
    grant(index, "alice", "other", ["app"], "alice")
    grant(index, "bob", "team", ["app"], "bob")
    source = ready(hub, None)
    alice, bob = UserInfo("alice"), UserInfo("bob")
    _stream_of(hub, source, clock, alice, None)
    [(noted_before, changed_before)] = [(dict(n.rules), n.changed_at) for n in hub.rules.entries.values()]
    assert set(noted_before) == {"team"}

    def decide(user: UserInfo, namespaces: list[str]) -> None:
        if how == "page":
            decisions = hub.page_decisions(None, user)
            for namespace in namespaces:
                decisions.decided(namespace)
            hub.listed_page(None, user, decisions)
        else:
            decided = hub.list_decisions(None, user)
            assert decided is not None
            for namespace in namespaces:
                decided(namespace)

    for user in (alice, bob):
        decide(user, ["team", "other"])
    [noted] = hub.rules.entries.values()
    assert [key for _, key in hub.rules.entries] == [("alice", "")] and hub.rules.size == 2
    assert hub.access_rules is not None
    other = hub.access_rules(alice, "other").fingerprint
    assert (noted.rules, noted.changed_at) == ({**noted_before, "other": other}, changed_before)
    for user in (alice, bob):
        decide(user, [f"empty{i}" for i in range(20)])
    assert [key for _, key in hub.rules.entries] == [("alice", "")]
    assert "team" in noted.rules and noted.cost <= hub.rules.share
    assert hub.rules.size == noted.cost
    assert noted.changed_at > changed_before  # those dropped: a resume from before them is 410
    hub.stop()


# -- watchfix2: a decision is compared as it is made; her groups are taken with every namespace compared --


@pytest.mark.parametrize("decided", ["as noted", "changed and undone"])
@pytest.mark.parametrize("scope", ["team", None])
def test_a_page_spanning_a_change_a_later_list_noted_keeps_that_list_s_watch(
    scope: str | None, decided: str
) -> None:
    """Her rules A are noted; a page of her list L1 decides by A ("as noted"), or by B, not noted yet and
    undone before L1's page ends ("changed and undone"); the access check sees the rules after that (B,
    for good; or A again), and another client of hers lists (L2), wholly by them, noting and dating
    the change; any RBAC edit (bob's) then leaves the check behind; and L1's page ends. Compared with
    the rules noted when the page ended, its decision re-noted the change, dated then (no check since
    the edit): after L2's resourceVersion, a spurious 410 for L2's watch. Compared as it is made, it
    is a change only when the rules differed from those noted then, dated then. L1's watch is 410
    whatever: what its client holds was decided by other rules than those now."""
    hub, index, _, clock = _hub({"team/app": {"v1"}, "team/secret": {"s1"}})
    grant(index, "alice", "team", ["app"], "alice")
    source = ready(hub, scope)
    alice = UserInfo("alice")
    _stream_of(hub, source, clock, alice, scope)
    first = list_sequence(hub, scope, alice)
    decisions = hub.page_decisions(scope, alice)
    if decided == "as noted":
        decisions.decided("team")
        grant(index, "alice", "team", ["app", "secret"], "alice")
    else:
        grant(index, "alice", "team", ["app", "secret"], "alice")
        decisions.decided("team")
        grant(index, "alice", "team", ["app"], "alice")
    clock.advance(1)
    assert hub.checked_generation == index.generation
    later = list_sequence(hub, scope, alice)
    grant(index, "bob", "team", ["app"], "bob")
    hub.listed_page(scope, alice, decisions)
    assert _resumed_as(hub, source, later, alice)
    assert not _resumed_as(hub, source, first, alice)
    hub.stop()


def _in_and_out_of_devs() -> tuple[WatchHub, ScopeSource, Clock, UserInfo, UserInfo]:
    """alice may see `app` in `team` and `other`, and `secret` in `team` through the group devs; an
    all-namespaces source; her request in devs and one not."""
    hub, index, _, clock = _hub({"team/app": {"v1"}, "team/secret": {"s1"}, "other/app": {"v1"}})
    grant(index, "alice", "team", ["app"], "alice")
    grant(index, "alice", "other", ["app"], "alice")
    _grant_group(index, "devs", "team", ["secret"], "devs")
    source = ready(hub, None)
    in_devs = UserInfo("alice", groups=("devs", "system:authenticated"))
    return hub, source, clock, in_devs, UserInfo("alice", groups=("system:authenticated",))


@pytest.mark.parametrize("between", ["pinned to other", "pinned to none noted", "page in other"])
def test_a_list_of_hers_with_other_groups_compares_every_namespace_before_taking_them(between: str) -> None:
    """Her -A stream in devs ends (a bookmark; her rules noted in `team` and `other`, the access check
    long done). Her request without devs lists -A pinned by `metadata.namespace` to `other`, where her
    groups decide nothing, or to a namespace not noted for her, or reads a page that decides only in
    `other`: it compared her rules in no namespace her groups matter in, and took her new groups as
    noted. Her resume from the bookmark without devs then saw `team` changed as by an RBAC object,
    dated by that old access check: served, and her client kept `secret:s1`. With other groups than
    those noted, a list compares every namespace noted for her, and dates the change now."""
    hub, source, clock, in_devs, out = _in_and_out_of_devs()
    bookmark = _stream_of(hub, source, clock, in_devs, None)
    clock.advance(1)
    if between == "page in other":
        decisions = hub.page_decisions(None, out)
        decisions.decided("other")
        hub.listed_page(None, out, decisions)
    else:
        pinned = "other" if between == "pinned to other" else "elsewhere"
        Deferred.fromCoroutine(hub.open_list(None, out, [pinned]))
    assert not _resumed_as(hub, source, bookmark, out)
    hub.stop()


def test_a_page_decision_with_other_groups_compares_every_namespace() -> None:
    """A decision of a page of hers made with other groups than those noted, where they change her
    rules: the change is noted and dated then, in every namespace noted for her, and her groups taken."""
    hub, source, clock, in_devs, out = _in_and_out_of_devs()
    bookmark = _stream_of(hub, source, clock, in_devs, None)
    clock.advance(1)
    decisions = hub.page_decisions(None, out)
    decisions.decided("team")
    [noted] = hub.rules.entries.values()
    assert noted.groups == out.groups and noted.changed_at > bookmark
    assert not _resumed_as(hub, source, bookmark, out)
    hub.stop()


def _watching_keep_with_ci_granted() -> tuple[
    FakeReader, Clock, WatchHub, RbacIndex, ScopeSource, Watcher, FakeSink
]:
    """Alice's all-namespaces watch, begun and checked, with `keep/x:v1` and her grants in `keep` and
    (still empty) `ci`: the reader, the clock, the hub (in ``RBAC``), its index, the source, the watch
    and its sink."""
    reader = FakeReader({"keep/x": {"v1"}})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    RBAC[hub] = Rbac(index, authorizer)
    grant(index, "alice", "keep", ["x"], "alice")
    grant(index, "alice", "ci", ["app"], "alice")
    source = ready(hub, None)
    w, sink = rbac_watcher(authorizer, "alice")
    assert hub.start(w, source, since=None, timeout=None)
    hub.check_access()
    return reader, clock, hub, index, source, w, sink


def _change_ci_app(reader: FakeReader, hub: WatchHub, clock: Clock, tags: set[str] | None) -> None:
    """`ci/app` given ``tags`` (None: deleted), the hub told, and its work done."""
    if tags is None:
        del reader.repositories["ci/app"]
    else:
        reader.repositories["ci/app"] = tags
    hub.repository_changed("ci/app")
    while one_turn(clock):
        pass


def test_a_resume_after_the_reap_dropped_a_namespace_of_an_all_namespaces_watch_and_a_revocation() -> None:
    """An all-namespaces watch sends `ci/app:v1`'s ADDED, then its DELETED (`ci` empties); the reap
    drops the rules of `ci`, gone from the scope, and the stream breaks before its client reads the
    DELETED. Her access in `ci` is taken back and the client resumes from the ADDED: a 410, as for any
    revocation between two streams. The reap dropped the rules before the ledger was told them (only at
    the watch's end): the resume was served, the DELETED replayed was decided by the new rules and
    dropped, and the client kept `ci/app:v1` (the review's resume_after_reap.py)."""
    reader, clock, hub, index, source, w, sink = _watching_keep_with_ci_granted()
    _change_ci_app(reader, hub, clock, {"v1"})
    added = [line for line in sink.lines if line.startswith(b"ADDED ci/app:v1")]
    assert added, sink.lines
    _change_ci_app(reader, hub, clock, None)
    assert sink.lines[-1].startswith(b"DELETED ci/app:v1"), sink.lines
    hub.reap()
    assert [namespace for namespace, _ in w.rules_seen()] == ["keep"]  # still forgotten by the watch
    w.stopProducing()  # the connection breaks: its client read up to the ADDED
    grant(index, "alice", "ci", ["other"], "alice")
    clock.advance(1)
    assert hub.checked_generation == index.generation
    assert not resumed(hub, source, int(added[-1].split()[2]))
    hub.stop()


def _app_readable_by_alice(
    reader: FakeReader, max_entries: int, user_share: int | None
) -> tuple[WatchHub, ScopeSource, RbacAuthorizer, Clock]:
    """A hub over ``reader`` whose rules ledger keeps ``max_entries`` (``user_share`` a user), where one
    ClusterRole bound to alice lets her read every namespace's `app`: the hub, its all-namespaces
    source (ready), the authorizer and the clock."""
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    RBAC[hub] = Rbac(index, authorizer)
    hub.rules.max_entries = max_entries
    hub.rules.user_share = user_share
    rule = {"apiGroups": [GROUP], "resources": ["payloadrepositoryaccesses"], "verbs": ["get"]}
    index.upsert("ClusterRole", cluster_role("reader", {**rule, "resourceNames": ["app"]}))
    index.upsert(
        "ClusterRoleBinding",
        cluster_role_binding("reader", role_ref("ClusterRole", "reader"), user_subject("alice")),
    )
    return hub, ready(hub, None), authorizer, clock


def churned_all_namespaces_watch(
    max_entries: int,
    namespaces: int,
    user_share: int | None = None,
    first: Callable[[WatchHub, ScopeSource, Clock], None] | None = None,
) -> tuple[WatchHub, ScopeSource, Watcher, int, Clock]:
    """alice's all-namespaces watch (one ClusterRole bound to her: no RBAC change at all) while
    ``namespaces`` CI namespaces each get a tag that is deleted, a reap after each; ``first``, given the
    hub, the source and the clock, runs before her watch starts. Returns the hub, the source, the watch,
    the sequence once it started, and the clock."""
    reader = FakeReader({"keep/app": {"v1"}})
    hub, source, authorizer, clock = _app_readable_by_alice(reader, max_entries, user_share)
    if first is not None:
        first(hub, source, clock)
    w, _ = rbac_watcher(authorizer, "alice")
    assert hub.start(w, source, since=None, timeout=None)
    hub.check_access()
    started = hub.versions.current
    for n in range(namespaces):
        repository = f"ci-{n}/app"
        reader.repositories[repository] = {"v1"}
        hub.repository_changed(repository)
        while one_turn(clock):
            pass
        del reader.repositories[repository]
        hub.repository_changed(repository)
        while one_turn(clock):
            pass
        hub.reap()
    return hub, source, w, started, clock


def test_the_bound_of_the_rules_noted_holds_for_a_lone_user_whose_watch_reaps_many_namespaces() -> None:
    """Each reap notes the namespaces an all-namespaces watch drops (for its client's resumes), and
    nothing took a namespace out of a user's entry: the bound evicted only other users, so a lone
    user's entry grew with every namespace that came and went (the review's ledger_growth.py: 10,001
    noted against a bound of 50), and each watch, access check and list of hers compared them all.
    Her oldest namespaces go first now, and her resumes from before are 410 (what they held there can
    no longer be judged); a resume from after is served."""
    hub, source, w, started, _ = churned_all_namespaces_watch(max_entries=8, namespaces=40)
    (noted,) = hub.rules.entries.values()
    assert len(noted.rules) <= 8 and hub.rules.size <= 8, (len(noted.rules), hub.rules.size)  # were 41
    assert "ci-39" in noted.rules and "ci-0" not in noted.rules
    assert not resumed(hub, source, started)
    assert resumed(hub, source, hub.versions.current)
    w.end("test")
    hub.stop()


def test_a_user_noted_in_more_namespaces_than_the_bound_resumes_from_before_with_410() -> None:
    """The ledger itself: a user noted in more namespaces than the bound in all keeps the newest, and
    her entry, incomplete, dates a change by when those it dropped went out of her scope (her stream
    sent there after ``before``): a resume from before is 410, one from after served."""
    hub, source, _, _ = ended_stream("team", ["app"])
    ledger = RulesLedger(max_entries=4)
    alice = UserInfo("alice")
    matcher = RBAC[hub].index.matcher(alice, "get", "team")
    before = hub.versions.current
    assert ledger.admits(source, alice, ["team"], lambda _: matcher, before, hub.versions.next)
    for n in range(10):
        hub.versions.next()  # what her stream sent in ns-n, and its DELETED
        ledger.saw(source, alice, [(f"ns-{n}", [matcher])], lambda _: matcher, hub.versions.next)
    (noted,) = ledger.entries.values()
    assert ledger.size == len(noted.rules) <= 4 and "ns-9" in noted.rules  # were 11
    assert not ledger.admits(source, alice, [], lambda _: matcher, before, hub.versions.next)
    assert ledger.admits(source, alice, [], lambda _: matcher, hub.versions.current, hub.versions.next)
    hub.stop()


def test_one_users_churn_keeps_to_her_share_and_another_users_resume_is_served() -> None:
    """The bound of one user's rules was the bound of all (100,000): alice's all-namespaces watch, noting
    every CI namespace it drops, evicted every other user of the ledger before her own oldest
    namespaces went, and bob's resume was 410 (a relist for each of his informers), however little he
    had noted. Her entry keeps to her share now (a tenth of the bound, at least 4,096: here 4 of 16), and
    bob, noted in one namespace, keeps his."""
    ended: list[int] = []

    def bobs_ended_stream(hub: WatchHub, source: ScopeSource, clock: Clock) -> None:
        grant(RBAC[hub].index, "bob", "keep", ["app"], "bob")
        w, _ = rbac_watcher(RBAC[hub].authorizer, "bob")
        assert hub.start(w, source, since=None, timeout=5)
        clock.advance(5)
        assert w.reason == "timeout"
        ended.append(hub.versions.current)

    hub, source, w, started, _ = churned_all_namespaces_watch(
        max_entries=16, namespaces=40, user_share=4, first=bobs_ended_stream
    )
    alice = hub.rules.entries[(source, ("alice", ""))]
    assert len(alice.rules) <= 4 and "ci-39" in alice.rules, sorted(alice.rules)
    assert (source, ("bob", "")) in hub.rules.entries  # was evicted by her churn
    assert resumed(hub, source, ended[0], user="bob")  # was 410
    assert not resumed(hub, source, started)  # hers from before her oldest went: as before
    w.end("test")
    hub.stop()


def test_a_users_share_of_the_rules_noted_is_a_tenth_of_the_bound_at_least_4096() -> None:
    assert RulesLedger().share == 10_000
    assert RulesLedger(max_entries=20_000).share == 4096
    assert RulesLedger(max_entries=50).share == 25  # never more than half the bound (was 50)
    assert RulesLedger(max_entries=6000).share == 3000  # was 4096
    assert RulesLedger(max_entries=50, user_share=5).share == 5
    assert RulesLedger(max_entries=50, user_share=80).share == 25
    assert RulesLedger(max_entries=1).share == 1


@pytest.mark.parametrize(("max_entries", "namespaces"), [(64, 80), (8, 40)])
def test_with_a_small_bound_one_users_churn_evicts_no_other_user(max_entries: int, namespaces: int) -> None:
    """With --watch-resume-rules below about 4,600 her share (a tenth of the bound, at least 4,096) was
    the whole bound, and her trim waits for an eighth of it more: alice's all-namespaces watch churning
    CI namespaces evicted bob and carol first, and their resumes were 410 (review-watch6 F3,
    small_bound_evicts.py). Her share is at most half the bound now."""
    others: list[tuple[UserInfo, PathMatcher, int]] = []

    def first(hub: WatchHub, source: ScopeSource, clock: Clock) -> None:
        for name in ("bob", "carol"):
            user = UserInfo(name)
            matcher = RBAC[hub].index.matcher(user, "get", "team")
            since = hub.versions.current
            assert hub.rules.admits(
                source, user, ["team"], functools.partial(_same, matcher), since, hub.versions.next
            )
            others.append((user, matcher, since))

    hub, source, w, _, _ = churned_all_namespaces_watch(max_entries, namespaces, first=first)
    assert [key[1][0] for key in hub.rules.entries] == ["bob", "carol", "alice"]  # were ["alice"]
    assert hub.rules.size <= max_entries
    for user, matcher, since in others:
        rules = functools.partial(_same, matcher)
        assert hub.rules.admits(source, user, ["team"], rules, since, hub.versions.next)  # were 410
    w.end("test")
    hub.stop()


def test_the_namespaces_that_left_a_scope_that_shrank_go_within_her_share() -> None:
    """alice's all-namespaces scope has 40 namespaces, past her share (4): all are kept, and her next
    trim waited for an eighth of her share more than it kept, so once 39 of them left (the reap noting
    each gone) she kept all 40 for ever, each compared at every watch start, access check and list of
    hers (review-watch6 F4, sticky_trimmed_to.py: 200 against a share of 16). Those that left go within
    her share now, at the reap; and at her next watch start when they left with no watch of hers
    running."""
    reader = FakeReader({f"ns{i}/app": {"v1"} for i in range(40)})
    hub, source, authorizer, clock = _app_readable_by_alice(reader, 1000, 4)
    w, _ = rbac_watcher(authorizer, "alice")
    assert hub.start(w, source, since=None, timeout=None)
    hub.check_access()
    (noted,) = hub.rules.entries.values()
    assert len(noted.rules) == 40
    for i in range(1, 20):  # these leave while her watch runs: the reap notes them gone
        del reader.repositories[f"ns{i}/app"]
        hub.repository_changed(f"ns{i}/app")
        while one_turn(clock):
            pass
        hub.reap()
    assert len(noted.rules) <= 21 + 4, sorted(noted.rules)  # were 40
    w.end("test")
    for i in range(20, 40):  # these with no watch of hers running
        del reader.repositories[f"ns{i}/app"]
        hub.repository_changed(f"ns{i}/app")
        while one_turn(clock):
            pass
    hub.reap()
    w, _ = rbac_watcher(authorizer, "alice")
    assert hub.start(w, source, since=None, timeout=None)
    assert "ns0" in noted.rules and len(noted.rules) <= 4, sorted(noted.rules)  # were 40
    assert hub.rules.size == len(noted.rules)
    w.end("test")
    hub.stop()


def test_the_reap_keeps_the_rules_it_could_not_tell_the_ledger_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ledger fails once as the reap tells it the rules of `ci`, gone from the scope: the watch keeps
    them (dropped untold, a resume from before the DELETED that emptied `ci`, after a revocation there,
    would be served), the reap completes (raising, it would stop the LoopingCall: no source reaped
    again), and the next reap tells them and drops them."""
    reader, clock, hub, _, _, w, _ = _watching_keep_with_ci_granted()
    for tags in ({"v1"}, None):
        _change_ci_app(reader, hub, clock, tags)
    real = RulesLedger.saw
    told: list[list[str]] = []

    def failing_once(self: RulesLedger, *args: Any, **kwargs: Any) -> None:
        told.append([namespace for namespace, _ in args[2]])
        if len(told) == 1:
            raise RuntimeError("the ledger failed")
        real(self, *args, **kwargs)

    monkeypatch.setattr(RulesLedger, "saw", failing_once)
    hub.reap()  # does not raise
    assert told == [["ci"]]
    assert [namespace for namespace, _ in w.rules_seen()] == ["keep", "ci"]  # kept: not told
    assert not any("ci" in noted.rules for noted in hub.rules.entries.values())
    hub.reap()
    assert told == [["ci"], ["ci"]]
    assert [namespace for namespace, _ in w.rules_seen()] == ["keep"]
    (noted,) = hub.rules.entries.values()
    assert "ci" in noted.rules
    w.end("test")
    hub.stop()


@pytest.mark.parametrize(("max_entries", "user_share"), [(4, None), (100, 2)])
def test_a_scope_past_the_bound_or_her_share_serves_every_informer_cycle_and_resume(
    max_entries: int, user_share: int | None
) -> None:
    """alice may read `app` in 6 namespaces (one Role each, no change at all); her all-namespaces
    scope has more than the bound (4), or than her share of it (2). Each watch start noted every
    namespace of the scope, went past it and trimmed her oldest, dating a change after the list the
    watch started from: every watch from a list, and every resume from a stream's last bookmark, was
    410, for ever (review-watch4 F1, its list_watch_loop.py). The namespaces of the scope now are never
    trimmed: each cycle is served, and a revocation in one of them between two streams is 410 still."""
    reader = FakeReader({f"ns{i}/app": {"v1"} for i in range(6)})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    RBAC[hub] = Rbac(index, authorizer)
    hub.rules.max_entries = max_entries
    hub.rules.user_share = user_share
    for i in range(6):
        grant(index, "alice", f"ns{i}", ["app"], f"a{i}")
    source = ready(hub, None)
    hub.check_access()
    while one_turn(clock):
        pass
    outcomes = []
    for _ in range(4):  # an informer: a list, a watch from it, a resume from its last bookmark
        listed = list_sequence(hub, None, UserInfo("alice"))
        w, _ = rbac_watcher(authorizer, "alice")
        started = hub.start(w, source, since=listed, timeout=5)
        clock.advance(5)
        assert w.reason == ("timeout" if started else None)
        outcomes += [started, resumed(hub, source, hub.versions.current)]
    assert outcomes == [True] * 8  # were all False
    ended = hub.versions.current
    grant(index, "alice", "ns3", ["other"], "a3")  # ns3's `app` taken back
    clock.advance(1)
    assert not resumed(hub, source, ended)
    hub.stop()


def _same(matcher: PathMatcher, namespace: str) -> PathMatcher:
    return matcher


def test_a_lone_user_past_her_share_evicts_no_other_user() -> None:
    """review-watch4 F4: alice's all-namespaces watch reaps CI namespaces until her entry alone is past
    the bound (8); the least recently used went first, bob and carol, noted in one namespace each,
    then hers was trimmed anyway, and their resumes were 410. She keeps to her share (4) now, first."""
    hub, source, w, _, clock = churned_all_namespaces_watch(max_entries=8, namespaces=5, user_share=4)
    ledger = hub.rules
    others = []
    for name in ("bob", "carol"):
        user = UserInfo(name)
        matcher = RBAC[hub].index.matcher(user, "get", "team")
        since = hub.versions.current
        rules = functools.partial(_same, matcher)
        assert ledger.admits(source, user, ["team"], rules, since, hub.versions.next)
        others.append((user, matcher, since))
    reader = hub.reader
    assert isinstance(reader, FakeReader)
    change = _changer(hub, reader, clock)
    for n in range(5, 10):
        for tags in ({"v1"}, None):
            change(f"ci-{n}/app", tags)
        hub.reap()
    assert [key[1][0] for key in ledger.entries] == ["bob", "carol", "alice"]
    assert ledger.size <= 8
    for user, matcher, since in others:
        rules = functools.partial(_same, matcher)
        assert ledger.admits(source, user, ["team"], rules, since, hub.versions.next)
    w.end("test")
    hub.stop()


def _left_came_back_and_left_again(redate: bool, back: str = "watch") -> bool:
    """alice's all-namespaces watch W1 sees `x/app` deleted (the reap notes `x` gone), then back: W1
    sends its ADDED, and its client reads up to it (``back``: "watch"). `x/app` is deleted again, while
    W1 runs (``redate``: the reap notes it gone again, and W1 breaks before its client reads the
    DELETED) or once W1 broke (no watch of hers running). Or W1 ends before `x/app` comes back, and a
    list of hers shows it (``back``: "page", a page of it deciding in `x`; "pinned", one pinned to `x`
    by a `metadata.namespace` selector; "whole", a whole list, no ``limit``), then it is deleted again.
    A second client of hers watches, one CI namespace comes and goes (her share is 2: the trim drops
    `x`), her access in `x` is taken back, and the client that holds `x/app:v1` resumes from the ADDED
    or the list: whether it is served (it holds `x/app:v1`, deleted where she may no longer see)."""
    reader = FakeReader({"keep/app": {"v1"}, "x/app": {"v1"}})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    RBAC[hub] = Rbac(index, authorizer)
    hub.rules.max_entries, hub.rules.user_share = 100, 2
    for namespace in ("keep", "x", "ci"):
        grant(index, "alice", namespace, ["app"], f"a-{namespace}")
    source = ready(hub, None)
    alice = UserInfo("alice")
    change = _changer(hub, reader, clock)
    w1, sink = rbac_watcher(authorizer, "alice")
    assert hub.start(w1, source, since=None, timeout=None)
    hub.check_access()
    change("x/app", None)
    hub.reap()
    (noted,) = hub.rules.entries.values()
    assert "x" in noted.gone
    if back != "watch":
        w1.stopProducing()
    change("x/app", {"v1"})
    if back == "watch":
        added = [line for line in sink.lines if line.startswith(b"ADDED x/app:v1")]
        assert added, sink.lines
        since = int(added[-1].split()[2])
    else:
        since = _listed_in_x(hub, alice, back)
    if redate:
        change("x/app", None)
        hub.reap()
        w1.stopProducing()  # its client read up to the ADDED
    else:
        w1.stopProducing()
        change("x/app", None)
    w2, _ = rbac_watcher(authorizer, "alice")
    assert hub.start(w2, source, since=None, timeout=None)
    hub.check_access()
    change("ci/app", {"v1"})
    change("ci/app", None)
    hub.reap()
    grant(index, "alice", "x", ["other"], "a-x")  # her access in `x` taken back
    clock.advance(1)
    served = resumed(hub, source, since)
    w2.end("test")
    hub.stop()
    return served


def _listed_in_x(hub: WatchHub, alice: UserInfo, how: str) -> int:
    """The sequence of a list of the all-namespaces scope by alice that shows `x/app:v1` (``how``: a
    page of it, "page"; pinned to `x`, "pinned"; a whole list, "whole"), its access decisions told as
    the server tells them."""
    if how == "pinned":
        rv: list[tuple[str, object]] = []
        Deferred.fromCoroutine(hub.open_list(None, alice, ["x"])).addCallback(rv.append)
        listed = hub.versions.parse(rv[0][0])
        assert listed is not None
        return listed
    listed = list_sequence(hub, None, alice)
    if how == "page":
        decisions = hub.page_decisions(None, alice)
        decisions.decided("keep")
        decisions.decided("x")
        hub.listed_page(None, alice, decisions)
    else:
        decided = hub.list_decisions(None, alice)
        assert decided is not None
        decided("keep")
        decided("x")
    return listed


@pytest.mark.parametrize(
    ("redate", "back"),
    [(False, "watch"), (True, "watch"), (False, "page"), (False, "pinned"), (False, "whole")],
)
def test_a_namespace_that_left_came_back_and_left_again_is_dated_by_its_last_leaving(
    redate: bool, back: str
) -> None:
    """The date a namespace left her scope (`Noted.gone`) was its first leaving: back in the scope and
    sent to a client of hers, it kept it, and when it left again with no watch of hers running, a trim
    dropped it dated so. A resume from between the two, after her access there was taken back, was
    served: the DELETED replayed was decided by the new rules and dropped, and the client kept the
    deleted tag (review-watch6 F1, stale_gone_date.py). Seen in the scope again, it is no longer dated by
    its first leaving; the reap dates a second leaving it notes by it (``redate``: the review's
    stale_gone_date_v2.py, where a reap keeping the first date served the resume, review-watch6 F5).
    Seen by a list of hers too (``back``): a page's or a pinned list's (review-watch8 F1,
    list_return.py: no test failed with that removed), and a whole list's, which told nothing and
    served the resume from it."""
    assert not _left_came_back_and_left_again(redate, back)


def _resume_after_her_scope_shrank(
    left: int, other: bool, changed: bool = False
) -> tuple[WatchHub, ScopeSource, int, bool]:
    """alice may read `app` in 40 namespaces (one ClusterRole), past her share (4); her stream ends at
    ``since``, and the last ``left`` of them are emptied while her informer reconnects (the reap run;
    ``other``: a second client of hers watches throughout and no reap runs yet). ``changed``: a Role
    then gives her more in `ns39`, one that left. Returns the hub, the source, ``since`` and whether
    her resume from it is served."""
    reader = FakeReader({f"ns{i}/app": {"v1"} for i in range(40)})
    hub, source, authorizer, clock = _app_readable_by_alice(reader, 1000, 4)
    w, _ = rbac_watcher(authorizer, "alice")
    assert hub.start(w, source, since=None, timeout=None)
    if other:
        w2, _ = rbac_watcher(authorizer, "alice")
        assert hub.start(w2, source, since=None, timeout=None)
    hub.check_access()
    since = hub.versions.current  # her client read up to here; the stream then breaks
    w.end("test")
    for i in range(40 - left, 40):
        del reader.repositories[f"ns{i}/app"]
        hub.repository_changed(f"ns{i}/app")
        while one_turn(clock):
            pass
    if not other:
        hub.reap()
    if changed:
        grant(RBAC[hub].index, "alice", "ns39", ["other"], "a39")
        clock.advance(1)
    return hub, source, since, resumed(hub, source, since)


@pytest.mark.parametrize(("left", "other"), [(20, False), (3, False), (1, True)])
def test_a_resume_after_her_scope_shrank_is_served_when_her_rules_did_not_change(
    left: int, other: bool
) -> None:
    """The watch start that resumes trims the namespaces that left her scope (she is past her share)
    and dated that after the resume's resourceVersion, having just compared her rules in each of them
    and found them the same: a needless 410, and a relist of her whole scope (review-watch8 F2,
    resume_after_shrink.py). The verdict is given by the rules it compared, before the trim. The
    trim's date binds the resumes after it, which compare those namespaces no more: one from the same
    resourceVersion once her rules changed in one that left is 410."""
    hub, source, since, served = _resume_after_her_scope_shrank(left, other)
    assert served  # was 410
    (noted,) = hub.rules.entries.values()
    assert "ns39" not in noted.rules  # trimmed
    assert noted.changed_at > since
    grant(RBAC[hub].index, "alice", "ns39", ["other"], "a39")
    hub.check_access()
    assert not resumed(hub, source, since)
    hub.stop()


@pytest.mark.parametrize(("left", "other"), [(20, False), (3, False), (1, True)])
def test_a_resume_after_her_scope_shrank_and_her_rules_changed_where_it_shrank_is_410(
    left: int, other: bool
) -> None:
    """As above, with her rules changed in a namespace that left before she resumes: the watch start
    compares them there before it trims it, and the resume is 410."""
    hub, _, _, served = _resume_after_her_scope_shrank(left, other, changed=True)
    assert not served
    hub.stop()


# -- watch10: a list notes a namespace new to a noted user's scope, as a first noting, within her share --


def _new_namespace_listed(how: str, emptied: bool) -> bool:
    """alice's all-namespaces watch runs and ends (`keep` noted for her). `y/app` is pushed with no
    watch of hers running, and a list of hers shows it (``how``: a page of it, "page"; a whole list,
    "whole"); ``emptied``: `y/app` is deleted then. Her access in `y` is changed (`app` taken back),
    and the client of the list watches from it: whether it is served (it holds `y/app:v1`, decided by
    rules that are no longer hers)."""
    hub, index, reader, clock = _hub({"keep/app": {"v1"}})
    for namespace in ("keep", "y"):
        grant(index, "alice", namespace, ["app"], f"a-{namespace}")
    source = ready(hub, None)
    alice = UserInfo("alice")
    change = _changer(hub, reader, clock)
    w1, _ = rbac_watcher(RBAC[hub].authorizer, "alice")
    assert hub.start(w1, source, since=None, timeout=None)
    hub.check_access()
    w1.end("test")
    change("y/app", {"v1"})
    listed = list_sequence(hub, None, alice)
    if how == "page":
        decisions = hub.page_decisions(None, alice)
        decisions.decided("keep")
        decisions.decided("y")
        hub.listed_page(None, alice, decisions)
    else:
        decided = hub.list_decisions(None, alice)
        assert decided is not None
        decided("keep")
        decided("y")
    assert hub.rules.size == sum(entry.cost for entry in hub.rules.entries.values())
    if emptied:
        change("y/app", None)
    grant(index, "alice", "y", ["other"], "a-y")
    clock.advance(1)
    served = resumed(hub, source, listed)
    hub.stop()
    return served


@pytest.mark.parametrize("emptied", [True, False])
@pytest.mark.parametrize("how", ["page", "whole"])
def test_a_namespace_new_to_her_scope_that_her_list_shows_is_noted_by_it(how: str, emptied: bool) -> None:
    """A list noted no namespace not already noted for her: in one that came to her all-namespaces
    scope after her last watch started, her list showed it, her rules there changed, and the watch from
    that list was served (its start noted the rules then as the first ones, or, the namespace emptied
    meanwhile, compared nothing there); her client kept what the list showed (report-watch9,
    new_ns_list.py and new_ns_list_kept.py). A noted user's list decision in a namespace not noted for
    her notes her rules there, as a first noting: the watch from that list is 410."""
    assert not _new_namespace_listed(how, emptied)


@pytest.mark.parametrize("emptied", [True, False])
@pytest.mark.parametrize("how", ["page", "whole"])
def test_a_namespace_new_to_her_scope_that_her_list_shows_keeps_the_watch_from_it(
    how: str, emptied: bool
) -> None:
    """The first noting is no change: with her rules there unchanged, the watch from the list that
    showed the new namespace is served."""
    hub, index, reader, clock = _hub({"keep/app": {"v1"}})
    for namespace in ("keep", "y"):
        grant(index, "alice", namespace, ["app"], f"a-{namespace}")
    source = ready(hub, None)
    alice = UserInfo("alice")
    _stream_of(hub, source, clock, alice, None)
    reader.repositories["y/app"] = {"v1"}
    hub.repository_changed("y/app")
    while one_turn(clock):
        pass
    listed = list_sequence(hub, None, alice)
    if how == "page":
        decisions = hub.page_decisions(None, alice)
        decisions.decided("y")
        hub.listed_page(None, alice, decisions)
    else:
        decided = hub.list_decisions(None, alice)
        assert decided is not None
        decided("y")
    (noted,) = hub.rules.entries.values()
    assert "y" in noted.rules and noted.changed_at <= listed  # a first noting: no change
    if emptied:
        del reader.repositories["y/app"]
        hub.repository_changed("y/app")
        while one_turn(clock):
            pass
    clock.advance(1)
    assert resumed(hub, source, listed)
    hub.stop()


@pytest.mark.parametrize("how", ["page", "whole"])
def test_a_noted_user_listing_many_new_namespaces_stays_within_her_share(how: str) -> None:
    """CI namespaces come and go, and a list of hers shows each while it has tags: each is noted for
    her as it is decided in, and her entry never grows past her share (the namespaces gone from her
    scope dropped, the oldest first, dated so that a resume from before their leaving is 410); the
    size of the ledger is that of its entries, and the other users' entries stay."""
    hub, index, reader, clock = _hub({"keep/app": {"v1"}})
    hub.rules.max_entries, hub.rules.user_share = 40, 8
    grant(index, "alice", "keep", ["app"], "a-keep")
    grant(index, "bob", "keep", ["app"], "b-keep")
    source = ready(hub, None)
    alice, bob = UserInfo("alice"), UserInfo("bob")
    _stream_of(hub, source, clock, bob, None)
    _stream_of(hub, source, clock, alice, None)
    first = list_sequence(hub, None, alice)
    for i in range(100):
        repository = f"ci{i}/app"
        grant(index, "alice", f"ci{i}", ["app"], f"a-ci{i}")
        reader.repositories[repository] = {"v1"}
        hub.repository_changed(repository)
        while one_turn(clock):
            pass
        if how == "page":
            decisions = hub.page_decisions(None, alice)
            decisions.decided(f"ci{i}")
            hub.listed_page(None, alice, decisions)
        else:
            decided = hub.list_decisions(None, alice)
            assert decided is not None
            decided(f"ci{i}")
        del reader.repositories[repository]
        hub.repository_changed(repository)
        while one_turn(clock):
            pass
        noted = hub.rules.entries[(source, ("alice", ""))]
        assert noted.cost <= hub.rules.share, i
        assert hub.rules.size == sum(entry.cost for entry in hub.rules.entries.values())
    assert (source, ("bob", "")) in hub.rules.entries
    assert f"ci{99}" in noted.rules and "ci0" not in noted.rules
    # ci0 was dropped dated after the list that showed it: the watch from that list is 410.
    assert not resumed(hub, source, first)
    assert _resumed_as(hub, source, list_sequence(hub, None, bob), bob)
    hub.stop()


# -- watch12: a list's trim past her share (review-watch11) --


def _decide_all(hub: WatchHub, user: UserInfo, namespaces: list[str], how: str) -> None:
    """A list of the all-namespaces scope by ``user`` decides in ``namespaces``: one page, or a whole
    list."""
    if how == "page":
        decisions = hub.page_decisions(None, user)
        for namespace in namespaces:
            decisions.decided(namespace)
        hub.listed_page(None, user, decisions)
    else:
        decided = hub.list_decisions(None, user)
        assert decided is not None
        for namespace in namespaces:
            decided(namespace)


def _at_her_share(*more: str) -> tuple[WatchHub, RbacIndex, FakeReader, Clock, ScopeSource, list[str]]:
    """alice may see app in k0 to k7 (each holding app:v1) and in ``more`` (no repository there yet),
    her share 8 in a ledger of 40: the hub, its RBAC index, reader and clock, the ready source of all
    namespaces, and k0 to k7."""
    spaces = [f"k{i}" for i in range(8)]
    hub, index, reader, clock = _hub({f"{n}/app": {"v1"} for n in spaces})
    hub.rules.max_entries, hub.rules.user_share = 40, 8
    for n in [*spaces, *more]:
        grant(index, "alice", n, ["app"], f"a-{n}")
    return hub, index, reader, clock, ready(hub, None), spaces


@pytest.mark.parametrize("how", ["page", "whole"])
def test_past_her_share_a_list_s_trim_keeps_the_namespace_it_just_showed(how: str) -> None:
    """alice is at her share (8). Her list shows y/app, pushed while it reads, which the source has not
    read yet: its decision in y notes it (past her share: a trim). The trim dropped y (out of the
    source's scope), dated at the list's resourceVersion: her access in y taken back before the watch
    from that list, the watch was served, and its client kept y/app (review-watch11 F1)."""
    hub, index, reader, clock, source, spaces = _at_her_share("y")
    alice = UserInfo("alice")
    _stream_of(hub, source, clock, alice, None)
    listed = list_sequence(hub, None, alice)
    reader.repositories["y/app"] = {"v1"}  # read by the list, not by the source yet
    _decide_all(hub, alice, [*spaces, "y"], how)
    noted = hub.rules.entries[(source, ("alice", ""))]
    assert "y" in noted.rules and noted.changed_at <= listed
    assert hub.rules.size == sum(entry.cost for entry in hub.rules.entries.values())
    hub.repository_changed("y/app")
    while one_turn(clock):
        pass
    grant(index, "alice", "y", ["other"], "a-y")
    clock.advance(1)
    assert not resumed(hub, source, listed)  # her client holds y/app:v1
    hub.stop()


@pytest.mark.parametrize("how", ["page", "whole"])
def test_past_her_share_a_list_s_trim_keeps_the_namespace_it_just_noted_where_she_reads_nothing(
    how: str,
) -> None:
    """alice is at her share (8). z/app's last tag is deleted after her list's resourceVersion (the
    source reads it: a DELETED), and her list then decides in z, where she may read nothing (it shows
    nothing there): the decision notes z (past her share: a trim). Nothing else keeps z: no list showed
    tags there, and her lists keep only the namespaces where her rules let her read something. Dropped,
    z was dated by its leaving, after the list's resourceVersion: the watch from that list was 410
    though her rules are unchanged and her client holds nothing in z. Kept at the trim its decision
    starts (the namespace the list just noted), the watch is served (a later trim of the same list may
    still drop it: docs/watch.md)."""
    hub, _, reader, clock, source, spaces = _at_her_share()
    alice = UserInfo("alice")
    change = _changer(hub, reader, clock)
    _stream_of(hub, source, clock, alice, None)
    change("z/app", {"v1"})
    listed = list_sequence(hub, None, alice)
    change("z/app", None)  # after the list's resourceVersion
    _decide_all(hub, alice, ["z"], how)
    assert hub.access_rules is not None
    assert hub.access_rules(alice, "z").fingerprint == PathMatcher(False, ()).fingerprint
    assert "z" not in source.unconfirmed_namespaces()
    noted = hub.rules.entries[(source, ("alice", ""))]
    assert noted.trimmed_to > 0  # past her share: a trim ran
    clock.advance(1)
    assert resumed(hub, source, listed)
    assert set(noted.rules) == {*spaces, "z"}
    hub.stop()


@pytest.mark.parametrize("how", ["page", "whole"])
def test_past_her_share_a_list_s_trim_dates_a_namespace_by_its_leaving(how: str) -> None:
    """k7 left alice's scope while no watch of hers ran (nothing noted it gone), then she lists: a write
    while her list reads, and its decision in a new namespace (y) trims her entry past her share (8).
    The trim dated k7 at the sequence then, after the list's resourceVersion: the watch from the list
    was a needless 410 (review-watch11 F2). It is dated by its leaving now (its DELETED): served, and a
    resume from before its leaving is 410."""
    hub, _, reader, clock, source, spaces = _at_her_share("y")
    alice = UserInfo("alice")
    change = _changer(hub, reader, clock)
    bookmark = _stream_of(hub, source, clock, alice, None)
    change("k7/app", None)
    change("y/app", {"v1"})
    listed = list_sequence(hub, None, alice)
    change("k0/other", {"v1"})  # after the list's resourceVersion
    _decide_all(hub, alice, [*spaces[:7], "y"], how)
    noted = hub.rules.entries[(source, ("alice", ""))]
    assert "k7" not in noted.rules and bookmark < noted.changed_at <= listed
    clock.advance(1)
    assert resumed(hub, source, listed)
    assert not resumed(hub, source, bookmark)  # her client may hold k7/app there
    hub.stop()


@pytest.mark.parametrize("how", ["page", "whole"])
def test_past_her_share_a_list_s_trim_dates_a_namespace_by_its_latest_leaving(how: str) -> None:
    """k7 leaves alice's scope, comes back, and her list shows it; it leaves again after the list's
    resourceVersion, and a later list of hers trims her entry past her share (8), dropping k7. Dated
    by its first leaving (before the list), her access in k7 taken back, the watch from that list was
    served, and its client kept k7/app (review-watch13 F4): dated by the second, it is 410."""
    hub, index, reader, clock, source, spaces = _at_her_share("y")
    alice = UserInfo("alice")
    change = _changer(hub, reader, clock)
    _stream_of(hub, source, clock, alice, None)
    change("k7/app", None)  # its first leaving
    change("k7/app", {"v2"})
    listed = list_sequence(hub, None, alice)
    _decide_all(hub, alice, spaces, how)  # shows k7/app:v2
    change("k7/app", None)  # its second leaving, after the list's resourceVersion
    change("y/app", {"v1"})
    list_sequence(hub, None, alice)
    _decide_all(hub, alice, [*spaces[:7], "y"], how)  # past her share: drops k7
    noted = hub.rules.entries[(source, ("alice", ""))]
    assert "k7" not in noted.rules and noted.changed_at > listed
    grant(index, "alice", "k7", ["other"], "a-k7")
    clock.advance(1)
    assert not resumed(hub, source, listed)  # her client holds k7/app:v2
    hub.stop()


def test_a_page_decision_new_to_her_with_other_groups_takes_them_having_compared_every_namespace() -> None:
    """`RulesLedger._first` with other groups than those noted compares every namespace noted for her
    before it notes the new one and takes her groups: the rules noted are then all those of the groups
    noted, and a change her new groups make where the page did not decide is dated as the decision is
    made, not when the page ends (review-watch11 F3)."""
    hub, index, reader, clock = _hub({"team/app": {"v1"}, "team/secret": {"s1"}})
    grant(index, "alice", "team", ["app"], "alice")
    _grant_group(index, "devs", "team", ["secret"], "devs")
    grant(index, "alice", "y", ["app"], "a-y")
    source = ready(hub, None)
    alone, in_devs = UserInfo("alice"), UserInfo("alice", groups=("devs",))
    _stream_of(hub, source, clock, alone, None)
    noted = hub.rules.entries[(source, ("alice", ""))]
    before = (noted.changed_at, hub.versions.current)
    reader.repositories["y/app"] = {"v1"}
    decisions = hub.page_decisions(None, in_devs)
    decisions.decided("y")  # new to her; her rules in team are other with devs
    assert hub.access_rules is not None
    assert noted.groups == in_devs.groups
    assert noted.rules == {n: hub.access_rules(in_devs, n).fingerprint for n in ("team", "y")}
    assert noted.changed_at > before[1] > before[0]
    hub.stop()


def test_a_list_s_decision_new_to_her_never_has_the_bound_evict_her_own_entry() -> None:
    """Her list started, then bob's watch noted him (the most recent): her list's decision in a
    namespace new to her grows her entry past the bound, which evicts the least recently used entry.
    It was hers (noted before bob): her watch from that list was a forgotten user's 410. Bob's goes
    (review-watch11 F3)."""
    hub, index, _, clock = _hub({"team/app": {"v1"}})
    hub.rules.max_entries = 2
    for user in ("alice", "bob"):
        grant(index, user, "team", ["app"], user)
    grant(index, "alice", "y", ["app"], "a-y")  # where her list shows y/app, pushed while it reads
    source = ready(hub, None)
    alice, bob = UserInfo("alice"), UserInfo("bob")
    _stream_of(hub, source, clock, alice, None)
    listed = list_sequence(hub, None, alice)
    _stream_of(hub, source, clock, bob, None)
    _decide_all(hub, alice, ["team", "y"], "page")
    assert [key for _, key in hub.rules.entries] == [("alice", "")]
    assert hub.rules.size == 2
    assert resumed(hub, source, listed)
    hub.stop()


@pytest.mark.parametrize("how", ["page", "whole"])
def test_past_her_share_a_list_deciding_in_empty_namespaces_keeps_its_watch(how: str) -> None:
    """Namespaces whose repositories are empty are decided in by each list of hers and never in the
    source: a list's trim past her share drops them with no event to date them by. Dated after the
    list's resourceVersion, the watch from every such list was 410, and the relist noted them again:
    dated by the history's floor, it is served."""
    hub, _, reader, clock, source, spaces = _at_her_share()
    alice = UserInfo("alice")
    _stream_of(hub, source, clock, alice, None)
    for _ in range(3):
        listed = list_sequence(hub, None, alice)
        reader.repositories["k0/other"] = {f"v{hub.versions.current}"}  # a write while it reads
        hub.repository_changed("k0/other")
        while one_turn(clock):
            pass
        _decide_all(hub, alice, [*spaces, *(f"empty{i}" for i in range(6))], how)
        noted = hub.rules.entries[(source, ("alice", ""))]
        assert noted.cost <= hub.rules.share + hub.rules.share // 8 + 6
        assert hub.rules.size == noted.cost
        assert resumed(hub, source, listed)
    hub.stop()


# -- watch14: a list's trim past her share and the namespaces that list showed --


def _list_in_slices(
    hub: WatchHub,
    reader: FakeReader,
    user: UserInfo,
    how: str,
    observe: Callable[[str, list[str]], None],
    slices: tuple[list[str], ...],
) -> None:
    """A list of the all-namespaces scope by ``user`` decides in each of ``slices`` in turn, then reads
    it (told to ``observe``): a page a slice, or the slices of one whole list."""
    decide = hub.list_decisions(None, user) if how == "whole" else None
    for namespaces in slices:
        decisions = hub.page_decisions(None, user) if decide is None else None
        for namespace in namespaces:
            (decide or decisions.decided)(namespace)  # type: ignore[union-attr]
        for namespace in namespaces:
            observe(f"{namespace}/app", sorted(reader.repositories[f"{namespace}/app"]))
        if decisions is not None:
            hub.listed_page(None, user, decisions)


def _list_shows_unread_namespaces(how: str, pages: bool, repushed: bool) -> bool:
    """alice is past her share (8). Her list shows y1, y2 and y3, pushed while no read of the source
    saw them (y1 ``repushed``: after a delete before the list, its DELETED in the history), and its
    later decision's trim dropped y1, dated at the floor or at that DELETED, at or before the list's
    resourceVersion. Her access in y1 is taken back before the source reads the push. Whether the
    watch from that list is served. ``pages``: y1 is decided and read (its read told to the source)
    before y2 and y3 are decided (an earlier page, or an earlier slice of a whole list); else all are
    decided before any is read (one slice)."""
    spaces = [f"k{i}" for i in range(8)]
    old = {"y1/app": {"v0"}} if repushed else {}
    hub, index, reader, clock = _hub({**{f"{n}/app": {"v1"} for n in spaces}, **old})
    hub.rules.max_entries, hub.rules.user_share = 40, 8
    for n in [*spaces, "y1", "y2", "y3"]:
        grant(index, "alice", n, ["app"], f"a-{n}")
    source = ready(hub, None)
    alice = UserInfo("alice")
    _stream_of(hub, source, clock, alice, None)
    if repushed:
        del reader.repositories["y1/app"]
        hub.repository_changed("y1/app")
        while one_turn(clock):
            pass
    listed = list_sequence(hub, None, alice)
    for n in ("y1", "y2", "y3"):
        reader.repositories[f"{n}/app"] = {"v1"}  # the source reads none of them (no notification)
    observe = hub.observer(None, hub.versions.format(listed))
    assert observe is not None
    first, second = ([*spaces, "y1"], ["y2", "y3"]) if pages else ([*spaces, "y1", "y2", "y3"], [])
    _list_in_slices(hub, reader, alice, how, observe, (first, second))
    noted = hub.rules.entries[(source, ("alice", ""))]
    assert noted.changed_at <= listed
    assert hub.rules.size == sum(entry.cost for entry in hub.rules.entries.values())
    grant(index, "alice", "y1", ["other"], "a-y1")  # her client holds y1/app:v1
    clock.advance(1)
    served = resumed(hub, source, listed)
    hub.stop()
    return served


@pytest.mark.parametrize("repushed", [False, True], ids=["pushed", "repushed"])
@pytest.mark.parametrize("pages", [False, True], ids=["one-slice", "pages"])
@pytest.mark.parametrize("how", ["page", "whole"])
def test_past_her_share_a_list_s_trim_keeps_every_namespace_it_showed_the_source_has_not_read(
    how: str, pages: bool, repushed: bool
) -> None:
    """A list's trim kept only the namespace its decision just noted: another that the list showed
    and the source had not read was dropped, dated at or before the list's resourceVersion, and the
    watch from that list was served after her access there was taken back (its client kept y1/app)."""
    assert not _list_shows_unread_namespaces(how, pages, repushed)


@pytest.mark.parametrize("how", ["page", "whole"])
def test_past_her_share_lists_showing_what_the_source_never_read_are_no_relist_loop(how: str) -> None:
    """Every list of hers decides in namespaces she may read whose repositories are empty (never in
    the source) and shows y/app, which the source does not read (no notification, no resync): each
    list's trim keeps them while it reads, and y while the source has not read it; the watch from
    every list is served (a 410 each time was a relist loop), her entry stays within her share and
    those, and once the source reads y the watch from the next list is served too."""
    empty = [f"empty{i}" for i in range(6)]
    hub, _, reader, clock, source, spaces = _at_her_share(*empty, "y")
    alice = UserInfo("alice")
    _stream_of(hub, source, clock, alice, None)
    reader.repositories.update({f"{n}/app": set() for n in empty} | {"y/app": {"v1"}})

    def write() -> None:
        reader.repositories["k0/other"] = {f"v{hub.versions.current}"}
        hub.repository_changed("k0/other")
        while one_turn(clock):
            pass

    for turn in range(4):
        if turn == 3:
            hub.repository_changed("y/app")  # the source reads y at last
        listed = list_sequence(hub, None, alice)
        write()  # while it reads: a trim's date now is past its resourceVersion
        observe = hub.observer(None, hub.versions.format(listed))
        assert observe is not None
        namespaces = [*spaces, *empty, "y"]
        _list_in_slices(hub, reader, alice, how, observe, (namespaces[:9], namespaces[9:]))
        noted = hub.rules.entries[(source, ("alice", ""))]
        assert noted.cost <= hub.rules.share + hub.rules.share // 8 + len(empty) + 1, turn
        assert hub.rules.size == noted.cost
        assert resumed(hub, source, listed), turn
    hub.stop()


@pytest.mark.parametrize("how", ["page", "whole"])
def test_past_her_share_a_trim_while_her_list_reads_keeps_what_that_list_decided_in(how: str) -> None:
    """Her list has decided in y1, y2 and y3 (pushed, not read by the source) and not read them yet
    when another watch of hers starts: its trim dropped them, dated at the sequence then (the list's
    resourceVersion), and once her access in y1 was taken back the watch from that list was served
    (its client kept y1/app). The namespaces her lists reading now decided in are kept."""
    hub, index, reader, clock, source, spaces = _at_her_share("y1", "y2", "y3")
    alice = UserInfo("alice")
    _stream_of(hub, source, clock, alice, None)
    listed = list_sequence(hub, None, alice)
    for n in ("y1", "y2", "y3"):
        reader.repositories[f"{n}/app"] = {"v1"}
    decisions = hub.page_decisions(None, alice)
    decide = hub.list_decisions(None, alice) if how == "whole" else decisions.decided
    assert decide is not None
    for namespace in [*spaces, "y1", "y2", "y3"]:
        decide(namespace)
    assert resumed(hub, source, hub.versions.current)  # another watch of hers: its start trims
    observe = hub.observer(None, hub.versions.format(listed))
    assert observe is not None
    for namespace in [*spaces, "y1", "y2", "y3"]:
        observe(f"{namespace}/app", sorted(reader.repositories[f"{namespace}/app"]))
    if how == "page":
        hub.listed_page(None, alice, decisions)
    del decisions, decide  # the list has ended
    grant(index, "alice", "y1", ["other"], "a-y1")  # her client holds y1/app:v1
    clock.advance(1)
    assert not resumed(hub, source, listed)
    hub.stop()


def test_past_her_share_a_whole_list_begun_before_she_was_noted_keeps_what_it_decided_in() -> None:
    """Her whole list began before her first watch of the scope noted her (nothing to keep its
    decisions for then): its first decision new to her keeps its decisions from then on, so that its
    own later trim keeps y1, which it showed and the source has not read."""
    hub, index, reader, clock, source, spaces = _at_her_share("y1", "y2", "y3")
    alice = UserInfo("alice")
    listed = list_sequence(hub, None, alice)
    decide = hub.list_decisions(None, alice)
    assert decide is not None and (source, ("alice", "")) not in hub.rules.entries
    w, _ = _as(RBAC[hub].authorizer, alice)
    assert hub.start(w, source, since=None, timeout=5)  # her first watch, while the list reads
    clock.advance(5)
    for n in ("y1", "y2", "y3"):
        reader.repositories[f"{n}/app"] = {"v1"}
    for namespace in [*spaces, "y1", "y2", "y3"]:
        decide(namespace)
    observe = hub.observer(None, hub.versions.format(listed))
    assert observe is not None
    for namespace in [*spaces, "y1", "y2", "y3"]:
        observe(f"{namespace}/app", sorted(reader.repositories[f"{namespace}/app"]))
    del decide  # the list has ended
    grant(index, "alice", "y1", ["other"], "a-y1")  # her client holds y1/app:v1
    clock.advance(1)
    assert not resumed(hub, source, listed)
    hub.stop()
