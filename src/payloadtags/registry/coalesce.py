"""Identical registry reads made once for every caller who asks before the read goes out.

A read is shared with a caller only when it goes out after the caller asked: the registry then answers
with its state at or after the moment every joiner asked, so a caller never gets an answer older than
its own request (a tag pushed before a list started is in that list). That holds for a read still
waiting for a connection slot, and for a read already sent when the caller's request had marked itself
as asking before it was sent (``asking``: an API request marks its start, and a read sent after that
serves it). Results are the registry's answer under the one identity the client has; what each caller
may see is decided above, per caller. A read asked for while an identical one that cannot serve the
caller is out waits for that one to end before it goes out, gathering the callers who ask meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Hashable
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

T = TypeVar("T")

OnSend = Callable[[], object]


_WAIT_FOR_READ: Any = object()

# Reads sent so far, process-wide: orders each read's sending against each request's start.
_sent = [0]
# Where the current request (its coroutine and those it starts) began, in reads sent; None: unknown,
# only reads not sent yet may be shared with it.
_asked: ContextVar[int | None] = ContextVar("payloadtags_registry_asked", default=None)


def asking() -> None:
    """Marks the current request as asking from now on: reads sent after this may serve it. Called
    at the start of a request's work (a coroutine's context is inherited by those it starts)."""
    _asked.set(_sent[0])


class _Shared(Generic[T]):
    """One read and the callers waiting for it; cancelled when the last of them gives up."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release
        self._waiters: list[Deferred[T]] = []
        self._last: Deferred[T] | None = None
        self.work: Deferred[T] | None = None
        # The number of reads sent when this one went out; None while it waits for a slot.
        self.sent_at: int | None = None
        self.cancelling = False
        self._ended: list[Deferred[None]] = []

    def ended(self) -> Deferred[None]:
        """Fires (with None, whatever the outcome) once the read has ended."""
        done: Deferred[None] = Deferred()
        self._ended.append(done)
        return done

    def send(self) -> None:
        if self.sent_at is None:
            _sent[0] += 1
            self.sent_at = _sent[0]

    def serves(self, asked: int | None) -> bool:
        """Whether its answer is no older than a request that asked at ``asked``."""
        if self.cancelling:
            return False
        return self.sent_at is None or (asked is not None and self.sent_at > asked)

    def follow(self) -> Deferred[T]:
        waiter: Deferred[T] = Deferred(self._leave)
        waiter.addCallback(lambda result: self._last if result is _WAIT_FOR_READ else result)
        self._waiters.append(waiter)
        return waiter

    def _leave(self, waiter: Deferred[T]) -> None:
        self._waiters.remove(waiter)
        if self._waiters or self.work is None or self.work.called:
            return  # Deferred.cancel fails `waiter` with CancelledError; the read goes on for the rest
        # The last caller cancels the read and, like any cancelled request, waits for it to end: what
        # it started (a request holding a connection slot) is not left running unobserved.
        self.cancelling = True  # nobody may join a read that is being cancelled
        self._release()
        self._last = Deferred()
        self.work.cancel()
        if not waiter.called:
            waiter.callback(_WAIT_FOR_READ)

    def settle(self, result: T | Failure) -> None:
        self.send()
        self._release()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        ended, self._ended = self._ended, []
        for done in ended:
            if not done.called:  # a cancelled wait is already called
                done.callback(None)
        if self._last is not None:
            # The cancelled caller learns of its cancel, whatever the read failed with meanwhile.
            if isinstance(result, Failure):
                self._last.errback(Failure(CancelledError()))
            else:
                self._last.callback(result)


class Coalescer:
    """In-flight reads by key; ``join`` starts a read or follows one with the same key that is no older
    than the caller's request (see ``asking``)."""

    def __init__(self) -> None:
        self._pending: dict[Hashable, _Shared[Any]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def join(self, key: Hashable, read: Callable[[OnSend], Coroutine[Any, Any, T]]) -> Deferred[T]:
        """The outcome of ``read(on_send)``, shared with every caller of the same key who asked before
        the read calls ``on_send`` (once it holds a connection slot, just before the request goes out),
        and with every caller while it waits for that."""
        shared: _Shared[T] | None = self._pending.get(key)
        if shared is not None and shared.serves(_asked.get()):
            return shared.follow()
        fresh: _Shared[T] = _Shared(lambda: self._forget(key, fresh))
        self._pending[key] = fresh
        waiter = fresh.follow()  # before the read starts: it may end at once
        # An identical read already sent (before this caller asked) is still out: this one goes out
        # once that one has ended, and the callers who ask meanwhile join it. Identical requests
        # arriving one after the other (50 lists of one namespace, each started a little later by
        # the server's own work on the others) then make a read per round trip, not one each.
        in_flight = shared if shared is not None and not shared.cancelling else None

        async def after_in_flight(in_flight: _Shared[Any]) -> T:
            await in_flight.ended()
            return await read(fresh.send)

        reading = read(fresh.send) if in_flight is None else after_in_flight(in_flight)
        fresh.work = Deferred.fromCoroutine(reading)
        fresh.work.addBoth(fresh.settle)
        return waiter

    def _forget(self, key: Hashable, shared: _Shared[Any]) -> None:
        if self._pending.get(key) is shared:
            del self._pending[key]


__all__ = ["Coalescer", "asking"]
