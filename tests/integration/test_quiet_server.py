"""A server goes quiet once its lists have stopped a while: the caches they filled are emptied
(server.WHEN_QUIET through quiet.WhenQuiet, on the quiet loop's clock, here a task.Clock)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet.task import Clock, deferLater

from payloadtags.api import continuation, render
from payloadtags.limits import HttpLimits
from payloadtags.quiet import QUIET_AFTER
from tests.support import images
from tests.support.registry_server import RegistryServer

B = "/apis/payload-registry.deckhouse.io/v1alpha1"


@pytest_twisted.ensureDeferred
async def test_a_server_goes_quiet_after_its_lists_and_not_before(
    make_server: Callable[..., Any], registry: RegistryServer, repo: str
) -> None:
    for tag in ("v1", "v2"):
        images.push_oci_image(registry, repo, tag)
    clock = Clock()
    server = await make_server(registry, quiet_clock=clock)
    quiet = server.running.quiet
    assert quiet.after == QUIET_AFTER  # the default --request-timeout (60 s) ends every list before
    client = server.client(server.pki.admin)
    collection = f"{B}/namespaces/{repo.split('/')[0]}/payloadrepositorytags"
    assert (await client.get(collection)).code == 200
    page = await client.get(f"{collection}?limit=1")
    assert page.code == 200 and page.json()["metadata"]["continue"]
    assert quiet.begun() == 2

    def left() -> tuple[int, int]:
        return render._maker.cache_info().currsize, len(continuation._parts)

    clock.advance(QUIET_AFTER / 3)  # the loop's first look: lists have begun since it started
    for _ in range(2):
        clock.advance(QUIET_AFTER / 3)
        assert all(left()), "emptied before 3 minutes without a list"
    # The lists' record (a namespace nobody watches) is kept --watch-scope-idle-timeout after its
    # last use, on the hub's clock (the reactor here): the server waits for it (review r10quiet L1).
    hub = server.running.api.watch_hub
    assert quiet.held() and hub.listed.records
    clock.advance(QUIET_AFTER / 3)
    assert all(left()), "emptied while the lists' record was kept"
    hub.listed.expire(float("inf"))  # as the hub's reap drops it once unused that long
    assert not quiet.held()
    clock.advance(QUIET_AFTER / 3)
    assert left() == (0, 0)
    await server.stop()
    assert clock.getDelayedCalls() == []  # the loop ends with the server


@pytest_twisted.ensureDeferred
async def test_a_longer_request_timeout_makes_the_server_wait_past_it(
    make_server: Callable[..., Any], registry: RegistryServer
) -> None:
    # --request-timeout=5m: a list may still be served 5 minutes after it began, so 7 minutes.
    server = await make_server(registry, http=HttpLimits(request_timeout=300.0))
    assert server.running.quiet.after == 300.0 + 120.0


@pytest_twisted.ensureDeferred
async def test_a_server_waits_for_a_record_its_client_keeps_a_bounded_time(
    make_server: Callable[..., Any], registry: RegistryServer, repo: str, reactor: Any
) -> None:
    # Review r12quiet L1: a client that watches again and again from its list's resourceVersion (no
    # bookmarks, nothing changing in the namespace) renews the list's record at each watch, so the
    # record, and ``held``, last as long as it goes on. The server waits 1.5 timeouts past the 3
    # minutes at most: what is held then is kept by its users, and waiting frees none of it.
    images.push_oci_image(registry, repo, "v1")
    clock = Clock()
    server = await make_server(registry, quiet_clock=clock)
    quiet, hub = server.running.quiet, server.running.api.watch_hub
    client = server.client(server.pki.admin)
    collection = f"{B}/namespaces/{repo.split('/')[0]}/payloadrepositorytags"
    rv = (await client.get(collection)).json()["metadata"]["resourceVersion"]
    (record,) = hub.listed.records.values()
    touched = [record.touched]
    for _ in range(3):
        await deferLater(reactor, 1.0, lambda: None)
        watch = await client.get(f"{collection}?watch=true&resourceVersion={rv}&timeoutSeconds=1")
        assert watch.code == 200
        touched.append(record.touched)
    assert touched == sorted(set(touched)), touched  # each watch kept it
    assert list(hub.listed.records.values()) == [record] and quiet.held()
    clock.advance(QUIET_AFTER / 3)  # the loop's first look: a list has begun since it started
    at_most = QUIET_AFTER + 1.5 * hub.limits.idle_scope_ttl
    for _ in range(int(at_most // (QUIET_AFTER / 3)) - 1):
        clock.advance(QUIET_AFTER / 3)
        assert render._maker.cache_info().currsize, "emptied while the record was kept, before the bound"
    clock.advance(QUIET_AFTER / 3)
    assert quiet.held() and render._maker.cache_info().currsize == 0
    await server.stop()
