"""Watches end to end: the real kubectl (`get -w`, `get -A -w`, `wait --for=delete`) and the Python
``kubernetes`` package's ``watch.Watch()`` loop, against the real registry, with a push and a delete
made while they watch. Changes made in the registry are found by the scope's periodic reread (0.3 s
here); a delete made through payloadtags is found at once, whatever the period."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import pytest_twisted
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from twisted.internet import reactor as global_reactor
from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from payloadtags.limits import WatchLimits
from payloadtags.names import encode_name
from tests.e2e.test_kubectl_versions import binary
from tests.support import images
from tests.support.harness import ServerUnderTest
from tests.support.kubeapi import eventually
from tests.support.kubectl import Kubectl

pytestmark = [pytest.mark.kubectl, pytest.mark.registry]

GROUP = "payload-registry.deckhouse.io"


@attrs.define(eq=False)
class Running(ProcessProtocol):
    """A kubectl that keeps running (a watch): its stdout a line at a time, its exit code when done."""

    lines: DeferredQueue[str] = attrs.field(factory=DeferredQueue)
    err: list[bytes] = attrs.field(factory=list)
    exited: Deferred[int] = attrs.field(factory=Deferred)
    _partial: bytes = b""

    def outReceived(self, data: bytes) -> None:
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        for line in complete:
            self.lines.put(line.decode())

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = value.exitCode if isinstance(value, ProcessDone | ProcessTerminated) else -1
        self.exited.callback(code if code is not None else -1)

    async def line(self, within: float = 15.0) -> str:
        waiting = self.lines.get()
        waiting.addTimeout(within, global_reactor)
        return await waiting

    async def until(self, predicate: Callable[[str], bool], within: float = 15.0) -> str:
        while True:
            line = await self.line(within)
            if predicate(line):
                return line

    def stop(self) -> None:
        if not self.exited.called and self.transport is not None:
            self.transport.signalProcess(signal.SIGKILL)

    @property
    def stderr(self) -> str:
        return b"".join(self.err).decode()


def start_kubectl(kubectl: Kubectl, *args: str) -> Running:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(kubectl.cache_dir),
        "KUBECONFIG": str(kubectl.kubeconfig),
    }
    protocol = Running()
    binary = kubectl.binary
    global_reactor.spawnProcess(
        protocol, binary, [binary, "--cache-dir", str(kubectl.cache_dir), *args], env=env
    )
    return protocol


@pytest_twisted.async_yield_fixture
async def watched(make_server: Any, registry: Any) -> Any:
    yield await make_server(registry, watch=WatchLimits(resync_period=0.3))


@pytest.fixture
def kubectl(watched: ServerUnderTest, kubectl_for: Callable[..., Kubectl]) -> Kubectl:
    return kubectl_for(watched)


def delete_tag(registry: Any, repository: str, digest: str) -> None:
    assert images.delete_manifest(registry, repository, digest) == 202


@pytest_twisted.ensureDeferred
async def test_kubectl_get_w_prints_a_pushed_tag_and_a_deleted_one(kubectl, registry, repo):
    namespace, path = repo.split("/", 1)
    old = images.push_oci_image(registry, repo, "old")
    running = start_kubectl(kubectl, "get", "prt", "-n", namespace, "-w", "--output-watch-events")
    try:
        assert (await running.line()).split() == ["EVENT", "NAME", "REPOSITORY", "TAG"]
        assert (await running.line()).split() == ["ADDED", encode_name(path, "old"), path, "old"]
        images.push_oci_image(registry, repo, "new", seed="new")
        assert (await running.line()).split() == ["ADDED", encode_name(path, "new"), path, "new"]
        delete_tag(registry, repo, old)  # straight in the registry, not through payloadtags
        assert (await running.line()).split() == ["DELETED", encode_name(path, "old"), path, "old"]
        assert not running.exited.called, running.stderr
    finally:
        running.stop()
    await running.exited
    assert "error" not in running.stderr.lower(), running.stderr


@pytest.mark.parametrize("version", ["1.27", "1.32"])
@pytest.mark.parametrize("events", [False, True])
@pytest_twisted.ensureDeferred
async def test_kubectl_get_w_prints_the_same_table_with_columns_in_the_first_event_only(
    watched, registry, repo, tmp_path, pki, version, events
):
    """A Table watch's columns come in its first event only (review r6watch L1), as kube-apiserver
    sends them: kubectl 1.27 (the oldest beside gcloud) and 1.32 print one header and every row, a
    row pushed and one deleted while they watch, in the columns of the first event."""
    namespace, path = repo.split("/", 1)
    old = images.push_oci_image(registry, repo, "old")
    images.push_oci_image(registry, repo, "kept", seed="kept")
    kubectl = Kubectl.write(
        tmp_path / f"kube-{version}", watched.url, pki.server_ca.cert_file, pki.admin, binary=binary(version)
    )
    flags = ["--output-watch-events"] if events else []
    running = start_kubectl(kubectl, "get", "prt", "-n", namespace, "-w", *flags)
    try:
        lead = ["ADDED"] if events else []
        header = ["EVENT"] if events else []
        assert (await running.line()).split() == [*header, "NAME", "REPOSITORY", "TAG"]
        rows = [(await running.line()).split() for _ in range(2)]
        assert sorted(rows) == sorted([[*lead, encode_name(path, t), path, t] for t in ("kept", "old")])
        images.push_oci_image(registry, repo, "new", seed="new")
        assert (await running.line()).split() == [*lead, encode_name(path, "new"), path, "new"]
        delete_tag(registry, repo, old)
        gone = ["DELETED"] if events else []
        assert (await running.line()).split() == [*gone, encode_name(path, "old"), path, "old"]
        assert not running.exited.called, running.stderr
    finally:
        running.stop()
    await running.exited
    assert running.lines.pending == [] and "error" not in running.stderr.lower(), running.stderr


@pytest_twisted.ensureDeferred
async def test_two_kubectl_get_w_started_together_print_each_tag_once(kubectl, registry, repo):
    """Two `kubectl get -w` of a namespace nobody watched, started together: their lists may share one
    record, and before the fix a watch from it was sent every tag its list had shown, so that each
    kubectl printed the namespace twice (review r1user L1). Each prints its header and rows, then the
    tag pushed since, and nothing else."""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "old")
    images.push_oci_image(registry, repo, "kept", seed="kept")
    args = ("get", "prt", "-n", namespace, "-w", "--output-watch-events")
    both = [start_kubectl(kubectl, *args), start_kubectl(kubectl, *args)]
    try:
        for running in both:
            assert (await running.line()).split() == ["EVENT", "NAME", "REPOSITORY", "TAG"]
            rows = [(await running.line()).split() for _ in range(2)]
            assert sorted(rows) == sorted(
                ["ADDED", encode_name(path, tag), path, tag] for tag in ("kept", "old")
            )
        images.push_oci_image(registry, repo, "new", seed="new")
        for running in both:
            # Before the fix: ADDED kept and ADDED old again first.
            assert (await running.line()).split() == ["ADDED", encode_name(path, "new"), path, "new"]
            assert not running.exited.called, running.stderr
    finally:
        for running in both:
            running.stop()
    for running in both:
        await running.exited
        assert running.lines.pending == [] and "error" not in running.stderr.lower(), running.stderr


@pytest_twisted.ensureDeferred
async def test_kubectl_get_w_after_a_delete_is_not_told_of_that_delete(
    make_server, registry, repo, kubectl_for
):
    """The newcomer's flow (review newcomer F2): `kubectl get prt`, `kubectl delete prt X`, then
    `kubectl get prt -w`, nobody watching the namespace. The second list took the first one's
    resourceVersion and shared its record, which says a read saw X: its watch was sent `DELETED X`,
    a tag its list never showed (kube-apiserver never sends a watch from a list's resourceVersion
    an event from before that list). The delete moves the sequence on: the second list has a
    record of its own. The next line is the delete made while it watches (the resync period, an
    hour, finds nothing: only a delete's own reread does)."""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    images.push_oci_image(registry, repo, "v2", seed="other")
    server = await make_server(registry, watch=WatchLimits(resync_period=3600))
    kubectl = kubectl_for(server)
    hub = server.running.api.watch_hub
    gone, kept = encode_name(path, "v1"), encode_name(path, "v2")
    first = await kubectl("get", "prt", "-n", namespace, "-o", "name")
    assert first.out.split() == [f"payloadrepositorytag.{GROUP}/{name}" for name in (gone, kept)], first.err
    deleted = await kubectl("delete", "prt", "-n", namespace, gone)
    assert deleted.code == 0, deleted.err
    running = start_kubectl(kubectl, "get", "prt", "-n", namespace, "-w", "--output-watch-events")
    try:
        assert (await running.line()).split() == ["EVENT", "NAME", "REPOSITORY", "TAG"]
        assert (await running.line()).split() == ["ADDED", kept, path, "v2"]
        await eventually(lambda: len(hub.watchers) == 1 or running.exited.called, within=15)
        assert not running.exited.called, running.stderr
        assert (await kubectl("delete", "prt", "-n", namespace, kept)).code == 0
        # Before the fix: DELETED v1 here, right after the list.
        assert (await running.line()).split() == ["DELETED", kept, path, "v2"]
        assert not running.exited.called, running.stderr
    finally:
        running.stop()
    await running.exited
    assert running.lines.pending == [] and "error" not in running.stderr.lower(), running.stderr


@pytest_twisted.ensureDeferred
async def test_kubectl_get_all_namespaces_w(kubectl, registry, repo):
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "one")
    running = start_kubectl(kubectl, "get", "prt", "-A", "-w")
    try:
        assert (await running.line()).split()[:2] == ["NAMESPACE", "NAME"]
        await running.until(lambda line: line.split()[:2] == [namespace, encode_name(path, "one")])
        images.push_oci_image(registry, f"{namespace}-other/app", "two", seed="two")
        row = await running.until(lambda line: line.split()[0] == f"{namespace}-other")
        assert row.split() == [f"{namespace}-other", encode_name("app", "two"), "app", "two"]
    finally:
        running.stop()
    await running.exited
    assert "error" not in running.stderr.lower(), running.stderr


@pytest_twisted.ensureDeferred
async def test_kubectl_wait_for_delete_returns_when_the_tag_goes(kubectl, registry, repo):
    namespace, path = repo.split("/", 1)
    digest = images.push_oci_image(registry, repo, "doomed")
    name = encode_name(path, "doomed")
    waiting = start_kubectl(kubectl, "wait", "--for=delete", f"prt/{name}", "-n", namespace, "--timeout=30s")
    # kubectl first GETs the tag, then lists and watches by name: give it time to be watching.
    await task.deferLater(global_reactor, 1.5, lambda: None)
    assert not waiting.exited.called, waiting.stderr
    delete_tag(registry, repo, digest)
    line = await waiting.line(within=20)
    assert line == f"payloadrepositorytag.{GROUP}/{name} condition met"
    assert await waiting.exited == 0
    assert waiting.stderr == ""  # no fallback noise


@pytest_twisted.ensureDeferred
async def test_kubectl_wait_for_delete_returns_when_kubectl_deletes_the_tag(
    make_server, registry, repo, kubectl_for
):
    """A delete through payloadtags ends `kubectl wait --for=delete` at once: the resync period (60 s)
    is longer than the wait's timeout, so only the delete's own reread of the repository can."""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "doomed")
    images.push_oci_image(registry, repo, "kept", seed="kept")
    server = await make_server(registry, watch=WatchLimits(resync_period=60))
    kubectl = kubectl_for(server)
    name = encode_name(path, "doomed")
    waiting = start_kubectl(kubectl, "wait", "--for=delete", f"prt/{name}", "-n", namespace, "--timeout=20s")
    try:
        hub = server.running.api.watch_hub
        await eventually(lambda: len(hub.watchers) == 1 or waiting.exited.called, within=15)
        assert not waiting.exited.called, waiting.stderr
        deleted = await kubectl("delete", "prt", name, "-n", namespace)
        assert deleted.code == 0, deleted.err
        assert await waiting.exited == 0, waiting.stderr
    finally:
        waiting.stop()
    assert await waiting.line() == f"payloadrepositorytag.{GROUP}/{name} condition met"
    assert waiting.stderr == ""
    assert images.list_tags(registry, repo) == ["kept"]


@pytest_twisted.ensureDeferred
async def test_kubectl_wait_for_delete_of_a_tag_pushed_since_the_watched_scope_was_last_read(
    make_server, registry, repo, kubectl_for
):
    """Someone already watches the namespace, so the wait's list takes the scope source's
    resourceVersion; the tag was pushed after the source's last read (no notification, resync 60 s).
    The list showed it, so its delete must reach the wait's watch."""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "kept", seed="kept")
    server = await make_server(registry, watch=WatchLimits(resync_period=60))
    kubectl = kubectl_for(server)
    hub = server.running.api.watch_hub
    standing = start_kubectl(kubectl, "get", "prt", "-n", namespace, "-w")
    waiting = None
    try:
        await eventually(lambda: len(hub.watchers) == 1 or standing.exited.called, within=15)
        assert not standing.exited.called, standing.stderr
        images.push_oci_image(registry, repo, "doomed")
        name = encode_name(path, "doomed")
        waiting = start_kubectl(
            kubectl, "wait", "--for=delete", f"prt/{name}", "-n", namespace, "--timeout=20s"
        )
        await eventually(lambda: len(hub.watchers) == 2 or waiting.exited.called, within=15)
        assert not waiting.exited.called, waiting.stderr
        deleted = await kubectl("delete", "prt", name, "-n", namespace)
        assert deleted.code == 0, deleted.err
        assert await waiting.exited == 0, waiting.stderr
        assert await waiting.line() == f"payloadrepositorytag.{GROUP}/{name} condition met"
    finally:
        if waiting is not None:
            waiting.stop()
        standing.stop()
    await standing.exited
    assert images.list_tags(registry, repo) == ["kept"]


@pytest_twisted.ensureDeferred
async def test_kubectl_get_name_w_of_a_tag_pushed_since_the_watched_scope_was_last_read(
    make_server, registry, repo, kubectl_for
):
    """`kubectl get prt/NAME -w` GETs the tag, then watches by name from resourceVersion "0": the
    scope's snapshot as last read. Someone already watches the namespace, and the tag was pushed
    after the source's last read (no notification, resync an hour): the watch reads the tag's
    repository before it starts, so a delete through the API reaches it as DELETED. The namespace's
    other watch is told of the tag as a change (ADDED), then of its delete."""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "kept", seed="kept")
    server = await make_server(registry, watch=WatchLimits(resync_period=3600))
    kubectl = kubectl_for(server)
    hub = server.running.api.watch_hub
    standing = start_kubectl(kubectl, "get", "prt", "-n", namespace, "-w", "--output-watch-events")
    watching = None
    try:
        assert (await standing.line()).split() == ["EVENT", "NAME", "REPOSITORY", "TAG"]
        assert (await standing.line()).split() == ["ADDED", encode_name(path, "kept"), path, "kept"]
        await eventually(lambda: len(hub.watchers) == 1 or standing.exited.called, within=15)
        assert not standing.exited.called, standing.stderr
        images.push_oci_image(registry, repo, "doomed")  # straight in the registry, unseen
        name = encode_name(path, "doomed")
        watching = start_kubectl(
            kubectl, "get", f"prt/{name}", "-n", namespace, "-w", "--output-watch-events"
        )
        assert (await watching.line()).split() == ["EVENT", "NAME", "REPOSITORY", "TAG"]
        assert (await watching.line()).split() == ["ADDED", name, path, "doomed"]  # its GET
        await eventually(lambda: len(hub.watchers) == 2 or watching.exited.called, within=15)
        assert not watching.exited.called, watching.stderr
        deleted = await kubectl("delete", "prt", name, "-n", namespace)
        assert deleted.code == 0, deleted.err
        assert (await watching.line()).split() == ["DELETED", name, path, "doomed"]
        assert (await standing.line()).split() == ["ADDED", name, path, "doomed"]
        assert (await standing.line()).split() == ["DELETED", name, path, "doomed"]
        assert not watching.exited.called, watching.stderr
    finally:
        if watching is not None:
            watching.stop()
        standing.stop()
    await standing.exited
    assert images.list_tags(registry, repo) == ["kept"]


@pytest_twisted.ensureDeferred
async def test_python_watch_loop_sees_push_and_delete(watched, pki, registry, repo):
    namespace, path = repo.split("/", 1)
    old = images.push_oci_image(registry, repo, "old")
    configuration = k8s.Configuration()
    configuration.host = watched.url
    configuration.ssl_ca_cert = str(pki.server_ca.cert_file)
    configuration.cert_file = str(pki.admin.cert_file)
    configuration.key_file = str(pki.admin.key_file)
    api_client = k8s.ApiClient(configuration)
    custom = k8s.CustomObjectsApi(api_client)
    listed = await deferToThread(
        custom.list_namespaced_custom_object, GROUP, "v1alpha1", namespace, "payloadrepositorytags"
    )
    assert isinstance(listed, dict), listed
    assert [i["spec"]["tag"] for i in listed["items"]] == ["old"]
    seen: list[tuple[str, str]] = []
    cache = {i["metadata"]["name"]: i for i in listed["items"]}

    def informer() -> None:
        watcher = k8s_watch.Watch()
        for event in watcher.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            "v1alpha1",
            namespace,
            "payloadrepositorytags",
            resource_version=listed["metadata"]["resourceVersion"],
            timeout_seconds=20,
        ):
            obj = event["object"]
            seen.append((event["type"], obj["spec"]["tag"]))
            if event["type"] == "DELETED":
                cache.pop(obj["metadata"]["name"], None)
                watcher.stop()
            else:
                cache[obj["metadata"]["name"]] = obj

    loop = deferToThread(informer)
    await task.deferLater(global_reactor, 1.0, lambda: None)
    images.push_oci_image(registry, repo, "new", seed="new")
    await task.deferLater(global_reactor, 1.0, lambda: None)
    delete_tag(registry, repo, old)
    await loop
    await deferToThread(api_client.close)
    assert seen == [("ADDED", "new"), ("DELETED", "old")]
    fresh = await deferToThread(
        custom.list_namespaced_custom_object, GROUP, "v1alpha1", namespace, "payloadrepositorytags"
    )
    assert isinstance(fresh, dict), fresh
    assert (
        sorted(cache) == sorted(i["metadata"]["name"] for i in fresh["items"]) == [encode_name(path, "new")]
    )
