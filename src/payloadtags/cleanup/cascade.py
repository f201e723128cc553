"""The cascade: remove every tag of every repository under ``<namespace>/`` from the registry.

A namespace that is gone (or Terminating) loses all of its content, so deleting each distinct
manifest digest is right here: the registry untags every tag on a deleted digest, which takes one
request per digest instead of the two or three a single-tag delete costs on distribution 2.8.

An index (an OCI image index, a Docker manifest list: a multi-arch image) names its per-platform
manifests by digest alone, untagged: deleting the index would leave them pullable by digest under the
deleted namespace's path (distribution 2.8 has no garbage-collection mode that removes them and keeps
other repositories' multi-arch images whole). So before a digest is deleted whose manifest is an index,
it is read and its child manifests are deleted first, in the same repository (nested indexes' as well,
`MAX_NESTING` deep), each like any other delete of the cascade: a cascade stopped between them leaves
the index, which the next pass finds by its tag and reads again (a child gone already answers 404).
Whether a digest is an index comes with its resolve (the HEAD's Content-Type, `resolve_typed`); only
where the registry does not say is the manifest read to know.

A tag listed whose manifest the registry no longer has (a dangling tag: distribution 2.8 leaves
them when a digest DELETE fails half-way, as concurrent writes in one repository make it do) cannot
be deleted by digest: it is repaired (pointed at a placeholder manifest, which is then deleted) by
`RegistryClient.delete_tag`, never skipped.

A pass works through the namespace's repositories `concurrency` at a time, and each repository's
tags `resolve_chunk` at a time, deleting the digests of a chunk before resolving the next: what a
cascade holds and has pending is bounded by its concurrency, not by the size of the namespace, and
its deletes start with its first chunk. A cascade stopped half-way (a deletecollection's budget, a
leader gone) keeps every delete it made. The digests it had resolved and not deleted yet are kept
with the pass (`_Pass.resolved`), and a cascade that carries the pass on (a deletecollection's next
call, `Walk`) deletes them first when it takes their repository up: a chunk of resolves that takes
longer than a call's budget is then not read again by every call, none of them ever deleting.

A cascade repeats passes (enumerate, then delete) until a pass finds nothing left, so its success
is a verified-empty listing, not the absence of errors. That makes it idempotent, safe to run twice
at once (a digest someone else deleted first answers 404, which is progress, not an error), and
robust to a registry that is down or read-only for a while: a failed pass is retried after a capped,
jittered backoff, and read-only (maintenance) mode is waited out, never taken for done.

A repair whose write went unanswered (a timeout, a gateway's 5xx, a connection lost) fails its pass,
and its placeholder `PUT` may still land after a later pass has repaired the tag again and found the
namespace empty: it would leave a tag in a namespace reported empty. So a pass that finds nothing ends
the cascade only if it began once no write of this process can land in the namespace any more
(`LateWrites`: the registry client notes each manifest write when it is sent, whoever sent it, a
cascade stopped meanwhile or a single delete's re-tag, and how long it may land once unanswered;
`late_write_grace` after a repair's error reaches the cascade as well); before that, the cascade waits
until then (`LateWrites.wait_out`: woken when a write out is answered or times out, and at the time an
unanswered one may land until; a deletecollection's no longer than its budget) and passes again, which
deletes whatever the write left.

The cascade's own DELETEs by digest are noted the same way (`RegistryClient.delete_manifest`): one
unanswered and carried out late removes every tag on that digest, also one pushed after the namespace
was reported empty, in the namespace created anew with the same image. So the cascade does not end
while one may still land either (nothing is left to delete then: the wait is the whole point).

A pass goes round the namespace's repositories once from where it began (`Walk`), and may be
carried on by the next cascade given the same `Walk` (a deletecollection's next call): the
repositories an earlier call emptied stay in the catalog, and listing them all again at every call
would in the end fill a call's budget.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from payloadtags.cleanup.metrics import CleanupMetrics
from payloadtags.deferreds import GoesOn, bounded_each, gather
from payloadtags.inventory import CatalogCursor, guessed_tags
from payloadtags.kube import Backoff
from payloadtags.names import is_namespace
from payloadtags.registry import Catalog, LateWrites, Manifest, Resolved, WriteHooks, namespace_of
from payloadtags.registry.content import INDEX_MEDIA_TYPES, catalog_key, is_valid_digest, skipped_by_seek
from payloadtags.registry.errors import (
    RegistryConflict,
    RegistryError,
    RegistryNotFound,
    RegistryProtocolError,
    RegistryReadOnly,
    RegistryTimeout,
    RegistryUnavailable,
)

log = Logger()

T = TypeVar("T")

# Not a digest: a tag the registry failed to resolve in this pass.
_UNANSWERED = Resolved("unanswered")

# How many levels of indexes are read for their children, the tagged one the first: an index of
# indexes is rare, a third level unheard of. One nested deeper is deleted unread (its children stay,
# as untagged manifests do): a bound on the reads a pathological chain of indexes costs.
MAX_NESTING = 4

Guard = Callable[[], str | None]
"""Called right before every registry request (reads too: a deletecollection's guard is its time
budget): a reason to stop now, or None to go on. Synchronous and cheap."""

Confirm = Callable[[], Awaitable[None]]
"""Asks the cluster API right before every delete request (one call of its own for each, made in the
repository's turn with the request's connection slot held, `_Checks`): returns when deleting is
allowed, raises `Aborted` when it must never happen, `Unconfirmed` when it cannot be decided now
(asked again in a new turn after a short backoff sat out of it, then the pass is retried later;
nothing is deleted meanwhile)."""

Wait = Callable[[float], Awaitable[None]]
"""Sits out the backoff after a failed pass: waits that many seconds (and may queue for more)."""

Late = tuple[str, float] | None
Aside = Callable[[Deferred[Late]], Awaitable[Late]]
"""Sits out the wait for the namespace's late writes (`LateWrites.wait_out`), as `Wait` a backoff:
returns what it fires with (and may queue for more after)."""


class Aborted(Exception):
    """The cascade must stop without finishing: the namespace exists again, leadership was lost…"""


class Refused(Aborted):
    """A deletecollection's pass failed only with errors a retry certainly meets again
    (`RegistryError.certain`: deletes turned off, a 501): passing again until its budget ends would
    send the same requests for the same answers."""


class Stalled(Aborted):
    """A deletecollection's passes failed only with errors of a registry that does not serve now
    (`_stalls`: read-only mode during garbage collection, a 5xx such as a storage refusing deletes, a
    read's timeout), and made no progress, the first such pass in read-only mode, else two in a row:
    passing again until its budget ends (40 s) would send the same requests for the same answers,
    while its caller (the namespace controller's worker) waits. The caller retries later; the
    leader's cascade (no budget) keeps trying meanwhile."""


class Unconfirmed(Exception):
    """Whether the namespace is gone cannot be told now (the cluster API does not answer)."""


def default_backoff() -> Backoff:
    return Backoff(initial=1.0, factor=2.0, cap=30.0)


def default_check_backoff() -> Backoff:
    # Short: a delete waits through it (out of its repository's turn). 0.5 + 1 + 2 + 2 s at most.
    return Backoff(initial=0.5, factor=2.0, cap=2.0)


@attrs.frozen
class CascadeResult:
    namespace: str
    tags_deleted: int
    manifests_deleted: int
    passes: int
    # Failed passes (each retried): registry errors and undecidable confirmations.
    errors: int
    last_error: str | None
    duration: float
    # Clock time of the pass that found the namespace's part of the registry empty.
    finished: float


@attrs.frozen
class Contents:
    """What a namespace holds in the registry (the dry-run view)."""

    repositories: int
    tags: int


@attrs.define
class _Examples:
    """Names noted during a pass, for a log line: the first few in sorted order and how many there
    were. Not all of them: a pass can note one per tag of the namespace."""

    limit: int = 10
    first: list[str] = attrs.Factory(list)  # sorted, distinct, at most `limit`
    # Names noted; a pass notes each place once, so this is how many distinct ones there were.
    count: int = 0

    def note(self, name: str) -> None:
        if name in self.first:
            return
        self.count += 1
        bisect.insort(self.first, name)
        del self.first[self.limit :]

    def __str__(self) -> str:
        more = f" and {self.count - len(self.first)} more" if self.count > len(self.first) else ""
        return ", ".join(self.first) + more or "-"


# A digest resolved and not deleted yet: how many tags of the repository were resolved to it, and
# its manifest's media type (None: the registry did not say).
_Digest = tuple[int, str | None]


@attrs.define
class _Pass:
    found: int = 0  # tags listed at the start of each repository's work
    progress: int = 0  # digests that are gone after this pass (deleted by us or by someone else)
    tags_deleted: int = 0
    manifests_deleted: int = 0
    errors: int = 0
    # The message of the last error, not the error: its traceback holds every frame it went through.
    last_error: str | None = None
    registry_errors: int = 0
    readonly_errors: int = 0
    lasting_errors: int = 0  # of `errors`: ones a retry meets again (`RegistryError.lasting`)
    certain_errors: int = 0  # of those: ones a retry certainly meets again (`RegistryError.certain`)
    stalling_errors: int = 0  # of `errors`: ones of a registry that does not serve now (`_stalls`)
    stalling_writes: int = 0  # of those: failed deletes (or repairs); the others are reads
    # Where errors happened ("repository:tag", "repository", "catalog"), for the warning.
    failing: _Examples = attrs.Factory(_Examples)
    # "repository:tag" of tags listed that resolved to nothing, for the log when nothing moves.
    unresolved: _Examples = attrs.Factory(_Examples)
    # When the pass began (on the clock of `LateWrites`; None: not yet): whether a write that went
    # unanswered could still land after it began.
    began: float | None = None
    # Per repository, the digests a cascade stopped in it had resolved and not deleted: the next one
    # carrying the pass on deletes them first (`Cascade._repository`). Without them, a call whose
    # budget ended before a repository's first chunk was deleted kept nothing of it, and every call
    # after resolved the same tags again and was stopped at the same place. At most a chunk's
    # digests for each repository under way when the cascade stopped (and a deletecollection's walks
    # keep `NamespaceRemover.digests_kept` in all); they go with the pass when it ends (the next lists
    # everything again).
    resolved: dict[str, dict[str, _Digest]] = attrs.Factory(dict)

    def failed(self, where: str, error: Exception, *, write: bool = False) -> None:
        """``write``: the failed request was a write (a digest's delete, a repair), which may land when
        unanswered; any other is a read, of which nothing can land."""
        self.errors += 1
        self.last_error = str(error)
        if isinstance(error, RegistryError):
            self.registry_errors += 1
            self.readonly_errors += isinstance(error, RegistryReadOnly)
            self.lasting_errors += error.lasting and not error.unanswered
            self.certain_errors += error.lasting and error.certain and not error.unanswered
            stalls = _stalls(error, write=write)
            self.stalling_errors += stalls
            self.stalling_writes += stalls and write
        self.failing.note(where)

    def stalled(self) -> bool:
        """No progress, and every failure one of a registry that does not serve now (`_stalls`)."""
        return self.errors > 0 and self.progress == 0 and self.stalling_errors == self.errors

    def stall(self) -> str:
        """What failed in a `stalled` pass, said for its caller."""
        if self.readonly_errors == self.errors:
            return "the registry refusing its deletes in read-only mode (garbage collection)"
        if self.stalling_writes == self.errors:
            return "the registry failing its deletes (a 5xx)"
        if self.stalling_writes:
            return "the registry failing its deletes and reads (a 5xx, a timeout, a refused connection)"
        return "the registry failing its reads (a 5xx, a timeout, a refused connection)"

    def tally(self) -> tuple[int, int, int]:
        """(progress, errors, stalling errors) so far: what part of the pass a cascade did is the
        difference of two."""
        return self.progress, self.errors, self.stalling_errors


def _stalls(error: RegistryError, *, write: bool) -> bool:
    """An answer of a registry that does not serve now, which a retry at once likely meets again and
    one later may not: read-only mode (garbage collection), a 5xx or refused connection
    (distribution answers 500 when its storage refuses deletes), and for a read, a timeout or a
    connection lost (nothing of a read can land). Not a write that went unanswered (it may still
    land), nor one a retry meets again whatever the time (`lasting`)."""
    if error.lasting:
        return False
    if not write:
        return isinstance(error, (RegistryReadOnly, RegistryUnavailable, RegistryTimeout))
    return isinstance(error, (RegistryReadOnly, RegistryUnavailable)) and not error.unanswered


def _added(call: tuple[int, int, int], state: _Pass, since: tuple[int, int, int]) -> tuple[int, int, int]:
    """``call`` (`Walk.call`) with what ``state`` counted since its tally ``since``."""
    (progress, errors, stalling), now = call, state.tally()
    return progress + now[0] - since[0], errors + now[1] - since[1], stalling + now[2] - since[2]


@attrs.define
class _Handled:
    """The digests of one repository that a pass has deleted, found gone or failed to delete. Each is
    read and deleted at most once in the pass, however many indexes name it: indexes that share
    nested indexes (content a namespace member can push) would otherwise cost requests per path
    through them, which grows as a power of their fan-out, and every pass when the deletes fail."""

    gone: set[str] = attrs.Factory(set)
    failed: set[str] = attrs.Factory(set)  # stays for the next pass
    # Deleted by this cascade since the tags of the current chunk were resolved.
    deleted_in_chunk: set[str] = attrs.Factory(set)


@attrs.define
class Walk:
    """Where a cascade's pass has got to in the namespace's catalog, kept from one cascade to the
    next (a deletecollection's calls, each bounded in time): the next goes on from there instead of
    listing again every repository the earlier ones emptied, which distribution keeps in its catalog.

    A pass goes round the namespace's repositories once, in catalog order: from the repository after
    `began` to the namespace's last, then (`wrapped`) from its first to `began` itself. Its counts go
    with it, so a pass ended by a later cascade decides as one run by a single cascade: the namespace
    is done only when a whole round listed no tag and met no error, which a round begun anywhere
    gives as well as one begun at the first repository. A few names and counts, whatever the size
    of the namespace, and the digests a stopped cascade resolved in the repositories it had under
    way and did not delete (`_Pass.resolved`), which the next deletes first.

    The walk goes on with a catalog seek after `position()`, which on distribution 2.8 leaves out the
    repositories the name is nested under a digit-named component of (`team/app` for `team/app/0`,
    listed before it): a pass lists those first (`skipped_by_seek`), as after each catalog page."""

    # The namespace object whose content this is (a deletecollection's removal): a walk is not
    # carried on for a namespace created anew under the name.
    uid: str | None = None
    began: str | None = None  # the round begins after this repository (None: at the first)
    wrapped: bool = False  # past the namespace's last repository: going on from its first
    # Every repository of this stretch of the round up to this one is done (None: none yet).
    after: str | None = None
    state: _Pass | None = None  # the pass under way; None between passes
    # Where the last pass that ended failed and an example error, as its warning says ("1 failure(s)
    # at team/c, e.g. …"); None once a pass ends without one. For a stopped cascade's caller to say
    # why it has not finished (a deletecollection's 503), not only in the log.
    failure: str | None = None
    # Every failure of that pass was one a retry meets again (`RegistryError.lasting`): a call that
    # ends at its budget so answers without "retry" (Retry-After), as a single delete's does.
    lasting: bool = False
    # What the last cascade run on the walk did (`Cascade.run`, a deletecollection's call): the
    # digests gone (progress), the failures and, of those, the ones of a registry that does not
    # serve now (`_stalls`). A call without progress answers without Retry-After, whatever ended it
    # (`NamespaceRemover.remove`): an immediate repeat, ten of them by client-go, likely meets the same.
    call: tuple[int, int, int] = (0, 0, 0)

    def idle(self) -> bool:
        """Whether the last cascade run made no progress (no digest gone)."""
        return self.call[0] == 0

    def position(self) -> str | None:
        """The repository after which the walk goes on (None: the namespace's first)."""
        if self.after is not None or self.wrapped:
            return self.after
        return self.began

    def next_pass(self, *, round_done: bool) -> _Pass:
        # After a whole round the next pass goes the same round. A pass cut short (a catalog page
        # failed) is followed by one that begins where it stopped: what it did is not done again.
        if not round_done:
            self.began = self.position()
        self.wrapped, self.after = False, None
        self.state = _Pass()
        return self.state


@attrs.define
class _Frontier:
    """Keeps `Walk.after` at the last repository before which every one taken up is done.
    Repositories are taken up in catalog order and end in any order; holds one name per repository
    under way (at most the concurrency)."""

    walk: Walk
    _taken: str | None = None
    _open: dict[str, str | None] = attrs.Factory(dict)  # under way -> the one taken up before it

    def __attrs_post_init__(self) -> None:
        self._taken = self.walk.after

    def take(self, name: str) -> None:
        self._open[name] = self._taken
        self._taken = name

    def done(self, name: str) -> None:
        del self._open[name]
        # The one taken up before the earliest still under way (dicts keep insertion order).
        self.walk.after = next(iter(self._open.values())) if self._open else self._taken


class CascadeRegistry(Catalog, Protocol):
    """The part of the registry a cascade uses (a fake in unit tests)."""

    async def resolve_typed(self, repository: str, reference: str, /) -> Resolved: ...

    async def manifest(self, repository: str, reference: str, /) -> Manifest: ...

    # ``hooks``: ``before``, ``check`` run right before each write request leaves, ``sent`` told then
    # (`WriteHooks`).
    async def delete_manifest(
        self,
        repository: str,
        digest: str,
        /,
        *,
        hooks: WriteHooks | None = None,
    ) -> None: ...

    async def delete_tag(
        self,
        repository: str,
        tag: str,
        /,
        *,
        hooks: WriteHooks | None = None,
    ) -> str | None: ...


@attrs.define
class Cascade:
    registry: CascadeRegistry
    clock: IReactorTime
    # Registry requests in flight for one namespace, and repositories worked on at once.
    concurrency: int = 4
    # Tags of one repository resolved before the digests found are deleted: bounds the resolves a
    # repository has pending (about a KiB each), and what a cascade stopped meanwhile has read for
    # nothing. Large enough that tags sharing a digest mostly fall in one chunk (one DELETE each).
    resolve_chunk: int = 100
    page_size: int = 1000
    backoff: Callable[[], Backoff] = default_backoff
    metrics: CleanupMetrics = attrs.Factory(CleanupMetrics)
    # A confirmation the cluster API could not give (a 429, a timeout) is asked again this many
    # times, after `check_backoff`'s delays, before that repository's deletes stop for the pass: an
    # intermittent error then costs a delete a moment, not the pass (re-listing every tag left).
    check_retries: int = 4
    check_backoff: Callable[[], Backoff] = default_check_backoff
    # How long after a repair's write went unanswered the registry may still carry it out (its
    # placeholder PUT would leave a tag in the namespace): LATE_WRITE_GRACE x the registry timeout,
    # counted from when the repair's error reaches the cascade, as a single delete's error tells its
    # user to wait from its answer. 0: not waited for (beyond what `late_writes` holds).
    late_write_grace: float = 0.0
    # Where those writes are kept, and every write the registry client has out or unanswered: shared
    # with the process's other cascades and its registry client (`LateWrites`, `server`). Its clock
    # is the one of its times; the same reactor as `clock` in the server (a test may give two).
    late_writes: LateWrites = attrs.Factory(lambda self: LateWrites(self.clock), takes_self=True)

    async def run(
        self,
        namespace: str,
        *,
        guard: Guard | None = None,
        confirm: Confirm | None = None,
        wait: Wait | None = None,
        check_wait: Wait | None = None,
        walk: Walk | None = None,
        until: float | None = None,
        aside: Aside | None = None,
        changed: Callable[[str], None] | None = None,
    ) -> CascadeResult:
        """Empty ``<namespace>/``; returns once a full listing of it finds no tag.

        Never gives up on registry errors (they are retried with backoff), except with `until` a pass
        that failed only with errors a retry meets again (`Refused`); raises `Aborted` when
        `guard` or `confirm` says to stop, and CancelledError when cancelled. `wait` sits out each
        backoff after a pass, `check_wait` each of a confirmation's retry backoff (default: just the
        delay on the clock). `walk` is where an earlier cascade of the namespace stopped: this one
        goes on from there, and leaves it where it stops (default: from the first repository).
        `until` (on `clock`; a deletecollection's budget): a request still waiting then for the
        repository's turn, a connection slot, a token or its confirmation stops waiting, leaves its
        place in line and is not sent; the cascade raises `Aborted` with the guard's reason. A write
        once sent is not cut short (its outcome could not be told). `aside` sits out the wait for a
        write of this process that may still land in the namespace (default: just that wait).
        `changed` is told a repository each time one of its deletes (a digest's, a repair's) ends
        that sent a write, whatever its outcome: the caller's watches learn of it then, not when the
        cascade ends (a deletecollection's, up to its whole budget later).
        """
        pause = wait or self._sleep
        if not is_namespace(namespace):
            # Not a namespace name: nothing a namespace's deletion may touch.
            raise ValueError(f"not a namespace name: {namespace!r}")
        checks = _Checks(
            confirm,
            guard,
            check_wait or self._sleep,
            self.check_retries,
            self.check_backoff,
            self.clock,
            until,
            changed,
        )
        walk = walk or Walk()
        # What this run does of each pass it takes part in (`Walk.call`), however it ends: the part
        # of a pass it ended, and of the one under way when it stopped.
        walk.call = (0, 0, 0)
        counting: list[tuple[_Pass, tuple[int, int, int]]] = []
        try:
            return await self._run(namespace, checks, pause, walk, aside, counting)
        finally:
            checks.ended = True
            if counting:
                walk.call = _added(walk.call, *counting[-1])

    async def _run(
        self,
        namespace: str,
        checks: _Checks,
        pause: Wait,
        walk: Walk,
        aside: Aside | None,
        counting: list[tuple[_Pass, tuple[int, int, int]]],
    ) -> CascadeResult:
        """``counting``: the pass under way and its `_Pass.tally` as this run took it up (or last added
        its part to `Walk.call`)."""
        guard = checks.stop
        started = self.clock.seconds()
        backoff = self.backoff()
        passes = errors = tags = manifests = 0
        # Passes in a row without progress that failed only as `_stalls` says (`_Pass.stalled`).
        stalled = 0
        last_error: str | None = None
        while True:
            _check(guard)
            state = walk.state or walk.next_pass(round_done=True)
            if not counting or counting[-1][0] is not state:
                counting[:] = [(state, state.tally())]
            if state.began is None:
                state.began = self.late_writes.now()
            began = state.began
            # What an earlier cascade's part of this pass deleted is that cascade's count.
            tags_before, manifests_before = state.tags_deleted, state.manifests_deleted
            try:
                round_done = await self._pass(namespace, walk, state, guard, checks)
            except (RegistryError, Unconfirmed) as e:  # a catalog page failed
                state.failed("catalog", e)
                round_done = False
            walk.next_pass(round_done=round_done)
            walk.call = _added(walk.call, *counting[-1])
            counting[:] = [(state, state.tally())]
            passes += 1
            tags += state.tags_deleted - tags_before
            manifests += state.manifests_deleted - manifests_before
            walk.failure = None
            walk.lasting = False
            if state.errors:
                errors += 1
                last_error = state.last_error
                walk.failure = f"{state.errors} failure(s) at {state.failing}, e.g. {last_error}"
                walk.lasting = state.lasting_errors == state.errors
                self.metrics.registry_errors_total += state.registry_errors
                self.metrics.registry_readonly_waits_total += state.readonly_errors
                if checks.until is not None and state.certain_errors == state.errors:
                    # A deletecollection's: the same answers again at each pass, and its caller told
                    # to retry; the leader's cascade (no budget) keeps trying, its warning logged.
                    # Not on a refusal of access (lasting, not certain): a grant still being rolled
                    # out lets the next pass through, so it passes again until its budget ends.
                    raise Refused("stopped: every failure of its last pass is one a retry meets again")
                stalled = stalled + 1 if state.stalled() else 0
                if checks.until is not None and (
                    stalled >= 2 or (stalled and state.readonly_errors == state.errors)
                ):
                    # A deletecollection's, in read-only mode (garbage collection) or while every
                    # delete (or read) fails with a 5xx: the next pass sends the same requests for the
                    # same answers, its budget spent while its caller's worker waits (review r1cleanup
                    # F1). Read-only mode is certain at the first such pass; any other only at the
                    # second in a row, so that one blip (a 500, a load balancer's 503) is retried after
                    # the backoff within the call, as before (review r2fixstall L1). Its caller retries
                    # later; the leader's cascade (no budget) keeps trying.
                    passes_said = "pass" if stalled == 1 else "two passes"
                    raise Stalled(f"stopped: its last {passes_said} made no progress, {state.stall()}")
                delay = backoff.next_delay()
                # Once per failed pass, so at most once per backoff step: names what keeps failing.
                log.warn(
                    "Cleanup of namespace {namespace}: {count} failure(s) at {failing}, e.g. {error}; "
                    "retrying in {delay:.1f}s",
                    namespace=namespace,
                    count=state.errors,
                    failing=str(state.failing),
                    error=last_error,
                    delay=delay,
                )
                # Checked before waiting too: a guard that says stop (leadership lost, the namespace
                # back) is not a cancellation, and must not sit out a whole backoff before noticing.
                _check(guard)
                await pause(delay)
                continue
            stalled = 0
            if state.found == 0:
                late = self.late_writes.since(namespace, began)
                if late is not None:
                    # A write of this process that may still land (a repair's placeholder PUT, a
                    # delete's re-tag: sent, and unanswered or not answered yet) would leave a tag in a
                    # namespace reported empty (and in one created anew under the name). Not done
                    # before a pass begun once it can no longer land finds nothing: that pass deletes
                    # whatever it left.
                    log.info(
                        "Cleanup of namespace {namespace}: found empty, but the registry may still carry "
                        "out a write made while {what}; waiting for it",
                        namespace=namespace,
                        what=late[0],
                    )
                    _check(guard)
                    still = await (aside or _itself)(
                        self.late_writes.wait_out(namespace, self._deadline(checks.until))
                    )
                    if still is not None:
                        # At a deadline: one still out (the guard says stop), or one that may land after
                        # it, which a deletecollection's wait (`pause`) stops at once, as a backoff past it.
                        _check(guard)
                        if still[1] == math.inf:
                            raise Aborted("not finished by its deadline")
                        await pause(still[1] - self.late_writes.now())
                    continue
                self.late_writes.settled(namespace, began)
                now = self.clock.seconds()
                return CascadeResult(
                    namespace, tags, manifests, passes, errors, last_error, now - started, now
                )
            if state.progress == 0:
                # Tags listed, none removed and no error to show for it. Dangling tags are repaired,
                # so this should not happen; if it does, say so loudly, with names, and keep trying.
                delay = backoff.next_delay()
                self.metrics.stuck_passes_total += 1
                log.warn(
                    "Cleanup of namespace {namespace}: {found} tag(s) listed but none could be "
                    "removed (e.g. {examples}); looking again in {delay:.1f}s",
                    namespace=namespace,
                    found=state.found,
                    examples=str(state.unresolved),
                    delay=delay,
                )
                _check(guard)
                await pause(delay)
                continue
            # Progress and no error: verify at once with the next pass.
            backoff.reset()

    async def _sleep(self, delay: float) -> None:
        await deferLater(self.clock, delay)

    def _deadline(self, until: float | None) -> float:
        """``until`` (on `clock`) on the clock of `late_writes`: the same reactor in the server, but a
        test may give two."""
        if until is None:
            return math.inf
        return self.late_writes.now() + (until - self.clock.seconds())

    async def contents(self, namespace: str) -> Contents:
        """Count the repositories and tags under ``<namespace>/`` without changing anything."""
        cursor = CatalogCursor(self.registry, namespace, namespace, self.page_size)
        counts = Contents(0, 0)

        async def count(repository: str) -> None:
            nonlocal counts
            # Only the count is kept: a batch's tag lists are not held at once.
            if repository in cursor.guessed:
                found = len(await guessed_tags(self.registry.tags, repository))
            else:
                found = len(await self.registry.tags(repository))
            counts = Contents(counts.repositories + (found > 0), counts.tags + found)

        while not cursor.done:
            batch = await cursor.next()
            await bounded_each(count, (repository for repository, _, _ in batch), self.concurrency)
        return counts

    # -- one pass ----------------------------------------------------------------------------------

    async def _pass(
        self, namespace: str, walk: Walk, state: _Pass, guard: Guard | None, checks: _Checks
    ) -> bool:
        """Goes on with the pass from where `walk` is; True once it has gone round the namespace."""
        limit = DeferredSemaphore(self.concurrency)
        frontier = _Frontier(walk)

        async def repository(name: str) -> None:
            frontier.take(name)
            await self._repository(name, state, limit, guard, checks)
            # Not reached when the cascade is stopped meanwhile: the next one does it again. Nor when
            # it ended before this repository's last answer came (`_Checks.ended`).
            if not checks.ended:
                frontier.done(name)

        async def skipped(after: str, until: tuple[str, ...] | None) -> None:
            # What 2.8's catalog lists after `after` and leaves out of its answer to `last=after`
            # (`skipped_by_seek`): after the seek the stretch begins with, and after every page the
            # registry goes on from (its next page is read with `last=` its last name; a stretch cut
            # off at `until` there would leave them out as well). Not after the catalog's last page:
            # no seek follows it, so it left nothing out, and reading a guess there (maybe only a
            # directory, which a token service may refuse) could only fail the pass for nothing.
            # Not taken up on the frontier: a cascade stopped meanwhile leaves the walk at or before
            # `after`, and the next one lists them again.
            names = [
                name
                for name in skipped_by_seek(after)
                if name.startswith(namespace + "/") and (until is None or catalog_key(name) <= until)
            ]
            # Guesses: a 404 is a directory, nothing to delete; a refusal fails the pass as a listed
            # repository's does, its message saying what to grant (`guessed_tags`).
            await bounded_each(
                lambda name: self._repository(name, state, limit, guard, checks, guessed=True),
                names,
                self.concurrency,
            )

        while True:
            # `last=<namespace>` seeks to the first `<namespace>/…` repository and the cursor stops at
            # the first name outside it, so a prefix sibling (`team-a` for `team`) is never listed
            # (plainly sorted, one before it is read past: `CatalogCursor`).
            position = walk.position()
            # In the registry's own order, what a seek leaves out listed here (`skipped`).
            cursor = CatalogCursor(
                self.registry,
                namespace,
                position or namespace,
                self.page_size,
                full_page_goes_on=True,
                key_order=False,
            )
            # After wrapping, the round ends with the repository it began after.
            until = catalog_key(walk.began) if walk.wrapped and walk.began is not None else None
            seek = cursor.last
            if position is not None:
                await skipped(position, until)
            while not cursor.done:
                _check(guard)  # a catalog page is a registry request as well
                batch = await checks.bounded(ensureDeferred(cursor.next()))
                # Whether the registry's page goes on (full, or with a next link), before `until` ends
                # the stretch: a page that left the namespace ends in a name outside it, whose skipped
                # names are outside it too.
                goes_on = not cursor.done
                names = [name for name, ns, _path in batch if ns == namespace]
                if until is not None and names and catalog_key(names[-1]) > until:
                    names = [name for name in names if catalog_key(name) <= until]
                    cursor.done = True
                # A few repositories at a time, each taken up when one is done: a batch is up to a
                # thousand repositories, and work started for all of them at once would hold every
                # tag of the batch pending, its deletes queued behind every other repository's resolves.
                await bounded_each(repository, names, self.concurrency)
                if goes_on and cursor.last is not None and cursor.last != seek:
                    seek = cursor.last
                    await skipped(seek, until)
            if walk.wrapped or walk.began is None:
                return True
            walk.wrapped, walk.after = True, None
            frontier = _Frontier(walk)

    async def _repository(
        self,
        repository: str,
        state: _Pass,
        limit: DeferredSemaphore,
        guard: Guard | None,
        checks: _Checks,
        guessed: bool = False,
    ) -> None:
        # A worker of a cascade that has ended takes no further repository (`_Checks.ended`). Not the
        # whole guard: a request's checks are the guard's calls, one more here would change none.
        checks.not_ended()
        handled = _Handled()
        # Resolved and not deleted yet: first what a cascade stopped in this repository left, then
        # each chunk's, as its answers come. What is left when this cascade stops is kept for the
        # next one carrying the pass on (`_Pass.resolved`), so that a call that resolved anything
        # made progress however short its budget.
        resolved = state.resolved.pop(repository, {})
        try:
            try:
                # Before the listing: what they delete untags what would otherwise be resolved again.
                await self._wipe_resolved(limit, repository, resolved, state, guard, checks, handled)
                if guessed:
                    tags = await self._read(limit, guard, checks, self._guessed_tags, repository)
                else:
                    tags = await self._read(limit, guard, checks, self.registry.tags, repository)
                if not tags:
                    return
                state.found += len(tags)
                unresolved: list[str] = []
                for start in range(0, len(tags), self.resolve_chunk):
                    chunk = tags[start : start + self.resolve_chunk]
                    handled.deleted_in_chunk.clear()  # before the chunk's resolves: deletes after them
                    digests = await gather(
                        [
                            self._resolve_into(resolved, limit, guard, checks, repository, tag, state)
                            for tag in chunk
                        ]
                    )
                    # An error (_UNANSWERED) fails the pass, which reads the tag again then.
                    unresolved.extend(tag for tag, found in zip(chunk, digests, strict=True) if found is None)
                    await self._wipe_resolved(limit, repository, resolved, state, guard, checks, handled)
                if unresolved:
                    await self._unresolved(repository, unresolved, state, limit, guard, checks)
            finally:
                # Not reached by a delete: stopped meanwhile (or a confirmation that could not be had).
                # All of it, also a digest this cascade deleted or failed to delete before (an index's
                # child, or pushed again since): the next cascade's delete of it is confirmed as any,
                # a 404 is progress, and a failure fails its pass, as its listing would have found it.
                # A copy: a resolve still answered after the stop writes into `resolved`, not into it.
                if resolved and not checks.ended:
                    state.resolved[repository] = dict(resolved)
        except (RegistryError, Unconfirmed) as e:
            # One repository's failure does not stop the others; the pass is retried as a whole.
            state.failed(repository, e)

    async def _wipe_resolved(
        self,
        limit: DeferredSemaphore,
        repository: str,
        resolved: dict[str, _Digest],
        state: _Pass,
        guard: Guard | None,
        checks: _Checks,
        handled: _Handled,
    ) -> None:
        """Deletes the digests ``resolved`` (by a chunk's tags, or a stopped cascade's), each taken out
        of it once handled, so that what is left when the cascade stops is what it did not reach."""
        # One after the other: the registry client queues one repository's mutations anyway
        # (concurrent deletes in one repository are what leave 2.8 with dangling tags), and a
        # delete waiting in that queue must not hold a slot another repository could use.
        for digest in sorted(resolved):
            tags, media_type = resolved[digest]
            if digest in handled.deleted_in_chunk:
                # Deleted as a child of an index of this chunk, after these tags resolved to
                # it: they went with that delete, and count as the tags of any other.
                self._count_tags(state, tags)
            else:
                await self._wipe(limit, repository, digest, media_type, tags, state, guard, checks, handled)
            del resolved[digest]

    async def _guessed_tags(self, repository: str) -> Sequence[str]:
        return await guessed_tags(self.registry.tags, repository)

    async def _unresolved(
        self,
        repository: str,
        unresolved: list[str],
        state: _Pass,
        limit: DeferredSemaphore,
        guard: Guard | None,
        checks: _Checks,
    ) -> None:
        """After the digest deletes, the listed tags that did not resolve: untagged since the listing
        (by a digest delete of an earlier chunk, or by someone else), or dangling. A listing tells
        them apart: the gone ones are progress, the others are repaired (pointed at a placeholder,
        which is then deleted).

        A gone one is not counted as deleted: its digest is not known, so whether this cascade's
        delete untagged it or someone else's (another replica's cascade, a delete through the API)
        cannot be told, and a count must not claim what another party did. `tags_deleted` counts the
        tags resolved to a digest this cascade deleted, and those it repaired: a digest's tags in a
        later chunk than its delete are not in it."""
        listed = set(await self._read(limit, guard, checks, self.registry.tags, repository))
        for tag in unresolved:
            if tag in listed:
                await self._repair(limit, repository, tag, state, guard, checks)
                continue
            state.progress += 1

    async def _read(
        self,
        limit: DeferredSemaphore,
        guard: Guard | None,
        checks: _Checks,
        fn: Callable[..., Awaitable[T]],
        *args: str,
    ) -> T:
        """A read once a registry slot is free, unless the guard says stop by then."""
        await limit.acquire()
        # A stop keeps the slot: the pass ends, and the reads waiting for a slot are cancelled, not
        # handed it one after the other, each to stop in turn a few stack frames deeper.
        _check(guard)
        try:
            return await checks.bounded(ensureDeferred(_awaited(fn(*args))))
        finally:
            limit.release()

    async def _resolve_into(
        self,
        resolved: dict[str, _Digest],
        limit: DeferredSemaphore,
        guard: Guard | None,
        checks: _Checks,
        repository: str,
        tag: str,
        state: _Pass,
    ) -> Resolved | None:
        """`_resolve`, its digest noted in ``resolved`` as soon as it is known: a cascade stopped before
        the rest of the chunk resolves keeps it."""
        found = await self._resolve(limit, guard, checks, repository, tag, state)
        if found is not None and found is not _UNANSWERED:
            tags, _ = resolved.get(found.digest, (0, None))
            resolved[found.digest] = (tags + 1, found.media_type)
        return found

    async def _resolve(
        self,
        limit: DeferredSemaphore,
        guard: Guard | None,
        checks: _Checks,
        repository: str,
        tag: str,
        state: _Pass,
    ) -> Resolved | None:
        """The tag's digest (and type); None when the registry has no manifest for it; _UNANSWERED on
        an error."""
        try:
            return await self._read(limit, guard, checks, self.registry.resolve_typed, repository, tag)
        except RegistryNotFound:
            # Untagged meanwhile (another cascade, a delete through the API) or dangling.
            state.unresolved.note(f"{repository}:{tag}")
            return None
        except RegistryError as e:
            # Recorded here, not raised, so the other tags' requests go on; the pass is retried. It
            # says nothing of the tag, so the tag is not taken for dangling and sent to the repair.
            state.failed(f"{repository}:{tag}", e)
            return _UNANSWERED

    async def _wipe(
        self,
        limit: DeferredSemaphore,
        repository: str,
        digest: str,
        media_type: str | None,
        tags: int,
        state: _Pass,
        guard: Guard | None,
        checks: _Checks,
        handled: _Handled,
        depth: int = 0,
    ) -> bool:
        """Deletes ``digest`` (named by ``tags`` of the chunk), an index's children first: its delete
        would leave no way to find them. Read `MAX_NESTING` levels deep; an index nested deeper is
        deleted unread. Once per pass however many indexes name it (`_Handled`): True when it is
        gone, False when it failed and stays for the next pass."""
        # Failed: left for the next pass. Gone otherwise (deleted, by someone else too; for a chunk's
        # tag, before its chunk resolved it: pushed again since): the next pass finds it if it is
        # back (this pass found tags, so there is one).
        if digest in handled.failed:
            return False
        if digest in handled.gone:
            return True
        if depth < MAX_NESTING and not await self._children(
            limit, repository, digest, media_type, state, guard, checks, handled, depth
        ):
            handled.failed.add(digest)
            return False
        return await self._delete(limit, repository, digest, tags, state, guard, checks, handled)

    async def _delete(
        self,
        limit: DeferredSemaphore,
        repository: str,
        digest: str,
        tags: int,
        state: _Pass,
        guard: Guard | None,
        checks: _Checks,
        handled: _Handled,
    ) -> bool:
        """False when the delete failed (recorded; the pass is retried): True when the digest is gone,
        deleted by this request or, first, by someone else."""
        await limit.acquire()
        try:
            try:
                await checks.mutate(
                    repository, lambda hooks: self.registry.delete_manifest(repository, digest, hooks=hooks)
                )
            except RegistryNotFound:
                state.progress += 1  # someone else deleted it first: the goal is reached all the same
                handled.gone.add(digest)
                return True
            except RegistryError as e:
                state.failed(f"{repository}@{digest}", e, write=True)  # as in _resolve: the siblings go on
                handled.failed.add(digest)
                return False
        finally:
            limit.release()
        handled.gone.add(digest)
        handled.deleted_in_chunk.add(digest)
        state.progress += 1
        state.manifests_deleted += 1
        self.metrics.manifests_deleted_total += 1
        self._count_tags(state, tags)
        return True

    def _count_tags(self, state: _Pass, tags: int) -> None:
        state.tags_deleted += tags
        self.metrics.tags_deleted_total += tags

    async def _children(
        self,
        limit: DeferredSemaphore,
        repository: str,
        digest: str,
        media_type: str | None,
        state: _Pass,
        guard: Guard | None,
        checks: _Checks,
        handled: _Handled,
        depth: int,
    ) -> bool:
        """Deletes the child manifests of ``digest`` when it is an index (``media_type`` None: not
        known, so it is read), in ``repository`` only, before the index is: True once they are gone
        (each deleted, by someone else first, or never there), or when it is no index. False when one
        could not be (recorded; the pass is retried), and the index must stay: it is how the next
        pass finds them."""
        if media_type is not None and media_type not in INDEX_MEDIA_TYPES:
            return True  # a plain image: nothing to read
        try:
            manifest = await self._read(limit, guard, checks, self.registry.manifest, repository, digest)
        except RegistryNotFound:
            return True  # deleted meanwhile: its own delete answers 404, progress
        except RegistryProtocolError as e:
            # Served, but not readable by this client (malformed, nested too deep, too large): that
            # never passes, and kept, the index would fail every pass, the namespace never finishing
            # its deletion. Deleted unread, as one nested too deep is: its children are left behind.
            log.warn(
                "Cleanup: index {where} cannot be read ({error}); deleting it unread: its child "
                "manifests stay, readable by digest, until the registry's garbage collection "
                "removes untagged manifests",
                where=f"{repository}@{digest}",
                error=str(e),
            )
            return True
        except RegistryError as e:
            # One that may pass (5xx, a timeout, read-only, access being granted): as a delete's, the
            # sibling deletes go on and the pass is retried, the index kept, as it is how the next
            # pass finds its children.
            state.failed(f"{repository}@{digest}", e)
            return False
        if not manifest.is_index:
            return True
        gone = True
        for child, child_type in _child_manifests(manifest):
            # Counted as manifests deleted, no tag: a 404 (already gone) is progress, as for any digest.
            if not await self._wipe(
                limit, repository, child, child_type, 0, state, guard, checks, handled, depth + 1
            ):
                gone = False
        return gone

    async def _repair(
        self,
        limit: DeferredSemaphore,
        repository: str,
        tag: str,
        state: _Pass,
        guard: Guard | None,
        checks: _Checks,
    ) -> None:
        await limit.acquire()
        try:
            try:
                digest = await checks.mutate(
                    repository, lambda hooks: self.registry.delete_tag(repository, tag, hooks=hooks)
                )
            except (RegistryNotFound, RegistryConflict) as e:
                if e.unanswered:
                    # Pushed again, but a write of this repair may still land over the push: a
                    # failure of this pass, so that the removal does not report the namespace empty.
                    state.failed(f"{repository}:{tag}", e, write=True)
                    self._unanswered(repository, tag)
                    return
                # Gone meanwhile, or pushed again (the next pass deletes that by digest): either way
                # the tag no longer blocks anything.
                state.progress += 1
                return
            except RegistryError as e:
                state.failed(f"{repository}:{tag}", e, write=True)
                if e.unanswered:
                    # Its placeholder PUT (or restore) may still land, after the pass that would find
                    # the namespace empty: the cascade does not end before it can no longer (`run`).
                    self._unanswered(repository, tag)
                return
        finally:
            limit.release()
        state.progress += 1
        state.tags_deleted += 1
        self.metrics.tags_deleted_total += 1
        if digest is None:
            self.metrics.dangling_tags_repaired_total += 1
            log.info(
                "Cleanup: repaired and deleted dangling tag {repository}:{tag}",
                repository=repository,
                tag=tag,
            )

    def _unanswered(self, repository: str, tag: str) -> None:
        until = self.late_writes.now() + self.late_write_grace
        self.late_writes.note(
            namespace_of(repository), f"repairing dangling tag {repository}:{tag}", until, repository, tag
        )


_ENDED = "the cascade has ended"


@attrs.define
class _Checks:
    """A cascade's checks before each of its deletes: the cluster API's answer (`Confirm`) and the
    guard, which the registry client makes right before each write request leaves (`WriteHooks`):
    in the repository's turn (`RepositoryQueue`), with the request's connection slot held and its
    token at hand; the guard after the confirmation, and again after a token's round trip. A check
    made before any of those waits would let the request leave whenever the wait ends, however much
    later: after the namespace was created anew, this replica stopped leading, or a
    deletecollection's budget ran out.

    The repository's other mutations in this process wait while a check runs: so the confirmation is
    one call of the cluster API per write (a `GET`, bounded by the API client's request timeout, and a
    deletecollection's by what is left of its budget), made by this delete alone (a call shared with
    deletes that asked earlier could be one under way, and then a second would follow). When the API
    cannot tell (`Unconfirmed`), the turn is let go, the short backoff (`check_backoff`) sat out
    outside it, and the delete waits for its turn again, to be confirmed again there."""

    confirm: Confirm | None
    guard: Guard | None
    pause: Wait
    retries: int
    backoff: Callable[[], Backoff]
    clock: IReactorTime | None = None
    # A deletecollection's deadline (on `clock`): no wait of its requests lasts past it (`bounded`).
    until: float | None = None
    # Told the repository of each mutation that sent a write, once it ends (`Cascade.run`).
    changed: Callable[[str], None] | None = None
    # Set once the cascade's run has returned or raised. A stopped cascade cancels its workers, but
    # one whose registry answer was already coming is handed it as a success (`within`) and goes on,
    # while the next cascade carries the same `Walk` on: it stops at its next request, takes no
    # further repository, and writes neither `Walk.after` nor the digests it kept (r2fix N2). Each
    # of its deletes was confirmed all the same; what it leaves only costs the next one a listing.
    ended: bool = False

    def stop(self) -> str | None:
        """The guard of the cascade's run: the given one, and its end."""
        if self.ended:
            return _ENDED
        return self.guard() if self.guard is not None else None

    def not_ended(self) -> None:
        if self.ended:
            raise Aborted(_ENDED)

    async def bounded(self, work: Deferred[T], out: _Out | None = None) -> T:
        """``work``, cancelled at `until` unless a write of it is out (``out``: sent, not answered): a
        request waiting for the repository's turn behind another mutation's slow confirmation, for a
        connection slot all of which confirmations hold, or for a token after a 401, leaves the line
        with nothing sent and the call ends at its budget. Cancelling a read, or a mutation with no
        write out, loses nothing. A write out at `until` is waited for: cancelled once answered (in
        the reactor turn after its answer, not inside the request's own call), never while the
        registry may still carry it out without its outcome being known."""
        if self.until is None or self.clock is None:
            return await work
        clock, until = self.clock, self.until
        expired = False

        def expire() -> None:
            nonlocal expired
            if work.called or expired or (out is not None and out.count > 0):
                return
            expired = True
            work.cancel()

        def answered() -> None:
            # Nothing out any more: past the budget, what follows (a 401's retry waiting for its token,
            # the mutation's next write waiting for a turn) is cut, from the next reactor turn.
            if clock.seconds() >= until:
                clock.callLater(0, expire)

        if out is not None:
            out.answered = answered
        timer = clock.callLater(max(0.0, until - clock.seconds()), expire)
        try:
            return await work
        except CancelledError:
            if not expired:
                raise
            _check(self.stop)
            raise Aborted("not finished by its deadline") from None
        finally:
            if timer.active():
                timer.cancel()

    async def _attempt(self, call: Callable[[WriteHooks], Awaitable[T]], out: _Out) -> T:
        # A mutation that has begun writing (a 2.8 tag delete's copy or placeholder) goes on to its
        # end after the run ends, as the registry client carries it: only the guard stops it then
        # (review r3clean L1).
        def check() -> None:
            _check(self.guard if out.left else self.stop)

        async def once() -> None:
            # The guard first, as before every request: a deletecollection's budget spent, or the
            # replica no longer leading, no cluster API request is begun.
            check()
            if self.confirm is not None:
                await self.confirm()

        before = once if self.confirm is not None else None
        work = ensureDeferred(_awaited(call(WriteHooks(before=before, check=check, sent=out))))
        return await self.bounded(work, out)

    async def mutate(self, repository: str, call: Callable[[WriteHooks], Awaitable[T]]) -> T:
        """``call`` (a mutation of ``repository``) with the checks, retried while unconfirmed."""
        backoff = self.backoff()
        retries = self.retries
        while True:
            _check(self.stop)  # not queued at all once told to stop
            out = _Out()
            try:
                return await self._attempt(call, out)
            except Unconfirmed:
                if retries == 0:
                    raise
            except GoesOn as going:
                # Carried on by the registry client: told again once its writes have ended.
                if self.changed is not None:
                    going.ended.addCallback(lambda _, told: told(repository), self.changed)
                raise
            finally:
                # Only once a write left: one stopped before (a budget spent, a confirmation refused)
                # changed nothing, and a watch need not hear of it. Told whatever the outcome, as a
                # single delete's: one that failed half-way may have changed the registry.
                if out.left and self.changed is not None:
                    self.changed(repository)
            retries -= 1
            _check(self.stop)  # not sat out after leading
            await self.pause(backoff.next_delay())  # a deletecollection's: not past its budget


@attrs.define
class _Out:
    """The manifest writes of a mutation's attempt that are out (`WriteHooks.sent`): counted when the
    registry client tells one leaving, not by the check it makes on taking the repository's turn, and
    uncounted when the registry answers it (a 401 included). One that went unanswered (a timeout, a
    connection lost, a gateway's 5xx) is never uncounted: the registry may still carry it out, and
    the mutation goes on to learn what it did. Until one leaves, and again once none is out, a wait
    (a confirmation's turn, a slot, a token) is cancelled at the budget (`_Checks.bounded`)."""

    count: int = 0
    left: bool = False  # whether any write left at all (`_Checks.mutate`)
    # Told when the count comes back to 0 (`bounded`: a budget that ended meanwhile cuts the rest).
    answered: Callable[[], None] | None = None

    def __call__(self, leaving: bool) -> None:
        self.left = self.left or leaving
        self.count += 1 if leaving else -1
        if not leaving and self.count == 0 and self.answered is not None:
            self.answered()


def _child_manifests(index: Manifest) -> list[tuple[str, str | None]]:
    """The manifests an index names, by digest, with the media type its descriptor gives (None: none
    given): each once, in the index's order. Digests only, which the registry's own repository is
    asked for: an index cannot name a manifest elsewhere."""
    try:
        entries = index.json().get("manifests")
    except ValueError:
        return []
    children: dict[str, str | None] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        digest, media_type = entry.get("digest"), entry.get("mediaType")
        if isinstance(digest, str) and is_valid_digest(digest) and digest not in children:
            children[digest] = media_type if isinstance(media_type, str) and media_type else None
    return list(children.items())


async def _awaited(work: Awaitable[T]) -> T:
    return await work


async def _itself(waiting: Deferred[Late]) -> Late:
    return await waiting


def _check(guard: Guard | None) -> None:
    if guard is not None:
        reason = guard()
        if reason is not None:
            raise Aborted(reason)
