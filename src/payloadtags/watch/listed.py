"""What lists of an unwatched scope read, kept briefly, so that a watch from their resourceVersion can
start without the scope having had a source (and its rereads) while nobody watched.

A list of a scope without a source takes the replica's current sequence N and records, for each
repository it read, the tags it saw. Every list of that scope at the same N (and every later page of
their walks) adds to the same record. A watch from N then reads the scope once and is sent, as its first
events, the differences between that read and the record. Several reads of one repository are kept as
the tags every read saw and the tags any read saw: a tag missing from any read is sent as ``ADDED``
when it is there now, a tag seen by any read as ``DELETED`` when it is gone. A repository first read
when the record had more than one list counts as missing from every read: another of those lists may
never read it (a walk that passed its place before it was pushed). Whatever a client was shown
by any of these reads, the events bring it to the state read for the watch; the cost is that a change
may arrive twice (an ``ADDED`` for a tag the client has, a ``DELETED`` for one it has not), which
informers and kubectl take in their stride.

Records are bounded in total size, what they hold counted in tags: a tag counts 1, a record and each
repository a record read (with tags or without) `RECORD_COST` and `REPOSITORY_COST` (what each holds
is about as much as that many tags), so that lists of made-up namespaces, and lists by name of tags in
made-up repositories, are bounded as lists that read tags are. The oldest go first, and records nobody
used for a while expire. A watch whose record is gone is answered 410 Gone and its client relists.
The key of a record that is gone is never given to another one: the sequence moves on (``WatchHub``),
so that a later list of the scope takes another resourceVersion and a watch from the old one is not
sent the differences from the later list's reads (changes made between the two lists would never be
sent).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence

import attrs

from payloadtags.names import TagRef, split_repository
from payloadtags.watch.source import EventType

# What a record, and a repository read recorded in it, cost against the bound, in tags (229 bytes at
# most: docs/watch.md). Measured with tracemalloc (hub.open_list and its observer, Listed.observe of no
# tags): a record of a 63-character namespace with its reporting callable, 724 bytes; a repository
# read without tags, 606 bytes with a 10-character path and 833 with a 255-character one (its name,
# its registry answer and the two sets that keep it). Without these costs, a record or a repository
# without tags counted nothing, and one user's lists kept any number of them (review r7watch F1).
RECORD_COST = 4
REPOSITORY_COST = 4


@attrs.define(eq=False)
class Listed:
    """The reads of one scope's lists at one sequence, per repository: (in every read, in any read)."""

    scope: str | None
    sequence: int
    touched: float
    reads: dict[str, tuple[frozenset[str], frozenset[str]]] = attrs.field(factory=dict)
    size: int = 0
    dropped: bool = False
    # The one callable lists report to this record through (`WatchHub.observer`).
    report: Callable[[str, Sequence[str]], None] | None = None
    # Per repository, the registry answer recorded last: an immutable tuple that lists sharing one read
    # (coalescing) all report; the same one, or an equal one, again adds nothing, and is not turned
    # into a set again.
    last: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    # How many lists opened or joined the record (their first pages).
    lists: int = 0

    def observe(self, repository: str, tags: Sequence[str], vouch: bool = True) -> int:
        """Records one read; returns how much the record grew by (`REPOSITORY_COST` for a repository
        it had not read, and 1 a tag). A read that does not ``vouch``
        (a list by name's: it reads its repository directly, where the scope's lists see only the
        repositories their view of the scope holds) never stands for the other lists' reads: a list
        that joined after it may never read that repository (one the repository index does not know
        yet), and its client was shown none of those tags."""
        if self.dropped:
            return 0
        if isinstance(tags, tuple):
            last = self.last.get(repository)
            # Taking a read is idempotent: the same tags again leave (every, some) as they are. A
            # list repeated while nothing changes reads equal answers (other tuples): comparing the
            # tuples costs a tenth of making and comparing the sets.
            if last is tags or (last is not None and last == tags):
                return 0
            self.last[repository] = tags
        seen = frozenset(tags)
        old = self.reads.get(repository)
        if old is None:
            # With several lists, another of them may never read it (pushed after that walk passed
            # its place): as far as that list's client knows, none of these tags is there.
            self.reads[repository] = (seen if self.lists <= 1 and vouch else frozenset(), seen)
            grown = REPOSITORY_COST + len(seen)
            self.size += grown
            return grown
        if old[0] == seen and old[1] == seen:
            return 0  # the common case: the same tags again, nothing new to keep
        new = (old[0] & seen, old[1] | seen)
        self.reads[repository] = new
        grown = _kept(new) - _kept(old)
        self.size += grown
        return grown

    def changes(
        self,
        now: Mapping[str, frozenset[str]],
        reads: Mapping[str, tuple[frozenset[str], frozenset[str]]] | None = None,
    ) -> Iterator[tuple[EventType, TagRef]]:
        """The events that bring a client shown any of the recorded reads (or ``reads``, a copy of
        them) to ``now`` (a read of the scope made after the lists'), in list order, made as they are
        taken; but for the tags of repositories ``now`` lacks altogether (`unconfirmed`), which ``now``
        must tell with an empty set when they are gone."""
        if reads is None:
            reads = self.reads
        for repository in sorted(set(reads) | set(now)):
            parts = split_repository(repository)
            if parts is None:
                continue
            namespace, path = parts
            if self.scope is not None and namespace != self.scope:
                continue
            current = now.get(repository)
            if current is None:
                continue
            every, some = reads.get(repository, (frozenset(), frozenset()))
            for tag in sorted(some - current):
                yield EventType.DELETED, TagRef(namespace, path, tag)
            for tag in sorted(current - every):
                yield EventType.ADDED, TagRef(namespace, path, tag)

    def unconfirmed(self, now: Mapping[str, frozenset[str]]) -> Iterator[tuple[str, frozenset[str]]]:
        """The repositories reads showed tags of and ``now`` lacks altogether, with those tags. A read
        of the scope goes through the repository index, which may not know a repository yet (its push
        notification lost) while a list by name read it directly: its tags are gone only once a read of
        that repository says so (`WatchHub.confirm_listed`)."""
        for repository, (_, some) in sorted(self.reads.items()):
            parts = split_repository(repository)
            if some and repository not in now and parts is not None:
                if self.scope is None or parts[0] == self.scope:
                    yield repository, some


def _kept(reads: tuple[frozenset[str], frozenset[str]]) -> int:
    every, some = reads
    return len(some) if every is some else len(every) + len(some)


@attrs.define(eq=False)
class ListedScopes:
    """The records of lists of unwatched scopes, bounded by ``max_size`` in total (counted in tags,
    `RECORD_COST`, `REPOSITORY_COST`)."""

    # Up to about 55 MiB: 229 bytes per counted tag of 128 characters (the registry's longest; 121
    # bytes for 20), the strings with the frozensets and the registry answer's tuple that hold them.
    # Measured with tracemalloc, what dropping the records of one-repository lists frees (docs/watch.md).
    # Records and repositories cost less per counted tag (above).
    max_size: int = attrs.field(default=250_000, validator=attrs.validators.ge(RECORD_COST))
    # In the order they were last used (`open`, `get` with ``now``), least recently first: the bound
    # drops from the front. Sorting them by ``touched`` for each drop looked at every record, 62,500 at
    # the default bound for each list of a made-up namespace (review r8watch F1). Not a plain dict:
    # taking its first item again and again after deletions scans past the deleted slots.
    records: OrderedDict[tuple[str | None, int], Listed] = attrs.field(factory=OrderedDict)
    size: int = 0

    def open(self, scope: str | None, sequence: int, now: float) -> Listed | None:
        """The record lists of ``scope`` at ``sequence`` add to (created by the first one). None when
        a new one had no room: the oldest records were dropped to make it, and their keys must not be
        reused; the caller moves the sequence on and opens the record at the next one."""
        record = self.records.get((scope, sequence))
        if record is None:
            if self.size + RECORD_COST > self.max_size:
                self._shrink(self.max_size - RECORD_COST)
                return None
            record = self.records[(scope, sequence)] = Listed(scope, sequence, now, size=RECORD_COST)
            self.size += RECORD_COST
        self.records.move_to_end((scope, sequence))
        record.touched = now
        record.lists += 1
        return record

    def leave(self, record: Listed) -> None:
        """A list that joined ``record`` failed: its client was shown nothing, so the record no longer
        waits for it to read the repositories the others read."""
        if record.lists > 0:
            record.lists -= 1

    def get(self, scope: str | None, sequence: int, now: float | None = None) -> Listed | None:
        record = self.records.get((scope, sequence))
        if record is not None and now is not None:
            self.records.move_to_end((scope, sequence))
            record.touched = now
        return record

    def observe(self, record: Listed, repository: str, tags: Sequence[str], vouch: bool = True) -> bool:
        """Adds a read to a record (`Listed.observe`); False when the bound dropped records (their keys
        must not be reused: the caller moves the sequence on)."""
        self.size += record.observe(repository, tags, vouch)
        if self.size <= self.max_size:
            return True
        self._shrink(self.max_size)
        if self.size > self.max_size:  # a record larger than the bound on its own goes too
            self._drop((record.scope, record.sequence), record)
        return False

    def _shrink(self, size: int) -> None:
        """Drops records, least recently used first, until they hold no more than ``size``."""
        while self.size > size and self.records:
            key, other = next(iter(self.records.items()))
            self._drop(key, other)

    def _drop(self, key: tuple[str | None, int], record: Listed) -> None:
        if self.records.get(key) is record:
            del self.records[key]
        if not record.dropped:
            record.dropped = True
            self.size -= record.size
            record.reads.clear()
            record.last.clear()

    def expire(self, before: float) -> bool:
        """Drops the records not used since ``before``; True when any went (their keys must not be
        reused either)."""
        expired = [(key, record) for key, record in self.records.items() if record.touched < before]
        for key, record in expired:
            self._drop(key, record)
        return bool(expired)


__all__ = ["Listed", "ListedScopes"]
