"""The convergence harness's own verdicts (tests/support/watch_convergence.py), on a fake clock and a
hub with no server: a client that keeps getting 410 is reported with its last steps, and one that
failed is not waited for at the quiet point (wc84319)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from payloadtags.watch import WatchHub, WatchLimits
from tests.support.client import ApiClient, Stream
from tests.support.watch_convergence import Client, Config, Run
from tests.unit.test_watch import FakeReader


def quiet_run(clock: Clock) -> Run:
    """A run whose server is only its watch hub (`Run.hub`)."""
    run = Run(clock, cast(Any, None), cast(Any, None), Config(seed=1), Path("."))
    hub = WatchHub(FakeReader({}), clock, WatchLimits())
    run.server = cast(Any, SimpleNamespace(running=SimpleNamespace(api=SimpleNamespace(watch_hub=hub))))
    return run


def client(run: Run, name: str) -> Client:
    made = Client(name, "ns", None, cast(ApiClient, None), random.Random(1), run)
    run.clients.append(made)
    return made


@attrs.define(eq=False)
class Relisting(Client):
    """A client whose lists take 2.5 s and whose watches' heads 1.5 s, every watch a 410."""

    async def _list(self) -> bool:
        self.note("asks for a list")
        self.run.reactor.advance(2.5)
        self.note("list at 7")
        return True

    async def _watch(self, cut: int = 0) -> str:
        self.note("asks for a watch from 7")
        self.run.reactor.advance(1.5)
        self.note("watch from 7: 200")
        self.note("410")
        return "expired"


def test_a_client_that_keeps_getting_410_is_reported_with_its_last_steps() -> None:
    """The violation said only "3 watches in a row got 410 after a relist": how long its lists and the
    heads of its watches took, against the idle time of what the watch needed, was not in the log."""
    run = quiet_run(Clock())
    relisting = Relisting("1", "ns", None, cast(ApiClient, None), random.Random(1), run)
    Deferred.fromCoroutine(relisting._reflect())
    [violation] = run.report.violations
    assert "3 watches in a row got 410 after a relist" in violation
    steps = violation.split("\n")[1:]
    assert len(steps) == 12  # of its 15: the last three lists and watches
    assert steps[-5:] == [
        "     8.000 s  asks for a list",
        "    10.500 s  list at 7",
        "    10.500 s  asks for a watch from 7",
        "    12.000 s  watch from 7: 200",
        "    12.000 s  410",
    ]


def test_the_quiet_point_waits_for_no_client_that_failed() -> None:
    """A client that ended on a violation never catches up: waiting for it ran the wait out, and the
    clients between two watches at its last instant were reported as never caught up."""
    clock = Clock()
    run = quiet_run(clock)
    failed, watching, between = client(run, "1"), client(run, "2"), client(run, "3")
    failed.violation("3 watches in a row got 410 after a relist")
    current = run.hub.versions.latest()
    watching.rv = between.rv = current
    watching.stream = Stream(200, {})
    target = run.hub.versions.current
    assert run.behind(target) == {"3": current}
    between.stream = Stream(200, {})
    assert run.behind(target) == {}
