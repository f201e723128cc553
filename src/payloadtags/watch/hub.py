"""The watch hub: one source per watched scope, shared by all its watchers, and the watchers' limits.

Lists go through ``list_version`` first. When the list's scope has a source, it waits for the source's
baseline, so every change after the list is an event after the list's resourceVersion. When it has
none, no source is started (a plain list costs one read of the registry, no rereads after it): the list
records what it reads (``watch.listed``), and a watch from its resourceVersion starts the source and is
first sent the differences from that record: its opening, private to it (``watch.openings``). A source
outlives its last watcher by ``idle_scope_ttl`` (a reflector's reconnect), or by ``UNUSED_SCOPE_TTL``
when nobody has anything to resume there; at most ``max_watches`` are kept. A watch from before a
source's baseline with no record gets 410 Gone.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from payloadtags.access.authz import AuthorizationNotReady, Readable
from payloadtags.access.rbac import PathMatcher
from payloadtags.deferreds import bounded_map
from payloadtags.identity import UserInfo
from payloadtags.inventory import Inventory
from payloadtags.limits import WatchLimits
from payloadtags.names import TagRef, split_repository
from payloadtags.registry import namespace_of
from payloadtags.watch.failures import ReadFailures
from payloadtags.watch.listed import Listed, ListedScopes
from payloadtags.watch.openings import Opening, Openings
from payloadtags.watch.rules import PageDecisions, RulesLedger, UserKey, user_key
from payloadtags.watch.source import Event, EventType, HistoryLost, ScopeReader, ScopeSource
from payloadtags.watch.versions import ReplicaVersions
from payloadtags.watch.watcher import Watcher, expired_line

log = Logger()


_ACCESS_CHANGED = "the access rules changed what this watch may show; relist"
_UNCONFIRMED = "too many tags changed in the registry since this scope was last read; relist"
# Repositories a list of an unwatched scope showed and its watch's baseline lacks, read before the
# watch starts (`confirm_listed`): past this many the watch is 410 Gone; at most this many at once.
MAX_UNCONFIRMED_READS = 100
_CONCURRENT_READS = 8
# Sources dropped to make room (`WatchHub._make_room`) between two sweeps of what refers to them.
_SWEEP_EVERY = 64
# How long an idle source is kept whose scope is a namespace with no tags, or one no watch of it could
# read anything in (a made-up name, another team's namespace): a reconnect's worth, not
# ``idle_scope_ttl`` of rereads for nobody (review r6watch F1). Held to ``idle_scope_ttl``.
UNUSED_SCOPE_TTL = 10.0


class TooManyWatches(Exception):
    pass


@attrs.define(eq=False)
class WatchSlot:
    """A watch's place under the limits, taken when its request arrives: a watch that then waits
    (for its scope's read) keeps it, so the limits are decided before the response begins and
    concurrent watches cannot all pass them while waiting. ``release`` gives it back unused."""

    user: str
    _hub: WatchHub = attrs.field(repr=False)
    held: bool = True
    # The scope whose source the watch waits on (`WatchHub.source`), kept from being reaped until the
    # watch starts or gives up.
    _waits_on: list[str | None] = attrs.field(factory=list, repr=False)
    # The record of the list the watch is from (`WatchHub.hold_listed`), kept from expiring while the
    # watch waits for its scope's read, until it starts or gives up.
    _records: list[Listed] = attrs.field(factory=list, repr=False)

    def release(self) -> None:
        if self.held:
            self.held = False
            self._hub._unreserve(self.user)
            for scope in self._waits_on:
                self._hub._unhold(scope)
            self._waits_on.clear()
            for record in self._records:
                self._hub.listed.release(record)
            self._records.clear()


@attrs.frozen
class ListPage:
    """A page of a list being read and written (`WatchHub.list_began`)."""

    scope: str | None
    began: float


@attrs.define(eq=False)
class ListReporter:
    """Where one list that joined a record reports the tag lists it reads, each of its pages (the
    first one's, handed on by its walk: `observer`'s ``joined``): by its bit, the record tells which
    of its lists read a repository (`Listed.observe`). Without a bit (past `TRACKED_LISTS`, or no
    room), it reports as the record's shared callable does. `list_failed` takes it back."""

    hub: WatchHub
    record: Listed
    bit: int | None

    def __call__(self, repository: str, tags: Sequence[str]) -> None:
        self.hub._observe(self.record, repository, tags, bit=self.bit)


@attrs.define
class InventoryReader:
    """A source's reads through the inventory: unfiltered, every tag of the scope."""

    inventory: Inventory

    async def scope_tags(self, namespace: str | None) -> dict[str, Collection[str]]:
        seen: dict[str, Collection[str]] = {}
        for run in (await self.inventory.list(namespace)).runs:
            if run.tags:
                repository = f"{run.namespace}/{run.repository_path}"
                # A whole list has one run a repository; should it have more, they are one read.
                old = seen.get(repository)
                seen[repository] = run.tags if old is None else (*old, *run.tags)
        return seen

    async def repository_tags(self, repository: str) -> Sequence[str]:
        tags = await self.inventory.client.tags(repository)
        index = self.inventory.index
        if tags and index is not None:
            # A repository read here (a delete through the API, a notification) that the index lacks
            # (its push notification was lost) would be in the source's snapshot but in no list: a
            # client listing it then would never be sent its tags, and a resync through the index
            # would send DELETED for all of them. The registry has it, so its catalog has it too.
            index.add(repository)
        return tags


@attrs.define(eq=False)
class WatchHub:
    reader: ScopeReader
    clock: IReactorTime
    limits: WatchLimits = attrs.field(factory=WatchLimits)
    versions: ReplicaVersions = attrs.field(factory=ReplicaVersions)
    # Bumped by the access rules on every change; watchers then tell whether what they may show changed.
    access_generation: Callable[[], int] = lambda: 0
    # The rules a user's ``get`` decisions in a namespace are made by (None: the rules never change).
    access_rules: Callable[[UserInfo, str], PathMatcher] | None = None
    # Told the reason each watch ended (metrics).
    on_end: Callable[[str], None] = lambda reason: None
    # Where the sources' failed reads are said, once per cause and period for them all (on the
    # monotonic clock in the server: the reactor's is the wall clock).
    failure_log: ReadFailures = attrs.field(
        default=attrs.Factory(lambda self: ReadFailures(self.clock.seconds), takes_self=True)
    )
    sources: dict[str | None, ScopeSource] = attrs.field(factory=dict)
    watchers: set[Watcher] = attrs.field(factory=set)
    per_user: collections.Counter[str] = attrs.field(factory=collections.Counter)
    # Slots taken by watches that have not started yet (WatchSlot), in total and per user.
    _reserved: int = 0
    _reserved_per_user: collections.Counter[str] = attrs.field(factory=collections.Counter)
    _loops: dict[str | None, LoopingCall] = attrs.field(factory=dict)
    _touched: dict[str | None, float] = attrs.field(factory=dict)
    # The namespace scopes a watch whose user may read something there started on: kept idle for
    # ``idle_scope_ttl`` while they have tags, the others for ``UNUSED_SCOPE_TTL`` (`_idle_ttl`).
    _wanted: set[str] = attrs.field(factory=set)
    # Per kept source, the user whose watch made it (`_make_room`: whoever made the most goes first).
    _made_by: dict[str | None, str] = attrs.field(factory=dict)
    # Sources dropped since the rules ledger and the openings last let go of dropped ones
    # (`_sweep_when_due`).
    _unswept: int = 0
    # Per scope, the lists and watches waiting on its source (`source`): it is not reaped meanwhile.
    _holds: collections.Counter[str | None] = attrs.field(factory=collections.Counter)
    _timers: dict[Watcher, IDelayedCall] = attrs.field(factory=dict)
    _scopes: dict[Watcher, ScopeSource] = attrs.field(factory=dict)
    # The access generation the watches were last checked at.
    checked_generation: int = 0
    # The last access check that saw a change: its generation and the sequence it took, after every
    # resourceVersion issued under the rules before it (`_change_stamp`).
    _checked_round: tuple[int, int] | None = None
    _housekeeping: list[LoopingCall] = attrs.field(factory=list)
    stopped: bool = False
    listed: ListedScopes = attrs.field(factory=ListedScopes)
    openings: Openings = attrs.field(factory=Openings)
    # Per scope and user, the rules that decided what her clients hold, past the end of their
    # streams: a resume from before a change of them is 410 (`watch.rules`).
    rules: RulesLedger = attrs.field(
        default=attrs.Factory(lambda self: RulesLedger(self.limits.resume_rules), takes_self=True)
    )

    # -- resourceVersions -------------------------------------------------------------------------

    def current(self) -> str:
        """The newest resourceVersion (what a list reports)."""
        return self.versions.latest()

    async def list_version(self, namespace: str | None, user: UserInfo | None = None) -> str:
        """Before the first page of a list of a scope: a source's baseline is read (and a resync a
        reset started, ``ScopeSource.caught_up``), or, when the scope has no source, a record is
        opened for the list's reads (see ``observer``)."""
        version, _ = await self.open_list(namespace, user)
        return version

    async def open_list(
        self,
        namespace: str | None,
        user: UserInfo | None = None,
        namespaces: Collection[str] | None = None,
    ) -> tuple[str, ListReporter | None]:
        """``list_version``, and where the list reports to the record it joined, if any (``observer``'s
        ``joined``): a list that fails before its client is shown anything leaves it
        (``list_failed``). A list of a watched scope by ``user``
        notes a change of her rules there if she was noted before (`RulesLedger.listed`), in
        ``namespaces`` only if given (a list that reads no other)."""
        record = None
        if namespace in self.sources:
            source = await self.source(namespace)
            await source.caught_up()
            if user is not None and self.sources.get(namespace) is source:
                # Before the resourceVersion is taken: a change noted here is dated at or below it.
                self._note_list(source, user, namespaces)
            current = self.sources.get(namespace) is source
            if namespace is not None and current and self._may_read(user, namespace):
                # A list is a client about to watch from it: its source is kept idle as long as one a
                # watch used (`_idle_ttl`), not a reconnect's worth, between its pages and until its
                # watch. A source a watch that got 410 made (never `_wanted`) went 10 s after its
                # relist's first page, and the watch from a list longer than that got 410 again, every
                # time (wc84319). Only by a caller who may read there, as for a watch: another's lists
                # keep it no longer than before.
                self._wanted.add(namespace)
        else:
            # Counted against her (``user.name``, as the watches per user are): at the bound, the
            # records of whoever holds the most go first (`ListedScopes`).
            owner = "" if user is None else user.name
            record = self.listed.open(namespace, self.versions.current, self.clock.seconds(), owner)
            if record is None:
                # Records were dropped to make room: their keys are never given out again.
                self._moved_on()
                record = self.listed.open(namespace, self.versions.current, self.clock.seconds(), owner)
                assert record is not None, "room was made for it"
            joined = ListReporter(self, record, None)
            # The record holds it (its later pages hold it weakly) when it gives it a bit.
            joined.bit = self.listed.track(record, joined)
            return self.current(), joined
        return self.current(), None

    def page_decisions(self, namespace: str | None, user: UserInfo) -> PageDecisions:
        """Where a page of a list of ``namespace``'s scope by ``user`` tells each access decision as
        it makes it (`PageDecisions.decided`): compared with her rules noted there then
        (`RulesLedger.decided`), and kept for `listed_page` once it is read. Compared only when she is
        noted in the scope's source as the page starts (as a list, it notes no one else): a page of
        anyone else's (all-namespaces pages of every user, while the garbage collector's watch keeps
        that scope's source) costs no lookup per decision. One whose first watch there starts while
        the page reads is noted by the rules then (docs/watch.md, "Limits of this design")."""
        rules = self._rules_of(user)
        source = self.sources.get(namespace)
        if rules is None or source is None or not self.rules.knows(source, user):
            return PageDecisions()
        ledger, stamp = self.rules, self._change_stamp
        decisions = PageDecisions(
            lambda decided_in, listing: ledger.decided(source, user, decided_in, rules, stamp, listing)
        )
        ledger.reading(source, user, decisions)  # what it decides in is kept while it reads
        return decisions

    def list_decisions(self, namespace: str | None, user: UserInfo) -> Callable[[str], None] | None:
        """Where a whole list (no ``limit``) of the all-namespaces scope by ``user`` tells the namespace
        of each access decision it makes (`RulesLedger.returned`): one that left her scope and came back
        is dated by its next leaving, as when a page or a watch of hers decides there, and one not
        noted for her is noted, by her rules then, as a page's decision notes it. Also when she is
        not noted as the list starts: her first watch may start while it reads, and its reap note a
        namespace gone that comes back before the list reads it (a user never noted is not noted by
        it). None: no all-namespaces source (a namespace scope has one namespace, noted by her
        watch's start), or no access rules (nothing is noted)."""
        rules = self._rules_of(user)
        source = self.sources.get(namespace)
        if namespace is not None or source is None or rules is None:
            return None
        ledger, stamp = self.rules, self._change_stamp
        # Its decisions kept as a page's, so that what it decides in is kept while it reads.
        decisions = PageDecisions(
            lambda decided_in, listing: ledger.returned(source, user, decided_in, rules, stamp, listing)
        )
        ledger.reading(source, user, decisions)
        return decisions.decided

    def _rules_of(self, user: UserInfo) -> Callable[[str], PathMatcher] | None:
        """``user``'s rules per namespace, as her decisions are made (None: no access rules)."""
        rules_of = self.access_rules
        return None if rules_of is None else functools.partial(rules_of, user)

    def listed_page(
        self,
        namespace: str | None,
        user: UserInfo,
        decisions: PageDecisions,
        namespaces: Collection[str] = (),
    ) -> None:
        """A page of a list of ``namespace``'s scope by ``user``, once read: where her rules now differ
        from those noted for her, a change is noted (`open_list`), as the rules may have changed since
        the list took its resourceVersion (and be changed back before its watch). Those of each of
        its decisions were compared as it made them (`page_decisions`). Only in the namespaces the
        page decided in, and ``namespaces``: the others are checked by the pages that decide there,
        and a page costs what it read."""
        source = self.sources.get(namespace)
        if source is not None and (decisions.namespaces or namespaces):
            self._note_list(source, user, [*namespaces, *decisions.namespaces])

    def _note_list(self, source: ScopeSource, user: UserInfo, namespaces: Collection[str] | None) -> None:
        rules_of = self.access_rules
        if rules_of is None:
            return
        self.rules.listed(
            source,
            user,
            lambda scope_namespace: rules_of(user, scope_namespace),
            self._change_stamp,
            namespaces,
        )

    def list_failed(self, joined: ListReporter) -> None:
        """A list that joined a record (``joined``: `open_list`'s) failed before its client was shown
        anything (refused while the access rules load, a registry error): the record no longer counts
        it, so the lists that did succeed are not sent their own tags again as ``ADDED``."""
        self.listed.leave(joined.record, joined.bit)

    def authorize(self, user: UserInfo, namespace: str | None) -> None:
        """AuthorizationNotReady while the access rules are still loading: a watch is refused then,
        before its head, as a list is (503), rather than started with no rules to check it by."""
        if self.access_rules is not None:
            self.access_rules(user, namespace or "")

    def ahead(self, resource_version: str) -> bool:
        """Whether ``resource_version`` is this run's and not issued yet (a list at exactly it: 504)."""
        return self.versions.ahead(resource_version)

    def observer(
        self,
        scope: str | None,
        resource_version: str,
        direct: bool = False,
        joined: Callable[[str, Sequence[str]], None] | None = None,
    ) -> Callable[[str, Sequence[str]], None] | None:
        """Where a page of a list of ``scope`` at ``resource_version`` reports the tag lists it reads:
        the record its first page opened, while it is kept; else the scope's source, when it has one
        (``ScopeSource.reporter``); None when nothing is to be recorded. ``direct``: the list reads
        one repository by itself (a list by name), not through the scope's view of its repositories
        (`Listed.observe`). ``joined``: where the list reported before (`open_list`'s for its first
        page, its walk's for a later one): the same again while it is that record's list's, so that
        the record tells this list's reads from the others' (`ListReporter`)."""
        sequence = self.versions.parse(resource_version)
        record = None if sequence is None else self.listed.get(scope, sequence, self.clock.seconds())
        if record is None:
            # A list of a watched scope: its reads may differ from the source's snapshot. One from
            # before the source's floor has nothing to confirm: its watch is 410 Gone.
            source = self.sources.get(scope)
            if source is None or not source.ready or sequence is None or sequence < source.floor:
                return None
            return source.reporter(sequence)
        mine = joined if any(joined is one for one in record.reporters) else None
        if direct:
            if isinstance(mine, ListReporter) and mine.bit is not None:
                # Its client holds the one tag it names, and its watch selects it too: the
                # repositories the other lists read need not wait for this one.
                self.listed.aside(record, mine.bit)
            return lambda repository, tags: self._observe(record, repository, tags, vouch=False)
        if mine is not None:
            return mine
        if record.report is None:
            # One callable per record for the lists it does not know apart: a walk tells by it that
            # its kept lists were reported here.
            record.report = ListReporter(self, record, None)
        return record.report

    def _observe(
        self,
        record: Listed,
        repository: str,
        tags: Sequence[str],
        vouch: bool = True,
        bit: int | None = None,
    ) -> None:
        if not self.listed.observe(record, repository, tags, vouch, bit):
            # Records were dropped: lists from now on take a new sequence, so that a dropped
            # record's key never collects the reads of other lists (its watches get 410).
            self.versions.next()

    def list_began(self, scope: str | None) -> ListPage:
        """A page of a list of ``scope`` (its first, a later one, or a whole list) begins: until
        `list_ended`, the scope's source is not reaped (as while a list waits for its read), and its
        list's record does not expire (`ListedScopes.begin_list`). Only the first page kept them, as
        it began: a list longer than their idle time had its watch find them gone, 410, and a relist
        as long, again and again (wc84319)."""
        page = ListPage(scope, self.clock.seconds())
        self._holds[scope] += 1
        self.listed.begin_list(scope, page.began)
        return page

    def list_ended(self, page: ListPage, resource_version: str | None) -> None:
        """The ``page`` `list_began` told of ended: the scope's source is idle from now, and the
        record of the list at ``resource_version`` (None: it failed) is used now. What the watch from
        the list needs is kept its idle time from the list's end, not from its start."""
        self.listed.end_list(page.scope, page.began)
        self._unhold(page.scope)
        sequence = None if resource_version is None else self.versions.parse(resource_version)
        if sequence is not None:
            self.listed.get(page.scope, sequence, self.clock.seconds())

    def hold_listed(self, scope: str | None, sequence: int, slot: WatchSlot) -> None:
        """A watch from ``sequence`` that has yet to wait for its scope's read: the record of the list
        it is from, if kept, is kept from expiring until the watch starts or gives up (``slot``'s
        release). Taken after that read, it expired while a slow one went on, and the watch got 410
        (wc84319). The records' bound may still drop it."""
        record = self.listed.get(scope, sequence, self.clock.seconds())
        if record is not None and slot.held:
            self.listed.hold(record)
            slot._records.append(record)

    def listed_at(self, scope: str | None, sequence: int) -> Listed | None:
        """The record of the lists of ``scope`` at ``sequence``, if it is still kept."""
        return self.listed.get(scope, sequence, self.clock.seconds())

    async def confirm_listed(self, source: ScopeSource, listed: Listed) -> frozenset[str] | None:
        """Before a watch from ``listed`` starts (after its source read the scope): reads each
        repository the lists showed tags of and the snapshot lacks altogether (`Listed.unconfirmed`:
        the scope's reads go through the repository index, which may not know one a list by name read
        directly), and applies each read to the snapshot as a notification's read is (the reader
        adds a repository it finds to the index). Returns the repositories whose state the snapshot
        now tells (`start`'s ``confirmed``): a tag of one of them that it lacks is gone. None when
        there are more than ``MAX_UNCONFIRMED_READS`` to read, or a read failed: the watch is 410
        Gone and its client relists, the scope's other watches untouched."""
        known = frozenset(listed.reads)
        unread = [repository for repository, _ in listed.unconfirmed(source.tags)]
        if len(unread) > MAX_UNCONFIRMED_READS:
            return None
        done = await bounded_map(source.read, unread, _CONCURRENT_READS)
        return known if all(done) else None

    # -- sources ----------------------------------------------------------------------------------

    async def source(self, namespace: str | None, slot: WatchSlot | None = None) -> ScopeSource:
        """The scope's source once its baseline is read (started if need be). It is not reaped while
        the caller waits for that, nor, with the ``slot`` of a watch, until the slot is released (the
        watch started on it, or gave up): a watch must never start on a source the hub dropped, which
        no resync, notification or delete would reach while bookmarks claimed the replica's newest
        resourceVersion for it."""
        source = self.sources.get(namespace)
        if source is None:
            self._make_room()
            source = ScopeSource(
                namespace,
                self.reader,
                self.versions,
                history=self.limits.history,
                kept_behind=self.limits.send_buffer,
                clock=self.clock,
                timeout=self.limits.resync_period * 4 + 60,
                on_reset=self._reset_watches,
                failure_log=self.failure_log,
            )
            self.sources[namespace] = source
            self._made_by[namespace] = "" if slot is None else slot.user
            loop = LoopingCall(source.resync)
            loop.clock = self.clock
            # The first read is the baseline, made by when_ready below; the loop resyncs after it.
            loop.start(self.limits.resync_period, now=False)
            self._loops[namespace] = loop
        self._touched[namespace] = self.clock.seconds()
        self._holds[namespace] += 1
        try:
            await source.when_ready()
        except BaseException:
            self._unhold(namespace)
            raise
        if slot is not None and slot.held:
            slot._waits_on.append(namespace)
        else:
            self._unhold(namespace)
        return source

    def _unhold(self, scope: str | None) -> None:
        self._holds[scope] -= 1
        if self._holds[scope] <= 0:
            del self._holds[scope]
        if scope in self.sources:  # a list holds a scope that may have none (`list_began`)
            # Idle from now: a watch that waited longer than the idle timeout and then went away.
            self._touched[scope] = self.clock.seconds()

    def _reset_watches(self, source: ScopeSource) -> None:
        """The source gave up confirming what lists showed (`ScopeSource._reset`): its watches end
        with 410 Gone, and their clients relist."""
        for watcher in list(source.subscribers):
            if isinstance(watcher, Watcher):
                watcher.end("too many listed tags to confirm", last=expired_line(_UNCONFIRMED))

    def repository_changed(self, repository: str) -> None:
        """A registry notification (push or delete) for one repository, or a delete this replica
        made there: the sources that cover it reread its tag list."""
        self.reread(repository)

    def reread(self, repository: str) -> list[Deferred[None]]:
        """`repository_changed`, returning the reads it started: `changed`, then `reads`."""
        self.changed(repository)
        return self.reads(repository)

    def changed(self, repository: str) -> None:
        """The sequence step of a change to one repository, taken when the change is told, before
        its tag list is reread (a notification's reread may wait in a queue, or be dropped from it):
        when a list of a scope that covers it opened a record at the current sequence, the sequence
        moves on, so a later list of that scope does not join it (review newcomer F2)."""
        parts = split_repository(repository)
        if parts is None:
            return
        current = self.versions.current
        if any(self.listed.holds(scope, current) for scope in (parts[0], None)):
            # A list made after the change, sharing the record of one made before it, would have its
            # watch sent the change (a DELETED of a tag its list never showed): the record cannot tell
            # whose watch it is. Once moved, no record is at the new sequence until a list opens one,
            # so a deletecollection of many tags moves it once, or once for each list made meanwhile.
            self._moved_on()

    def reads(self, repository: str) -> list[Deferred[None]]:
        """The sources that cover one repository reread its tag list; returns the reads started (a
        source reading the repository already reads it once more instead, and starts none)."""
        parts = split_repository(repository)
        if parts is None:
            return []
        started = []
        for scope in (parts[0], None):
            source = self.sources.get(scope)
            if source is not None:
                reading = source.repository_changed(repository)
                if reading is not None:
                    started.append(reading)
        return started

    def reap(self) -> None:
        """Drops sources nobody watches and nobody listed for their idle time (`_idle_ttl`), and
        list records and openings nobody used for ``idle_scope_ttl``."""
        now = self.clock.seconds()
        self._forget_rules()
        dropped = self.listed.expire(now - self.limits.idle_scope_ttl)
        dropped = self._drop_idle(now) or dropped
        if dropped:
            self._moved_on()
        self._sweep()

    def reap_unused(self) -> None:
        """Drops the idle sources kept for ``UNUSED_SCOPE_TTL`` once it is over: between two reaps,
        which keep the others for ``idle_scope_ttl``."""
        if self._drop_idle(self.clock.seconds()):
            self._moved_on()
            self._sweep_when_due()

    def _current(self, source: ScopeSource) -> bool:
        return self.sources.get(source.namespace) is source

    def _moved_on(self) -> None:
        # While nobody watches, nothing else moves the sequence: a later list of the scope would
        # open its record under a resourceVersion already given out (to the expired record's
        # lists, or by the dropped source: a bookmark, an event), and a watch from that one would
        # be sent the differences from the later list's reads, never the changes made before it.
        self.versions.next()

    def _idle(self, scope: str | None, source: ScopeSource) -> bool:
        """Nobody watches the scope, no list or watch waits on its source, and no page of a list of
        it is being read and written (`list_began`)."""
        return not source.subscribers and not self._holds[scope]

    def _idle_ttl(self, scope: str | None, source: ScopeSource) -> float:
        """How long the source is kept once idle: ``idle_scope_ttl`` (a reflector's reconnect
        resumes from its history, and lists of it are compared with it) for all namespaces and a
        namespace with tags that a watch whose user may read something there used; else
        ``UNUSED_SCOPE_TTL``: whoever resumes there relists nothing or next to nothing."""
        if self._worth_keeping(scope, source):
            return self.limits.idle_scope_ttl
        return min(UNUSED_SCOPE_TTL, self.limits.idle_scope_ttl)

    def _worth_keeping(self, scope: str | None, source: ScopeSource) -> bool:
        return scope is None or bool(source.tags and scope in self._wanted)

    def _may_read(self, user: UserInfo | None, namespace: str) -> bool:
        """Whether ``user`` may read any path in ``namespace`` by her rules now (`_may_read_some` for a
        list; no user known: only without access rules)."""
        rules_of = self.access_rules
        if rules_of is None:
            return True
        if user is None:
            return False
        try:
            rules = rules_of(user, namespace)
        except AuthorizationNotReady:
            return False
        return rules.allow_all or bool(rules.patterns)

    def _drop_idle(self, now: float) -> bool:
        dropped = False
        for scope, source in list(self.sources.items()):
            idle_for = now - self._touched.get(scope, now)
            if self._idle(scope, source) and idle_for >= self._idle_ttl(scope, source):
                self._drop(scope)
                dropped = True
        return dropped

    def _drop(self, scope: str | None) -> None:
        """Drops an idle scope's source and stops its resyncs, the one under way too. The rules noted
        there and the openings of it go at the next reap, or once a number of sources went
        (`_sweep_when_due`)."""
        loop = self._loops.pop(scope)
        if loop.running:
            loop.stop()
        source = self.sources.pop(scope)
        source.stop()
        self.failure_log.dropped(scope)
        self._made_by.pop(scope, None)
        self._touched.pop(scope, None)
        if scope is not None:
            self._wanted.discard(scope)
        self._unswept += 1

    def _make_room(self) -> None:
        """Before a new source: with ``max_watches`` sources kept, an idle one is dropped (every
        source in use has a watch, or a watch or list waiting for its read, so a watch that finds
        none idle is one too many: TooManyWatches, 429). Without this bound, watches opened and
        closed at once by one user kept a source each, every one rereading its scope until its idle
        time was over (review r6watch F1). The one idle longest among those kept briefly
        (`_idle_ttl`: no tags, or nobody could read there) goes first, then among the others: by
        age alone, one user's flood of watches of made-up namespaces, always the newest, dropped
        every other user's idle namespace (a reflector between two watches) before its own empty
        ones, and their resumes were 410 (review r7watch N1). Within each of the two, the sources
        of the user whose watches made the most of the idle ones go first: one who watches many
        namespaces she may read, with tags, drops her own idle ones before another user's. A source
        is shared by every watch of its scope, and counts for the user who made it. A page of a list
        being read and written holds its scope's source as a waiting list does (`list_began`)."""
        if len(self.sources) < self.limits.max_watches:
            return
        idle_sources = [
            (index, scope, source)
            for index, (scope, source) in enumerate(self.sources.items())
            if self._idle(scope, source)
        ]
        # Her idle ones only, those that can go: counting her sources in use too let one user's churn
        # of watches push out the one idle scope of a user with more watches open (review r11watch L2).
        made = collections.Counter(self._made_by.get(scope, "") for _, scope, _ in idle_sources)
        idle = [
            (
                self._worth_keeping(scope, source),
                -made[self._made_by.get(scope, "")],
                self._touched.get(scope, 0.0),
                index,
                scope,
            )
            for index, scope, source in idle_sources
        ]
        if not idle:
            raise TooManyWatches(f"too many watched scopes on this server ({self.limits.max_watches})")
        self._drop(min(idle)[-1])
        self._moved_on()
        self._sweep_when_due()

    def _sweep_when_due(self) -> None:
        """What the rules ledger and the openings hold of dropped sources (their snapshots and
        histories with them), let go of every ``_SWEEP_EVERY`` sources dropped, not only at the next
        reap: watches opened and closed at once drop a source every few of them."""
        if self._unswept >= _SWEEP_EVERY:
            self._sweep()

    def _sweep(self) -> None:
        """The rules ledger and the openings let go of what they hold of dropped sources, and the
        openings of those nobody used for ``idle_scope_ttl``."""
        self._unswept = 0
        self.rules.forget(self._current)
        self.openings.expire(self.clock.seconds() - self.limits.idle_scope_ttl, self._current)

    def _forget_rules(self) -> None:
        """All-namespaces watches drop the rules they noted in namespaces gone from their scope (no
        tags, no event on its way to them): noted for every namespace decided in, a watch's life long,
        they grew with every namespace that ever came and went."""
        live: dict[ScopeSource, set[str]] = {}
        for watcher, source in list(self._scopes.items()):
            if source.namespace is not None:
                continue
            scope = live.get(source)
            if scope is None:
                scope = live[source] = set(_namespaces(source))
            waiting = {namespace_of(repository) for repository in source.fanout.waiting(watcher)}
            keep = scope | waiting
            try:
                watcher.forget_rules(
                    keep.__contains__, functools.partial(self._note_forgotten, watcher, source)
                )
            except Exception:
                # Kept, and tried again at the next reap; the other watches drop theirs.
                log.failure("noting the rules an all-namespaces watch drops failed")

    def _note_forgotten(
        self, watcher: Watcher, source: ScopeSource, dropped: list[tuple[str, list[PathMatcher]]]
    ) -> None:
        """The rules a watch drops, told to the ledger first, as at its end (`_note_seen`): its stream
        may break before its client reads the DELETED that emptied the namespace, and a resume from
        before it must be judged by them (a change since, a 410), not served with the DELETED decided
        by the new rules, and maybe dropped."""
        rules_of = watcher.rules
        if rules_of is None or not isinstance(watcher.readable, Readable):
            return
        self.rules.saw(
            source,
            watcher.readable.user,
            dropped,
            rules_of,
            self.versions.next,
            every_namespace=False,
            gone=True,
        )

    # -- watchers ---------------------------------------------------------------------------------

    def admit(self, user: str) -> WatchSlot:
        """A slot for one more watch of ``user``, or TooManyWatches (also once the hub stopped)."""
        self.check_running()
        if len(self.watchers) + self._reserved >= self.limits.max_watches:
            raise TooManyWatches(f"too many watches on this server ({self.limits.max_watches})")
        if self.per_user[user] + self._reserved_per_user[user] >= self.limits.max_watches_per_user:
            raise TooManyWatches(
                f"too many watches for user {user} on this server ({self.limits.max_watches_per_user})"
            )
        self._reserved += 1
        self._reserved_per_user[user] += 1
        return WatchSlot(user, self)

    def check_running(self) -> None:
        if self.stopped:
            raise TooManyWatches("the server is shutting down")

    def _unreserve(self, user: str) -> None:
        self._reserved -= 1
        self._reserved_per_user[user] -= 1
        if self._reserved_per_user[user] <= 0:
            del self._reserved_per_user[user]

    def sequence_of(self, resource_version: str) -> int | None:
        return self.versions.parse(resource_version)

    def start(
        self,
        watcher: Watcher,
        source: ScopeSource,
        since: int | None,
        timeout: float | None,
        initial_events_end: bool = False,
        listed: Listed | None = None,
        slot: WatchSlot | None = None,
        confirmed: frozenset[str] = frozenset(),
        from_now: bool = False,
    ) -> bool:
        """Attaches a watcher to a ready source.

        ``since=None``: first an ADDED for every visible tag of the snapshot (then, with
        ``initial_events_end``, a bookmark saying so); otherwise the retained events after ``since``.
        False when those are no longer retained, or the source is no longer the scope's (the caller
        answers 410 Gone). With ``listed`` (a watch from a list made while the scope had no source,
        whose source has since read the scope after the watch arrived, and ``confirm_listed`` the
        repositories it gave as ``confirmed``): the differences between the list's reads and the
        snapshot, its opening (`_open_listed`). ``from_now``: ``since`` is the newest resourceVersion
        as the watch arrived (`sendInitialEvents=false` from "" or "0"), not one its client holds a
        view at: a change of its user's rules is no reason to refuse it.

        With a ``slot`` (from ``admit``, still held) it raises only AuthorizationNotReady (the rules
        are not loaded, ``authorize``), having registered nothing; the watcher takes the slot's place.
        Without one it is admitted here (TooManyWatches). A failure while the watch begins ends it
        and unregisters it before it is raised.
        """
        if slot is None:
            slot = self.admit(watcher.user)
        assert slot.held and slot.user == watcher.user, slot
        backlog: Iterable[Event] | None = None
        if self.sources.get(source.namespace) is not source or (listed is not None and listed.dropped):
            slot.release()
            return False
        # A watch of the changes from now on asks for no past: no client view to vouch for, and
        # kube-apiserver never answers 410 to it. Her rules are noted all the same.
        if not self._rules_admit(watcher, source, None if from_now else since):
            # Her rules here changed after ``since``: what her client holds was decided by the old
            # ones, and a resume would replay neither a grant nor a revocation.
            slot.release()
            return False
        if listed is None and since is not None:
            backlog = self._resume(source, since, watcher)
            if backlog is None:
                slot.release()
                return False
        slot.release()
        self._know_rules(watcher, source)
        if source.namespace is not None and _may_read_some(watcher, source.namespace):
            self._wanted.add(source.namespace)
        if listed is not None:
            backlog = self._open_listed(watcher, source, listed, confirmed)
        self.watchers.add(watcher)
        self.per_user[watcher.user] += 1
        # What it starts with covers every event so far, handed to the other watchers or not yet.
        watcher.taken = self.versions.current
        source.subscribers.add(watcher)
        self._scopes[watcher] = source
        lifetime = min(timeout if timeout else self.limits.default_timeout, self.limits.max_timeout)
        self._timers[watcher] = self.clock.callLater(lifetime, self._expire, watcher)
        # Before the first line: a watcher may end (its client gone) while it starts.
        watcher.on_close.append(self._forget)
        try:
            if backlog is None:
                # Events that happen while the snapshot is being written wait behind it (subscribed
                # above).
                sequence = self.versions.current
                snapshot = (Event(sequence, EventType.ADDED, ref) for ref in source.refs())
                end: list[bytes] = []
                if initial_events_end and watcher.bookmark is not None:
                    end.append(watcher.bookmark(sequence, True))
                watcher.begin(snapshot, end)
            else:
                watcher.begin(backlog)
        except BaseException:
            # Nothing of a watch that failed to start stays behind: no later event, check or timer
            # reaches a response its caller has ended.
            watcher.end("error", write=False)
            raise
        return True

    def _open_listed(
        self, watcher: Watcher, source: ScopeSource, listed: Listed, confirmed: frozenset[str]
    ) -> Iterator[Event]:
        """The opening of a watch from a list made while the scope had no source: the differences
        between the list's reads and the snapshot (a read made after the watch arrived; a repository
        of ``confirmed`` it lacks has no tags) that ``watcher`` may be sent, each with a resourceVersion
        of its own, the next ones after every event of the scope's history. They are the watch's
        alone: not in the history, not sent to the scope's other watches, to whom they would be
        repeats at best (a DELETED, to one shown the tag since, of a tag pushed again) and which one
        user's watches would flush. Those it may not be sent take no number and no room. A stream cut
        among them resumes from the last one it sent (`_resume`), while the opening is kept.

        They are made as the client reads them, repository by repository, from copies of the list of
        the scope's repositories and of the record's (each one's tags are immutable sets): a watch
        whose client reads slowly holds no event it has not been sent, however large its opening. They
        are counted first, so that their numbers are taken as one block now; the copy kept for resumes
        is made only of an opening its user may keep (`Openings.bound`)."""
        now = dict(source.tags)
        for repository in confirmed:
            now.setdefault(repository, frozenset())
        reads = dict(listed.reads)  # later lists at the same resourceVersion may still add to it
        first = self.versions.current + 1
        count = 0
        kept: list[Event] | None = []
        for kind, ref in listed.changes(now, reads):
            if watcher.visible(ref):
                if kept is not None:
                    kept = kept if count < self.openings.bound else None
                    if kept is not None:
                        kept.append(Event(first + count, kind, ref))
                count += 1
        self.versions.reserve(count)
        self.openings.keep(
            source,
            watcher.user,
            first,
            first + count - 1,
            kept,
            self.clock.seconds(),
            watcher.selectors,
            _identity(watcher),
        )
        return _numbered(watcher, listed.changes(now, reads), first, count)

    def _resume(self, source: ScopeSource, since: int, watcher: Watcher) -> Iterator[Event] | None:
        """The events after ``since`` for ``watcher`` resumed from it: from inside an opening of its
        user's, the rest of it and then the history after its last event; else the history's. None
        when they are no longer kept (410 Gone): inside an opening dropped, merged with others
        (`Openings`), of another user (by name, uid or groups), or of other selectors (it holds only
        what the watch it was made for might be sent: that identity's access, those selectors'
        choice).

        They are taken from the opening and the history as the client reads them, not copied; what the
        history drops meanwhile is kept for them a send buffer's worth (`ScopeSource.since`). Should
        one the client has not taken be lost all the same (the opening dropped, or the client a send
        buffer behind the history), the stream is cut as a slow client's is, and its client's resume
        from there is 410."""
        span = self.openings.find(source, since)
        if span is None:
            events = source.since(since)
        else:
            if (
                not isinstance(span, Opening)
                or span.dropped
                or span.user != watcher.user
                or span.selectors != watcher.selectors
                or span.identity != _identity(watcher)
            ):
                return None
            rest = source.since(span.last)
            events = None if rest is None else itertools.chain(span.after(since), rest)
        return None if events is None else _cut_when_lost(watcher, events)

    def _forget(self, watcher: Watcher) -> None:
        """Unregisters an ended watcher, once."""
        source = self._scopes.pop(watcher, None)
        if source is None:
            return
        source.subscribers.discard(watcher)
        self.watchers.discard(watcher)
        self.per_user[watcher.user] -= 1
        if self.per_user[watcher.user] <= 0:
            del self.per_user[watcher.user]
        timer = self._timers.pop(watcher, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._note_seen(watcher, source)
        self._touched[source.namespace] = self.clock.seconds()
        self.on_end(watcher.reason or "")

    def _know_rules(self, watcher: Watcher, source: ScopeSource) -> None:
        """Gives the watcher the rules its user's decisions are made by, and has it note those of the
        scope's namespaces now, so that a change of the rules is told from one that changes nothing."""
        rules_of = self.access_rules
        if rules_of is None or not isinstance(watcher.readable, Readable):
            return
        user = watcher.readable.user
        watcher.rules = lambda namespace: rules_of(user, namespace)
        watcher.generation = self.access_generation
        watcher.know_rules(_namespaces(source))  # AuthorizationNotReady: the watch is not started

    def _rules_admit(self, watcher: Watcher, source: ScopeSource, since: int | None) -> bool:
        """Notes the rules of the watcher's user in the scope (`RulesLedger.admits`); False when a
        watch of hers from ``since`` must be 410: they changed after it."""
        rules_of = self.access_rules
        if rules_of is None or not isinstance(watcher.readable, Readable):
            return True
        user = watcher.readable.user
        return self.rules.admits(
            source,
            user,
            _namespaces(source),
            lambda namespace: rules_of(user, namespace),
            since,
            self._change_stamp,
        )

    def _change_stamp(self) -> int:
        """The sequence of a change of a user's rules first seen as a watch of hers starts: that of the
        access check that saw the rules in force now, when one has (a list made after it, and the watch
        from that list, were decided by them: served); else now."""
        checked = self._checked_round
        if checked is not None and checked[0] == self.access_generation():
            return checked[1]
        return self.versions.next()

    def _note_seen(self, watcher: Watcher, source: ScopeSource) -> None:
        """An ended watch: the rules that decided what it sent are noted for its user's resumes."""
        rules_of = watcher.rules
        if rules_of is None or not isinstance(watcher.readable, Readable):
            return
        user = watcher.readable.user
        try:
            self.rules.saw(source, user, watcher.rules_seen(), rules_of, self.versions.next)
        except Exception:
            # Not told: her resumes from before now are 410 rather than served from a view that
            # other rules may have decided.
            log.failure("noting the rules of an ended watch failed")
            self.rules.drop(source, user)

    def _bookmark(self, watcher: Watcher) -> None:
        if watcher.bookmark is None:
            return
        source = self._scopes.get(watcher)
        # Never ahead of an event of its scope not handed to it yet (`Fanout`): a client that resumed
        # from the bookmark would never get it.
        behind = source is not None and source.fanout.behind(watcher)
        watcher.send(watcher.bookmark(watcher.taken if behind else self.versions.current, False))

    def _expire(self, watcher: Watcher) -> None:
        self._timers.pop(watcher, None)
        # Just before the stream ends, so that the reflector resumes from here without a relist.
        self._bookmark(watcher)
        watcher.end("timeout")

    def bookmarks(self) -> None:
        for watcher in list(self.watchers):
            self._bookmark(watcher)

    def check_access(self) -> None:
        generation = self.access_generation()
        if generation == self.checked_generation:
            return
        # One number for the round, after every resourceVersion issued under the old rules: a change
        # of a user's rules seen later (as she resumes) is dated by it (`_change_stamp`).
        round_stamp = self.versions.next()
        rechecked: set[tuple[ScopeSource, UserKey]] = set()
        for watcher, source in list(self._scopes.items()):
            try:
                readable, rules_of = watcher.readable, watcher.rules
                if isinstance(readable, Readable) and rules_of is not None:
                    # The rules its user's other clients' views were decided by (once a round), and
                    # those this one sent under (noted again if she was forgotten meanwhile), for their
                    # resumes; whether or not this watch ends.
                    key = (source, user_key(readable.user))
                    self.rules.saw(
                        source,
                        readable.user,
                        watcher.rules_seen(),
                        rules_of,
                        lambda: round_stamp,
                        every_namespace=key not in rechecked,
                    )
                    rechecked.add(key)
                # With the repositories of the events still on their way to it: those of a repository
                # whose last tags were deleted are decided when handed over, by the new rules, and its
                # client would keep what the DELETED it no longer sees removes. And with those where a
                # list showed tags the source has not read: the watch from that list sends them only
                # once a read finds them (an ADDED, or a DELETED should they go first), decided by the
                # new rules then, and its client would keep what the list showed and she may no longer
                # see (review-watch13 F5). Only a revocation there counts: one she now may see comes
                # with that event. Only those of the namespaces whose rules changed are looked at
                # (`unconfirmed_in`): all of them, up to ``max_pending``, for every watch of a user
                # whose rules changed anywhere was the most of a check's work (review-watch16).
                leaving = source.fanout.waiting(watcher)
                if watcher.access_changed(source.tags, leaving=leaving, unread_in=source.unconfirmed_in):
                    # Its client's cache holds tags it may no longer see, or lacks ones it now may. A
                    # stream that just ends is watched again from its last resourceVersion, which
                    # replays neither: the 410 makes the client relist under the new rules.
                    watcher.end("access rules changed", last=expired_line(_ACCESS_CHANGED))
            except AuthorizationNotReady:
                return  # the rules are being reloaded: checked again on the next round
            except Exception:
                # One watch that cannot be checked or ended (its response already finished) must not
                # keep the others from theirs: this check runs for the life of the process.
                log.failure("checking a watch after an access change failed; dropping it")
                if not watcher.closed:
                    with contextlib.suppress(Exception):
                        watcher.end("error", abort=True)
                self._forget(watcher)
        self.checked_generation = generation
        self._checked_round = (generation, round_stamp)

    # -- lifecycle --------------------------------------------------------------------------------

    def run(self) -> None:
        self.checked_generation = self.access_generation()
        for period, work in (
            (self.limits.idle_scope_ttl / 2, self.reap),
            (min(UNUSED_SCOPE_TTL, self.limits.idle_scope_ttl) / 2, self.reap_unused),
            (self.limits.bookmark_interval, self.bookmarks),
            (self.limits.access_check_interval, self.check_access),
        ):
            loop = LoopingCall(work)
            loop.clock = self.clock
            loop.start(period, now=False)
            self._housekeeping.append(loop)

    def stop(self) -> None:
        """Ends every watch cleanly (clients reconnect elsewhere) and stops the resyncs."""
        self.stopped = True
        for watcher in list(self.watchers):
            watcher.end("shutting down")
        for loop in [*self._housekeeping, *self._loops.values()]:
            if loop.running:
                loop.stop()
        self._housekeeping.clear()
        self._loops.clear()
        self.sources.clear()


def _numbered(
    watcher: Watcher, changes: Iterator[tuple[EventType, TagRef]], first: int, count: int
) -> Iterator[Event]:
    """The changes ``watcher`` may be sent as events numbered from ``first``, at most ``count`` (those
    `WatchHub._open_listed` counted, decided again as they are written: a change of its rules while
    they are written ends the watch, and so does any decision made otherwise than when counted)."""
    sequence = first
    for kind, ref in changes:
        if sequence >= first + count:
            return
        if watcher.visible(ref):
            yield Event(sequence, kind, ref)
            sequence += 1


def _identity(watcher: Watcher) -> Hashable:
    """Whom ``watcher``'s access is decided for: her name, uid and groups (their order decides nothing;
    RBAC reads no extras). None when its access is not an authorizer's (tests)."""
    readable = watcher.readable
    if not isinstance(readable, Readable):
        return None
    return (readable.user.name, readable.user.uid, frozenset(readable.user.groups))


def _cut_when_lost(watcher: Watcher, events: Iterator[Event]) -> Iterator[Event]:
    try:
        yield from events
    except HistoryLost:
        # As a slow client whose send buffer overflowed: it resumes from the last event it got,
        # which is no longer kept (410), and relists.
        watcher.end("slow", abort=True)


def _may_read_some(watcher: Watcher, namespace: str) -> bool:
    """Whether the watcher's user may read any path in ``namespace`` (by the rules it noted as it
    started; without access rules, anyone may read everything)."""
    if watcher.rules is None:
        return True
    rules = watcher.rules(namespace)
    return rules.allow_all or bool(rules.patterns)


def _namespaces(source: ScopeSource) -> Iterable[str]:
    """The namespaces whose rules decide what a watch of ``source``'s scope sends: those the source
    holds tags in, and those where a list showed tags it has not read
    (`ScopeSource.unconfirmed_namespaces`), which a watch from that list is sent once a read finds
    them. Their rules are noted as it starts and kept while it runs, so that the access check tells a
    change of them (`check_access`)."""
    if source.namespace is not None:
        return (source.namespace,)
    return set(map(namespace_of, source.tags)) | source.unconfirmed_namespaces()


__all__ = [
    "InventoryReader",
    "ListPage",
    "ListReporter",
    "TooManyWatches",
    "WatchHub",
    "WatchLimits",
    "WatchSlot",
]
