"""Namespace cleanup as `payloadtags serve` wires it: flags → controller, Lease, metrics, health."""

from __future__ import annotations

import pytest_twisted

from tests.support import images
from tests.support.cleanup_fixtures import unique_namespace
from tests.support.kubeapi.resources import LEASES, NAMESPACES
from tests.support.rbac import ensure_namespace, eventually

FAST = {
    "leader_elect_lease_duration": 2.0,
    "leader_elect_renew_deadline": 1.2,
    "leader_elect_retry_period": 0.25,
    "leader_elect_resource_namespace": "kube-system",
    "namespace_sweep_period": 0.0,
}


@pytest_twisted.ensureDeferred
async def test_the_server_cleans_a_deleted_namespace_and_reports_it(
    make_server,
    fresh_registry,
    kube_api,
    kube_kubeconfig,
    pki,
):
    doomed, kept = unique_namespace("doomed"), unique_namespace("kept")
    for name in (doomed, kept):
        ensure_namespace(kube_api, name)
    images.push_oci_image(fresh_registry, f"{doomed}/app", "v1")
    images.push_oci_image(fresh_registry, f"{kept}/app", "v1")
    orphan = unique_namespace("orphan")  # content without a Namespace: the sweep at start removes it
    images.push_oci_image(fresh_registry, f"{orphan}/app", "v1")
    server = await make_server(
        fresh_registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="RBAC",
        namespace_cleanup=True,
        **FAST,
    )

    def lease_holder() -> str | None:
        if not kube_api.store.exists(LEASES, "payloadtags-cleanup", "kube-system"):
            return None
        holder: str | None = kube_api.store.get(LEASES, "payloadtags-cleanup", "kube-system")["spec"].get(
            "holderIdentity"
        )
        return holder

    assert await eventually(lambda: _now(lease_holder() is not None), within=5) is True
    assert await eventually(lambda: _now(images.list_tags(fresh_registry, f"{orphan}/app") == []), within=5)

    kube_api.store.delete(NAMESPACES, doomed)  # Terminating
    assert await eventually(lambda: _now(images.list_tags(fresh_registry, f"{doomed}/app") == []), within=5)
    assert images.list_tags(fresh_registry, f"{kept}/app") == ["v1"]

    monitor = pki.client_ca.client("prometheus", ("system:masters",))
    text = (await server.client(monitor).get("/metrics")).body.decode()
    assert "payloadtags_cleanup_is_leader 1.0" in text
    assert "payloadtags_cleanup_sweep_orphans_cleaned_total 1.0" in text
    assert "payloadtags_cleanup_tags_deleted_total 2.0" in text
    health = await server.client(None).get("/healthz?verbose")
    assert "[+]leaderElection ok" in health.body.decode()

    await server.stop()  # releases the Lease for the next replica
    assert lease_holder() in (None, "")


async def _now(value: bool) -> bool:
    return value
