"""The catalog page-size step-down (distribution's `catalog.maxentries`): reads refused while another
read steps down wait for it, and are let go, to step down themselves, whatever ends it (a cancel, a
timeout): never left waiting for a size nobody will find."""

from __future__ import annotations

import urllib.parse
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from payloadtags.registry import RegistryTimeout
from tests.unit.test_registry_client_unit import Answer, Sent, error_answer, json_answer, make, run

LIMIT = 50  # the registry's catalog.maxentries here
NAMES = [f"r{i:03d}" for i in range(300)]


class HeldCatalog:
    """Holds every request until the test answers it, as a registry with ``LIMIT`` would."""

    def __init__(self) -> None:
        self.held: list[tuple[Sent, Deferred[Answer]]] = []

    def __call__(self, request: Sent) -> Deferred[Answer]:
        answer: Deferred[Answer] = Deferred()
        self.held.append((request, answer))
        return answer

    def asked(self) -> list[tuple[str, int]]:
        """(last, n) of every request so far."""
        return [self._query(sent) for sent, _ in self.held]

    def answer(self, index: int) -> None:
        sent, answer = self.held[index]
        _, n = self._query(sent)
        if n > LIMIT:
            answer.callback(error_answer(400, "PAGINATION_NUMBER_INVALID"))
        else:
            answer.callback(json_answer({"repositories": NAMES[:n]}))

    def answer_until(self, done: list[Any], start: int) -> None:
        index = start
        while not done:
            self.answer(index)
            index += 1

    @staticmethod
    def _query(sent: Sent) -> tuple[str, int]:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(sent.url).query)
        return query.get("last", [""])[0], int(query["n"][0])


def outcome(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def _stepping_and_waiting(
    clock: Clock, timeout: float | None = None
) -> tuple[HeldCatalog, Deferred[Any], Deferred[Any]]:
    held = HeldCatalog()
    client, _ = make(held, clock) if timeout is None else make(held, clock, timeout=timeout)
    stepping = run(client.catalog(n=1000))
    waiting = run(client.catalog(last="a", n=1000))
    held.answer(0)  # refused: this read steps down, asking 500
    held.answer(1)  # refused too: this one waits for it
    assert held.asked()[2:] == [("", 500)], held.asked()
    return held, stepping, waiting


def test_a_read_waiting_for_a_cancelled_step_down_steps_down_itself() -> None:
    held, stepping, waiting = _stepping_and_waiting(Clock())
    stepped, waited = outcome(stepping), outcome(waiting)
    stepping.cancel()
    assert stepped and stepped[0].check(CancelledError)
    assert held.asked()[3:] == [("a", 500)], held.asked()  # let go at once
    held.answer_until(waited, 3)
    assert waited[0].n == LIMIT and len(waited[0].repositories) == LIMIT


def test_a_read_waiting_for_a_step_down_that_times_out_steps_down_itself() -> None:
    clock = Clock()
    held, stepping, waiting = _stepping_and_waiting(clock, timeout=10.0)
    stepped, waited = outcome(stepping), outcome(waiting)
    clock.advance(10.1)  # the stepping read's request of 500 times out
    assert stepped and stepped[0].check(RegistryTimeout)
    assert not waited
    assert held.asked()[3:] == [("a", 500)], held.asked()
    held.answer_until(waited, 3)
    assert waited[0].n == LIMIT


def test_sizes_refused_to_a_step_down_that_was_cancelled_are_not_asked_again() -> None:
    held = HeldCatalog()
    client, _ = make(held, Clock())
    stepping = run(client.catalog(n=1000))
    stepped = outcome(stepping)
    held.answer(0)  # 1000 refused
    held.answer(1)  # 500 refused
    assert held.asked() == [("", 1000), ("", 500), ("", 200)]
    stepping.cancel()  # its client went away before a page
    assert stepped and stepped[0].check(CancelledError)
    # The next read starts below what was refused, and learns the size the first one would have.
    again = run(client.catalog(last="a", n=1000))
    got = outcome(again)
    assert held.asked()[3:] == [("a", 200)], held.asked()
    held.answer_until(got, 3)
    assert held.asked()[3:] == [("a", 200), ("a", 100), ("a", LIMIT)], held.asked()
    assert got[0].n == LIMIT
    # A read that asks a small size of its own takes it, and teaches nothing smaller.
    small = outcome(run(client.catalog(last="b", n=20)))
    held.answer(6)
    assert held.asked()[6:] == [("b", 20)] and small[0].n is None
    later = outcome(run(client.catalog(last="c", n=1000)))
    held.answer(7)
    assert held.asked()[7:] == [("c", LIMIT)] and later[0].n == LIMIT


def _refused(held: HeldCatalog) -> list[tuple[str, int]]:
    return [(last, n) for last, n in held.asked() if n > LIMIT]


def test_identical_reads_starting_while_one_steps_down_follow_it_and_send_no_refused_request() -> None:
    # Lists of one namespace or `-A` lists started by several clients: same last, same n, each starting
    # after another refusal of the first read's.
    held = HeldCatalog()
    client, _ = make(held, Clock())
    pages = [outcome(run(client.catalog(n=1000)))]
    answered = 0
    for _ in range(3):
        held.answer(answered)
        answered += 1
        pages.append(outcome(run(client.catalog(n=1000))))
    while not all(pages):
        held.answer(answered)
        answered += 1
    assert all(page[0].n == LIMIT for page in pages)
    assert len(_refused(held)) == 4, held.asked()  # 1000, 500, 200, 100: once each


def test_the_size_found_below_a_cancelled_step_down_is_learned_and_logged_once() -> None:
    held = HeldCatalog()
    client, _ = make(held, Clock())
    with capturedLogs() as events:
        stepping = run(client.catalog(n=1000))
        stepped = outcome(stepping)
        for index in range(4):  # 1000, 500, 200, 100 refused
            held.answer(index)
        assert held.asked()[4:] == [("", LIMIT)]
        stepping.cancel()
        assert stepped and stepped[0].check(CancelledError)
        # The next reads ask 50 at once (the refusals remembered) and it is taken: the registry's size.
        pages = [outcome(run(client.catalog(last=last, n=1000))) for last in ("a", "b")]
        held.answer(5)
        held.answer(6)
        assert all(page and page[0].n == LIMIT for page in pages)
    learned = [formatEvent(event) for event in events if "catalog.maxentries" in formatEvent(event)]
    assert len(learned) == 1 and "pages of 100 names" in learned[0] and "asking 50" in learned[0], learned
