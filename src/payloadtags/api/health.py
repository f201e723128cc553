"""healthz/livez/readyz in the format of k8s.io/apiserver's healthz handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import attrs
from twisted.logger import Logger

Check = Callable[[], Awaitable[None]]

log = Logger()


@attrs.define
class HealthChecks:
    """Named checks per endpoint; a check raises to fail."""

    checks: Mapping[str, Sequence[tuple[str, Check]]]

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
                log.warn("{endpoint} check {name} failed: {error}", endpoint=endpoint, name=name, error=error)
                lines.append(f"[-]{name} failed: reason withheld")
            else:
                lines.append(f"[+]{name} ok")
        if only is not None:
            return (500, lines[0] + "\n") if failed else (200, "ok")
        if failed:
            return 500, "\n".join([*lines, f"{endpoint} check failed"]) + "\n"
        if verbose:
            return 200, "\n".join([*lines, f"{endpoint} check passed"]) + "\n"
        return 200, "ok"
