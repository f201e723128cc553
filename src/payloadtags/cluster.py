"""What payloadtags keeps from the cluster API: RBAC objects for access decisions and the
authentication ConfigMap, each through a list+watch reflector."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from payloadtags.access.authconfig import CONFIGMAP_NAME, CONFIGMAP_NAMESPACE, DynamicAuthentication
from payloadtags.access.authn import UserInfo
from payloadtags.access.rbac import RbacIndex
from payloadtags.jsontypes import JsonObject
from payloadtags.kube import ClusterClient, Reflector, StoreListener

RBAC = "/apis/rbac.authorization.k8s.io/v1"
RBAC_COLLECTIONS = {
    "Role": f"{RBAC}/roles",
    "ClusterRole": f"{RBAC}/clusterroles",
    "RoleBinding": f"{RBAC}/rolebindings",
    "ClusterRoleBinding": f"{RBAC}/clusterrolebindings",
}


def _own(options: dict[str, Any]) -> dict[str, Any]:
    # A Backoff counts failures, so each reflector needs its own.
    if "backoff" in options:
        return {**options, "backoff": attrs.evolve(options["backoff"])}
    return options


@attrs.define
class _IndexFeed(StoreListener):
    index: RbacIndex
    kind: str

    def on_add(self, obj: JsonObject) -> None:
        self.index.upsert(self.kind, obj)

    def on_update(self, old: JsonObject, new: JsonObject) -> None:
        self.index.upsert(self.kind, new)

    def on_delete(self, obj: JsonObject) -> None:
        self.index.remove(self.kind, obj)

    def on_replaced(self, objects: list[JsonObject]) -> None:
        self.index.replace(self.kind, objects)


def rbac_reflectors(
    client: ClusterClient, clock: IReactorTime, index: RbacIndex, **options: Any
) -> list[Reflector]:
    reflectors = []
    for kind, path in RBAC_COLLECTIONS.items():
        reflector = Reflector(client, path, clock, name=kind, **_own(options))
        reflector.add_listener(_IndexFeed(index, kind))
        reflectors.append(reflector)
    return reflectors


@attrs.define
class _ConfigMapFeed(StoreListener):
    authentication: DynamicAuthentication

    def on_add(self, obj: JsonObject) -> None:
        self.authentication.update_from_configmap(obj.get("data") or {})

    def on_update(self, old: JsonObject, new: JsonObject) -> None:
        self.authentication.update_from_configmap(new.get("data") or {})

    def on_replaced(self, objects: list[JsonObject]) -> None:
        # After each list, the ConfigMap among the objects or not: a missing one is news too.
        self.authentication.configmap_synced()


def authentication_reflector(
    client: ClusterClient, clock: IReactorTime, authentication: DynamicAuthentication, **options: Any
) -> Reflector:
    # The reader Role is name-scoped, so the watch must select the ConfigMap by name.
    reflector = Reflector(
        client,
        f"/api/v1/namespaces/{CONFIGMAP_NAMESPACE}/configmaps",
        clock,
        field_selector=f"metadata.name={CONFIGMAP_NAME}",
        name="extension-apiserver-authentication",
        **_own(options),
    )
    reflector.add_listener(_ConfigMapFeed(authentication))
    return reflector


def token_reviewer(client: ClusterClient) -> Callable[[str], Awaitable[UserInfo | None]]:
    async def review(token: str) -> UserInfo | None:
        return await client.token_review(token)

    return review
