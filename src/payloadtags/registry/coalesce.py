"""Identical registry reads made once for every caller who asks before the read goes out.

A read joins another only while that one still waits for a connection slot: the registry then answers
with its state at or after the moment every joiner asked, so a caller never gets an answer older than
its own request (a tag pushed before a list started is in that list). Results are the registry's
answer under the one identity the client has; what each caller may see is decided above, per caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

T = TypeVar("T")

OnSend = Callable[[], object]


_WAIT_FOR_READ: Any = object()


class _Shared(Generic[T]):
    """One read and the callers waiting for it; cancelled when the last of them gives up."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release
        self._waiters: list[Deferred[T]] = []
        self._last: Deferred[T] | None = None
        self.work: Deferred[T] | None = None
        self.sent = False

    def send(self) -> None:
        if not self.sent:
            self.sent = True
            self._release()

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
        self.send()  # nobody may join a read that is being cancelled
        self._last = Deferred()
        self.work.cancel()
        if not waiter.called:
            waiter.callback(_WAIT_FOR_READ)

    def settle(self, result: T | Failure) -> None:
        self.send()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        if self._last is not None:
            # The cancelled caller learns of its cancel, whatever the read failed with meanwhile.
            if isinstance(result, Failure):
                self._last.errback(Failure(CancelledError()))
            else:
                self._last.callback(result)


class Coalescer:
    """In-flight reads by key; ``join`` starts a read or follows the unsent one with the same key."""

    def __init__(self) -> None:
        self._pending: dict[Hashable, _Shared[Any]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def join(self, key: Hashable, read: Callable[[OnSend], Awaitable[T]]) -> Deferred[T]:
        """The outcome of ``read(on_send)``, shared with every caller of the same key until the read
        calls ``on_send`` (once it holds a connection slot, just before the request goes out)."""
        shared: _Shared[T] | None = self._pending.get(key)
        if shared is not None:
            return shared.follow()
        fresh: _Shared[T] = _Shared(lambda: self._forget(key, fresh))
        self._pending[key] = fresh
        waiter = fresh.follow()  # before the read starts: it may end at once

        async def run() -> T:
            return await read(fresh.send)

        fresh.work = Deferred.fromCoroutine(run())
        fresh.work.addBoth(fresh.settle)
        return waiter

    def _forget(self, key: Hashable, shared: _Shared[Any]) -> None:
        if self._pending.get(key) is shared:
            del self._pending[key]


__all__ = ["Coalescer"]
