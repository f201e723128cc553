"""Helpers of the watch tests over HTTPS (tests/integration/test_watch*.py): the collection's paths, a
server deciding access by RBAC and alice, lists that show what a test waits for, the access check
having run, a watch hub whose reads are gated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred

from payloadtags.limits import WatchLimits
from payloadtags.watch import WatchHub
from tests.support import images
from tests.support.client import ApiClient, Stream, stream
from tests.support.kubeapi.resources import ROLEBINDINGS
from tests.support.rbac import grant

B = "/apis/payload-registry.deckhouse.io/v1alpha1"


def collection(namespace: str) -> str:
    return f"{B}/namespaces/{namespace}/payloadrepositorytags"


async def alice_by_rbac(
    make_server: Any, registry: Any, kube_api: Any, kube_kubeconfig: Any, pki: Any, *repositories: str
) -> tuple[Any, ApiClient]:
    """A server deciding access by RBAC over ``repositories`` (pushed), and alice, who may see `app`."""
    for repository in repositories:
        images.push_oci_image(registry, repository, "v1", seed=repository)
    api = await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="RBAC",
        watch=WatchLimits(resync_period=0.2),
    )
    grant(kube_api, repositories[0].split("/", 1)[0], "alice", ["get"], ["app"], "alice-read")
    return api, api.client(pki.client_ca.client("alice"))


async def showing(client: ApiClient, namespace: str, paths: list[str]) -> str | None:
    """The resourceVersion of a list of ``namespace`` that shows the repositories ``paths``."""
    reply = await client.get(collection(namespace))
    if reply.code != 200:
        assert reply.code == 503, reply.body  # under load the RBAC rules may not be loaded yet
        return None
    body = reply.json()
    shown = sorted({i["spec"]["repositoryPath"] for i in body["items"]})
    return str(body["metadata"]["resourceVersion"]) if shown == paths else None


async def gone(watch: Stream, reactor: Any) -> Any:
    """The last line of a stream ended by an access change: the 410 that makes a reflector relist."""
    error = await watch.next()
    ended = watch.ended
    ended.addTimeout(10, reactor)
    await ended
    assert watch.lines.pending == []
    return error


async def noted_by_a_stream(client: ApiClient, url: str, resource_version: str | None) -> None:
    """A watch of the client's user on ``url`` from ``resource_version``, run to its end (one second):
    her rules are noted in its scope (docs/watch.md, "Access")."""
    ended = await stream(client, f"{url}?watch=true&timeoutSeconds=1&resourceVersion={resource_version}")
    assert ended.code == 200
    await ended.ended


async def checked(api: Any, before: int) -> bool:
    """Whether the server's access check has run since the rules' generation ``before``."""
    hub = api.running.api.watch_hub
    now = hub.access_generation()
    return bool(now > before and hub.checked_generation == now)


async def alice_in_and_out_of_devs(
    make_server: Any, registry: Any, kube_api: Any, kube_kubeconfig: Any, pki: Any, namespace: str
) -> tuple[ApiClient, ApiClient]:
    """On the server of `alice_by_rbac`, with `secret` granted to the group devs, two clients of alice's:
    her certificate with devs (app and secret) and one without (app)."""
    api, _ = await alice_by_rbac(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    grant(kube_api, namespace, "devs", ["get"], ["secret"], "devs-read-secret", kind="Group")
    in_devs = api.client(pki.client_ca.client("alice", ("devs",), stem="alice-devs"))
    not_in_devs = api.client(pki.client_ca.client("alice", (), stem="alice-nodevs"))
    return in_devs, not_in_devs


def secret_grants(kube_api: Any, namespace: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """Two steps of alice's rules in ``namespace``: grant her `secret` (a RoleBinding of its own each
    time), and take back the last grant."""
    granted = 0

    def give() -> None:
        nonlocal granted
        granted += 1
        grant(kube_api, namespace, "alice", ["get"], ["secret"], f"alice-read-secret-{granted}")

    def take() -> None:
        kube_api.store.delete(ROLEBINDINGS, f"alice-read-secret-{granted}", namespace)

    return give, take


async def alice_and_a_change_of_secret(
    between: str,
    make_server: Any,
    registry: Any,
    kube_api: Any,
    kube_kubeconfig: Any,
    pki: Any,
    namespace: str,
) -> tuple[Any, ApiClient, list[str], Callable[[], None], Callable[[], None]]:
    """`alice_by_rbac`'s server and client, `zz` hers too, and what she may list in ``namespace`` before a
    change of `secret` ("revoked": granted now, then taken back; "granted": the other way round), the
    change and its undoing."""
    api, alice = await alice_by_rbac(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    give, take = secret_grants(kube_api, namespace)
    first, change, undo = ["app", "zz"], give, take
    if between == "revoked":
        give()
        first, change, undo = ["app", "secret", "zz"], take, give
    images.push_oci_image(registry, f"{namespace}/zz", "v1", seed=f"{namespace}/zz")
    grant(kube_api, namespace, "alice", ["get"], ["zz"], "alice-read-zz")
    return api, alice, first, change, undo


@attrs.define
class GatedReader:
    """The hub's registry reads, held until ``gate`` fires: watches wait on their scope's baseline."""

    real: Any
    gate: Deferred[None] = attrs.field(factory=Deferred)

    async def scope_tags(self, namespace: str | None) -> Any:
        await self.gate
        return await self.real.scope_tags(namespace)

    async def repository_tags(self, repository: str) -> Any:
        return await self.real.repository_tags(repository)


def gated_hub(api: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[WatchHub, GatedReader, list[str]]:
    """The server's watch hub with its reads gated, and the users whose watches it was asked to admit."""
    hub: WatchHub = api.running.api.watch_hub
    reader = GatedReader(hub.reader)
    hub.reader = reader
    asked: list[str] = []
    admit = WatchHub.admit

    def counting(self: WatchHub, user: str) -> Any:
        asked.append(user)
        return admit(self, user)

    monkeypatch.setattr(WatchHub, "admit", counting)
    return hub, reader, asked


async def ready(condition: bool) -> bool | None:
    return True if condition else None


def a_list_of_the_api(kwargs: dict[str, Any]) -> bool:
    # A client's list decides access per repository (`readable`); a watch source's read of its scope
    # (`InventoryReader.scope_tags`, on every resync) does not, and must not take the armed turn.
    return "readable" in kwargs
