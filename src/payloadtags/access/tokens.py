"""Bearer tokens checked with a TokenReview, cached with separate lifetimes for success and failure."""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

import attrs
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from payloadtags.access.authn import Credentials, UserInfo, is_utf8
from payloadtags.deferreds import DeadlineExpired, FairSlots, InFlight, within
from payloadtags.kube.errors import KubeApiError, KubeReplyCutShort, KubeUnreachable

Review = Callable[[str], Awaitable[UserInfo | None]]

# TokenReview attempts under way at once, in the process. Without a bound, made-up tokens from many
# addresses while the cluster API failed or held TokenReviews had one attempt under way per connection
# (up to --max-connections), each over a TLS connection of its own to the cluster API (treq speaks
# HTTP/1.1, where client-go's HTTP/2 shares a few): 1,700 file descriptors, 8,600 attempts in 23 s and
# everyone's answers slowed, /livez's to 0.78 s (review r1flood L2). The cluster client keeps this many
# idle connections on top of its own (server.py), so an attempt normally reuses one. Measured with
# 800 such connections from 8 addresses (docs/hardening.md, Work), 32 and 64 slowed everyone else
# alike within the noise of shared CPUs (a certificate caller's median 31-86 ms and 26-54 ms, against
# 87-801 ms unbounded), and 16 no less (127 ms, one run): 32 asks half of what 64 does of it at once.
REVIEWS_AT_ONCE = 32
# Of those, the most one client (an address) may have under way. Without it, one pod's connections
# (--max-connections-per-client, 100 by default) sending made-up tokens whose reviews the cluster API
# held (a token webhook down: service-account tokens are still answered) took every slot whenever
# nobody else waited, so that everyone else's review waited for one of theirs to end, up to its 10 s,
# and could run out of time: 401 (review r2tokcap F1). With 8, one address holds a quarter and
# another's review is asked at once; it takes 4 flooding addresses to fill the slots, and then
# another address's review waits for the next attempt to end, ahead of their queued ones (up to 10 s
# while reviews hang: it may then run out of its own, 401). One address's 8 at a time are still
# hundreds of fresh tokens a second at the cluster API's usual milliseconds a review, and concurrent
# requests with one token share one review.
REVIEWS_PER_CLIENT = 8


@attrs.frozen
class ReviewRetry:
    """How a TokenReview that failed for a passing cause is asked again, as k8s.io/apiserver's
    delegating authenticator does (its webhook retry backoff and token request timeout): up to
    ``attempts`` in all, the n-th wait ``initial * factor**n`` lengthened by up to ``jitter`` of
    itself, everything within ``timeout`` of the first attempt."""

    initial: float = 0.5
    factor: float = 1.5
    jitter: float = 0.2
    attempts: int = 5
    timeout: float = 10.0


# The answers k8s.io/apiserver's webhook.DefaultShouldRetry takes for passing: an internal error,
# a timeout, too many requests (API Priority and Fairness), whatever the status's reason or code says.
_PASSING_REASONS = frozenset(("InternalError", "Timeout", "TooManyRequests"))
_PASSING_CODES = frozenset((500, 504, 429))


def passing(error: BaseException) -> bool:
    """Whether a failed TokenReview is worth asking again: a passing answer, one with a Retry-After,
    or a connection that broke under it (Go's connection reset; a refused connection is not)."""
    if isinstance(error, KubeApiError):
        return (
            error.reason in _PASSING_REASONS or error.code in _PASSING_CODES or error.retry_after is not None
        )
    if isinstance(error, KubeReplyCutShort | KubeUnreachable):
        cause = error.__cause__
        reasons = getattr(cause, "reasons", None) or [cause]
        return any(isinstance(r.value if isinstance(r, Failure) else r, ConnectionLost) for r in reasons)
    return False


@attrs.define
class TokenReviewAuthenticator:
    """As k8s.io/apiserver's webhook token authenticator: cache keyed by a hash, never the token itself."""

    review: Review
    clock: IReactorTime
    success_ttl: float = 10.0
    failure_ttl: float = 10.0
    # The most tokens each cache keeps, least recently used first out: the tokens a review accepted,
    # and apart from them those it refused, so that made-up tokens (a 401 takes a handshake token of
    # its address, 20 a second) never push a valid token out, which would then cost a review a
    # request rather than one in its success_ttl (review r1hostile2: 21 addresses could).
    max_entries: int = 4096
    max_failures: int = 4096
    retry: ReviewRetry = ReviewRetry()
    # The clock of the waits between attempts (the deadline and the cache keep ``clock``), and the
    # source of their jitter.
    delays: IReactorTime | None = None
    rng: random.Random = attrs.field(factory=random.Random)
    at_once: int = REVIEWS_AT_ONCE
    per_client: int = REVIEWS_PER_CLIENT
    _cache: OrderedDict[str, tuple[float, UserInfo | None]] = attrs.field(factory=OrderedDict, init=False)
    _failures: OrderedDict[str, tuple[float, UserInfo | None]] = attrs.field(factory=OrderedDict, init=False)
    _reviews: InFlight[str, UserInfo | None] = attrs.field(
        factory=lambda: InFlight(cancel_when_abandoned=True), init=False
    )
    # Each attempt holds a slot while it is under way, not while it waits for the next. A free slot
    # goes to the client holding the fewest, so that a flood from some addresses cannot make
    # another's first review wait behind all of theirs, and none holds more than ``per_client``.
    slots: FairSlots = attrs.field(init=False)

    @slots.default
    def _make_slots(self) -> FairSlots:
        return FairSlots(self.at_once, self.per_client)

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        token = _bearer(credentials)
        if token is None:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        for cache in (self._cache, self._failures):
            cached = cache.get(key)
            if cached is not None and cached[0] > self.clock.seconds():
                cache.move_to_end(key)
                return cached[1]
        # Concurrent requests with one token share one review, which is cancelled only once none
        # of them waits for it (each may be cancelled: its client gone, its deadline passed).
        # The review's turns are taken as the client of the request that started it.
        return await self._reviews.join(key, lambda: self._review(key, token, credentials.client))

    async def _review(self, key: str, token: str, client: Hashable) -> UserInfo | None:
        """The review of ``token``, cached once it answers. A failed review is not cached: the next
        request reviews again."""
        result = await self._retried(token, client)
        if result is not None:
            cache, ttl, most, other = self._cache, self.success_ttl, self.max_entries, self._failures
        else:
            cache, ttl, most, other = self._failures, self.failure_ttl, self.max_failures, self._cache
        other.pop(key, None)  # its answer changed (a token revoked, or made valid)
        cache[key] = (self.clock.seconds() + ttl, result)
        cache.move_to_end(key)
        while len(cache) > most:
            cache.popitem(last=False)
        return result

    async def _retried(self, token: str, client: Hashable) -> UserInfo | None:
        """The review, asked again after a passing failure, within the retry's timeout and, as the
        caller's cancel reaches it, the deadline of every request waiting for it; the waits for a
        slot count within both, and a cancelled one leaves its place at once. Ends, as
        k8s.io/apiserver's does, with the last attempt's error once the attempts are used up, and
        once the time is: with the error waited on, or the timeout when it cut an attempt."""
        retry = self.retry
        waited_on: list[Exception] = []

        async def attempts() -> UserInfo | None:
            wait = retry.initial
            for attempt in range(1, retry.attempts + 1):
                await self.slots.acquire(client)
                # A deadline while it waited for the slot ends with the error waited on before.
                waited_on.clear()
                try:
                    return await self.review(token)
                except Exception as error:
                    if attempt == retry.attempts or not passing(error):
                        raise
                    waited_on.append(error)
                finally:
                    self.slots.release(client)
                await deferLater(self.delays or self.clock, wait * (1 + retry.jitter * self.rng.random()))
                wait *= retry.factor
            raise AssertionError("unreachable: the last attempt returns or raises")

        try:
            return await within(self.clock, retry.timeout, attempts())
        except DeadlineExpired:
            if waited_on:
                raise waited_on[0] from waited_on[0].__cause__
            raise


# What Go's strings.TrimSpace trims (unicode.IsSpace), where Python's strip() would also trim
# U+001C to U+001F.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def _bearer(credentials: Credentials) -> str | None:
    """The token as k8s.io/apiserver's bearertoken authenticator reads it: the first Authorization
    field (Go's Header.Get), trimmed, split on single spaces; the scheme "bearer" in any case, the
    token the part after it (`Bearer tok extra` is `tok`), none when that part is empty (`Bearer  tok`)."""
    fields = credentials.header("authorization")
    if not fields:
        return None
    parts = fields[0].strip(_GO_SPACE).split(" ", 2)
    if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
        return None
    # A token that is not UTF-8 cannot be sent in a TokenReview as it came (Go's JSON would change
    # it too): nobody, not an error.
    return parts[1] if is_utf8(parts[1]) else None
