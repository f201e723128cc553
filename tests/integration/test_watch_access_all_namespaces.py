"""Watches of all namespaces deciding access by RBAC: namespaces that come into or leave her scope
between streams and lists, and pushes her lists showed that the watch source has not read."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from payloadtags.limits import WatchLimits
from tests.support import images
from tests.support.client import ApiClient, stream
from tests.support.kubeapi.resources import ROLEBINDINGS
from tests.support.rbac import eventually, grant
from tests.support.watch_http import (
    B,
    alice_by_rbac,
    alice_in_and_out_of_devs,
    checked,
    showing,
)


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
    in_devs, not_in_devs = await alice_in_and_out_of_devs(
        make_server, registry, kube_api, kube_kubeconfig, pki, namespace
    )
    other = f"{namespace}w"
    if pinned_list_between == "noted":
        images.push_oci_image(registry, f"{other}/app", "v1", seed=f"{other}/app")
    await eventually(lambda: showing(in_devs, namespace, ["app", "secret"]), within=20)
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
    assert await eventually(lambda: checked(api, generation), within=20)


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
    api, alice = await alice_by_rbac(
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
    api, alice = await alice_by_rbac(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app"
    )
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
