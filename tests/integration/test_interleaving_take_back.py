"""A tag-by-tag deletecollection and the tags its own process's late writes bring back after its
selection was read (docs/consistency.md, "deletecollection"): the slow tier's seed 80302 made
deterministic, the cases review r5own found in the first attempt at it (F1, F2, F3, L1), and what
bounds the call's extra looks (review r7own F1, L2).

Each runs `_OwnLateWrite` (tests/integration/test_interleaving.py): replica 1 deletes tag by tag,
its proxy holding a write until ``reaches`` fires.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import formatEvent

from payloadtags.access.authn import UserInfo
from payloadtags.access.rbac import RbacAuthorizer, RbacIndex
from payloadtags.api.errors import ApiError
from payloadtags.api.options import DeleteOptions, ListOptions, list_options
from payloadtags.api.tags import TagsService
from payloadtags.model import GROUP
from payloadtags.names import TagRef, ref_from_name
from payloadtags.registry.client import RegistryClient
from payloadtags.registry.errors import RegistryError
from payloadtags.registry.late import COPY
from tests.integration.test_interleaving import _OwnLateWrite
from tests.support import images
from tests.support.dangling import make_dangling
from tests.support.faultproxy import ERROR_BEFORE, LATE
from tests.support.interleaving import USER
from tests.support.logcapture import collected_logs
from tests.support.registry_server import RegistryServer

REPLICA = 1  # deletes tag by tag: its namespace is not Terminating for it


async def _retag_killed_of_a_tag_gone(run: _OwnLateWrite) -> None:
    """Replica 1's single delete of t0 killed with its re-tag held in the proxy, then t0 (and t1, on the
    same manifest) gone, its manifest deleted by digest as the other replica's removal deletes it: a
    deletecollection now selects without t0, which the re-tag brings back once it lands (seed 80302)."""
    await run.fill()
    await _killed_retag(run)
    digest = images.resolve(run.registry.url, run.repository, "t0")
    assert digest is not None
    images.delete_manifest(run.registry.url, run.repository, digest)
    _hold_only_that_write(run)


async def _killed_retag(run: _OwnLateWrite) -> None:
    """Replica 1's single delete of t0, killed once its re-tag is in the proxy, held."""
    run.begin_removal(run.namespace)
    tag = TagRef(run.namespace, run.repository.split("/", 1)[1], "t0")
    service = run.replicas[REPLICA].service
    await _kill_once_held(
        run, Deferred.fromCoroutine(service.delete(USER, run.namespace, tag.name, DeleteOptions()))
    )


async def _kill_once_held(run: _OwnLateWrite, deleting: Deferred[Any]) -> None:
    """Kills replica 1's ``deleting`` once the proxy holds a write of it, noted as the run's kills are."""
    while not run.proxy.injected[LATE]:
        await deferLater(run.reactor, 0.01, lambda: None)
    run.cancels.append((REPLICA, run.now()))
    deleting.cancel()
    with pytest.raises(CancelledError):
        await deleting


def _hold_only_that_write(run: _OwnLateWrite) -> None:
    """From now on the proxy holds no other write: the deletecollection's own re-tags go through."""
    held = run.proxy.decide
    run.proxy.decide = lambda method, path: None if run.reaches.called else held(method, path)


def _release_before_the_first_look(
    run: _OwnLateWrite, monkeypatch: pytest.MonkeyPatch, before: Callable[[], object] | None = None
) -> None:
    """The held write goes on, and lands, once the call's selection was read and its first deletes
    ended, before its first look (``before`` runs first). Not alongside the call's own deletes: a
    digest DELETE that reads a tag link distribution 2.8 is rewriting for a PUT in the same repository
    fails with 500 (docs/consistency.md, "Dangling tags"), which would answer a retriable 503 here."""

    async def release(selections: int) -> None:
        if selections == 2:
            if before is not None:
                before()
            run.reaches.callback(None)
            await run.proxy.settled()

    _before_each_selection(run, monkeypatch, release)


def _before_each_selection(
    run: _OwnLateWrite, monkeypatch: pytest.MonkeyPatch, step: Callable[[int], Awaitable[None]]
) -> None:
    """From now on ``step(n)`` runs before replica 1's nth read of tags (`TagsService._select`):
    the call's selection, then each pass's look."""
    service = run.replicas[REPLICA].service
    select = TagsService._select
    selections = 0

    async def stepped(self: TagsService, *args: Any, **kwargs: Any) -> Any:
        nonlocal selections
        if self is service:
            selections += 1
            await step(selections)
        return await select(self, *args, **kwargs)

    monkeypatch.setattr(TagsService, "_select", stepped)


async def _after_the_200(run: _OwnLateWrite) -> dict[str, list[str]]:
    """The checker's look after replica 1's 200, and what the namespace holds then."""
    await run.after_200(run.namespace, REPLICA)
    await run.proxy.settled()
    run.check_own_writes()
    return run.content(run.namespace)


async def _stop(run: _OwnLateWrite) -> None:
    await run.stop()
    for proxy in run.proxies:
        await proxy.stop()


async def _answer(
    service: TagsService,
    namespace: str,
    options: ListOptions,
    user: UserInfo = USER,
    time_left: float = 8.0,
) -> ApiError | None:
    """The deletecollection's error, None for its 200."""
    try:
        await service.delete_collection(user, namespace, options, DeleteOptions(), time_left=time_left)
    except ApiError as error:
        return error
    return None


def _names_t0_left(error: ApiError | None, run: _OwnLateWrite) -> None:
    """The retriable 503 whose tags left are t0 alone: the retry's selection holds it."""
    assert error is not None, "answered 200"
    t0 = TagRef(run.namespace, run.repository.split("/", 1)[1], "t0").name
    assert (error.code, error.retry_after) == (503, 1), error.message
    assert error.details is not None and [c["field"] for c in error.details.causes or ()] == [t0], (
        error.message
    )


# A deletecollection's query (t0, t1: those tags' names) and whether its 200 leaves t0 back: only
# a call that asks for every tag its selector matches (no page) takes in what its own late write
# brought back, when its selector matches it.
TAKES_BACK = {
    "all of the namespace": ({}, False),
    "a selector that matches t0": ({"fieldSelector": ["metadata.name!={t1}"]}, False),
    "a selector that does not match t0": ({"fieldSelector": ["metadata.name!={t0}"]}, True),
    "a page": ({"limit": ["100"]}, True),
}


@pytest.mark.parametrize("case", list(TAKES_BACK))
@pytest_twisted.ensureDeferred
async def test_a_deletecollection_deletes_what_its_own_late_write_brought_back_after_its_selection(
    reactor: Any, fresh_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Seed 80302, deterministic: replica 1 deletes all of its namespace after
    `_retag_killed_of_a_tag_gone`; the re-tag lands after the call's selection was read, and the call
    waits for it. t0 existed before the single delete and, as the registry
    ends, after it: the 200 must not leave it. Failed before the fix: the call deleted only its
    selection after the wait, and answered 200 with t0 there, the answering replica's own write. A
    call that does not ask for t0 (`TAKES_BACK`) leaves it, as a tag its request is not about.
    Its audit line for t0 says that t0 was not in its selection and whose write brought it back: it
    named the caller alone, as though the caller had selected it (review r7own N1)."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    service = run.replicas[REPLICA].service
    path = run.repository.split("/", 1)[1]
    names = {tag: TagRef(run.namespace, path, tag).name for tag in ("t0", "t1")}
    query, kept = TAKES_BACK[case]
    options = list_options(
        {key: [value.format(**names) for value in values] for key, values in query.items()}
    )
    try:
        await _retag_killed_of_a_tag_gone(run)
        _release_before_the_first_look(run, monkeypatch)
        with collected_logs() as events:
            answered, _ = await service.delete_collection(USER, run.namespace, options, DeleteOptions())
        assert run.reaches.called
        left = await _after_the_200(run)
    finally:
        await _stop(run)
    assert run.proxy.injected[LATE] == 1
    audit = [formatEvent(e) for e in events if e.get("log_namespace") == "payloadtags.audit"]
    if kept:
        # The checker's invariant is all of the namespace's: a call that asks for less is no case of it.
        assert left == {run.repository: ["t0"]}
        assert not any(f"{run.repository}:t0 " in line for line in audit), audit
    else:
        assert left == {}
        assert run.report.violations == [], run.report.violations[0][:800]
        [t0] = [line for line in audit if f"deleted tag {run.repository}:t0 " in line]
        assert f"by {USER.name}, not in the request's selection: a re-tag that payloadtags made" in t0, t0
        assert "for another request or its cleanup brought it back" in t0, t0
        # The 200 names its selection in list order, then the tag it took in (r13own L1).
        named = [str(obj.metadata.name) for obj in answered]
        assert named[-1] == names["t0"] and names["t0"] not in named[:-1], named
        assert named[:-1] == sorted(named[:-1], key=lambda n: ref_from_name(run.namespace, n).sort_key), named
    # The tags it selected: the caller's alone.
    selected = [line for line in audit if f"{run.repository}:t0 " not in line]
    assert selected and not any("selection" in line for line in selected), audit


@pytest.mark.parametrize("sent", ["before the call", "as the selection is read"])
@pytest_twisted.ensureDeferred
async def test_a_deletecollection_looks_for_what_a_write_of_its_time_left_once_out_of_the_record(
    reactor: Any, fresh_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch, sent: str
) -> None:
    """The re-tag lands after the selection and leaves the process's record (its time passed) before
    the call's first look at the tags ends: the call, which then has no write to wait for, still looks
    once for what a write out as it began, or sent since (r5own F2: sent during the selection's read,
    before its registry read of the repository), left, and deletes t0."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    service = run.replicas[REPLICA].service
    late_writes = run.replicas[REPLICA].client.late_writes

    async def around_the_write(selections: int) -> None:
        if selections == 1 and sent == "as the selection is read":
            await _killed_retag(run)
            digest = images.resolve(run.registry.url, run.repository, "t0")
            assert digest is not None
            images.delete_manifest(run.registry.url, run.repository, digest)
            _hold_only_that_write(run)
        if selections == 2:  # the first pass's look, after its deletes
            run.reaches.callback(None)
            await run.proxy.settled()
            while late_writes.pending(run.namespace) is not None:
                await deferLater(reactor, 0.05, lambda: None)

    try:
        if sent == "before the call":
            await _retag_killed_of_a_tag_gone(run)
        else:
            await run.fill()
        _before_each_selection(run, monkeypatch, around_the_write)
        await service.delete_collection(USER, run.namespace, list_options({}), DeleteOptions())
        assert run.reaches.called
        left = await _after_the_200(run)
    finally:
        await _stop(run)
    assert run.proxy.injected[LATE] == 1
    assert left == {}
    assert run.report.violations == [], run.report.violations[0][:800]


@pytest_twisted.ensureDeferred
async def test_a_deletecollection_keeps_a_tag_its_own_late_write_brought_back_once_a_client_pushed_it_again(
    reactor: Any, fresh_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the seed's case, but a client pushes t0 again (another manifest) after the re-tag landed,
    before the call looks for what that write left: t0 is then no longer where the write would leave
    it, but a push after the selection, which is not part of the request: kept, and the call still
    answers 200."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    service = run.replicas[REPLICA].service
    pushed: list[str] = []

    async def push_before_the_look_for_what_it_left(selections: int) -> None:
        if selections == 2:  # the first pass's look: the re-tag lands first
            run.reaches.callback(None)
            await run.proxy.settled()
        if selections == 3:  # after the wait: the look for what the write left
            pushed.append(images.push_oci_image(run.registry.url, run.repository, "t0", seed="client"))

    try:
        await _retag_killed_of_a_tag_gone(run)
        _before_each_selection(run, monkeypatch, push_before_the_look_for_what_it_left)
        await service.delete_collection(USER, run.namespace, list_options({}), DeleteOptions())
        left = run.content(run.namespace)
    finally:
        await _stop(run)
    assert run.proxy.injected[LATE] == 1
    assert left == {run.repository: ["t0"]}
    assert images.resolve(run.registry.url, run.repository, "t0") == pushed[0]


@pytest_twisted.ensureDeferred
async def test_a_client_push_after_the_selection_at_an_answered_restores_digest_is_kept(
    reactor: Any, fresh_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """r5own F1 (the first attempt's data loss): a restore answered before the deletecollection began
    (never out during it) put t0 back on its original digest while another write of the namespace may
    still land (a killed single delete's re-tag of b:t2, held; b:t2 then deleted by digest). A client
    deletes t0, the call of all of the namespace selects without t0 and b:t2, and the client pushes t0
    again with the very same image (a CI re-push of the same build) after the selection: not part of
    the request, and a client's push: kept, and the call answers 200 (b:t2, which the re-tag brings
    back meanwhile, is the seed's case, for the tests above)."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    service = run.replicas[REPLICA].service
    ns = run.namespace
    a = run.repository
    b = run.repositories[ns][1]
    t0 = TagRef(ns, a.split("/", 1)[1], "t0").name
    b_t2 = TagRef(ns, b.split("/", 1)[1], "t2").name
    failing = [True]
    copied = [False]
    retags = [0]

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and path == f"/v2/{b}/manifests/t2":
            retags[0] += 1
            return LATE if retags[0] == 1 else None  # the single delete's; the call's own goes
        if failing[0] and method == "PUT" and path == f"/v2/{a}/manifests/t0":
            copied[0] = True  # the re-tag to its copy: the copy's DELETEs after it fail
        if failing[0] and copied[0] and method == "DELETE" and path.startswith(f"/v2/{a}/manifests/sha256:"):
            return ERROR_BEFORE
        return None

    pushed: list[str] = []
    try:
        await run.fill()
        fetched = images.get_manifest(run.registry.url, a, "t0")
        assert fetched is not None
        run.proxy.decide = decide
        await _kill_once_held(run, Deferred.fromCoroutine(service.delete(USER, ns, b_t2, DeleteOptions())))
        b_digest = images.resolve(run.registry.url, b, "t2")
        assert b_digest is not None
        images.delete_manifest(run.registry.url, b, b_digest)  # another call's (t2, t3)
        # The single delete of t0 fails (its copy's DELETEs refused): t0 restored, answered.
        with pytest.raises(RegistryError):
            await service.delete(USER, ns, t0, DeleteOptions())
        assert images.resolve(run.registry.url, a, "t0") == fetched.digest
        failing[0] = False
        images.delete_manifest(run.registry.url, a, fetched.digest)  # the client's delete (t0, t1)

        def push_after_the_selection() -> None:
            pushed.append(
                images.push_manifest(run.registry.url, a, "t0", fetched.content, fetched.media_type)
            )

        _release_before_the_first_look(run, monkeypatch, push_after_the_selection)
        error = await _answer(service, ns, list_options({}))
        await run.proxy.settled()
        left = run.content(ns)
    finally:
        await _stop(run)
    assert pushed == [fetched.digest]
    assert error is None, error.message
    assert left.get(a) == ["t0"], "the client's push after the selection was deleted"
    assert images.resolve(run.registry.url, a, "t0") == fetched.digest


@pytest.mark.parametrize("selected", [False, True], ids=["outside the selection", "selected"])
@pytest_twisted.ensureDeferred
async def test_a_tag_a_late_restore_brought_back_is_named_not_deleted(
    reactor: Any, fresh_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch, selected: bool
) -> None:
    """A restore's content is the client's own (what the tag held before the delete): a tag found there
    after the selection may be a client's push of the same image as well as the restore. Replica 1's
    single delete of t0 fails (its copy's DELETEs refused) and is killed with its restore held.
    Outside the selection: the copy (t0 with it) is deleted by digest, the call of all of the namespace
    selects without t0, and the restore lands before its first look. Selected: the call selects
    t0 on the copy and deletes it, and the restore lands right after its first look. Either way the
    call does not delete t0 where the restore put it: it answers the retriable 503 naming it, and the
    retry's selection holds it."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    service = run.replicas[REPLICA].service
    ns = run.namespace
    a = run.repository
    t0 = TagRef(ns, a.split("/", 1)[1], "t0").name
    failing = [True]
    puts = [0]

    def decide(method: str, path: str) -> str | None:
        if failing[0] and method == "PUT" and path == f"/v2/{a}/manifests/t0":
            puts[0] += 1
            return LATE if puts[0] == 2 else None  # the re-tag goes, the restore is held
        if failing[0] and puts[0] and method == "DELETE" and path.startswith(f"/v2/{a}/manifests/sha256:"):
            return ERROR_BEFORE
        return None

    try:
        await run.fill()
        # Every tag of the namespace, t0 with them: the call's "of N selected", with t0 taken in or not.
        total = sum(len(tags) for tags in run.content(ns).values())
        original = images.resolve(run.registry.url, a, "t0")
        run.proxy.decide = decide
        run.begin_removal(ns)
        await _kill_once_held(run, Deferred.fromCoroutine(service.delete(USER, ns, t0, DeleteOptions())))
        failing[0] = False
        copy = images.resolve(run.registry.url, a, "t0")
        assert copy not in (None, original)
        if selected:
            select = TagsService._select
            selections = 0

            async def land_after_the_first_look(self: TagsService, *args: Any, **kwargs: Any) -> Any:
                nonlocal selections
                selections += self is service
                looked = await select(self, *args, **kwargs)
                if self is service and selections == 2:
                    run.reaches.callback(None)
                    await run.proxy.settled()
                return looked

            monkeypatch.setattr(TagsService, "_select", land_after_the_first_look)
        else:
            images.delete_manifest(run.registry.url, a, copy)  # another call deleted t0 meanwhile
            _release_before_the_first_look(run, monkeypatch)
        error = await _answer(service, ns, list_options({}))
        await run.proxy.settled()
        left = run.content(ns)
    finally:
        await _stop(run)
    assert run.proxy.injected[LATE] == 1
    _names_t0_left(error, run)
    assert error is not None
    # A tag taken in counts among those selected (review r13own L2).
    assert f"1 of {total} selected tag(s) are still there" in " ".join(error.message.split()), error.message
    assert left == {a: ["t0"]}
    assert images.resolve(run.registry.url, a, "t0") == original


@pytest_twisted.ensureDeferred
async def test_a_tag_its_own_write_brought_back_whose_read_fails_is_no_200(
    reactor: Any, fresh_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """r5own F3: the seed's case, but the registry fails the read of t0 by tag after the re-tag
    landed: the call cannot tell whether it is where its write would leave it, so it neither deletes
    it nor answers 200 with it there: the retriable 503 naming it, as for a selected tag."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    service = run.replicas[REPLICA].service
    t0_path = f"/v2/{run.repository}/manifests/t0"
    try:
        await _retag_killed_of_a_tag_gone(run)

        decide = run.proxy.decide

        def fail_its_read(method: str, path: str) -> str | None:
            if run.reaches.called and method in ("GET", "HEAD") and path == t0_path:
                return ERROR_BEFORE
            return decide(method, path)

        run.proxy.decide = fail_its_read
        _release_before_the_first_look(run, monkeypatch)
        error = await _answer(service, run.namespace, list_options({}))
        await run.proxy.settled()
        left = run.content(run.namespace)
    finally:
        await _stop(run)
    assert run.proxy.injected[LATE] == 1
    _names_t0_left(error, run)
    assert run.proxy.injected[ERROR_BEFORE] >= 1
    assert left == {run.repository: ["t0"]}


@pytest_twisted.ensureDeferred
async def test_a_tag_its_own_write_brought_back_left_dangling_is_no_200(
    reactor: Any, fresh_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed's case, but t0 is left dangling on the re-tag's copy (listed, its manifest gone, as a
    half-failed digest DELETE leaves it) before the call looks for what that write left: the call
    cannot delete it at a digest, so it neither deletes it nor answers 200 with it listed: the
    retriable 503 naming it, whose retry repairs and deletes it as a selected tag."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    service = run.replicas[REPLICA].service

    async def dangle_before_the_look_for_what_it_left(selections: int) -> None:
        if selections == 2:  # the first pass's look: the re-tag lands first
            run.reaches.callback(None)
            await run.proxy.settled()
            copy = images.resolve(run.registry.url, run.repository, "t0")
            assert copy is not None
            make_dangling(run.registry, run.repository, copy)

    try:
        await _retag_killed_of_a_tag_gone(run)
        _before_each_selection(run, monkeypatch, dangle_before_the_look_for_what_it_left)
        error = await _answer(service, run.namespace, list_options({}))
        left = run.content(run.namespace)
    finally:
        await _stop(run)
    assert run.proxy.injected[LATE] == 1
    _names_t0_left(error, run)
    assert left == {run.repository: ["t0"]}


def _may_delete_all_but(user: UserInfo, namespace: str, paths: list[str]) -> RbacAuthorizer:
    """RBAC rules: ``user`` may get every repository path of ``namespace``, and delete ``paths`` only."""
    index = RbacIndex()
    meta = {"namespace": namespace, "name": "narrow", "uid": "uid-narrow"}
    rule = {"apiGroups": [GROUP], "resources": ["payloadrepositoryaccesses"]}
    index.upsert(
        "Role",
        {
            "kind": "Role",
            "metadata": meta,
            "rules": [{**rule, "verbs": ["get"]}, {**rule, "verbs": ["delete"], "resourceNames": paths}],
        },
    )
    index.upsert(
        "RoleBinding",
        {
            "kind": "RoleBinding",
            "metadata": {"namespace": namespace, "name": "narrow"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "narrow"},
            "subjects": [{"kind": "User", "name": user.name}],
        },
    )
    return RbacAuthorizer(index, ready=lambda: True)


@pytest_twisted.ensureDeferred
async def test_a_tag_its_own_write_brought_back_stays_where_the_caller_may_not_delete(
    reactor: Any, fresh_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """r5own L1, with a real RBAC rule: the seed's case, by a caller who may see every path of the
    namespace but delete only the other repository's, and who selects (field selector) every tag but
    app0's t2 and t3. t0, brought back in app0 by the re-tag, is not the caller's to delete: it stays,
    and the answer is no 200 but the retriable 503 naming it (a selection holding it is refused)."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    service = run.replicas[REPLICA].service
    path = run.repository.split("/", 1)[1]
    others = [repository.split("/", 1)[1] for repository in run.repositories[run.namespace][1:]]
    user = UserInfo(name="narrow")
    names = [TagRef(run.namespace, path, tag).name for tag in ("t2", "t3")]
    options = list_options({"fieldSelector": [",".join(f"metadata.name!={name}" for name in names)]})
    try:
        await _retag_killed_of_a_tag_gone(run)
        object.__setattr__(service, "authorizer", _may_delete_all_but(user, run.namespace, others))
        _release_before_the_first_look(run, monkeypatch)
        error = await _answer(service, run.namespace, options, user)
        assert run.reaches.called
        await run.proxy.settled()
        left = run.content(run.namespace)
    finally:
        await _stop(run)
    _names_t0_left(error, run)
    assert left == {run.repository: ["t0", "t2", "t3"]}


TIME_LEFT = 3.0
STREAM = 8  # writes of the process in the namespace, one as each look of the call begins


def _during_each_look(
    run: _OwnLateWrite, monkeypatch: pytest.MonkeyPatch, write: Callable[[int], Awaitable[None]]
) -> list[int]:
    """From the call's first look on, ``write(n)`` as each read of tags of replica 1 begins, up to
    `STREAM` of them; returns [reads so far, writes so far]."""
    counts = [0, 0]

    async def step(selections: int) -> None:
        counts[0] = selections
        if selections >= 2 and counts[1] < STREAM:
            counts[1] += 1
            await write(counts[1])

    _before_each_selection(run, monkeypatch, step)
    return counts


@pytest.mark.parametrize("selector", [True, False], ids=["one tag", "all of the namespace"])
@pytest.mark.parametrize("pause", [0.0, 0.5], ids=["at once", "0.5 s apart, past the deadline"])
@pytest_twisted.ensureDeferred
async def test_other_clients_single_deletes_during_a_deletecollection_do_not_keep_it_looking(
    reactor: Any,
    fresh_registry: RegistryServer,
    monkeypatch: pytest.MonkeyPatch,
    pause: float,
    selector: bool,
) -> None:
    """A deletecollection (of app0's t1 by field selector, or of all of the namespace) while other
    clients push tags to another repository and delete them one by one through the same process, one
    as each look of the call begins: each delete is a re-tag write of the process in the namespace,
    answered, its copy deleted. None can leave a tag the call's look lists (not matched; or gone with
    its copy), so the call answers its 200 after one look. Each made it look again (review r7own F1):
    a listing of the namespace per write, past the request's deadline (0.5 s apart, the 200 came
    after 4.4-5.4 s of a call given 3)."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    run.proxy.decide = lambda method, path: None  # nothing held
    service = run.replicas[REPLICA].service
    ns = run.namespace
    a, b = run.repositories[ns][0], run.repositories[ns][1]
    t1 = TagRef(ns, a.split("/", 1)[1], "t1").name

    async def a_client_deletes_a_tag_of_b(n: int) -> None:
        await deferLater(reactor, pause, lambda: None)
        images.push_oci_image(run.registry.url, b, f"s{n}", seed=f"s{n}")
        await service.delete(USER, ns, TagRef(ns, b.split("/", 1)[1], f"s{n}").name, DeleteOptions())

    try:
        await run.fill()
        counts = _during_each_look(run, monkeypatch, a_client_deletes_a_tag_of_b)
        query = {"fieldSelector": [f"metadata.name={t1}"]} if selector else {}
        deleted, _ = await service.delete_collection(
            USER, ns, list_options(query), DeleteOptions(), time_left=TIME_LEFT
        )
    finally:
        await _stop(run)
    selections, streamed = counts
    if selector:
        assert [obj.metadata.name for obj in deleted] == [t1]
    assert selections == 2, f"{selections - 1} looks after the selection, {streamed} deletes by others"


@pytest_twisted.ensureDeferred
async def test_other_clients_deletes_whose_copy_someone_else_deleted_do_not_keep_a_call_looking(
    reactor: Any, fresh_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above (all of the namespace, at once), but each other client's copy in app1 is deleted by
    digest by someone else right before that client's own digest DELETE, which then gets 404: the tag
    went with the copy all the same (`gone` on the 404 path), so the call still looks once. Every
    other test passed with that `gone` call removed (review r8own L2)."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    run.proxy.decide = lambda method, path: None
    service = run.replicas[REPLICA].service
    ns = run.namespace
    b = run.repositories[ns][1]
    deleted_first: list[str] = []
    delete_manifest = RegistryClient._delete_manifest

    async def someone_else_first(self: RegistryClient, repository: str, digest: str) -> None:
        if repository == b:
            images.delete_manifest(run.registry.url, repository, digest)
            deleted_first.append(digest)
        await delete_manifest(self, repository, digest)

    monkeypatch.setattr(RegistryClient, "_delete_manifest", someone_else_first)

    async def a_client_deletes_a_tag_of_b(n: int) -> None:
        images.push_oci_image(run.registry.url, b, f"s{n}", seed=f"s{n}")
        await service.delete(USER, ns, TagRef(ns, b.split("/", 1)[1], f"s{n}").name, DeleteOptions())

    try:
        await run.fill()
        counts = _during_each_look(run, monkeypatch, a_client_deletes_a_tag_of_b)
        await service.delete_collection(USER, ns, list_options({}), DeleteOptions(), time_left=TIME_LEFT)
    finally:
        await _stop(run)
    assert deleted_first
    assert counts[0] == 2, f"{counts[0] - 1} looks after the selection, {counts[1]} deletes by others"


@pytest.mark.parametrize("selector", [True, False], ids=["one tag", "all of the namespace"])
@pytest_twisted.ensureDeferred
async def test_a_deletecollection_looks_again_for_writes_of_its_process_only_within_its_deadline(
    reactor: Any, fresh_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch, selector: bool
) -> None:
    """Writes of the process to tags of another repository, answered during each look of the call,
    0.5 s apart, whose copies are not known gone (recorded by hand: a re-tag whose sender stopped
    before deleting its copy). Selecting app0's t1 alone, the call's look cannot list such a tag: its
    200 after one look. Of all of the namespace, each makes the call look again, but not once its
    deadline (less the margin) is spent: the retriable 503 naming the tags the latest such writes may
    have put back, not a 200 at the stream's end (review r7own F1)."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    run.proxy.decide = lambda method, path: None
    service = run.replicas[REPLICA].service
    late_writes = run.replicas[REPLICA].client.late_writes
    ns = run.namespace
    a, b = run.repositories[ns][0], run.repositories[ns][1]
    t1 = TagRef(ns, a.split("/", 1)[1], "t1").name

    async def a_write_answered(n: int) -> None:
        await deferLater(reactor, 0.5, lambda: None)
        leave = (b, f"s{n}", f"sha256:{n:064x}")
        late_writes.ended(ns, late_writes.sent(ns, f"deleting tag {b}:s{n}", leave, kind=COPY), None)

    query = {"fieldSelector": [f"metadata.name={t1}"]} if selector else {}
    try:
        await run.fill()
        counts = _during_each_look(run, monkeypatch, a_write_answered)
        error = await _answer(service, ns, list_options(query), time_left=TIME_LEFT)
    finally:
        await _stop(run)
    if selector:
        assert error is None, error.message
        assert counts[0] == 2, counts
        return
    assert error is not None, f"answered 200 after {counts[0] - 1} looks"
    assert (error.code, error.retry_after) == (503, 1), error.message
    assert error.details is not None
    named = [c["field"] for c in error.details.causes or ()]
    # No look read them: not `ResourceLeft` (review r8own L1).
    assert {c["reason"] for c in error.details.causes or ()} == {"NotLookedFor"}, error.details.causes
    written = [TagRef(ns, b.split("/", 1)[1], f"s{n}").name for n in range(1, counts[1] + 1)]
    # The latest write (sent as the last look began), and any other not looked for since.
    assert named and named[-1] == written[-1] and set(named) <= set(written), error.message
    assert counts[1] < STREAM, counts


@pytest_twisted.ensureDeferred
async def test_a_deletecollection_out_of_time_to_look_counts_the_tag_it_took_in(
    reactor: Any, fresh_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the call of all of the namespace above, the first write answered during its looks put a
    real tag back (b:s1, which the next look lists and the call takes in and deletes): the retriable
    503 once its deadline is spent counts s1 among the tags it deleted (review r13own L2)."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    run.proxy.decide = lambda method, path: None
    service = run.replicas[REPLICA].service
    late_writes = run.replicas[REPLICA].client.late_writes
    ns = run.namespace
    b = run.repositories[ns][1]

    async def a_write_answered(n: int) -> None:
        await deferLater(reactor, 0.5, lambda: None)
        if n == 1:
            images.push_oci_image(run.registry.url, b, "s1")
            digest = images.resolve(run.registry.url, b, "s1")
            assert digest is not None
        else:
            digest = f"sha256:{n:064x}"
        leave = (b, f"s{n}", digest)
        late_writes.ended(ns, late_writes.sent(ns, f"deleting tag {b}:s{n}", leave, kind=COPY), None)

    try:
        await run.fill()
        total = sum(len(tags) for tags in run.content(ns).values())
        _during_each_look(run, monkeypatch, a_write_answered)
        error = await _answer(service, ns, list_options({}), time_left=TIME_LEFT)
        left = run.content(ns)
    finally:
        await _stop(run)
    assert error is not None, "answered 200"
    message = " ".join(error.message.split())
    assert (error.code, error.retry_after) == (503, 1), message
    assert left == {}, left
    # The selection and s1, taken in.
    assert f"its {total + 1} tag(s) are deleted" in message, message


@pytest.mark.parametrize(
    "held",
    [
        "held across the call",
        "held, with a label selector keeping no tag",
        "held, with a label selector keeping every tag",
        "out as each look begins",
        "unanswered just before",
        "to t1 itself, held",
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_write_to_a_tag_the_selector_cannot_match_does_not_hold_a_one_tag_call(
    reactor: Any, fresh_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch, held: str
) -> None:
    """A deletecollection of app0's t1 by field selector while a write of the process to a tag of app1
    is out or may land (another client's single delete whose re-tag the registry has not answered, or
    did not answer: recorded by hand, as the client records it). The call's look cannot list that tag,
    so its 200 after one look. It waited for such a write as for any of the namespace (review r8own
    F1): held across the call, its 504 naming that other write at the deadline; out as each look
    begins (answered 0.3 s later, its copy deleted), one more look per write; unanswered just
    before, its 504 saying to wait about 20 s. A write that could put back t1 itself is still waited
    for: held across the call, its 504. With a label selector beside the name, held: one that keeps
    no tag (tags carry no labels, so ``-l app`` selects nothing) waited for every repository, to its
    504 (review r9own L1); one that keeps every tag (``!app``) is as none."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    run.proxy.decide = lambda method, path: None
    service = run.replicas[REPLICA].service
    late_writes = run.replicas[REPLICA].client.late_writes
    ns = run.namespace
    a, b = run.repositories[ns][0], run.repositories[ns][1]
    t1 = TagRef(ns, a.split("/", 1)[1], "t1").name
    raw = {"fieldSelector": [f"metadata.name={t1}"]}
    if held.startswith("held, with a label selector"):
        raw["labelSelector"] = ["app" if held.endswith("no tag") else "!app"]
    query = list_options(raw)
    counts = [0, 0]
    try:
        await run.fill()
        if held == "unanswered just before":
            leave = (b, "s0", f"sha256:{0:064x}")
            late_writes.ended(ns, late_writes.sent(ns, f"deleting tag {b}:s0", leave, kind=COPY), 20.0)
            error = await _answer(service, ns, query, time_left=TIME_LEFT)
        elif "held" in held:
            leave = (
                (a, "t1", f"sha256:{0:064x}")
                if held == "to t1 itself, held"
                else (b, "s0", f"sha256:{0:064x}")
            )
            number = late_writes.sent(ns, f"deleting tag {leave[0]}:{leave[1]}", leave, kind=COPY)
            error = await _answer(service, ns, query, time_left=TIME_LEFT)
            late_writes.ended(ns, number, None)
        else:

            async def a_write_out_then_answered(n: int) -> None:
                leave = (b, f"s{n}", f"sha256:{n:064x}")
                number = late_writes.sent(ns, f"deleting tag {b}:s{n}", leave, kind=COPY)
                reactor.callLater(0.3, late_writes.ended, ns, number, None)
                # and its copy deleted, as `_put_then_delete` says it
                reactor.callLater(0.31, late_writes.gone, ns, leave)

            counts = _during_each_look(run, monkeypatch, a_write_out_then_answered)
            error = await _answer(service, ns, query, time_left=TIME_LEFT)
        left = run.content(ns)
    finally:
        await _stop(run)
    if held == "to t1 itself, held":
        assert error is not None and (error.code, error.retry_after) == (504, None), error
        assert f"while deleting tag {a}:t1" in error.message, error.message
        return
    assert error is None, f"{error.code}: {error.message}"
    if held.endswith("no tag"):
        assert "t1" in left.get(a, []), left  # not selected
        return
    assert "t1" not in left.get(a, []), left
    if held == "out as each look begins":
        assert counts[0] == 2, counts


# A deletecollection by a selector that pins no name, and the tag of app1 another client's re-tag is
# to (s0): whether the selector keeps that tag.
NOT_PINNED = {
    "metadata.name!= that tag": ("metadata.name!={s0}", False),
    "metadata.name!= another tag": ("metadata.name!={t1}", True),
    "metadata.namespace=": ("metadata.namespace={ns}", True),
}


@pytest.mark.parametrize("case", list(NOT_PINNED))
@pytest.mark.parametrize("held", ["held across the call", "unanswered just before"])
@pytest_twisted.ensureDeferred
async def test_a_deletecollection_waits_only_for_writes_to_tags_its_selector_keeps(
    reactor: Any, fresh_registry: RegistryServer, case: str, held: str
) -> None:
    """As above, for selectors that pin no tag's name: a write of the process to app1's s0 (another
    client's single delete whose re-tag the registry has not answered, held across the call, or did
    not answer just before) holds the call only when its selector keeps s0. It waited for every
    repository the caller sees whatever the selector (review r8own F1): `metadata.name!=<s0>` waited
    to its 504 naming that write. One it keeps is still waited for: the 504 naming it."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    run.proxy.decide = lambda method, path: None
    service = run.replicas[REPLICA].service
    late_writes = run.replicas[REPLICA].client.late_writes
    ns = run.namespace
    a, b = run.repositories[ns][0], run.repositories[ns][1]
    names = {
        "s0": TagRef(ns, b.split("/", 1)[1], "s0").name,
        "t1": TagRef(ns, a.split("/", 1)[1], "t1").name,
        "ns": ns,
    }
    selector, keeps = NOT_PINNED[case]
    query = list_options({"fieldSelector": [selector.format(**names)]})
    leave = (b, "s0", f"sha256:{0:064x}")
    try:
        await run.fill()
        number = late_writes.sent(ns, f"deleting tag {b}:s0", leave, kind=COPY)
        if held == "unanswered just before":
            late_writes.ended(ns, number, 20.0)
        error = await _answer(service, ns, query, time_left=TIME_LEFT)
        if held == "held across the call":
            late_writes.ended(ns, number, None)
        left = run.content(ns)
    finally:
        await _stop(run)
    if keeps:
        assert error is not None and (error.code, error.retry_after) == (504, None), error
        assert f"while deleting tag {b}:s0" in error.message, error.message
        return
    assert error is None, f"{error.code}: {error.message}"
    assert left == {}, left  # every tag of the namespace but s0, which it does not hold


@pytest.mark.parametrize("ends", ["answered", "cancelled while it waits"])
@pytest_twisted.ensureDeferred
async def test_a_deletecollection_leaves_no_watch_behind(
    reactor: Any, fresh_registry: RegistryServer, ends: str
) -> None:
    """A deletecollection's `Watch` is released when it ends, answered or cancelled (its client gone,
    its deadline): kept, it would gather every later write of the namespace for the process's life,
    and each write sent would go through it (review r7own L2)."""
    run = _OwnLateWrite(reactor, fresh_registry, REPLICA)
    service = run.replicas[REPLICA].service
    late_writes = run.replicas[REPLICA].client.late_writes
    try:
        await _retag_killed_of_a_tag_gone(run)
        call = Deferred.fromCoroutine(
            service.delete_collection(USER, run.namespace, list_options({}), DeleteOptions())
        )
        await deferLater(reactor, 0.3, lambda: None)
        assert not call.called  # waiting for the held re-tag
        assert late_writes.watching(run.namespace) == 1
        if ends == "answered":
            run.reaches.callback(None)
            await call
        else:
            call.cancel()
            with pytest.raises(CancelledError):
                await call
            run.reaches.callback(None)
        await run.proxy.settled()
    finally:
        await _stop(run)
    assert late_writes.watching(run.namespace) == 0
