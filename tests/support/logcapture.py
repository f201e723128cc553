"""A Twisted log observer that keeps the events it sees, for tests that read what was logged."""

from __future__ import annotations

from typing import Any

from twisted.logger import ILogObserver
from zope.interface import implementer


@implementer(ILogObserver)
class Collect:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
