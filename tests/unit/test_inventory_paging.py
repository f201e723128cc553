"""Paginated walks of the inventory against unpaged lists: same tags, same order, each page O(page),
and, with the tag lists a page holds passed to the next (as the walk cache does), each repository's
tag list read once per walk.

The registry here is a double of distribution 2.8's listing behaviour (catalog paged with n and last,
in its component-by-component order; tags/list whole and unsorted); the real registry is in the
integration and e2e tests.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from payloadtags.inventory import CatalogRest, Inventory, Page
from payloadtags.names import TagRef
from payloadtags.registry import CatalogPage
from payloadtags.registry.taglist import TagList
from payloadtags.repoindex import catalog_key
from tests.unit.test_repoindex import run


class Registry:
    # What `RegistryClient.catalog_order` says once a page has shown it (`sorts_by_components`).
    catalog_order: str | None = "component"

    def __init__(self, content: dict[str, set[str]]) -> None:
        self.content = {name: set(tags) for name, tags in content.items()}
        self.tag_reads: list[str] = []
        self.catalog_reads = 0

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        self.catalog_reads += 1
        names = sorted(self.content, key=catalog_key)
        if last is not None:
            names = [name for name in names if catalog_key(name) > catalog_key(last)]
        return CatalogPage(names[:n], more=len(names) > n)

    async def tags(self, repository: str) -> Sequence[str]:
        self.tag_reads.append(repository)
        found = list(self.content.get(repository, ()))
        random.shuffle(found)  # distribution answers in storage order
        return TagList(sorted(found))  # as RegistryClient.tags does


class Distribution28(Registry):
    """The catalog as distribution 2.8 pages it, a walk of its storage: `team/app/0` before `team/app`
    (the directory `0` sorts before `_manifests`), ``last=`` answering the names after it component by
    component, and no next link after a page whose last name is followed by a repository it is nested
    in, whatever follows (docs/registry.md, "Catalog")."""

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        self.catalog_reads += 1
        names = sorted(self.content, key=lambda name: [*name.split("/"), "_manifests"])
        if last is not None:
            names = [name for name in names if catalog_key(name) > catalog_key(last)]
        more = len(names) > n and not names[n - 1].startswith(names[n] + "/")
        return CatalogPage(names[:n], more=more)


class Lexical(Registry):
    """A registry that sorts its catalog plainly, character by character, as the API's description has
    it (docs/registry.md, "Catalog"), and answers ``last=`` so: `team/app-x` before `team/app/b`, which
    catalog order (component by component) puts the other way round."""

    catalog_order = None  # as the client has it until a page shows the order

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        self.catalog_reads += 1
        names = sorted(self.content)
        if last is not None:
            names = [name for name in names if name > last]
        return CatalogPage(names[:n], more=len(names) > n)


def walk(
    inventory: Inventory,
    namespace: str | None,
    limit: int,
    between: Callable[[], None] = lambda: None,
    accept: Callable[[TagRef], bool] | None = None,
    carry: bool = False,
    again: bool = False,
) -> tuple[list[TagRef], int]:
    """Every page of a walk, as a client with continue tokens makes it; and the number of pages.

    ``carry``: each page gets the lists the previous one held and the catalog names it read past its
    end, as when the walk cache has them; without, every page reads live, as when it has not (expired,
    another replica). ``again``: after ``between``, each continued page is asked for again with what
    it used, as the walk cache keeps it for the token given again, and must be the same page."""
    refs: list[TagRef] = []
    after: TagRef | None = None
    held: Mapping[str, Sequence[str]] | None = None
    rest: CatalogRest | None = None
    pages = 0
    while True:
        page: Page = run(
            inventory.list(namespace, limit=limit, after=after, accept=accept, held=held, rest=rest)
        )
        if again and after is not None:
            between()
            repeated = run(
                inventory.list(
                    namespace, limit=limit, after=after, accept=accept, held=page.used, rest=page.began
                )
            )
            assert (repeated.refs, repeated.more) == (page.refs, page.more)
        pages += 1
        assert len(page) <= limit
        refs.extend(page.refs)
        if not page.more:
            assert not page.held
            return refs, pages
        assert page.last is not None and len(page) == limit
        # What a page holds is the repository it ended in and those after it, never one it passed.
        assert page.last.repository in page.held
        assert all(catalog_key(name) >= catalog_key(page.last.repository) for name in page.held)
        if page.rest is not None:  # and the catalog names after that repository only
            assert page.rest.after == page.last.repository
            assert all(
                catalog_key(name) > catalog_key(page.last.repository) for name, _, _ in page.rest.entries
            )
        after = page.last
        held = page.held if carry else None
        rest = page.rest if carry else None
        between()


_component = st.from_regex(r"[a-z0-9]{1,3}([-_.][a-z0-9]{1,2})?", fullmatch=True)
_repository = st.tuples(
    st.sampled_from(["a", "team", "team-a", "team0", "z"]), st.lists(_component, min_size=1, max_size=3)
).map(lambda parts: "/".join([parts[0], *parts[1]]))
_tags = st.sets(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,5}", fullmatch=True), max_size=12)
_content = st.dictionaries(_repository, _tags, max_size=12)


def key(ref: TagRef) -> tuple[Any, ...]:
    return (catalog_key(ref.repository), ref.tag)


def check_walks_equal_unpaged(
    content: dict[str, set[str]], namespace: str | None, limit: int, double: type[Registry] = Registry
) -> None:
    registry = double(content)
    inventory = Inventory(registry, concurrency=4, page_size=3)  # type: ignore[arg-type]
    unpaged = run(inventory.list(namespace))
    assert not unpaged.more
    expected = sorted(
        (
            TagRef(name.partition("/")[0], name.partition("/")[2], tag)
            for name, tags in content.items()
            for tag in tags
            if namespace is None or name.startswith(namespace + "/")
        ),
        key=key,
    )
    assert unpaged.refs == expected
    registry.tag_reads.clear()
    refs, pages = walk(inventory, namespace, limit)
    assert refs == expected
    # Reading live, each repository's tag list is read about once per walk: once when the walk
    # reaches it, once more for each page that starts inside it, and a few read past a page's end.
    repositories = len({r for r in registry.tag_reads})
    assert len(registry.tag_reads) <= repositories + 2 * pages + 4
    # With what each page holds passed on, exactly once.
    registry.tag_reads.clear()
    refs, pages = walk(inventory, namespace, limit, carry=True)
    assert refs == expected
    assert sorted(registry.tag_reads) == sorted(set(registry.tag_reads))


_namespaces = st.sampled_from([None, "team", "team-a", "z", "none"])


@pytest.mark.property
@given(content=_content, namespace=_namespaces, limit=st.integers(1, 7))
@settings(max_examples=60, deadline=None)
def test_a_paginated_walk_equals_the_unpaged_list(
    content: dict[str, set[str]], namespace: str | None, limit: int
) -> None:
    check_walks_equal_unpaged(content, namespace, limit)


@pytest.mark.slow
@given(content=_content, namespace=_namespaces, limit=st.integers(1, 30))
@settings(max_examples=1500, deadline=None)
def test_a_paginated_walk_equals_the_unpaged_list_many(
    content: dict[str, set[str]], namespace: str | None, limit: int
) -> None:
    check_walks_equal_unpaged(content, namespace, limit)


# Few components, digit-named ones among them: repositories nested in one another (`team/app/0`
# and `team/app`) in most examples.
_nested_repository = st.tuples(
    st.sampled_from(["team", "team-a", "z"]),
    st.lists(st.sampled_from(["app", "0", "1", "0a", "x", "app-b"]), min_size=1, max_size=4),
).map(lambda parts: "/".join([parts[0], *parts[1]]))
_nested_content = st.dictionaries(_nested_repository, _tags, max_size=12)


@pytest.mark.property
@given(content=_nested_content, namespace=_namespaces, limit=st.integers(1, 7))
@settings(max_examples=100, deadline=None)
def test_a_walk_of_distribution_28s_catalog_equals_the_unpaged_list_in_catalog_order(
    content: dict[str, set[str]], namespace: str | None, limit: int
) -> None:
    """2.8 lists `team/app/0` before `team/app`, ends a page that ends in `team/app/0` without a next
    link, and answers `last=team/app/0` without `team/app`: lists stopped there or left it out, and a
    walk's page after `team/app` showed `team/app/0` again. Both show every tag once, in catalog order
    (`team/app` first, as the repository index has them)."""
    check_walks_equal_unpaged(content, namespace, limit, Distribution28)


class Unsaid(Registry):
    """Sorted by components, by a client that has not learnt so (no page has shown it yet)."""

    catalog_order = None


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
def test_a_plainly_sorted_namespace_is_listed_past_the_names_that_sort_before_it(limit: int) -> None:
    # Plainly, `team-x/a` and `team.x/b` come after `team` and before `team/a` ("-" and "." sort below
    # "/"): the cursor sought `last=team` and stopped at the first of them, so the namespace, paged or
    # not, listed nothing. The names before it span catalog pages (of three names here).
    content = {
        "team-a/x": {"1"},
        "team-b/y": {"1"},
        "team-x/a": {"1"},
        "team.x/b": {"1"},
        "team/a": {"1", "2"},
        "team/b": {"1"},
        "team/c/d": {"1"},
        "team0/c": {"1"},
        "teamx/d": {"1"},
    }
    for double in (Lexical, Registry, Unsaid, Distribution28):
        check_walks_equal_unpaged(content, "team", limit, double)


def test_an_empty_namespace_with_names_that_sort_before_it_lists_nothing() -> None:
    content = {"team-x/a": {"1"}, "team-y/b": {"1"}, "team.x/c": {"1"}, "ops/a": {"1"}, "teamz/a": {"1"}}
    for double in (Lexical, Registry, Unsaid, Distribution28):
        for page_size in (1, 2, 1000):
            registry = double(content)
            inventory = Inventory(registry, concurrency=4, page_size=page_size)  # type: ignore[arg-type]
            assert run(inventory.list("team")).refs == []
            if double.catalog_order == "component":
                # Known to sort by components: `team-x/a`, the first name after `team`, ends it.
                assert registry.catalog_reads == 1, (double, page_size)
            assert walk(inventory, "team", 1) == ([], 1)


def test_distribution_28s_nested_repositories_in_catalog_order_at_every_page_boundary() -> None:
    content = {
        f"team/{name}": {"v1", "v2"}
        for name in ("a", "app/0", "app/0/x", "app/0/x/1", "app/1", "app", "app/x", "b", "c/1")
    }
    content["team-a/app/0"] = {"v1"}
    order = ["a", "app", "app/0", "app/0/x", "app/0/x/1", "app/1", "app/x", "b", "c", "c/1"]
    for page_size in (1, 2, 3, 4, 1000):
        registry = Distribution28(content)
        inventory = Inventory(registry, concurrency=2, page_size=page_size)  # type: ignore[arg-type]
        for namespace in ("team", None):
            shown = [ref.repository_path for ref in run(inventory.list(namespace)).refs]
            expected = [path for path in order if f"team/{path}" in content for _ in range(2)]
            if namespace is None:
                expected += ["app/0"]
            assert shown == expected, (page_size, namespace)
            for limit in (1, 2, 3, 5):
                for carry in (False, True):
                    refs, _ = walk(inventory, namespace, limit, carry=carry)
                    assert [ref.repository_path for ref in refs] == expected


def test_a_walk_with_a_field_selector_equals_the_selected_unpaged_list() -> None:
    content = {f"team/app-{i}": {f"v{j}" for j in range(7)} for i in range(5)}
    inventory = Inventory(Registry(content), concurrency=4)  # type: ignore[arg-type]

    def accept(ref: TagRef) -> bool:
        return ref.tag.endswith(("1", "4"))

    unpaged = run(inventory.list("team", accept=accept)).refs
    assert len(unpaged) == 10
    for limit in (1, 2, 3, 11):
        assert walk(inventory, "team", limit, accept=accept)[0] == unpaged
        assert walk(inventory, "team", limit, accept=accept, carry=True)[0] == unpaged


def test_a_page_reads_the_tag_lists_it_needs_not_a_whole_slice() -> None:
    # 100 repositories of 100 tags, pages of 500: the old fixed slice read 32 lists for every page.
    content = {f"team/app-{i:03d}": {f"v{j:03d}" for j in range(100)} for i in range(100)}
    registry = Registry(content)
    inventory = Inventory(registry, concurrency=16)  # type: ignore[arg-type]
    refs, pages = walk(inventory, "team", 500)
    assert len(refs) == 10_000 and pages == 20
    # 100 first reads; per page, the re-read of the repository the previous page ended in
    # (distribution 2.8 has no tags/list paging) and the one read past its end that tells whether
    # more follow; the first page, knowing no tags per repository yet, reads a slice of 16.
    assert len(registry.tag_reads) <= 100 + 2 * pages + 16
    # With what each page holds passed on (the walk cache): every list once.
    registry.tag_reads.clear()
    refs, pages = walk(inventory, "team", 500, carry=True)
    assert len(refs) == 10_000 and pages == 20
    assert sorted(registry.tag_reads) == sorted(content)


def test_a_walk_seeks_the_catalog_again_only_when_the_names_it_read_run_out() -> None:
    content = {f"team/app-{i:03d}": {f"v{j}" for j in range(5)} for i in range(150)}
    content.update({"z/other": {"a"}, "a/before": {"a"}})
    registry = Registry(content)
    inventory = Inventory(registry, concurrency=16)  # type: ignore[arg-type]
    refs, pages = walk(inventory, "team", 50)
    assert len(refs) == 750 and pages == 15
    live = registry.catalog_reads
    assert live >= pages  # every page seeks the catalog from the repository it resumes in
    registry.catalog_reads = 0
    refs, pages = walk(inventory, "team", 50, carry=True)
    assert len(refs) == 750 and pages == 15
    # The first page's catalog pages (100 names, then 400) carry the whole walk.
    assert registry.catalog_reads == 2


def test_a_page_given_names_another_page_read_seeks_the_catalog() -> None:
    """A token of the walk given again (a client retrying an earlier page) resumes elsewhere than the
    kept names start: they are not used, no repository is skipped."""
    content = {f"team/r{i}": {"a", "b"} for i in range(6)}
    inventory = Inventory(Registry(content), concurrency=2)  # type: ignore[arg-type]
    first = run(inventory.list("team", limit=2))
    second = run(inventory.list("team", limit=2, after=first.last, held=first.held, rest=first.rest))
    assert second.rest is not None and first.last is not None
    again = run(inventory.list("team", limit=20, after=first.last, held=second.held, rest=second.rest))
    assert [ref.repository_path for ref in again.refs] == [
        "r1",
        "r1",
        "r2",
        "r2",
        "r3",
        "r3",
        "r4",
        "r4",
        "r5",
        "r5",
    ]


def test_names_read_for_all_namespaces_are_not_handed_to_a_namespace_page() -> None:
    """A namespace's page given what an all-namespaces page kept (a token of the one given to the
    other) reads only the namespace: the names after it, and their lists, are another list's."""
    registry = Registry({"team/a": {"v1", "v2"}, "team/b": {"x"}, "team-x/victim": {"x"}, "zz/c": {"y"}})
    inventory = Inventory(registry, concurrency=4)  # type: ignore[arg-type]
    first = run(inventory.list(None, limit=1))
    assert first.rest is not None and "team-x/victim" in {name for name, _, _ in first.rest.entries}
    registry.tag_reads.clear()
    told: list[str] = []
    page = run(
        inventory.list(
            "team",
            limit=10,
            after=first.last,
            held={**first.held, "team-x/victim": ("x",), "zz/c": ("y",)},
            rest=first.rest,
            observe=lambda repository, tags: told.append(repository),
        )
    )
    assert [(ref.repository, ref.tag) for ref in page.refs] == [("team/a", "v2"), ("team/b", "x")]
    assert all(name.startswith("team/") for name in [*registry.tag_reads, *told, *page.used])
    assert page.began is not None and all(name.startswith("team/") for name, _, _ in page.began.entries)
    # Nor does a namespace's end end an all-namespaces page.
    pinned = run(inventory.list("team", limit=1))
    rest = run(inventory.list(None, limit=10, after=pinned.last, held=pinned.held, rest=pinned.rest))
    assert [ref.repository for ref in rest.refs] == ["team/a", "team/b", "team-x/victim", "zz/c"]


def test_held_lists_of_another_namespace_are_not_kept_for_the_next_page() -> None:
    registry = Registry({"team/a": {"v1", "v2", "v3"}, "team/b": {"x"}})
    inventory = Inventory(registry, concurrency=4)  # type: ignore[arg-type]
    told: list[str] = []
    page = run(
        inventory.list(
            "team",
            limit=1,
            after=TagRef("team", "a", "v1"),
            held={"team/a": ("v1", "v2", "v3"), "team-x/victim": ("x",), "zz/c": ("y",)},
            observe=lambda repository, tags: told.append(repository),
        )
    )
    assert [ref.tag for ref in page.refs] == ["v2"] and page.more
    assert set(page.held) == {"team/a"} and told == ["team/a"]


def test_one_large_repository_is_read_once_per_walk_not_once_per_page() -> None:
    content = {"team/big": {f"v{j:05d}" for j in range(1200)}, "team/next": {"a", "b"}}
    registry = Registry(content)
    inventory = Inventory(registry, concurrency=16)  # type: ignore[arg-type]
    refs, pages = walk(inventory, "team", 100)
    assert len(refs) == 1202 and pages == 13
    assert registry.tag_reads.count("team/big") == 13  # live: once per page that shows it
    registry.tag_reads.clear()
    refs, pages = walk(inventory, "team", 100, carry=True)
    assert len(refs) == 1202 and pages == 13
    assert registry.tag_reads == ["team/big", "team/next"]


@st.composite
def _changes(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(["push", "delete"]),
                st.sampled_from(["team/a", "team/b/c", "team/d", "team-x/e"]),
                st.sampled_from(["v1", "v2", "v3", "latest", "x9"]),
            ),
            max_size=20,
        )
    )


def check_walk_under_changes(
    content: dict[str, set[str]], changes: list[tuple[str, str, str]], limit: int, carry: bool
) -> None:
    """Pushes and deletes between pages: the walk stays sorted without repeats, shows every tag that
    was there throughout, and nothing that never was; whether its pages read live or take the lists
    earlier pages read (docs/api.md, "List options"). A page asked for again with what it used is
    the same page, whatever changed in between."""
    registry = Registry(content)
    inventory = Inventory(registry, concurrency=2, page_size=2)  # type: ignore[arg-type]
    ever = {(name, tag) for name, tags in registry.content.items() for tag in tags}
    always = set(ever)
    pending = list(changes)

    def between() -> None:
        for _ in range(2):
            if not pending:
                return
            action, name, tag = pending.pop(0)
            if action == "push":
                registry.content.setdefault(name, set()).add(tag)
                ever.add((name, tag))
            else:
                registry.content.get(name, set()).discard(tag)
                always.discard((name, tag))

    refs, _ = walk(inventory, "team", limit, between, carry=carry, again=True)
    keys = [key(ref) for ref in refs]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    seen = {(ref.repository, ref.tag) for ref in refs}
    in_namespace = {(name, tag) for name, tag in always if name.startswith("team/")}
    assert in_namespace <= seen
    assert seen <= ever


@pytest.mark.property
@given(content=_content, changes=_changes(), limit=st.integers(1, 5), carry=st.booleans())
@settings(max_examples=60, deadline=None)
# Page 2 (after team/a:0) resumed from no catalog names, read the catalog to the namespace's end and
# showed team/a:1; asked for again with what it used after team/b/c was pushed, it showed team/b/c:v1
# too (review r1tags F1, found by the slow run).
@example(
    content={"a/0": set(), "team/0": {"0", "1"}, "team-a/0": set(), "team/a": {"0", "1"}},
    changes=[("push", "team/a", "v1"), ("push", "team/a", "v1"), ("push", "team/b/c", "v1")],
    limit=3,
    carry=True,
)
def test_a_walk_under_concurrent_pushes_and_deletes(
    content: dict[str, set[str]], changes: list[tuple[str, str, str]], limit: int, carry: bool
) -> None:
    check_walk_under_changes(content, changes, limit, carry)


@pytest.mark.slow
@given(content=_content, changes=_changes(), limit=st.integers(1, 12), carry=st.booleans())
@settings(max_examples=1500, deadline=None)
def test_a_walk_under_concurrent_pushes_and_deletes_many(
    content: dict[str, set[str]], changes: list[tuple[str, str, str]], limit: int, carry: bool
) -> None:
    check_walk_under_changes(content, changes, limit, carry)


def test_a_page_that_read_the_catalogs_end_past_its_rest_is_the_same_page_asked_again() -> None:
    """A page resumed from a rest with no names whose catalog goes on, that then read the catalog to
    the namespace's end, began where it read to: asked for again with what it used, it reads no
    catalog page and shows no repository created in between (review r1tags F1)."""
    registry = Registry({"team/0": {"0", "1"}, "team/a": {"0", "1"}, "team-a/0": set()})
    inventory = Inventory(registry, concurrency=2, page_size=2)  # type: ignore[arg-type]
    first = run(inventory.list("team", limit=3))
    assert first.rest is not None and not first.rest.entries and not first.rest.done
    second = run(inventory.list("team", limit=3, after=first.last, held=first.held, rest=first.rest))
    assert [(ref.repository, ref.tag) for ref in second.refs] == [("team/a", "1")] and not second.more
    assert second.began is not None and second.began.done and not second.began.entries
    registry.content["team/b/c"] = {"v1"}
    reads = registry.catalog_reads
    again = run(inventory.list("team", limit=3, after=first.last, held=second.used, rest=second.began))
    assert (again.refs, again.more) == (second.refs, second.more)
    assert registry.catalog_reads == reads
