"""A list over HTTPS keeps what the watch from it needs, and that watch keeps its list's record while it
waits for its scope's read (wc84319): the hub's expiries are run (`ListedScopes.expire`,
`WatchHub._drop_idle`, as if their idle time were over) at the moments a slow list or read gives them,
and the watch from the list is served, not 410."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest_twisted
from twisted.internet.defer import Deferred

from payloadtags.api.tags import TagsService
from payloadtags.limits import WatchLimits
from payloadtags.watch import WatchHub
from tests.support import images
from tests.support.client import stream
from tests.support.rbac import eventually
from tests.support.watch_http import collection, gated_hub, ready


def expire_all(hub: WatchHub) -> None:
    """Every reap's work, as if everything's idle time were over: what is still kept, something holds."""
    hub.listed.expire(math.inf)
    hub._drop_idle(math.inf)


def kept(hub: WatchHub) -> tuple[list[str | None], list[object]]:
    return list(hub.sources), list(hub.listed.records)


def nothing_kept(hub: WatchHub) -> bool:
    """After every reap's work, no source and no record is left: nothing holds one."""
    expire_all(hub)
    return not hub.sources and not hub.listed.records


def reaped_as_pages_read(hub: WatchHub, monkeypatch) -> None:
    """Each page of a list, as it starts reading (having found where it reports), finds every idle time
    over: a list slower than the idle times."""
    observer = WatchHub.observer

    def reaped(self: WatchHub, *args, **kwargs) -> Callable[[str, Sequence[str]], None] | None:
        observe = observer(self, *args, **kwargs)
        expire_all(self)
        return observe

    monkeypatch.setattr(WatchHub, "observer", reaped)


@pytest_twisted.ensureDeferred
async def test_a_watch_from_a_list_is_served_when_its_record_s_idle_time_ends_during_its_scope_s_read(
    make_server, registry, repo, monkeypatch
):
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    client = api.client(api.pki.admin)
    rv = (await client.get(collection(namespace))).json()["metadata"]["resourceVersion"]
    hub, reader, asked = gated_hub(api, monkeypatch)
    images.push_oci_image(registry, repo, "v2", seed="two")
    opened = Deferred.fromCoroutine(
        stream(client, f"{collection(namespace)}?watch=true&resourceVersion={rv}")
    )
    assert await eventually(lambda: ready(len(asked) == 1), within=20)  # it waits for the scope's read
    expire_all(hub)
    reader.gate.callback(None)
    watch = await opened
    assert watch.code == 200
    added = await watch.next()
    assert (added["type"], added["object"].get("spec", {}).get("tag")) == ("ADDED", "v2"), added
    watch.close()
    assert not any(hub.listed.held(record) for record in hub.listed.records.values())


@pytest_twisted.ensureDeferred
async def test_a_watch_from_a_list_slower_than_the_idle_times_is_served(
    make_server, registry, repo, monkeypatch
):
    """Of a scope nobody watches (the list's record), and of one whose source is kept idle (the source
    the list was made on): each page of the list keeps them while it runs."""
    namespace, _ = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    client = api.client(api.pki.admin)
    hub: WatchHub = api.running.api.watch_hub
    reaped_as_pages_read(hub, monkeypatch)
    rv = (await client.get(collection(namespace) + "?limit=1")).json()["metadata"]["resourceVersion"]
    images.push_oci_image(registry, repo, "v2", seed="two")
    watch = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion={rv}")
    assert watch.code == 200
    added = await watch.next()
    assert (added["type"], added["object"].get("spec", {}).get("tag")) == ("ADDED", "v2"), added
    watch.close()
    await watch.ended
    # The scope's source is kept idle now: a list made on it, then the watch from it.
    listing = (await client.get(collection(namespace) + "?limit=1")).json()
    assert hub.sources.get(namespace) is not None and listing["metadata"].get("continue")
    rv = listing["metadata"]["resourceVersion"]
    token = listing["metadata"]["continue"]
    assert (await client.get(collection(namespace) + f"?limit=1&continue={token}")).code == 200
    source = hub.sources.get(namespace)
    watch = await stream(client, f"{collection(namespace)}?watch=true&resourceVersion={rv}")
    assert watch.code == 200 and hub.sources.get(namespace) is source
    images.push_oci_image(registry, repo, "v3", seed="three")
    assert source is not None
    await source.fresh()
    added = await watch.next()
    assert (added["type"], added["object"].get("spec", {}).get("tag")) == ("ADDED", "v3"), added
    watch.close()


TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


@pytest_twisted.ensureDeferred
async def test_every_list_and_watch_lets_go_of_what_it_held_however_it_ends(
    make_server, registry, repo, monkeypatch
):
    """A page holds its scope's source and records from its start to its end (`list_began`,
    `list_ended`), a watch its list's record while it waits (`hold_listed`): pages answered, refused,
    failed, cancelled by their deadline or by their client, watches whose clients go while they wait,
    of a scope with no source and of one with a source. Then every idle time ends, and nothing is
    kept: a hold never given back would keep its source reread and its records for good (review
    r2listkeep F1)."""
    namespace, _ = repo.split("/", 1)
    for tag in ("v1", "v2"):
        images.push_oci_image(registry, repo, tag, seed=tag)
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    client = api.client(api.pki.admin)
    hub: WatchHub = api.running.api.watch_hub
    url = collection(namespace)
    read = TagsService.list_runs
    reading: list[None] = []

    async def failing(self: TagsService, *args, **kwargs):
        raise RuntimeError("the read failed")

    async def endless(self: TagsService, *args, **kwargs):
        reading.append(None)
        await Deferred()

    for watched in (False, True):
        if watched:  # the scope's source, made by a watch and kept idle
            watch = await stream(client, f"{url}?watch=true")
            assert watch.code == 200
            await watch.next()
            watch.close()
            await watch.ended
            assert namespace in hub.sources
        first = (await client.get(url + "?limit=1")).json()
        token = first["metadata"]["continue"]
        assert (await client.get(url + f"?limit=1&continue={token}")).code == 200
        assert (await client.get(url)).code == 200
        assert (await client.get(url + "?limit=1", headers={"Accept": TABLE})).code == 200
        assert (await client.get(url + "?fieldSelector=metadata.name=app.v1")).code == 200
        assert (await client.get(url + "?limit=1&continue=garbage")).code == 400
        hub.versions.next()
        old = first["metadata"]["resourceVersion"]
        assert (await client.get(url + f"?resourceVersion={old}&resourceVersionMatch=Exact")).code == 410

        monkeypatch.setattr(TagsService, "list_runs", failing)
        assert (await client.get(url + "?limit=1")).code == 500
        assert (await client.get(url)).code == 500

        reading.clear()
        monkeypatch.setattr(TagsService, "list_runs", endless)
        assert (await client.get(url + "?limit=1&timeout=1s")).code == 504
        gone = [Deferred.fromCoroutine(client.get(url + query)) for query in ("?limit=1", "")]
        assert await eventually(lambda: ready(len(reading) == 3), within=20)  # the 504's, and these
        for reply in gone:
            reply.addErrback(lambda _: None)
            reply.cancel()
        monkeypatch.setattr(TagsService, "list_runs", read)
        assert await eventually(lambda: ready(nothing_kept(hub)), within=20), kept(hub)
    # Watches from a list's record, waiting for their scope's read, whose clients go.
    rv = (await client.get(url + "?limit=1")).json()["metadata"]["resourceVersion"]
    hub, reader, asked = gated_hub(api, monkeypatch)
    waiting = [
        Deferred.fromCoroutine(stream(client, f"{url}?watch=true&resourceVersion={rv}")) for _ in range(3)
    ]
    assert await eventually(lambda: ready(len(asked) == 3), within=20)
    for opened in waiting:
        opened.addErrback(lambda _: None)
        opened.cancel()
    assert await eventually(lambda: ready(nothing_kept(hub)), within=20), kept(hub)
    reader.gate.callback(None)


@pytest_twisted.ensureDeferred
async def test_lists_of_namespaces_without_a_source_leave_nothing_behind(make_server, registry, repo):
    """A page holds its scope whether it has a source or not; its end notes an idle time only for a
    scope with one: nothing drops the others, and every namespace name a client listed would stay in
    the hub for good (review r2listkeep F2)."""
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    client = api.client(api.pki.admin)
    hub: WatchHub = api.running.api.watch_hub
    for name in ("made-up-1", "made-up-2", "made-up-3"):
        assert (await client.get(collection(name))).code == 200
        assert (await client.get(collection(name) + "?limit=1")).code == 200
    assert not hub.sources
    assert not hub._touched, list(hub._touched)
