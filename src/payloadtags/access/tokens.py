"""Bearer tokens checked with a TokenReview, cached with separate lifetimes for success and failure."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from payloadtags.access.authn import Credentials, UserInfo

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
    _waiting: dict[str, list[Deferred[UserInfo | None]]] = attrs.field(factory=dict, init=False)

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        token = _bearer(credentials)
        if token is None:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self.clock.seconds():
            self._cache.move_to_end(key)
            return cached[1]
        if key in self._waiting:
            # Concurrent requests with one token share one review.
            waiter: Deferred[UserInfo | None] = Deferred()
            self._waiting[key].append(waiter)
            return await waiter
        self._waiting[key] = []
        try:
            user = await self.review(token)
        except Exception as error:
            for waiter in self._waiting.pop(key):
                waiter.errback(error)
            raise
        for waiter in self._waiting.pop(key):
            waiter.callback(user)
        ttl = self.success_ttl if user is not None else self.failure_ttl
        self._cache[key] = (self.clock.seconds() + ttl, user)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return user


def _bearer(credentials: Credentials) -> str | None:
    for value in credentials.header("authorization"):
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None
