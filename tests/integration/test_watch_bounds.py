"""Watches and lists against their bounds over HTTPS: watches per user and scopes kept (429 before
any byte), list records of made-up namespaces and names."""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet.defer import Deferred

from payloadtags.limits import WatchLimits
from payloadtags.names import encode_name
from payloadtags.watch.listed import RECORD_COST, REPOSITORY_COST, USER_COST
from tests.support import images
from tests.support.client import stream
from tests.support.logcapture import collected_logs
from tests.support.looked_at import LookedAt
from tests.support.rbac import eventually
from tests.support.watch_http import (
    collection,
    gated_hub,
    ready,
)


@pytest_twisted.ensureDeferred
async def test_watches_past_the_limit_that_waited_on_a_read_get_429_before_any_byte(
    make_server, registry, repo, monkeypatch
):
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(max_watches_per_user=1))
    client = api.client(api.pki.admin)
    _, reader, asked = gated_hub(api, monkeypatch)
    with collected_logs() as events:
        opened = [
            Deferred.fromCoroutine(stream(client, f"{collection(namespace)}?watch=true")) for _ in range(2)
        ]
        # Both arrived while nobody watched yet: the first waits on the scope's first read.
        assert await eventually(lambda: ready(len(asked) == 2), within=20)
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
    hub, reader, _ = gated_hub(api, monkeypatch)
    with collected_logs() as events:
        first = Deferred.fromCoroutine(stream(client, f"{collection(namespace)}?watch=true"))
        assert await eventually(lambda: ready(namespace in hub.sources), within=20)
        listed = Deferred.fromCoroutine(client.get(collection(namespace)))
        assert await eventually(lambda: ready(hub._holds[namespace] == 2), within=20)
        first.cancel()  # its client went away; the list still waits on the scope's read
        first.addErrback(lambda _: None)
        assert await eventually(lambda: ready(hub._holds[namespace] == 1 and not hub._reserved), within=20)
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
    await eventually(lambda: ready(not hub.watchers), within=20)
    _, reader, _ = gated_hub(api, monkeypatch)
    other = Deferred.fromCoroutine(stream(client, f"{collection(namespace + '-other')}?watch=true"))
    assert await eventually(lambda: ready(namespace not in hub.sources), within=20)
    assert images.delete_manifest(registry, repo, digest) == 202
    listing = (await client.get(collection(namespace))).json()
    assert listing["items"] == []
    reader.gate.callback(None)
    (await other).close()
    await eventually(lambda: ready(not hub.watchers), within=20)
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
        await eventually(lambda: ready(not hub.watchers), within=20)
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
