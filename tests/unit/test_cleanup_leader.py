"""Leader election on a Lease against an in-memory API with a Clock: durations without sleeping."""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from payloadtags.cleanup.leader import LeaderElectionOptions, LeaderElector, default_lease_namespace
from payloadtags.kube.errors import KubeApiError, KubeUnavailable, make_status

LEASE = "/apis/coordination.k8s.io/v1/namespaces/default/leases/payloadtags-cleanup"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/default/leases"


class FakeLeases:
    """One Lease with resourceVersion-conditional writes, like the API server; can fail or hang."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.down = False
        self.hang = False
        self.writes: list[dict[str, Any]] = []

    async def _gate(self) -> None:
        if self.hang:
            await Deferred()  # never fires; the elector must cancel it
        if self.down:
            raise KubeUnavailable("connection refused")

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        await self._gate()
        assert path == LEASE
        if self.lease is None:
            raise KubeApiError(make_status(404, "not found"), 404)
        return copy.deepcopy(self.lease)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        await self._gate()
        assert path == LEASES
        if self.lease is not None:
            raise KubeApiError(make_status(409, "already exists", "AlreadyExists"), 409)
        return self._store(body)

    async def update(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        await self._gate()
        assert path == LEASE and self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise KubeApiError(make_status(409, "the object has been modified", "Conflict"), 409)
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.rv)
        self.lease = stored
        self.writes.append(copy.deepcopy(stored["spec"]))
        return copy.deepcopy(stored)

    @property
    def spec(self) -> dict[str, Any]:
        assert self.lease is not None
        spec: dict[str, Any] = self.lease["spec"]
        return spec


class Candidate:
    def __init__(self, api: FakeLeases, clock: Clock, identity: str, **durations: Any) -> None:
        self.events: list[str] = []
        options = LeaderElectionOptions(identity=identity, **durations)
        self.elector = LeaderElector(
            api,
            clock,
            options,
            on_started_leading=lambda: self.events.append("started"),
            on_stopped_leading=lambda: self.events.append("stopped"),
            rng=random.Random(identity),
        )

    @property
    def leads(self) -> bool:
        return self.elector.is_leader

    def stop(self, release: bool = True) -> None:
        done: list[object] = []
        Deferred.fromCoroutine(self.elector.stop(release=release)).addBoth(done.append)
        assert done == [None]


def advance(clock: Clock, seconds: float, step: float = 0.1) -> None:
    target = clock.seconds() + seconds
    while clock.seconds() < target:
        clock.advance(min(step, target - clock.seconds()))


def test_client_go_defaults_and_validation() -> None:
    options = LeaderElectionOptions(identity="a")
    assert (options.lease_duration, options.renew_deadline, options.retry_period) == (15.0, 10.0, 2.0)
    assert options.lease_name == "payloadtags-cleanup"
    with pytest.raises(ValueError, match="greater than the renew deadline"):
        LeaderElectionOptions(identity="a", lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError, match="retry period"):
        LeaderElectionOptions(identity="a", renew_deadline=2.4, retry_period=2)
    with pytest.raises(ValueError, match="positive"):
        LeaderElectionOptions(identity="a", retry_period=0)
    assert "_" in LeaderElectionOptions().identity  # hostname_uuid, as client-go's users build it


def test_lease_namespace_default(tmp_path) -> None:
    assert default_lease_namespace(str(tmp_path / "missing")) == "default"
    (tmp_path / "namespace").write_text("d8-payload-registry\n")
    assert default_lease_namespace(str(tmp_path / "namespace")) == "d8-payload-registry"


def test_acquire_creates_the_lease_and_renews_it() -> None:
    clock, api = Clock(), FakeLeases()
    clock.advance(1_700_000_000)
    a = Candidate(api, clock, "a")
    a.elector.start()
    assert a.leads and a.events == ["started"]
    spec = api.spec
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert spec["acquireTime"] == spec["renewTime"] == "2023-11-14T22:13:20.000000Z"
    advance(clock, 2.0)
    assert api.spec["renewTime"] == "2023-11-14T22:13:22.000000Z"
    assert api.spec["acquireTime"] == spec["acquireTime"]
    assert api.spec["leaseTransitions"] == 0
    advance(clock, 20.5)
    # Created, then renewed every retry period (2 s, give or take the 0.1 s steps of this test).
    assert a.leads and 1 + 10 <= len(api.writes) <= 1 + 11
    a.stop()


def test_a_second_candidate_waits_then_takes_over_after_expiry() -> None:
    clock, api = Clock(), FakeLeases()
    a, b = Candidate(api, clock, "a"), Candidate(api, clock, "b")
    a.elector.start()
    b.elector.start()
    advance(clock, 60.0)
    assert a.leads and not b.leads
    assert b.elector.leader == "a"
    a.stop(release=False)  # a crash: the lease stays as it was
    crashed_at = clock.seconds()
    # b measures expiry on its own clock from when it last saw the lease change.
    advance(clock, 14.0)
    assert not b.leads
    advance(clock, 15.0 + 2 * 2.2 - 14.0)
    assert b.leads
    assert clock.seconds() - crashed_at >= 13.0
    assert api.spec["holderIdentity"] == "b"
    assert api.spec["leaseTransitions"] == 1
    b.stop()


def test_release_on_stop_lets_the_other_candidate_take_over_at_once() -> None:
    clock, api = Clock(), FakeLeases()
    a, b = Candidate(api, clock, "a"), Candidate(api, clock, "b")
    a.elector.start()
    b.elector.start()
    advance(clock, 10.0)
    a.stop()
    assert a.events == ["started", "stopped"]
    assert api.spec["holderIdentity"] == ""
    assert api.spec["leaseDurationSeconds"] == 1
    # b's next try (at most retry period x (1 + jitter factor)) takes the released lease.
    advance(clock, 2 * 2.2 + 0.1)
    assert b.leads
    assert api.spec["holderIdentity"] == "b"
    assert api.spec["leaseTransitions"] == 1
    b.stop()


def test_leadership_is_lost_after_the_renew_deadline_before_the_lease_expires() -> None:
    clock, api = Clock(), FakeLeases()
    a, b = Candidate(api, clock, "a"), Candidate(api, clock, "b")
    a.elector.start()
    advance(clock, 4.0)
    b.elector.start()
    advance(clock, 0.1)
    last_write = clock.seconds()
    api.down = True  # for a only: b's calls fail as well, which is what an outage looks like
    advance(clock, 9.8)
    assert a.leads
    advance(clock, 2.2)
    assert not a.leads and a.events == ["started", "stopped"]
    # a stopped leading (renew deadline 10 s) before anyone could consider the lease expired (15 s).
    assert clock.seconds() - last_write < 15.0
    api.down = False
    advance(clock, 20.0)
    assert [a.leads, b.leads].count(True) == 1
    a.stop()
    b.stop()


def test_a_hanging_renewal_is_cut_at_the_renew_deadline() -> None:
    clock, api = Clock(), FakeLeases()
    a = Candidate(api, clock, "a")
    a.elector.start()
    api.hang = True
    advance(clock, 12.5)
    assert not a.leads and a.events == ["started", "stopped"]
    assert not clock.getDelayedCalls() or all(c.getTime() > clock.seconds() for c in clock.getDelayedCalls())
    api.hang = False
    # The attempt in flight is given up at its own deadline; the one after it succeeds.
    advance(clock, 10.0 + 2 * 2.2)
    assert a.leads  # the lease still names a, so a takes it back without a transition
    assert api.spec["leaseTransitions"] == 0
    a.stop()


def test_racing_candidates_one_wins() -> None:
    clock, api = Clock(), FakeLeases()
    candidates = [Candidate(api, clock, name) for name in "abcde"]
    for c in candidates:
        c.elector.start()
    advance(clock, 30.0)
    assert [c.leads for c in candidates].count(True) == 1
    for c in candidates:
        c.stop()
    assert api.spec["holderIdentity"] == ""


def test_health_check_fails_only_when_renewals_are_stuck() -> None:
    clock, api = Clock(), FakeLeases()
    a = Candidate(api, clock, "a")
    a.elector.start()
    failures: list[object] = []
    Deferred.fromCoroutine(a.elector.check_health()).addErrback(failures.append)
    assert failures == []
    # A renew loop that stopped running (simulated: a renew far in the past) fails the check.
    a.elector._last_renew = clock.seconds() - 40
    Deferred.fromCoroutine(a.elector.check_health()).addErrback(failures.append)
    assert len(failures) == 1
    a.stop()


def test_stop_is_not_swallowed_by_a_request_that_fails_when_cancelled() -> None:
    """Twisted reports a request cancelled during name resolution as a DNS error, not a cancellation."""
    clock, api = Clock(), FakeLeases()
    a = Candidate(api, clock, "a")
    a.elector.start()

    async def hang_then_fail_on_cancel(*_args: object, **_kwargs: object) -> dict[str, Any]:
        def fail(d: Deferred[None]) -> None:
            d.errback(KubeUnavailable("DNS lookup failed: Couldn't find the hostname"))

        await Deferred(fail)
        raise AssertionError("not reached")

    api.get = hang_then_fail_on_cancel  # type: ignore[method-assign]
    advance(clock, 2.1)  # a renewal is now in flight
    a.stop()  # returns at once: Candidate.stop asserts the stop completed
    assert a.events == ["started", "stopped"]
