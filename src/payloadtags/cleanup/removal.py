"""deletecollection of a namespace that is being deleted: the cascade's digest deletes, bounded in time.

The namespace controller empties a Terminating namespace with one deletecollection per resource and
retries until the list is empty. Deleting tag by tag costs three or four registry requests per tag
on distribution 2.8; a namespace that is going away loses all of its tags, so deleting each
distinct digest once (what the cascade does) is both right and several times cheaper. Only a
request without selectors, from a caller who may see and delete every path of the namespace, in a
namespace the cluster API itself reports Terminating or absent (asked again right before every
delete, as every cascade does) gets this; any other deletecollection deletes its selection tag by tag.

Each call is bounded in time, and a namespace of many repositories takes several: a call goes on
where the last one stopped (`Walk`), since distribution keeps the repositories emptied by earlier
calls in its catalog, and listing them all again at every call would in the end fill the budget.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from payloadtags.cleanup.cascade import Aborted, Cascade, Refused, Walk
from payloadtags.cleanup.metrics import CleanupMetrics
from payloadtags.cleanup.sweep import ABSENT, TERMINATING, namespace_state, namespace_uid, require_gone
from payloadtags.kube import Backoff, KubeClient
from payloadtags.registry import LateWrites
from payloadtags.registry.errors import RegistryError, RegistryTimeout, RegistryUnavailable
from payloadtags.registry.late import Landing, landing_of


@attrs.define
class NamespaceRemover:
    """Implements `payloadtags.api.tags.NamespaceRemoval`."""

    cascade: Cascade
    clock: IReactorTime
    # `namespace_state` bound to a KubeClient: (ABSENT | TERMINATING | EXISTS | UNKNOWN, why).
    check: Callable[[str], Awaitable[tuple[str, str | None]]]

    async def deleting(self, namespace: str) -> bool:
        state, _why = await self.check(namespace)
        return state in (ABSENT, TERMINATING)

    # The leader's cascade of a namespace, when this replica runs one (`CleanupController.cleaning`).
    running: Callable[[str], Deferred[None] | None] = lambda namespace: None
    _inflight: dict[str, Deferred[Any]] = attrs.Factory(dict)
    # The uid of the namespace object of that name (None: none, or the API cannot tell), which the
    # walk kept for a namespace belongs to: a namespace created anew starts its own from the first
    # repository. None: namespaces are told apart by name only.
    identify: Callable[[str], Awaitable[str | None]] | None = None
    # Where each namespace's removal has got to, for its next call: forgotten once the namespace is
    # found empty (by a call, or by the leader's cascade in this process: `forget`), replaced for a
    # namespace created anew, and the least recently used beyond `walks_kept` namespaces (a namespace
    # emptied by another replica, finalized meanwhile, calls no more). A walk forgotten only makes
    # the next call begin at the namespace's first repository.
    walks_kept: int = 1000
    # The digests all walks keep together (`_Pass.resolved`), the most recently stopped walks' first;
    # a walk past the total keeps none, and its next call resolves those tags again. A walk keeps up
    # to --namespace-cleanup-concurrency x 100 (400 at the default), about 300 bytes each (the digest,
    # its tuple, the media type): 1,000 walks could hold over 100 MiB, where this is about 3 MiB.
    # Only a walk still being called needs them (the namespace controller calls again within
    # seconds), not one of a namespace another replica emptied, which no call here ends.
    digests_kept: int = 10_000
    _walks: OrderedDict[str, Walk] = attrs.Factory(OrderedDict)

    def forget(self, namespace: str) -> None:
        """The namespace is known to be empty (the leader's cascade in this process found it so): its
        walk is forgotten, as when a call ends done."""
        self._walks.pop(namespace, None)

    async def remove(
        self, namespace: str, within: float, changed: Callable[[str], None] | None = None
    ) -> None:
        deadline = self.clock.seconds() + within

        def guard() -> str | None:
            # Asked before every registry request (reads too), so the call ends at its budget, give
            # or take a request under way, with what it deleted so far: the next call goes on. A
            # request still waiting at the deadline (for the repository's turn behind another
            # mutation's confirmation, a connection slot, a token) stops waiting then (`until`).
            if self.clock.seconds() >= deadline:
                return f"not finished within {within:g}s"
            return None

        async def wait(delay: float) -> None:
            # A backoff that ends past the budget would end in the guard's stop: stop now instead.
            # Both a failed pass's and a confirmation's retry backoff.
            if self.clock.seconds() + delay >= deadline:
                raise Aborted(f"not finished within {within:g}s")
            await deferLater(self.clock, delay)

        # Work under way in this process on the same namespace (another deletecollection, the
        # leader's cascade) is waited for, not duplicated: reading every tag is most of a cascade's
        # cost. Our own cascade then only verifies (or finishes) what is left. Looked at again after
        # every wait: calls that waited for the same work wake together, and the first to look
        # registers its own, which the others then wait for in turn (a queue, whatever their number),
        # as they do for a cascade the leader began meanwhile.
        while (other := self._under_way(namespace)) is not None:
            left = deadline - self.clock.seconds()
            if left <= 0:
                # Its whole budget spent waiting: it ends with no work of its own, and the work
                # under way stays known to be (a call registered past its budget would have taken
                # its place in `_inflight`, and a call arriving next would have waited for nothing).
                # No progress of its own: without Retry-After (`_idle`).
                raise _idle(self._unfinished(namespace, f"not finished within {within:g}s"))
            await self._follow(other, left)

        async def confirm() -> None:
            # Asked again right before every delete (`cascade._Checks`: a call of its own, in the
            # repository's turn): once an earlier call has emptied the namespace, it may be created
            # anew while this one runs, and its new content is not ours. Waited for no longer than the
            # budget left: the repository's other mutations in this process wait for it meanwhile.
            left = deadline - self.clock.seconds()
            if left <= 0:
                raise Aborted(f"not finished within {within:g}s")
            check = self.check

            async def ask() -> tuple[str, str | None]:
                return await check(namespace)

            asked = Deferred.fromCoroutine(ask())
            asked.addTimeout(left, self.clock)
            try:
                state = await asked
            except TimeoutError:
                raise Aborted(f"not finished within {within:g}s") from None
            require_gone(namespace, *state)

        walked: Walk | None = None  # this call's walk, once taken: why its last pass failed

        async def run() -> None:
            nonlocal walked
            uid = await self._identify(namespace, deadline, within)
            # Taken, not shared: calls on one namespace take turns (above), and one that the leader's
            # cascade overlaps (begun while this call runs) walks on its own.
            walk = self._walks.pop(namespace, None)
            if walk is None or walk.uid != uid:
                walk = Walk(uid=uid)
            walked = walk
            done = False
            try:
                await self.cascade.run(
                    namespace,
                    guard=guard,
                    confirm=confirm,
                    wait=wait,
                    check_wait=wait,
                    walk=walk,
                    # The cascade's clock (`until` is on it): the same reactor in the server, but
                    # the budget left is what counts wherever the two clocks stand.
                    until=self.cascade.clock.seconds() + (deadline - self.clock.seconds()),
                    changed=changed,
                )
                done = True
            finally:
                if not done:
                    self._walks[namespace] = walk
                    while len(self._walks) > self.walks_kept:
                        self._walks.popitem(last=False)
                    self._keep_digests_within()

        # Known to be under way from here on, before anything is awaited (the cluster API's uid
        # included): a call arriving meanwhile waits for this one.
        mine = Deferred.fromCoroutine(run())
        self._inflight[namespace] = mine
        try:
            await mine
        except Aborted as stopped:
            # The caller answers a retriable 503 (a 504 while a late write may land: `_unfinished`);
            # the next call resumes. A pass that keeps failing (a refusal, say) is said here too, as
            # the cascade's warning says it: "not finished" alone reads as "slow, keep waiting" to
            # whoever looks at the namespace's conditions, not the log.
            failure = walked.failure if walked is not None else None
            why = f"; the last pass failed: {failure}" if failure is not None else ""
            unfinished = self._unfinished(namespace, f"{stopped}{why}")
            refused = isinstance(stopped, Refused) or (walked is not None and walked.lasting)
            if refused and not unfinished.unanswered:
                # Not retriable: a retry gets the same answers (no Retry-After, as for a single delete):
                # stopped at once on a certain refusal, or at its budget with its last pass refused
                # (a grant still missing then: the message says which).
                unfinished = RegistryError(unfinished.message)
                unfinished.lasting = True
            elif walked is None or walked.idle():
                # No progress in the whole call, whatever ended it (`Stalled`, its budget, a wait).
                unfinished = _idle(unfinished)
            raise unfinished from None
        finally:
            if self._inflight.get(namespace) is mine:
                del self._inflight[namespace]

    def _keep_digests_within(self) -> None:
        """Drops the digests kept by the least recently stopped walks beyond `digests_kept` in all."""
        total = 0
        for walk in reversed(self._walks.values()):
            state = walk.state
            if state is None or not state.resolved:
                continue
            total += sum(map(len, state.resolved.values()))
            if total > self.digests_kept:
                state.resolved.clear()

    def _unfinished(self, namespace: str, why: str) -> RegistryError:
        """The error of a call that ends unfinished: a 503, which the namespace controller (and
        client-go, told Retry-After) retries; a 504 while a write of this process may still land in the
        namespace (`LateWrites`: a repair's, this call's or another cascade's, or a single delete's
        re-tag; out, or unanswered). A listing that finds the namespace empty then does not make it a
        200: the write would leave a tag after it; nor a 503, whose repeat (elsewhere, say: another
        replica knows nothing of the write) could answer 200 before the write lands."""
        late_writes = self.cascade.late_writes
        late = late_writes.pending(namespace)
        left = late[1] - late_writes.now() if late is not None else 0.0
        if late is None or left <= 0:
            return RegistryUnavailable(f"removing the content of namespace {namespace}: {why}", retry_after=1)
        if left == math.inf:
            when = (
                f"the registry has not answered a write made while {late[0]} yet, and may carry it out "
                f"{late_writes.out_within(namespace)}"
            )
        else:
            when = (
                f"the registry did not answer a write made while {late[0]}, and may still carry it out "
                f"within about {math.ceil(left)}s"
            )
        if landing_of(late[0]) is Landing.REMOVES_MANIFEST:
            # Landing then, it removes the tags pushed again on that digest, and leaves nothing to delete.
            landed = (
                "(it would remove that manifest and every tag on it, one pushed again meanwhile too): the "
                "namespace is not reported empty before then"
            )
        else:
            landed = (
                "(it would leave the tag in the namespace): the namespace is not reported empty before "
                "then; a deletecollection after that deletes whatever the write left"
            )
        return RegistryTimeout(f"removing the content of namespace {namespace}: {why}; {when} {landed}")

    def _under_way(self, namespace: str) -> Deferred[Any] | None:
        """Work on the namespace this process has not finished: another call's, else the leader's
        cascade. One that has ended is none (the leader's is forgotten in its own callbacks, which
        may run after ours)."""
        for other in (self._inflight.get(namespace), self.running(namespace)):
            if other is not None and not other.called:
                return other
        return None

    async def _identify(self, namespace: str, deadline: float, within: float) -> str | None:
        """The namespace's uid (`identify`), asked only within the budget and waited for no longer."""
        if self.identify is None:
            return None
        left = deadline - self.clock.seconds()
        if left <= 0:
            raise Aborted(f"not finished within {within:g}s")
        identify = self.identify

        async def ask() -> str | None:
            return await identify(namespace)

        asked = Deferred.fromCoroutine(ask())
        asked.addTimeout(left, self.clock)
        try:
            return await asked
        except TimeoutError:
            raise Aborted(f"not finished within {within:g}s") from None

    async def _follow(self, other: Deferred[Any], within: float) -> None:
        """Wait until ``other`` ends or ``within`` seconds pass, whatever its outcome; never cancel it."""
        if within <= 0:
            return
        waiter: Deferred[None] = Deferred()

        def ended(result: object) -> object:
            if not waiter.called:
                waiter.callback(None)
            return result  # ``other``'s own callers see what they would have seen

        other.addBoth(ended)
        # Its own timeout is a TimeoutError; a CancelledError is the caller's (the request's client
        # went away), which ends the call here instead of starting its own cascade.
        waiter.addTimeout(within, self.clock)
        try:
            await waiter
        except TimeoutError:
            pass


def _idle(unfinished: RegistryError) -> RegistryError:
    """``unfinished``, of a call that made no progress of its own, marked `stalled` unless a write may
    still land (then it is the 504 without Retry-After, `NamespaceRemover._unfinished`): answered
    without Retry-After, which client-go repeats up to ten times by itself, holding a namespace
    controller's worker for minutes per namespace for the same answer (review r1cleanup F1; r2fixstall
    L2: also a call ended by its budget, one spent waiting for the leader's pass included). The
    namespace controller retries later, with its own backoff; the leader's cascade keeps going. A call
    that made progress keeps Retry-After: the next may get further."""
    if not unfinished.unanswered:
        unfinished.stalled = True
    return unfinished


def namespace_remover(
    reactor: IReactorTime,
    kube: KubeClient,
    registry: Any,
    concurrency: int,
    metrics: CleanupMetrics | None = None,
    late_write_grace: float = 0.0,
    late_writes: LateWrites | None = None,
) -> NamespaceRemover:
    """The remover the server gives the API: the cluster API decides, a cascade of its own deletes.
    ``metrics``: where its deletes and registry errors are counted (the server's, which /metrics shows).
    ``late_write_grace``: how long a repair's write that went unanswered may still land
    (`Cascade.late_write_grace`); ``late_writes``: where such writes are kept, shared with the
    leader's cascades and the registry client, which notes its own writes there (`LateWrites`)."""
    cascade = Cascade(
        registry,
        reactor,
        concurrency=concurrency,
        # Short: the whole call is bounded by the API's budget, and the caller retries anyway.
        backoff=lambda: Backoff(initial=0.2, factor=2.0, cap=2.0),
        metrics=metrics if metrics is not None else CleanupMetrics(),
        late_write_grace=late_write_grace,
        late_writes=late_writes if late_writes is not None else LateWrites(reactor),
    )
    return NamespaceRemover(
        cascade,
        reactor,
        lambda namespace: namespace_state(kube, namespace),
        identify=lambda namespace: namespace_uid(kube, namespace),
    )


__all__ = ["NamespaceRemover", "namespace_remover"]
