"""What the rest of payloadtags may ask of the registry: the seam between it and `RegistryClient`.

`RegistryClient` speaks the OCI distribution API; `metrics.InstrumentedRegistry` wraps it with
counters; the unit tests' fakes stand in for it. All of them are checked against these protocols by
the type checker. Consumers that need less declare less (`Catalog`, `cleanup.cascade.CascadeRegistry`),
so that a fake only has to provide what its consumer uses.

Every method raises a `RegistryError` subclass when the registry fails or refuses (see
`payloadtags.registry.errors`) and `CancelledError` when its caller cancelled it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import attrs

from .content import CatalogPage, Manifest, Resolved

Before = Callable[[], Awaitable[None]]
"""A caller's confirmation before a write request of a mutation leaves (`WriteHooks.before`)."""

Check = Callable[[], None]
"""A caller's synchronous last check before a write request of a mutation leaves (`WriteHooks.check`)."""

Sent = Callable[[bool], None]
"""Told True when a write request of a mutation may reach the registry, False when the registry has
answered it (`WriteHooks.sent`)."""

Waiting = Callable[[bool], None]
"""Told when a mutation starts and stops waiting for what is not the registry (`WriteHooks.waiting`)."""


@attrs.frozen
class WriteHooks:
    """A caller's hooks into one mutation of the registry (`Registry.delete_tag`,
    `Registry.delete_manifest`), passed whole from the caller to the request that leaves. Each is
    optional; none given (`WriteHooks()`, or no value at all) the mutation runs unwatched."""

    before: Before | None = None
    """A caller's confirmation, made before each request of a mutation that changes a manifest or a tag
    (a manifest `PUT` or `DELETE`; not the blob uploads nor a probe that deletes nothing): in the
    repository's turn (`RepositoryQueue`), with the request's connection slot held and, where the
    registry wants a token, a token for its scope at hand, so that only the request's own round trip
    follows it. Raising stops the mutation there, with that request not sent. The repository's other
    mutations in this process wait while it runs: keep it to one call, retried (if at all) by the
    caller, outside the turn."""

    check: Check | None = None
    """A caller's synchronous last check, made at the very last moment before each write request of a
    mutation leaves (after `before`, after any token round trip, on every attempt; a request that
    finds no idle kept connection to the registry's own URL, again once its new connection is ready:
    connected, its TLS handshake done, right before the request is written to it), and once before the
    mutation's first read, when it takes the repository's turn (nothing read for a mutation already told
    to stop): raising stops the mutation there, with that request not sent (a `sent` told True before
    the new connection's check is told False)."""

    sent: Sent | None = None
    """Told True right before each request of a mutation that changes a manifest or a tag leaves (a
    manifest `PUT` or `DELETE`, as for `before`; not a blob upload, nor the probe, which change no
    tag), its `check` passed: from here the request is out, and may reach the registry. Told False
    once the registry has answered it, whatever it answered (a 401 included, after which the
    request is sent again with a token, and told True again when it leaves): its outcome is known.
    Never told False for a request that went unanswered (a timeout, a connection lost, a gateway's
    5xx, its request cancelled), which the registry may still carry out: it stays out for the rest
    of the mutation. Not told for the `check` made on taking the repository's turn: a mutation with
    no request out may still be stopped (cancelled) with no write of unknown outcome, while it waits
    for a confirmation's turn, a connection slot or a token (a 401's retry included)."""

    waiting: Waiting | None = None
    """Told True when a mutation starts waiting for what is not the registry answering it, False when
    that wait ends: for its repository's turn (behind the process's other mutations of the repository,
    their confirmations included), and before each of its manifest writes for a confirmation's turn
    (held by other mutations' confirmations, the cluster API's time) and a connection slot (held by
    other requests, a confirmation among them)."""


class Catalog(Protocol):
    """Repository names and their tags."""

    async def catalog(self, last: str | None = ..., n: int = ...) -> CatalogPage:
        """One page of at most ``n`` repository names after ``last``, in the registry's catalog order."""
        ...

    async def tags(self, repository: str, /) -> Sequence[str]:
        """The tags of ``repository``, sorted; empty for an unknown repository. Immutable (a tuple, or
        `RegistryClient`'s `TagList`: its tags as a few texts): callers whose reads were shared get the
        same object."""
        ...


def sorts_by_components(catalog: Catalog) -> bool:
    """Whether ``catalog`` is known to order its names component by component, as distribution does
    (`RegistryClient.catalog`): its ``catalog_order`` is "component" once a page has shown it. Not a
    member of `Catalog`: a catalog that does not say is one whose order is not known."""
    return getattr(catalog, "catalog_order", None) == "component"


class Registry(Catalog, Protocol):
    """Everything payloadtags does with the registry."""

    async def ping(self) -> None:
        """Whether the registry is usable (reachable, and our credentials accepted)."""
        ...

    async def manifest(self, repository: str, reference: str, /) -> Manifest:
        """The manifest a tag or digest names, with its digest."""
        ...

    async def resolve(self, repository: str, reference: str, /) -> str:
        """The digest a tag names (a HEAD request)."""
        ...

    async def resolve_typed(self, repository: str, reference: str, /) -> Resolved:
        """`resolve`, with the media type the registry's answer declares (None: not said)."""
        ...

    async def blob(self, repository: str, digest: str, /, max_bytes: int = ...) -> bytes:
        """A blob's content, at most ``max_bytes`` long."""
        ...

    async def delete_tag(
        self,
        repository: str,
        tag: str,
        /,
        *,
        hooks: WriteHooks | None = None,
        expected: str | None = None,
    ) -> str | None:
        """Remove exactly one tag, never a sibling sharing its manifest; returns the digest it named
        (None for a dangling tag, whose manifest the registry no longer has). A write that a push
        meanwhile would make overwrite it raises RegistryConflict instead. ``hooks``: see
        `WriteHooks`. ``expected``: the digest the caller found the tag at; the tag read anywhere else
        right before the delete's first write (a push of its name since) is kept, RegistryConflict."""
        ...

    async def delete_manifest(
        self,
        repository: str,
        digest: str,
        /,
        *,
        hooks: WriteHooks | None = None,
    ) -> None:
        """Remove a manifest and every tag that names it. ``hooks``: see `WriteHooks`."""
        ...

    async def check_delete(self, repository: str, tag: str, /) -> None:
        """Raise what `delete_tag` of this tag would for a registry that cannot delete now (deletes
        turned off, read-only, the account may not delete), changing nothing: a dry run's check."""
        ...

    async def close(self) -> None:
        """Drop the pooled connections."""
        ...


__all__ = ["Before", "Catalog", "Check", "Registry", "Sent", "Waiting", "WriteHooks", "sorts_by_components"]
