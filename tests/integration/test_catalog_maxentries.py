"""A registry configured with a `catalog.maxentries` below the page size payloadtags asks for refuses
the page with 400 PAGINATION_NUMBER_INVALID (distribution 2.8; its error names only the `n` asked).
The client answers the page at a size the registry takes and asks no more from then on; a page
clamped that way is full at the size used, not short of the one asked, so 2.8's page that ends in a
digit-nested name without a next link is still read past (docs/registry.md, "Catalog").

Without the fix every list, the repository index's refresh, the sweep and the cascade failed with the
registry's 400 (a 503 for kubectl).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.logger import capturedLogs, formatEvent
from twisted.web.server import Request

from payloadtags.cleanup.cascade import Cascade
from payloadtags.inventory import Inventory
from payloadtags.registry import RegistryClient
from payloadtags.registry.client import CATALOG_PAGE_STEPS
from payloadtags.registry.errors import RegistryProtocolError
from payloadtags.repoindex import RepositoryIndex
from tests.integration.test_catalog_nesting import shown, streamed, walk
from tests.support import images
from tests.support.faultproxy import FaultProxy
from tests.support.kubectl import Kubectl
from tests.support.registry_server import RegistryServer, need_registry
from tests.support.scripted_http import Scripted, serving

MAXENTRIES = 50
# In 2.8's order (a walk of its storage): the 50th name is `ns/app/0`, nested in the `ns/app` that
# follows, so the page of 50 that ends there comes without a next link and only its being full says
# that names follow (`ns/app`, `ns/b` and namespace `nt`).
WALKED = (*(f"ns/a{i:02d}" for i in range(MAXENTRIES - 1)), "ns/app/0", "ns/app", "ns/b", "nt/c")
LISTED = (*(f"ns/a{i:02d}" for i in range(MAXENTRIES - 1)), "ns/app", "ns/app/0", "ns/b", "nt/c")


@pytest.fixture(scope="module")
def limited_registry() -> Iterator[RegistryServer]:
    need_registry()
    with RegistryServer(extra_config={"catalog": {"maxentries": MAXENTRIES}}) as server:
        for name in WALKED:
            images.push_oci_image(server, name, "v1", seed=name)
        yield server


@pytest_twisted.async_yield_fixture
async def counted(limited_registry: RegistryServer) -> AsyncIterator[FaultProxy]:
    """A proxy in front of the limited registry that records every request and its status."""
    proxy = FaultProxy(reactor, limited_registry.url)
    yield proxy
    await proxy.stop()


def refused(proxy: FaultProxy) -> int:
    """The catalog requests the registry refused so far."""
    return sum(1 for e in proxy.exchanges if e.path == "/v2/_catalog" and e.status == 400)


def tags(names: tuple[str, ...], namespace: str | None = None) -> list[str]:
    return [f"{name}:v1" for name in names if namespace is None or name.startswith(namespace + "/")]


def test_the_registry_refuses_larger_pages(limited_registry: RegistryServer) -> None:
    """What the tests stand on: 2.8 refuses more than its maxentries, saying only the `n` asked, and
    walks `ns/app/0` first (pages of 49: one of 50 would end there, without a next link)."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{limited_registry.url}/v2/_catalog?n={MAXENTRIES + 1}", timeout=10)
    assert refused.value.code == 400
    assert b"PAGINATION_NUMBER_INVALID" in refused.value.read()
    assert images.catalog(limited_registry, page_size=MAXENTRIES - 1) == list(WALKED)


@pytest_twisted.ensureDeferred
async def test_lists_answer_on_a_registry_with_a_smaller_catalog_maxentries(
    limited_registry: RegistryServer, make_client: Callable[..., RegistryClient]
) -> None:
    """A namespace list (asking 100, then 400), `-A` (asking 1000), streamed and paged walks: every
    tag once, in catalog order. The first page, clamped to 50, ends in `ns/app/0` without a next
    link: taken for a short page it ended the list there."""
    client = make_client(limited_registry)
    with capturedLogs() as events:
        inventory = Inventory(client)
        assert shown((await inventory.list("ns")).refs) == tags(LISTED, "ns")
    learned = [formatEvent(e) for e in events if "catalog.maxentries" in formatEvent(e)]
    assert len(learned) == 1 and "asking 50" in learned[0], learned  # said once, what it asks now
    assert shown((await inventory.list(None)).refs) == tags(LISTED)
    assert await streamed(inventory, "ns") == tags(LISTED, "ns")
    assert await streamed(inventory, None) == tags(LISTED)
    for limit in (7, 50, 500):
        for carry in (False, True):
            assert await walk(inventory, "ns", limit, carry) == tags(LISTED, "ns"), (limit, carry)
            assert await walk(inventory, None, limit, carry) == tags(LISTED), (limit, carry)


@pytest_twisted.ensureDeferred
async def test_each_client_learns_the_limit_on_its_first_refused_page(
    limited_registry: RegistryServer, make_client: Callable[..., RegistryClient]
) -> None:
    """A fresh client learns the limit on whatever page comes first: here a seek from the middle of
    the catalog, asked with the largest size (the cascade's, the sweep's)."""
    client = make_client(limited_registry)
    page = await client.catalog(last="ns/a00", n=1000)
    assert page.repositories == list(WALKED[1 : 1 + MAXENTRIES])
    assert page.n == MAXENTRIES and page.full(1000)
    # Later pages ask the size it took, and say so to callers that asked more.
    page = await client.catalog(n=200)
    assert page.repositories == list(WALKED[:MAXENTRIES]) and page.n == MAXENTRIES and page.full(200)
    page = await client.catalog(n=10)
    assert page.repositories == list(WALKED[:10]) and page.n is None and page.full(10)


@pytest_twisted.ensureDeferred
async def test_the_repository_index_sweep_and_cascade_read_the_whole_catalog(
    limited_registry: RegistryServer, make_client: Callable[..., RegistryClient]
) -> None:
    """The index's refresh asks pages of 1000; the sweep's and the cascade's walks too."""
    client = make_client(limited_registry)
    index = RepositoryIndex()
    assert await index.refresh(client) == len(WALKED)
    # `ns/app` is a guess (2.8's seek after `ns/app/0` leaves it out), read as one: a real repository.
    assert index.after(None) == list(LISTED)
    inventory = Inventory(client, index=index)
    assert shown((await inventory.list("ns")).refs) == tags(LISTED, "ns")
    cascade = Cascade(make_client(limited_registry), reactor, page_size=1000)
    counts = await cascade.contents("ns")
    assert (counts.repositories, counts.tags) == (len(WALKED) - 1, len(WALKED) - 1)


@pytest_twisted.ensureDeferred
async def test_kubectl_lists_on_a_registry_with_a_smaller_catalog_maxentries(
    limited_registry: RegistryServer, make_server: Callable[..., Any], kubectl_for: Callable[..., Kubectl]
) -> None:
    """The reviewer's case: `kubectl get prt -n ns` and `-A` answered 503 (the registry's 400)."""
    server = await make_server(limited_registry)
    kubectl = kubectl_for(server)
    result = await kubectl("get", "prt", "-n", "ns", "-o", "name")
    assert result.code == 0, result.err
    assert len(result.out.split()) == len(WALKED) - 1
    result = await kubectl("get", "prt", "-A", "-o", "name", "--chunk-size=7")
    assert result.code == 0, result.err
    assert len(result.out.split()) == len(WALKED)


@pytest_twisted.ensureDeferred
async def test_later_reads_ask_no_more_than_the_registry_took(
    counted: FaultProxy, make_client: Callable[..., RegistryClient]
) -> None:
    """Once refused, never again: after the first page learned 50 (1000, 500, 200 and 100 refused),
    later pages and lists ask 50 at most and the registry refuses none of them. Asking each call's
    size anew answers the same pages, but with three or four refused requests each."""
    client = make_client(counted.url)
    page = await client.catalog(last="ns/a00", n=1000)
    assert page.n == MAXENTRIES and refused(counted) == 4
    page = await client.catalog(n=200)
    assert page.repositories == list(WALKED[:MAXENTRIES]) and page.full(200)
    inventory = Inventory(client)
    assert shown((await inventory.list("ns")).refs) == tags(LISTED, "ns")
    assert shown((await inventory.list(None)).refs) == tags(LISTED)
    assert refused(counted) == 4


@pytest_twisted.ensureDeferred
async def test_concurrent_first_reads_step_down_once(
    counted: FaultProxy, make_client: Callable[..., RegistryClient]
) -> None:
    """Reads that start together on a fresh client are all refused; one steps the size down and the
    others wait for the size it finds: the ladder once (1000 down to 100: four refusals), plus one
    refusal for each other read, where each read walking its own ladder made twelve."""
    client = make_client(counted.url)
    asked = ((None, 1000), ("ns/a00", 1000), ("ns", 100), (None, 400))
    with capturedLogs() as events:
        pages = await defer.gatherResults(
            [defer.ensureDeferred(client.catalog(last=last, n=n)) for last, n in asked]
        )
    assert refused(counted) <= 4 + len(asked) - 1, [(e.path, e.status) for e in counted.exchanges]
    assert [page.repositories for page in pages] == [
        list(WALKED[:MAXENTRIES]),
        list(WALKED[1 : 1 + MAXENTRIES]),
        list(WALKED[:MAXENTRIES]),
        list(WALKED[:MAXENTRIES]),
    ]
    assert all(page.n == MAXENTRIES and page.full(n) for page, (_, n) in zip(pages, asked, strict=True))
    learned = [formatEvent(e) for e in events if "catalog.maxentries" in formatEvent(e)]
    assert len(learned) == 1, learned


def refusing(code: str) -> Callable[[Request, str], bytes]:
    """A stand-in registry that refuses every catalog page with a 400 of ``code``."""

    def answer(request: Request, path: str) -> bytes:
        request.setHeader("Content-Type", "application/json")
        if path == "/v2/":
            return b"{}"
        request.setResponseCode(400)
        return json.dumps({"errors": [{"code": code, "message": "refused", "detail": {}}]}).encode()

    return answer


def catalog(scripted: Scripted) -> list[tuple[str, str, str | None]]:
    return [seen for seen in scripted.seen if seen[1].startswith("/v2/_catalog")]


@pytest_twisted.ensureDeferred
async def test_a_refusal_of_every_size_fails_the_read_after_the_ladder(
    make_client: Callable[..., RegistryClient],
) -> None:
    """A registry that refuses even n=1 is not limiting the page size: the read fails as a registry
    error after one request per size, and no size is learned."""
    async with serving(reactor, refusing("PAGINATION_NUMBER_INVALID")) as (url, scripted):
        client = make_client(url)
        with pytest.raises(RegistryProtocolError) as caught:
            await client.catalog(n=1000)
        assert "PAGINATION_NUMBER_INVALID" in str(caught.value), caught.value
        assert "from 1000 down to 1" in str(caught.value), caught.value
        sizes = [urllib.parse.parse_qs(urllib.parse.urlsplit(p).query)["n"] for _, p, _ in catalog(scripted)]
        assert sizes == [[str(n)] for n in (1000, *CATALOG_PAGE_STEPS)]
        # Nothing learned, no refusal remembered: the next read asks its own size again.
        scripted.seen.clear()
        with pytest.raises(RegistryProtocolError):
            await client.catalog(n=1)
        assert [p for _, p, _ in catalog(scripted)] == ["/v2/_catalog?n=1"]
        scripted.seen.clear()
        with pytest.raises(RegistryProtocolError):
            await client.catalog(n=1000)
        assert next(p for _, p, _ in catalog(scripted)) == "/v2/_catalog?n=1000"


@pytest_twisted.ensureDeferred
async def test_another_400_fails_the_read_at_once(make_client: Callable[..., RegistryClient]) -> None:
    """Only PAGINATION_NUMBER_INVALID is a refusal of the size: any other 400 is one request."""
    async with serving(reactor, refusing("UNSUPPORTED")) as (url, scripted):
        client = make_client(url)
        with pytest.raises(RegistryProtocolError) as caught:
            await client.catalog(n=1000)
        assert "HTTP 400 (UNSUPPORTED: refused)" in str(caught.value), caught.value
        assert [p for _, p, _ in catalog(scripted)] == ["/v2/_catalog?n=1000"]
