"""One watch stream: what its user may see, its bounded send buffer, its end.

Events are written to the connection as they come while the transport takes them. When the transport
pushes back (a slow client), events wait in a buffer of at most ``max_buffered`` lines; one more and the
watcher is disconnected: memory per watcher stays bounded, and the client's reflector relists.

What a watch starts with (an ADDED for every tag of a namespace, or the retained events since a
resourceVersion) can be far more than that buffer: it is rendered a line at a time as the transport
takes it (``begin``), so a client that reads it slowly is paced, not cut, and holds one line of it in
the server's memory; live events that come meanwhile wait in the buffer, after it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred

from payloadtags.names import TagRef
from payloadtags.watch.source import Event


class Sink(Protocol):
    """Where a watcher's lines go: the HTTP response."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """End the stream cleanly (the response completes)."""

    def abort(self) -> None:
        """Drop the connection (the client sees the stream cut)."""


Render = Callable[[Event], bytes]


@attrs.define(eq=False)
class Watcher:
    user: str
    sink: Sink
    render: Render
    # Selectors: decided from the reference alone (tags have no labels).
    accept: Callable[[TagRef], bool]
    # Access: may this user read (namespace, repository path)? Decisions are remembered so that a
    # change of the rules can be noticed (see ``access_changed``).
    readable: Callable[[str, str], bool]
    # A BOOKMARK line at a sequence (True: the one ending the initial events); None: no bookmarks.
    bookmark: Callable[[int, bool], bytes] | None = None
    max_buffered: int = 1000
    buffer: collections.deque[bytes] = attrs.field(factory=collections.deque)
    paused: bool = False
    # The lines the watch starts with, not yet written; live events wait behind them.
    opening: Iterator[bytes] | None = None
    closed: bool = False
    reason: str | None = None
    done: Deferred[str] = attrs.field(factory=Deferred)
    on_close: list[Callable[[Watcher], None]] = attrs.field(factory=list)
    _decisions: dict[tuple[str, str], bool] = attrs.field(factory=dict)

    def visible(self, ref: TagRef) -> bool:
        key = (ref.namespace, ref.repository_path)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decisions[key] = self.readable(*key)
        return decision and self.accept(ref)

    def access_changed(self) -> bool:
        """Re-decides every repository this watcher was told about; True when any decision changed."""
        return any(self.readable(*key) != decision for key, decision in self._decisions.items())

    def deliver(self, event: Event) -> None:
        if self.closed or not self.visible(event.ref):
            return
        self.send(self.render(event))

    def begin(self, events: Iterable[Event], then: Iterable[bytes] = ()) -> None:
        """Start with ``events`` (those visible, rendered one at a time) and then the lines ``then``,
        written as the transport takes them, before any live event."""
        visible = (self.render(event) for event in events if self.visible(event.ref))
        self.opening = _chain(visible, iter(then))
        self._pump()

    def send(self, line: bytes) -> None:
        if self.closed:
            return
        if self.paused or self.buffer or self.opening is not None:
            if len(self.buffer) >= self.max_buffered:
                self.end("slow", abort=True)
                return
            self.buffer.append(line)
            return
        self.sink.write(line)

    # IPushProducer: the transport pauses us when its own buffer is full.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._pump()

    def _pump(self) -> None:
        while self.opening is not None and not self.paused and not self.closed:
            line = next(self.opening, None)
            if line is None:
                self.opening = None
            else:
                self.sink.write(line)
        while self.opening is None and self.buffer and not self.paused and not self.closed:
            self.sink.write(self.buffer.popleft())

    def stopProducing(self) -> None:
        self.end("client gone", abort=False, write=False)

    def end(self, reason: str, abort: bool = False, write: bool = True) -> None:
        """Ends the stream once: cleanly, or by dropping the connection (``abort``)."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        self.buffer.clear()
        self.opening = None
        for callback in self.on_close:
            callback(self)
        if write:
            if abort:
                self.sink.abort()
            else:
                self.sink.close()
        self.done.callback(reason)


def _chain(first: Iterator[bytes], second: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    yield from second


__all__ = ["Render", "Sink", "Watcher"]
