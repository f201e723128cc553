"""The repository index fed by the real registry's notifications (HTTPS to POST /registry/events)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import threads

from payloadtags.api.app import MAX_EVENTS_PER_ENVELOPE
from payloadtags.limits import WatchLimits
from payloadtags.names import encode_name
from payloadtags.watch.rereads import CONCURRENCY
from tests.support import images
from tests.support.client import stream
from tests.support.harness import Pki, ServerUnderTest
from tests.support.logcapture import collected_logs
from tests.support.raw import Target, exchange, request_bytes
from tests.support.rbac import eventually
from tests.support.registry_server import RegistryServer, free_port, need_registry

APP_V1 = encode_name("app", "v1")

B = "/apis/payload-registry.deckhouse.io/v1alpha1"
TOKEN = "events-token-0123456789abcdef"
EVENTS_TYPE = "application/vnd.docker.distribution.events.v1+json"


def collection(namespace: str) -> str:
    return f"{B}/namespaces/{namespace}/payloadrepositorytags"


@pytest.fixture
def notifying(tmp_path: Path, pki: Pki) -> Iterator[tuple[RegistryServer, int, Path]]:
    """A registry whose notifications go to https://127.0.0.1:<port>/registry/events, the port the
    server under test will listen on; the registry trusts the server's CA through SSL_CERT_FILE."""
    need_registry()
    port = free_port()
    token_file = tmp_path / "events.token"
    token_file.write_text(TOKEN + "\n")
    endpoint = {
        "name": "payloadtags",
        "url": f"https://127.0.0.1:{port}/registry/events",
        "headers": {"Authorization": [f"Bearer {TOKEN}"]},
        "timeout": "2s",
        "threshold": 5,
        "backoff": "200ms",
        "ignore": {"actions": ["pull"]},
    }
    with RegistryServer(
        extra_config={"notifications": {"endpoints": [endpoint]}},
        env={"SSL_CERT_FILE": str(pki.server_ca.cert_file)},
    ) as registry:
        yield registry, port, token_file


def catalog_requests(metrics: str) -> float:
    pattern = r'^payloadtags_registry_operations_total\{operation="catalog",outcome="[a-z_]+"\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics, re.MULTILINE))


async def notified_server(notifying: Any, make_server: Any) -> ServerUnderTest:
    """A server on the port the registry notifies, its index filled from the catalog (refreshed hourly:
    only events change it during a test)."""
    registry, port, token_file = notifying
    server: ServerUnderTest = await make_server(
        registry,
        secure_port=port,
        registry_events_token_file=str(token_file),
        registry_index_refresh_period=3600.0,
    )
    index = server.running.index
    assert index is not None

    async def index_ready() -> bool:
        return index.ready

    assert await eventually(index_ready, within=10)
    return server


@pytest_twisted.ensureDeferred
async def test_a_pushed_repository_reaches_the_namespace_list_through_a_registry_event(
    notifying: Any, make_server: Any, pki: Pki
):
    registry = notifying[0]
    images.push_oci_image(registry, "idx/before", "v1")
    server = await notified_server(notifying, make_server)
    index = server.running.index
    assert index is not None
    assert index.namespace_repositories("idx") == ["idx/before"]

    admin = server.client(pki.admin)
    monitor = server.client(pki.client_ca.client("prometheus", ("system:monitoring",)))
    images.push_oci_image(registry, "idx/after-start", "v2")

    async def listed() -> list[tuple[str, str]]:
        reply = await admin.get(collection("idx"))
        assert reply.code == 200, reply.body
        return [(i["spec"]["repositoryPath"], i["spec"]["tag"]) for i in reply.json()["items"]]

    async def event_arrived() -> bool:
        return "idx/after-start" in index

    assert await eventually(event_arrived, within=15), registry.log_tail()
    before = catalog_requests((await monitor.get("/metrics")).body.decode())
    assert before >= 1  # the first refresh read the catalog
    assert await listed() == [("after-start", "v2"), ("before", "v1")]
    after = catalog_requests((await monitor.get("/metrics")).body.decode())
    assert after == before, "a namespace list with a ready index must not read the catalog"


@pytest_twisted.ensureDeferred
async def test_a_push_payloadtags_cannot_show_does_not_hold_back_later_notifications(
    notifying: Any, make_server: Any, pki: Pki
):
    registry = notifying[0]
    server = await notified_server(notifying, make_server)
    index = server.running.index
    assert index is not None
    # distribution accepts a first component that looks like a domain, upper case included; payloadtags
    # shows no such repository.
    images.push_oci_image(registry, "Upper.Example/app", "v1")
    images.push_oci_image(registry, "idx/after", "v1")

    async def arrived() -> bool:
        return "idx/after" in index

    assert await eventually(arrived, within=15), registry.log_tail()
    reply = await server.client(pki.admin).get(collection("idx"))
    assert [i["spec"]["repositoryPath"] for i in reply.json()["items"]] == ["after"]
    assert "Upper.Example/app" not in index


@pytest_twisted.ensureDeferred
async def test_registry_events_need_the_token_and_a_well_formed_body(
    tmp_path: Path, make_server: Any, registry: RegistryServer, pki: Pki
):
    token_file = tmp_path / "events.token"
    token_file.write_text(TOKEN)
    server = await make_server(registry, registry_events_token_file=str(token_file))
    index = server.running.index
    anonymous = server.client()  # the registry presents no client certificate
    # A body as distribution 2.8 sends it (fields trimmed to those payloadtags reads, plus a few).
    event: dict[str, Any] = {
        "id": "5d2d6b8e-0000-4000-8000-000000000000",
        "timestamp": "2025-01-01T00:00:00Z",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + "0" * 64,
            "repository": "direct/pushed",
            "tag": "v1",
        },
        "request": {"method": "PUT", "useragent": "test"},
        "source": {"addr": "registry:5000"},
    }
    envelope = json.dumps({"events": [event, {**event, "action": "delete"}]}).encode()
    events = "/registry/events"
    headers = {"Content-Type": EVENTS_TYPE}

    reply = await anonymous.request("POST", events, headers=headers, body=envelope)
    assert reply.code == 401
    wrong = {**headers, "Authorization": "Bearer not-the-token"}
    assert (await anonymous.request("POST", events, headers=wrong, body=envelope)).code == 401
    basic = {**headers, "Authorization": f"Basic {TOKEN}"}
    assert (await anonymous.request("POST", events, headers=basic, body=envelope)).code == 401
    assert "direct/pushed" not in index
    # Refused before its body is read (r1events F1): a head announcing 1000 bytes, then one, gets its
    # 401 at once; read first, the server would wait for the rest (and buffer up to the body limit of
    # every such request) before refusing.
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))
    for auth in ({}, {"Authorization": "Bearer not-the-token"}):
        head = request_bytes("POST", events, {**headers, **auth, "Content-Length": "1000"}, b"{")
        reply = await threads.deferToThread(exchange, target, head)
        assert reply.code == 401, auth

    good = {**headers, "Authorization": f"Bearer {TOKEN}"}
    for garbage in (
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"events": 3}',
        b'{"events": ["x"]}',
        b'{"events": [{"action": "push", "target": {"repository": 7}}]}',
        b'{"events": [{"action": "push", "target": {}}]}',
    ):
        reply = await anonymous.request("POST", events, headers=good, body=garbage)
        assert reply.code == 400, (garbage, reply.code, reply.body)

    # A name payloadtags cannot show is accepted and left out: the registry would re-send a refused
    # event for ever, and hold back every event after it.
    odd = json.dumps({"events": [{**event, "target": {**event["target"], "repository": "../etc"}}]})
    reply = await anonymous.request("POST", events, headers=good, body=odd.encode())
    assert reply.code == 200, reply.body
    assert "../etc" not in index

    reply = await anonymous.request("POST", events, headers=good, body=envelope)
    assert reply.code == 200, reply.body
    assert "direct/pushed" in index
    # A delete event removes nothing: the registry keeps the repository in its catalog too.
    assert index.namespace_repositories("direct") == ["direct/pushed"]


@pytest_twisted.ensureDeferred
async def test_a_token_with_a_non_ascii_character_matches_its_own_bytes(
    tmp_path: Path, make_server: Any, registry: RegistryServer
):
    # The file is UTF-8; the registry sends its configured header's bytes as they are (r1events L4).
    token = "t\u00f6k\u00e9n-0123456789"
    token_file = tmp_path / "events.token"
    token_file.write_text(token + "\n", encoding="utf-8")
    server = await make_server(registry, registry_events_token_file=str(token_file))
    body = json.dumps({"events": [{"action": "push", "target": {"repository": "na/x"}}]}).encode()
    head = (
        b"POST /registry/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer "
        + token.encode()
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    )
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))
    reply = await threads.deferToThread(exchange, target, head + body)
    assert reply.code == 200, reply.body
    assert "na/x" in server.running.index
    # Its Latin-1 reading (each byte one character, re-encoded as UTF-8) is another token.
    latin = token.encode().decode("latin-1").encode()
    head = head.replace(token.encode(), latin)
    assert (await threads.deferToThread(exchange, target, head + body)).code == 401


@pytest_twisted.ensureDeferred
async def test_without_a_token_file_there_is_no_index_and_no_events_route(api: Any):
    assert api.running.index is None
    reply = await api.client(api.pki.admin).request("POST", "/registry/events", body=b'{"events": []}')
    assert reply.code == 404
    # Without the route, a body from an unauthenticated client is refused before it is read.
    reply = await api.client().request("POST", "/registry/events", body=b'{"events": []}')
    assert reply.code == 401


@attrs.define
class CountingReader:
    """The hub's reader, counting the tag-list reads its sources make and how many run at once."""

    inner: Any
    reads: list[str] = attrs.field(factory=list)
    flying: int = 0
    most: int = 0

    async def scope_tags(self, namespace: str | None) -> Any:
        return await self.inner.scope_tags(namespace)

    async def repository_tags(self, repository: str) -> Any:
        self.reads.append(repository)
        self.flying += 1
        self.most = max(self.most, self.flying)
        try:
            return await self.inner.repository_tags(repository)
        finally:
            self.flying -= 1


def manifest_push(repository: str) -> dict[str, Any]:
    media = "application/vnd.oci.image.manifest.v1+json"
    target = {"mediaType": media, "digest": "sha256:" + "0" * 64, "repository": repository}
    return {"action": "push", "target": target}


@pytest_twisted.ensureDeferred
async def test_a_burst_of_notifications_rereads_a_few_repositories_at_a_time(
    tmp_path: Path, make_server: Any, registry: RegistryServer, pki: Pki
):
    # r1events L1: each notification's rereads started at once, all queued on the registry client's
    # slots ahead of every user's reads (and many in one envelope ran in one reactor turn).
    images.push_oci_image(registry, "other/app", "v1")
    token_file = tmp_path / "events.token"
    token_file.write_text(TOKEN)
    server = await make_server(
        registry, registry_events_token_file=str(token_file), watch=WatchLimits(resync_period=3600)
    )
    hub = server.running.api.watch_hub
    reader = hub.reader = CountingReader(hub.reader)
    watch = await stream(server.client(pki.admin), f"{B}/payloadrepositorytags?watch=true&resourceVersion=0")
    # Started: its first events are every tag of the registry (other tests' too: it is shared), this one's
    # among them.
    seen = await watch.next()
    while (seen["object"]["metadata"]["namespace"], seen["object"]["metadata"]["name"]) != ("other", APP_V1):
        seen = await watch.next()
    good = {"Content-Type": EVENTS_TYPE, "Authorization": f"Bearer {TOKEN}"}
    anonymous = server.client()

    # More than the bound: the first ones are taken, the rest left out (logged), and the envelope is
    # answered 200; a 413 had the sender retry it forever, every later notification behind it
    # (review r2events L2).
    burst = [manifest_push(f"burst/r{n}") for n in range(MAX_EVENTS_PER_ENVELOPE + 2)]
    body = json.dumps({"events": burst}).encode()
    with collected_logs() as logged:
        reply = await anonymous.request("POST", "/registry/events", headers=good, body=body)
        again = await anonymous.request("POST", "/registry/events", headers=good, body=body)
    assert reply.code == 200 and again.code == 200, (reply.body, again.body)
    said = [event for event in logged if "beyond the first" in event.get("log_format", "")]
    assert [(event["count"], event["max"]) for event in said] == [
        (2, MAX_EVENTS_PER_ENVELOPE)
    ]  # once a period
    index = server.running.index
    assert (
        f"burst/r{MAX_EVENTS_PER_ENVELOPE - 1}" in index and f"burst/r{MAX_EVENTS_PER_ENVELOPE}" not in index
    )
    rereads = server.running.api.notification_rereads

    async def drained() -> bool:
        return len(rereads) == 0 and rereads.running == 0

    assert await eventually(drained, within=30)
    # (the envelope was sent twice: a name may be read once for each)
    assert set(reader.reads) == {f"burst/r{n}" for n in range(MAX_EVENTS_PER_ENVELOPE)}
    assert reader.most <= CONCURRENCY  # one source (all namespaces): one read a repository
    watch.close()


@pytest_twisted.ensureDeferred
async def test_a_blob_push_notification_rereads_no_tag_list(notifying: Any, make_server: Any, pki: Pki):
    # r1events N1: distribution notifies one push per blob before the manifest's; a blob changes no tag.
    registry, port, token_file = notifying
    images.push_oci_image(registry, "bl/app", "v1")
    server = await make_server(
        registry,
        secure_port=port,
        registry_events_token_file=str(token_file),
        registry_index_refresh_period=3600.0,
        watch=WatchLimits(resync_period=3600),
    )
    hub = server.running.api.watch_hub
    reader = hub.reader = CountingReader(hub.reader)
    index = server.running.index
    pushes = []  # every push event reaches the index, a blob's too
    add = index.add

    def adding(name: str) -> bool:
        pushes.append(name)
        return bool(add(name))

    index.add = adding
    watch = await stream(server.client(pki.admin), f"{collection('bl')}?watch=true&resourceVersion=0")
    assert (await watch.next())["object"]["spec"]["tag"] == "v1"
    images.push_oci_image(registry, "bl/app", "v2", seed="two")  # a config and a layer, then the manifest
    added = await watch.next()
    assert (added["type"], added["object"]["spec"]["tag"]) == ("ADDED", "v2")
    rereads = server.running.api.notification_rereads

    async def all_handled() -> bool:
        # Each notification's rereads start while its POST is handled, before its push reaches the index.
        idle = len(rereads) == 0 and rereads.running == 0 and not reader.flying
        return pushes.count("bl/app") >= 3 and idle

    assert await eventually(all_handled, within=30)
    assert reader.reads == ["bl/app"]  # the manifest's; a read per blob as well before
    watch.close()
