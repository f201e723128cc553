"""WatchStream decoding and lifetime against a fake HTTP response, and the token file source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from zope.interface import implementer

from payloadtags.kube import ClusterConfig, WatchEvent, resource_path
from payloadtags.kube.client import WatchStream, _TokenSource
from payloadtags.kube.errors import (
    KubeApiError,
    KubeProtocolError,
    KubeStreamLost,
    KubeTimeout,
    KubeUnavailable,
)


@implementer(IPushProducer)
class FakeBodyTransport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class FakeResponse:
    code = 200

    def __init__(self) -> None:
        self.transport = FakeBodyTransport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def end(self, error: Exception | None = None) -> None:
        self.protocol.connectionLost(Failure(error or ResponseDone()))


def next_event(stream: WatchStream) -> Deferred[WatchEvent]:
    return Deferred.fromCoroutine(stream.__anext__())


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure_of(d: Deferred[Any], error: type[BaseException]) -> BaseException:
    with pytest.raises(error) as info:
        result(d)
    return info.value


@pytest.fixture
def response() -> FakeResponse:
    return FakeResponse()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_events_split_across_chunks_then_a_clean_end(response: FakeResponse, clock: Clock) -> None:
    stream = WatchStream(response, clock)  # type: ignore[arg-type]
    pending = next_event(stream)
    assert not pending.called
    response.send(b'{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"5"}}}\n{"type":"MOD')
    event = result(pending)
    assert event.type == "ADDED" and event.resource_version == "5"
    response.send(b'IFIED","object":{"metadata":{"name":"a"}}}\n')
    assert result(next_event(stream)).type == "MODIFIED"
    response.end()
    failure_of(next_event(stream), StopAsyncIteration)


def test_an_error_event_raises_its_status_and_closes(response: FakeResponse, clock: Clock) -> None:
    stream = WatchStream(response, clock)  # type: ignore[arg-type]
    response.send(
        b'{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure",'
        b'"message":"too old resource version: 1 (9)","reason":"Expired","code":410}}\n'
    )
    error = failure_of(next_event(stream), KubeApiError)
    assert isinstance(error, KubeApiError) and error.code == 410 and error.expired
    assert response.transport.calls == ["stop"]


def test_a_broken_connection_delivers_what_arrived_then_raises(response: FakeResponse, clock: Clock) -> None:
    stream = WatchStream(response, clock)  # type: ignore[arg-type]
    response.send(b'{"type":"ADDED","object":{}}\n')
    response.end(ResponseFailed([Failure(ConnectionLost("reset"))]))
    assert result(next_event(stream)).type == "ADDED"
    error = failure_of(next_event(stream), KubeStreamLost)
    assert isinstance(error, KubeUnavailable)
    assert "reset" in str(error)


def test_a_clean_end_inside_an_event_is_a_lost_stream(response: FakeResponse, clock: Clock) -> None:
    stream = WatchStream(response, clock)  # type: ignore[arg-type]
    response.send(b'{"type":"ADDED","obj')
    response.end()
    failure_of(next_event(stream), KubeStreamLost)


@pytest.mark.parametrize("line", [b"not json", b"[1,2]", b'{"type":"ADDED"}', b'{"type":1,"object":{}}'])
def test_undecodable_lines_fail_the_stream(response: FakeResponse, clock: Clock, line: bytes) -> None:
    stream = WatchStream(response, clock)  # type: ignore[arg-type]
    response.send(line + b"\n")
    failure_of(next_event(stream), KubeProtocolError)
    assert response.transport.calls == ["stop"]


def test_the_stream_deadline_cuts_a_silent_stream(response: FakeResponse, clock: Clock) -> None:
    stream = WatchStream(response, clock, stream_timeout=30)  # type: ignore[arg-type]
    pending = next_event(stream)
    clock.advance(29.9)
    assert not pending.called
    clock.advance(0.1)
    failure_of(pending, KubeTimeout)
    assert response.transport.calls == ["stop"]


def test_a_clean_end_cancels_the_deadline(response: FakeResponse, clock: Clock) -> None:
    stream = WatchStream(response, clock, stream_timeout=30)  # type: ignore[arg-type]
    response.end()
    assert clock.getDelayedCalls() == []
    failure_of(next_event(stream), StopAsyncIteration)


def test_a_slow_consumer_pauses_the_connection(response: FakeResponse, clock: Clock) -> None:
    stream = WatchStream(response, clock, high_water=4)  # type: ignore[arg-type]
    response.send(b'{"type":"ADDED","object":{}}\n' * 4)
    assert response.transport.calls == ["pause"]
    result(next_event(stream))
    assert response.transport.calls == ["pause"]
    result(next_event(stream))
    assert response.transport.calls == ["pause", "resume"]


def test_cancelling_a_wait_closes_the_stream(response: FakeResponse, clock: Clock) -> None:
    closed: list[WatchStream] = []
    stream = WatchStream(response, clock)  # type: ignore[arg-type]
    stream.on_close(closed.append)
    pending = next_event(stream)
    pending.cancel()
    failure_of(pending, CancelledError)
    assert response.transport.calls == ["stop"]
    assert closed == [stream]
    # The connection then reports its loss; nothing more happens.
    response.end(ResponseFailed([Failure(ConnectionLost())]))
    failure_of(next_event(stream), StopAsyncIteration)


def test_close_ends_iteration_for_a_waiting_consumer(response: FakeResponse, clock: Clock) -> None:
    stream = WatchStream(response, clock)  # type: ignore[arg-type]
    pending = next_event(stream)
    stream.close()
    failure_of(pending, StopAsyncIteration)
    stream.close()
    assert response.transport.calls == ["stop"]


def test_token_file_is_reread_once_a_period_and_after_invalidation(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("one\n")
    clock = Clock()
    source = _TokenSource(ClusterConfig("https://k", token_file=str(token_file)), clock, 60.0)
    assert source.current() == "one"
    token_file.write_text("two")
    clock.advance(59)
    assert source.current() == "one"
    clock.advance(1)
    assert source.current() == "two"
    token_file.write_text("three")
    source.invalidate()
    assert source.current() == "three"


def test_an_unreadable_token_file_keeps_the_last_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("one")
    clock = Clock()
    source = _TokenSource(ClusterConfig("https://k", token_file=str(token_file)), clock, 60.0)
    assert source.current() == "one"
    token_file.unlink()
    clock.advance(60)
    assert source.current() == "one"


def test_a_missing_token_file_at_first_use_is_unavailable(tmp_path: Path) -> None:
    source = _TokenSource(ClusterConfig("https://k", token_file=str(tmp_path / "none")), Clock(), 60.0)
    with pytest.raises(KubeUnavailable):
        source.current()


def test_a_static_token_is_used_as_is() -> None:
    assert _TokenSource(ClusterConfig("https://k", token="t"), Clock(), 60.0).current() == "t"
    assert _TokenSource(ClusterConfig("https://k"), Clock(), 60.0).current() is None


def test_resource_paths() -> None:
    assert resource_path("", "v1", "namespaces") == "/api/v1/namespaces"
    assert resource_path("", "v1", "namespaces", name="a") == "/api/v1/namespaces/a"
    assert resource_path("", "v1", "configmaps", "ns", "x y") == "/api/v1/namespaces/ns/configmaps/x%20y"
    assert (
        resource_path("rbac.authorization.k8s.io", "v1", "clusterroles", name="system:admin")
        == "/apis/rbac.authorization.k8s.io/v1/clusterroles/system%3Aadmin"
    )
