"""healthz/livez/readyz in the format of k8s.io/apiserver's healthz handlers.

Health endpoints answer anyone, unthrottled (docs/hardening.md), so what a probe costs must not grow
with the number of probes: a check that asks something outside the process (the registry) is wrapped
in `SharedCheck`, and a failing check's log line is rate-limited per (endpoint, check), so neither
the registry's load nor the log's volume is in an anonymous caller's hands.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from payloadtags.api.selectors import go_quote
from payloadtags.deferreds import InFlight, Waiters
from payloadtags.onceper import OncePerPeriod

Check = Callable[[], Awaitable[None]]

log = Logger()

# How long a failing check, or unknown excluded names, stay quiet in the log after a line about them.
LOG_PERIOD = 30.0


@attrs.define
class _RateLimitedLog:
    """One warning per key per ``period`` while a failure lasts; the next one counts the ones left out
    since the last line. A key that passes again ends its episode: the ones left out since its last
    line are counted in a line of their own then, and its next failure (perhaps for another reason,
    which only the log tells, the body withholding it) is logged at once, counting its episode only."""

    monotonic: Callable[[], float]
    period: float = LOG_PERIOD
    _once: OncePerPeriod[tuple[str, str]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._once = OncePerPeriod(self.period, self.monotonic)

    def more(self, key: tuple[str, str]) -> str | None:
        """None when a line about ``key`` was logged within the period of the same episode (this one
        is counted); otherwise the suffix of the line to log now."""
        said = self._once(key)
        # The interval they were counted in: the period, or much longer when the failures stopped.
        return None if said is None else said.more()

    def passed(self, key: tuple[str, str]) -> str | None:
        """Ends the episode of ``key``. When failures were left out of the log since its last line,
        the suffix of a line that says so, once: they belong to this episode, not the next one,
        whose first line may give another reason."""
        return self._once.over(key) or None


@attrs.define
class SharedCheck:
    """A check whose outcome is shared, so that a flood of probes costs one run per ``ttl``.

    Every probe is told the outcome of a run that started less than ``ttl`` before it arrived, or
    after it: it reuses the outcome (pass or failure) of such a run, or joins it while it runs; when
    the last run started ``ttl`` ago or more, a new one is due, even if older runs are still under
    way (a registry that hangs must not hold readiness on an answer that old). So runs start at most
    once per ``ttl`` whatever the number of probes, and an answer lags the check's subject by at most
    ``ttl`` plus the run's own duration. A run's outcome is kept only if no later-started run's is.

    At most ``max_runs`` runs are under way: when a new run is due and that many are, it starts as
    soon as one of them ends, and the probes meanwhile wait for it (a run that starts after them).
    Older runs are never given up for it: whoever probes, however often, a registry that answers
    within ``timeout`` is never reported failing. A run is given up only once it has run ``timeout``
    and the reactor has had one more turn, in which it reads what its sockets hold (cancelled, which
    frees what it holds: a registry connection, or its place in the line for one; the probes waiting
    for it are told "still running after Ns, given up"): at its own timer, and, should the reactor's
    clock (the wall clock) have been stepped back, at the next probe, a turn later (or at once, when
    the step came after a probe armed that turn's look, which would wait for the clock). The turn is for a
    reactor that resumes after a stall with the answer waiting in its socket: the run's timer started
    before the ping's own deadline, so it is due first, and without the turn it would give up a ping
    whose deadline lets the reactor read that answer (`deferreds.within`'s ``look_first``). One turn
    reads 64 KiB, far more than a ping's answer. So a probe waits at most about two ``timeout``: a
    slot, then its run.

    A caller who stops waiting (its connection gone) does not cancel the run, for the others nor
    when it was the only one: the outcome is still kept for the next callers, and a cancel is not a
    failure of the check. Every age is measured on ``monotonic``: on the wall clock, stepped back,
    one outcome would be kept, or a hung run waited for, as long as the step.
    """

    check: Check
    monotonic: Callable[[], float]
    ttl: float
    # The most a run may take, its wait for a registry connection included (the registry client's
    # own timeout starts when the request goes out, and runs on the wall clock).
    timeout: float
    # Arms each run's give-up timer; its clock is the wall clock, so the age is checked on
    # ``monotonic`` when it fires.
    clock: IReactorTime
    # Runs under way at most: a run may wait for a registry connection with no limit of its own, so
    # against a hung registry new runs would pile up and hold connections users need.
    max_runs: int = 2
    # Keyed by the run's start (monotonic seconds): each run is its own flight.
    _runs: InFlight[float, BaseException | None] = attrs.field(factory=InFlight, init=False)
    _work: dict[float, Deferred[None]] = attrs.field(factory=dict, init=False)  # the runs' checks
    _timers: dict[float, IDelayedCall] = attrs.field(factory=dict, init=False)
    _given_up: dict[float, BaseException] = attrs.field(factory=dict, init=False)  # why, by start
    _looked: set[float] = attrs.field(factory=set, init=False)  # runs due to be given up a turn later
    _started: float | None = attrs.field(default=None, init=False)  # the latest run's start
    # The probes waiting for a due run that waits for a slot (None when no run waits).
    _due: Waiters[BaseException | None] | None = attrs.field(default=None, init=False)
    _outcome: BaseException | None = attrs.field(default=None, init=False)
    _outcome_started: float | None = attrs.field(default=None, init=False)  # the kept outcome's run's start

    async def __call__(self) -> None:
        now = self.monotonic()
        for started in [started for started in self._work if now - started >= self.timeout]:
            timer = self._timers[started]
            if started not in self._looked:  # its timer, on the wall clock, may not have fired yet
                if timer.active():
                    timer.cancel()
                self._expire(started)
            elif timer.active() and timer.getTime() > self.clock.seconds():
                # Its look was armed for the next turn, but the wall clock has been stepped back since:
                # it would come only once the clock caught up, holding the run (review r4reg L1).
                timer.cancel()
                self._give_up(started)
        if self._due is None and (self._started is None or now - self._started >= self.ttl):
            if len(self._work) < self.max_runs:
                self._started = now
            else:
                self._due = Waiters()
        latest = self._started
        if self._due is not None:
            outcome = await self._due.wait()
        elif latest is not None and self._outcome_started != latest:
            outcome = await self._runs.join(latest, lambda: self._run(latest))
        else:
            outcome = self._outcome  # that run has ended
        if outcome is not None:
            # Raised afresh each time: re-raising one object would grow its traceback per caller.
            raise outcome.with_traceback(None)

    def _give_up(self, started: float) -> None:
        work = self._work.get(started)
        if work is not None:
            age = self.monotonic() - started
            self._given_up[started] = TimeoutError(f"check still running after {age:.1f}s, given up")
            work.cancel()  # ends the run: its waiters are told the outcome above

    def _expire(self, started: float) -> None:
        # The timer runs on the wall clock: stepped forward, it fires early; the run is given up only
        # once it has run ``timeout`` on the monotonic clock.
        left = self.timeout - (self.monotonic() - started)
        if left > 0:
            self._timers[started] = self.clock.callLater(left, self._expire, started)
        elif started not in self._looked:
            # A turn first: after a stall, the answer may be in the socket, unread (see above).
            self._looked.add(started)
            self._timers[started] = self.clock.callLater(0, self._expire, started)
        else:
            self._give_up(started)

    async def _run(self, started: float) -> BaseException | None:
        async def checked() -> None:
            await self.check()

        self._timers[started] = self.clock.callLater(self.timeout, self._expire, started)
        work = self._work[started] = Deferred.fromCoroutine(checked())
        try:
            await work
        except Exception as error:  # CancelledError too: a run is cancelled only when given up
            outcome: BaseException | None = self._given_up.get(started, error)
        else:
            outcome = None
        finally:
            self._work.pop(started, None)
            self._given_up.pop(started, None)
            self._looked.discard(started)
            timer = self._timers.pop(started, None)
            if timer is not None and timer.active():
                timer.cancel()
        if self._outcome_started is None or started > self._outcome_started:
            self._outcome, self._outcome_started = outcome, started
        self._start_due()
        return outcome

    def _start_due(self) -> None:
        """Starts the run that was due while ``max_runs`` were under way, now that one has ended."""
        due, self._due = self._due, None
        if not due:
            return  # no run waits, or its probes all went away: the next probe starts one
        started = self._started = self.monotonic()
        self._runs.join(started, lambda: self._run(started)).addBoth(due.fire)


def _quoted(names: Sequence[str]) -> str:
    # k8s.io/apiserver's formatQuoted: each name quoted as Go's %q does, comma-separated. The names
    # are the caller's: escaped, a newline in one cannot add a line ("[+]registry ok") to the answer.
    return ",".join(go_quote(name) for name in names)


@attrs.define
class HealthChecks:
    """Named checks per endpoint; a check raises to fail."""

    checks: Mapping[str, Sequence[tuple[str, Check]]]
    monotonic: Callable[[], float]
    _log: _RateLimitedLog = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._log = _RateLimitedLog(self.monotonic)

    async def run(
        self, endpoint: str, only: str | None, verbose: bool, exclude: Sequence[str]
    ) -> tuple[int, str] | None:
        """Return (code, body), or None when ``only`` names no check of this endpoint."""
        checks = list(self.checks.get(endpoint, ()))
        if only is not None:
            # As k8s.io/apiserver's per-check handler: ?exclude= is not read, the check runs.
            checks, exclude = [(name, check) for name, check in checks if name == only], ()
            if not checks:
                return None
        lines, failed = [], False
        for name, check in checks:
            if name in exclude:  # listed in place, as k8s.io/apiserver does
                lines.append(f"[+]{name} excluded: ok")
                continue
            try:
                await check()
            except CancelledError:
                raise  # the caller went away: not a failure of the check, nothing to log
            except Exception as error:
                failed = True
                # The reason may name internal hosts; it goes to the log, not to anonymous callers.
                self._log_failure(endpoint, name, error)
                lines.append(f"[-]{name} failed: reason withheld")
            else:
                self._log_passed(endpoint, name)
                lines.append(f"[+]{name} ok")
        if only is not None:
            return (500, lines[0] + "\n") if failed else (200, "ok")
        unknown = sorted(set(exclude) - {name for name, _ in checks})
        if unknown:
            # As k8s.io/apiserver: a mistyped ?exclude= (a probe's "registy") would otherwise leave
            # readiness depending on the check it meant to leave out, with nothing to say so.
            lines.append(f"warn: some health checks cannot be excluded: no matches for {_quoted(unknown)}")
            self._log_unknown(endpoint, unknown)
        if failed:
            return 500, "\n".join([*lines, f"{endpoint} check failed"]) + "\n"
        if verbose:
            return 200, "\n".join([*lines, f"{endpoint} check passed"]) + "\n"
        return 200, "ok"

    def _log_failure(self, endpoint: str, name: str, error: Exception) -> None:
        more = self._log.more((endpoint, name))
        if more is not None:
            log.warn(
                "{endpoint} check {name} failed: {error}{more}",
                endpoint=endpoint,
                name=name,
                error=error,
                more=more,
            )

    def _log_passed(self, endpoint: str, name: str) -> None:
        more = self._log.passed((endpoint, name))
        if more is not None:
            log.info("{endpoint} check {name} passes again{more}", endpoint=endpoint, name=name, more=more)

    def _log_unknown(self, endpoint: str, unknown: Sequence[str]) -> None:
        # One key for every unknown name: callers choose the names, and must not choose the volume.
        more = self._log.more((endpoint, "?exclude"))
        if more is not None:
            log.warn(
                "{endpoint}: some health checks cannot be excluded: no matches for {names}{more}",
                endpoint=endpoint,
                names=_quoted(unknown)[:200],
                more=more,
            )
