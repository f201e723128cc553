"""The payloadrepositorytags resource: list, get, delete and deletecollection over the inventory."""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Collection, Coroutine, Sequence
from typing import Any, NoReturn, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from payloadtags.access.authn import UserInfo
from payloadtags.access.authz import Authorizer, Readable, readable_as_now
from payloadtags.api import continuation
from payloadtags.api.errors import (
    ApiError,
    access_denied,
    conflict,
    list_resource_version_expired,
    not_found,
    precondition_failed,
    resource_version_too_large,
)
from payloadtags.api.options import DeleteOptions, ListOptions
from payloadtags.api.selectors import tag_filter
from payloadtags.api.walks import Kept, Listed, Reported, WalkCache, new_walk_id
from payloadtags.deferreds import DeadlineExpired, GoesOn, bounded_each, bounded_map, within
from payloadtags.inventory import Inventory, Page, Run, Runs
from payloadtags.model import (
    GROUP,
    QUALIFIED_RESOURCE,
    RESOURCE,
    ListMeta,
    PayloadRepositoryTag,
    StatusDetails,
    TagStatus,
    tag_object,
    uid_for,
)
from payloadtags.names import InvalidName, TagRef, is_namespace, ref_from_name
from payloadtags.registry import LateWrites, asking
from payloadtags.registry.errors import RegistryConflict, RegistryError, RegistryNotFound
from payloadtags.registry.late import (
    COPY,
    PLACEHOLDER,
    RESTORE,
    Kind,
    Landing,
    Leave,
    Scope,
    Watch,
    Within,
    landing_of,
)
from payloadtags.watch import parse_version

audit_log = Logger(namespace="payloadtags.audit")


# How many of the tags a deletecollection left behind its error message names one by one.
NAMED_LEFT = 10

# Seconds before the request's deadline (counted from when the request was received, whatever its
# authentication took) that a deletecollection's waits end: time for its last look at the tags and
# its own answer.
DEADLINE_MARGIN = 1.0


def _collection_incomplete(
    namespace: str,
    total: int,
    left: list[TagRef],
    why: dict[TagRef, str],
    pending: Collection[TagRef] = (),
    lasting: Collection[TagRef] = (),
    latest: str = "",
    *,
    seen: bool = True,
    stalled: bool = False,
) -> ApiError:
    """503 with Retry-After: the namespace controller (and kubectl) retry, and the next try resumes.
    With ``pending`` (tags whose delete wrote something the registry did not answer, and may still
    carry out), 504 with none: a repeat sent by client-go while such a write is pending could
    succeed, and the write then bring its tag back after the answer said so. With every tag left in
    ``lasting`` (refused in a way a retry meets again: `RegistryError.lasting`), 503 with none, as for
    a single delete: client-go would repeat the request up to ten times for the same answer.
    ``latest``: with ``pending``, the write of this process that may land latest there, said
    (`TagsService._latest`); ``seen``: False when no look after the deletes ended (cut, or failed).
    ``stalled``: a namespace's removal that made no progress (`RegistryError.stalled`; its message
    says what failed, if anything): 503 with none, and "retry later": a repeat at once likely meets
    the same, and client-go's ten held the namespace controller's worker for minutes (review
    r1cleanup F1)."""
    if pending:
        return _collection_unanswered(namespace, total, left, why, pending, latest, seen=seen)
    refused = bool(left) and all(ref in lasting for ref in left)
    named = [
        f'"{ref.name}" ({ref.repository}:{ref.tag}: {why.get(ref, "still listed after its delete")})'
        for ref in left[:NAMED_LEFT]
    ]
    more = f" and {len(left) - NAMED_LEFT} more" if len(left) > NAMED_LEFT else ""
    message = (
        f"deletecollection of {QUALIFIED_RESOURCE} in namespace {namespace} is not finished: "
        f"{len(left)} of {total} selected tag(s) are still there: {'; '.join(named)}{more}"
        + (
            "; a retry gets the same answer until that is fixed"
            if refused
            else "; retry later"
            if stalled
            else "; retry"
        )
    )
    causes = [
        {
            "reason": "ResourceLeft",
            "field": ref.name,
            "message": why.get(ref, "still listed after its delete"),
        }
        for ref in left[:NAMED_LEFT]
    ]
    retry_after = None if refused or stalled else 1
    details = StatusDetails(group=GROUP, kind=RESOURCE, causes=causes, retry_after_seconds=retry_after)
    return ApiError(503, "ServiceUnavailable", message, details, retry_after=retry_after)


def _tag_at(namespace: str, leave: Leave) -> TagRef:
    """The tag a write would leave at ``leave`` (repository, tag, digest) of ``namespace``."""
    return TagRef(namespace, leave[0].partition("/")[2], leave[1])


def _late_scope(
    namespace: str, visible: Within | None, matches: Callable[[TagRef], bool] | None
) -> Scope | None:
    """The late writes a tag-by-tag deletecollection waits for, looks again after and names: those
    that could leave a tag its look lists, in a repository the caller sees (``visible``) and, of a
    write whose tag is known (every manifest write and delete of the registry client's), of a tag its
    selectors keep (``matches``). A write elsewhere cannot leave a tag it asks for: waited for, a
    call with a selector waited out (or answered a 504 naming) another client's re-tag of a tag the
    selector cannot match, and passed again after each (review r8own F1). A write of unknown
    repository or tag still counts. None: every write (a write of unknown repository then keeps its
    own description)."""
    if matches is None:
        return None if visible is None else Scope(visible)
    return Scope(visible, lambda repository, tag: matches(_tag_at(namespace, (repository, tag, ""))))


def _collection_unlooked(namespace: str, total: int, leaves: Collection[Leave]) -> ApiError:
    """503 with Retry-After for a deletecollection whose budget or deadline was spent before it looked
    for what writes of its process sent during its passes may have left at ``leaves`` (answered, or
    whose time passed; none when the writes it waited for left nothing it knows of): such a tag is
    part of the call, and a retry's selection takes it."""
    refs = list(dict.fromkeys(_tag_at(namespace, leave) for leave in leaves))
    # No look read these tags for what the writes left (there was no time left for one): each may be
    # there or not, so not `ResourceLeft`, which says a look listed it (review r8own L1). Not "after
    # the last look" either: a write answered before the last look began, of a tag outside the
    # selection, is named too, and that look may have listed the tag without taking it in (review
    # r9own N1).
    why = (
        "a write of payloadtags during this request may have put it back, and the request had no time "
        "left to check for it: whether it is there is not known"
    )
    named = [f'"{ref.name}" ({ref.repository}:{ref.tag})' for ref in refs[:NAMED_LEFT]]
    more = f" and {len(refs) - NAMED_LEFT} more" if len(refs) > NAMED_LEFT else ""
    # An empty selection has nothing deleted to speak of (review r9own N2).
    done = f"its {total} tag(s) are deleted" if total else "it selected no tag"
    which = f": {'; '.join(named)}{more}" if named else ""
    message = (
        f"deletecollection of {QUALIFIED_RESOURCE} in namespace {namespace} is not finished: {done}, but "
        f"writes of payloadtags during this request may have put back tags that it had no time left to "
        f"check for{which}; retry"
    )
    causes = [{"reason": "NotLookedFor", "field": ref.name, "message": why} for ref in refs[:NAMED_LEFT]]
    details = StatusDetails(group=GROUP, kind=RESOURCE, causes=causes, retry_after_seconds=1)
    return ApiError(503, "ServiceUnavailable", message, details, retry_after=1)


def _collection_unanswered(
    namespace: str,
    total: int,
    left: list[TagRef],
    why: dict[TagRef, str],
    pending: Collection[TagRef],
    latest: str = "",
    *,
    seen: bool = True,
) -> ApiError:
    shown = [*left, *(ref for ref in pending if ref not in left)][:NAMED_LEFT]
    named = [
        f'"{ref.name}" ({ref.repository}:{ref.tag}: {why.get(ref, "still listed after its delete")})'
        for ref in shown
    ]
    more = f" and {len(left) - len(shown)} more still there" if len(left) > len(shown) else ""
    # Counted against the selection, not the tags left: a pending tag may read as gone ("0 of 2 …
    # still there, … delete 1 of them" read as one of none).
    if left:
        still = f"{len(left)} of {total} selected tag(s) are still there, and"
    elif seen:
        still = f"none of the {total} selected tag(s) is listed now, but"
    else:
        # Cut before its look ended, or the look failed: it cannot say what is listed.
        still = f"which of the {total} selected tag(s) are still there is not known (no look ended), and"
    # The latest write that may land there, when said: a look once the deletes' own writes can no
    # longer land showed the namespace falsely done while a longer one may (review-ds8 F5).
    latest = f", and the latest write of this process there: {latest}" if latest else ""
    wait = "wait until the latest has passed" if latest else "wait that long"
    message = (
        f"Timeout: deletecollection of {QUALIFIED_RESOURCE} in namespace {namespace} is not finished: "
        f"{still} the registry did not answer writes made to delete {len(pending)} of the {total}, "
        f"which it may still carry out: {'; '.join(named)}{more}; each may still land within the time "
        f"its message gives{latest} (deleting again at once can answer success before a late write "
        f"brings a tag back): {wait}, then list the tags (kubectl get) and delete again only those "
        "still there"
    )
    listed = set(left)
    causes = [
        {
            # A tag that reads as gone is not left: what holds the collection back is its write.
            "reason": "ResourceLeft" if ref in listed else "WriteUnanswered",
            "field": ref.name,
            "message": why.get(ref, "still listed after its delete"),
        }
        for ref in shown
    ]
    return ApiError(504, "Timeout", message, StatusDetails(group=GROUP, kind=RESOURCE, causes=causes))


def _removal_unanswered(namespace: str, total: int, left: list[TagRef], why: str) -> ApiError:
    """504 without Retry-After: a namespace's removal left a write the registry may still carry out
    (``why`` says which, and until when). client-go does not repeat it by itself; the namespace
    controller retries with its own backoff, and a call once the write can no longer land deletes
    whatever it left."""
    named = [f'"{ref.name}" ({ref.repository}:{ref.tag})' for ref in left[:NAMED_LEFT]]
    more = f" and {len(left) - NAMED_LEFT} more" if len(left) > NAMED_LEFT else ""
    still = (
        f": {len(left)} of {total} selected tag(s) are still there: {'; '.join(named)}{more}" if left else ""
    )
    message = (
        f"Timeout: deletecollection of {QUALIFIED_RESOURCE} in namespace {namespace} is not finished"
        f"{still}; {why}"
    )
    causes = [{"reason": "ResourceLeft", "field": ref.name, "message": why} for ref in left[:NAMED_LEFT]]
    return ApiError(504, "Timeout", message, StatusDetails(group=GROUP, kind=RESOURCE, causes=causes or None))


def _across_repositories(refs: list[TagRef]) -> list[TagRef]:
    """Round robin over repositories: the deletes of one repository wait for each other in the
    registry client's queue, so the ones in flight together should be in different repositories."""
    by_repository: dict[str, list[TagRef]] = {}
    for ref in refs:
        by_repository.setdefault(ref.repository, []).append(ref)
    lanes = list(by_repository.values())
    return [lane[i] for i in range(max(map(len, lanes), default=0)) for lane in lanes if i < len(lane)]


# A tag a deletecollection took in (`_TagByTag.brought_back`): the write of payloadtags that brought it
# back, by what it left there. Never a restore's: such a tag is named, not deleted.
_BROUGHT_BACK = {
    COPY: "a re-tag that payloadtags made deleting it for another request or its cleanup",
    PLACEHOLDER: "a placeholder that payloadtags wrote repairing it for another request or its cleanup",
}


def _taken_in(brought_back: Kind | None) -> tuple[str, dict[str, str]]:
    """What an audit line adds for a tag its deletecollection took in (``brought_back``: what the late
    write left there; None: a tag it selected), and its field: not in the request's selection, and
    whose write brought it back. The line said only "by" the caller, as though the caller had
    selected it, while the write was another call's (review r7own N1)."""
    if brought_back is None:
        return "", {}
    said = (
        ", not in the request's selection: {broughtBackBy} brought it back, landing late, after the "
        "selection was read, and the request took it in"
    )
    return said, {"broughtBackBy": _BROUGHT_BACK[brought_back]}


def _audit(
    user: UserInfo, ref: TagRef, digest: str | None, dry_run: bool, brought_back: Kind | None = None
) -> None:
    """One line per deleted tag: who deleted what (the digest it pointed at), or would have; for a
    tag its deletecollection took in, whose write brought it back (`_taken_in`)."""
    said, fields = _taken_in(brought_back)
    audit_log.info(
        "{verb} tag {repository}:{tag} ({digest}) by {user}" + said,
        verb="dry-run delete" if dry_run else "deleted",
        user=user.name,
        namespace=ref.namespace,
        repository=ref.repository,
        repositoryPath=ref.repository_path,
        tag=ref.tag,
        digest=digest or "-",
        dryRun=dry_run,
        **fields,
    )


def _deleted(digest: str | None) -> TagStatus | None:
    """A deleted tag's status: the digest it pointed at (none for a dangling tag)."""
    return TagStatus(digest=digest) if digest is not None else None


class NamespaceRemoval(Protocol):
    """How deletecollection empties a namespace that is being deleted (`payloadtags.cleanup.removal`)."""

    async def deleting(self, namespace: str) -> bool:
        """The cluster API says the namespace is Terminating or gone."""
        ...

    async def remove(
        self, namespace: str, within: float, changed: Callable[[str], None] | None = None
    ) -> None:
        """Delete everything under ``<namespace>/``; returns once a listing finds nothing, raises a
        RegistryError when that does not happen within ``within`` seconds. ``changed`` is told each
        repository as a delete of its own there ends (not those of work under way it waits for)."""
        ...


@attrs.define
class ResourceVersions:
    """List resourceVersions: decimal, never empty, increasing across calls and restarts (time-seeded)."""

    clock: IReactorTime
    _last: int = 0

    def current(self) -> str:
        self._last = max(int(self.clock.seconds() * 1_000_000), self._last + 1)
        return str(self._last)

    def observer(
        self, scope: str | None, resource_version: str, direct: bool = False, joined: Observe | None = None
    ) -> Observe | None:
        return None

    def ahead(self, resource_version: str) -> bool:
        number = parse_version(resource_version)
        return number is not None and number > self._last


Observe = Callable[[str, Sequence[str]], None]


class VersionSource(Protocol):
    """Where lists take their resourceVersion: the watch hub's sequence when watches are served."""

    def current(self) -> str: ...

    def observer(
        self, scope: str | None, resource_version: str, direct: bool = False, joined: Observe | None = None
    ) -> Observe | None:
        """Where a list of ``scope`` at ``resource_version`` reports each tag list it reads from the
        registry (repository, tags), so that a watch from it can start later; None: nowhere. The same
        callable for as long as the same place takes the reports (a walk whose kept lists went there
        does not report them again). ``direct``: a list by name, which reads its one repository
        directly rather than through the scope's view of its repositories. ``joined``: where this
        list reported before (its first page: what the watch hub gave it as it began; a later page:
        its walk's), returned again while that is still where it reports, so that its reads are told
        from other lists' (`watch.hub.ListReporter`)."""
        ...

    def ahead(self, resource_version: str) -> bool:
        """Whether ``resource_version`` (decimal) is one of this source's that it has not issued yet."""
        ...


@attrs.define(eq=False)
class PageRuns:
    """The runs of a page read before."""

    runs: Sequence[Run]
    _at: int = 0

    async def next(self) -> Run | None:
        if self._at >= len(self.runs):
            return None
        self._at += 1
        return self.runs[self._at - 1]

    def stop(self) -> None:
        self._at = len(self.runs)


def reads_a_page(options: ListOptions) -> bool:
    """Whether a list is read as a page, before it is written (`TagsService.list_runs`), rather than
    as it is written."""
    return (
        options.limit is not None
        or options.continue_ is not None
        or bool(options.fields.required("metadata.name"))
    )


def _noting(
    readable: Callable[[str, str], bool], decided: Callable[[str], None]
) -> Callable[[str, str], bool]:
    # Each access decision of a page is told as it is made, in the same reactor turn: her rules may
    # change between two of them (a page's reads span registry awaits), and what the page shows is
    # what the rules of each decision decided, whatever they are once it is read. A whole list's, for
    # the namespaces it shows (`WatchHub.list_decisions`).
    def noted(namespace: str, repository_path: str) -> bool:
        allowed = readable(namespace, repository_path)
        decided(namespace)
        return allowed

    return noted


@attrs.frozen
class _Listing:
    """A list's decisions made before it reads: its scope, selectors, access and resourceVersion."""

    watch_scope: str | None  # the namespace asked for (None: all namespaces)
    namespace: str | None  # that, or the one a metadata.namespace selector pins
    accept: Callable[[TagRef], bool] | None
    readable: Callable[[str, str], bool]
    current: str


@attrs.define
class TagsService:
    inventory: Inventory
    registry_host: str
    authorizer: Authorizer
    versions: VersionSource
    delete_concurrency: int = 4
    # Repositories a dry-run deletecollection checks at once (`_check_deletes`): the registry client's
    # connection slots (--registry-concurrency), which its checks wait for in any case.
    check_concurrency: int = 16
    # With it, a deletecollection of a whole namespace that is being deleted deletes by digest.
    removal: NamespaceRemoval | None = None
    # Seconds such a deletecollection works before it answers 503 (the namespace controller retries);
    # also how long one tag by tag waits for a write that may still land (`late_writes`).
    removal_budget: float = 40.0
    # The registry client's record of its writes that may still land (`LateWrites`): a deletecollection
    # tag by tag answers no 200 while one may land in the namespace. None: none are kept.
    late_writes: LateWrites | None = None
    # Where paginated walks keep the tag lists their next pages show; None: every page reads them.
    walks: WalkCache | None = None
    # Told each repository a delete of this service changed, or may have (one that failed half-way),
    # once the delete has ended: the watch hub rereads it, so watches need not wait for a resync.
    changed: Callable[[str], None] = lambda repository: None
    # Lists begun (pages and deletecollections included): what tells that lists are being served
    # (quiet.WhenQuiet).
    lists: int = 0
    # Who asked for each single delete under way (repository, tag -> user name), until it ends, its
    # request cut or not: what a stop says of a delete it waits for (`server.CarriedDeletes`).
    asked_by: dict[tuple[str, str], str] = attrs.Factory(dict)

    def _object(self, ref: TagRef, status: TagStatus | None = None) -> PayloadRepositoryTag:
        return tag_object(self.registry_host, ref, status)

    def _selected(self, options: ListOptions) -> Callable[[TagRef], bool] | None:
        """Which tags the selectors keep; None when they keep every tag."""
        return tag_filter(options.labels, options.fields)

    def readable(self, user: UserInfo) -> Callable[[str, str], bool]:
        """Whether ``user`` may see the tags of (namespace, repository path)."""
        return self._readable(user, authorize=True)

    def _readable(self, user: UserInfo, authorize: bool) -> Callable[[str, str], bool]:
        if not authorize:
            return lambda namespace, path: True
        return Readable(self.authorizer, user)

    # `list` names the Kubernetes verb; below it, annotations say `builtins.list`.
    async def list(
        self, user: UserInfo, namespace: str | None, options: ListOptions
    ) -> tuple[Page, ListMeta]:
        """The tags a list shows, as runs of one repository's tags (api.render streams them)."""
        return await self._select(user, namespace, options)

    async def list_runs(
        self,
        user: UserInfo,
        namespace: str | None,
        options: ListOptions,
        decided: Callable[[str], None] | None = None,
        joined: Observe | None = None,
    ) -> tuple[Runs, ListMeta]:
        """The tags a list shows, a repository at a time. A whole list (no limit, no continue) is
        read as it is written (`Inventory.reader`); a page is read first, whole (`reads_a_page`).
        ``decided`` is told the namespace of each access decision either makes, as it makes it.
        ``joined``: where the list reports its reads, as the version source gave it when the list
        began (`VersionSource.observer`)."""
        if reads_a_page(options):
            page, meta = await self._select(user, namespace, options, decided=decided, joined=joined)
            return PageRuns(page.runs), meta
        listing = self._begin(user, namespace, options)
        if listing.namespace is not None and not is_namespace(listing.namespace):
            return PageRuns([]), ListMeta(resource_version=listing.current)  # as in _select
        reader = self.inventory.reader(
            listing.namespace,
            accept=listing.accept,
            readable=listing.readable if decided is None else _noting(listing.readable, decided),
            observe=self.versions.observer(listing.watch_scope, listing.current, joined=joined),
        )
        return reader, ListMeta(resource_version=listing.current)

    async def list_objects(
        self, user: UserInfo, namespace: str | None, options: ListOptions
    ) -> tuple[builtins.list[PayloadRepositoryTag], ListMeta]:
        page, meta = await self._select(user, namespace, options)
        return [self._object(ref) for ref in page.refs], meta

    def check_list(self, namespace: str | None, options: ListOptions) -> None:
        """The errors of a list's own that need no registry read, as `list_runs` raises them: its
        resourceVersion (504, 410), then its continue token (400). For a caller whose own later
        checks must come after them (a Table's includeObject, which kube-apiserver reads only once
        it has listed); `list_runs` makes them again, as it reads."""
        self._check_version(options, self.versions.current())
        if options.continue_ is not None:
            continuation.decode(options.continue_, namespace or "")

    def check_version(self, options: ListOptions) -> None:
        """A list's resourceVersion errors (504, 410), as `list_runs` raises them: no registry read,
        no continue token decoded."""
        self._check_version(options, self.versions.current())

    def _check_version(self, options: ListOptions, current: str) -> None:
        if options.exact:
            requested = parse_version(options.resource_version or "")
            if requested != parse_version(current):
                # What a list at an older resourceVersion held is not kept: only the current one can
                # be served exactly (docs/api.md, "List options").
                if self.versions.ahead(str(requested)):
                    raise resource_version_too_large(str(requested), current)
                raise list_resource_version_expired()
        elif options.resource_version is not None and self.versions.ahead(options.resource_version):
            # Not older than a resourceVersion this replica has not reached: no list it can give now is
            # that new (another replica's or run's is not comparable, and is served as the current one).
            raise resource_version_too_large(options.resource_version, current)

    def _begin(
        self, user: UserInfo, namespace: str | None, options: ListOptions, authorize: bool = True
    ) -> _Listing:
        """What every list decides before it reads the registry."""
        self.lists += 1
        pinned_namespace = options.fields.required("metadata.namespace")
        # Registry reads that go out from now on may be shared with this request (a list arriving
        # while an identical one is being read joins its reads that were not sent yet when it came).
        # Taken before the registry is read: a watch from it then replays every change found by a
        # read that may have come after this list's (docs/watch.md, "Guarantees").
        current = self.versions.current()
        self._check_version(options, current)
        asking()
        return _Listing(
            watch_scope=namespace,
            namespace=namespace if namespace is not None else pinned_namespace,
            accept=self._selected(options),
            readable=self._readable(user, authorize),
            current=current,
        )

    async def _select(
        self,
        user: UserInfo,
        namespace: str | None,
        options: ListOptions,
        authorize: bool = True,
        shown: bool = True,
        decided: Callable[[str], None] | None = None,
        readable: Callable[[str, str], bool] | None = None,
        joined: Observe | None = None,
    ) -> tuple[Page, ListMeta]:
        """The page ``options`` select. ``shown``: a client is shown it, and may watch from its
        resourceVersion, so its reads are reported for that watch (`VersionSource.observer`); a
        deletecollection's selections are not, and their reads must not stand in a record for what a
        list showed. ``readable``: what ``user`` may see, decided by the caller (a deletecollection's,
        as it began); else each path as it is read."""
        scope = namespace or ""
        listing = self._begin(user, namespace, options, authorize)
        if readable is not None:
            listing = attrs.evolve(listing, readable=readable)
        if decided is not None:
            listing = attrs.evolve(listing, readable=_noting(listing.readable, decided))
        namespace = listing.namespace
        # Decoded whatever the namespace, as kube-apiserver decodes it: a bad token is 400 even where
        # nothing can be listed (the decode reads nothing).
        token = continuation.decode(options.continue_, scope) if options.continue_ is not None else None
        if namespace is not None and not is_namespace(namespace):
            # A selector pinning a name no namespace can have (metadata.namespace= or a.b): nothing
            # has it, as -A shows no repository under such a name.
            return Page([], more=False), ListMeta(resource_version=listing.current)
        pinned_name = options.fields.required("metadata.name")
        if namespace is not None and pinned_name is not None and options.continue_ is None:
            # kubectl's delete-wait and single-object watches select by name: one tag-list read.
            observe = (
                self.versions.observer(listing.watch_scope, listing.current, direct=True, joined=joined)
                if shown
                else None
            )
            refs = await self._by_name(namespace, pinned_name, listing.accept, listing.readable, observe)
            runs = [Run(ref.namespace, ref.repository_path, [ref.tag]) for ref in refs]
            return Page(runs, more=False), ListMeta(resource_version=listing.current)
        after = None
        resource_version = None
        walk = None
        kept = None
        listed = Listed(scope, namespace)
        if token is not None:
            after, resource_version, walk = token.last, token.resource_version, token.walk
            if walk is not None and self.walks is not None:
                # Registry data only, read for this same caller's walk of this list: access and
                # selectors below are decided again on this page.
                walked, kept = self.walks.continued(user, walk, listed, after)
                if walked is not None and walked.scope != scope:
                    # A token of another list, given this one's scope: its walk's data is not read.
                    raise continuation.another_list()
        resource_version = resource_version or listing.current
        # The walk's earlier pages reported its kept lists to this same record already (a 10,000-tag
        # list costs milliseconds to compare again); a record made anew under the same
        # resourceVersion (the old one expired) is a new callable, and learns them on this page. The
        # callable they reported to is this list's own in the record: a later page reports as the
        # same list (a walk that kept nothing reports as a list the record does not know).
        reported_to = kept.reported_to if kept is not None else None
        before = reported_to() if reported_to is not None else None
        if token is None:
            before = joined
        observe = (
            self.versions.observer(listing.watch_scope, resource_version, joined=before) if shown else None
        )
        reported = kept is not None and before is observe
        if not reported:
            reported_to = Reported(observe) if observe is not None else None
        page = await self.inventory.list(
            namespace,
            limit=options.limit,
            after=after,
            accept=listing.accept,
            readable=listing.readable,
            observe=observe,
            held=kept.lists if kept is not None else None,
            observe_held=not reported,
            rest=kept.rest if kept is not None else None,
        )
        meta = ListMeta(resource_version=resource_version)
        last = page.last
        # What this page used stays for the token it was asked with (given again, that token selects
        # the same tags: a retry, a dry run and then the same deletecollection), and what the next
        # page starts from for the token it hands out.
        asked = (after, Kept(page.used, page.began, reported_to)) if after is not None and walk else None
        handed = None
        if page.more and last is not None:
            # A walk whose token carried no id (an older replica's) gets one from here on.
            walk = walk or (new_walk_id() if self.walks is not None else None)
            handed = (last, Kept(page.held, page.rest, reported_to))
            meta.continue_ = continuation.encode(
                continuation.Continuation(resource_version, scope, last, walk)
            )
        if walk is not None and self.walks is not None:
            self.walks.keep(user, walk, listed, asked, handed)
        return page, meta

    async def _by_name(
        self,
        namespace: str,
        name: str,
        accept: Callable[[TagRef], bool] | None,
        readable: Callable[[str, str], bool],
        observe: Observe | None = None,
    ) -> builtins.list[TagRef]:
        try:
            ref = ref_from_name(namespace, name)
        except InvalidName:
            return []
        if not ((accept is None or accept(ref)) and readable(ref.namespace, ref.repository_path)):
            return []
        return [ref] if await self.inventory.exists(ref, observe) else []

    def _resolve(self, user: UserInfo, verb: str, namespace: str, name: str) -> TagRef:
        if not is_namespace(namespace):
            # No tag is in a namespace no namespace can have (Bad_NS): not found, as kube-apiserver
            # answers, and never looked up ("Bad_NS/..." could probe some other repository's path).
            raise not_found(name)
        try:
            ref = ref_from_name(namespace, name)
        except InvalidName:
            raise not_found(name) from None
        access = "delete" if verb == "delete" else "get"
        if not self.authorizer.allowed(user, access, namespace, ref.repository_path):
            raise access_denied(user.name, verb, namespace, name, ref.repository_path)
        return ref

    async def get(self, user: UserInfo, namespace: str, name: str) -> PayloadRepositoryTag:
        ref = self._resolve(user, "get", namespace, name)
        try:
            detail = await self.inventory.detail(ref)
        except RegistryNotFound:
            raise not_found(name) from None
        status = TagStatus(
            digest=detail.digest,
            media_type=detail.media_type,
            artifact_type=detail.artifact_type,
            manifest=detail.manifest,
            config=detail.config,
        )
        return self._object(ref, status)

    def _check_preconditions(self, ref: TagRef, options: DeleteOptions) -> None:
        uid = uid_for(ref)
        if options.uid is not None and options.uid != uid:
            raise precondition_failed(
                ref.name,
                f"the UID in the precondition ({options.uid}) does not match the UID in record ({uid}). "
                "The object might have been deleted and then recreated",
            )
        if options.resource_version is not None:
            # Tags carry no resourceVersion, so no precondition on one can hold.
            raise precondition_failed(
                ref.name,
                f"the ResourceVersion in the precondition ({options.resource_version}) does not match the "
                "ResourceVersion in record (). The object might have been modified",
            )

    async def delete(
        self, user: UserInfo, namespace: str, name: str, options: DeleteOptions
    ) -> PayloadRepositoryTag:
        ref = self._resolve(user, "delete", namespace, name)
        if not await self.inventory.exists(ref):
            raise not_found(name)
        self._check_preconditions(ref, options)
        if options.dry_run:
            # Fails where the delete would for the registry (deletes off, read-only, no delete
            # permission), with its answer: a dry run that succeeds is followed by the same request
            # deleting what it showed (docs/api.md).
            await self.inventory.check_delete(ref)
            # Answered as the delete would answer: kube-apiserver's dry run answers the object its
            # delete answers, and a client previews with it which image a delete would take (r1kubectl
            # L1). A read the delete would fail on fails the dry run the same way.
            try:
                digest = await self._digest_to_delete(ref)
            except RegistryNotFound:
                raise not_found(name) from None
            _audit(user, ref, digest, dry_run=True)
            return self._object(ref, _deleted(digest))
        try:
            digest = await self._delete_audited(user, ref)
        except RegistryNotFound:
            raise not_found(name) from None
        except RegistryConflict as error:
            raise conflict(ref.name, str(error)) from None
        return self._object(ref, _deleted(digest))

    async def _digest_to_delete(self, ref: TagRef) -> str | None:
        """For a dry run: the digest a delete of the tag would answer (one manifest HEAD); None for a
        dangling tag (listed, its manifest gone), which the delete answers without one; RegistryNotFound
        for a tag gone since the check, which the delete answers 404. The tag list tells the two apart
        after a 404, as the delete's own read does (r2kubectl L2)."""
        try:
            return await self.inventory.digest(ref)
        except RegistryNotFound:
            if await self.inventory.exists(ref):
                return None
            raise

    async def _delete_audited(
        self, user: UserInfo, ref: TagRef, expected: str | None = None, brought_back: Kind | None = None
    ) -> str | None:
        """``brought_back``: for a tag a deletecollection took in, what the late write left (`_audit`)."""
        key = (ref.repository, ref.tag)
        self.asked_by[key] = user.name
        ended: Deferred[None] | None = None
        try:
            digest = await self.inventory.delete(ref, expected)
        except GoesOn as going:
            ended = going.ended
            # The registry client finishes a delete that had begun writing and logs how it ended;
            # this line says who asked for it. One that had not begun was dropped: nothing to say.
            said, fields = _taken_in(brought_back)
            audit_log.info(
                "delete of tag {repository}:{tag} by {user}" + said + ": under way when its request ended",
                user=user.name,
                namespace=ref.namespace,
                repository=ref.repository,
                repositoryPath=ref.repository_path,
                tag=ref.tag,
                **fields,
            )
            going.ended.addCallback(lambda _: self.changed(ref.repository))
            raise
        except BaseException:
            self.changed(ref.repository)  # a failure half-way may have changed the registry
            raise
        finally:
            if ended is None:
                self._forget_asker(key, user.name)
            else:
                ended.addCallback(lambda _: self._forget_asker(key, user.name))
        self.changed(ref.repository)
        _audit(user, ref, digest, dry_run=False, brought_back=brought_back)
        return digest

    def _forget_asker(self, key: tuple[str, str], name: str) -> None:
        if self.asked_by.get(key) == name:  # unless another delete of the tag began since
            del self.asked_by[key]

    async def delete_collection(
        self,
        user: UserInfo,
        namespace: str,
        list_options: ListOptions,
        options: DeleteOptions,
        *,
        time_left: float | None = None,
    ) -> tuple[builtins.list[PayloadRepositoryTag], ListMeta]:
        """``time_left``: seconds left before the request's deadline as the call begins (counted from
        when the request was received: `ApiServer`); None, no deadline. Its waits (for a late write, a
        namespace's removal) end `DEADLINE_MARGIN` before it, so that the call answers its own error
        naming what it waited for, not the deadline's "get the tags again", which a look at once shows
        falsely done."""
        # Where this process's writes to the namespace would leave a tag, from the call's start on:
        # those that may still land as it begins, and each one sent until it ends. A tag-by-tag call
        # looks for what they left, also outside its selection (`_TagByTag.brought_back`).
        watch = self.late_writes.watch(namespace) if self.late_writes is not None else Watch(namespace)
        try:
            return await self._delete_collection(user, namespace, list_options, options, time_left, watch)
        finally:
            if self.late_writes is not None:
                self.late_writes.unwatch(watch)

    async def _delete_collection(
        self,
        user: UserInfo,
        namespace: str,
        list_options: ListOptions,
        options: DeleteOptions,
        time_left: float | None,
        watch: Watch,
    ) -> tuple[builtins.list[PayloadRepositoryTag], ListMeta]:
        # The selection is what the caller's own list shows, as `kubectl delete --all` sees it: an
        # answer that depended on tags the caller may not see would tell whether they exist. One
        # selected tag the caller may not delete refuses the whole request before anything goes.
        # As kube-apiserver's DeleteCollection: with a limit, the one page a list with the same
        # options shows (its continue token comes back for the next one); without, every page from
        # where continue points (the start when absent) to the end.
        called = self.late_writes.now() if self.late_writes is not None else 0.0
        cut = math.inf if time_left is None else called + time_left - DEADLINE_MARGIN
        # What the caller may see, decided once, before anything is read (as kube-apiserver authorizes
        # a request at its start): the selection and the late writes waited for both follow it. Taken
        # after the selection's registry read, a get revoked meanwhile dropped a write from the wait,
        # and the selection decided each path as it read it (review-unrev F3).
        sees_all, sees = self._seen_as_the_call_begins(user, namespace)

        def seen(at: str, path: str) -> bool:
            return at == namespace and sees(path)

        selection, selected_meta = await self._select(
            user, namespace, list_options, shown=False, readable=seen
        )
        if not is_namespace(namespace):
            # Nothing to delete where no namespace can be (an empty selection, read from nowhere); and
            # nothing to remove wholesale either (`_remove_namespace`).
            return [], ListMeta(resource_version=self.versions.current())
        refs = selection.refs
        # Whether the selection is gone is checked over all of it from its start, with no kept lists.
        unfiltered = attrs.evolve(list_options, limit=None, continue_=None)
        # The late writes it waits for and names: those of the repositories the caller may see, as it
        # saw them when selecting. One elsewhere cannot leave a tag its selection holds, and waiting for
        # it, or naming it, would tell a caller of one path of the namespace what happens in the others
        # (review-ds4 F1).
        visible = None if sees_all else self._visible_repositories(sees, refs)
        for ref in refs:
            if not self.authorizer.allowed(user, "delete", ref.namespace, ref.repository_path):
                raise access_denied(user.name, "deletecollection", namespace, None, ref.repository_path)
        if options.uid is not None or options.resource_version is not None:
            for ref in refs:
                self._check_preconditions(ref, options)
        meta = ListMeta(resource_version=self.versions.current(), continue_=selected_meta.continue_)
        if options.dry_run:
            await self._check_deletes(namespace, refs)
            # Its items carry no status, as a deletecollection's in a namespace being deleted: reading
            # each tag's digest took a manifest read per tag, 17-30 s for 10,000 tags where the check
            # takes 0.5 s, and past the request's deadline for some 20,000 (r2kubectl F1, N2, L1).
            for ref in refs:
                _audit(user, ref, None, dry_run=True)
            return [self._object(ref) for ref in refs], meta

        if (
            self.removal is not None
            and self._asks_whole_namespace(user, namespace, list_options, sees_all)
            and await self.removal.deleting(namespace)
        ):
            return await self._remove_namespace(user, namespace, refs, unfiltered, meta, cut)

        # Unpaged, the call asks for every tag its selector matches (all of the namespace without one):
        # a tag its process's own late write brought back after the selection was read is part of it.
        takes_back = list_options.limit is None and list_options.continue_ is None
        scope = _late_scope(namespace, visible, self._selected(list_options))
        passes = _TagByTag(self, user, namespace, dict.fromkeys(refs), unfiltered, scope, takes_back)
        began = self.late_writes.now() if self.late_writes is not None else 0.0
        # The wait for a late write ends with the budget, or before the request's deadline.
        deadline = min(began + self.removal_budget, cut)

        def watched() -> dict[Leave, Kind]:
            # Only where the call's look could list a tag (``scope``), as for the wait: a write of any
            # other cannot leave a tag the call asks for, and passing again for it made a stream of
            # other clients' deletes keep the call going (review r7own F1).
            return {
                leave: kind
                for leave, kind in watch.leaves.items()
                if scope is None or scope.admits(leave[0], leave[1])
            }

        todo: builtins.list[TagRef] | None = refs
        leaves: dict[Leave, Kind] = {}
        # The leaves a pass looked for, begun once their writes could no longer land.
        looked_for: set[Leave] = set()
        while True:
            work = passes.one_pass(todo, leaves)
            try:
                if cut != math.inf and self.late_writes is not None:
                    # While a write may land, the pass (its deletes and its look) ends by half the
                    # margin past the cut: the answer is 200 only after the write can no longer land,
                    # and else its 504, which the pass must leave time for. Unbounded, a slow tag list
                    # (review-ds6 F2) or a held DELETE (review-ds8 F1) ran it past the deadline, whose
                    # "get the tags again" came back while the write may land. With none, it goes on:
                    # the deadline's answer is true then.
                    clock = self.late_writes.clock
                    until = max(0.0, cut + DEADLINE_MARGIN / 2 - clock.seconds())
                    looked = await within(clock, until, work, cut_if=passes.may_land)
                else:
                    looked = await work
                if passes.cut_short:
                    raise DeadlineExpired(0.0)
            except (DeadlineExpired, RegistryError):
                # Cut, or a look the registry failed, while a write may land: the answer is the write's
                # 504 (the collection's when its own deletes went unanswered) whatever the look would
                # find, not the retriable 503 of the look's error, which drops the write (review-ds8 F2,
                # as a removal's: review-ds6 F4). It names no tag: none was seen.
                late = self._late_write(namespace, scope) or next(filter(None, passes.cut_short), None)
                unanswered = [ref for ref in passes.selected if ref in passes.pending]
                if unanswered:
                    raise _collection_incomplete(
                        namespace,
                        len(passes.selected),
                        [],
                        passes.failed,
                        unanswered,
                        passes.lasting,
                        self._latest(namespace, late, scope),
                        seen=False,
                    ) from None
                if late is None:
                    raise
                self._raise_late_write(namespace, len(passes.selected), late, scope)
            left = [ref for ref in looked.refs if ref in passes.selected]
            if left or passes.pending:
                unanswered = [ref for ref in passes.selected if ref in passes.pending]
                raise _collection_incomplete(
                    namespace,
                    len(passes.selected),
                    left,
                    passes.failed,
                    unanswered,
                    passes.lasting,
                    self._latest(namespace, self._late_write(namespace, scope), scope),
                )
            # Nor while a write of this process may still land in the namespace (a single delete's
            # re-tag, a cascade's repair: `LateWrites`), as for the namespace's removal: the namespace
            # controller also deletes tag by tag when the namespace's state could not be read.
            waited = await self._waited_for_late_writes(namespace, len(passes.selected), deadline, scope)
            # None may land now. Each write of the call's time (out as it began, or sent since) may have
            # landed after the selection was read, or after a look, and left the record since (answered,
            # or its time passed) without this call waiting for it: a pass begun now sees what it left.
            # Not needed for one a pass begun after it could no longer land looked for, nor for one of
            # a selected tag answered before the last look began, which counted that tag (the call's own
            # deletes' re-tags among them).
            leaves = watched()
            unseen = [
                leave
                for leave in leaves
                if leave not in looked_for and not passes.seen_after(leave, watch.answered.get(leave))
            ]
            if not waited and not unseen:
                return [passes.deleted[ref] for ref in passes.selected if ref in passes.deleted], meta
            if self.late_writes is not None and self.late_writes.now() >= deadline:
                # Writes sent during each pass would make it pass again with no other end (review r7own
                # F1): none once the budget or the cut is spent, also after a wait that ended there (a
                # pass begun then ran past the deadline unbounded, no write left to cut it: review r8own
                # N1). Not a 200, which would hide a tag such a write may have left: the retriable 503
                # naming them, whose retry selects them (none named after a wait whose writes left
                # nothing the call's look lists, or nothing known).
                raise _collection_unlooked(namespace, len(passes.selected), unseen)
            # Delete what they left, and look again.
            looked_for = set(leaves)
            todo = None

    async def _check_deletes(self, namespace: str, refs: builtins.list[TagRef]) -> None:
        """A dry-run deletecollection's check: the real one's answer (`_collection_incomplete`) when
        the registry would refuse the deletes of ``refs`` (deletes off, read-only, no delete
        permission in a repository). The check is a repository's, not a tag's (a token registry grants
        delete per repository; `Inventory.check_delete`, believed a while for its repository once
        passed): each repository of the selection is checked once, with its first tag, up to
        `check_concurrency` at a time and none held for those not reached (a selection over thousands
        of repositories neither starts thousands of calls at once nor runs out of stack: 8f5a64c).
        The tags of a refused repository are left as the real request leaves them; those its answer
        names are checked for their own words."""
        if not refs:
            return
        first: dict[str, TagRef] = {}
        for ref in refs:
            first.setdefault(ref.repository, ref)
        refused: dict[str, RegistryError] = {}

        async def check(ref: TagRef) -> None:
            try:
                await self.inventory.check_delete(ref)
            except RegistryError as error:
                refused[ref.repository] = error

        await bounded_each(check, first.values(), self.check_concurrency)
        if not refused:
            return  # deletes work in every repository selected
        left = [ref for ref in refs if ref.repository in refused]
        named = left[:NAMED_LEFT]

        async def words(ref: TagRef) -> RegistryError:
            if first[ref.repository] is ref:
                return refused[ref.repository]
            try:
                await self.inventory.check_delete(ref)
            except RegistryError as error:
                return error
            return refused[ref.repository]  # passed meanwhile: said as its repository's check was

        errors = await bounded_map(words, named, self.check_concurrency)
        failed = {ref: str(error) for ref, error in zip(named, errors, strict=True)}
        lasting = {ref for ref, error in zip(named, errors, strict=True) if error.lasting}
        lasting.update(ref for ref in left[NAMED_LEFT:] if refused[ref.repository].lasting)
        raise _collection_incomplete(namespace, len(refs), left, failed, (), lasting)

    async def _left_by_late_writes(
        self, refs: builtins.list[TagRef], leaves: dict[Leave, Kind], failed: dict[TagRef, str]
    ) -> dict[TagRef, str]:
        """Those of ``refs`` (selected tags listed again after the wait for this process's late writes)
        that point where such a write would leave them (``leaves``: the call's `Watch`) with content of
        payloadtags' own (a re-tag's copy, a repair's placeholder), with that digest: what it left,
        deleted next at that digest only (a push of the name between this look and the delete is kept
        too: `Registry.delete_tag`'s ``expected``). Any other was pushed again meanwhile by someone
        else, or may have been (at a restore's digest: the client's own content, which a push of that
        very image gives too), and is kept: its reason goes to ``failed``, and the look that follows
        makes it the retriable 503 a push of the same name before the first look gets."""

        async def where(ref: TagRef) -> str | None:
            try:
                return await self.inventory.digest(ref)
            except RegistryNotFound:
                return None  # gone meanwhile, or dangling: the look that follows tells
            except RegistryError as error:
                failed[ref] = str(error)
                return None

        found = await bounded_map(where, refs, self.delete_concurrency)
        left: dict[TagRef, str] = {}
        for ref, digest in zip(refs, found, strict=True):
            if digest is None:
                continue
            kind = leaves.get((ref.repository, ref.tag, digest))
            if kind == RESTORE:
                failed[ref] = (
                    f"points at {digest} again, where a restore of payloadtags that went unanswered puts "
                    "it back (what it held before a failed delete), as a push of that very image does: "
                    "kept here"
                )
            elif kind is not None:
                left[ref] = digest
            else:
                failed[ref] = (
                    f"points at {digest}, not where a write of payloadtags that went unanswered would "
                    "leave it: pushed again meanwhile, so kept"
                )
        return left

    async def _still_listed(
        self, look: Coroutine[Any, Any, tuple[Page, ListMeta]], refs: builtins.list[TagRef], until: float
    ) -> builtins.list[TagRef]:
        """Those of ``refs`` that ``look`` (a selection) lists, if it ends before ``until`` (on the clock
        of `late_writes`); else none, the look cancelled. A look the registry fails names none too: the
        answer it is for is the write's 504 whatever it finds, not the retriable 503 of the look's
        error, which would drop the write (review-ds6 F4)."""
        try:
            if self.late_writes is None or until == math.inf:
                again = (await look)[0].refs
            else:
                clock = self.late_writes.clock
                again = (await within(clock, max(0.0, until - clock.seconds()), look))[0].refs
        except (DeadlineExpired, RegistryError):
            return []
        selected = set(refs)
        return [ref for ref in again if ref in selected]

    def _seen_as_the_call_begins(self, user: UserInfo, namespace: str) -> tuple[bool, Callable[[str], bool]]:
        """Whether ``user`` may see every repository path of ``namespace``, and whether a given one, as
        the rules stand now (`readable_as_now`): a deletecollection's view, decided as it begins, as
        kube-apiserver authorizes a request once. The paths of the namespace's late writes are decided
        at once, where the authorizer gives no rules to keep."""
        if self.authorizer.allowed_everywhere(user, "get", namespace):
            return True, lambda path: True
        readable = readable_as_now(self.authorizer, user, namespace)
        if self.late_writes is not None:
            for repository in self.late_writes.repositories(namespace):
                readable(repository.partition("/")[2])
        return False, readable

    def _visible_repositories(self, sees: Callable[[str], bool], refs: builtins.list[TagRef]) -> Within:
        """The repositories whose tags the caller sees (``sees``: `_seen_as_the_call_begins`), as
        `LateWrites` scopes a look. Decided as the call begins: decided at each look, a get revoked
        during the call dropped a write that may bring back a tag of the selection from the wait, and
        the call answered 200 (review-ds6 F1). Those of the selected ``refs`` are always in."""
        selected = {ref.repository for ref in refs}
        return lambda repository: repository in selected or sees(repository.partition("/")[2])

    async def _waited_for_late_writes(
        self, namespace: str, total: int, deadline: float, scope: Scope | None = None
    ) -> bool:
        """Wait until no write of this process may land in ``namespace`` any more, before ``deadline``
        (on the clock of `late_writes`: the budget's end, or a margin before the request's deadline;
        True: waited; False: none may land); else a 504 without Retry-After that names the write. One
        still out (sent, not answered) is waited for too: its answer may come before the deadline, and
        then what it left is deleted (`LateWrites.wait_out`). ``scope``: only the writes it admits
        (`LateWrites.pending`)."""
        late_writes = self.late_writes
        if late_writes is None or self._late_write(namespace, scope) is None:
            return False
        late = await late_writes.wait_out(namespace, deadline, scope)
        if late is None:
            return True
        self._raise_late_write(namespace, total, late, scope)

    def _late_write(self, namespace: str, scope: Scope | None) -> tuple[str, float] | None:
        """The write of this process that may land in ``namespace`` latest (what, until when), of those
        ``scope`` admits; None when none may any more."""
        if self.late_writes is None:
            return None
        late = self.late_writes.pending(namespace, scope)
        if late is None or late[1] <= self.late_writes.now():
            return None
        return late

    def _late_write_said(
        self, namespace: str, late: tuple[str, float], scope: Scope | None
    ) -> tuple[str, str]:
        """``late`` (what, until when) for a message: when it may land, and what to do before looking."""
        late_writes = self.late_writes
        assert late_writes is not None
        what, until = late
        left = until - late_writes.now()
        if left == math.inf:
            # No length from now: its request may not even have left (`LateWrites.out_within`).
            return (
                f"the registry has not answered a write made while {what} yet, and may carry it out "
                f"{late_writes.out_within(namespace, scope)}",
                "once that time has passed, list the tags",
            )
        return (
            f"the registry did not answer a write made while {what}, and may still carry it out "
            f"within about {math.ceil(left)}s",
            "wait that long, then list the tags",
        )

    def _latest(self, namespace: str, late: tuple[str, float] | None, scope: Scope | None) -> str:
        """For the collection's 504 over its own unanswered deletes: the write ``late`` that may land
        latest of those the call waits for (its own among them), said as `_raise_late_write` says it;
        "" for none. Its own deletes' bounds alone (about a second) hid a longer write in the same
        repositories: a look after them showed the namespace falsely done (review-ds8 F5)."""
        return "" if late is None else self._late_write_said(namespace, late, scope)[0]

    def _raise_late_write(
        self, namespace: str, total: int, late: tuple[str, float], scope: Scope | None
    ) -> NoReturn:
        """The 504 without Retry-After of a deletecollection cut while ``late`` (what, until when) may
        land, naming it."""
        when, then = self._late_write_said(namespace, late, scope)
        landed = (
            "it would remove that manifest and every tag on it"
            if landing_of(late[0]) is Landing.REMOVES_MANIFEST
            else "it would leave the tag in the namespace"
        )
        raise _removal_unanswered(
            namespace,
            total,
            [],
            f"{when} ({landed}): {then} (kubectl get) and delete again only those still there",
        )

    def _asks_whole_namespace(
        self, user: UserInfo, namespace: str, selection: ListOptions, sees_all: bool
    ) -> bool:
        """Whether a deletecollection asks for all of ``namespace`` and may have it: no selector, no
        page (limit, continue), and a caller who may see (``sees_all``, as the call began) and delete
        every path there. Only then may its content go wholesale (`_remove_namespace`), which takes
        tags pushed after the selection was read as well."""
        return (
            selection.limit is None
            and selection.continue_ is None
            and not selection.labels.requirements
            and not selection.fields.requirements
            and sees_all
            and self.authorizer.allowed_everywhere(user, "delete", namespace)
        )

    async def _remove_namespace(
        self,
        user: UserInfo,
        namespace: str,
        refs: builtins.list[TagRef],
        selection: ListOptions,
        meta: ListMeta,
        cut: float,
    ) -> tuple[builtins.list[PayloadRepositoryTag], ListMeta]:
        """``cut``: when its work ends at the latest, on the clock of `late_writes` (a margin before the
        request's deadline), if before the removal's budget."""
        assert self.removal is not None
        why = ""
        pending = False
        lasting = False
        stalled = False
        within = self.removal_budget
        if self.late_writes is not None and cut - self.late_writes.now() < within:
            # Its waits (for a late write, for work under way) end before the request's deadline too:
            # its own 504 naming the write, not the deadline's "get the tags again" (review-ds2 F2).
            # To a tenth of a second: its errors name it ("not finished within 1.9s").
            within = max(0.0, round(cut - self.late_writes.now(), 1))
        try:
            # Told as each delete ends: a list made while the removal goes on (up to its budget) must
            # not join the record of one made before, whose watch is sent the removal's deletes
            # (review r2moved F1).
            await self.removal.remove(namespace, within, changed=self.changed)
        except RegistryError as error:
            why = str(error)
            # A write of the removal the registry may still carry out (a repair's placeholder PUT):
            # the namespace may list empty now and hold a tag once it lands, so no 200 (the error
            # says until when; a call after that deletes what it left).
            pending = error.unanswered
            lasting = error.lasting and not error.unanswered
            stalled = error.stalled and not error.unanswered
        finally:
            # Again for every repository it selected, whoever deleted there: work it waited for may
            # tell no hub (a leader's cascade without `changed`). At most one move more per list since.
            for repository in dict.fromkeys(ref.repository for ref in refs):
                self.changed(repository)
        look = self._select(user, namespace, selection, authorize=False, shown=False)
        if pending:
            # Its answer is this 504 whatever the look finds, which only names the tags still there:
            # the look gets half the margin (a slow tag list ran past the deadline, whose "get the tags
            # again" came back while the write may land: review-ds4 F2), and cut, it names none.
            left = await self._still_listed(look, refs, cut + DEADLINE_MARGIN / 2)
            raise _removal_unanswered(namespace, len(refs), left, why)
        again = (await look)[0].refs
        selected = set(refs)
        left = [ref for ref in again if ref in selected]
        if left:
            raise _collection_incomplete(
                namespace,
                len(refs),
                left,
                dict.fromkeys(left, why or "still listed"),
                lasting=left if lasting else (),
                stalled=stalled,
            )
        for ref in refs:
            _audit(user, ref, None, dry_run=False)
        return [self._object(ref) for ref in refs], meta


@attrs.define(eq=False)
class _TagByTag:
    """A deletecollection that deletes its selection tag by tag (`TagsService.delete_collection`, when
    its namespace's content does not go wholesale), pass after pass: each pass's deletes and look, how
    one is cut, and what they have done so far, which its answer names."""

    service: TagsService
    user: UserInfo
    namespace: str
    # The call's selection, and what its own late writes brought back (`brought_back`): only those
    # are deleted, and looked for. A dict for an ordered set: its keys, in the order its answer names
    # them, with no second collection to keep in step.
    selected: dict[TagRef, None]
    unfiltered: ListOptions  # what a look reads: all of the selection from its start, no kept lists
    scope: Scope | None  # whose late writes it waits for and names (`_late_scope`)
    # Whether a tag outside the selection that its process's own late write brought back is part of
    # the call (an unpaged call: `TagsService.delete_collection`).
    takes_back: bool
    deleted: dict[TagRef, PayloadRepositoryTag] = attrs.Factory(dict)
    failed: dict[TagRef, str] = attrs.Factory(dict)
    pending: set[TagRef] = attrs.Factory(set)  # failed with a write the registry may still carry out
    lasting: set[TagRef] = attrs.Factory(set)  # failed in a way a retry meets again
    # After a wait for a late write: where each tag it may have left was checked to be (passed to
    # the delete, which reads it in its repository's turn: a push of its name since is kept).
    checked: dict[TagRef, str] = attrs.Factory(dict)
    # Set when a pass is cut (`may_land`): the late write seen then, if any.
    cut_short: list[tuple[str, float] | None] = attrs.Factory(list)
    # When the last pass's look began, as `LateWrites.answers` counts.
    looked_at: int = -1
    # The tags the pass took in (`brought_back`), each with what the late write that brought it back
    # left there: its audit line says so.
    taken_in: dict[TagRef, Kind] = attrs.Factory(dict)

    async def remove(self, ref: TagRef) -> PayloadRepositoryTag | None:
        service = self.service
        try:
            digest = await service._delete_audited(
                self.user, ref, self.checked.get(ref), self.taken_in.get(ref)
            )
        except RegistryNotFound:
            return None  # deleted by someone else meanwhile: the goal is reached
        except RegistryError as error:
            # The others go on; what is left is named below and the caller retries.
            self.failed[ref] = str(error)
            if error.unanswered:
                self.pending.add(ref)
            elif error.lasting:
                self.lasting.add(ref)
            return None
        return service._object(ref, _deleted(digest))

    async def one_pass(self, todo: builtins.list[TagRef] | None, leaves: dict[Leave, Kind]) -> Page:
        """Deletes ``todo`` (None: once the late writes of the call's time can no longer land, those of
        the selection they may have left, looked for first, and those they brought back:
        `brought_back`), then looks at the tags: what the look lists."""
        service = self.service
        # Taken in by this pass only: a tag taken in before is selected now, and what brings it back
        # again may be this call's own delete of it.
        self.taken_in = {}
        if todo is None:
            listed, _ = await service._select(
                self.user, self.namespace, self.unfiltered, authorize=False, shown=False
            )
            self.checked = await service._left_by_late_writes(
                [ref for ref in listed.refs if ref in self.selected], leaves, self.failed
            )
            self.checked.update(await self.brought_back(listed.refs, leaves))
            todo = list(self.checked)
        order = _across_repositories(todo)
        outcome = dict(
            zip(order, await bounded_map(self.remove, order, service.delete_concurrency), strict=True)
        )
        self.deleted.update((ref, obj) for ref, obj in outcome.items() if obj is not None)
        if self.cut_short:
            raise DeadlineExpired(0.0)  # cut as the deletes ended: no unbounded look after it
        # 200 says the selection is gone, so look: the namespace controller takes it as done. A
        # tag listed again (a failed delete, a push of the same name meanwhile) makes it a
        # retriable 503; tags first pushed after the selection was read are not part of this
        # request.
        if service.late_writes is not None:
            self.looked_at = service.late_writes.answers()
        return (
            await service._select(self.user, self.namespace, self.unfiltered, authorize=False, shown=False)
        )[0]

    async def brought_back(
        self, listed: builtins.list[TagRef], leaves: dict[Leave, Kind]
    ) -> dict[TagRef, str]:
        """Of ``listed`` (a look begun once the writes of ``leaves``, the call's `Watch`, could no longer
        land), the tags outside the selection at the leave of such a write, when the call takes them
        (`takes_back`): from now on part of the selection. Such a write (a single delete's re-tag of a
        tag another call deleted meanwhile, held by the network) may have brought the tag back after the
        selection read it as gone; it existed before and after that delete as a client sees it, and
        a 200 for every tag the selector matches must not leave it (the slow tier's seed 80302).

        One at the digest of a re-tag's copy or a repair's placeholder (content only payloadtags
        writes) is deleted there, where the caller may delete it. Any other such tag is not deleted and
        not left to a 200: it is named (`failed`), and the look that follows makes the retriable 503,
        whose retry selects it: at a restore's digest (the client's own content: a push of that very
        image cannot be told from it), where the caller may not delete it, where it could not be read,
        or listed with no manifest. One at another digest was pushed after the selection by someone
        else: not part of this request, and not named."""
        if not self.takes_back or not leaves:
            return {}
        named = {(repository, tag) for repository, tag, _ in leaves}
        candidates = [
            ref for ref in listed if ref not in self.selected and (ref.repository, ref.tag) in named
        ]
        if not candidates:
            return {}
        service = self.service

        async def where(ref: TagRef) -> str | RegistryError | None:
            try:
                return await service.inventory.digest(ref)
            except RegistryNotFound:
                return None
            except RegistryError as error:
                return error

        found = await bounded_map(where, candidates, service.delete_concurrency)
        taken: dict[TagRef, str] = {}
        why = "a write of payloadtags that went unanswered may have brought it back after the selection"
        for ref, digest in zip(candidates, found, strict=True):
            if isinstance(digest, RegistryError):
                reason = f"{why}; where it points could not be read: {digest}"
            elif digest is None:
                reason = f"{why}; it is listed but names no manifest"
            elif (ref.repository, ref.tag, digest) not in leaves:
                continue
            elif leaves[(ref.repository, ref.tag, digest)] == RESTORE:
                reason = (
                    f"{why}: a restore, to {digest}, what it held before a failed delete, as a push of that "
                    "very image does; not deleted by this request"
                )
            elif not service.authorizer.allowed(self.user, "delete", ref.namespace, ref.repository_path):
                reason = f"{why} (to {digest}); {self.user.name} may not delete it"
            else:
                taken[ref] = digest
                self.taken_in[ref] = leaves[(ref.repository, ref.tag, digest)]
                reason = ""
            self.selected[ref] = None
            if reason:
                self.failed[ref] = reason
        return taken

    def seen_after(self, leave: Leave, answered: int | None) -> bool:
        """Whether the last look counted what a write answered at ``answered`` (`LateWrites.answers`;
        None: not answered) left at ``leave``: a selected tag, listed there if it was, begun after that
        answer."""
        return (
            answered is not None
            and answered <= self.looked_at
            and _tag_at(self.namespace, leave) in self.selected
        )

    def may_land(self) -> bool:
        """Whether a write may land as the pass is cut: its own deletes' unanswered, or one of the
        late writes it waits for (kept: what its 504 names)."""
        late = self.service._late_write(self.namespace, self.scope)
        if self.pending or late is not None:
            self.cut_short.append(late)
        return bool(self.cut_short)
