"""A registry that stays down is said once per cause and period for every watched scope, not once per
scope per resync nor once per watch request (review r1obs F1; onceper.py's contract)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from tests.unit.test_watch import FakeReader, make_hub, ready, watcher


def said(events: Sequence[dict[str, Any]], words: str) -> list[str]:
    return [formatEvent(e) for e in events if words in e.get("log_format", "")]


def test_a_lasting_registry_failure_is_said_once_per_period_for_all_the_scopes() -> None:
    reader = FakeReader({f"ns{i}/app": {"v1"} for i in range(20)})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=30)
    for i in range(20):
        source = ready(hub, f"ns{i}")
        w, _ = watcher()
        hub.start(w, source, since=hub.versions.current, timeout=None)
    reader.broken = True
    with capturedLogs() as events:
        for _ in range(4):  # two minutes of a registry that is down: 80 failed resyncs
            clock.advance(30)
    lines = said(events, "watch resync of")
    # Before: 80 lines, one per scope per resync.
    assert len(lines) == 4, lines
    assert lines[0].startswith("watch resync of ns0 failed: registry down")
    assert all("(19 more like it in the 30s since the last line)" in line for line in lines[1:]), lines
    assert all(source.failures == 4 for source in hub.sources.values())


def test_watches_of_new_scopes_against_a_down_registry_are_one_line() -> None:
    reader = FakeReader({})
    reader.broken = True
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=30)
    failed: list[object] = []
    with capturedLogs() as events:
        for i in range(50):  # 50 watch requests of namespaces nobody watched, in one second
            Deferred.fromCoroutine(hub.source(f"made-up-{i}")).addErrback(failed.append)
    assert len(failed) == 50  # each answered 503
    # Before: 50 lines, the client's request rate setting the log's.
    assert len(said(events, "watch resync of")) == 1


def test_resyncs_that_pass_again_count_what_was_left_out_and_the_next_failure_is_said_at_once() -> None:
    reader = FakeReader({"a/app": {"v1"}, "b/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=30)
    for namespace in ("a", "b"):
        ready(hub, namespace)
    reader.broken = True
    with capturedLogs() as events:
        clock.advance(30)  # a said, b counted
        reader.broken = False
        hub.sources["a"].resync()  # b still failing: the episode lasts
        assert said(events, "pass again") == []
        hub.sources["b"].resync()
        assert said(events, "pass again") == [
            "watch resyncs pass again after ConnectionError (1 more like the last line, about a, in the 0s "
            "after it)"
        ]
        reader.broken = True
        hub.sources["a"].resync()  # a new episode, within the period of the last line
    assert len(said(events, "watch resync of")) == 2


@attrs.define
class BrokenScopes(FakeReader):
    broken_in: set[str | None] = attrs.field(factory=set)

    async def scope_tags(self, namespace: str | None) -> dict[str, list[str]]:
        if namespace in self.broken_in:
            raise ConnectionError("registry down")
        return await super().scope_tags(namespace)


def test_a_dropped_source_that_failed_does_not_hold_the_episode_open() -> None:
    reader = BrokenScopes({"kept/app": {"v1"}}, broken_in={"kept", "gone"})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=30)
    with capturedLogs() as events:
        for namespace in ("kept", "gone", "gone"):
            Deferred.fromCoroutine(hub.source(namespace)).addErrback(lambda _: None)
        reader.broken_in = {"gone"}
        source = ready(hub, "kept")
        w, _ = watcher()
        hub.start(w, source, since=hub.versions.current, timeout=None)
        clock.advance(11)
        hub.reap_unused()  # gone, unused for UNUSED_SCOPE_TTL: dropped while its resyncs fail
        assert list(hub.sources) == ["kept"]
        assert said(events, "pass again") == []  # its going is no pass
        clock.advance(19)  # kept's resync passes, and no other scope's last one failed
    assert said(events, "pass again") == [
        "watch resyncs pass again after ConnectionError (2 more like the last line, about kept, in the "
        "30s after it)"
    ]
    assert len(said(events, "watch resync of")) == 1


def test_a_source_dropped_during_its_failing_resync_does_not_hold_the_episode_open() -> None:
    # Review r2obs F1 (its reproducer): the resync of the dropped source failed after the drop, which
    # put the scope back among the failing for good.
    reader = FakeReader({"kept/app": {"v1"}})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=30)
    source = ready(hub, "kept")
    w, _ = watcher()
    hub.start(w, source, since=hub.versions.current, timeout=None)
    gone = ready(hub, "gone")  # nobody watches it: dropped after UNUSED_SCOPE_TTL
    with capturedLogs() as events:
        reader.scope_held = []
        clock.advance(30)  # both periodic resyncs start, and wait on the registry
        assert len(reader.scope_held) == 2
        hub.reap_unused()  # gone is idle: dropped while its resync is under way
        assert list(hub.sources) == ["kept"]
        held, reader.scope_held = reader.scope_held, None
        reader.broken = True
        for d in held:
            if not d.called:  # gone's was cancelled
                d.callback(None)  # the registry is down: kept's fails
        assert len(said(events, "watch resync of")) == 1
        reader.broken = False
        hub.sources["kept"].resync()  # kept's resync passes, and the only other scope is gone
        assert hub.sources["kept"].resyncs == 2
        reader.broken = True
        hub.sources["kept"].resync()  # a new failure, after the episode: said at once
    # The episode ended when kept passed: gone is no more, its failure no scope's last one.
    assert len(said(events, "watch resync of")) == 2, "the episode never ends: the new failure is left out"
    # Its cancel is neither a failure nor a line.
    assert gone.failures == 0
    assert said(events, "watch resync of gone") == []


@attrs.define
class TwoCauses(FakeReader):
    async def scope_tags(self, namespace: str | None) -> dict[str, list[str]]:
        if self.broken:
            raise (ConnectionError if namespace in ("a", "b") else TimeoutError)("registry down")
        return await super().scope_tags(namespace)


def test_two_causes_that_pass_again_are_named_in_their_lines() -> None:
    # Review r2obs N1: two identical lines, neither saying which cause (nor which last line) it counts.
    reader = TwoCauses({f"{n}/app": {"v1"} for n in "abcd"})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=30)
    for n in "abcd":
        source = ready(hub, n)
        w, _ = watcher()
        hub.start(w, source, since=hub.versions.current, timeout=None)
    with capturedLogs() as events:
        reader.broken = True
        clock.advance(30)
        reader.broken = False
        clock.advance(30)
    assert said(events, "watch resync of") == [
        "watch resync of a failed: registry down",
        "watch resync of c failed: registry down",
    ]
    assert said(events, "pass again") == [
        "watch resyncs pass again after ConnectionError (1 more like the last line, about a, in the 30s "
        "after it)",
        "watch resyncs pass again after TimeoutError (1 more like the last line, about c, in the 30s "
        "after it)",
    ]


@attrs.define
class BrokenRepositories(FakeReader):
    async def repository_tags(self, repository: str) -> list[str]:
        self.repository_reads.append(repository)
        raise ConnectionError("registry down")


def test_failed_repository_reads_are_said_once_per_period() -> None:
    reader = BrokenRepositories({f"ns/app{i}": {"v1"} for i in range(10)})
    clock = Clock()
    hub = make_hub(reader, clock, resync_period=3600)
    ready(hub, "ns")
    with capturedLogs() as events:
        for i in range(10):  # ten notifications
            hub.repository_changed(f"ns/app{i}")
        clock.advance(30)
        hub.repository_changed("ns/app0")
    lines = said(events, "watch read of")
    assert len(reader.repository_reads) == 11
    assert lines == [
        "watch read of ns/app0 failed: registry down; the next resync covers it",
        "watch read of ns/app0 failed: registry down; the next resync covers it "
        "(9 more like it in the 30s since the last line)",
    ]
