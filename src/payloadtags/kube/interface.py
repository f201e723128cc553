"""What the rest of payloadtags may ask of the cluster API: the seam in front of `KubeClient`.

`KubeClient` implements it over HTTP; the tests run it against the API double in
tests/support/kubeapi. Consumers that need less declare less (`reflector.WatchSource`,
`cleanup.leader.LeaseClient`), so that a unit test's fake provides only what its consumer uses.

Paths are API paths built with `resource_path`; objects are decoded JSON. Failures raise `KubeError`
subclasses: `KubeApiError` carries the server's Status (`reason`, `code`), `KubeUnavailable` and
`KubeTimeout` mean the server could not be asked. A caller's cancel is raised as CancelledError.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from payloadtags.identity import UserInfo
from payloadtags.jsontypes import JsonObject
from payloadtags.kube.client import MERGE_PATCH
from payloadtags.kube.reflector import WatchSource


class ClusterClient(WatchSource, Protocol):
    """Reads, writes, watches and token reviews, as a Kubernetes client does them."""

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> JsonObject: ...

    async def create(self, path: str, body: JsonObject) -> JsonObject: ...

    async def update(self, path: str, body: JsonObject) -> JsonObject:
        """PUT; a ``metadata.resourceVersion`` in `body` makes it conditional (409 on mismatch)."""
        ...

    async def patch(self, path: str, patch: JsonObject, content_type: str = MERGE_PATCH) -> JsonObject: ...

    async def delete(self, path: str, options: JsonObject | None = None) -> JsonObject: ...

    async def token_review(self, token: str, audiences: tuple[str, ...] = ()) -> UserInfo | None:
        """Whose bearer token this is, or None when it is not valid (for these audiences)."""
        ...

    async def close(self) -> None: ...


__all__ = ["ClusterClient"]
