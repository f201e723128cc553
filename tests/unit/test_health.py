"""healthz/livez/readyz bodies in k8s.io/apiserver's format (docs/api.md, "Health, version and OpenAPI")."""

from __future__ import annotations

from collections.abc import Sequence

import pytest_twisted
from twisted.internet import defer
from twisted.logger import capturedLogs

from payloadtags.api.health import Check, HealthChecks


async def _ok() -> None:
    return None


async def _broken() -> None:
    raise ConnectionRefusedError("registry.internal.example:5000 refused the connection")


def _deferred_ok() -> defer.Deferred[None]:
    return defer.succeed(None)


def _deferred_broken() -> defer.Deferred[None]:
    return defer.fail(RuntimeError("cache not synced"))


def _checks(readyz: Sequence[tuple[str, Check]]) -> HealthChecks:
    return HealthChecks({"livez": [("ping", _ok)], "readyz": list(readyz)})


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
        answer = await _run(ONE_BROKEN)
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
