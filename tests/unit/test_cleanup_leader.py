"""Leader election on a Lease against an in-memory API with a Clock: durations without sleeping."""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, formatEvent

from payloadtags.cleanup import CleanupController, CleanupOptions
from payloadtags.cleanup.leader import (
    LeaderElectionOptions,
    LeaderElector,
    LeaseClient,
    default_lease_namespace,
)
from payloadtags.identity import UserInfo
from payloadtags.kube.client import WatchEvent
from payloadtags.kube.errors import KubeApiError, KubeUnavailable, make_status
from tests.support.logcapture import collected_logs
from tests.unit.test_cleanup_cascade import FakeRegistry

LEASE = "/apis/coordination.k8s.io/v1/namespaces/default/leases/payloadtags-cleanup"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/default/leases"


class FakeLeases:
    """One Lease with resourceVersion-conditional writes, like the API server; can fail or hang."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.down = False
        self.hang = False
        self.error: Exception | None = None  # every call fails with it, e.g. a 403
        self.writes: list[dict[str, Any]] = []

    async def _gate(self) -> None:
        if self.hang:
            await Deferred()  # never fires; the elector must cancel it
        if self.down:
            raise KubeUnavailable("connection refused")
        if self.error is not None:
            raise self.error

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
    """A replica's elector. Its monotonic clock is its reactor's unless `monotonic` is given: a
    separate Clock lets a test step the wall clock (the reactor's) alone."""

    def __init__(
        self,
        api: LeaseClient,
        clock: Clock,
        identity: str,
        *,
        monotonic: Clock | None = None,
        **durations: Any,
    ) -> None:
        self.events: list[str] = []
        options = LeaderElectionOptions(identity=identity, **durations)
        self.elector = LeaderElector(
            api,
            clock,
            options,
            on_started_leading=lambda: self.events.append("started"),
            on_stopped_leading=lambda: self.events.append("stopped"),
            rng=random.Random(identity),
            monotonic=(monotonic or clock).seconds,
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


FORBIDDEN = KubeApiError(
    make_status(
        403,
        'leases.coordination.k8s.io "payloadtags-cleanup" is forbidden: User "system:serviceaccount:'
        'payloadtags-system:payloadtags" cannot get resource "leases" in API group "coordination.k8s.io"',
        "Forbidden",
    ),
    403,
)


def _election_lines(events: list[dict[str, Any]], level: LogLevel) -> list[str]:
    return [
        formatEvent(e)
        for e in events
        if e.get("log_level") == level and formatEvent(e).startswith("Leader election: ")
    ]


def test_failed_attempts_are_warned_about_without_flooding_the_log() -> None:
    # client-go logs every failed attempt as an error; a forbidden Lease means no replica ever runs
    # the cleanup, which must show at the default verbosity, but not as a line every 2 s.
    clock, api = Clock(), FakeLeases()
    api.error = FORBIDDEN
    a = Candidate(api, clock, "a")
    with collected_logs() as events:
        a.elector.start()
        advance(clock, 59.0)  # about 20 attempts
        warnings = _election_lines(events, LogLevel.warn)
        # With the grant to fix, as every other 403 is said (r1cli N1).
        assert warnings == [
            "Leader election: could not get, create or update the lease default/payloadtags-cleanup "
            f"(1 failed attempt in a row): {FORBIDDEN}; bind it the Role payloadtags:leader-election in "
            "default (RoleBinding payloadtags:leader-election), whose resourceNames must hold "
            "payloadtags-cleanup (manifests/base/rbac-server.yaml, docs/troubleshooting.md)"
        ]
        advance(clock, 2 * 2.2)  # the next attempt past a minute
        warnings = _election_lines(events, LogLevel.warn)
        assert len(warnings) == 2 and warnings[1].startswith("Leader election: still could not get")
        assert "failed attempts in a row): 403 Forbidden: " in warnings[1]

        api.error = None
        api.down = True  # another failure: said at once
        advance(clock, 2 * 2.2)
        warnings = _election_lines(events, LogLevel.warn)
        assert len(warnings) == 3 and warnings[2].endswith("failed attempts in a row): connection refused")
        assert not warnings[2].startswith("Leader election: still")
        assert not _election_lines(events, LogLevel.info)

        api.down = False
        advance(clock, 2 * 2.2)
        assert a.leads
        infos = _election_lines(events, LogLevel.info)
        assert infos[0].startswith(
            "Leader election: the lease default/payloadtags-cleanup answers again, after "
        )
        assert len(_election_lines(events, LogLevel.warn)) == 3
    a.stop()


def test_a_leader_warns_once_when_its_renewals_fail_and_says_when_they_work_again() -> None:
    clock, api = Clock(), FakeLeases()
    a = Candidate(api, clock, "a")
    a.elector.start()
    advance(clock, 4.0)
    with collected_logs() as events:
        api.down = True
        advance(clock, 7.0)  # three renewals fail, within the renew deadline
        assert a.leads
        assert _election_lines(events, LogLevel.warn) == [
            "Leader election: could not get, create or update the lease default/payloadtags-cleanup "
            "(1 failed attempt in a row): connection refused"
        ]
        api.down = False
        advance(clock, 2.0)
        assert a.leads and a.events == ["started"]
        assert _election_lines(events, LogLevel.info) == [
            "Leader election: the lease default/payloadtags-cleanup answers again, after 3 failed attempts"
        ]
    a.stop()


def test_a_flapping_api_warns_once_a_minute_per_cause_across_good_renewals() -> None:
    # review-ops4 4: a good renewal forgot the last warning, so each outage of a flapping API warned
    # again (3 lines in 24 s). A cause said less than a minute ago is counted, not said, even after
    # the lease answered in between; "answers again" follows only an outage that was said.
    clock, api = Clock(), FakeLeases()
    a = Candidate(api, clock, "a")
    a.elector.start()
    advance(clock, 4.0)
    with collected_logs() as events:
        for _ in range(8):  # 8 outages in about 40 s, each of two failed renewals
            api.down = True
            advance(clock, 3.0)
            api.down = False
            advance(clock, 2.0)
        assert a.leads
        assert _election_lines(events, LogLevel.warn) == [
            "Leader election: could not get, create or update the lease default/payloadtags-cleanup "
            "(1 failed attempt in a row): connection refused"
        ]
        assert len(_election_lines(events, LogLevel.info)) == 1
        api.error = FORBIDDEN  # another cause: said at once
        advance(clock, 3.0)
        assert len(_election_lines(events, LogLevel.warn)) == 2
        api.error = None
        advance(clock, 2.0)
        advance(clock, 25.0)  # past a minute since the first outage was said
        api.down = True
        advance(clock, 3.0)
        warnings = _election_lines(events, LogLevel.warn)
        assert len(warnings) == 3 and warnings[2].endswith("(1 failed attempt in a row): connection refused")
        api.down = False
        advance(clock, 2.0)
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


class Node:
    """One replica's machine: its wall clock (the reactor's, which NTP may step) and its monotonic
    clock. Time advances both alike; a step moves the wall clock alone."""

    def __init__(self, api: LeaseClient, identity: str, wall: float = 1_000_000.0) -> None:
        self.wall, self.monotonic = Clock(), Clock()
        self.wall.advance(wall)
        self.candidate = Candidate(api, self.wall, identity, monotonic=self.monotonic)

    @property
    def leads(self) -> bool:
        return self.candidate.leads


def run_nodes(nodes: list[Node], seconds: float, step: float = 0.1) -> list[float]:
    """Let `seconds` pass on every node; the moments (from now) when more than one of them led."""
    both: list[float] = []
    for i in range(round(seconds / step)):
        for node in nodes:
            node.wall.advance(step)
            node.monotonic.advance(step)
        if [node.leads for node in nodes].count(True) > 1:
            both.append((i + 1) * step)
    return both


def test_a_wall_clock_step_back_on_the_leader_does_not_give_two_leaders() -> None:
    api = FakeLeases()
    a, b = Node(api, "a"), Node(api, "b")
    a.candidate.elector.start()
    run_nodes([a, b], 4.0)
    b.candidate.elector.start()
    run_nodes([a, b], 4.0)
    assert a.leads and not b.leads
    # NTP steps a's wall clock back a minute: its reactor's timers, the renew loop's, fire a minute late.
    a.wall.advance(-60.0)
    renewals = len(api.writes)
    assert run_nodes([a, b], 70.0) == []
    # b took over after the Lease expired; a stopped leading when its renew loop ran again, and
    # knew it no longer led from its renew deadline on.
    assert len(api.writes) > renewals and api.spec["holderIdentity"] == "b"
    assert b.leads and not a.leads
    assert a.candidate.events == ["started", "stopped"]


def test_a_wall_clock_step_forward_on_a_candidate_does_not_expire_the_lease() -> None:
    api = FakeLeases()
    a, b = Node(api, "a"), Node(api, "b")
    a.candidate.elector.start()
    b.candidate.elector.start()
    run_nodes([a, b], 4.0)
    assert a.leads and not b.leads
    b.wall.advance(60.0)  # b's timers fire at once, but the Lease was renewed just now
    assert run_nodes([a, b], 30.0) == []
    assert a.leads and api.spec["holderIdentity"] == "a"


class SlowView:
    """One replica's view of a FakeLeases: its next GET can take a while (and reads the Lease at its
    end, as a request delayed on its way to the API server would), its writes can fail."""

    def __init__(self, api: FakeLeases, clock: Clock) -> None:
        self.api, self.clock = api, clock
        self.next_get_delay = 0.0
        self.gets_sent = 0
        self.cut_off = False

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        self.gets_sent += 1
        delay, self.next_get_delay = self.next_get_delay, 0.0
        if delay:
            await deferLater(self.clock, delay)
        return await self.api.get(path, params)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.cut_off:
            raise KubeUnavailable("connection refused")
        return await self.api.create(path, body)

    async def update(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.cut_off:
            raise KubeUnavailable("connection refused")
        return await self.api.update(path, body)


@pytest.mark.parametrize("phase", [i * 0.25 for i in range(20)])
def test_a_slow_get_dates_what_it_saw_from_when_it_returned(phase: float) -> None:
    """A candidate's GET (9.5 s, within its 10 s bound) reads a renewal the leader sent just before the
    GET's end, then the leader is cut off: the candidate must not count the Lease's expiry from when
    it sent the GET, or it takes over while the leader still leads (until its renew deadline)."""
    clock, api = Clock(), FakeLeases()
    view_a, view_b = SlowView(api, clock), SlowView(api, clock)
    a, b = Candidate(view_a, clock, "a"), Candidate(view_b, clock, "b")
    a.elector.start()
    advance(clock, 3.0)
    b.elector.start()
    advance(clock, 5.0 + phase)
    assert a.leads and not b.leads
    view_b.next_get_delay = 9.5
    gets = view_b.gets_sent
    while view_b.gets_sent == gets:  # until b sends its slow GET
        clock.advance(0.05)
    advance(clock, 9.4, step=0.05)
    view_a.cut_off = True  # a's last renewal is at most a retry period before b's GET reads
    both: list[int] = []
    for i in range(600):
        clock.advance(0.05)
        if a.leads and b.leads:
            both.append(i)
    assert both == []
    assert b.leads and a.events == ["started", "stopped"]


def test_a_renewal_that_returns_past_the_renew_deadline_ends_the_term() -> None:
    """The wall clock steps back while a renewal is on its way: it succeeds, but only after `is_leader`
    said no. What that stopped must start over with a new term, not find the old one going on."""
    api = FakeLeases()
    a = Node(api, "a")
    a.candidate.elector.start()
    run_nodes([a], 1.0)
    reply: Deferred[None] = Deferred()
    update = api.update

    async def held_update(path: str, body: dict[str, Any]) -> dict[str, Any]:
        await reply
        return await update(path, body)

    api.update = held_update  # type: ignore[method-assign]
    run_nodes([a], 1.5)  # the renewal at 2 s is on its way
    a.wall.advance(-60.0)
    run_nodes([a], 10.0)
    assert not a.leads and a.candidate.events == ["started"]
    reply.callback(None)
    assert a.candidate.events == ["started", "stopped", "started"]
    assert a.leads and api.spec["holderIdentity"] == "a"


class QuietWatch:
    """A watch on which nothing happens."""

    def __aiter__(self) -> QuietWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        never: Deferred[WatchEvent] = Deferred()
        return await never

    def close(self) -> None:
        pass


class NoNamespaces(FakeLeases):
    """The Lease, and a cluster without namespaces: an empty list, a quiet watch, 404 for each one
    (a `ClusterClient`; the controller makes no other call)."""

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        if path != LEASE:
            raise KubeApiError(make_status(404, "not found"), 404)
        return await super().get(path, params)

    async def list(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return {"kind": "NamespaceList", "metadata": {"resourceVersion": "1"}, "items": []}

    async def watch(self, path: str, params: Mapping[str, str] | None = None) -> QuietWatch:
        return QuietWatch()

    async def patch(self, path: str, patch: dict[str, Any], content_type: str = "") -> dict[str, Any]:
        raise AssertionError("not used")

    async def delete(self, path: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        raise AssertionError("not used")

    async def token_review(self, token: str, audiences: tuple[str, ...] = ()) -> UserInfo | None:
        raise AssertionError("not used")

    async def close(self) -> None:
        pass


class HeldTags(FakeRegistry):
    """Its tag lists answer when the test says so (a registry request on its way)."""

    def __init__(self) -> None:
        super().__init__()
        self.reply: Deferred[None] = Deferred()

    async def tags(self, repository: str) -> tuple[str, ...]:
        await self.reply
        return await super().tags(repository)


def test_the_leader_deletes_nothing_past_its_renew_deadline_while_its_timers_are_late() -> None:
    api, registry = NoNamespaces(), HeldTags()
    registry.push("team/app", "v1")
    registry.push("team/app", "v2")
    wall, monotonic = Clock(), Clock()
    wall.advance(1_000_000.0)
    options = CleanupOptions(leader_election=LeaderElectionOptions(identity="a"))
    controller = CleanupController(wall, api, registry, options, monotonic=monotonic.seconds)
    controller.start()
    # It leads; its start-up sweep found the content of a namespace that does not exist, and the
    # cascade of it waits for the registry.
    assert controller.is_leader and controller.busy
    wall.advance(-60.0)  # its renew loop's timer now fires a minute late
    for _ in range(105):
        wall.advance(0.1)
        monotonic.advance(0.1)
    assert not controller.is_leader
    registry.reply.callback(None)
    assert registry.deletes == []
    assert registry.remaining("team/") == {"team/app": ["v1", "v2"]}
    done: list[object] = []
    Deferred.fromCoroutine(controller.stop()).addBoth(done.append)
    assert done == [None]


class ConflictingLeases(FakeLeases):
    """Every update answered 409 while `conflicts` (another writer keeps touching the Lease)."""

    conflicts = False

    async def update(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.conflicts:
            raise KubeApiError(make_status(409, "the object has been modified", "Conflict"), 409)
        return await super().update(path, body)


class LostAnswerLeases(FakeLeases):
    """An update that the server applies, but whose answer is lost on the way back."""

    lose_next = False

    async def update(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        stored = await super().update(path, body)
        if self.lose_next:
            self.lose_next = False
            raise KubeUnavailable("connection reset by peer")
        return stored


def test_a_conflict_storm_on_the_lease_is_warned_about() -> None:
    clock, api = Clock(), ConflictingLeases()
    a = Candidate(api, clock, "a")
    a.elector.start()
    advance(clock, 4.0)
    assert a.leads
    with collected_logs() as events:
        api.conflicts = True
        advance(clock, 60.0)
    assert a.events[:2] == ["started", "stopped"] and not a.leads
    said = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.info]
    # Every renew for a minute was refused (409); the log should name the cause at least once.
    assert any("409" in s or "onflict" in s or "modified" in s for s in said), said
    a.stop()


def test_a_release_after_a_renew_whose_answer_was_lost_still_hands_over_at_once() -> None:
    clock, api = Clock(), LostAnswerLeases()
    a, b = Candidate(api, clock, "a"), Candidate(api, clock, "b")
    a.elector.start()
    b.elector.start()
    advance(clock, 4.0)
    assert a.leads and not b.leads
    api.lose_next = True
    advance(clock, 2.0)  # a's next renew lands, its answer does not
    assert api.lose_next is False
    with collected_logs() as events:
        a.stop()  # a clean stop: releases the lease
    said = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.info]
    released = api.spec["holderIdentity"] == ""
    advance(clock, 2 * 2.2 + 0.1)
    took = b.leads
    assert released, said
    assert took
    b.stop()


def test_the_release_keeps_the_lease_metadata_and_other_spec_fields() -> None:
    clock, api = Clock(), FakeLeases()
    a = Candidate(api, clock, "a")
    a.elector.start()
    advance(clock, 4.0)
    assert api.lease is not None
    # Someone (an operator, GitOps, kubectl label) put labels/annotations and a newer spec field on it.
    lease = copy.deepcopy(api.lease)
    lease["metadata"]["labels"] = {"app": "payloadtags"}
    lease["metadata"]["annotations"] = {"owner": "team-x"}
    lease["spec"]["strategy"] = "OldestEmulationVersion"
    api.lease = lease
    advance(clock, 2.2)  # a renew: keeps them
    assert api.lease["metadata"].get("labels") == {"app": "payloadtags"}
    assert api.lease["spec"].get("strategy") == "OldestEmulationVersion"
    a.stop()
    assert api.spec["holderIdentity"] == ""
    assert api.lease["metadata"].get("labels") == {"app": "payloadtags"}
    assert api.lease["metadata"].get("annotations") == {"owner": "team-x"}


class OneConflict(FakeLeases):
    """The next update is answered 409 once (a race lost to another replica), then all work."""

    conflict_next = False

    async def update(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.conflict_next:
            self.conflict_next = False
            raise KubeApiError(make_status(409, "the object has been modified", "Conflict"), 409)
        return await super().update(path, body)


def test_a_single_lost_race_on_the_lease_is_not_warned_about() -> None:
    clock, api = Clock(), OneConflict()
    a = Candidate(api, clock, "a")
    a.elector.start()
    advance(clock, 4.0)
    with collected_logs() as events:
        api.conflict_next = True
        advance(clock, 10.0)
    assert not api.conflict_next  # the 409 was answered
    assert a.leads and a.events == ["started"]
    assert _election_lines(events, LogLevel.warn) == []
    a.stop()


def _taken_over(api: FakeLeases, holder: str) -> None:
    """Another writer puts `holder` on the Lease (another replica that took it over, an operator)."""
    assert api.lease is not None
    lease = copy.deepcopy(api.lease)
    lease["spec"]["holderIdentity"] = holder
    api.rv += 1
    lease["metadata"]["resourceVersion"] = str(api.rv)
    api.lease = lease


@pytest.mark.parametrize(
    ("holder", "why"), [("b", "the lease is now held by b"), ("", "the lease was released")]
)
def test_a_leader_whose_renew_reads_the_lease_not_its_own_stops_leading_at_once(
    holder: str, why: str
) -> None:
    """client-go's leader goes on until its renew deadline when its renew reads another holder; the
    cleanup's writes are fenced by the leadership check only, so it stops at that read (leasestop2)."""
    clock, api = Clock(), FakeLeases()
    a = Candidate(api, clock, "a")
    a.elector.start()
    advance(clock, 4.1)
    assert a.leads
    writes = len(api.writes)
    _taken_over(api, holder)
    stopped: list[bool] = []
    a.elector._on_stopped = lambda: stopped.append(a.leads)
    with collected_logs() as events:
        advance(clock, 2.0)  # a's next renew reads the Lease
    assert stopped == [False]  # its work is stopped, `is_leader` said no already
    assert f"Leader election: a stops leading: {why}" in _election_lines(events, LogLevel.info)
    if holder:
        assert not a.leads and len(api.writes) == writes  # another's Lease is not written over
        a.stop()
        assert api.spec["holderIdentity"] == "b"  # nor released
    else:
        # A Lease without a holder is anyone's: a candidate again, a takes it at once, a new term
        # (its work starts over) won by a conditional write as any.
        assert a.leads and a.events == ["started", "started"]
        assert api.spec["holderIdentity"] == "a" and api.spec["leaseTransitions"] == 1
        a.stop()


def test_a_leader_whose_renew_finds_the_lease_deleted_stops_leading_at_once() -> None:
    clock, api = Clock(), FakeLeases()
    a = Candidate(api, clock, "a")
    a.elector.start()
    advance(clock, 4.1)
    api.lease = None  # deleted: another replica may create it at its next try
    with collected_logs() as events:
        advance(clock, 2.0)
    # Stopped, then, a candidate again, it creates the Lease anew at once: a new term.
    assert a.events == ["started", "stopped", "started"] and a.leads
    assert "Leader election: a stops leading: the lease was deleted" in _election_lines(events, LogLevel.info)
    a.stop()


def test_a_leader_that_renews_while_stopping_gives_up_when_the_lease_is_taken() -> None:
    """While a stop holds the Lease for what must end first (`before_release`), a renew that reads
    another holder ends the hold: lost, said, and not released."""
    clock, api = Clock(), FakeLeases()
    ending: Deferred[None] = Deferred()
    elector = LeaderElector(
        api,
        clock,
        LeaderElectionOptions(identity="a"),
        on_started_leading=lambda: None,
        on_stopped_leading=lambda: None,
        rng=random.Random(0),
        monotonic=clock.seconds,
        before_release=lambda: ending,
    )
    elector.start()
    advance(clock, 1.0)
    done: list[object] = []
    with collected_logs() as events:
        Deferred.fromCoroutine(elector.stop()).addBoth(done.append)
        advance(clock, 2.1)  # one renew while stopping
        assert api.spec["holderIdentity"] == "a"
        _taken_over(api, "b")
        advance(clock, 2.1)
        ending.callback(None)
    assert done == [None]
    lost = _election_lines(events, LogLevel.warn)
    assert len(lost) == 1 and "a lost the lease while stopping: the lease is now held by b" in lost[0], lost
    assert api.spec["holderIdentity"] == "b"
