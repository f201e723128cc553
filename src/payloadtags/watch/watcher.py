"""One watch stream: what its user may see, its bounded send buffer, its end.

Events are written to the connection as they come while the transport takes them, those the scope's
fan-out hands over together in one write (``take``). When the transport pushes back (a client that
stopped reading, or one that reads more slowly than a burst of changes comes), events wait in a buffer
of at most ``max_buffered`` lines; one more and the watcher is disconnected: memory per watcher stays
bounded, and the client watches again from its last resourceVersion (a relist only when the burst
outgrew the scope's history).

What a watch starts with (an ADDED for every tag of a namespace, or the retained events since a
resourceVersion) can be far more than that buffer: it is rendered a line at a time as the transport
takes it (``begin``), so a client that reads it slowly is paced, not cut, and holds one line of it in
the server's memory; live events that come meanwhile wait in the buffer, after it. With a ``clock``,
at most ``_WRITE_BYTES`` of it is rendered and written in one turn of the reactor: a client on
loopback takes it as fast as it is written, so the transport never pushed back, and the 100,000 ADDED
events of a namespace went out in one turn, /livez held for up to 1.8 s (review r8quiet N2). An
event the watch may not see is written as nothing but counts ``_EXAMINED`` bytes: a watch whose
selectors reject most of a large scope is paced as well (review r9stall L2). Events that come
meanwhile wait in the send buffer even when the client keeps up, so more than ``max_buffered`` of
them during a long opening cut the watch as a slow client's (review r9stall L1).
"""

from __future__ import annotations

import collections
import itertools
import json
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from payloadtags.access.rbac import PathMatcher
from payloadtags.model import Status, to_json
from payloadtags.names import TagRef, split_repository
from payloadtags.watch.fanout import Lines
from payloadtags.watch.source import Event


class Sink(Protocol):
    """Where a watcher's lines go: the HTTP response."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """End the stream cleanly (the response completes)."""

    def abort(self) -> None:
        """Drop the connection (the client sees the stream cut)."""


Render = Callable[[Event], bytes]

log = Logger()

# One write carries at most about this much of the events handed over together: the transport tells
# it is full (pauses the watcher) only after a write, and the rest waits in the bounded buffer.
_WRITE_BYTES = 64 * 1024
# What examining one event of an opening counts for against ``_WRITE_BYTES`` (rejected or not).
_EXAMINED = 64


def event_line(kind: str, obj: object) -> bytes:
    """One watch event as the stream carries it: a JSON object on a line of its own."""
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


def error_line(status: Status) -> bytes:
    """An ERROR event: once a watch's head is sent, the only way to tell its client of a failure."""
    return event_line("ERROR", to_json(status))


def expired_line(message: str) -> bytes:
    """The ERROR event with a 410 Expired Status: the last line of a stream its client must relist
    after (a stream that just ends makes client-go watch again from its last resourceVersion)."""
    return error_line(Status(status="Failure", code=410, reason="Expired", message=message))


@attrs.define(eq=False)
class Watcher:
    user: str
    sink: Sink
    render: Render
    # Selectors: decided from the reference alone (tags have no labels).
    accept: Callable[[TagRef], bool]
    # Access: may this user read (namespace, repository path)? Decided at each decision, after the
    # selectors (by ``rules`` when set), and not remembered here: a watch kept one per repository it
    # looked at for its whole life (about 226 bytes a repository of its scope), where the rules
    # memoize them, shared by every user with the same rules in the namespace. Every set of rules
    # decisions were made by in each namespace is noted, so that a change of the rules can be told
    # (see ``access_changed``).
    readable: Callable[[str, str], bool]
    # What ``accept`` decides by, comparable (the request's selectors): a watch resumed inside another
    # watch's opening, which holds only what that one's selectors chose, must have the same.
    selectors: Hashable = attrs.field(default=None, kw_only=True)
    # A BOOKMARK line at a sequence (True: the one ending the initial events); None: no bookmarks.
    bookmark: Callable[[int, bool], bytes] | None = None
    max_buffered: int = 1000
    # Watchers of the same form share each event's line (`Fanout`): what ``render`` makes of an event
    # depends on nothing else. None: ``render`` itself.
    form: Hashable | None = None
    # The form of every event after the first this watch writes, when it differs: a Table watch's
    # events without the column definitions the first one carries, as kube-apiserver sends them
    # (kubectl keeps the last columns it was sent), where repeating them was half of each line
    # (review r6watch L1). Shared as ``form_after`` (None: ``render_after`` itself).
    render_after: Render | None = None
    form_after: Hashable | None = None
    # The sequence up to which the scope's events are this watch's past (`Fanout`): handed to it, or
    # covered by what it started with (set then).
    taken: int = 0
    buffer: collections.deque[bytes] = attrs.field(factory=collections.deque)
    paused: bool = False
    # The lines the watch starts with, not yet written; live events wait behind them.
    opening: Iterator[bytes] | None = None
    # Where set (the HTTP server's reactor): the opening is written ``_WRITE_BYTES`` a turn, the next
    # piece in a turn of its own (``_piece``). None: all of it that the transport takes, at once.
    clock: IReactorTime | None = None
    _piece: IDelayedCall | None = attrs.field(default=None, init=False)
    closed: bool = False
    reason: str | None = None
    done: Deferred[str] = attrs.field(factory=Deferred)
    on_close: list[Callable[[Watcher], None]] = attrs.field(factory=list)
    # The rules ``readable`` decides by in a namespace (set by the hub when it knows them): the watch
    # then decides by them, not by ``readable``. None: a change of the rules cannot be told from one
    # that changes nothing here.
    rules: Callable[[str], PathMatcher] | None = None
    # The generation of the access rules (set with ``rules``): while it stays, the rules of a namespace
    # noted at it decide the watch's events, a lookup in their memo, where asking the authorizer per
    # event and watcher cost a hash of the user's groups and more (these decisions are not counted in
    # payloadtags_authorization_decisions_total).
    generation: Callable[[], int] | None = None
    # Per namespace, every distinct set of rules that decided something this watch's client may hold
    # since the last check: the rules it started under, and those in force at each later decision
    # (rules granted and taken back between two checks decided what was sent meanwhile).
    _ruled_by: dict[str, list[PathMatcher]] = attrs.field(factory=dict, init=False)
    # A decision since the last check that rules noted before would have made otherwise: its client's
    # view is no longer what one set of rules decides (a DELETED of a repository revoked, emptied and
    # so out of the scope the check looks at, dropped). The check ends the watch with 410
    # (`access_changed`). (A tag pushed while a repository was taken back and granted again, missed, is
    # told there by the rules noted: those that hid it.)
    _decided_otherwise: bool = attrs.field(default=False, init=False)
    # Per namespace, the rules in force at ``_current_at`` (the access generation).
    _current: dict[str, PathMatcher] = attrs.field(factory=dict, init=False)
    _current_at: int | None = attrs.field(default=None, init=False)
    # Whether an event of what it starts with, or a live one, was rendered in the first form. What it
    # starts with is written before any live event, so its first event is always in the first form;
    # a live one is in the later form only once one of those, written before it, was.
    _opening_rendered_first_form: bool = attrs.field(default=False, init=False)
    _live_rendered_first_form: bool = attrs.field(default=False, init=False)

    def visible(self, ref: TagRef) -> bool:
        # The selectors first: a tag they reject costs no access decision.
        if not self.accept(ref):
            return False
        if self.rules is None:
            return self.readable(ref.namespace, ref.repository_path)
        namespace, path = ref.namespace, ref.repository_path
        # The common case first: rules noted at this generation, a dictionary lookup.
        generation = None if self.generation is None else self.generation()
        now = self._current.get(namespace) if generation == self._current_at else None
        known = self._ruled_by.get(namespace)
        if now is None or known is None:
            now = self._rules_now(namespace)
            known = self._ruled_by[namespace]
        decision = now.matches(path)
        # Only while the rules changed since the last check (more than one set noted here): a lookup
        # in each one's memo.
        if len(known) > 1 and not self._decided_otherwise:
            self._decided_otherwise = any(rules.matches(path) != decision for rules in known)
        return decision

    def _rules_now(self, namespace: str) -> PathMatcher:
        """The rules in force in ``namespace``, noted: asked of the authorizer once per namespace and
        generation of the access rules (AuthorizationNotReady while they load)."""
        assert self.rules is not None
        generation = None if self.generation is None else self.generation()
        if generation is None or generation != self._current_at:
            self._current.clear()
            self._current_at = generation
        now = self._current.get(namespace)
        if now is None:
            now = self.rules(namespace)
            if generation is not None:
                self._current[namespace] = now
        known = self._ruled_by.setdefault(namespace, [])
        if not any(rules is now or rules.same_rules(now) for rules in known):
            known.append(now)
        return now

    def _note_rules(self, namespace: str) -> None:
        if self.rules is not None:
            self._rules_now(namespace)

    def forget_rules(
        self, keep: Callable[[str], bool], tell: Callable[[list[tuple[str, list[PathMatcher]]]], None]
    ) -> None:
        """Drops the rules noted in the namespaces ``keep`` rejects (out of the scope, no event on its
        way here): its client holds nothing of them that a change of their rules could change while
        this stream runs. Only those that alone decided there since the last check, and while all it
        starts with is written: a change since is the check's to judge. ``tell`` is given them first
        (the resume ledger, `WatchHub._forget_rules`): the client may yet resume from before the
        DELETED that emptied the namespace, and only they tell that a change of the rules since makes
        its view stale. None is dropped if ``tell`` raises."""
        if self.opening is not None or self._decided_otherwise:
            return
        dropped = [(ns, known) for ns, known in self._ruled_by.items() if len(known) == 1 and not keep(ns)]
        if not dropped:
            return
        tell(dropped)
        for namespace, _ in dropped:
            del self._ruled_by[namespace]
            self._current.pop(namespace, None)

    def know_rules(self, namespaces: Iterable[str]) -> None:
        """The rules of the namespaces of the watched scope as the watch starts: what its client was
        shown (the list before it, what it starts with) was decided by them."""
        for namespace in namespaces:
            self._note_rules(namespace)

    def rules_seen(self) -> list[tuple[str, list[PathMatcher]]]:
        """Per namespace, every set of rules that decided something this watch sent since the last
        check (`_ruled_by`)."""
        return list(self._ruled_by.items())

    def access_changed(
        self,
        scope: Iterable[str],
        leaving: Iterable[str] = (),
        unread_in: Callable[[Iterable[str]], Iterable[str]] | None = None,
    ) -> bool:
        """After a change of the access rules: True when the user may now see a repository of the
        watched scope (``scope``: the repositories that have tags) that any rules its client's view was
        decided by hid, or no longer one they showed; or no longer one of ``leaving`` (repositories
        whose last tags' deletions are still on their way to it: decided as they are handed over, a
        DELETED it no longer sees would leave its client the tag; one it now sees is a DELETED of a
        tag it never had), or of ``unread_in`` (those of the namespaces whose rules changed, given
        them: those a list showed tags of that the source has not read, counted as ``leaving``).
        Also True on any change of its rules in the scope while what it starts
        with is not all written: those events are decided as they are written, and may be of a
        repository emptied since (a grant would show a tag that is gone, with no DELETED after). The
        client's cache then lacks tags or holds stale ones, and only a relist mends it. False when the
        change shows the user nothing new here: later decisions follow the new rules."""
        if self.rules is None:
            return True
        changed: dict[str, tuple[list[PathMatcher], PathMatcher]] = {}
        for namespace, known in self._ruled_by.items():
            new = self.rules(namespace)
            old = [rules for rules in known if not (rules is new or rules.same_rules(new))]
            if old:
                changed[namespace] = (old, new)
        if not changed:
            return False
        if self.opening is not None or self._decided_otherwise:
            return True
        unread = () if unread_in is None else unread_in(changed)
        for repository, revoked_only in itertools.chain(
            ((repository, False) for repository in scope),
            ((repository, True) for repository in itertools.chain(leaving, unread)),
        ):
            parts = split_repository(repository)
            if parts is None:
                continue
            namespace, path = parts
            pair = changed.get(namespace)
            if pair is None:
                continue
            now = pair[1].matches(path)
            if any(old.matches(path) != now and (old.matches(path) or not revoked_only) for old in pair[0]):
                return True
        for namespace, (_, new) in changed.items():
            self._ruled_by[namespace] = [new]
        return False

    def take(self, events: Sequence[Event], lines: Sequence[Lines]) -> None:
        """Events of the scope, in order, with the lines other watchers rendered of them."""
        if self.closed:
            return
        out: list[bytes] = []
        for event, rendered in zip(events, lines, strict=True):
            if self.visible(event.ref):
                out.append(self._line(event, rendered))
        if self.paused or self.buffer or self.opening is not None:
            for line in out:
                self.send(line)  # the buffer's bound applies
            return
        self.buffer.extend(out)  # written now, as much as the transport takes
        self._pump()
        if len(self.buffer) > self.max_buffered:
            self.end("slow", abort=True)

    def begin(self, events: Iterable[Event], then: Iterable[bytes] = ()) -> None:
        """Start with ``events`` (those visible, rendered one at a time) and then the lines ``then``,
        written as the transport takes them, before any live event."""
        # A rejected event is an empty line: it counts towards the turn's piece (``_pump``) as an
        # examined event, so a watch whose selectors reject most of a large scope is paced too.
        visible = (self._line(event) if self.visible(event.ref) else b"" for event in events)
        self.opening = _chain(visible, iter(then))
        self._pump()

    def _line(self, event: Event, rendered: Lines | None = None) -> bytes:
        """An event's line: of what it starts with (no ``rendered``), or live, shared through
        ``rendered`` with the scope's other watchers of its form."""
        after_first = self._opening_rendered_first_form or (
            rendered is not None and self._live_rendered_first_form
        )
        if self.render_after is None or not after_first:
            render, form = self.render, self.form
            if rendered is None:
                self._opening_rendered_first_form = True
            else:
                self._live_rendered_first_form = True
        else:
            render, form = self.render_after, self.form_after
        if rendered is None:
            return render(event)
        key = render if form is None else form
        line = rendered.get(key)
        if line is None:
            line = rendered[key] = render(event)
        return line

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
        self._pump_or_end()

    def _pump(self) -> None:
        if self._piece is not None:
            return  # the opening goes on in the turn already asked for: one piece a turn
        written = 0
        while self.opening is not None and not self.paused and not self.closed:
            if self.clock is not None and written >= _WRITE_BYTES:
                self._piece = self.clock.callLater(0, self._next_piece)
                return
            line = next(self.opening, None)
            if line is None:
                self.opening = None
            else:
                if line:
                    self.sink.write(line)
                written += len(line) + _EXAMINED
        while self.opening is None and self.buffer and not self.paused and not self.closed:
            lines, size = [], 0
            while self.buffer and size < _WRITE_BYTES:
                lines.append(self.buffer.popleft())
                size += len(lines[-1])
            self.sink.write(b"".join(lines))

    def _next_piece(self) -> None:
        self._piece = None
        self._pump_or_end()

    def _pump_or_end(self) -> None:
        """``_pump`` where nothing above would end the watch on a failure: cut it, counted as an error;
        the client relists."""
        try:
            self._pump()
        except Exception:
            # From a delayed call the watch would stay open with no piece to come and its client
            # waiting (review r9stall N1). From the transport's resume (a client that reads slowly)
            # Twisted would log it as its own and drop the connection, counted as "client gone"
            # (review r10watch L2).
            log.failure("writing a watch's stream failed; dropping it")
            self.end("error", abort=True)

    def stopProducing(self) -> None:
        self.end("client gone", abort=False, write=False)

    def end(self, reason: str, abort: bool = False, write: bool = True, last: bytes | None = None) -> None:
        """Ends the stream once: cleanly, after the line ``last`` if given (waiting events are dropped),
        or by dropping the connection (``abort``)."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        self.buffer.clear()
        self.opening = None
        if self._piece is not None:
            self._piece.cancel()
            self._piece = None
        try:
            for callback in self.on_close:
                callback(self)
            if write:
                if abort:
                    self.sink.abort()
                else:
                    if last is not None:
                        self.sink.write(last)
                    self.sink.close()
        finally:
            # Whoever waits for the end is told even when the sink fails (a response already
            # finished): the watch is over either way.
            self.done.callback(reason)


def _chain(first: Iterator[bytes], second: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    yield from second


__all__ = ["Render", "Sink", "Watcher", "error_line", "event_line", "expired_line"]
