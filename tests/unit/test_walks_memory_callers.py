"""The walk cache's byte count against the memory its walks hold (tests/unit/test_walks_memory.py)
for walks whose callers or lists bring objects of their own: a new `UserInfo` per request, a watched
namespace's resourceVersion reporter. Measured with tracemalloc: a ratio, never a time.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from twisted.internet.task import Clock

from payloadtags.identity import UserInfo
from payloadtags.watch import WatchHub
from tests.support.frozen_heap import frozen_heap  # noqa: F401  (a fixture)
from tests.unit.test_walks_memory import counted_and_held, near, one_tag_each
from tests.unit.test_watch import FakeReader, make_hub, ready

# gc.collect() three times a measurement: see frozen_heap.
pytestmark = pytest.mark.usefixtures("frozen_heap")


def authenticated(users: int, groups: int, extras: int = 1) -> Callable[[int], UserInfo]:
    """Callers as an authenticator makes them: a new `UserInfo` for every request, its strings too (the
    front proxy's headers, a TokenReview's answer, a certificate's subject are decoded per request),
    the walks shared among ``users`` users, each with ``extras`` identities (an extra of its own each,
    as a bound service-account token's per token)."""

    def user(walk: int) -> UserInfo:
        return UserInfo(
            "".join(["oidc:user-", str(walk % users), "@example.com"]),
            uid="".join(["uid-", str(walk % users)]),
            groups=tuple("".join(["cn=group-", f"{g:04d}", ",ou=groups,dc"]) for g in range(groups)),
            extra=(
                (
                    "".join(["authentication.kubernetes.io/credential-id"]),
                    ("".join(["JTI=", str(walk % extras)]),),
                ),
                ("".join(["scopes"]), ("".join(["openid"]), "".join(["email"]))),
            ),
        )

    return user


def test_the_identity_of_callers_whose_every_request_is_a_new_object_is_counted_once() -> None:
    # The walks' keys hold the caller's identity: each walk held the UserInfo of the request that last
    # kept it (a new one per request, as every authenticator makes), uncounted: 0.75 of the memory with
    # 3 groups, 0.26 with 50, 0.08 with 200, and the 32 MiB bound let about 390 MiB build (review-walks
    # W1). Now one object per identity is held, whichever request's, and counted with its first walk.
    small = one_tag_each(3)
    for groups in (3, 50, 200):
        near(counted_and_held(small, limit=1, pages=1, walks=300, user=authenticated(5, groups)))
        near(counted_and_held(small, limit=1, pages=2, walks=300, user=authenticated(5, groups)))
    # Every walk a caller of its own: each identity counted, once.
    near(counted_and_held(small, limit=1, pages=2, walks=100, user=authenticated(100, 200)))
    near(counted_and_held(small, limit=1, pages=2, walks=200, user=authenticated(200, 3)))


def test_the_users_of_callers_whose_extra_varies_are_counted_once_each() -> None:
    # The fair share is per user (name and uid), whose record and key the cache holds besides its
    # identities': counted with the first identity of the user, freed with the last.
    small = one_tag_each(3)
    for groups in (0, 3, 50):
        near(counted_and_held(small, limit=1, pages=2, walks=300, user=authenticated(5, groups, extras=300)))
        near(counted_and_held(small, limit=1, pages=2, walks=300, user=authenticated(5, groups, extras=7)))
        near(
            counted_and_held(small, limit=1, pages=2, walks=300, user=authenticated(300, groups, extras=300))
        )


def watched(content: dict[str, set[str]]) -> WatchHub:
    """A watch hub whose source of ``team`` is ready (its reads on a clock of its own)."""
    reader = FakeReader()
    reader.repositories = {repository: set(tags) for repository, tags in content.items()}
    hub = make_hub(reader, Clock())
    ready(hub, "team")
    return hub


def test_walks_of_a_watched_namespace_hold_nothing_of_the_hub() -> None:
    # A page of a watched namespace reports its tag lists to the source's reporter of its
    # resourceVersion, a closure the source keeps for its last 64 versions. Each walk kept the
    # closure to tell whether its kept lists were reported there: at more resourceVersions than
    # that, the walks alone held them, uncounted: 0.90-0.92 (review-walks6 F2).
    for repositories, pages in ((2, 1), (3, 2)):
        content = {f"team/r{i:04d}": {"x1", "x2"} for i in range(repositories)}
        hub = watched(content)
        near(counted_and_held(content, limit=1, pages=pages, walks=300, versions=hub))
        # A change elsewhere moved the replica's resourceVersion on before each walk.
        hub = watched(content)
        near(
            counted_and_held(
                content, limit=1, pages=pages, walks=300, versions=hub, before_walk=hub.versions.next
            )
        )
