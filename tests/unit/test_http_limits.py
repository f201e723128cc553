"""Request limits: flags and defaults, the listen backlog, and input refused before it is looked up."""

from __future__ import annotations

from pathlib import Path

import pytest

from payloadtags.api.selectors import parse_field_selector
from payloadtags.cli import UsageError, _parser, settings_from
from payloadtags.limits import HttpLimits, listen_backlog


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
