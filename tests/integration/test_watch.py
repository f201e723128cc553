"""Watches over HTTPS against the real registry: list then watch, events, options, 410, limits."""

from __future__ import annotations

import collections
import functools
import json
from typing import Any

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
from payloadtags.watch.watcher import _WRITE_BYTES
from tests.integration.test_output_bounds import many_tags
from tests.support import images
from tests.support.client import ApiClient, stream
from tests.support.faultproxy import ERROR_BEFORE, STALL, FaultProxy
from tests.support.logcapture import collected_logs
from tests.support.rbac import eventually
from tests.support.watch_http import (
    B,
    collection,
    gated_hub,
    gone,
    ready,
)

TABLE = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
    "application/json"
)


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
    hub, reader, asked = gated_hub(api, monkeypatch)
    with collected_logs() as events:
        opened = Deferred.fromCoroutine(
            stream(client, f"{collection(namespace)}?watch=true&resourceVersion=0")
        )
        assert await eventually(lambda: ready(len(asked) == 1), within=20)
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
    _, reader, asked = gated_hub(api, monkeypatch)
    watching = Deferred.fromCoroutine(stream(client, f"{collection(namespace)}?watch=true"))
    assert await eventually(lambda: ready(len(asked) == 1), within=20)
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
    too_old = await exact(rv)
    assert too_old.code == 410, too_old.body
    assert too_old.json() == {
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
    error = await gone(again, reactor)
    assert (error["type"], error["object"]["code"], error["object"]["reason"]) == ("ERROR", 410, "Expired")
    # With its own selector again (as client-go resumes), it is sent the rest of the opening.
    same = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion={cut}&{not_v4}")
    rest = await same.next()
    assert (rest["type"], rest["object"]["spec"]["tag"]) == ("ADDED", "v3")
    same.close()


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
        assert await eventually(lambda: ready(len(hub.watchers) == 1), within=15)
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
