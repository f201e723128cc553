"""A Twisted log observer that keeps the events it sees, for tests that read what was logged."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import implementer


@implementer(ILogObserver)
class Collect:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)


@contextmanager
def collected_logs() -> Iterator[list[dict[str, Any]]]:
    """``with collected_logs() as events:`` the events logged meanwhile, read during and after."""
    events: list[dict[str, Any]] = []
    observer = Collect(events)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)
