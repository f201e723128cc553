"""payloadtags serve as a child process of the test, watched without blocking the reactor."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer, protocol, task

ROOT = Path(__file__).resolve().parents[2]
ENTRY = [sys.executable, "-c", "import sys; from payloadtags.cli import main; sys.exit(main())"]


class _Collector(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.stderr = b""
        self.stdout = b""
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.on_log: list[tuple[bytes, Callable[[], None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.stdout += data

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        for entry in [entry for entry in self.on_log if entry[0] in self.stderr]:
            self.on_log.remove(entry)
            entry[1]()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode if reason.value.exitCode is not None else -1)


@attrs.define
class ServerProcess:
    reactor: Any
    args: list[str]
    env: dict[str, str] = attrs.Factory(dict)
    _collector: _Collector = attrs.field(factory=_Collector, init=False)
    _transport: Any = attrs.field(default=None, init=False)

    def start(self) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT / "src"), **self.env}
        self._transport = self.reactor.spawnProcess(
            self._collector, ENTRY[0], [*ENTRY, "serve", *self.args], env=env
        )

    @property
    def running(self) -> bool:
        return self._transport is not None and not self._collector.ended.called

    @property
    def log(self) -> str:
        return self._collector.stderr.decode("utf-8", "replace")

    def terminate(self) -> None:
        self._transport.signalProcess(signal.SIGTERM)

    def signal(self, number: int) -> None:
        self._transport.signalProcess(number)

    def signal_when_logged(self, text: str, number: int) -> None:
        """Send the signal as soon as `text` is in the log: in the turn that reads it, without the
        polling delay of wait_for_log."""
        self._collector.on_log.append((text.encode(), lambda: self.signal(number)))

    async def wait(self, within: float = 30.0) -> int:
        ended = self._collector.ended
        if not ended.called:
            ended.addTimeout(within, self.reactor)
        return await ended

    async def kill(self) -> None:
        if not self._collector.ended.called:
            try:
                self._transport.signalProcess(signal.SIGKILL)
            except Exception:  # already gone
                pass
            await self._collector.ended

    async def wait_for_log(self, text: str, within: float = 30.0) -> None:
        waited = 0.0
        while text not in self.log:
            if self._collector.ended.called:
                raise AssertionError(f"server exited before logging {text!r}:\n{self.log}")
            if waited > within:
                raise AssertionError(f"server did not log {text!r} within {within}s:\n{self.log}")
            await task.deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05
