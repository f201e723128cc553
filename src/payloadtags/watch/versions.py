"""resourceVersions scoped to one replica's run: an epoch id and a sequence in one decimal number.

Each replica (and each run of it) picks a random epoch; every change it observes takes the next number of
its sequence. A resourceVersion from another replica or an earlier run carries another epoch, so this
replica recognises it as one it cannot serve from and answers 410 Gone: the client relists instead of
silently missing the changes that happened between the two replicas' views.

The number stays below 2**64 (some clients parse resourceVersions as unsigned 64-bit integers): an
8-digit epoch from 10,000,000 to 18,446,743 and an 11-digit sequence.
"""

from __future__ import annotations

import random

import attrs

from payloadtags.validators import bounded_decimal

SEQUENCE_DIGITS = 11
_SPAN = 10**SEQUENCE_DIGITS
EPOCH_MIN = 10_000_000
EPOCH_MAX = 18_446_743
MAX_VERSION = 2**64 - 1


def parse_version(text: str) -> int | None:
    """``text`` as a number when it is a resourceVersion kube-apiserver's storage would parse (decimal
    digits within 64 bits unsigned, as Go's strconv.ParseUint); None otherwise."""
    if not (text.isascii() and text.isdigit()):
        return None
    return bounded_decimal(text, MAX_VERSION)


def random_epoch() -> int:
    return random.SystemRandom().randint(EPOCH_MIN, EPOCH_MAX)


@attrs.define
class ReplicaVersions:
    epoch: int = attrs.field(factory=random_epoch)
    # Starts at 1: a list made before any change has a resourceVersion a watch can start from.
    current: int = 1

    def __attrs_post_init__(self) -> None:
        if not EPOCH_MIN <= self.epoch <= EPOCH_MAX:
            raise ValueError(f"epoch {self.epoch} outside [{EPOCH_MIN}, {EPOCH_MAX}]")

    def next(self) -> int:
        self.current += 1
        return self.current

    def reserve(self, count: int) -> int:
        """Takes the next ``count`` numbers as one block; returns the first."""
        first = self.current + 1
        self.current += count
        return first

    def format(self, sequence: int) -> str:
        return str(self.epoch * _SPAN + sequence)

    def latest(self) -> str:
        return self.format(self.current)

    def ahead(self, text: str) -> bool:
        """Whether ``text`` carries this run's epoch and a sequence it has not reached yet."""
        sequence = self._sequence(text)
        return sequence is not None and sequence > self.current

    def parse(self, text: str) -> int | None:
        """The sequence of a resourceVersion this run issued, or None (foreign, future or not one)."""
        sequence = self._sequence(text)
        return sequence if sequence is not None and sequence <= self.current else None

    def _sequence(self, text: str) -> int | None:
        """The sequence ``text`` carries under this run's epoch, issued or not; None otherwise."""
        number = parse_version(text)
        if number is None:
            return None
        epoch, sequence = divmod(number, _SPAN)
        return int(sequence) if epoch == self.epoch else None


__all__ = ["EPOCH_MAX", "EPOCH_MIN", "MAX_VERSION", "ReplicaVersions", "parse_version", "random_epoch"]
