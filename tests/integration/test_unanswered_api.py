"""A registry write that goes unanswered, seen through the API: a 504 that nothing repeats.

The write may still land after the answer (docs/consistency.md). A 503 with Retry-After made
client-go (kubectl, the namespace controller) send the delete again by itself: the repeat deleted
the tag, kubectl said "deleted", and then the first attempt's re-tag landed and brought the tag
back. Every unanswered write (a timeout, a connection closed without an answer, a gateway's 5xx)
is answered as a timeout is: 504, no Retry-After, saying where the tag would be.

The late write is held by the fault proxy until the test releases it, after the answer: the server's
watch for it to land runs on a `SkipAhead`, which ends it without its seconds of real time.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from payloadtags.names import encode_name
from payloadtags.registry.client import RegistrySettings
from tests.support import images
from tests.support.clocks import SkipAhead
from tests.support.faultproxy import DROPPED_LATE, GATEWAY_LATE, LATE, FaultProxy
from tests.support.unanswered import (
    LANDS,
    TIMEOUT,
    first_retag,
)

B = "/apis/payload-registry.deckhouse.io/v1alpha1"
UNANSWERED = [GATEWAY_LATE, DROPPED_LATE, LATE]
OPERATIONS = "payloadtags_registry_operations_total{"


@pytest.mark.parametrize("fault", UNANSWERED)
@pytest_twisted.ensureDeferred
async def test_kubectl_delete_of_an_unanswered_retag_is_a_timeout_not_repeated(
    fault, reactor, registry, repo, make_server, kubectl_for
) -> None:
    digest = images.push_oci_image(registry, repo, "v1")
    images.tag_manifest(registry, repo, "v1", "sibling")
    puts: list[str] = []
    hold: Deferred[None] = Deferred()
    proxy = FaultProxy(reactor, registry.url, first_retag(fault, puts), hold=hold)
    server = await make_server(
        proxy.url, registry=RegistrySettings(url=proxy.url, timeout=TIMEOUT), landing_clock=SkipAhead()
    )
    namespace, _, path = repo.partition("/")
    result = await kubectl_for(server)("delete", "prt", encode_name(path, "v1"), "-n", namespace)
    assert result.code != 0, result.out
    assert "Error from server (Timeout)" in result.err, result.err
    assert "may still carry it out" in result.err, result.err
    assert len(puts) == 1  # kubectl did not send the delete again
    # Deleting again at once answered "deleted", and then the late re-tag brought the tag back: the
    # advice is to wait as long as the write may take, then look, and delete only what is there.
    err = " ".join(result.err.split())
    assert "deleting the tag again removes it" not in err, err
    assert f"may still land within about {LANDS:g}s" in err, err
    assert "kubectl get" in err and "delete it again only if it is still there" in err, err
    assert images.resolve(registry, repo, "v1") == digest  # left as it was, as said
    hold.callback(None)  # the first (and only) re-tag lands now
    await proxy.settled()
    await proxy.stop()
    assert images.list_tags(registry, repo) == ["sibling", "v1"]
    # Where the message said the late write would leave the tag.
    assert images.resolve(registry, repo, "v1") in result.err, result.err


async def _collection_timeout(
    reactor: Any, registry: Any, repo: str, make_server: Any, decide: Any, hold: Deferred[None]
) -> tuple[FaultProxy, dict[str, Any]]:
    proxy, status, _ = await _collection_timeout_on(reactor, registry, repo, make_server, decide, hold)
    return proxy, status


async def _collection_timeout_on(
    reactor: Any, registry: Any, repo: str, make_server: Any, decide: Any, hold: Deferred[None]
) -> tuple[FaultProxy, dict[str, Any], Any]:
    """A deletecollection of ``repo``'s namespace through a proxy that faults as ``decide`` says:
    answered 504 Timeout, with nothing that invites a repeat (no Retry-After, no retryAfterSeconds).
    Also the server."""
    proxy = FaultProxy(reactor, registry.url, decide, hold=hold)
    server = await make_server(
        proxy.url, registry=RegistrySettings(url=proxy.url, timeout=TIMEOUT), landing_clock=SkipAhead()
    )
    namespace = repo.partition("/")[0]
    client = server.client(server.pki.admin)
    reply = await client.delete(f"{B}/namespaces/{namespace}/payloadrepositorytags")
    assert reply.code == 504, reply.body
    assert reply.header("retry-after") is None
    status: dict[str, Any] = reply.json()
    assert status["reason"] == "Timeout"
    assert (status.get("details") or {}).get("retryAfterSeconds") is None
    return proxy, status, server


@pytest.mark.parametrize("fault", UNANSWERED)
@pytest_twisted.ensureDeferred
async def test_deletecollection_with_an_unanswered_retag_is_a_timeout(
    fault, reactor, registry, repo, make_server
) -> None:
    images.push_oci_image(registry, repo, "v1")
    images.tag_manifest(registry, repo, "v1", "sibling")
    puts: list[str] = []
    hold: Deferred[None] = Deferred()
    proxy, status = await _collection_timeout(
        reactor, registry, repo, make_server, first_retag(fault, puts), hold
    )
    assert "may still carry it out" in status["message"], status["message"]
    assert "then delete again" not in status["message"], status["message"]
    assert "delete again only those still there" in status["message"], status["message"]
    assert "retry-after" not in {k.lower() for k in (status.get("details") or {})}
    hold.callback(None)
    await proxy.settled()
    await proxy.stop()
    assert len(puts) == 1


@pytest.mark.parametrize("fault", UNANSWERED)
@pytest_twisted.ensureDeferred
async def test_deletecollection_with_a_push_during_an_unanswered_retag_is_a_timeout(
    fault: str, reactor, registry, repo, make_server
) -> None:
    # A push that lands while the re-tag is unanswered is a conflict, and the re-tag may still land
    # over it: the conflict kept no "unanswered", so the collection was a 503 with Retry-After, whose
    # repeat answered 200 before the late re-tag brought the tag back.
    images.push_oci_image(registry, repo, "v1")
    images.tag_manifest(registry, repo, "v1", "sibling")
    puts: list[str] = []
    hold: Deferred[None] = Deferred()

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and path.endswith("/manifests/v1"):
            puts.append(path)
            if len(puts) == 1:
                # Someone pushes v1 straight to the registry while the delete's re-tag is out.
                images.push_oci_image(registry, repo, "v1", seed="pushed")
                return fault
        return None

    proxy, status, server = await _collection_timeout_on(reactor, registry, repo, make_server, decide, hold)
    assert "pushed while it was being deleted" in status["message"], status["message"]
    assert "may still carry it out" in status["message"], status["message"]
    hold.callback(None)
    await proxy.settled()
    await proxy.stop()
    assert len(puts) == 1
    # The registry failed the write (no answer): counted as that, which the "registry is failing"
    # alert takes in, not as the `conflict` the push made of it (review r2obs N2).
    exposition = (await server.client(server.pki.admin).get("/metrics")).body.decode()
    counted = [line for line in exposition.splitlines() if line.startswith(OPERATIONS)]
    assert not [line for line in counted if 'outcome="conflict"' in line], counted
    failed = 'operation="delete_tag",outcome="' + ("timeout" if fault == LATE else "unavailable") + '"} 1.0'
    assert [line for line in counted if failed in line], counted
