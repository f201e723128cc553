"""What a watch's access decisions cost and keep (docs/watch.md, "Access" and "Bounds"). Each event
asked the authorizer once per watcher (a hash of the user's groups, the matcher cache's lookup, the
metric's lock: 1.6x-10x the CPU per event, and past 65,536 (user, namespace) pairs the cache was
cleared whole and most lookups recomputed the user's rules); an all-namespaces watch kept the rules of
every namespace it ever decided in; the decisions were counted in
payloadtags_authorization_decisions_total once per watcher and event."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import attrs
from twisted.internet.task import Clock

from payloadtags.access import rbac
from payloadtags.access.authn import UserInfo
from payloadtags.access.authz import Readable
from payloadtags.access.rbac import PathMatcher, RbacAuthorizer, RbacIndex
from payloadtags.metrics import CountingAuthorizer, Metrics
from payloadtags.model import GROUP
from payloadtags.watch.watcher import Watcher
from tests.unit.test_rbac import (
    cluster_role,
    cluster_role_binding,
    group_subject,
    role,
    role_binding,
    role_ref,
)
from tests.unit.test_watch import FakeReader, FakeSink, gone, grant, one_turn, rbac_hub, ready, render


@attrs.define
class Asked:
    """The authorizer, with the decisions asked of it counted."""

    inner: RbacAuthorizer
    asked: int = 0

    def allowed(self, user: UserInfo, verb: str, namespace: str, repository_path: str) -> bool:
        self.asked += 1
        return self.inner.allowed(user, verb, namespace, repository_path)

    def allowed_everywhere(self, user: UserInfo, verb: str, namespace: str) -> bool:
        return self.inner.allowed_everywhere(user, verb, namespace)


def push(reader: FakeReader, hub: Any, clock: Clock, repository: str, tag: str) -> None:
    reader.repositories.setdefault(repository, set()).add(tag)
    hub.repository_changed(repository)
    while one_turn(clock):
        pass


def _assert_the_client_holds(w: Watcher, sink: FakeSink, expected: set[str]) -> None:
    """The watch closed for changed access rules, or the client's view (ADDED less DELETED, in the
    order written) is ``expected``."""
    view: set[str] = set()
    for line in sink.lines:
        kind, name = line.split()[:2]
        if kind == b"ADDED":
            view.add(name.decode())
        elif kind == b"DELETED":
            view.discard(name.decode())
    if w.closed:
        assert gone(sink) and w.reason == "access rules changed", sink.lines
    else:
        assert view == expected, sink.lines


def test_events_are_decided_by_the_rules_the_watch_holds_while_they_do_not_change() -> None:
    reader = FakeReader({"team/app": {"v1"}, "team/web": {"w1"}})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    grant(index, "alice", "team", ["app"], "alice")
    asked = Asked(authorizer)
    sink = FakeSink()
    w = Watcher("alice", sink, render, lambda ref: True, Readable(asked, UserInfo("alice")))
    assert hub.start(w, ready(hub, "team"), since=None, timeout=None)
    before = asked.asked
    for n in range(10):
        push(reader, hub, clock, "team/app", f"a{n}")
        push(reader, hub, clock, "team/web", f"w{n}")
    assert asked.asked == before  # was one decision per event
    assert [line.split()[1] for line in sink.lines[1:]] == [f"team/app:a{n}".encode() for n in range(10)]
    # A change of the rules is followed at once, before any check: the next event is decided by them.
    grant(index, "alice", "team", ["app", "web"], "alice")
    push(reader, hub, clock, "team/web", "w10")
    assert sink.lines[-1].split()[:2] == [b"ADDED", b"team/web:w10"]
    hub.stop()


def test_a_watch_counts_no_authorization_decision_per_event() -> None:
    """docs/metrics.md: a watch's events are decided by the rules it holds, not counted (they were once
    per watcher and event handed over, sent or not: a deny-rate alert fired on ordinary fan-out)."""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    grant(index, "alice", "team", ["other"], "alice")
    metrics = Metrics()
    counting = CountingAuthorizer(authorizer, metrics)
    source = ready(hub, "team")
    for _ in range(20):
        w = Watcher("alice", FakeSink(), render, lambda ref: True, Readable(counting, UserInfo("alice")))
        assert hub.start(w, source, since=None, timeout=None)
    for n in range(10):
        push(reader, hub, clock, "team/app", f"v{n + 2}")
    denied = metrics.registry.get_sample_value(
        "payloadtags_authorization_decisions_total", {"verb": "get", "decision": "deny"}
    )
    assert not denied, denied  # was 200
    hub.stop()


def test_an_all_namespaces_watch_forgets_the_rules_of_namespaces_gone_from_its_scope() -> None:
    reader = FakeReader({"keep/app": {"v1"}})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    source = ready(hub, None)
    sink = FakeSink()
    w = Watcher("alice", sink, render, lambda ref: True, Readable(authorizer, UserInfo("alice")))
    assert hub.start(w, source, since=None, timeout=None)
    for n in range(50):
        namespace = f"ci-{n}"
        grant(index, "alice", namespace, ["app"], "alice")
        push(reader, hub, clock, f"{namespace}/app", "v1")
        del reader.repositories[f"{namespace}/app"]
        hub.repository_changed(f"{namespace}/app")
        while one_turn(clock):
            pass
    hub.check_access()
    assert not w.closed
    assert len(w.rules_seen()) == 51
    hub.reap()
    assert [namespace for namespace, _ in w.rules_seen()] == ["keep"]  # were all 51, for the watch's life
    # A namespace that comes back is decided, and noted, again.
    push(reader, hub, clock, "ci-3/app", "v2")
    assert sink.lines[-1].split()[:2] == [b"ADDED", b"ci-3/app:v2"]
    assert sorted(namespace for namespace, _ in w.rules_seen()) == ["ci-3", "keep"]
    hub.stop()


def test_a_revocation_and_a_deletion_before_the_check_in_an_all_namespaces_watch() -> None:
    """`team/a` is taken back and its last tag deleted before a check, and the DELETED handed over after
    it: the scope no longer has `a`, so only the decision made otherwise than before (the DELETED
    dropped) tells the check that the client still holds `team/a:v1`. Found by the review's random
    interleavings (seed 182); the test of a namespaced watch passed with that rule disabled."""
    reader = FakeReader({"team/a": {"v1"}, "team/b": {"v1"}, "other/c": {"v1"}})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    grant(index, "alice", "team", ["a", "b"], "alice")
    grant(index, "alice", "other", ["app"], "alice")
    sink = FakeSink()
    w = Watcher("alice", sink, render, lambda ref: True, Readable(authorizer, UserInfo("alice")))
    assert hub.start(w, ready(hub, None), since=None, timeout=None)
    hub.check_access()
    grant(index, "alice", "team", ["b"], "alice")
    del reader.repositories["team/a"]
    hub.repository_changed("team/a")
    hub.check_access()
    for _ in range(3):
        while one_turn(clock):
            pass
        hub.check_access()
    _assert_the_client_holds(w, sink, {"team/b:v1"})
    hub.stop()


def test_users_with_the_same_rules_share_one_matcher() -> None:
    """Watches of different users in one namespace hold one set of rules and one memo of decisions,
    not one each (docs/watch.md, "Bounds")."""
    index = RbacIndex()
    for user in ("alice", "bob"):
        grant(index, user, "team", ["app", "web/*"], user)
    alice = index.matcher(UserInfo("alice"), "get", "team")
    assert alice.matches("web/x")
    assert index.matcher(UserInfo("bob"), "get", "team") is alice


def test_the_matcher_cache_evicts_the_least_recently_used_one_at_a_time(monkeypatch: Any) -> None:
    monkeypatch.setattr(rbac, "_MAX_MEMO", 4)
    index = RbacIndex()
    grant(index, "alice", "team", ["app"], "alice")
    computed: list[str] = []
    compute = RbacIndex._compute

    def counting(self: RbacIndex, user: UserInfo, verb: str, namespace: str) -> PathMatcher:
        computed.append(user.name)
        return compute(self, user, verb, namespace)

    monkeypatch.setattr(RbacIndex, "_compute", counting)
    alice = UserInfo("alice")
    index.matcher(alice, "get", "team")
    for n in range(10):
        index.matcher(UserInfo(f"u{n}"), "get", "team")
        index.matcher(alice, "get", "team")  # in use: kept
    assert computed.count("alice") == 1, computed  # the whole cache was cleared at the bound
    assert len(index._matchers) == 4


def test_a_memo_of_decisions_forgets_the_oldest_paths_at_its_bound(monkeypatch: Any) -> None:
    """CI churn: repositories pushed and deleted. A full memo kept the deleted ones' decisions and
    memoized nothing new; the oldest now go, one at a time."""
    monkeypatch.setattr(rbac, "_MAX_MEMO_PATHS", 4)
    index = RbacIndex()
    grant(index, "alice", "team", ["pr-*"], "alice")
    matcher = index.matcher(UserInfo("alice"), "get", "team")
    for n in range(10):
        assert matcher.matches(f"pr-{n}")
    assert list(matcher._memo) == ["pr-6", "pr-7", "pr-8", "pr-9"]


def test_namespaces_with_the_same_rules_share_one_matcher_and_its_bounded_memo(monkeypatch: Any) -> None:
    """One ClusterRole bound cluster-wide: the rules of every namespace mean the same, and decide every
    path alike. A matcher (and its memo of _MAX_MEMO paths) per namespace and meaning made the memory
    of decisions grow with the namespaces named: a user's GETs of made-up names in made-up namespaces
    (decided before any registry read, 403s memoized too) filled a memo in each (the review's
    memo_namespaces.py: 500 matchers, 500,001 paths, 85 MiB for 500,000 GETs). One matcher per meaning
    again, its memo at most _MAX_MEMO_PATHS paths whatever the namespaces: an all-namespaces list cycling
    through more paths than that makes each decision again, a few microseconds (the memo evicts in
    O(1): test_a_full_memo_forgets_its_oldest_path_without_scanning_it)."""
    monkeypatch.setattr(rbac, "_MAX_MEMO_PATHS", 64)
    index = RbacIndex()
    rule = {"apiGroups": [GROUP], "resources": ["payloadrepositoryaccesses"], "verbs": ["get"]}
    index.upsert("ClusterRole", cluster_role("reader", {**rule, "resourceNames": ["team-*/**"]}))
    index.upsert(
        "ClusterRoleBinding",
        cluster_role_binding("reader", role_ref("ClusterRole", "reader"), group_subject("devs")),
    )
    user = UserInfo("mallory", groups=("devs",))
    for n in range(100):
        for m in range(20):
            assert not index.allowed(user, "get", f"made-up-{n}", f"made-up-{m}")
    matchers = {id(matcher): matcher for matcher in index._shared.values()}
    memoized = sum(len(matcher._memo) for matcher in matchers.values())
    assert (len(matchers), memoized) == (1, 20)  # were (64, 1280): a matcher per namespace held
    for n in range(100):
        assert index.allowed(user, "get", f"made-up-{n}", f"team-{n}/app")
    assert sum(len(matcher._memo) for matcher in index._shared.values()) == 64
    # Users with the same rules share it, in every namespace.
    bob = UserInfo("bob", groups=("devs",))
    assert index.matcher(bob, "get", "a") is index.matcher(user, "get", "b")


class WatchedMemo(dict[str, bool]):
    """A memo that counts how often it is scanned from its start and how many entries it evicts."""

    scans = 0
    evicted = 0

    def __iter__(self) -> Iterator[str]:
        WatchedMemo.scans += 1
        return super().__iter__()

    def __delitem__(self, key: str) -> None:
        WatchedMemo.evicted += 1
        super().__delitem__(key)


def test_a_full_memo_forgets_its_oldest_path_without_scanning_it(monkeypatch: Any) -> None:
    """The oldest path was found with ``next(iter(memo))`` on a dict: past the slots of those deleted
    before, scanned on every eviction until the dict resized (10-150 us a new path on a full memo of
    65,536, the review's memo_evict.py). One O(1) delete per path evicted now (the oldest found by
    the index's budget), and no scan."""
    monkeypatch.setattr(rbac, "_MAX_MEMO_PATHS", 4)
    index = RbacIndex()
    grant(index, "alice", "team", ["pr-*"], "alice")
    matcher = index.matcher(UserInfo("alice"), "get", "team")
    monkeypatch.setattr(matcher, "_memo", WatchedMemo())
    for n in range(100):
        assert matcher.matches(f"pr-{n}")
    assert (WatchedMemo.scans, WatchedMemo.evicted) == (0, 96)
    assert list(matcher._memo) == ["pr-96", "pr-97", "pr-98", "pr-99"]


def test_the_reap_keeps_the_rules_of_a_namespace_a_revocation_before_the_check_left_to_judge() -> None:
    """`other/a` is taken back, then deleted, before the access check and while the watch's opening is
    not all written (its ADDED among it): the reap must not drop the rules of `other`, which showed it,
    for then the check sees no change there and the client keeps `other/a:v1`. Both of
    `Watcher.forget_rules`' guards keep them (the opening unwritten, and `other` decided by two sets of
    rules once its DELETED is dropped); the review's fuzz_reap.py (seed 292) with both removed."""
    reader = FakeReader({"other/a": {"v1"}, "third/a": {"v1"}})
    clock = Clock()
    hub, index, authorizer = rbac_hub(reader, clock)
    grant(index, "alice", "other", ["a"], "alice")
    grant(index, "alice", "team", ["a"], "alice")
    sink = FakeSink()
    w = Watcher("alice", sink, render, lambda ref: True, Readable(authorizer, UserInfo("alice")))
    assert hub.start(w, ready(hub, None), since=None, timeout=None)
    hub.check_access()
    grant(index, "alice", "other", ["b"], "alice")
    hub.reap()
    del reader.repositories["other/a"]
    hub.repository_changed("other/a")
    hub.reap()
    one_turn(clock)
    reader.repositories["team/a"] = {"t0"}
    hub.repository_changed("team/a")
    hub.reap()
    hub.check_access()
    for _ in range(3):
        while one_turn(clock):
            pass
        hub.reap()
        hub.check_access()
    _assert_the_client_holds(w, sink, {"team/a:t0"})
    hub.stop()


def test_every_meaning_s_memo_counts_against_one_budget_of_paths(monkeypatch: Any) -> None:
    """A Role per namespace (a multi-tenant cluster): each namespace's rules mean something else, and
    each had its own memo of _MAX_MEMO paths, filled by anyone's GETs of made-up names there (decided
    before any registry read, 403s memoized too; review-watch4 F2, memo_per_meaning.py: 200 namespaces,
    400,000 paths, 66 MiB). All memos now hold at most _MAX_MEMO_PATHS paths together, the oldest
    forgotten first; a decision forgotten is made again, alike."""
    monkeypatch.setattr(rbac, "_MAX_MEMO_PATHS", 64)
    index = RbacIndex()
    rule = {"apiGroups": [GROUP], "resources": ["payloadrepositoryaccesses"], "verbs": ["get"]}
    for n in range(20):
        namespace = f"tenant-{n}"
        index.upsert("Role", role(namespace, "r", {**rule, "resourceNames": [f"team-{n}/**"]}))
        index.upsert(
            "RoleBinding",
            role_binding(namespace, "r", role_ref("Role", "r"), group_subject("system:authenticated")),
        )
    mallory = UserInfo("mallory", groups=("system:authenticated",))
    for m in range(20):
        for n in range(20):
            assert not index.allowed(mallory, "get", f"tenant-{n}", f"made-up-{m}/x")
    matchers = {id(matcher): matcher for matcher in index._shared.values()}
    assert len(matchers) == 20
    assert sum(len(matcher._memo) for matcher in matchers.values()) == 64  # were 400
    assert len(index.memos) == 64
    assert index.allowed(mallory, "get", "tenant-3", "team-3/app")
    assert not index.allowed(mallory, "get", "tenant-3", "made-up-0/x")  # forgotten: decided again


def test_a_matcher_replaced_by_an_rbac_edit_goes_with_its_memo() -> None:
    """A Role of many names edited again and again (a tenant admin, a GitOps controller), a GET after
    each edit: the memo budget held every matcher that memoized a path, so each replaced one stayed
    alive with its names and patterns until 131,072 newer paths were memoized (review-watch6 F2,
    pinned_matchers.py: 800 edits of a 1,000-name Role, 167 MiB). Only the matcher in use lives now,
    and the budget still forgets the oldest path first."""
    index = RbacIndex()
    alice = UserInfo("alice")
    replaced: list[weakref.ref[PathMatcher]] = []
    for edit in range(50):
        grant(index, "alice", "tenant", [f"r{edit}-{n}" for n in range(100)], "mine")
        assert not index.allowed(alice, "get", "tenant", "made-up")
        assert index.allowed(alice, "get", "tenant", f"r{edit}-7")
        replaced.append(weakref.ref(index.matcher(alice, "get", "tenant")))
    gc.collect()
    assert [ref() is not None for ref in replaced] == [False] * 49 + [True]  # were all alive
    assert len(index._shared) == 1  # were 50
    assert len(index.memos) == 100  # the dead ones' entries, skipped as they come
