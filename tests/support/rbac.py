"""Arranging access rules in the Kubernetes API test double, and waiting for them to apply."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from twisted.internet import task

from tests.support.kubeapi.resources import NAMESPACES, ROLEBINDINGS, ROLES
from tests.support.kubeapi.server import KubeApiDouble

T = TypeVar("T")

GROUP = "payload-registry.deckhouse.io"


def ensure_namespace(kube_api: KubeApiDouble, name: str) -> None:
    if not kube_api.store.exists(NAMESPACES, name):
        kube_api.store.create(NAMESPACES, {"metadata": {"name": name}})


def grant(
    kube_api: KubeApiDouble,
    namespace: str,
    user: str,
    verbs: list[str],
    names: list[str] | None,
    role: str,
    kind: str = "User",
) -> None:
    """A Role on payloadrepositoryaccesses and a RoleBinding of it to ``user`` (a ``kind`` subject)."""
    ensure_namespace(kube_api, namespace)
    rule = {"apiGroups": [GROUP], "resources": ["payloadrepositoryaccesses"], "verbs": verbs}
    if names is not None:
        rule["resourceNames"] = names
    kube_api.store.create(ROLES, {"metadata": {"name": role}, "rules": [rule]}, namespace)
    kube_api.store.create(
        ROLEBINDINGS,
        {
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": user}],
        },
        namespace,
    )


async def eventually(check: Callable[[], Awaitable[T]], within: float = 1.0, step: float = 0.05) -> T:
    """Poll ``check`` (async, returns truthy when done) for at most ``within`` seconds."""
    from twisted.internet import reactor

    waited = 0.0
    while True:
        result = await check()
        if result or waited >= within:
            return result
        await task.deferLater(reactor, step, lambda: None)
        waited += step
