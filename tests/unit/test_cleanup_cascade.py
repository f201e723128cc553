"""The cascade against an in-memory registry with a Clock: retries, read-only waits, guards, races."""

from __future__ import annotations

import gc
import hashlib
import json
import weakref
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, formatEvent

from payloadtags.cleanup.cascade import (
    MAX_NESTING,
    Aborted,
    Cascade,
    CascadeResult,
    LateWrites,
    Unconfirmed,
    Walk,
)
from payloadtags.cleanup.metrics import CleanupMetrics
from payloadtags.cleanup.watcher import NamespaceTriggers
from payloadtags.kube import Backoff
from payloadtags.registry import OCI_INDEX, OCI_MANIFEST, CatalogPage, Manifest, Resolved, WriteHooks
from payloadtags.registry.content import skipped_by_seek
from payloadtags.registry.errors import (
    RegistryAuthFailed,
    RegistryConflict,
    RegistryError,
    RegistryNotFound,
    RegistryProtocolError,
    RegistryReadOnly,
    RegistryTimeout,
    RegistryUnavailable,
)
from payloadtags.registry.late import Scope
from tests.support.logcapture import collected_logs
from tests.support.write_hooks import run_hooks

T = TypeVar("T")


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class FakeRegistry:
    """Repositories of tag -> digest, the catalog in distribution 2.8's component-wise order."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, str]] = {}
        self.failures: dict[str, deque[Exception]] = defaultdict(deque)
        self.deletes: list[tuple[str, str]] = []
        self.tag_deletes: list[tuple[str, str]] = []

    def push(self, repository: str, tag: str, content: str | None = None) -> None:
        self.repos.setdefault(repository, {})[tag] = digest(content or f"{repository}:{tag}")

    def fail(self, operation: str, error: Exception, times: int = 1) -> None:
        self.failures[operation].extend([error] * times)

    def _gate(self, operation: str) -> None:
        if self.failures[operation]:
            raise self.failures[operation].popleft()

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        self._gate("catalog")
        names = sorted(self.repos, key=lambda name: name.split("/"))
        after = [name for name in names if last is None or name.split("/") > last.split("/")]
        return CatalogPage(repositories=after[:n], more=len(after) > n)

    async def tags(self, repository: str) -> tuple[str, ...]:
        self._gate("tags")
        return tuple(sorted(self.repos.get(repository, {})))

    async def resolve(self, repository: str, tag: str) -> str:
        self._gate("resolve")
        try:
            return self.repos[repository][tag]
        except KeyError:
            raise RegistryNotFound(f"{repository}:{tag}") from None

    async def resolve_typed(self, repository: str, tag: str) -> Resolved:
        # Through `resolve`, which the subclasses below hold up or fail; plain images only here (the
        # child manifests of indexes are pinned against the real registry, test_cleanup.py).
        return Resolved(await self.resolve(repository, tag), OCI_MANIFEST)

    async def manifest(self, repository: str, reference: str) -> Manifest:
        raise AssertionError("a plain image's manifest is never read")

    async def delete_manifest(
        self,
        repository: str,
        manifest: str,
        *,
        hooks: WriteHooks | None = None,
    ) -> None:
        await run_hooks(hooks)  # in the repository's turn, right before the request leaves
        self._gate("delete")
        tags = self.repos.get(repository, {})
        doomed = [tag for tag, d in tags.items() if d == manifest]
        if not doomed:
            raise RegistryNotFound(f"{repository}@{manifest}")
        for tag in doomed:
            del tags[tag]
        self.deletes.append((repository, manifest))

    async def delete_tag(
        self,
        repository: str,
        tag: str,
        *,
        hooks: WriteHooks | None = None,
    ) -> str | None:
        """Only reached for tags that resolve to nothing: gone, as this fake has no dangling tags."""
        await run_hooks(hooks)
        self._gate("delete")
        self.tag_deletes.append((repository, tag))
        digest = self.repos.get(repository, {}).pop(tag, None)
        if digest is None:
            raise RegistryNotFound(f"{repository}:{tag}")
        return digest

    def remaining(self, prefix: str) -> dict[str, list[str]]:
        return {r: sorted(t) for r, t in self.repos.items() if r.startswith(prefix) and t}


def make_cascade(registry: FakeRegistry, clock: Clock, **kwargs: Any) -> Cascade:
    kwargs.setdefault("backoff", lambda: Backoff(initial=1.0, factor=2.0, cap=4.0, jitter=0.0))
    kwargs.setdefault("check_backoff", lambda: Backoff(initial=0.5, factor=2.0, cap=2.0, jitter=0.0))
    return Cascade(registry, clock, **kwargs)


def run(cascade: Cascade, namespace: str, **kwargs: Any) -> list[Any]:
    outcome: list[Any] = []
    Deferred.fromCoroutine(cascade.run(namespace, **kwargs)).addBoth(outcome.append)
    return outcome


def fill(registry: FakeRegistry) -> None:
    registry.push("team/app", "v1", "same")
    registry.push("team/app", "latest", "same")  # shares v1's digest: one delete removes both
    registry.push("team/app", "v2")
    registry.push("team/deep/nested/repo", "x")
    registry.push("team-a/app", "keep")  # prefix sibling
    registry.push("team", "root")  # no path below the namespace: never a tag of it
    registry.push("tea/app", "keep")
    registry.push("teamz/app", "keep")


def test_empties_the_namespace_and_nothing_else() -> None:
    registry, clock, metrics = FakeRegistry(), Clock(), CleanupMetrics()
    fill(registry)
    outcome = run(make_cascade(registry, clock, metrics=metrics), "team")
    [result] = outcome
    assert isinstance(result, CascadeResult)
    assert registry.remaining("team/") == {}
    assert registry.remaining("team-a/") == {"team-a/app": ["keep"]}
    assert registry.repos["team"] == {"root": digest("team:root")}
    assert registry.repos["tea/app"] and registry.repos["teamz/app"]
    assert (result.tags_deleted, result.manifests_deleted, result.errors) == (4, 3, 0)
    assert result.passes == 2  # one that deletes, one that verifies the namespace lists empty
    assert (metrics.tags_deleted_total, metrics.manifests_deleted_total) == (4, 3)


def test_an_empty_namespace_takes_one_pass() -> None:
    registry, clock = FakeRegistry(), Clock()
    registry.push("other/app", "v1")
    [result] = run(make_cascade(registry, clock), "team")
    assert (result.passes, result.tags_deleted) == (1, 0)


def test_registry_errors_are_retried_with_capped_backoff() -> None:
    registry, clock, metrics = FakeRegistry(), Clock(), CleanupMetrics()
    fill(registry)
    registry.fail("catalog", RegistryUnavailable("down"), times=4)
    outcome = run(make_cascade(registry, clock, metrics=metrics), "team")
    # Delays 1, 2, 4, 4 (capped): not done a moment before their sum, done right after.
    for delay in (1.0, 2.0, 4.0):
        clock.advance(delay)
        assert outcome == []
    clock.advance(3.9)
    assert outcome == []
    clock.advance(0.1)
    [result] = outcome
    assert result.errors == 4 and "down" in (result.last_error or "")
    assert registry.remaining("team/") == {}
    assert metrics.registry_errors_total == 4


class Indexes(FakeRegistry):
    """Manifests stored by digest, some of them indexes over others, as the registry keeps them: a
    digest delete removes the manifest and untags its tags. ``said``: the media type a resolve gives
    (absent: a plain image's; None: the registry did not say)."""

    def __init__(self) -> None:
        super().__init__()
        # (repository, digest) -> the children (digest, descriptor media type) of an index, or None.
        self.stored: dict[tuple[str, str], list[tuple[str, str | None]] | None] = {}
        self.said: dict[str, str | None] = {}
        self.reads: list[str] = []

    def put(self, repository: str, name: str, children: list[tuple[str, str | None]] | None = None) -> str:
        stored = digest(f"{repository}@{name}")
        self.stored[repository, stored] = children
        return stored

    async def resolve_typed(self, repository: str, tag: str) -> Resolved:
        found = await self.resolve(repository, tag)
        return Resolved(found, self.said.get(found, OCI_MANIFEST))

    async def manifest(self, repository: str, reference: str) -> Manifest:
        self.reads.append(reference)
        if (repository, reference) not in self.stored:
            raise RegistryNotFound(f"{repository}@{reference}")
        children = self.stored[repository, reference]
        if children is None:
            return Manifest(reference, OCI_MANIFEST, b'{"schemaVersion": 2}')
        entries = [{"digest": d} | ({"mediaType": t} if t else {}) for d, t in children]
        body = json.dumps({"schemaVersion": 2, "manifests": entries}).encode()
        return Manifest(reference, OCI_INDEX, body)

    async def delete_manifest(
        self,
        repository: str,
        manifest: str,
        *,
        hooks: WriteHooks | None = None,
    ) -> None:
        if (repository, manifest) not in self.stored:
            await super().delete_manifest(repository, manifest, hooks=hooks)  # a tag's, or a 404
            return
        await run_hooks(hooks)
        self._gate("delete")
        del self.stored[repository, manifest]
        tags = self.repos.get(repository, {})
        for tag in [tag for tag, d in tags.items() if d == manifest]:
            del tags[tag]
        self.deletes.append((repository, manifest))


def test_an_index_s_children_are_deleted_before_it_and_only_an_index_is_read() -> None:
    registry, clock, metrics = Indexes(), Clock(), CleanupMetrics()
    plain, child = registry.put("team/app", "plain"), registry.put("team/app", "amd64")
    untyped = registry.put("team/app", "arm64")  # its descriptor gives no type: read to know
    index = registry.put("team/app", "multi", [(child, OCI_MANIFEST), (untyped, None)])
    registry.repos["team/app"] = {"multi": index, "plain": plain}
    registry.said[index] = None  # the resolve's Content-Type said nothing: read to know
    shared = registry.put("other/app", "amd64")  # the same image in another repository
    outcome = run(make_cascade(registry, clock, metrics=metrics), "team")
    [result] = outcome
    assert isinstance(result, CascadeResult) and result.errors == 0
    assert registry.reads == [index, untyped]  # never the plain images' (nothing extra for them)
    deletes = [d for _, d in registry.deletes]
    assert deletes.index(child) < deletes.index(untyped) < deletes.index(index)
    assert sorted(deletes) == sorted([plain, child, untyped, index])
    assert all(repository == "team/app" for repository, _ in registry.deletes)
    assert ("other/app", shared) in registry.stored
    assert (result.tags_deleted, result.manifests_deleted) == (2, 4)
    assert metrics.manifests_deleted_total == 4


def test_nested_indexes_are_read_as_deep_as_the_bound_and_the_deeper_one_is_deleted_unread() -> None:
    registry, clock = Indexes(), Clock()
    leaf = registry.put("team/app", "leaf")
    chain = [leaf]
    for level in range(MAX_NESTING + 1):
        chain.append(registry.put("team/app", f"index{level}", [(chain[-1], OCI_INDEX)]))
    top = chain[-1]
    registry.said[top] = OCI_INDEX
    registry.repos["team/app"] = {"v1": top}
    [result] = run(make_cascade(registry, clock), "team")
    assert isinstance(result, CascadeResult) and result.errors == 0
    assert registry.reads == chain[:1:-1]  # the top and its nested ones, MAX_NESTING in all
    assert len(registry.reads) == MAX_NESTING
    # Children first, all the way up; the one nested deeper goes unread, its child stays (to GC).
    assert [d for _, d in registry.deletes] == chain[1:]
    assert list(registry.stored) == [("team/app", leaf)]


@pytest.mark.parametrize(
    "error",
    [RegistryUnavailable("down"), RegistryTimeout("slow"), RegistryReadOnly("maintenance")],
    ids=["unavailable", "timeout", "read-only"],
)
def test_a_failed_read_of_an_index_keeps_it_for_the_next_pass(error: RegistryError) -> None:
    """An error that may pass: the index is kept (its children are found through it only)."""
    registry, clock = Indexes(), Clock()
    child = registry.put("team/app", "amd64")
    index = registry.put("team/app", "multi", [(child, OCI_MANIFEST)])
    registry.repos["team/app"] = {"multi": index}
    registry.said[index] = OCI_INDEX
    reads = registry.manifest

    async def failing_once(repository: str, reference: str) -> Manifest:
        registry.manifest = reads  # type: ignore[method-assign]
        raise error

    registry.manifest = failing_once  # type: ignore[method-assign]
    outcome = run(make_cascade(registry, clock), "team")
    assert outcome == [] and registry.deletes == []  # the index kept: nothing deleted unread
    clock.advance(60.0)
    [result] = outcome
    assert isinstance(result, CascadeResult) and result.errors == 1
    assert [d for _, d in registry.deletes] == [child, index]


def test_an_index_the_client_refuses_to_read_is_deleted_unread_with_a_warning() -> None:
    """A RegistryProtocolError (malformed, too deep, too large) never passes: kept, the index would
    fail every pass and the namespace never finish deleting (review r2child F1). Deleted unread in
    the first pass instead, as one nested too deep is; the warning names it."""
    registry, clock = Indexes(), Clock()
    child = registry.put("team/app", "amd64")
    index = registry.put("team/app", "multi", [(child, OCI_MANIFEST)])
    registry.repos["team/app"] = {"multi": index}
    registry.said[index] = OCI_INDEX

    async def refused(repository: str, reference: str) -> Manifest:
        registry.reads.append(reference)
        raise RegistryProtocolError("manifest is JSON nested more than 100 levels deep")

    registry.manifest = refused  # type: ignore[method-assign]
    with collected_logs() as events:
        [result] = run(make_cascade(registry, clock), "team")
    assert isinstance(result, CascadeResult) and (result.errors, result.passes) == (0, 2)
    assert registry.reads == [index] and registry.deletes == [("team/app", index)]
    assert ("team/app", child) in registry.stored  # unread: its child stays
    [warning] = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
    assert f"team/app@{index}" in warning and "nested more than 100 levels" in warning
    assert "child manifests stay" in warning


def test_a_failed_child_delete_keeps_the_index_for_the_next_pass() -> None:
    """Review r2child F2: deleted, the index would leave its remaining children nothing to find
    them by."""
    registry, clock = Indexes(), Clock()
    child = registry.put("team/app", "amd64")
    index = registry.put("team/app", "multi", [(child, OCI_MANIFEST)])
    registry.repos["team/app"] = {"multi": index}
    registry.said[index] = OCI_INDEX
    registry.fail("delete", RegistryUnavailable("down"))
    outcome = run(make_cascade(registry, clock), "team")
    assert outcome == [] and registry.deletes == []
    assert ("team/app", index) in registry.stored and registry.repos["team/app"] == {"multi": index}
    clock.advance(1.0)
    [result] = outcome
    assert isinstance(result, CascadeResult) and result.errors == 1
    assert [d for _, d in registry.deletes] == [child, index]


def shared_fan_out(registry: Indexes, fan: int) -> tuple[str, int]:
    """An index over J_1..J_fan, each over the same K_1..K_fan, each over the same L_1..L_fan, each over
    the same images M_1..M_fan: 4 * fan + 1 manifests (3 * fan + 1 of them indexes), fan ** 4 paths
    from the top to an image. The top one and how many indexes."""
    level = [(registry.put("team/app", f"m{i}"), OCI_MANIFEST) for i in range(fan)]
    for name in ("l", "k", "j"):
        level = [(registry.put("team/app", f"{name}{i}", list(level)), OCI_INDEX) for i in range(fan)]
    top = registry.put("team/app", "top", list(level))
    registry.repos["team/app"] = {"v1": top}
    registry.said[top] = OCI_INDEX
    return top, 3 * fan + 1


@pytest.mark.parametrize("deletes", ["refused", "done"])
def test_indexes_that_share_nested_ones_cost_a_request_per_manifest_not_per_path(deletes: str) -> None:
    """Review r2child L1: each digest is read and deleted at most once in a pass, however many
    indexes name it. Deletes refused (an account without delete scope, retried every pass): the
    indexes are each read once and each image's DELETE (and its confirmation) is sent once; before,
    fan 8 cost 585 reads and 4,096 DELETEs a pass. Deletes done: each manifest once."""
    fan = 8
    registry, clock = Indexes(), Clock()
    top, indexes = shared_fan_out(registry, fan)
    manifests = len(registry.stored)
    if deletes == "refused":
        registry.fail("delete", RegistryAuthFailed("denied", denied=True), times=10**6)
    confirms = 0

    async def confirm() -> None:
        nonlocal confirms
        confirms += 1

    async def one_pass(delay: float) -> None:
        raise Aborted("one pass")

    outcome = run(make_cascade(registry, clock), "team", confirm=confirm, wait=one_pass)
    assert sorted(registry.reads) == sorted({*registry.reads}) and len(registry.reads) == indexes
    if deletes == "refused":
        assert len(outcome) == 1 and outcome[0].check(Aborted)
        assert (confirms, registry.deletes) == (fan, [])  # the images: every index waits on them
        assert ("team/app", top) in registry.stored
        return
    [result] = outcome
    assert isinstance(result, CascadeResult) and result.errors == 0
    assert confirms == len(registry.deletes) == len({*registry.deletes}) == manifests
    assert (result.tags_deleted, result.manifests_deleted) == (1, manifests)
    assert registry.deletes[-1] == ("team/app", top) and registry.stored == {}


@pytest.mark.parametrize("index_first", [True, False])
def test_a_child_that_is_also_tagged_is_deleted_once_and_counts_its_tag(index_first: bool) -> None:
    """Review r2child N1: `multi` names index I over image A, `amd64` names A, both in one chunk.
    Whichever digest sorts first, A is deleted once and both tags count (each resolved to a digest
    this cascade deleted): no DELETE of A again as a digest of its own, answered 404, its tag lost."""
    registry, clock, metrics = Indexes(), Clock(), CleanupMetrics()
    for attempt in range(20):  # names whose digests sort the way asked
        child = registry.put("team/app", f"amd64-{attempt}")
        index = registry.put("team/app", f"multi-{attempt}", [(child, OCI_MANIFEST)])
        if (index < child) == index_first:
            break
    registry.stored = {key: value for key, value in registry.stored.items() if key[1] in (child, index)}
    registry.repos["team/app"] = {"multi": index, "amd64": child}
    registry.said[index] = OCI_INDEX
    confirms = 0

    async def confirm() -> None:
        nonlocal confirms
        confirms += 1

    [result] = run(make_cascade(registry, clock, metrics=metrics), "team", confirm=confirm)
    assert isinstance(result, CascadeResult) and result.errors == 0
    assert [d for _, d in registry.deletes] == [child, index] and confirms == 2
    assert (result.tags_deleted, result.manifests_deleted) == (2, 2)
    assert (metrics.tags_deleted_total, metrics.manifests_deleted_total) == (2, 2)


@pytest.mark.parametrize("unanswered", [False, True])
def test_a_repair_that_met_a_push_with_its_write_pending_is_a_failure(unanswered: bool) -> None:
    # Pushed again while the repair's placeholder PUT went unanswered: that PUT may still land over
    # the push. Counted as progress, the pass could end clean and a removal answer 200 before it.
    registry, clock = FakeRegistry(), Clock()
    registry.push("team/app", "v1")
    registry.fail("resolve", RegistryNotFound("team/app:v1"))  # dangling: repaired, a delete by tag
    conflict = RegistryConflict("team/app:v1 pushed while it was being deleted", current=digest("x"))
    conflict.unanswered = unanswered
    registry.fail("delete", conflict)
    outcome = run(make_cascade(registry, clock), "team")
    clock.advance(1.0)
    [result] = outcome
    assert isinstance(result, CascadeResult)
    assert result.errors == (1 if unanswered else 0)
    assert registry.remaining("team/") == {}


@pytest.mark.parametrize("pushed", [False, True])
def test_a_cascade_does_not_end_while_a_repairs_unanswered_write_may_still_land(pushed: bool) -> None:
    # The repair's placeholder PUT went unanswered (its error reaches the cascade at 0): the next pass
    # deletes the tag, the one after finds the namespace empty at 1, but the PUT may land until 5 (the
    # grace) and leave the tag again. The cascade ended there; it now waits, and passes again at 5.
    # ``pushed``: the tag was pushed again meanwhile (a RegistryConflict, the PUT still pending over
    # the push), which was not waited for with the record of that branch dropped (review-removal2 4).
    registry, clock = FakeRegistry(), Clock()
    registry.push("team/app", "v1")
    registry.fail("resolve", RegistryNotFound("team/app:v1"))  # dangling: repaired, a delete by tag
    unanswered: RegistryError
    if pushed:
        unanswered = RegistryConflict("team/app:v1 pushed while it was being deleted", current=digest("x"))
    else:
        unanswered = RegistryUnavailable("team/app:v1: the repair's PUT got a gateway's 504")
    unanswered.unanswered = True
    registry.fail("delete", unanswered)
    waits: list[float] = []

    async def wait(delay: float) -> None:
        waits.append(delay)
        await deferLater(clock, delay)

    outcome = run(make_cascade(registry, clock, late_write_grace=5.0), "team", wait=wait)
    clock.advance(1.0)  # the failed pass's backoff
    assert registry.remaining("team/") == {} and outcome == []
    assert waits == [
        1.0
    ]  # found empty at 1: waits until 5, for the PUT (`LateWrites.wait_out`), not a backoff
    registry.push("team/app", "v1", "placeholder")  # the PUT lands meanwhile
    clock.advance(3.9)
    assert outcome == []
    clock.advance(0.1)
    [result] = outcome
    assert isinstance(result, CascadeResult), result
    assert registry.remaining("team/") == {}  # the pass begun at 5 deleted what it left
    assert registry.deletes[-1] == ("team/app", digest("placeholder"))


def test_a_cascades_unanswered_repair_is_noted_with_its_tag() -> None:
    # The cascade's own note of an unanswered repair of team/app:v1 is by (team/app, v1): a
    # deletecollection whose selector keeps v1 waits for it, one whose selector cannot match v1 does
    # not (review r10own N1: the note with no tag, or another, passed every test).
    registry, clock = FakeRegistry(), Clock()
    late = LateWrites(clock)
    registry.push("team/app", "v1")
    registry.fail("resolve", RegistryNotFound("team/app:v1"))  # dangling: repaired, a delete by tag
    unanswered = RegistryUnavailable("team/app:v1: the repair's PUT got a gateway's 504")
    unanswered.unanswered = True
    registry.fail("delete", unanswered)
    run(make_cascade(registry, clock, late_write_grace=5.0, late_writes=late), "team")
    assert late.pending("team") is not None
    assert late.pending("team", Scope(None, lambda repository, tag: tag != "v1")) is None
    assert late.pending("team", Scope(None, lambda repository, tag: (repository, tag) == ("team/app", "v1")))


def test_a_late_write_one_cascade_noted_holds_back_the_process_other_cascades() -> None:
    # The leader's cascade and a deletecollection's share what may still land: a cascade that did not
    # make the write does not report the namespace empty before it can no longer land either.
    registry, clock = FakeRegistry(), Clock()
    late = LateWrites(clock)
    late.note("team", "team/app:v1", 5.0)
    outcome = run(make_cascade(registry, clock, late_writes=late), "team")
    clock.advance(4.9)
    assert outcome == []
    clock.advance(0.1)
    [result] = outcome
    assert isinstance(result, CascadeResult) and result.passes == 2
    assert late.pending("team") is None  # settled by the pass begun at 5
    [other] = run(make_cascade(registry, clock, late_writes=late), "team")
    assert other.passes == 1


def test_one_failing_repository_does_not_stop_the_others() -> None:
    registry, clock = FakeRegistry(), Clock()
    fill(registry)
    registry.fail("delete", RegistryUnavailable("reset"), times=1)
    outcome = run(make_cascade(registry, clock), "team")
    assert outcome == []
    # Everything but the one failed delete happened in the first pass.
    assert sum(len(t) for t in registry.remaining("team/").values()) in (1, 2)
    clock.advance(1.0)
    [result] = outcome
    assert registry.remaining("team/") == {}
    assert result.errors == 1


def test_a_tag_that_failed_to_resolve_waits_for_the_next_pass() -> None:
    # A registry error says nothing of the tag: it is neither gone nor dangling, so it is not sent to
    # the repair (a tag delete of its own) but deleted by digest in the next pass.
    registry, clock = FakeRegistry(), Clock()
    fill(registry)
    registry.fail("resolve", RegistryUnavailable("reset"), times=1)
    outcome = run(make_cascade(registry, clock), "team")
    assert outcome == []
    clock.advance(1.0)
    [result] = outcome
    assert registry.remaining("team/") == {}
    assert registry.tag_deletes == []
    assert result.errors == 1


def test_each_backoff_goes_through_wait_and_warns_naming_what_fails() -> None:
    registry, clock = FakeRegistry(), Clock()
    fill(registry)
    registry.fail("catalog", RegistryUnavailable("down"))  # pass 1
    registry.fail("resolve", RegistryUnavailable("HTTP 500"), times=4)  # every tag in pass 2
    waits: list[float] = []

    async def wait(delay: float) -> None:
        waits.append(delay)  # the controller gives the worker up here
        await deferLater(clock, delay)

    with collected_logs() as events:
        outcome = run(make_cascade(registry, clock, concurrency=1), "team", wait=wait)
        clock.pump([1.0, 2.0])
    [result] = outcome
    assert registry.remaining("team/") == {}
    assert waits == [1.0, 2.0] and result.errors == 2
    warnings = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
    assert len(warnings) == 2  # one per failed pass, i.e. per backoff step
    assert "namespace team: 1 failure(s) at catalog, e.g. down; retrying in 1.0s" in warnings[0]
    assert "namespace team: 4 failure(s) at team/app:latest, team/app:v1, team/app:v2, " in warnings[1]
    assert "team/deep/nested/repo:x, e.g. HTTP 500; retrying in 2.0s" in warnings[1]


class FailingResolves(FakeRegistry):
    """Every resolve fails, each with an error of its own, which the test can see go."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: weakref.WeakSet[Exception] = weakref.WeakSet()

    async def resolve(self, repository: str, tag: str) -> str:
        error = RegistryUnavailable(f"HTTP 500 for {repository}:{tag}")
        self.errors.add(error)
        raise error


def test_a_failing_pass_keeps_a_few_examples_not_every_error() -> None:
    """An error keeps its traceback and every frame on it: a pass that kept each one held a few KiB
    per failed request, for a whole namespace when the registry fails every resolve."""
    registry, clock, metrics = FailingResolves(), Clock(), CleanupMetrics()
    fill_large(registry, repositories=30, tags=20)
    held: list[int] = []

    async def wait(delay: float) -> None:
        gc.collect()
        held.append(len(registry.errors))  # the pass that failed is still in scope here
        raise Aborted("seen enough")

    with collected_logs() as events:
        [failure] = run(make_cascade(registry, clock, metrics=metrics), "team", wait=wait)
    assert failure.check(Aborted)
    assert held and held[0] <= 1
    assert metrics.registry_errors_total == 600
    [warning] = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
    assert "namespace team: 600 failure(s) at team/app0000:v0000, team/app0000:v0001, " in warning
    assert "team/app0000:v0009 and 590 more, e.g. HTTP 500 for " in warning


def test_read_only_mode_is_waited_out_not_taken_for_done() -> None:
    registry, clock, metrics = FakeRegistry(), Clock(), CleanupMetrics()
    fill(registry)
    registry.fail("delete", RegistryReadOnly("maintenance"), times=30)
    outcome = run(make_cascade(registry, clock, metrics=metrics), "team")
    clock.advance(30.0)
    assert outcome == []
    assert registry.remaining("team/")  # nothing could go yet, and the cascade knows it
    clock.pump([4.0] * 20)
    [result] = outcome
    assert registry.remaining("team/") == {}
    assert metrics.registry_readonly_waits_total == 30
    assert result.errors > 0


def test_the_guard_is_checked_before_every_delete() -> None:
    registry, clock = FakeRegistry(), Clock()
    fill(registry)

    def guard() -> str | None:
        return "the namespace exists again" if registry.deletes else None

    outcome = run(make_cascade(registry, clock, concurrency=1), "team", guard=guard)
    [failure] = outcome
    assert failure.check(Aborted)
    assert "exists again" in str(failure.value)
    assert len(registry.deletes) == 1


class LoggingRegistry(FakeRegistry):
    """Notes every request as it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        self.log.append("catalog")
        return await super().catalog(last, n)

    async def tags(self, repository: str) -> tuple[str, ...]:
        self.log.append("tags")
        return await super().tags(repository)

    async def resolve(self, repository: str, tag: str) -> str:
        self.log.append("resolve")
        return await super().resolve(repository, tag)

    async def delete_manifest(
        self,
        repository: str,
        manifest: str,
        *,
        hooks: WriteHooks | None = None,
    ) -> None:
        self.log.append("delete")
        await super().delete_manifest(repository, manifest, hooks=hooks)


@pytest.mark.parametrize("requests", [1, 2, 3, 4, 6])
def test_the_guard_is_checked_before_every_registry_request(requests: int) -> None:
    """A deletecollection's guard is its time budget: reads past it are as much an overrun as
    deletes, so no request of any kind is sent once the guard says stop."""
    registry, clock = LoggingRegistry(), Clock()
    fill(registry)

    def guard() -> str | None:
        return "not finished within 40s" if len(registry.log) >= requests else None

    [failure] = run(make_cascade(registry, clock, concurrency=1), "team", guard=guard)
    assert failure.check(Aborted)
    assert registry.log == ["catalog", "tags", "resolve", "resolve", "resolve", "delete"][:requests]


def test_a_confirmation_the_api_cannot_give_stops_the_deletes_and_denied_aborts() -> None:
    registry, clock = FakeRegistry(), Clock()
    fill(registry)
    down = [True]
    asked = [0]

    async def confirm() -> None:
        asked[0] += 1
        if down[0]:
            raise Unconfirmed("the cluster API does not answer")

    outcome = run(make_cascade(registry, clock), "team", confirm=confirm)
    # Asked again after 0.5, 1, 2 and 2 s (the default's delays, unjittered), then the pass fails;
    # the next pass, 1 s later, asks anew.
    clock.pump([0.5, 1.0, 2.0, 2.0])
    assert outcome == [] and registry.deletes == [] and asked[0] == 5 * 2  # two repositories
    clock.pump([1.0, 0.5, 1.0, 2.0, 2.0, 2.0])
    assert outcome == [] and registry.deletes == []  # never taken for "gone"
    down[0] = False
    clock.pump([2.0])
    [result] = outcome
    assert registry.remaining("team/") == {} and result.errors == 2

    registry2 = FakeRegistry()
    fill(registry2)

    async def deny() -> None:
        raise Aborted("the cluster API says the namespace exists")

    [failure] = run(make_cascade(registry2, clock), "team", confirm=deny)
    assert failure.check(Aborted)
    assert registry2.deletes == []


class CountingRegistry(FakeRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.resolves = 0

    async def resolve(self, repository: str, tag: str) -> str:
        self.resolves += 1
        return await super().resolve(repository, tag)


@pytest.mark.parametrize("digests", [100, 1000])
def test_an_intermittent_api_error_costs_a_delete_a_moment_not_the_pass(digests: int) -> None:
    """Every tenth namespace GET fails (a 429, say): each failed check is asked again, so the whole
    repository goes in one pass, each tag resolved once, at most one more GET per failure."""
    registry, clock = CountingRegistry(), Clock()
    for i in range(digests):
        registry.push("team/app", f"v{i}")
    asked = [0]

    async def confirm() -> None:
        asked[0] += 1
        if asked[0] % 10 == 0:
            raise Unconfirmed("429 Too Many Requests")

    backoff = lambda: Backoff(initial=1.0, factor=2.0, cap=30.0, jitter=0.0)  # noqa: E731
    outcome = run(make_cascade(registry, clock, backoff=backoff), "team", confirm=confirm)
    for _ in range(10 * digests):
        if outcome:
            break
        clock.advance(0.5)
    [result] = outcome
    assert registry.remaining("team/") == {}
    assert (result.passes, result.errors) == (2, 0)  # the deletes, then the listing that verifies
    assert registry.resolves == digests
    assert asked[0] <= digests * 10 // 9 + 1


def test_the_cluster_api_is_asked_before_every_delete_not_once_per_repository() -> None:
    """A stale store cannot vouch for a namespace: a repository's later deletes wait for an answer of
    their own, so the namespace's creation between two of them stops the second."""
    registry, clock = FakeRegistry(), Clock()
    for i in range(4):
        registry.push("team/app", f"v{i}")
    registry.push("team/app", "gone")
    asked = [0]

    async def confirm() -> None:
        asked[0] += 1
        if len(registry.deletes) == 2:
            raise Aborted("the cluster API says the namespace exists")

    [failure] = run(make_cascade(registry, clock, concurrency=1), "team", confirm=confirm)
    assert failure.check(Aborted)
    assert (len(registry.deletes), asked[0]) == (2, 3)
    assert registry.tag_deletes == []

    registry.deletes.clear()
    asked[0] = 0
    # Resolves to nothing (dangling, say): its repair is a delete as well.
    registry.fail("resolve", RegistryNotFound("team/app:gone"))
    [result] = run(make_cascade(registry, clock, concurrency=1), "team", confirm=lambda: succeed(asked))
    assert isinstance(result, CascadeResult) and registry.remaining("team/") == {}
    assert (len(registry.deletes), len(registry.tag_deletes), asked[0]) == (2, 1, 3)


def succeed(asked: list[int]) -> Deferred[None]:
    asked[0] += 1
    return Deferred.fromCoroutine(_nothing())


async def _nothing() -> None:
    return None


def test_each_delete_asks_a_question_of_its_own_after_it_asked() -> None:
    """Each delete waits for one call of the cluster API, begun for it: never for one under way when
    it asked (that could be an answer from before a creation), and never for that one and the next
    (the repository's other mutations wait for the call)."""
    registry, clock = FakeRegistry(), Clock()
    for i in range(4):
        registry.push(f"team/app{i}", "v1")
        registry.push(f"team/app{i}", "v2")
    answers: list[Deferred[None]] = []

    def confirm() -> Deferred[None]:
        answers.append(Deferred())
        return answers[-1]

    outcome = run(make_cascade(registry, clock, concurrency=4), "team", confirm=confirm)
    # app0..3's first deletes each asked: four calls, none answered, nothing deleted.
    assert len(answers) == 4 and registry.deletes == []
    answers[2].callback(None)
    assert [r for r, _ in registry.deletes] == ["team/app2"]
    # app2's second delete asks anew; the others still wait for their own calls only.
    assert len(answers) == 5
    while pending := [answer for answer in answers if not answer.called]:
        for answer in pending:
            answer.callback(None)
    # One call per delete: eight digests, eight calls, each answered once.
    assert len(registry.deletes) == 8 and len(answers) == 8
    [result] = outcome
    assert isinstance(result, CascadeResult) and registry.remaining("team/") == {}


class SlowDeletes(FakeRegistry):
    """A digest DELETE reaches the registry when the test says so; notes whether the namespace then
    existed again."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[str, Deferred[None]]] = []
        self.arrived: list[tuple[str, bool]] = []  # (repository, the namespace existed)
        self.exists = False

    async def delete_manifest(
        self,
        repository: str,
        manifest: str,
        *,
        hooks: WriteHooks | None = None,
    ) -> None:
        await run_hooks(hooks)  # the checks in the turn; the request then takes a while to arrive
        gate: Deferred[None] = Deferred()
        self.pending.append((repository, gate))
        await gate
        self.arrived.append((repository, self.exists))
        await super().delete_manifest(repository, manifest)

    def arrive(self, repository: str) -> None:
        [entry] = [p for p in self.pending if p[0] == repository]
        self.pending.remove(entry)
        entry[1].callback(None)


def test_a_delete_ready_after_the_namespace_exists_again_never_goes_on_an_answer_evaluated_before() -> None:
    """The documented window: deletes that reach the registry after the namespace exists again are
    at most one per repository (sent on an answer evaluated before), and at most the concurrency."""
    registry, clock = SlowDeletes(), Clock()
    for i in range(3):
        registry.push("team/app", f"a{i}")
    for i in range(2):
        registry.push("team/other", f"o{i}")
    gets: list[tuple[bool, Deferred[None]]] = []  # (the namespace existed when the API evaluated it, answer)

    def confirm() -> Deferred[None]:
        gets.append((registry.exists, Deferred()))  # evaluated when sent; the answer comes later
        return gets[-1][1]

    def answer() -> None:  # the oldest GET not answered yet
        existed, d = next(get for get in gets if not get[1].called)
        d.errback(Aborted("the cluster API says the namespace exists")) if existed else d.callback(None)

    outcome = run(make_cascade(registry, clock, concurrency=2), "team", confirm=confirm)
    while len(registry.pending) < 2:
        answer()  # the first delete of each repository goes
    registry.arrive("team/other")  # other's second delete asks: a GET evaluated now, answered later
    assert gets[-1][0] is False and not gets[-1][1].called
    # The namespace is created anew, with the image of app's second digest pushed into it.
    registry.exists = True
    second = sorted({digest(f"team/app:a{i}"): f"a{i}" for i in range(3)}.items())[1][1]
    registry.push("team/app", "new", f"team/app:{second}")
    registry.arrive("team/app")  # app's first delete reaches the registry late: the window
    # app's second delete is ready now: the GET under way was evaluated before, so it waits.
    while not outcome:
        if registry.pending:
            registry.arrive(registry.pending[0][0])
        else:
            answer()
    [failure] = outcome
    assert failure.check(Aborted)
    assert registry.repos["team/app"].get("new") == digest(f"team/app:{second}")  # the new tag is kept
    late = [repository for repository, existed in registry.arrived if existed]
    assert sorted(late) == ["team/app", "team/other"]  # one per repository, two (the concurrency) in all


def test_a_cancelled_cascade_cancels_the_question_it_waits_on() -> None:
    registry, clock = FakeRegistry(), Clock()
    registry.push("team/app", "v1")
    registry.push("team/other", "v1")
    cancelled: list[bool] = []
    answers: list[Deferred[None]] = []

    def confirm() -> Deferred[None]:
        answers.append(Deferred(lambda d: cancelled.append(True)))
        return answers[-1]

    task = Deferred.fromCoroutine(make_cascade(registry, clock).run("team", confirm=confirm))
    task.addErrback(lambda failure: None)
    task.cancel()
    assert answers and len(cancelled) == len(answers) and registry.deletes == []


def test_two_cascades_at_once_both_finish_without_errors() -> None:
    registry, clock = FakeRegistry(), Clock()
    for i in range(20):
        registry.push(f"team/app{i}", "v1")
        registry.push(f"team/app{i}", "v2", "shared")
    first = run(make_cascade(registry, clock, concurrency=3), "team")
    second = run(make_cascade(registry, clock, concurrency=2), "team")
    assert registry.remaining("team/") == {}
    [a], [b] = first, second
    assert a.errors == b.errors == 0
    assert a.manifests_deleted + b.manifests_deleted == 40


class SlowRegistry(FakeRegistry):
    """Every request takes `latency` on the clock, as a real registry's round trip would; counts the
    requests in flight and logs each as it is answered."""

    def __init__(self, clock: Clock, latency: float) -> None:
        super().__init__()
        self.clock, self.latency = clock, latency
        self.log: list[str] = []
        self.in_flight = self.most_in_flight = 0

    async def _slow(self, operation: str, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await deferLater(self.clock, self.latency)
            self.log.append(operation)
            return await call(self, *args)
        finally:
            self.in_flight -= 1

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        return await self._slow("catalog", FakeRegistry.catalog, last, n)

    async def tags(self, repository: str) -> tuple[str, ...]:
        return await self._slow("tags", FakeRegistry.tags, repository)

    async def resolve(self, repository: str, tag: str) -> str:
        return await self._slow("resolve", FakeRegistry.resolve, repository, tag)

    async def delete_manifest(
        self,
        repository: str,
        manifest: str,
        *,
        hooks: WriteHooks | None = None,
    ) -> None:
        await run_hooks(hooks)
        await self._slow("delete", FakeRegistry.delete_manifest, repository, manifest)


class Tasks:
    """Counts the tasks under way: coroutines run as Deferreds, as `gather`, `bounded_each` and the
    like run each of their concurrent calls. Each is a request sent or waiting for a registry slot,
    or the work that will send one, and holds its coroutine and Deferred (about a KiB)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.live: list[Deferred[Any]] = []
        self.most = 0
        original = Deferred.fromCoroutine

        def tracked(cls: type[Deferred[Any]], coroutine: Any) -> Deferred[Any]:
            d = original(coroutine)
            if not d.called:
                self.live.append(d)
            return d

        monkeypatch.setattr(Deferred, "fromCoroutine", classmethod(tracked))

    def sample(self) -> None:
        self.live = [d for d in self.live if not d.called]
        self.most = max(self.most, len(self.live))

    def drive(self, clock: Clock, outcome: list[Any], step: float) -> None:
        """Advance the clock a step at a time until the work ends, counting the tasks at each."""
        while not outcome:
            self.sample()
            clock.advance(step)


def fill_large(registry: FakeRegistry, repositories: int, tags: int) -> None:
    for r in range(repositories):
        for t in range(tags):
            registry.push(f"team/app{r:04d}", f"v{t:04d}")
    registry.push("team-a/keep", "x")


def test_a_large_namespace_is_deleted_as_it_is_read_with_pending_work_bounded_by_the_concurrency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A catalog batch of 100 repositories used to be read whole (every tag of every repository
    waiting for a resolve, about a KiB each) before its first delete: memory grew with the namespace,
    and a cascade stopped in that phase had deleted nothing. Repositories are now worked through a
    few at a time, a bounded chunk of tags each, and each chunk's digests go before the next is read."""
    registry = SlowRegistry(Clock(), 0.001)
    clock = registry.clock
    fill_large(registry, repositories=100, tags=12)
    registry.push("team/big", "shared", "shared")  # one repository of many tags, a few sharing a digest
    for t in range(400):
        registry.push("team/big", f"t{t:04d}", "shared" if t % 97 == 0 else None)
    tasks = Tasks(monkeypatch)
    outcome = run(make_cascade(registry, clock, concurrency=4), "team")
    tasks.drive(clock, outcome, 0.001)
    [result] = outcome
    assert isinstance(result, CascadeResult) and result.errors == 0
    assert registry.remaining("team/") == {} and registry.remaining("team-a/") == {"team-a/keep": ["x"]}
    assert registry.most_in_flight == 4
    # The cascade, a task per repository at work (4), and at most 100 tags of each resolving or
    # waiting to: not the 1,200 tags of the first catalog batch, nor the big repository's 401.
    assert tasks.most <= 1 + 4 * (1 + 100)
    first = registry.log.index("delete")
    assert registry.log[:first].count("resolve") <= 4 * 100
    # Every digest once, the shared one included. The three of its tags in later chunks (listed, gone
    # before their chunk was resolved) are not counted: who untagged them cannot be told.
    assert registry.log.count("delete") == 100 * 12 + 396
    assert (result.manifests_deleted, result.tags_deleted) == (100 * 12 + 396, 100 * 12 + 398)
    assert registry.tag_deletes == []  # gone, not dangling: no repair


class OtherParty(FakeRegistry):
    """Right after this cascade lists team/app, someone else (another replica's cascade, a delete
    through the API) deletes the digest of its tag b."""

    async def tags(self, repository: str) -> tuple[str, ...]:
        listed = await super().tags(repository)
        tags = self.repos.get(repository, {})
        if repository == "team/app" and "b" in tags:
            other = tags["b"]
            for tag in [t for t, d in tags.items() if d == other]:
                del tags[tag]
        return listed


def test_a_tag_someone_else_removed_is_not_counted_as_deleted_by_this_cascade() -> None:
    """Such a tag does not resolve and is no longer listed: progress, but whose delete untagged it
    cannot be told. It used to be counted as this cascade's whenever the repository's work had deleted
    any digest, so two cascades at once both counted it."""
    registry, clock, metrics = OtherParty(), Clock(), CleanupMetrics()
    registry.push("team/app", "a")  # deleted by this cascade
    for t in ("b", "c", "d"):
        registry.push("team/app", t, "other")  # one digest, deleted by the other party
    [result] = run(make_cascade(registry, clock, metrics=metrics), "team")
    assert registry.remaining("team/") == {}
    assert (result.manifests_deleted, result.tags_deleted, result.errors) == (1, 1, 0)
    assert (metrics.manifests_deleted_total, metrics.tags_deleted_total) == (1, 1)


class ListingRegistry(FakeRegistry):
    """Notes the repositories whose tags are listed, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.listed: list[str] = []

    async def tags(self, repository: str) -> tuple[str, ...]:
        self.listed.append(repository)
        return await super().tags(repository)


def test_a_pass_begun_after_a_repository_goes_round_the_namespace_and_nothing_beyond() -> None:
    """A deletecollection's call goes on where the last one stopped (`Walk`): its pass goes from there
    to the namespace's last repository, then from its first to where it began, and no further."""
    registry, clock = ListingRegistry(), Clock()
    fill(registry)
    for r in range(5):
        registry.push(f"team/app{r}", "v1")
    walk = Walk(began="team/app2")
    [result] = run(make_cascade(registry, clock, concurrency=1), "team", walk=walk)
    assert isinstance(result, CascadeResult) and result.passes == 2
    assert registry.remaining("team/") == {}
    assert registry.remaining("team-a/") == {"team-a/app": ["keep"]}
    assert registry.repos["team"] and registry.repos["tea/app"] and registry.repos["teamz/app"]
    # In the catalog's order, component by component: team/deep/… after team/app4.
    after = ["team/app3", "team/app4", "team/deep/nested/repo"]
    round_ = [*after, "team/app", "team/app0", "team/app1", "team/app2"]
    assert registry.listed == round_ * 2  # the pass that deletes, then the one that verifies


def test_a_cascade_stopped_mid_pass_leaves_the_walk_where_every_repository_before_is_done() -> None:
    """Repositories are worked on a few at a time and end in any order: the next cascade goes on
    after the last one before which all are done, and redoes the ones cut short."""
    registry, clock = ListingRegistry(), Clock()
    for r in range(6):
        registry.push(f"team/app{r}", "v1")
    gates: dict[str, Deferred[None]] = {}
    read = registry.tags

    async def tags(repository: str) -> tuple[str, ...]:
        gates[repository] = Deferred()
        await gates[repository]
        return await read(repository)

    registry.tags = tags  # type: ignore[method-assign]
    stop: list[str] = []
    walk = Walk()
    guard = lambda: stop[0] if stop else None  # noqa: E731
    outcome = run(make_cascade(registry, clock, concurrency=3), "team", walk=walk, guard=guard)
    assert sorted(gates) == ["team/app0", "team/app1", "team/app2"]
    gates["team/app1"].callback(None)  # done before app0: the walk cannot go past app0 yet
    assert walk.after is None
    gates["team/app0"].callback(None)
    assert walk.after == "team/app1" and "team/app3" in gates
    gates["team/app3"].callback(None)  # app2 still under way
    assert walk.after == "team/app1"
    stop.append("not finished within 40s")
    gates["team/app2"].callback(None)
    [failure] = outcome
    assert failure.check(Aborted) and walk.after == "team/app1"
    assert registry.remaining("team/") == {f"team/app{r}": ["v1"] for r in (2, 4, 5)}
    registry.tags = read  # type: ignore[method-assign]
    registry.listed.clear()
    [result] = run(make_cascade(registry, clock, concurrency=1), "team", walk=walk)
    assert isinstance(result, CascadeResult) and registry.remaining("team/") == {}
    # The rest of the first pass (app2, cut short, done again), then a whole verifying round.
    assert registry.listed == [f"team/app{r}" for r in (2, 3, 4, 5, 0, 1, 2, 3, 4, 5)]


class Operations(FakeRegistry):
    """Notes each tag list, resolve and delete, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []

    async def tags(self, repository: str) -> tuple[str, ...]:
        self.log.append(f"tags {repository}")
        return await super().tags(repository)

    async def resolve(self, repository: str, tag: str) -> str:
        self.log.append(f"resolve {tag}")
        return await super().resolve(repository, tag)

    async def delete_manifest(
        self, repository: str, manifest: str, *, hooks: WriteHooks | None = None
    ) -> None:
        await super().delete_manifest(repository, manifest, hooks=hooks)
        self.log.append(f"delete {manifest}")


def test_a_cascade_stopped_during_a_chunks_resolves_leaves_what_it_resolved_to_the_next_one() -> None:
    """A repository's first delete waits for its first chunk of resolves: a deletecollection's call
    whose budget ended before that kept nothing of it, and the next call resolved the same tags again
    and was stopped at the same place, so calls alone never emptied the repository (r1cleanup N1).
    The digests resolved go with the walk; the next cascade deletes them first, each confirmed as any
    delete (a namespace back meanwhile keeps them), and resolves only the rest."""
    registry, clock = Operations(), Clock()
    for t in range(6):
        registry.push("team/app", f"v{t}", "shared" if t in (0, 1) else None)  # v0, v1: one digest
    registry.push("team-a/app", "keep")
    walk = Walk()

    def after_three_resolves() -> str | None:
        return "not finished within 40s" if registry.log.count("resolve v2") else None

    cascade = make_cascade(registry, clock, concurrency=1)
    [stopped] = run(cascade, "team", guard=after_three_resolves, walk=walk)
    assert stopped.check(Aborted) and registry.deletes == []
    assert registry.log == ["tags team/app", "resolve v0", "resolve v1", "resolve v2"]
    kept = {digest("shared"): (2, OCI_MANIFEST), digest("team/app:v2"): (1, OCI_MANIFEST)}
    assert walk.state is not None and walk.state.resolved == {"team/app": kept}

    def back() -> Deferred[None]:
        raise Aborted("the namespace exists again")

    registry.log.clear()
    [stopped] = run(cascade, "team", confirm=back, walk=walk)
    assert stopped.check(Aborted) and registry.deletes == [] and registry.log == []
    assert walk.state.resolved == {"team/app": kept}  # nothing deleted, nothing forgotten

    confirmed = [0]
    [result] = run(cascade, "team", confirm=lambda: succeed(confirmed), walk=walk)
    assert isinstance(result, CascadeResult) and registry.remaining("team/") == {}
    assert registry.remaining("team-a/") == {"team-a/app": ["keep"]}
    first = sorted(kept)
    assert registry.log[:3] == [f"delete {first[0]}", f"delete {first[1]}", "tags team/app"]
    assert registry.log.count("resolve v0") == registry.log.count("resolve v2") == 0  # not read again
    assert sorted(tag for line in registry.log if (tag := line.removeprefix("resolve ")) != line) == [
        "v3",
        "v4",
        "v5",
    ]
    assert (result.tags_deleted, result.manifests_deleted) == (6, 5) and confirmed == [5]


def test_an_index_kept_by_a_cascade_stopped_between_its_children_is_read_again_by_the_next() -> None:
    """Children first holds for what a stopped cascade keeps: the index it was deleting is kept, and
    the next cascade reads it again, its child gone answering 404 (progress), before deleting it."""
    registry, clock = Indexes(), Clock()
    amd64, arm64 = registry.put("team/app", "amd64"), registry.put("team/app", "arm64")
    index = registry.put("team/app", "multi", [(amd64, OCI_MANIFEST), (arm64, OCI_MANIFEST)])
    registry.repos["team/app"] = {"multi": index}
    registry.said[index] = OCI_INDEX
    walk = Walk()

    def after_one_delete() -> str | None:
        return "not finished within 40s" if registry.deletes else None

    [stopped] = run(make_cascade(registry, clock), "team", guard=after_one_delete, walk=walk)
    assert stopped.check(Aborted) and [d for _, d in registry.deletes] == [amd64]
    assert walk.state is not None and walk.state.resolved == {"team/app": {index: (1, OCI_INDEX)}}
    [result] = run(make_cascade(registry, clock), "team", walk=walk)
    assert isinstance(result, CascadeResult) and registry.remaining("team/") == {}
    assert [d for _, d in registry.deletes] == [amd64, arm64, index] and registry.reads == [index, index]
    assert (result.tags_deleted, result.manifests_deleted) == (1, 2)


class Late(Operations):
    """The operation logged as ``late`` is answered in a second on ``clock``; cancelled meanwhile, it
    is answered all the same a second later, as the registry client hands its caller an answer that
    was already coming when it was cancelled (`within`: a success after a cancel is not turned into
    a CancelledError)."""

    def __init__(self, clock: Clock, late: str) -> None:
        super().__init__()
        self.clock, self.late = clock, late

    async def _answer(self, line: str) -> None:
        if line == self.late:
            try:
                await deferLater(self.clock, 1.0)
            except CancelledError:
                await deferLater(self.clock, 1.0)

    async def tags(self, repository: str) -> tuple[str, ...]:
        self.log.append(f"tags {repository}")
        await self._answer(f"tags {repository}")
        return await FakeRegistry.tags(self, repository)

    async def delete_manifest(
        self, repository: str, manifest: str, *, hooks: WriteHooks | None = None
    ) -> None:
        await run_hooks(hooks)
        await self._answer(f"delete {manifest}")
        await FakeRegistry.delete_manifest(self, repository, manifest)
        self.log.append(f"delete {manifest}")


def test_a_stopped_cascades_worker_answered_after_its_cancel_ends_with_the_cascade() -> None:
    """A cascade stopped by one worker (here the namespace back: a deletecollection call answered
    before its budget ends) cancels the others; one whose registry answer was already coming was
    handed it as a success and went on beside the next call on the same walk: it marked its
    repository done in `Walk.after`, took the next repository (and the digests an earlier call kept
    of it), asked to delete them, and so on (review r2fix N2). Its answer still comes; nothing
    follows."""
    clock = Clock()
    registry = Late(clock, "tags team/app1")
    registry.repos["team/app0"] = {}  # empty: done at once
    registry.repos["team/app1"] = {}  # listed late, its list cancelled by the stop
    registry.push("team/app2", "v1")  # its delete is refused: the namespace is back
    registry.push("team/app3", "v1")
    walk = Walk()
    earlier = {digest("team/app3:v1"): (1, OCI_MANIFEST)}  # kept by an earlier call
    walk.next_pass(round_done=True).resolved["team/app3"] = dict(earlier)
    asked = [0]

    def back() -> Deferred[None]:
        asked[0] += 1
        raise Aborted("the namespace exists again")

    [stopped] = run(make_cascade(registry, clock, concurrency=2), "team", confirm=back, walk=walk)
    assert stopped.check(Aborted) and registry.deletes == []
    assert registry.log == ["tags team/app0", "tags team/app1", "tags team/app2", "resolve v1"]
    assert walk.after == "team/app0" and asked == [1]
    kept = {"team/app3": earlier, "team/app2": {digest("team/app2:v1"): (1, OCI_MANIFEST)}}
    assert walk.state is not None and walk.state.resolved == kept
    clock.advance(1.0)
    clock.advance(1.0)  # app1's list answered, after its cancel
    assert not clock.getDelayedCalls()
    assert registry.log == ["tags team/app0", "tags team/app1", "tags team/app2", "resolve v1"]
    assert walk.after == "team/app0" and asked == [1] and walk.state.resolved == kept


def test_a_stopped_cascades_delete_answered_after_its_cancel_keeps_nothing_in_the_walk() -> None:
    """As above, the worker answered late a delete of its repository's kept digests: it went on to
    the next one, stopped at its check, and wrote what was left in the walk, over what the next call
    may have kept there meanwhile (review r2fix N2). What it leaves is the next call's to list."""
    clock = Clock()
    first = min(digest("team/app0:v1"), digest("team/app0:v2"))  # deleted first
    registry = Late(clock, f"delete {first}")
    registry.push("team/app0", "v1")
    registry.push("team/app0", "v2")
    registry.push("team/app1", "v1")  # its delete is refused: the namespace is back
    walk = Walk()
    asked = [0]

    def once() -> Deferred[None]:
        if asked[0] > 0:
            asked[0] += 1
            raise Aborted("the namespace exists again")
        return succeed(asked)

    [stopped] = run(make_cascade(registry, clock, concurrency=2), "team", confirm=once, walk=walk)
    assert stopped.check(Aborted) and registry.deletes == [] and asked == [2]
    kept = {"team/app1": {digest("team/app1:v1"): (1, OCI_MANIFEST)}}
    assert walk.state is not None and walk.state.resolved == kept
    clock.advance(1.0)
    clock.advance(1.0)  # the delete of app0's first digest answered, after its cancel
    assert not clock.getDelayedCalls()
    assert registry.deletes == [("team/app0", first)] and asked == [2]
    assert walk.state.resolved == kept  # not app0's second digest as well


class Distribution28Order(ListingRegistry):
    """The catalog in distribution 2.8's order, a walk of its storage: `team/app/0` before
    `team/app` (the directory `0` sorts before `_manifests`), while `last=` answers the names after
    it component by component (docs/registry.md, "Catalog")."""

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        self._gate("catalog")
        names = sorted(self.repos, key=lambda name: [*name.split("/"), "_manifests"])
        after = [name for name in names if last is None or name.split("/") > last.split("/")]
        return CatalogPage(repositories=after[:n], more=len(after) > n)


@pytest.mark.parametrize("began", [None, "team/a", "team/b"])
def test_a_walk_resumed_after_a_digit_named_nested_repository_lists_its_parent(began: str | None) -> None:
    """A call that stopped with `team/app/0` done and `team/app` under way left the walk after
    `team/app/0`; the next one's catalog seek from there leaves `team/app` out on distribution 2.8,
    and its round reported the namespace empty with a tag pushed there meanwhile left. (Also when
    the round began elsewhere, and when it had wrapped round to the namespace's first repository.)"""
    registry, clock = Distribution28Order(), Clock()
    for name in ("a", "app/0", "app", "b"):
        registry.push(f"team/{name}", "v1")
    registry.push("team-a/app", "keep")
    walk = Walk(began=began)

    def budget() -> str | None:
        # The first pass deleted everything; the verifying one has done app/0 and taken up app.
        if registry.listed.count("team/app/0") == 2 and walk.after == "team/app/0":
            if "late" not in registry.repos["team/app"]:
                registry.push("team/app", "late")  # ahead of the round
            return "not finished within 40s"
        return None

    [stopped] = run(make_cascade(registry, clock, concurrency=1), "team", guard=budget, walk=walk)
    assert stopped.check(Aborted) and walk.after == "team/app/0"
    assert registry.remaining("team/") == {"team/app": ["late"]}
    registry.listed.clear()
    [result] = run(make_cascade(registry, clock, concurrency=1), "team", walk=walk)  # the next call
    assert isinstance(result, CascadeResult) and result.tags_deleted == 1
    assert registry.remaining("team/") == {} and registry.remaining("team-a/") == {"team-a/app": ["keep"]}
    assert registry.listed[0] == "team/app"  # before the seek after app/0, which leaves it out


class Distribution28Pages(Distribution28Order):
    """And its pages: one whose last name is followed by a repository it is nested in (`team/app`
    after `team/app/0`) comes with no next link, whatever follows (docs/registry.md, "Catalog")."""

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        page = await super().catalog(last, n)
        names = page.repositories
        if page.more:
            following = (await super().catalog(last, n + 1)).repositories[n]
            if names[-1].startswith(following + "/"):
                return CatalogPage(repositories=names, more=False)
        return page


@pytest.mark.parametrize("began", [None, "team/app"])
def test_a_catalog_page_that_ends_in_a_digit_named_nested_repository_does_not_end_the_round(
    began: str | None,
) -> None:
    """A page that ended in `team/app/0` was taken for the catalog's end (2.8 sends no next link),
    and the seek after it leaves `team/app` out: the round missed `team/app` and every name after it,
    and the namespace was reported empty with their tags left. Also for a round that wrapped round
    and ends with `team/app`, cut off at that page."""
    registry, clock = Distribution28Pages(), Clock()
    for name in ("a", "app/0", "app", "b"):
        registry.push(f"team/{name}", "v1")
    registry.push("team-a/app", "keep")
    walk = Walk(began=began)
    [result] = run(make_cascade(registry, clock, concurrency=1, page_size=2), "team", walk=walk)
    assert isinstance(result, CascadeResult) and result.tags_deleted == 4
    assert registry.remaining("team/") == {} and registry.remaining("team-a/") == {"team-a/app": ["keep"]}


def test_the_repositories_a_seek_leaves_out() -> None:
    assert skipped_by_seek("team/app/0") == ["team/app"]
    assert skipped_by_seek("team/app/0/x/1") == ["team/app", "team/app/0/x"]
    assert skipped_by_seek("team/0app") == []  # `team` itself is no repository of the namespace
    assert skipped_by_seek("team/app/x0") == skipped_by_seek("team") == []


def test_the_dry_run_count_reads_a_few_repositories_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = SlowRegistry(Clock(), 0.001)
    fill_large(registry, repositories=150, tags=20)
    tasks = Tasks(monkeypatch)
    outcome: list[Any] = []
    Deferred.fromCoroutine(make_cascade(registry, registry.clock).contents("team")).addBoth(outcome.append)
    tasks.drive(registry.clock, outcome, 0.001)
    [contents] = outcome
    assert (contents.repositories, contents.tags) == (150, 3000)
    assert registry.deletes == [] and registry.most_in_flight == 4
    # The count and a reader per slot: not a tags() read (and its whole answer) per repository of a batch.
    assert tasks.most <= 1 + 4


def test_contents_counts_without_deleting() -> None:
    registry, clock = FakeRegistry(), Clock()
    fill(registry)
    outcome: list[Any] = []
    Deferred.fromCoroutine(make_cascade(registry, clock).contents("team")).addBoth(outcome.append)
    [contents] = outcome
    assert (contents.repositories, contents.tags) == (2, 4)
    assert registry.deletes == []


def test_not_a_namespace_name_is_refused() -> None:
    [failure] = run(make_cascade(FakeRegistry(), Clock()), "Not_A_Namespace")
    assert failure.check(ValueError)


def test_triggers_fire_on_termination_and_deletion_only() -> None:
    fired: list[tuple[str, str, str | None]] = []
    triggers = NamespaceTriggers(lambda ns, why, uid: fired.append((ns, why, uid)))

    def ns(name: str, terminating: bool = False, uid: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "uid": uid or f"uid-{name}"}
        if terminating:
            meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
        return {"metadata": meta}

    triggers.on_add(ns("live"))
    triggers.on_add(ns("dying", terminating=True))
    triggers.on_update(ns("a"), ns("a", terminating=True))
    triggers.on_update(ns("a", terminating=True), ns("a", terminating=True))  # status churn
    triggers.on_delete(ns("a", terminating=True))
    triggers.on_delete(ns("Not_Valid"))
    # A relist after a 410 reports a namespace created anew under the name as an update of the old
    # one: another uid is another namespace, whose own Terminating state starts its own cleanup.
    triggers.on_update(ns("b", terminating=True), ns("b", terminating=True, uid="uid-b2"))
    triggers.on_update(ns("c", terminating=True), ns("c", uid="uid-c2"))  # live: nothing to clean
    triggers.on_update(ns("d"), ns("d", uid="uid-d2"))
    assert fired == [
        ("dying", "terminating", "uid-dying"),
        ("a", "terminating", "uid-a"),
        ("a", "deleted", "uid-a"),
        ("b", "terminating", "uid-b2"),
    ]


def test_options_and_metric_names() -> None:
    from payloadtags.cleanup import CleanupOptions

    options = CleanupOptions()
    assert (options.sweep_period, options.sweep_dry_run, options.leader_elect) == (3600.0, False, True)
    election = options.leader_election
    assert (election.lease_duration, election.renew_deadline, election.retry_period) == (15.0, 10.0, 2.0)
    bads: list[dict[str, Any]] = [
        {"sweep_period": -1},
        {"cascade_concurrency": 0},
        {"retry_initial": 5, "retry_cap": 1},
    ]
    for bad in bads:
        with pytest.raises(ValueError):
            CleanupOptions(**bad)
    samples = CleanupMetrics(tags_deleted_total=3).samples()
    assert samples["payloadtags_cleanup_tags_deleted_total"] == 3.0
    assert all(name.startswith("payloadtags_cleanup_") for name in samples)


def test_a_delete_whose_confirmation_was_answered_after_the_cascade_ended_is_not_sent() -> None:
    # Review r3clean F1: a stopped cascade's worker whose confirmation was under way when the cascade
    # ended (answered all the same after its cancel, as `Late`'s registry answers are) sends no
    # write: the write hook's check asks whether the run ended after the confirmation too, not only
    # before it.
    clock = Clock()
    registry = Late(clock, "none")
    registry.push("team/app0", "v1")
    registry.push("team/app1", "v1")
    asked: list[str] = []

    async def confirm() -> Any:
        asked.append("asked")
        if len(asked) == 1:  # app0's delete: the cluster API answers in a second, cancelled or not
            try:
                await deferLater(clock, 1.0)
            except CancelledError:
                await deferLater(clock, 1.0)
            return None
        raise Aborted("the namespace exists again")  # app1's: the cascade stops

    [stopped] = run(make_cascade(registry, clock, concurrency=2), "team", confirm=confirm, walk=Walk())
    assert stopped.check(Aborted) and registry.deletes == []
    clock.advance(1.0)
    clock.advance(1.0)
    assert not clock.getDelayedCalls()
    assert registry.deletes == []  # the worker's confirmation came after the cascade had ended
