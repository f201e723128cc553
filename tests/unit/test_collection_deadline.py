"""A tag-by-tag deletecollection begins no pass once its deadline is spent (docs/consistency.md,
"deletecollection"), also after a wait for a late write that ended there: a pass begun then ran past
the deadline with nothing to cut it, no write being left that may land (review r8own N1). One begun
before the deadline may end after it (review r10own L1: the docs said no look began past it).

On the test's clock, with the registry a double: the call's deletes and looks end at once (or take
`_SlowDeletes.SLOW` each), and the write it waits for is recorded by hand, as the registry client
records a re-tag's PUT."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure

from payloadtags.access.authz import AlwaysAllow
from payloadtags.api.errors import ApiError
from payloadtags.api.options import DeleteOptions, list_options
from payloadtags.api.tags import DEADLINE_MARGIN, ResourceVersions, TagsService
from payloadtags.identity import UserInfo
from payloadtags.inventory import Inventory
from payloadtags.names import TagRef
from payloadtags.registry import LateWrites
from payloadtags.registry.late import COPY
from tests.unit.test_inventory_paging import Registry

ADMIN = UserInfo("admin", groups=("system:masters",))
TIME_LEFT = 5.0
DEADLINE = TIME_LEFT - DEADLINE_MARGIN  # the call begins at 0
ELSEWHERE = TagRef("team", "app", "v9")  # where the write would leave a tag: not selected


class _Deleting(Registry):
    """The listing double, whose deletes end at once; each read of tags noted with its time."""

    def __init__(self, content: dict[str, set[str]], clock: Clock) -> None:
        super().__init__(content)
        self.clock = clock
        self.read_at: list[float] = []

    async def tags(self, repository: str) -> Sequence[str]:
        self.read_at.append(self.clock.seconds())
        return await super().tags(repository)

    async def delete_tag(self, repository: str, tag: str, expected: str | None = None) -> str | None:
        self.content[repository].discard(tag)
        return None

    async def resolve(self, repository: str, tag: str) -> str:
        return "sha256:" + "1" * 64


def _service(registry: object, clock: Clock, late_writes: LateWrites) -> TagsService:
    """The service over the registry double, its clock and its record of late writes."""
    return TagsService(
        inventory=Inventory(registry, concurrency=4),  # type: ignore[arg-type]
        registry_host="registry.test",
        authorizer=AlwaysAllow(),
        versions=ResourceVersions(clock),
        late_writes=late_writes,
    )


def _answer(known: bool) -> tuple[ApiError | None, _Deleting]:
    """A deletecollection of all of team's tags (team/app's v1) with `TIME_LEFT`, while a write of the
    process is out (a re-tag to `ELSEWHERE`, or, not ``known``, one that gave no tag), answered just as
    the call's deadline comes: the wait for it ends with no write left that may land, at the deadline."""
    clock = Clock()
    late_writes = LateWrites(clock)
    registry = _Deleting({"team/app": {"v1"}}, clock)
    tags = _service(registry, clock, late_writes)
    leave = (ELSEWHERE.repository, ELSEWHERE.tag, "sha256:" + "0" * 64)
    what = f"deleting tag {ELSEWHERE.repository}:v9"
    number = late_writes.sent("team", what, leave, kind=COPY) if known else late_writes.sent("team", what)
    # Set before the call's own timer at the same time: the answer comes first.
    clock.callLater(DEADLINE, late_writes.ended, "team", number, None)
    call = Deferred.fromCoroutine(
        tags.delete_collection(ADMIN, "team", list_options({}), DeleteOptions(), time_left=TIME_LEFT)
    )
    assert not call.called  # waiting for the write
    clock.advance(DEADLINE)
    assert call.called
    failures: list[Failure] = []
    call.addErrback(failures.append)
    if not failures:
        return None, registry
    assert isinstance(failures[0].value, ApiError)
    return failures[0].value, registry


def test_no_look_begins_after_a_wait_that_ended_at_the_deadline() -> None:
    """The write may have left `ELSEWHERE` (all of the namespace: a tag the call takes in): the
    retriable 503 naming it, which no look checked for. It answered 200 after a look at the deadline."""
    error, registry = _answer(known=True)
    assert all(at < DEADLINE for at in registry.read_at), registry.read_at
    assert error is not None, "answered 200"
    assert (error.code, error.retry_after) == (503, 1), error.message
    assert error.details is not None
    assert [(c["reason"], c["field"]) for c in error.details.causes or ()] == [
        ("NotLookedFor", ELSEWHERE.name)
    ]


def test_no_look_begins_after_a_wait_that_ended_at_the_deadline_for_a_write_of_unknown_tag() -> None:
    """A write that gave no tag is waited for (it may leave any), and leaves nothing the call knows to
    look for: no tag to name, and still no look past the deadline, nor a 200 no look backed."""
    error, registry = _answer(known=False)
    assert all(at < DEADLINE for at in registry.read_at), registry.read_at
    assert error is not None, "answered 200"
    assert (error.code, error.retry_after) == (503, 1), error.message
    assert error.details is not None
    assert not error.details.causes, error.details.causes
    assert "may have put back tags that it had no time left to check for; retry" in error.message


class _SlowDeletes(_Deleting):
    """Each delete takes `SLOW` seconds on the test's clock."""

    SLOW = 2.0

    async def delete_tag(self, repository: str, tag: str, expected: str | None = None) -> str | None:
        await deferLater(self.clock, self.SLOW, lambda: None)
        return await super().delete_tag(repository, tag, expected)


def test_a_pass_begun_before_the_deadline_ends_after_it_and_no_other_begins() -> None:
    """Another request's re-tag of `ELSEWHERE` is out as the call (all of team, team/app's v1) begins;
    it lands (v9 back) and is answered half a second before the call's deadline. The call waited, so it
    passes again, begun before the deadline: it takes v9 in, deletes it (`SLOW`), and looks past the
    deadline, with no write left to cut it short; that look lists none of the tags, the call answers
    200 and begins no other pass (docs/consistency.md: no pass begins once the deadline is spent, one
    begun before may end after it)."""
    clock = Clock()
    late_writes = LateWrites(clock)
    registry = _SlowDeletes({"team/app": {"v1"}}, clock)
    tags = _service(registry, clock, late_writes)
    leave = (ELSEWHERE.repository, ELSEWHERE.tag, "sha256:" + "1" * 64)  # the digest the double resolves
    number = late_writes.sent("team", f"deleting tag {ELSEWHERE.repository}:v9", leave, kind=COPY)
    landed = DEADLINE - 0.5

    def lands() -> None:
        registry.content[ELSEWHERE.repository].add(ELSEWHERE.tag)
        late_writes.ended("team", number, None)

    clock.callLater(landed, lands)
    call = Deferred.fromCoroutine(
        tags.delete_collection(ADMIN, "team", list_options({}), DeleteOptions(), time_left=TIME_LEFT)
    )
    clock.pump([0.5] * 20)  # 10 s: well past the request's own deadline
    assert call.called
    failures: list[Failure] = []
    call.addErrback(failures.append)
    assert not failures, failures[0].value
    assert registry.content[ELSEWHERE.repository] == set()
    # The selection, the first look (after v1's delete), the extra pass's read of what the write left
    # (as it landed, before the deadline) and its look (after v9's delete, past it); no pass after it.
    assert registry.read_at == [0.0, registry.SLOW, landed, landed + registry.SLOW], registry.read_at
    assert registry.read_at[-1] > DEADLINE
