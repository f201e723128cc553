"""Capped exponential backoff with jitter."""

from __future__ import annotations

import random

import attrs


@attrs.define
class Backoff:
    """Delays for successive retries: ``initial * factor**n``, capped, then jittered downwards.

    The jitter only ever shortens a delay, so `cap` stays a hard upper bound, and replicas that
    failed at the same moment spread out instead of retrying in lockstep.
    """

    initial: float = 0.8
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.5
    rng: random.Random = attrs.field(factory=random.Random)
    attempts: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if not (self.initial > 0 and self.factor >= 1 and self.cap >= self.initial):
            raise ValueError("backoff needs initial > 0, factor >= 1 and cap >= initial")
        if not 0 <= self.jitter < 1:
            raise ValueError("backoff jitter must be in [0, 1)")

    def next_delay(self) -> float:
        """The delay before the next retry; each call counts one more failure."""
        # Stop growing the exponent once past the cap so it can never overflow a float.
        exponent = min(self.attempts, 64)
        base = min(self.cap, self.initial * self.factor**exponent)
        self.attempts += 1
        return base * (1 - self.jitter * self.rng.random())

    def reset(self) -> None:
        """Forget past failures: the next delay is `initial` again."""
        self.attempts = 0
