"""Writing a long response a chunk at a time, with the reactor free between chunks.

The chunks come from a generator that formats each one when asked, so the server holds one chunk of
text at a time; while the client reads slower than the server writes, the transport pauses the
writer (a push producer), so unsent text does not pile up in memory either.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import deferLater
from twisted.web.server import Request
from zope.interface import implementer


@implementer(IPushProducer)
class _Pacer:
    """Told by the transport when to pause and resume; the writer waits on it while paused."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self._waiter: Deferred[None] | None = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        self.stopped = True
        self._wake()

    def resumed(self) -> Deferred[None]:
        self._waiter = Deferred()
        return self._waiter

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)


async def write_incrementally(request: Request, chunks: Iterable[bytes], clock: IReactorTime) -> None:
    """Writes ``chunks`` to ``request``, yielding to the reactor after each one; stops early when the
    client goes away. The caller finishes the request."""
    if request.channel is None:
        return  # the client is gone (Twisted drops the channel on disconnect): nothing to write to
    pacer = _Pacer()
    request.registerProducer(pacer, True)
    try:
        pieces = iter(chunks)
        while not pacer.stopped:
            chunk = next(pieces, None)
            if chunk is None:
                return
            request.write(chunk)
            if pacer.paused:
                await pacer.resumed()
            else:
                # One reactor turn: health checks and other requests are served between chunks.
                await deferLater(clock, 0, lambda: None)
    except CancelledError:
        # The client went away, or the request's deadline passed mid-list. In the second case the
        # client must not mistake the part it got for the whole list: finishing the response would
        # end it like a complete one, so the connection is dropped instead.
        if not pacer.stopped and request.channel is not None:
            request.channel.forceAbortClient()
        return
    finally:
        request.unregisterProducer()


__all__ = ["write_incrementally"]
