"""Watches over HTTPS against the real registry: list then watch, events, options, 410, limits."""

from __future__ import annotations

import collections
import functools
import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.web import http

from payloadtags.limits import HttpLimits, WatchLimits
from payloadtags.names import encode_name
from payloadtags.watch import WatchHub
from payloadtags.watch import hub as watch_hub
from payloadtags.watch.listed import RECORD_COST, REPOSITORY_COST, USER_COST
from payloadtags.watch.watcher import _WRITE_BYTES
from tests.integration.test_output_bounds import many_tags
from tests.support import images
from tests.support.client import ApiClient, Stream, stream
from tests.support.faultproxy import ERROR_BEFORE, STALL, FaultProxy
from tests.support.kubeapi.resources import ROLEBINDINGS
from tests.support.logcapture import collected_logs
from tests.support.looked_at import LookedAt
from tests.support.rbac import ensure_namespace, eventually, grant

B = "/apis/payload-registry.deckhouse.io/v1alpha1"
TABLE = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
    "application/json"
)


def collection(namespace: str) -> str:
    return f"{B}/namespaces/{namespace}/payloadrepositorytags"


def events_body(*changes: tuple[str, str]) -> dict[str, Any]:
    return {
        "events": [
            {"action": action, "target": {"repository": repository, "tag": "x"}}
            for action, repository in changes
        ]
    }


@pytest_twisted.ensureDeferred
async def test_list_then_watch_sees_a_push_and_a_delete(make_server, registry, repo, reactor):
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(resync_period=0.2))
    client = api.client(api.pki.admin)
    listing = (await client.get(collection(namespace))).json()
    rv = listing["metadata"]["resourceVersion"]
    assert [i["spec"]["tag"] for i in listing["items"]] == ["v1"]
    watch = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion={rv}")
    assert watch.code == 200 and watch.headers["content-type"] == ["application/json"]
    images.push_oci_image(registry, repo, "v2", seed="two")
    added = await watch.next()
    assert added["type"] == "ADDED"
    obj = added["object"]
    assert obj["kind"] == "PayloadRepositoryTag" and obj["spec"]["tag"] == "v2"
    assert obj["metadata"]["name"] == encode_name(path, "v2") and obj["metadata"]["namespace"] == namespace
    assert int(obj["metadata"]["resourceVersion"]) > int(rv)
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}  # the list's spec-only shape
    reply = await client.delete(f"{collection(namespace)}/{encode_name(path, 'v1')}")
    assert reply.code == 200
    deleted = await watch.next()
    assert deleted["type"] == "DELETED" and deleted["object"]["spec"]["tag"] == "v1"
    assert int(deleted["object"]["metadata"]["resourceVersion"]) > int(obj["metadata"]["resourceVersion"])
    # Resuming from the first event's resourceVersion replays what followed it.
    again = await stream(
        client, f"{collection(namespace)}?watch=1&resourceVersion={obj['metadata']['resourceVersion']}"
    )
    assert (await again.next())["type"] == "DELETED"
    watch.close()
    again.close()


@pytest_twisted.ensureDeferred
async def test_deletes_through_the_api_reach_the_watches_without_waiting_for_a_resync(
    make_server, registry, repo
):
    """The replica that deletes rereads the repository at once (kubectl wait --for=delete, get -w).
    The resync period is an hour: nothing else brings these events within the test."""
    namespace, path = repo.split("/", 1)
    for tag in ("v1", "v2", "v3"):
        images.push_oci_image(registry, repo, tag, seed=tag)
    images.push_oci_image(registry, f"{namespace}/other", "w1", seed="w1")
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    client = api.client(api.pki.admin)
    listing = (await client.get(collection(namespace))).json()
    rv = listing["metadata"]["resourceVersion"]
    assert sorted(i["spec"]["tag"] for i in listing["items"]) == ["v1", "v2", "v3", "w1"]
    watch = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion={rv}")
    assert watch.code == 200
    # A dry run deletes nothing, so it is no event: the first is the real delete's.
    dry = await client.delete(f"{collection(namespace)}/{encode_name(path, 'v1')}?dryRun=All")
    assert dry.code == 200
    reply = await client.delete(f"{collection(namespace)}/{encode_name(path, 'v2')}")
    assert reply.code == 200
    deleted = await watch.next()
    assert (deleted["type"], deleted["object"]["spec"]["tag"]) == ("DELETED", "v2")
    last = int(deleted["object"]["metadata"]["resourceVersion"])
    assert last > int(rv)
    # deletecollection: each repository it deleted in.
    assert (await client.delete(collection(namespace))).code == 200
    rest = [await watch.next() for _ in range(3)]
    assert sorted((e["type"], e["object"]["spec"]["tag"]) for e in rest) == [
        ("DELETED", "v1"),
        ("DELETED", "v3"),
        ("DELETED", "w1"),
    ]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in rest]
    assert sorted(versions) == versions and versions[0] > last
    # A watch resuming from the list replays the same events, from the scope's history.
    again = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion={last}")
    replayed = [await again.next() for _ in range(3)]
    assert [e["object"]["metadata"]["resourceVersion"] for e in replayed] == [str(v) for v in versions]
    watch.close()
    again.close()


@pytest_twisted.ensureDeferred
async def test_a_delete_finished_after_its_request_ended_reaches_the_watches_when_it_ends(
    reactor, make_server, registry, repo
):
    """The request's deadline passes while the delete's re-tag waits for its answer: the client gets
    504, the server finishes the delete, and the watches hear of it then, not at the next resync."""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    images.push_oci_image(registry, repo, "v2", seed="two")
    retag = "/manifests/v1"
    # The deadline leaves a loaded machine room to reach the re-tag; the stall keeps that re-tag
    # unanswered well past it (and within the registry timeout, so the delete then succeeds).
    proxy = FaultProxy(
        reactor, registry.url, lambda method, p: STALL if method == "PUT" and p.endswith(retag) else None, 3.0
    )
    try:
        api = await make_server(
            proxy.url, watch=WatchLimits(resync_period=3600), http=HttpLimits(request_timeout=1.5)
        )
        client = api.client(api.pki.admin)
        watch = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion=0")
        assert sorted([(await watch.next())["object"]["spec"]["tag"] for _ in range(2)]) == ["v1", "v2"]
        reply = await client.delete(f"{collection(namespace)}/{encode_name(path, 'v1')}")
        assert reply.code == 504
        assert "a delete already under way is finished by the server" in reply.json()["message"]
        deleted = await watch.next()
        assert (deleted["type"], deleted["object"]["spec"]["tag"]) == ("DELETED", "v1")
        assert images.list_tags(registry, repo) == ["v2"]
        watch.close()
    finally:
        await proxy.stop()


async def _metric(client: ApiClient, line_start: str) -> float:
    text = (await client.get("/metrics")).body.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


@pytest_twisted.ensureDeferred
async def test_a_list_reads_once_and_its_watch_starts_with_the_changes_since(
    make_server, registry, repo, reactor
):
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    images.push_oci_image(registry, repo, "v2", seed="two")
    api = await make_server(registry, watch=WatchLimits(resync_period=0.2))
    client = api.client(api.pki.admin)
    tag_reads = 'payloadtags_registry_operations_total{operation="tags"'
    before = await _metric(client, tag_reads)
    listing = (await client.get(collection(namespace))).json()
    assert [i["spec"]["tag"] for i in listing["items"]] == ["v1", "v2"]
    # A plain list: one tag-list read, no watch source, so no rereads after it either.
    await task.deferLater(reactor, 0.6, lambda: None)
    assert await _metric(client, tag_reads) == before + 1
    assert await _metric(client, "payloadtags_watch_scopes ") == 0
    # Changes between the list and its watch come first, as events after the list's resourceVersion.
    images.push_oci_image(registry, repo, "v3", seed="three")
    assert (await client.delete(f"{collection(namespace)}/{encode_name(path, 'v1')}")).code == 200
    rv = listing["metadata"]["resourceVersion"]
    watch = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion={rv}")
    first, second = await watch.next(), await watch.next()
    assert (first["type"], first["object"]["spec"]["tag"]) == ("DELETED", "v1")
    assert (second["type"], second["object"]["spec"]["tag"]) == ("ADDED", "v3")
    assert int(first["object"]["metadata"]["resourceVersion"]) > int(rv)
    # Then the scope is watched: later changes come from its rereads.
    images.push_oci_image(registry, repo, "v4", seed="four")
    added = await watch.next()
    assert (added["type"], added["object"]["spec"]["tag"]) == ("ADDED", "v4")
    watch.close()


@pytest_twisted.ensureDeferred
async def test_notifications_bring_events_without_waiting_for_the_resync(
    make_server, registry, repo, tmp_path
):
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    token = tmp_path / "token"
    token.write_text("secret\n")
    api = await make_server(
        registry, watch=WatchLimits(resync_period=3600), registry_events_token_file=str(token)
    )
    client = api.client(api.pki.admin)
    watch = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion=0", {"Accept": TABLE})
    first = await watch.next()
    assert first["type"] == "ADDED" and first["object"]["kind"] == "Table"
    assert first["object"]["rows"][0]["cells"][1:3] == [repo.split("/", 1)[1], "v1"]
    assert first["object"]["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    images.push_oci_image(registry, repo, "v2", seed="two")
    posted = await client.request(
        "POST",
        "/registry/events",
        headers={"Authorization": "Bearer secret"},
        body=events_body(("push", repo)),
    )
    assert posted.code == 200, posted.body
    added = await watch.next()
    assert added["type"] == "ADDED" and added["object"]["rows"][0]["cells"][2] == "v2"
    watch.close()


@pytest_twisted.ensureDeferred
async def test_what_a_watch_starts_with_is_written_a_piece_per_reactor_turn(
    make_server, registry, repo, monkeypatch
):
    # A client on loopback takes the lines as fast as they are written, so the transport never pushed
    # back: the ADDED events of a whole namespace went out in one reactor turn (/livez held for up to
    # 1.8 s at 100,000 tags, review r8quiet N2). Counted by a call made on every turn: no turn writes
    # more than a piece of them, and the stream is the same, in list order, the bookmark last.
    namespace, _ = repo.split("/", 1)
    count = 3000
    many_tags(registry, repo, count)
    api = await make_server(registry)
    client = api.client(api.pki.admin)
    turns = [0]

    def turn() -> None:
        turns[0] += 1

    written: collections.Counter[int] = collections.Counter()
    write = http.Request.write

    def recorded(request: http.Request, data: bytes) -> None:
        if b"watch=" in request.uri:
            written[turns[0]] += len(data)
        write(request, data)

    monkeypatch.setattr(http.Request, "write", recorded)
    ticking = LoopingCall(turn)  # interval 0: once per reactor turn
    ticking.start(0)
    try:
        query = "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
        watch = await stream(client, f"{collection(namespace)}?{query}")
        events = [await watch.next() for _ in range(count + 1)]
        watch.close()
    finally:
        ticking.stop()
    assert [e["object"]["spec"]["tag"] for e in events[:-1]] == [f"v{i:06d}" for i in range(count)]
    assert {e["type"] for e in events[:-1]} == {"ADDED"}
    assert events[-1]["type"] == "BOOKMARK"
    assert events[-1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    longest = max(len(json.dumps(e, separators=(",", ":"))) + 1 for e in events)
    # Bytes in one turn: at most a piece, and the line that crosses its end.
    assert sum(written.values()) > 20 * _WRITE_BYTES
    assert max(written.values()) <= _WRITE_BYTES + longest, max(written.values())


@pytest_twisted.ensureDeferred
async def test_initial_events_bookmarks_timeout_and_selectors(make_server, registry, repo):
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "a")
    images.push_oci_image(registry, repo, "b")
    api = await make_server(registry)
    client = api.client(api.pki.admin)
    query = "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
    watch = await stream(client, f"{collection(namespace)}?{query}&timeoutSeconds=1")
    kinds = [await watch.next() for _ in range(3)]
    assert [(e["type"], e["object"].get("spec", {}).get("tag")) for e in kinds] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("BOOKMARK", None),
    ]
    assert kinds[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    # timeoutSeconds: a last bookmark, then the stream ends cleanly.
    last = await watch.next(within=5)
    assert last["type"] == "BOOKMARK"
    await watch.ended
    one = encode_name(path, "b")
    selected = await stream(
        client, f"{collection(namespace)}?watch=true&resourceVersion=0&fieldSelector=metadata.name%3D{one}"
    )
    assert (await selected.next())["object"]["metadata"]["name"] == one
    selected.close()
    labelled = await stream(
        client, f"{collection(namespace)}?watch=true&resourceVersion=0&labelSelector=app%3Dx&timeoutSeconds=1"
    )
    await labelled.ended
    assert labelled.lines.pending == []  # tags carry no labels: nothing matches


@pytest_twisted.ensureDeferred
async def test_no_initial_events_from_a_resource_version_sends_the_changes_after_it(
    make_server, registry, repo
):
    """sendInitialEvents=false with NotOlderThan from N is a watch from N, as kube-apiserver's: the
    changes after N; an N this replica cannot serve gets 410."""
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "a")
    api = await make_server(registry, watch=WatchLimits(resync_period=0.2))
    client = api.client(api.pki.admin)
    held = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion=0")
    assert (await held.next())["object"]["spec"]["tag"] == "a"
    rv = (await client.get(collection(namespace))).json()["metadata"]["resourceVersion"]
    images.push_oci_image(registry, repo, "b", seed="b")
    assert (await held.next())["object"]["spec"]["tag"] == "b"
    query = "watch=true&sendInitialEvents=false&resourceVersionMatch=NotOlderThan&timeoutSeconds=1"
    since = await stream(client, f"{collection(namespace)}?{query}&resourceVersion={rv}")
    added = await since.next()
    assert (added["type"], added["object"]["spec"]["tag"]) == ("ADDED", "b")
    await since.ended
    assert since.lines.pending == []
    foreign = await stream(client, f"{collection(namespace)}?{query}&resourceVersion=1")
    error = await foreign.next()
    assert (error["type"], error["object"]["code"]) == ("ERROR", 410)
    await foreign.ended
    held.close()


@pytest_twisted.ensureDeferred
async def test_a_resource_version_from_elsewhere_is_gone(make_server, registry, repo):
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    first = await make_server(registry)
    second = await make_server(registry)
    listed = (await first.client(first.pki.admin).get(collection(namespace))).json()["metadata"][
        "resourceVersion"
    ]
    watch = await stream(
        second.client(second.pki.admin), f"{collection(namespace)}?watch=true&resourceVersion={listed}"
    )
    assert watch.code == 200
    error = await watch.next()
    assert error["type"] == "ERROR"
    assert error["object"]["code"] == 410 and error["object"]["reason"] == "Expired"
    assert error["object"]["kind"] == "Status" and error["object"]["message"]
    await watch.ended


@pytest_twisted.ensureDeferred
async def test_a_watch_from_a_version_older_than_the_history_gets_410_and_ends(
    make_server, registry, repo, reactor
):
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v0")
    api = await make_server(registry, watch=WatchLimits(resync_period=0.2, history=2))
    client = api.client(api.pki.admin)
    url = collection(namespace)
    first = (await client.get(url)).json()["metadata"]["resourceVersion"]
    # The scope's events are kept while it is watched: this watch keeps it watched and tells when
    # four more changes have been numbered, two more than the history holds. The version is a list's
    # made while the scope is watched: one made before starts from that list's record, not the history.
    keeper = await stream(client, f"{url}?watch=true&resourceVersion={first}")
    listed = (await client.get(url)).json()["metadata"]["resourceVersion"]
    for i in range(1, 5):
        images.push_oci_image(registry, repo, f"v{i}", seed=f"s{i}")
    assert [(await keeper.next())["type"] for _ in range(4)] == ["ADDED"] * 4
    late = await stream(client, f"{url}?watch=true&resourceVersion={listed}")
    assert late.code == 200
    await late.ended.addTimeout(30, reactor)  # a guard against a hang only: it ends at once
    keeper.close()
    events = [json.loads(line) for line in late.lines.pending]
    assert [event["type"] for event in events] == ["ERROR"]
    status = events[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
    assert status["message"]


@pytest_twisted.ensureDeferred
async def test_watch_options_refused_with_a_status(api, repo):
    namespace, _ = repo.split("/", 1)
    client = api.client(api.pki.admin)
    for query, code in (
        ("watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan", 422),  # no bookmarks
        ("watch=true&sendInitialEvents=true&allowWatchBookmarks=true", 422),  # no NotOlderThan
        ("watch=true&resourceVersionMatch=NotOlderThan&resourceVersion=5", 422),
        ("watch=true&timeoutSeconds=abc", 400),
        ("watch=true&resourceVersion=x1", 400),
        ("watch=true&continue=abc", 400),
        ("watch=maybe&timeoutSeconds=abc", 400),  # any value but false or 0 is a watch
    ):
        reply = await client.get(f"{collection(namespace)}?{query}")
        assert reply.code == code, (query, reply.body)
        assert reply.json()["kind"] == "Status"


@pytest_twisted.ensureDeferred
async def test_a_negative_timeout_is_a_watch_that_ends_at_once(api, registry, repo, reactor):
    # As kube-apiserver: no validation looks at timeoutSeconds, and its watch's timer of a negative
    # duration has fired already, so the answer is 200 and the stream ends at once, without an event.
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    client = api.client(api.pki.admin)
    for query in (
        "",
        "&resourceVersion=0&allowWatchBookmarks=true",
        "&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
    ):
        watch = await stream(client, f"{collection(namespace)}?watch=true&timeoutSeconds=-1{query}")
        assert watch.code == 200, query
        await watch.ended.addTimeout(30, reactor)  # a guard against a hang only: it ends at once
        assert watch.lines.pending == [], query


@pytest_twisted.ensureDeferred
async def test_any_watch_value_but_false_or_0_is_a_watch(api, registry, repo):
    # kube-apiserver reads watch as any boolean query parameter: "false" and "0" (any case) are false,
    # every other value, the empty one too, is true, and the request is a watch.
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    client = api.client(api.pki.admin)
    for value in ("", "yes", "abc"):
        watch = await stream(client, f"{collection(namespace)}?watch={value}&resourceVersion=0")
        assert watch.code == 200 and watch.headers["content-type"] == ["application/json"]
        added = await watch.next()
        assert (added["type"], added["object"]["metadata"]["name"]) == ("ADDED", encode_name(path, "v1"))
        watch.close()
    for value in ("false", "FALSE", "0"):
        listed = await client.get(f"{collection(namespace)}?watch={value}")
        assert (listed.code, listed.json()["kind"]) == (200, "PayloadRepositoryTagList"), listed.body


@pytest_twisted.ensureDeferred
async def test_a_watch_ignores_its_requests_timeout_parameter(make_server, registry, repo):
    """client-go sends ``?timeout=`` on every request of a client with a timeout, watches included
    (kubectl get -w --request-timeout=5s), and kube-apiserver's WithRequestDeadline skips long-running
    requests: a malformed value, a 400 for any other request, is not one for a watch, and a short one
    does not end it (review-ds6 F3), nor --request-timeout. The server's clock is the test's: past
    both on it, the watch still brings a push."""
    namespace, _ = repo.split("/", 1)
    api = await make_server(registry, watch=WatchLimits(resync_period=0.2))
    clock = task.Clock()
    api.running.api.clock = clock
    client = api.client(api.pki.admin)
    malformed = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion=0&timeout=soon")
    short = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion=0&timeout=1s")
    try:
        assert (malformed.code, short.code) == (200, 200)
        clock.advance(3600.0)  # past its own timeout, and past --request-timeout
        images.push_oci_image(registry, repo, "v1")
        for watch in (malformed, short):
            added = await watch.next()
            assert (added["type"], added["object"]["spec"]["tag"]) == ("ADDED", "v1"), added
    finally:
        malformed.close()
        short.close()


@pytest_twisted.ensureDeferred
async def test_watches_are_limited_per_user_and_exempt_from_the_deadline(
    make_server, registry, repo, reactor
):
    namespace, _ = repo.split("/", 1)
    api = await make_server(registry, watch=WatchLimits(max_watches_per_user=1))
    client = api.client(api.pki.admin)
    held = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion=0")
    assert held.code == 200
    refused = await client.get(f"{collection(namespace)}?watch=true")
    assert refused.code == 429 and refused.json()["reason"] == "TooManyRequests"
    assert "too many watches for user" in refused.json()["message"]
    held.close()
    await task.deferLater(reactor, 0.2, lambda: None)
    assert not api.running.api.watch_hub.watchers
    again = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion=0")
    assert again.code == 200
    again.close()


async def _alice(
    make_server: Any, registry: Any, kube_api: Any, kube_kubeconfig: Any, pki: Any, *repositories: str
) -> tuple[Any, ApiClient]:
    """A server deciding access by RBAC over ``repositories`` (pushed), and alice, who may see `app`."""
    for repository in repositories:
        images.push_oci_image(registry, repository, "v1", seed=repository)
    api = await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="RBAC",
        watch=WatchLimits(resync_period=0.2),
    )
    grant(kube_api, repositories[0].split("/", 1)[0], "alice", ["get"], ["app"], "alice-read")
    return api, api.client(pki.client_ca.client("alice"))


async def _rules_loading(
    make_server: Any, registry: Any, kube_api: Any, kube_kubeconfig: Any, pki: Any, namespace: str
) -> tuple[Any, ApiClient]:
    """A server deciding access by RBAC whose rules cannot load until the test clears the cluster API's
    errors, and alice, who may see `<namespace>/app` (pushed) once they do."""
    images.push_oci_image(registry, f"{namespace}/app", "v1")
    grant(kube_api, namespace, "alice", ["get"], ["app"], "alice-read")
    kube_api.inject_error(500, path="/apis/rbac.authorization.k8s.io/v1/roles", times=1_000_000)
    api = await make_server(registry, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC")
    return api, api.client(pki.client_ca.client("alice"))


async def _rules_loaded(api: Any) -> bool:
    return bool((await api.client(None).get("/readyz/rbac")).code == 200)


async def _showing(client: ApiClient, namespace: str, paths: list[str]) -> str | None:
    """The resourceVersion of a list of ``namespace`` that shows the repositories ``paths``."""
    reply = await client.get(collection(namespace))
    if reply.code != 200:
        assert reply.code == 503, reply.body  # under load the RBAC rules may not be loaded yet
        return None
    body = reply.json()
    shown = sorted({i["spec"]["repositoryPath"] for i in body["items"]})
    return str(body["metadata"]["resourceVersion"]) if shown == paths else None


async def _gone(watch: Stream, reactor: Any) -> Any:
    """The last line of a stream ended by an access change: the 410 that makes a reflector relist."""
    error = await watch.next()
    ended = watch.ended
    ended.addTimeout(10, reactor)
    await ended
    assert watch.lines.pending == []
    return error


@pytest_twisted.ensureDeferred
async def test_watchers_see_only_readable_repositories_and_an_access_change_ends_the_stream(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    namespace, _ = repo.split("/", 1)
    _, alice = await _alice(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    assert await eventually(lambda: _showing(alice, namespace, ["app"]), within=20)
    watch = await stream(alice, f"{collection(namespace)}?watch=true&resourceVersion=0")
    first = await watch.next()
    assert (first["type"], first["object"]["spec"]["repositoryPath"]) == ("ADDED", "app")
    images.push_oci_image(registry, f"{namespace}/secret", "v2", seed="secret2")  # not hers: no event
    images.push_oci_image(registry, f"{namespace}/app", "v2", seed="app2")
    second = await watch.next()
    assert (second["type"], second["object"]["spec"]["repositoryPath"]) == ("ADDED", "app")
    assert second["object"]["spec"]["tag"] == "v2"
    # Granting her `secret` changes what she may see: the stream ends with a 410, so her client relists.
    grant(kube_api, namespace, "alice", ["get"], ["app", "secret"], "alice-read-more")
    error = await _gone(watch, reactor)
    assert (error["type"], error["object"]["code"], error["object"]["reason"]) == ("ERROR", 410, "Expired")
    assert await _showing(alice, namespace, ["app", "secret"])


@pytest_twisted.ensureDeferred
async def test_a_grant_or_a_revocation_ends_a_watch_from_a_list_with_410(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """A watch from a list's resourceVersion was never told about `secret`: granting it must still end
    the stream, with a 410 (a clean end makes client-go re-watch from its last resourceVersion, which
    never replays `secret:v1`); so must taking it away."""
    namespace, _ = repo.split("/", 1)
    _, alice = await _alice(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    listed = await eventually(lambda: _showing(alice, namespace, ["app"]), within=20)
    assert listed
    watch = await stream(alice, f"{collection(namespace)}?watch=true&resourceVersion={listed}")
    assert watch.code == 200
    grant(kube_api, namespace, "alice", ["get"], ["secret"], "alice-read-secret")
    error = await _gone(watch, reactor)
    assert error["type"] == "ERROR" and error["object"]["kind"] == "Status"
    assert (error["object"]["code"], error["object"]["reason"]) == (410, "Expired")
    # The relist the 410 brings shows `secret:v1`; a watch from it ends the same way when `secret`
    # is taken away again, so that the client does not keep it.
    relisted = await eventually(lambda: _showing(alice, namespace, ["app", "secret"]), within=20)
    assert relisted
    watch = await stream(alice, f"{collection(namespace)}?watch=true&resourceVersion={relisted}")
    assert watch.code == 200
    kube_api.store.delete(ROLEBINDINGS, "alice-read-secret", namespace)
    error = await _gone(watch, reactor)
    assert (error["type"], error["object"]["code"], error["object"]["reason"]) == ("ERROR", 410, "Expired")
    assert await eventually(lambda: _showing(alice, namespace, ["app"]), within=20)


async def _noted_by_a_stream(client: ApiClient, url: str, resource_version: str | None) -> None:
    """A watch of the client's user on ``url`` from ``resource_version``, run to its end (one second):
    her rules are noted in its scope (docs/watch.md, "Access")."""
    ended = await stream(client, f"{url}?watch=true&timeoutSeconds=1&resourceVersion={resource_version}")
    assert ended.code == 200
    await ended.ended


async def _checked(api: Any, before: int) -> bool:
    """Whether the server's access check has run since the rules' generation ``before``."""
    hub = api.running.api.watch_hub
    now = hub.access_generation()
    return bool(now > before and hub.checked_generation == now)


@pytest.mark.parametrize("change", ["revoke", "grant"])
@pytest_twisted.ensureDeferred
async def test_a_change_of_her_rules_between_two_streams_is_410_for_the_re_watch(
    change, make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """A stream ends on its timeout after a last bookmark (client-go asks 5 to 10 minutes), `secret` is
    taken away (or granted), and the reflector watches again from that bookmark: the 410 that a running
    watch gets must come then too. It used to get bookmarks and nothing else, and her client kept
    `secret:v1` for good (or never got it)."""
    namespace, _ = repo.split("/", 1)
    api, alice = await _alice(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    before_paths, after_paths = ["app", "secret"], ["app"]
    if change == "revoke":
        grant(kube_api, namespace, "alice", ["get"], ["secret"], "alice-read-secret")
    else:
        before_paths, after_paths = after_paths, before_paths
    listed = await eventually(lambda: _showing(alice, namespace, before_paths), within=20)
    assert listed
    first = await stream(
        alice,
        f"{collection(namespace)}?watch=true&allowWatchBookmarks=true&timeoutSeconds=1"
        f"&resourceVersion={listed}",
    )
    last = await first.next()
    assert last["type"] == "BOOKMARK", last
    ended = first.ended
    ended.addTimeout(10, reactor)  # a hang guard: the stream ends by its timeoutSeconds
    await ended
    bookmark = last["object"]["metadata"]["resourceVersion"]
    generation = api.running.api.watch_hub.access_generation()
    if change == "revoke":
        kube_api.store.delete(ROLEBINDINGS, "alice-read-secret", namespace)
    else:
        grant(kube_api, namespace, "alice", ["get"], ["secret"], "alice-read-secret")
    assert await eventually(lambda: _checked(api, generation), within=20)
    assert await eventually(lambda: _showing(alice, namespace, after_paths), within=20)
    again = await stream(
        alice,
        f"{collection(namespace)}?watch=true&allowWatchBookmarks=true&timeoutSeconds=30"
        f"&resourceVersion={bookmark}",
    )
    assert again.code == 200
    error = await _gone(again, reactor)
    assert (error["type"], error["object"]["code"], error["object"]["reason"]) == ("ERROR", 410, "Expired")


async def _one_stream(client: ApiClient, namespace: str, listed: str | None, reactor: Any) -> str:
    """A watch from ``listed`` that ends on its 1 s timeout after a bookmark; the bookmark's version."""
    first = await stream(
        client,
        f"{collection(namespace)}?watch=true&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion={listed}",
    )
    last = await first.next()
    while last["type"] != "BOOKMARK":
        last = await first.next()
    ended = first.ended
    ended.addTimeout(10, reactor)  # a hang guard: the stream ends by its timeoutSeconds
    await ended
    return str(last["object"]["metadata"]["resourceVersion"])


async def _first_line_from(client: ApiClient, namespace: str, version: str | None) -> Any:
    again = await stream(
        client,
        f"{collection(namespace)}?watch=true&allowWatchBookmarks=true&timeoutSeconds=2&resourceVersion={version}",
    )
    assert again.code == 200
    return await again.next()


async def _alice_in_and_out_of_devs(
    make_server: Any, registry: Any, kube_api: Any, kube_kubeconfig: Any, pki: Any, namespace: str
) -> tuple[ApiClient, ApiClient]:
    """On the server of `_alice`, with `secret` granted to the group devs, two clients of alice's:
    her certificate with devs (app and secret) and one without (app)."""
    api, _ = await _alice(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    grant(kube_api, namespace, "devs", ["get"], ["secret"], "devs-read-secret", kind="Group")
    in_devs = api.client(pki.client_ca.client("alice", ("devs",), stem="alice-devs"))
    not_in_devs = api.client(pki.client_ca.client("alice", (), stem="alice-nodevs"))
    return in_devs, not_in_devs


@pytest_twisted.ensureDeferred
async def test_leaving_a_group_between_two_streams_is_410_for_the_re_watch(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """alice (client certificate O=devs) sees `secret` through a RoleBinding of devs; her next
    certificate has no devs. Her rules are hers whatever groups a request of hers carries."""
    namespace, _ = repo.split("/", 1)
    in_devs, not_in_devs = await _alice_in_and_out_of_devs(
        make_server, registry, kube_api, kube_kubeconfig, pki, namespace
    )
    listed = await eventually(lambda: _showing(in_devs, namespace, ["app", "secret"]), within=20)
    bookmark = await _one_stream(in_devs, namespace, listed, reactor)
    assert await eventually(lambda: _showing(not_in_devs, namespace, ["app"]), within=20)
    line = await _first_line_from(not_in_devs, namespace, bookmark)
    assert (line["type"], line["object"]["code"]) == ("ERROR", 410), line


@pytest_twisted.ensureDeferred
async def test_a_list_made_after_her_rules_changed_and_the_watch_from_it_are_served(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """No watch of hers ran when `secret` was revoked: a client of hers that lists after the access check
    saw it (a restarted controller, `kubectl get -w`) holds nothing the old rules decided."""
    namespace, _ = repo.split("/", 1)
    api, alice = await _alice(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    grant(kube_api, namespace, "alice", ["get"], ["secret"], "alice-read-secret")
    listed = await eventually(lambda: _showing(alice, namespace, ["app", "secret"]), within=20)
    bookmark = await _one_stream(alice, namespace, listed, reactor)
    generation = api.running.api.watch_hub.access_generation()
    kube_api.store.delete(ROLEBINDINGS, "alice-read-secret", namespace)
    assert await eventually(lambda: _checked(api, generation), within=20)
    fresh = await eventually(lambda: _showing(alice, namespace, ["app"]), within=20)
    assert (await _first_line_from(alice, namespace, fresh))["type"] == "BOOKMARK"
    line = await _first_line_from(alice, namespace, bookmark)
    assert (line["type"], line["object"]["code"]) == ("ERROR", 410), line


@pytest.mark.parametrize("between", ["revoked", "granted"])
@pytest_twisted.ensureDeferred
async def test_her_rules_changed_back_between_her_list_and_its_watch_is_410(
    between, make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """A stream of alice's ran (her rules are noted); `secret` is granted (or taken away) while none of
    her watches runs, she relists under that, and the change is undone before her watch from that list.
    Her rules now equal those noted before: her list must have noted the change, or the watch is
    served and her client keeps `secret:v1` for good (or never gets it)."""
    namespace, _ = repo.split("/", 1)
    api, alice = await _alice(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    hub = api.running.api.watch_hub
    give, take = _secret_grants(kube_api, namespace)

    first, then = ["app"], ["app", "secret"]
    change, undo = give, take
    if between == "granted":
        give()
        first, then, change, undo = then, first, take, give
    listed = await eventually(lambda: _showing(alice, namespace, first), within=20)
    await _one_stream(alice, namespace, listed, reactor)
    generation = hub.access_generation()
    change()
    assert await eventually(lambda: _checked(api, generation), within=20)
    middle = await eventually(lambda: _showing(alice, namespace, then), within=20)
    assert middle
    generation = hub.access_generation()
    undo()
    assert await eventually(lambda: _checked(api, generation), within=20)
    line = await _first_line_from(alice, namespace, middle)
    assert (line["type"], line["object"]["code"]) == ("ERROR", 410), line


def _secret_grants(kube_api: Any, namespace: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """Two steps of alice's rules in ``namespace``: grant her `secret` (a RoleBinding of its own each
    time), and take back the last grant."""
    granted = 0

    def give() -> None:
        nonlocal granted
        granted += 1
        grant(kube_api, namespace, "alice", ["get"], ["secret"], f"alice-read-secret-{granted}")

    def take() -> None:
        kube_api.store.delete(ROLEBINDINGS, f"alice-read-secret-{granted}", namespace)

    return give, take


async def _alice_and_a_change_of_secret(
    between: str,
    make_server: Any,
    registry: Any,
    kube_api: Any,
    kube_kubeconfig: Any,
    pki: Any,
    namespace: str,
) -> tuple[Any, ApiClient, list[str], Callable[[], None], Callable[[], None]]:
    """`_alice`'s server and client, `zz` hers too, and what she may list in ``namespace`` before a
    change of `secret` ("revoked": granted now, then taken back; "granted": the other way round), the
    change and its undoing."""
    api, alice = await _alice(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    give, take = _secret_grants(kube_api, namespace)
    first, change, undo = ["app", "zz"], give, take
    if between == "revoked":
        give()
        first, change, undo = ["app", "secret", "zz"], take, give
    images.push_oci_image(registry, f"{namespace}/zz", "v1", seed=f"{namespace}/zz")
    grant(kube_api, namespace, "alice", ["get"], ["zz"], "alice-read-zz")
    return api, alice, first, change, undo


@pytest.mark.parametrize("scope", ["namespace", "all"])
@pytest.mark.parametrize("between", ["revoked", "granted"])
@pytest_twisted.ensureDeferred
async def test_her_rules_changed_back_between_two_pages_of_her_list_is_410(
    scope, between, make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """As above, through a paged list (kubectl's chunking, client-go's pager): alice's rules are noted,
    her list's first page (`limit=1`) takes its resourceVersion under A; `secret` is taken away (or
    granted) and checked while none of her watches runs; her second page is decided by those rules; A
    again before the rest of the pages and her watch from the list's resourceVersion. Only the first
    page checked her rules: the watch was served, and her client kept `secret:v1` for good (or never
    got it)."""
    from urllib.parse import quote

    namespace, _ = repo.split("/", 1)
    api, alice, first, change, undo = await _alice_and_a_change_of_secret(
        between, make_server, registry, kube_api, kube_kubeconfig, pki, namespace
    )
    hub = api.running.api.watch_hub
    listed = await eventually(lambda: _showing(alice, namespace, first), within=20)
    url = collection(namespace) if scope == "namespace" else f"{B}/payloadrepositorytags"
    if scope == "all":
        listed = (await alice.get(url)).json()["metadata"]["resourceVersion"]
    await _noted_by_a_stream(alice, url, listed)

    def mine(page: Any) -> list[str]:
        return [i["spec"]["repositoryPath"] for i in page["items"] if i["metadata"]["namespace"] == namespace]

    page = (await alice.get(f"{url}?limit=1")).json()
    shown = mine(page)
    assert shown == ["app"], page
    rv = page["metadata"]["resourceVersion"]
    generation = hub.access_generation()
    change()
    assert await eventually(lambda: _checked(api, generation), within=20)
    page = (await alice.get(f"{url}?limit=1&continue={quote(page['metadata']['continue'])}")).json()
    shown += mine(page)
    generation = hub.access_generation()
    undo()
    assert await eventually(lambda: _checked(api, generation), within=20)
    while page["metadata"].get("continue"):  # the pager reads on to the end, under A again
        page = (await alice.get(f"{url}?limit=1&continue={quote(page['metadata']['continue'])}")).json()
        shown += mine(page)
    assert sorted(shown) != sorted(first), "the second page was not decided by the changed rules"
    watch = await stream(
        alice, f"{url}?watch=true&allowWatchBookmarks=true&timeoutSeconds=2&resourceVersion={rv}"
    )
    assert watch.code == 200
    line = await watch.next()
    assert (line["type"], line["object"].get("code")) == ("ERROR", 410), (shown, line)


@pytest_twisted.ensureDeferred
async def test_a_page_of_her_all_namespaces_list_checks_her_rules_where_it_read(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """A page costs what it read: alice's rules are noted in every namespace with tags (her -A stream
    ran); a continued page of her -A list (`limit=1`) that reads `zz` of her namespace checks her rules
    there, not in every namespace noted for her (the later namespace's are checked by the page that
    reads it). Only the first page checks them all, before the list takes its resourceVersion."""
    from urllib.parse import quote

    namespace, _ = repo.split("/", 1)
    later = f"{namespace}z"  # sorts after `namespace/...`
    images.push_oci_image(registry, f"{later}/app", "v1", seed=f"{later}/app")
    images.push_oci_image(registry, f"{namespace}/zzz", "v1", seed=f"{namespace}/zzz")
    api, alice = await _alice(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/zz"
    )
    # What the pages read past their end (to tell whether there is more) is hers, in her namespace.
    grant(kube_api, namespace, "alice", ["get"], ["zz", "zzz"], "alice-read-zz")
    hub = api.running.api.watch_hub
    url = f"{B}/payloadrepositorytags"
    await eventually(lambda: _showing(alice, namespace, ["app", "zz", "zzz"]), within=20)
    listed = (await alice.get(url)).json()["metadata"]["resourceVersion"]
    await _noted_by_a_stream(alice, url, listed)
    rules_of = hub.access_rules
    asked: list[str] = []

    def counted(user: Any, scope_namespace: str) -> Any:
        asked.append(scope_namespace)
        return rules_of(user, scope_namespace)

    hub.access_rules = counted
    page = (await alice.get(f"{url}?limit=1")).json()
    assert [(i["metadata"]["namespace"], i["spec"]["repositoryPath"]) for i in page["items"]] == [
        (namespace, "app")
    ]
    asked.clear()
    page = (await alice.get(f"{url}?limit=1&continue={quote(page['metadata']['continue'])}")).json()
    assert [(i["metadata"]["namespace"], i["spec"]["repositoryPath"]) for i in page["items"]] == [
        (namespace, "zz")
    ]
    assert namespace in asked and later not in asked, asked


@pytest_twisted.ensureDeferred
async def test_a_watch_of_the_changes_from_now_on_is_not_410_when_her_groups_changed(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """`sendInitialEvents=false` from `""` or `"0"` asks for the changes from now on, no past, and
    kube-apiserver never answers 410 to it. alice's rules were noted under one certificate; her
    next one's groups change them (a change dated when it is seen, after "now"): it used to be 410."""
    namespace, _ = repo.split("/", 1)
    in_devs, not_in_devs = await _alice_in_and_out_of_devs(
        make_server, registry, kube_api, kube_kubeconfig, pki, namespace
    )
    listed = await eventually(lambda: _showing(not_in_devs, namespace, ["app"]), within=20)
    await _one_stream(not_in_devs, namespace, listed, reactor)
    query = (
        "watch=true&sendInitialEvents=false&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
        "&timeoutSeconds=1"
    )
    for client, version in ((in_devs, ""), (not_in_devs, "0")):
        watch = await stream(client, f"{collection(namespace)}?{query}&resourceVersion={version}")
        assert watch.code == 200
        line = await watch.next()
        assert line["type"] == "BOOKMARK", line
        ended = watch.ended
        ended.addTimeout(10, reactor)  # a hang guard: the stream ends by its timeoutSeconds
        await ended


@pytest_twisted.ensureDeferred
async def test_an_rbac_relist_that_reorders_her_bindings_keeps_the_re_watch(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """The server's RBAC reflectors relist (their watches cut after a compaction) and her two
    RoleBindings come back in name order, not the order they were made in: the same rules."""
    namespace, _ = repo.split("/", 1)
    api, alice = await _alice(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    assert await eventually(lambda: _showing(alice, namespace, ["app"]), within=20)
    grant(kube_api, namespace, "alice", ["get"], ["secret"], "aaa-read-secret")  # sorts before alice-read
    listed = await eventually(lambda: _showing(alice, namespace, ["app", "secret"]), within=20)
    bookmark = await _one_stream(alice, namespace, listed, reactor)
    generation = api.running.api.watch_hub.access_generation()
    ensure_namespace(kube_api, f"{namespace}-other")  # moves the cluster's resourceVersion on
    kube_api.compact()
    kube_api.cut_watches()  # the reflectors watch again from their resourceVersion: 410, relist
    assert await eventually(lambda: _checked(api, generation), within=20)
    assert await eventually(lambda: _showing(alice, namespace, ["app", "secret"]), within=20)
    line = await _first_line_from(alice, namespace, bookmark)
    assert line["type"] == "BOOKMARK", line


@pytest_twisted.ensureDeferred
async def test_a_list_refused_while_the_rules_load_does_not_make_a_later_lists_watch_resend_its_tags(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """A list refused with 503 while the access rules load still counted as a list of its
    resourceVersion's record, so a watch from the retry's list (same resourceVersion) was first sent
    every tag that list had shown as ADDED again."""
    namespace, _ = repo.split("/", 1)
    api, alice = await _rules_loading(make_server, registry, kube_api, kube_kubeconfig, pki, namespace)
    refused = await alice.get(collection(namespace))
    assert refused.code == 503, refused.body
    kube_api.clear_injected_errors()
    assert await eventually(lambda: _rules_loaded(api), within=30)
    listed = await alice.get(collection(namespace))
    assert [i["spec"]["tag"] for i in listed.json()["items"]] == ["v1"]
    images.push_oci_image(registry, f"{namespace}/app", "v2", seed="v2")
    version = listed.json()["metadata"]["resourceVersion"]
    watch = await stream(
        alice, f"{collection(namespace)}?watch=true&resourceVersion={version}&timeoutSeconds=2"
    )
    assert watch.code == 200
    ended = watch.ended
    ended.addTimeout(20, reactor)  # a hang guard: the stream ends by its timeoutSeconds
    await ended
    events = [json.loads(line) for line in watch.lines.pending]
    shown = [(e["type"], e["object"]["spec"]["tag"]) for e in events if e["type"] != "BOOKMARK"]
    assert shown == [("ADDED", "v2")]


@pytest_twisted.ensureDeferred
async def test_a_watch_before_the_rules_load_is_refused_and_later_revocations_still_end_watches(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """Until the RBAC rules are loaded a watch is refused before its head, as a list is: 503 with
    Retry-After. It used to get a 200 and an ERROR 500, and stayed registered; when the rules loaded,
    ending it failed and stopped the access check, so that no revocation ended any watch after it."""
    namespace, _ = repo.split("/", 1)
    api, alice = await _rules_loading(make_server, registry, kube_api, kube_kubeconfig, pki, namespace)
    early = await alice.get(f"{collection(namespace)}?watch=true")
    assert early.code == 503, early.body
    assert early.header("retry-after") == "1"
    assert (early.json()["kind"], early.json()["reason"]) == ("Status", "ServiceUnavailable")
    listed = await alice.get(collection(namespace))
    assert listed.code == 503 and listed.header("retry-after") == "1"
    kube_api.clear_injected_errors()
    assert await eventually(lambda: _rules_loaded(api), within=30)
    watch = await stream(alice, f"{collection(namespace)}?watch=true")
    first = await watch.next()
    assert (first["type"], first["object"]["spec"]["repositoryPath"]) == ("ADDED", "app")
    kube_api.store.delete(ROLEBINDINGS, "alice-read", namespace)
    error = await _gone(watch, reactor)
    assert (error["type"], error["object"]["code"], error["object"]["reason"]) == ("ERROR", 410, "Expired")


@pytest_twisted.ensureDeferred
async def test_a_rules_change_that_shows_the_user_nothing_new_keeps_the_stream(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    namespace, _ = repo.split("/", 1)
    api, alice = await _alice(make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app")
    assert await eventually(lambda: _showing(alice, namespace, ["app"]), within=20)
    watch = await stream(alice, f"{collection(namespace)}?watch=true&resourceVersion=0")
    assert (await watch.next())["type"] == "ADDED"
    hub = api.running.api.watch_hub
    checked = hub.access_generation()
    # Bob's rules, and a rule of hers for a repository that has no tags: what she sees is unchanged.
    grant(kube_api, namespace, "bob", ["get"], ["app"], "bob-read")
    grant(kube_api, namespace, "alice", ["get"], ["later"], "alice-read-later")

    async def rechecked() -> bool:
        now = hub.access_generation()
        return bool(now >= checked + 4 and hub.checked_generation == now)

    assert await eventually(rechecked, within=20)
    images.push_oci_image(registry, f"{namespace}/app", "v2", seed="app2")
    added = await watch.next()
    assert (added["type"], added["object"]["spec"]["tag"]) == ("ADDED", "v2")
    assert not watch.ended.called
    watch.close()


@pytest_twisted.ensureDeferred
async def test_watch_metrics(api, repo, reactor):
    namespace, _ = repo.split("/", 1)
    client = api.client(api.pki.admin)

    async def metric(line_start: str) -> float:
        text = (await client.get("/metrics")).body.decode()
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
        return sum(values)

    before = await metric('payloadtags_watches_ended_total{reason="client gone"}')
    watch = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion=0")
    assert await metric("payloadtags_watches ") == 1
    assert await metric("payloadtags_watch_scopes ") >= 1
    watch.close()
    await task.deferLater(reactor, 0.3, lambda: None)
    assert await metric("payloadtags_watches ") == 0
    assert await metric('payloadtags_watches_ended_total{reason="client gone"}') == before + 1
    assert (
        await metric(
            'payloadtags_apiserver_requests_total{code="200",resource="payloadrepositorytags",verb="watch"}'
        )
        == 1
    )


# What client-go's metadata client sends for a watch (metadata.Client.Watch): the garbage collector's
# and every metadata informer's watch. Its lists ask for PartialObjectMetadataList instead.
METADATA_WATCH = (
    "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,"
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
)
METADATA_LIST = (
    "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,"
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
)


@pytest_twisted.ensureDeferred
async def test_metadata_watches_get_partial_object_metadata_events(make_server, registry, repo):
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry)
    client = api.client(api.pki.admin)
    listed = await client.get(collection(namespace), headers={"Accept": METADATA_LIST})
    assert listed.json()["kind"] == "PartialObjectMetadataList"
    rv = listed.json()["metadata"]["resourceVersion"]
    name = encode_name(path, "v1")
    for accept in (METADATA_WATCH, METADATA_LIST):
        for target in (
            f"{collection(namespace)}?watch=true&resourceVersion=0&allowWatchBookmarks=true&timeoutSeconds=1",
            # The garbage collector's (narrowed to this test's namespace: the registry is shared).
            f"{B}/payloadrepositorytags?watch=true&resourceVersion=0&timeoutSeconds=1"
            f"&fieldSelector=metadata.namespace%3D{namespace}",
            # kubectl get NAME -w's.
            f"{collection(namespace)}?watch=true&resourceVersion=0&timeoutSeconds=1"
            f"&fieldSelector=metadata.name%3D{name}",
        ):
            watch = await stream(client, target, headers={"Accept": accept})
            assert watch.code == 200, target
            assert watch.headers["content-type"][0].startswith("application/json"), target
            added = await watch.next()
            assert added["type"] == "ADDED"
            obj = added["object"]
            # What client-go's metadata scheme decodes; a PayloadRepositoryTag it cannot.
            assert (obj["kind"], obj["apiVersion"]) == ("PartialObjectMetadata", "meta.k8s.io/v1"), accept
            assert set(obj) == {"kind", "apiVersion", "metadata"}
            assert obj["metadata"]["name"] == name and obj["metadata"]["namespace"] == namespace
            assert obj["metadata"]["uid"]
            assert int(obj["metadata"]["resourceVersion"]) >= int(rv)
            await watch.ended
            rest = [json.loads(line) for line in watch.lines.pending]
            if "allowWatchBookmarks" in target:
                assert rest and rest[-1]["type"] == "BOOKMARK"
                assert rest[-1]["object"]["kind"] == "PartialObjectMetadata"
                assert rest[-1]["object"]["apiVersion"] == "meta.k8s.io/v1"


@pytest_twisted.ensureDeferred
async def test_a_watch_by_name_decides_and_keeps_access_for_its_tag_only(make_server, registry, repo):
    """What `kubectl get prt NAME -w` sends (a field selector on the name, from "0") over a namespace of
    many repositories: its watch used to ask the authorizer about every repository of the namespace and
    keep each decision for its life (about 226 bytes a repository and a watch, whatever the user may
    read). The selector is asked first now, and the watch keeps no decision."""
    namespace, _ = repo.split("/", 1)
    repositories = 100
    for i in range(repositories):
        images.push_oci_image(registry, f"{namespace}/r{i:04d}", "v1", seed="one")  # same blobs: quick
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    client = api.client(api.pki.admin)

    async def decisions() -> float:
        text = (await client.get("/metrics")).body.decode()
        prefix = "payloadtags_authorization_decisions_total{"
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = await decisions()
    name = encode_name("r0000", "v1")
    watch = await stream(
        client, f"{collection(namespace)}?fieldSelector=metadata.name%3D{name}&resourceVersion=0&watch=true"
    )
    first = await watch.next()
    assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == name
    # The watch's one, and the request's for the tag it names (its scope's source may be new).
    assert await decisions() - before <= 2
    (w,) = api.running.api.watch_hub.watchers
    kept = {
        field.name: len(value)
        for field in attrs.fields(type(w))
        if isinstance(value := getattr(w, field.name), dict | list | set | collections.deque)
    }
    assert sum(kept.values()) <= 4, kept  # its rules in the namespace, its end callbacks
    watch.close()


@attrs.define
class _GatedReader:
    """The hub's registry reads, held until ``gate`` fires: watches wait on their scope's baseline."""

    real: Any
    gate: Deferred[None] = attrs.field(factory=Deferred)

    async def scope_tags(self, namespace: str | None) -> Any:
        await self.gate
        return await self.real.scope_tags(namespace)

    async def repository_tags(self, repository: str) -> Any:
        return await self.real.repository_tags(repository)


def _gated_hub(api: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[WatchHub, _GatedReader, list[str]]:
    """The server's watch hub with its reads gated, and the users whose watches it was asked to admit."""
    hub: WatchHub = api.running.api.watch_hub
    reader = _GatedReader(hub.reader)
    hub.reader = reader
    asked: list[str] = []
    admit = WatchHub.admit

    def counting(self: WatchHub, user: str) -> Any:
        asked.append(user)
        return admit(self, user)

    monkeypatch.setattr(WatchHub, "admit", counting)
    return hub, reader, asked


@pytest_twisted.ensureDeferred
async def test_watches_past_the_limit_that_waited_on_a_read_get_429_before_any_byte(
    make_server, registry, repo, monkeypatch
):
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(max_watches_per_user=1))
    client = api.client(api.pki.admin)
    _, reader, asked = _gated_hub(api, monkeypatch)
    with collected_logs() as events:
        opened = [
            Deferred.fromCoroutine(stream(client, f"{collection(namespace)}?watch=true")) for _ in range(2)
        ]
        # Both arrived while nobody watched yet: the first waits on the scope's first read.
        assert await eventually(lambda: _ready(len(asked) == 2), within=20)
        reader.gate.callback(None)
        watches = [await d for d in opened]
        served = next(w for w in watches if w.code == 200)
        refused = next(w for w in watches if w is not served)
        assert refused.code == 429 and refused.headers["retry-after"] == ["1"]
        await refused.ended
        body = json.loads(b"".join(refused.lines.pending) or b"null")
        assert body["kind"] == "Status" and body["reason"] == "TooManyRequests" and body["code"] == 429
        assert "too many watches for user" in body["message"]
        assert (await served.next())["type"] == "ADDED"
        served.close()
    assert not [e for e in events if "unhandled error" in e.get("log_format", "")]


@pytest_twisted.ensureDeferred
async def test_a_watch_of_a_new_scope_while_every_kept_scope_is_in_use_gets_429_before_any_byte(
    make_server, registry, repo, monkeypatch
):
    """At most --max-watches scopes are kept (review r6watch F1). Here one: the scope of a list that
    waits for its first read (its watch gone). A watch of another scope then gets 429 with
    Retry-After rather than a second source; once the list is answered, the idle scope is dropped
    to make room and the same watch is served."""
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(max_watches=1))
    client = api.client(api.pki.admin)
    hub, reader, _ = _gated_hub(api, monkeypatch)
    with collected_logs() as events:
        first = Deferred.fromCoroutine(stream(client, f"{collection(namespace)}?watch=true"))
        assert await eventually(lambda: _ready(namespace in hub.sources), within=20)
        listed = Deferred.fromCoroutine(client.get(collection(namespace)))
        assert await eventually(lambda: _ready(hub._holds[namespace] == 2), within=20)
        first.cancel()  # its client went away; the list still waits on the scope's read
        first.addErrback(lambda _: None)
        assert await eventually(lambda: _ready(hub._holds[namespace] == 1 and not hub._reserved), within=20)
        refused = await stream(client, f"{collection(namespace + '-other')}?watch=true")
        assert refused.code == 429 and refused.headers["retry-after"] == ["1"]
        await refused.ended
        body = json.loads(b"".join(refused.lines.pending))
        assert (body["kind"], body["code"], body["reason"]) == ("Status", 429, "TooManyRequests")
        assert "too many watched scopes on this server (1)" in body["message"]
        assert list(hub.sources) == [namespace]
        reader.gate.callback(None)
        assert (await listed).code == 200
        served = await stream(client, f"{collection(namespace + '-other')}?watch=true")
        assert served.code == 200 and list(hub.sources) == [namespace + "-other"]
        served.close()
    assert not [e for e in events if "unhandled error" in e.get("log_format", "")]


@pytest_twisted.ensureDeferred
async def test_a_resume_from_before_a_scope_dropped_to_make_room_never_misses_a_delete(
    make_server, registry, repo, monkeypatch
):
    """Review r7watch L2: a client holds v1 at resourceVersion C (a list of the watched scope). The
    scope's source is dropped to make room for another scope (--max-watches=1); v1 is deleted; a
    list of the scope (no source now) records what it reads. A watch resumed from C must be told v1
    is gone (DELETED, or 410 and a relist), never served from the later list's record as if it were
    C's: the sequence moves on when a source is dropped to make room, as when one idles out."""
    namespace, _ = repo.split("/", 1)
    digest = images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(max_watches=1, resync_period=3600))
    client = api.client(api.pki.admin)
    hub = api.running.api.watch_hub
    first = await stream(client, f"{collection(namespace)}?watch=true")
    assert (await first.next())["object"]["spec"]["tag"] == "v1"
    held = (await client.get(collection(namespace))).json()
    assert [i["spec"]["tag"] for i in held["items"]] == ["v1"]
    c = held["metadata"]["resourceVersion"]
    first.close()
    await eventually(lambda: _ready(not hub.watchers), within=20)
    _, reader, _ = _gated_hub(api, monkeypatch)
    other = Deferred.fromCoroutine(stream(client, f"{collection(namespace + '-other')}?watch=true"))
    assert await eventually(lambda: _ready(namespace not in hub.sources), within=20)
    assert images.delete_manifest(registry, repo, digest) == 202
    listing = (await client.get(collection(namespace))).json()
    assert listing["items"] == []
    reader.gate.callback(None)
    (await other).close()
    await eventually(lambda: _ready(not hub.watchers), within=20)
    resumed = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion={c}&timeoutSeconds=3")
    assert resumed.code == 200
    await resumed.ended
    events = [json.loads(line) for line in resumed.lines.pending]
    told = [(e["type"], e["object"].get("code") or e["object"]["spec"]["tag"]) for e in events]
    assert told in ([("DELETED", "v1")], [("ERROR", 410)]), (c, listing["metadata"]["resourceVersion"], told)


@pytest_twisted.ensureDeferred
async def test_watches_of_made_up_namespaces_opened_and_closed_keep_no_more_scopes_than_max_watches(
    make_server, registry, repo, reactor
):
    """Review r6watch F1: one user opens and closes watches of 12 namespaces, none of which exists,
    one after the other. Each used to leave its scope's source behind for
    --watch-scope-idle-timeout, rereading its namespace every resync period; at most --max-watches
    (2) are kept now, and a watch of a real namespace is served as before."""
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(max_watches=2, max_watches_per_user=2))
    client = api.client(api.pki.admin)
    hub = api.running.api.watch_hub
    for i in range(12):
        opened = await stream(client, f"{collection(f'made-up-{i}')}?watch=true")
        assert opened.code == 200
        opened.close()
        await eventually(lambda: _ready(not hub.watchers), within=20)
        assert len(hub.sources) <= 2, sorted(map(str, hub.sources))
    watch = await stream(client, f"{collection(namespace)}?watch=true")
    assert watch.code == 200
    assert (await watch.next())["object"]["spec"]["tag"] == "v1"
    watch.close()


@pytest_twisted.ensureDeferred
async def test_watches_by_made_up_names_leave_no_read_number_in_the_scope_s_source(
    make_server, registry, repo
):
    """Review r6watch F2: `kubectl get NAME -w` of tags in repositories that do not exist reads each
    repository first (no tags). The scope's source, alive as long as its namespace is watched, kept
    a read number for every one of them."""
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    client = api.client(api.pki.admin)
    held = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion=0")
    await held.next()
    source = api.running.api.watch_hub.sources[namespace]
    for i in range(30):
        name = encode_name(f"made-up-{i}", "x")
        query = f"watch=true&resourceVersion=0&fieldSelector=metadata.name%3D{name}"
        opened = await stream(client, f"{collection(namespace)}?{query}")
        assert opened.code == 200
        opened.close()
    held.close()
    assert source.tags.keys() == {repo}
    assert set(source._marks) <= {repo}, source._marks


@pytest_twisted.ensureDeferred
async def test_lists_of_made_up_namespaces_keep_no_more_records_than_their_bound(make_server, registry, repo):
    """Review r7watch F1: a list of a namespace nobody watches opens a record of its reads
    (watch.listed), kept for --watch-scope-idle-timeout. Records were bounded in tags only, so one of
    a namespace with nothing in it cost nothing against the bound: 300 lists of made-up namespaces
    kept 300. A record counts now (the bound lowered here to 10 records' worth)."""
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    client = api.client(api.pki.admin)
    hub = api.running.api.watch_hub
    hub.listed.max_size = 10 * RECORD_COST
    for i in range(300):
        assert (await client.get(collection(f"made-up-{i}"))).code == 200
    assert len(hub.listed.records) <= 10, (len(hub.listed.records), hub.listed.size)


@pytest_twisted.ensureDeferred
async def test_another_user_s_watch_resumes_from_her_list_after_one_user_floods_the_records(
    make_server, registry, repo
):
    """One user's lists of made-up namespaces fill the records' bound (lowered here to 10 records'
    worth): her own records go, least recently used first, not alice's, which was the least recently
    used of all. Alice's watch from her list is served from its record (an ADDED for the tag pushed
    since), where it was 410 Expired and her client relisted."""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    alice = api.client(api.pki.client_ca.client("alice", stem="alice-fair"))
    mallory = api.client(api.pki.client_ca.client("mallory", stem="mallory-fair"))
    hub = api.running.api.watch_hub
    hub.listed.max_size = 10 * RECORD_COST
    listing = (await alice.get(collection(namespace))).json()
    rv = listing["metadata"]["resourceVersion"]
    assert [item["spec"]["tag"] for item in listing["items"]] == ["v1"]
    for i in range(30):
        assert (await mallory.get(collection(f"made-up-{i}"))).code == 200
    images.push_oci_image(registry, repo, "v2", seed="two")
    watch = await stream(alice, f"{collection(namespace)}?watch=true&resourceVersion={rv}")
    assert watch.code == 200
    added = await watch.next()
    assert (added["type"], added["object"].get("spec", {}).get("tag")) == ("ADDED", "v2"), added
    assert added["object"]["metadata"]["name"] == encode_name(path, "v2")
    watch.close()
    # Each one's records count against her: mallory's hold what alice's left of the bound at most.
    assert hub.listed.weight("alice") == USER_COST + RECORD_COST + REPOSITORY_COST + 1
    assert 0 < hub.listed.weight("mallory") <= hub.listed.max_size - hub.listed.weight("alice")


@pytest_twisted.ensureDeferred
async def test_lists_by_made_up_names_keep_no_more_in_a_record_than_its_bound(make_server, registry, repo):
    """Review r7watch F1: a list by name (fieldSelector metadata.name) of a tag in a repository that
    does not exist reads that repository (no tags) and records the read in the namespace's record,
    which counted nothing against the bound: 300 such lists kept 300 entries in one record. A
    repository read counts now (the bound lowered here to 10 records' worth)."""
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    client = api.client(api.pki.admin)
    hub = api.running.api.watch_hub
    hub.listed.max_size = 10 * RECORD_COST
    for i in range(300):
        name = encode_name(f"made-up-{i}", "x")
        reply = await client.get(f"{collection(namespace)}?fieldSelector=metadata.name%3D{name}")
        assert reply.code == 200
    entries = sum(len(r.reads) for r in hub.listed.records.values())
    assert entries <= 10, (entries, hub.listed.size, len(hub.listed.records))


@pytest_twisted.ensureDeferred
async def test_a_list_of_a_made_up_namespace_at_the_records_bound_looks_at_the_oldest_record_only(
    make_server, registry, repo
):
    """Review r8watch F1: with the records' default bound (250,000 tags' worth) filled by records of
    lists of made-up namespaces (62,500 of them, 4 each: what lists at 521 a second leave within
    --watch-scope-idle-timeout), each further such list dropped the oldest record by sorting them
    all, in the reactor thread (36 to 47 ms a list). The records are kept in the order they were last
    used: a drop looks at the oldest only. Counted in records looked at, not timed."""
    images.push_oci_image(registry, repo, "v1")
    # No reap (every idle_scope_ttl / 2) while the lists are made: it looks at every record.
    api = await make_server(registry, watch=WatchLimits(resync_period=3600, idle_scope_ttl=3600))
    client = api.client(api.pki.admin)
    hub = api.running.api.watch_hub
    # The flood's records, as its lists leave them (made directly: 62,500 HTTPS lists take minutes).
    now = hub.clock.seconds()
    while hub.listed.open(f"flood-{len(hub.listed.records)}", hub.versions.current, now) is not None:
        pass
    flood = len(hub.listed.records)
    # The open that found no room dropped one; the flood's user counts USER_COST.
    assert flood == (hub.listed.max_size - USER_COST) // RECORD_COST - 1
    hub.listed.records = records = LookedAt(hub.listed.records)
    holder = hub.listed.holders[""]  # the flood's, the one who holds the most: hers go
    holder.records = flooded = LookedAt(holder.records)
    for i in range(50):
        assert (await client.get(collection(f"made-up-{i}"))).code == 200
    dropped = flood + 50 - len(records)
    # Each list dropped one of the flood's (the first one's room for her entry, USER_COST, too).
    assert dropped == 50, dropped
    looked_at = records.looked_at + flooded.looked_at
    assert looked_at <= 8 * dropped, (looked_at, dropped)  # a handful a drop (unit test's)


@pytest_twisted.ensureDeferred
async def test_a_table_watch_sends_the_column_definitions_in_its_first_event_only(
    make_server, registry, repo
):
    """Review r6watch L1: as kube-apiserver, a Table watch's columns are in its first event, not
    repeated in every one (half of each line); kubectl keeps the last columns it was sent. Each
    watch gets them first, whatever the scope's other watches were sent."""
    namespace, path = repo.split("/", 1)
    for tag in ("a", "b"):
        images.push_oci_image(registry, repo, tag, seed=tag)
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    client = api.client(api.pki.admin)
    url = f"{collection(namespace)}?watch=true&resourceVersion=0"
    first = await stream(client, url, {"Accept": TABLE})
    events = [await first.next() for _ in range(2)]
    second = await stream(client, url, {"Accept": TABLE})
    events_second = [await second.next() for _ in range(2)]
    deleted = await client.delete(f"{collection(namespace)}/{encode_name(path, 'a')}")
    assert deleted.code == 200
    events.append(await first.next())
    events_second.append(await second.next())
    first.close()
    second.close()
    for got in (events, events_second):
        assert [e["type"] for e in got] == ["ADDED", "ADDED", "DELETED"]
        assert [c["name"] for c in got[0]["object"]["columnDefinitions"]][:3] == ["Name", "Repository", "Tag"]
        assert [e["object"]["columnDefinitions"] for e in got[1:]] == [[], []]
        assert [e["object"]["rows"][0]["cells"][2] for e in got] == ["a", "b", "a"]


@pytest_twisted.ensureDeferred
async def test_a_watch_waiting_on_a_read_when_the_server_stops_gets_a_status_before_any_byte(
    make_server, registry, repo, monkeypatch
):
    namespace, _ = repo.split("/", 1)
    api = await make_server(registry)
    client = api.client(api.pki.admin)
    hub, reader, asked = _gated_hub(api, monkeypatch)
    with collected_logs() as events:
        opened = Deferred.fromCoroutine(
            stream(client, f"{collection(namespace)}?watch=true&resourceVersion=0")
        )
        assert await eventually(lambda: _ready(len(asked) == 1), within=20)
        hub.stop()
        reader.gate.callback(None)
        watch = await opened
        assert watch.code == 429 and watch.headers["retry-after"] == ["1"]
        await watch.ended
        body = json.loads(b"".join(watch.lines.pending))
        assert (body["kind"], body["code"], body["reason"]) == ("Status", 429, "TooManyRequests")
        assert "shutting down" in body["message"]
    assert not [e for e in events if "unhandled error" in e.get("log_format", "")]


@pytest.mark.parametrize("accept", ["application/json", "application/yaml", TABLE])
@pytest_twisted.ensureDeferred
async def test_a_list_s_resource_version_errors_never_wait_on_its_scope_s_watch_read(
    make_server, registry, repo, monkeypatch, accept
):
    """A list too new (504) or Exact at a resourceVersion gone (410), while a watch of its scope waits
    on the scope's first read: answered at once, the read still held, whatever the media type. Only a
    Table's were (9e7f117 left a JSON list's to `list_runs`, after the scope's read: they waited on it
    and became its error, a 503, when it failed; review-watch4 F3)."""
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry)
    client = api.client(api.pki.admin)
    now = int((await client.get(collection(namespace))).json()["metadata"]["resourceVersion"])
    _, reader, asked = _gated_hub(api, monkeypatch)
    watching = Deferred.fromCoroutine(stream(client, f"{collection(namespace)}?watch=true"))
    assert await eventually(lambda: _ready(len(asked) == 1), within=20)
    codes = []
    for query in (f"resourceVersion={now + 1000}", f"resourceVersion={now - 1}&resourceVersionMatch=Exact"):
        answer = Deferred.fromCoroutine(
            client.get(f"{collection(namespace)}?{query}", headers={"Accept": accept})
        )
        assert await eventually(functools.partial(_called, answer), within=20)  # waited on the read
        codes.append((await answer).code)
    assert not reader.gate.called
    assert codes == [504, 410]
    reader.gate.callback(None)
    (await watching).close()


@pytest_twisted.ensureDeferred
async def test_a_watch_that_fails_after_its_head_ends_with_an_error_event(api, repo, monkeypatch):
    namespace, _ = repo.split("/", 1)
    client = api.client(api.pki.admin)

    def broken(self: WatchHub, *args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(WatchHub, "start", broken)
    with collected_logs() as events:
        watch = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion=0")
        assert watch.code == 200
        error = await watch.next()
        await watch.ended
    assert error["type"] == "ERROR"
    assert (error["object"]["kind"], error["object"]["code"]) == ("Status", 500)
    assert error["object"]["reason"] == "InternalError"
    assert watch.lines.pending == []
    assert not [e for e in events if "unhandled error" in e.get("log_format", "")]
    assert [e for e in events if e.get("log_format", "").startswith("error starting a watch")]


async def _ready(condition: bool) -> bool | None:
    return True if condition else None


async def _called(answer: Deferred[Any]) -> bool | None:
    return True if answer.called else None


@pytest_twisted.ensureDeferred
async def test_an_exact_list_is_the_list_at_that_resource_version_or_a_status(make_server, registry, repo):
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(resync_period=0.2))
    client = api.client(api.pki.admin)

    async def exact(rv: str, more: str = "") -> Any:
        return await client.get(
            f"{collection(namespace)}?resourceVersion={rv}&resourceVersionMatch=Exact{more}"
        )

    listed = (await client.get(collection(namespace))).json()
    rv = listed["metadata"]["resourceVersion"]
    same = await exact(rv)
    assert same.code == 200, same.body
    assert same.json()["metadata"]["resourceVersion"] == rv and same.json()["items"] == listed["items"]
    page = await exact(rv, "&limit=1")
    assert page.code == 200 and page.json()["metadata"]["resourceVersion"] == rv
    assert (await exact("000" + rv)).code == 200  # the same number, as kube-apiserver parses it
    # A change this replica numbered: the list at rv is no longer what it can serve.
    watch = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion={rv}")
    images.push_oci_image(registry, repo, "v2", seed="two")
    assert (await watch.next())["type"] == "ADDED"
    watch.close()
    gone = await exact(rv)
    assert gone.code == 410, gone.body
    assert gone.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "The resourceVersion for the provided list is too old.",
        "reason": "Expired",
        "code": 410,
    }
    # Another replica's (or an earlier run's) resourceVersion: never served as if it were ours.
    epoch, sequence = divmod(int(rv), 10**11)
    foreign = (epoch + 1 if epoch < 18_446_743 else epoch - 1) * 10**11 + sequence
    assert (await exact(str(foreign))).code == 410
    # One this replica has not issued yet: what kube-apiserver answers for a revision it has not reached.
    now = (await client.get(collection(namespace))).json()["metadata"]["resourceVersion"]
    future = str(int(now) + 1000)
    ahead = await exact(future)
    assert ahead.code == 504, ahead.body
    assert ahead.json()["reason"] == "Timeout"
    assert ahead.json()["message"] == f"Timeout: Too large resource version: {future}, current: {now}"
    assert ahead.json()["details"]["causes"] == [
        {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
    ]
    assert (ahead.json()["details"]["retryAfterSeconds"], ahead.header("retry-after")) == (1, "1")
    # The current one is served exactly, with what the registry holds now.
    current = await exact(now)
    assert current.code == 200 and current.json()["metadata"]["resourceVersion"] == now
    assert sorted(i["spec"]["tag"] for i in current.json()["items"]) == ["v1", "v2"]


@pytest_twisted.ensureDeferred
async def test_a_list_not_older_than_a_resource_version_not_reached_is_a_timeout(api, repo):
    namespace, _ = repo.split("/", 1)
    client = api.client(api.pki.admin)
    now = (await client.get(collection(namespace))).json()["metadata"]["resourceVersion"]
    future = str(int(now) + 1000)
    # NotOlderThan, said or implied by a resourceVersion without resourceVersionMatch: a list that old
    # cannot be given before this replica reaches it: kube-apiserver answers 504, not an older list.
    for query in (f"resourceVersion={future}&resourceVersionMatch=NotOlderThan", f"resourceVersion={future}"):
        ahead = await client.get(f"{collection(namespace)}?{query}")
        assert ahead.code == 504, (query, ahead.body)
        assert ahead.json()["message"] == f"Timeout: Too large resource version: {future}, current: {now}"
        assert ahead.json()["details"]["causes"] == [
            {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
        ]
        # As storage.NewTooLargeResourceVersionError: client-go's rest client retries it after a second.
        assert ahead.json()["details"]["retryAfterSeconds"] == 1
        assert ahead.header("retry-after") == "1"
    # Reached, older, "0", or another replica's (not comparable, and not older than what this one holds):
    # served as this replica's current list.
    epoch, sequence = divmod(int(now), 10**11)
    foreign = (epoch + 1 if epoch < 18_446_743 else epoch - 1) * 10**11 + sequence + 1000
    for rv in (now, str(int(now) - 1), "0", str(foreign)):
        listed = await client.get(
            f"{collection(namespace)}?resourceVersion={rv}&resourceVersionMatch=NotOlderThan"
        )
        assert listed.code == 200, (rv, listed.body)
        assert listed.json()["metadata"]["resourceVersion"] == now


@pytest_twisted.ensureDeferred
async def test_a_watch_list_not_older_than_a_resource_version_not_reached_is_the_lists_timeout(api, repo):
    """A streaming list (sendInitialEvents=true) is a list: from a resourceVersion this replica has not
    reached it is answered as the list is, 504 before any byte of the stream, as kube-apiserver's cacher
    refuses it ("Too large resource version"). It was served, ending its initial events with a bookmark
    older than the resourceVersion it was asked to be not older than."""
    namespace, _ = repo.split("/", 1)
    client = api.client(api.pki.admin)
    now = (await client.get(collection(namespace))).json()["metadata"]["resourceVersion"]
    future = str(int(now) + 1000)
    query = (
        f"watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
        f"&timeoutSeconds=1&resourceVersion={future}"
    )
    ahead = await client.get(f"{collection(namespace)}?{query}")
    assert ahead.code == 504, ahead.body
    assert ahead.json()["message"] == f"Timeout: Too large resource version: {future}, current: {now}"
    assert ahead.json()["details"]["causes"] == [
        {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
    ]
    assert (ahead.json()["details"]["retryAfterSeconds"], ahead.header("retry-after")) == (1, "1")
    # Reached: served, its initial events ended by a bookmark not older than asked.
    served = await stream(client, f"{collection(namespace)}?{query.replace(future, now)}")
    assert served.code == 200
    end = await served.next()
    assert end["type"] == "BOOKMARK" and int(end["object"]["metadata"]["resourceVersion"]) >= int(now)
    served.close()


async def _indexed(make_server, registry, repo, tmp_path) -> tuple[str, Any, ApiClient]:
    """A server with the repository index on (notifications configured, none sent here) and an hour's
    resync period, once its index is filled, over a namespace holding known:v1: the namespace, the
    index and an admin client."""
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, f"{namespace}/known", "v1")
    token = tmp_path / "token"
    token.write_text("secret\n")
    api = await make_server(
        registry,
        watch=WatchLimits(resync_period=3600),
        registry_events_token_file=str(token),
        registry_index_refresh_period=3600.0,
    )
    index = api.running.index
    assert index is not None

    async def index_ready() -> bool:
        return bool(index.ready)

    assert await eventually(index_ready, within=10)
    client = api.client(api.pki.admin)
    return namespace, index, client


@pytest_twisted.ensureDeferred
async def test_a_repository_a_source_read_that_the_index_lacked_is_in_the_next_list(
    make_server, registry, repo, tmp_path
):
    """Its push notification was lost, so the repository index lacks it; a delete through the API
    has the watched namespace's source read it. A list made then must show its other tags: a watch
    from that list is sent nothing about what the source already holds (found by
    test_watch_convergence, seed 3061)."""
    namespace, _, client = await _indexed(make_server, registry, repo, tmp_path)
    standing = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion=0")
    assert (await standing.next())["object"]["spec"]["tag"] == "v1"
    lost = f"{namespace}/lost"  # pushed without a notification
    images.push_oci_image(registry, lost, "kept", seed="kept")
    images.push_oci_image(registry, lost, "doomed", seed="doomed")
    reply = await client.delete(f"{collection(namespace)}/{encode_name('lost', 'doomed')}")
    assert reply.code == 200
    added = await standing.next()  # the source read the repository after the delete
    assert (added["type"], added["object"]["spec"]["tag"]) == ("ADDED", "kept")
    listing = (await client.get(collection(namespace))).json()
    assert sorted((i["spec"]["repositoryPath"], i["spec"]["tag"]) for i in listing["items"]) == [
        ("known", "v1"),
        ("lost", "kept"),
    ]
    standing.close()


@pytest_twisted.ensureDeferred
async def test_a_deletecollections_reads_do_not_stand_for_a_lists_in_its_record(make_server, registry, repo):
    """A list of an unwatched namespace, then a repository pushed, then a dry-run deletecollection
    that reads it at the list's resourceVersion: the watch from the list must still be sent the new
    repository's tag, which its client was never shown."""
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    client = api.client(api.pki.admin)
    listing = (await client.get(collection(namespace))).json()
    rv = listing["metadata"]["resourceVersion"]
    assert [item["spec"]["tag"] for item in listing["items"]] == ["v1"]
    images.push_oci_image(registry, f"{namespace}/later", "x", seed="later")
    dry = await client.delete(collection(namespace) + "?dryRun=All")
    assert dry.code == 200 and dry.json()["metadata"]["resourceVersion"] == rv  # the same record
    watch = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion={rv}")
    assert watch.code == 200
    try:
        event = await watch.next(within=30)  # a hang guard: the event is the watch's first line
    finally:
        watch.close()
    assert (event["type"], event["object"]["spec"]["repositoryPath"], event["object"]["spec"]["tag"]) == (
        "ADDED",
        "later",
        "x",
    )


@pytest_twisted.ensureDeferred
async def test_a_list_by_name_of_a_repository_the_index_lacks_is_not_followed_by_a_false_deleted(
    make_server, registry, repo, tmp_path
):
    """kubectl wait --for=delete on a namespace nobody watches, for a tag of a repository whose push
    notification was lost: its list by name reads the repository directly, the watch's baseline goes
    through the index, which lacks it. The tag is there: it must not be sent as DELETED (wait would
    report it deleted). The read that confirms it puts the repository into the index, and the tag's
    delete is then sent."""
    namespace, index, client = await _indexed(make_server, registry, repo, tmp_path)
    images.push_oci_image(registry, f"{namespace}/lost", "t", seed="t")  # no notification posted
    name = encode_name("lost", "t")
    selector = f"fieldSelector=metadata.name%3D{name}"
    listing = (await client.get(f"{collection(namespace)}?{selector}")).json()
    assert [item["spec"]["tag"] for item in listing["items"]] == ["t"]
    rv = listing["metadata"]["resourceVersion"]
    watch = await stream(client, f"{collection(namespace)}?{selector}&watch=true&resourceVersion={rv}")
    assert watch.code == 200

    async def indexed() -> bool:
        return f"{namespace}/lost" in index

    # The confirming read added it (before: nothing read it, and the watch began with a DELETED).
    assert await eventually(indexed, within=10), watch.lines.pending
    everything = (await client.get(collection(namespace))).json()
    assert sorted((i["spec"]["repositoryPath"], i["spec"]["tag"]) for i in everything["items"]) == [
        ("known", "v1"),
        ("lost", "t"),
    ]
    assert (await client.delete(f"{collection(namespace)}/{name}")).code == 200
    # Nothing before the DELETED but a repeat of the tag (a list by name's read stands for no other
    # list of its record, so the opening repeats its tag as ADDED).
    told = []
    while (event := await watch.next())["type"] != "DELETED":
        told.append((event["type"], event["object"]["spec"]["tag"]))
    watch.close()
    assert event["object"]["spec"]["tag"] == "t"
    assert set(told) <= {("ADDED", "t")}, told


@pytest_twisted.ensureDeferred
async def test_a_list_that_joined_a_list_by_name_is_sent_the_tag_only_the_list_by_name_read(
    make_server, registry, repo, tmp_path
):
    """Slow-tier seed 48087: a list by name (kubectl wait) of a tag whose push notification was lost
    reads its repository directly; a list of the whole namespace at the same resourceVersion goes
    through the index, which lacks that repository, and does not show the tag. The record of the two
    took the list by name's read for what every list showed, and the whole list's watch never sent the
    tag: its client lacked it for good. It must start with it."""
    namespace, _, client = await _indexed(make_server, registry, repo, tmp_path)
    url = collection(namespace)
    images.push_oci_image(registry, f"{namespace}/lost", "t", seed="t")  # no notification posted
    selector = f"fieldSelector=metadata.name%3D{encode_name('lost', 't')}"
    by_name = (await client.get(f"{url}?{selector}")).json()
    assert [item["spec"]["tag"] for item in by_name["items"]] == ["t"]
    whole = (await client.get(url)).json()
    assert sorted(item["spec"]["tag"] for item in whole["items"]) == ["v1"]  # the index lacks lost
    rv = whole["metadata"]["resourceVersion"]
    assert rv == by_name["metadata"]["resourceVersion"]  # one record: nobody watches the namespace
    watch = await stream(client, f"{url}?watch=true&resourceVersion={rv}&timeoutSeconds=1")
    assert watch.code == 200
    await watch.ended
    events = [json.loads(line) for line in watch.lines.pending]
    added = [(e["type"], e["object"]["spec"]["repositoryPath"], e["object"]["spec"]["tag"]) for e in events]
    assert ("ADDED", "lost", "t") in added, added


@pytest_twisted.ensureDeferred
async def test_a_watch_from_a_list_of_more_repositories_the_index_lacks_than_are_read_is_410_alone(
    make_server, registry, repo, tmp_path, monkeypatch
):
    """Before a watch from a list of a namespace nobody watched starts, the repositories the list
    showed and the baseline lacks are read; past the bound on those reads (1 here) that watch is
    410 Gone, and the namespace's other watch goes on as before."""
    monkeypatch.setattr(watch_hub, "MAX_UNCONFIRMED_READS", 1)
    namespace, _, client = await _indexed(make_server, registry, repo, tmp_path)
    url = collection(namespace)
    versions = []
    for path in ("lost1", "lost2"):
        images.push_oci_image(registry, f"{namespace}/{path}", "t", seed=path)  # no notification posted
        selector = f"fieldSelector=metadata.name%3D{encode_name(path, 't')}"
        listing = (await client.get(f"{url}?{selector}")).json()
        assert [item["spec"]["tag"] for item in listing["items"]] == ["t"]
        versions.append(listing["metadata"]["resourceVersion"])
    assert versions[0] == versions[1]  # one record: both repositories
    other = await stream(client, f"{url}?watch=true")
    first = await other.next()
    assert (first["type"], first["object"]["spec"]["tag"]) == ("ADDED", "v1")
    late = await stream(client, f"{url}?watch=true&resourceVersion={versions[0]}")
    assert late.code == 200
    error = await late.next()
    assert (error["type"], error["object"]["code"], error["object"]["reason"]) == ("ERROR", 410, "Expired")
    await late.ended
    assert (await client.delete(f"{url}/{encode_name('known', 'v1')}")).code == 200
    deleted = await other.next()
    assert (deleted["type"], deleted["object"]["spec"]["tag"]) == ("DELETED", "v1")
    other.close()


@pytest_twisted.ensureDeferred
async def test_a_watch_resumed_inside_an_opening_with_another_selector_gets_410(
    make_server, registry, repo, reactor
):
    """A watch from a list of an unwatched namespace with `metadata.name!=<v4>` starts with ADDED v2
    and v3; a watch of the same user from the first of them without a selector was sent v3 and then
    nothing: `v4` has no resourceVersion anywhere but in an opening that left it out."""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    client = api.client(api.pki.admin)
    listed = (await client.get(collection(namespace))).json()["metadata"]["resourceVersion"]
    for tag in ("v2", "v3", "v4"):
        images.push_oci_image(registry, repo, tag, seed=tag)
    not_v4 = f"fieldSelector=metadata.name%21%3D{encode_name(path, 'v4')}"
    first = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion={listed}&{not_v4}")
    started = [await first.next(), await first.next()]
    assert [(e["type"], e["object"]["spec"]["tag"]) for e in started] == [("ADDED", "v2"), ("ADDED", "v3")]
    first.close()
    cut = started[0]["object"]["metadata"]["resourceVersion"]
    again = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion={cut}")
    error = await _gone(again, reactor)
    assert (error["type"], error["object"]["code"], error["object"]["reason"]) == ("ERROR", 410, "Expired")
    # With its own selector again (as client-go resumes), it is sent the rest of the opening.
    same = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion={cut}&{not_v4}")
    rest = await same.next()
    assert (rest["type"], rest["object"]["spec"]["tag"]) == ("ADDED", "v3")
    same.close()


@pytest_twisted.ensureDeferred
async def test_a_single_object_watch_reads_first_only_a_repository_its_user_may_read(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig
):
    """A watch from "0" pinned to one tag reads its repository first (`kubectl get NAME -w`), and what
    the read finds is numbered: for a repository alice may not read, that would tell her, through the
    resourceVersion everyone is answered, that tags changed there. So it is not read for her.

    What the resourceVersion moves by counts what the reads numbered only while nothing else takes
    numbers: no resync (an hour's period), and no access check, whose round takes a number of its own
    once it sees an RBAC change (her grant, whenever its reflector delivers it): a round between the
    two lists of a measure made it 4 for the 3 tags."""
    namespace, _ = repo.split("/", 1)
    for r in (f"{namespace}/app", f"{namespace}/secret"):
        images.push_oci_image(registry, r, "v1", seed=r)
    api = await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="RBAC",
        watch=WatchLimits(resync_period=3600, access_check_interval=3600),
    )
    grant(kube_api, namespace, "alice", ["get", "list", "watch"], ["app"], "alice-read")
    alice = api.client(pki.client_ca.client("alice"))
    assert await eventually(lambda: _showing(alice, namespace, ["app"]), within=20)
    standing = await stream(api.client(api.pki.admin), f"{collection(namespace)}?watch=1&resourceVersion=0")
    assert standing.code == 200
    hub = api.running.api.watch_hub
    assert await eventually(lambda: _ready(len(hub.watchers) == 1), within=15)

    async def moved_by_a_pinned_watch(path: str) -> int:
        before = int((await alice.get(collection(namespace))).json()["metadata"]["resourceVersion"])
        name = encode_name(path, "nope")
        watch = await stream(
            alice, f"{collection(namespace)}?watch=1&resourceVersion=0&fieldSelector=metadata.name={name}"
        )
        assert watch.code == 200
        watch.close()
        return int((await alice.get(collection(namespace))).json()["metadata"]["resourceVersion"]) - before

    for t in ("n1", "n2", "n3"):  # straight into the registry: no notification, an hour's resync
        images.push_oci_image(registry, f"{namespace}/secret", t, seed=t)
        images.push_oci_image(registry, f"{namespace}/app", t, seed=t)
    assert await moved_by_a_pinned_watch("secret") == 0
    # Her own repository is read (what the read is for): its three new tags are numbered.
    assert await moved_by_a_pinned_watch("app") == 3
    standing.close()


@pytest_twisted.ensureDeferred
async def test_a_single_object_watch_starts_when_its_first_read_fails(make_server, registry, repo, reactor):
    """The read before a single-object watch from "0" is an improvement, not a condition: with the
    registry answering 500 the watch starts from the snapshot as it is."""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    fault: dict[str, Any] = {"now": None}
    proxy = FaultProxy(reactor, registry.url, lambda m, p: fault["now"] if p.endswith("/tags/list") else None)
    try:
        api = await make_server(proxy.url, watch=WatchLimits(resync_period=3600))
        admin = api.client(api.pki.admin)
        hub = api.running.api.watch_hub
        standing = await stream(admin, f"{collection(namespace)}?watch=1&resourceVersion=0")
        assert await eventually(lambda: _ready(len(hub.watchers) == 1), within=15)
        fault["now"] = ERROR_BEFORE
        name = encode_name(path, "v1")
        watch = await stream(
            admin, f"{collection(namespace)}?watch=1&resourceVersion=0&fieldSelector=metadata.name={name}"
        )
        assert watch.code == 200
        first = await watch.next()
        assert (first["type"], first["object"]["spec"]["tag"]) == ("ADDED", "v1")
        watch.close()
        standing.close()
    finally:
        await proxy.stop()


def _a_list_of_the_api(kwargs: dict[str, Any]) -> bool:
    # A client's list decides access per repository (`readable`); a watch source's read of its scope
    # (`InventoryReader.scope_tags`, on every resync) does not, and must not take the armed turn.
    return "readable" in kwargs


@attrs.define
class _UndoneWhileRead:
    """Once armed (her rules changed and the access check has seen it), the next registry read of a
    list (`Inventory.list`) is made under the changed rules, which are then changed back (`undo`),
    seen by the access check too, before the read returns: a page decided by rules that no longer
    hold by the time it is read."""

    api: Any
    undo: Callable[[], object]
    armed: bool = False

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from payloadtags.inventory import Inventory

        real = Inventory.list

        async def undone_while_read(inventory: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.armed or not _a_list_of_the_api(kwargs):
                return await real(inventory, *args, **kwargs)
            self.armed = False
            result = await real(inventory, *args, **kwargs)  # decided by the changed rules
            await self._seen(self.undo)
            return result

        monkeypatch.setattr(Inventory, "list", undone_while_read)

    async def arm(self, change: Callable[[], object]) -> None:
        await self._seen(change)
        self.armed = True

    async def _seen(self, edit: Callable[[], object]) -> None:
        generation = self.api.running.api.watch_hub.access_generation()
        edit()
        assert await eventually(lambda: _checked(self.api, generation), within=20)


@pytest.mark.parametrize("page", ["continued", "all-first", "all-continued"])
@pytest.mark.parametrize("between", ["revoked", "granted"])
@pytest_twisted.ensureDeferred
async def test_her_rules_changed_before_a_page_and_back_during_its_read_is_410(
    page, between, monkeypatch, make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """Her rules change (and the access check sees it) before a page of her list arrives, decide that
    page, and are changed back while it reads: compared only once the page was read, they equalled
    those noted, and the watch from the list was served from a view the other rules decided. An
    all-namespaces list's first page compares them as it starts as well, and every page compares the
    rules each of its decisions was made by, recorded as it made them."""
    from urllib.parse import quote

    namespace, _ = repo.split("/", 1)
    api, alice, first, change, undo = await _alice_and_a_change_of_secret(
        between, make_server, registry, kube_api, kube_kubeconfig, pki, namespace
    )
    listed = await eventually(lambda: _showing(alice, namespace, first), within=20)
    url = collection(namespace) if page == "continued" else f"{B}/payloadrepositorytags"
    if page != "continued":
        listed = (await alice.get(url)).json()["metadata"]["resourceVersion"]
    await _noted_by_a_stream(alice, url, listed)

    reads = _UndoneWhileRead(api, undo)
    reads.install(monkeypatch)
    if page == "all-first":
        await reads.arm(change)
    pages = [(await alice.get(f"{url}?limit=1")).json()]
    rv = pages[0]["metadata"]["resourceVersion"]
    if page != "all-first":
        await reads.arm(change)
    while token := pages[-1]["metadata"].get("continue"):
        pages.append((await alice.get(f"{url}?limit=1&continue={quote(token)}")).json())
    assert not reads.armed  # a page was read under the changed rules
    watch = await stream(alice, f"{url}?watch=true&timeoutSeconds=1&resourceVersion={rv}")
    assert watch.code == 200
    line = await watch.next()
    watch.close()
    assert (line["type"], line["object"].get("code")) == ("ERROR", 410), line


@pytest.mark.parametrize("start", ["boundary", "crossing"])
@pytest.mark.parametrize("between", ["revoked", "granted"])
@pytest_twisted.ensureDeferred
async def test_her_rules_changed_where_a_later_all_namespaces_page_goes_on_and_back_during_its_read_is_410(
    start, between, monkeypatch, make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """A later page of her -A list may be decided in namespaces other than the one the page before it
    ended in: the next one, when that page ended on the last repository of a namespace ("boundary"), or
    one it moves into ("crossing": it starts on `b`, not hers, and goes on into the later namespace).
    Her rules there change (and the access check sees it) before the page, decide it, and are changed
    back while it reads: checked before the read only where the page before it ended, and once read
    against the rules then (equal to those noted), the change was missed, and the watch from the list
    was served from a view the other rules decided. Each decision's rules are recorded as it is made
    and compared once the page is read."""
    from urllib.parse import quote

    namespace, _ = repo.split("/", 1)
    later = f"{namespace}z"  # sorts after `namespace/...`
    api, alice = await _alice(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{later}/secret"
    )
    if start == "crossing":  # the second page starts in `namespace` (on `b`) and goes on into `later`
        images.push_oci_image(registry, f"{namespace}/b", "v1", seed=f"{namespace}/b")
    give, take = _secret_grants(kube_api, later)
    first, change, undo = [], give, take
    if between == "revoked":
        give()
        first, change, undo = ["secret"], take, give
    images.push_oci_image(registry, f"{later}/zz", "v1", seed=f"{later}/zz")
    grant(kube_api, later, "alice", ["get"], ["zz"], "alice-read-zz")
    await eventually(lambda: _showing(alice, later, sorted([*first, "zz"])), within=20)
    url = f"{B}/payloadrepositorytags"
    listed = (await alice.get(url)).json()["metadata"]["resourceVersion"]
    await _noted_by_a_stream(alice, url, listed)  # in `namespace` and in `later`

    reads = _UndoneWhileRead(api, undo)
    reads.install(monkeypatch)
    pages = [(await alice.get(f"{url}?limit=1")).json()]
    shown = [(i["metadata"]["namespace"], i["spec"]["repositoryPath"]) for i in pages[0]["items"]]
    assert shown == [(namespace, "app")], shown  # the page ends on the last of hers in `namespace`
    rv = pages[0]["metadata"]["resourceVersion"]
    await reads.arm(change)
    while token := pages[-1]["metadata"].get("continue"):
        pages.append((await alice.get(f"{url}?limit=1&continue={quote(token)}")).json())
    assert not reads.armed  # the second page was read under the changed rules
    shown = [(i["metadata"]["namespace"], i["spec"]["repositoryPath"]) for p in pages for i in p["items"]]
    watch = await stream(
        alice, f"{url}?watch=true&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion={rv}"
    )
    assert watch.code == 200
    line = await watch.next()
    watch.close()
    assert (line["type"], line["object"].get("code")) == ("ERROR", 410), (shown, line)


@pytest.mark.parametrize("scope", ["namespace", "all"])
@pytest.mark.parametrize("between", ["revoked", "granted"])
@pytest_twisted.ensureDeferred
async def test_a_page_spanning_a_change_keeps_the_watch_of_a_later_list_made_wholly_after_it(
    scope, between, monkeypatch, make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """Her rules A are noted; a page of her list L1 (`limit=1`) decides by A; before it ends, `secret`
    is granted (or taken away) for good, the access check sees it, and another client of hers (a
    second informer, a kubectl) reads list L2 in pages, wholly by B, which notes the change dated by
    that check; then an RBAC edit of anyone's (bob's) leaves the check behind, and L1's page ends.
    Compared with the rules noted as it ended, L1's decision by A re-noted the change, dated then:
    after L2's resourceVersion, and the watch from L2, decided wholly by B with nothing changed since,
    was a 410 (docs/watch.md, "Access": a list made after that check, and the watch from it, are
    served). A decision is compared with the rules noted as it is made. The periodic check is slow
    here, and run by the test, so that the order is explicit."""
    from urllib.parse import quote

    from payloadtags.inventory import Inventory

    namespace, _ = repo.split("/", 1)
    for repository in (f"{namespace}/app", f"{namespace}/secret", f"{namespace}/zz"):
        images.push_oci_image(registry, repository, "v1", seed=repository)
    api = await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="RBAC",
        watch=WatchLimits(resync_period=0.2, access_check_interval=3600),
    )
    grant(kube_api, namespace, "alice", ["get"], ["app", "zz"], "alice-read")
    alice = api.client(pki.client_ca.client("alice"))
    hub = api.running.api.watch_hub
    give, take = _secret_grants(kube_api, namespace)
    first, second, change = ["app", "zz"], ["app", "secret", "zz"], give
    if between == "revoked":
        give()
        first, second, change = second, first, take
    listed = await eventually(lambda: _showing(alice, namespace, first), within=20)
    url = collection(namespace) if scope == "namespace" else f"{B}/payloadrepositorytags"
    if scope == "all":
        listed = (await alice.get(url)).json()["metadata"]["resourceVersion"]
    await _noted_by_a_stream(alice, url, listed)  # her rules are noted in the scope (A)

    real = Inventory.list
    armed = False
    later: dict[str, Any] = {}

    async def another_list_while_read(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal armed
        if not armed or not _a_list_of_the_api(kwargs):
            return await real(self, *args, **kwargs)
        armed = False
        result = await real(self, *args, **kwargs)  # L1's page: decided by A
        generation = hub.access_generation()
        change()  # A -> B, for good
        await eventually(lambda: _showing(alice, namespace, second), within=20)  # the server has B
        assert hub.access_generation() > generation
        hub.check_access()  # and its access check saw them
        assert hub.checked_generation == hub.access_generation()
        pages = [(await alice.get(f"{url}?limit=1")).json()]
        while token := pages[-1]["metadata"].get("continue"):
            pages.append((await alice.get(f"{url}?limit=1&continue={quote(token)}")).json())
        later["rv"] = pages[0]["metadata"]["resourceVersion"]
        generation = hub.access_generation()
        grant(kube_api, namespace, "bob", ["get"], ["app"], "bob-read")

        async def edited() -> bool:
            return bool(hub.access_generation() > generation)

        assert await eventually(edited, within=20, step=0.005)
        assert hub.checked_generation < hub.access_generation()
        return result  # L1's page ends now

    monkeypatch.setattr(Inventory, "list", another_list_while_read)
    armed = True
    assert (await alice.get(f"{url}?limit=1")).code == 200
    assert not armed and "rv" in later
    watch = await stream(
        alice, f"{url}?watch=true&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion={later['rv']}"
    )
    assert watch.code == 200
    line = await watch.next()
    watch.close()
    assert line["type"] == "BOOKMARK", line


@pytest.mark.parametrize("pinned_list_between", ["none", "unnoted", "noted"])
@pytest_twisted.ensureDeferred
async def test_leaving_a_group_between_two_all_namespaces_streams_is_410_whatever_she_listed_between(
    pinned_list_between, make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """alice's -A stream with O=devs (`secret` hers through devs) ends on a bookmark. Her certificate
    without devs lists -A pinned by `metadata.namespace` to another namespace ("unnoted": its tags came
    after her stream; "noted": before, but her groups decide nothing there), then re-watches -A from the
    bookmark. That list compared her rules in no namespace her groups matter in, yet took her new groups
    as noted: the re-watch saw `secret` gone as by an RBAC object, dated by an access check made before
    the bookmark, and was served (her client kept `secret` for good). A list with other groups than
    those noted compares every namespace noted for her."""
    namespace, _ = repo.split("/", 1)
    in_devs, not_in_devs = await _alice_in_and_out_of_devs(
        make_server, registry, kube_api, kube_kubeconfig, pki, namespace
    )
    other = f"{namespace}w"
    if pinned_list_between == "noted":
        images.push_oci_image(registry, f"{other}/app", "v1", seed=f"{other}/app")
    await eventually(lambda: _showing(in_devs, namespace, ["app", "secret"]), within=20)
    url = f"{B}/payloadrepositorytags"
    listed = (await in_devs.get(url)).json()["metadata"]["resourceVersion"]
    first = await stream(
        in_devs, f"{url}?watch=true&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion={listed}"
    )
    last = await first.next()
    while last["type"] != "BOOKMARK":
        last = await first.next()
    await first.ended
    bookmark = last["object"]["metadata"]["resourceVersion"]
    if pinned_list_between == "unnoted":
        images.push_oci_image(registry, f"{other}/app", "v1", seed=f"{other}/app")
    if pinned_list_between != "none":
        reply = await not_in_devs.get(f"{url}?fieldSelector=metadata.namespace%3D{other}")
        assert reply.code == 200, reply.body
    again = await stream(
        not_in_devs, f"{url}?watch=true&allowWatchBookmarks=true&timeoutSeconds=2&resourceVersion={bookmark}"
    )
    assert again.code == 200
    line = await again.next()
    again.close()
    assert (line["type"], line["object"].get("code")) == ("ERROR", 410), line


async def _all_showing(client: ApiClient, shown: set[tuple[str, str]]) -> str | None:
    """The resourceVersion of a whole list of all namespaces (no ``limit``) that shows the
    (namespace, repository path) pairs ``shown``."""
    reply = await client.get(f"{B}/payloadrepositorytags")
    if reply.code != 200:
        return None
    body = reply.json()
    items = {(i["metadata"]["namespace"], i["spec"]["repositoryPath"]) for i in body["items"]}
    return str(body["metadata"]["resourceVersion"]) if items == shown else None


async def _none_watching(hub: Any) -> None:
    """Until ``hub`` runs no watch (the ones closed have ended on the server)."""

    async def none_watching() -> bool:
        return not hub.watchers

    assert await eventually(none_watching, within=20)


async def _revoked(api: Any, kube_api: Any, namespace: str) -> None:
    """alice's access in ``namespace`` is taken back (RoleBinding alice-read), and ``api``'s access
    check has run since."""
    generation = api.running.api.watch_hub.access_generation()
    kube_api.store.delete(ROLEBINDINGS, "alice-read", namespace)
    assert await eventually(lambda: _checked(api, generation), within=20)


async def _resumed_after_revocation_is_410(
    api: Any, kube_api: Any, alice: ApiClient, namespace: str, since: str
) -> None:
    """`_revoked` in ``namespace``, then a watch of alice's from ``since`` (where her client holds a
    repository of ``namespace``, which she may no longer see): it is 410, not served."""
    await _revoked(api, kube_api, namespace)
    again = await stream(
        alice,
        f"{B}/payloadrepositorytags?watch=true&allowWatchBookmarks=true&timeoutSeconds=2&resourceVersion={since}",
    )
    assert again.code == 200
    line = await again.next()
    again.close()
    assert (line["type"], line["object"].get("code")) == ("ERROR", 410), line  # was served


@pytest_twisted.ensureDeferred
async def test_a_namespace_that_came_back_in_her_whole_list_and_left_again_is_dated_by_its_second_leaving(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """alice's -A watch sees `x/app` deleted, and the reap notes `x` gone from her scope at that
    sequence; her watch ends. `x/app` is pushed again and a whole -A list of hers (no ``limit``) shows
    it; it is deleted again with no watch of hers running. Her next watch start drops `x` (she is past
    her share), her access in `x` is taken back, and the client of the list watches from it. `x` was
    dated by its first leaving, before the list: that watch was served, its `DELETED` decided by the
    new rules was dropped, and the client kept `x/app` for good. A whole list's decisions bring a
    namespace back into her scope as a page's do; the watch is 410."""
    namespace, _ = repo.split("/", 1)
    x = f"{namespace}x"
    api, alice = await _alice(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{x}/app"
    )
    grant(kube_api, x, "alice", ["get"], ["app"], "alice-read")
    hub = api.running.api.watch_hub
    hub.rules.max_entries, hub.rules.user_share = 100_000, 50_000  # no trim yet
    both = {(namespace, "app"), (x, "app")}
    listed = await eventually(lambda: _all_showing(alice, both), within=20)
    assert listed
    url = f"{B}/payloadrepositorytags"
    first = await stream(alice, f"{url}?watch=true&allowWatchBookmarks=true&resourceVersion={listed}")
    assert first.code == 200

    def deleted() -> None:
        digest = images.resolve(registry, f"{x}/app", "v1")
        assert digest is not None
        assert images.delete_manifest(registry, f"{x}/app", digest) == 202

    def noted() -> Any:
        (entry,) = [n for (_, (name, _)), n in hub.rules.entries.items() if name == "alice"]
        return entry

    deleted()
    line = await first.next()
    while (line["type"], line["object"]["metadata"].get("namespace")) != ("DELETED", x):
        line = await first.next()
    hub.reap()
    assert x in noted().gone
    first.close()
    await _none_watching(hub)
    images.push_oci_image(registry, f"{x}/app", "v1", seed=f"{x}/app")
    came_back = await eventually(lambda: _all_showing(alice, both), within=20)
    assert came_back
    deleted()
    source = hub.sources[None]

    async def left_again() -> bool:
        # The source saw it leave again (its return was the list's, reported to it): the watch
        # started next is sent nothing there (one that decided there would note her rules there).
        events = [event.type.value for event in source.ring if event.ref.namespace == x]
        return events[-1:] == ["DELETED"] and events.count("DELETED") == 2

    assert await eventually(left_again, within=20)
    hub.rules.user_share = len(noted().rules) - 1  # her next watch start trims what left her scope
    second = await stream(alice, f"{url}?watch=true&allowWatchBookmarks=true&resourceVersion=0")
    assert second.code == 200
    await second.next()
    assert x not in noted().rules  # dropped by the trim at its start
    await _resumed_after_revocation_is_410(api, kube_api, alice, x, came_back)
    second.close()


@pytest_twisted.ensureDeferred
async def test_a_namespace_new_to_her_scope_that_her_whole_list_shows_is_noted_by_it(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """alice's -A watch runs and ends: her rules are noted in the namespaces then. `y/app` is pushed
    with no watch of hers running, a whole -A list of hers (no ``limit``) shows it, her access in `y`
    is taken back, and the client of the list watches from it. A list noted no namespace not noted for
    her: that watch's start noted the rules then as the first ones in `y`, and was served; its client
    kept `y/app` for good (report-watch9, new_ns_list_kept.py). The list notes her rules in `y` as it
    decides there: the watch is 410."""
    namespace, _ = repo.split("/", 1)
    y = f"{namespace}y"
    api, alice = await _alice(make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app")
    grant(kube_api, y, "alice", ["get"], ["app"], "alice-read")
    hub = api.running.api.watch_hub
    listed = await eventually(lambda: _all_showing(alice, {(namespace, "app")}), within=20)
    assert listed
    url = f"{B}/payloadrepositorytags"
    first = await stream(alice, f"{url}?watch=true&allowWatchBookmarks=true&resourceVersion={listed}")
    assert first.code == 200  # started: her rules noted
    first.close()
    await _none_watching(hub)
    (noted,) = [n for (_, (name, _)), n in hub.rules.entries.items() if name == "alice"]
    assert y not in noted.rules
    images.push_oci_image(registry, f"{y}/app", "v1", seed=f"{y}/app")
    shown = await eventually(lambda: _all_showing(alice, {(namespace, "app"), (y, "app")}), within=20)
    assert shown
    await _resumed_after_revocation_is_410(api, kube_api, alice, y, shown)


async def _alice_unread(
    make_server: Any, registry: Any, kube_api: Any, kube_kubeconfig: Any, pki: Any, namespace: str
) -> tuple[Any, ApiClient, str]:
    """A server deciding access by RBAC whose sources read the registry only as they start (no
    notification, an hour's resync period), alice, who may see `app` in ``namespace`` and in `y`
    (``namespace`` + "y"), and the resourceVersion of her -A list once one ran and ended a watch of
    hers there (her rules noted): `y/app` is pushed after it, read by her next lists, not by the
    source."""
    images.push_oci_image(registry, f"{namespace}/app", "v1", seed=f"{namespace}/app")
    api = await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="RBAC",
        watch=WatchLimits(resync_period=3600),
    )
    grant(kube_api, namespace, "alice", ["get"], ["app"], "alice-read")
    grant(kube_api, f"{namespace}y", "alice", ["get"], ["app"], "alice-read")
    alice = api.client(pki.client_ca.client("alice"))
    hub = api.running.api.watch_hub
    listed = await eventually(lambda: _all_showing(alice, {(namespace, "app")}), within=20)
    assert listed
    first = await stream(alice, f"{B}/payloadrepositorytags?watch=true&resourceVersion={listed}")
    assert first.code == 200  # started: her rules noted
    first.close()
    await _none_watching(hub)
    return api, alice, listed


@pytest_twisted.ensureDeferred
async def test_a_running_watch_from_a_list_that_showed_a_push_the_source_has_not_read_ends_on_a_revocation(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """alice's -A list shows `y/app`, pushed, which the scope's source has not read, and the watch from
    it runs. Her access in `y` is taken back: the access check compared only the repositories the
    source holds, and the watch ran on; the source's read of `y/app` made an ADDED decided by the new
    rules, not sent, and her client kept `y/app` (review-watch13 F5). It ends with 410."""
    namespace, _ = repo.split("/", 1)
    y = f"{namespace}y"
    api, alice, _ = await _alice_unread(make_server, registry, kube_api, kube_kubeconfig, pki, namespace)
    hub = api.running.api.watch_hub
    images.push_oci_image(registry, f"{y}/app", "v1", seed=f"{y}/app")
    shown = await _all_showing(alice, {(namespace, "app"), (y, "app")})
    assert shown
    assert not any(repository.startswith(f"{y}/") for repository in hub.sources[None].tags)
    url = f"{B}/payloadrepositorytags"
    w = await stream(alice, f"{url}?watch=true&timeoutSeconds=30&resourceVersion={shown}")
    assert w.code == 200
    await _revoked(api, kube_api, y)
    line = await w.next()
    w.close()
    assert (line["type"], line["object"].get("code")) == ("ERROR", 410), line  # ran on


@pytest_twisted.ensureDeferred
async def test_past_her_share_the_watch_from_a_list_that_showed_a_push_the_source_has_not_read_keeps_it(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """At her share, alice's -A list shows `y/app`, pushed, which the scope's source has not read, and
    the watch from it starts at once (an informer's) and ends on its timeout after a last bookmark.
    The watch start's trim dropped `y`, dated at the list's resourceVersion: her access in `y` taken
    back, the re-watch from the bookmark was served, and her client kept `y/app` (review-watch13 F2).
    It is 410."""
    namespace, _ = repo.split("/", 1)
    y = f"{namespace}y"
    api, alice, _ = await _alice_unread(make_server, registry, kube_api, kube_kubeconfig, pki, namespace)
    hub = api.running.api.watch_hub
    (noted,) = [n for (_, (name, _)), n in hub.rules.entries.items() if name == "alice"]
    hub.rules.user_share = len(noted.rules)
    images.push_oci_image(registry, f"{y}/app", "v1", seed=f"{y}/app")
    shown = await _all_showing(alice, {(namespace, "app"), (y, "app")})
    assert shown
    url = f"{B}/payloadrepositorytags?watch=true&allowWatchBookmarks=true"
    w = await stream(alice, f"{url}&timeoutSeconds=1&resourceVersion={shown}")
    assert w.code == 200
    await w.ended
    last = shown
    while w.lines.pending:
        line = json.loads(w.lines.pending.pop(0) or b"{}")
        last = line.get("object", {}).get("metadata", {}).get("resourceVersion") or last
    assert not any(repository.startswith(f"{y}/") for repository in hub.sources[None].tags)
    await _resumed_after_revocation_is_410(api, kube_api, alice, y, last)
