"""Namespace cleanup against the real registry and the Kubernetes API test double.

"Two server processes" are two `CleanupController`s in this test process, each with its own
`KubeClient` and `RegistryClient` (so their connections, watches and Lease writes are as separate
as two processes' would be). In-process replicas let a test stop one cleanly (Lease released) or
"crash" it (Lease left to expire) at an exact moment, and keep the whole file fast and
deterministic; the Lease protocol between them goes over real HTTPS to the double all the same.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent

from payloadtags.cleanup import Aborted, Cascade, CascadeResult, Unconfirmed, namespace_state
from payloadtags.cleanup.cascade import Walk
from payloadtags.cleanup.removal import namespace_remover
from payloadtags.cleanup.sweep import ABSENT, EXISTS, TERMINATING, UNKNOWN, Sweep, require_gone
from payloadtags.registry import RegistryClient, RegistrySettings, WriteHooks
from payloadtags.registry.errors import RegistryUnavailable
from tests.support import images
from tests.support.cleanup_fixtures import *  # noqa: F403
from tests.support.cleanup_fixtures import RegistryProxy, unique_namespace
from tests.support.kubeapi import KubeApiDouble, eventually
from tests.support.kubeapi.resources import LEASES, NAMESPACES
from tests.support.logcapture import collected_logs
from tests.support.registry_server import REGISTRY_BINARY, RegistryServer, need_registry
from tests.support.write_hooks import run_hooks


def create_namespace(api: KubeApiDouble, name: str) -> None:
    api.store.create(NAMESPACES, {"metadata": {"name": name}})


def fill(registry: Any, namespace: str, repositories: int = 2, tags: int = 2) -> dict[str, list[str]]:
    """Push `repositories` repositories (one nested) of `tags` tags each; two tags share a digest."""
    made: dict[str, list[str]] = {}
    for r in range(repositories):
        repository = f"{namespace}/app{r}" if r % 2 == 0 else f"{namespace}/group/app{r}"
        images.push_oci_image(registry, repository, "t0", seed=f"{namespace}-{r}")
        for t in range(1, tags):
            images.tag_manifest(registry, repository, "t0", f"t{t}")
        made[repository] = sorted(f"t{t}" for t in range(tags))
    return made


def content(registry: Any, namespace: str) -> dict[str, list[str]]:
    """Tags per repository under `<namespace>/`, repositories with no tag left out."""
    found = {}
    for repository in images.catalog(registry):
        if repository.startswith(namespace + "/"):
            tags = images.list_tags(registry, repository)
            if tags:
                found[repository] = tags
    return found


async def leader_of(*replicas: Any, within: float = 5.0) -> Any:
    await eventually(lambda: sum(r.controller.is_leader for r in replicas) == 1, within=within)
    [leader] = [r for r in replicas if r.controller.is_leader]
    await eventually(lambda: leader.controller.synced, within=within)
    return leader


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds)


def corrupt_tag_link(registry: RegistryServer, repository: str, tag: str) -> None:
    """Garbage in the tag's link file: the registry answers 500 for that tag, every time."""
    link = Path(registry.root, "docker/registry/v2/repositories", repository, "_manifests/tags", tag)
    (link / "current" / "link").write_text("garbage")


def log_lines(events: list[dict[str, Any]], level: LogLevel | None = None) -> list[str]:
    return [
        formatEvent(event)
        for event in events
        if event.get("log_namespace", "").startswith("payloadtags")
        and (level is None or event.get("log_level") == level)
    ]


# -- the cascade on namespace deletion ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_deleting_a_namespace_removes_its_content_and_only_its_content(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    team = unique_namespace("team")
    sibling, other = f"{team}-a", unique_namespace("other")
    for name in (team, sibling, other):
        create_namespace(kube_api, name)
    fill(fresh_registry, team, repositories=3, tags=3)
    images.push_oci_index(fresh_registry, f"{team}/multi", "v1", architectures=("amd64", "arm64"))
    kept = {**fill(fresh_registry, sibling), **fill(fresh_registry, other)}
    images.push_oci_image(fresh_registry, team, "root")  # no path below the namespace: not its content

    replica = make_controller(fresh_registry.url)
    await leader_of(replica)
    kube_api.store.delete(NAMESPACES, team)  # Terminating, as after `kubectl delete namespace`

    await eventually(lambda: not replica.controller.busy and replica.controller.results, within=10)
    assert content(fresh_registry, team) == {}
    assert {**content(fresh_registry, sibling), **content(fresh_registry, other)} == kept
    assert images.list_tags(fresh_registry, team) == ["root"]
    [result] = replica.controller.results
    assert result.namespace == team
    assert result.tags_deleted == 3 * 3 + 1 and result.errors == 0
    metrics = replica.controller.metrics
    assert metrics.cascades_succeeded_total == 1 and metrics.tags_deleted_total == 10

    # The namespace controller finishes: the DELETED event triggers one more (verifying) cascade.
    kube_api.finalize_namespace(team)
    await eventually(lambda: len(replica.controller.results) == 2 and not replica.controller.busy)
    assert replica.controller.results[-1].tags_deleted == 0
    assert {**content(fresh_registry, sibling), **content(fresh_registry, other)} == kept


def readable_by_digest(
    registry: RegistryServer, repository: str, *, manifests: Sequence[str] = (), blobs: Sequence[str] = ()
) -> list[str]:
    """The manifests and blobs `repository` still serves by digest."""
    session = images.Session(registry.url)
    return [d for d in manifests if images.get_manifest(session, repository, d) is not None] + [
        d for d in blobs if images.blob(session, repository, d) is not None
    ]


def image_blobs(registry: RegistryServer, repository: str, digest: str) -> list[str]:
    """An image manifest's config and layer digests."""
    fetched = images.get_manifest(registry, repository, digest)
    assert fetched is not None
    parts = fetched.json()
    return [parts["config"]["digest"], *(layer["digest"] for layer in parts["layers"])]


def children_of(registry: RegistryServer, repository: str, index: str) -> list[str]:
    """The digests an index (a manifest list) names."""
    fetched = images.get_manifest(registry, repository, index)
    assert fetched is not None
    return [entry["digest"] for entry in fetched.json()["manifests"]]


def push_index_of(registry: RegistryServer, repository: str, tag: str | None, children: Sequence[str]) -> str:
    """An OCI index over manifests already in ``repository`` (images or indexes), each entry with its
    own media type: how a nested index is made."""
    entries = []
    for child in children:
        fetched = images.get_manifest(registry, repository, child)
        assert fetched is not None
        entries.append({"mediaType": fetched.media_type, "digest": child, "size": len(fetched.content)})
    body = images.canonical({"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": entries})
    return images.push_manifest(registry, repository, tag or images.sha256(body), body, images.OCI_INDEX)


async def cascade_once(registry: RegistryServer, namespace: str, **run: Any) -> CascadeResult:
    """One `Cascade.run` of ``namespace`` with a client of its own."""
    client = RegistryClient(reactor, RegistrySettings(url=registry.url, timeout=5.0))
    try:
        return await Cascade(client, reactor).run(namespace, **run)
    finally:
        await client.close()


async def garbage_collect(registry: RegistryServer, config: Path) -> None:
    """The registry's own `garbage-collect` (no --delete-untagged: on 2.8 that mode also deletes the
    children of indexes still tagged), run on ``registry``'s root, which must be stopped."""
    await deferToThread(config.write_text, json.dumps(registry.config()))  # JSON is YAML
    command = [REGISTRY_BINARY, "garbage-collect", str(config)]
    await deferToThread(subprocess.run, command, check=True, capture_output=True)


@pytest_twisted.ensureDeferred
async def test_the_cascade_deletes_tags_their_manifests_and_an_index_s_children_and_gc_frees_the_rest(
    tmp_path: Path,
) -> None:
    """docs/namespace-cleanup.md, first paragraphs: the tags, the manifests they name and an index's
    (a manifest list's) child manifests go, in the namespace's repositories only: the same children
    pushed under another namespace, its index tagged, keep pulling. Manifests pushed by digest alone
    and the repository's links to blobs stay; the registry's plain `garbage-collect` (safe for
    multi-arch images, unlike 2.8's --delete-untagged) then frees the deleted images' blobs."""
    need_registry()
    ns, other = unique_namespace("gc"), unique_namespace("kept")
    repository, listed, shared = f"{ns}/app", f"{ns}/docker", f"{ns}/shared"
    registry = RegistryServer(root=tmp_path / "data")
    try:
        arches = ("amd64", "arm64")
        children = [
            images.push_oci_image(registry, repository, None, seed=f"{ns}:{arch}", architecture=arch)
            for arch in arches
        ]
        index = images.push_oci_index(registry, repository, "multi", architectures=arches, children=children)
        plain = images.push_oci_image(registry, repository, "plain", seed=f"{ns}-plain")
        by_digest = images.push_oci_image(registry, repository, None, seed=f"{ns}-by-digest")
        docker_list = images.push_docker_manifest_list(registry, listed, "v1", seed=f"{ns}-list")
        docker_children = children_of(registry, listed, docker_list)
        # The same index, children and all, in this namespace and in another one.
        common = [
            images.push_oci_image(registry, repo, None, seed=f"{other}:{arch}", architecture=arch)
            for repo in (f"{other}/app", shared)
            for arch in arches
        ]
        assert common[:2] == common[2:]  # the same digests in both repositories
        common = common[:2]
        kept = [images.push_oci_index(registry, f"{other}/app", "v1", architectures=arches, children=common)]
        kept += common
        shared_index = images.push_oci_index(registry, shared, "v1", architectures=arches, children=common)
        assert shared_index == kept[0]
        blobs = [d for child in children for d in image_blobs(registry, repository, child)]
        blobs += image_blobs(registry, repository, plain)

        result = await cascade_once(registry, ns)
        assert result.errors == 0
        # Four tags; their four manifests, and the index's, the list's and the shared index's children.
        assert (result.tags_deleted, result.manifests_deleted) == (4, 4 + 2 + 2 + 2)
        assert content(registry, ns) == {}
        deleted = [index, plain, *children]
        assert readable_by_digest(registry, repository, manifests=deleted) == []
        assert readable_by_digest(registry, listed, manifests=[docker_list, *docker_children]) == []
        assert readable_by_digest(registry, shared, manifests=[shared_index, *common]) == []
        # The other namespace's copy pulls whole.
        assert readable_by_digest(registry, f"{other}/app", manifests=kept) == kept
        # Stays (plain GC keeps it too): the manifest pushed by digest alone (no tag finds it); and the
        # blob links, until GC frees the blobs.
        assert readable_by_digest(registry, repository, manifests=[by_digest]) == [by_digest]
        assert readable_by_digest(registry, repository, blobs=blobs) == blobs
    finally:
        registry.stop()
    await garbage_collect(registry, tmp_path / "config.yml")
    with RegistryServer(root=tmp_path / "data") as collected:
        # The deleted images' blobs are freed: no longer served under the deleted namespace's path.
        assert readable_by_digest(collected, repository, manifests=deleted, blobs=blobs) == []
        # Plain GC keeps untagged manifests, and so the one pushed by digest alone.
        assert readable_by_digest(collected, repository, manifests=[by_digest]) == [by_digest]
        assert readable_by_digest(collected, f"{other}/app", manifests=kept) == kept


@pytest_twisted.ensureDeferred
async def test_after_gc_a_layer_another_image_uses_is_still_served_under_the_deleted_namespace(
    tmp_path: Path,
) -> None:
    """docs/registry.md, "Garbage collection" (review r2child L2): distribution's garbage collection
    never removes a repository's links to blobs, so an image's layers and config that the same image
    under another namespace still uses stay readable by digest under the deleted namespace's path."""
    need_registry()
    ns, other = unique_namespace("gcshared"), unique_namespace("gckept")
    registry = RegistryServer(root=tmp_path / "data")
    try:
        shared = images.push_oci_image(registry, f"{ns}/app", "v1", seed="same-image")
        assert images.push_oci_image(registry, f"{other}/app", "v1", seed="same-image") == shared
        blobs = image_blobs(registry, f"{ns}/app", shared)
        result = await cascade_once(registry, ns)
        assert (result.errors, result.manifests_deleted) == (0, 1)
    finally:
        registry.stop()
    await garbage_collect(registry, tmp_path / "config.yml")
    with RegistryServer(root=tmp_path / "data") as collected:
        assert readable_by_digest(collected, f"{ns}/app", manifests=[shared]) == []
        assert readable_by_digest(collected, f"{ns}/app", blobs=blobs) == blobs


@pytest_twisted.ensureDeferred
async def test_the_children_of_a_nested_index_go_with_it(fresh_registry: RegistryServer) -> None:
    ns = unique_namespace("nested")
    repository = f"{ns}/app"
    inner = images.push_oci_index(fresh_registry, repository, None, seed=f"{ns}-inner")
    grandchildren = children_of(fresh_registry, repository, inner)
    sibling = images.push_oci_image(fresh_registry, repository, None, seed=f"{ns}-sibling")
    outer = push_index_of(fresh_registry, repository, "v1", [inner, sibling])

    result = await cascade_once(fresh_registry, ns)
    assert (result.errors, result.tags_deleted, result.manifests_deleted) == (0, 1, 1 + 2 + 2)
    everything = [outer, inner, sibling, *grandchildren]
    assert readable_by_digest(fresh_registry, repository, manifests=everything) == []


@pytest_twisted.ensureDeferred
async def test_a_cascade_stopped_between_an_index_s_children_is_finished_by_the_next_one(
    fresh_registry: RegistryServer,
) -> None:
    """Children first: stopped after the first child's delete, the index is still tagged, and the next
    cascade reads it again, the child gone answering 404 (progress), and deletes the rest."""
    ns = unique_namespace("halfway")
    repository = f"{ns}/app"
    index = images.push_oci_index(fresh_registry, repository, "v1", seed=f"{ns}-index")
    children = children_of(fresh_registry, repository, index)
    confirmed = 0

    async def second_delete_stops() -> None:
        nonlocal confirmed
        confirmed += 1
        if confirmed == 2:
            raise Aborted("stopped between the children")

    with pytest.raises(Aborted):
        await cascade_once(fresh_registry, ns, confirm=second_delete_stops)
    second = children[1]
    assert readable_by_digest(fresh_registry, repository, manifests=[index, *children]) == [index, second]
    assert content(fresh_registry, ns) == {repository: ["v1"]}

    result = await cascade_once(fresh_registry, ns)
    assert (result.errors, result.tags_deleted, result.manifests_deleted) == (0, 1, 2)
    assert readable_by_digest(fresh_registry, repository, manifests=[index, *children]) == []
    assert content(fresh_registry, ns) == {}


@pytest_twisted.ensureDeferred
async def test_an_index_the_client_refuses_to_read_is_deleted_unread_with_a_warning(
    fresh_registry: RegistryServer,
) -> None:
    """An index distribution accepts and serves but the client refuses to read (here JSON nested
    deeper than it parses, in a field distribution ignores: a RegistryProtocolError, which never
    passes) does not hold the namespace's cleanup for ever: it is deleted unread, in the first pass,
    and a warning names it and says its children stay (review r2child F1)."""
    ns = unique_namespace("hostile")
    repository = f"{ns}/app"
    child = images.push_oci_image(fresh_registry, repository, None, seed=f"{ns}-child")
    fetched = images.get_manifest(fresh_registry, repository, child)
    assert fetched is not None
    nested: Any = "x"
    for _ in range(150):
        nested = [nested]
    entries = [{"mediaType": images.OCI_MANIFEST, "digest": child, "size": len(fetched.content)}]
    body = images.canonical(
        {"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": entries, "x": nested}
    )
    index = images.push_manifest(fresh_registry, repository, "v1", body, images.OCI_INDEX)
    failed_passes = 0

    async def wait(delay: float) -> None:
        nonlocal failed_passes
        failed_passes += 1
        if failed_passes >= 3:
            raise Aborted(f"{failed_passes} failed passes")

    with collected_logs() as events:
        result = await cascade_once(fresh_registry, ns, wait=wait)
    assert (result.errors, result.passes, result.tags_deleted, result.manifests_deleted) == (0, 2, 1, 1)
    assert readable_by_digest(fresh_registry, repository, manifests=[index]) == []
    # Unread, so its child stays, as the warning says.
    assert readable_by_digest(fresh_registry, repository, manifests=[child]) == [child]
    [warning] = [line for line in log_lines(events, LogLevel.warn) if index in line]
    assert f"{repository}@{index}" in warning and "nested more than" in warning
    assert "child manifests stay" in warning


@pytest_twisted.ensureDeferred
async def test_a_watch_stream_cut_midway_misses_nothing(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    doomed, kept = unique_namespace("cut"), unique_namespace("kept")
    create_namespace(kube_api, doomed)
    create_namespace(kube_api, kept)
    fill(fresh_registry, doomed)
    kept_content = fill(fresh_registry, kept)
    # Without leader election: see test_a_410_relists_and_still_finds_the_deleted_namespace.
    replica = make_controller(fresh_registry.url, leader_elect=False)
    await leader_of(replica)
    await eventually(lambda: kube_api.open_watches >= 1)
    reflector = replica.controller._reflector
    watches, lists = reflector.watches, reflector.lists
    assert kube_api.cut_watches() >= 1
    # Deleted while the reflector is reconnecting: the resumed watch delivers the event.
    kube_api.store.delete(NAMESPACES, doomed)
    kube_api.finalize_namespace(doomed)
    await eventually(lambda: content(fresh_registry, doomed) == {}, within=10)
    assert reflector.watches > watches
    assert reflector.lists == lists  # resumed from its resourceVersion, no relist
    assert content(fresh_registry, kept) == kept_content


@pytest_twisted.ensureDeferred
async def test_a_410_relists_and_still_finds_the_deleted_namespace(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    doomed, kept = unique_namespace("gone"), unique_namespace("kept")
    create_namespace(kube_api, doomed)
    create_namespace(kube_api, kept)
    fill(fresh_registry, doomed)
    kept_content = fill(fresh_registry, kept)
    # Without leader election, so one reflector sees the whole test. A leader that misses its renew
    # deadline (a starved reactor: it happened at load 18) leads again with a new reflector, whose
    # first list no longer has the namespace and whose start-up sweep removes the content: right,
    # but without the relist this test is about.
    replica = make_controller(fresh_registry.url, leader_elect=False)
    await leader_of(replica)
    await eventually(lambda: kube_api.open_watches >= 1)
    reflector = replica.controller._reflector
    lists = reflector.lists
    kube_api.cut_watches()
    kube_api.store.delete(NAMESPACES, doomed)
    kube_api.finalize_namespace(doomed)
    kube_api.compact()  # the resumed watch now gets 410 Expired: only a relist shows the deletion
    await eventually(lambda: content(fresh_registry, doomed) == {}, within=10)
    assert reflector.lists > lists  # the 410 forced a fresh list
    assert content(fresh_registry, kept) == kept_content


@pytest_twisted.ensureDeferred
async def test_cluster_api_down_for_a_while_then_back(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    terminating, gone, kept = unique_namespace("term"), unique_namespace("gone"), unique_namespace("kept")
    for name in (terminating, gone, kept):
        create_namespace(kube_api, name)
    fill(fresh_registry, terminating)
    fill(fresh_registry, gone)
    kept_content = fill(fresh_registry, kept)
    replica = make_controller(fresh_registry.url)
    await leader_of(replica)

    await kube_api.go_down()
    kube_api.store.delete(NAMESPACES, terminating)
    kube_api.store.delete(NAMESPACES, gone)
    kube_api.finalize_namespace(gone)  # gone without a trace by the time the API is back
    # Longer than the renew deadline: the replica stops leading, and must start again by itself.
    await eventually(lambda: not replica.controller.is_leader, within=5)
    assert content(fresh_registry, terminating) and content(fresh_registry, gone)
    kube_api.come_up()

    # Relist backoff, a new term and the removals: bounds against a hang, generous for a loaded machine
    # (10 s was missed with the full suite beside other suites on two cores).
    await eventually(lambda: content(fresh_registry, terminating) == {}, within=30)
    await eventually(lambda: content(fresh_registry, gone) == {}, within=30)
    assert content(fresh_registry, kept) == kept_content
    # The Terminating one came from the namespace list, the vanished one from the start-up sweep.
    assert replica.controller.last_sweep is not None and gone in replica.controller.last_sweep.orphans


@pytest_twisted.ensureDeferred
async def test_short_api_outage_resumes_the_watch_without_losing_the_lease(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    doomed = unique_namespace("short")
    create_namespace(kube_api, doomed)
    fill(fresh_registry, doomed)
    replica = make_controller(fresh_registry.url, leader_elect=False)
    await leader_of(replica)
    lists = replica.controller._reflector.lists
    await kube_api.go_down()
    kube_api.store.delete(NAMESPACES, doomed)
    await sleep(0.3)
    kube_api.come_up()
    await eventually(lambda: content(fresh_registry, doomed) == {}, within=10)
    assert replica.controller._reflector.lists == lists  # resumed from its resourceVersion


# -- the registry misbehaving during a cascade ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_registry_down_during_a_cascade(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    doomed, kept = unique_namespace("down"), unique_namespace("kept")
    create_namespace(kube_api, doomed)
    create_namespace(kube_api, kept)
    fill(fresh_registry, doomed, repositories=4)
    kept_content = fill(fresh_registry, kept)
    proxy = RegistryProxy(reactor, fresh_registry)
    replica = make_controller(proxy.url)
    await leader_of(replica)
    await proxy.go_down()
    kube_api.store.delete(NAMESPACES, doomed)
    await eventually(lambda: replica.controller.metrics.registry_errors_total >= 3, within=10)
    assert content(fresh_registry, doomed)  # nothing could be deleted, and it is not taken as done
    assert replica.controller.busy and not replica.controller.results
    proxy.come_up()
    await eventually(lambda: replica.controller.results, within=10)
    assert content(fresh_registry, doomed) == {}
    assert content(fresh_registry, kept) == kept_content
    [result] = replica.controller.results
    assert result.errors >= 3 and result.tags_deleted == 8
    await proxy.go_down()


@pytest_twisted.ensureDeferred
async def test_registry_read_only_is_waited_out(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    doomed = unique_namespace("ro")
    create_namespace(kube_api, doomed)
    made = fill(fresh_registry, doomed)
    readonly = RegistryServer(root=fresh_registry.root, readonly=True)
    try:
        proxy = RegistryProxy(reactor, readonly)  # garbage collection is running
        replica = make_controller(proxy.url)
        await leader_of(replica)
        kube_api.store.delete(NAMESPACES, doomed)
        await eventually(lambda: replica.controller.metrics.registry_readonly_waits_total >= 3, within=10)
        assert content(fresh_registry, doomed) == made
        assert replica.controller.busy and not replica.controller.results
        proxy.point_at(fresh_registry)  # maintenance over
        await eventually(lambda: replica.controller.results, within=10)
        assert content(fresh_registry, doomed) == {}
        await proxy.go_down()
    finally:
        readonly.stop()


@pytest_twisted.ensureDeferred
async def test_namespaces_that_cannot_be_emptied_do_not_hold_the_workers(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    """As many broken namespaces as workers (2): a healthy one deleted after them is emptied all the same."""
    broken = [unique_namespace("broken"), unique_namespace("broken")]
    healthy = unique_namespace("healthy")
    for name in (*broken, healthy):
        create_namespace(kube_api, name)
        fill(fresh_registry, name)
    for name in broken:
        corrupt_tag_link(fresh_registry, f"{name}/app0", "t0")
    replica = make_controller(fresh_registry.url)
    assert replica.controller.options.namespace_concurrency == 2
    await leader_of(replica)
    with collected_logs() as events:
        for name in broken:
            kube_api.store.delete(NAMESPACES, name)
            kube_api.finalize_namespace(name)
        await eventually(lambda: replica.controller.metrics.registry_errors_total >= 4, within=10)
        kube_api.store.delete(NAMESPACES, healthy)
        kube_api.finalize_namespace(healthy)
        await eventually(lambda: replica.controller.results, within=10)
    # The healthy namespace's removal may run twice: its Terminating and its deletion are two triggers,
    # and one that comes while the removal runs runs it again after.
    assert {result.namespace for result in replica.controller.results} == {healthy}
    assert content(fresh_registry, healthy) == {}
    assert all(content(fresh_registry, name) for name in broken)  # still failing, still retried
    # Their cascades are still there, retrying (on a worker, or backing off without one).
    assert all(name in replica.controller._running for name in broken)
    # Each failed pass warns, naming the namespace and the tag that keeps failing.
    warnings = log_lines(events, LogLevel.warn)
    for name in broken:
        assert any(name in line and f"{name}/app0:t0" in line for line in warnings), warnings


async def removal_retrying(
    kube_api: KubeApiDouble, registry: RegistryServer, make_controller: Any
) -> tuple[Any, str, RegistryProxy, dict[str, list[str]]]:
    """A namespace deleted (and finalized: gone) while the registry is down: its removal keeps retrying."""
    team = unique_namespace("team")
    create_namespace(kube_api, team)
    made = fill(registry, team)
    proxy = RegistryProxy(reactor, registry)
    replica = make_controller(proxy.url)
    await leader_of(replica)
    await eventually(lambda: kube_api.open_watches >= 1)
    await proxy.go_down()
    kube_api.store.delete(NAMESPACES, team)
    kube_api.finalize_namespace(team)
    await eventually(lambda: replica.controller.metrics.registry_errors_total >= 1, within=10)
    return replica, team, proxy, made


@pytest.mark.parametrize("cut_off_by", ["shutdown", "leadership lost"])
@pytest_twisted.ensureDeferred
async def test_a_removal_cut_off_is_logged(
    cut_off_by: str, kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    replica, team, _proxy, made = await removal_retrying(kube_api, fresh_registry, make_controller)
    with collected_logs() as events:
        if cut_off_by == "shutdown":
            await replica.stop()
        else:  # the Lease cannot be renewed: the leader stops at the renew deadline
            await kube_api.go_down()
            await eventually(lambda: replica.controller.metrics.leader_losses_total == 1, within=5)
            await eventually(lambda: not replica.controller.busy)
            kube_api.come_up()
    assert replica.controller.metrics.cascades_aborted_total == 1
    assert content(fresh_registry, team) == made
    [line] = [line for line in log_lines(events) if team in line and "interrupted" in line]
    assert f"({cut_off_by})" in line and "the next leader or the sweep finishes it" in line


# -- a namespace created anew while its old content is being removed ------------------------------------


async def recreated_during_removal(
    kube_api: KubeApiDouble, registry: RegistryServer, make_controller: Any, *, stale: dict[str, Any]
) -> tuple[Any, str, RegistryProxy]:
    """A removal retrying when its namespace's list+watch starts failing (`stale`: the `inject_error`
    arguments) and the namespace is created anew with new content."""
    replica, team, proxy, _made = await removal_retrying(kube_api, registry, make_controller)
    # The store is left as the last event made it ("synced", the namespace absent): the Lease renews
    # fine, only listing and watching namespaces fail.
    kube_api.inject_error(500, path="/api/v1/namespaces", times=1_000_000, **stale)
    kube_api.cut_watches()
    create_namespace(kube_api, team)
    images.push_oci_image(registry, f"{team}/newapp", "v1", seed="new-owner")
    return replica, team, proxy


@pytest_twisted.ensureDeferred
async def test_a_removal_deletes_nothing_while_the_cluster_api_cannot_confirm_the_namespace_is_gone(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    # Every namespace request fails, the GET of this one included: nothing can be confirmed.
    replica, team, proxy = await recreated_during_removal(kube_api, fresh_registry, make_controller, stale={})
    assert replica.controller._view.get(team) is None  # stale: the re-creation never arrived
    before = content(fresh_registry, team)
    asked = len(kube_api.requests_for(f"/api/v1/namespaces/{team}", method="GET"))
    proxy.come_up()
    await eventually(
        lambda: (
            replica.controller.results
            or len(kube_api.requests_for(f"/api/v1/namespaces/{team}", method="GET")) >= asked + 3
        ),
        within=10,
    )
    assert content(fresh_registry, team) == before, "deleted without the cluster API's confirmation"
    assert replica.controller.busy and not replica.controller.results
    # The API answers again: the namespace exists, the removal stops for good.
    kube_api.clear_injected_errors()
    await eventually(lambda: replica.controller.metrics.cascades_aborted_total == 1, within=10)
    assert content(fresh_registry, team) == before
    await proxy.go_down()


@pytest_twisted.ensureDeferred
async def test_a_removal_asks_the_cluster_api_not_its_stale_store(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    # Only the list and the watch fail: a GET of the namespace is answered.
    replica, team, proxy = await recreated_during_removal(
        kube_api, fresh_registry, make_controller, stale={"exact": True}
    )
    before = content(fresh_registry, team)
    proxy.come_up()
    await eventually(lambda: replica.controller.metrics.cascades_aborted_total == 1, within=10)
    assert replica.controller._view.get(team) is None  # still stale: the API stopped the removal
    assert content(fresh_registry, team) == before
    assert not replica.controller.results
    kube_api.clear_injected_errors()
    await eventually(lambda: replica.controller._view.live(team), within=10)
    assert content(fresh_registry, team) == before
    await proxy.go_down()


@pytest_twisted.ensureDeferred
async def test_the_cluster_api_tells_a_namespace_created_anew_from_the_one_deleted(
    kube_api: KubeApiDouble, kube_client: Any
) -> None:
    team = unique_namespace("team")
    create_namespace(kube_api, team)
    old = kube_api.store.get(NAMESPACES, team)["metadata"]["uid"]
    assert await namespace_state(kube_client, team) == (EXISTS, None)
    kube_api.store.delete(NAMESPACES, team)
    assert await namespace_state(kube_client, team, uid=old) == (TERMINATING, None)
    kube_api.finalize_namespace(team)
    assert await namespace_state(kube_client, team, uid=old) == (ABSENT, None)
    create_namespace(kube_api, team)
    kube_api.store.delete(NAMESPACES, team)  # created anew and Terminating: another namespace's content
    new = kube_api.store.get(NAMESPACES, team)["metadata"]["uid"]
    assert await namespace_state(kube_client, team) == (TERMINATING, None)  # the sweep's question
    state, why = await namespace_state(kube_client, team, uid=old)
    assert state == EXISTS and new in (why or "")
    with pytest.raises(Aborted, match="created anew"):
        require_gone(team, state, why)
    kube_api.inject_error(500, path=f"/api/v1/namespaces/{team}")
    state, why = await namespace_state(kube_client, team, uid=new)
    assert state == UNKNOWN
    with pytest.raises(Unconfirmed):
        require_gone(team, state, why)


def push_old_tags(registry: RegistryServer, namespace: str) -> dict[str, str]:
    """Four tags on four manifests in ``<namespace>/app``: digest -> the image's seed."""
    return {
        images.push_oci_image(
            registry, f"{namespace}/app", f"old{i}", seed=f"{namespace}-{i}"
        ): f"{namespace}-{i}"
        for i in range(4)
    }


def assert_new_tag_kept(registry: RegistryServer, namespace: str) -> None:
    """After `recreate_after_first_delete` stopped the removal: one old tag gone, three and `mine` left."""
    left = content(registry, namespace)[f"{namespace}/app"]
    assert "mine" in left and len(left) == 4, left


def after_first_delete(registry: RegistryClient, then: Callable[[], Awaitable[None]]) -> list[str]:
    """Runs ``then`` once the first digest delete through ``registry`` is done (before that delete
    returns to the cascade); returns the digests deleted."""
    real_delete = registry.delete_manifest
    deleted: list[str] = []

    async def delete_then(
        repository: str,
        digest: str,
        *,
        hooks: WriteHooks | None = None,
    ) -> None:
        await real_delete(repository, digest, hooks=hooks)
        deleted.append(digest)
        if len(deleted) == 1:
            await then()

    registry.delete_manifest = delete_then  # type: ignore[method-assign]
    return deleted


def recreate_after_first_delete(
    kube_api: KubeApiDouble,
    fresh_registry: RegistryServer,
    registry: RegistryClient,
    team: str,
    pushed: dict[str, str],
) -> list[str]:
    """Makes the first digest delete through ``registry`` finalize ``team``, create it anew and
    push ``mine`` into it, on the manifest of an old tag listed but not deleted yet (``pushed``:
    `push_old_tags`), while the namespace watch goes silent (the store keeps its last state).
    Returns the digests deleted."""

    async def recreate() -> None:
        kube_api.mute_watches()
        if kube_api.store.exists(NAMESPACES, team):
            kube_api.finalize_namespace(team)
        create_namespace(kube_api, team)
        # One repository's digests are deleted in order: the last one is still to come.
        images.push_oci_image(fresh_registry, f"{team}/app", "mine", seed=pushed[max(pushed)])

    return after_first_delete(registry, recreate)


@pytest_twisted.ensureDeferred
async def test_a_namespace_created_anew_between_two_deletes_stops_the_removal_while_the_store_is_stale(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    """Each delete waits for the cluster API's word, not just the first of its repository: the
    store, whose watch went silent, still shows the old namespace Terminating."""
    team = unique_namespace("team")
    create_namespace(kube_api, team)
    pushed = push_old_tags(fresh_registry, team)
    replica = make_controller(fresh_registry.url, leader_elect=False, cascade_concurrency=1, start=False)
    deleted = recreate_after_first_delete(kube_api, fresh_registry, replica.registry, team, pushed)
    replica.controller.start()
    await eventually(lambda: replica.controller.synced, within=5)
    kube_api.store.delete(NAMESPACES, team)
    await eventually(lambda: replica.controller.metrics.cascades_aborted_total == 1, within=10)
    assert replica.controller._view.get(team) is not None  # stale: still the old one, Terminating
    assert not replica.controller._view.live(team)
    assert len(deleted) == 1 and not replica.controller.results
    assert_new_tag_kept(fresh_registry, team)


@pytest_twisted.ensureDeferred
async def test_a_delete_ready_after_the_namespace_is_created_anew_waits_for_a_get_sent_after_it(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    """The GET in flight when a delete becomes ready was evaluated before: here, before the namespace
    was created anew, with its answer slow to come. The delete waits for the next GET, which the
    creation stops; only the delete already sent before reaches the registry after the creation.

    The order is driven, not left to which repository's worker is quicker: team/other's first delete
    waits until team/app's first has been let go, so the GET held back is the one team/other's second
    delete asked for, never the one team/app's first waits for (that would wait for itself)."""
    team = unique_namespace("team")
    create_namespace(kube_api, team)
    pushed = push_old_tags(fresh_registry, team)  # team/app: four digests, deleted in digest order
    for i in range(2):
        images.push_oci_image(fresh_registry, f"{team}/other", f"o{i}", seed=f"{team}-other-{i}")
    replica = make_controller(fresh_registry.url, leader_elect=False, cascade_concurrency=2, start=False)
    kube, registry = replica.kube, replica.registry
    real_get, real_delete = kube.get, registry.delete_manifest
    app_sent: Deferred[None] = Deferred()  # team/app's first delete has passed its GET
    slow: list[Deferred[None]] = []  # the answer held back: team/other's second delete's GET
    evaluated: Deferred[None] = Deferred()  # ... which the API has evaluated (before the creation)
    app_deletes: list[bool] = []  # per delete of team/app: whether the namespace existed again
    other_deleted: list[str] = []

    async def get(path: str, params: Any = None) -> Any:
        # The first GET sent once team/other's first delete is done: its second delete's, sent at
        # once on that return (team/app's first has passed its own, team/app's second waits for it).
        held = path.endswith(f"/namespaces/{team}") and bool(other_deleted) and not slow
        if held:
            slow.append(Deferred())
        try:
            return await real_get(path, params)  # the API evaluates it now
        finally:
            if held:
                evaluated.callback(None)
                await slow[0]

    async def delete(
        repository: str,
        digest: str,
        *,
        hooks: WriteHooks | None = None,
    ) -> None:
        # The checks in the repository's turn (the cascade's GET among them), then the request, which
        # here may take long to reach the registry.
        await run_hooks(hooks)
        if repository == f"{team}/other":
            if not other_deleted:
                await app_sent
            await real_delete(repository, digest)
            other_deleted.append(digest)
            return
        if not app_deletes:
            app_sent.callback(None)
            await evaluated  # reaches the registry late: after another delete's GET was evaluated
            kube_api.mute_watches()  # the store keeps its last state
            kube_api.finalize_namespace(team)
            create_namespace(kube_api, team)
            # On the manifest of app's second delete, which is ready once this one returns.
            images.push_oci_image(fresh_registry, f"{team}/app", "mine", seed=pushed[sorted(pushed)[1]])
        app_deletes.append(kube_api.store.exists(NAMESPACES, team))
        await real_delete(repository, digest)
        if len(app_deletes) == 1:
            # The slow answer comes after app's second delete has asked (at once, on this return).
            reactor.callLater(0, slow[0].callback, None)

    kube.get = get
    registry.delete_manifest = delete
    replica.controller.start()
    await eventually(lambda: replica.controller.synced, within=5)
    kube_api.store.delete(NAMESPACES, team)
    await eventually(lambda: replica.controller.metrics.cascades_aborted_total == 1, within=15)
    assert app_deletes == [True]  # the one in the documented window: sent before the creation
    assert_new_tag_kept(fresh_registry, team)


@pytest_twisted.ensureDeferred
async def test_a_namespace_created_during_an_orphan_cascade_stops_it_while_the_store_is_stale(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    """The sweep's cascade, one repository of four digests, and the namespace's creation never
    reaches the store: the cluster API stops the next delete."""
    late = unique_namespace("late")
    pushed = push_old_tags(fresh_registry, late)
    replica = make_controller(fresh_registry.url, leader_elect=False, cascade_concurrency=1, start=False)
    deleted = recreate_after_first_delete(kube_api, fresh_registry, replica.registry, late, pushed)
    replica.controller.start()
    await eventually(lambda: replica.controller.metrics.cascades_aborted_total == 1, within=10)
    assert replica.controller._view.get(late) is None  # stale: the creation never arrived
    assert len(deleted) == 1 and not replica.controller.results
    assert_new_tag_kept(fresh_registry, late)


@pytest_twisted.ensureDeferred
async def test_the_namespace_controllers_removal_stops_between_two_deletes_for_a_namespace_created_anew(
    kube_api: KubeApiDouble, kube_client: Any, fresh_registry: RegistryServer
) -> None:
    """deletecollection's removal (cleanup/removal.py) asks before every delete as well."""
    team = unique_namespace("team")
    create_namespace(kube_api, team)
    pushed = push_old_tags(fresh_registry, team)
    kube_api.store.delete(NAMESPACES, team)
    registry = RegistryClient(reactor, RegistrySettings(url=fresh_registry.url, timeout=2.0))
    try:
        deleted = recreate_after_first_delete(kube_api, fresh_registry, registry, team, pushed)
        remover = namespace_remover(reactor, kube_client, registry, concurrency=1)
        assert await remover.deleting(team)
        with pytest.raises(RegistryUnavailable, match="the cluster API says the namespace exists"):
            await remover.remove(team, within=10.0)
    finally:
        await registry.close()
    assert len(deleted) == 1
    assert_new_tag_kept(fresh_registry, team)


@pytest_twisted.ensureDeferred
async def test_a_relist_finds_a_namespace_created_anew_and_already_terminating(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    """The relist after a 410 shows the name Terminating before and after: another uid is another
    namespace, seen Terminating for the first time, and its content goes."""
    team, kept = unique_namespace("team"), unique_namespace("kept")
    create_namespace(kube_api, team)
    create_namespace(kube_api, kept)
    kept_content = fill(fresh_registry, kept)
    images.push_oci_image(fresh_registry, f"{team}/app", "v1", seed=f"{team}-old")
    replica = make_controller(fresh_registry.url, leader_elect=False)
    await eventually(lambda: replica.controller.synced, within=5)
    kube_api.store.delete(NAMESPACES, team)  # Terminating: its cascade empties it
    await eventually(lambda: replica.controller.results and not replica.controller.busy, within=10)
    assert content(fresh_registry, team) == {}
    await eventually(lambda: kube_api.open_watches >= 1)
    lists = replica.controller._reflector.lists
    # While the watch is cut: finalized, created anew with content, deleted again; history compacted.
    kube_api.cut_watches()
    kube_api.finalize_namespace(team)
    create_namespace(kube_api, team)
    images.push_oci_image(fresh_registry, f"{team}/app", "v2", seed=f"{team}-new")
    kube_api.store.delete(NAMESPACES, team)
    kube_api.compact()
    await eventually(lambda: replica.controller.metrics.cascades_succeeded_total == 2, within=10)
    assert content(fresh_registry, team) == {}
    assert replica.controller._reflector.lists > lists  # seen in the relist, not in a watch event
    assert content(fresh_registry, kept) == kept_content


@pytest_twisted.ensureDeferred
async def test_a_relist_showing_a_namespace_created_anew_stops_the_running_removal(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    """The relist shows a live namespace of another uid under the name being cleaned: no cleanup of
    its own starts, and the old one's stops before its next delete."""
    team = unique_namespace("team")
    create_namespace(kube_api, team)
    push_old_tags(fresh_registry, team)
    replica = make_controller(fresh_registry.url, leader_elect=False, cascade_concurrency=1, start=False)

    async def recreate_behind_a_410() -> None:
        lists = replica.controller._reflector.lists
        kube_api.cut_watches()
        kube_api.finalize_namespace(team)
        create_namespace(kube_api, team)
        images.push_oci_image(fresh_registry, f"{team}/new", "v1", seed=f"{team}-new")
        kube_api.compact()
        await eventually(lambda: replica.controller._reflector.lists > lists, within=10)

    deleted = after_first_delete(replica.registry, recreate_behind_a_410)
    replica.controller.start()
    await eventually(lambda: replica.controller.synced, within=5)
    kube_api.store.delete(NAMESPACES, team)
    await eventually(lambda: replica.controller.metrics.cascades_aborted_total == 1, within=10)
    await eventually(lambda: not replica.controller.busy)
    assert len(deleted) == 1 and not replica.controller.results
    assert replica.controller.metrics.cascades_started_total == 1
    assert replica.controller._view.live(team)
    found = content(fresh_registry, team)
    assert found[f"{team}/new"] == ["v1"] and len(found[f"{team}/app"]) == 3


@pytest_twisted.ensureDeferred
async def test_a_namespace_deleted_again_under_its_new_uid_while_the_old_ones_cascade_runs_is_emptied(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    """A trigger that arrives while a cascade runs makes it run once more, also when the running one
    stops because the namespace exists: here it was created anew and deleted again, and the old
    namespace's cascade stops at the new uid. The new namespace's content goes, and what the old
    cascade left of the old one's."""
    team = unique_namespace("team")
    create_namespace(kube_api, team)
    push_old_tags(fresh_registry, team)
    replica = make_controller(fresh_registry.url, leader_elect=False, cascade_concurrency=1, start=False)
    old_uid = kube_api.store.get(NAMESPACES, team)["metadata"]["uid"]

    async def recreate_and_delete_again() -> None:
        kube_api.finalize_namespace(team)
        create_namespace(kube_api, team)
        images.push_oci_image(fresh_registry, f"{team}/new", "v1", seed=f"{team}-new")
        kube_api.store.delete(NAMESPACES, team)  # the new namespace Terminating too
        new_uid = kube_api.store.get(NAMESPACES, team)["metadata"]["uid"]
        assert new_uid != old_uid

        def seen() -> bool:
            obj = replica.controller._view.get(team)
            return obj is not None and obj["metadata"]["uid"] == new_uid

        await eventually(seen, within=10)  # its trigger has come, while the old cascade runs

    deleted = after_first_delete(replica.registry, recreate_and_delete_again)
    replica.controller.start()
    await eventually(lambda: replica.controller.synced, within=5)
    kube_api.store.delete(NAMESPACES, team)
    await eventually(lambda: len(deleted) >= 1, within=10)  # the old namespace's cascade has begun
    await eventually(lambda: not replica.controller.busy, within=10)
    assert content(fresh_registry, team) == {}
    assert len(replica.controller.results) == 1
    metrics = replica.controller.metrics
    # One cleanup: the old namespace's run stopped, the new one's ran in its place.
    assert (metrics.cascades_started_total, metrics.cascades_aborted_total) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_a_cascade_stops_when_the_store_shows_the_namespace_live_while_the_api_cannot_tell(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    """The guard before every request: the namespace not live again in the synced store. The store
    has seen the namespace created anew while the cluster API answers 500 to its GET: the cascade
    stops at once instead of backing off for as long as the API fails."""
    team = unique_namespace("team")
    create_namespace(kube_api, team)
    push_old_tags(fresh_registry, team)
    replica = make_controller(fresh_registry.url, leader_elect=False, cascade_concurrency=1, start=False)

    async def recreate_while_the_api_fails() -> None:
        kube_api.finalize_namespace(team)
        create_namespace(kube_api, team)
        kube_api.inject_error(500, method="GET", path=f"/api/v1/namespaces/{team}", times=10_000, exact=True)
        await eventually(lambda: replica.controller._view.live(team), within=10)

    deleted = after_first_delete(replica.registry, recreate_while_the_api_fails)
    replica.controller.start()
    await eventually(lambda: replica.controller.synced, within=5)
    kube_api.store.delete(NAMESPACES, team)
    await eventually(lambda: replica.controller.metrics.cascades_aborted_total == 1, within=10)
    assert not replica.controller.busy and not replica.controller.results
    assert len(deleted) == 1
    assert len(content(fresh_registry, team)[f"{team}/app"]) == 3


# -- several replicas --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_two_replicas_one_leader_and_failover(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    first, second, kept = unique_namespace("first"), unique_namespace("second"), unique_namespace("kept")
    for name in (first, second, kept):
        create_namespace(kube_api, name)
    fill(fresh_registry, first)
    fill(fresh_registry, second)
    kept_content = fill(fresh_registry, kept)
    a = make_controller(fresh_registry.url, identity="replica-a")
    b = make_controller(fresh_registry.url, identity="replica-b")
    leader = await leader_of(a, b)
    follower = b if leader is a else a
    await sleep(0.5)
    assert not follower.controller.is_leader and not follower.controller.synced
    lease = kube_api.store.get(LEASES, "payloadtags-cleanup", "default")["spec"]
    assert lease["holderIdentity"] == leader.controller.options.leader_election.identity
    assert lease["leaseDurationSeconds"] == 2 and lease["leaseTransitions"] == 0
    assert lease["acquireTime"] and lease["renewTime"]

    kube_api.store.delete(NAMESPACES, first)
    await eventually(lambda: content(fresh_registry, first) == {}, within=10)
    assert follower.controller.metrics.cascades_started_total == 0

    # A crash: the Lease is not released, the follower takes over once it expires (2 s).
    crashed_at = reactor.seconds()
    await leader.stop(release=False)
    successor = await leader_of(follower, within=10)
    assert reactor.seconds() - crashed_at >= 1.5
    lease = kube_api.store.get(LEASES, "payloadtags-cleanup", "default")["spec"]
    assert lease["holderIdentity"] == successor.controller.options.leader_election.identity
    assert lease["leaseTransitions"] == 1

    kube_api.store.delete(NAMESPACES, second)
    await eventually(lambda: content(fresh_registry, second) == {}, within=10)
    assert content(fresh_registry, kept) == kept_content

    # A clean stop releases the Lease: a new replica takes it at its next try, not after expiry.
    c = make_controller(fresh_registry.url, identity="replica-c")
    await sleep(0.5)
    assert not c.controller.is_leader
    before_stop = kube_api.store.resource_version
    await successor.stop()
    # Released at once (an empty holder), so the next try takes it without waiting for expiry. Read from
    # the Lease's history: on a busy machine replica-c's next try may come before this line runs.
    holders = [e.obj["spec"]["holderIdentity"] for e in kube_api.store.events_since(LEASES, before_stop)]
    assert "" in holders, holders  # released; before that only the successor's own renewals
    assert set(holders[: holders.index("")]) <= {successor.controller.options.leader_election.identity}
    await leader_of(c, within=5)


@pytest_twisted.ensureDeferred
async def test_a_forbidden_lease_is_warned_about_once_then_its_recovery_said(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    # Without get/create/update on Leases no replica ever leads, and no namespace is cleaned up.
    leases = "/apis/coordination.k8s.io/v1/namespaces/default/leases"
    with collected_logs() as events:
        kube_api.inject_error(403, "Forbidden", "leases is forbidden", path=leases, times=1_000_000)
        before = len(kube_api.requests_for(leases))
        replica = make_controller(fresh_registry.url)
        await eventually(lambda: len(kube_api.requests_for(leases)) >= before + 4, within=10)
        assert not replica.controller.is_leader
        election = [line for line in log_lines(events, LogLevel.warn) if line.startswith("Leader election")]
        assert len(election) == 1, election  # several refused attempts, one warning
        assert (
            "default/payloadtags-cleanup" in election[0]
            and "403 Forbidden: leases is forbidden" in election[0]
        )
        kube_api.clear_injected_errors()
        await leader_of(replica)
    assert any("payloadtags-cleanup answers again" in line for line in log_lines(events, LogLevel.info))


# -- the sweep -----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sweep_removes_orphans_only(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    live, orphan = unique_namespace("live"), unique_namespace("orphan")
    create_namespace(kube_api, live)
    live_content = fill(fresh_registry, live)
    orphan_content = fill(fresh_registry, orphan, repositories=3)
    # Not namespace names, so never a namespace's content: a dot, an underscore, too long.
    odd = ["with.dot/app", "under_score/app", "x" * 64 + "/app"]
    for repository in odd:
        images.push_oci_image(fresh_registry, repository, "v1")
    images.push_oci_image(fresh_registry, "lonely", "v1")  # one segment: no path below a namespace

    dry = make_controller(fresh_registry.url, identity="dry", leader_elect=False, sweep_dry_run=True)
    await eventually(lambda: dry.controller.last_sweep is not None, within=10)
    assert dry.controller.last_sweep.orphans == (orphan,)
    # A cascade the sweep had started would still be running when it returns: wait until the
    # controller has none running or queued, then nothing may be gone and none may have started.
    await eventually(lambda: not dry.controller.busy, within=10)
    assert content(fresh_registry, orphan) == orphan_content
    metrics = dry.controller.metrics
    assert (metrics.sweep_orphans_found_total, metrics.sweep_orphans_cleaned_total) == (1, 0)
    assert (metrics.cascades_started_total, metrics.tags_deleted_total) == (0, 0)
    await dry.stop()

    replica = make_controller(fresh_registry.url, leader_elect=False)
    await eventually(lambda: replica.controller.results, within=10)
    sweep = replica.controller.last_sweep
    assert sweep is not None and sweep.orphans == (orphan,) and not sweep.dry_run
    assert content(fresh_registry, orphan) == {}
    assert content(fresh_registry, live) == live_content
    for repository in [*odd, "lonely"]:
        assert images.list_tags(fresh_registry, repository) == ["v1"]
    # Namespaces the double starts with (default, kube-system…) have no content: no candidates.
    assert sweep.candidates == (orphan,)


@pytest_twisted.ensureDeferred
async def test_periodic_sweep(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    replica = make_controller(fresh_registry.url, leader_elect=False, sweep_period=0.3)
    await eventually(lambda: replica.controller.metrics.sweeps_total >= 1)
    orphan = unique_namespace("later")
    fill(fresh_registry, orphan, repositories=1)
    await eventually(lambda: content(fresh_registry, orphan) == {}, within=5)
    assert replica.controller.metrics.sweeps_total >= 2


@pytest_twisted.ensureDeferred
async def test_sweep_racing_a_namespace_creation(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    """The namespace appears after the sweep's snapshot, while it reads the catalog."""
    late = unique_namespace("late")
    made = fill(fresh_registry, late)
    replica = make_controller(fresh_registry.url, leader_elect=False, start=False)
    registry: RegistryClient = replica.registry
    real_catalog = registry.catalog

    async def catalog_then_create(*args: Any, **kwargs: Any) -> Any:
        if not kube_api.store.exists(NAMESPACES, late):
            create_namespace(kube_api, late)  # `kubectl create namespace` lands right now
        return await real_catalog(*args, **kwargs)

    registry.catalog = catalog_then_create  # type: ignore[method-assign]
    replica.controller.start()
    await eventually(lambda: replica.controller.last_sweep is not None, within=10)
    sweep = replica.controller.last_sweep
    assert late in sweep.candidates  # absent from the snapshot…
    assert late in sweep.skipped_existing and not sweep.orphans  # …but confirmed existing
    await sleep(0.3)
    assert content(fresh_registry, late) == made
    assert replica.controller.metrics.cascades_started_total == 0


@pytest_twisted.ensureDeferred
async def test_a_sweep_candidate_the_cluster_api_cannot_confirm_is_skipped_as_unconfirmed(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    """An API error for the sweep's GET of a candidate: skipped and counted, no cascade, nothing deleted."""
    orphan = unique_namespace("unsure")
    images.push_oci_image(fresh_registry, f"{orphan}/app", "v1", seed=f"{orphan}-v1")
    kube_api.inject_error(500, method="GET", path=f"/api/v1/namespaces/{orphan}", times=1000, exact=True)
    replica = make_controller(fresh_registry.url, leader_elect=False)
    await eventually(lambda: replica.controller.last_sweep is not None, within=10)
    sweep = replica.controller.last_sweep
    assert sweep.skipped_unconfirmed == (orphan,) and sweep.orphans == ()
    metrics = replica.controller.metrics
    assert metrics.sweep_skipped_unconfirmed_total == 1 and metrics.cascades_started_total == 0
    assert not replica.controller.busy
    assert content(fresh_registry, orphan) == {f"{orphan}/app": ["v1"]}


@pytest_twisted.ensureDeferred
async def test_namespace_created_during_the_orphan_cascade_stops_it(
    kube_api: KubeApiDouble, fresh_registry: RegistryServer, make_controller: Any
) -> None:
    """Created after the checks, while its content is being deleted: the next delete does not happen."""
    late = unique_namespace("late")
    fill(fresh_registry, late, repositories=4, tags=1)
    replica = make_controller(fresh_registry.url, leader_elect=False, cascade_concurrency=1, start=False)

    async def create() -> None:
        create_namespace(kube_api, late)
        await eventually(lambda: replica.controller._view.live(late))

    deleted = after_first_delete(replica.registry, create)
    replica.controller.start()
    await eventually(lambda: replica.controller.metrics.cascades_aborted_total == 1, within=10)
    assert len(deleted) == 1
    assert len(content(fresh_registry, late)) == 3


# -- the namespace controller's path --------------------------------------------------------------------

B = "/apis/payload-registry.deckhouse.io/v1alpha1"
METADATA_LIST = (
    "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,"
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
)


async def ready(client: Any, collection: str) -> None:
    """Until its RBAC reflectors have synced the server answers 503; the namespace controller retries."""
    for _ in range(100):
        reply = await client.get(collection, headers={"Accept": METADATA_LIST})
        if reply.code == 200:
            return
        await sleep(0.05)
    raise AssertionError(f"server not ready: {reply.code} {reply.body!r}")


@pytest_twisted.ensureDeferred
async def test_namespace_controller_deletecollection_empties_the_namespace(
    kube_api: KubeApiDouble, kube_kubeconfig: Any, fresh_registry: RegistryServer, make_server: Any
) -> None:
    team = unique_namespace("team")
    sibling = f"{team}-a"
    for name in (team, sibling):
        create_namespace(kube_api, name)
    fill(fresh_registry, team, repositories=3, tags=2)
    kept = fill(fresh_registry, sibling)
    server = await make_server(fresh_registry, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC")
    kcm = server.client(server.pki.client_ca.client("kcm", ("system:masters",)))
    collection = f"{B}/namespaces/{team}/payloadrepositorytags"
    await ready(kcm, collection)
    # The namespace controller first deletes the collection (metadata client, Background)…
    reply = await kcm.delete(
        collection, body={"propagationPolicy": "Background"}, headers={"Accept": METADATA_LIST}
    )
    assert reply.code == 200, reply.body
    assert len(reply.json()["items"]) == 6
    # …then lists again and expects nothing.
    again = await kcm.get(collection, headers={"Accept": METADATA_LIST})
    assert again.code == 200
    assert again.json()["kind"] == "PartialObjectMetadataList"
    assert again.json()["items"] == []
    assert content(fresh_registry, team) == {}
    assert content(fresh_registry, sibling) == kept


@pytest_twisted.ensureDeferred
async def test_namespace_controller_and_watch_loop_converge(
    kube_api: KubeApiDouble,
    kube_kubeconfig: Any,
    fresh_registry: RegistryServer,
    make_server: Any,
    make_controller: Any,
) -> None:
    """Both paths at once on the same namespace: neither fails, and the namespace lists empty."""
    team = unique_namespace("both")
    create_namespace(kube_api, team)
    fill(fresh_registry, team, repositories=6, tags=2)
    server = await make_server(fresh_registry, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC")
    kcm = server.client(server.pki.client_ca.client("kcm", ("system:masters",)))
    replica = make_controller(fresh_registry.url)
    await leader_of(replica)
    collection = f"{B}/namespaces/{team}/payloadrepositorytags"
    await ready(kcm, collection)
    kube_api.store.delete(NAMESPACES, team)
    reply = await kcm.delete(
        collection, body={"propagationPolicy": "Background"}, headers={"Accept": METADATA_LIST}
    )
    assert reply.code == 200, reply.body
    await eventually(lambda: replica.controller.results and not replica.controller.busy, within=10)

    listed: list[Any] = []

    async def empty() -> bool:
        listed.append(await kcm.get(collection, headers={"Accept": METADATA_LIST}))
        items: list[Any] = listed[-1].json()["items"]
        return items == []

    for _ in range(20):  # what the namespace controller does: list until empty
        if await empty():
            break
        await sleep(0.1)
    assert listed[-1].json()["items"] == []
    assert content(fresh_registry, team) == {}


@pytest_twisted.ensureDeferred
async def test_a_walk_resumed_after_a_digit_named_nested_repository_still_lists_its_parent(
    registry: RegistryServer, registry_client: RegistryClient
) -> None:
    """distribution 2.8 lists `<ns>/app/0` before `<ns>/app`, and answers `last=<ns>/app/0` with the
    names after `<ns>/app` (docs/registry.md, "Catalog"). A deletecollection's call that stopped with
    `app/0` done and `app` under way made the next call's seek skip `app`: its round went on without
    it and reported the namespace empty with a tag pushed there meanwhile left."""
    ns = unique_namespace("digit")
    for name in ("a", "app/0", "app", "b"):
        images.push_oci_image(registry, f"{ns}/{name}", "v1", seed=f"{ns}-{name}")
    names = [name for name in images.catalog(registry) if name.startswith(ns + "/")]
    assert names == [f"{ns}/a", f"{ns}/app/0", f"{ns}/app", f"{ns}/b"]  # 2.8's order
    listed: list[str] = []

    class Listing:
        async def tags(self, repository: str) -> Sequence[str]:
            listed.append(repository)
            return await registry_client.tags(repository)

        def __getattr__(self, name: str) -> Any:
            return getattr(registry_client, name)

    walk = Walk()

    def budget() -> str | None:
        # The first pass deleted everything; the verifying one has done app/0 and taken up app.
        if listed.count(f"{ns}/app/0") == 2 and walk.after == f"{ns}/app/0":
            if images.list_tags(registry, f"{ns}/app") == []:
                images.push_oci_image(registry, f"{ns}/app", "late", seed=f"{ns}-late")  # ahead of it
            return "not finished within 40s"
        return None

    with pytest.raises(Aborted):
        await Cascade(Listing(), reactor, concurrency=1).run(ns, guard=budget, walk=walk)
    assert walk.after == f"{ns}/app/0" and images.list_tags(registry, f"{ns}/app") == ["late"]
    listed.clear()
    result = await Cascade(Listing(), reactor, concurrency=1).run(ns, walk=walk)  # the next call
    assert isinstance(result, CascadeResult) and result.tags_deleted == 1
    assert {name: images.list_tags(registry, name) for name in names} == {name: [] for name in names}
    assert listed[:2] == [f"{ns}/app", f"{ns}/b"]  # app first: the seek after app/0 skips it


@pytest_twisted.ensureDeferred
async def test_deletecollection_calls_whose_budget_ends_in_a_chunks_resolves_still_empty_the_namespace(
    registry: RegistryServer, registry_client: RegistryClient
) -> None:
    """A repository's first delete waits for its first chunk of resolves. A deletecollection's call
    whose budget ended before it kept nothing of the repository, and the next call resolved the same
    tags again and ended at the same place. With calls of eight guard checks (one per request, a few
    per delete: short of a call's way to `app/1`'s sixth resolve, as 40 s is short of 100 resolves at
    1.6 s each), `app/1` was never emptied, the walk at `app/0` call after call (r1cleanup N1). What a
    call resolved goes with the walk, and the next call deletes it first, confirmed as any delete."""
    ns = unique_namespace("budget")
    for name in ("a", "app/0", "app", "z"):
        images.push_oci_image(registry, f"{ns}/{name}", "v1", seed=f"{ns}-{name}")
    for t in range(5):
        images.push_oci_image(registry, f"{ns}/app/1", f"v{t}", seed=f"{ns}-app/1-{t}")
    images.tag_manifest(registry, f"{ns}/app/1", "v0", "v5")  # six tags, five manifests
    kept = {other: ["keep"] for other in (ns, f"{ns}-a/app/0", f"{ns}a/x", f"{ns}0/app")}
    for other in kept:
        images.push_oci_image(registry, other, "keep", seed=other)
    confirmed = 0

    async def confirm() -> None:
        nonlocal confirmed
        confirmed += 1

    walk = Walk()
    cascade = Cascade(registry_client, reactor, concurrency=1, page_size=1)
    result: CascadeResult | None = None
    calls = 0
    while result is None and calls < 40:
        calls += 1
        checks = 0

        def budget() -> str | None:
            nonlocal checks
            checks += 1
            return "not finished within 40s" if checks > 8 else None

        with contextlib.suppress(Aborted):
            result = await cascade.run(ns, guard=budget, confirm=confirm, walk=walk)
    assert result is not None, f"{calls} calls, stopped at {walk.after}: {content(registry, ns)} left"
    assert content(registry, ns) == {}
    assert {other: images.list_tags(registry, other) for other in kept} == kept
    assert confirmed >= 9  # every manifest's delete confirmed: four repositories' and app/1's five


@pytest_twisted.ensureDeferred
async def test_a_catalog_page_that_ends_in_a_digit_named_nested_repository_does_not_end_the_pass(
    registry: RegistryServer, registry_client: RegistryClient
) -> None:
    """distribution 2.8 answers a catalog page whose last name is followed by a repository it is
    nested in under a digit-named component (`<ns>/app/0`, then `<ns>/app`) with no next link, and
    `last=<ns>/app/0` leaves `<ns>/app` out (docs/registry.md, "Catalog"). The cascade took the page
    for the catalog's end: it deleted and verified only the names up to there, and reported the
    namespace empty with `app`, `b` and `c` left."""
    ns = unique_namespace("pages")
    for name in ("a", "app/0", "app", "b", "c/1", "c"):
        images.push_oci_image(registry, f"{ns}/{name}", "v1", seed=f"{ns}-{name}")
    names = [name for name in images.catalog(registry) if name.startswith(ns + "/")]
    assert names == [f"{ns}/{name}" for name in ("a", "app/0", "app", "b", "c/1", "c")]  # 2.8's order
    result = await Cascade(registry_client, reactor, concurrency=1, page_size=2).run(ns)
    assert isinstance(result, CascadeResult) and result.tags_deleted == 6 and result.errors == 0
    assert {name: images.list_tags(registry, name) for name in names} == {name: [] for name in names}


@pytest_twisted.ensureDeferred
async def test_the_dry_run_count_reads_past_a_catalog_page_that_ends_in_a_nested_repository(
    registry: RegistryServer, registry_client: RegistryClient
) -> None:
    """The dry run's count read the catalog as lists did (docs/registry.md, "Catalog"): with pages of
    two it stopped at the page that ends in `<ns>/app/0` (2.8 sends no next link), with pages of three
    the seek after `<ns>/app` counted `<ns>/app/0` again."""
    ns = unique_namespace("count")
    for name in ("a", "app/0", "app", "b"):
        images.push_oci_image(registry, f"{ns}/{name}", "v1", seed=f"{ns}-{name}")
    names = [name for name in images.catalog(registry) if name.startswith(ns + "/")]
    assert names == [f"{ns}/a", f"{ns}/app/0", f"{ns}/app", f"{ns}/b"]  # 2.8's order
    for page_size in (1, 2, 3, 1000):
        contents = await Cascade(registry_client, reactor, page_size=page_size).contents(ns)
        assert (contents.repositories, contents.tags) == (4, 4), page_size


class _NoNamespaces:
    """The namespace store of a cluster with no namespace at all."""

    def snapshot(self) -> tuple[str | None, frozenset[str]]:
        return "1", frozenset()

    def live(self, name: str) -> bool:
        return False


def _sweep_of_gone_namespaces(
    client: RegistryClient, page_size: int, hand: Callable[[str], None], dry_run: bool = False
) -> Sweep:
    """A sweep over the registry's catalog in pages of ``page_size`` that finds no namespace in the
    cluster: every namespace with content is gone, and handed to ``hand``."""

    async def gone(namespace: str) -> tuple[str, str | None]:
        return ABSENT, None

    return Sweep(
        client,
        reactor,
        _NoNamespaces(),  # type: ignore[arg-type]
        gone,
        hand,
        Cascade(client, reactor),
        page_size=page_size,
        dry_run=dry_run,
    )


@pytest_twisted.ensureDeferred
async def test_the_sweep_reads_past_a_catalog_page_that_ends_in_a_nested_repository(
    fresh_registry: RegistryServer,
) -> None:
    """The sweep reads the whole catalog for the namespaces it holds content of. A page that ends in
    `o1/app/0` comes without a next link (docs/registry.md, "Catalog"): the sweep took it for the end,
    and never found `o2`'s content, nor any namespace's after it."""
    for name in ("o1/a", "o1/app/0", "o1/app", "o2/b"):
        images.push_oci_image(fresh_registry, name, "v1", seed=name)
    assert images.catalog(fresh_registry) == ["o1/a", "o1/app/0", "o1/app", "o2/b"]  # 2.8's order
    client = RegistryClient(reactor, RegistrySettings(url=fresh_registry.url, timeout=5.0))
    try:
        # Repositories seen are the names the catalog listed: with pages of one or two, `o1/app`,
        # which the seek from `o1/app/0` leaves out, is not (docs/namespace-cleanup.md).
        for page_size, seen in ((1, 3), (2, 3), (3, 4), (1000, 4)):
            handed: list[str] = []
            result = await _sweep_of_gone_namespaces(client, page_size, handed.append).run()
            assert (result.candidates, result.repositories_seen) == (("o1", "o2"), seen), page_size
            assert handed == ["o1", "o2"]
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_the_sweep_counts_the_repositories_the_catalog_lists_whatever_its_page_size(
    fresh_registry: RegistryServer,
) -> None:
    """Where a catalog page ends in `o1/c/1`, the sweep's cursor hands out `o1/c`, which 2.8's next
    seek would leave out were it a repository, guessed (docs/registry.md, "Catalog"); `o1/d` and
    `o1/e`, `o1/e/1/f` likewise. They are only directories: they were counted among the repositories
    seen, with pages of some sizes only. The sweep counts the names the catalog listed."""
    names = ["o1/a", "o1/c/1", "o1/d/0", "o1/e/1/f/2", "o2/b"]
    for name in names:
        images.push_oci_image(fresh_registry, name, "v1", seed=name)
    assert images.catalog(fresh_registry) == names
    client = RegistryClient(reactor, RegistrySettings(url=fresh_registry.url, timeout=5.0))
    try:
        for page_size in (1, 2, 3, 4, 1000):
            sweep = _sweep_of_gone_namespaces(client, page_size, lambda namespace: None, dry_run=True)
            result = await sweep.run()
            assert (result.candidates, result.repositories_seen) == (("o1", "o2"), 5), page_size
    finally:
        await client.close()
