"""A cascade's mutation waits for its repository's turn in the registry client's queue, and its checks
(the cluster API's word, the synchronous guard) are made in that turn, not before it: a delete that
waited behind another mutation of the repository (a user's slow tag delete) leaves no stale check
behind. Against the real registry; the turn is held by the test, and the order is driven by Deferreds.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from payloadtags.cleanup.cascade import Aborted, Cascade
from payloadtags.registry import RegistryClient, RegistrySettings
from payloadtags.registry.queue import RepositoryQueue
from tests.support import images
from tests.support.cleanup_fixtures import unique_namespace
from tests.support.dangling import dangling_tags, make_dangling
from tests.support.registry_server import RegistryServer


class WatchedQueue(RepositoryQueue):
    """Fires ``queued`` once a hold is in line behind another one of its repository."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: Deferred[str] = Deferred()

    @contextlib.asynccontextmanager
    async def hold(self, repository: str) -> AsyncIterator[None]:
        behind = self.depth(repository) > 0
        async with contextlib.AsyncExitStack() as stack:
            # Runs until it waits for the turn: it is in line when `queued` fires.
            turn = Deferred.fromCoroutine(stack.enter_async_context(RepositoryQueue.hold(self, repository)))
            if behind and not self.queued.called:
                self.queued.callback(repository)
            await turn
            yield


async def hold_turn(queue: RepositoryQueue, repository: str, release: Deferred[None]) -> None:
    """Another mutation of the repository in this process (a user's slow delete), until ``release``."""
    async with queue.hold(repository):
        await release


@pytest.mark.parametrize("change", ["created anew", "leadership lost", "leadership lost during a repair"])
@pytest_twisted.ensureDeferred
async def test_a_cascade_delete_queued_behind_another_mutation_is_checked_in_its_turn(
    registry: RegistryServer, change: str
) -> None:
    """The cascade's digest DELETE (or a dangling tag's repair) is ready while the repository's turn
    is held by another mutation; the checks pass then. While it waits, the namespace is created anew
    with the same image pushed (after the other replica emptied the old one), or this replica stops
    leading. When the turn comes, the checks made in it stop the cascade: nothing is sent, and the
    new namespace's tag, or the tag the old leader was deleting, is still there."""
    namespace = unique_namespace("queued")
    repository = f"{namespace}/app"
    digest = images.push_oci_image(registry, repository, "a", seed=f"{namespace}-same")
    if change == "leadership lost during a repair":
        make_dangling(registry, repository, digest)  # the cascade repairs it, through delete_tag
    queue = WatchedQueue()
    client = RegistryClient(reactor, RegistrySettings(url=registry.url, timeout=5.0), queue=queue)
    state = {"exists": False, "leading": True}

    async def confirm() -> None:
        if state["exists"]:
            raise Aborted("the cluster API says the namespace exists")

    def guard() -> str | None:
        return None if state["leading"] else "no longer leading"

    release: Deferred[None] = Deferred()
    other = Deferred.fromCoroutine(hold_turn(queue, repository, release))
    cascade = Deferred.fromCoroutine(
        Cascade(client, reactor, concurrency=1).run(namespace, guard=guard, confirm=confirm)
    )
    try:
        assert await queue.queued == repository  # the cascade's mutation waits for its turn
        if change == "created anew":
            images.delete_manifest(registry, repository, digest)  # the other replica's removal
            state["exists"] = True
            assert images.push_oci_image(registry, repository, "web", seed=f"{namespace}-same") == digest
        else:
            state["leading"] = False
        release.callback(None)
        await other
        with pytest.raises(Aborted):
            await cascade
    finally:
        await client.close()
    if change == "created anew":
        assert images.list_tags(registry, repository) == ["web"]
    elif change == "leadership lost":
        assert images.list_tags(registry, repository) == ["a"]
    else:
        assert dangling_tags(registry.url, repository) == ["a"]  # not repaired, not deleted
