"""Lists of a scope nobody watches that arrive together share one record (docs/watch.md, "Lists of
scopes nobody watches"): a watch from their resourceVersion is sent no event for a tag its list showed
as it is (review r1user L1: two lists at once, one user's `kubectl get prt -n NS` and another's
`kubectl get prt -n NS -w`, and the watch was sent an ADDED for every tag its list had shown, so that
`kubectl get -w` printed the namespace twice). Over HTTPS against the real registry."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults

from payloadtags.limits import WatchLimits
from payloadtags.names import encode_name
from payloadtags.registry.client import RegistrySettings
from payloadtags.watch.rereads import NotificationRereads
from tests.integration.test_cleanup_server import _another_replica_leads, _cleanup_server, _controller
from tests.support import images
from tests.support.cleanup_fixtures import unique_namespace
from tests.support.client import ApiClient, stream
from tests.support.faultproxy import LATE, FaultProxy
from tests.support.kubeapi.resources import NAMESPACES
from tests.support.rbac import ensure_namespace, eventually

B = "/apis/payload-registry.deckhouse.io/v1alpha1"


async def _sent(client: ApiClient, url: str, listed: str) -> list[dict[str, Any]]:
    """What a watch from ``listed`` is sent before it times out (nothing changes meanwhile)."""
    watch = await stream(client, f"{url}?watch=true&resourceVersion={listed}&timeoutSeconds=2")
    await watch.ended
    events: list[dict[str, Any]] = []
    while watch.lines.pending:
        line = await watch.lines.get()
        if line.strip():
            events.append(json.loads(line))
    return events


async def _opening(client: ApiClient, url: str, listed: str) -> list[tuple[str, str]]:
    return [(event["type"], event["object"]["spec"]["tag"]) for event in await _sent(client, url, listed)]


def _tags(response: Any) -> list[str]:
    return [item["spec"]["tag"] for item in response.json()["items"]]


@pytest_twisted.ensureDeferred
async def test_one_list_alone_then_its_watch_is_sent_nothing(make_server, registry, repo):
    namespace = repo.split("/", 1)[0]
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(resync_period=30))
    client = api.client(api.pki.admin)
    url = f"{B}/namespaces/{namespace}/payloadrepositorytags"
    listed = (await client.get(url + "?limit=500")).json()["metadata"]["resourceVersion"]
    assert await _opening(client, url, listed) == []


@pytest_twisted.ensureDeferred
async def test_two_lists_at_once_then_a_watch_from_either_is_sent_nothing(make_server, registry, repo):
    """The reviewer's reproducer: before the fix, [("ADDED", "v1")] from each."""
    namespace = repo.split("/", 1)[0]
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(resync_period=30))
    client = api.client(api.pki.admin)
    url = f"{B}/namespaces/{namespace}/payloadrepositorytags"
    first, second = await gatherResults(
        [ensureDeferred(client.get(url + "?limit=500")), ensureDeferred(client.get(url + "?limit=500"))]
    )
    assert _tags(first) == _tags(second) == ["v1"]
    listed = first.json()["metadata"]["resourceVersion"]
    assert second.json()["metadata"]["resourceVersion"] == listed  # one record
    # Both lists showed v1 and nothing changed: "only the changes after N".
    assert await _opening(client, url, listed) == []
    assert await _opening(client, url, listed) == []  # the other client's watch


@pytest_twisted.ensureDeferred
async def test_a_whole_list_and_a_walk_at_once_then_watches_are_sent_nothing(make_server, registry, repo):
    """One client's whole list (kubectl --chunk-size=0) and another's walk one tag a page: each page
    of the walk reports as the same list, so the repositories it first reads on later pages (past
    what its first page read ahead) are not taken for another list's, which the whole list would
    then wait for in vain."""
    namespace = repo.split("/", 1)[0]
    others = [f"{namespace}/other-{i:02d}" for i in range(10)]
    for name, tags in ((repo, ("v1", "v2")), *((other, ("w1",)) for other in others)):
        for tag in tags:
            images.push_oci_image(registry, name, tag)
    api = await make_server(registry, watch=WatchLimits(resync_period=30))
    client = api.client(api.pki.admin)
    url = f"{B}/namespaces/{namespace}/payloadrepositorytags"
    whole, page = await gatherResults(
        [ensureDeferred(client.get(url)), ensureDeferred(client.get(url + "?limit=1"))]
    )
    listed = whole.json()["metadata"]["resourceVersion"]
    walked = _tags(page)
    token = page.json()["metadata"].get("continue")
    while token:
        page = await client.get(f"{url}?limit=1&continue={token}")
        walked += _tags(page)
        token = page.json()["metadata"].get("continue")
    assert sorted(_tags(whole)) == sorted(walked) == ["v1", "v2", *["w1"] * 10]
    assert await _opening(client, url, listed) == []


@pytest_twisted.ensureDeferred
async def test_a_tag_pushed_between_two_lists_is_still_sent_to_the_watch_of_the_one_that_missed_it(
    make_server, registry, repo
):
    """The other side: two lists at one resourceVersion, a repository pushed between them, read by
    the second only. The first list's client has none of its tags: a watch from that resourceVersion is
    sent them (the record cannot tell whose watch it is)."""
    namespace = repo.split("/", 1)[0]
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(resync_period=30))
    client = api.client(api.pki.admin)
    url = f"{B}/namespaces/{namespace}/payloadrepositorytags"
    first = await client.get(url + "?limit=500")
    images.push_oci_image(registry, f"{namespace}/later", "n1")  # no watch: the sequence stays
    second = await client.get(url + "?limit=500")
    listed = first.json()["metadata"]["resourceVersion"]
    assert second.json()["metadata"]["resourceVersion"] == listed  # one record
    assert _tags(first) == ["v1"] and sorted(_tags(second)) == ["n1", "v1"]
    assert await _opening(client, url, listed) == [("ADDED", "n1")]


@pytest.mark.parametrize("how", ["api", "notified", "queued", "dropped", "registry"])
@pytest_twisted.ensureDeferred
async def test_a_delete_between_two_lists_is_sent_to_the_watch_of_the_first_only(
    make_server, registry, repo, tmp_path, how
):
    """Review newcomer F2: a list, a delete, a later list, nobody watching. The two lists shared one
    resourceVersion and record, and a watch from the later one was sent DELETED v1, which its list
    never showed. A delete this replica is told of (made through it, or a registry notification)
    moves the sequence on; one made in the registry unannounced cannot, and the later list's watch
    is still sent it (docs/watch.md, "Limits of this design"). ``queued``/``dropped``: the notification's
    reread waits behind another repository's, or is dropped from the full queue; the sequence moves
    all the same, when the notification is answered (review r2events F1)."""
    namespace, path = repo.split("/", 1)
    digest = images.push_oci_image(registry, repo, "v1")
    images.push_oci_image(registry, repo, "v2", seed="other")
    token = tmp_path / "token"
    token.write_text("secret\n")
    api = await make_server(
        registry, watch=WatchLimits(resync_period=30), registry_events_token_file=str(token)
    )
    client = api.client(api.pki.admin)
    url = f"{B}/namespaces/{namespace}/payloadrepositorytags"
    first = await client.get(url + "?limit=500")
    if how == "api":
        assert (await client.delete(f"{url}/{encode_name(path, 'v1')}")).code == 200
    else:
        assert images.delete_manifest(registry, repo, digest) == 202
    busy: Deferred[None] = Deferred()
    if how in ("queued", "dropped"):
        hub = api.running.api.watch_hub
        # The queue busy with another repository's reread (a burst of pushes elsewhere).
        api.running.api.notification_rereads = NotificationRereads(
            lambda name: [busy] if name.startswith("busy/") else hub.reads(name),
            concurrency=1,
            max_pending=1,
        )
        api.running.api.notification_rereads.add("busy/first")
        if how == "dropped":
            api.running.api.notification_rereads.add("busy/second")  # the one place taken
    if how != "api" and how != "registry":
        body = {"events": [{"action": "delete", "target": {"repository": repo, "digest": digest}}]}
        posted = await client.request(
            "POST", "/registry/events", headers={"Authorization": "Bearer secret"}, body=body
        )
        assert posted.code == 200, posted.body
    second = await client.get(url + "?limit=500")
    busy.callback(None)
    assert _tags(first) == ["v1", "v2"] and _tags(second) == ["v2"]
    listed, later = (reply.json()["metadata"]["resourceVersion"] for reply in (first, second))
    assert (later == listed) is (how == "registry")
    assert await _opening(client, url, later) == ([("DELETED", "v1")] if how == "registry" else [])
    if how != "registry":
        assert await _opening(client, url, listed) == [("DELETED", "v1")]


@pytest_twisted.ensureDeferred
async def test_an_exact_list_at_a_list_s_resource_version_after_a_delete_through_the_api_is_410(
    make_server, registry, repo
):
    """Review r2moved N2 (docs/api.md, `resourceVersionMatch=Exact`): the delete moves the sequence
    past the list's record, so the list at that resourceVersion exactly is no longer served; before
    (newcomer F2), it was served as the registry is now, without the deleted tag the list at that
    resourceVersion showed. NotOlderThan is served at the new resourceVersion."""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    images.push_oci_image(registry, repo, "v2", seed="other")
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    client = api.client(api.pki.admin)
    url = f"{B}/namespaces/{namespace}/payloadrepositorytags"
    listed = (await client.get(url)).json()["metadata"]["resourceVersion"]
    again = await client.get(url + f"?resourceVersion={listed}&resourceVersionMatch=Exact")
    assert again.code == 200 and _tags(again) == ["v1", "v2"]  # nothing moved: served
    assert (await client.delete(f"{url}/{encode_name(path, 'v1')}")).code == 200
    exact = await client.get(url + f"?resourceVersion={listed}&resourceVersionMatch=Exact")
    assert exact.code == 410, exact.body
    newer = await client.get(url + f"?resourceVersion={listed}&resourceVersionMatch=NotOlderThan")
    assert newer.code == 200 and _tags(newer) == ["v2"]
    assert newer.json()["metadata"]["resourceVersion"] != listed


@pytest_twisted.ensureDeferred
async def test_a_list_and_a_list_by_name_at_once_then_the_list_s_watch_is_sent_nothing_of_the_rest(
    make_server, registry, repo
):
    """`kubectl get prt -n NS -w` beside `kubectl wait --for=delete prt/NAME` (a list by name): the list by
    name's client holds one tag, so the other repositories the whole list read are not sent to a watch
    from their resourceVersion. (The repository the list by name read directly may be: the scope's lists
    may not see one read so.)"""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    images.push_oci_image(registry, f"{namespace}/other", "o1")
    api = await make_server(registry, watch=WatchLimits(resync_period=30))
    client = api.client(api.pki.admin)
    url = f"{B}/namespaces/{namespace}/payloadrepositorytags"
    named = f"{url}?fieldSelector=metadata.name%3D{encode_name(path, 'v1')}"
    whole, by_name = await gatherResults([ensureDeferred(client.get(url)), ensureDeferred(client.get(named))])
    assert sorted(_tags(whole)) == ["o1", "v1"] and _tags(by_name) == ["v1"]
    listed = whole.json()["metadata"]["resourceVersion"]
    assert by_name.json()["metadata"]["resourceVersion"] == listed  # one record
    assert ("ADDED", "o1") not in await _opening(client, url, listed)


@pytest_twisted.ensureDeferred
async def test_a_walk_that_stopped_after_its_first_page_is_not_sent_what_that_page_read_ahead(
    make_server, registry, repo
):
    """A whole list and a walk of two tags a page at once, over four repositories of two tags each;
    the walk stops after its first page (r0's). That page read r1 and r2 past its end, kept for its
    next page: a watch from their resourceVersion is not sent those, as kube-apiserver sends a watch
    from a list's resourceVersion the changes since, not the objects its client did not page to. It is
    sent r3's, which the walk never read (docs/watch.md, "Lists that arrive together"; review r2watch
    L1: the docs promised these as a list that "ended half-way")."""
    namespace = repo.split("/", 1)[0]
    for index in range(4):
        for tag in (f"r{index}a", f"r{index}b"):
            images.push_oci_image(registry, f"{namespace}/r{index}", tag)
    api = await make_server(registry, watch=WatchLimits(resync_period=30))
    client = api.client(api.pki.admin)
    url = f"{B}/namespaces/{namespace}/payloadrepositorytags"
    whole, page = await gatherResults(
        [ensureDeferred(client.get(url)), ensureDeferred(client.get(url + "?limit=2"))]
    )
    listed = page.json()["metadata"]["resourceVersion"]
    assert whole.json()["metadata"]["resourceVersion"] == listed  # one record
    assert sorted(_tags(page)) == ["r0a", "r0b"] and page.json()["metadata"].get("continue")
    assert len(_tags(whole)) == 8
    assert sorted(await _opening(client, url, listed)) == [("ADDED", "r3a"), ("ADDED", "r3b")]


@pytest_twisted.ensureDeferred
async def test_an_all_namespaces_list_beside_one_pinned_to_a_namespace_repeats_the_other_namespaces(
    make_server, registry, repo
):
    """`kubectl get prt -A` beside `kubectl get prt -A --field-selector metadata.namespace=NS` share
    the all-namespaces record, and the pinned list reads NS only: every repository of another
    namespace waits for it in vain, and a watch from their resourceVersion is sent its tags again (a
    repeat, never a loss: docs/watch.md, "Lists that arrive together"; review r2watch N3). What both
    read is not sent."""
    namespace = repo.split("/", 1)[0]
    images.push_oci_image(registry, repo, "v1")
    images.push_oci_image(registry, f"{namespace}x/app", "o1")
    api = await make_server(registry, watch=WatchLimits(resync_period=30))
    client = api.client(api.pki.admin)
    url = f"{B}/payloadrepositorytags"
    pinned = f"{url}?fieldSelector=metadata.namespace%3D{namespace}"
    whole, only = await gatherResults([ensureDeferred(client.get(url)), ensureDeferred(client.get(pinned))])
    listed = whole.json()["metadata"]["resourceVersion"]
    assert only.json()["metadata"]["resourceVersion"] == listed  # one record
    assert _tags(only) == ["v1"]
    # The registry is the session's: other tests' namespaces are in both the list and the watch.
    mine = (namespace, f"{namespace}x")
    shown = {
        (item["metadata"]["namespace"], item["spec"]["tag"])
        for item in whole.json()["items"]
        if item["metadata"]["namespace"] in mine
    }
    assert shown == {(namespace, "v1"), (f"{namespace}x", "o1")}
    opening = [
        (event["type"], event["object"]["metadata"]["namespace"], event["object"]["spec"]["tag"])
        for event in await _sent(client, url, listed)
        if event["object"]["metadata"]["namespace"] in mine
    ]
    assert opening == [("ADDED", f"{namespace}x", "o1")]


@pytest_twisted.ensureDeferred
async def test_lists_made_while_a_namespace_is_removed_are_not_sent_the_deletes_made_before_them(
    reactor, make_server, fresh_registry, kube_api, kube_kubeconfig, pki
):
    """Review r2moved F1: the namespace controller's deletecollection of a Terminating namespace
    (`NamespaceRemover`: up to 40 s a call) told the watch hub of its deletes only once it ended. A
    list made while it ran joined the record of a list made before it, and its watch was sent DELETED
    of tags the registry had lost before that list, which it never showed (newcomer F2 again, for as
    long as the removal). Each delete is told as it ends: each list made meanwhile has a record of its
    own, the second one made during the removal too (a move at the removal's start only would leave
    that one joining the first's). The removal's deletes in a/ and then c/ are held until the test
    lets them go: a/ goes, a list, b/ goes, a list, c/ goes."""
    ns = unique_namespace("rmlists")
    _another_replica_leads(kube_api)
    ensure_namespace(kube_api, ns)
    for path in ("a", "b", "c"):
        images.push_oci_image(fresh_registry, f"{ns}/{path}", "v1", seed=path)
    held: dict[str, Deferred[None]] = {path: Deferred() for path in ("b", "c")}

    def decide(method: str, path: str) -> str | None:
        for name, hold in held.items():
            if method == "DELETE" and f"/{ns}/{name}/" in path:
                proxy.hold = hold  # read by this request's wait, which begins before any other's
                return LATE
        return None

    proxy = FaultProxy(reactor, fresh_registry.url, decide)
    server = await _cleanup_server(
        make_server,
        proxy.url,
        kube_kubeconfig,
        registry=RegistrySettings(url=proxy.url, timeout=60.0),
        # No access rounds: each moves the sequence (`WatchHub.check_access`), and RBAC's informers
        # relisting would bring one between the lists at random.
        watch=WatchLimits(resync_period=3600, access_check_interval=3600),
    )
    told: list[str] = []
    service = server.running.api.service
    tell = service.changed

    def changed(repository: str) -> None:
        told.append(repository)
        tell(repository)

    service.changed = changed
    admin = _controller(server, pki)  # system:masters (RBAC mode)
    url = f"{B}/namespaces/{ns}/payloadrepositorytags"

    async def gone(path: str) -> bool:
        # Gone from the registry, and the hub told (bounded: without the fix it is told only at the
        # end, which waits for the held deletes; the lists below then show what that does).
        return images.list_tags(fresh_registry, f"{ns}/{path}") == [] and f"{ns}/{path}" in told

    def paths(response: Any) -> list[str]:
        return sorted(item["spec"]["repositoryPath"] for item in response.json()["items"])

    async def opening(listed: str) -> list[tuple[str, str]]:
        events = await _sent(admin, url, listed)
        return sorted((event["type"], event["object"]["spec"]["repositoryPath"]) for event in events)

    try:
        first = await admin.get(url)
        assert paths(first) == ["a", "b", "c"]
        kube_api.store.delete(NAMESPACES, ns)  # Terminating: its content goes wholesale
        removal = ensureDeferred(admin.delete(url))
        await eventually(lambda: gone("a"), within=10)
        second = await admin.get(url)
        held["b"].callback(None)
        await eventually(lambda: gone("b"), within=10)
        third = await admin.get(url)
        held["c"].callback(None)
        answer = await removal
        assert answer.code == 200, answer.body
        assert (paths(first), paths(second), paths(third)) == (["a", "b", "c"], ["b", "c"], ["c"])
        listed = [reply.json()["metadata"]["resourceVersion"] for reply in (first, second, third)]
        assert len(set(listed)) == 3, listed  # before the fix: one resourceVersion for all three
        assert await opening(listed[2]) == [("DELETED", "c")]
        assert await opening(listed[1]) == [("DELETED", "b"), ("DELETED", "c")]
        assert await opening(listed[0]) == [("DELETED", "a"), ("DELETED", "b"), ("DELETED", "c")]
    finally:
        for hold in held.values():
            if not hold.called:
                hold.callback(None)
        await server.stop()
        await proxy.settled()
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_a_list_made_while_the_leader_s_cascade_empties_a_namespace_is_not_sent_its_earlier_deletes(
    reactor, make_server, fresh_registry, kube_api, kube_kubeconfig, pki
):
    """As above for the cleanup leader's own cascade of a deleted namespace, which told the watch hub
    nothing at all: a list made after its first delete joined the record of one made before, and its
    watch was sent that delete (and, with no notifications, a list made after it ended as well). The
    cascade's delete in b/ is held until the test lets it go."""
    ns = unique_namespace("rmleader")
    ensure_namespace(kube_api, ns)
    for path in ("a", "b"):
        images.push_oci_image(fresh_registry, f"{ns}/{path}", "v1", seed=path)
    held: Deferred[None] = Deferred()

    def decide(method: str, path: str) -> str | None:
        return LATE if method == "DELETE" and f"/{ns}/b/" in path else None

    proxy = FaultProxy(reactor, fresh_registry.url, decide, hold=held)
    server = await _cleanup_server(
        make_server,
        proxy.url,
        kube_kubeconfig,
        registry=RegistrySettings(url=proxy.url, timeout=60.0),
        watch=WatchLimits(resync_period=3600, access_check_interval=3600),  # as above
    )
    cleanup = server.running.cleanup
    told: list[str] = []
    tell = cleanup.changed

    def changed(repository: str) -> None:
        told.append(repository)
        if tell is not None:
            tell(repository)

    cleanup.changed = changed
    admin = _controller(server, pki)
    url = f"{B}/namespaces/{ns}/payloadrepositorytags"

    async def gone(path: str) -> bool:
        return images.list_tags(fresh_registry, f"{ns}/{path}") == [] and f"{ns}/{path}" in told

    try:
        assert await eventually(lambda: _now(cleanup.is_leader), within=10)
        first = await admin.get(url)
        kube_api.store.delete(NAMESPACES, ns)  # Terminating: the leader's cascade empties it
        await eventually(lambda: gone("a"), within=10)
        second = await admin.get(url)
        held.callback(None)
        await eventually(lambda: gone("b"), within=10)
        third = await admin.get(url)
        paths = [
            sorted(item["spec"]["repositoryPath"] for item in reply.json()["items"])
            for reply in (first, second, third)
        ]
        assert paths == [["a", "b"], ["b"], []]
        listed = [reply.json()["metadata"]["resourceVersion"] for reply in (first, second, third)]
        assert len(set(listed)) == 3, listed  # before: one resourceVersion for all three
        opened = [
            sorted((e["type"], e["object"]["spec"]["repositoryPath"]) for e in await _sent(admin, url, rv))
            for rv in listed
        ]
        assert opened == [[("DELETED", "a"), ("DELETED", "b")], [("DELETED", "b")], []]
    finally:
        if not held.called:
            held.callback(None)
        await server.stop()
        await proxy.settled()
        await proxy.stop()


async def _now(value: bool) -> bool:
    return value
