"""A list over HTTPS keeps what the watch from it needs, and that watch keeps its list's record while it
waits for its scope's read (wc84319): the hub's expiries are run (`ListedScopes.expire`,
`WatchHub._drop_idle`, as if their idle time were over) at the moments a slow list or read gives them,
and the watch from the list is served, not 410."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest_twisted
from twisted.internet.defer import Deferred

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
