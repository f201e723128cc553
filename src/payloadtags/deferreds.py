"""Deferred helpers shared by the HTTP clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")

_WAIT_FOR_WORK: Final = object()


def noting_cancel(work: Deferred[T], on_cancel: Callable[[], object]) -> Deferred[T]:
    """A Deferred with the outcome of `work`; cancelling it calls `on_cancel`, then cancels `work`.

    Like the Deferred of a coroutine, it still waits for `work` to end when `work` does not end at
    once on cancel: what `work` started (a request, its connection slot) is not left running unobserved.
    The clients use it to know that a failure after a cancel is the cancel's doing: some transport
    failures carry no trace of it (HostnameEndpoint's DNSLookupError).
    """

    def cancel(outer: Deferred[Any]) -> None:
        on_cancel()
        work.cancel()
        if not outer.called:
            outer.callback(_WAIT_FOR_WORK)  # `outer` now waits for `work` (see below)

    def relay(result: Any) -> Any:
        if outer.called:
            return result  # `outer` waits on `work` and takes this result from it
        if isinstance(result, Failure):
            outer.errback(result)
        else:
            outer.callback(result)
        return None

    outer: Deferred[Any] = Deferred(cancel)
    outer.addCallback(lambda result: work if result is _WAIT_FOR_WORK else result)
    work.addBoth(relay)
    return outer
