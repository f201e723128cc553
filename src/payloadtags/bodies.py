"""Reading an HTTP response's body for the registry and cluster API clients: bounded in size, counted
as it arrives (a deadline's progress, `deferreds.within`), and given up when its reader cancels."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse


class BodyTooLarge(Exception):
    def __init__(self, limit: int, length: int | None = None) -> None:
        super().__init__(f"response body larger than {limit} bytes")
        self.limit = limit
        self.length = length


class BodyBytes:
    """How many body bytes a request's answers have brought so far: a deadline that finds this count
    grown in its last turn goes on reading (`deferreds.within`'s ``progress``)."""

    def __init__(self) -> None:
        self.count = 0


class _Collector(Protocol):
    def __init__(
        self,
        finished: Deferred[bytes],
        limit: int | None,
        truncate: bool,
        length: int | None,
        counted: BodyBytes | None,
    ) -> None:
        self._finished = finished
        self._counted = counted
        self._limit = limit
        self._truncate = truncate
        self._length = length
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False

    def connectionMade(self) -> None:
        if self._limit is None or self._truncate or self._length is None:
            return
        if self._length > self._limit:
            self._stop(Failure(BodyTooLarge(self._limit, self._length)))

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        if self._counted is not None:
            self._counted.count += len(data)
        if self._limit is not None and self._size + len(data) > self._limit:
            if self._truncate:
                self._chunks.append(data[: self._limit - self._size])
                self._stop(None)
            else:
                self._stop(Failure(BodyTooLarge(self._limit, self._length)))
            return
        self._chunks.append(data)
        self._size += len(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._done:
            return
        self._done = True
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._chunks))
        else:
            self._finished.errback(reason)

    def _stop(self, failure: Failure | None) -> None:
        # Stop reading: the connection is dropped rather than drained, so a huge body costs nothing.
        self._done = True
        self._stop_reading()
        if failure is None:
            self._finished.callback(b"".join(self._chunks))
        else:
            self._finished.errback(failure)

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self._stop_reading()

    def _stop_reading(self) -> None:
        # deliverBody gives a body's protocol the response's producer as its transport.
        if self.transport is not None:
            IPushProducer(self.transport).stopProducing()


def read_body(
    response: IResponse, limit: int | None, truncate: bool = False, counted: BodyBytes | None = None
) -> Deferred[bytes]:
    """The response body, at most ``limit`` bytes (None: no limit): longer fails with BodyTooLarge,
    or is cut when ``truncate`` (for error bodies, where the status matters more than the text). Each
    byte that arrives is counted in ``counted``, if given. Cancelling the Deferred stops reading and
    drops the connection, so a body its reader gave up on is neither read on nor kept (review r4reg
    F2). A transport failure is the Deferred's failure, as Agent reports it."""
    length = response.length if response.length is not UNKNOWN_LENGTH else None
    collector: _Collector

    def cancel(_: Deferred[bytes]) -> None:
        collector.cancel()

    finished: Deferred[bytes] = Deferred(cancel)
    collector = _Collector(finished, limit, truncate, length, counted)
    response.deliverBody(collector)
    return finished


__all__ = ["BodyBytes", "BodyTooLarge", "read_body"]
