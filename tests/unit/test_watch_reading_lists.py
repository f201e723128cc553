"""Her lists reading now, known weakly in her entry of the resume rules (`Noted.lists`): a trim keeps
what each decided in until it ends (docs/watch.md, "Access"), and each takes only its own reference
out as it ends, whenever that is. A list's decisions held in a reference cycle (a client gone in the
middle of a list) are freed by the cycle collector, which runs at whatever allocation reaches its
threshold: in the middle of the noting of another list of hers, or of another list's end. These
tests end a list at each collection in turn inside those (threshold 1; a gc callback drops the
list's last reference), until a collection no longer comes before they return."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from payloadtags.identity import UserInfo
from payloadtags.watch import WatchHub
from payloadtags.watch.rules import Noted, PageDecisions, _reading
from tests.support.frozen_heap import frozen_heap  # noqa: F401  (a fixture)
from tests.unit.test_watch import grant, list_sequence
from tests.unit.test_watch_resume_rules import _at_her_share, _stream_of, resumed

ALICE = UserInfo("alice")
UNREAD = ["y1", "y2", "y3"]

# A full collection before each n, and one every hundred or so at threshold 1: see frozen_heap.
pytestmark = pytest.mark.usefixtures("frozen_heap")


@contextmanager
def ending_at_collection(n: int, end: Callable[[], None]) -> Iterator[None]:
    """Runs ``end`` at the ``n``-th collection of the cycle collector started inside the block, one
    collection at every other allocation of a tracked object (threshold 1)."""
    count = 0

    def at_collection(phase: str, info: dict[str, int]) -> None:
        nonlocal count
        if phase == "start":
            count += 1
            if count == n:
                end()

    gc.collect()
    gc.callbacks.append(at_collection)
    threshold = gc.get_threshold()
    gc.set_threshold(1)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(at_collection)


def test_a_list_of_hers_noted_while_another_ends_at_any_collection_is_kept() -> None:
    """review-watch18 F1: list B of hers reads; her list A starts (`_reading`) and B ends at the n-th
    collection in it. `ended` rebuilt and rebound `noted.lists` (None once empty), which `_reading`
    read three times: her list request failed (`TypeError`, `AttributeError`), or A's reference went
    into a list no longer hers and A was not kept by a trim."""
    for n in itertools.count(1):
        noted, holder, running = Noted(), [PageDecisions()], PageDecisions()
        _reading(noted, holder[0])
        with ending_at_collection(n, holder.clear):
            _reading(noted, running)
        if holder:  # no n-th collection in it: every one was tried
            holder.clear()
            break
        assert noted.lists is not None and [ref() for ref in noted.lists] == [running], (n, noted.lists)
    assert n > 1


def test_two_lists_of_hers_ending_together_leave_nothing_in_her_entry() -> None:
    """review-watch18 F1: lists B1 and B2 of hers read; B1 ends, and B2 at the n-th collection inside
    B1's `ended`. B1's `ended` wrote back the list it had rebuilt, with B2's dead reference in it: her
    entry kept it and its list (about 400 bytes, review-watch16 F1) for good."""
    for n in itertools.count(1):
        noted, first, holder = Noted(), [PageDecisions()], [PageDecisions()]
        _reading(noted, first[0])
        _reading(noted, holder[0])
        with ending_at_collection(n, holder.clear):
            first.clear()  # B1 ends
        inside = not holder
        holder.clear()  # B2 ends now if not inside
        assert noted.lists is None, (n, noted.lists)
        if not inside:  # none (now: `ended` allocates nothing)
            break


def _served_after_revocation(
    start: Callable[[WatchHub], PageDecisions],
    then: Callable[[WatchHub, PageDecisions], None] = lambda hub, decisions: None,
) -> bool:
    """Alice at her share of all namespaces (8 of 40), noted by a watch, lists; y1..y3 are pushed
    (the source reads them not). Her list A (``start``) decides in all, y1..y3 included (``then``
    after that), and has not read when another watch of hers starts (its trim); then A reads and
    ends, and her access in y1 is taken back. Whether the watch from A, whose client holds y1/app, is
    served (it must be 410: the trim kept y1 while A read)."""
    hub, index, reader, clock, source, spaces = _at_her_share(*UNREAD)
    _stream_of(hub, source, clock, ALICE, None)
    listed = list_sequence(hub, None, ALICE)
    for namespace in UNREAD:
        reader.repositories[f"{namespace}/app"] = {"v1"}
    decisions = start(hub)
    for namespace in [*spaces, *UNREAD]:
        decisions.decided(namespace)
    then(hub, decisions)
    assert resumed(hub, source, hub.versions.current)  # another watch of hers: its start trims
    observe = hub.observer(None, hub.versions.format(listed))
    assert observe is not None
    for namespace in [*spaces, *UNREAD]:
        observe(f"{namespace}/app", sorted(reader.repositories[f"{namespace}/app"]))
    hub.listed_page(None, ALICE, decisions)
    del decisions  # A has ended
    grant(index, "alice", "y1", ["other"], "a-y1")
    clock.advance(1)
    served = resumed(hub, source, listed)
    hub.stop()
    return served


def test_a_list_of_hers_that_ends_leaves_another_reading_kept() -> None:
    """review-watch18 F2: two lists of hers read at once, and B ends first: A is kept in her entry,
    and the trim while A reads keeps what A decided in. No other test failed with an `ended` that
    took every reference out as one list ended: the watch from A was served after the revocation."""

    def b_reads_and_ends(hub: WatchHub, decisions: PageDecisions) -> None:
        other = hub.page_decisions(None, ALICE)  # list B: a page, read at once
        other.decided("k0")
        hub.listed_page(None, ALICE, other)
        del other  # B has ended
        noted = hub.rules.entries[(hub.sources[None], ("alice", ""))]
        assert noted.lists is not None and [ref() for ref in noted.lists] == [decisions]

    assert not _served_after_revocation(lambda hub: hub.page_decisions(None, ALICE), b_reads_and_ends)


def test_a_list_of_hers_started_while_another_ends_at_any_collection_keeps_what_it_decided_in() -> None:
    """review-watch18 F1 through the hub: her list B reads, and ends at the n-th collection while
    `WatchHub.page_decisions` starts her list A. Her list request failed (`TypeError` or
    `AttributeError` out of `page_decisions`)."""
    for n in itertools.count(1):
        served, inside = _a_started_while_b_ends_at(n)
        assert not served, n
        if not inside:
            break
    assert n > 1


def _a_started_while_b_ends_at(n: int) -> tuple[bool, bool]:
    """Whether the watch from A is served after the revocation, and whether B ended inside."""
    inside = False

    def start(hub: WatchHub) -> PageDecisions:
        nonlocal inside
        holder = [hub.page_decisions(None, ALICE)]  # list B
        with ending_at_collection(n, holder.clear):
            decisions = hub.page_decisions(None, ALICE)  # list A
        inside = not holder
        noted = hub.rules.entries[(hub.sources[None], ("alice", ""))]
        assert noted.lists is not None and any(ref() is decisions for ref in noted.lists), n
        return decisions

    return _served_after_revocation(start), inside
