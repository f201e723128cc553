"""A cancelled KubeClient request ends in CancelledError, however Twisted reports the cancellation.

The client runs on its real Agent and HostnameEndpoint over a MemoryReactorClock whose name resolver
the test drives: a request cancelled while its host name is being resolved fails inside Twisted with
DNSLookupError("Couldn't find the hostname …"), which looks just like a name that does not resolve.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from payloadtags.kube import ClusterConfig, KubeClient, KubeTimeout, KubeUnavailable
from tests.support.resolver import HeldResolver, held_reactor

SERVER = "http://kube.test:6443"
CM = "/api/v1/namespaces/default/configmaps/a"


@pytest.fixture
def reactor() -> tuple[MemoryReactorClock, HeldResolver]:
    return held_reactor()


class FakeResponse:
    """Just enough of IResponse for the client to read a whole body."""

    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.body = body
        self.length = len(body)
        self.headers = Headers()

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(None)
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


def outcome(d: Deferred[Any]) -> Any:
    results = track(d)
    assert results, "not finished"
    return results[0]


def track(d: Deferred[Any]) -> list[Any]:
    """The outcome of `d` once it has one. (A cancelled coroutine's Deferred is `called` at once,
    while it waits for the coroutine to end: `called` does not tell.)"""
    results: list[Any] = []
    d.addBoth(results.append)
    return results


def slow_to_cancel(after: Deferred[Any]) -> Deferred[Any]:
    """A request that a cancel does not end at once: once cancelled, it ends as `after` does."""
    d: Deferred[Any] = Deferred()
    d.addErrback(lambda _cancelled: after)
    return d


@pytest.mark.parametrize(
    "request_",
    [
        lambda client: client.get(CM),
        lambda client: client.create("/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a"}}),
        lambda client: client.delete(CM),
        lambda client: client.watch("/api/v1/namespaces", {"timeoutSeconds": "60"}),
        lambda client: client.token_review("t0ken"),
    ],
    ids=["get", "create", "delete", "watch", "token_review"],
)
def test_cancel_during_name_resolution_is_a_cancellation(reactor: Any, request_: Any) -> None:
    clock, resolver = reactor
    client = KubeClient(clock, ClusterConfig(SERVER), request_timeout=10)
    d = Deferred.fromCoroutine(request_(client))
    assert resolver.names == ["kube.test"]
    d.cancel()
    result = outcome(d)
    assert isinstance(result, Failure), result
    assert result.check(CancelledError), result.getTraceback()
    assert not clock.getDelayedCalls()  # the request timer went with it


def test_cancel_while_connecting_is_a_cancellation(reactor: Any) -> None:
    clock, resolver = reactor
    client = KubeClient(clock, ClusterConfig(SERVER), request_timeout=10)
    d = Deferred.fromCoroutine(client.get(CM))
    resolver.finish("192.0.2.1")
    assert len(clock.tcpClients) == 1  # a connection attempt is under way, never answered
    d.cancel()
    result = outcome(d)
    assert isinstance(result, Failure) and result.check(CancelledError), result


def test_a_timeout_during_name_resolution_is_still_a_timeout(reactor: Any) -> None:
    clock, _resolver = reactor
    client = KubeClient(clock, ClusterConfig(SERVER), request_timeout=10)
    d = Deferred.fromCoroutine(client.get(CM))
    results = track(d)
    clock.advance(9.9)
    assert results == []
    clock.advance(0.2)
    [result] = results
    assert isinstance(result, Failure) and result.check(KubeTimeout), result
    assert "10s" in str(result.value)


def test_a_name_that_does_not_resolve_is_still_unavailable(reactor: Any) -> None:
    clock, resolver = reactor
    client = KubeClient(clock, ClusterConfig(SERVER), request_timeout=10)
    d = Deferred.fromCoroutine(client.get(CM))
    resolver.finish()  # no addresses
    result = outcome(d)
    assert isinstance(result, Failure) and result.check(KubeUnavailable), result
    assert "kube.test" in str(result.value)
    assert not clock.getDelayedCalls()


def test_a_cancel_that_fails_later_still_ends_in_cancelled_error(reactor: Any) -> None:
    """When the request does not end at once on cancel, the caller waits for it, then gets
    CancelledError, whatever the request failed with meanwhile."""
    clock, _resolver = reactor
    client = KubeClient(clock, ClusterConfig(SERVER), request_timeout=10)
    after: Deferred[Any] = Deferred()
    sent = [slow_to_cancel(after)]
    client._http.request = lambda *_a, **_k: sent[0]  # type: ignore[method-assign]
    d = Deferred.fromCoroutine(client.get(CM))
    results = track(d)
    d.cancel()
    assert results == []  # the request has not ended yet: nothing is left running unobserved
    after.errback(KubeUnavailable("connection reset"))  # stands for any failure after the cancel
    [result] = results
    assert isinstance(result, Failure) and result.check(CancelledError), result
    assert not clock.getDelayedCalls()


def test_a_cancel_after_the_timeout_is_a_cancellation(reactor: Any) -> None:
    clock, _resolver = reactor
    client = KubeClient(clock, ClusterConfig(SERVER), request_timeout=10)
    # Cancelled by the timer first (it waits on `after`), then by the caller (`after` fails).
    after: Deferred[Any] = Deferred(lambda a: a.errback(KubeUnavailable("connection reset")))
    sent = [slow_to_cancel(after)]
    client._http.request = lambda *_a, **_k: sent[0]  # type: ignore[method-assign]
    d = Deferred.fromCoroutine(client.get(CM))
    results = track(d)
    clock.advance(10)
    assert results == []
    d.cancel()  # the caller gives up too: it asked to stop, so it is told CancelledError
    [result] = results
    assert isinstance(result, Failure) and result.check(CancelledError), result


def test_an_answer_that_comes_despite_a_cancel_is_kept(reactor: Any) -> None:
    """A cancel is a request: work that completes anyway is not thrown away (Twisted's rule)."""
    clock, _resolver = reactor
    client = KubeClient(clock, ClusterConfig(SERVER), request_timeout=10)
    after: Deferred[Any] = Deferred()
    sent = [slow_to_cancel(after)]
    client._http.request = lambda *_a, **_k: sent[0]  # type: ignore[method-assign]
    d = Deferred.fromCoroutine(client.delete(CM))
    d.cancel()
    after.callback(FakeResponse(200, b'{"kind":"Status","status":"Success"}'))
    assert outcome(d) == {"kind": "Status", "status": "Success"}
