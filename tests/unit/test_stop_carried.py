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
from payloadtags.registry import CARRIED_DELETE_TIMEOUTS, RegistryClient
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
        client, lambda repository, tag: "admin" if (repository, tag) == ("a/b", "v1") else None
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
    carried = CarriedDeletes(client)
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
    carried = CarriedDeletes(client)
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
