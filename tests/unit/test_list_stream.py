"""A whole list written as its repositories are read (Inventory.reader, render.streamed_list_chunks,
streaming.write_streamed, as api.app serves an unpaged list), on a Clock with a registry double whose
every tag-list read takes a second: formatting starts before the last read ends, reads run a bounded
window ahead, and nothing is read once the client has gone or the list has failed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from payloadtags.access.authz import AlwaysAllow
from payloadtags.api.options import list_options
from payloadtags.api.render import render_list, streamed_list_chunks
from payloadtags.api.streaming import write_streamed
from payloadtags.api.tags import Observe, TagsService
from payloadtags.identity import UserInfo
from payloadtags.inventory import Inventory
from payloadtags.model import ListMeta, tag_object
from payloadtags.names import TagRef
from payloadtags.registry import CatalogPage
from payloadtags.registry.errors import RegistryUnavailable
from tests.unit.test_render import FULL, HOST, PARTIAL_LIST, TABLE
from tests.unit.test_repoindex import run
from tests.unit.test_streaming import Request
from tests.unit.test_walks import Only

ALICE = UserInfo("alice", groups=("devs",))
WINDOW = 4
REPOSITORIES = [f"team/r{index:02d}" for index in range(12)]
TAGS = 500  # a chunk's worth: each repository is written as soon as it is handed out


class SlowRegistry:
    """Every tags/list takes a second on ``clock``; the catalog answers at once."""

    def __init__(self, clock: Clock, repositories: list[str], failing: str | None = None) -> None:
        self.clock = clock
        self.content = {name: [f"v{i:04d}" for i in range(TAGS)] for name in repositories}
        self.failing = failing
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.most_in_flight = 0

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        names = sorted(name for name in self.content if last is None or name > last)
        return CatalogPage(names[:n], more=len(names) > n)

    async def tags(self, repository: str) -> list[str]:
        self.started.append(repository)
        self.most_in_flight = max(self.most_in_flight, self.in_flight)

        def cancel(_: Deferred[None]) -> None:
            self.cancelled.append(repository)
            call.cancel()

        answered: Deferred[None] = Deferred(cancel)
        call = self.clock.callLater(self.seconds_for(repository), answered.callback, None)
        await answered
        self.finished.append(repository)
        if repository == self.failing:
            raise RegistryUnavailable("the registry failed")
        return list(self.content[repository])

    def seconds_for(self, repository: str) -> float:
        return 1.0

    @property
    def in_flight(self) -> int:
        return len(self.started) - len(self.finished) - len(self.cancelled)


@attrs.define
class Recorded:
    """A version source whose lists report their reads here (as the watch hub's record)."""

    observed: list[tuple[str | None, str, str, int]] = attrs.field(factory=list)

    def current(self) -> str:
        return "7"

    def ahead(self, resource_version: str) -> bool:
        return int(resource_version) > int(self.current())

    def observer(
        self, scope: str | None, resource_version: str, direct: bool = False, joined: Observe | None = None
    ) -> Observe | None:
        return lambda repository, tags: self.observed.append((scope, resource_version, repository, len(tags)))


def start(
    registry: SlowRegistry,
    clock: Clock,
    query: dict[str, list[str]] | None = None,
    media: Any = FULL,
    versions: Recorded | None = None,
    authorizer: Any = None,
    decided: Callable[[str], None] | None = None,
) -> tuple[Request, Deferred[None], list[Any]]:
    service = TagsService(
        inventory=Inventory(registry, concurrency=WINDOW),  # type: ignore[arg-type]
        registry_host=HOST,
        authorizer=authorizer or AlwaysAllow(),
        versions=versions or Recorded(),
    )
    runs, meta = run(service.list_runs(ALICE, "team", list_options(query or {}), decided))
    request = Request()

    def begin() -> None:
        request.code = 200

    chunks = streamed_list_chunks(runs, meta, media, HOST)
    writing = Deferred.fromCoroutine(write_streamed(request, chunks, clock, begin))  # type: ignore[arg-type]
    results: list[Any] = []
    writing.addBoth(results.append)
    return request, writing, results


def reference(repositories: list[str], media: Any = FULL, skip: TagRef | None = None) -> bytes:
    refs = [TagRef("team", name.split("/", 1)[1], f"v{i:04d}") for name in repositories for i in range(TAGS)]
    objects = [tag_object(HOST, ref) for ref in refs if ref != skip]
    document = render_list(objects, ListMeta(resource_version="7"), media)
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def finish(clock: Clock, results: list[Any]) -> None:
    for _ in range(100):
        if results:
            return
        clock.advance(1)


def test_the_first_repositories_are_written_while_the_rest_are_read() -> None:
    clock = Clock()
    registry = SlowRegistry(clock, REPOSITORIES)
    versions = Recorded()
    request, _, results = start(registry, clock, versions=versions)
    assert request.written == [] and registry.in_flight == WINDOW + 1  # the window and the one awaited
    clock.advance(1)
    # The first repository is formatted and written; the registry is still reading later ones.
    assert request.written and len(registry.finished) < len(REPOSITORIES)
    assert registry.in_flight > 0
    finish(clock, results)
    assert results == [None] and not request.aborted
    assert b"".join(request.written) == reference(REPOSITORIES)
    assert registry.started == REPOSITORIES and registry.most_in_flight <= WINDOW + 1
    # The watch record is told every list read, in list order, under the list's resourceVersion.
    assert versions.observed == [("team", "7", name, TAGS) for name in REPOSITORIES]


def test_tables_and_metadata_lists_are_the_same_bytes_as_rendered_whole() -> None:
    for media in (TABLE, PARTIAL_LIST):
        clock = Clock()
        request, _, results = start(SlowRegistry(clock, REPOSITORIES[:3]), clock, media=media)
        finish(clock, results)
        assert b"".join(request.written) == reference(REPOSITORIES[:3], media)


def test_selectors_and_access_apply_as_they_did() -> None:
    clock = Clock()
    registry = SlowRegistry(clock, REPOSITORIES[:3])
    skip = TagRef("team", "r01", "v0003")
    request, _, results = start(registry, clock, {"fieldSelector": [f"metadata.name!={skip.name}"]})
    finish(clock, results)
    assert b"".join(request.written) == reference(REPOSITORIES[:3], skip=skip)
    clock = Clock()
    registry = SlowRegistry(clock, REPOSITORIES[:3])
    request, _, results = start(registry, clock, authorizer=Only("team", "r02"))
    finish(clock, results)
    assert b"".join(request.written) == reference(["team/r02"])
    assert registry.started == ["team/r02"]  # a repository the caller may not see is not read


def test_a_whole_list_tells_each_access_decision_as_it_makes_it() -> None:
    """As a page does: the namespace of each repository decided, before anything of it is written (the
    watch hub dates by it a namespace that left the caller's scope and came back, `WatchHub.
    list_decisions`; a whole list told nothing, and a resume from it could be served with her client
    holding a tag deleted where she may no longer see)."""
    clock = Clock()
    registry = SlowRegistry(clock, REPOSITORIES[:3])
    decided: list[str] = []
    request, _, results = start(registry, clock, authorizer=Only("team", "r02"), decided=decided.append)
    before = (list(decided), list(request.written))
    finish(clock, results)
    assert before == (["team"] * 3, [])  # were ([], [])
    assert b"".join(request.written) == reference(["team/r02"])
    assert decided == ["team"] * 3


def test_a_client_that_goes_away_stops_the_reads() -> None:
    clock = Clock()
    registry = SlowRegistry(clock, REPOSITORIES)
    request, _, results = start(registry, clock)
    clock.advance(1)
    assert request.written
    written, started = len(request.written), len(registry.started)
    request.lose()
    clock.advance(0)
    assert results == [None] and not request.aborted
    # What was being read is cancelled, and nothing more is asked for.
    assert registry.in_flight == 0 and registry.cancelled
    clock.advance(60)
    assert len(registry.started) == started and len(request.written) == written


def test_a_list_past_its_deadline_is_dropped_and_stops_the_reads() -> None:
    clock = Clock()
    registry = SlowRegistry(clock, REPOSITORIES)
    request, writing, results = start(registry, clock)
    clock.advance(1)
    started = len(registry.started)
    writing.cancel()  # what the request's deadline does
    assert results == [None] and request.aborted
    assert registry.in_flight == 0
    clock.advance(60)
    assert len(registry.started) == started


def test_a_registry_failure_after_the_first_byte_drops_the_connection() -> None:
    clock = Clock()
    registry = SlowRegistry(clock, REPOSITORIES, failing="team/r05")
    request, _, results = start(registry, clock)
    finish(clock, results)
    assert results == [None] and request.aborted
    assert b"".join(request.written).startswith(reference(REPOSITORIES)[:100])
    assert len(request.written) == 5  # r00..r04, then the failure: no end of the list was sent
    assert registry.in_flight == 0 and "team/r11" not in registry.started


def test_a_registry_failure_before_the_first_byte_is_raised_for_its_status() -> None:
    clock = Clock()
    registry = SlowRegistry(clock, REPOSITORIES, failing="team/r00")
    request, _, results = start(registry, clock)
    finish(clock, results)
    assert len(results) == 1 and results[0].check(RegistryUnavailable)
    results[0].trap(RegistryUnavailable)
    assert request.written == [] and request.code is None and not request.aborted
    assert registry.in_flight == 0


class PagedRegistry(SlowRegistry):
    """SlowRegistry with a chosen read time per repository and a catalog that answers in pages of
    ``page`` names after ``catalog_delay`` seconds each."""

    def __init__(
        self,
        clock: Clock,
        repositories: list[str],
        seconds: dict[str, float],
        page: int,
        catalog_delay: float,
    ) -> None:
        super().__init__(clock, repositories)
        self.seconds = seconds
        self.page = page
        self.catalog_delay = catalog_delay
        self.catalog_reads: list[tuple[float, int]] = []  # (when asked, how many tag reads started)
        self.started_when: dict[str, int] = {}  # repository -> tag reads started when it ended
        self.catalog_cancelled = 0

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        self.catalog_reads.append((self.clock.seconds(), len(self.started)))

        def cancel(_: Deferred[None]) -> None:
            self.catalog_cancelled += 1
            call.cancel()

        answered: Deferred[None] = Deferred(cancel)
        call = self.clock.callLater(self.catalog_delay, answered.callback, None)
        await answered
        return await super().catalog(last, min(n, self.page))

    def seconds_for(self, repository: str) -> float:
        return self.seconds.get(repository, 1.0)

    async def tags(self, repository: str) -> list[str]:
        tags = await super().tags(repository)
        self.started_when[repository] = len(self.started)
        return tags


def read_all(registry: PagedRegistry, clock: Clock, window: int = WINDOW) -> tuple[list[str], list[float]]:
    """Every run of the list of all namespaces, taken as soon as it is handed out: the repositories
    in order, and when each was handed out."""
    reader = Inventory(registry, concurrency=window).reader(None)  # type: ignore[arg-type]
    order: list[str] = []
    times: list[float] = []

    async def take() -> None:
        while (run_ := await reader.next()) is not None:
            order.append(f"{run_.namespace}/{run_.repository_path}")
            times.append(clock.seconds())

    done = Deferred.fromCoroutine(take())
    for _ in range(1000):
        if done.called:
            break
        clock.advance(0.5)
    assert done.called
    return order, times


def test_a_slow_read_at_the_head_does_not_hold_up_the_reads_after_it() -> None:
    """While the first repository's read takes 10 s, the reads after it go on (each ends in 1 s) up
    to the bound of lists read ahead; the runs are still handed out in list order."""
    names = [f"team/r{index:02d}" for index in range(40)]
    clock = Clock()
    registry = PagedRegistry(clock, names, {"team/r00": 10.0}, page=1000, catalog_delay=0)
    order, times = read_all(registry, clock)
    assert order == names
    assert registry.most_in_flight <= WINDOW + 1
    # When the head ended, the reads after it had gone on up to 2 * (window + 1) lists read ahead
    # (a window at a time, before: window + 1), not beyond.
    assert registry.finished.index("team/r00") == 2 * (WINDOW + 1) - 1
    assert registry.started_when["team/r00"] == 2 * (WINDOW + 1)
    assert times == sorted(times)


def test_the_next_catalog_page_is_read_while_the_last_names_are() -> None:
    """Pages of 20 names that take 2 s each: the next page is asked for while the last `window`
    names of the one before are still to be read, not once they all have been."""
    names = [f"team/r{index:02d}" for index in range(60)]
    clock = Clock()
    registry = PagedRegistry(clock, names, {}, page=20, catalog_delay=2.0)
    order, _ = read_all(registry, clock)
    assert order == names
    assert len(registry.catalog_reads) == 3
    for page, (_, started) in enumerate(registry.catalog_reads[1:], start=1):
        assert page * 20 - WINDOW <= started < page * 20


def test_a_stopped_reader_cancels_the_catalog_page_it_is_reading() -> None:
    names = [f"team/r{index:02d}" for index in range(30)]
    clock = Clock()
    registry = PagedRegistry(clock, names, {}, page=10, catalog_delay=5.0)
    reader = Inventory(registry, concurrency=WINDOW).reader(None)  # type: ignore[arg-type]
    first = Deferred.fromCoroutine(reader.next())
    clock.advance(5)  # the first page; its reads start, and the next page is asked for at once
    clock.advance(1)
    assert first.called and len(registry.catalog_reads) == 2 and registry.in_flight > 0
    started = len(registry.started)
    reader.stop()
    assert registry.in_flight == 0 and registry.catalog_cancelled == 1
    clock.advance(60)  # the cancelled page's answer never arrives, nothing more is read
    assert len(registry.catalog_reads) == 2 and len(registry.started) == started
