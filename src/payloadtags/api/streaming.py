"""Writing a long response a chunk at a time, with the reactor free between chunks.

The chunks come from an asynchronous generator that formats each one when asked (a list's, as its
registry reads arrive), so the server holds one chunk of text at a time; while the client reads slower
than the server writes, the transport pauses the writer (a push producer), so unsent text does not pile
up in memory either.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

log = Logger()


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


async def _next(chunks: AsyncIterator[bytes]) -> bytes | None:
    return await anext(chunks, None)


async def write_streamed(
    request: Request,
    chunks: AsyncGenerator[bytes, None],
    clock: IReactorTime,
    begin: Callable[[], None],
    waiting: Callable[[bool], None] | None = None,
) -> None:
    """Writes ``chunks``, each as soon as it is made, yielding to the reactor after each one and
    waiting while the transport is paused; ``begin`` sets the status and headers just before the first
    byte. The caller finishes the request. ``waiting`` is told when the writer begins waiting for a
    client that does not take what was written (True), and when it goes on (False).

    A failure before the first byte is raised (the caller answers it with a Status). After it, the
    status line has gone out, so a failure, like the deadline, drops the connection: the client sees a
    broken response, never a partial list ended like a whole one. A client that goes away cancels the
    chunk being made, and with it whatever it waits for (registry reads)."""
    pacer = _Pacer()
    making: Deferred[bytes | None] | None = None
    gone = False

    def lost(_: object) -> None:
        nonlocal gone
        gone = True
        pacer.stopProducing()  # a writer waiting for the transport to resume: it never will
        if making is not None:
            making.cancel()

    started = False
    try:
        if request.channel is None:
            return  # the client is gone: nothing to make, nothing to write to
        request.notifyFinish().addErrback(lost)
        while not (pacer.stopped or gone):
            making = Deferred.fromCoroutine(_next(chunks))
            try:
                chunk = await making
            finally:
                making = None
            if chunk is None:
                return
            if not started:
                started = True
                begin()
                request.registerProducer(pacer, True)
            request.write(chunk)
            if pacer.paused:
                if waiting is not None:
                    waiting(True)
                try:
                    await pacer.resumed()
                finally:
                    if waiting is not None:
                        waiting(False)
            # A turn of the reactor after each chunk, also once resumed: the transport resumes the
            # writer from its write in the reactor's I/O phase, and the next chunk, made at once, would
            # go in the same turn as the one before (a client reading fast enough to drain it at once).
            await deferLater(clock, 0, lambda: None)
    except Exception as error:
        if gone or pacer.stopped:
            return  # nobody to tell
        if not started:
            raise  # nothing written yet: the caller answers with a Status (504 past the deadline)
        if not isinstance(error, CancelledError):
            log.failure("a streamed list failed after its first byte; the connection is dropped")
        if request.channel is not None:
            request.channel.forceAbortClient()
    finally:
        if started and request.channel is not None:
            # Once the connection is lost (the client went away, the server cut it), Twisted has
            # dropped the request's channel, and the producer with it.
            request.unregisterProducer()
        await chunks.aclose()


__all__ = ["write_streamed"]
