"""The stop as `payloadtags serve` wires it, with a delete under way (review r1ops F1, N2): the real
registry behind a proxy that holds the delete's first write, the cluster API double holding the Lease."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent

from payloadtags.limits import HttpLimits
from payloadtags.names import encode_name
from payloadtags.registry.client import RegistrySettings
from tests.integration.test_cleanup_server import B, _cleanup_server, _lease_holder, _now, _released
from tests.support import images
from tests.support.cleanup_fixtures import unique_namespace
from tests.support.faultproxy import STALL, FaultProxy
from tests.support.logcapture import collected_logs
from tests.support.rbac import ensure_namespace, eventually


def _lines(logs: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(event) for event in logs]


def _first(lines: list[str], text: str) -> int:
    found = [number for number, line in enumerate(lines) if text in line]
    assert found, f"no line says {text!r}:\n" + "\n".join(lines)
    return found[0]


@pytest_twisted.ensureDeferred
async def test_a_delete_cut_at_the_grace_period_is_said_and_ends_before_the_lease_is_released(
    reactor,
    make_server,
    fresh_registry,
    kube_api,
    kube_kubeconfig,
    pki,
):
    """The grace period ends with a delete's first write held by the registry: its request is cut, the
    delete goes on, and the stop says so by name (who asked, how long, what to do if killed first);
    the leader releases its Lease only once the delete has ended. Before: no line named it, and the
    Lease went at once, the delete ending after it (r1ops `out-single-delete.txt`)."""
    ns = unique_namespace("stop")
    ensure_namespace(kube_api, ns)
    repo = f"{ns}/app"
    images.push_oci_image(fresh_registry, repo, "v1")
    hold: Deferred[None] = Deferred()
    held: list[str] = []

    def decide(method: str, path: str) -> str | None:
        # The delete's first write: its DELETE by tag (a 2.8 registry answers it 400, then re-tags).
        if method == "DELETE" and path.endswith(f"/{repo}/manifests/v1"):
            held.append(path)
            return STALL
        return None

    proxy = FaultProxy(reactor, fresh_registry.url, decide, hold=hold)
    server = await _cleanup_server(
        make_server,
        proxy.url,
        kube_kubeconfig,
        # The held write's request outlasts the grace period: the delete is still under way at its end.
        registry=RegistrySettings(url=proxy.url, timeout=60.0),
        shutdown_grace_period=0.2,
    )
    alice = server.client(pki.client_ca.client("alice", ("system:masters",)))
    with collected_logs() as logs:
        async with _released(hold, proxy, server):
            assert await eventually(lambda: _now(_lease_holder(kube_api) not in (None, "")), within=5)
            leader = _lease_holder(kube_api)
            request = Deferred.fromCoroutine(
                alice.delete(f"{B}/namespaces/{ns}/payloadrepositorytags/{encode_name('app', 'v1')}")
            )
            request.addErrback(lambda failure: None)  # cut at the grace period's end
            assert await eventually(lambda: _now(bool(held)), within=5)
            stopping = Deferred.fromCoroutine(server.stop())
            assert await eventually(
                lambda: _now(any("stops leading: shutting down" in line for line in _lines(logs))), within=10
            )
            assert _lease_holder(kube_api) == leader  # kept while the delete goes on
            assert not stopping.called
            hold.callback(None)
            await stopping
    lines = _lines(logs)
    said = _first(
        lines, f"the grace period is over: the delete of tag {repo}:v1 asked by alice has begun writing"
    )
    assert "If the process is killed first" in lines[said], lines[said]
    deleted = _first(lines, f"Deleted tag {repo}:v1 after its caller had stopped waiting")
    released = _first(lines, "released the lease")
    assert said < deleted < released, "\n".join(lines)
    assert images.list_tags(fresh_registry, repo) == []


@pytest_twisted.ensureDeferred
async def test_a_delete_that_outlived_its_request_before_the_stop_is_said_as_the_registry_client_closes(
    reactor,
    make_server,
    fresh_registry,
    pki,
):
    """review r2ops L2: on a replica that does not lead (no namespace cleanup here), a delete carried
    on after its request's own deadline, before the stop, is said by the registry client's close
    ("stopping: ..."), the only line for it: the drain ends at once (nothing in flight), so the grace
    period's end says nothing. And who asked is forgotten once a delete has ended
    (`TagsService._forget_asker`): an earlier asker is not named for a later delete."""
    ns = unique_namespace("stopnl")
    repo, other = f"{ns}/app", f"{ns}/web"
    for pushed in (repo, other):
        images.push_oci_image(fresh_registry, pushed, "v1")

    def decide(method: str, path: str) -> str | None:
        # Each delete's first write: the first one's DELETE by tag (a 2.8 registry answers it 400,
        # then the client re-tags), the second one's re-tag (the client has learnt).
        return STALL if method in ("DELETE", "PUT") and path.endswith("/manifests/v1") else None

    first: Deferred[None] = Deferred()
    proxy = FaultProxy(reactor, fresh_registry.url, decide, hold=first)
    server = await make_server(
        proxy.url,
        # The held write's request outlasts the request's deadline: its delete goes on alone.
        registry=RegistrySettings(url=proxy.url, timeout=60.0),
        http=HttpLimits(request_timeout=3.0),
    )
    service = server.running.api.service
    item = f"{B}/namespaces/{ns}/payloadrepositorytags"
    alice = server.client(pki.client_ca.client("alice", ()))
    bob = server.client(pki.client_ca.client("bob", ()))
    with collected_logs() as logs:
        # alice's delete outlives its request and ends before the stop: she is forgotten.
        reply = await alice.delete(f"{item}/{encode_name('web', 'v1')}")
        assert reply.code == 504, reply.body
        assert list(service.asked_by.values()) == ["alice"]
        first.callback(None)
        await proxy.settled()
        assert await eventually(
            lambda: _now(any(f"Deleted tag {other}:v1 after" in line for line in _lines(logs))), within=10
        )
        assert service.asked_by == {}
        # bob's outlives its request, and is under way when the server stops.
        second: Deferred[None] = Deferred()
        proxy.hold = second
        async with _released(second, proxy, server):
            reply = await bob.delete(f"{item}/{encode_name('app', 'v1')}")
            assert reply.code == 504, reply.body
            stopping = Deferred.fromCoroutine(server.stop())
            assert await eventually(
                lambda: _now(any("stopping: the delete of tag" in line for line in _lines(logs))), within=10
            )
            assert not stopping.called
            second.callback(None)
            await stopping
    lines = _lines(logs)
    said = [line for line in lines if "the delete of tag" in line]
    assert len(said) == 1, "\n".join(lines)
    assert said[0].startswith(f"stopping: the delete of tag {repo}:v1 asked by bob has begun writing"), said
    assert not any("the grace period is over" in line for line in lines), "\n".join(lines)
    assert _first(lines, "stopping: the delete") < _first(lines, f"Deleted tag {repo}:v1 after")
    assert service.asked_by == {}
    assert images.list_tags(fresh_registry, repo) == images.list_tags(fresh_registry, other) == []
