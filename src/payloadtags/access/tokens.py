"""Bearer tokens checked with a TokenReview, cached with separate lifetimes for success and failure."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import attrs
from twisted.internet.interfaces import IReactorTime

from payloadtags.access.authn import Credentials, UserInfo, is_utf8
from payloadtags.deferreds import InFlight

Review = Callable[[str], Awaitable[UserInfo | None]]


@attrs.define
class TokenReviewAuthenticator:
    """As k8s.io/apiserver's webhook token authenticator: cache keyed by a hash, never the token itself."""

    review: Review
    clock: IReactorTime
    success_ttl: float = 10.0
    failure_ttl: float = 10.0
    max_entries: int = 4096
    _cache: OrderedDict[str, tuple[float, UserInfo | None]] = attrs.field(factory=OrderedDict, init=False)
    _reviews: InFlight[str, UserInfo | None] = attrs.field(
        factory=lambda: InFlight(cancel_when_abandoned=True), init=False
    )

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        token = _bearer(credentials)
        if token is None:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self.clock.seconds():
            self._cache.move_to_end(key)
            return cached[1]
        # Concurrent requests with one token share one review, which is cancelled only once none
        # of them waits for it (each may be cancelled: its client gone, its deadline passed).
        return await self._reviews.join(key, lambda: self._review(key, token))

    async def _review(self, key: str, token: str) -> UserInfo | None:
        """The review of ``token``, cached once it answers. A failed review is not cached: the next
        request reviews again."""
        result = await self.review(token)
        ttl = self.success_ttl if result is not None else self.failure_ttl
        self._cache[key] = (self.clock.seconds() + ttl, result)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return result


def _bearer(credentials: Credentials) -> str | None:
    for value in credentials.header("authorization"):
        scheme, _, token = value.strip().partition(" ")
        # A token that is not UTF-8 cannot be sent in a TokenReview as it came (Go's JSON would
        # change it too): nobody, not an error.
        if scheme.lower() == "bearer" and token.strip() and is_utf8(token):
            return token.strip()
    return None
