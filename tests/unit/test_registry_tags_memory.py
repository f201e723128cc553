"""A repository's tags read from the registry are held as a few long texts, not a str per tag (issue
#11): held for minutes by walks and lists' records, 100,000 tags' str filled Python's small-object
arenas, which blocks made meanwhile then kept sparse once the lists were gone."""

from __future__ import annotations

import gc
import json
import random
import tracemalloc

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from payloadtags.registry import RegistryClient, RegistrySettings
from tests.unit.test_registry_cancellation import REGISTRY, Agent, _Response, track

SMALL = 512  # pymalloc's largest block: anything larger comes from malloc, which gives it back


def small_blocks_held_by_a_read(body: bytes) -> tuple[object, int]:
    """A read's answer of ``body``, and how many small blocks made during the read it still holds."""
    agent = Agent(lambda method, url: _Response(200, {"Content-Type": "application/json"}, body))
    client = RegistryClient(MemoryReactorClock(), RegistrySettings(url=REGISTRY, timeout=10), agent=agent)
    track(Deferred.fromCoroutine(client.tags("team/first")))  # the client's own first-use objects
    gc.collect()
    tracemalloc.start()
    try:
        answer = track(Deferred.fromCoroutine(client.tags("team/app")))
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    [tags] = answer
    return tags, sum(1 for trace in snapshot.traces if trace.size <= SMALL)


def test_a_read_of_distributions_answer_holds_no_str_per_tag() -> None:
    tags = [f"v{i:06d}" for i in range(5000)]
    random.Random(1).shuffle(tags)  # distribution lists them as its storage does, unsorted
    body = json.dumps({"name": "team/app", "tags": tags}, separators=(",", ":")).encode() + b"\n"
    answer, small = small_blocks_held_by_a_read(body)
    assert answer == tuple(sorted(tags))
    assert small < 100  # was 5,000 and more: a str per tag


def test_a_read_of_another_registrys_answer_holds_no_str_per_tag() -> None:
    # Spaced and escaped: json.loads' path, whose tags are then kept as the same texts.
    tags = [f"v{i:06d}/\u00e9" for i in range(5000)]
    answer, small = small_blocks_held_by_a_read(json.dumps({"name": "team/app", "tags": tags}).encode())
    assert answer == tuple(sorted(tags))
    assert small < 100
