"""Waiting for asynchronous effects in tests that run on the real reactor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.task import deferLater


async def eventually(
    condition: Callable[[], object], *, reactor: Any = None, within: float = 5.0, interval: float = 0.005
) -> None:
    """Poll `condition` until it is true; fail the test with AssertionError after `within` seconds.

    Twisted has no asyncio-style timeout context, hence the explicit deadline."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    deadline = reactor.seconds() + within
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(
                f"condition not met within {within}s: {getattr(condition, '__name__', condition)}"
            )
        await deferLater(reactor, interval)
