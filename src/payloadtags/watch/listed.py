"""What lists of an unwatched scope read, kept briefly, so that a watch from their resourceVersion can
start without the scope having had a source (and its rereads) while nobody watched.

A list of a scope without a source takes the replica's current sequence N and records, for each
repository it read, the tags it saw. Every list of that scope at the same N (and every later page of
their walks) adds to the same record. A watch from N then reads the scope once and is sent, as its first
events, the differences between that read and the record. Several reads of one repository are kept as
the tags every read saw and the tags any read saw: a tag missing from any read is sent as ``ADDED``
when it is there now, a tag seen by any read as ``DELETED`` when it is gone. A repository first read
while the record had other lists counts as missing from every read until each of those lists has
read it too (or failed before its client was shown anything): another of them may never read it (a
walk that passed its place before it was pushed). Lists that joined after that first read see the
repository (it was there when they started), so they are not waited for. To tell the lists apart,
each of the first `TRACKED_LISTS` lists of a record has a bit of its own (`ListedScopes.track`), and
reports through a callable of its own (`WatchHub.observer`), its later pages too; a repository first
read while a list without one had joined (past the cap, or one whose identity its walk lost) stays
missing from every read, as a repository a list by name read directly does. Whatever a client was
shown by any of these reads, the events bring it to the state read for the watch; the cost is that a
change may arrive twice (an ``ADDED`` for a tag the client has, a ``DELETED`` for one it has not), which
informers and kubectl take in their stride; lists that arrive together and read the same are not
sent their own tags again (review r1user L1).

Records are bounded in total size, what they hold counted in tags: a tag counts 1, a record and each
repository a record read (with tags or without) `RECORD_COST` and `REPOSITORY_COST` (what each holds
is about as much as that many tags), so that lists of made-up namespaces, and lists by name of tags in
made-up repositories, are bounded as lists that read tags are. A record counts against the user whose
list opened it; at the bound, the least recently used record of the user who holds the most goes first,
so that one user's flood of lists pushes out her own records before anyone else's. Records nobody used
for a while expire. A watch whose record is gone is answered 410 Gone and its client relists.
The key of a record that is gone is never given to another one: the sequence moves on (``WatchHub``),
so that a later list of the scope takes another resourceVersion and a watch from the old one is not
sent the differences from the later list's reads (changes made between the two lists would never be
sent). Nor does a list made after a change the hub is told of (a delete through payloadtags, a
registry notification) join the record of one made before it: the sequence moves on when a record of
a scope covering the repository is at it (`WatchHub.repository_changed`), or the later list's watch
would be sent the change.
"""

from __future__ import annotations

import heapq
import itertools
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence

import attrs

from payloadtags.names import TagRef, split_repository
from payloadtags.registry.taglist import TagList
from payloadtags.watch.source import EventType

# One read's tags: a set, or a registry answer as it came (its tags as one text).
Tags = frozenset[str] | TagList

# What a record, a repository read recorded in it, and a user who holds records cost against the
# bound, in tags (229 bytes at most: docs/watch.md). Measured with tracemalloc (hub.open_list and its
# observer, Listed.observe of no tags): a record of a 63-character namespace with its reporting
# callable, 888 bytes (with its place in its user's order); a repository read without tags, 606 bytes
# with a 10-character path and 833 with a 255-character one (its name, its registry answer and the
# two sets that keep it); a record each of another user, 1,511 bytes (her order, her key in the heap
# and her entry: 623 bytes a user, and her name once: her records share the string, 888 to 891 bytes
# a record with a name of 0 to 4,000 characters; a long name counts in her entry: _entry_cost).
# These with the callable a closure; its first list's `hub.ListReporter` takes 73 bytes less (805
# against 878 measured so, review r1user L1).
# Without these costs, a record or a repository without tags counted nothing, and one user's lists
# kept any number of them (review r7watch F1).
RECORD_COST = 4
REPOSITORY_COST = 4
USER_COST = 4
# A list with a bit of its own in a record (its reporting callable and its place in the record's
# tuple of them; the first list's is in `RECORD_COST`: 157 to 214 bytes measured as above, for the
# 2nd to 8th list), and a repository waiting for lists to read it (its entry in ``Listed.pending``:
# the lists' bits and the tags every read saw, apart while they differ from the others' sets; measured
# a repository of one tag read by one of two lists, 54 to 57 bytes, more when the table grows, and 240
# for a record's first, which makes the table: 11 over 229, within the record's room, 805 of 916, and
# the table goes once no wait is left, review r2watch N1): 1 each.
LIST_COST = 1
PENDING_COST = 1
# How many of a record's lists get a bit of their own: the masks stay small ints (CPython keeps those
# up to 256 made once), and a record's reporting callables stay few. Lists past it are waited for by
# no repository: one first read while such a list had joined counts as missing from every read.
TRACKED_LISTS = 8
# What ``reads`` holds as the tags every read saw of a repository missing from every read: one set
# for all of them (CPython makes a new empty frozenset each time, 216 bytes).
_NONE: frozenset[str] = frozenset()


@attrs.define(eq=False)
class Listed:
    """The reads of one scope's lists at one sequence, per repository: (in every read, in any read)."""

    scope: str | None
    sequence: int
    touched: float
    # The user whose list opened it: its whole size counts against her (`ListedScopes`).
    owner: str = ""
    # When it was last used, in the order of all records' uses (`ListedScopes`: ties between users).
    used: int = 0
    reads: dict[str, tuple[Tags, Tags]] = attrs.field(factory=dict)
    size: int = 0
    dropped: bool = False
    # The one callable lists report to this record through (`WatchHub.observer`).
    report: Callable[[str, Sequence[str]], None] | None = None
    # Per repository, the registry answer recorded last: an immutable tuple that lists sharing one read
    # (coalescing) all report; the same one, or an equal one, again adds nothing, and is not turned
    # into a set again.
    last: dict[str, Sequence[str]] = attrs.field(factory=dict)
    # How many lists opened or joined the record (their first pages) and did not fail; of them, how
    # many have no bit of their own (`ListedScopes.track`).
    lists: int = 0
    untracked: int = 0
    # The bits of the lists that did not fail.
    live: int = 0
    # The callables of the lists with a bit, in the order of their bits (`ListedScopes.track`: how
    # many there are is the next one's bit): held here, so that a walk's later pages, which hold them
    # weakly (`api.walks.Reported`), find their list's again (`WatchHub.observer`).
    reporters: tuple[Callable[[str, Sequence[str]], None], ...] = ()
    # Per repository first read while other lists with a bit had joined: the bits of those that have
    # not read it yet, and the tags every read of it saw. Until none is left, ``reads`` holds it as
    # missing from every read (an empty first set). None while there is none.
    pending: dict[str, tuple[int, Tags]] | None = None

    def observe(
        self, repository: str, tags: Sequence[str], vouch: bool = True, bit: int | None = None
    ) -> int:
        """Records one read; returns how much the record grew by (`REPOSITORY_COST` for a repository
        it had not read, and 1 a tag, `PENDING_COST` for one that waits for other lists to read it).
        ``bit``: the reading list's (`ListedScopes.track`), None when it has none or is not known. A
        read that does not ``vouch``
        (a list by name's: it reads its repository directly, where the scope's lists see only the
        repositories their view of the scope holds) never stands for the other lists' reads: a list
        that joined after it may never read that repository (one the repository index does not know
        yet), and its client was shown none of those tags."""
        if self.dropped:
            return 0
        pending = self.pending
        grown = 0
        if pending is not None and bit is not None and vouch and repository in pending:
            # Before the fast path below: lists that shared one registry read report the same answer
            # (a TagList), and each of them is one of the lists this repository waits for (review
            # r1user L1).
            grown = self._read_by(repository, 1 << bit)
        return grown + self._take(repository, tags, vouch, bit)

    def _take(self, repository: str, tags: Sequence[str], vouch: bool, bit: int | None) -> int:
        if isinstance(tags, (tuple, TagList)):
            last = self.last.get(repository)
            # Taking a read is idempotent: the same tags again leave (every, some) as they are. A
            # list repeated while nothing changes reads equal answers (other tuples): comparing the
            # tuples costs a tenth of making and comparing the sets.
            if last is tags or (last is not None and last == tags):
                return 0
            self.last[repository] = tags
        # A TagList is kept as it is (its tags as one text), made a set only when a watch needs one.
        seen: Tags = tags if isinstance(tags, TagList) else frozenset(tags)
        old = self.reads.get(repository)
        if old is None:
            waits = self._waits(vouch, bit)
            if waits == 0:
                self.reads[repository] = (seen, seen)
                grown = REPOSITORY_COST + len(seen)
            else:
                # Another list may never read it (pushed after that walk passed its place): as far as
                # that list's client knows, none of these tags is there.
                self.reads[repository] = (_NONE, seen)
                grown = REPOSITORY_COST + len(seen)
                if waits > 0:  # lists with a bit, each of which may still read it
                    if self.pending is None:
                        self.pending = {}
                    self.pending[repository] = (waits, seen)
                    grown += PENDING_COST
            self.size += grown
            return grown
        pending = self.pending
        waiting = pending.get(repository) if pending is not None else None
        if pending is not None and waiting is not None:
            # Still waiting: the tags every read saw are kept apart, ``reads`` says none.
            before = self._weight(repository)
            every, some = _narrowed(waiting[1], seen), _widened(old[1], seen)
            pending[repository] = (waiting[0], every)
            self.reads[repository] = (old[0], some)
            grown = self._weight(repository) - before
            self.size += grown
            return grown
        if _same(old[0], seen) and _same(old[1], seen):
            return 0  # the common case: the same tags again, nothing new to keep
        new = (_narrowed(old[0], seen), _widened(old[1], seen))
        self.reads[repository] = new
        grown = _kept(new) - _kept(old)
        self.size += grown
        return grown

    def _waits(self, vouch: bool, bit: int | None) -> int:
        """For a repository read first by a list with ``bit``: the bits of the other lists it waits
        for (0: none, it is vouched for), or -1: it counts as missing from every read for good."""
        if not vouch:
            return -1  # a list by name's: the scope's lists, even later ones, may never see it
        if bit is None:
            # A list not known (no bit, or one whose walk lost it): alone, it is the one that read it.
            if self.lists <= 1:
                return 0
            return -1 if self.untracked else self.live
        if self.untracked:
            return -1  # a list without a bit may never read it, and none would tell
        return self.live & ~(1 << bit)

    def _read_by(self, repository: str, bits: int) -> int:
        """Lists with ``bits`` read ``repository``, or failed: once none is left to, the tags every
        read saw stand (a client of any of the lists was shown them). Returns the growth."""
        assert self.pending is not None
        waits, every = self.pending[repository]
        waits &= ~bits
        if waits:
            self.pending[repository] = (waits, every)
            return 0
        before = self._weight(repository)
        del self.pending[repository]
        if not self.pending:
            # CPython never shrinks a dict: an empty one would stay as large as the most waits it
            # held at once, uncounted (review r2watch N1).
            self.pending = None
        some = self.reads[repository][1]
        self.reads[repository] = (some if _same(every, some) else every, some)
        grown = self._weight(repository) - before
        self.size += grown
        return grown

    def left(self, bit: int | None) -> int:
        """A list that joined failed before its client was shown anything: no repository waits for it.
        Returns how much the record grew by (it shrinks)."""
        if self.lists > 0:
            self.lists -= 1
        if bit is None:
            if self.untracked > 0:
                self.untracked -= 1
            return 0
        return self.aside(bit)

    def aside(self, bit: int) -> int:
        """No repository waits for the list with ``bit`` (again: idempotent): it failed, or it is a list
        by name, whose client holds one tag at most and whose watch, by that name too, is sent nothing
        of the other repositories. Returns how much the record grew by (it shrinks)."""
        self.live &= ~(1 << bit)
        grown = 0
        if self.pending:
            for repository in list(self.pending):
                grown += self._read_by(repository, 1 << bit)
        return grown

    def _weight(self, repository: str) -> int:
        """What one repository's entry counts, its wait included."""
        reads = self.reads[repository]
        weight = _kept(reads)
        waiting = self.pending.get(repository) if self.pending is not None else None
        if waiting is not None:
            every = waiting[1]
            weight += PENDING_COST + (0 if every is reads[1] else len(every))
        return weight

    def changes(
        self,
        now: Mapping[str, frozenset[str]],
        reads: Mapping[str, tuple[Tags, Tags]] | None = None,
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
            every, some = map(_set, reads.get(repository, (frozenset(), frozenset())))
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
                    yield repository, _set(some)


def _set(tags: Tags) -> frozenset[str]:
    return tags if isinstance(tags, frozenset) else frozenset(tags)


def _same(kept: Tags, seen: Tags) -> bool:
    """Whether ``kept`` and ``seen`` hold the same tags. A set never equals a TagList of its tags: one
    read kept as a set (a list of another Catalog's) and an equal answer after it would be kept twice
    (review r1tags N2). As sets only when the forms differ and the lengths are equal: an empty set
    (`every` of a record of several lists) is not compared with an answer's set made for it."""
    if type(kept) is type(seen):
        return kept == seen
    return len(kept) == len(seen) and _set(kept) == _set(seen)


def _narrowed(every: Tags, seen: Tags) -> Tags:
    """The tags ``every`` and a read that saw ``seen`` both hold: ``every`` itself (a TagList stays one)
    when the read takes none of them away; a set is made only to narrow it (a set and a TagList
    neither compare by ``<=`` nor are ever ``==``)."""
    if not every or _same(every, seen):
        return every
    kept, now = _set(every), _set(seen)
    return every if kept <= now else kept & now


def _widened(some: Tags, seen: Tags) -> Tags:
    """The tags ``some`` or a read that saw ``seen`` holds: ``some`` itself when the read adds none."""
    if _same(some, seen):
        return some
    kept, now = _set(some), _set(seen)
    return some if now <= kept else kept | now


def _kept(reads: tuple[Tags, Tags]) -> int:
    every, some = reads
    return len(some) if every is some else len(every) + len(some)


Key = tuple[str | None, int]


@attrs.define(eq=False)
class _Holder:
    """One user's records, least recently used first, and what they weigh together with her entry
    (``entry``: `ListedScopes._entry_cost`)."""

    # Her name, the one string her records share: each request parses its own copy (the front proxy's
    # header), and a copy in every record cost its length again in each of them (review r11watch F1).
    # Her heap keys hold her holder, not the name, which she lets go of when she goes (`_drop`).
    name: str
    records: OrderedDict[Key, Listed] = attrs.field(factory=OrderedDict)
    weight: int = 0
    entry: int = USER_COST

    def heap_key(self) -> tuple[int, int, _Holder]:
        # The heaviest first; of users as heavy, the one whose least recently used record is older.
        # Holders are never compared (they have no order): ``used`` is one record's, and a record is
        # one user's, so keys that differ differ before the holder.
        return (-self.weight, next(iter(self.records.values())).used, self)


@attrs.define(eq=False)
class ListedScopes:
    """The records of lists of unwatched scopes, bounded by ``max_size`` in total (counted in tags,
    `RECORD_COST`, `REPOSITORY_COST`, `USER_COST`). At the bound, records go from the user who holds the most
    (the user whose list opened each record), her least recently used first; as heavy users, the one
    whose least recently used record is older: with one user, least recently used first. A record
    that cannot fit even alone goes alone."""

    # Up to about 55 MiB: 229 bytes per counted tag of 128 characters (the registry's longest; 121
    # bytes for 20), the strings with the frozensets and the registry answer's tuple that hold them.
    # Measured with tracemalloc, what dropping the records of one-repository lists frees (docs/watch.md).
    # Records, repositories and users' entries cost less per counted tag (above).
    max_size: int = attrs.field(default=250_000, validator=attrs.validators.ge(RECORD_COST + USER_COST))
    # In the order they were last used (`open`, `get` with ``now``), least recently first, which is
    # the order of ``touched``: expiry stops at the first record used since. Sorting them by
    # ``touched`` for each drop looked at every record, 62,500 at the default bound for each list of
    # a made-up namespace (review r8watch F1). Not a plain dict: taking its first item again and again
    # after deletions scans past the deleted slots.
    records: OrderedDict[Key, Listed] = attrs.field(factory=OrderedDict)
    size: int = 0
    # Per user, her records in the same order and their weight; with one user in all, dropping the
    # least recently used of hers is dropping the least recently used of all. Dropping from the front
    # of all records instead let one user's lists of made-up namespaces push out every other user's
    # records (their watches 410, their clients relisting).
    holders: dict[str, _Holder] = attrs.field(factory=dict)
    # The users by `_Holder.heap_key`: an entry is pushed whenever a user's key changes, and one that
    # no longer is her key is skipped (and popped) when the heaviest is looked for; rebuilt when the
    # stale entries outnumber the users. Finding the heaviest costs O(log users), not a look at every
    # user (one each, 62,500 users, for each drop).
    _heap: list[tuple[int, int, _Holder]] = attrs.field(factory=list)
    _uses: Iterator[int] = attrs.field(factory=itertools.count)
    # Per scope, when each page of its lists being read and written began (`begin_list`).
    _listing: dict[str | None, Counter[float]] = attrs.field(factory=dict)
    # The records watches from them wait for their scope's read with (`hold`): they do not expire
    # meanwhile. Here, not in each record: a record's measured size (`RECORD_COST`) stays what it was.
    _held: Counter[Key] = attrs.field(factory=Counter)

    def open(self, scope: str | None, sequence: int, now: float, user: str = "") -> Listed | None:
        """The record lists of ``scope`` at ``sequence`` add to (created by the first one, whose
        ``user`` it counts against). None when a new one had no room: records were dropped to make
        it, and their keys must not be reused; the caller moves the sequence on and opens the record
        at the next one."""
        key = (scope, sequence)
        record = self.records.get(key)
        if record is None:
            holder = self.holders.get(user)
            entry = 0 if holder is not None else self._entry_cost(user)
            cost = RECORD_COST + entry
            if self.size + cost > self.max_size:
                self._shrink(self.max_size - cost)
                return None
            if holder is None:
                holder = self.holders[user] = _Holder(user, weight=entry, entry=entry)
                self.size += entry
            record = Listed(scope, sequence, now, owner=holder.name, size=RECORD_COST)
            record.used = next(self._uses)
            self.records[key] = holder.records[key] = record
            holder.weight += RECORD_COST
            self.size += RECORD_COST
            self._push(holder)
        else:
            self._touch(key, record)
        record.touched = now
        record.lists += 1
        record.untracked += 1  # until `track` gives it a bit
        return record

    def track(self, record: Listed, reporter: Callable[[str, Sequence[str]], None]) -> int | None:
        """Gives the list that just opened or joined ``record`` a bit of its own (`Listed.observe`),
        and holds its ``reporter`` (`Listed.reporters`), each after the first counted against the
        record's owner (`LIST_COST`; the first one's is in `RECORD_COST`); None past `TRACKED_LISTS`,
        or when it does not fit under the bound (nothing is dropped for it: without a bit, the record
        treats the list as before, a repository first read after it joined as missing from every
        read)."""
        bit = len(record.reporters)
        cost = LIST_COST if bit else 0
        if record.dropped or bit >= TRACKED_LISTS or self.size + cost > self.max_size:
            return None
        record.reporters += (reporter,)
        record.live |= 1 << bit
        record.untracked -= 1
        record.size += cost
        self._grow(record, cost)
        return bit

    def leave(self, record: Listed, bit: int | None = None) -> None:
        """A list that joined ``record`` (with ``bit``, if it got one) failed: its client was shown
        nothing, so the record no longer waits for it to read the repositories the others read."""
        if not record.dropped:
            self._grow(record, record.left(bit))

    def aside(self, record: Listed, bit: int) -> None:
        """The list with ``bit`` reads by name (`Listed.aside`): no repository waits for it."""
        if not record.dropped:
            self._grow(record, record.aside(bit))

    def _grow(self, record: Listed, grown: int) -> None:
        """Counts what ``record`` grew by (its own ``size`` has it already) for its owner and in all."""
        if not grown:
            return
        holder = self.holders[record.owner]
        holder.weight += grown
        self.size += grown
        self._push(holder)

    def get(self, scope: str | None, sequence: int, now: float) -> Listed | None:
        """The record of lists of ``scope`` at ``sequence``, used ``now`` (a later page of a list, a
        watch from it): the last to go at the bound, the last to expire."""
        record = self.records.get((scope, sequence))
        if record is not None:
            self._touch((scope, sequence), record)
            record.touched = now
        return record

    def begin_list(self, scope: str | None, now: float) -> None:
        """A page of a list of ``scope`` begins ``now``: until it ends (`end_list`), however long it
        reads, the records of the scope used since it began (its own: the page uses it as it starts,
        `get`) do not expire; the page is not told which one is its own until it reads. Those used
        before every page of the scope now running began expire as before: lists that follow each
        other do not keep the older records."""
        self._listing.setdefault(scope, Counter())[now] += 1

    def end_list(self, scope: str | None, began: float) -> None:
        pages = self._listing[scope]
        pages[began] -= 1
        if pages[began] <= 0:
            del pages[began]
            if not pages:
                del self._listing[scope]

    def hold(self, record: Listed) -> None:
        """A watch from ``record`` waits for its scope's read: ``record`` does not expire until
        `release` (the bound may still drop it)."""
        self._held[(record.scope, record.sequence)] += 1

    def release(self, record: Listed) -> None:
        """The watch `hold` was for started or gave up."""
        key = (record.scope, record.sequence)
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]

    def held(self, record: Listed) -> int:
        """How many watches hold ``record`` (`hold`)."""
        return self._held[(record.scope, record.sequence)]

    def holds(self, scope: str | None, sequence: int) -> bool:
        """Whether a record of lists of ``scope`` at ``sequence`` is kept; unlike `get`, it is not used."""
        return (scope, sequence) in self.records

    def weight(self, user: str) -> int:
        """What the records ``user``'s lists opened hold, and her entry, counted as the bound counts."""
        holder = self.holders.get(user)
        return 0 if holder is None else holder.weight

    def _entry_cost(self, user: str) -> int:
        """What a user's entry counts: `USER_COST`, and 1 more for every 229 bytes her name takes (her
        records share it; 180 ASCII characters or more). A front proxy's name is as long as a header
        line: with 16 kB her entry held about 18 times what her 4 counted (review r11watch F1). Never
        so much that one record of hers cannot fit: the hub opens her record again at once after
        making room."""
        return min(USER_COST + sys.getsizeof(user) // 229, self.max_size - RECORD_COST)

    def _touch(self, key: Key, record: Listed) -> None:
        holder = self.holders[record.owner]
        first = next(iter(holder.records)) == key
        self.records.move_to_end(key)
        holder.records.move_to_end(key)
        record.used = next(self._uses)
        if first:  # her least recently used record is another now: her key changed
            self._push(holder)

    def observe(
        self,
        record: Listed,
        repository: str,
        tags: Sequence[str],
        vouch: bool = True,
        bit: int | None = None,
    ) -> bool:
        """Adds a read to a record (`Listed.observe`), by the list with ``bit`` if known; False when
        the bound dropped records (their keys must not be reused: the caller moves the sequence on)."""
        self._grow(record, record.observe(repository, tags, vouch, bit))
        if self.size <= self.max_size:
            return True
        if record.size + self.holders[record.owner].entry > self.max_size:
            # It cannot fit even alone (with its owner's entry): it goes, and only it. Before this read
            # all records fitted, so dropping it is enough; making room first dropped every other record
            # of its owner, who held the most, before it (review r10watch L1).
            self._drop((record.scope, record.sequence), record)
        else:
            self._shrink(self.max_size)
        return False

    def _shrink(self, size: int) -> None:
        """Drops records until they hold no more than ``size``: each time the least recently used
        record of the user who holds the most."""
        while self.size > size and self.records:
            holder = self._heaviest()
            key, record = next(iter(holder.records.items()))
            self._drop(key, record)

    def _heaviest(self) -> _Holder:
        heap = self._heap
        while True:
            entry = heap[0]
            holder = entry[2]
            if holder.records and holder.heap_key() == entry:  # a holder gone has no records
                return holder
            heapq.heappop(heap)  # a key she no longer has: pushed anew when it changed

    def _push(self, holder: _Holder) -> None:
        heapq.heappush(self._heap, holder.heap_key())
        self._compact()

    def _compact(self) -> None:
        """The heap rebuilt from the users' keys once its stale keys outnumber them (amortised O(1)
        a push or a user gone)."""
        if len(self._heap) > 2 * len(self.holders) + 64:
            self._heap = [each.heap_key() for each in self.holders.values()]
            heapq.heapify(self._heap)

    def _drop(self, key: Key, record: Listed) -> None:
        if self.records.get(key) is record:
            del self.records[key]
        if not record.dropped:
            record.dropped = True
            self.size -= record.size
            holder = self.holders[record.owner]
            del holder.records[key]
            holder.weight -= record.size
            if holder.records:
                self._push(holder)
            else:  # what is left of her weight is what her entry costs (``entry``)
                self.size -= holder.weight
                del self.holders[record.owner]
                # Her stale keys keep her holder until a rebuild, which may be long after (at most 2 keys a
                # user kept and 64): not her name, which nothing counts once she is gone. With names of
                # 16 kB, waves of users who came and went held 1.57 times the bound (review r13watch F1).
                holder.name = ""
                # Her keys too: a user gone pushes nothing, so records expiring one by one left every
                # gone user's keys in the heap, 9.75 MB after 31,250 users of one record each, still
                # held when the quiet action ran (review r11watch L1).
                self._compact()
            record.reads.clear()
            record.last.clear()
            record.pending = None
            record.reporters = ()

    def expire(self, before: float) -> bool:
        """Drops the records not used since ``before``; True when any went (their keys must not be
        reused either). The records are in the order of their last use: the first one used since
        ends it, and a reap looks at the expired ones, those kept (`hold`, `begin_list`) and one
        more, not at every record. (Should the wall clock step back, the records used after the step
        wait behind those used before it: they expire late by at most the step.)"""
        gone = []
        # Per scope with pages running, when the oldest of them began: looked up once a reap.
        listing = {scope: min(pages) for scope, pages in self._listing.items()}
        for key, record in self.records.items():
            if record.touched >= before:
                break
            # A watch from it waits for its scope's read (`hold`), or a list that used it still runs.
            since = listing.get(record.scope)
            if key not in self._held and (since is None or record.touched < since):
                gone.append((key, record))
        for key, record in gone:
            self._drop(key, record)
        return bool(gone)


__all__ = ["LIST_COST", "PENDING_COST", "TRACKED_LISTS", "Listed", "ListedScopes"]
