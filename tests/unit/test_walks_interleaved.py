"""Paginated walks interleaved, with pushes and deletes between pages, against unpaged lists: through
TagsService and its continue tokens, on the registry doubles of test_inventory_paging, with a walk
cache small enough to evict walks and count pages by their bound (review walks12 Q2).

Each seed makes its own content (nested repositories in three namespaces, some with no tag), page
size and concurrency of the inventory, cache bound, one to six walks of two callers (one of whom may
not see some paths) over a namespace, all namespaces or all namespaces pinned to one, their limits,
retried tokens and clock steps past the ttl. The oracles are docs/api.md's ("List options"):
- without writes during a walk, its pages joined are exactly the unpaged list (names and order);
- with writes between pages: no repeats, every tag that existed throughout the walk, nothing that never
  existed during it, in the order the unpaged list of every tag that existed during it gives;
- a token given again at once gives the same page and the same next position (unless, with writes,
  the page's data was too much to keep for both tokens: then it reads the registry, as documented);
- after every page, the cache's counters are what its walks and identities hold.

A few seeds run by default; `-m slow` runs 300 more of each.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.task import Clock

from payloadtags.api import continuation
from payloadtags.api.options import list_options
from payloadtags.api.tags import ResourceVersions, TagsService
from payloadtags.api.walks import DEFAULT_MAX_BYTES, FAIR_SHARE, WalkCache, _measure
from payloadtags.identity import UserInfo
from payloadtags.inventory import Inventory
from payloadtags.names import split_repository
from tests.unit.test_inventory_paging import Distribution28, Lexical, Registry
from tests.unit.test_repoindex import run

USERS = [
    UserInfo("alice", groups=("devs",)),
    UserInfo("bob", groups=("devs",)),
    # alice again with an extra (another identity of the same user: its walks count in her share).
    UserInfo("alice", groups=("devs",), extra=(("authentication.kubernetes.io/credential-id", ("JTI=1",)),)),
]
SEEDS = range(20)
MANY_SEEDS = range(20, 320)
# The list a walk walks: (URL namespace, metadata.namespace pinned or None).
View = tuple[str | None, str | None]
VIEWS: list[View] = [("team", None), (None, None), ("ops", None), (None, "team"), (None, "ops")]


def in_scope(name: str, namespace: str | None) -> bool:
    if namespace is None:
        return split_repository(name) is not None
    return name.startswith(namespace + "/")


def hidden_from(user: UserInfo, namespace: str, path: str) -> bool:
    # bob may not see the repositories whose path's first component is "b".
    return user.name == "bob" and path.split("/")[0] == "b"


class SomeHidden:
    def allowed(self, user: UserInfo, verb: str, namespace: str, repository_path: str) -> bool:
        return not hidden_from(user, namespace, repository_path)

    def allowed_everywhere(self, user: UserInfo, verb: str, namespace: str) -> bool:
        return user.name != "bob"

    def allowed_path(self, user: UserInfo, verb: str, path: str) -> bool:
        return True


def items(content: dict[str, set[str]], view: View, who: UserInfo) -> set[str]:
    namespace = view[0] if view[0] is not None else view[1]
    return {
        f"{name}:{tag}"
        for name, tags in content.items()
        if in_scope(name, namespace) and not hidden_from(who, *name.split("/", 1))
        for tag in tags
    }


def check_cache(cache: WalkCache) -> None:
    """The cache's derived counters agree with what its walks, identities and users hold."""
    walks = cache._walks
    identities = cache._identities
    users = cache._users
    assert cache._size == (
        sum(w.size for w in walks.values())
        + sum(i.size for i in identities.values())
        + sum(u.size for u in users.values())
    )
    # Each user keeps its identities' walks, least recently continued first, and the bytes they count.
    assert {(i.who.name, i.who.uid) for i in identities.values()} == set(users)
    for named, user in users.items():
        assert user.key == named and all(i.user is user for i in identities.values() if i.user.key == named)
        assert user.identities == sum(1 for i in identities.values() if i.user is user)
        assert list(user.keys) == [key for key in walks if (key[0].name, key[0].uid) == named]
        assert user.held == sum(walks[key].size for key in user.keys)
        over = len(user.keys) > 1 and user.held > cache.max_bytes // FAIR_SHARE
        assert (user in cache._over) == over
    assert all(user is users[user.key] for user in cache._over)
    assert cache.names == sum(w.names for w in walks.values())
    assert set(cache._pending) <= set(walks)
    assert len(cache._pending) <= 1
    for who, identity in identities.items():
        assert identity.walks == sum(1 for key in walks if key[0] == who), who
    assert all(key[0] is identities[key[0]].who for key in walks)
    for key, walk in walks.items():
        exact = _measure(walk.kept, walk.asked, {}, walk.listed)
        if key in cache._pending:
            assert walk.size >= exact[0], key
        else:
            assert walk.size == exact[0], key
        assert walk.names == exact[1]
        assert walk.asked is None or walk.asked in walk.kept


def interleaved(seed: int, writes: bool) -> None:
    rng = random.Random(seed)
    double = (Lexical, Registry, Distribution28)[seed % 3]
    parts = ["app", "app-x", "0", "b", "b.c", "z"]
    content = {
        f"{namespace}/" + "/".join(rng.choice(parts) for _ in range(rng.randint(1, 3))): {
            f"t{i}" for i in range(rng.randint(0, 6))
        }
        for namespace in ("team", "team-x", "ops")
        for _ in range(rng.randint(1, 10))
    }
    clock = Clock()
    registry = double(content)
    max_bytes = rng.choice([2_000, 6_000, 20_000, DEFAULT_MAX_BYTES])
    cache = WalkCache(clock, max_bytes=max_bytes)
    inventory = Inventory(
        registry,  # type: ignore[arg-type]
        concurrency=rng.choice([1, 4]),
        page_size=rng.choice([2, 3, 1000]),
    )
    tags = TagsService(
        inventory=inventory,
        registry_host="registry.test",
        authorizer=SomeHidden(),
        versions=ResourceVersions(clock),
        walks=cache,
    )

    def page(who: UserInfo, view: View, limit: int, token: str | None) -> tuple[list[str], str | None]:
        query = {"limit": [str(limit)], **({"continue": [token]} if token else {})}
        if view[1] is not None:
            query["fieldSelector"] = [f"metadata.namespace={view[1]}"]
        result, meta = run(tags.list(who, view[0], list_options(query)))
        return [f"{ref.namespace}/{ref.repository_path}:{ref.tag}" for ref in result.refs], meta.continue_

    def unpaged(view: View, who: UserInfo, of: dict[str, set[str]]) -> list[str]:
        saved = registry.content
        registry.content = {name: set(tags) for name, tags in of.items()}
        query = {"fieldSelector": [f"metadata.namespace={view[1]}"]} if view[1] is not None else {}
        try:
            result, _ = run(tags.list(who, view[0], list_options(query)))
        finally:
            registry.content = saved
        return [f"{ref.namespace}/{ref.repository_path}:{ref.tag}" for ref in result.refs]

    walks: list[dict[str, Any]] = [
        {
            "who": rng.choice(USERS),
            "view": rng.choice(VIEWS),
            "limit": rng.choice([1, 2, 3, 5, 8]),
            "token": None,
            "shown": [],
            "started": False,
            "done": False,
            "wrote": False,
        }
        for _ in range(rng.randint(1, 6))
    ]
    counter = 0
    while not all(w["done"] for w in walks):
        w = rng.choice([w for w in walks if not w["done"]])
        if not w["started"]:
            # What the walk may and must show is taken from the registry as its first page finds it.
            w["started"] = True
            w["throughout"] = items(registry.content, w["view"], w["who"])
            w["ever"] = set(w["throughout"])
            w["start_content"] = {name: set(tags) for name, tags in registry.content.items()}
        asked = w["token"]
        got, token = page(w["who"], w["view"], w["limit"], asked)
        if asked is not None and rng.random() < 0.3:
            again, token_again = page(w["who"], w["view"], w["limit"], asked)
            # A token whose page's data was too much to keep for both tokens reads the registry again
            # (documented), which writes since may have changed.
            if not w["wrote"] or max_bytes == DEFAULT_MAX_BYTES:
                assert again == got, (seed, "retry")
                if token is None or token_again is None:
                    assert token == token_again
                else:
                    scope = w["view"][0] or ""
                    position = continuation.decode(token, scope).last
                    assert continuation.decode(token_again, scope).last == position
        assert len(got) <= w["limit"]
        w["shown"] += got
        w["token"] = token
        w["done"] = token is None
        check_cache(cache)
        if rng.random() < 0.1:
            clock.advance(rng.choice([1, 30, 61]))
        if writes and rng.random() < 0.5:
            names = sorted(registry.content)
            kind = rng.random()
            counter += 1
            if kind < 0.35:  # a push into a repository there is
                registry.content[rng.choice(names)].add(rng.choice(["t", "u", "s", "a"]) + str(counter))
            elif kind < 0.7:  # a tag deleted
                there = registry.content[rng.choice(names)]
                if there:
                    there.discard(rng.choice(sorted(there)))
            else:  # a new repository
                namespace = rng.choice(["team", "team-x", "ops"])
                path = "/".join(rng.choice([*parts, "new", "c"]) for _ in range(rng.randint(1, 3)))
                registry.content.setdefault(f"{namespace}/{path}", set()).add(f"n{counter}")
            for other in walks:
                if other["started"] and not other["done"]:
                    now = items(registry.content, other["view"], other["who"])
                    other["throughout"] &= now
                    other["ever"] |= now
                    other["wrote"] = True
    for w in walks:
        shown = w["shown"]
        assert len(shown) == len(set(shown)), (seed, "repeats", w["view"])
        if not w["wrote"]:
            whole = unpaged(w["view"], w["who"], w["start_content"])
            assert set(whole) == items(w["start_content"], w["view"], w["who"])  # the model agrees
            assert shown == whole, (seed, "unpaged", w["view"], w["limit"])
            continue
        missing = w["throughout"] - set(shown)
        assert not missing, (seed, "missing", sorted(missing))
        extra = set(shown) - w["ever"]
        assert not extra, (seed, "never existed", sorted(extra))
        # In the order the unpaged list of every tag that existed during the walk gives them.
        union: dict[str, set[str]] = {}
        for item in w["ever"]:
            name, _, tag = item.rpartition(":")
            union.setdefault(name, set()).add(tag)
        order = {item: i for i, item in enumerate(unpaged(w["view"], w["who"], union))}
        positions = [order[item] for item in shown]
        assert positions == sorted(positions), (seed, "order", shown)


@pytest.mark.parametrize("seed", SEEDS)
def test_interleaved_walks_without_writes_equal_the_unpaged_list(seed: int) -> None:
    interleaved(seed, writes=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_interleaved_walks_with_writes_keep_the_documented_guarantees(seed: int) -> None:
    interleaved(seed, writes=True)


@pytest.mark.slow
@pytest.mark.parametrize("seed", MANY_SEEDS)
@pytest.mark.parametrize("writes", [False, True], ids=["without writes", "with writes"])
def test_many_seeds_of_interleaved_walks(seed: int, writes: bool) -> None:
    interleaved(seed, writes)
