"""The registry client's read path: identical reads coalesced, connection slots outside the timeout."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock

from payloadtags.registry import RegistryClient, RegistrySettings, RegistryTimeout, RegistryUnavailable
from payloadtags.registry.coalesce import Coalescer, asking
from payloadtags.registry.taglist import TagList
from tests.unit.test_registry_cancellation import REGISTRY, Agent, _Response, failure_of, track


def tags_reply(*tags: str) -> _Response:
    return _Response(200, {"Content-Type": "application/json"}, json.dumps({"tags": list(tags)}).encode())


class Held:
    """An agent whose every request waits until the test answers it."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, Deferred[Any]]] = []
        self.agent = Agent(self._answer)

    def _answer(self, method: str, url: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((url, d))
        return d

    def urls(self) -> list[str]:
        return [url for url, _ in self.pending]


def client_for(held: Held, clock: MemoryReactorClock, slots: int = 1, timeout: float = 10) -> RegistryClient:
    settings = RegistrySettings(url=REGISTRY, timeout=timeout, max_connections=slots)
    return RegistryClient(clock, settings, agent=held.agent)


# --- coalescing ---------------------------------------------------------------------------------------


def test_identical_reads_waiting_for_a_slot_are_made_once() -> None:
    clock, held = MemoryReactorClock(), Held()
    client = client_for(held, clock, slots=1)
    busy = track(Deferred.fromCoroutine(client.tags("team/busy")))  # holds the only slot
    waiting = [track(Deferred.fromCoroutine(client.tags("team/app"))) for _ in range(5)]
    other = track(Deferred.fromCoroutine(client.tags("team/other")))
    held.pending[0][1].callback(tags_reply("x"))
    assert busy == [("x",)]
    assert held.urls()[1:] == [f"{REGISTRY}/v2/team/app/tags/list"]  # one request for five callers
    held.pending[1][1].callback(tags_reply("v2", "v1"))
    assert all(result == [("v1", "v2")] for result in waiting)
    # Every caller gets the same answer, immutable: nobody's use of it changes what the others got,
    # and lists that show it whole can tell that they show the same thing (api.render.SharedText).
    assert isinstance(waiting[0][0], TagList)
    assert all(result[0] is waiting[0][0] for result in waiting)
    held.pending[2][1].callback(tags_reply())
    assert other == [()]


def test_a_read_already_sent_is_not_joined() -> None:
    """A caller that asks after the request went out may be asking because of a push the registry
    answered before it: it gets a read of its own, never an answer older than its request. That read
    goes out once the one in flight has ended, and the callers who ask meanwhile share it."""
    clock, held = MemoryReactorClock(), Held()
    client = client_for(held, clock, slots=2)
    first = track(Deferred.fromCoroutine(client.tags("team/app")))
    second = track(Deferred.fromCoroutine(client.tags("team/app")))
    third = track(Deferred.fromCoroutine(client.tags("team/app")))
    assert len(held.pending) == 1  # the second read waits for the first, though a slot is free
    held.pending[0][1].callback(tags_reply("v1"))
    assert first == [("v1",)] and second == third == []
    assert len(held.pending) == 2  # then goes out, once for both callers
    held.pending[1][1].callback(tags_reply("v1", "v2"))
    assert second == third == [("v1", "v2")]


def test_a_read_waiting_for_an_identical_one_goes_out_whatever_that_one_ends_with() -> None:
    clock, held = MemoryReactorClock(), Held()
    client = client_for(held, clock, slots=2)
    first = track(Deferred.fromCoroutine(client.tags("team/app")))
    second = track(Deferred.fromCoroutine(client.tags("team/app")))
    held.pending[0][1].callback(_Response(503, {}, b""))
    failure_of(first, RegistryUnavailable)
    held.pending[1][1].callback(tags_reply("v1"))
    assert second == [("v1",)]
    # Callers who give up while their read waits: it never goes out.
    track(Deferred.fromCoroutine(client.tags("team/app")))
    waiting = Deferred.fromCoroutine(client.tags("team/app"))
    gave_up = track(waiting)
    waiting.cancel()
    failure_of(gave_up, CancelledError)
    held.pending[2][1].callback(tags_reply("v1"))
    assert len(held.pending) == 3


def test_catalog_pages_are_coalesced_by_position_and_size() -> None:
    clock, held = MemoryReactorClock(), Held()
    client = client_for(held, clock, slots=1)
    track(Deferred.fromCoroutine(client.tags("team/busy")))
    pages = [track(Deferred.fromCoroutine(client.catalog(last="team", n=100))) for _ in range(3)]
    bigger = track(Deferred.fromCoroutine(client.catalog(last="team", n=1000)))
    held.pending[0][1].callback(tags_reply())
    held.pending[1][1].callback(_Response(200, {}, b'{"repositories":["team/a"]}'))
    assert [page[0].repositories for page in pages] == [["team/a"]] * 3
    assert len(held.pending) == 3 and bigger == []  # another page size is another read


def test_a_failure_reaches_every_caller() -> None:
    clock, held = MemoryReactorClock(), Held()
    client = client_for(held, clock, slots=1)
    track(Deferred.fromCoroutine(client.tags("team/busy")))
    waiting = [track(Deferred.fromCoroutine(client.tags("team/app"))) for _ in range(3)]
    held.pending[0][1].callback(tags_reply())
    held.pending[1][1].callback(_Response(503, {}, b""))
    for results in waiting:
        failure_of(results, RegistryUnavailable)


def test_one_caller_giving_up_leaves_the_read_to_the_others() -> None:
    clock, held = MemoryReactorClock(), Held()
    client = client_for(held, clock, slots=1)
    track(Deferred.fromCoroutine(client.tags("team/busy")))
    leaving = Deferred.fromCoroutine(client.tags("team/app"))
    left = track(leaving)
    staying = track(Deferred.fromCoroutine(client.tags("team/app")))
    leaving.cancel()
    failure_of(left, CancelledError)
    held.pending[0][1].callback(tags_reply())
    held.pending[1][1].callback(tags_reply("v1"))
    assert staying == [("v1",)]


def test_when_every_caller_gives_up_the_read_is_cancelled() -> None:
    clock, held = MemoryReactorClock(), Held()
    client = client_for(held, clock, slots=1)
    track(Deferred.fromCoroutine(client.tags("team/busy")))
    callers = [Deferred.fromCoroutine(client.tags("team/app")) for _ in range(2)]
    outcomes = [track(d) for d in callers]
    for d in callers:
        d.cancel()
    for results in outcomes:
        failure_of(results, CancelledError)
    held.pending[0][1].callback(tags_reply())
    assert len(held.pending) == 1  # the cancelled read never went out
    # A later caller starts afresh.
    later = track(Deferred.fromCoroutine(client.tags("team/app")))
    held.pending[1][1].callback(tags_reply("v3"))
    assert later == [("v3",)]


def test_a_sent_read_is_shared_only_with_requests_that_began_before_it_went_out() -> None:
    """A request marks its start (``asking``); a read sent after that answers with the registry's
    state after the request began, so the request may share it. A read sent before the mark may
    predate a push the request's client made just before: the request gets a read of its own."""
    coalescer = Coalescer()
    sends: list[Any] = []
    gates: list[Deferred[str]] = []

    async def read(on_send: Any) -> str:
        sends.append(on_send)
        gates.append(Deferred())
        return await gates[-1]

    async def request(ready: Deferred[None] | None = None) -> str:
        asking()
        if ready is not None:
            await ready  # began, and reads only later
        return await coalescer.join("k", read)

    first = track(Deferred.fromCoroutine(request()))
    ready: Deferred[None] = Deferred()
    during = track(Deferred.fromCoroutine(request(ready)))
    sends[0]()  # the first read goes out
    ready.callback(None)
    assert len(sends) == 1  # began before it went out: shares it
    after = track(Deferred.fromCoroutine(request()))
    assert len(sends) == 1  # began after: a read of its own, once the one out has ended
    unmarked = track(coalescer.join("k", read))  # no mark: joins the read that has not gone out
    gates[0].callback("first")
    assert len(sends) == 2 and len(coalescer) == 1
    sends[1]()
    late = track(coalescer.join("k", read))  # no mark, and that read is out: the next one
    gates[1].callback("second")
    assert len(sends) == 3
    sends[2]()
    gates[2].callback("third")
    assert (first, during, after, unmarked, late) == (["first"], ["first"], ["second"], ["second"], ["third"])
    assert len(coalescer) == 0


def test_reads_at_turn_end_are_shared_by_the_requests_handled_in_that_turn() -> None:
    """The server's client sends shared reads at the end of the reactor turn: requests handled later
    in the turn (lists that arrived together) began before the read went out, and share it."""
    clock, held = MemoryReactorClock(), Held()
    settings = RegistrySettings(url=REGISTRY, timeout=10, max_connections=4)
    client = RegistryClient(clock, settings, agent=held.agent, reads_at_turn_end=True)

    async def request() -> Sequence[str]:
        asking()
        return await client.tags("team/app")

    together = [track(Deferred.fromCoroutine(request())) for _ in range(3)]
    assert held.pending == []  # not out before the turn ends
    clock.advance(0)
    assert len(held.pending) == 1
    later = track(Deferred.fromCoroutine(request()))  # began after it went out: the next read
    held.pending[0][1].callback(tags_reply("v1"))
    assert together == [[("v1",)]] * 3 and later == []
    clock.advance(0)
    held.pending[1][1].callback(tags_reply("v1", "v2"))
    assert later == [("v1", "v2")]


def test_reads_waiting_for_the_turn_end_go_out_together_in_order_and_a_cancelled_one_never() -> None:
    """All reads of one turn wait for one delayed call; one cancelled meanwhile is not sent and
    frees its connection slot, the others go out in the order they asked."""
    clock, held = MemoryReactorClock(), Held()
    settings = RegistrySettings(url=REGISTRY, timeout=10, max_connections=3)
    client = RegistryClient(clock, settings, agent=held.agent, reads_at_turn_end=True)
    reads = [track(Deferred.fromCoroutine(client.tags(f"team/r{i}"))) for i in range(3)]
    queued = track(Deferred.fromCoroutine(client.tags("team/queued")))  # no slot yet
    assert len(clock.getDelayedCalls()) == 1 and held.pending == []
    joined = Deferred.fromCoroutine(client.tags("team/r1"))  # joins r1's read...
    cancelled = track(joined)
    joined.cancel()  # ...and leaves it: r1 still has a caller
    clock.advance(0)
    assert held.urls() == [f"{REGISTRY}/v2/team/r{i}/tags/list" for i in range(3)]
    held.pending[0][1].callback(tags_reply("a"))
    clock.advance(0)  # r0's slot went to the queued read, which waits for its own turn end
    assert held.urls()[3:] == [f"{REGISTRY}/v2/team/queued/tags/list"]
    held.pending[1][1].callback(tags_reply("b"))
    held.pending[2][1].callback(tags_reply("c"))
    held.pending[3][1].callback(tags_reply("q"))
    assert reads == [[("a",)], [("b",)], [("c",)]] and queued == [("q",)]
    failure_of(cancelled, CancelledError)


def test_a_read_cancelled_while_it_waits_for_the_turn_end_is_never_sent_and_frees_its_slot() -> None:
    clock, held = MemoryReactorClock(), Held()
    settings = RegistrySettings(url=REGISTRY, timeout=10, max_connections=1)
    client = RegistryClient(clock, settings, agent=held.agent, reads_at_turn_end=True)
    going = Deferred.fromCoroutine(client.tags("team/gone"))
    gone = track(going)
    after = track(Deferred.fromCoroutine(client.tags("team/after")))  # waits for the only slot
    going.cancel()
    failure_of(gone, CancelledError)
    clock.advance(0)
    clock.advance(0)
    assert held.urls() == [f"{REGISTRY}/v2/team/after/tags/list"]
    held.pending[0][1].callback(tags_reply("v1"))
    assert after == [("v1",)]


# --- connection slots and the timeout ----------------------------------------------------------------


def test_the_wait_for_a_slot_does_not_count_against_the_registry_timeout() -> None:
    clock, held = MemoryReactorClock(), Held()
    client = client_for(held, clock, slots=1, timeout=10)
    slow = track(Deferred.fromCoroutine(client.tags("team/slow")))
    queued = track(Deferred.fromCoroutine(client.tags("team/queued")))
    clock.advance(9)
    held.pending[0][1].callback(tags_reply("v1"))  # the slot frees after 9 s
    assert slow == [("v1",)]
    assert held.urls()[1] == f"{REGISTRY}/v2/team/queued/tags/list"
    clock.advance(9)  # 18 s after it asked, 9 s after it was sent: not timed out
    assert queued == []
    held.pending[1][1].callback(tags_reply("v2"))
    assert queued == [("v2",)]


def test_the_registry_timeout_still_covers_the_answer() -> None:
    clock, held = MemoryReactorClock(), Held()
    client = client_for(held, clock, slots=1, timeout=10)
    track(Deferred.fromCoroutine(client.tags("team/slow")))
    queued = track(Deferred.fromCoroutine(client.tags("team/queued")))
    clock.advance(10.5)  # the first times out and frees the slot; the second is sent now
    assert len(held.pending) == 2 and queued == []
    clock.advance(10.5)
    failure_of(queued, RegistryTimeout)


def test_slots_are_served_in_arrival_order() -> None:
    """A big list queues many tag lists; a single read that comes later waits its turn, not theirs."""
    clock, held = MemoryReactorClock(), Held()
    client = client_for(held, clock, slots=2)
    for i in range(6):
        track(Deferred.fromCoroutine(client.tags(f"team/list-{i}")))
    single = track(Deferred.fromCoroutine(client.manifest("team/single", "v1")))
    for i in range(5):
        held.pending[i][1].callback(tags_reply())
    assert held.urls()[6:] == [f"{REGISTRY}/v2/team/single/manifests/v1"]
    assert single == []
