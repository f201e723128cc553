"""What a caller may do: decisions on repository paths (PayloadRepositoryAccess)."""

from __future__ import annotations

from typing import Protocol

import attrs

from payloadtags.access.authn import UserInfo


class AuthorizationNotReady(Exception):
    """The access rules are not loaded yet (start-up); the request may be retried shortly."""


class Authorizer(Protocol):
    def allowed(self, user: UserInfo, verb: str, namespace: str, repository_path: str) -> bool:
        """``verb`` is ``get`` (list and get) or ``delete`` (delete and deletecollection)."""
        ...


@attrs.frozen
class AlwaysAllow:
    def allowed(self, user: UserInfo, verb: str, namespace: str, repository_path: str) -> bool:
        return True
