"""The redaction of start-up messages reads a long argument about once (review r4cfg L1): Linux takes
one argument of up to 128 KiB, and a quadratic redaction took minutes to print one line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from payloadtags import cli
from payloadtags.cli import _without_passwords

ONE_ARGUMENT = 128 * 1024


class TooMuchWork(Exception):
    pass


def lines_run(work: Callable[[], str], bound: int) -> tuple[int, str]:
    """The lines of cli.py that work() runs (a count of work, not a time); stops past the bound."""
    count = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if frame.f_code.co_filename != cli.__file__:
            return None
        if event == "line":
            count += 1
            if count > bound:
                raise TooMuchWork(count)
        return trace

    sys.settrace(trace)
    try:
        said = work()
    finally:
        sys.settrace(None)
    return count, said


@pytest.mark.parametrize(
    "given",
    [
        # User information ending in 'y's, its '@'s each preceded by 'z' (r4cfg's case: each '@' tried
        # every length of the user information).
        ("z@" * (ONE_ARGUMENT // 4) + "y" * (ONE_ARGUMENT // 2) + "@h",),
        # Two arguments: the '@'s of one, the long user information of the other.
        ("y" * (ONE_ARGUMENT // 2) + "@h", "z@" * (ONE_ARGUMENT // 4)),
        # Many '@'s no argument's user information ends before.
        ("https://al1ce:s3cret@h", "a@" * (ONE_ARGUMENT // 2)),
        # '@'s inside a span, before each of which the user information reaches past the span (r5cfg
        # L2): a manifest's one-string list of words.
        ("https://al1ce:s3cret@h", "q@ " * (ONE_ARGUMENT // 3) + "@h"),
    ],
    ids=["one-argument", "two-arguments", "unmatched-ats", "ats-inside-spans"],
)
def test_redacting_a_long_argument_reads_it_about_once(given: tuple[str, ...]) -> None:
    message = f"unrecognized arguments: {' '.join(given)}"
    # Generous: a few lines a character of the message; the quadratic redaction ran thousands.
    bound = 30 * len(message)
    count, said = lines_run(lambda: _without_passwords(message, given), bound)
    assert count <= bound
    assert "yy" not in said and "s3cret" not in said
    assert said.count("<redacted>@") >= 1


# Many distinct arguments of 2 KiB, as a manifest no one writes could pass (review r6cfg): 0.4 MB of
# them took 24 s and 86 s, printing nothing.
MANY = 40
DISTINCT_SHAPES = {
    # Each full of '@'s, their ends distinct: each '@' inside one's span tried every longer argument.
    "many-ats-inside-spans": [("z@" * 1024) + f"{i:06d}@h" for i in range(MANY)],
    # Sharing a 2 KiB end: each span's start read that end in every argument.
    "many-shared-ends": [f"{i:06d}" + "q@" * 1024 + "h" for i in range(MANY)],
    # Many short distinct URLs, each '@' at a span's start, where it tries every argument: work the
    # bound must count (review r7misc T1: left uncounted, 64 KiB of them took 20 s).
    "many-short-urls": [f"u{i}:p{i}@h" for i in range(2000)],
}


@pytest.mark.parametrize("given", DISTINCT_SHAPES.values(), ids=DISTINCT_SHAPES.keys())
def test_redacting_many_distinct_arguments_reads_them_about_once(given: list[str]) -> None:
    message = f"unrecognized arguments: {' '.join(given)}"
    bound = 30 * len(message)
    count, said = lines_run(lambda: _without_passwords(message, given), bound)
    assert count <= bound
    assert said == "unrecognized arguments: " + " ".join(["<redacted>@h"] * len(given))
