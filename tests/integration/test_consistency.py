"""Registry mutations under concurrency and faults, against the real registry (distribution 2.8).

Faults come from a proxy in front of the registry (`tests.support.faultproxy`); concurrent pushes
from another client go straight to the registry at the exact moment a fault is decided.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.logger import formatEvent
from twisted.python.failure import Failure

from payloadtags.api.errors import ApiError
from payloadtags.api.options import DeleteOptions, list_options
from payloadtags.limits import HttpLimits
from payloadtags.names import TagRef
from payloadtags.registry import (
    DELETE_NONCE_ANNOTATION,
    RegistryError,
    RegistryNotFound,
    RegistryTimeout,
    RegistryUnavailable,
)
from payloadtags.registry.client import LATE_WRITE_GRACE
from tests.support import images
from tests.support.clocks import SkipAhead
from tests.support.dangling import dangling_tags, make_dangling, race_dangling
from tests.support.faultproxy import ERROR_AFTER, ERROR_BEFORE, GATEWAY_LATE, LATE, STALL, FaultProxy
from tests.support.interleaving import USER, Replica
from tests.support.kubeapi import eventually
from tests.support.logcapture import collected_logs
from tests.support.registry_server import RegistryServer
from tests.support.unanswered import WaitClock, first_of

ZEROS = "0" * 64
# The client's registry timeout where the test holds a request at the proxy (`FaultProxy.hold`) and
# releases it at the step it is about (the delete's first read after it, or its error): the held one
# meets the timeout whatever the machine's speed, and every other one must not, a loaded machine's
# included. A timeout of 0.3 s, with a stall of the proxy's racing it, was missed there by plain reads.
HELD_TIMEOUT = 2.0


@pytest_twisted.async_yield_fixture
async def proxied(reactor: Any, registry: RegistryServer) -> Any:
    """proxied(decide, stall=, timeout=, hold=) -> (FaultProxy, Replica) in front of the session
    registry; ``hold``: what the stalled and late requests wait for instead of ``stall``."""
    made: list[tuple[FaultProxy, Replica]] = []

    def make(
        decide: Callable[[str, str], str | None],
        stall: float = 3.0,
        timeout: float = 5.0,
        hold: Deferred[None] | None = None,
        **options: Any,
    ) -> tuple[FaultProxy, Replica]:
        proxy = FaultProxy(reactor, registry.url, decide, stall=stall, hold=hold)
        replica = Replica.make(reactor, proxy.url, timeout=timeout, **options)
        made.append((proxy, replica))
        return proxy, replica

    yield make
    for proxy, replica in made:
        await replica.close()
        await proxy.stop()


def unique_delete(method: str, path: str) -> bool:
    """The digest DELETE of the unique copy (not the probe, not a tag)."""
    return method == "DELETE" and "/manifests/sha256:" in path and not path.endswith(ZEROS)


def reads(method: str, path: str, tag: str = "v1") -> bool:
    """A read of ``tag`` (where it points)."""
    return method in ("GET", "HEAD") and path.endswith(f"/manifests/{tag}")


def release(hold: Deferred[None]) -> None:
    """The held requests go on (to the registry, or their answer to a client that gave up on them)."""
    if not hold.called:
        hold.callback(None)


def watched(hold: Deferred[None], seen: list[str], path: str) -> None:
    """A read of the tag after a write the proxy holds went unanswered: the second one releases the
    write, which lands between two of the delete's reads. (The second may be a look after the watch,
    by a delete that read the tag once and gave up: the write then races that look. Where that matters,
    `lands_in_the_watch` decides it.)"""
    seen.append(path)
    if len(seen) == 2:
        release(hold)


def lands_in_the_watch(
    monkeypatch: pytest.MonkeyPatch, replica: Replica, proxy: FaultProxy, hold: Deferred[None]
) -> None:
    """The held write is released at the delete's first pause between two reads of the tag, and the
    pause ends only once the registry has answered it: the write lands after the watch's first read and
    before its second, however slow the machine is. A delete that reads the tag once and goes on never
    pauses there, so the write stays held past everything it does: it finds the tag as it was."""
    pause = replica.client._pause

    async def paused(*clock: Any) -> None:
        if not hold.called:
            release(hold)
            await proxy.settled()  # the watch's read was answered: the write is all that is in flight
        await pause(*clock)

    monkeypatch.setattr(replica.client, "_pause", lambda *clock: Deferred.fromCoroutine(paused(*clock)))


# --- conditional writes ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_failed_delete_leaves_the_tag_as_it_was(registry, repo, proxied) -> None:
    digest = images.push_oci_image(registry, repo, "v1")
    images.tag_manifest(registry, repo, "v1", "sibling")
    _, replica = proxied(lambda method, path: ERROR_BEFORE if unique_delete(method, path) else None)
    with pytest.raises(RegistryUnavailable) as caught:
        await replica.client.delete_tag(repo, "v1")
    assert f"left as it was, on {digest}" in caught.value.message
    assert images.resolve(registry, repo, "v1") == digest
    assert images.resolve(registry, repo, "sibling") == digest


@pytest_twisted.ensureDeferred
async def test_push_during_failed_delete_kept_409(registry, repo, proxied) -> None:
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1", seed="old")
    pushed: list[str] = []

    def decide(method: str, path: str) -> str | None:
        if unique_delete(method, path) and not pushed:
            # Another client pushes a new image to the tag right before our digest delete fails.
            pushed.append(images.push_oci_image(registry, repo, "v1", seed="new"))
            return ERROR_BEFORE
        return None

    _, replica = proxied(decide)
    ref = TagRef(namespace, path, "v1")
    with pytest.raises(ApiError) as caught:
        await replica.service.delete(USER, namespace, ref.name, DeleteOptions())
    assert caught.value.code == 409 and caught.value.reason == "Conflict"
    assert f"now points at {pushed[0]}" in caught.value.message and f"{repo}:v1" in caught.value.message
    assert images.resolve(registry, repo, "v1") == pushed[0]  # the push stands, nothing restored over it


@pytest_twisted.ensureDeferred
async def test_a_delete_whose_answer_was_lost_succeeds(registry, repo, proxied) -> None:
    digest = images.push_oci_image(registry, repo, "v1")
    images.tag_manifest(registry, repo, "v1", "sibling")
    proxy, replica = proxied(lambda method, path: ERROR_AFTER if unique_delete(method, path) else None)
    assert await replica.client.delete_tag(repo, "v1") == digest
    assert proxy.injected[ERROR_AFTER] == 1
    assert images.list_tags(registry, repo) == ["sibling"]
    assert images.resolve(registry, repo, "sibling") == digest


@pytest.mark.parametrize(
    ("fault", "client_timeout"),
    [
        (LATE, HELD_TIMEOUT),  # our own timeout
        # A gateway's 504 at once (its upstream timeout shorter than the registry's time to answer),
        # the write landing a moment later: no answer, as a timeout (docs/consistency.md).
        (GATEWAY_LATE, 5.0),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_retag_landing_soon_after_timeout_finishes(
    registry: RegistryServer,
    repo: str,
    proxied: Any,
    fault: str,
    client_timeout: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The re-tag reaches the registry a moment after the client gave up on it (between two reads of
    the tag after it): the delete watches the tag for that, sees its copy land, and finishes; the
    sibling stays."""
    digest = images.push_oci_image(registry, repo, "v1")
    images.tag_manifest(registry, repo, "v1", "sibling")
    hold: Deferred[None] = Deferred()
    retags: list[str] = []

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and path.endswith("/manifests/v1"):
            retags.append(path)
            return fault
        return None

    proxy, replica = proxied(decide, timeout=client_timeout, hold=hold)
    lands_in_the_watch(monkeypatch, replica, proxy, hold)
    assert await replica.client.delete_tag(repo, "v1") == digest
    assert proxy.injected[fault] == 1
    await proxy.settled()
    assert images.list_tags(registry, repo) == ["sibling"]
    assert images.resolve(registry, repo, "sibling") == digest


@pytest_twisted.ensureDeferred
async def test_a_retag_landing_at_the_end_of_the_watch_is_caught(
    registry: RegistryServer, repo: str, proxied: Any
) -> None:
    """The re-tag behind a gateway's 504 lands in the watch's last pause, the one that ends
    `LATE_WRITE_GRACE` timeouts after the watch began, on its clock (the test's, moved pause by pause):
    the delete's look after the watch sees its copy land, and it finishes; the sibling stays. A watch
    shorter by a pause ended before the re-tag landed, and the delete reported a write in doubt that
    then landed: the length of the watch is held here, where the tests above have the write land at
    its first pause."""
    digest = images.push_oci_image(registry, repo, "v1")
    images.tag_manifest(registry, repo, "v1", "sibling")
    hold: Deferred[None] = Deferred()
    retags: list[str] = []

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and path.endswith("/manifests/v1"):
            retags.append(path)
            return GATEWAY_LATE if len(retags) == 1 else None
        return None

    timeout = 5.0
    landing = WaitClock(shorter_than=math.inf)  # tells each pause of the watch, the only calls on it
    proxy, replica = proxied(decide, timeout=timeout, hold=hold, landing_clock=landing)
    deleting = Deferred.fromCoroutine(replica.client.delete_tag(repo, "v1"))
    while True:
        paused = landing.waits()
        delays: list[float] = []
        paused.addCallback(delays.append)
        await first_of(deleting, paused)
        assert not deleting.called, "the delete ended within the watch, its re-tag held"
        [delay] = delays
        if landing.seconds() + delay >= LATE_WRITE_GRACE * timeout:
            break  # the watch's last pause
        landing.advance(delay)
    release(hold)  # the re-tag lands now, within the watch
    await proxy.settled()
    landing.advance(delay)
    assert await deleting == digest
    assert len(retags) == 1
    assert images.list_tags(registry, repo) == ["sibling"]
    assert images.resolve(registry, repo, "sibling") == digest


@pytest_twisted.ensureDeferred
async def test_a_failed_read_while_the_retag_is_late_does_not_end_the_wait(
    registry: RegistryServer, repo: str, proxied: Any
) -> None:
    """The first read of the tag after the re-tag timed out fails: that says nothing about the
    re-tag, so the delete keeps watching, sees its copy land and finishes. (Ending the wait there
    reported the tag as it was, and the re-tag then landed after the delete had ended: a tag that
    a namespace's cleanup had already found gone came back.)"""
    digest = images.push_oci_image(registry, repo, "v1")
    images.tag_manifest(registry, repo, "v1", "sibling")
    late: list[str] = []
    failed: list[str] = []
    seen: list[str] = []

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and path.endswith("/manifests/v1") and not late:
            late.append(path)
            return LATE
        if late and not failed and method == "HEAD" and path.endswith("/manifests/v1"):
            failed.append(path)
            return ERROR_BEFORE
        if failed and reads(method, path):
            watched(hold, seen, path)  # read again after the failed read: the re-tag lands later
        return None

    hold: Deferred[None] = Deferred()
    proxy, replica = proxied(decide, timeout=HELD_TIMEOUT, hold=hold)
    assert await replica.client.delete_tag(repo, "v1") == digest
    assert proxy.injected[LATE] == 1 and proxy.injected[ERROR_BEFORE] == 1
    await proxy.settled()
    assert images.list_tags(registry, repo) == ["sibling"]
    assert images.resolve(registry, repo, "sibling") == digest


@pytest_twisted.ensureDeferred
async def test_a_retag_the_registry_carries_out_late_is_named_in_the_error(
    registry: RegistryServer, repo: str, proxied: Any
) -> None:
    """The re-tag reaches the registry only after the client gave up on it: the delete cannot know
    whether it will land, so its error says where the tag would then point, and it does."""
    digest = images.push_oci_image(registry, repo, "v1")
    images.tag_manifest(registry, repo, "v1", "sibling")
    late: list[str] = []

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and path.endswith("/manifests/v1") and not late:
            late.append(path)
            return LATE
        return None

    hold: Deferred[None] = Deferred()
    proxy, replica = proxied(decide, timeout=HELD_TIMEOUT, hold=hold, landing_clock=SkipAhead())
    with pytest.raises(RegistryTimeout) as caught:
        await replica.client.delete_tag(repo, "v1")
    release(hold)  # past the wait for it
    message = caught.value.message
    assert f"left as it was, on {digest}" in message
    assert "may still carry it out" in message
    await proxy.settled()
    now = images.get_manifest(registry, repo, "v1")
    assert now is not None and now.digest != digest  # the late re-tag landed
    assert f"the tag would then point at {now.digest}, a copy of {digest}" in message
    assert DELETE_NONCE_ANNOTATION in now.json()["annotations"]
    assert images.resolve(registry, repo, "sibling") == digest
    assert await replica.client.delete_tag(repo, "v1") == now.digest  # deleting again removes it
    assert images.list_tags(registry, repo) == ["sibling"]


@pytest_twisted.ensureDeferred
async def test_a_late_retag_after_someone_else_deleted_the_tag_is_no_success(
    registry: RegistryServer, repo: str, proxied: Any
) -> None:
    """Another client deletes the tag while our re-tag is held: the tag is gone when the delete
    looks, but the held re-tag still lands and brings it back. The delete must not claim success."""
    digest = images.push_oci_image(registry, repo, "v1")
    held: list[str] = []

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and path.endswith("/manifests/v1") and not held:
            held.append(path)
            assert images.delete_manifest(registry, repo, digest) == 202  # the other client's delete
            return LATE
        return None

    hold: Deferred[None] = Deferred()
    proxy, replica = proxied(decide, timeout=HELD_TIMEOUT, hold=hold, landing_clock=SkipAhead())
    with pytest.raises(RegistryTimeout) as caught:
        await replica.client.delete_tag(repo, "v1")
    release(hold)  # past the wait for it
    message = caught.value.message
    assert f"tag {repo}:v1 is gone now" in message and "may still carry it out" in message
    await proxy.settled()
    back = images.get_manifest(registry, repo, "v1")
    assert back is not None  # the held re-tag landed after all
    assert f"the tag would then point at {back.digest}, a copy of {digest}" in message
    assert await replica.client.delete_tag(repo, "v1") == back.digest
    assert images.list_tags(registry, repo) == []


@pytest_twisted.ensureDeferred
async def test_a_restore_that_fails_says_where_the_tag_points(registry, repo, proxied) -> None:
    digest = images.push_oci_image(registry, repo, "v1")
    puts: list[str] = []

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and "/manifests/" in path:
            puts.append(path)
            return ERROR_BEFORE if len(puts) > 1 else None  # the re-tag lands, the restore fails
        return ERROR_BEFORE if unique_delete(method, path) else None

    _, replica = proxied(decide)
    with pytest.raises(RegistryUnavailable) as caught:
        await replica.client.delete_tag(repo, "v1")
    now = images.get_manifest(registry, repo, "v1")
    assert now is not None and now.digest != digest
    assert f"now points at {now.digest}, a copy of {digest}" in caught.value.message
    assert DELETE_NONCE_ANNOTATION in now.json()["annotations"]


@pytest_twisted.ensureDeferred
async def test_a_restore_carried_out_late_is_waited_for_even_after_the_copy_was_deleted(
    registry, repo, proxied
) -> None:
    """The copy cannot be deleted, so the delete puts the tag back; that restore reaches the registry
    only after the client's timeout, and meanwhile another replica's namespace removal deletes the
    copy (the tag reads as gone). The delete waits for the restore to land and says the tag is
    there: a namespace removal then sees it and goes on. Reporting the copy (or nothing) at the
    timeout let the restore bring the tag back after the removal had answered 200 (seed 16010)."""
    digest = images.push_oci_image(registry, repo, "v1")
    puts: list[str] = []
    copies: list[str] = []
    seen: list[str] = []

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and path.endswith("/manifests/v1"):
            puts.append(path)
            if len(puts) == 1:
                return None  # the re-tag lands
            copy = images.resolve(registry, repo, "v1")
            assert copy is not None and copy != digest
            copies.append(copy)
            assert images.delete_manifest(registry, repo, copy) == 202  # the other replica's delete
            return LATE  # the restore
        if len(puts) > 1 and reads(method, path):
            watched(hold, seen, path)  # the delete watches the tag after the restore: it lands
        return ERROR_BEFORE if unique_delete(method, path) else None

    hold: Deferred[None] = Deferred()
    proxy, replica = proxied(decide, timeout=HELD_TIMEOUT, hold=hold)
    with pytest.raises(RegistryError) as caught:
        await replica.client.delete_tag(repo, "v1")
    assert proxy.injected[LATE] == 1 and copies
    assert f"left as it was, on {digest}" in caught.value.message, caught.value.message
    assert images.resolve(registry, repo, "v1") == digest  # there when the delete said so, not later
    await proxy.settled()
    assert images.resolve(registry, repo, "v1") == digest


@pytest_twisted.ensureDeferred
async def test_a_late_restore_whose_tag_cannot_be_read_reports_where_the_tag_was_last_seen(
    registry, repo, proxied
) -> None:
    """As above, but no read of the tag answers while the delete waits for its restore: the error
    says the tag was last seen on the copy, never that it is gone."""
    digest = images.push_oci_image(registry, repo, "v1")
    puts: list[str] = []

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and path.endswith("/manifests/v1"):
            puts.append(path)
            return None if len(puts) == 1 else LATE
        if len(puts) > 1 and method in ("GET", "HEAD") and path.endswith("/manifests/v1"):
            return ERROR_BEFORE
        return ERROR_BEFORE if unique_delete(method, path) else None

    hold: Deferred[None] = Deferred()
    proxy, replica = proxied(decide, timeout=HELD_TIMEOUT, hold=hold, landing_clock=SkipAhead())
    with pytest.raises(RegistryError) as caught:
        await replica.client.delete_tag(repo, "v1")
    copy = images.resolve(registry, repo, "v1")
    assert copy is not None and copy != digest
    assert f"now points at {copy}, a copy of {digest}" in caught.value.message, caught.value.message
    assert "gone" not in caught.value.message
    release(hold)  # the restore lands, after the wait for it
    await proxy.settled()


@pytest_twisted.ensureDeferred
async def test_a_restore_whose_answer_was_lost_is_reported_where_the_tag_is(registry, repo, proxied) -> None:
    """The copy cannot be deleted; the restore is carried out and its answer lost (a 500 after the
    work): the error says what a read of the tag shows, the tag left as it was, not the copy."""
    digest = images.push_oci_image(registry, repo, "v1")
    puts: list[str] = []

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and "/manifests/" in path:
            puts.append(path)
            return ERROR_AFTER if len(puts) > 1 else None  # the re-tag lands; so does the restore
        return ERROR_BEFORE if unique_delete(method, path) else None

    proxy, replica = proxied(decide)
    with pytest.raises(RegistryUnavailable) as caught:
        await replica.client.delete_tag(repo, "v1")
    assert proxy.injected[ERROR_AFTER] == 1
    assert images.resolve(registry, repo, "v1") == digest
    assert f"was left as it was, on {digest}" in caught.value.message, caught.value.message
    assert "could not be restored" not in caught.value.message


# --- a gateway in front of the registry ----------------------------------------------------------------
# An ingress, load balancer or sidecar whose upstream timeout is shorter than the registry's time to
# answer sends its own 504 at once; the registry carries the write out later. Its 5xx to a write is
# no answer (docs/consistency.md), as a timeout is not. Each write lands between two of the delete's
# reads of the tag past that 504 (the proxy holds it until the watch's first pause, `lands_in_the_watch`,
# or the second read, `watched`), within the 2 x 5 s that a delete watches the tag for it, however slow
# the machine is.


@pytest_twisted.ensureDeferred
async def test_a_retag_behind_a_gateway_timeout_after_someone_else_deleted_the_tag_is_not_undone(
    registry, repo, proxied, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another client deletes the tag while our re-tag is held behind the gateway's 504: the tag reads
    as gone, but the re-tag still lands and brings it back. Taking the 504 for an answer, the delete
    reported success there, and the tag came back after it."""
    digest = images.push_oci_image(registry, repo, "v1")
    held: list[str] = []

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and path.endswith("/manifests/v1") and not held:
            held.append(path)
            assert images.delete_manifest(registry, repo, digest) == 202  # the other client's delete
            return GATEWAY_LATE
        return None

    hold: Deferred[None] = Deferred()
    proxy, replica = proxied(decide, timeout=5.0, hold=hold)
    lands_in_the_watch(monkeypatch, replica, proxy, hold)
    assert await replica.client.delete_tag(repo, "v1") == digest  # the copy landed, and went
    await proxy.settled()
    assert images.list_tags(registry, repo) == []


@pytest_twisted.ensureDeferred
async def test_a_restore_behind_a_gateway_timeout_is_waited_for_so_a_retry_is_not_undone(
    registry, repo, proxied
) -> None:
    """The copy cannot be deleted, and the restore gets the gateway's 504 and lands later. Taken for
    an answer, the error said the tag was on the copy; the retry it invited deleted the tag, and then
    the first delete's restore brought it back after that retry had answered success."""
    digest = images.push_oci_image(registry, repo, "v1")
    puts: list[str] = []
    copy_deletes: list[str] = []
    seen: list[str] = []

    def decide(method: str, path: str) -> str | None:
        if method == "PUT" and "/manifests/" in path:
            puts.append(path)
            return GATEWAY_LATE if len(puts) == 2 else None  # the first delete's restore
        if unique_delete(method, path):
            copy_deletes.append(path)
            return ERROR_BEFORE if len(copy_deletes) <= 2 else None  # the first delete's two tries
        if len(puts) >= 2 and reads(method, path):
            watched(hold, seen, path)
        return None

    hold: Deferred[None] = Deferred()
    proxy, replica = proxied(decide, timeout=5.0, hold=hold)
    with pytest.raises(RegistryUnavailable) as caught:
        await replica.client.delete_tag(repo, "v1")
    assert proxy.injected[GATEWAY_LATE] == 1
    assert f"was left as it was, on {digest}" in caught.value.message, caught.value.message
    assert images.resolve(registry, repo, "v1") == digest  # there when the delete said so
    assert await replica.client.delete_tag(repo, "v1") == digest  # the retry
    await proxy.settled()
    assert images.list_tags(registry, repo) == []


# --- dangling tags ----------------------------------------------------------------------------------


def dangling_fixture(registry: RegistryServer, repo: str) -> tuple[str, str]:
    """t0 and t1 on one digest (left dangling), t2 on another: (dangling digest, t2's digest)."""
    gone = images.push_oci_image(registry, repo, "t0", seed=f"{repo}-a")
    images.tag_manifest(registry, repo, "t0", "t1")
    kept = images.push_oci_image(registry, repo, "t2", seed=f"{repo}-b")
    make_dangling(registry, repo, gone)
    return gone, kept


def test_the_dangling_state_is_what_a_half_failed_delete_leaves(registry, repo) -> None:
    # The same three observations as on the tags the race leaves (test_the_race_leaves_dangling_tags).
    gone, _ = dangling_fixture(registry, repo)
    assert images.list_tags(registry, repo) == ["t0", "t1", "t2"]
    assert dangling_tags(registry.url, repo) == ["t0", "t1"]
    assert images.delete_manifest(registry, repo, gone) == 404  # undeletable by digest


@pytest_twisted.ensureDeferred
async def test_a_single_delete_repairs_a_dangling_tag_and_nothing_else(registry, repo, proxied) -> None:
    _, kept = dangling_fixture(registry, repo)
    _, replica = proxied(lambda method, path: None)
    assert await replica.client.delete_tag(repo, "t0") is None
    assert images.list_tags(registry, repo) == ["t1", "t2"]  # t1 dangles still: nobody asked
    assert images.resolve(registry, repo, "t2") == kept
    with pytest.raises(RegistryNotFound):
        await replica.client.delete_tag(repo, "t0")


@pytest_twisted.ensureDeferred
async def test_a_delete_left_dangling_by_the_registry_finishes_past_a_failed_check(
    registry: RegistryServer, repo: str, proxied: Any
) -> None:
    """The registry removes the delete's copy and fails before untagging the tag (2.8's half-failed
    DELETE: the tag dangles), and the read that finds where the tag points then stalls. The read is
    tried again, the delete repairs the tag and finishes. (Giving up at the stall left the tag
    dangling, with an error asking the user to retry: found by the slow tier's seed 1111.)"""
    digest = images.push_oci_image(registry, repo, "v1")
    images.tag_manifest(registry, repo, "v1", "sibling")
    half_done: list[str] = []
    stalled: list[str] = []

    def decide(method: str, path: str) -> str | None:
        if unique_delete(method, path) and not half_done:
            copy = path.rpartition("/manifests/")[2]
            half_done.append(copy)
            make_dangling(registry, repo, copy)
            return ERROR_BEFORE  # the registry's own 500, after it removed the revision
        if half_done and not stalled and method == "HEAD" and path.endswith("/manifests/v1"):
            stalled.append(path)
            return STALL
        if stalled and reads(method, path):
            release(hold)  # the read is tried again: the stalled one's answer comes, too late
        return None

    hold: Deferred[None] = Deferred()
    proxy, replica = proxied(decide, timeout=HELD_TIMEOUT, hold=hold)
    assert await replica.client.delete_tag(repo, "v1") == digest
    assert half_done and stalled
    await proxy.settled()
    assert images.list_tags(registry, repo) == ["sibling"]
    assert dangling_tags(registry.url, repo) == []
    assert images.resolve(registry, repo, "sibling") == digest


@pytest_twisted.ensureDeferred
async def test_deletecollection_repairs_dangling_tags(registry, repo, proxied) -> None:
    namespace = repo.split("/", 1)[0]
    dangling_fixture(registry, repo)
    _, replica = proxied(lambda method, path: None)
    items, _ = await replica.service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
    assert sorted(item.spec.tag for item in items) == ["t0", "t1", "t2"]
    assert images.list_tags(registry, repo) == []


@pytest_twisted.ensureDeferred
async def test_the_cascade_repairs_dangling_tags(registry, repo, proxied) -> None:
    namespace = repo.split("/", 1)[0]
    dangling_fixture(registry, repo)
    _, replica = proxied(lambda method, path: None)
    result = await replica.cascade.run(namespace)
    assert images.list_tags(registry, repo) == []
    assert replica.cascade.metrics.dangling_tags_repaired_total == 2
    assert result.tags_deleted == 3


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_the_race_leaves_dangling_tags_and_deletes_repair_them(registry, reactor) -> None:
    from twisted.internet.threads import deferToThread

    repository, left, _errors = await deferToThread(race_dangling, registry.url, "race")
    session = images.Session(registry.url)
    for tag in left:
        assert tag in images.list_tags(registry, repository)
        head = session.request("HEAD", f"/v2/{repository}/manifests/{tag}", headers={"Accept": images.ACCEPT})
        assert head.status == 404
    replica = Replica.make(reactor, registry.url, timeout=5.0)
    try:
        for tag in left:
            assert await replica.client.delete_tag(repository, tag) is None
    finally:
        await replica.close()
    assert not set(left) & set(images.list_tags(registry, repository))
    assert dangling_tags(registry.url, repository) == []


# --- deletecollection answers 200 only when the selection is gone ------------------------------------


@pytest_twisted.ensureDeferred
async def test_deletecollection_names_what_is_left_and_finishes_on_retry(registry, repo, proxied) -> None:
    namespace = repo.split("/", 1)[0]
    for tag in ("a", "b", "c"):
        images.push_oci_image(registry, repo, tag, seed=f"{repo}-{tag}")
    failing = {"on": True}

    def decide(method: str, path: str) -> str | None:
        # Every write to tag b fails while `on`: its re-tag never lands.
        return ERROR_BEFORE if failing["on"] and method == "PUT" and path.endswith("/manifests/b") else None

    _, replica = proxied(decide)
    with pytest.raises(ApiError) as caught:
        await replica.service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
    error = caught.value
    assert error.code == 503 and error.retry_after == 1
    assert (
        f'1 of 3 selected tag(s) are still there: "{TagRef(namespace, repo.split("/", 1)[1], "b").name}"'
        in (error.message)
    )
    assert f"{repo}:b" in error.message and "HTTP 500" in error.message
    assert error.details is not None and error.details.causes is not None
    [cause] = error.details.causes
    assert (cause["reason"], cause["field"]) == (
        "ResourceLeft",
        TagRef(namespace, repo.split("/", 1)[1], "b").name,
    )
    assert images.list_tags(registry, repo) == ["b"]
    failing["on"] = False
    items, _ = await replica.service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
    assert [item.spec.tag for item in items] == ["b"]
    assert images.list_tags(registry, repo) == []


@pytest_twisted.ensureDeferred
async def test_deletecollection_of_a_deleting_namespace_deletes_by_digest(registry, repo, proxied) -> None:
    namespace = repo.split("/", 1)[0]
    dangling_fixture(registry, repo)
    other = f"{namespace}/more/app"
    images.push_oci_image(registry, other, "a", seed=f"{other}-a")
    images.tag_manifest(registry, other, "a", "b")
    methods: list[str] = []

    def count(method: str, path: str) -> None:
        methods.append(method)

    _, replica = proxied(count, deleting=lambda ns: ns == namespace)
    items, _ = await replica.service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
    assert sorted(item.spec.tag for item in items) == ["a", "b", "t0", "t1", "t2"]
    assert images.list_tags(registry, repo) == [] and images.list_tags(registry, other) == []
    # No unique copy per tag: one PUT per dangling tag (its repair), the rest digest deletes.
    assert methods.count("PUT") == 2 + 1  # two placeholders, and the empty config blob's upload


@pytest_twisted.ensureDeferred
async def test_deletecollection_of_a_deleting_namespace_is_503_when_it_cannot_finish(
    registry, repo, proxied
) -> None:
    namespace = repo.split("/", 1)[0]
    images.push_oci_image(registry, repo, "a")
    _, replica = proxied(
        lambda method, path: ERROR_BEFORE if method == "DELETE" else None, deleting=lambda ns: True
    )
    with pytest.raises(ApiError) as caught:
        await replica.service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
    # Every DELETE fails and nothing was removed: no progress, so no Retry-After, which would make
    # client-go repeat the call at once (the namespace controller retries with its own backoff).
    assert caught.value.code == 503 and caught.value.retry_after is None
    assert f"{repo}:a" in caught.value.message and "is not finished" in caught.value.message
    assert images.list_tags(registry, repo) == ["a"]


@pytest_twisted.ensureDeferred
async def test_deletecollection_in_a_namespace_no_namespace_can_have_asks_nothing(registry, proxied) -> None:
    """With a namespace remover (as in a cluster), a deletecollection of all of a namespace no namespace
    can have (`kubectl delete prt -n Bad_NS --all`) is an empty 200: the cluster is not asked whether
    it is being deleted, nor the registry read, and no remover is started for it (which refuses such a
    name: a 500)."""
    asked: list[str] = []
    requests: list[str] = []

    def deleting(namespace: str) -> bool:
        asked.append(namespace)
        return True  # as the cluster answers for a namespace being deleted, or absent

    _, replica = proxied(lambda method, path: requests.append(f"{method} {path}"), deleting=deleting)
    for namespace in ("Bad_NS", "a.b", "x" * 64):
        for options in (DeleteOptions(), DeleteOptions(dry_run=True)):
            items, _ = await replica.service.delete_collection(USER, namespace, list_options({}), options)
            assert items == []
    assert (asked, requests) == ([], [])


def test_fault_proxy_error_body_is_registry_json() -> None:
    from tests.support import faultproxy

    assert json.loads(faultproxy._ERROR_BODY)["errors"][0]["code"] == "UNKNOWN"


# --- a delete whose caller stops waiting -------------------------------------------------------------


def stalled_retag(tag: str) -> Callable[[str, str], str | None]:
    return lambda method, path: STALL if method == "PUT" and path.endswith(f"/manifests/{tag}") else None


def cancel_at_once(delete: Deferred[Any]) -> None:
    """Cancel ``delete``, whose caller must be told so at once, whatever the delete still does."""
    delete.cancel()
    told: list[Failure] = []
    delete.addErrback(told.append)
    assert told and told[0].check(CancelledError)


async def retag_sent(proxy: FaultProxy) -> None:
    await eventually(lambda: any(e.method == "PUT" for e in proxy.exchanges), within=10)


@pytest_twisted.ensureDeferred
async def test_a_delete_whose_caller_stops_waiting_after_its_retag_is_finished(
    registry: RegistryServer, repo: str, proxied: Any
) -> None:
    """The caller (a request's deadline, a client gone) cancels the delete once its re-tag is out: it
    is told at once, the delete goes on to its end in its repository's turn, and only the tag goes.
    Cut short there, it left the tag on its copy (same content, another digest), and nobody told."""
    digest = images.push_oci_image(registry, repo, "v1")
    for other in ("sibling", "next"):
        images.tag_manifest(registry, repo, "v1", other)
    proxy, replica = proxied(stalled_retag("v1"), stall=0.5, timeout=5.0, finish_begun_deletes=True)
    first = Deferred.fromCoroutine(replica.client.delete_tag(repo, "v1"))
    await retag_sent(proxy)
    cancel_at_once(first)
    # The next delete in the repository waits until the carried one is done with it.
    assert await replica.client.delete_tag(repo, "next") == digest
    await replica.client.close()  # returns once the carried delete has ended
    assert images.list_tags(registry, repo) == ["sibling"]
    assert images.resolve(registry, repo, "sibling") == digest
    copy_deleted = next(e for e in proxy.exchanges if unique_delete(e.method, e.path))
    next_retag = next(e for e in proxy.exchanges if e.method == "PUT" and e.path.endswith("/manifests/next"))
    assert copy_deleted.answered is not None and copy_deleted.answered <= next_retag.sent


@pytest_twisted.ensureDeferred
async def test_a_delete_cancelled_before_its_turn_does_nothing(
    registry: RegistryServer, repo: str, proxied: Any
) -> None:
    digest = images.push_oci_image(registry, repo, "v1")
    images.tag_manifest(registry, repo, "v1", "waiting")
    proxy, replica = proxied(stalled_retag("v1"), stall=0.5, timeout=5.0, finish_begun_deletes=True)
    first = Deferred.fromCoroutine(replica.client.delete_tag(repo, "v1"))
    waiting = Deferred.fromCoroutine(replica.client.delete_tag(repo, "waiting"))
    await retag_sent(proxy)
    cancel_at_once(waiting)
    assert await first == digest
    await proxy.settled()
    assert images.list_tags(registry, repo) == ["waiting"]
    assert not any("/manifests/waiting" in e.path for e in proxy.exchanges)


@pytest_twisted.ensureDeferred
async def test_a_delete_request_past_its_deadline_answers_504_and_the_delete_is_finished(
    reactor: Any, registry: RegistryServer, repo: str, make_server: Any
) -> None:
    """Over HTTPS: the request deadline passes while the re-tag waits for its answer. The client gets
    504 at the deadline, the server finishes the delete, and the audit log says who asked. A delete
    that was still waiting for its turn is dropped, and the audit log says nothing of it."""
    namespace, path = repo.split("/", 1)
    digest = images.push_oci_image(registry, repo, "v1")
    for other in ("sibling", "waiting"):
        images.tag_manifest(registry, repo, "v1", other)
    # The deadline leaves room for the first delete to reach its re-tag on a loaded machine (1.5 s was
    # not always enough with a load of 10 on 2 cores); the stall keeps that re-tag unanswered past it,
    # and ends before the registry timeout (5 s), so that the server finishes the delete.
    proxy = FaultProxy(reactor, registry.url, stalled_retag("v1"), stall=4.0)
    try:
        with collected_logs() as events:
            server = await make_server(proxy.url, http=HttpLimits(request_timeout=2.5))
            client = server.client(server.pki.admin)
            item = "/apis/payload-registry.deckhouse.io/v1alpha1"
            item += f"/namespaces/{namespace}/payloadrepositorytags"
            # A second delete in the repository, sent once the first holds the repository's turn (its
            # re-tag stalled), waits for that turn past its own deadline: dropped.
            first = Deferred.fromCoroutine(client.delete(f"{item}/{TagRef(namespace, path, 'v1').name}"))
            await retag_sent(proxy)
            second = Deferred.fromCoroutine(
                client.delete(f"{item}/{TagRef(namespace, path, 'waiting').name}")
            )
            replies = await gatherResults([first, second])
            assert [r.code for r in replies] == [504, 504]
            reply = replies[0]
            assert reply.json()["reason"] == "Timeout"
            assert "a delete already under way is finished by the server" in reply.json()["message"]
            await proxy.settled()
            await eventually(
                lambda: images.list_tags(registry, repo) == ["sibling", "waiting"], within=10, interval=0.1
            )
            assert images.resolve(registry, repo, "sibling") == digest
            # The registry has carried out the last DELETE; its answer may still be on its way back.
            await eventually(
                lambda: any(
                    f"{repo}:v1" in line and "after its caller had stopped waiting" in line
                    for line in (formatEvent(e) for e in events)
                ),
                within=10,
                interval=0.1,
            )
            said = [formatEvent(e) for e in events]
            assert any(f"{repo}:v1 by admin" in line and "request ended" in line for line in said)
            assert not any(f"{repo}:waiting" in line for line in said)
    finally:
        await proxy.stop()


@pytest.mark.parametrize("collection_", [False, True])
@pytest_twisted.ensureDeferred
async def test_a_dry_run_delete_past_its_deadline_says_nothing_was_deleted(
    reactor: Any, registry: RegistryServer, repo: str, make_server: Any, collection_: bool
) -> None:
    """review-ops6 F2: a dry run's 504 said "a delete already under way is finished by the server: get
    the tags again to see which are gone", where a dry run deletes nothing. Its check (the probe) is
    held unanswered past the request's deadline; the 504 now says nothing was deleted, and to retry."""
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    armed: list[bool] = []
    hold: Deferred[None] = Deferred()

    def decide(method: str, url: str) -> str | None:
        return STALL if armed and method == "DELETE" and "/manifests/sha256:" in url else None

    proxy = FaultProxy(reactor, registry.url, decide, hold=hold)
    try:
        server = await make_server(proxy.url, http=HttpLimits(request_timeout=1.0))
        client = server.client(server.pki.admin)
        item = f"/apis/payload-registry.deckhouse.io/v1alpha1/namespaces/{namespace}/payloadrepositorytags"
        if not collection_:
            item += "/" + TagRef(namespace, path, "v1").name
        armed.append(True)
        reply = await client.delete(item + "?dryRun=All")
        assert reply.code == 504, reply.body
        message = reply.json()["message"]
        assert (
            message
            == "Timeout: the request did not complete within 1s; nothing was deleted (a dry run): try again"
        )
        hold.callback(None)
        await proxy.settled()
        assert images.list_tags(registry, repo) == ["v1"]
    finally:
        if not hold.called:
            hold.callback(None)
        await proxy.stop()
