"""healthz/livez/readyz in the format of k8s.io/apiserver's healthz handlers.

Health endpoints answer anyone, unthrottled (docs/hardening.md), so what a probe costs must not grow
with the number of probes: a check that asks something outside the process (the registry) is wrapped
in `SharedCheck`, and a failing check's log line is rate-limited per (endpoint, check), so neither
the registry's load nor the log's volume is in an anonymous caller's hands.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence

import attrs
from twisted.logger import Logger

from payloadtags.deferreds import InFlight

Check = Callable[[], Awaitable[None]]

log = Logger()

# How long a failing check, or unknown excluded names, stay quiet in the log after a line about them.
LOG_PERIOD = 30.0


@attrs.define
class _RateLimitedLog:
    """One warning per key per ``period``; the next one counts the ones left out meanwhile."""

    seconds: Callable[[], float]
    period: float = LOG_PERIOD
    _last: dict[tuple[str, str], float] = attrs.field(factory=dict, init=False)
    _suppressed: dict[tuple[str, str], int] = attrs.field(factory=dict, init=False)

    def more(self, key: tuple[str, str]) -> str | None:
        """None when a line about ``key`` was logged within the period (this one is counted);
        otherwise the suffix of the line to log now."""
        now = self.seconds()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        return f" ({suppressed} more like it in the last {self.period:g}s)" if suppressed else ""


@attrs.define
class SharedCheck:
    """A check whose outcome is shared: callers who ask while it runs wait for that run, and its
    outcome (pass or failure) answers the callers of the next ``ttl`` seconds without a new run.

    However many probes arrive, the check runs at most once per ``ttl`` plus the run's duration; a
    check that starts to fail shows it to the probes that come ``ttl`` seconds after its last pass at
    the latest. A caller who stops waiting (its connection gone) does not cancel the run for the
    others, and the run's outcome is still kept for the next ones.
    """

    check: Check
    seconds: Callable[[], float]
    ttl: float
    _runs: InFlight[None, BaseException | None] = attrs.field(factory=InFlight, init=False)
    _outcome: BaseException | None = attrs.field(default=None, init=False)
    _at: float | None = attrs.field(default=None, init=False)

    async def __call__(self) -> None:
        if self._at is None or self.seconds() - self._at >= self.ttl:
            await self._runs.join(None, self._run)
        if self._outcome is not None:
            # Raised afresh each time: re-raising one object would grow its traceback per caller.
            raise self._outcome.with_traceback(None)

    async def _run(self) -> BaseException | None:
        try:
            await self.check()
        except Exception as error:
            outcome: BaseException | None = error
        else:
            outcome = None
        self._outcome, self._at = outcome, self.seconds()
        return outcome


def _quoted(names: Sequence[str]) -> str:
    # k8s.io/apiserver's formatQuoted: each name quoted as Go's %q does, comma-separated. The names
    # are the caller's: escaped, a newline in one cannot add a line ("[+]registry ok") to the answer.
    return ",".join(json.dumps(name, ensure_ascii=not name.isprintable()) for name in names)


@attrs.define
class HealthChecks:
    """Named checks per endpoint; a check raises to fail."""

    checks: Mapping[str, Sequence[tuple[str, Check]]]
    seconds: Callable[[], float]
    _log: _RateLimitedLog = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._log = _RateLimitedLog(self.seconds)

    async def run(
        self, endpoint: str, only: str | None, verbose: bool, exclude: Sequence[str]
    ) -> tuple[int, str] | None:
        """Return (code, body), or None when ``only`` names no check of this endpoint."""
        checks = list(self.checks.get(endpoint, ()))
        if only is not None:
            checks = [(name, check) for name, check in checks if name == only and name not in exclude]
            if not checks:
                return None
        lines, failed = [], False
        for name, check in checks:
            if name in exclude:  # listed in place, as k8s.io/apiserver does
                lines.append(f"[+]{name} excluded: ok")
                continue
            try:
                await check()
            except Exception as error:
                failed = True
                # The reason may name internal hosts; it goes to the log, not to anonymous callers.
                self._log_failure(endpoint, name, error)
                lines.append(f"[-]{name} failed: reason withheld")
            else:
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
