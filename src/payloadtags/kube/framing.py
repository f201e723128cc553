"""Newline framing of watch streams.

The API server writes one JSON event per line, but the HTTP layer hands us arbitrary chunks: one
chunk may hold several events, or a fraction of one.
"""

from __future__ import annotations

import attrs

from payloadtags.kube.errors import KubeProtocolError

# etcd refuses objects larger than about 1.5 MiB; anything far beyond that is a broken stream, and
# buffering it without bound would let one bad peer exhaust memory.
DEFAULT_MAX_LINE = 16 * 1024 * 1024


@attrs.define
class LineFramer:
    """Splits a byte stream into complete lines, keeping the incomplete tail for the next chunk."""

    max_line: int = DEFAULT_MAX_LINE
    _buffer: bytearray = attrs.field(factory=bytearray, init=False)

    def feed(self, data: bytes) -> list[bytes]:
        """Add a chunk; return the complete, non-blank lines it finished (without the newline)."""
        self._buffer += data
        if b"\n" not in data:
            self._check_length()
            return []
        *complete, tail = bytes(self._buffer).split(b"\n")
        self._buffer = bytearray(tail)
        self._check_length()
        return [line for line in (c.rstrip(b"\r") for c in complete) if line.strip()]

    @property
    def pending(self) -> bytes:
        """Bytes received after the last newline; non-empty at the end means a truncated event."""
        return bytes(self._buffer)

    def _check_length(self) -> None:
        if len(self._buffer) > self.max_line:
            raise KubeProtocolError(f"watch event longer than {self.max_line} bytes")
