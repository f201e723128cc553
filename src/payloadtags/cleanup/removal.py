"""deletecollection of a namespace that is being deleted: the cascade's digest deletes, bounded in time.

The namespace controller empties a Terminating namespace with one deletecollection per resource and
retries until the list is empty. Deleting tag by tag costs three or four registry requests per tag
on distribution 2.8; a namespace that is going away loses all of its tags, so deleting each
distinct digest once (what the cascade does) is both right and several times cheaper. Only a
request without selectors, from a caller who may see and delete every path of the namespace, in a
namespace the cluster API itself reports Terminating or absent (asked again right before every
delete, as every cascade does) gets this; any other deletecollection deletes its selection tag by tag.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from payloadtags.cleanup.cascade import Aborted, Cascade
from payloadtags.cleanup.sweep import ABSENT, TERMINATING, namespace_state, require_gone
from payloadtags.kube import Backoff, KubeClient
from payloadtags.registry.errors import RegistryUnavailable


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

    async def remove(self, namespace: str, within: float) -> None:
        deadline = self.clock.seconds() + within

        def guard() -> str | None:
            # Asked before every registry request (reads too), so the call ends at its budget, give
            # or take the request under way, with what it deleted so far: the next call goes on.
            if self.clock.seconds() >= deadline:
                return f"not finished within {within:g}s"
            return None

        async def wait(delay: float) -> None:
            # A backoff that ends past the budget would end in the guard's stop: stop now instead.
            if self.clock.seconds() + delay >= deadline:
                raise Aborted(f"not finished within {within:g}s")
            await deferLater(self.clock, delay)

        # Work under way in this process on the same namespace (another deletecollection, the
        # leader's cascade) is waited for, not duplicated: reading every tag is most of a cascade's
        # cost. Our own cascade then only verifies (or finishes) what is left.
        for other in (self._inflight.get(namespace), self.running(namespace)):
            if other is not None:
                await self._follow(other, deadline - self.clock.seconds())

        async def confirm() -> None:
            # Asked again right before every delete (`Cascade._fresh`: a call made after the delete
            # asked): once an earlier call has emptied the namespace, it may be created anew while
            # this one runs, and its new content is not ours.
            require_gone(namespace, *await self.check(namespace))

        mine = Deferred.fromCoroutine(self.cascade.run(namespace, guard=guard, confirm=confirm, wait=wait))
        self._inflight[namespace] = mine
        try:
            await mine
        except Aborted as stopped:
            # The caller answers a retriable 503 that names what is left; the next call resumes.
            raise RegistryUnavailable(
                f"removing the content of namespace {namespace}: {stopped}", retry_after=1
            ) from None
        finally:
            if self._inflight.get(namespace) is mine:
                del self._inflight[namespace]

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
        waiter.addTimeout(within, self.clock)
        try:
            await waiter
        except (CancelledError, TimeoutError):
            pass


def namespace_remover(
    reactor: IReactorTime, kube: KubeClient, registry: Any, concurrency: int
) -> NamespaceRemover:
    """The remover the server gives the API: the cluster API decides, a cascade of its own deletes."""
    cascade = Cascade(
        registry,
        reactor,
        concurrency=concurrency,
        # Short: the whole call is bounded by the API's budget, and the caller retries anyway.
        backoff=lambda: Backoff(initial=0.2, factor=2.0, cap=2.0),
    )
    return NamespaceRemover(cascade, reactor, lambda namespace: namespace_state(kube, namespace))


__all__ = ["NamespaceRemover", "namespace_remover"]
