"""Who is calling: the one record of an identity, however it was established.

Client certificates, front-proxy headers and TokenReviews (`payloadtags.access`, `payloadtags.kube`)
all produce a `UserInfo`; authorization and the audit log read it.
"""

from __future__ import annotations

import attrs

AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"
MASTERS = "system:masters"


# The hash is kept: a user keys the walk cache and the access caches, looked up several times a request.
@attrs.frozen(cache_hash=True)
class UserInfo:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    # Sorted by key; a tuple of pairs rather than a dict so that the record is hashable (it keys caches).
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def with_authenticated_group(self) -> UserInfo:
        # As Go's AuthenticatedGroupAdder: every authenticated identity is in system:authenticated, but
        # the anonymous user and anyone a front proxy already placed in either group keep their groups.
        if self.name == ANONYMOUS or AUTHENTICATED in self.groups or UNAUTHENTICATED in self.groups:
            return self
        # Made directly: attrs.evolve looks the class's fields up on every call (once a request).
        return UserInfo(self.name, self.uid, (*self.groups, AUTHENTICATED), self.extra)


__all__ = ["ANONYMOUS", "AUTHENTICATED", "MASTERS", "UNAUTHENTICATED", "UserInfo"]
