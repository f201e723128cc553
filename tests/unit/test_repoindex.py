"""RepositoryIndex: catalog order, namespace runs, paging, refresh; Inventory lists from it."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from payloadtags import repoindex
from payloadtags.inventory import Inventory
from payloadtags.names import TagRef
from payloadtags.registry import CatalogPage, RegistryNotFound
from payloadtags.repoindex import RepositoryIndex, catalog_key
from payloadtags.server import _index_refresh

# Catalog order as distribution 2.8 sends it: component by component, so "team/x/y" < "team/z" and
# everything under "team/" comes before "team-a".
CATALOG = ["a/one", "team/api", "team/x/y", "team/z", "team-a/api", "team0/b", "zeta/q"]


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Runs a coroutine that never waits on the reactor (fake clients answer at once)."""
    results: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    [result] = results
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


class FakeClient:
    """A registry with a fixed catalog, paged like distribution 2.8; every tag list is ["v1"]."""

    def __init__(self, repositories: list[str]) -> None:
        self.repositories = sorted(repositories, key=catalog_key)
        self.catalog_calls: list[tuple[str | None, int]] = []
        self.tag_calls: list[str] = []

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        self.catalog_calls.append((last, n))
        names = [r for r in self.repositories if last is None or catalog_key(r) > catalog_key(last)]
        return CatalogPage(names[:n], more=len(names) > n)

    async def tags(self, repository: str) -> tuple[str, ...]:
        self.tag_calls.append(repository)
        return ("v1",)


def filled(names: list[str]) -> RepositoryIndex:
    index = RepositoryIndex()
    for name in reversed(names):
        index.add(name)
    return index


def test_names_are_kept_in_catalog_order():
    assert filled(CATALOG).after(None) == CATALOG
    assert sorted(CATALOG, key=catalog_key) == CATALOG


def test_a_namespace_does_not_include_its_prefix_siblings():
    index = filled(CATALOG)
    assert index.namespace_repositories("team") == ["team/api", "team/x/y", "team/z"]
    assert index.namespace_repositories("team-a") == ["team-a/api"]
    assert index.namespace_repositories("team0") == ["team0/b"]
    assert index.namespace_repositories("te") == []
    assert index.namespace_repositories("nothing") == []


def test_a_repository_named_like_the_namespace_is_not_inside_it():
    index = filled(["team", "team/api"])
    assert index.namespace_repositories("team") == ["team/api"]


def test_paging_after_a_repository():
    index = filled(CATALOG)
    assert index.namespace_repositories("team", after="team/api") == ["team/x/y", "team/z"]
    assert index.namespace_repositories("team", after="team/x") == ["team/x/y", "team/z"]
    assert index.namespace_repositories("team", after="team/x/y") == ["team/z"]
    assert index.namespace_repositories("team", after="team/z") == []
    # A repository that is gone (or never was) still positions the page.
    assert index.namespace_repositories("team", after="team/b") == ["team/x/y", "team/z"]
    assert index.after("team/z") == ["team-a/api", "team0/b", "zeta/q"]
    assert index.after("team/api", limit=2) == ["team/x/y", "team/z"]


def test_add_is_idempotent():
    index = filled(CATALOG)
    assert index.add("team/new") is True
    assert index.add("team/new") is False
    assert index.namespace_repositories("team") == ["team/api", "team/new", "team/x/y", "team/z"]
    assert len(index) == len(CATALOG) + 1 and "team/new" in index


def test_refresh_reads_every_catalog_page_and_replaces_the_contents():
    names = [f"ns-{i:04d}/repo" for i in range(2500)] + CATALOG
    client = FakeClient(names)
    index = filled(["stale/gone"])
    assert not index.ready
    assert run(index.refresh(client)) == len(names)
    assert index.ready
    assert index.after(None) == client.repositories
    assert "stale/gone" not in index
    assert [n for _, n in client.catalog_calls] == [1000, 1000, 1000]
    assert client.catalog_calls[0][0] is None


class Distribution28Client(FakeClient):
    """And as 2.8 walks its storage: `team/app/0` before `team/app`, no next link after a page whose
    last name is followed by a repository it is nested in, and `last=team/app/0` answered without
    `team/app` (docs/registry.md, "Catalog")."""

    def __init__(self, repositories: list[str]) -> None:
        super().__init__(repositories)
        self.repositories.sort(key=lambda name: [*name.split("/"), "_manifests"])

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        self.catalog_calls.append((last, n))
        names = [r for r in self.repositories if last is None or catalog_key(r) > catalog_key(last)]
        return CatalogPage(names[:n], more=len(names) > n and not names[n - 1].startswith(names[n] + "/"))


def test_a_refresh_reads_past_a_page_that_ends_in_a_digit_named_nested_repository():
    """The first page ended in `team/app/0` without a next link: the refresh took it for the end, and
    the index missed `team/app` and everything after it; a seek after `team/app/0` leaves `team/app`
    out."""
    names = [f"a-{i:04d}/repo" for i in range(999)] + ["team/app/0", "team/app", "team/b", "zeta/q"]
    client = Distribution28Client(names)
    assert client.repositories[999:1001] == ["team/app/0", "team/app"]
    index = RepositoryIndex()
    assert run(index.refresh(client)) == len(names)
    assert index.namespace_repositories("team") == ["team/app", "team/app/0", "team/b"]
    assert "zeta/q" in index


def test_a_push_to_a_guessed_name_makes_it_a_repository_whose_errors_fail_the_list():
    """A refresh takes `team/app`, which 2.8's seek from `team/app/0` leaves out, as a guess: its
    missing tag list (a 404, maybe only a directory) lists as empty. Once a push names it, it is a
    repository, and a 404 of its tags fails the list as any listed repository's does."""
    names = [f"a-{i:04d}/repo" for i in range(999)] + ["team/app/0", "team/app", "team/b"]
    client = Distribution28Client(names)

    async def tags(repository: str) -> tuple[str, ...]:
        if repository == "team/app":
            raise RegistryNotFound("no tags of team/app")
        return ("v1",)

    client.tags = tags  # type: ignore[method-assign]
    index = RepositoryIndex()
    run(index.refresh(client))
    assert index.guessed == {"team/app"}
    inventory = Inventory(client, index=index)  # type: ignore[arg-type]
    page = run(inventory.list("team"))
    assert [ref.repository for ref in page.refs] == ["team/app/0", "team/b"]
    index.add("team/app")  # pushed
    assert "team/app" not in index.guessed
    with pytest.raises(RegistryNotFound):
        run(inventory.list("team"))


def test_a_push_during_a_refresh_survives_it():
    index = RepositoryIndex()
    client = FakeClient(CATALOG)
    inner = client.catalog

    async def catalog(last: str | None = None, n: int = 1000) -> CatalogPage:
        page = await inner(last, n)
        index.add("team/pushed-meanwhile")  # the catalog was read before the push
        return page

    client.catalog = catalog  # type: ignore[method-assign]
    run(index.refresh(client))
    assert "team/pushed-meanwhile" in index.namespace_repositories("team")


def test_a_push_dropped_past_the_bound_during_a_refresh_leaves_the_index_not_ready_until_the_next(
    monkeypatch: pytest.MonkeyPatch,
):
    # r2events L1: the refresh running when the bound was crossed set the index ready without the name
    # dropped meanwhile, whose place its catalog walk had passed: missing from lists for a period.
    monkeypatch.setattr(repoindex, "MIN_ADDED_BETWEEN_REFRESHES", 2)
    index = RepositoryIndex()
    client = FakeClient(CATALOG)
    run(index.refresh(client))
    for n in range(index.max_added):  # the bound reached by events
        assert index.add(f"flood/r{n}")
    inner = client.catalog
    dropped: list[bool] = []

    async def catalog(last: str | None = None, n: int = 1000) -> CatalogPage:
        page = await inner(last, n)
        dropped.append(not index.add("team/pushed-meanwhile"))  # pushed after the page was read
        return page

    client.catalog = catalog  # type: ignore[method-assign]
    with capturedLogs() as events:
        run(index.refresh(client))
    assert dropped == [True]
    assert "team/pushed-meanwhile" not in index.namespace_repositories("team")
    assert not index.ready  # namespace lists seek the catalog, which has it
    assert any("dropped while it was refreshed" in formatEvent(e) for e in events)
    run(index.refresh(FakeClient([*CATALOG, "team/pushed-meanwhile"])))  # none dropped during this one
    assert index.ready and "team/pushed-meanwhile" in index.namespace_repositories("team")


def test_inventory_lists_a_namespace_from_a_ready_index_without_the_catalog():
    client = FakeClient(CATALOG)
    index = RepositoryIndex()
    inventory = Inventory(client, index=index)  # type: ignore[arg-type]
    # Not ready yet: the catalog is sought as before.
    page = run(inventory.list("team"))
    assert [r.repository_path for r in page.refs] == ["api", "x/y", "z"]
    assert client.catalog_calls
    run(index.refresh(client))
    client.catalog_calls.clear()
    index.add("team/new")
    page = run(inventory.list("team"))
    assert [r.repository_path for r in page.refs] == ["api", "new", "x/y", "z"]
    assert client.catalog_calls == []
    # Paging: after a tag of "team/new", the next repositories follow.
    page = run(inventory.list("team", limit=1, after=TagRef("team", "new", "v1")))
    assert ([r.repository_path for r in page.refs], page.more) == (["x/y"], True)
    assert client.catalog_calls == []
    # All namespaces (-A) are served from the index too, in catalog order, paged like the catalog.
    everything = run(inventory.list(None))
    assert client.catalog_calls == []
    assert [r.repository for r in everything.refs] == sorted([*CATALOG, "team/new"], key=catalog_key)
    small = Inventory(client, index=index, page_size=2)  # type: ignore[arg-type]
    assert run(small.list(None)).refs == everything.refs
    page = run(small.list(None, limit=2, after=TagRef("team", "x/y", "v1")))
    assert ([r.repository for r in page.refs], page.more) == (["team/z", "team-a/api"], True)
    assert client.catalog_calls == []


class StalledCatalog(FakeClient):
    """A registry whose catalog pages never come: each read waits until it is cancelled."""

    def __init__(self) -> None:
        super().__init__([])
        self.reads: list[Deferred[CatalogPage]] = []

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        self.reads.append(Deferred())
        return await self.reads[-1]


def test_a_refresh_that_does_not_finish_within_its_period_is_stopped_and_logged():
    clock = Clock()
    registry = StalledCatalog()
    index = RepositoryIndex()
    loop = _index_refresh(clock, index, registry, deadline=300.0)
    with capturedLogs() as events:
        loop.start(300.0, now=True)
        clock.advance(299)
        assert len(registry.reads) == 1 and not registry.reads[0].called
        clock.advance(1)
        # Cancelled where it waited, the read goes (a registry paging forever holds it no longer).
        assert registry.reads[0].called
        assert not index.ready
        loop.stop()
    warned = [event for event in events if event.get("log_level") == LogLevel.warn]
    assert [formatEvent(event) for event in warned] == [
        "repository index refresh did not finish within 300s (--registry-index-refresh-period) "
        "and was stopped"
    ]


def test_events_add_a_bounded_number_of_names_between_refreshes_then_lists_read_the_catalog():
    # r1events L2: made-up names from a token holder's events would otherwise pile up until the refresh.
    client = FakeClient(CATALOG)
    index = RepositoryIndex()
    run(index.refresh(client))
    bound = repoindex.MIN_ADDED_BETWEEN_REFRESHES
    assert index.max_added == bound
    for n in range(bound):
        assert index.add(f"flood/r{n}")
    with capturedLogs() as events:
        assert not index.add("flood/one-more")
        assert not index.add("flood/another")
    assert "flood/one-more" not in index and len(index) == len(CATALOG) + bound
    assert not index.ready  # namespace lists seek the catalog, which has every repository
    [warning] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert warning.startswith(f"repository index: registry events added {bound} repositories since the last")
    assert not index.add(CATALOG[0])  # a known name is no new one, and costs nothing
    run(index.refresh(client))
    assert index.ready and len(index) == len(CATALOG)
    assert index.add("flood/after-the-refresh")
