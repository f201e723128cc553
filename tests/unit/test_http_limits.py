"""Request limits: flags and defaults, the listen backlog, and input refused before it is looked up."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import attrs
import pytest

from payloadtags.api.app import _Seat
from payloadtags.api.selectors import parse_field_selector
from payloadtags.cli import UsageError, _parser, settings_from
from payloadtags.limits import HttpLimits, WatchLimits, held_watch_limits, listen_backlog, watch_limits


def parse(*argv: str) -> HttpLimits:
    args = _parser().parse_args(["serve", "--registry-url=http://127.0.0.1:5000", *argv])
    return settings_from(args).http


def test_defaults_are_kube_apiservers_where_it_has_one() -> None:
    limits = parse()
    assert limits.max_request_body_bytes == 3 * 1024 * 1024
    assert limits.max_requests_inflight == 400
    assert limits.request_timeout == 60.0
    assert limits.max_connections == 1000
    assert (limits.header_timeout, limits.idle_timeout) == (32.0, 90.0)
    assert limits.max_connections_per_client == 100
    assert (limits.handshake_rate_per_client, limits.handshake_burst_per_client) == (20.0, 40)


def test_every_limit_flag_reaches_the_settings() -> None:
    limits = parse(
        "--request-timeout=1m30s",
        "--max-requests-inflight=20",
        "--max-connections=50",
        "--max-request-body-bytes=1024",
        "--max-connections-per-client=7",
        "--handshake-rate-per-client=2.5",
        "--handshake-burst-per-client=9",
    )
    assert limits == HttpLimits(
        max_request_body_bytes=1024,
        max_requests_inflight=20,
        max_connections=50,
        request_timeout=90.0,
        max_connections_per_client=7,
        handshake_rate_per_client=2.5,
        handshake_burst_per_client=9,
    )


@pytest.mark.parametrize(
    "flag",
    [
        "--request-timeout=0",
        "--max-requests-inflight=0",
        "--max-connections=-1",
        "--max-request-body-bytes=0",
        "--max-connections-per-client=0",
        "--handshake-rate-per-client=0",
        "--handshake-rate-per-client=inf",
        "--handshake-burst-per-client=0",
    ],
)
def test_limits_must_be_positive(flag: str) -> None:
    with pytest.raises(UsageError, match=f"^{flag}: .*(greater than zero|at least 1|positive number)"):
        parse(flag)


def test_listen_backlog_is_the_kernels_largest(tmp_path: Path) -> None:
    somaxconn = tmp_path / "somaxconn"
    somaxconn.write_text("4096\n")
    assert listen_backlog(str(somaxconn)) == 4096
    assert listen_backlog(str(tmp_path / "absent"), fallback=128) == 128
    somaxconn.write_text("garbage")
    assert listen_backlog(str(somaxconn), fallback=511) == 511


@pytest.mark.parametrize("value", ["a/b", "A", "-x", "x" * 64, "ns/../other", "é"])
def test_namespace_selector_values_no_namespace_has_select_nothing(value: str) -> None:
    # As kube-apiserver, which checks no field selector value; lists never read such a namespace.
    assert not parse_field_selector(f"metadata.namespace={value}").matches({"metadata.namespace": "ns"})
    assert parse_field_selector(f"metadata.namespace!={value}").matches({"metadata.namespace": "ns"})
    assert parse_field_selector(f"metadata.namespace=={value}").required("metadata.namespace") == value


def test_valid_namespace_selector_values_pass() -> None:
    selector = parse_field_selector("metadata.namespace=team-a,metadata.name!=x")
    assert selector.required("metadata.namespace") == "team-a"


# --- watches held to their share, and said so -------------------------------------------------------


@pytest.mark.parametrize(
    ("connections", "asked", "held"),
    [
        (1000, WatchLimits(), (750, 250)),
        (1000, WatchLimits(max_watches_per_user=1000), (750, 250)),
        (30, WatchLimits(), (22, 7)),  # one user no longer takes all 22
        (30, WatchLimits(max_watches=10, max_watches_per_user=10), (10, 3)),
        (2, WatchLimits(), (1, 1)),
    ],
)
def test_one_user_holds_at_most_a_third_of_the_watches(
    connections: int, asked: WatchLimits, held: tuple[int, int]
) -> None:
    limits = watch_limits(asked, HttpLimits(max_connections=connections))
    assert (limits.max_watches, limits.max_watches_per_user) == held


def test_a_lowered_flag_is_warned_about_and_a_lowered_default_only_said() -> None:
    asked = WatchLimits(max_watches_per_user=1000)
    lines = held_watch_limits(asked, watch_limits(asked, HttpLimits()), 1000)
    assert lines == [
        (
            True,
            "--max-watches-per-user=1000 is held to 250, a third of --max-watches (750), "
            "so that one user cannot hold every watch",
        )
    ]
    small = HttpLimits(max_connections=30)
    lines = held_watch_limits(WatchLimits(), watch_limits(WatchLimits(), small), 30)
    assert [(flagged, line.split(",")[0]) for flagged, line in lines] == [
        (False, "--max-watches defaults to 22 here"),
        (False, "--max-watches-per-user defaults to 7 here"),
    ]
    assert held_watch_limits(WatchLimits(), watch_limits(WatchLimits(), HttpLimits()), 1000) == []


def test_a_flag_given_equal_to_its_default_and_lowered_is_warned_about() -> None:
    """The operator wrote `--max-watches-per-user=250`: that it is also the default does not make its
    lowering a default's, said at info only."""
    settings = settings_from(
        _parser().parse_args(
            [
                "serve",
                "--registry-url=http://127.0.0.1:5000",
                "--max-connections=30",
                "--max-watches-per-user=250",
            ]
        )
    )
    assert settings.watch == WatchLimits()  # the flag's value is the default's
    assert settings.watch_flags == frozenset({"max_watches_per_user"})
    held = watch_limits(settings.watch, settings.http)
    lines = held_watch_limits(settings.watch, held, 30, settings.watch_flags)
    assert lines == [
        (False, "--max-watches defaults to 22 here, three quarters of --max-connections=30"),
        (
            True,
            "--max-watches-per-user=250 is held to 7, a third of --max-watches (22), "
            "so that one user cannot hold every watch",
        ),
    ]
    unset = settings_from(_parser().parse_args(["serve", "--registry-url=http://127.0.0.1:5000"]))
    assert (unset.watch, unset.watch_flags) == (WatchLimits(), frozenset())


# --- in-flight seats given up while a client does not read ------------------------------------------


@attrs.define
class _Server:
    waiting_limit: int
    max_inflight: int = 10
    _limited: int = 0
    _waiting: int = 0


def _seat(server: _Server) -> _Seat:
    seat = _Seat(cast(Any, server))
    assert seat.take()  # as the endpoint does once the request is authenticated
    return seat


def test_a_seat_is_taken_while_one_is_free_and_never_after_its_request_finished() -> None:
    server = _Server(waiting_limit=1, max_inflight=1)
    first = _seat(server)
    assert first.take()  # taken once only
    late = _Seat(cast(Any, server))
    assert not late.take()  # every seat taken: its 429
    first.finished()
    gone = _Seat(cast(Any, server))
    gone.finished()  # its client left while it was being authenticated
    assert gone.take()
    assert (server._limited, server._waiting) == (0, 0)


def test_a_seat_given_up_is_taken_again_when_the_client_reads_and_freed_once() -> None:
    server = _Server(waiting_limit=1)
    seat = _seat(server)
    seat.waiting(True)
    assert (server._limited, server._waiting) == (0, 1)
    seat.waiting(False)  # the client reads again: its work goes on, on a seat
    assert (server._limited, server._waiting) == (1, 0)
    seat.waiting(True)
    seat.finished()  # the client left while its list waited
    seat.finished()
    seat.waiting(False)  # the writer wakes after the end: nothing to take
    assert (server._limited, server._waiting) == (0, 0)


def test_past_the_waiting_share_a_response_keeps_its_seat() -> None:
    server = _Server(waiting_limit=1)
    first, second = _seat(server), _seat(server)
    first.waiting(True)
    second.waiting(True)
    assert (server._limited, server._waiting) == (1, 1)
    first.finished()  # its place among the waiting is free again
    second.waiting(False)
    second.waiting(True)
    assert (server._limited, server._waiting) == (0, 1)
    second.finished()
    assert (server._limited, server._waiting) == (0, 0)
