"""The registry's operations and the access decisions are counted per label whatever the order and
mix of outcomes (the counters' labelled children are kept between calls)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from payloadtags.access.authz import AlwaysAllow
from payloadtags.http.refusals import REASONS
from payloadtags.identity import UserInfo
from payloadtags.metrics import CONNECTION_REFUSALS, CountingAuthorizer, InstrumentedRegistry, Metrics
from payloadtags.registry import (
    Before,
    Check,
    RegistryAuthFailed,
    RegistryConflict,
    RegistryNotFound,
    RegistryTimeout,
    RegistryUnavailable,
    WriteHooks,
    sorts_by_components,
)
from tests.support.write_hooks import run_hooks


class Registry:
    """Answers tags() from a script: a list of tags, or an error to raise."""

    def __init__(self, script: list[list[str] | Exception]) -> None:
        self.script = script

    async def tags(self, repository: str) -> list[str]:
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Deleting:
    """Deletes that run their checks as the registry client does before a write (``before``, then
    ``check``), then take ``takes`` seconds on ``clock`` (the registry's time), then fail or succeed."""

    def __init__(
        self, error: Exception | None = None, clock: Clock | None = None, takes: float = 0.0
    ) -> None:
        self.error = error
        self.clock = clock
        self.takes = takes

    async def _write(self, hooks: WriteHooks | None) -> None:
        await run_hooks(hooks)
        if self.clock is not None:
            await deferLater(self.clock, self.takes, lambda: None)
        if self.error is not None:
            raise self.error

    async def delete_manifest(
        self,
        repository: str,
        digest: str,
        *,
        hooks: WriteHooks | None = None,
    ) -> None:
        await self._write(hooks)

    async def delete_tag(
        self,
        repository: str,
        tag: str,
        *,
        hooks: WriteHooks | None = None,
        expected: str | None = None,
    ) -> str | None:
        await self._write(hooks)
        return None


def delete(
    registry: InstrumentedRegistry, operation: str, before: Before | None = None, check: Check | None = None
) -> Awaitable[object]:
    if operation == "delete_manifest":
        return registry.delete_manifest("team/app", "sha256:" + "1" * 64, hooks=WriteHooks(before, check))
    return registry.delete_tag("team/app", "v1", hooks=WriteHooks(before, check))


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


@pytest_twisted.ensureDeferred
async def test_registry_operations_are_counted_by_outcome() -> None:
    metrics = Metrics()
    script: list[list[str] | Exception] = [
        ["a"],
        RegistryNotFound("gone"),
        ["b"],
        RegistryUnavailable("down"),
    ]
    registry = InstrumentedRegistry(Registry(script * 2), metrics)  # type: ignore[arg-type]
    for _ in range(8):
        try:
            await registry.tags("team/app")
        except (RegistryNotFound, RegistryUnavailable):
            pass
    counts = samples(metrics, "payloadtags_registry_operations_total")
    assert counts == {
        (("operation", "tags"), ("outcome", "ok")): 4.0,
        (("operation", "tags"), ("outcome", "not_found")): 2.0,
        (("operation", "tags"), ("outcome", "unavailable")): 2.0,
    }
    durations = samples(metrics, "payloadtags_registry_operation_duration_seconds_count")
    assert durations == {(("operation", "tags"),): 8.0}


class Waiting:
    """A registry whose tag lists are answered when the test fires them."""

    def __init__(self) -> None:
        self.asked: list[Deferred[list[str]]] = []

    async def tags(self, repository: str) -> list[str]:
        self.asked.append(Deferred())
        return await self.asked[-1]


def test_only_the_registrys_failures_are_errors() -> None:
    """review r1obs N1: the "registry is failing" alert takes in `error` (rejected credentials, a 403,
    answers not understood); a list cut short by its client, or a delete that met a push, counted as
    `error` too, would fire it with the registry working."""
    metrics = Metrics()
    script: list[list[str] | Exception] = [
        RegistryAuthFailed("rejected"),
        RegistryAuthFailed("denied", denied=True),
        RegistryConflict("moved"),
    ]
    scripted = InstrumentedRegistry(Registry(script), metrics)  # type: ignore[arg-type]
    for _ in range(3):
        Deferred.fromCoroutine(scripted.tags("team/app")).addErrback(lambda _: None)
    waiting = Waiting()
    given_up = InstrumentedRegistry(waiting, metrics)  # type: ignore[arg-type]
    Deferred.fromCoroutine(given_up.tags("team/app")).addErrback(lambda _: None).cancel()
    assert waiting.asked[0].called  # the registry's call was cancelled with it
    assert samples(metrics, "payloadtags_registry_operations_total") == {
        (("operation", "tags"), ("outcome", "error")): 2.0,  # before: 4.0
        (("operation", "tags"), ("outcome", "conflict")): 1.0,
        (("operation", "tags"), ("outcome", "cancelled")): 1.0,
    }


def test_a_delete_the_registry_failed_before_a_push_moved_the_tag_counts_the_registrys_failure() -> None:
    """review r2obs N2: the delete failed (no answer, a 5xx), then a push was found: the conflict is
    raised from the registry's failure, which is what the operation met and what the alert must see
    (tests/integration/test_unanswered_api.py drives it through a fault proxy)."""
    metrics = Metrics()
    unanswered = RegistryConflict("pushed while it was being deleted")
    unanswered.__cause__ = RegistryTimeout("no answer")
    refused = RegistryConflict("pushed while it was being deleted")
    refused.__cause__ = RegistryUnavailable("503")
    script: list[list[str] | Exception] = [unanswered, refused, RegistryConflict("moved")]
    scripted = InstrumentedRegistry(Registry(script), metrics)  # type: ignore[arg-type]
    for _ in range(3):
        Deferred.fromCoroutine(scripted.tags("team/app")).addErrback(lambda _: None)
    assert samples(metrics, "payloadtags_registry_operations_total") == {
        (("operation", "tags"), ("outcome", "timeout")): 1.0,
        (("operation", "tags"), ("outcome", "unavailable")): 1.0,
        (("operation", "tags"), ("outcome", "conflict")): 1.0,  # refused for the race alone
    }


class Alternate:
    def __init__(self) -> None:
        self.calls = 0

    def allowed(self, user: UserInfo, verb: str, namespace: str, repository_path: str) -> bool:
        self.calls += 1
        return self.calls % 3 != 0


@pytest.mark.parametrize("inner", [AlwaysAllow(), Alternate()])
def test_access_decisions_are_counted_by_verb_and_decision(inner: object) -> None:
    metrics = Metrics()
    counting = CountingAuthorizer(inner, metrics)  # type: ignore[arg-type]
    user = UserInfo("alice")
    decisions = [counting.allowed(user, verb, "team", "app") for verb in ["get", "delete"] * 6]
    counts = samples(metrics, "payloadtags_authorization_decisions_total")
    expected: dict[tuple[tuple[str, str], ...], float] = {}
    for verb, decision in zip(["get", "delete"] * 6, decisions, strict=True):
        key = (("decision", "allow" if decision else "deny"), ("verb", verb))
        expected[key] = expected.get(key, 0.0) + 1.0
    assert counts == expected


@pytest.mark.parametrize("operation", ["delete_manifest", "delete_tag"])
@pytest.mark.parametrize("stopped_by", ["before", "check"])
@pytest_twisted.ensureDeferred
async def test_a_delete_its_caller_stopped_before_sending_is_not_a_registry_operation(
    operation: str, stopped_by: str
) -> None:
    """A cascade's checks right before a write (`WriteHooks`) that say stop send nothing more:
    that is not a failed registry request, and not told to the failure log."""
    metrics, failures = Metrics(), []

    async def stop() -> None:
        raise RuntimeError("the namespace exists again")

    def stop_now() -> None:
        raise RuntimeError("no longer leading")

    async def go() -> None:
        pass

    def registry(error: Exception | None = None) -> InstrumentedRegistry:
        inner = Deleting(error)
        return InstrumentedRegistry(inner, metrics, on_failure=lambda *failed: failures.append(failed))  # type: ignore[arg-type]

    with pytest.raises(RuntimeError):
        if stopped_by == "before":
            await delete(registry(), operation, before=stop)
        else:
            await delete(registry(), operation, before=go, check=stop_now)
    await delete(registry(), operation, before=go, check=lambda: None)
    with pytest.raises(RegistryUnavailable):
        await delete(registry(RegistryUnavailable("down")), operation, before=go)
    assert samples(metrics, "payloadtags_registry_operations_total") == {
        (("operation", operation), ("outcome", "ok")): 1.0,
        (("operation", operation), ("outcome", "unavailable")): 1.0,
    }
    assert [failed for failed, _ in failures] == [operation]


@pytest.mark.parametrize("operation", ["delete_manifest", "delete_tag"])
@pytest_twisted.ensureDeferred
async def test_a_deletes_duration_is_the_registrys_time_not_its_callers_checks(operation: str) -> None:
    """The cluster API takes 3 s to confirm, the registry 1 s to delete: the registry operation took
    1 s (docs/metrics.md); a slow cluster API is not registry latency."""
    clock, metrics = Clock(), Metrics()
    registry = InstrumentedRegistry(Deleting(clock=clock, takes=1.0), metrics, clock=clock.seconds)  # type: ignore[arg-type]

    async def confirm() -> None:
        await deferLater(clock, 3.0, lambda: None)

    deleting: Deferred[object] = Deferred.fromCoroutine(
        _awaited(lambda: delete(registry, operation, confirm))
    )
    clock.advance(3.0)
    clock.advance(1.0)
    await deleting
    assert samples(metrics, "payloadtags_registry_operation_duration_seconds_sum") == {
        (("operation", operation),): 1.0
    }


async def _awaited(call: Callable[[], Awaitable[object]]) -> object:
    return await call()


class Hung:
    """A registry whose API check is never answered."""

    async def ping(self) -> None:
        await Deferred()


def test_a_readiness_check_given_up_is_a_registry_timeout_not_an_error() -> None:
    # review-opscheck2 F6: the readiness check gives a ping up at --registry-timeout (a cancel); it
    # was counted as an error, which the "registry is failing" alert (unavailable|timeout) misses.
    from payloadtags.api.health import HealthChecks, SharedCheck

    clock, metrics = Clock(), Metrics()
    registry = InstrumentedRegistry(Hung(), metrics, clock=clock.seconds)  # type: ignore[arg-type]
    shared = SharedCheck(registry.ping, clock.seconds, 1.0, 10.0, clock)
    checks = HealthChecks({"readyz": [("registry", shared)]}, clock.seconds)
    for _ in range(30):  # a probe a second against a registry that never answers
        Deferred.fromCoroutine(checks.run("readyz", None, False, ()))
        clock.advance(1.0)

    def counted(outcome: str) -> float:
        sample = {"operation": "ping", "outcome": outcome}
        return metrics.registry.get_sample_value("payloadtags_registry_operations_total", sample) or 0.0

    assert counted("error") == 0
    # The runs of t=0 and 1 given up at 10 and 11, the runs that waited for them at 20 and 21, and
    # the one that waited for those at 30.
    assert counted("timeout") == 5


def test_a_readiness_check_given_up_is_logged_as_a_registry_timeout() -> None:
    # review-opscheck3 F1: the run is given up at --registry-timeout before the registry client's own
    # timeout (armed only when the request leaves) can fire, so against a hung registry, with probes
    # that leave before --registry-timeout (kubelet's timeoutSeconds), nothing was logged at all.
    from twisted.internet.defer import CancelledError
    from twisted.logger import capturedLogs, formatEvent

    from payloadtags.api.health import HealthChecks, SharedCheck
    from payloadtags.registry_diagnosis import FailureLog

    clock, metrics = Clock(), Metrics()
    failures = FailureLog(clock.seconds)
    registry = InstrumentedRegistry(Hung(), metrics, clock=clock.seconds, on_failure=failures)  # type: ignore[arg-type]
    shared = SharedCheck(registry.ping, clock.seconds, 1.0, 10.0, clock)
    checks = HealthChecks({"readyz": [("registry", shared)]}, clock.seconds)
    with capturedLogs() as events:
        for _ in range(65):  # a probe a second, each leaving after 5 s (timeoutSeconds: 5)
            probe = Deferred.fromCoroutine(checks.run("readyz", None, False, ()))
            probe.addErrback(lambda failure: failure.trap(CancelledError))
            clock.callLater(5, lambda probe=probe: probe.called or probe.cancel())
            clock.advance(1.0)
    texts = [formatEvent(event) for event in events if event.get("operation") == "ping"]
    # Given up at 10, 11, 20, 21, 30, 31, 40, ...: logged at 10 and 40, rate-limited as every
    # registry failure is (once per 30 s, counting those left out).
    assert len(texts) == 2, texts
    assert texts[0].startswith("registry ping failed: ")
    assert "--registry-timeout" in texts[0]
    assert "(5 more like it in the 30s since the last line)" in texts[1]


def test_the_instrumented_registry_says_the_catalog_order_its_client_learnt() -> None:
    # A namespace list stops at the first name outside it at once only when the registry is known to
    # sort by components (`inventory.CatalogCursor`); the server's lists read the instrumented client.
    inner = Registry([])
    registry = InstrumentedRegistry(inner, Metrics())  # type: ignore[arg-type]
    assert not sorts_by_components(registry)  # a client that does not say
    inner.catalog_order = "component"  # type: ignore[attr-defined]
    assert sorts_by_components(registry)


def test_the_connection_refusals_are_exposed_by_the_reasons_the_http_layer_counts() -> None:
    # metrics is below http (docs/architecture.md): each keeps the closed set, this keeps them one.
    metrics = Metrics()
    assert CONNECTION_REFUSALS == REASONS
    for reason in REASONS:
        metrics.connection_refused(reason)
    exposed = metrics.exposition().decode()
    for reason in REASONS:
        assert f'payloadtags_connections_refused_total{{reason="{reason}"}} 1.0' in exposed
