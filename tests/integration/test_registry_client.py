"""RegistryClient against the real registry (CNCF distribution 2.8, ``docker-registry``)."""

from __future__ import annotations

import base64
import itertools
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent
from twisted.protocols import portforward
from twisted.web import server

from payloadtags.api.health import SharedCheck
from payloadtags.cleanup import Cascade
from payloadtags.registry import (
    DELETE_NONCE_ANNOTATION,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryAuthFailed,
    RegistryClient,
    RegistryDeleteDisabled,
    RegistryInvalidName,
    RegistryNotFound,
    RegistryProtocolError,
    RegistryReadOnly,
    RegistrySchema1Disabled,
    RegistryTimeout,
    RegistryUnavailable,
)
from payloadtags.registry.auth import basic_authorization
from payloadtags.registry.content import MAX_JSON_DEPTH
from payloadtags.registry.schema1 import SIGNED_SCHEMA1
from tests.support import images
from tests.support.faultproxy import DROPPED_LATE, FaultProxy
from tests.support.logcapture import collected_logs
from tests.support.registry_server import RegistryServer, TokenServer, free_port, make_tls_files
from tests.support.scripted_http import serving
from tests.support.stallrelay import StallRelay

pytestmark = pytest.mark.registry

MakeClient = Callable[..., RegistryClient]


# --- reading ----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ping(registry_client: RegistryClient) -> None:
    await registry_client.ping()


@pytest_twisted.ensureDeferred
async def test_not_listening_is_unavailable(make_client: MakeClient) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = make_client(url)
    with pytest.raises(RegistryUnavailable) as caught:
        await client.ping()
    assert url in caught.value.message
    assert caught.value.retry_after > 0
    with pytest.raises(RegistryUnavailable):
        await client.tags("some/repo")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for connection in accepted:
        connection.close()
    listener.close()


@pytest_twisted.ensureDeferred
async def test_silent_registry_times_out(make_client: MakeClient, silent_server: str) -> None:
    client = make_client(silent_server, timeout=0.3)
    with pytest.raises(RegistryTimeout) as caught:
        await client.manifest("some/repo", "latest")
    assert silent_server in caught.value.message


@pytest_twisted.ensureDeferred
async def test_an_answer_in_time_is_not_lost_to_its_deadline_due_when_the_reactor_resumes(
    reactor: Any, registry: RegistryServer, make_client: MakeClient, repo: str
) -> None:
    """The registry answers at once, but the server's reactor is busy (a loaded machine does not run
    it) from just after the request left until past the request's deadline: when it resumes, the
    answer is in its socket and the deadline is due. The answer came in time and is taken; the
    deadline gives the reactor one look at its sockets before it cuts."""
    digest = images.push_oci_image(registry, repo, "v1")
    timeout = 0.5
    with StallRelay(registry.url) as relay:
        client = make_client(relay.url, timeout=timeout)
        assert await client.tags(repo) == ("v1",)
        relay.stall_next(reactor, timeout)
        assert await client.tags(repo) == ("v1",)
        relay.stall_next(reactor, timeout)
        assert (await client.manifest(repo, "v1")).digest == digest
        assert [method for method, _ in relay.stalled] == ["GET", "GET"]


@pytest_twisted.ensureDeferred
async def test_an_answer_in_time_longer_than_one_read_is_not_lost_to_its_deadline_either(
    reactor: Any, registry: RegistryServer, make_client: MakeClient, repo: str
) -> None:
    """As above, with a tags list of about 85 KiB: the reactor reads at most 64 KiB of a socket a turn,
    so the whole answer, waiting in the socket when the reactor resumes, takes more than the one look
    to read. The deadline reads on while each turn brings more of it."""
    images.push_oci_image(registry, repo, "v1")
    fetched = images.get_manifest(registry, repo, "v1")
    assert fetched is not None
    session = images.Session(registry)
    tags = {"v1"} | {f"t{i:03d}-" + "x" * 115 for i in range(700)}
    for tag in sorted(tags - {"v1"}):
        images.push_manifest(session, repo, tag, fetched.content, fetched.media_type)
    timeout = 0.5
    with StallRelay(registry.url) as relay:
        client = make_client(relay.url, timeout=timeout)
        assert set(await client.tags(repo)) == tags
        relay.stall_next(reactor, timeout)
        assert set(await client.tags(repo)) == tags
        assert [method for method, _ in relay.stalled] == ["GET"]


@pytest_twisted.ensureDeferred
async def test_the_readiness_check_does_not_give_up_a_ping_answered_in_time(
    reactor: Any, registry: RegistryServer, make_client: MakeClient
) -> None:
    """As above, for the readiness check's ping (server.py's SharedCheck): the check's give-up timer
    started before the ping's deadline, so after the stall it is due first, in the same turn. It gives
    the ping's deadline its look at the socket before it gives the ping up."""
    timeout = 0.5
    with StallRelay(registry.url) as relay:
        client = make_client(relay.url, timeout=timeout)
        check = SharedCheck(client.ping, time.monotonic, 0.0, timeout, reactor)
        await check()
        relay.stall_next(reactor, timeout)
        await check()
        assert [method for method, _ in relay.stalled] == ["GET"]


@pytest_twisted.ensureDeferred
async def test_tags_are_sorted(registry: RegistryServer, registry_client: RegistryClient, repo: str) -> None:
    images.push_oci_image(registry, repo, "v1")
    wanted = ["v1", "b", "2", "c", "10", "a", "latest", "1.0.0", "Z"]
    for tag in wanted[1:]:
        images.tag_manifest(registry, repo, "v1", tag)
    assert await registry_client.tags(repo) == tuple(sorted(wanted))


@pytest_twisted.ensureDeferred
async def test_tags_of_unknown_repository_are_empty(registry_client: RegistryClient, repo: str) -> None:
    assert await registry_client.tags(repo) == ()


@pytest_twisted.ensureDeferred
async def test_tags_of_emptied_repository_are_empty(
    registry: RegistryServer, registry_client: RegistryClient, repo: str
) -> None:
    digest = images.push_oci_image(registry, repo, "only")
    assert images.delete_manifest(registry, repo, digest) == 202
    raw = images.Session(registry).request("GET", f"/v2/{repo}/tags/list")
    assert json.loads(raw.body)["tags"] is None  # what 2.8 answers, and why tags() must cope
    assert repo in images.catalog(registry)
    assert await registry_client.tags(repo) == ()


@pytest_twisted.ensureDeferred
async def test_invalid_names_never_reach_the_registry(registry_client: RegistryClient) -> None:
    for call in (
        registry_client.tags("../etc"),
        registry_client.manifest("a/b", "bad tag"),
        registry_client.manifest("a/b", "sha256:xyz"),
        registry_client.blob("A/B", "sha256:" + "0" * 64),
        registry_client.delete_tag("a/b", "-x"),
    ):
        with pytest.raises(RegistryInvalidName):
            await call


@pytest_twisted.ensureDeferred
async def test_oci_image_manifest_and_config(
    registry: RegistryServer, registry_client: RegistryClient, repo: str
) -> None:
    digest = images.push_oci_image(registry, repo, "v1", labels={"app": "demo"})
    manifest = await registry_client.manifest(repo, "v1")
    assert manifest.digest == digest
    assert manifest.media_type == OCI_MANIFEST
    assert images.sha256(manifest.content) == digest
    config_descriptor = manifest.json()["config"]
    config = await registry_client.blob(repo, config_descriptor["digest"])
    assert json.loads(config)["config"]["Labels"] == {"app": "demo"}
    by_digest = await registry_client.manifest(repo, digest)
    assert by_digest == manifest
    assert await registry_client.resolve(repo, "v1") == digest


@pytest_twisted.ensureDeferred
async def test_docker_v2_digest_is_the_pushed_one(
    registry: RegistryServer, registry_client: RegistryClient, repo: str
) -> None:
    digest = images.push_docker_image(registry, repo, "v1")
    manifest = await registry_client.manifest(repo, "v1")
    # Without the Docker v2 Accept type, 2.8 would convert to schema1 and a different digest.
    assert manifest.digest == digest
    assert manifest.media_type == DOCKER_MANIFEST
    stored = images.get_manifest(registry, repo, "v1")
    assert stored is not None
    assert manifest.content == stored.content


@pytest_twisted.ensureDeferred
async def test_index_and_manifest_list(
    registry: RegistryServer, registry_client: RegistryClient, repo: str
) -> None:
    index = images.push_oci_index(registry, repo, "index")
    manifest_list = images.push_docker_manifest_list(registry, repo, "list")
    got_index = await registry_client.manifest(repo, "index")
    got_list = await registry_client.manifest(repo, "list")
    assert (got_index.digest, got_index.media_type, got_index.is_index) == (index, OCI_INDEX, True)
    assert (got_list.digest, got_list.media_type) == (manifest_list, DOCKER_MANIFEST_LIST)
    child = got_index.json()["manifests"][0]["digest"]
    assert (await registry_client.manifest(repo, child)).media_type == OCI_MANIFEST


@pytest_twisted.ensureDeferred
async def test_artifacts(registry: RegistryServer, registry_client: RegistryClient, repo: str) -> None:
    thing = images.push_artifact(registry, repo, "thing")
    sbom = images.push_artifact(
        registry,
        repo,
        "sbom",
        config_media_type=images.OCI_EMPTY,
        artifact_type="application/vnd.example.sbom.v1+json",
    )
    got_thing = await registry_client.manifest(repo, "thing")
    got_sbom = await registry_client.manifest(repo, "sbom")
    assert got_thing.digest == thing
    assert got_thing.json()["config"]["mediaType"] == "application/vnd.example.thing.v1+json"
    assert got_sbom.digest == sbom
    assert got_sbom.json()["artifactType"] == "application/vnd.example.sbom.v1+json"
    assert await registry_client.blob(repo, got_sbom.json()["config"]["digest"]) == b"{}"


@pytest_twisted.ensureDeferred
async def test_missing_things_are_not_found(
    registry: RegistryServer, registry_client: RegistryClient, repo: str
) -> None:
    with pytest.raises(RegistryNotFound) as caught:
        await registry_client.manifest(repo, "v1")
    assert caught.value.code == "MANIFEST_UNKNOWN"  # 2.8 says so even when the repository is unknown
    assert registry.url in caught.value.message
    images.push_oci_image(registry, repo, "v1")
    with pytest.raises(RegistryNotFound) as caught:
        await registry_client.manifest(repo, "nope")
    assert caught.value.code == "MANIFEST_UNKNOWN"
    with pytest.raises(RegistryNotFound) as caught:
        await registry_client.blob(repo, "sha256:" + "1" * 64)
    assert caught.value.code == "BLOB_UNKNOWN"
    with pytest.raises(RegistryNotFound):
        await registry_client.delete_manifest(repo, "sha256:" + "1" * 64)


@pytest_twisted.ensureDeferred
async def test_blob_larger_than_limit(
    registry: RegistryServer, registry_client: RegistryClient, repo: str
) -> None:
    data = bytes(range(256)) * 64
    digest = images.push_blob(registry, repo, data)["digest"]
    assert await registry_client.blob(repo, digest, max_bytes=len(data)) == data
    with pytest.raises(RegistryProtocolError) as caught:
        await registry_client.blob(repo, digest, max_bytes=1000)
    assert "1000 bytes" in caught.value.message
    # The connection that was cut is not reused by mistake.
    assert await registry_client.blob(repo, digest) == data


# --- catalog ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog_registry() -> Iterator[RegistryServer]:
    """A registry of its own, so that the catalog holds exactly what the tests expect."""
    with RegistryServer() as server:
        names = [
            "team/x",
            "team/z/w",
            "team-a/y",
            "team",
            "teamb/q",
            "team.c/d",
            "team_d/e",
            "team/a-b",
            "team/a/b",
            "team0/x",
            "a",
            "team/zz",
        ]
        for name in names:
            images.push_artifact(server, name, "v1")
        yield server


# distribution 2.8 walks its storage depth first: it compares names path component by path component,
# so "/" sorts before every character and a namespace's repositories are contiguous.
PATH_ORDER = [
    "a",
    "team",
    "team/a/b",
    "team/a-b",
    "team/x",
    "team/z/w",
    "team/zz",
    "team-a/y",
    "team.c/d",
    "team0/x",
    "team_d/e",
    "teamb/q",
]


@pytest_twisted.ensureDeferred
async def test_catalog_order_is_path_component_wise(
    catalog_registry: RegistryServer, make_client: MakeClient
) -> None:
    client = make_client(catalog_registry)
    page = await client.catalog()
    assert page.repositories == PATH_ORDER
    assert page.repositories != sorted(PATH_ORDER)  # not plain string order
    assert page.more is False


@pytest_twisted.ensureDeferred
async def test_catalog_paging(catalog_registry: RegistryServer, make_client: MakeClient) -> None:
    client = make_client(catalog_registry)
    seen: list[str] = []
    last = None
    pages = 0
    while True:
        page = await client.catalog(last=last, n=5)
        pages += 1
        seen.extend(page.repositories)
        if not page.more:
            break
        last = page.repositories[-1]
    assert seen == PATH_ORDER
    assert pages == 3  # 2.8 sends a next link only when more names follow: no empty last page
    with pytest.raises(ValueError):
        await client.catalog(n=1001)


@pytest_twisted.ensureDeferred
async def test_catalog_seek_to_namespace(catalog_registry: RegistryServer, make_client: MakeClient) -> None:
    client = make_client(catalog_registry)

    async def namespace(ns: str) -> list[str]:
        # The namespace listing's method: seek to the namespace, stop at the first name outside it.
        page = await client.catalog(last=ns, n=1000)
        return list(itertools.takewhile(lambda name: name.startswith(ns + "/"), page.repositories))

    # "team" is itself a repository here, but last need not name one ("tea", "team/z" do not exist).
    assert await namespace("team") == ["team/a/b", "team/a-b", "team/x", "team/z/w", "team/zz"]
    assert await namespace("team-a") == ["team-a/y"]
    assert await namespace("nothing") == []
    assert (await client.catalog(last="team/z", n=2)).repositories == ["team/z/w", "team/zz"]
    assert (await client.catalog(last="tea", n=1)).repositories == ["team"]


# --- deleting -------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delete_manifest_by_digest(
    registry: RegistryServer, registry_client: RegistryClient, repo: str
) -> None:
    digest = images.push_oci_image(registry, repo, "a")
    images.tag_manifest(registry, repo, "a", "b")
    await registry_client.delete_manifest(repo, digest)
    assert images.list_tags(registry, repo) == []  # every tag on that digest goes with it
    assert images.resolve(registry, repo, digest) is None


@pytest.mark.parametrize("auth", ["none", "token"])
@pytest_twisted.ensureDeferred
async def test_a_delete_whose_kept_connection_closes_unanswered_is_sent_once_and_said_unanswered(
    auth: str, reactor: Any, request: pytest.FixtureRequest, make_client: MakeClient, repo: str
) -> None:
    """The DELETE by digest goes out on a kept connection, which closes without an answer; the
    request reaches the registry later and is carried out then. Twisted's connection pool sent such a
    DELETE once more by itself (a bodiless "idempotent" request on a kept connection), and its answer
    hid that the first was out: nothing noted it as a write that may land late (review latedelete).
    Now it goes once, with an empty body, and the client says it unanswered and notes it. Behind token
    auth too: the DELETE first meets a 401, then goes with its token."""
    server: RegistryServer = request.getfixturevalue("registry" if auth == "none" else "token_registry")
    digest = images.push_oci_image(server, repo, "v1")
    path = f"/v2/{repo}/manifests/{digest}"
    deletes: list[str] = []
    # The DELETE with credentials: the token path's first is refused 401, without them.
    dropped = 1 if auth == "none" else 2

    def decide(method: str, sent: str) -> str | None:
        if method == "DELETE":
            deletes.append(sent)
            return DROPPED_LATE if len(deletes) == dropped else None
        return None

    hold: Deferred[None] = Deferred()
    proxy = FaultProxy(reactor, server.url, decide, hold=hold)
    client = make_client(proxy.url, username=server.username, password=server.password)
    try:
        assert await client.resolve(repo, "v1") == digest  # the connection the DELETE is sent on
        with pytest.raises(RegistryUnavailable) as raised:
            await client.delete_manifest(repo, digest)
        assert raised.value.unanswered
        assert deletes == [path] * dropped
        assert client.late_writes.pending(repo.partition("/")[0]) is not None
        hold.callback(None)
        await proxy.settled()
    finally:
        if not hold.called:
            hold.callback(None)
        await proxy.stop()
    # The one DELETE landed late; none other was sent.
    assert deletes == [path] * dropped
    assert [exchange.status for exchange in proxy.exchanges if exchange.method == "DELETE"][-1] == 202
    assert images.resolve(server, repo, digest) is None


@pytest_twisted.ensureDeferred
async def test_a_delete_probe_whose_kept_connection_closes_unanswered_is_sent_again_by_the_pool(
    reactor: Any, registry: RegistryServer, make_client: MakeClient, repo: str
) -> None:
    """The delete probe (a DELETE of a digest that is no manifest's) keeps the pool's resend: a
    second copy of it changes nothing, and the registry closing a kept connection just as it goes
    out does not fail the delete."""
    digest = images.push_oci_image(registry, repo, "v1")
    images.tag_manifest(registry, repo, "v1", "keep")
    probes: list[str] = []

    def decide(method: str, sent: str) -> str | None:
        if method == "DELETE" and sent.endswith("/manifests/sha256:" + "0" * 64):
            probes.append(sent)
            return DROPPED_LATE if len(probes) == 1 else None
        return None

    hold: Deferred[None] = Deferred()
    proxy = FaultProxy(reactor, registry.url, decide, hold=hold)
    client = make_client(proxy.url)
    try:
        assert await client.resolve(repo, "v1") == digest  # the connection the probe is sent on
        assert await client.delete_tag(repo, "v1") == digest
        assert len(probes) == 2
    finally:
        hold.callback(None)
        await proxy.stop()
    assert images.list_tags(registry, repo) == ["keep"]


@pytest_twisted.ensureDeferred
async def test_a_read_whose_kept_connection_closes_unanswered_is_sent_again_by_the_pool(
    reactor: Any, registry: RegistryServer, make_client: MakeClient, repo: str
) -> None:
    """A read keeps the pool's resend: the registry closing a kept connection as a read goes out (an
    idle connection's end) costs the read nothing. Only DELETEs go with a body to be sent once."""
    images.push_oci_image(registry, repo, "v1")
    reads: list[str] = []

    def decide(method: str, sent: str) -> str | None:
        if method == "GET" and sent.endswith("/tags/list"):
            reads.append(sent)
            return DROPPED_LATE if len(reads) == 2 else None
        return None

    hold: Deferred[None] = Deferred()
    proxy = FaultProxy(reactor, registry.url, decide, hold=hold)
    client = make_client(proxy.url)
    try:
        assert list(await client.tags(repo)) == ["v1"]
        assert list(await client.tags(repo)) == ["v1"]  # on the kept connection, dropped, sent again
        assert len(reads) == 3
    finally:
        hold.callback(None)
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_delete_tag_keeps_sibling_tag_and_manifest(
    registry: RegistryServer, registry_client: RegistryClient, repo: str
) -> None:
    digest = images.push_oci_image(registry, repo, "a")
    images.tag_manifest(registry, repo, "a", "b")
    before = images.get_manifest(registry, repo, "b")
    assert await registry_client.delete_tag(repo, "a") == digest
    assert images.list_tags(registry, repo) == ["b"]
    assert images.get_manifest(registry, repo, "b") == before
    assert images.resolve(registry, repo, "a") is None
    # distribution 2.8 has no delete by tag; the client found out and remembers.
    assert registry_client.supports_delete_by_tag is False


@pytest_twisted.ensureDeferred
async def test_delete_tag_racing_another_delete_does_not_bring_the_tag_back(
    registry: RegistryServer, registry_client: RegistryClient, repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = images.push_oci_image(registry, repo, "a")
    images.tag_manifest(registry, repo, "a", "keep")
    real_delete = registry_client.delete_manifest

    async def someone_else_first(repository: str, unique: str) -> None:
        # Another deleter (a namespace cascade) removes the unique copy, and the tag with it, first.
        assert images.delete_manifest(registry, repository, unique) == 202
        await real_delete(repository, unique)

    monkeypatch.setattr(registry_client, "delete_manifest", someone_else_first)
    assert await registry_client.delete_tag(repo, "a") == digest
    assert images.list_tags(registry, repo) == ["keep"]
    assert images.resolve(registry, repo, "keep") == digest


@pytest.mark.parametrize(
    "push",
    [
        images.push_oci_image,
        images.push_docker_image,
        images.push_oci_index,
        images.push_docker_manifest_list,
        images.push_artifact,
    ],
    ids=["oci", "docker", "oci-index", "docker-list", "artifact"],
)
@pytest_twisted.ensureDeferred
async def test_delete_tag_of_every_manifest_type(
    registry: RegistryServer,
    registry_client: RegistryClient,
    repo: str,
    push: Callable[..., str],
) -> None:
    digest = push(registry, repo, "doomed")
    images.tag_manifest(registry, repo, "doomed", "kept")
    content = images.get_manifest(registry, repo, "kept")
    # Two deletes: the first finds out how, the second uses what it learned.
    images.tag_manifest(registry, repo, "doomed", "doomed-too")
    assert await registry_client.delete_tag(repo, "doomed") == digest
    assert await registry_client.delete_tag(repo, "doomed-too") == digest
    assert images.list_tags(registry, repo) == ["kept"]
    assert images.get_manifest(registry, repo, "kept") == content


@pytest_twisted.ensureDeferred
async def test_signed_schema1_manifest_is_read_and_one_tag_deleted(
    schema1_registry: RegistryServer, make_client: MakeClient, repo: str
) -> None:
    """distribution names a signed schema 1 manifest by the digest of its payload (the signatures
    left out), and serves it signed anew on each read."""
    digest = images.push_signed_schema1(schema1_registry, repo, ["doomed", "doomed-too", "kept"])
    client = make_client(schema1_registry)
    manifest = await client.manifest(repo, "kept")
    assert (manifest.digest, manifest.media_type) == (digest, SIGNED_SCHEMA1)
    assert images.sha256(manifest.content) != digest
    assert (await client.manifest(repo, digest)).digest == digest
    # Two deletes: the first finds out how, the second uses what it learned.
    assert await client.delete_tag(repo, "doomed") == digest
    assert await client.delete_tag(repo, "doomed-too") == digest
    assert await client.tags(repo) == ("kept",)
    assert await client.resolve(repo, "kept") == digest


@pytest_twisted.ensureDeferred
async def test_a_signed_schema1_tag_where_schema1_pushes_are_off_is_left_and_says_why(
    reactor: Any,
    registry: RegistryServer,
    schema1_registry: RegistryServer,
    make_client: MakeClient,
    repo: str,
) -> None:
    """distribution takes schema 1 pushes only with compatibility.schema1.enabled (``registry`` has
    its default, off): deleting one such tag pushes a copy, which it refuses with a bare 500 UNKNOWN.
    No retry can help, and the error says what would."""
    digest = images.push_signed_schema1(schema1_registry, repo, ["doomed", "kept"])
    client = make_client(registry)
    for _ in range(2):  # the first delete learns the method, the second uses it
        with pytest.raises(RegistrySchema1Disabled) as caught:
            await client.delete_tag(repo, "doomed")
        message = caught.value.message
        assert message.startswith(f"registry {registry.url} takes no pushes of Docker schema 1 manifests")
        assert "it can be deleted only with compatibility.schema1.enabled: true" in message
        assert message.endswith(f"; tag {repo}:doomed was left as it was, on {digest}")
    assert await client.tags(repo) == ("doomed", "kept")
    assert await client.resolve(repo, "doomed") == digest
    # A namespace's removal deletes by digest, which pushes nothing: it empties the namespace.
    result = await Cascade(client, reactor).run(repo.partition("/")[0])
    assert (result.tags_deleted, result.errors) == (2, 0)
    assert await client.tags(repo) == ()


@pytest_twisted.ensureDeferred
async def test_a_signed_schema1_manifest_shows_only_what_its_signatures_cover(
    reactor: Any, make_client: MakeClient
) -> None:
    """Its digest covers the payload alone: a member a registry serves between the payload and the
    signatures (here a second fsLayers, which would win in json.loads) is in nothing read from it,
    and the bytes as served stay, for a restore to push back."""
    document, payload, served = images.schema1_with_unsigned_layers("team/app", "v1")
    digest = images.sha256(payload)

    def answer(request: server.Request, path: str) -> bytes:
        if path in ("/v2/team/app/manifests/v1", f"/v2/team/app/manifests/{digest}"):
            request.setHeader("Content-Type", SIGNED_SCHEMA1)
            request.setHeader("Docker-Content-Digest", digest)
            return served
        return b"{}"

    async with serving(reactor, answer) as (url, _):
        client = make_client(url)
        for reference in ("v1", digest):
            manifest = await client.manifest("team/app", reference)
            assert (manifest.digest, manifest.payload, manifest.json()) == (digest, payload, document)
            assert manifest.document == document  # the payload's, as decoded when read
            assert manifest.content == served


@pytest_twisted.ensureDeferred
async def test_a_signed_schema1_payload_nested_too_deeply_is_refused(
    reactor: Any, make_client: MakeClient
) -> None:
    """The payload is what is shown, and its tail comes from a signature's header: held to the same
    depth as a whole manifest, though the manifest as served is shallow."""
    head = b'{"schemaVersion":1,"x":'
    tail = b"[" * 150 + b"]" * 150 + b"}"
    header = {"formatLength": len(head), "formatTail": _b64(tail)}
    served = head + b'0,"signatures":[{"protected":"' + _b64(json.dumps(header).encode()).encode() + b'"}]}'

    def answer(request: server.Request, path: str) -> bytes:
        request.setHeader("Content-Type", SIGNED_SCHEMA1)
        request.setHeader("Docker-Content-Digest", images.sha256(head + tail))
        return served

    async with serving(reactor, answer) as (url, _):
        with pytest.raises(RegistryProtocolError) as caught:
            await make_client(url).manifest("team/app", "v1")
    assert caught.value.message == (
        f"registry {url}: manifest team/app:v1 is JSON nested more than {MAX_JSON_DEPTH} levels deep"
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest_twisted.ensureDeferred
async def test_delete_tag_of_index_keeps_tagged_child(
    registry: RegistryServer, registry_client: RegistryClient, repo: str
) -> None:
    amd64 = images.push_oci_image(registry, repo, "amd64", architecture="amd64")
    arm64 = images.push_oci_image(registry, repo, None, architecture="arm64")
    index = images.push_oci_index(registry, repo, "multi", children=[amd64, arm64])
    assert await registry_client.delete_tag(repo, "multi") == index
    assert images.list_tags(registry, repo) == ["amd64"]
    assert images.resolve(registry, repo, amd64) == amd64
    assert images.resolve(registry, repo, arm64) == arm64
    assert images.resolve(registry, repo, index) == index  # untagged now; garbage collection's business


@pytest_twisted.ensureDeferred
async def test_delete_tag_of_child_keeps_index(
    registry: RegistryServer, registry_client: RegistryClient, repo: str
) -> None:
    child = images.push_oci_image(registry, repo, "child")
    index = images.push_oci_index(registry, repo, "multi", children=[child])
    assert await registry_client.delete_tag(repo, "child") == child
    assert images.list_tags(registry, repo) == ["multi"]
    assert images.resolve(registry, repo, child) == child  # the index still needs it
    assert images.resolve(registry, repo, "multi") == index


@pytest_twisted.ensureDeferred
async def test_delete_missing_tag_is_not_found(
    registry: RegistryServer, registry_client: RegistryClient, repo: str
) -> None:
    with pytest.raises(RegistryNotFound):
        await registry_client.delete_tag(repo, "ghost")
    images.push_oci_image(registry, repo, "real")
    with pytest.raises(RegistryNotFound) as caught:
        await registry_client.delete_tag(repo, "ghost")
    assert caught.value.code == "MANIFEST_UNKNOWN"
    assert images.list_tags(registry, repo) == ["real"]


def _snapshot(registry: RegistryServer, repo: str) -> dict[str, images.Fetched | None]:
    return {tag: images.get_manifest(registry, repo, tag) for tag in images.list_tags(registry, repo)}


@pytest_twisted.ensureDeferred
async def test_delete_tag_on_read_only_registry(
    registry: RegistryServer,
    readonly_registry: RegistryServer,
    make_client: MakeClient,
    repo: str,
) -> None:
    images.push_oci_image(registry, repo, "a")
    images.tag_manifest(registry, repo, "a", "b")
    before = _snapshot(registry, repo)
    client = make_client(readonly_registry)
    for attempt in range(2):  # the first delete learns the method, the second uses it
        with pytest.raises(RegistryReadOnly) as caught:
            await client.delete_tag(repo, "a")
        assert caught.value.retry_after > 0
        assert readonly_registry.url in caught.value.message
        assert _snapshot(registry, repo) == before, attempt
    with pytest.raises(RegistryReadOnly):
        await client.delete_manifest(repo, before["a"].digest)  # type: ignore[union-attr]
    # Reads keep working.
    assert await client.tags(repo) == ("a", "b")


@pytest_twisted.ensureDeferred
async def test_delete_tag_with_deletes_disabled_changes_nothing(
    registry: RegistryServer,
    nodelete_registry: RegistryServer,
    make_client: MakeClient,
    repo: str,
) -> None:
    images.push_docker_image(registry, repo, "a")
    images.tag_manifest(registry, repo, "a", "b")
    before = _snapshot(registry, repo)
    client = make_client(nodelete_registry)
    with pytest.raises(RegistryDeleteDisabled) as caught:
        await client.delete_tag(repo, "a")
    assert nodelete_registry.url in caught.value.message
    # Found out before anything was written: the tag still has its exact bytes, no nonce.
    assert _snapshot(registry, repo) == before
    assert DELETE_NONCE_ANNOTATION.encode() not in before["a"].content  # type: ignore[union-attr]
    with pytest.raises(RegistryDeleteDisabled):
        await client.delete_manifest(repo, before["a"].digest)  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_delete_tag_after_learning_then_deletes_disabled(
    registry: RegistryServer,
    nodelete_registry: RegistryServer,
    make_client: MakeClient,
    repo: str,
) -> None:
    """A client that already knows 2.8 lacks delete-by-tag still checks before it writes."""
    images.push_oci_image(registry, repo, "a")
    images.tag_manifest(registry, repo, "a", "b")
    client = make_client(nodelete_registry)
    client._delete_by_tag = False  # as if an earlier delete had taught it
    before = _snapshot(registry, repo)
    with pytest.raises(RegistryDeleteDisabled):
        await client.delete_tag(repo, "a")
    assert _snapshot(registry, repo) == before


# --- authentication and TLS ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_basic_auth(htpasswd_registry: RegistryServer, make_client: MakeClient, repo: str) -> None:
    digest = images.push_oci_image(htpasswd_registry, repo, "v1")
    images.tag_manifest(htpasswd_registry, repo, "v1", "v2")
    client = make_client(htpasswd_registry)
    await client.ping()
    assert await client.tags(repo) == ("v1", "v2")
    assert (await client.manifest(repo, "v1")).digest == digest
    assert await client.delete_tag(repo, "v1") == digest
    assert images.list_tags(htpasswd_registry, repo) == ["v2"]


@pytest_twisted.ensureDeferred
async def test_basic_auth_rejected(htpasswd_registry: RegistryServer, make_client: MakeClient) -> None:
    wrong = make_client(htpasswd_registry, password="wrong-password")
    with pytest.raises(RegistryAuthFailed) as caught:
        await wrong.ping()
    assert "wrong-password" not in caught.value.message
    assert htpasswd_registry.url in caught.value.message
    anonymous = make_client(htpasswd_registry.url)
    with pytest.raises(RegistryAuthFailed):
        await anonymous.tags("a/b")


@pytest_twisted.ensureDeferred
async def test_token_auth(
    token_registry: RegistryServer,
    token_server: TokenServer,
    make_client: MakeClient,
    repo: str,
) -> None:
    digest = images.push_oci_image(token_registry, repo, "v1")
    images.tag_manifest(token_registry, repo, "v1", "v2")
    client = make_client(token_registry)
    token_server.requests.clear()
    await client.ping()
    assert await client.tags(repo) == ("v1", "v2")
    assert (await client.manifest(repo, "v1")).digest == digest
    assert await client.delete_tag(repo, "v1") == digest
    assert images.list_tags(token_registry, repo) == ["v2"]
    assert (await client.catalog()).repositories
    asked = [tuple(_scope(scope) for scope in request.scopes) for request in token_server.requests]
    assert {request.user for request in token_server.requests} == {"robot"}
    assert {request.service for request in token_server.requests} == {token_server.service}
    # One token per scope, reused while it lives.
    count = len(token_server.requests)
    assert await client.tags(repo) == ("v2",)
    await client.manifest(repo, "v2")
    assert len(token_server.requests) == count
    assert (_scope(f"repository:{repo}:pull"),) in asked
    assert (_scope(f"repository:{repo}:delete"),) in asked
    assert (_scope(f"repository:{repo}:pull,push"),) in asked
    assert (_scope("registry:catalog:*"),) in asked


@pytest_twisted.ensureDeferred
async def test_a_redirect_target_asking_for_credentials_never_gets_them(
    reactor: Any, make_client: MakeClient
) -> None:
    """A blob download redirected to another host (a storage backend) that answers 401 with a
    token challenge: neither that host nor the realm it names ever sees the registry's credentials."""
    secret = basic_authorization("robot", "TOP-SECRET")
    storage_url: list[str] = []

    def storage_answer(request: server.Request, path: str) -> bytes:
        if path.startswith("/token"):
            return b'{"token": "stolen"}'
        request.setResponseCode(401)
        request.setHeader("WWW-Authenticate", f'Bearer realm="{storage_url[0]}/token",service="storage"')
        return b""

    def registry_answer(request: server.Request, path: str) -> bytes:
        if request.getHeader("authorization") != secret:
            request.setResponseCode(401)
            request.setHeader("WWW-Authenticate", 'Basic realm="registry"')
            return b'{"errors": [{"code": "UNAUTHORIZED"}]}'
        request.setResponseCode(307)
        request.setHeader("Location", f"{storage_url[0]}/bucket/blob?signature=x")
        return b""

    digest = "sha256:" + "a" * 64
    async with (
        serving(reactor, storage_answer) as (url, storage),
        serving(reactor, registry_answer) as (
            registry_url,
            registry,
        ),
    ):
        storage_url.append(url)
        client = make_client(registry_url, username="robot", password="TOP-SECRET")
        with pytest.raises(RegistryProtocolError) as caught:
            await client.blob("team/app", digest)
    assert caught.value.message == (
        f"registry {registry_url}: blob team/app@{digest}: the redirect target {url} "
        "refused access (HTTP 401); check the registry's storage configuration"
    )
    assert storage.seen == [("GET", "/bucket/blob?signature=x", None)]
    assert [authorization for _, _, authorization in registry.seen] == [None, secret]


@pytest.mark.parametrize(
    ("location", "said"),
    [
        # review r4reg F1: Agent refused each with a ValueError naming the whole Location (its presigned
        # query, its password): a critical traceback on every read, and the same in the 503's message.
        (
            b"http://storage.test/a b?X-Amz-Signature=SECRET",
            "to http://storage.test (a space or control character in the URL)",
        ),
        (
            b"http://storage.test/a?X-Amz-Signature=SECRET\x7f",
            "to http://storage.test (a space or control character in the URL)",
        ),
        (b"http://robot:SECRET@storage.test/a", "to http://storage.test (credentials in the URL)"),
        (b"http://storage..test/a?X-Amz-Signature=SECRET", "to http://storage..test (not a host name)"),
        (b"http://storage_test/a?X-Amz-Signature=SECRET", "to http://storage_test (not a host name)"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_redirect_the_agent_would_refuse_is_a_plain_503_naming_only_its_origin(
    reactor: Any, make_client: MakeClient, location: bytes, said: str
) -> None:
    """On the real Agent, which the unit tests' fake does not stand for: it refuses a URI that its
    own checks (a byte outside 0x21-0x7e, a host name IDNA refuses) do not take."""

    def registry_answer(request: server.Request, path: str) -> bytes:
        request.setResponseCode(307)
        request.setHeader(b"Location", location)
        return b""

    digest = "sha256:" + "a" * 64
    async with serving(reactor, registry_answer) as (registry_url, _):
        client = make_client(registry_url)
        with collected_logs() as events:
            for _ in range(2):
                with pytest.raises(RegistryProtocolError) as caught:
                    await client.blob("team/app", digest)
                assert caught.value.message == (
                    f"registry {registry_url} redirected GET /v2/team/app/blobs/{digest} {said}, which this "
                    "client cannot follow; check where the registry's storage redirects reads"
                )
    assert not [event for event in events if "SECRET" in formatEvent(event)]
    ours = [event for event in events if event.get("log_namespace", "").startswith("payloadtags")]
    assert [(event["log_level"].name, formatEvent(event)) for event in ours] == [
        ("warn", f"registry {registry_url} redirected a read {said}, which this client cannot follow"),
    ]


def _scope(scope: str) -> tuple[str, str, frozenset[str]]:
    """A token scope as (type, name, actions). The client asks for the scope of the registry's
    challenge, and distribution 2.8 lists its actions in Go map order: "pull,push" or "push,pull"."""
    rtype, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")  # a name may hold ':' (a registry host with its port)
    return rtype, name, frozenset(actions.split(","))


@pytest_twisted.ensureDeferred
async def test_token_auth_rejected(token_registry: RegistryServer, make_client: MakeClient) -> None:
    wrong = make_client(token_registry, password="nope")
    with pytest.raises(RegistryAuthFailed) as caught:
        await wrong.ping()
    assert "nope" not in caught.value.message
    anonymous = make_client(token_registry.url)
    with pytest.raises(RegistryAuthFailed):
        await anonymous.tags("a/b")


@pytest_twisted.ensureDeferred
async def test_https_with_ca_file(tls_registry: RegistryServer, make_client: MakeClient, repo: str) -> None:
    digest = images.push_oci_image(tls_registry, repo, "v1")
    client = make_client(tls_registry)
    await client.ping()
    assert (await client.manifest(repo, "v1")).digest == digest


@pytest_twisted.ensureDeferred
async def test_https_untrusted_is_unavailable(tls_registry: RegistryServer, make_client: MakeClient) -> None:
    client = make_client(tls_registry.url)  # no CA file: the test CA is not trusted
    with pytest.raises(RegistryUnavailable) as caught:
        await client.ping()
    assert "TLS" in caught.value.message or "certificate" in caught.value.message


@pytest.fixture(scope="module")
def localhost_only_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """HTTPS with a certificate for the DNS name localhost only, not for the address 127.0.0.1."""
    tls = make_tls_files(tmp_path_factory.mktemp("tls-localhost"), hostnames=("localhost",))
    with RegistryServer(tls=tls) as server:
        yield server


@pytest_twisted.ensureDeferred
async def test_https_checks_the_host_name(
    localhost_only_registry: RegistryServer, make_client: MakeClient
) -> None:
    with pytest.raises(RegistryUnavailable) as caught:
        await make_client(localhost_only_registry).ping()
    assert "does not match 127.0.0.1" in caught.value.message
    by_name = localhost_only_registry.url.replace("127.0.0.1", "localhost")
    await make_client(by_name, ca_file=localhost_only_registry.ca_file).ping()


class _CountingForwarder(portforward.ProxyFactory):
    """A TCP forwarder to the registry that counts its connections and keeps what clients sent."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.connections = 0
        self.sent = bytearray()

    def buildProtocol(self, addr: Any) -> portforward.ProxyServer:
        self.connections += 1
        protocol = super().buildProtocol(addr)
        assert isinstance(protocol, portforward.ProxyServer)
        received = protocol.dataReceived

        def keep(data: bytes) -> None:
            self.sent += data
            received(data)

        protocol.dataReceived = keep  # type: ignore[method-assign]
        return protocol


@pytest_twisted.ensureDeferred
async def test_reads_and_other_requests_share_one_kept_alive_connection(
    reactor: Any, registry: RegistryServer, make_client: MakeClient, repo: str
) -> None:
    """Tag lists and catalog pages go out by path (not through Agent's URL handling), on the same
    pooled connections as manifests and blobs, with the Host header Agent would send."""
    digest = images.push_oci_image(registry, repo, "v1")
    images.tag_manifest(registry, repo, "v1", "v2")
    target = urllib.parse.urlsplit(registry.url)
    assert target.hostname is not None and target.port is not None
    forwarder = _CountingForwarder(target.hostname, target.port)
    port = reactor.listenTCP(0, forwarder, interface="127.0.0.1")
    try:
        client = make_client(f"http://127.0.0.1:{port.getHost().port}", max_connections=1)
        for _ in range(3):
            assert await client.tags(repo) == ("v1", "v2")
            manifest = await client.manifest(repo, "v1")
            assert manifest.digest == digest
            config = json.loads(manifest.content)["config"]["digest"]
            assert images.sha256(await client.blob(repo, config)) == config
            assert repo in (await client.catalog(n=1000)).repositories
        assert forwarder.connections == 1
        requests = [line for line in bytes(forwarder.sent).split(b"\r\n") if line.startswith(b"GET ")]
        assert len(requests) == 12
        host = f"host: 127.0.0.1:{port.getHost().port}".encode()
        assert bytes(forwarder.sent).lower().count(host) == 12
    finally:
        await port.stopListening()
