"""Two replicas as two `payloadtags serve` processes over one registry: a watch that lands on the other
replica than its list gets 410 and the client relists there; a replica that stops ends its watches so
that clients move on."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task

from payloadtags.names import encode_name
from tests.support import images
from tests.support.client import ApiClient, stream
from tests.support.process import ServerProcess
from tests.support.registry_server import free_port

pytestmark = [pytest.mark.registry]

B = "/apis/payload-registry.deckhouse.io/v1alpha1"


def collection(namespace: str) -> str:
    return f"{B}/namespaces/{namespace}/payloadrepositorytags"


def watching(namespace: str, listing: dict[str, Any]) -> str:
    return f"{collection(namespace)}?watch=true&resourceVersion={listing['metadata']['resourceVersion']}"


def replica(reactor: Any, pki: Any, registry_url: str) -> tuple[ServerProcess, ApiClient]:
    port = free_port()
    process = ServerProcess(
        reactor,
        [
            *pki.standalone_args(port, registry_url),
            "--watch-resync-period=0.3s",
        ],
    )
    process.start()
    return process, ApiClient(f"https://127.0.0.1:{port}", str(pki.server_ca.cert_file), pki.admin)


@pytest_twisted.ensureDeferred
async def test_a_watch_on_the_other_replica_gets_410_and_the_relist_there_continues(
    reactor, pki, registry, repo
):
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    a, client_a = replica(reactor, pki, registry.url)
    b, client_b = replica(reactor, pki, registry.url)
    try:
        for process in (a, b):
            await process.wait_for_log("serving payload-registry.deckhouse.io/v1alpha1")
        listed = (await client_a.get(collection(namespace))).json()
        # The aggregator sent the watch to the other replica: it cannot know what A's list held.
        moved = await stream(
            client_b,
            f"{collection(namespace)}?watch=true&resourceVersion={listed['metadata']['resourceVersion']}",
        )
        error = await moved.next()
        assert error["type"] == "ERROR" and error["object"]["code"] == 410
        assert error["object"]["reason"] == "Expired"
        await moved.ended
        # The reflector relists, here on B, and watches from B's resourceVersion: nothing is missed.
        relisted = (await client_b.get(collection(namespace))).json()
        assert [i["spec"]["tag"] for i in relisted["items"]] == ["v1"]
        watch = await stream(
            client_b,
            f"{collection(namespace)}?watch=true&resourceVersion={relisted['metadata']['resourceVersion']}",
        )
        images.push_oci_image(registry, repo, "v2", seed="two")
        added = await watch.next()
        assert added["type"] == "ADDED" and added["object"]["metadata"]["name"] == encode_name(path, "v2")
        # B stops (a rolling update): its watches end at once, so clients re-watch elsewhere.
        b.terminate()
        ended = watch.ended
        ended.addTimeout(10, reactor)
        await ended
        assert await b.wait() == 0
        # A's own resourceVersions still serve A's watches.
        again = await stream(
            client_a,
            f"{collection(namespace)}?watch=true&resourceVersion={listed['metadata']['resourceVersion']}",
        )
        assert (await again.next())["object"]["metadata"]["name"] == encode_name(path, "v2")
        again.close()
        await task.deferLater(reactor, 0.1, lambda: None)
    finally:
        await a.kill()
        await b.kill()
