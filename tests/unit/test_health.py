"""healthz/livez/readyz bodies in k8s.io/apiserver's format (docs/api.md, "Health, version and OpenAPI")."""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence

import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs, formatEvent

from payloadtags.api.health import LOG_PERIOD, Check, HealthChecks, SharedCheck
from payloadtags.deferreds import within
from payloadtags.server import start


async def _ok() -> None:
    return None


async def _broken() -> None:
    raise ConnectionRefusedError("registry.internal.example:5000 refused the connection")


def _deferred_ok() -> defer.Deferred[None]:
    return defer.succeed(None)


def _deferred_broken() -> defer.Deferred[None]:
    return defer.fail(RuntimeError("cache not synced"))


def _checks(readyz: Sequence[tuple[str, Check]]) -> HealthChecks:
    return HealthChecks({"livez": [("ping", _ok)], "readyz": list(readyz)}, Clock().seconds)


HEALTHY = _checks([("ping", _ok), ("registry", _ok), ("shutdown", _deferred_ok)])
ONE_BROKEN = _checks([("ping", _ok), ("registry", _broken), ("shutdown", _ok)])


async def _run(
    checks: HealthChecks,
    endpoint: str = "readyz",
    only: str | None = None,
    verbose: bool = False,
    exclude: Sequence[str] = (),
) -> tuple[int, str] | None:
    return await checks.run(endpoint, only, verbose, exclude)


@pytest_twisted.ensureDeferred
async def test_passing_plain() -> None:
    assert await _run(HEALTHY) == (200, "ok")


@pytest_twisted.ensureDeferred
async def test_passing_verbose() -> None:
    assert await _run(HEALTHY, verbose=True) == (
        200,
        "[+]ping ok\n[+]registry ok\n[+]shutdown ok\nreadyz check passed\n",
    )


@pytest_twisted.ensureDeferred
async def test_endpoint_name_is_in_the_last_line() -> None:
    assert await _run(HEALTHY, "livez", verbose=True) == (200, "[+]ping ok\nlivez check passed\n")


@pytest_twisted.ensureDeferred
async def test_failing_check_is_500_and_always_verbose() -> None:
    expected = (500, "[+]ping ok\n[-]registry failed: reason withheld\n[+]shutdown ok\nreadyz check failed\n")
    assert await _run(ONE_BROKEN) == expected
    assert await _run(ONE_BROKEN, verbose=True) == expected


@pytest_twisted.ensureDeferred
async def test_failing_deferred_check() -> None:
    checks = _checks([("informer-sync", _deferred_broken), ("ping", _deferred_ok)])
    assert await _run(checks) == (
        500,
        "[-]informer-sync failed: reason withheld\n[+]ping ok\nreadyz check failed\n",
    )


@pytest_twisted.ensureDeferred
async def test_every_failure_is_listed() -> None:
    checks = _checks([("a", _broken), ("b", _deferred_broken)])
    assert await _run(checks) == (
        500,
        "[-]a failed: reason withheld\n[-]b failed: reason withheld\nreadyz check failed\n",
    )


@pytest_twisted.ensureDeferred
async def test_the_reason_goes_to_the_log_not_the_body() -> None:
    with capturedLogs() as events:
        # A fresh instance: another test's failures may have used up this period's log line.
        answer = await _run(_checks([("ping", _ok), ("registry", _broken), ("shutdown", _ok)]))
    assert answer is not None
    code, body = answer
    assert code == 500
    assert "registry.internal.example" not in body
    assert any("registry.internal.example" in str(event.get("error")) for event in events)


@pytest_twisted.ensureDeferred
async def test_exclude_skips_a_failing_check() -> None:
    assert await _run(ONE_BROKEN, exclude=["registry"]) == (200, "ok")


@pytest_twisted.ensureDeferred
async def test_exclude_in_verbose_output() -> None:
    # k8s.io/apiserver lists an excluded check in place as "[+]<name> excluded: ok".
    assert await _run(ONE_BROKEN, verbose=True, exclude=["registry"]) == (
        200,
        "[+]ping ok\n[+]registry excluded: ok\n[+]shutdown ok\nreadyz check passed\n",
    )


@pytest_twisted.ensureDeferred
async def test_excluded_check_is_not_run() -> None:
    calls: list[str] = []

    async def counted() -> None:
        calls.append("registry")

    await _run(_checks([("ping", _ok), ("registry", counted)]), exclude=["registry"])
    assert calls == []


@pytest_twisted.ensureDeferred
async def test_exclude_of_unknown_check_changes_nothing_for_the_status() -> None:
    assert await _run(HEALTHY, exclude=["nope"]) == (200, "ok")
    broken = await _run(ONE_BROKEN, exclude=["nope"])
    assert broken is not None and broken[0] == 500


@pytest_twisted.ensureDeferred
async def test_exclude_does_not_hide_other_failures() -> None:
    result = await _run(ONE_BROKEN, exclude=["ping"])
    assert result is not None
    assert result[0] == 500
    assert "[-]registry failed: reason withheld\n" in result[1]


@pytest_twisted.ensureDeferred
async def test_single_named_check() -> None:
    assert await _run(ONE_BROKEN, only="ping") == (200, "ok")
    assert await _run(ONE_BROKEN, only="registry") == (500, "[-]registry failed: reason withheld\n")


@pytest_twisted.ensureDeferred
async def test_single_named_check_runs_only_that_check() -> None:
    calls: list[str] = []

    def recorder(name: str) -> Check:
        async def check() -> None:
            calls.append(name)

        return check

    checks = _checks([("a", recorder("a")), ("b", recorder("b"))])
    assert await _run(checks, only="b") == (200, "ok")
    assert calls == ["b"]


@pytest_twisted.ensureDeferred
async def test_unknown_check_is_none() -> None:
    assert await _run(HEALTHY, only="nope") is None
    # A check of another endpoint is unknown here.
    assert await _run(_checks([("registry", _ok)]), "livez", only="registry") is None
    assert await _run(HEALTHY, "healthz", only="ping") is None


# --- a check shared by every probe (review-operations F1) ------------------------------------------


TIMEOUT = 10.0  # the registry client's default


class Gated:
    """A check whose runs end when the test says: counted, each answered pass or fail in turn."""

    def __init__(self) -> None:
        self.runs: list[defer.Deferred[None]] = []

    async def __call__(self) -> None:
        run: defer.Deferred[None] = defer.Deferred()
        self.runs.append(run)
        await run

    def end(self, error: Exception | None = None) -> None:
        run = self.runs[-1]
        if error is None:
            run.callback(None)
        else:
            run.errback(error)


def _shared(ttl: float = 1.0) -> tuple[Gated, Clock, HealthChecks]:
    gated, clock = Gated(), Clock()
    checks = HealthChecks(
        {"readyz": [("ping", _ok), ("registry", SharedCheck(gated, clock.seconds, ttl, TIMEOUT, clock))]},
        clock.seconds,
    )
    return gated, clock, checks


def test_probes_that_arrive_while_the_check_runs_share_its_run() -> None:
    gated, _, checks = _shared()
    probes = [defer.Deferred.fromCoroutine(_run(checks)) for _ in range(100)]
    assert len(gated.runs) == 1
    assert not any(probe.called for probe in probes)
    gated.end()
    assert [probe.result for probe in probes] == [(200, "ok")] * 100


def test_the_outcome_answers_probes_for_ttl_seconds_then_the_check_runs_again() -> None:
    gated, clock, checks = _shared(ttl=1.0)
    first = defer.Deferred.fromCoroutine(_run(checks))
    gated.end()
    assert first.result == (200, "ok")
    clock.advance(0.9)
    assert defer.Deferred.fromCoroutine(_run(checks)).result == (200, "ok")
    assert len(gated.runs) == 1
    clock.advance(0.1)
    again = defer.Deferred.fromCoroutine(_run(checks))
    assert len(gated.runs) == 2 and not again.called


def test_a_failing_registry_turns_readiness_red_within_ttl_and_green_again() -> None:
    gated, clock, checks = _shared(ttl=1.0)
    defer.Deferred.fromCoroutine(_run(checks))
    gated.end()
    clock.advance(1.0)
    failing = [defer.Deferred.fromCoroutine(_run(checks, verbose=True)) for _ in range(3)]
    gated.end(ConnectionRefusedError("registry.internal.example:5000 refused the connection"))
    red = (500, "[+]ping ok\n[-]registry failed: reason withheld\nreadyz check failed\n")
    assert [probe.result for probe in failing] == [red] * 3
    # The failure is kept as long as a pass would be: probes meanwhile cost nothing outside.
    clock.advance(0.5)
    assert defer.Deferred.fromCoroutine(_run(checks, verbose=True)).result == red
    assert len(gated.runs) == 2
    clock.advance(0.5)
    recovered = defer.Deferred.fromCoroutine(_run(checks))
    gated.end()
    assert recovered.result == (200, "ok")


def test_a_probe_that_goes_away_does_not_cancel_the_run_for_the_others() -> None:
    gated, _, checks = _shared()
    gone = defer.Deferred.fromCoroutine(_run(checks))
    staying = defer.Deferred.fromCoroutine(_run(checks))
    gone.cancel()
    gone.addErrback(lambda failure: failure.trap(defer.CancelledError))
    assert not gated.runs[0].called
    gated.end()
    assert staying.result == (200, "ok")
    # What that run found answers the next probes too.
    assert defer.Deferred.fromCoroutine(_run(checks)).result == (200, "ok")
    assert len(gated.runs) == 1


def _held_registry_check() -> tuple[Gated, Clock, Clock, HealthChecks]:
    """readyz with one registry check whose runs end when the test says; the monotonic clock its
    give-up is measured on and the wall clock its timers follow, apart."""
    gated, monotonic, wall = Gated(), Clock(), Clock()
    checks = HealthChecks(
        {"readyz": [("registry", SharedCheck(gated, monotonic.seconds, 1.0, TIMEOUT, wall))]},
        monotonic.seconds,
    )
    return gated, monotonic, wall, checks


def _probe(checks: HealthChecks) -> defer.Deferred[tuple[int, str] | None]:
    return defer.Deferred.fromCoroutine(_run(checks))


def test_a_probe_is_never_answered_by_a_run_that_started_ttl_before_it() -> None:  # review-health2 H1
    gated, clock, checks = _shared(ttl=1.0)
    _probe(checks)
    gated.end()
    clock.advance(1.0)
    hung = _probe(checks)  # the registry hangs: this run waits for the client's timeout
    clock.advance(0.5)
    joined = _probe(checks)  # within the ttl of its start: joins it
    assert len(gated.runs) == 2
    clock.advance(0.5)
    late = _probe(checks)  # the hung run started a ttl ago: a run of its own, the registry back
    assert len(gated.runs) == 3
    gated.end()
    assert late.result == (200, "ok")
    assert not hung.called and not joined.called
    # The hung run ends last, with the timeout: that outcome must not replace the newer pass.
    gated.runs[1].errback(TimeoutError("no answer within 10s"))
    assert hung.result[0] == joined.result[0] == 500  # type: ignore[index]
    clock.advance(0.5)
    assert _probe(checks).result == (200, "ok")
    assert len(gated.runs) == 3


def _under_way(gated: Gated) -> int:
    return len([run for run in gated.runs if not run.called])


def _timed_probe(
    checks: HealthChecks, clock: Clock, answered: dict[float, float]
) -> defer.Deferred[tuple[int, str] | None]:
    """A probe that notes, by its arrival, when it was answered."""
    came = clock.seconds()

    def note(result: tuple[int, str] | None) -> tuple[int, str] | None:
        answered[came] = clock.seconds()
        return result

    return _probe(checks).addCallback(note)


def test_a_flood_against_a_hung_registry_keeps_at_most_two_runs_under_way() -> None:
    # A run may wait for a registry connection with no limit of its own (review-health4 R1): new runs
    # would pile up and hold connections users need. A due run waits for a slot instead, and its
    # probes with it; the hung runs are given up at their timeout, not earlier (review-opscheck2 F2).
    gated, clock, checks = _shared(ttl=1.0)
    probes: list[defer.Deferred[tuple[int, str] | None]] = []
    answered: dict[float, float] = {}
    for _ in range(300):  # 30 s of probes, ten a second, while every run hangs
        probes += [_timed_probe(checks, clock, answered) for _tenth in range(10)]
        assert _under_way(gated) <= 2
        clock.advance(0.1)
    # Runs at t=0 and 1, given up at 10 and 11 for the runs due meanwhile, those at 20 and 21.
    assert len(gated.runs) == 6
    assert {probe.result[0] for probe in probes if probe.called} == {500}  # type: ignore[index]
    # Answered within about two registry timeouts: the wait for a slot, then its own run's.
    assert max(at - came for came, at in answered.items()) <= 2 * TIMEOUT
    for run in gated.runs:
        if not run.called:
            run.callback(None)
    assert all(probe.called for probe in probes)
    assert (200, "ok") in [probe.result for probe in probes]


def test_a_registry_that_answers_within_its_timeout_is_never_reported_failing() -> None:
    # review-opscheck2 F2: the registry answers in 3.5 s; someone probes twice a second. Giving up the
    # older of two runs for a newer one failed every probe: no run lived 3.5 s.
    clock = Clock()
    runs = []

    async def slow_registry() -> None:
        run: defer.Deferred[None] = defer.Deferred()
        runs.append(run)
        clock.callLater(3.5, run.callback, None)
        await run

    checks = HealthChecks(
        {"readyz": [("registry", SharedCheck(slow_registry, clock.seconds, 1.0, TIMEOUT, clock))]},
        clock.seconds,
    )
    probes: list[defer.Deferred[tuple[int, str] | None]] = []
    answered: dict[float, float] = {}
    for _ in range(80):  # 40 s, twice a second
        probes.append(_timed_probe(checks, clock, answered))
        clock.advance(0.5)
    clock.advance(10)
    assert [probe.result for probe in probes] == [(200, "ok")] * 80
    assert len(runs) >= 20  # a run started about every 1.75 s, two at a time


def test_a_probe_a_second_after_the_registry_died_is_not_told_ok_by_an_older_run() -> None:
    # review-opscheck H1. A slow registry: the runs of t=0 and t=1 are on their way when it dies, at
    # t=1.5; a probe at t=2.5 must not be told the outcome of the t=1 run, nor of the t=0 one.
    gated, clock, checks = _shared(ttl=1.0)
    first = _probe(checks)
    clock.advance(1.0)
    second = _probe(checks)
    clock.advance(1.5)
    late = _probe(checks)
    assert len(gated.runs) == 2 and not first.called  # the late probe waits for a run after it
    gated.runs[1].callback(None)  # the t=1 run's answer, on its way before the registry died
    assert second.result == (200, "ok") and not late.called
    assert len(gated.runs) == 3  # the late probe's own run, started as the t=1 one ended
    gated.runs[2].errback(ConnectionRefusedError("registry.internal.example:5000 refused the connection"))
    assert late.result[0] == 500  # type: ignore[index]
    gated.runs[0].callback(None)  # the oldest run's pass does not replace the newer failure
    assert first.result == (200, "ok")
    clock.advance(0.5)
    assert _probe(checks).result[0] == 500  # type: ignore[index]


def test_readiness_lags_a_hung_registry_recovery_by_at_most_one_timeout() -> None:
    # review-opscheck H1. The registry hangs at t=0..1.5, then answers again: a probe at t=2.5 waits
    # for a run of its own, which starts when the t=0 run is given up.
    gated, clock, checks = _shared(ttl=1.0)
    _probe(checks)
    clock.advance(1.0)
    _probe(checks)
    clock.advance(1.5)
    probe = _probe(checks)
    clock.advance(TIMEOUT - 2.5 - 0.1)
    assert len(gated.runs) == 2 and not probe.called
    clock.advance(0.1)  # the t=0 run's timeout: given up by its timer, the probe's run starts
    assert len(gated.runs) == 3 and not probe.called
    gated.runs[2].callback(None)
    assert probe.result == (200, "ok")


def test_a_run_is_given_up_at_its_timeout_without_waiting_for_a_probe() -> None:  # review-opscheck2 F4
    gated, clock, checks = _shared(ttl=1.0)
    waiting = _probe(checks)
    clock.advance(TIMEOUT - 0.1)
    assert not waiting.called
    clock.advance(0.1)
    assert waiting.result[0] == 500  # type: ignore[index]
    assert _under_way(gated) == 0


def test_a_lone_probe_waiting_for_a_connection_is_answered_within_the_registry_timeout() -> None:
    # review-opscheck2 F4, its reviewer's test: the check waits for one of the registry client's
    # connection slots (no timer of its own), all held by users' requests, then the registry hangs.
    clock = Clock()
    slots = defer.DeferredSemaphore(1)

    async def ping() -> None:
        await slots.acquire()
        try:
            await within(clock, TIMEOUT, defer.Deferred())
        finally:
            slots.release()

    held = slots.acquire()
    clock.callLater(TIMEOUT, slots.release)
    shared = SharedCheck(ping, clock.seconds, 1.0, TIMEOUT, clock)
    checks = HealthChecks({"readyz": [("registry", shared)]}, clock.seconds)
    probe = _probe(checks)
    waited = 0.0
    while not probe.called and waited < 60:
        clock.advance(0.5)
        waited += 0.5
    assert held.called
    assert waited <= TIMEOUT and probe.result[0] == 500  # type: ignore[index]


def test_a_run_is_given_up_at_its_timeout_on_the_monotonic_clock() -> None:
    # review-opscheck H2: the reactor's timers follow the wall clock. Stepped back, the give-up timer
    # would hold a hung run, and whoever waits for it, as long as the step: the next probe gives it
    # up (a turn later, as its timer does: see the tests below). Stepped forward, the timer fires
    # early: the run is not given up before its time.
    gated, monotonic, wall, checks = _held_registry_check()
    waiting = _probe(checks)
    wall.advance(TIMEOUT)  # a step forward: the timer fires at once
    assert not waiting.called
    monotonic.advance(TIMEOUT - 0.1)
    wall.advance(TIMEOUT - 0.1)
    assert not waiting.called
    wall.rightNow -= 3600  # a step back: the timer, due in 0.1 s, is an hour away
    monotonic.advance(0.1)
    wall.advance(0.1)
    assert not waiting.called
    _probe(checks)
    assert not waiting.called  # given up a turn later, as at its timer
    wall.advance(0)
    assert waiting.result[0] == 500  # type: ignore[index]
    assert _under_way(gated) == 1  # the probe's own run


def test_a_run_answered_in_the_turn_its_timer_is_due_is_not_given_up() -> None:
    """review r3dead L2. A reactor that resumes after a stall past a run's timeout runs its timed
    calls before it polls: the run's timer and the answer waiting in the socket come in the same
    turn, the timer first. The run is given up only a turn later, so the answer wins; with no
    answer, the run is still given up then."""
    gated, clock, checks = _shared(ttl=1.0)
    waiting = _probe(checks)
    clock.callLater(TIMEOUT, gated.end)  # due with the timer, after it
    clock.advance(TIMEOUT)
    assert waiting.result == (200, "ok")
    hung = _probe(checks)
    clock.advance(TIMEOUT)  # the timer, then its turn: in one advance
    assert hung.result[0] == 500  # type: ignore[index]
    assert _under_way(gated) == 0


def test_a_run_a_probe_finds_overdue_is_given_up_a_turn_later_too() -> None:
    """As above, when the give-up comes from a probe (the timer, on a wall clock stepped back, is an
    hour away): the answer read in the turn after the probe still wins."""
    gated, monotonic, wall, checks = _held_registry_check()
    waiting = _probe(checks)
    monotonic.advance(TIMEOUT)
    later = _probe(checks)  # finds the run overdue, and starts its own
    gated.runs[0].callback(None)  # the answer, read in the next turn
    wall.advance(0)
    assert waiting.result == (200, "ok")
    monotonic.advance(TIMEOUT)
    _probe(checks)
    assert not later.called
    wall.advance(0)
    assert later.result[0] == 500  # type: ignore[index]


def test_a_wall_clock_step_back_does_not_hold_readiness_for_the_step() -> None:  # review-opscheck H2
    # The registry client's timeout is `within(reactor, 10, ...)`, and the reactor's timers follow the
    # wall clock. The registry hangs for 1.5 s, the wall clock is stepped back an hour at t=1.2, the
    # registry answers again from t=1.5: readiness follows within a registry timeout, not the hour.
    monotonic, wall = Clock(), Clock()
    wall.advance(1_800_000_000)
    registry_up = False

    async def ping() -> None:
        if not registry_up:
            await within(wall, TIMEOUT, defer.Deferred())

    def advance(seconds: float) -> None:
        monotonic.advance(seconds)
        wall.advance(seconds)

    shared = SharedCheck(ping, monotonic.seconds, 1.0, TIMEOUT, wall)
    checks = HealthChecks({"readyz": [("registry", shared)]}, monotonic.seconds)
    _probe(checks)  # t=0: a run that hangs
    advance(1.0)
    _probe(checks)  # t=1: another
    advance(0.2)
    wall.rightNow -= 3600
    advance(0.3)
    registry_up = True
    probes = []
    for _ in range(int(TIMEOUT * 10)):  # probes ten a second until t=11.5
        advance(0.1)
        probes.append(_probe(checks))
    assert (200, "ok") in [probe.result for probe in probes if probe.called]


def test_a_probe_whose_client_goes_away_is_not_a_failure_nor_logged() -> None:
    gated, _, checks = _shared()
    with capturedLogs() as events:
        gone = _probe(checks)
        gone.cancel()
        gone.addErrback(lambda failure: failure.trap(defer.CancelledError))
        gated.end()
    assert not [event for event in events if "failed" in formatEvent(event)]


def test_a_lone_probe_that_gives_up_leaves_the_run_going_and_its_pass_kept() -> None:
    gated, _, checks = _shared()
    gone = _probe(checks)
    gone.cancel()
    gone.addErrback(lambda failure: failure.trap(defer.CancelledError))
    assert not gated.runs[0].called  # not cancelled for want of waiters
    gated.end()
    assert _probe(checks).result == (200, "ok")  # its pass answers the next probe, not a cancel
    assert len(gated.runs) == 1


def test_the_server_times_the_reuse_on_the_monotonic_clock() -> None:
    # The reactor's clock is the wall clock: stepped back, it would keep one outcome for the step.
    assert inspect.signature(start).parameters["monotonic"].default is time.monotonic


# --- failing checks in the log, rate-limited (review-operations F2) ---------------------------------


def _warnings(events: Sequence[LogEvent], text: str) -> list[str]:
    return [formatEvent(event) for event in events if text in formatEvent(event)]


def test_a_failing_check_is_logged_once_per_period_per_check_not_per_probe() -> None:
    clock = Clock()
    checks = HealthChecks({"readyz": [("registry", _broken), ("rbac", _deferred_broken)]}, clock.seconds)
    with capturedLogs() as events:
        for _ in range(1000):
            defer.Deferred.fromCoroutine(_run(checks))
        assert len(_warnings(events, "readyz check registry failed")) == 1
        assert len(_warnings(events, "readyz check rbac failed")) == 1
        clock.advance(LOG_PERIOD)
        defer.Deferred.fromCoroutine(_run(checks))
    registry = _warnings(events, "readyz check registry failed")
    assert len(registry) == 2
    assert "registry.internal.example" in registry[1]
    assert f"(999 more like it in the {LOG_PERIOD:g}s since the last line)" in registry[1]


# --- ?exclude= naming no check (review-operations F9) -----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_exclude_of_unknown_check_is_named_in_verbose_output_as_kube_apiserver_does() -> None:
    assert await _run(HEALTHY, verbose=True, exclude=["registy", "nope", "registy"]) == (
        200,
        "[+]ping ok\n[+]registry ok\n[+]shutdown ok\n"
        'warn: some health checks cannot be excluded: no matches for "nope","registy"\n'
        "readyz check passed\n",
    )
    # Failure output is always verbose, and says it too.
    assert await _run(ONE_BROKEN, exclude=["registy"]) == (
        500,
        "[+]ping ok\n[-]registry failed: reason withheld\n[+]shutdown ok\n"
        'warn: some health checks cannot be excluded: no matches for "registy"\n'
        "readyz check failed\n",
    )


@pytest_twisted.ensureDeferred
async def test_unknown_excluded_names_are_quoted_and_cannot_add_lines() -> None:
    answer = await _run(HEALTHY, verbose=True, exclude=["x\n[+]fake ok", 'a"b', "café"])
    assert answer is not None
    assert answer[1].splitlines()[3] == (
        'warn: some health checks cannot be excluded: no matches for "a\\"b","café","x\\n[+]fake ok"'
    )
    assert "\n[+]fake ok" not in answer[1]


def test_exclude_of_unknown_check_is_logged_rate_limited() -> None:
    clock = Clock()
    checks = HealthChecks({"readyz": [("registry", _ok)]}, clock.seconds)
    with capturedLogs() as events:
        for name in ("registy", "a", "b"):
            defer.Deferred.fromCoroutine(_run(checks, exclude=[name]))
        clock.advance(LOG_PERIOD)
        defer.Deferred.fromCoroutine(_run(checks, exclude=["c"]))
    lines = _warnings(events, "cannot be excluded")
    assert len(lines) == 2
    assert 'readyz: some health checks cannot be excluded: no matches for "registy"' in lines[0]
    assert '"c" (2 more like it' in lines[1]


def test_a_failure_after_a_pass_is_logged_at_once_with_its_new_reason() -> None:  # review-health2 H4
    reason = ["cluster API: connection refused"]

    async def rbac() -> None:
        if reason:
            raise RuntimeError(reason[0])

    clock = Clock()
    checks = HealthChecks({"readyz": [("rbac", rbac)]}, clock.seconds)
    with capturedLogs() as events:
        for _ in range(5):
            _probe(checks)
        reason.clear()
        clock.advance(5)
        _probe(checks)
        reason.append("cluster API: 403 forbidden")
        clock.advance(15)
        _probe(checks)
        _probe(checks)  # the same episode: quiet again
    lines = _warnings(events, "readyz check rbac failed")
    assert len(lines) == 2
    # The four left out belong to the first episode, said when it ended; the new one counts its own.
    assert lines[1].endswith("cluster API: 403 forbidden")
    assert _warnings(events, "passes again") == [
        "readyz check rbac passes again (4 more like the last line in the 5s after it)"
    ]


def test_the_count_of_lines_left_out_says_the_real_interval() -> None:
    clock = Clock()
    checks = HealthChecks({"readyz": [("registry", _broken)]}, clock.seconds)
    with capturedLogs() as events:
        for _ in range(5):
            _probe(checks)
        clock.advance(3600)
        _probe(checks)
    lines = _warnings(events, "readyz check registry failed")
    assert "(4 more like it in the 3600s since the last line)" in lines[-1]


@pytest_twisted.ensureDeferred
async def test_per_check_path_ignores_exclude_as_kube_apiserver_does() -> None:  # review-health2 H5
    assert await _run(HEALTHY, only="registry", exclude=["registry"]) == (200, "ok")
    assert await _run(ONE_BROKEN, only="registry", exclude=["registry", "nope"]) == (
        500,
        "[-]registry failed: reason withheld\n",
    )


@pytest_twisted.ensureDeferred
async def test_unknown_names_are_quoted_as_go_percent_q() -> None:  # review-health2 H6
    answer = await _run(HEALTHY, verbose=True, exclude=["\x01", "\x7f", "é\x01", "\t"])
    assert answer is not None
    assert answer[1].splitlines()[3] == (
        'warn: some health checks cannot be excluded: no matches for "\\x01","\\t","\\x7f","é\\x01"'
    )


def test_two_probes_finding_a_run_overdue_in_one_turn_give_it_its_turn_too() -> None:
    """review r4reg L2: the second probe of the turn must not give up the run the first left a turn."""
    gated, monotonic, wall, checks = _held_registry_check()
    waiting = _probe(checks)
    monotonic.advance(TIMEOUT)
    _probe(checks)  # finds the run overdue: gives it a turn
    _probe(checks)  # the same turn
    gated.runs[0].callback(None)  # the answer, read in the next turn
    wall.advance(0)
    assert waiting.result == (200, "ok")


def test_a_run_whose_look_a_wall_clock_step_back_holds_is_given_up_by_the_next_probe() -> None:
    """review r4reg L1: the look a probe arms is on the wall clock; stepped back before it ran, the run is
    held for the step, since later probes skip a run already looked at."""
    gated, monotonic, wall = Gated(), Clock(), Clock()
    wall.advance(1_800_000_000)
    shared = SharedCheck(gated, monotonic.seconds, 1.0, TIMEOUT, wall)
    checks = HealthChecks({"readyz": [("registry", shared)]}, monotonic.seconds)
    _probe(checks)  # a run that hangs
    monotonic.advance(TIMEOUT)
    _probe(checks)  # finds it overdue: its look is armed at the wall clock's now
    wall.rightNow -= 3600  # stepped back before the next turn
    for _ in range(5):
        monotonic.advance(TIMEOUT)
        wall.advance(TIMEOUT)
        _probe(checks)
    assert gated.runs[0].called, "the first run is still held (its registry connection too)"
