"""An IAgent in front of a real one that holds chosen requests until the test lets them go.

A held request has not left the client's side yet (it holds its connection slot meanwhile): the
test decides when it reaches the registry, with Deferreds instead of delays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.client import Agent
from twisted.web.iweb import IAgent
from zope.interface import implementer

Hold = Callable[[str, str], "Deferred[None] | None"]
"""(method, url) -> a Deferred to wait for before sending the request, or None to send it at once."""


@implementer(IAgent)
class HeldAgent:
    def __init__(self, reactor: Any, hold: Hold) -> None:
        self._inner = Agent(reactor)
        self._hold = hold
        #: (method, url) of every request, in the order they reached the agent (left the client).
        self.requests: list[tuple[str, str]] = []
        self._arrivals: list[tuple[Callable[[str, str], bool], Deferred[None]]] = []
        self._answers: list[tuple[Callable[[str, str], bool], Deferred[None]]] = []

    def arrived(self, match: Callable[[str, str], bool]) -> Deferred[None]:
        """Fires when a request that ``match``es reaches the agent (the client sent it)."""
        d: Deferred[None] = Deferred()
        self._arrivals.append((match, d))
        return d

    def answered(self, match: Callable[[str, str], bool]) -> Deferred[None]:
        """Fires when the registry's answer to a request that ``match``es has come (its headers)."""
        d: Deferred[None] = Deferred()
        self._answers.append((match, d))
        return d

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:
        m, u = method.decode(), uri.decode()
        self.requests.append((m, u))
        for entry in list(self._arrivals):
            if entry[0](m, u):
                self._arrivals.remove(entry)
                entry[1].callback(None)
        held = self._hold(m, u)
        if held is None:
            sent = self._inner.request(method, uri, headers, bodyProducer)
        else:
            sent = held.addCallback(lambda _: self._inner.request(method, uri, headers, bodyProducer))
        return sent.addBoth(self._answer, m, u)

    def _answer(self, result: Any, method: str, url: str) -> Any:
        for entry in list(self._answers):
            if entry[0](method, url):
                self._answers.remove(entry)
                entry[1].callback(None)
        return result

    def writes(self) -> list[tuple[str, str]]:
        return [(m, u) for m, u in self.requests if m not in ("GET", "HEAD")]
