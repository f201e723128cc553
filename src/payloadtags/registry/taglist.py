"""A repository's tags as a few long texts, not a str each (issue #11: a server that held 100,000 tags'
str for its walks and list records kept Python's small-object arenas sparse once they went).

The sorted tags are cut into blocks of `BLOCK` tags, each block one str of its tags joined by newlines:
every block but the last long enough (250 tags and their 249 newlines: over 512 bytes) that CPython
takes it from ``malloc``, not from its arenas, which the quiet server's ``malloc_trim`` gives back. A
str per tag is made only for the tags a caller takes, a block's ``split`` at a time.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import sys
from collections.abc import Iterator, Sequence
from typing import overload

BLOCK = 250
_SPLIT = operator.methodcaller("split", "\n")


class TagList(Sequence[str]):
    """Sorted tags, each once, immutable; equal to another `TagList` or a tuple of the same tags.

    A list holding a tag with a newline in it (JSON can carry one; no registry that keeps to the tag
    grammar lists one) keeps its tags as a tuple instead."""

    __slots__ = ("__weakref__", "_blocks", "_count", "_tuple")

    def __init__(self, tags: Sequence[str] = (), *, plain: bool = False) -> None:
        """``tags``: sorted, each once (not checked). ``plain``: the caller knows no tag holds a
        newline."""
        count = len(tags)
        bounds = map(slice, range(0, count, BLOCK), itertools.count(BLOCK, BLOCK))
        blocks = tuple(map("\n".join, map(tags.__getitem__, bounds)))
        self._count = count
        self._tuple: tuple[str, ...] | None = None
        self._blocks: tuple[str, ...] = blocks
        # The newlines are the separators only: one a tag less a block.
        if not plain and sum(map(str.count, blocks, itertools.repeat("\n"))) != count - len(blocks):
            self._tuple, self._blocks = tuple(tags), ()

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        if self._tuple is not None:
            return self._tuple[index]
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            if step != 1:
                return list(itertools.islice(self, start, stop, step)) if step > 0 else list(self)[index]
            if start == 0 and stop == self._count:
                # Itself, as a tuple's whole slice is: a page that shows an answer whole hands on the
                # registry's answer, which lists showing the same one format once (`api.render.SharedText`).
                return self
            return self._slice(start, stop) if start < stop else []
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("TagList index out of range")
        block, at = divmod(index, BLOCK)
        return self._blocks[block].split("\n")[at]

    def _slice(self, start: int, stop: int) -> list[str]:
        """Tags ``start`` to ``stop`` (0 <= start < stop <= len): the blocks holding them split."""
        first, last = start // BLOCK, (stop - 1) // BLOCK
        blocks = self._blocks
        if first == last:
            begin = first * BLOCK
            return blocks[first].split("\n")[start - begin : stop - begin]
        tags = blocks[first].split("\n")[start - first * BLOCK :]
        tags += itertools.chain.from_iterable(map(_SPLIT, blocks[first + 1 : last]))
        tags += blocks[last].split("\n")[: stop - last * BLOCK]
        return tags

    def __iter__(self) -> Iterator[str]:
        if self._tuple is not None:
            return iter(self._tuple)
        # A block at a time, chained in C: a generator's frame per tag costs more than the split.
        return itertools.chain.from_iterable(map(_SPLIT, self._blocks))

    def __contains__(self, tag: object) -> bool:
        if self._tuple is not None:
            return tag in self._tuple
        if not isinstance(tag, str):
            return False
        at = self._block_of(tag)
        return at >= 0 and tag in self._blocks[at].split("\n")

    def after(self, tag: str) -> int:
        """Where the tags after ``tag`` start (`bisect.bisect_right`): one block made into str, not a
        block per step of the search."""
        if self._tuple is not None:
            return bisect.bisect_right(self._tuple, tag)
        at = self._block_of(tag)
        return 0 if at < 0 else at * BLOCK + bisect.bisect_right(self._blocks[at].split("\n"), tag)

    def _block_of(self, tag: str) -> int:
        """The last block whose first tag is not after ``tag``; -1 for none."""
        blocks = self._blocks
        return bisect.bisect_right(range(len(blocks)), tag, key=lambda i: _first(blocks[i])) - 1

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TagList):
            return (self._blocks, self._tuple) == (other._blocks, other._tuple)
        if isinstance(other, tuple):
            return len(other) == self._count and tuple(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        # Not a tuple's hash, though equal to one: answers are compared, never mixed with tuples as keys.
        return hash((self._blocks, self._tuple))

    def __repr__(self) -> str:
        return f"TagList({tuple(self)!r})"

    def held(self) -> int:
        """The bytes this list holds: its blocks (or tuple and the tags' str), and itself."""
        if self._tuple is not None:
            return sys.getsizeof(self) + sys.getsizeof(self._tuple) + sum(map(sys.getsizeof, self._tuple))
        return sys.getsizeof(self) + sys.getsizeof(self._blocks) + sum(map(sys.getsizeof, self._blocks))


def _first(block: str) -> str:
    end = block.find("\n")
    return block if end < 0 else block[:end]


def bisect_after(tags: Sequence[str], tag: str) -> int:
    """``bisect.bisect_right(tags, tag)`` for sorted tags, a `TagList`'s without making all its str."""
    return tags.after(tag) if isinstance(tags, TagList) else bisect.bisect_right(tags, tag)
