"""No start-up message shows a password typed in a URL, however the argument list around it is written
(review r3cfg F1): generated passwords of URL-special characters, in every way a flag and its value may
be typed or mistyped."""

from __future__ import annotations

import contextlib
import io
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from payloadtags import cli
from payloadtags.cli import _merged, _redacted_spans, _shared_end, _userinfo, main
from payloadtags.validators import escaped_forms

# Hundreds of argument lists through the whole parser: in the default suite, not the unit tier.
pytestmark = pytest.mark.property

# What a password may hold that URL parsers, argparse or its repr() treat specially.
SPECIAL = "/?#@: %[]'\"\\=-.,;&\t!$*+|"
# A password starts with PW and ends with QX, and holds MM between: none is in any message otherwise,
# so a piece of either end, or of the middle, shown anywhere is a leak.
MARKS = ("PW", "MM", "QX")

FLAGS = [
    "--registry-url",
    "--registry-host",
    "--registry_url",  # misspelt: unknown
    "--registry-u",  # an abbreviation argparse is not allowed to take
    "--registry",  # ambiguous
    "--help",
    "-h",
    "--v",
    "--secure-port",
    "--tls-min-version",
    "--request-timeout",
    "--leader-elect",
    "--authorization-mode",
    "--bind-address",
    # Both split their value on ',' and name the bad pieces (review r4cfg F1).
    "--tls-cipher-suites",
    "--authorization-always-allow-paths",
]
# How the flag and its value are typed: one argument joined by each separator, or two arguments.
SEPARATORS = ["=", ":", "\t", " ", "", None]


@st.composite
def argument_lists(draw: st.DrawFn) -> tuple[list[str], str]:
    piece = st.text(alphabet=SPECIAL + "ab", max_size=6)
    # A ',' often beside a mark: a flag that splits on ',' would show the piece before or after it.
    comma = st.sampled_from(["", ","])
    password = f"PW{draw(comma)}{draw(piece)}{draw(comma)}MM{draw(comma)}{draw(piece)}{draw(comma)}QX"
    user = draw(st.sampled_from(["al1ce", "a/b", "-u", "--u", "u=v", ""]))
    userinfo = f"{user}:{password}" if user else password
    scheme = draw(st.sampled_from(["https://", "http://", "HTTPS://", "", "ftp://", " https://", "//"]))
    host = draw(st.sampled_from(["reg.example", "[::1]:5000", "reg.example:5000/path", "r", ""]))
    url = f"{scheme}{userinfo}@{host}"
    flag = draw(st.sampled_from(FLAGS))
    separator = draw(st.sampled_from(SEPARATORS))
    typed = [flag, url] if separator is None else [f"{flag}{separator}{url}"]
    where = draw(st.sampled_from(["after", "before", "alone", "positional"]))
    base = ["--registry-url=http://127.0.0.1:5000"]
    argv = {
        "after": ["serve", *base, *typed],
        "before": [*typed, "serve", *base],
        "alone": ["serve", *typed],
        "positional": ["serve", *base, url],
    }[where]
    return argv, password


def said(argv: list[str]) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        main(argv)
    return out.getvalue() + err.getvalue()


@settings(max_examples=400)
@given(argument_lists())
@example((["serve", "--registry-url:https://al1ce:PW;MM;QX@reg.example"], "PW;MM;QX"))
@example((["serve", "--help=HTTPS://al1ce:PW;:, ]\tMM/aQX@r"], "PW;:, ]\tMM/aQX"))
@example((["serve", "--registry-url https://al1ce:PW MMQX@reg.example"], "PW MMQX"))
@example((["serve", "--registry-url=http://r", "--registry-host", "-al1ce:PWMMQX@reg"], "PWMMQX"))
@example((["serve", '--registry-url:HTTPS://al1ce:PW"=##"MM&QX@[::1]:5000'], 'PW"=##"MM&QX'))
@example((["serve", "-hal1ce:PW'\"MMQX@x"], "PW'\"MMQX"))
@example((["serve", "--registry-url=http://r", "--tls-cipher-suites=https://a:PWMM,QX@r"], "PWMM,QX"))
@example((["serve", "--authorization-always-allow-paths", "//a:PW,@,MM,QX@r"], "PW,@,MM,QX"))
# review r4cfg N4: a password glued to a flag's name, no separator, looked like the flag's name and '='.
@example((["serve", "--registry-url=http://127.0.0.1:5000", "--registry-urlPWMM=QX@reg.example"], "PWMM=QX"))
def test_no_message_shows_a_password_typed_in_a_url(case: tuple[list[str], str]) -> None:
    argv, password = case
    text = said(argv)
    assert "Traceback" not in text
    for mark in MARKS:
        assert mark not in text, (argv, text)
    assert password not in text


def every_at(message: str, given: list[str]) -> set[int]:
    """What the plain rule redacts: before each '@' of the message, the longest end any argument's user
    information, as typed or escaped, shares with it (each '@' read on its own, which is quadratic)."""
    forms = {form for arg in given for form in escaped_forms(_userinfo(arg)) if form}
    spans = []
    for at, char in enumerate(message):
        if char == "@":
            longest = max((_shared_end(message, at, form) for form in forms), default=0)
            spans.append((at - longest, at))
    return {index for begin, end in _merged(spans) for index in range(begin, end)}


@pytest.mark.parametrize("work", ["bounded", "past-the-bound"])
def test_the_redaction_never_shows_what_the_plain_rule_redacts(
    work: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The linear redaction reads an '@' inside a span already found only against what lies left of the
    # span, and past a bound on its work redacts runs of the arguments' characters: neither may show
    # a character the plain rule redacts (review r6cfg T1: taking the first or the shortest argument
    # that reaches past the span showed some). Seeded: the same 20,000 messages each run, built from
    # the arguments as argparse builds its own, joined, repeated or beside other text.
    if work == "past-the-bound":
        monkeypatch.setattr(cli, "_WORK_PER_CHARACTER", 0)
        monkeypatch.setattr(cli, "_WORK_ALWAYS", 0)
    rng = random.Random(1)
    alphabet = "ab@: "
    shown = []
    for _ in range(20_000):
        given = ["".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(rng.randint(1, 4))]
        parts = [
            rng.choice(given) if rng.random() < 0.7 else "".join(rng.choices(alphabet, k=rng.randint(0, 6)))
            for _ in range(rng.randint(1, 6))
        ]
        message = rng.choice([" ", "", ", "]).join(parts)
        redacted = {index for begin, end in _redacted_spans(message, given) for index in range(begin, end)}
        if every_at(message, given) - redacted:
            shown.append((given, message))
    assert shown == []


# Names of flags that do not exist: a slip for a real one (the likeliest way a secret reaches one), or any
# (but a real short flag with its value glued to it, `-hx`).
REAL_FLAGS = cli._parser()._flags()  # type: ignore[attr-defined]
SLIPS = ["--registry-password", "--registry-username", "--token", "--password", "--registry_url"]
UNKNOWN_NAMES = st.one_of(
    st.sampled_from(SLIPS), st.from_regex(r"--?[a-z][a-z_-]{0,15}", fullmatch=True)
).filter(lambda name: name not in REAL_FLAGS and name[:2] not in REAL_FLAGS)
URL = "--registry-url=http://127.0.0.1:5000"


@st.composite
def unknown_flags_with_values(draw: st.DrawFn) -> list[str]:
    """One or two unknown flags whose values hold the MARKS, before or after the command: ``--name=value``
    or ``--name value``, the value its own argument (review r12cfg F1), which may start with a '-', as a
    base64url token may (review r12cfg L1)."""
    piece = st.text(alphabet=SPECIAL + "ab\u00e9\u00a0\u2028\uff20", max_size=6)
    dashes = st.sampled_from(["", "-", "--", "-X", "-h"])
    typed = []
    for _ in range(draw(st.integers(1, 2))):
        name, value = draw(UNKNOWN_NAMES), f"{draw(dashes)}PW{draw(piece)}MM{draw(piece)}QX"
        typed += draw(st.sampled_from([[f"{name}={value}"], [name, value]]))
    where = draw(st.sampled_from(["after", "before", "alone"]))
    return {"after": ["serve", URL, *typed], "before": [*typed, "serve", URL], "alone": ["serve", *typed]}[
        where
    ]


@settings(max_examples=300)
@given(unknown_flags_with_values())
@example(["serve", URL, "--registry-password=PWhunter2MMQX"])
@example(["--registry-password=PWhunter2MMQX", "serve", URL])
# argparse takes an unknown flag with a space in it before the command for the command (an invalid one).
@example(["--registry-password=PW hunter2MMQX", "serve", URL])
# A manifest's one-string "--flag value".
@example(["serve", URL, "--registry-password PWhunter2MMQX"])
@example(["--registry-password\tPWhunter2MMQX", "serve", URL])
# The value as the argument after the flag: argparse took it, before the command, for the command.
@example(["--registry-password", "PWhunter2MMQX", "serve", URL])
@example(["--x=1", "--token", "PWhunter2MMQX", "serve", URL, "--help"])
@example(["-p", "PWhunter2MMQX", "serve", "--help"])
@example(["serve", URL, "--registry-password", "PWhunter2MMQX"])
@example(["serve", URL, "--registry-password", "-XPWhunter2MMQX"])
@example(["serve", URL, "--token", "--PWhunter2MMQX", "--x=1"])
def test_no_message_shows_the_value_of_an_unknown_flag(argv: list[str]) -> None:
    # review r10cfg L4: `--registry-password=hunter2` (for --registry-password-file) was echoed whole to
    # the pod's log; pflag, which Kubernetes components use, names the flag alone ("unknown flag: --x").
    text = said(argv)
    assert "Traceback" not in text and "unrecognized arguments" in text, (argv, text)
    for mark in MARKS:
        assert mark not in text, (argv, text)
