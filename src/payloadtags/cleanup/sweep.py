"""The sweep: registry content whose namespace does not exist is handed to a cascade.

It catches what the watch loop cannot see: namespaces deleted while no replica was leading, content
pushed by other means under a name that never was a namespace, cascades of a crashed leader.

Safety, in order (a namespace that exists, or is created while the sweep runs, is never touched):

1. The decision starts from one consistent snapshot of the synced namespace store (names at one
   resourceVersion), taken *before* the catalog is read: content of a namespace created later shows
   up as a candidate, and is then ruled out by the checks below, never the other way round.
2. Each candidate is re-checked in the store (its creation may have arrived meanwhile) and then with
   the cluster API itself (GET the namespace): only a 404 or a Terminating namespace lets it go on.
   An API error means "cannot tell": the namespace is skipped, never treated as gone.
3. The cascade then re-checks right before every single delete, with the store and with the same
   API GET (every cascade does, whatever started it; a GET sent after the delete asked, shared by
   the deletes that ask while the one before is in flight), and stops for good when the namespace
   exists again.

Repositories whose first segment is not a valid namespace name, or that have no path below it, are
never candidates (`payloadtags.names.split_repository`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from payloadtags.cleanup.cascade import Aborted, Cascade, Unconfirmed
from payloadtags.cleanup.metrics import CleanupMetrics
from payloadtags.cleanup.watcher import NamespaceView, is_terminating, uid_of
from payloadtags.inventory import CatalogCursor
from payloadtags.kube import ClusterClient, KubeApiError, KubeError, resource_path
from payloadtags.registry import Catalog

log = Logger()

ABSENT = "absent"
TERMINATING = "terminating"
EXISTS = "exists"
UNKNOWN = "unknown"


async def namespace_state(
    kube: ClusterClient, name: str, *, uid: str | None = None
) -> tuple[str, str | None]:
    """Ask the cluster API: (ABSENT | TERMINATING | EXISTS | UNKNOWN, why when UNKNOWN or EXISTS).

    With `uid` (the namespace whose deletion is being cleaned up), a namespace of that name with
    another uid is EXISTS even when Terminating: it was created anew, and what it holds is not the
    deleted namespace's content (its own deletion triggers its own cleanup)."""
    try:
        obj = await kube.get(resource_path("", "v1", "namespaces", name=name))
    except KubeApiError as e:
        if e.code == 404:
            return ABSENT, None
        return UNKNOWN, str(e)
    except KubeError as e:
        return UNKNOWN, str(e)
    found = uid_of(obj)
    if uid is not None and found != uid:
        return EXISTS, f"created anew (uid {found}, the deleted one was {uid})"
    return (TERMINATING if is_terminating(obj) else EXISTS), None


async def namespace_uid(kube: ClusterClient, name: str) -> str | None:
    """The uid of the namespace object of that name; None when there is none or the API cannot tell."""
    try:
        return uid_of(await kube.get(resource_path("", "v1", "namespaces", name=name)))
    except KubeError:
        return None


def require_gone(namespace: str, state: str, why: str | None) -> None:
    """A cascade's `Confirm` on the cluster API's answer (`namespace_state`): deleting goes on only
    while the namespace is Terminating or absent."""
    if state == EXISTS:
        raise Aborted("the cluster API says the namespace exists" + (f": {why}" if why else ""))
    if state not in (ABSENT, TERMINATING):
        raise Unconfirmed(f"cannot confirm that namespace {namespace} is gone: {why}")


@attrs.frozen
class SweepResult:
    resource_version: str | None
    repositories_seen: int
    # Namespaces with content and no Namespace object in the snapshot.
    candidates: tuple[str, ...]
    # Confirmed gone and handed to a cascade (or, in a dry run, reported only).
    orphans: tuple[str, ...]
    skipped_existing: tuple[str, ...]
    skipped_unconfirmed: tuple[str, ...]
    dry_run: bool
    duration: float


@attrs.define
class Sweep:
    registry: Catalog
    clock: IReactorTime
    view: NamespaceView
    # The authoritative check: `namespace_state` bound to a KubeClient.
    check: Callable[[str], Awaitable[tuple[str, str | None]]]
    # Start (or queue) the cascade of a confirmed orphan namespace.
    hand_over: Callable[[str], None]
    cascade: Cascade
    dry_run: bool = False
    page_size: int = 1000
    metrics: CleanupMetrics = attrs.Factory(CleanupMetrics)

    async def run(self) -> SweepResult:
        """One sweep. Raises RegistryError when the catalog cannot be read (nothing is decided then)."""
        started = self.clock.seconds()
        resource_version, existing = self.view.snapshot()
        candidates: dict[str, int] = {}
        seen = 0
        cursor = CatalogCursor(self.registry, None, None, self.page_size)
        while not cursor.done:
            for repository, namespace, _path in await cursor.next():
                if repository in cursor.guessed:
                    # Handed out only because 2.8's next seek leaves it out, maybe a directory that is
                    # no repository; always in the namespace of a name the catalog listed.
                    continue
                seen += 1
                if namespace not in existing:
                    candidates[namespace] = candidates.get(namespace, 0) + 1
        orphans: list[str] = []
        skipped_existing: list[str] = []
        skipped_unconfirmed: list[str] = []
        for namespace in sorted(candidates):
            if self.view.live(namespace):
                skipped_existing.append(namespace)
                continue
            state, why = await self.check(namespace)
            if state == EXISTS:
                skipped_existing.append(namespace)
                continue
            if state == UNKNOWN:
                log.warn(
                    "Sweep: cannot confirm that namespace {namespace} is gone ({error}); leaving its content",
                    namespace=namespace,
                    error=why,
                )
                skipped_unconfirmed.append(namespace)
                continue
            orphans.append(namespace)
            if self.dry_run:
                contents = await self.cascade.contents(namespace)
                log.info(
                    "Sweep (dry run): would delete {tags} tag(s) in {repositories} repositories of "
                    "namespace {namespace}, which does not exist",
                    namespace=namespace,
                    tags=contents.tags,
                    repositories=contents.repositories,
                )
            else:
                log.info(
                    "Sweep: namespace {namespace} does not exist ({state}); removing its content "
                    "({repositories} repositories)",
                    namespace=namespace,
                    state=state,
                    repositories=candidates[namespace],
                )
                self.hand_over(namespace)
        result = SweepResult(
            resource_version=resource_version,
            repositories_seen=seen,
            candidates=tuple(sorted(candidates)),
            orphans=tuple(orphans),
            skipped_existing=tuple(skipped_existing),
            skipped_unconfirmed=tuple(skipped_unconfirmed),
            dry_run=self.dry_run,
            duration=self.clock.seconds() - started,
        )
        self.metrics.sweeps_total += 1
        self.metrics.sweep_orphans_found_total += len(orphans)
        if not self.dry_run:
            self.metrics.sweep_orphans_cleaned_total += len(orphans)
        self.metrics.sweep_skipped_existing_total += len(skipped_existing)
        self.metrics.sweep_skipped_unconfirmed_total += len(skipped_unconfirmed)
        self.metrics.last_sweep_timestamp_seconds = self.clock.seconds()
        log.info(
            "Sweep done: {repositories} repositories, {orphans} orphan namespace(s){dry}, "
            "{existing} skipped as existing, {unconfirmed} unconfirmed, in {duration:.2f}s",
            repositories=seen,
            orphans=len(orphans),
            dry=" (dry run)" if self.dry_run else "",
            existing=len(skipped_existing),
            unconfirmed=len(skipped_unconfirmed),
            duration=result.duration,
        )
        return result
