"""A deletecollection tag by tag (a live namespace, or one whose state is unknown) and a registry
write that went unanswered or is still out: it waits within its budget and its request's deadline
for the writes of what the caller may see, keeps a push made meanwhile, and otherwise answers 504
naming the write.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from payloadtags.access.authz import AlwaysAllow
from payloadtags.api.errors import ApiError
from payloadtags.api.options import DeleteOptions, list_options
from payloadtags.api.tags import TagsService
from payloadtags.cleanup.removal import NamespaceRemover
from payloadtags.cleanup.sweep import EXISTS, UNKNOWN
from payloadtags.inventory import Inventory
from payloadtags.metrics import CountingAuthorizer, Metrics
from payloadtags.names import encode_name
from payloadtags.registry.client import RegistryClient
from payloadtags.registry.errors import RegistryError
from payloadtags.registry.late import Landing, Scope
from tests.support import images
from tests.support.faultproxy import ERROR_BEFORE, GATEWAY_LATE, STALL, FaultProxy
from tests.support.interleaving import USER
from tests.support.unanswered import (
    LANDS,
    TIMEOUT,
    WaitClock,
    first_of,
    land_and_wait_out,
    released,
    removal_service,
    removal_until_it_waits,
    retag_removal,
    single_delete_fails,
    wired,
)


def _state(service: TagsService, state: str) -> None:
    """The cluster API's answer about the namespace, for the removal's check."""

    async def check(namespace: str) -> tuple[str, str | None]:
        return state, (None if state == EXISTS else "the cluster API failed: HTTP 503")

    assert isinstance(service.removal, NamespaceRemover)
    service.removal.check = check


def _message(error: ApiError, code: int, retry_after: int | None) -> str:
    """``error``'s message, its white space folded, once its code and Retry-After are as given."""
    assert (error.code, error.retry_after) == (code, retry_after), error.message
    return " ".join(error.message.split())


def _push_kept(error: ApiError, path: str, other: str) -> str:
    """The message of the retriable 503 that keeps another client's push of v1 (at ``other``) to
    ``path``, checked to name it."""
    message = _message(error, 503, 1)
    assert f'1 of 1 selected tag(s) are still there: "{encode_name(path, "v1")}"' in message, message
    assert f"points at {other}" in message, message
    return message


def _retag_may_land(repo: str) -> str:
    """How a 504 names the single delete's re-tag of ``repo``:v1 that may still land."""
    return f"deleting tag {repo}:v1, and may still carry it out within about {LANDS:g}s"


# EXISTS: `kubectl delete prt --all -n ns` in a live namespace. UNKNOWN: the namespace controller's
# deletecollection of a Terminating namespace whose state payloadtags could not read (a cluster API
# blip): both delete tag by tag.
@pytest.mark.parametrize("state", [EXISTS, UNKNOWN])
@pytest_twisted.ensureDeferred
async def test_a_tag_by_tag_deletecollection_is_a_timeout_while_a_single_deletes_retag_may_land(
    registry, repo, state
) -> None:
    """A single delete's re-tag goes unanswered; a deletecollection of the namespace tag by tag right
    after deleted the tag, listed the selection empty and answered 200, and then the re-tag landed
    (review-removal4 finding 1: only the wholesale removal read the record of writes that may still
    land). With less budget than the write may take to land, it is now a 504 without Retry-After
    that names the write; the call after that time deletes what the write left."""
    namespace = repo.partition("/")[0]
    hold, proxy, clock, client, service = retag_removal(registry, repo, shorter_than=0.0, budget=0.9)
    _state(service, state)
    async with released(proxy, client, hold):
        assert (await single_delete_fails(service, repo)).unanswered
        with pytest.raises(ApiError) as answered:
            await service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
        assert images.list_tags(registry, repo) == []
        error = answered.value
        assert (error.code, error.reason, error.retry_after) == (504, "Timeout", None), error.message
        assert error.details is None or error.details.retry_after_seconds is None
        message = " ".join(error.message.split())
        assert f"deleting tag {repo}:v1" in message, message
        assert f"may still carry it out within about {LANDS:g}s" in message, message
        assert "then list the tags" in message, message
        hold.callback(None)  # the re-tag lands now, within the time both answers named
        await proxy.settled()
        assert images.list_tags(registry, repo) == ["v1"]
        clock.advance(LANDS)  # past the time it could land
        items, _ = await service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
    assert [item.spec.tag for item in items] == ["v1"]
    assert images.list_tags(registry, repo) == []


@pytest_twisted.ensureDeferred
async def test_a_single_deletes_unanswered_writes_are_noted_with_their_tag(registry, repo) -> None:
    """A single delete of v1 whose re-tag goes unanswered is noted at its end with v1 (every write of
    a delete is to its own tag): a deletecollection whose selectors do not keep v1 does not wait for
    it, one that keeps v1 waits for it as long as for the namespace (review r8own F1). Noted by
    repository only, it held every selector."""
    namespace = repo.partition("/")[0]
    hold, proxy, _, client, service = retag_removal(registry, repo, shorter_than=0.0, budget=0.9)
    _state(service, EXISTS)
    async with released(proxy, client, hold):
        assert (await single_delete_fails(service, repo)).unanswered
        late_writes = client.late_writes
        others = Scope(None, lambda repository, tag: tag != "v1")
        v1 = Scope(None, lambda repository, tag: (repository, tag) == (repo, "v1"))
        assert late_writes.pending(namespace, others) is None
        assert late_writes.pending(namespace, v1) == late_writes.pending(namespace)
        assert late_writes.pending(namespace) == (f"deleting tag {repo}:v1", late_writes.now() + LANDS)


@pytest_twisted.ensureDeferred
async def test_a_tag_by_tag_deletecollection_waits_within_its_budget_for_a_retag_that_may_land(
    registry, repo
) -> None:
    """As above, with budget enough: the call waits until the re-tag can no longer land, then deletes
    what it left and answers 200."""
    namespace = repo.partition("/")[0]
    hold, proxy, clock, client, service = retag_removal(registry, repo, shorter_than=50.0, budget=100.0)
    _state(service, EXISTS)
    async with released(proxy, client, hold):
        await single_delete_fails(service, repo)
        removing, delays = await removal_until_it_waits(service, namespace, clock)
        assert images.list_tags(registry, repo) == []
        assert not removing.called, "the deletecollection answered while the re-tag could still land"
        # The re-tag lands now, within the wait.
        items, _ = await land_and_wait_out(registry, repo, proxy, hold, clock, delays, removing)
    assert [item.spec.tag for item in items] == ["v1"]
    assert images.list_tags(registry, repo) == []


@pytest_twisted.ensureDeferred
async def test_a_tag_by_tag_deletecollection_keeps_a_push_of_a_selected_name_made_while_it_waits(
    registry, repo
) -> None:
    """As above, but the re-tag never lands: another client pushes a new image as v1 while the call
    waits for it. The call's next pass deleted whatever v1 then named, the other client's image, and
    answered 200 (review-ds D1). It deletes only where a late write of this process would leave a tag
    (the re-tag's copy here); a name pointing anywhere else is kept and answered the first pass's
    retriable 503, as a push of the same name before its first look is."""
    namespace, _, path = repo.partition("/")
    hold, proxy, clock, client, service = retag_removal(registry, repo, shorter_than=50.0, budget=100.0)
    _state(service, EXISTS)
    async with released(proxy, client, hold):
        await single_delete_fails(service, repo)
        removing, delays = await removal_until_it_waits(service, namespace, clock)
        assert not removing.called
        assert images.list_tags(registry, repo) == []
        other = images.push_oci_image(registry, repo, "v1", seed="another-client")
        [delay] = delays
        clock.advance(delay)
        with pytest.raises(ApiError) as answered:
            await removing
        assert images.resolve(registry, repo, "v1") == other
    message = _push_kept(answered.value, path, other)
    assert message.endswith("; retry"), message


class PushedAfterTheLook(Inventory):
    """The inventory whose every look at where a tag points (`digest`: the tag-by-tag deletecollection's
    after its wait for a late write) is followed at once by ``push``: another client's push of the tag
    between that look and the delete."""

    def __init__(self, client: RegistryClient, push: Any) -> None:
        super().__init__(wired(client))
        self.push = push

    async def digest(self, ref: Any) -> str:
        found = await super().digest(ref)
        self.push()
        return found


@pytest_twisted.ensureDeferred
async def test_a_tag_by_tag_deletecollection_keeps_a_push_of_a_selected_name_made_after_its_look(
    registry, repo
) -> None:
    """As above, the re-tag landing within the wait: the call looks where v1 points (at the re-tag's
    copy, where it may delete it), and another client pushes a new image as v1 right after that look,
    before the delete (`docker push` racing `kubectl delete prt --all`). The delete, by name, deleted
    the other client's image, and the call answered 200 listing v1 (review-ds2 F3). The delete now goes
    only where the look found the tag (`Registry.delete_tag`'s ``expected``, read again in the
    repository's turn right before its first write): the push is kept, and answered the retriable
    503."""
    namespace, _, path = repo.partition("/")
    hold, proxy, clock, client, service = retag_removal(registry, repo, shorter_than=50.0, budget=100.0)
    _state(service, EXISTS)
    pushed: list[str] = []
    async with released(proxy, client, hold):
        await single_delete_fails(service, repo)
        service.inventory = PushedAfterTheLook(
            client, lambda: pushed.append(images.push_oci_image(registry, repo, "v1", seed="another-client"))
        )
        removing, delays = await removal_until_it_waits(service, namespace, clock)
        with pytest.raises(ApiError) as answered:
            await land_and_wait_out(registry, repo, proxy, hold, clock, delays, removing)
        [other] = pushed
        assert images.resolve(registry, repo, "v1") == other
    message = _push_kept(answered.value, path, other)
    assert "pushed again meanwhile, so kept" in message, message


@pytest_twisted.ensureDeferred
async def test_a_tag_by_tag_deletecollection_waits_no_longer_than_its_requests_deadline_allows(
    registry, repo
) -> None:
    """A re-tag that may land for 4 s more, a budget of 100 s and a request deadline of 1.5 s: the
    call waited for the write past the deadline, which cut it with the generic 504 ("get the tags
    again to see which are gone"): the user looked at once, saw none, and the re-tag then brought the
    tag back (review-ds D5). The wait ends a margin before the deadline: with no time left for the
    write, the call answers its own 504, which names the write and how long it may still land."""
    namespace = repo.partition("/")[0]
    hold, proxy, clock, client, service = retag_removal(registry, repo, shorter_than=50.0, budget=100.0)
    _state(service, EXISTS)
    async with released(proxy, client, hold):
        await single_delete_fails(service, repo)
        removing, delays = await removal_until_it_waits(service, namespace, clock, time_left=1.5)
        if not removing.called:
            # The bound of its look at the tags, half the margin past the cut (review-ds6 F2), is no
            # wait: the call ends with the clock standing still.
            assert delays == [1.0], f"waited {delays} s, past the request's deadline"
            more = clock.waits()
            more.addCallback(delays.append)
            await first_of(removing, more)
        assert removing.called, f"waited {delays[1:]} s, past the request's deadline"
        with pytest.raises(ApiError) as answered:
            await removing
    message = _message(answered.value, 504, None)
    assert _retag_may_land(repo) in message, message
    assert "wait that long, then list the tags" in message, message


@pytest_twisted.ensureDeferred
async def test_a_tag_by_tag_deletecollections_own_unanswered_delete_names_a_longer_write_there(
    registry, repo
) -> None:
    """Its own delete's re-tag goes unanswered (it may land for about 4 s) while another write of this
    process in the same repository may land for 30 s: the collection's 504 named its own write only,
    "wait that long, then list the tags", and a look after that second showed the namespace falsely
    done (review-ds8 F5). It names the latest write that may land there too, and to wait for it."""
    namespace = repo.partition("/")[0]
    hold, proxy, clock, client, service = retag_removal(registry, repo, shorter_than=50.0, budget=100.0)
    _state(service, EXISTS)
    late_writes = service.late_writes
    assert late_writes is not None
    late_writes.note(namespace, f"re-tagging {repo}:v0", late_writes.now() + 30.0, repo)
    async with released(proxy, client, hold):
        removing, _ = await removal_until_it_waits(service, namespace, clock, time_left=1.5)
        with pytest.raises(ApiError) as answered:
            await removing
    message = _message(answered.value, 504, None)
    assert "the registry did not answer writes made to delete 1 of the 1" in message, message
    assert f"re-tagging {repo}:v0, and may still carry it out within about 30s" in message, message
    assert "wait until the latest has passed, then list the tags" in message, message


@pytest.mark.parametrize("look", ["lists neither", "fails"])
@pytest_twisted.ensureDeferred
async def test_a_tag_by_tag_deletecollections_unanswered_deletes_are_named_in_list_order(
    registry, repo, monkeypatch: pytest.MonkeyPatch, look: str
) -> None:
    """Its own deletes of v1 and v2 both go unanswered, and then someone else deletes both tags before
    its look, or its look fails: the 504 names them in the order the tags list, the order that decides
    which are named when more than `NAMED_LEFT` are (review r13own L2)."""
    namespace, _, path = repo.partition("/")
    images.push_oci_image(registry, repo, "v1")
    images.push_oci_image(registry, repo, "v2")
    puts: list[str] = []
    failing: list[bool] = []
    hold: Deferred[None] = Deferred()

    def each_first_retag(method: str, url: str) -> str | None:
        # The first re-tag PUT of each tag gets a gateway's late 5xx, held until the test lets it go.
        if method == "PUT" and url.rsplit("/", 1)[1] in ("v1", "v2"):
            puts.append(url)
            return GATEWAY_LATE if puts.count(url) == 1 else None
        if failing and method == "GET" and "/tags/list" in url:
            return ERROR_BEFORE
        return None

    select = TagsService._select
    selections = 0

    async def deleted_before_the_look(self: TagsService, *args: Any, **kwargs: Any) -> Any:
        # No look lists either tag (both gone, or the look fails): the 504 names them by their writes.
        nonlocal selections
        selections += 1
        if selections == 2 and look == "fails":
            failing.append(True)
        elif selections == 2:
            for tag in ("v1", "v2"):
                digest = images.resolve(registry, repo, tag)
                assert digest is not None
                images.delete_manifest(registry, repo, digest)
        return await select(self, *args, **kwargs)

    monkeypatch.setattr(TagsService, "_select", deleted_before_the_look)
    proxy = FaultProxy(global_reactor, registry.url, each_first_retag, hold=hold)
    clock = WaitClock(shorter_than=50.0)
    client, service = removal_service(proxy.url, clock, budget=100.0, timeout=TIMEOUT)
    _state(service, EXISTS)
    async with released(proxy, client, hold):
        removing, _ = await removal_until_it_waits(service, namespace, clock, time_left=1.5)
        with pytest.raises(ApiError) as answered:
            await removing
    message = _message(answered.value, 504, None)
    if look == "fails":
        assert "which of the 2 selected tag(s) are still there is not known" in message, message
    else:
        assert "none of the 2 selected tag(s) is listed now" in message, message
    assert "the registry did not answer writes made to delete 2 of the 2" in message, message
    details = answered.value.details
    assert details is not None
    named = [cause["field"] for cause in details.causes or ()]
    assert named == [encode_name(path, "v1"), encode_name(path, "v2")], message


@pytest_twisted.ensureDeferred
async def test_a_tag_by_tag_deletecollection_drops_the_late_write_it_waited_out(registry, repo) -> None:
    """As the wait within the budget above: the record kept the namespace's late write, its time long
    past, for the life of the process (review-ds D3: only a cascade's pass that found the namespace
    empty dropped one). Once its time has passed it is dropped, and where it would have left the tag
    with it."""
    namespace = repo.partition("/")[0]
    hold, proxy, clock, client, service = retag_removal(registry, repo, shorter_than=50.0, budget=100.0)
    _state(service, EXISTS)
    async with released(proxy, client, hold):
        await single_delete_fails(service, repo)
        removing, delays = await removal_until_it_waits(service, namespace, clock)
        items, _ = await land_and_wait_out(registry, repo, proxy, hold, clock, delays, removing)
    assert [item.spec.tag for item in items] == ["v1"]
    late_writes = client.late_writes
    assert (late_writes._writes, late_writes._out, late_writes._leaves) == ({}, {}, {})


@pytest_twisted.ensureDeferred
async def test_a_delete_whose_read_timed_out_leaves_no_write_to_wait_for(registry, repo) -> None:
    """A single delete whose first read (the GET of the tag's manifest) timed out has sent nothing;
    it was recorded as a write that may land all the same (any unanswered error was), and the
    namespace's removal right after waited two timeouts for it, or answered 504 naming "a write made
    while deleting tag ..." that never left (review-removal4 finding 2)."""
    namespace, _, path = repo.partition("/")
    images.push_oci_image(registry, repo, "v1")
    seen: list[str] = []

    def decide(method: str, p: str) -> str | None:
        seen.append(f"{method} {p}")
        reads = [s for s in seen if s.startswith("GET") and s.endswith(f"/{repo}/manifests/v1")]
        return STALL if p.endswith(f"/{repo}/manifests/v1") and method == "GET" and len(reads) == 1 else None

    # The first read is answered only once the test is done: after its timeout, however slow the
    # machine (a 1 s stall past a 0.5 s timeout left the other reads 0.5 s each).
    hold: Deferred[None] = Deferred()
    proxy = FaultProxy(global_reactor, registry.url, decide, hold=hold)
    clock = WaitClock(shorter_than=0.0)
    client, service = removal_service(proxy.url, clock, budget=0.9, timeout=TIMEOUT)
    async with released(proxy, client, hold):
        with pytest.raises(RegistryError) as caught:
            await service.delete(USER, namespace, encode_name(path, "v1"), DeleteOptions())
        assert "did not answer GET" in caught.value.message, caught.value.message
        assert [s for s in seen if not s.startswith(("GET", "HEAD"))] == []  # nothing written
        assert client.late_writes.pending(namespace) is None
        items, _ = await service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
    assert [item.spec.tag for item in items] == ["v1"]
    assert images.list_tags(registry, repo) == []


def held_retag(repo: str, arrived: Deferred[None]) -> Any:
    """The first re-tag PUT of ``repo``:v1 reaches the registry and its answer is held (`STALL`) until
    the proxy's hold goes; ``arrived`` fires, from the next reactor turn, once the proxy has it (the
    write is out from then: sent, not answered)."""

    held: list[str] = []

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and path.endswith(f"/{repo}/manifests/v1") and not held:
            held.append(path)
            global_reactor.callLater(0, arrived.callback, None)
            return STALL
        return None

    return decide


async def retag_out(
    registry: Any, repo: str, budget: float
) -> tuple[Deferred[Any], Deferred[None], FaultProxy, WaitClock, RegistryClient, TagsService]:
    """v1 pushed to ``repo`` and to another repository of its namespace; a single delete of ``repo``:v1
    whose re-tag PUT is out, its answer held until the test lets ``hold`` go (the registry timeout far
    longer than the test). The delete under way, and the rest."""
    namespace, _, path = repo.partition("/")
    images.push_oci_image(registry, repo, "v1")
    images.push_oci_image(registry, f"{namespace}/other", "v1")
    arrived: Deferred[None] = Deferred()
    hold: Deferred[None] = Deferred()
    proxy = FaultProxy(global_reactor, registry.url, held_retag(repo, arrived), hold=hold)
    clock = WaitClock(shorter_than=budget + 1.0)
    client, service = removal_service(proxy.url, clock, budget=budget, timeout=600.0)
    _state(service, EXISTS)
    deleting = Deferred.fromCoroutine(
        service.delete(USER, namespace, encode_name(path, "v1"), DeleteOptions())
    )
    await arrived
    assert client.late_writes.pending(namespace) == (f"deleting tag {repo}:v1", math.inf)
    return deleting, hold, proxy, clock, client, service


async def v1_deleted_by_someone_else(registry: Any, repo: str, proxy: FaultProxy) -> None:
    """Once the held re-tag of ``repo``:v1 (`retag_out`) has been carried out, someone deletes v1's
    manifest (the re-tag's copy) by digest, and v1 with it: a deletecollection after that does not
    select v1 (its delete would wait for the repository's turn, which the single delete holds), yet
    v1 is a tag it asks for, which the re-tag's write may put back (it waits for a write to a tag its
    selector keeps only: review r8own F1)."""
    while not proxy.injected[STALL]:  # the registry has carried it out; its answer is held
        await deferLater(global_reactor, 0.01, lambda: None)
    copy = images.resolve(registry, repo, "v1")
    assert copy is not None
    images.delete_manifest(registry, repo, copy)
    assert images.list_tags(registry, repo) == []


async def others_removal_until_it_waits(
    service: TagsService, repo: str, clock: WaitClock
) -> tuple[Deferred[Any], list[float]]:
    """`removal_until_it_waits` for a deletecollection tag by tag of all of ``repo``'s namespace once
    v1 was deleted by someone else (`v1_deleted_by_someone_else`): `kubectl delete prt -n ns --all`."""
    namespace, _, _ = repo.partition("/")
    waiting = clock.waits()
    delays: list[float] = []
    waiting.addCallback(delays.append)
    removing = Deferred.fromCoroutine(
        service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
    )
    await first_of(removing, waiting)
    return removing, delays


@pytest_twisted.ensureDeferred
async def test_a_tag_by_tag_deletecollection_waits_for_a_write_out_that_is_answered_within_its_budget(
    registry, repo
) -> None:
    """A single delete's re-tag in the namespace is out (sent, not answered yet) when a deletecollection
    tag by tag has deleted its selection: it answered 504 at once ("has not answered a write ... yet"),
    though the answer came well within its budget and the write then left nothing. It now waits for
    the answer (`LateWrites.wait_out`), looks again, deletes what is there and answers 200."""
    namespace, _, _ = repo.partition("/")
    deleting, hold, proxy, clock, client, service = await retag_out(registry, repo, budget=40.0)
    async with released(proxy, client, hold):
        await v1_deleted_by_someone_else(registry, repo, proxy)
        removing, delays = await others_removal_until_it_waits(service, repo, clock)
        assert not removing.called, "the deletecollection answered while a write was out"
        assert delays == [40.0]  # its budget, the only time it waits for by itself
        assert images.list_tags(registry, f"{namespace}/other") == []
        hold.callback(None)  # the re-tag is answered now, within the budget; the clock stands still
        items, _ = await removing
        assert await deleting is not None
        assert client.late_writes.pending(namespace) is None
    assert [(item.spec.repository_path, item.spec.tag) for item in items] == [("other", "v1")]
    assert images.list_tags(registry, repo) == []  # nothing left, nothing dangling
    assert images.list_tags(registry, f"{namespace}/other") == []


@pytest_twisted.ensureDeferred
async def test_a_tag_by_tag_deletecollection_whose_budget_ends_with_a_write_out_is_a_timeout(
    registry, repo
) -> None:
    """As above, the write's answer still not come when the budget ends: the 504 without Retry-After
    that says the registry has not answered it yet, and how long it may land: it said "may carry it
    out later … wait that long", naming no length (review-ds D4); then "within about 1760s" (its
    timeout and two more from when it was sent), where a write still waiting to leave may land later
    (review-ds2 F1). Unanswered it may land for two timeouts (600 s here) after its request ends."""
    deleting, hold, proxy, clock, client, service = await retag_out(registry, repo, budget=40.0)
    async with released(proxy, client, hold):
        await v1_deleted_by_someone_else(registry, repo, proxy)
        removing, _ = await others_removal_until_it_waits(service, repo, clock)
        clock.advance(40.0)  # the budget ends, the write still out
        with pytest.raises(ApiError) as answered:
            await removing
        error = answered.value
        assert (error.code, error.reason, error.retry_after) == (504, "Timeout", None), error.message
        message = " ".join(error.message.split())
        assert (
            f"the registry has not answered a write made while deleting tag {repo}:v1 yet, and may carry "
            "it out when the registry answers it, or up to about 1200s after its request times out: "
            "within about 1800s of when its request leaves (it would leave the tag in the namespace): "
            "once that time has passed, list the tags" in message
        ), message
        hold.callback(None)
        await deleting


class OnlyVisible(AlwaysAllow):
    """A caller who may see and delete the path ``visible`` of every namespace only (a
    payloadrepositoryaccess with resourceNames: [visible])."""

    def allowed(self, user: Any, verb: str, namespace: str, repository_path: str) -> bool:
        return repository_path == "visible"

    def allowed_everywhere(self, user: Any, verb: str, namespace: str) -> bool:
        return False


@pytest_twisted.ensureDeferred
async def test_a_deletecollection_waits_for_a_write_in_a_selected_repository_whatever_the_rules_then(
    registry, repo
) -> None:
    """The repositories of the selected tags are always in the wait, however the rules change: here a
    write of another request in the selected repository goes unanswered during the call (right after
    its delete check), and the caller's get on that path is revoked at that moment. The call waits for
    it; without that rule the write's repository was decided on the new rules as it appeared, and the
    call answered 200 while the write may bring the tag back (review-ds8 F4: no test held the rule)."""
    namespace, _, path = repo.partition("/")
    mine: str = path
    revoked: list[bool] = []
    images.push_oci_image(registry, repo, "v1")
    clock = WaitClock(shorter_than=50.0)
    client, service = removal_service(registry.url, clock, budget=100.0, timeout=TIMEOUT)
    _state(service, EXISTS)
    late_writes = client.late_writes

    class RevokedAsAWriteBegins(OnlyVisible):
        def allowed(self, user: Any, verb: str, namespace_: str, repository_path: str) -> bool:
            if verb == "delete" and repository_path == mine:
                if not revoked:
                    revoked.append(True)
                    late_writes.note(namespace, f"re-tagging {repo}:v1", late_writes.now() + 30.0, repo)
                return True
            return repository_path == mine and not revoked

    try:
        service.authorizer = RevokedAsAWriteBegins()
        removing, delays = await removal_until_it_waits(service, namespace, clock)
        assert revoked, "the caller's access was never revoked"
        assert delays == [30.0] and not removing.called, f"waited {delays} s for the write"
        clock.advance(30.0)  # the write can no longer land
        items, _ = await removing
    finally:
        await client.close()
    assert [item.spec.tag for item in items] == ["v1"]


@pytest.mark.parametrize("time_left", [None, 1.5])
@pytest_twisted.ensureDeferred
async def test_a_tag_by_tag_deletecollection_neither_waits_for_nor_names_a_late_write_the_caller_may_not_see(
    registry, repo, time_left
) -> None:
    """An admin's single delete of a tag of ``repo`` has its re-tag go unanswered; then a caller who
    may see the path ``visible`` only deletes all it sees of the namespace. The call waited for the
    admin's write (with no deadline), or answered a 504 naming its repository and tag (1.5 s before
    its deadline): a path the caller may not list, and that someone deletes it now (review-ds4
    finding 1). A late write elsewhere cannot leave a tag the caller's selection holds: the call
    deletes the visible tag and answers 200 at once."""
    namespace = repo.partition("/")[0]
    visible = f"{namespace}/visible"
    images.push_oci_image(registry, visible, "mine", seed="visible")
    hold, proxy, clock, client, service = retag_removal(registry, repo, shorter_than=50.0, budget=100.0)
    _state(service, EXISTS)
    async with released(proxy, client, hold):
        await single_delete_fails(service, repo)
        service.authorizer = OnlyVisible()
        removing, delays = await removal_until_it_waits(service, namespace, clock, time_left=time_left)
        if not removing.called and time_left is not None:
            # The bound of its pass, half the margin past the cut (review-ds8 F1), is no wait: the
            # call ends with the clock standing still.
            assert delays == [1.0], f"waited {delays} s for a write the caller may not see"
            more = clock.waits()
            more.addCallback(delays.append)
            await first_of(removing, more)
            del delays[0]
        assert delays == [] and removing.called, f"waited {delays} s for a write the caller may not see"
        items, _ = await removing
    assert [(item.spec.repository_path, item.spec.tag) for item in items] == [("visible", "mine")]
    assert images.list_tags(registry, visible) == []


async def _removal_1_5s_before_its_deadline(
    registry: Any, repo: str, authorizer: OnlyVisible
) -> tuple[ApiError, list[float]]:
    """An admin's single delete of ``repo``:v1 has its re-tag go unanswered; then, ``authorizer``
    deciding, a deletecollection of the live namespace 1.5 s before its request's deadline, which must
    fail: its error and the delays of the waits it scheduled."""
    namespace = repo.partition("/")[0]
    hold, proxy, clock, client, service = retag_removal(registry, repo, shorter_than=50.0, budget=100.0)
    _state(service, EXISTS)
    async with released(proxy, client, hold):
        await single_delete_fails(service, repo)
        service.authorizer = authorizer
        removing, delays = await removal_until_it_waits(service, namespace, clock, time_left=1.5)
        with pytest.raises(ApiError) as answered:
            await removing
    return answered.value, delays


@pytest_twisted.ensureDeferred
async def test_a_tag_by_tag_deletecollection_still_waits_for_a_late_write_the_caller_may_see(
    registry, repo
) -> None:
    """As above, the admin's write in the path the caller may see: the call waits for it and names it,
    as before (1.5 s before its deadline: the 504 naming the write)."""
    namespace, _, path = repo.partition("/")
    mine: str = path

    class OnlyThis(OnlyVisible):
        def allowed(self, user: Any, verb: str, namespace: str, repository_path: str) -> bool:
            return repository_path == mine

    images.push_oci_image(registry, f"{namespace}/hidden", "theirs", seed="hidden")
    error, _ = await _removal_1_5s_before_its_deadline(registry, repo, OnlyThis())
    message = _message(error, 504, None)
    assert _retag_may_land(repo) in message, message
    assert images.list_tags(registry, f"{namespace}/hidden") == ["theirs"]


@pytest_twisted.ensureDeferred
async def test_a_tag_by_tag_deletecollection_waits_for_the_writes_of_what_the_caller_saw_as_it_began(
    registry, repo
) -> None:
    """A caller who may see and delete ``repo``'s path only selects its tag v1, whose admin's single
    delete has its re-tag go unanswered, and is authorized to delete it; right then its get on the path
    is revoked (an edit of its payloadrepositoryaccess reaching the informer during the call). The
    scope of the wait was decided again at each look, on the new rules: the call skipped the write,
    answered 200, and the re-tag then brought v1 back (review-ds6 F1). kube-apiserver authorizes a
    request once, at its start: the call waits for the writes of what the caller could see then, and
    answers the 504 naming the write."""
    mine: str = repo.partition("/")[2]
    revoked: list[bool] = []

    class RevokedMidCall(OnlyVisible):
        def allowed(self, user: Any, verb: str, namespace: str, repository_path: str) -> bool:
            if verb == "delete" and repository_path == mine:
                revoked.append(True)  # the rule is edited right after the call's authorization
                return True
            return repository_path == mine and not revoked

    error, delays = await _removal_1_5s_before_its_deadline(registry, repo, RevokedMidCall())
    assert revoked, "the caller's access was never revoked"
    assert (error.code, error.retry_after) == (504, None), f"{error.message} (waited {delays})"
    message = " ".join(error.message.split())
    assert _retag_may_land(repo) in message, message


@attrs.frozen
class _Paths:
    """Rules as `RbacAuthorizer.rules` gives them: the paths they allowed when taken."""

    paths: frozenset[str]

    def matches(self, path: str) -> bool:
        return path in self.paths


@attrs.define
class RevokedWhileSelecting:
    """A caller who may see and delete the paths ``may_see`` of every namespace; right after the call's
    first `get` decision, its get on ``revoke`` is taken away (an edit of its payloadrepositoryaccess
    reaching the informer while the selection is read from the registry). Each path is decided as it
    is asked (`allowed`)."""

    may_see: set[str]
    revoke: str | None
    may_delete: frozenset[str] = attrs.field(init=False)
    decided: bool = False

    def __attrs_post_init__(self) -> None:
        self.may_delete = frozenset(self.may_see)

    def _decide(self) -> frozenset[str]:
        """The paths get allows for this decision; the first one made, the revocation follows it."""
        allowed = frozenset(self.may_see)
        if not self.decided:
            self.decided = True
            self.may_see.discard(self.revoke or "")
        return allowed

    def allowed(self, user: Any, verb: str, namespace: str, repository_path: str) -> bool:
        if verb == "delete":
            return repository_path in self.may_delete
        return repository_path in self._decide()

    def allowed_everywhere(self, user: Any, verb: str, namespace: str) -> bool:
        return False


@attrs.define
class RevokedWhileSelectingByRules(RevokedWhileSelecting):
    """As above, giving the rules it decides by, as `RbacAuthorizer` does (`RuleSource`)."""

    def rules(self, user: Any, verb: str, namespace: str) -> _Paths:
        assert verb == "get", verb
        return _Paths(self._decide())


@pytest.mark.parametrize(
    ("revoked", "by_rules"), [(False, True), (True, True), (True, False)], ids=["kept", "rules", "as-asked"]
)
@pytest_twisted.ensureDeferred
async def test_a_get_revoked_while_the_selection_is_read_drops_no_late_write_from_the_wait(
    registry, repo, revoked, by_rules
) -> None:
    """An admin's single delete of ``repo``'s v1 has its re-tag go unanswered, and someone deletes v1
    by digest. A caller who may see that path and ``visible`` deletes all she sees, which holds no tag
    of ``repo`` now, so ``repo``'s path is among the repositories whose late writes she waits for only
    as a path she may see (v1 was excluded by a field selector before the wait went by tag: review
    r8own F1). Her get on it
    is revoked right after the call's first decision, while the selection is read. What she may see was
    decided only once the selection had been read: the write was dropped from the wait and the call
    answered 200 at once (review-unrev F3). As docs/access.md says, it is decided as the call begins,
    as kube-apiserver authorizes a request: the 504 naming the write, as when the rule stays. With the
    server's authorizer (the RBAC rules through `CountingAuthorizer`), and one that decides each path
    as asked."""
    namespace, _, path = repo.partition("/")
    images.push_oci_image(registry, f"{namespace}/visible", "keep-me", seed="visible")
    kind = RevokedWhileSelectingByRules if by_rules else RevokedWhileSelecting
    authorizer = kind({path, "visible"}, revoke=path if revoked else None)
    hold, proxy, _, client, service = retag_removal(registry, repo, shorter_than=50.0, budget=100.0)
    _state(service, EXISTS)
    async with released(proxy, client, hold):
        await single_delete_fails(service, repo)  # the admin's: its re-tag may still land
        v1 = images.resolve(registry, repo, "v1")
        assert v1 is not None
        images.delete_manifest(registry, repo, v1)
        service.authorizer = CountingAuthorizer(authorizer, Metrics())
        options = list_options({})
        with pytest.raises(ApiError) as answered:
            await service.delete_collection(USER, namespace, options, DeleteOptions(), time_left=1.5)
    assert authorizer.decided and (path not in authorizer.may_see) == revoked
    message = _message(answered.value, 504, None)
    assert _retag_may_land(repo) in message, message
    assert images.list_tags(registry, f"{namespace}/visible") == []


@pytest_twisted.ensureDeferred
async def test_a_get_revoked_while_the_selection_is_read_changes_not_what_it_deletes(registry, repo) -> None:
    """A caller who may see ``repo``'s path and ``visible`` deletes all she sees; her get on ``visible``
    is revoked right after the call's first decision, while the selection is read. The selection
    decided each path as it read it, on the rules of that moment: ``visible``'s tag was left out of
    what the call deleted (review-unrev F3). It is decided once, as the call begins (docs/access.md):
    both tags go. With the server's authorizer (the RBAC rules through `CountingAuthorizer`)."""
    namespace, _, path = repo.partition("/")
    images.push_oci_image(registry, f"{namespace}/visible", "keep-me", seed="visible")
    images.push_oci_image(registry, repo, "v1")
    authorizer = RevokedWhileSelectingByRules({path, "visible"}, revoke="visible")
    client, service = removal_service(registry.url, WaitClock(shorter_than=50.0), budget=100.0, timeout=5.0)
    _state(service, EXISTS)
    service.authorizer = CountingAuthorizer(authorizer, Metrics())
    try:
        items, _ = await service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
    finally:
        await client.close()
    assert authorizer.decided and "visible" not in authorizer.may_see
    deleted = sorted((item.spec.repository_path, item.spec.tag) for item in items)
    assert deleted == sorted([(path, "v1"), ("visible", "keep-me")]), deleted
    assert images.list_tags(registry, f"{namespace}/visible") == []
    assert images.list_tags(registry, repo) == []


def cut_by_a_cascades_digest_delete(
    registry: Any, repo: str
) -> tuple[str, WaitClock, RegistryClient, TagsService]:
    """``repo``:v1 pushed (its digest), and a deletecollection's service (its budget 40 s) whose client
    noted a cascade's DELETE of that digest unanswered, which may still land within 600 s."""
    namespace, _, _ = repo.partition("/")
    digest = images.push_oci_image(registry, repo, "v1")
    clock = WaitClock(shorter_than=41.0)
    client, service = removal_service(registry.url, clock, budget=40.0, timeout=TIMEOUT)
    _state(service, EXISTS)
    late = client.late_writes
    number = late.sent(
        namespace, f"deleting manifest {repo}@{digest}", repository=repo, landing=Landing.REMOVES_MANIFEST
    )
    late.ended(namespace, number, grace=600.0)
    return digest, clock, client, service


@pytest_twisted.ensureDeferred
async def test_a_tag_by_tag_deletecollection_cut_by_a_cascades_digest_delete_says_what_it_removes(
    registry, repo
) -> None:
    """A cascade's DELETE by digest in the namespace went unanswered (noted as `RegistryClient` notes
    it) when a deletecollection tag by tag has deleted its selection; its budget ends before the
    DELETE's grace: the 504 names it and says that landing then it would remove that manifest and its
    tags. It said it "would leave the tag in the namespace", a PUT's landing (review r2latedelete L1)."""
    digest, clock, client, service = cut_by_a_cascades_digest_delete(registry, repo)
    try:
        removing, delays = await others_removal_until_it_waits(service, repo, clock)
        assert removing.called and delays == []  # no wait: the DELETE may land after the budget
        with pytest.raises(ApiError) as answered:
            await removing
    finally:
        await client.close()
    message = _message(answered.value, 504, None)
    assert (
        f"the registry did not answer a write made while deleting manifest {repo}@{digest}, and may still "
        "carry it out within about 600s (it would remove that manifest and every tag on it): wait that "
        "long, then list the tags" in message
    ), message


@pytest_twisted.ensureDeferred
async def test_a_selected_deletecollection_cut_by_a_cascades_digest_delete_says_what_it_removes(
    registry, repo
) -> None:
    """As the test above, with a field selector: the late write is read through a scoped look
    (`LateWrites.pending` with a `Scope`, the noted records), which must keep what it would do too
    (review r3latedelete L1)."""
    namespace, _, _ = repo.partition("/")
    digest, clock, client, service = cut_by_a_cascades_digest_delete(registry, repo)
    options = list_options({"fieldSelector": ["metadata.name!=nothing-named-so"]})
    try:
        waiting = clock.waits()
        removing = Deferred.fromCoroutine(
            service.delete_collection(USER, namespace, options, DeleteOptions())
        )
        await first_of(removing, waiting)
        assert removing.called
        with pytest.raises(ApiError) as answered:
            await removing
    finally:
        await client.close()
    message = _message(answered.value, 504, None)
    assert f"deleting manifest {repo}@{digest}" in message, message
    assert "(it would remove that manifest and every tag on it)" in message, message
