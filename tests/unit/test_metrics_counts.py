"""The registry's operations and the access decisions are counted per label whatever the order and
mix of outcomes (the counters' labelled children are kept between calls)."""

from __future__ import annotations

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from payloadtags.access.authz import AlwaysAllow
from payloadtags.identity import UserInfo
from payloadtags.metrics import CountingAuthorizer, InstrumentedRegistry, Metrics
from payloadtags.registry import Before, RegistryNotFound, RegistryUnavailable


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
    """Deletes that run their ``before`` as the registry client does, then fail or succeed."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    async def delete_manifest(self, repository: str, digest: str, *, before: Before | None = None) -> None:
        if before is not None:
            await before()
        if self.error is not None:
            raise self.error


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


@pytest_twisted.ensureDeferred
async def test_a_delete_its_caller_stopped_before_sending_is_not_a_registry_operation() -> None:
    """A cascade's checks in the repository's turn (`Before`) that say stop send nothing: that is not
    a failed registry request, and not told to the failure log."""
    metrics, failures = Metrics(), []

    async def stop() -> None:
        raise RuntimeError("the namespace exists again")

    async def go() -> None:
        pass

    def registry(error: Exception | None = None) -> InstrumentedRegistry:
        inner = Deleting(error)
        return InstrumentedRegistry(inner, metrics, on_failure=lambda *failed: failures.append(failed))  # type: ignore[arg-type]

    with pytest.raises(RuntimeError):
        await registry().delete_manifest("team/app", "sha256:" + "1" * 64, before=stop)
    await registry().delete_manifest("team/app", "sha256:" + "1" * 64, before=go)
    with pytest.raises(RegistryUnavailable):
        await registry(RegistryUnavailable("down")).delete_manifest(
            "team/app", "sha256:" + "1" * 64, before=go
        )
    assert samples(metrics, "payloadtags_registry_operations_total") == {
        (("operation", "delete_manifest"), ("outcome", "ok")): 1.0,
        (("operation", "delete_manifest"), ("outcome", "unavailable")): 1.0,
    }
    assert [operation for operation, _ in failures] == ["delete_manifest"]
