"""The namespace cleanup controller: leader election, the namespace watch loop, cascades, sweeps.

Every replica runs a `CleanupController`; only the one holding the Lease does anything: it runs the
namespace reflector, a cascade for every namespace that is Terminating or gone, and the sweep at
start and then periodically. When it stops leading, its work is cancelled before the Lease can pass
on (and every delete checks leadership right before it leaves).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from payloadtags.cleanup.cascade import Aborted, Cascade, CascadeRegistry, CascadeResult, Late
from payloadtags.cleanup.leader import LeaderElectionOptions, LeaderElector
from payloadtags.cleanup.metrics import CleanupMetrics
from payloadtags.cleanup.sweep import Sweep, SweepResult, namespace_state, require_gone
from payloadtags.cleanup.watcher import NAMESPACES_PATH, NamespaceTriggers, NamespaceView
from payloadtags.deferreds import cancel_and_wait
from payloadtags.kube import Backoff, ClusterClient, KubeError, Reflector
from payloadtags.registry import LateWrites
from payloadtags.registry.errors import RegistryError
from payloadtags.validators import positive

log = Logger()

SWEEP = "sweep"

# Why a trigger came and, for the watch's, the uid of the namespace object deleted.
Trigger = tuple[str, str | None]


@attrs.frozen
class CleanupOptions:
    # Seconds between sweeps; 0 sweeps only when this replica starts leading.
    sweep_period: float = 3600.0
    # Report what the sweep would delete, delete nothing (cascades of deleted namespaces still run).
    sweep_dry_run: bool = False
    # Registry requests in flight for one namespace's cascade.
    cascade_concurrency: int = attrs.field(default=4, validator=positive)
    # Namespaces cleaned at the same time.
    namespace_concurrency: int = attrs.field(default=2, validator=positive)
    catalog_page_size: int = attrs.field(default=1000, validator=positive)
    # Backoff of a cascade whose pass failed (registry down, read-only, …), and of a failed sweep.
    retry_initial: float = attrs.field(default=1.0, validator=positive)
    retry_cap: float = attrs.field(default=30.0, validator=positive)
    # Without leader election this replica always leads: for a single replica only.
    leader_elect: bool = True
    leader_election: LeaderElectionOptions = attrs.Factory(LeaderElectionOptions)
    # The namespace reflector: watch length and reconnect backoff (see payloadtags.kube.Reflector).
    watch_timeout: float = 300.0
    watch_backoff: Backoff = attrs.Factory(Backoff)
    # How long a repair's write that went unanswered may still land: a cascade does not end before
    # (`Cascade.late_write_grace`; the server gives LATE_WRITE_GRACE x the registry timeout).
    late_write_grace: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.sweep_period < 0:
            raise ValueError("the sweep period must not be negative")
        if self.retry_cap < self.retry_initial:
            raise ValueError("retry_cap must be at least retry_initial")


class CleanupController:
    """``CleanupController(reactor, kube, registry, options).start()``; ``await .stop()`` at shutdown."""

    def __init__(
        self,
        reactor: IReactorTime,
        kube: ClusterClient,
        registry: CascadeRegistry,
        options: CleanupOptions | None = None,
        *,
        metrics: CleanupMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        late_writes: LateWrites | None = None,
        on_failure: Callable[[str, KubeError, bool], bool] | None = None,
        before_release: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``before_release``: what a leader's `stop` waits for before it releases the Lease
        (`LeaderElector`'s)."""
        self._clock = reactor
        # Told each failure of the namespace watch (`Reflector.on_failure`): the server's
        # `ClusterAccessLog`, which says a refusal, rejected credentials, an unreachable API or one
        # that breaks off or does not answer once for all its reflectors, where this one warned on
        # each retry.
        self._on_failure = on_failure
        self._kube = kube
        self._registry = registry
        self.options = options or CleanupOptions()
        self.metrics = metrics or CleanupMetrics()
        self.cascade = Cascade(
            registry,
            reactor,
            concurrency=self.options.cascade_concurrency,
            page_size=self.options.catalog_page_size,
            backoff=self._retry_backoff,
            metrics=self.metrics,
            late_write_grace=self.options.late_write_grace,
            # Shared with the process's deletecollection removals and its registry client
            # (`LateWrites`): the writes of each are waited out by all.
            late_writes=late_writes if late_writes is not None else LateWrites(reactor),
        )
        # Told each repository as a delete of its cascades there ends (`Cascade.run`): the server's
        # watch hub, so that a list made while a cascade runs does not join the record of one made
        # before its deletes (review r2moved F1, as for a deletecollection's removal).
        self.changed: Callable[[str], None] | None = None
        self.elector: LeaderElector | None = None
        if self.options.leader_elect:
            self.elector = LeaderElector(
                kube,
                reactor,
                self.options.leader_election,
                on_started_leading=self._start_leading,
                on_stopped_leading=self._stop_leading,
                metrics=self.metrics,
                monotonic=monotonic,
                before_release=before_release,
            )
        self._leading = False
        self._started = False
        self._reflector: Reflector | None = None
        self._view: NamespaceView | None = None
        self._lead_task: Deferred[None] | None = None
        # Set by `stop`: the cascades it cancels are cut off by a shutdown, not by a lost Lease.
        self._shutting_down = False
        self._slots = DeferredSemaphore(self.options.namespace_concurrency)
        # namespace -> its cascade task; a trigger for a namespace already being cleaned marks it
        # to run once more (with the latest trigger) instead of starting a second cascade.
        self._running: dict[str, Deferred[None]] = {}
        # namespace -> its cascade's hold on a worker: a cascade queued for one, or backing off
        # without one, cleans nothing (`cleaning`).
        self._workers: dict[str, _Worker] = {}
        self._again: dict[str, Trigger] = {}
        #: Told each namespace a cascade of this controller found empty: the server's
        #: `NamespaceRemover.forget`, whose deletecollection walk of it is then of no more use.
        self.emptied: Callable[[str], None] = lambda namespace: None
        #: The most recent cascade results, newest last (for tests, benchmarks, debugging).
        self.results: collections.deque[CascadeResult] = collections.deque(maxlen=200)
        #: The most recent sweep result.
        self.last_sweep: SweepResult | None = None

    # -- public ----------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        # The elector's word as well: past its renew deadline it no longer leads, even while the
        # timer that would tell us (`_stop_leading`) is late because the wall clock stepped back.
        return self._leading and (self.elector is None or self.elector.is_leader)

    @property
    def busy(self) -> bool:
        """Cascades are running or queued."""
        return bool(self._running)

    def cleaning(self, namespace: str) -> Deferred[None] | None:
        """The task cleaning this namespace now (this replica leads and runs one on a worker), else
        None: a deletecollection waits for it, but not for one queued for a worker (busy with other
        namespaces) or backing off, which would have it wait out its budget with nothing done.
        Waiting on it must not cancel it: follow it with another Deferred."""
        worker = self._workers.get(namespace)
        if worker is None or not worker.held or namespace not in self._running:
            return None
        # Fires when the cascade gives its worker up, to back off or because it ended: a call waiting
        # then looks again, and does the work itself while the cascade waits.
        return worker.stint

    @property
    def synced(self) -> bool:
        """This replica leads and its namespace store has completed its first list."""
        return self._view is not None and self._view.synced

    def start(self) -> None:
        if self._started:
            raise RuntimeError("cleanup controller already started")
        self._started = True
        self._shutting_down = False
        if self.elector is not None:
            self.elector.start()
        else:
            log.info("Namespace cleanup: leader election disabled; this replica cleans up alone")
            self._start_leading()

    async def stop(self, *, release: bool = True) -> None:
        """Stop all work; a leader then releases its Lease so another replica takes over at once.

        ``release=False`` leaves the Lease as it is, which is what a crash looks like to the other
        replicas (they take over once it expires): for tests and failure drills."""
        if not self._started:
            return
        self._started = False
        self._shutting_down = True
        if self.elector is not None:
            await self.elector.stop(release=release)
        await self._stop_leading()

    async def check_health(self) -> None:
        """A /healthz check (name it ``leaderElection``): fails only when the renew loop is stuck."""
        if self.elector is not None:
            await self.elector.check_health()

    async def sweep_now(self) -> SweepResult:
        """Run one sweep now (the leader only, with a synced namespace store)."""
        if not self._leading or self._view is None:
            raise RuntimeError("only the leader sweeps")
        await self._wait_synced()
        return await self._sweep_once()

    # -- leadership ------------------------------------------------------------------------------

    def _start_leading(self) -> None:
        self._leading = True
        options = self.options
        self._reflector = Reflector(
            self._kube,
            NAMESPACES_PATH,
            self._clock,
            watch_timeout=options.watch_timeout,
            backoff=attrs.evolve(options.watch_backoff),
            name="namespaces (cleanup)",
            on_failure=self._on_failure,
        )
        self._view = NamespaceView(self._reflector)
        self._reflector.add_listener(NamespaceTriggers(self._trigger))
        self._reflector.start()
        self._lead_task = Deferred.fromCoroutine(self._lead())
        self._lead_task.addErrback(self._crashed, "sweep loop")

    async def _stop_leading(self) -> None:
        # Idempotent, and it cleans up whatever is left: `stop` calls it again after the elector's
        # own call, which the elector's cancellation may have interrupted.
        # Stop deciding first, then cancel what runs: every delete also checks `_leading`.
        self._leading = False
        tasks = [t for t in (self._lead_task, *self._running.values()) if t is not None]
        self._lead_task = None
        self._again.clear()
        await cancel_and_wait(*tasks)
        reflector, self._reflector = self._reflector, None
        if reflector is not None:
            await reflector.stop()
        self._view = None

    def _crashed(self, failure: Any, what: str) -> None:
        if not failure.check(CancelledError):
            log.failure("Namespace cleanup: {what} stopped by a bug", failure, what=what)

    # -- sweeps ----------------------------------------------------------------------------------

    async def _lead(self) -> None:
        await self._wait_synced()
        backoff = self._retry_backoff()
        while self._leading:
            try:
                await self._sweep_once()
            except RegistryError as e:
                if not self._leading:
                    # Stopped meanwhile: the clients report a cancellation as CancelledError, but
                    # whatever else turns one into a registry error must not stall the stop with a
                    # failed sweep's backoff.
                    return
                self.metrics.sweeps_failed_total += 1
                delay = backoff.next_delay()
                log.warn("Sweep failed: {error}; next try in {delay:.1f}s", error=str(e), delay=delay)
            else:
                backoff.reset()
                if self.options.sweep_period <= 0:
                    return
                delay = self.options.sweep_period
            await deferLater(self._clock, delay)

    async def _sweep_once(self) -> SweepResult:
        assert self._view is not None
        sweep = Sweep(
            self._registry,
            self._clock,
            self._view,
            check=self._check_namespace,
            hand_over=lambda namespace: self._trigger(namespace, SWEEP, None),
            cascade=self.cascade,
            dry_run=self.options.sweep_dry_run,
            page_size=self.options.catalog_page_size,
            metrics=self.metrics,
        )
        self.last_sweep = await sweep.run()
        return self.last_sweep

    async def _check_namespace(self, namespace: str) -> tuple[str, str | None]:
        return await namespace_state(self._kube, namespace)

    # -- cascades --------------------------------------------------------------------------------

    def _trigger(self, namespace: str, why: str, uid: str | None) -> None:
        if not self._leading:
            return
        if namespace in self._running:
            # Keep the strongest reason: the watch's own word (about the latest namespace object)
            # beats the sweep's inference.
            if why != SWEEP or namespace not in self._again:
                self._again[namespace] = (why, uid)
            return
        task = Deferred.fromCoroutine(self._clean(namespace, why, uid))
        if not task.called:
            self._running[namespace] = task
        task.addErrback(self._crashed, f"cleanup of namespace {namespace}")

    async def _clean(self, namespace: str, why: str, uid: str | None) -> None:
        queued = self._clock.seconds()
        self.metrics.cascades_started_total += 1
        self.metrics.cascades_in_progress += 1
        try:
            while True:
                try:
                    result = await self._cascade(namespace, uid)
                except Aborted:
                    # A trigger that came meanwhile is newer than the reason to stop: the namespace
                    # may have been created anew and deleted again. It runs; a stale one stops at once.
                    if not self.is_leader or namespace not in self._again:
                        raise
                    why, uid = self._again.pop(namespace)
                    continue
                self._report(result, why)
                self.emptied(namespace)
                again = self._again.pop(namespace, None)
                if again is None:
                    break
                why, uid = again
        except Aborted as e:
            self.metrics.cascades_aborted_total += 1
            if self.is_leader:
                log.info(
                    "Cleanup of namespace {namespace} stopped: {reason}", namespace=namespace, reason=str(e)
                )
            else:  # the guard saw the leadership end before `_stop_leading` cancelled this
                self._log_interrupted(namespace)
        except CancelledError:
            self.metrics.cascades_aborted_total += 1
            self._log_interrupted(namespace)
            raise
        else:
            self.metrics.cascades_succeeded_total += 1
            self.metrics.cascade_seconds_sum += self._clock.seconds() - queued
            self.metrics.cascade_seconds_count += 1
        finally:
            self.metrics.cascades_in_progress -= 1
            self._running.pop(namespace, None)
            self._again.pop(namespace, None)

    def _log_interrupted(self, namespace: str) -> None:
        log.info(
            "Cleanup of namespace {namespace} interrupted ({reason}) before it finished; the next "
            "leader or the sweep finishes it",
            namespace=namespace,
            reason="shutdown" if self._shutting_down else "leadership lost",
        )

    async def _cascade(self, namespace: str, uid: str | None) -> CascadeResult:
        """One cascade on one of the `namespace_concurrency` workers."""
        worker = _Worker(self._slots)

        async def back_off(delay: float) -> None:
            # A failed pass gives its worker up for the backoff and then queues behind the namespaces
            # that waited meanwhile: one that cannot be emptied never holds a worker for good.
            worker.release()
            await deferLater(self._clock, delay)
            await worker.acquire()

        async def aside(waiting: Deferred[Late]) -> Late:
            # So is a wait for a write of this process that may still land in the namespace.
            worker.release()
            late = await waiting
            await worker.acquire()
            return late

        # Known before it holds a worker, forgotten however it ends (a queued one cancelled included).
        self._workers[namespace] = worker
        try:
            await worker.acquire()
            await self._wait_synced()
            return await self.cascade.run(
                namespace,
                # The store is a cheap first filter before every delete; it may be stale (its watch
                # silent or failing for up to the watch's idle timeout), so the cluster API itself
                # confirms before every delete too, whatever started the cascade.
                guard=lambda: self._guard(namespace),
                confirm=lambda: self._confirm_gone(namespace, uid),
                wait=back_off,
                aside=aside,
                changed=self.changed,
            )
        finally:
            worker.release()
            if self._workers.get(namespace) is worker:
                del self._workers[namespace]

    def _guard(self, namespace: str) -> str | None:
        if not self.is_leader:
            return "this replica no longer leads"
        view = self._view
        if view is None or not view.synced:
            return "the namespace store is not available"
        if view.live(namespace):
            return "the namespace exists (again)"
        return None

    async def _confirm_gone(self, namespace: str, uid: str | None) -> None:
        # `uid`: the namespace object the watch saw deleted; the sweep, which only knows the name,
        # passes None and accepts any Terminating namespace of that name.
        require_gone(namespace, *await namespace_state(self._kube, namespace, uid=uid))

    async def _wait_synced(self) -> None:
        reflector = self._reflector
        if reflector is None:
            raise Aborted("this replica no longer leads")
        await reflector.wait_for_sync()

    def _report(self, result: CascadeResult, why: str) -> None:
        self.results.append(result)
        log.info(
            "Namespace {namespace} cleaned ({trigger}): {tags_deleted} tag(s) in {manifests_deleted} "
            "manifest(s) deleted in {duration:.3f}s, {passes} pass(es), {errors} failed pass(es)",
            namespace=result.namespace,
            trigger=why,
            tags_deleted=result.tags_deleted,
            manifests_deleted=result.manifests_deleted,
            duration=result.duration,
            passes=result.passes,
            errors=result.errors,
            last_error=result.last_error,
        )

    def _retry_backoff(self) -> Backoff:
        return Backoff(initial=self.options.retry_initial, factor=2.0, cap=self.options.retry_cap)


@attrs.define
class _Worker:
    """One cascade's hold on a worker slot, released at most once per acquisition."""

    slots: DeferredSemaphore
    held: bool = False
    # While held: fires when it is released (`CleanupController.cleaning`).
    stint: Deferred[None] = attrs.field(factory=Deferred)

    async def acquire(self) -> None:
        await self.slots.acquire()
        self.held = True
        self.stint = Deferred()

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.release()
            self.stint.callback(None)
