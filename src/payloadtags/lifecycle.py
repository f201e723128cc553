"""Start and stop order of the server's parts, as twisted.application services.

Twisted's MultiService stops its children all at once; a graceful stop needs the opposite of the
start order, one part at a time (stop taking requests and drain them before the registry client,
the cluster client and the Lease go away), so `OrderedServices` awaits each child's stop in turn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer


class Part(Service):
    """A named part of the server with what starting and stopping it means."""

    def __init__(
        self,
        name: str,
        start: Callable[[], object] | None = None,
        stop: Callable[[], Awaitable[object] | object] | None = None,
    ) -> None:
        self.setName(name)
        self._start = start
        self._stop = stop

    def startService(self) -> None:
        super().startService()
        if self._start is not None:
            self._start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stopped())

    async def _stopped(self) -> None:
        if self._stop is not None:
            result = self._stop()
            if isinstance(result, Awaitable):
                await result


class OrderedServices(MultiService):
    """Starts children in the order they were added; stops them in reverse, each after the last."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[IService] = []

    def startService(self) -> None:
        Service.startService(self)
        for child in self:
            child.startService()
            self.started.append(child)

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop_in_reverse())

    async def _stop_in_reverse(self) -> None:
        while self.started:
            child = self.started.pop()
            result: Any = child.stopService()
            if isinstance(result, defer.Deferred):
                await result
