"""A cancelled RegistryClient request ends in CancelledError, however Twisted reports the cancellation.

Mostly on the client's real Agent and HostnameEndpoint over a MemoryReactorClock whose name resolver
the test drives: a request cancelled while its host name is being resolved fails inside Twisted with
DNSLookupError("Couldn't find the hostname …"), which looks just like a name that does not resolve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from payloadtags.registry import RegistryClient, RegistrySettings, RegistryTimeout, RegistryUnavailable
from tests.support.resolver import HeldResolver, held_reactor

REGISTRY = "http://registry.test:5000"
DIGEST = "sha256:" + "a" * 64


@pytest.fixture
def reactor() -> tuple[MemoryReactorClock, HeldResolver]:
    return held_reactor()


def track(d: Deferred[Any]) -> list[Any]:
    """The outcome of `d` once it has one. (A cancelled coroutine's Deferred is `called` at once,
    while it waits for the coroutine to end: `called` does not tell.)"""
    results: list[Any] = []
    d.addBoth(results.append)
    return results


def failure_of(results: list[Any], kind: type[BaseException]) -> Failure:
    assert len(results) == 1, results
    [result] = results
    assert isinstance(result, Failure), result
    assert result.check(kind), result.getTraceback()
    return result


CALLS: dict[str, Callable[[RegistryClient], Any]] = {
    "ping": lambda client: client.ping(),
    "catalog": lambda client: client.catalog(),
    "tags": lambda client: client.tags("team/app"),
    "manifest": lambda client: client.manifest("team/app", "v1"),
    "resolve": lambda client: client.resolve("team/app", "v1"),
    "blob": lambda client: client.blob("team/app", DIGEST),
    "delete_tag": lambda client: client.delete_tag("team/app", "v1"),
    "delete_manifest": lambda client: client.delete_manifest("team/app", DIGEST),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_cancel_during_name_resolution_is_a_cancellation(reactor: Any, call: Any) -> None:
    clock, resolver = reactor
    client = RegistryClient(clock, RegistrySettings(url=REGISTRY, timeout=10))
    d = Deferred.fromCoroutine(call(client))
    results = track(d)
    assert resolver.names == ["registry.test"]
    d.cancel()
    failure_of(results, CancelledError)
    assert not clock.getDelayedCalls()  # the request timer went with it


def test_cancel_while_connecting_is_a_cancellation(reactor: Any) -> None:
    clock, resolver = reactor
    client = RegistryClient(clock, RegistrySettings(url=REGISTRY, timeout=10))
    d = Deferred.fromCoroutine(client.tags("team/app"))
    results = track(d)
    resolver.finish("192.0.2.1")
    assert len(clock.tcpClients) == 1  # a connection attempt is under way, never answered
    d.cancel()
    failure_of(results, CancelledError)


def test_a_timeout_during_name_resolution_is_still_a_timeout(reactor: Any) -> None:
    clock, _resolver = reactor
    client = RegistryClient(clock, RegistrySettings(url=REGISTRY, timeout=10))
    results = track(Deferred.fromCoroutine(client.tags("team/app")))
    clock.advance(9.9)
    assert results == []
    clock.advance(0.2)
    failure = failure_of(results, RegistryTimeout)
    assert "within 10s" in str(failure.value)


def test_a_name_that_does_not_resolve_is_still_unavailable(reactor: Any) -> None:
    clock, resolver = reactor
    client = RegistryClient(clock, RegistrySettings(url=REGISTRY, timeout=10))
    results = track(Deferred.fromCoroutine(client.tags("team/app")))
    resolver.finish()  # no addresses
    failure = failure_of(results, RegistryUnavailable)
    assert "cannot resolve the host name" in str(failure.value)
    assert not clock.getDelayedCalls()


# --- an agent of the test's own: how a request ends when it is cancelled ----------------------------------


class _Response:
    def __init__(self, code: int, headers: dict[str, str], body: bytes) -> None:
        self.code = code
        self.headers = Headers({k: [v] for k, v in headers.items()})
        self.length = len(body)
        self._body = body

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(None)
        protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(ResponseDone()))


@implementer(IAgent)
class Agent:
    """Answers each request with `answer(method, url)`: a response, or a Deferred of one."""

    def __init__(self, answer: Callable[[str, str], Any]) -> None:
        self.answer = answer
        self.sent: list[str] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:
        self.sent.append(f"{method.decode()} {uri.decode()}")
        answer = self.answer(method.decode(), uri.decode())
        return answer if isinstance(answer, Deferred) else succeed(answer)


def refused_when_cancelled() -> Deferred[Any]:
    """A connection attempt that, cancelled, reports the refusal it was waiting for."""
    return Deferred(lambda d: d.errback(ConnectionRefusedError("connection refused")))


def slow_to_cancel(after: Deferred[Any]) -> Deferred[Any]:
    """A request that a cancel does not end at once: once cancelled, it ends as `after` does."""
    d: Deferred[Any] = Deferred()
    d.addErrback(lambda _cancelled: after)
    return d


def test_a_connection_error_on_cancel_is_a_cancellation() -> None:
    clock = MemoryReactorClock()
    agent = Agent(lambda method, url: refused_when_cancelled())
    client = RegistryClient(clock, RegistrySettings(url=REGISTRY, timeout=10), agent=agent)
    d = Deferred.fromCoroutine(client.manifest("team/app", "v1"))
    results = track(d)
    d.cancel()
    failure_of(results, CancelledError)


def test_the_same_connection_error_without_a_cancel_is_unavailable() -> None:
    clock = MemoryReactorClock()
    pending: list[Deferred[Any]] = []

    def request(method: str, url: str) -> Deferred[Any]:
        pending.append(Deferred())
        return pending[-1]

    agent = Agent(request)
    client = RegistryClient(clock, RegistrySettings(url=REGISTRY, timeout=10), agent=agent)
    results = track(Deferred.fromCoroutine(client.manifest("team/app", "v1")))
    pending[0].errback(ConnectionRefusedError("connection refused"))
    failure_of(results, RegistryUnavailable)


def test_cancel_during_a_token_request_is_a_cancellation() -> None:
    clock = MemoryReactorClock()
    token_requests: list[Deferred[Any]] = []

    def answer(method: str, url: str) -> Any:
        if url.startswith("http://auth.test/"):
            token_requests.append(refused_when_cancelled())
            return token_requests[-1]
        challenge = (
            'Bearer realm="http://auth.test/token",service="registry",scope="repository:team/app:pull"'
        )
        return _Response(401, {"WWW-Authenticate": challenge}, b"")

    client = RegistryClient(clock, RegistrySettings(url=REGISTRY, timeout=10), agent=Agent(answer))
    d = Deferred.fromCoroutine(client.tags("team/app"))
    results = track(d)
    assert len(token_requests) == 1
    d.cancel()
    failure_of(results, CancelledError)


def test_a_cancel_that_fails_later_waits_then_is_a_cancellation() -> None:
    """A request that does not end at once on cancel keeps its connection slot until it ends; the
    caller waits for that, then gets CancelledError, whatever the request failed with meanwhile."""
    clock = MemoryReactorClock()
    after: Deferred[Any] = Deferred()
    agent = Agent(lambda method, url: slow_to_cancel(after))
    client = RegistryClient(clock, RegistrySettings(url=REGISTRY, timeout=10, max_connections=1), agent=agent)
    d = Deferred.fromCoroutine(client.tags("team/a"))
    results = track(d)
    d.cancel()
    assert results == []  # not ended yet: nothing left running unobserved
    queued = track(Deferred.fromCoroutine(client.tags("team/b")))
    assert len(agent.sent) == 1  # the cancelled request still holds the only slot
    after.errback(ConnectionRefusedError("connection refused"))
    failure_of(results, CancelledError)
    assert len(agent.sent) == 2 and queued == []  # the slot went to the next request


def test_a_cancel_after_the_timeout_is_a_cancellation() -> None:
    clock = MemoryReactorClock()
    # Cancelled by the timer first (it waits on `after`), then by the caller (`after` fails).
    after: Deferred[Any] = Deferred(lambda a: a.errback(ConnectionRefusedError("connection refused")))
    client = RegistryClient(
        clock, RegistrySettings(url=REGISTRY, timeout=10), agent=Agent(lambda m, u: slow_to_cancel(after))
    )
    d = Deferred.fromCoroutine(client.tags("team/app"))
    results = track(d)
    clock.advance(10)
    assert results == []
    d.cancel()  # the caller gives up too: it asked to stop, so it is told CancelledError
    failure_of(results, CancelledError)


def test_an_answer_that_comes_despite_a_cancel_is_kept() -> None:
    """A cancel is a request: work that completes anyway is not thrown away (Twisted's rule)."""
    clock = MemoryReactorClock()
    after: Deferred[Any] = Deferred()
    client = RegistryClient(
        clock, RegistrySettings(url=REGISTRY, timeout=10), agent=Agent(lambda m, u: slow_to_cancel(after))
    )
    d = Deferred.fromCoroutine(client.tags("team/app"))
    results = track(d)
    d.cancel()
    after.callback(_Response(200, {"Content-Type": "application/json"}, b'{"tags":["b","a"]}'))
    assert results == [("a", "b")]
