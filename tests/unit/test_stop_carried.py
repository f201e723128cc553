"""The stop and the deletes it carries on (review r1ops F1, N2): a delete that has begun writing when
its request is cut at the end of the grace period goes on to its end, is said by name (who asked, how
long it may take, what to do if the process is killed first), and the Lease waits for it. On Clocks."""

from __future__ import annotations

import types
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from payloadtags.cleanup.leader import LeaderElectionOptions, LeaderElector
from payloadtags.deferreds import GoesOn
from payloadtags.registry import CARRIED_DELETE_TIMEOUTS, CarriedDelete, RegistryClient
from payloadtags.server import CarriedDeletes, Serving
from tests.support.logcapture import collected_logs
from tests.unit.test_cleanup_leader import FakeLeases, advance
from tests.unit.test_registry_client_unit import Answer, DeleteRegistry, deleted_then, make

GRACE = 30.0
TIMEOUT = 60.0  # longer than the grace period: the delete's request is still out when it ends


def _begun_delete(clock: Clock) -> tuple[RegistryClient, Deferred[Any], Deferred[Answer]]:
    """A client on ``clock`` whose delete of a/b:v1 has begun writing: its DELETE by tag is out, and
    answered (202) when the returned Deferred[Answer] fires. Also the delete's own Deferred."""
    held: Deferred[Answer] = Deferred()
    client, agent = make(
        deleted_then(lambda: held, DeleteRegistry(tag_delete=Answer(202))), clock, timeout=TIMEOUT
    )
    delete = Deferred.fromCoroutine(client.delete_tag("a/b", "v1"))
    assert agent.paths()[-1] == "DELETE /v2/a/b/manifests/v1"
    return client, delete, held


class _Connection:
    """An open connection whose request is the delete: aborting it cuts the request (its client gone)."""

    def __init__(self, request: Deferred[Any]) -> None:
        self.transport = types.SimpleNamespace(abortConnection=request.cancel)


def _serving(clock: Clock, request: Deferred[Any], carried: CarriedDeletes) -> Serving:
    """The drain's part of a server whose one connection holds ``request`` (never idle)."""
    connections = types.SimpleNamespace(protocols=[_Connection(request)], drain=Deferred)
    api = types.SimpleNamespace(watch_hub=None, idle=Deferred, inflight=1)
    settings = types.SimpleNamespace(shutdown_delay=0.0, shutdown_grace_period=GRACE)
    return Serving(
        clock, cast(Any, settings), cast(Any, None), cast(Any, connections), cast(Any, api), "RBAC", carried
    )


def _said(logs: list[dict[str, Any]], text: str) -> list[str]:
    return [line for line in map(formatEvent, logs) if text in line]


def test_a_delete_carried_on_past_the_grace_period_is_said_by_name_and_waited_for() -> None:
    # review r1ops F1: the grace period ended with the delete's request cut and the delete going on,
    # and the process waited for it without a word of what it waited for or for how long.
    clock = Clock()
    client, delete, held = _begun_delete(clock)
    carried = CarriedDeletes(
        client, clock, lambda repository, tag: "admin" if (repository, tag) == ("a/b", "v1") else None
    )
    with collected_logs() as logs:
        drain = Deferred.fromCoroutine(_serving(clock, delete, carried).drain())
        clock.advance(GRACE)
        assert drain.called
        assert delete.called  # its request was cut: GoesOn
        delete.addErrback(lambda failure: failure.trap(GoesOn))
        lines = _said(logs, "a/b:v1")
        assert len(lines) == 1, lines
        line = lines[0]
        assert line.startswith("the grace period is over: the delete of tag a/b:v1 asked by admin"), line
        assert (
            f"within {CARRIED_DELETE_TIMEOUTS * TIMEOUT:g}s ({CARRIED_DELETE_TIMEOUTS} x --registry-timeout"
            in line
        )
        assert "If the process is killed first" in line and "delete it again" in line, line
        # The registry client's close waits for it: said once only, already said.
        closed = Deferred.fromCoroutine(carried.ended("stopping"))
        assert not closed.called
        assert len(_said(logs, "a/b:v1")) == 1
        held.callback(Answer(202))
        assert closed.called
        assert _said(logs, "Deleted tag a/b:v1 after its caller had stopped waiting")


def test_a_delete_not_begun_at_the_end_of_the_grace_period_is_dropped_unsaid() -> None:
    clock = Clock()
    # The read before its first write is not answered: cut there, it writes nothing.
    client, agent = make(lambda request: Deferred(), clock, timeout=TIMEOUT)
    delete = Deferred.fromCoroutine(client.delete_tag("a/b", "v1"))
    carried = CarriedDeletes(client, clock)
    with collected_logs() as logs:
        drain = Deferred.fromCoroutine(_serving(clock, delete, carried).drain())
        clock.advance(GRACE)
        assert drain.called
        assert not _said(logs, "a/b:v1")
    assert delete.called  # cancelled with its request
    delete.addErrback(lambda failure: failure.trap(CancelledError))
    assert client.begun_deletes() == []
    assert agent.paths() == ["GET /v2/a/b/manifests/v1"]


def test_the_lease_is_released_only_after_the_deletes_carried_on_have_ended() -> None:
    # review r1ops N2: the Lease went before the registry client's close waited for the carried
    # deletes, so the next leader could clean the namespace of a tag this replica was still writing.
    clock, api = Clock(), FakeLeases()
    client, _, held = _begun_delete(clock)
    carried = CarriedDeletes(client, clock)
    elector = LeaderElector(
        api,
        clock,
        LeaderElectionOptions(identity="a"),
        on_started_leading=lambda: None,
        on_stopped_leading=lambda: None,
        before_release=lambda: carried.ended("before the lease is released"),
    )
    elector.start()
    advance(clock, 1.0)
    assert elector.is_leader
    with collected_logs() as logs:
        stopped = Deferred.fromCoroutine(elector.stop())
        # A delete that no request asked for (a cascade's), not said before: said here.
        lines = _said(logs, "a/b:v1")
        assert len(lines) == 1, lines
        assert lines[0].startswith(
            "before the lease is released: the delete of tag a/b:v1 asked by a namespace removal"
        ), lines
        advance(clock, TIMEOUT / 2)  # its DELETE still out
        assert not stopped.called
        assert api.spec["holderIdentity"] == "a"
        held.callback(Answer(202))
        assert stopped.called
        assert api.spec["holderIdentity"] == ""


def _electors(clock: Clock, api: FakeLeases, carried: CarriedDeletes, started: list[str]) -> tuple[Any, ...]:
    """Replicas a (leading, its stop waiting for ``carried``) and b (a candidate), on one Lease and
    one Clock (their monotonic clock too)."""

    def elector(identity: str) -> LeaderElector:
        return LeaderElector(
            api,
            clock,
            LeaderElectionOptions(identity=identity),
            on_started_leading=lambda: started.append(identity),
            on_stopped_leading=lambda: None,
            monotonic=clock.seconds,
            before_release=lambda: carried.ended("before the lease is released"),
        )

    a = elector("a")
    a.start()
    advance(clock, 1.0)
    assert a.is_leader
    b = elector("b")
    b.start()
    advance(clock, 1.0)
    assert started == ["a"]
    return a, b


def test_no_other_replica_leads_while_the_deletes_carried_on_run() -> None:
    # review r2ops F1: the stop cancelled the renew loop before it waited for the carried deletes, so
    # the Lease lapsed a lease duration (15 s) later and b led while a still wrote; a's release then
    # failed with 409 Conflict (the Lease was b's).
    clock, api = Clock(), FakeLeases()
    client, _, held = _begun_delete(clock)
    started: list[str] = []
    a, b = _electors(clock, api, CarriedDeletes(client, clock), started)
    renewed = len(api.writes)
    with collected_logs() as logs:
        stopped = Deferred.fromCoroutine(a.stop())
        advance(clock, TIMEOUT / 2)  # two lease durations: its DELETE is still out
        assert not stopped.called
        assert not a.is_leader  # its work has stopped
        assert started == ["a"], "b leads while a's carried delete still runs"
        assert api.spec["holderIdentity"] == "a"
        assert len(api.writes) > renewed  # renewed meanwhile
        held.callback(Answer(202))
        assert stopped.called
        assert api.spec["holderIdentity"] == ""
        advance(clock, 5.0)  # b's next tries
    assert started == ["a", "b"]
    assert _said(logs, "a released the lease")
    assert not _said(logs, "could not release")
    Deferred.fromCoroutine(b.stop())


def test_a_lease_not_renewed_while_the_deletes_carried_on_run_is_said_lost_and_not_released() -> None:
    # As while leading: no renew within the renew deadline, and the Lease is lost (another replica
    # may take it once it lapses); said, and not released at the end (it may be another's by then).
    clock, api = Clock(), FakeLeases()
    client, _, held = _begun_delete(clock)
    a, b = _electors(clock, api, CarriedDeletes(client, clock), [])
    assert Deferred.fromCoroutine(b.stop()).called  # no other writer of the Lease
    with collected_logs() as logs:
        stopped = Deferred.fromCoroutine(a.stop())
        api.down = True
        advance(clock, 9.0)
        assert not _said(logs, "lost the lease")
        advance(clock, 3.0)  # past the renew deadline (10 s) since the last renew
        lost = _said(logs, "lost the lease while stopping")
        assert len(lost) == 1, lost
        assert "could not renew it for 10s" in lost[0], lost[0]
        api.down = False
        writes = len(api.writes)
        advance(clock, TIMEOUT / 2)
        assert not stopped.called
        held.callback(Answer(202))
        assert stopped.called
    assert len(api.writes) == writes  # neither renewed nor released after it was lost
    assert not _said(logs, "released the lease")


def test_a_delete_carried_on_past_its_usual_bound_is_said_again_until_it_ends() -> None:
    # review r2ops L1: the bound said is no bound (a tag list in pages, token renewals, slow bodies
    # take longer), so the line says "usually", and a delete still running once it has passed is said
    # again, the last line before a kill current; N1: the wait after a kill counts from the process's end.
    clock = Clock()
    writing: Deferred[None] = Deferred()
    writing.callback(None)
    delete = CarriedDelete("a/b", "v1", writing)
    client = types.SimpleNamespace(
        begun_deletes=lambda: [delete] if not delete.ended.called else [],
        carried_bound=CARRIED_DELETE_TIMEOUTS * 10.0,
        settings=types.SimpleNamespace(timeout=10.0),
    )
    carried = CarriedDeletes(cast(Any, client), clock, lambda repository, tag: "admin")
    with collected_logs() as logs:
        carried.say("the grace period is over")
        (first,) = _said(logs, "a/b:v1")
        assert "goes on: the process exits once it has ended, usually within 200s (20 x" in first, first
        assert "once the process has ended, wait 20s (a write may still land)" in first, first
        carried.say("stopping")  # said once
        clock.advance(199.0)
        assert len(_said(logs, "a/b:v1")) == 1
        clock.advance(1.0)
        again = _said(logs, "still running")
        assert again == [
            "the delete of tag a/b:v1 asked by admin is still running after 200s: the process still waits "
            "for it. If the process is killed first, the tag may be left on a copy payloadtags wrote to "
            "delete it: once the process has ended, wait 20s (a write may still land), get the tag "
            "(kubectl get), and if it is still there, delete it again"
        ], again
        clock.advance(200.0)
        assert "still running after 400s" in _said(logs, "still running")[-1]
        delete.ended.callback(None)
        clock.advance(1000.0)
        assert len(_said(logs, "a/b:v1")) == 3
    assert clock.getDelayedCalls() == []
