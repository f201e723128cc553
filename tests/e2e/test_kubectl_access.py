"""kubectl as two users against payloadtags in RBAC mode: each sees and deletes only what their
PayloadRepositoryAccess rules allow."""

from __future__ import annotations

import pytest_twisted

from payloadtags.names import encode_name
from tests.support import images
from tests.support.kubectl import Kubectl
from tests.support.rbac import eventually, grant


@pytest_twisted.async_yield_fixture
async def rbac_server(make_server, registry, kube_api, kube_kubeconfig):
    yield await make_server(registry, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC")


@pytest_twisted.ensureDeferred
async def test_two_users_see_different_lists_and_get_403(
    rbac_server, kube_api, registry, repo, pki, kubectl_for
):
    namespace = repo.split("/", 1)[0]
    for path in ("frontend/web", "backend/api"):
        images.push_oci_image(registry, f"{namespace}/{path}", "v1", seed=path)
    grant(kube_api, namespace, "alice", ["get", "delete"], ["frontend/**"], "alice")
    grant(kube_api, namespace, "bob", ["get"], ["backend/*"], "bob")
    alice = kubectl_for(rbac_server, pki.client_ca.client("alice"), "alice")
    bob = kubectl_for(rbac_server, pki.client_ca.client("bob"), "bob")

    async def rows(kubectl: Kubectl) -> list[list[str]] | None:
        result = await kubectl("get", "prt", "-n", namespace)
        return [line.split() for line in result.out.strip().splitlines()[1:]] if result.code == 0 else None

    async def alice_sees_hers() -> bool:
        return await rows(alice) == [[encode_name("frontend/web", "v1"), "frontend/web", "v1"]]

    assert await eventually(alice_sees_hers, within=5) is True
    assert await rows(bob) == [[encode_name("backend/api", "v1"), "backend/api", "v1"]]

    theirs = encode_name("frontend/web", "v1")
    denied = await bob("get", "prt", "-n", namespace, theirs)
    assert denied.code == 1
    assert denied.err.strip().splitlines()[-1] == (
        f'Error from server (Forbidden): payloadrepositorytags.payload-registry.deckhouse.io "{theirs}" is '
        f'forbidden: User "bob" cannot get resource "payloadrepositorytags" in API group '
        f'"payload-registry.deckhouse.io" in the namespace "{namespace}": no PayloadRepositoryAccess rule '
        f'allows "get" on repository path "frontend/web"'
    )
    # bob may read backend/api but not delete it; alice may delete her own.
    no_delete = await bob("delete", "prt", "-n", namespace, encode_name("backend/api", "v1"))
    assert no_delete.code == 1 and "(Forbidden)" in no_delete.err
    assert images.list_tags(registry, f"{namespace}/backend/api") == ["v1"]
    deleted = await alice("delete", "prt", "-n", namespace, theirs)
    assert deleted.code == 0, deleted.err
    assert images.list_tags(registry, f"{namespace}/frontend/web") == []


@pytest_twisted.ensureDeferred
async def test_kubectl_as_another_user_is_refused_not_done_with_the_callers_rights(
    rbac_server, kube_api, registry, repo, pki, kubectl_for
):
    """kubectl --as sent straight to payloadtags (not through kube-apiserver, which would impersonate
    and remove the headers) is refused: payloadtags does not impersonate (review r1authn L1)."""
    namespace = repo.split("/", 1)[0]
    images.push_oci_image(registry, f"{namespace}/ci/app", "v1")
    grant(kube_api, namespace, "ops-admin", ["get", "delete"], None, "ops-admin")
    admin: Kubectl = kubectl_for(rbac_server, pki.client_ca.client("ops-admin"), "ops-admin")
    name = encode_name("ci/app", "v1")

    async def granted() -> bool:
        return (await admin("get", "prt", "-n", namespace, name)).code == 0

    assert await eventually(granted, within=5) is True
    refused = await admin("delete", "prt", "-n", namespace, name, "--as=ci-bot")
    assert refused.code == 1
    last = refused.err.strip().splitlines()[-1]
    assert last.startswith("Error from server (Forbidden): payloadtags does not impersonate"), last
    assert images.list_tags(registry, f"{namespace}/ci/app") == ["v1"]
