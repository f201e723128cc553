"""The order in which a full server evicts connections, kept as they change state.

Each new connection on a full server chooses whom to evict (channel.LimitedConnections._evict): the
oldest connection of the lowest rank. Scanning every open connection for it made a flood of n connects
cost n² looks; here each connection is placed in its rank as its state changes, and the choice takes
O(log n) amortized.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)

# A heap is rebuilt once it holds this many more entries than twice its live ones: its stale entries
# (of connections that left the rank or closed) are dropped in one go, paid for by the moves that
# left them.
_SLACK = 16


class EvictionOrder(Generic[T]):
    """Items by rank, the lowest first, and in each rank by the number each was placed with (the
    order of their connections), the lowest first.

    Each rank keeps a heap of (number, item), at most one entry per item: an item that leaves a rank
    leaves its entry there, dropped when it comes to the top, or valid again if the item comes back
    before that (at its old place: its number is its connection's). Stale entries past ``_SLACK`` more
    than the live ones are dropped by rebuilding the heap."""

    def __init__(self, ranks: int) -> None:
        self._heaps: list[list[tuple[int, T]]] = [[] for _ in range(ranks)]
        self._entered: list[set[T]] = [set() for _ in range(ranks)]  # the items with an entry in each heap
        self._live = [0] * ranks
        self._rank: dict[T, int] = {}
        self.examined = 0  # entries looked at to find the first, all told (the tests count them)

    def __len__(self) -> int:
        return len(self._rank)

    def place(self, item: T, number: int, rank: int | None) -> None:
        """``item`` is now of ``rank`` (None: out of the order). ``number`` is the same every time."""
        old = self._rank.get(item)
        if old == rank:
            return
        if old is not None:
            self._live[old] -= 1
            self._trim(old)
        if rank is None:
            del self._rank[item]
            return
        self._rank[item] = rank
        self._live[rank] += 1
        entered = self._entered[rank]
        if item not in entered:
            entered.add(item)
            heapq.heappush(self._heaps[rank], (number, item))
            self._trim(rank)

    def first(self) -> T | None:
        """The lowest-numbered item of the lowest rank that has one; None when the order is empty."""
        for rank, heap in enumerate(self._heaps):
            if not self._live[rank]:
                continue
            while True:  # the rank has a live entry: the loop ends on it
                _, item = heap[0]
                self.examined += 1
                if self._rank.get(item) == rank:
                    return item
                heapq.heappop(heap)
                self._entered[rank].discard(item)
        return None

    def _trim(self, rank: int) -> None:
        heap = self._heaps[rank]
        if len(heap) <= 2 * self._live[rank] + _SLACK:
            return
        live = [(number, item) for number, item in heap if self._rank.get(item) == rank]
        heapq.heapify(live)
        self._heaps[rank] = live
        self._entered[rank] = {item for _, item in live}
