"""The namespace controller's deletecollection of a Terminating namespace while the registry reads and
does not delete: read-only mode (garbage collection), or every DELETE answered 500 (a storage refusing
deletes). Each call spent its whole 40 s budget and answered 503 with `Retry-After: 1`, which client-go
repeats by itself up to ten times: one call held a namespace controller's worker for about 7.5 min,
again at every requeue of the namespace (review r1cleanup F1). It now ends after a pass that made no
progress in read-only mode, after two in a row otherwise (one blip is retried within the call: review
r2fixstall L1), with no Retry-After and saying what failed; the namespace controller requeues with its
own backoff, and a call once the registry serves again empties the namespace.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from tests.integration.test_cleanup import METADATA_LIST, B, content, create_namespace, fill, ready
from tests.support.cleanup_fixtures import *  # noqa: F403
from tests.support.cleanup_fixtures import RegistryProxy, unique_namespace
from tests.support.faultproxy import ERROR_BEFORE, FaultProxy
from tests.support.kubeapi import KubeApiDouble
from tests.support.kubeapi.resources import NAMESPACES
from tests.support.registry_server import RegistryServer

# Far below the 40 s budget it used to spend; the machine may be loaded.
FAST = 10.0


async def _removal(server: Any, kube_api: KubeApiDouble, team: str) -> tuple[Any, str]:
    """The namespace controller's client, once the collection is served; the namespace Terminating."""
    kcm = server.client(server.pki.client_ca.client("kcm", ("system:masters",)))
    collection = f"{B}/namespaces/{team}/payloadrepositorytags"
    await ready(kcm, collection)
    kube_api.store.delete(NAMESPACES, team)  # Terminating
    return kcm, collection


async def _delete(kcm: Any, collection: str) -> tuple[Any, float]:
    began = reactor.seconds()
    reply = await kcm.delete(
        collection, body={"propagationPolicy": "Background"}, headers={"Accept": METADATA_LIST}
    )
    return reply, reactor.seconds() - began


def _assert_stalled(reply: Any, took: float, cause: str, said: str) -> None:
    assert reply.code == 503, reply.body
    assert not [k for k in reply.headers if "retry" in str(k).lower()], reply.headers
    status = json.loads(reply.body)
    assert "retryAfterSeconds" not in status.get("details", {}), status
    message = status["message"]
    assert "4 of 4 selected tag(s) are still there" in message, message
    assert said in message and cause in message, message
    assert message.endswith("; retry later"), message
    assert took < FAST, f"{took:.1f}s"


@pytest_twisted.ensureDeferred
async def test_a_removal_in_read_only_mode_ends_at_once_without_retry_after(
    kube_api: KubeApiDouble, kube_kubeconfig: Any, fresh_registry: RegistryServer, make_server: Any
) -> None:
    team = unique_namespace("gc")
    create_namespace(kube_api, team)
    made = fill(fresh_registry, team, repositories=2, tags=2)
    readonly = RegistryServer(root=fresh_registry.root, readonly=True)
    try:
        proxy = RegistryProxy(reactor, fresh_registry)
        server = await make_server(proxy.url, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC")
        kcm, collection = await _removal(server, kube_api, team)
        proxy.point_at(readonly)  # garbage collection starts
        reply, took = await _delete(kcm, collection)
        _assert_stalled(
            reply,
            took,
            "read-only",
            "its last pass made no progress, the registry refusing its deletes in read-only mode",
        )
        assert content(fresh_registry, team) == made
        proxy.point_at(fresh_registry)  # garbage collection ends: nothing was lost meanwhile
        reply, _ = await _delete(kcm, collection)
        assert reply.code == 200, reply.body
        assert content(fresh_registry, team) == {}
        await proxy.go_down()
    finally:
        readonly.stop()


@pytest_twisted.ensureDeferred
async def test_a_removal_whose_every_delete_fails_with_500_ends_at_once_without_retry_after(
    kube_api: KubeApiDouble, kube_kubeconfig: Any, fresh_registry: RegistryServer, make_server: Any
) -> None:
    team = unique_namespace("nodel")
    create_namespace(kube_api, team)
    made = fill(fresh_registry, team, repositories=2, tags=2)
    failing = [True]
    proxy = FaultProxy(
        reactor,
        fresh_registry.url,
        lambda method, path: ERROR_BEFORE if failing[0] and method == "DELETE" else None,
    )
    try:
        server = await make_server(proxy.url, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC")
        kcm, collection = await _removal(server, kube_api, team)
        reply, took = await _delete(kcm, collection)
        _assert_stalled(
            reply, took, "HTTP 500", "its last two passes made no progress, the registry failing its deletes"
        )
        assert proxy.injected[ERROR_BEFORE] >= 2
        assert content(fresh_registry, team) == made
        failing[0] = False  # the storage takes deletes again
        reply, _ = await _delete(kcm, collection)
        assert reply.code == 200, reply.body
        assert content(fresh_registry, team) == {}
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_a_removal_whose_every_tag_read_fails_with_500_ends_early_saying_reads_fail(
    kube_api: KubeApiDouble, kube_kubeconfig: Any, fresh_registry: RegistryServer, make_server: Any
) -> None:
    """Only reads fail (every tag's HEAD a 500): the call ends early too, and says so, not that the
    registry does not delete (review r2fixstall N)."""
    team = unique_namespace("noread")
    create_namespace(kube_api, team)
    made = fill(fresh_registry, team, repositories=2, tags=2)
    failing = [False]
    proxy = FaultProxy(
        reactor,
        fresh_registry.url,
        lambda method, path: (
            ERROR_BEFORE if failing[0] and method == "HEAD" and "/manifests/" in path else None
        ),
    )
    try:
        server = await make_server(proxy.url, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC")
        kcm, collection = await _removal(server, kube_api, team)
        failing[0] = True
        reply, took = await _delete(kcm, collection)
        _assert_stalled(
            reply, took, "HTTP 500", "its last two passes made no progress, the registry failing its reads"
        )
        assert content(fresh_registry, team) == made
        failing[0] = False
        reply, _ = await _delete(kcm, collection)
        assert reply.code == 200, reply.body
        assert content(fresh_registry, team) == {}
    finally:
        await proxy.stop()
