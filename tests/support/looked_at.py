"""A mapping that counts the entries handed to whatever iterates it: the work a bound does to find
what to drop, counted rather than timed (a count does not depend on the machine's load)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LookedAt(OrderedDict[K, V]):
    """An `OrderedDict` (so it can stand in for a dict or an OrderedDict) whose ``looked_at`` counts
    the keys, values and items its iterations gave out. Lookups by key count nothing."""

    looked_at: int = 0

    def __iter__(self) -> Iterator[K]:
        for key in super().__iter__():
            self.looked_at += 1
            yield key

    def keys(self) -> Iterator[K]:  # type: ignore[override]
        return iter(self)

    def values(self) -> Iterator[V]:  # type: ignore[override]
        for value in super().values():
            self.looked_at += 1
            yield value

    def items(self) -> Iterator[tuple[K, V]]:  # type: ignore[override]
        for item in super().items():
            self.looked_at += 1
            yield item
