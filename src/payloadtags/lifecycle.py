"""Start and stop order of the server's parts, as twisted.application services.

Twisted's MultiService stops its children all at once; a graceful stop needs the opposite of the
start order, one part at a time (stop taking requests and drain them before the registry client,
the cluster client and the Lease go away), so `OrderedServices` awaits each child's stop in turn.

`StopSignals` is what asks for that stop: SIGTERM and SIGINT as k8s.io/apiserver's SetupSignalContext
takes them; during the start-up checks, it stops those (`StopSignals.interrupting`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

log = Logger()

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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


class StoppedDuringChecks(BaseException):
    """A stop signal came during the start-up checks (`StopSignals.interrupting`), which it ended.
    A BaseException, as KeyboardInterrupt: no ``except Exception`` of the checks takes it."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


class StopSignals:
    """SIGTERM and SIGINT: the first asks for the graceful stop, a second one exits at once with code
    1, as k8s.io/apiserver's SetupSignalContext does.

    Installed before anything starts, so that no signal finds Python's defaults (death without a
    drain, a KeyboardInterrupt traceback). During the start-up checks (`interrupting`) a signal ends
    them at once: a kubeconfig's credential plugin may take a minute. Else, until `attach` names the
    reactor, a signal is only noted and the caller starts nothing once it sees `received`; from then
    on it stops the reactor, whose shutdown runs the drain. Twisted's own handlers stop the reactor
    too, but log a traceback on a second signal and drain on."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._reactor: Any = None
        self._interrupting = False

    @contextmanager
    def interrupting(self) -> Iterator[None]:
        """Blocking start-up checks in the main thread, which a signal ends: it raises
        `StoppedDuringChecks` where they are (a credential plugin's run kills the plugin as it
        unwinds), and one already received raises it before they begin. Only for work that is as
        safe to end anywhere as the death of the process (the serving pair is written so)."""
        if self.received is not None:
            raise StoppedDuringChecks(self.received)
        self._interrupting = True
        try:
            yield
        finally:
            self._interrupting = False

    def install(self) -> None:
        for number in STOP_SIGNALS:
            signal.signal(number, self._handle)

    def attach(self, reactor: Any) -> None:
        """Once the reactor runs: reactor.run put Twisted's SIGTERM handler in place, so ours again."""
        self._reactor = reactor
        self.install()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.received is not None:
            self._exit_now(name)
        self.received = name
        if self._interrupting:
            self._interrupting = False  # once: the unwinding it starts is not cut again
            raise StoppedDuringChecks(name)
        if self._reactor is not None:
            # Logged from the reactor, not here: the signal may have come in the middle of a write to
            # the log, which a second one at once would break.
            self._reactor.callFromThread(self._stop, name)

    def _stop(self, name: str) -> None:
        log.info("received {signal}: stopping gracefully; a second signal exits at once", signal=name)
        try:
            self._reactor.stop()
        except ReactorNotRunning:  # already stopping: the caller returned first
            pass

    def _exit_now(self, name: str) -> None:
        message = f"received {name} again while stopping: exiting at once, with code 1"
        if self._reactor is not None:
            log.critical(message)
        else:  # logging has not begun: a line as the start-up errors are written
            print(f"payloadtags: {message}", file=sys.stderr)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed or broken stream must not keep the process alive
                pass
        # As Go's os.Exit: no deferred work runs, nothing drains any more.
        os._exit(1)
