"""One watched scope (a namespace, or all namespaces): its tags as last read, and the changes seen.

A periodic resync reads the whole scope and diffs it against the snapshot; a registry notification for
one repository re-reads just that repository's tag list. Every difference becomes an event numbered by
the replica's sequence and kept in a bounded history, from which watches resume. The snapshot holds every
tag of the scope, whoever may read it: each watcher filters for its own user.
"""

from __future__ import annotations

import bisect
import collections
import contextvars
import enum
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from payloadtags.deferreds import Waiters
from payloadtags.names import TagRef, split_repository
from payloadtags.registry.errors import RegistryNotFound
from payloadtags.watch.failures import ReadFailures
from payloadtags.watch.fanout import Fanout, Subscriber
from payloadtags.watch.versions import ReplicaVersions

log = Logger()

# Reporters kept per source (`ScopeSource.reporter`): a walk whose one has gone reports its kept tag
# lists once more, which costs a comparison, not a wrong answer.
_REPORTERS_KEPT = 64


class EventType(enum.Enum):
    ADDED = "ADDED"
    DELETED = "DELETED"


@attrs.frozen
class Event:
    sequence: int
    type: EventType
    ref: TagRef


class ScopeReader(Protocol):
    """Reads the registry for a source: every tag of a scope, or one repository's tags."""

    async def scope_tags(self, namespace: str | None) -> Mapping[str, Collection[str]]:
        """Every tag of the scope, by repository ("namespace/path"); repositories without tags are
        left out. Grouped as read: a reference made for each tag and grouped again here held the
        reactor for a tenth of a second at 100,000 tags, twice as a watch from no resourceVersion
        starts (review r8quiet N2)."""
        ...

    async def repository_tags(self, repository: str) -> Sequence[str]: ...


@attrs.define(eq=False)
class ScopeSource:
    namespace: str | None
    reader: ScopeReader
    versions: ReplicaVersions
    history: int = 1000
    # repository (full name) -> its tags as last read
    tags: dict[str, frozenset[str]] = attrs.field(factory=dict)
    # Watches can resume from any sequence at or above the floor: every event after it is retained.
    floor: int = 0
    ready: bool = False
    subscribers: set[Subscriber] = attrs.field(factory=set)
    ring: collections.deque[Event] = attrs.field(factory=collections.deque)
    # How many events ever left the front of the history: ``ring[i]`` is its event number ``popped + i``
    # (`since`).
    popped: int = 0
    # Events the history dropped while a resumed watch was still taking its events from it, the last
    # ``kept_behind`` at most: ``behind[i]`` is event number ``popped - len(behind) + i``. A watch
    # resumed from near the history's oldest event has no margin of its own before the history drops
    # its next one; these give it that of a send buffer, shared by the scope's resumed watches
    # (`since`). Empty while none reads: let go as the last of them ends (`_unread`).
    behind: collections.deque[Event] = attrs.field(factory=collections.deque)
    kept_behind: int = 1000
    # The places of the resumed watches reading the history, known weakly: a watch ended before it
    # took a line (its iterator never ran, so no `finally` of it does) leaves nothing behind it.
    _readers: set[weakref.ref[_Reader]] = attrs.field(factory=set)
    # Reads are numbered when they start; a read older than the one a repository last took is stale.
    # A repository's number is kept only while an older read may still land: past that, one without
    # tags is forgotten (`_forget_mark`), or every repository ever read (a watch by a made-up name, a
    # deleted repository) would stay here for the source's life (review r6watch F2).
    _reads: int = 0
    _marks: dict[str, int] = attrs.field(factory=dict)
    # The numbers of the reads under way (of the scope or of one repository).
    _flying: set[int] = attrs.field(factory=set)
    # Bounds every resync (a registry that answers forever must not hold the loop).
    clock: IReactorTime | None = None
    timeout: float | None = None
    _resyncing: bool = False
    _running: Deferred[None] | None = None
    _joined: Waiters[None] = attrs.field(factory=Waiters)
    _ready_waiters: Waiters[None] = attrs.field(factory=Waiters)
    _reading: set[str] = attrs.field(factory=set)
    _again: set[str] = attrs.field(factory=set)
    _dirty_before_ready: set[str] = attrs.field(factory=set)
    # Hands the events to the subscribers, a bounded number per turn of the reactor.
    fanout: Fanout = attrs.field(
        default=attrs.Factory(lambda self: Fanout(self.subscribers, self.clock), takes_self=True)
    )
    resyncs: int = 0
    failures: int = 0
    # Where failed reads are said: the hub's, shared by its sources (one line per cause and period,
    # not per scope).
    failure_log: ReadFailures = attrs.field(factory=lambda: ReadFailures(time.monotonic))
    # Where lists of this scope report the tag lists they read, by the sequence of their resourceVersion
    # (`reporter`): one callable per sequence, so that a walk tells by it that its kept lists were
    # reported here already; the most recent ones are kept.
    _reporters: collections.OrderedDict[int, Callable[[str, Sequence[str]], None]] = attrs.field(
        factory=collections.OrderedDict
    )
    # Per repository, tags lists showed that the snapshot lacked, and tags the snapshot held that lists
    # did not show, until a read made after those lists' confirms them (`list_read`); at most
    # ``max_pending`` in all, past which the scope's watches relist (``on_reset``). Those shown are
    # kept by namespace (no namespace without one): an access check looks only at those of the
    # namespaces whose rules changed (`unconfirmed_in`), not at all of them for every watch.
    _shown: dict[str, dict[str, set[str]]] = attrs.field(factory=dict)
    _hidden: dict[str, set[str]] = attrs.field(factory=dict)
    # Per repository, the last read number issued when a list's differences were noted: only a read
    # numbered above it started after that list's read, and may confirm them.
    _noted: dict[str, int] = attrs.field(factory=dict)
    _pending: int = 0
    max_pending: int = 10_000
    on_reset: Callable[[ScopeSource], None] | None = None
    # After a reset, until a resync that started after it has ended: lists wait for it
    # (`WatchHub.list_version`), so that their reads are compared with a snapshot brought up to date
    # rather than noting the same differences again and resetting once more.
    catching_up: bool = False
    _catch_up_waiters: Waiters[None] = attrs.field(factory=Waiters)
    _checking: set[str] = attrs.field(factory=set)
    _check_again: set[str] = attrs.field(factory=set)
    # Repositories the snapshot holds from a read of the repository itself (a notification, a delete,
    # a watch's opening) that no read of the scope has shown since (`_apply_read`).
    _read_alone: set[str] = attrs.field(factory=set)

    def reporter(self, sequence: int) -> Callable[[str, Sequence[str]], None]:
        """Where a list of this scope at ``sequence`` reports the tag lists it reads (`list_read`). Once
        ``sequence`` is below the floor (a reset, or a history that no longer goes back to it), its
        watch is 410 Gone: its reports are dropped, and cannot bring on another reset."""
        reporter = self._reporters.get(sequence)
        if reporter is not None:
            self._reporters.move_to_end(sequence)
            return reporter

        def report(repository: str, tags: Sequence[str]) -> None:
            if sequence >= self.floor:
                self.list_read(repository, tags)

        self._reporters[sequence] = report
        while len(self._reporters) > _REPORTERS_KEPT:
            self._reporters.popitem(last=False)
        return report

    def unconfirmed_namespaces(self) -> set[str]:
        """The namespaces of the unconfirmed repositories (`unconfirmed_in`)."""
        return set(self._shown)

    def unconfirmed_in(self, namespaces: Iterable[str]) -> Iterator[str]:
        """The repositories of ``namespaces`` where lists showed tags the snapshot lacks (`list_read`),
        until a read applied to the snapshot has them (the repository is then in the scope) or a
        read finds them gone (their ``DELETED`` sent, after those lists' resourceVersions), or a
        reset gives them up (every watch from before it is 410). At most ``max_pending`` tags' worth
        in all."""
        for namespace in namespaces:
            yield from self._shown.get(namespace, ())

    def covers(self, repository: str) -> bool:
        parts = split_repository(repository)
        return parts is not None and (self.namespace is None or parts[0] == self.namespace)

    def refs(self) -> Iterator[TagRef]:
        """The snapshot as it is now, as references in list order, made as they are taken: a watch
        that starts with them and whose client reads slowly holds a copy of the list of repositories
        (each one's tags are an immutable set, which later reads replace) and one repository's
        references at a time, not a reference for every tag of the scope."""
        repositories = []
        for repository, tags in self.tags.items():
            parts = split_repository(repository)
            if parts is not None:
                # The references of a repository are together in list order (TagRef.sort_key).
                repositories.append((TagRef(*parts, "").sort_key[:2], *parts, tags))
        repositories.sort(key=lambda entry: entry[0])
        return (
            TagRef(namespace, path, tag) for _, namespace, path, tags in repositories for tag in sorted(tags)
        )

    def when_ready(self) -> Deferred[None]:
        """Fires once the baseline is read. When every waiter gave up (their requests were cancelled)
        before it was, the baseline read is cancelled too: nobody is left to serve."""

        def give_up() -> None:
            if not self._ready_waiters and not self.ready and self._running is not None:
                self._running.cancel()

        if self.ready:
            return succeed(None)
        waiter = self._ready_waiters.wait(give_up)
        if not self._resyncing:
            self.resync()
        return waiter

    def stop(self) -> None:
        """The hub dropped the source: a resync under way is cancelled (nobody waits for it: the
        source was idle), so that its failure, coming after the drop, is not taken for the scope's
        last one in the hub's failure log, holding the episode open for good (review r2obs F1).
        A cancel is neither a failure nor logged (`_resync_read`)."""
        if self._running is not None:
            self._running.cancel()

    def fail_waiters(self, error: Exception) -> None:
        self._ready_waiters.fail(error)

    def resync(self) -> Deferred[None]:
        """Reads the scope and applies the differences; joins the resync already running, if any."""
        joined = self._joined.wait()
        if not self._resyncing:
            self._resyncing = True
            running = Deferred.fromCoroutine(self._run_resync())
            if self.clock is not None and self.timeout is not None:
                running.addTimeout(self.timeout, self.clock)
            self._running = running if not running.called else None
        return joined

    async def fresh(self) -> None:
        """Returns after a resync that started after this call."""
        if self._resyncing:
            await self.resync()
        await self.resync()

    async def _run_resync(self) -> None:
        try:
            await self._resync_once()
        finally:
            self._resyncing = False
            self._running = None
            self._joined.fire(None)

    async def _resync_once(self) -> None:
        mark = self._next_mark()
        try:
            await self._resync_read(mark)
        finally:
            self._flying.discard(mark)
        # What this read's own number kept from being forgotten; and those of repositories whose
        # tagless read landed while an older read was still under way.
        oldest = min(self._flying, default=self._reads + 1)
        for repository in [r for r, m in self._marks.items() if m < oldest and r not in self.tags]:
            del self._marks[repository]

    async def _resync_read(self, mark: int) -> None:
        try:
            seen = await self.reader.scope_tags(self.namespace)
        except CancelledError as error:
            if not self.ready:
                self.fail_waiters(error)
            return
        except Exception as error:
            # The snapshot stays as it was: an unreadable registry must not look like deleted tags.
            self.failures += 1
            self.failure_log.resync_failed(self.namespace, error)
            if not self.ready:
                self.fail_waiters(error)
            return
        self.resyncs += 1
        self.failure_log.resync_passed(self.namespace)
        for repository in set(self.tags) | set(seen):
            if repository not in seen and repository in self._read_alone:
                # The scope's reads go through the repository index, which may have learnt of it only
                # after this one began: a read of the repository says whether it is gone.
                self.repository_changed(repository)
                continue
            if self._apply(repository, frozenset(seen.get(repository, ())), mark):
                # A stale scope read (a newer read of the repository was applied) says nothing of it.
                self._read_alone.discard(repository)
        for repository in sorted(self._noted):
            # What lists showed otherwise that this read may not confirm: it does not read tags the
            # scope's reads do not see yet (a repository the index does not know).
            self._check(repository)
        if not self.ready:
            self.ready = True
            # A number of its own: a resourceVersion issued before the baseline (a list of the scope
            # while it had no source) is below the floor, so a watch from it is not served from a
            # history that does not go back that far.
            self.floor = self.versions.next()
            self._ready_waiters.fire(None)
            dirty, self._dirty_before_ready = self._dirty_before_ready, set()
            for repository in sorted(dirty):
                self.repository_changed(repository)

    def _next_mark(self) -> int:
        """The number of a read that starts now, under way until its caller discards it from
        ``_flying``."""
        self._reads += 1
        self._flying.add(self._reads)
        return self._reads

    def repository_changed(self, repository: str) -> Deferred[None] | None:
        """A notification, or a delete this replica made: re-read one repository (coalesced while a
        read of it runs). The read it started, if it started one: it fires once that read (and those
        asked for while it ran) ended."""
        if not self.covers(repository):
            return None
        if not self.ready:
            self._dirty_before_ready.add(repository)
            return None
        return self._reread(
            repository,
            self._reading,
            self._again,
            lambda tags, mark: self._apply_read(repository, tags, mark),
        )

    def list_read(self, repository: str, tags: Sequence[str]) -> None:
        """A list of this scope, whose resourceVersion was taken before it read, read ``tags`` of
        ``repository``. A watch from that resourceVersion is sent only the changes the source finds
        after it: a tag the list showed but the snapshot lacks (pushed since the last reread) would
        never be ``DELETED`` should it go before a reread sees it, and one the snapshot holds but the
        list did not show never ``ADDED``. Both are confirmed by a read of the repository made after
        the list's (`_confirm`). The list's read is never applied to the snapshot: it may be older
        than the snapshot, or of a repository the scope's reads do not see yet (the index), and
        every watcher of the scope would be told of changes undone.
        """
        if not self.ready or not self.covers(repository):
            return
        old = self.tags.get(repository, frozenset())
        # Tag names in one answer are unique: as many and all known is the same set, without one.
        if len(tags) == len(old) and old.issuperset(tags):
            return
        seen = frozenset(tags)
        self._note_shown(repository, seen - old)
        self._note(self._hidden, repository, old - seen)
        if self._pending > self.max_pending:
            self._reset()
            return
        self._check(repository)

    def _note_shown(self, repository: str, tags: frozenset[str]) -> None:
        parts = split_repository(repository)
        if tags and parts is not None:  # no namespace kept without a repository
            self._note(self._shown.setdefault(parts[0], {}), repository, tags)

    def _unnote_shown(self, repository: str) -> set[str]:
        parts = split_repository(repository)
        shown_in = None if parts is None else self._shown.get(parts[0])
        if parts is None or shown_in is None:
            return set()
        shown = shown_in.pop(repository, set())
        if not shown_in:
            del self._shown[parts[0]]
        return shown

    def _note(self, pending: dict[str, set[str]], repository: str, tags: frozenset[str]) -> None:
        if not tags:
            return
        kept = pending.setdefault(repository, set())
        before = len(kept)
        kept |= tags
        self._pending += len(kept) - before
        self._noted[repository] = self._reads

    def _reset(self) -> None:
        """More tags wait for confirmation than are kept: what they would have told is given up,
        and so is every watch that may have needed it. Watches from before now are 410 Gone, and
        those running are ended with it (``on_reset``): their clients relist."""
        log.warn(
            "watch of {scope}: more than {bound} listed tags wait for a reread; its watches relist",
            scope=self.namespace or "all namespaces",
            bound=self.max_pending,
        )
        self._shown.clear()
        self._hidden.clear()
        self._noted.clear()
        self._pending = 0
        self.popped += len(self.ring)
        self.ring.clear()
        self.behind.clear()  # the watches resumed from it are ended with the others
        self.floor = self.versions.next()
        if self.on_reset is not None:
            self.on_reset(self)
        if not self.catching_up:
            self.catching_up = True
            Deferred.fromCoroutine(self.fresh()).addBoth(self._caught_up)

    def caught_up(self) -> Deferred[None]:
        """Fires once no resync started by a reset is running."""
        return self._catch_up_waiters.wait() if self.catching_up else succeed(None)

    def _caught_up(self, result: object) -> None:
        # However it ended: a failed resync is logged by itself, and lists go on as before.
        self.catching_up = False
        self._catch_up_waiters.fire(None)

    def _check(self, repository: str) -> None:
        """Reads one repository to confirm what lists showed of it, without applying the read to the
        snapshot (one read at a time per repository; reports meanwhile are confirmed by the next)."""
        self._reread(repository, self._checking, self._check_again, lambda tags, mark: None)

    def _confirm(self, repository: str, now: frozenset[str], mark: int) -> None:
        """Sends what a read of ``repository`` numbered ``mark`` (``now``) says of the tags lists showed
        otherwise than the snapshot, when the source has not sent it meanwhile, if that read started
        after those lists' reads (else a later one does). Every event is true when sent and the
        snapshot is not touched: another watcher gets at most a repeat (an ``ADDED`` for a tag it
        has, a ``DELETED`` for one it has not)."""
        if mark <= self._noted.get(repository, mark):
            return
        del self._noted[repository]
        shown = self._unnote_shown(repository)
        hidden = self._hidden.pop(repository, set())
        self._pending -= len(shown) + len(hidden)
        parts = split_repository(repository)
        if parts is None:
            return
        snapshot = self.tags.get(repository, frozenset())
        unknown = set()
        for tag in sorted(shown - snapshot):  # one now in the snapshot was sent as ADDED
            if tag in now:
                unknown.add(tag)  # there, and the scope's reads do not see it yet: checked again
            else:
                self.emit(EventType.DELETED, TagRef(parts[0], parts[1], tag))
        for tag in sorted(hidden & snapshot):  # one gone from the snapshot was sent as DELETED
            if tag in now:
                self.emit(EventType.ADDED, TagRef(parts[0], parts[1], tag))
        if unknown:
            self._note_shown(repository, frozenset(unknown))
        gone = (hidden & snapshot) - now
        if gone:
            # The snapshot holds tags that are gone: a read applied to it sends their DELETED. They
            # stay noted until then: pushed again before that read, they are in the snapshot still,
            # and only the note sends their ADDED.
            self._note(self._hidden, repository, frozenset(gone))
            self.repository_changed(repository)

    def _reread(
        self,
        repository: str,
        busy: set[str],
        again: set[str],
        apply: Callable[[frozenset[str], int], None],
    ) -> Deferred[None] | None:
        """Reads one repository's tag list, then has ``apply`` take it and `_confirm` what lists noted
        of it; while a read of the same kind (``busy``) is out, one more follows it (``again``).
        The reading started, or None when one was out already."""
        if repository in busy:
            again.add(repository)
            return None

        async def reading() -> None:
            busy.add(repository)
            try:
                while True:
                    if not await self._read_once(repository, apply):
                        return
                    if repository not in again:
                        return
                    again.discard(repository)
            finally:
                busy.discard(repository)

        # In a context of its own: the caller may be a request that marked itself asking before the
        # change it tells of (a deletecollection, registry.coalesce), and a read sent since then but
        # before the change must not serve this one.
        reading_done: Deferred[None] = contextvars.Context().run(Deferred.fromCoroutine, reading())
        return reading_done

    async def _read_once(self, repository: str, apply: Callable[[frozenset[str], int], None]) -> bool:
        """One read of a repository's tag list, taken by ``apply`` and `_confirm`; False if it failed."""
        mark = self._next_mark()
        try:
            try:
                tags = frozenset(await self.reader.repository_tags(repository))
            except RegistryNotFound:
                tags = frozenset()
            except Exception as error:
                self.failure_log.read_failed(repository, error)
                return False
            apply(tags, mark)
            self._confirm(repository, tags, mark)
            return True
        finally:
            self._flying.discard(mark)

    async def read(self, repository: str) -> bool:
        """Reads one repository now, in the caller's context (a read sent after its request began
        serves it), and applies it to the snapshot as a notification's read is; False if it failed."""
        return await self._read_once(repository, lambda tags, mark: self._apply_read(repository, tags, mark))

    def _apply_read(self, repository: str, tags: frozenset[str], mark: int) -> None:
        """Applies a read of one repository. One with tags is noted: until a read of the scope shows
        it, a read of the scope that lacks it is not taken for its deletion (`_resync_once`). A stale
        read (older than one applied already) changes nothing, that note included."""
        if not self._apply(repository, tags, mark):
            return
        if tags:
            self._read_alone.add(repository)
        else:
            self._read_alone.discard(repository)

    def _apply(self, repository: str, tags: frozenset[str], mark: int) -> bool:
        """Applies a read of one repository to the snapshot; False if it is stale (a newer read of
        this repository was applied already)."""
        if self._marks.get(repository, 0) > mark:
            return False
        old = self.tags.get(repository, frozenset())
        if tags:
            self.tags[repository] = tags
            self._marks[repository] = mark
        else:
            self.tags.pop(repository, None)
            self._forget_mark(repository, mark)
        if not self.ready or old == tags:
            return True  # the first read is the baseline: no events
        parts = split_repository(repository)
        if parts is None:
            return True
        namespace, path = parts
        for tag in sorted(old - tags):
            self.emit(EventType.DELETED, TagRef(namespace, path, tag))
        for tag in sorted(tags - old):
            self.emit(EventType.ADDED, TagRef(namespace, path, tag))
        return True

    def _forget_mark(self, repository: str, mark: int) -> None:
        """A read numbered ``mark`` found ``repository`` without tags. Its number is needed only to
        tell an older read still under way as stale: with none, a read that lands later is newer
        (and the repository without a number is as one never read); else it is kept until the end of
        the scope read that finds no older one (`_resync_once`)."""
        if min(self._flying, default=mark) < mark:
            self._marks[repository] = mark
        else:
            self._marks.pop(repository, None)

    def emit(self, kind: EventType, ref: TagRef) -> Event:
        """An event of the scope: the next resourceVersion, kept in the history, sent to every watcher."""
        event = Event(self.versions.next(), kind, ref)
        self.ring.append(event)
        while len(self.ring) > self.history:
            dropped = self.ring.popleft()
            self.floor = dropped.sequence
            self.popped += 1
            if self._readers:
                self.behind.append(dropped)
                if len(self.behind) > self.kept_behind:
                    self.behind.popleft()
            elif self.behind:
                self.behind.clear()
        self.fanout.push(event)
        return event

    def since(self, sequence: int) -> Iterator[Event] | None:
        """The events after ``sequence`` up to the newest now, or None when some of them are no longer
        retained. They are taken from the history as they are iterated, not copied: a watch whose
        client reads them slowly holds its place in the history. Those the history drops meanwhile
        are kept for it (`behind`) while no more than ``kept_behind`` are; should one it has not taken
        be dropped from there too (its client is that far behind the newest event), HistoryLost."""
        if sequence < self.floor:
            return None
        start = bisect.bisect_right(self.ring, sequence, key=lambda event: event.sequence)
        reader = _Reader(self.popped + start)
        ref = weakref.ref(reader, self._unread)  # told when it goes, whether or not it ever read
        self._readers.add(ref)
        return self._after(reader, ref, self.versions.current)

    def _after(self, reader: _Reader, ref: weakref.ref[_Reader], until: int) -> Iterator[Event]:
        try:
            while True:
                index = reader.position - self.popped
                if index < -len(self.behind):
                    raise HistoryLost(self.namespace)
                if index >= len(self.ring):
                    return
                event = self.behind[index] if index < 0 else self.ring[index]
                if event.sequence > until:
                    return  # sent by the fan-out
                yield event
                reader.position += 1
        finally:
            # Now, not once the reader is collected (a traceback of HistoryLost may hold it a while).
            self._unread(ref)

    def _unread(self, ref: weakref.ref[_Reader]) -> None:
        """A resumed watch stopped reading the history: what was kept behind for it goes with the
        last of them, not at the scope's next event (a quiet scope may have none for long)."""
        self._readers.discard(ref)
        if not self._readers:
            self.behind.clear()


@attrs.define(eq=False)
class _Reader:
    """A resumed watch's place in its scope's history: the number of the next event it takes (counted
    as `ScopeSource.popped` counts). Held by the iterator alone: the source knows it weakly, so that a
    watch ended before it read a line leaves nothing registered."""

    position: int


class HistoryLost(Exception):
    """The history dropped an event a watch had not taken yet (`ScopeSource.since`)."""


__all__ = ["Event", "EventType", "HistoryLost", "ScopeReader", "ScopeSource", "Subscriber"]
