"""Bearer tokens checked with a TokenReview, cached with separate lifetimes for success and failure."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

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
    _reviews: dict[str, _SharedReview] = attrs.field(factory=dict, init=False)

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        token = _bearer(credentials)
        if token is None:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self.clock.seconds():
            self._cache.move_to_end(key)
            return cached[1]
        return await self._join(key, token)

    def _join(self, key: str, token: str) -> Deferred[UserInfo | None]:
        """A waiter on the review of ``key``: concurrent requests with one token share one review.
        Each waits on a Deferred of its own, so that one cancelling (its client gone, its deadline
        passed) neither cancels the review for the others nor fails them; the review is cancelled only
        once nobody waits for it."""
        shared = self._reviews.get(key)
        if shared is not None:
            return shared.join(lambda waiter: self._leave(key, shared, waiter))
        started = self._reviews[key] = _SharedReview()
        waiter = started.join(lambda waiter: self._leave(key, started, waiter))
        # Started once the first waiter is in: a review that ends at once finds it.
        started.work = Deferred.fromCoroutine(_awaited(self.review(token)))
        started.work.addBoth(self._reviewed, key, started)
        return waiter

    def _leave(self, key: str, shared: _SharedReview, waiter: Deferred[UserInfo | None]) -> None:
        shared.waiters.remove(waiter)
        if not shared.waiters and shared.work is not None and not shared.work.called:
            if self._reviews.get(key) is shared:
                del self._reviews[key]  # a request from now on reviews anew
            shared.work.cancel()

    def _reviewed(self, result: UserInfo | Failure | None, key: str, shared: _SharedReview) -> None:
        if self._reviews.get(key) is shared:
            del self._reviews[key]
        waiters, shared.waiters = shared.waiters, []
        if isinstance(result, Failure):
            # Not cached: the next request reviews again. A review cancelled for want of waiters has
            # nobody to tell.
            for waiter in waiters:
                waiter.errback(result)
            return
        ttl = self.success_ttl if result is not None else self.failure_ttl
        self._cache[key] = (self.clock.seconds() + ttl, result)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        for waiter in waiters:
            waiter.callback(result)


@attrs.define
class _SharedReview:
    """One TokenReview in flight and the requests waiting for its result."""

    waiters: list[Deferred[UserInfo | None]] = attrs.field(factory=list)
    work: Deferred[UserInfo | None] | None = None

    def join(self, leave: Callable[[Deferred[UserInfo | None]], None]) -> Deferred[UserInfo | None]:
        waiter: Deferred[UserInfo | None] = Deferred(leave)
        self.waiters.append(waiter)
        return waiter


async def _awaited(review: Awaitable[UserInfo | None]) -> UserInfo | None:
    return await review


def _bearer(credentials: Credentials) -> str | None:
    for value in credentials.header("authorization"):
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None
