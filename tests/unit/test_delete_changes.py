"""Which repositories TagsService tells changed after its deletes (the watch hub rereads them), and
when: once a delete has ended, however it ended (a failure half-way may have changed the registry;
one carried on after its request ended, at its own end); never for a dry run.

The integration and e2e tests (tests/integration/test_watch.py, tests/e2e/test_watch_clients.py) show
the events that follow over HTTPS and to kubectl; here a double of the registry's deletes decides how
each delete ends.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from payloadtags.access.authz import AlwaysAllow
from payloadtags.api.options import DeleteOptions, list_options
from payloadtags.api.tags import ResourceVersions, TagsService
from payloadtags.deferreds import GoesOn
from payloadtags.identity import UserInfo
from payloadtags.inventory import Inventory
from payloadtags.names import TagRef
from payloadtags.registry import RegistryUnavailable
from tests.unit.test_inventory_paging import Registry
from tests.unit.test_repoindex import run

ADMIN = UserInfo("admin", groups=("system:masters",))


class Deleting(Registry):
    """The listing double, with deletes that end when the test says (``ends[repository:tag]``)."""

    def __init__(self, content: dict[str, set[str]]) -> None:
        super().__init__(content)
        self.ends: dict[str, Deferred[str | None]] = {}

    async def delete_tag(self, repository: str, tag: str, expected: str | None = None) -> str | None:
        ending: Deferred[str | None] = Deferred()
        self.ends[f"{repository}:{tag}"] = ending
        digest = await ending
        self.content[repository].discard(tag)
        return digest

    async def check_delete(self, repository: str, tag: str) -> None:
        """A dry run's check (`Inventory.check_delete`): deletes work here."""

    async def resolve(self, repository: str, reference: str) -> str:
        """The digest a dry run answers (`Inventory.digest`)."""
        return "sha256:" + "0" * 64


def service(registry: Deleting) -> tuple[TagsService, list[str]]:
    changed: list[str] = []
    tags = TagsService(
        inventory=Inventory(registry, concurrency=4),  # type: ignore[arg-type]
        registry_host="registry.test",
        authorizer=AlwaysAllow(),
        versions=ResourceVersions(Clock()),
        changed=changed.append,
    )
    return tags, changed


def delete(tags: TagsService, repository: str, tag: str, dry_run: bool = False) -> Deferred[Any]:
    namespace, path = repository.split("/", 1)
    ref = TagRef(namespace, path, tag)
    options = DeleteOptions(dry_run=dry_run)
    return Deferred.fromCoroutine(tags.delete(ADMIN, ref.namespace, ref.name, options))


def test_a_delete_tells_its_repository_once_it_has_ended() -> None:
    registry = Deleting({"team/app": {"v1", "v2"}})
    tags, changed = service(registry)
    done = delete(tags, "team/app", "v1")
    assert changed == []  # not before the registry has it
    registry.ends["team/app:v1"].callback("sha256:" + "1" * 64)
    assert done.called and changed == ["team/app"]


def test_a_dry_run_tells_nothing() -> None:
    registry = Deleting({"team/app": {"v1"}})
    tags, changed = service(registry)
    done = delete(tags, "team/app", "v1", dry_run=True)
    assert done.called and not registry.ends and changed == []
    assert not isinstance(done.result, Failure), done.result


def test_a_delete_that_failed_half_way_tells_its_repository() -> None:
    registry = Deleting({"team/app": {"v1"}})
    tags, changed = service(registry)
    done = delete(tags, "team/app", "v1")
    registry.ends["team/app:v1"].errback(RegistryUnavailable("the tag now points at a copy"))
    failures: list[Failure] = []
    done.addErrback(failures.append)
    assert failures and failures[0].check(RegistryUnavailable)
    assert changed == ["team/app"]


def test_a_delete_carried_on_after_its_request_ended_tells_at_its_own_end() -> None:
    registry = Deleting({"team/app": {"v1"}})
    tags, changed = service(registry)
    done = delete(tags, "team/app", "v1")
    ended: Deferred[None] = Deferred()
    # As carried_through tells a caller that stops waiting for a delete that has begun writing.
    registry.ends["team/app:v1"].errback(GoesOn(ended))
    failures: list[Failure] = []
    done.addErrback(failures.append)
    assert failures and failures[0].check(GoesOn)
    assert changed == []  # the delete is still under way: a reread now would find the tag
    ended.callback(None)
    assert changed == ["team/app"]


def test_a_deletecollection_tells_each_repository_it_deleted_in() -> None:
    registry = Deleting({"team/app": {"v1", "v2"}, "team/web": {"a"}, "team/idle": set()})
    tags, changed = service(registry)
    done = Deferred.fromCoroutine(tags.delete_collection(ADMIN, "team", list_options({}), DeleteOptions()))
    for key in ("team/app:v1", "team/app:v2", "team/web:a"):
        registry.ends[key].callback(None)
    assert done.called
    # Once per delete: the reads of one repository are coalesced by the hub's sources.
    assert sorted(changed) == ["team/app", "team/app", "team/web"]


def test_a_dry_run_deletecollection_tells_nothing() -> None:
    registry = Deleting({"team/app": {"v1"}})
    tags, changed = service(registry)
    items, _ = run(tags.delete_collection(ADMIN, "team", list_options({}), DeleteOptions(dry_run=True)))
    assert len(items) == 1 and not registry.ends and changed == []
