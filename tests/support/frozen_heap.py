"""A module-scoped fixture for tests that call the cycle collector often (memory measurements, a
collection at every allocation)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def frozen_heap() -> Iterator[None]:
    """The objects of the tests that ran before the module's (a `scripts/test` worker's: half the suite) set
    aside with ``gc.freeze()``: each full collection went through all of them, seconds a test in a full
    run. What the module's tests allocate is still collected; frozen objects were allocated before any
    tracemalloc tracing starts, so they were never in its figures; and a full collection still empties
    CPython's free lists (it does on every generation-2 collection, frozen objects or not)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
