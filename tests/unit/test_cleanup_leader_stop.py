"""A stop that cuts a write of the Lease the API server carries out all the same (r1lease, leasestop).

The Lease lives in the cluster API double's store (resourceVersion-conditional writes answered 409,
MicroTime checked), on a Clock. A write held unanswered stands for one under way when the stop comes:
the stop cancels it, and the API server carries it out anyway, as kube-apiserver does a request that
had arrived whole when its client left. The replica may then hold the Lease without having seen it:
its stop must read the Lease again and release it if it is its own, so that the next leader takes
over at its next try, not a lease duration (15 s) later.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent

from payloadtags.cleanup.leader import LeaderElectionOptions, LeaderElector
from payloadtags.kube.errors import KubeApiError, make_status
from tests.support.kubeapi.resources import LEASES
from tests.support.kubeapi.statuses import ApiError
from tests.support.kubeapi.store import ObjectStore
from tests.support.logcapture import collected_logs
from tests.unit.test_cleanup_leader import LEASE, Candidate, advance
from tests.unit.test_cleanup_leader import LEASES as LEASES_PATH

NAME, NAMESPACE = "payloadtags-cleanup", "default"
# A candidate's next try comes at most this long after its last (retry period x (1 + jitter factor)).
NEXT_TRY = 2 * 2.2 + 0.1


class StoredLeases:
    """A `LeaseClient` on the double's store. The writes of the identities in `hold` (the holder
    they write) are held unanswered; cancelling one, the client stops waiting and the server carries
    the write out all the same (its outcome, the holder or the error code, goes to `landed`)."""

    def __init__(self, clock: Clock) -> None:
        self.store = ObjectStore(clock)
        self.hold: set[str] = set()
        self.held: list[Deferred[dict[str, Any]]] = []
        self.landed: list[str] = []
        self.hang_reads = False
        self.lands = True  # False: a cut write is not carried out (it had not arrived whole)
        # The writes of these identities are carried out, then answered 504 (the API server's own
        # timeout, which does not say whether the write was done).
        self.timeout_after: set[str] = set()

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        assert path == LEASE
        if self.hang_reads:
            await Deferred()  # never answered: the elector's bound must cut it
        return _answered(lambda: self.store.get(LEASES, NAME, NAMESPACE))

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert path == LEASES_PATH
        return await self._write(body, lambda: self.store.create(LEASES, copy.deepcopy(body)))

    async def update(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert path == LEASE
        return await self._write(
            body, lambda: self.store.update(LEASES, copy.deepcopy(body), NAME, NAMESPACE)
        )

    async def _write(self, body: dict[str, Any], carry_out: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        holder = body["spec"].get("holderIdentity")
        if holder in self.timeout_after:
            self.landed.append(_answered(carry_out)["spec"]["holderIdentity"])
            timeout = "Timeout: request did not complete within requested timeout - context deadline exceeded"
            raise KubeApiError(make_status(504, timeout, "Timeout"), 504)
        if holder not in self.hold:
            return _answered(carry_out)

        def carried_out_anyway(_: Deferred[dict[str, Any]]) -> None:
            if not self.lands:
                return
            try:
                stored = carry_out()
            except ApiError as e:
                self.landed.append(str(e.code))
            else:
                self.landed.append(stored["spec"]["holderIdentity"])

        held: Deferred[dict[str, Any]] = Deferred(carried_out_anyway)
        self.held.append(held)
        return await held

    @property
    def holder(self) -> str:
        holder: str = self.store.get(LEASES, NAME, NAMESPACE)["spec"].get("holderIdentity", "")
        return holder


def _answered(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return copy.deepcopy(call())
    except ApiError as e:
        raise KubeApiError(e.status, e.code) from None


def _said(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"] >= LogLevel.info]


def _released_by_a_then_b_holds_a_write(clock: Clock, api: StoredLeases) -> Candidate:
    """a leads and releases the Lease at its stop; b's next try takes it, with its write held."""
    a = Candidate(api, clock, "a")
    a.elector.start()
    b = Candidate(api, clock, "b")
    b.elector.start()
    assert a.leads and not b.leads
    a.stop()
    assert api.holder == ""
    api.hold.add("b")
    advance(clock, NEXT_TRY)
    assert len(api.held) == 1 and not b.leads
    return b


def test_a_candidate_whose_acquire_the_stop_cut_releases_what_the_api_carried_out() -> None:
    clock = Clock()
    api = StoredLeases(clock)
    b = _released_by_a_then_b_holds_a_write(clock, api)
    with collected_logs() as events:
        b.stop()  # the update taking the Lease lands as the stop cuts it
    assert api.landed == ["b"]
    assert api.holder == "", _said(events)  # read again and released, not left to lapse
    assert b.events == [] and not b.leads  # never led, and does not think it does
    c = Candidate(api, clock, "c")
    c.elector.start()
    assert c.leads  # at once, not a lease duration later
    c.stop()


def test_a_create_the_stop_cut_is_released_when_the_api_carried_it_out() -> None:
    clock = Clock()
    api = StoredLeases(clock)
    api.hold.add("a")
    a = Candidate(api, clock, "a")
    a.elector.start()  # no Lease yet: its create is held
    assert len(api.held) == 1
    a.stop()
    assert api.landed == ["a"]
    assert api.holder == ""
    assert a.events == [] and not a.leads
    b = Candidate(api, clock, "b")
    b.elector.start()
    assert b.leads
    b.stop()


def test_a_create_the_api_did_not_carry_out_leaves_nothing_to_release() -> None:
    clock = Clock()
    api = StoredLeases(clock)
    api.hold.add("a")
    api.lands = False
    a = Candidate(api, clock, "a")
    a.elector.start()
    assert len(api.held) == 1
    with collected_logs() as events:
        a.stop()  # read again: there is no Lease, nothing to release and nothing to say
    assert api.landed == [] and not api.store.exists(LEASES, NAME, NAMESPACE)
    assert [s for s in _said(events) if "lease" in s] == []
    assert a.events == [] and not a.leads


def test_an_acquire_answered_504_but_carried_out_is_released_at_the_stop() -> None:
    clock = Clock()
    api = StoredLeases(clock)
    a, b = Candidate(api, clock, "a"), Candidate(api, clock, "b")
    a.elector.start()
    b.elector.start()
    a.stop()
    api.timeout_after.add("b")
    while not api.landed:
        clock.advance(0.1)  # b's next try: its update is carried out, and answered 504
    assert api.holder == "b" and not b.leads
    b.stop()
    assert api.holder == ""
    assert b.events == [] and not b.leads


def test_an_acquire_the_api_refused_after_the_stop_releases_nothing() -> None:
    """Another holder's Lease is never released: b's cut update lands after c took the Lease (409)."""
    clock = Clock()
    api = StoredLeases(clock)
    b = _released_by_a_then_b_holds_a_write(clock, api)
    c = Candidate(api, clock, "c")
    c.elector.start()
    assert c.leads
    b.stop()
    assert api.landed == ["409"]
    assert api.holder == "c" and c.leads
    advance(clock, 20.0)
    assert c.leads and c.events == ["started"]
    c.stop()


def test_a_renew_the_stop_cut_is_released_on_the_lease_read_again() -> None:
    clock = Clock()
    api = StoredLeases(clock)
    a, b = Candidate(api, clock, "a"), Candidate(api, clock, "b")
    a.elector.start()
    b.elector.start()
    api.hold.add("a")
    advance(clock, 2.1)  # a's renew is held
    assert len(api.held) == 1 and a.leads
    a.stop()
    assert api.landed == ["a"]
    assert api.holder == ""
    assert a.events == ["started", "stopped"] and not a.leads
    advance(clock, NEXT_TRY)
    assert b.leads
    b.stop()


def _leader_waiting_at_stop(api: StoredLeases, clock: Clock, waited: Deferred[None]) -> LeaderElector:
    """A leader ("a") whose stop waits for `waited` before it releases the Lease (as the server's
    waits for the deletes it carries on), renewing the Lease meanwhile."""

    async def before_release() -> None:
        await waited

    elector = LeaderElector(
        api,
        clock,
        LeaderElectionOptions(identity="a"),
        on_started_leading=lambda: None,
        on_stopped_leading=lambda: None,
        rng=random.Random("a"),
        monotonic=clock.seconds,
        before_release=before_release,
    )
    elector.start()
    assert elector.is_leader
    return elector


def test_a_renew_cut_while_the_stop_holds_the_lease_is_released_after_what_it_waited_for() -> None:
    clock = Clock()
    api = StoredLeases(clock)
    waited: Deferred[None] = Deferred()
    a = _leader_waiting_at_stop(api, clock, waited)
    stopped = Deferred.fromCoroutine(a.stop())
    advance(clock, 4.1)  # renewed while the stop waits
    assert api.holder == "a" and not stopped.called
    api.hold.add("a")
    advance(clock, 2.1)  # the next renew is held
    assert len(api.held) == 1
    waited.callback(None)  # the stop cuts the renew, which lands
    assert stopped.called
    assert api.landed == ["a"]
    assert api.holder == ""
    assert not a.is_leader


def test_a_renew_its_deadline_cut_while_the_stop_held_the_lease_is_released_all_the_same() -> None:
    """The Lease is lost while stopping (no renew answered within the renew deadline), but the API
    carried out the last renew, cut by that deadline: the Lease is this replica's after all."""
    clock = Clock()
    api = StoredLeases(clock)
    waited: Deferred[None] = Deferred()
    a = _leader_waiting_at_stop(api, clock, waited)
    b = Candidate(api, clock, "b")
    b.elector.start()
    stopped = Deferred.fromCoroutine(a.stop())
    api.hold.add("a")
    with collected_logs() as events:
        advance(clock, 12.0)
    assert any("lost the lease while stopping" in s for s in _said(events)), _said(events)
    assert api.landed == ["a"] and api.holder == "a"
    assert not b.leads  # the Lease is still a's: the deletes a waits for go on alone
    waited.callback(None)
    assert stopped.called
    assert api.holder == ""
    advance(clock, NEXT_TRY)
    assert b.leads
    b.stop()


def test_the_release_of_a_cut_write_is_bounded_by_the_renew_deadline() -> None:
    clock = Clock()
    api = StoredLeases(clock)
    b = _released_by_a_then_b_holds_a_write(clock, api)
    api.hang_reads = True  # the Lease cannot be read again
    with collected_logs() as events:
        stopped = Deferred.fromCoroutine(b.elector.stop())
        assert api.landed == ["b"]
        advance(clock, 9.9)
        assert not stopped.called
        advance(clock, 0.2)
        assert stopped.called
    # It may hold the Lease (its write went unanswered): said so, not as a leader's release failing.
    assert any(
        "could not release the lease, which this replica may hold (a write of it went unanswered)" in s
        for s in _said(events)
    ), _said(events)
    assert api.holder == "b"  # lapses after its duration, as after a crash
    assert b.events == [] and not b.leads


def test_a_stop_without_release_leaves_a_cut_acquire_as_it_landed() -> None:
    clock = Clock()
    api = StoredLeases(clock)
    b = _released_by_a_then_b_holds_a_write(clock, api)
    b.stop(release=False)  # what a crash looks like
    assert api.landed == ["b"]
    assert api.holder == "b"
    assert b.events == [] and not b.leads


def _cut_create_then_another_leads(clock: Clock, api: StoredLeases) -> tuple[Candidate, Candidate]:
    """a's create (no Lease yet) is held unanswered and cut by its deadline, not carried out; b then
    takes the Lease and leads."""
    api.hold.add("a")
    api.lands = False
    a = Candidate(api, clock, "a")
    a.elector.start()
    advance(clock, 10.5)
    api.hold.clear()
    b = Candidate(api, clock, "b")
    b.elector.start()
    assert b.leads and not a.leads
    return a, b


def test_a_candidate_whose_unanswered_create_a_later_read_shows_superseded_stops_at_once() -> None:
    """Review r2leasestop N5: a's next read shows b's Lease, past its cut create (which would now be
    refused, AlreadyExists): a does not hold the Lease and cannot come to, so its stop neither waits
    to release it nor warns that it could not, even with the API unreachable."""
    clock = Clock()
    api = StoredLeases(clock)
    a, b = _cut_create_then_another_leads(clock, api)
    advance(clock, NEXT_TRY)  # a reads b's Lease
    api.hang_reads = True
    with collected_logs() as events:
        stopped = Deferred.fromCoroutine(a.elector.stop())
        assert stopped.called  # at once, not the renew deadline later
    assert not any("release" in s for s in _said(events)), _said(events)
    api.hang_reads = False
    assert api.holder == "b"
    b.stop()
