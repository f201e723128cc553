"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's semantics.

Every replica is a candidate. A candidate takes the Lease when it does not exist, when its holder is
empty (released), or when the Lease has not changed for ``leaseDurationSeconds`` *as measured on the
candidate's own clock* since the candidate last saw it change (client-go does not trust the
holder's ``renewTime``, so clock skew between nodes does not matter). Writes are conditional on the
resourceVersion, so of two candidates racing only one wins (the other gets 409 Conflict).

The leader renews every ``retry_period``; when it could not renew for ``renew_deadline`` it stops
leading (its work is stopped before anything else), and becomes a candidate again. Unlike client-go's
leader, which goes on until its renew deadline, it stops at once when a renew's read shows the Lease
not its own (another holder, no holder, or no Lease): the writes of its work are fenced only by the
leadership check, and another replica may lead already. As
``renew_deadline < lease_duration``, a leader that cannot reach the API stops its work before any
other replica may take over. On a clean shutdown the leader stops its work, waits for what must end
before another replica leads (`before_release`: the deletes the process carries on), renewing the
Lease meanwhile, then releases it (empty holder, 1 s duration) so that another replica takes over at
its next try, not after expiry. A replica whose write of the Lease (an acquire or a renew) went
unanswered, cut by the stop or by its deadline, may hold the Lease without knowing it (the API
server may carry a write out after its client stopped waiting): its stop reads the Lease again and
releases it if it is this replica's, leading or not; a write carried out after that read is not
seen, and the Lease then lapses as after a crash.

These intervals are measured on a monotonic clock, as client-go does: the reactor's clock is the wall
clock, which NTP may step. A step back delays every reactor timer, the renew loop's included, so
`is_leader` does not wait for one: it turns false by itself once the last successful renew is older
than the renew deadline. The Lease's own timestamps stay wall-clock time, as Kubernetes requires.
"""

from __future__ import annotations

import datetime
import math
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from payloadtags import deferreds
from payloadtags.cleanup.metrics import CleanupMetrics
from payloadtags.deferreds import DeadlineExpired
from payloadtags.kube import KubeApiError, KubeError, resource_path
from payloadtags.kube.diagnosis import RBAC_FILE
from payloadtags.onceper import OncePerPeriod
from payloadtags.validators import positive

log = Logger()

T = TypeVar("T")

# client-go's defaults (k8s.io/client-go/tools/leaderelection, and the component-base flags).
DEFAULT_LEASE_DURATION: Final = 15.0
DEFAULT_RENEW_DEADLINE: Final = 10.0
DEFAULT_RETRY_PERIOD: Final = 2.0
JITTER_FACTOR: Final = 1.2
DEFAULT_LEASE_NAME: Final = "payloadtags-cleanup"
SERVICE_ACCOUNT_NAMESPACE_FILE: Final = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# client-go's HealthzAdaptor tolerance past the lease duration before /healthz fails.
HEALTH_TOLERANCE: Final = 20.0
# While attempts keep failing the same way, a warning at most this often (monotonic seconds).
FAILURE_LOG_INTERVAL: Final = 60.0


def default_identity() -> str:
    """client-go's usual identity: the host name (the pod name in a pod) and a unique suffix."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def default_lease_namespace(namespace_file: str = SERVICE_ACCOUNT_NAMESPACE_FILE) -> str:
    """The pod's own namespace when running in a pod, else ``default``. Blocking: call at start-up."""
    try:
        return Path(namespace_file).read_text().strip() or "default"
    except OSError:
        return "default"


@attrs.frozen
class LeaderElectionOptions:
    lease_name: str = DEFAULT_LEASE_NAME
    lease_namespace: str = "default"
    identity: str = attrs.Factory(default_identity)
    lease_duration: float = attrs.field(default=DEFAULT_LEASE_DURATION, validator=positive)
    renew_deadline: float = attrs.field(default=DEFAULT_RENEW_DEADLINE, validator=positive)
    retry_period: float = attrs.field(default=DEFAULT_RETRY_PERIOD, validator=positive)

    def __attrs_post_init__(self) -> None:
        # The same rules as client-go's NewLeaderElector.
        if self.lease_duration <= self.renew_deadline:
            raise ValueError("the lease duration must be greater than the renew deadline")
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            raise ValueError(f"the renew deadline must be greater than {JITTER_FACTOR} x the retry period")
        if not self.identity:
            raise ValueError("the leader election identity must not be empty")

    @property
    def lease_path(self) -> str:
        return resource_path("coordination.k8s.io", "v1", "leases", self.lease_namespace, self.lease_name)

    @property
    def collection_path(self) -> str:
        return resource_path("coordination.k8s.io", "v1", "leases", self.lease_namespace)


class LeaseClient(Protocol):
    """The part of `KubeClient` the elector uses (a fake in unit tests)."""

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]: ...

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def update(self, path: str, body: dict[str, Any]) -> dict[str, Any]: ...


Callback = Callable[[], Awaitable[None] | None]


@attrs.frozen
class LeaderRecord:
    holder: str
    lease_duration_seconds: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> LeaderRecord:
        spec = lease.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        transitions = spec.get("leaseTransitions")
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration_seconds=duration if isinstance(duration, int) else 0,
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=transitions if isinstance(transitions, int) else 0,
        )

    def spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


class LeaderElector:
    """Campaigns for the Lease until `stop`; calls `on_started_leading`/`on_stopped_leading`.

    `on_stopped_leading` may return an awaitable: the elector waits for it (the leader's work has
    stopped) before it releases the Lease or campaigns again.
    """

    def __init__(
        self,
        client: LeaseClient,
        clock: IReactorTime,
        options: LeaderElectionOptions,
        *,
        on_started_leading: Callback,
        on_stopped_leading: Callback,
        on_new_leader: Callable[[str], object] | None = None,
        metrics: CleanupMetrics | None = None,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        before_release: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``before_release``: awaited by `stop` after the leader's work has stopped and before the
        Lease is released (the process's deletes carried on to their end: until then this replica may
        still write to a namespace the next leader would clean)."""
        self._client = client
        self._before_release = before_release
        self._clock = clock
        self.options = options
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._on_new_leader = on_new_leader
        self.metrics = metrics or CleanupMetrics()
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self._observed: LeaderRecord | None = None
        self._observed_raw: dict[str, Any] | None = None
        # The last Lease object read or written: a renew or a release replaces only its spec fields
        # (an update replaces the whole object, and labels, annotations, ownerReferences or newer
        # spec fields set by others must survive it), and its resourceVersion guards the write.
        self._lease: dict[str, Any] | None = None
        # Whether a create or update of the Lease went out and got no answer that says it was not
        # carried out (cut by a stop or a deadline, a transport failure, a 5xx): the API may have
        # carried it out, so this replica may hold the Lease whatever it last saw (`_release`).
        self._unanswered = False
        # The resourceVersion that unanswered write was conditional on ("" for a create): a later read
        # of a Lease past it, not this replica's, shows the write can no longer be carried out (it
        # would be refused, 409 or AlreadyExists) and did not leave the Lease this replica's.
        self._unanswered_on = ""
        # Whether the last update was refused with 409: a single lost race is quiet, a second in a
        # row (another writer keeps changing the Lease) is a failure, warned about as others are.
        self._conflicted = False
        # Monotonic times: when the observed record was first seen, and when the write of the last
        # successful acquire or renew was sent (it reached the API after that, never before).
        self._observed_time = float("-inf")
        self._leading = False
        self._last_renew = float("-inf")
        self._task: Deferred[None] | None = None
        self._stopping = False
        self._cancelling = False  # `stop` is cancelling the loop or the hold
        self._reported_leader: str | None = None
        # Why a renew's read showed the Lease not this replica's (another holder, none, no Lease):
        # the term is over at once, not at its renew deadline (`is_leader`, `_renew`).
        self._taken: str | None = None
        # Failed attempts since the last that reached the API, what failed last, and whether this run
        # of failures was warned about.
        self._failures = 0
        self._failure_kind: tuple[type, int | None] | None = None
        self._failures_said = False
        # When each kind of failure was last warned about (monotonic): kept across successes, so that
        # an API that flaps is said once a minute per cause, not once per outage.
        self._failure_logged: OncePerPeriod[tuple[type, int | None]] = OncePerPeriod(
            FAILURE_LOG_INTERVAL, monotonic
        )

    # -- state ---------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True between `on_started_leading` and `on_stopped_leading`, and only while the last
        successful renew is younger than the renew deadline: a renew loop whose timer is late (the
        wall clock stepped back) must not leave a leader that another replica may already replace."""
        return self._leading and self._taken is None and self._current(self._last_renew)

    def _current(self, renewed: float) -> bool:
        """Whether a renew whose write was sent at `renewed` (monotonic) still holds."""
        return self._monotonic() - renewed < self.options.renew_deadline

    @property
    def leader(self) -> str:
        """The holder identity last seen on the Lease ("" when none)."""
        return self._observed.holder if self._observed is not None else ""

    @property
    def identity(self) -> str:
        return self.options.identity

    async def check_health(self) -> None:
        """For /healthz (client-go's HealthzAdaptor): fails when this replica believes it leads but
        has not renewed for well past the lease duration, i.e. its renew loop is stuck."""
        if self._leading:
            overdue = self._monotonic() - self._last_renew
            if overdue > self.options.lease_duration + HEALTH_TOLERANCE:
                raise RuntimeError(f"leader election: the lease was last renewed {overdue:.0f}s ago")

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("leader elector already started")
        self._stopping = False
        self._task = Deferred.fromCoroutine(self._run())
        self._task.addErrback(self._crashed)

    async def stop(self, *, release: bool = True) -> None:
        """Stop campaigning. A leader stops its work (`on_stopped_leading`), then releases the Lease
        unless `release` is False (what a crash looks like to the other replicas). With
        ``before_release``, it keeps renewing the Lease until that has ended, then releases it."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            await self._cancel(task)
        if self._leading and release and self._before_release is not None:
            # Until `before_release` has ended this replica may still write to a namespace the next
            # leader would clean, and a Lease not renewed lapses after the lease duration: renewed
            # as while leading, and lost as then if no renew succeeds within the renew deadline.
            holding = Deferred.fromCoroutine(self._hold())
            holding.addErrback(self._crashed)
            try:
                await self._stop_leading("shutting down")
                await self._before_release()
            finally:
                held = not holding.called
                await self._cancel(holding)
            if not held and not self._unanswered:
                return  # lost (said): no renew reached the API within the renew deadline
        else:
            await self._stop_leading("shutting down")
        if release:
            # Also when not leading: a candidate's acquire cut by this stop, or a renew that came
            # back past the renew deadline, may have left the Lease this replica's.
            await self._release()

    async def _cancel(self, task: Deferred[Any]) -> None:
        self._cancelling = True
        try:
            await deferreds.cancel_and_wait(task)
        finally:
            self._cancelling = False

    async def _hold(self) -> None:
        """Renews the Lease without leading, until cancelled, or until no renew succeeded within the
        renew deadline or a renew's read shows the Lease not this replica's (the Lease is then lost:
        said, and `stop` does not release it)."""
        self._taken = None
        while (lost := await self._renew()) is None:
            pass
        deadline = self.options.renew_deadline
        log.warn(
            "Leader election: {identity} lost the lease while stopping: {why}; another replica may "
            "lead (and clean namespaces) before the deletes this one carries on have ended",
            identity=self.options.identity,
            why=lost if self._taken is not None else f"could not renew it for {deadline:g}s",
        )

    def _crashed(self, failure: Any) -> None:
        if not failure.check(CancelledError):
            log.failure("Leader election stopped by a bug", failure)

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        options = self.options
        while not self._stopping:
            # Candidate: try every retry period, jittered so that replicas spread out.
            while True:
                sent = await self._attempt(options.renew_deadline)
                if sent is not None and self._current(sent):
                    break
                await deferLater(self._clock, options.retry_period * (1 + JITTER_FACTOR * self._rng.random()))
            self._leading = True
            self._taken = None
            self._last_renew = sent
            self.metrics.is_leader = 1
            self.metrics.leader_acquisitions_total += 1
            log.info(
                "Leader election: {identity} now leads (lease {namespace}/{name})",
                identity=options.identity,
                namespace=options.lease_namespace,
                name=options.lease_name,
            )
            await _maybe_await(self._on_started())
            # Leader: renew every retry period; give up after renew_deadline without success, or
            # at once when a renew's read shows the Lease not this replica's.
            while not self._stopping:
                lost = await self._renew()
                if lost is not None:
                    await self._stop_leading(lost)
                    break

    async def _renew(self) -> str | None:
        """After a retry period, one try to renew: None while the Lease is still held (the last renew
        that succeeded is younger than the renew deadline, and the Lease read names this replica),
        else why it is lost."""
        options = self.options
        await deferLater(self._clock, options.retry_period)
        remaining = self._last_renew + options.renew_deadline - self._monotonic()
        renewed = await self._attempt(remaining, renewing=True) if remaining > 0 else None
        if self._taken is not None:
            return self._taken
        if not self._current(self._last_renew):
            # Too late, renewed or not: `is_leader` has said no already, and what that stopped
            # starts over with a new term instead of this one going on.
            return f"could not renew the lease for {options.renew_deadline:g}s"
        if renewed is not None:
            self._last_renew = renewed
        return None

    async def _stop_leading(self, why: str) -> None:
        if not self._leading:
            return
        self._leading = False
        self.metrics.is_leader = 0
        self.metrics.leader_losses_total += 1
        log.info("Leader election: {identity} stops leading: {why}", identity=self.options.identity, why=why)
        await _maybe_await(self._on_stopped())

    async def _attempt(self, within: float, *, renewing: bool = False) -> float | None:
        """One try to acquire or renew, bounded by `within` seconds (never past the renew deadline):
        the monotonic time its successful write was sent, or None. ``renewing``: the Lease is this
        replica's (leading, or held while stopping); a read that shows it not is noted (`_taken`)."""
        try:
            sent = await self._bounded(self._try_acquire_or_renew(renewing), within)
        except (KubeError, DeadlineExpired) as e:
            if self._cancelling:
                # KubeClient reports a cancelled request as CancelledError, but a LeaseClient may
                # report it as a failure: `stop` must not look like a failed try, or the loop would
                # wait a retry period and campaign again instead of ending.
                raise CancelledError() from e
            self._attempt_failed(e)
            return None
        if self._failures:
            # Said after an outage that was said; one only counted (its cause said less than a
            # minute ago) ends as quietly.
            (log.info if self._failures_said else log.debug)(
                "Leader election: the lease {namespace}/{name} answers again, after {attempts}",
                namespace=self.options.lease_namespace,
                name=self.options.lease_name,
                failures=self._failures,
                attempts=_failed_attempts(self._failures),
            )
            self._failures, self._failure_kind, self._failures_said = 0, None, False
        return sent

    def _attempt_failed(self, error: Exception) -> None:
        """Warns, as client-go does, but not every retry period: a Lease that is forbidden or an API
        that is down would fill the log. Once for a new kind of failure, then once a minute, whether
        or not an attempt worked in between (an API that flaps)."""
        self._failures += 1
        # The kind, not the text: a timeout's text names the seconds left, which differ every time.
        kind = (type(error), error.code if isinstance(error, KubeApiError) else None)
        again = kind == self._failure_kind
        self._failure_kind = kind
        if self._failure_logged(kind) is None:
            log.debug("Leader election: attempt failed: {error}", error=error)
            return
        self._failures_said = True
        log.warn(
            "Leader election: {still}could not get, create or update the lease {namespace}/{name} "
            "({attempts} in a row): {error}{grant}",
            still="still " if again else "",
            namespace=self.options.lease_namespace,
            name=self.options.lease_name,
            failures=self._failures,
            attempts=_failed_attempts(self._failures),
            error=error,
            grant=self._grant() if isinstance(error, KubeApiError) and error.code == 403 else "",
        )

    def _grant(self) -> str:
        """What lets a refused Lease be used, as every other 403 is said with its grant (r1cli N1)."""
        namespace, name = self.options.lease_namespace, self.options.lease_name
        return (
            f"; bind it the Role payloadtags:leader-election in {namespace} (RoleBinding "
            f"payloadtags:leader-election), whose resourceNames must hold {name} ({RBAC_FILE}, "
            "docs/troubleshooting.md)"
        )

    async def _try_acquire_or_renew(self, renewing: bool) -> float | None:
        options = self.options
        before = self._monotonic()
        stamp = _micro_time(self._clock.seconds())
        wanted = LeaderRecord(
            holder=options.identity,
            lease_duration_seconds=max(1, math.ceil(options.lease_duration)),
            acquire_time=stamp,
            renew_time=stamp,
            transitions=0,
        )
        try:
            lease = await self._client.get(options.lease_path)
        except KubeApiError as e:
            if e.code != 404:
                raise
            if renewing:
                # Deleted: another replica may have created it anew already (`_taken`, below).
                self._taken = "the lease was deleted"
                return None
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": options.lease_name, "namespace": options.lease_namespace},
                "spec": wanted.spec(),
            }
            sent = self._monotonic()
            created = await self._written(self._client.create(options.collection_path, body), on="")
            self._observe(created, self._monotonic())
            return sent
        if (
            self._unanswered
            and LeaderRecord.from_lease(lease).holder != options.identity
            and _resource_version(lease) != self._unanswered_on
        ):
            self._unanswered = False  # past the write, which did not leave it ours: it cannot land now
        raw_spec = lease.get("spec") or {}
        if raw_spec != self._observed_raw:
            # Dated after the GET (client-go's setObservedRecord): the record may have been written
            # while the GET was on its way, and its holder's renew deadline runs from that write.
            self._observe(lease, self._monotonic())
        old = self._observed
        assert old is not None
        self._lease = lease
        held_by_me = old.holder == options.identity
        if renewing and not held_by_me:
            # Another replica took it over, or its holder was emptied (by another writer: another
            # replica may take it at its next try). client-go's leader goes on until its renew
            # deadline (or takes an emptied Lease again); here the term ends now (`is_leader` says no
            # from here on), as the writes of its work are fenced only by the leadership check.
            self._taken = f"the lease is now held by {old.holder}" if old.holder else "the lease was released"
            self._conflicted = False
            return None
        # Against the time before the GET, which read the Lease after it: expiry errs on the late side.
        valid = self._observed_time + old.lease_duration_seconds > before
        if old.holder and valid and not held_by_me:
            self._conflicted = False
            return None
        if held_by_me:
            wanted = attrs.evolve(wanted, acquire_time=old.acquire_time, transitions=old.transitions)
        else:
            wanted = attrs.evolve(wanted, transitions=old.transitions + 1)
        update = {**lease, "spec": {**raw_spec, **wanted.spec()}}
        sent = self._monotonic()
        try:
            updated = await self._written(
                self._client.update(options.lease_path, update), on=_resource_version(lease)
            )
        except KubeApiError as e:
            if e.code == 409:
                conflicted, self._conflicted = self._conflicted, True
                if not conflicted:
                    return None  # someone else wrote first: look again next time
            raise
        self._conflicted = False
        self._observe(updated, self._monotonic())
        return sent

    async def _written(self, write: Awaitable[dict[str, Any]], *, on: str) -> dict[str, Any]:
        """A create or update of the Lease, noted as `_unanswered` until the API answers it: with the
        Lease written, or with an error that says it was not written (a 4xx: a conflict, a refusal).
        Cut by a stop or a deadline, failed on the way, or answered 5xx (the API server's own
        timeout included), it may still be carried out, until a later read shows the Lease past
        ``on`` (the resourceVersion it was conditional on, "" for a create) and not this replica's
        (`_try_acquire_or_renew`)."""
        self._unanswered = True
        self._unanswered_on = on
        try:
            written = await write
        except KubeApiError as e:
            if e.code < 500:
                self._unanswered = False
            raise
        self._unanswered = False
        return written

    def _observe(self, lease: dict[str, Any], now: float) -> None:
        self._observed_raw = lease.get("spec") or {}
        self._observed = LeaderRecord.from_lease(lease)
        self._lease = lease
        self._observed_time = now
        holder = self._observed.holder
        if holder != self._reported_leader:
            self._reported_leader = holder
            if holder and holder != self.options.identity:
                log.info("Leader election: the leader is {holder}", holder=holder)
            if self._on_new_leader is not None:
                self._on_new_leader(holder)

    async def _release(self) -> None:
        """Give the Lease up at once (client-go's ReleaseOnCancel), if this replica may hold it: it
        last saw itself the holder, or a write of it went unanswered (`_unanswered`: the Lease is
        then read again first, as what was last seen may be stale or another replica's). Bounded
        by the renew deadline; never the Lease of another holder (the write is conditional on the
        resourceVersion of the Lease that showed this replica the holder)."""
        options = self.options
        seen_mine = self._observed is not None and self._observed.holder == options.identity
        if not seen_mine and not self._unanswered:
            return
        release = self._release_once_more_on_conflict(read_first=self._unanswered)
        try:
            updated = await self._bounded(release, options.renew_deadline)
        except (KubeError, DeadlineExpired) as e:
            if seen_mine:
                log.warn("Leader election: could not release the lease: {error}", error=e)
            else:
                log.warn(
                    "Leader election: could not release the lease, which this replica may hold (a "
                    "write of it went unanswered): {error}",
                    error=e,
                )
            return
        if updated is None:
            return
        self._unanswered = False
        self._observe(updated, self._monotonic())
        log.info("Leader election: {identity} released the lease", identity=options.identity)

    async def _release_once_more_on_conflict(self, *, read_first: bool) -> dict[str, Any] | None:
        """The release write, on the last Lease seen or (`read_first`) on the Lease read again; on
        409, once more on the Lease read again: a renew the API applied but whose answer was lost or
        came after a stop cut it leaves a stale resourceVersion, and the next leader would otherwise
        wait for the Lease to expire. None: the Lease is another holder's, or there is none."""
        try:
            if read_first:
                return await self._release_read_again()
            return await self._client.update(self.options.lease_path, self._released(self._lease))
        except KubeApiError as e:
            if e.code != 409:
                raise
        return await self._release_read_again()

    async def _release_read_again(self) -> dict[str, Any] | None:
        try:
            lease = await self._client.get(self.options.lease_path)
        except KubeApiError as e:
            if e.code == 404:
                return None  # a create cut by the stop that the API did not carry out (yet)
            raise
        if LeaderRecord.from_lease(lease).holder != self.options.identity:
            return None
        return await self._client.update(self.options.lease_path, self._released(lease))

    def _released(self, lease: dict[str, Any] | None) -> dict[str, Any]:
        """The Lease given up (empty holder, duration 1 s), built on `lease` as a renew is."""
        assert lease is not None
        stamp = _micro_time(self._clock.seconds())
        released = LeaderRecord("", 1, stamp, stamp, LeaderRecord.from_lease(lease).transitions)
        return {**lease, "spec": {**(lease.get("spec") or {}), **released.spec()}}

    async def _bounded(self, work: Awaitable[T], seconds: float) -> T:
        return await deferreds.within(self._clock, seconds, work)


def _resource_version(lease: dict[str, Any]) -> str:
    return str((lease.get("metadata") or {}).get("resourceVersion") or "")


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result


def _failed_attempts(count: int) -> str:
    return "1 failed attempt" if count == 1 else f"{count} failed attempts"


def _micro_time(seconds: float) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds, UTC."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
