"""What a watch keeps of its access decisions: nothing per repository (docs/watch.md, "Bounds"). Each
watch used to remember a decision for every repository it looked at, selected or not, for its whole
life: about 226 bytes a repository and a watch (1,000 watches of a namespace of 20,000 repositories,
4 GiB). Decisions are asked of the authorizer as they are needed (its rules memoize them per user and
rules, shared by her watches), after the selector; a change of the rules between two access checks
that changes a decision the watch made still ends it with 410."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

from twisted.internet.task import Clock

from payloadtags.access.rbac import RbacAuthorizer, RbacIndex
from payloadtags.identity import UserInfo
from payloadtags.names import TagRef
from tests.unit.test_rbac import cluster_role, cluster_role_binding, role_ref, user_subject
from tests.unit.test_watch import (
    GROUP,
    FakeReader,
    alice_watching,
    gone,
    grant,
    make_hub,
    one_turn,
    rbac_hub,
    rbac_watcher,
    ready,
    watcher,
)

REPOSITORIES = 3000


def by_name(ref: TagRef) -> bool:
    """`kubectl get prt NAME -w`: a field selector on one tag's name."""
    return ref.repository_path == "r00000" and ref.tag == "v1"


def test_a_watch_by_name_asks_and_keeps_no_access_decision_for_the_repositories_it_does_not_select() -> None:
    reader = FakeReader({f"team/r{i:05d}": {"v1"} for i in range(REPOSITORIES)})
    hub = make_hub(reader, Clock())
    source = ready(hub, "team")
    asked: list[tuple[str, str]] = []

    def readable(namespace: str, path: str) -> bool:
        asked.append((namespace, path))
        return False  # a user who may read nothing: her watch, too, held a decision per repository

    w, sink = watcher()
    w.accept, w.readable = by_name, readable
    assert hub.start(w, source, since=None, timeout=None)
    assert asked == [("team", "r00000")] and sink.lines == []
    hub.stop()


def test_an_idle_watch_holds_no_memory_per_repository_of_its_scope() -> None:
    """Watches from "0" (each writes an ADDED for every tag, then sits idle), measured with tracemalloc
    once they have written what they started with: what stays is the watch, not its scope."""
    reader = FakeReader({f"team/some/fairly/long/path-{i:05d}": {"v1"} for i in range(REPOSITORIES)})
    hub = make_hub(reader, Clock())
    source = ready(hub, "team")
    watches = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(5):
            w, sink = watcher(user=f"u{n}")
            assert hub.start(w, source, since=None, timeout=None)
            assert len(sink.lines) == REPOSITORIES and w.opening is None
            sink.lines.clear()  # what the client received is not the server's
            watches.append(w)
        gc.collect()
        held = (tracemalloc.get_traced_memory()[0] - before) / len(watches)
    finally:
        tracemalloc.stop()
    # A decision per repository was about 226 bytes: 660 kB a watch here.
    assert held < 8_000, held
    hub.stop()


def _traced(work: Callable[[], object]) -> int:
    """The bytes ``work`` leaves allocated (tracemalloc), what it returns kept meanwhile."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = work()  # noqa: F841 (alive until measured)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


NAMESPACES = 1000
WATCHES = 10
READER = {"apiGroups": [GROUP], "resources": ["payloadrepositoryaccesses"], "verbs": ["get"]}


def _all_namespaces_watches(users: list[str]) -> int:
    """Bytes a namespace and watch that ``len(users)`` all-namespaces watches of ``users`` (in turn)
    hold once each has written what it started with (a tag in each of NAMESPACES namespaces) and an
    access check has run: the rules each keeps of each namespace, the authorizer's entries of each
    user's rules there and the resume ledger's."""
    reader = FakeReader({f"ns-{n:04d}/app": {"v1"} for n in range(NAMESPACES)})
    hub, index, authorizer = rbac_hub(reader, Clock())
    index.upsert("ClusterRole", cluster_role("reader", READER))
    subjects = [user_subject(user) for user in sorted(set(users))]
    index.upsert(
        "ClusterRoleBinding", cluster_role_binding("reader", role_ref("ClusterRole", "reader"), *subjects)
    )
    source = ready(hub, None)

    def start() -> list[object]:
        kept: list[object] = []
        for user in users:
            w, sink = rbac_watcher(authorizer, user)
            assert hub.start(w, source, since=None, timeout=None)
            assert w.opening is None and len(sink.lines) == NAMESPACES
            sink.lines.clear()  # what the client received is not the server's
            kept.append(w)
        hub.check_access()
        return kept

    held = _traced(start)
    hub.stop()
    return held // (NAMESPACES * len(users))


def test_all_namespaces_watches_hold_about_what_docs_watch_says_a_namespace_and_watch() -> None:
    """docs/watch.md ("Bounds"), measured so (2,000 namespaces, 20 watches): about 210 bytes a
    namespace and watch when they are one user's, about 490 when each is another user's with the same
    rules. Held here to half as much again: a watch that kept more per namespace (a decision per
    repository, a copy of its rules) is caught."""
    one_user = _all_namespaces_watches(["alice"] * WATCHES)
    many_users = _all_namespaces_watches([f"user-{n:02d}" for n in range(WATCHES)])
    assert one_user < 210 * 3 // 2, one_user
    assert many_users < 490 * 3 // 2, many_users


def test_a_memo_of_made_up_paths_holds_about_what_docs_watch_says_a_path() -> None:
    """docs/watch.md ("Bounds"): a memoized path about 85 bytes, about 190 in all with a 50-character
    path only the memo holds (a GET of a made-up name): about 25 MiB for all memos full of those."""
    index = RbacIndex()
    authorizer = RbacAuthorizer(index, ready=lambda: True)
    index.upsert("ClusterRole", cluster_role("reader", {**READER, "resourceNames": ["app"]}))
    index.upsert(
        "ClusterRoleBinding",
        cluster_role_binding("reader", role_ref("ClusterRole", "reader"), user_subject("a")),
    )
    rules = authorizer.rules(UserInfo("a"), "get", "team")
    paths = 20_000

    def made_up() -> None:
        for n in range(paths):
            assert not rules.matches(f"made-up-{n:08d}-{'x' * 33}")

    per_path = _traced(made_up) / paths
    assert 100 < per_path < 190 * 3 // 2, per_path


def test_a_revocation_before_the_check_and_a_deletion_handed_over_then_still_reach_the_client() -> None:
    """alice loses `app`, and its last tag is deleted and handed to her watch, all before the access
    check: the repository has no tags any more, so the check cannot find it in the scope. Her client
    either got the DELETED (decided as it was before) or the watch ends with 410: never the tag kept."""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub, index, w, sink = alice_watching(reader, clock)
    assert sink.lines[-1].split()[:2] == [b"ADDED", b"team/app:v1"]
    grant(index, "alice", "team", ["other"], "alice")
    del reader.repositories["team/app"]
    hub.repository_changed("team/app")
    while one_turn(clock):
        pass
    hub.check_access()
    deleted = any(line.split()[:2] == [b"DELETED", b"team/app:v1"] for line in sink.lines)
    assert deleted or (gone(sink) and w.reason == "access rules changed"), sink.lines
    hub.stop()


def test_rules_taken_back_and_granted_again_between_two_checks_with_a_push_between() -> None:
    """alice loses `app`, a tag is pushed there, and `app` is granted again, all between two checks:
    the rules are those the watch started under, but the push was decided meanwhile. Her client either
    got the ADDED or the watch ends with 410: never the tag missed."""
    reader = FakeReader({"team/app": {"v1"}})
    clock = Clock()
    hub, index, w, sink = alice_watching(reader, clock)
    clock.advance(1)
    grant(index, "alice", "team", ["other"], "alice")
    reader.repositories["team/app"] = {"v1", "v2"}
    hub.repository_changed("team/app")
    grant(index, "alice", "team", ["app"], "alice")
    clock.advance(1)
    added = any(line.split()[:2] == [b"ADDED", b"team/app:v2"] for line in sink.lines)
    assert added or (gone(sink) and w.reason == "access rules changed"), sink.lines
    hub.stop()
