"""One FIFO queue per repository for everything that changes it, inside one process.

distribution 2.8 writes a tag link by truncating the file and writing it again, and a digest DELETE
reads every tag link of the repository to find the tags to untag. A DELETE that reads a link while
another request rewrites it fails with 500 "invalid checksum digest format" *after* it removed the
manifest revision, and the tags on that digest are left pointing at nothing (dangling). Running the
mutations of one repository one after the other removes that race between this process's own
requests, and gives every conditional write (re-read, compare, write) no competitor from inside the
process. Other processes (another replica, a client pushing) are not covered: what they can cause is
repaired or refused elsewhere (`RegistryClient.delete_tag`), never assumed away here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import attrs
from twisted.internet.defer import DeferredLock


@attrs.define
class _Slot:
    lock: DeferredLock = attrs.Factory(DeferredLock)
    # Holders and waiters; the slot is dropped when it falls to 0 so idle repositories cost nothing.
    users: int = 0


@attrs.define
class RepositoryQueue:
    """``async with queue.hold(repository): ...`` runs the block after every earlier holder of that
    repository is done, in arrival order. Different repositories do not wait for each other.

    Not re-entrant: code inside a hold must not ask for the same repository again.
    """

    _slots: dict[str, _Slot] = attrs.Factory(dict)
    #: Holds that had to wait for another one (for metrics and benchmarks).
    waits: int = 0
    #: The longest line seen for one repository, holder included.
    max_depth: int = 0

    def depth(self, repository: str) -> int:
        """Holders and waiters of this repository now."""
        slot = self._slots.get(repository)
        return slot.users if slot is not None else 0

    @contextlib.asynccontextmanager
    async def hold(self, repository: str) -> AsyncIterator[None]:
        slot = self._slots.get(repository)
        if slot is None:
            slot = self._slots[repository] = _Slot()
        slot.users += 1
        self.max_depth = max(self.max_depth, slot.users)
        try:
            if slot.lock.locked:
                self.waits += 1
            # A waiter cancelled here leaves the line (DeferredLock drops a cancelled acquire).
            await slot.lock.acquire()
            try:
                yield
            finally:
                slot.lock.release()
        finally:
            slot.users -= 1
            if slot.users == 0 and self._slots.get(repository) is slot:
                del self._slots[repository]


__all__ = ["RepositoryQueue"]
