"""Bearer tokens: TokenReview results cached by hash, success and failure for separate times."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived

from payloadtags.access.authn import Credentials, UserInfo
from payloadtags.access.tokens import (
    REVIEWS_AT_ONCE,
    REVIEWS_PER_CLIENT,
    Review,
    ReviewRetry,
    TokenReviewAuthenticator,
)
from payloadtags.deferreds import DeadlineExpired
from payloadtags.kube.errors import KubeApiError, KubeProtocolError, KubeUnreachable, make_status

GOOD = "eyJhbGciOiJSUzI1NiJ9.good-token.sig"
BAD = "eyJhbGciOiJSUzI1NiJ9.bad-token.sig"
ALICE = UserInfo(name="alice", uid="u-1", groups=("devs",))


def bearer(token: str, scheme: str = "Bearer") -> Credentials:
    return Credentials(peer_certificate=None, headers={"authorization": [f"{scheme} {token}"]})


@attrs.define
class FakeReview:
    """A TokenReview stand-in: ``users`` maps the tokens it accepts; counts the reviews per token."""

    users: dict[str, UserInfo] = attrs.field(factory=dict)
    calls: list[str] = attrs.field(factory=list)

    async def __call__(self, token: str) -> UserInfo | None:
        self.calls.append(token)
        return self.users.get(token)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def review() -> FakeReview:
    return FakeReview({GOOD: ALICE})


@pytest.fixture
def auth(review: FakeReview, clock: Clock) -> TokenReviewAuthenticator:
    return TokenReviewAuthenticator(review=review, clock=clock, success_ttl=60.0, failure_ttl=30.0)


@pytest_twisted.ensureDeferred
async def test_success_is_cached_for_the_success_ttl(
    auth: TokenReviewAuthenticator, review: FakeReview, clock: Clock
) -> None:
    assert await auth.authenticate(bearer(GOOD)) == ALICE
    clock.advance(59.5)
    assert await auth.authenticate(bearer(GOOD)) == ALICE
    assert review.calls == [GOOD]
    clock.advance(1.0)  # 60.5 s after the review
    assert await auth.authenticate(bearer(GOOD)) == ALICE
    assert review.calls == [GOOD, GOOD]
    # The new result is cached from the time of the new review.
    clock.advance(59.5)
    assert await auth.authenticate(bearer(GOOD)) == ALICE
    assert len(review.calls) == 2


@pytest_twisted.ensureDeferred
async def test_failure_is_cached_for_the_failure_ttl(
    auth: TokenReviewAuthenticator, review: FakeReview, clock: Clock
) -> None:
    assert await auth.authenticate(bearer(BAD)) is None
    clock.advance(29.5)
    assert await auth.authenticate(bearer(BAD)) is None
    assert review.calls == [BAD]
    clock.advance(1.0)  # 30.5 s: past the failure TTL, well within the success TTL
    # The token has become valid meanwhile (say, it was just created): the new review says so.
    review.users[BAD] = ALICE
    assert await auth.authenticate(bearer(BAD)) == ALICE
    assert review.calls == [BAD, BAD]


@pytest_twisted.ensureDeferred
async def test_a_revoked_token_is_noticed_after_the_success_ttl(
    auth: TokenReviewAuthenticator, review: FakeReview, clock: Clock
) -> None:
    assert await auth.authenticate(bearer(GOOD)) == ALICE
    del review.users[GOOD]
    clock.advance(30.5)  # past the failure TTL, not past the success TTL
    assert await auth.authenticate(bearer(GOOD)) == ALICE
    clock.advance(30.0)
    assert await auth.authenticate(bearer(GOOD)) is None


@pytest_twisted.ensureDeferred
async def test_tokens_are_cached_separately(auth: TokenReviewAuthenticator, review: FakeReview) -> None:
    review.users["other"] = UserInfo(name="bob")
    assert await auth.authenticate(bearer(GOOD)) == ALICE
    assert await auth.authenticate(bearer("other")) == UserInfo(name="bob")
    assert await auth.authenticate(bearer(BAD)) is None
    assert await auth.authenticate(bearer(GOOD)) == ALICE
    assert review.calls == [GOOD, "other", BAD]


@pytest_twisted.ensureDeferred
async def test_scheme_is_case_insensitive_and_whitespace_is_trimmed(
    auth: TokenReviewAuthenticator, review: FakeReview
) -> None:
    assert await auth.authenticate(bearer(GOOD, scheme="bearer")) == ALICE
    assert await auth.authenticate(bearer(GOOD + "  ", scheme="BEARER")) == ALICE
    assert review.calls == [GOOD]


@pytest.mark.parametrize(
    ("values", "reviewed"),
    [
        (["Bearer tok"], "tok"),
        (["bearer tok"], "tok"),
        (["  Bearer tok  "], "tok"),
        (["Bearer  tok"], None),  # the second part is "": no token
        (["Bearer tok extra"], "tok"),  # the second part only
        (["Bearer\ttok"], None),  # one part: only a space separates
        (["Basic eDp5", "Bearer tok"], None),  # the first field only
        (["Bearer tok", "Bearer other"], "tok"),
        (["Bearer tok\x1c"], "tok\x1c"),  # not white space to Go's TrimSpace
        (["Bearer tok\u00a0"], "tok"),  # white space to it
    ],
)
@pytest_twisted.ensureDeferred
async def test_the_token_is_read_as_k8s_apiserver_reads_it(
    auth: TokenReviewAuthenticator, review: FakeReview, values: list[str], reviewed: str | None
) -> None:
    """As k8s.io/apiserver's bearertoken authenticator (review r1authn N1): the first Authorization
    field, trimmed, split on single spaces; the scheme "bearer" in any case; the token its second
    part, none when that is empty."""
    await auth.authenticate(Credentials(peer_certificate=None, headers={"authorization": values}))
    assert review.calls == ([] if reviewed is None else [reviewed])


@pytest_twisted.ensureDeferred
async def test_no_token_no_review(auth: TokenReviewAuthenticator, review: FakeReview) -> None:
    cases: list[dict[str, list[str]]] = [
        {},
        {"authorization": []},
        {"authorization": ["Basic dXNlcjpwYXNz"]},
        {"authorization": [f"Token {GOOD}"]},
        {"authorization": ["Bearer"]},
        {"authorization": ["Bearer    "]},
        {"authorization": [GOOD]},
        {"x-remote-user": ["alice"]},
        # Not UTF-8 (as the HTTP layer decodes it): no token could match it.
        {"authorization": [b"Bearer tok\xe9n".decode("utf-8", "surrogateescape")]},
    ]
    for headers in cases:
        assert await auth.authenticate(Credentials(peer_certificate=None, headers=headers)) is None, headers
    assert review.calls == []


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_share_one_review(clock: Clock) -> None:
    pending: list[Deferred[UserInfo | None]] = []

    def review(token: str) -> Deferred[UserInfo | None]:
        pending.append(Deferred())
        return pending[-1]

    auth = TokenReviewAuthenticator(review=review, clock=clock, success_ttl=60.0, failure_ttl=30.0)
    waiting = [Deferred.fromCoroutine(auth.authenticate(bearer(GOOD))) for _ in range(3)]
    other = Deferred.fromCoroutine(auth.authenticate(bearer(BAD)))
    assert len(pending) == 2  # one review for GOOD, one for BAD
    assert not any(d.called for d in [*waiting, other])

    pending[0].callback(ALICE)
    assert [await d for d in waiting] == [ALICE, ALICE, ALICE]
    assert not other.called
    pending[1].callback(None)
    assert await other is None

    # Both results are cached now.
    assert await auth.authenticate(bearer(GOOD)) == ALICE
    assert await auth.authenticate(bearer(BAD)) is None
    assert len(pending) == 2


@pytest_twisted.ensureDeferred
async def test_a_failed_review_reaches_every_waiter_and_is_not_cached(clock: Clock) -> None:
    pending: list[Deferred[UserInfo | None]] = []

    def review(token: str) -> Deferred[UserInfo | None]:
        pending.append(Deferred())
        return pending[-1]

    auth = TokenReviewAuthenticator(review=review, clock=clock, success_ttl=60.0, failure_ttl=30.0)
    waiting = [Deferred.fromCoroutine(auth.authenticate(bearer(GOOD))) for _ in range(3)]
    assert len(pending) == 1

    failures: list[Failure] = []
    for d in waiting:
        d.addErrback(failures.append)
    pending[0].errback(ConnectionRefusedError("cluster API down"))
    assert len(failures) == 3
    assert all(f.check(ConnectionRefusedError) for f in failures)

    # Not cached: the next request reviews again (and no waiter list is left behind).
    again = Deferred.fromCoroutine(auth.authenticate(bearer(GOOD)))
    assert len(pending) == 2
    pending[1].callback(ALICE)
    assert await again == ALICE


@pytest_twisted.ensureDeferred
async def test_a_waiter_that_cancels_leaves_the_others_their_result(clock: Clock) -> None:
    # A request whose client goes away (or whose deadline passes) while it waits on a shared review
    # fails nobody else: the review goes on for the others.
    pending: list[Deferred[UserInfo | None]] = []

    def review(token: str) -> Deferred[UserInfo | None]:
        pending.append(Deferred())
        return pending[-1]

    auth = TokenReviewAuthenticator(review=review, clock=clock, success_ttl=60.0, failure_ttl=30.0)
    first, *others = [Deferred.fromCoroutine(auth.authenticate(bearer(GOOD))) for _ in range(3)]
    cancelled: list[Failure] = []
    first.addErrback(cancelled.append)
    first.cancel()
    assert len(cancelled) == 1 and cancelled[0].check(CancelledError)
    assert not pending[0].called  # the review was not cancelled
    assert not any(d.called for d in others)
    pending[0].callback(ALICE)
    assert [await d for d in others] == [ALICE, ALICE]
    assert await auth.authenticate(bearer(GOOD)) == ALICE  # and cached
    assert len(pending) == 1


@pytest_twisted.ensureDeferred
async def test_the_review_is_cancelled_once_nobody_waits_for_it(clock: Clock) -> None:
    pending: list[Deferred[UserInfo | None]] = []
    cancels: list[int] = []

    def review(token: str) -> Deferred[UserInfo | None]:
        index = len(pending)
        pending.append(Deferred(lambda _: cancels.append(index)))
        return pending[-1]

    auth = TokenReviewAuthenticator(review=review, clock=clock, success_ttl=60.0, failure_ttl=30.0)
    waiting = [Deferred.fromCoroutine(auth.authenticate(bearer(GOOD))) for _ in range(2)]
    for d in waiting:
        d.addErrback(lambda failure: failure.trap(CancelledError))
    waiting[0].cancel()
    assert cancels == []
    waiting[1].cancel()
    assert cancels == [0]
    # Nothing cached, nothing left in flight: the next request reviews anew.
    again = Deferred.fromCoroutine(auth.authenticate(bearer(GOOD)))
    assert len(pending) == 2
    pending[1].callback(ALICE)
    assert await again == ALICE


@pytest_twisted.ensureDeferred
async def test_the_token_is_never_a_cache_key(clock: Clock) -> None:
    pending: list[Deferred[UserInfo | None]] = []

    def review(token: str) -> Deferred[UserInfo | None]:
        pending.append(Deferred())
        return pending[-1]

    auth = TokenReviewAuthenticator(review=review, clock=clock)
    waiting = Deferred.fromCoroutine(auth.authenticate(bearer(GOOD)))
    # While the review is in flight.
    assert auth._reviews and all(GOOD not in key for key in auth._reviews)
    assert GOOD not in repr(auth)
    pending[0].callback(ALICE)
    assert await waiting == ALICE
    # Once it is cached.
    assert list(auth._cache) == [hashlib.sha256(GOOD.encode()).hexdigest()]
    assert GOOD not in repr(auth)


@pytest_twisted.ensureDeferred
async def test_least_recently_used_entries_go_first(review: FakeReview, clock: Clock) -> None:
    review.users.update(
        {"t1": UserInfo(name="one"), "t2": UserInfo(name="two"), "t3": UserInfo(name="three")}
    )
    auth = TokenReviewAuthenticator(review=review, clock=clock, success_ttl=60.0, max_entries=2)
    await auth.authenticate(bearer("t1"))
    await auth.authenticate(bearer("t2"))
    await auth.authenticate(bearer("t1"))  # t1 is now the most recently used
    await auth.authenticate(bearer("t3"))  # evicts t2
    assert review.calls == ["t1", "t2", "t3"]
    await auth.authenticate(bearer("t1"))
    await auth.authenticate(bearer("t3"))
    assert review.calls == ["t1", "t2", "t3"]
    await auth.authenticate(bearer("t2"))
    assert review.calls == ["t1", "t2", "t3", "t2"]


@pytest_twisted.ensureDeferred
async def test_refused_tokens_never_push_a_valid_one_out(review: FakeReview, clock: Clock) -> None:
    """Made-up tokens are kept apart from valid ones, each bounded on its own: however many, a valid
    token stays cached for its success TTL (one review), and so do the latest refusals."""
    auth = TokenReviewAuthenticator(review=review, clock=clock, max_entries=2)
    assert await auth.authenticate(bearer(GOOD)) == ALICE
    for i in range(10):
        assert await auth.authenticate(bearer(f"made-up-{i}")) is None
    assert await auth.authenticate(bearer(GOOD)) == ALICE
    assert review.calls.count(GOOD) == 1
    auth.max_failures = 3
    for i in range(10, 14):
        assert await auth.authenticate(bearer(f"made-up-{i}")) is None
    assert len(auth._failures) == 3  # bounded too
    await auth.authenticate(bearer("made-up-13"))
    assert review.calls.count("made-up-13") == 1


@pytest_twisted.ensureDeferred
async def test_a_token_whose_answer_changed_is_kept_once(review: FakeReview, clock: Clock) -> None:
    auth = TokenReviewAuthenticator(review=review, clock=clock, success_ttl=10.0, failure_ttl=10.0)
    assert await auth.authenticate(bearer(GOOD)) == ALICE
    del review.users[GOOD]  # revoked
    clock.advance(11)
    assert await auth.authenticate(bearer(GOOD)) is None
    assert (len(auth._cache), len(auth._failures)) == (0, 1)
    review.users[GOOD] = ALICE
    clock.advance(11)
    assert await auth.authenticate(bearer(GOOD)) == ALICE
    assert (len(auth._cache), len(auth._failures)) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_a_utf8_token_is_reviewed_as_sent(auth: TokenReviewAuthenticator, review: FakeReview) -> None:
    sent = "Bearer tokén".encode()
    assert await auth.authenticate(bearer_bytes(sent)) is None
    assert review.calls == ["tokén"]


def bearer_bytes(value: bytes) -> Credentials:
    """An Authorization header as the HTTP layer decodes it (`Credentials.headers`)."""
    return Credentials(
        peer_certificate=None, headers={"authorization": [value.decode("utf-8", "surrogateescape")]}
    )


# --- a review that fails for a passing cause is asked again (review r1authn L2) ----------------------


class Fixed(random.Random):
    """Jitter at a chosen point of its range: 0.0 none, 1.0 the most."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def api_error(code: int, reason: str, retry_after: int | None = None) -> KubeApiError:
    status = make_status(code, "injected", reason)
    if retry_after is not None:
        status["details"] = {"retryAfterSeconds": retry_after}
    return KubeApiError(status, code)


def reset() -> KubeUnreachable:
    try:
        raise ResponseNeverReceived([Failure(ConnectionLost("Connection reset by peer"))])
    except ResponseNeverReceived as error:
        try:
            raise KubeUnreachable("POST tokenreviews: connection reset") from error
        except KubeUnreachable as unreachable:
            return unreachable


@attrs.define
class Scripted:
    """A TokenReview that answers each attempt from ``answers`` in turn (an error as a failure), the
    last answer again once they are used up; the clock's time of each attempt in ``times``."""

    answers: list[UserInfo | Exception | None]
    clock: Clock
    times: list[float] = attrs.field(factory=list)

    def __call__(self, token: str) -> Deferred[UserInfo | None]:
        self.times.append(self.clock.seconds())
        answer = self.answers[min(len(self.times), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


def retrying(
    review: Callable[[str], Deferred[UserInfo | None]], clock: Clock, jitter: float = 0.0
) -> TokenReviewAuthenticator:
    return TokenReviewAuthenticator(review=review, clock=clock, rng=Fixed(jitter))


@pytest.mark.parametrize(
    "error",
    [
        api_error(429, "TooManyRequests"),
        api_error(500, "InternalError"),
        api_error(504, "Timeout"),
        api_error(503, "ServiceUnavailable", retry_after=1),
        api_error(409, "Conflict", retry_after=2),
        reset(),
    ],
    ids=["429", "500", "504", "503-retry-after", "retry-after", "reset"],
)
@pytest_twisted.ensureDeferred
async def test_a_passing_failure_is_asked_again_after_half_a_second(clock: Clock, error: Exception) -> None:
    review = Scripted([error, ALICE], clock)
    waiting = Deferred.fromCoroutine(retrying(review, clock).authenticate(bearer(GOOD)))
    assert review.times == [0.0] and not waiting.called
    clock.advance(0.499)
    assert len(review.times) == 1
    clock.advance(0.001)
    assert review.times == [0.0, 0.5]
    assert await waiting == ALICE


@pytest.mark.parametrize(
    "error",
    [
        api_error(401, "Unauthorized"),
        api_error(403, "Forbidden"),
        api_error(503, "ServiceUnavailable"),
        KubeUnreachable("POST tokenreviews: Connection was refused by other side"),
        KubeProtocolError("malformed TokenReview user"),
    ],
    ids=["401", "403", "503", "refused", "malformed"],
)
@pytest_twisted.ensureDeferred
async def test_other_failures_are_not_asked_again(clock: Clock, error: Exception) -> None:
    """As k8s.io/apiserver's webhook.DefaultShouldRetry: not a refused connection either."""
    review = Scripted([error, ALICE], clock)
    with pytest.raises(type(error)):
        await retrying(review, clock).authenticate(bearer(GOOD))
    clock.advance(60)
    assert review.times == [0.0]


@pytest.mark.parametrize(
    ("jitter", "waits"), [(0.0, [0.5, 0.75, 1.125, 1.6875]), (1.0, [0.6, 0.9, 1.35, 2.025])]
)
@pytest_twisted.ensureDeferred
async def test_five_attempts_with_growing_jittered_waits_then_the_last_error(
    clock: Clock, jitter: float, waits: list[float]
) -> None:
    """k8s.io/apiserver's webhook retry backoff: 0.5 s, x1.5, each wait lengthened by up to 20 %,
    5 attempts; then the last attempt's error, not cached."""
    errors = [api_error(500, "InternalError") for _ in range(5)]
    review = Scripted(list(errors), clock)
    auth = retrying(review, clock, jitter)
    waiting = Deferred.fromCoroutine(auth.authenticate(bearer(GOOD)))
    failures: list[Failure] = []
    waiting.addErrback(failures.append)
    clock.pump([0.001] * 6000)
    assert [b - a for a, b in itertools.pairwise(review.times)] == pytest.approx(waits, abs=0.001)
    assert len(failures) == 1 and failures[0].value is errors[-1]
    again = Deferred.fromCoroutine(auth.authenticate(bearer(GOOD)))
    assert len(review.times) == 6
    again.addErrback(lambda failure: failure.trap(KubeApiError))


@pytest_twisted.ensureDeferred
async def test_the_attempts_and_waits_end_ten_seconds_after_the_first(clock: Clock) -> None:
    """k8s.io/apiserver's token request timeout bounds the whole review: a hung attempt is cut at
    10 s and not followed by another; a deadline during a wait ends with the error waited on."""
    attempts: list[Deferred[UserInfo | None]] = []

    def review(token: str) -> Deferred[UserInfo | None]:
        attempts.append(Deferred())
        return attempts[-1]

    auth = retrying(review, clock)
    hung = Deferred.fromCoroutine(auth.authenticate(bearer(GOOD)))
    clock.advance(9.999)
    assert not hung.called
    clock.advance(0.001)
    assert hung.called
    with pytest.raises(DeadlineExpired):
        await hung
    assert len(attempts) == 1 and attempts[0].called  # cancelled
    attempts[0].addErrback(lambda failure: failure.trap(CancelledError))

    slow = Deferred.fromCoroutine(auth.authenticate(bearer(BAD)))
    clock.advance(9.8)
    error = api_error(500, "InternalError")
    attempts[1].errback(error)
    clock.advance(0.2)  # within the 0.5 s wait
    assert slow.called and len(attempts) == 2
    with pytest.raises(KubeApiError) as raised:
        await slow
    assert raised.value is error


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_share_one_retried_review_which_ends_with_its_last_waiter(
    clock: Clock,
) -> None:
    review = Scripted([api_error(429, "TooManyRequests"), ALICE], clock)
    auth = retrying(review, clock)
    waiting = [Deferred.fromCoroutine(auth.authenticate(bearer(GOOD))) for _ in range(3)]
    clock.advance(0.5)
    assert all(d.called for d in waiting)
    assert [await d for d in waiting] == [ALICE] * 3
    assert review.times == [0.0, 0.5]

    # Every request that waited gone (its client, its deadline) during a wait: no attempt after it.
    refused = Scripted([api_error(429, "TooManyRequests")], clock)
    auth = retrying(refused, clock)
    gone = [Deferred.fromCoroutine(auth.authenticate(bearer(GOOD))) for _ in range(2)]
    for d in gone:
        d.addErrback(lambda failure: failure.trap(CancelledError))
        d.cancel()
    clock.advance(60)
    assert len(refused.times) == 1


# --- TokenReview attempts under way at once are bounded, shared out by client (review r1flood L2) -----


@attrs.define
class Held:
    """A cluster API that holds each TokenReview until the test answers it: the tokens it was asked, in
    order, those it holds now, and the most it held at once."""

    asked: list[str] = attrs.field(factory=list)
    holding: dict[str, Deferred[UserInfo | None]] = attrs.field(factory=dict)
    most: int = 0

    def __call__(self, token: str) -> Deferred[UserInfo | None]:
        self.asked.append(token)

        def gone(_: object) -> None:  # cancelled: the client left
            self.holding.pop(token, None)

        held: Deferred[UserInfo | None] = Deferred(gone)
        self.holding[token] = held
        self.most = max(self.most, len(self.holding))
        return held

    def answer(self, token: str, answer: UserInfo | Exception | None = None) -> None:
        held = self.holding.pop(token)
        if isinstance(answer, Exception):
            held.errback(answer)
        else:
            held.callback(answer)


def from_address(token: str, host: str) -> Credentials:
    return attrs.evolve(bearer(token), client=("address", host))


def asking(auth: TokenReviewAuthenticator, host: str, tokens: list[str]) -> list[Deferred[UserInfo | None]]:
    return [Deferred.fromCoroutine(auth.authenticate(from_address(token, host))) for token in tokens]


@pytest_twisted.ensureDeferred
async def test_the_cluster_api_never_holds_more_than_the_bound_of_reviews(clock: Clock) -> None:
    held = Held()
    auth = TokenReviewAuthenticator(review=held, clock=clock)
    tokens = [f"made-up-{i}" for i in range(10 * REVIEWS_AT_ONCE)]
    waiting = [d for i in range(10) for d in asking(auth, f"10.0.0.{i}", tokens[i::10])]
    assert len(held.holding) == REVIEWS_AT_ONCE
    while held.holding:
        held.answer(next(iter(held.holding)))
    assert held.most == REVIEWS_AT_ONCE
    assert sorted(held.asked) == sorted(tokens)
    assert [await d for d in waiting] == [None] * len(tokens)


# The addresses it takes to hold every slot: a flood from fewer leaves slots free for the others.
FILLING = REVIEWS_AT_ONCE // REVIEWS_PER_CLIENT


def from_many(auth: TokenReviewAuthenticator, tokens: list[str], net: str = "10.0.0") -> list[Deferred[Any]]:
    """``tokens`` asked in order from FILLING addresses of ``net``, REVIEWS_PER_CLIENT from each in
    turn: the first REVIEWS_AT_ONCE of them take every slot."""
    return [
        Deferred.fromCoroutine(
            auth.authenticate(from_address(token, f"{net}.{i // REVIEWS_PER_CLIENT % FILLING}"))
        )
        for i, token in enumerate(tokens)
    ]


@pytest_twisted.ensureDeferred
async def test_another_address_s_review_starts_before_the_flooding_one_s_queued_reviews(clock: Clock) -> None:
    held = Held()
    auth = TokenReviewAuthenticator(review=held, clock=clock)
    flood = [f"flood-{i}" for i in range(REVIEWS_AT_ONCE + REVIEWS_PER_CLIENT)]
    flooding = from_many(auth, flood)  # every slot held, 10.0.0.0's next 8 queued
    (mine,) = asking(auth, "10.0.9.9", [GOOD])
    assert held.asked == flood[:REVIEWS_AT_ONCE]
    held.answer(flood[0])  # 10.0.0.0's: it holds 7, the others 8, 10.0.9.9 none
    assert held.asked[-1] == GOOD  # at the first free slot, ahead of the 8 queued before it
    held.answer(GOOD, ALICE)
    assert await mine == ALICE
    while held.holding:
        held.answer(next(iter(held.holding)))
    assert held.asked == [*flood[:REVIEWS_AT_ONCE], GOOD, *flood[REVIEWS_AT_ONCE:]]
    assert [await d for d in flooding] == [None] * len(flood)


@pytest_twisted.ensureDeferred
async def test_a_cancelled_waiter_never_reaches_the_cluster_api_and_gives_up_its_place(clock: Clock) -> None:
    held = Held()
    auth = TokenReviewAuthenticator(review=held, clock=clock)
    flood = [f"flood-{i}" for i in range(REVIEWS_AT_ONCE + 1)]
    flooding = from_many(auth, flood)
    (gone,) = asking(auth, "10.0.9.9", [GOOD])
    gone.addErrback(lambda failure: failure.trap(CancelledError))
    gone.cancel()  # its client lost, its deadline passed
    held.answer(flood[0])
    # The slot its waiter would have had (it holds none: its turn came first) went to the flood's.
    assert held.asked == flood and len(held.holding) == REVIEWS_AT_ONCE
    while held.holding:
        held.answer(next(iter(held.holding)))
    assert GOOD not in held.asked
    assert [await d for d in flooding] == [None] * len(flood)
    assert gone.called


@pytest_twisted.ensureDeferred
async def test_the_waits_between_attempts_hold_no_slot(clock: Clock) -> None:
    held = Held()
    auth = TokenReviewAuthenticator(review=held, clock=clock, rng=Fixed(0.0))
    first = [f"first-{i}" for i in range(REVIEWS_AT_ONCE)]
    then = [f"then-{i}" for i in range(REVIEWS_AT_ONCE)]
    failing = from_many(auth, first, "10.0.0")
    later = from_many(auth, then, "10.0.1")
    for token in first:
        held.answer(token, api_error(500, "InternalError"))  # asked again in 0.5 s
    # While the first wait for their next attempt, the others have every slot.
    assert sorted(held.holding) == sorted(then)
    clock.advance(ReviewRetry().initial)
    assert sorted(held.holding) == sorted(then)  # the retries wait for a slot, as anyone
    for token in then:
        held.answer(token)
    assert sorted(held.holding) == sorted(first)
    for token in first:
        held.answer(token)
    assert [await d for d in failing + later] == [None] * (2 * REVIEWS_AT_ONCE)
    assert held.most == REVIEWS_AT_ONCE


@pytest_twisted.ensureDeferred
async def test_the_wait_for_a_slot_counts_within_the_review_s_ten_seconds(clock: Clock) -> None:
    held = Held()
    auth = TokenReviewAuthenticator(review=held, clock=clock)
    flooding = from_many(auth, [f"flood-{i}" for i in range(REVIEWS_AT_ONCE)])
    for d in flooding:
        d.addErrback(lambda failure: failure.trap(DeadlineExpired))
    clock.advance(5.0)
    (late,) = asking(auth, "10.0.9.9", [GOOD])
    clock.advance(4.75)
    assert GOOD not in held.asked
    clock.advance(0.25)  # the flood's reviews cut at their 10 s: its turn
    assert held.asked[-1] == GOOD
    clock.advance(4.75)
    assert not late.called
    clock.advance(0.25)  # 10 s after its request came, 5 s after its attempt began
    assert late.called
    with pytest.raises(DeadlineExpired):
        await late
    assert held.holding == {} and auth.slots.held == 0


@pytest_twisted.ensureDeferred
async def test_a_deadline_while_a_retry_waits_for_a_slot_ends_with_the_error_waited_on(clock: Clock) -> None:
    """The 401's logged cause is the cluster API's answer, not "no answer within 10s" (review r2tokcap
    L1)."""
    held = Held()
    auth = TokenReviewAuthenticator(review=held, clock=clock, rng=Fixed(0.0))
    (mine,) = asking(auth, "10.0.9.9", [GOOD])
    held.answer(GOOD, api_error(500, "InternalError"))  # asked again in 0.5 s
    clock.advance(0.1)
    flooding = from_many(auth, [f"flood-{i}" for i in range(REVIEWS_AT_ONCE)])  # every slot held
    for d in flooding:
        d.addErrback(lambda failure: failure.trap(DeadlineExpired))
    clock.advance(ReviewRetry().initial)
    assert held.asked == [GOOD] + [f"flood-{i}" for i in range(REVIEWS_AT_ONCE)]  # its retry waits
    clock.advance(ReviewRetry().timeout - ReviewRetry().initial - 0.1)  # its 10 s, waiting for a slot
    assert mine.called
    with pytest.raises(KubeApiError) as raised:
        await mine
    assert raised.value.code == 500
    clock.advance(0.1)
    assert held.holding == {} and auth.slots.held == 0


# --- One address's made-up tokens while the cluster API holds or slows their reviews (a token webhook
# down or slow: kube-apiserver answers service-account tokens before it), against another's good token
# (review r2tokcap F1). Each connection of the flooding pod sends a new made-up token as soon as the
# last was answered, up to --max-connections-per-client's default of 100.
PER_CLIENT_CONNECTIONS = 100


def flood_from(auth: TokenReviewAuthenticator, host: str, connections: int) -> None:
    made = itertools.count()

    def connection(_: object = None) -> None:
        d = Deferred.fromCoroutine(auth.authenticate(from_address(f"made-up-{next(made)}", host)))
        d.addBoth(connection)

    for _ in range(connections):
        connection()


def made_up_held(clock: Clock, made_up_takes: float | None, good_takes: float) -> Review:
    """Reviews of made-up tokens held (``made_up_takes`` None) or answered "nobody" after it; others
    answered ALICE after ``good_takes``."""

    def review(token: str) -> Deferred[UserInfo | None]:
        made_up = token.startswith("made-up")
        takes = made_up_takes if made_up else good_takes
        if takes is None:
            return Deferred(lambda _: None)  # held until cut
        if not takes:
            return succeed(None if made_up else ALICE)
        d: Deferred[UserInfo | None] = Deferred()
        clock.callLater(takes, d.callback, None if made_up else ALICE)
        return d

    return review


def wait_for(clock: Clock, auth: TokenReviewAuthenticator, token: str, host: str, step: float) -> float:
    """How long ``token`` from ``host`` waits for ALICE, the clock advanced by ``step``."""
    came = clock.seconds()
    mine = Deferred.fromCoroutine(auth.authenticate(from_address(token, host)))
    while not mine.called:
        clock.advance(step)
    assert mine.result == ALICE
    return round(clock.seconds() - came, 2)


def test_one_address_flood_of_held_reviews_leaves_slots_for_another_address(clock: Clock) -> None:
    auth = TokenReviewAuthenticator(review=made_up_held(clock, None, 0.0), clock=clock)
    flood_from(auth, "10.0.0.1", PER_CLIENT_CONNECTIONS)
    assert auth.slots.held == REVIEWS_PER_CLIENT
    waits = []
    for i in range(20):  # each a new good token (a pod started, a token rotated): not in the cache
        clock.advance(1.5)
        waits.append(wait_for(clock, auth, f"good-{i}", "10.0.0.2", 0.1))
    # It waited up to the flood's held reviews' 10 s when they could hold every slot.
    assert waits == [0.0] * 20


def test_one_address_flood_of_slow_reviews_leaves_slots_for_another_address(clock: Clock) -> None:
    auth = TokenReviewAuthenticator(review=made_up_held(clock, 2.0, 0.005), clock=clock)
    flood_from(auth, "10.0.0.1", PER_CLIENT_CONNECTIONS)
    waits = []
    for i in range(20):
        clock.advance(0.37)
        waits.append(wait_for(clock, auth, f"good-{i}", "10.0.0.2", 0.005))
    assert max(waits) <= 0.01, waits  # its own review's time; 1.64 s when the flood could hold every slot


def test_a_good_token_coming_just_after_one_address_s_flood_is_asked_at_once(clock: Clock) -> None:
    """It came 1 ms after the flood's reviews: it was asked only as theirs were cut at their 10 s, with
    1 ms of its own left, and refused (DeadlineExpired: a 401)."""
    auth = TokenReviewAuthenticator(review=made_up_held(clock, None, 0.005), clock=clock)
    for i in range(REVIEWS_AT_ONCE + REVIEWS_PER_CLIENT):
        flooding = Deferred.fromCoroutine(auth.authenticate(from_address(f"made-up-{i}", "10.0.0.1")))
        flooding.addErrback(lambda failure: failure.trap(DeadlineExpired))
    clock.advance(0.001)
    assert wait_for(clock, auth, "good", "10.0.0.2", 0.005) <= 0.01


def test_a_good_token_behind_the_flood_s_own_address_waits_for_that_address_s_turn(clock: Clock) -> None:
    """A pod behind the flooding pod's address (a NAT): the address is the unit of fairness, so its
    review waits behind the address's own, here until the held ones are cut at their 10 s. Sharing an
    address with a flooding pod was already costly: its connections take the address's 100."""
    auth = TokenReviewAuthenticator(review=made_up_held(clock, None, 0.005), clock=clock)
    flood_from(auth, "10.0.0.1", PER_CLIENT_CONNECTIONS - 1)
    clock.advance(1.5)
    assert wait_for(clock, auth, "good", "10.0.0.1", 0.05) == 8.55
    assert auth.slots.held <= REVIEWS_PER_CLIENT
