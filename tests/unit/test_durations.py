"""A request's ``?timeout=``, read as kube-apiserver reads it: Go's time.ParseDuration, and the smaller
of it and --request-timeout."""

from __future__ import annotations

import pytest

from payloadtags.api.durations import parse_go_duration, request_timeout
from payloadtags.api.errors import ApiError


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("2s", 2_000_000_000),
        ("0", 0),
        ("+0", 0),
        ("-1.5h", -5_400_000_000_000),
        ("2h45m", 9_900_000_000_000),
        ("1.5s", 1_500_000_000),
        (".5s", 500_000_000),
        ("5.s", 5_000_000_000),
        ("1µs", 1_000),  # U+00B5
        ("1μs", 1_000),  # U+03BC
        ("1us", 1_000),
        ("300ms", 300_000_000),
        ("9223372036854775807ns", (1 << 63) - 1),
        ("-9223372036854775808ns", -(1 << 63)),
        ("1.0000000000000000000001s", 1_000_000_000),  # digits past what fits are dropped
    ],
)
def test_a_go_duration_is_read_as_go_reads_it(text: str, nanoseconds: int) -> None:
    assert parse_go_duration(text) == nanoseconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo", 'time: invalid duration "foo"'),
        ("", 'time: invalid duration ""'),
        ("-", 'time: invalid duration "-"'),
        (".s", 'time: invalid duration ".s"'),
        ("2", 'time: missing unit in duration "2"'),
        ("1.5", 'time: missing unit in duration "1.5"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("1e3s", 'time: unknown unit "e" in duration "1e3s"'),
        ("1 s", 'time: unknown unit " s" in duration "1 s"'),
        ('"1s', 'time: invalid duration "\\"1s"'),
        ("1sé", 'time: unknown unit "s\\xc3\\xa9" in duration "1s\\xc3\\xa9"'),
        ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
        ("3000000h", 'time: invalid duration "3000000h"'),
    ],
)
def test_a_malformed_go_duration_gets_gos_words(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_go_duration(text)
    assert str(caught.value) == message


def test_the_request_has_the_smaller_of_its_own_timeout_and_the_servers() -> None:
    assert request_timeout(["2s"], 60.0) == 2.0
    assert request_timeout(["500ms", "10s"], 60.0) == 0.5  # the first, as Go's Query().Get
    assert request_timeout(["120s"], 60.0) == 60.0  # capped by --request-timeout
    assert request_timeout(["0s"], 60.0) == 60.0  # zero: none of its own
    assert request_timeout(["-1s"], 60.0) == 60.0
    assert request_timeout([""], 60.0) == 60.0  # empty: not given
    assert request_timeout(None, 60.0) == 60.0


def test_a_malformed_timeout_is_kube_apiservers_400() -> None:
    with pytest.raises(ApiError) as caught:
        request_timeout(["soon"], 60.0)
    error = caught.value
    assert (error.code, error.reason) == (400, "BadRequest")
    assert error.message == 'invalid timeout specified in the request URL - time: invalid duration "soon"'
