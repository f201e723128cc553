"""Small blobs (image configs) kept in memory by repository and digest.

A blob's content is named by its digest and checked against it when read, so what was read once is
what the registry holds under that digest for as long as it holds it: a single-tag GET can take the
config from here and read only the manifest, which says which config the tag has now. Bounded in bytes,
least recently used first out. Keyed by repository too, so that a digest read in one repository is
never shown for another that may not hold it.
"""

from __future__ import annotations

from collections import OrderedDict


class BlobCache:
    def __init__(self, max_bytes: int = 16 << 20, max_blob_bytes: int = 256 << 10) -> None:
        self._max_bytes = max_bytes
        self._max_blob_bytes = max_blob_bytes
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._bytes

    def get(self, repository: str, digest: str) -> bytes | None:
        content = self._entries.get((repository, digest))
        if content is not None:
            self._entries.move_to_end((repository, digest))
        return content

    def put(self, repository: str, digest: str, content: bytes) -> None:
        """Keeps ``content``, which the caller has checked against ``digest``; larger blobs are not kept."""
        if len(content) > self._max_blob_bytes or (repository, digest) in self._entries:
            return
        self._entries[(repository, digest)] = content
        self._bytes += len(content)
        while self._bytes > self._max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= len(dropped)
