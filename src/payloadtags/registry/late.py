"""Writes of this process that may still land in the registry, by namespace (`LateWrites`)."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import overload

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime


def namespace_of(repository: str) -> str:
    """The namespace a repository belongs to (its first path component, as the inventory maps it)."""
    return repository.partition("/")[0]


# Which repositories a caller's answer may depend on (`Scope`): a caller's deletecollection waits
# for, and names, only the late writes of repositories it may see.
Within = Callable[[str], bool]

# Where a manifest write would leave a tag if it landed: (repository, tag, digest).
Leave = tuple[str, str, str]


class Kind(enum.Enum):
    """What a manifest write puts under its tag (`LateWrites.sent`'s ``kind``). A re-tag's copy (its
    delete nonce) and a repair's placeholder (a random annotation) hold content only payloadtags
    writes: a tag found at one's digest is that write's doing. A restore puts back what the tag held
    before a failed delete, the client's own content: a tag found there may as well be a client's push
    of that very image. An enum, not bare strings: a misspelt kind was a copy to every check but the
    restore's, which decides whether a tag is deleted."""

    COPY = "copy"
    PLACEHOLDER = "placeholder"
    RESTORE = "restore"


COPY = Kind.COPY
PLACEHOLDER = Kind.PLACEHOLDER
RESTORE = Kind.RESTORE


class Landing(enum.Enum):
    """What a write that went unanswered would do if the registry carried it out late (`LateWrites.sent`'s
    ``landing``), for the messages that name it: a manifest PUT leaves a tag; a DELETE by digest
    removes that manifest and every tag on it, one pushed again meanwhile too."""

    LEAVES_TAG = "leaves a tag"
    REMOVES_MANIFEST = "removes a manifest"


class Write(str):
    """A write's description ("deleting manifest team/app@sha256:..."), carrying its `Landing`. A str:
    the description goes through every record of `LateWrites` and out of `pending` and `since` as
    before; its landing goes with it, with no second record to keep in step (`landing_of`)."""

    landing: Landing

    def __new__(cls, doing: str, landing: Landing) -> Write:
        write = super().__new__(cls, doing)
        write.landing = landing
        return write

    def __getnewargs__(self) -> tuple[str, Landing]:  # type: ignore[override]
        # copy and pickle make one anew from these (str's own gives the text alone: a TypeError).
        return (str(self), self.landing)


def landing_of(what: str) -> Landing:
    """What the write described by ``what`` (from `LateWrites.pending`) would do landing late: a tag
    left unless its sender said otherwise (a note, `LateWrites.note`, is always a manifest PUT's)."""
    return what.landing if isinstance(what, Write) else Landing.LEAVES_TAG


def _keep(leaves: dict[Leave, Kind], leave: Leave, kind: Kind) -> None:
    """Records ``kind`` at ``leave`` in ``leaves``; a restore's kind wins where writes share a leave:
    it is the one that cannot be told from a client's push."""
    if leaves.get(leave) != RESTORE:
        leaves[leave] = kind


@attrs.frozen
class Scope:
    """Which of a namespace's late writes a caller's answer depends on (`LateWrites.pending`): those of
    the repositories ``repositories`` admits (None: every one) and, of a write whose tag is known,
    those of the tags ``tags`` admits, by (repository, tag) (None: every one). A write of unknown
    repository counts, and so does one of unknown tag in a repository admitted: it may leave any tag
    there. A deletecollection with a selector waits only for writes that could put back a tag it
    lists: scoped by repository alone, it waited out another client's re-tag of a tag its selector
    cannot match, to a 504 naming that write (review r8own F1)."""

    repositories: Within | None = None
    tags: Callable[[str, str], bool] | None = None

    def admits(self, repository: str, tag: str | None) -> bool:
        if self.repositories is not None and not self.repositories(repository):
            return False
        return tag is None or self.tags is None or self.tags(repository, tag)


@attrs.define(eq=False)
class Watch:
    """Where the writes of ``namespace`` a caller watches would leave a tag, each with its kind: those
    that may still land as it began (out, or ended unanswered and its time not passed), and every one
    sent after, until it ends (`LateWrites.watch`, `LateWrites.unwatch`). One answered before it began
    is not in it: a tag found at its digest during the call was put there by someone else."""

    namespace: str
    leaves: dict[Leave, Kind] = attrs.Factory(dict)
    # When the registry answered the writes of a leave, each of them (the latest answer, as
    # `LateWrites.answers` counts: an order, not a time): one answered has been carried out, and a
    # look begun after it sees what it left. Not for a leave with a write unanswered (`unanswered`) or
    # still out.
    answered: dict[Leave, int] = attrs.Factory(dict)
    unanswered: set[Leave] = attrs.Factory(set)
    _out: dict[Leave, int] = attrs.Factory(dict)  # how many of the leave's writes are out

    def add(self, leave: Leave, kind: Kind) -> None:
        _keep(self.leaves, leave, kind)

    def sent(self, leave: Leave) -> None:
        self._out[leave] = self._out.get(leave, 0) + 1
        self.answered.pop(leave, None)

    def ended(self, leave: Leave, answered: int | None) -> None:
        out = self._out.get(leave, 0)
        if out <= 1:
            self._out.pop(leave, None)
        else:
            self._out[leave] = out - 1
        if answered is None:
            self.unanswered.add(leave)
            self.answered.pop(leave, None)
        elif leave not in self.unanswered and leave not in self._out:
            self.answered[leave] = answered

    def gone(self, leave: Leave) -> None:
        """No tag can be at ``leave`` any more (`LateWrites.gone`): forgotten, unless a write of it is
        out or went unanswered (it may still land there) or it is a restore's (not ours to judge)."""
        if leave in self._out or leave in self.unanswered or self.leaves.get(leave) == RESTORE:
            return
        self.leaves.pop(leave, None)
        self.answered.pop(leave, None)


@attrs.frozen
class _Out:
    """A write out (sent, not answered yet), all its sender gave of it (`LateWrites.sent`): one record,
    so that its end forgets all of it at once."""

    # Its description, carrying its `Landing`.
    what: Write
    # Where it would leave a tag if it landed, and its kind. None: it gave none, its tag unknown, and
    # its repository too unless ``repository`` has it (`pending` counts it).
    leave: tuple[Leave, Kind] | None
    # Where a write that leaves no tag goes (a cascade's DELETE by digest): a scoped look counts it
    # only there. None with ``leave`` or where unknown.
    repository: str | None
    # How long after its request ends it may land at the latest, as its sender puts it (`out_within`).
    after: float | None
    # Its request timeout, as its sender gives it (`out_within`).
    timeout: float | None

    def where(self) -> tuple[str, str | None] | None:
        """(repository, tag) of the write, as its sender gave them (tag None: any of the repository's);
        None when it gave neither."""
        if self.leave is not None:
            repository, tag, _ = self.leave[0]
            return repository, tag
        if self.repository is not None:
            return self.repository, None
        return None

    def admitted(self, scope: Scope) -> bool:
        """Whether ``scope`` admits the write (one that gave no repository: always)."""
        where = self.where()
        return where is None or scope.admits(*where)


# A write of unknown repository as an answer scoped to some repositories describes it: it may be in
# any repository, so it is waited for, and its own description (naming its repository) is not shown.
ANONYMOUS = "writing to the registry"


# How many namespaces' dropped entries `LateWrites` keeps the time of, each its own (`since`).
DROPPED_KEPT = 1024


@attrs.define
class LateWrites:
    """Writes that may still land, by namespace: each one's description ("repairing dangling tag
    team/app:v1") and the `clock` time until which the registry may carry it out; infinity while a
    write is out (sent, not answered). Shared by everything of a process that writes to the registry or
    reports a namespace empty (the `RegistryClient` records its own writes here; the leader's cascades
    and every deletecollection's read it, `server`): none reports a namespace empty while a write this
    process sent may still land in it, whoever sent it (a cascade's repair, a single delete's re-tag)
    and however the sender ended (its caller gone, its budget spent, its lease lost).

    A write is noted when it is sent, not when its error reaches whoever waits for it: a caller
    stopped meanwhile never sees the error, and the write goes on. An entry with a time stays until a
    pass begun after its time finds the namespace empty (`settled`), or until that time has passed
    (`pending`, `note`: bounded by the writes that may still land, not by every namespace that ever
    had one): one per namespace that has such a write, a name and a number; a write out is forgotten
    once it is answered.

    Whoever must not report a namespace empty before its writes can no longer land waits for that
    with `wait_out`, woken by the changes themselves (`ended`, `note`) and at the time a write may
    land until."""

    clock: IReactorTime
    _writes: dict[str, tuple[str, float]] = attrs.Factory(dict)
    # Writes sent and not answered yet: namespace -> {its number: all its sender gave of it (`_Out`)}.
    _out: dict[str, dict[int, _Out]] = attrs.Factory(dict)
    _sent: int = 0
    # Where the namespace's writes that ended unanswered would leave a tag, and their kinds: kept while
    # the namespace has a write out or noted (`_forget`). One answered leaves nothing here.
    _leaves: dict[str, dict[Leave, Kind]] = attrs.Factory(dict)
    # Until when each of those may land (the latest of its writes, or of a note of its repository
    # since): one whose time passed is in no call's look any more (`_unanswered`), even while the
    # namespace's entry is kept for other writes (review r7own L1).
    _until: dict[str, dict[Leave, float]] = attrs.Factory(dict)
    # The calls watching where the namespace's writes would leave tags (`watch`), by namespace.
    _watches: dict[str, list[Watch]] = attrs.Factory(dict)
    # What `wait_out` calls wait for, by namespace: fired when one of its writes ends or is noted.
    _woken: dict[str, list[Deferred[None]]] = attrs.Factory(dict)
    # The time of each namespace's latest entry dropped once it had passed: a pass of that namespace
    # begun before it may have missed what that write left (`since`). At most `DROPPED_KEPT`
    # namespaces; the oldest of more goes into `_dropped`, which every namespace's pass reads: its
    # passes run once more, none misses a write (review r2latedelete N1: one process-wide time made
    # every found-empty pass of any namespace run again after another namespace's unanswered DELETE).
    _dropped_in: dict[str, float] = attrs.Factory(dict)
    _dropped: float = -math.inf
    dropped_kept: int = DROPPED_KEPT
    # The namespace's noted writes by (repository, tag) (None: not given), each the latest noted: what
    # a scoped look reads (`pending`'s ``scope``). Kept with the namespace's entry, whose time is the
    # latest of them (dropped or settled with it).
    _noted: dict[str, dict[tuple[str | None, str | None], tuple[str, float]]] = attrs.Factory(dict)
    # How many writes the registry has answered (`answers`).
    _answers: int = 0

    def now(self) -> float:
        return self.clock.seconds()

    def note(
        self, namespace: str, what: str, until: float, repository: str | None = None, tag: str | None = None
    ) -> None:
        """A write that went unanswered may land until ``until`` (on `clock`); ``repository`` and
        ``tag``: where, for a scoped look (`pending`'s ``scope``); None, anywhere (a tag of the
        repository given, for ``tag``)."""
        self._note(namespace, what, until, repository, tag)
        self._wake(namespace)

    def _note(
        self, namespace: str, what: str, until: float, repository: str | None, tag: str | None = None
    ) -> None:
        known = self._writes.get(namespace)
        if known is None or until >= known[1]:
            self._writes[namespace] = (what, until)
        noted = self._noted.setdefault(namespace, {})
        where = (repository, tag if repository is not None else None)
        known = noted.get(where)
        if known is None or until >= known[1]:
            noted[where] = (what, until)
        # A write noted again (a delete at its end, after its re-tag went unanswered) may land until
        # then: so may what its repository's unanswered writes left (None: any repository).
        times = self._until.get(namespace, {})
        for leave, time in times.items():
            if repository is None or leave[0] == repository:
                times[leave] = max(time, until)
        # The others whose time has passed go; this one's is kept with where its writes would leave
        # tags (a delete noted again at its end, its write's own time just passed).
        now = self.now()
        for passed in [n for n, (_, time) in self._writes.items() if time <= now and n != namespace]:
            self._drop(passed)

    @overload
    def sent(
        self,
        namespace: str,
        what: str,
        leaves: None = None,
        after: float | None = None,
        timeout: float | None = None,
        kind: None = None,
        repository: str | None = None,
        landing: Landing = Landing.LEAVES_TAG,
    ) -> int: ...

    @overload
    def sent(
        self,
        namespace: str,
        what: str,
        leaves: Leave,
        after: float | None = None,
        timeout: float | None = None,
        *,
        kind: Kind,
    ) -> int: ...

    def sent(
        self,
        namespace: str,
        what: str,
        leaves: Leave | None = None,
        after: float | None = None,
        timeout: float | None = None,
        kind: Kind | None = None,
        repository: str | None = None,
        landing: Landing = Landing.LEAVES_TAG,
    ) -> int:
        """A write is out from now on; its number, for `ended`. ``leaves``: where it would leave a tag
        if it landed (repository, tag, digest), for `leaves`; ``after``: how many seconds after its
        request ends (answered, or unanswered: the ``grace`` it will end with) it may land at the
        latest, and ``timeout``: how long after it leaves its request times out, for `out_within`. Not
        a time from now: a write is out from before its request leaves (a wait for a connection slot,
        for a token, a 401's second try), which no one bounds. ``kind``: what it puts under the tag
        (`COPY`, `PLACEHOLDER`, `RESTORE`), required with ``leaves``: a default made every write whose
        sender forgot it a copy, which a deletecollection deletes where it finds it. ``repository``:
        where a write that leaves no tag goes (a DELETE by digest, which may remove any tag of it on
        its digest), for a scoped look; None with ``leaves`` or where unknown (any repository).
        ``landing``: what it would do landing late (`Landing`), carried by its description."""
        if (leaves is None) != (kind is None):
            raise TypeError("a write's kind is given with its leaves, and only then")
        if leaves is not None and repository is not None:
            raise TypeError("a write's repository is given with its leaves")
        self._sent += 1
        leave = (leaves, kind) if leaves is not None and kind is not None else None
        self._out.setdefault(namespace, {})[self._sent] = _Out(
            Write(what, landing), leave, repository, after, timeout
        )
        if leave is not None:
            for watch in self._watches.get(namespace, ()):
                watch.add(*leave)
                watch.sent(leave[0])
        return self._sent

    def ended(self, namespace: str, number: int, grace: float | None) -> None:
        """The write `sent` numbered so ended: answered (``grace`` None), or not (a timeout, a gateway's
        5xx, a connection lost, its request cancelled): then it may still land for ``grace`` seconds."""
        out = self._out.get(namespace)
        if out is None:
            return
        write = out.pop(number, None)
        leave = write.leave if write is not None else None
        if grace is None:
            self._answers += 1
        if leave is not None:
            for watch in self._watches.get(namespace, ()):
                if leave[0] in watch.leaves:
                    watch.ended(leave[0], self._answers if grace is None else None)
        if grace is not None and leave is not None:
            _keep(self._leaves.setdefault(namespace, {}), leave[0], leave[1])
            until = self._until.setdefault(namespace, {})
            until[leave[0]] = max(until.get(leave[0], -math.inf), self.now() + grace)
        if not out:
            del self._out[namespace]
        if write is not None and grace is not None:
            repository, tag = (leave[0][0], leave[0][1]) if leave else (write.repository, None)
            self._note(namespace, write.what, self.now() + grace, repository, tag)
        self._forget(namespace)
        self._wake(namespace)

    def pending(self, namespace: str, scope: Scope | None = None) -> tuple[str, float] | None:
        """(what, until when) of the namespace's write that may land latest: until infinity while one
        is out; None when none may land. ``scope``: only the writes it admits (one of unknown
        repository counts, described as `ANONYMOUS` when the scope leaves out some repositories);
        None, all."""
        # Its description may name a repository the caller may not see.
        hidden = scope is not None and scope.repositories is not None
        out = self._out.get(namespace)
        if out:
            for write in out.values():
                if scope is None:
                    return write.what, math.inf
                where = write.where()
                if where is None:
                    return ANONYMOUS if hidden else write.what, math.inf
                if scope.admits(*where):
                    return write.what, math.inf
        known = self._writes.get(namespace)
        if known is not None and known[1] <= self.now():
            self._drop(namespace)
            return None
        if known is None or scope is None:
            return known
        now = self.now()
        latest: tuple[str, float] | None = None
        for (repository, tag), (what, until) in self._noted.get(namespace, {}).items():
            if until <= now or (repository is not None and not scope.admits(repository, tag)):
                continue
            if latest is None or until > latest[1]:
                latest = (what if repository is not None or not hidden else ANONYMOUS, until)
        return latest

    def since(self, namespace: str, began: float) -> tuple[str, float] | None:
        """As `pending`, for a pass begun at ``began`` (on `clock`) that found the namespace empty: the
        write that may have landed in it after ``began``, whose time may have passed since. An entry
        dropped once its time passed (`pending`, `note`) leaves its time (`_dropped_in`): a pass begun
        before it is told of that time, and passes again."""
        late = self.pending(namespace)
        if late is not None and began < late[1]:
            return late
        dropped = max(self._dropped, self._dropped_in.get(namespace, -math.inf))
        if began < dropped:
            return "this pass ran (its record dropped once its time passed)", dropped
        return None

    def out_within(self, namespace: str, scope: Scope | None = None) -> str:
        """When the namespace's writes still out may land, for a message: "when the registry answers it,
        or up to about 20s after its request times out: within about 30s of when its request leaves"
        (the longest their senders gave: `sent`'s ``after``, and with ``timeout`` the bound from the
        request's start; an answered write is done, not carried out later: review-ds4 F6), or "later"
        when one's sender gave no ``after``. Counted from the request's end, which no
        one here can tell: a write out may still wait to leave (review-ds2 F1: a time from when it was
        sent passed, and the write, still waiting for a connection slot, landed after it). ``scope``:
        of the writes `pending` with it counts."""
        out = [
            write for write in self._out.get(namespace, {}).values() if scope is None or write.admitted(scope)
        ]
        afters = [write.after for write in out if write.after is not None]
        if not out or len(afters) < len(out):
            return "later"
        after = max(afters)
        said = f"when the registry answers it, or up to about {math.ceil(after)}s after its request times out"
        bounds = [
            write.timeout + write.after
            for write in out
            if write.timeout is not None and write.after is not None
        ]
        if len(bounds) < len(out):
            return said
        return f"{said}: within about {math.ceil(max(bounds))}s of when its request leaves"

    def wait_out(
        self, namespace: str, deadline: float = math.inf, scope: Scope | None = None
    ) -> Deferred[tuple[str, float] | None]:
        """Fires with None once no write of this process may land in ``namespace`` any more (none out,
        and the time of every unanswered one passed); else at ``deadline`` (on `clock`) with the one
        that may land latest then, as `pending` gives it (until infinity while it is out). At once when
        a write's time is at or past ``deadline``: nothing shortens it. Woken when a write of the
        namespace ends or is noted (`ended`, `note`), and at the time the latest may land until; a
        caller that cancels it (its request gone) leaves nothing behind here. ``scope``: only the
        writes `pending` with it counts."""
        return Deferred.fromCoroutine(self._wait_out(namespace, deadline, scope))

    async def _wait_out(
        self, namespace: str, deadline: float, scope: Scope | None
    ) -> tuple[str, float] | None:
        while True:
            late = self.pending(namespace, scope)
            now = self.now()
            if late is None or late[1] <= now:
                return None
            if now >= deadline or (late[1] != math.inf and late[1] >= deadline):
                return late
            await self._change(namespace, min(late[1], deadline) - now)

    def _change(self, namespace: str, delay: float) -> Deferred[None]:
        """Fires when a write of ``namespace`` ends or is noted, or after ``delay`` seconds
        (infinity: never by itself); cancelled, it forgets its timer and its place."""
        woken: Deferred[None] = Deferred()
        timer: IDelayedCall | None = None
        if delay != math.inf:
            timer = self.clock.callLater(delay, woken.callback, None)
        waiting = self._woken.setdefault(namespace, [])
        waiting.append(woken)

        def forget(result: object) -> object:
            if timer is not None and timer.active():
                timer.cancel()
            waiting.remove(woken)
            if not waiting and self._woken.get(namespace) is waiting:
                del self._woken[namespace]
            return result

        woken.addBoth(forget)
        return woken

    def _wake(self, namespace: str) -> None:
        # A copy: each one fired leaves the list (`_change`), and its caller may wait again at once.
        for woken in list(self._woken.get(namespace, ())):
            if not woken.called:
                woken.callback(None)

    def settled(self, namespace: str, began: float) -> None:
        """A pass begun at ``began`` (on `clock`) found the namespace empty: a write that could land
        only before then left nothing."""
        known = self._writes.get(namespace)
        if known is not None and known[1] <= began:
            del self._writes[namespace]
            self._noted.pop(namespace, None)
            self._forget(namespace)

    def repositories(self, namespace: str) -> frozenset[str]:
        """The repositories of the namespace's writes that are out or noted, where known: those a
        scoped look (`pending`'s ``scope``) may be asked about."""
        out = (where[0] for write in self._out.get(namespace, {}).values() if (where := write.where()))
        noted = (repository for repository, _ in self._noted.get(namespace, {}))
        left = (left[0] for left in self._leaves.get(namespace, ()))
        return frozenset(r for r in (*out, *noted, *left) if r is not None)

    def leaves(self, namespace: str, within: Within | None = None) -> dict[Leave, Kind]:
        """Where the namespace's writes that may still land (out, or ended unanswered and their time
        not passed) would leave a tag, each with its kind. A tag found elsewhere after they can no
        longer land was not left by them (a push of its name by someone else meanwhile). ``within``:
        those of the repositories it admits."""
        found: dict[Leave, Kind] = {}
        for write in self._out.get(namespace, {}).values():
            if write.leave is not None:
                _keep(found, *write.leave)
        for leave, kind in self._unanswered(namespace).items():
            _keep(found, leave, kind)
        return {leave: kind for leave, kind in found.items() if within is None or within(leave[0])}

    def answers(self) -> int:
        """How many writes the registry has answered so far: what a `Watch` keeps of each answer, to
        tell one answered before a look began (at most the count as it began) from one after. A count,
        not a clock: two events of one instant are still in order."""
        return self._answers

    def watch(self, namespace: str) -> Watch:
        """Starts watching where the namespace's writes would leave tags: those that may still land now
        (`leaves`), and each one `sent` from now on, answered or not, until `unwatch`."""
        watch = Watch(namespace, self.leaves(namespace))
        for write in self._out.get(namespace, {}).values():
            if write.leave is not None:
                watch.sent(write.leave[0])
        watch.unanswered.update(self._unanswered(namespace))
        self._watches.setdefault(namespace, []).append(watch)
        return watch

    def _unanswered(self, namespace: str) -> dict[Leave, Kind]:
        """Where the namespace's writes that ended unanswered and may still land would leave a tag."""
        now = self.now()
        until = self._until.get(namespace, {})
        return {leave: kind for leave, kind in self._leaves.get(namespace, {}).items() if until[leave] > now}

    def gone(self, namespace: str, leave: Leave) -> None:
        """The registry answered the delete of the manifest at ``leave``'s digest (deleted, or found
        gone): a write's copy or placeholder, a digest on no other tag, so no tag is there any more
        and what the write left needs no look. The watches forget it: kept, each other client's
        single delete sent during a deletecollection made the call pass once more (review r7own F1)."""
        for watch in self._watches.get(namespace, ()):
            watch.gone(leave)

    def watching(self, namespace: str) -> int:
        """How many calls watch the namespace's writes (`watch`): none once they all ended."""
        return len(self._watches.get(namespace, ()))

    def unwatch(self, watch: Watch) -> None:
        watching = self._watches.get(watch.namespace, [])
        if watch in watching:
            watching.remove(watch)
        if not watching:
            self._watches.pop(watch.namespace, None)

    def _drop(self, namespace: str) -> None:
        """Drops the namespace's entry, its time passed."""
        _, until = self._writes.pop(namespace)
        self._noted.pop(namespace, None)
        # Moved to the end: the oldest dropped first is the one folded into `_dropped`.
        until = max(until, self._dropped_in.pop(namespace, -math.inf))
        self._dropped_in[namespace] = until
        while len(self._dropped_in) > self.dropped_kept:
            oldest = next(iter(self._dropped_in))
            self._dropped = max(self._dropped, self._dropped_in.pop(oldest))
        self._forget(namespace)

    def _forget(self, namespace: str) -> None:
        """Drops where the namespace's writes would leave tags once none is out or noted."""
        if namespace not in self._out and namespace not in self._writes:
            self._leaves.pop(namespace, None)
            self._until.pop(namespace, None)


__all__ = [
    "ANONYMOUS",
    "COPY",
    "DROPPED_KEPT",
    "PLACEHOLDER",
    "RESTORE",
    "Kind",
    "Landing",
    "LateWrites",
    "Leave",
    "Scope",
    "Watch",
    "Within",
    "Write",
    "landing_of",
    "namespace_of",
]
