"""Command line: flags with k8s.io/apiserver names → Settings; ``payloadtags serve``.

Start-up runs in four steps, as Kubernetes components do: the flags are parsed, validated as a whole
(every mistake found is reported, one line each, naming the flag), completed (files read and checked,
kubeconfig loaded: payloadtags.startup) and only then run (payloadtags.server).
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Sequence, Set
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import attrs

from payloadtags import __version__
from payloadtags.limits import HttpLimits, WatchLimits
from payloadtags.registry import RegistrySettings
from payloadtags.registry_diagnosis import CREDENTIAL_FLAGS
from payloadtags.settings import (
    AUTHORIZATION_MODES,
    DEFAULT_ALWAYS_ALLOW_PATHS,
    LOGGING_FORMATS,
    TLS_VERSIONS,
    Settings,
)
from payloadtags.tls import CIPHER_SUITES
from payloadtags.validators import (
    AT_SIGNS,
    address_problem,
    at_in_authority,
    escaped_forms,
    file_flag_forms,
    has_userinfo,
    paths_redacted,
    read_file,
    userinfo_span,
    utf8_encodable,
    without_userinfo,
)

# What `payloadtags --help` says (the module's docstring is for developers).
DESCRIPTION = (
    "Serve the tags of an OCI container registry as Kubernetes objects (PayloadRepositoryTag), as a "
    "Kubernetes aggregated API server. Its flags: payloadtags serve --help."
)
USERNAME_ENV = "PAYLOADTAGS_REGISTRY_USERNAME"
PASSWORD_ENV = "PAYLOADTAGS_REGISTRY_PASSWORD"

# What the deprecated -v/--verbose switched on: every request logged (kube-apiserver logs them at 3).
REQUEST_LOG_VERBOSITY = 3


class UsageError(Exception):
    """Configuration mistakes, each reported in one line naming the flag, without a traceback."""

    def __init__(self, *errors: str) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)


class UnreadableCredentials(UsageError):
    """The flags are sound but a registry credential file they name cannot be read.

    Carries the settings made without it, so that start-up's file round still runs and reports every
    other file problem with this one (docs/configuration.md: all of them at once).
    """

    def __init__(self, settings: Settings, *errors: str) -> None:
        super().__init__(*errors)
        self.settings = settings


@attrs.frozen
class Invalid:
    """A flag value that did not convert; kept so that every bad flag is reported, not only the first."""

    text: str
    reason: str


T = TypeVar("T")


def _lenient(convert: Callable[[str], T]) -> Callable[[str], T | Invalid]:
    def lenient(text: str) -> T | Invalid:
        try:
            return convert(text)
        except (ValueError, argparse.ArgumentTypeError) as error:
            return Invalid(text, str(error))

    lenient.__name__ = convert.__name__.lstrip("_")
    return lenient


# -- value types ------------------------------------------------------------------------------------

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_COMPONENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def _duration(text: str) -> float:
    """A Go duration (``500ms``, ``10s``, ``1m30s``, ``0``), or plain seconds; never negative."""
    value = text.strip()
    if not value:
        raise argparse.ArgumentTypeError("empty duration (use e.g. 10s, 1m30s, 500ms)")
    if value.startswith("-"):
        raise argparse.ArgumentTypeError(f"duration {text!r} is negative")
    value = value.removeprefix("+")
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"invalid duration {text!r}")
        return seconds
    total, position = 0.0, 0
    for match in _COMPONENT.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(value) or position == 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 10s, 1m30s, 500ms)")
    return total


def _positive_duration(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be greater than zero")
    return seconds


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 0-65535")
    return port


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _count(text: str) -> int:
    number = _whole(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} must be at least 1")
    return number


def _positive_number(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return number


def _level(text: str) -> int:
    number = _whole(text)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{number} must not be negative")
    return number


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _bool(text: str) -> bool:
    # Go's strconv.ParseBool, which is what `--leader-elect=false` goes through in Kubernetes.
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true or false)")


def _list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _allowed_names(text: str) -> tuple[str, ...]:
    names = _list(text)
    if text and not names:
        # Go keeps `,` as the empty name, which no real CN is: read as no names it would trust every CN
        # the front-proxy CA signs, so it is refused (stricter than Go: closed, not open).
        raise argparse.ArgumentTypeError(
            "names nothing but empty names: list the CNs to accept (kube-apiserver's is usually "
            "front-proxy-client), or leave the flag out to accept any CN the CA signs"
        )
    return names


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    def one_of(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return one_of


def _cipher_suites(text: str) -> tuple[str, ...]:
    suites = _list(text)
    unknown = _bad(text, suites, lambda suite: suite not in CIPHER_SUITES)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown or insecure cipher suite(s) {unknown}; known: {', '.join(CIPHER_SUITES)}"
        )
    return suites


def _paths(text: str) -> tuple[str, ...]:
    paths = _list(text)
    unrooted = _bad(text, paths, lambda path: not path.startswith("/"))
    # k8s.io/apiserver's path authorizer refuses these ("only trailing * allowed"): `/healthz/**` or
    # `/readyz/*x` would open nothing here, silently (review r10cfg L2).
    starred = _bad(text, paths, lambda path: "*" in path[:-1])
    problems = [f"paths must start with '/': {unrooted}"] if unrooted else []
    if starred:
        problems.append(f"only a trailing '*' is allowed, as in kube-apiserver: {starred}")
    if problems:
        raise argparse.ArgumentTypeError("; ".join(problems))
    return paths


def _bad(text: str, entries: tuple[str, ...], is_bad: Callable[[str], bool]) -> str:
    """The entries of a list value that fail, as typed; by position (from 1) when the value has an '@'
    (or a full-width or small one, `AT_SIGNS`, as the redaction counts them: review r12cfg L2).

    Such a value may be a URL with a password that took this flag's place, and its pieces cut at a
    ',' inside the password no longer end at the '@' the redaction of the message looks for."""
    if not any(at in text for at in AT_SIGNS):
        return ", ".join(entry for entry in entries if is_bad(entry))
    positions = [str(number) for number, entry in enumerate(entries, 1) if is_bad(entry)]
    return f"entries {', '.join(positions)}" if positions else ""


# -- the parser --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Mistakes argparse finds itself (unknown flag, missing value) end like every other: one line, 1.

    A command's unknown flags are its own mistakes, said first and pointing at its help (argparse
    leaves them to the top-level parser, whose help lists none of the command's flags, and says
    them only after a missing required flag, which a misspelt one often is), with a near miss."""

    given: tuple[str, ...] = ()  # the arguments being parsed, for error() to redact whole

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self.given = tuple(sys.argv[1:] if args is None else args)
        if self._subparsers is None:  # a command's parser (the top-level one passes the rest on)
            unknown = self._unknown_flags(self.given)
            if unknown:
                self.error(f"unrecognized arguments: {' '.join(unknown)}")
        else:
            flags = self._flags()
            for arg in self.given:
                if arg == "--" or not arg.startswith("-"):
                    break  # the command
                # A flag no parser has is refused here, by its name: argparse would leave it for the
                # leftovers and take the argument after it, its value (``--registry-password hunter2
                # serve``), for the command, quoting it whole as an invalid one (review r12cfg F1). So it
                # would a flag with a space in it (``--password=a b``), which it takes for the command.
                if not _names_a_flag(arg, flags):
                    # With the near miss a command's parser gives, among its flags too (review r1docs N3).
                    self.error(f"unrecognized arguments: {self._unknown_flag_said(arg, flags)}")
                if self._parse_optional(arg) is None:
                    self.error(f"unrecognized arguments: {_unknown_flag_named(arg, flags)}")
        return super().parse_known_args(args, namespace)

    def _shown_flags(self) -> list[str]:
        """The long flags the help of this parser shows, then those of its commands'."""
        shown = [
            option
            for action in self._actions
            if action.help != argparse.SUPPRESS
            for option in action.option_strings
            if option.startswith("--")
        ]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command in action.choices.values():
                    shown += command._shown_flags() if isinstance(command, _Parser) else []
        return shown

    def _unknown_flag_said(self, arg: str, flags: Set[str]) -> str:
        """An unknown flag named without its value (`_unknown_flag_named`), with the flag it is a near
        miss of when there is one."""
        shown = self._shown_flags()
        spelt = arg.split("=", 1)[0].replace("_", "-").lower()
        near = [spelt] if spelt in shown else difflib.get_close_matches(spelt, shown, n=1)
        said = _unknown_flag_named(arg, flags)
        return f"{said} (did you mean {near[0]}?)" if near else said

    def _unknown_flags(self, args: Sequence[str]) -> list[str]:
        """The first argument argparse would take for a flag this parser has not, with a near miss."""
        for arg in args:
            if arg == "--":
                break  # what follows is positional
            if not arg.startswith("-") or arg == "-" or self._negative_number_matcher.match(arg):
                continue  # a value (argparse reads a negative number as one here: no flag looks like one)
            name = arg.split("=", 1)[0]
            if name in self._option_string_actions or arg[:2] in self._option_string_actions:
                continue
            # Only the first, as pflag: what follows an unknown flag without an '=' may be its value, one
            # starting with '-' too (a base64url token, a generated password), and which argument is
            # whose value is not known past it (reviews r12cfg L1, r15cfg F1).
            return [self._unknown_flag_said(arg, self._flags())]
        return []

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """argparse's own, but an unknown flag before the command is named as a command's is."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            flags = self._flags()
            named = (_unknown_flag_named(arg, flags) for arg in extras)
            self.error(f"unrecognized arguments: {' '.join(named)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        redacted = _without_passwords(message, self.given, self._flags())
        self.exit(1, f"{self.prog}: {redacted} (see {self.prog} --help)\n")

    def _flags(self) -> set[str]:
        """The option strings of this parser and its commands': the top-level parser is given, and
        echoes, the arguments of a command too."""
        flags = set(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command in action.choices.values():
                    flags |= command._flags() if isinstance(command, _Parser) else set()
        return flags


def _unknown_flag_named(arg: str, flags: Set[str]) -> str:
    """An unknown ``--name=value`` named as pflag names it, by ``--name`` alone (review r10cfg L4): the
    value typed into a flag that does not exist may be a password (``--registry-password=…`` for
    ``--registry-password-file``), and the message goes to the pod's log.

    The name ends at the first ``=`` or white space (a manifest's one-string ``"--flag value"``). Before
    a value with an ``@`` it may end in user information glued to a flag's name
    (``--registry-urlal1ce=pw@host``, review r4cfg N4): it is not said at all. An argument with
    neither, or whose name is one of the ``flags`` (a command's flag before the command, a one-string
    ``"--registry-url URL"``), is said as typed, where the value is no secret typed in the wrong place;
    `_without_passwords` then redacts its user information."""
    parts = _NAME_END.split(arg, maxsplit=1)
    if not arg.startswith("-") or len(parts) == 1 or parts[0] in flags:
        return arg
    name, value = parts
    return "<redacted>" if any(at in value for at in AT_SIGNS) else name


_NAME_END = re.compile(r"[=\s]")


def _names_a_flag(arg: str, flags: Set[str]) -> bool:
    """Whether the argument is one of the ``flags``, or one given its value after an ``=``."""
    return _NAME_END.split(arg, maxsplit=1)[0] in flags


def _without_passwords(message: str, given: Sequence[str] = (), flags: Set[str] = frozenset()) -> str:
    """The message with what may be a URL's user:password@ redacted: argparse echoes what was typed
    (--registry_url=https://user:pw@…, a URL left without its flag, a one-string "--flag URL" of a
    manifest), whole, as a value alone, or a part of it, as it stands or escaped as repr() writes it,
    and goes to the pod's log.

    What precedes the last ``@`` of an argument is taken for user information (`_userinfo`: but one of
    the ``flags`` and its ``=``). An echo of any part of it ends right before that ``@``, so before each
    ``@`` of the message the longest end of any argument's user information, as typed or escaped, is
    redacted, however the message quotes, splits or joins the arguments. Then each word, for an ``@``
    no argument gave. A full-width or small at sign counts as an ``@`` (`AT_SIGNS`), and is shown as
    one."""
    message = message.translate(_AS_AT)
    message = _echoes_redacted(message, [arg.translate(_AS_AT) for arg in given], flags)
    return " ".join(word if "<redacted>@" in word else _redacted(word, flags) for word in message.split(" "))


_AS_AT = str.maketrans(dict.fromkeys(AT_SIGNS, "@"))


def _echoes_redacted(message: str, given: Sequence[str], flags: Set[str]) -> str:
    """The message with the longest end of any argument's user information before each ``@``
    redacted (`_without_passwords`), or more where finding it would take more than linear work."""
    pieces, shown = [], 0
    for begin, end in _redacted_spans(message, given, flags):
        pieces += [message[shown:begin], "<redacted>"]
        shown = end
    return "".join([*pieces, message[shown:]])


def _redacted_spans(
    message: str, given: Sequence[str], flags: Set[str] = frozenset()
) -> list[tuple[int, int]]:
    """Where `_echoes_redacted` redacts, from left to right, none overlapping."""
    forms = {form for arg in given for form in escaped_forms(_userinfo(arg, flags)) if form}
    spans = _echo_spans(message, forms, _WORK_PER_CHARACTER * len(message) + _WORK_ALWAYS)
    if spans is None:
        spans = _runs_of_form_characters(message, forms)
    return _merged(spans)


# The characters `_echo_spans` may compare, per character of the message and at least: twenty URLs
# with a user and an '@' in their password, echoed in one line, need a tenth of it. Many distinct
# long arguments full of '@'s, or sharing a long end, need work that grows as their number times
# their length (review r6cfg L1, L2: 0.3 MB of them took 86 s); past the bound the coarser rule of
# `_runs_of_form_characters` is taken, which reads the message once.
_WORK_PER_CHARACTER = 2
_WORK_ALWAYS = 10_000


def _echo_spans(message: str, forms: set[str], work: int) -> list[tuple[int, int]] | None:
    """Before each ``@`` of the message, the span of the longest end of a form, or None when that
    takes more than ``work`` characters compared."""
    longest_first = sorted(forms, key=len, reverse=True)
    spans: list[tuple[int, int]] = []
    covered = len(message)  # where the leftmost span found so far begins
    # From the right, so that an '@' inside a span already found (an argument's user information
    # holding '@'s) is not scanned again: each scan then reads each character about once, and a
    # 128 KiB argument of '@'s is not quadratic (review r4cfg L1).
    at = message.rfind("@")
    while at >= 0:
        if at <= covered:  # (at a span's first character, what precedes it is not redacted yet)
            ends = [_shared_end(message, at, form) for form in forms]
            work -= len(ends) + sum(ends)
            longest = max(ends, default=0)
            if longest:
                spans.append((at - longest, at))
            covered = at - longest
        elif covered:
            # Inside the span: a form longer than the span's part before this '@' may reach further left
            # (review r5cfg L2: the span "ec@host X" before "@y", another argument's "PW:sec" before the
            # "@host" in it). That part is taken as matching, not read again: at worst a few characters
            # more are redacted. Each '@' still tries every longer form (the work bound's reason).
            inside, before, reach = at - covered, message[covered - 1], 0
            for form in longest_first:
                if len(form) <= inside:
                    break
                work -= 1
                if form[-1 - inside] == before:
                    end = _shared_end(message, covered, form, inside)
                    work -= end
                    reach = max(reach, end)
            if reach:
                spans.append((covered - reach, covered))
                covered -= reach
        if work < 0:
            return None
        at = message.rfind("@", 0, at)
    return spans


def _runs_of_form_characters(message: str, forms: set[str]) -> list[tuple[int, int]]:
    """Before each ``@`` of the message, the span of the longest run of characters each found in a
    form. A form's end is such a run, so this never redacts less than `_echo_spans`, and it reads the
    message once; it is coarser (a user's name beside a URL whose password holds its letters is
    redacted too), and only taken for argument lists no one types."""
    characters = {char for form in forms for char in form}
    spans = []
    run = 0  # where the run of form characters up to here begins
    for index, char in enumerate(message):
        if char == "@" and run < index:
            spans.append((run, index))
        if char not in characters:
            run = index + 1
    return spans


def _userinfo(arg: str, flags: Set[str] = frozenset()) -> str:
    """All of an argument before its last ``@``, but one of the flags with its ``=``
    (``--registry-url=``) and an http(s) scheme after either; empty without an ``@``."""
    at = arg.rfind("@")
    if at < 0:
        return ""
    value_start = _value_start(arg, flags)
    return arg[value_start + userinfo_span(arg[value_start:])[0] : at]


def _value_start(arg: str, flags: Set[str]) -> int:
    """Where the value of a ``--flag=value`` argument starts, when the flag is one of ``flags``; else 0.

    Only a flag the parser has: a name that merely looks like one may end in a password glued to it
    (``--registry-urlPW=X@host``, its password ``PW=X``), which showing the name would show (review
    r4cfg N4)."""
    name, equals, _ = arg.partition("=")
    return len(name) + 1 if equals and name in flags else 0


def _shared_end(message: str, at: int, form: str, skip: int = 0) -> int:
    """The length of the longest end of ``form``, less its last ``skip`` characters, that the message
    has right before ``at``: their common end, read backwards to the first difference."""
    length = 0
    limit = min(len(form) - skip, at)
    while length < limit and message[at - 1 - length] == form[-1 - skip - length]:
        length += 1
    return length


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for begin, end in sorted(spans):
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((begin, end))
    return merged


def _redacted(word: str, flags: Set[str]) -> str:
    """The word with the user information of its value redacted, when it has an ``@``."""
    if "@" not in word:
        return word
    value_start = _value_start(word, flags)
    return word[:value_start] + without_userinfo(word[value_start:])


class _Help(argparse.HelpFormatter):
    """Every flag's default in --help, as Kubernetes components show it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "(default" in text or default is None or default is False or not action.option_strings:
            return text
        if isinstance(default, tuple | list):
            default = ",".join(str(v) for v in default)
        if default == "" or default == argparse.SUPPRESS:
            return text
        return f"{text} (default {default})"


class _GoBool(argparse.Action):
    """`--flag`, `--flag=true` and `--flag=false`, as Go's flag package spells booleans."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("metavar", "true|false")
        super().__init__(option_strings, dest, nargs="?", const=True, type=_lenient(_bool), **kwargs)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        setattr(namespace, self.dest, values)


class _StandsFor(argparse.Action):
    """A deprecated spelling that sets the flag it stands for, where it stands among the flags: given
    with the new spelling, the last one given wins, as with pflag's deprecated flags, which are bound to
    the same variable (the old spelling won whatever the order: r1cli L2). Its own dest records that it
    was given, for the warning, or its value when it did not convert, so the refusal names it."""

    def __init__(self, option_strings: list[str], dest: str, target: str, **kwargs: Any) -> None:
        self.target = target
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        value = self.const if self.nargs == 0 else values
        setattr(namespace, self.dest, value)
        if not isinstance(value, Invalid):
            setattr(namespace, self.target, value)


class _ShortVerbosity(_StandsFor):
    """`-v`: klog's shorthand of --v (`-v=4`, `-v4`, `-v 4`), as pflag takes it in every Kubernetes
    component (refused as an argparse switch: r1cli L5); alone, the deprecated switch meaning
    --v=REQUEST_LOG_VERBOSITY, which alone is warned of."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        if values is None:
            super().__call__(parser, namespace, REQUEST_LOG_VERBOSITY, option)
        else:
            setattr(namespace, self.target, values)


_DEPRECATED: dict[str, str] = {}


def _deprecated(group: Any, *names: str, instead: str, **kwargs: Any) -> None:
    """A flag kept working under its old spelling; using it prints Kubernetes' deprecation warning."""
    dest = "deprecated_" + names[-1].lstrip("-").replace("-", "_")
    _DEPRECATED[dest] = f"Flag {names[0]} has been deprecated, use {instead} instead"
    group.add_argument(*names, dest=dest, help=argparse.SUPPRESS, default=None, **kwargs)


def _old_spelling(group: Any, name: str, *, target: str, instead: str, **kwargs: Any) -> None:
    """A deprecated spelling of the flag whose dest is ``target``: see _StandsFor."""
    _deprecated(
        group, name, instead=instead, action=kwargs.pop("action", _StandsFor), target=target, **kwargs
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="payloadtags", description=DESCRIPTION, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"payloadtags {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="run the aggregated API server",
        formatter_class=_Help,
        allow_abbrev=False,
        usage="payloadtags serve --registry-url=URL [flags]",
        description="Run the payloadtags aggregated API server. Durations: Go syntax (500ms, 10s, 1m30s).",
    )
    serving = serve.add_argument_group("secure serving")
    serving.add_argument(
        "--bind-address",
        type=_lenient(_ip),
        default="0.0.0.0",
        help="address to listen on; 0.0.0.0 or :: listen on every address of both IP families",
    )
    serving.add_argument("--secure-port", type=_lenient(_port), default=8443, help="HTTPS port")
    serving.add_argument("--tls-cert-file", help="serving certificate (PEM, may include the chain)")
    serving.add_argument("--tls-private-key-file", help="private key of --tls-cert-file")
    serving.add_argument(
        "--cert-dir",
        default="",
        help="without --tls-cert-file: directory where a self-signed pair (apiserver.crt, apiserver.key) is "
        "written at first start and reused after (empty: generated in memory at every start)",
    )
    serving.add_argument(
        "--tls-min-version",
        type=_lenient(_one_of(TLS_VERSIONS)),
        default="VersionTLS12",
        metavar="|".join(TLS_VERSIONS),
        help="lowest TLS version accepted",
    )
    serving.add_argument(
        "--tls-cipher-suites",
        type=_lenient(_cipher_suites),
        default=(),
        help="TLS 1.2 cipher suites allowed, comma-separated IANA names (empty: the ECDHE suites with "
        "AES-GCM or CHACHA20; TLS 1.3 suites are not configurable, and naming only those leaves TLS 1.2 "
        "with no suite, so it is refused)",
    )
    serving.add_argument(
        "--cert-reload-period",
        type=_lenient(_positive_duration),
        default="10s",
        help="how often certificate and CA files are checked for rotation",
    )
    auth = serve.add_argument_group("authentication and authorization")
    auth.add_argument(
        "--client-ca-file", help="CA bundle that signs client certificates (user = CN, groups = O)"
    )
    auth.add_argument(
        "--requestheader-client-ca-file",
        help="CA bundle of the front proxy (kube-apiserver's aggregator); absent: read from ConfigMap "
        "kube-system/extension-apiserver-authentication when a cluster API is configured",
    )
    auth.add_argument(
        "--requestheader-allowed-names",
        type=_lenient(_allowed_names),
        default=(),
        help="front-proxy certificate CNs to accept, comma-separated (empty: any CN the CA signed)",
    )
    auth.add_argument(
        "--requestheader-username-headers", type=_list, default=("X-Remote-User",), help="user name headers"
    )
    auth.add_argument(
        "--requestheader-group-headers", type=_list, default=("X-Remote-Group",), help="group headers"
    )
    auth.add_argument(
        "--requestheader-extra-headers-prefix",
        type=_list,
        default=("X-Remote-Extra-",),
        help="prefixes of user extra headers",
    )
    auth.add_argument("--requestheader-uid-headers", type=_list, default=(), help="user UID headers")
    auth.add_argument(
        "--authentication-token-webhook-cache-ttl",
        type=_lenient(_duration),
        default="10s",
        help="how long a successful TokenReview is cached",
    )
    auth.add_argument(
        "--authentication-token-webhook-failure-cache-ttl",
        type=_lenient(_duration),
        default="10s",
        help="how long a rejected token is cached",
    )
    auth.add_argument(
        "--kubeconfig", help="kubeconfig of the cluster API (default: in-cluster config when in a pod)"
    )
    auth.add_argument(
        "--authorization-mode",
        type=_lenient(_one_of(AUTHORIZATION_MODES)),
        metavar="|".join(AUTHORIZATION_MODES),
        help="RBAC (default with a cluster API) or AlwaysAllow (required without one)",
    )
    auth.add_argument(
        "--authorization-always-allow-paths",
        type=_lenient(_paths),
        default=DEFAULT_ALWAYS_ALLOW_PATHS,
        help="paths served to anyone, without authentication or authorization, comma-separated",
    )
    registry = serve.add_argument_group("registry")
    registry.add_argument(
        "--registry-url",
        required=True,
        help="registry API endpoint, scheme and host only, e.g. https://registry:5000",
    )
    registry.add_argument(
        "--registry-host",
        help="host[:port] shown in image addresses (default: host[:port] of --registry-url)",
    )
    registry.add_argument(
        "--registry-ca-file",
        help="CA bundle for an https:// registry, also for an https:// token service and redirects "
        "(blob storage) with an http:// one (default: system CAs)",
    )
    registry.add_argument(
        "--registry-username-file", help=f"file holding the registry user name (or ${USERNAME_ENV})"
    )
    registry.add_argument(
        "--registry-password-file",
        help=f"file holding the registry user's password or token (or ${PASSWORD_ENV}); "
        f"without a user name it is sent with an empty one (Basic ':token')",
    )
    registry.add_argument(
        "--registry-timeout",
        type=_lenient(_positive_duration),
        default="10s",
        help="how long one registry request may take",
    )
    registry.add_argument(
        "--registry-concurrency",
        type=_lenient(_count),
        default=16,
        help="registry requests in flight at once, for the whole server (the tag lists every list reads, "
        "the connections of the pool); requests beyond it wait their turn in arrival order",
    )
    registry.add_argument(
        "--delete-concurrency",
        type=_lenient(_count),
        default=4,
        help="tags deleted at once by deletecollection",
    )
    registry.add_argument(
        "--registry-events-token-file",
        help="file holding the bearer token the registry's notifications send to POST /registry/events; "
        "enables the repository index that namespace lists use instead of seeking the catalog",
    )
    registry.add_argument(
        "--registry-index-refresh-period",
        type=_lenient(_positive_duration),
        default="5m",
        help="how often the repository index rereads the whole catalog to repair missed events",
    )
    cleanup = serve.add_argument_group("namespace cleanup (with a cluster API)")
    cleanup.add_argument(
        "--namespace-cleanup",
        action=_GoBool,
        default=True,
        help="delete a namespace's tags and manifests from the registry when it is deleted (default true)",
    )
    _old_spelling(
        cleanup,
        "--no-namespace-cleanup",
        target="namespace_cleanup",
        instead="--namespace-cleanup=false",
        nargs=0,
        const=False,
    )
    cleanup.add_argument(
        "--namespace-sweep-period",
        type=_lenient(_duration),
        default="1h",
        help="how often to delete content whose namespace does not exist (0: only when elected)",
    )
    cleanup.add_argument(
        "--namespace-sweep-dry-run",
        action=_GoBool,
        default=False,
        help="the sweep only reports what it would delete (default false)",
    )
    cleanup.add_argument(
        "--namespace-cleanup-concurrency",
        type=_lenient(_count),
        default=4,
        help="registry requests in flight per namespace",
    )
    cleanup.add_argument(
        "--namespace-cleanup-workers", type=_lenient(_count), default=2, help="namespaces cleaned at once"
    )
    election = serve.add_argument_group("leader election (with a cluster API)")
    election.add_argument(
        "--leader-elect",
        action=_GoBool,
        default=True,
        help="elect one replica (a coordination.k8s.io Lease) to run the cleanup (default true)",
    )
    _old_spelling(
        election,
        "--no-leader-elect",
        target="leader_elect",
        instead="--leader-elect=false",
        nargs=0,
        const=False,
    )
    election.add_argument(
        "--leader-elect-lease-duration",
        type=_lenient(_positive_duration),
        default="15s",
        help="how long non-leaders wait before taking over an unrenewed lease",
    )
    election.add_argument(
        "--leader-elect-renew-deadline",
        type=_lenient(_positive_duration),
        default="10s",
        help="how long the leader retries renewing before it steps down",
    )
    election.add_argument(
        "--leader-elect-retry-period",
        type=_lenient(_positive_duration),
        default="2s",
        help="how long to wait between attempts to acquire or renew",
    )
    election.add_argument(
        "--leader-elect-resource-name", default="payloadtags-cleanup", help="the Lease's name"
    )
    election.add_argument(
        "--leader-elect-resource-namespace",
        help="the Lease's namespace (default: the pod's namespace, else $POD_NAMESPACE, else the "
        "kubeconfig context's namespace, else default)",
    )
    ops = serve.add_argument_group("operations")
    _deprecated(
        ops,
        "--metrics-allowed-groups",
        instead="RBAC (get on the non-resource URL /metrics)",
        type=_list,
    )
    ops.add_argument(
        "--metrics-anonymous",
        action=_GoBool,
        default=False,
        help="serve /metrics without authentication or authorization (default false); otherwise RBAC "
        "decides: get on the non-resource URL /metrics",
    )
    ops.add_argument(
        "--shutdown-delay-duration",
        type=_lenient(_duration),
        default="0s",
        help="after SIGTERM, keep serving (with readyz failing) this long before closing the listener",
    )
    ops.add_argument(
        "--shutdown-grace-period",
        type=_lenient(_duration),
        default="30s",
        help="after closing the listener, how long requests in flight may take to finish",
    )
    ops.add_argument(
        "--v",
        dest="verbosity",
        type=_lenient(_level),
        default=0,
        metavar="N",
        help=f"log verbosity; {REQUEST_LOG_VERBOSITY} or more logs every request",
    )
    ops.add_argument(
        "--logging-format",
        type=_lenient(_one_of(LOGGING_FORMATS)),
        default="text",
        metavar="|".join(LOGGING_FORMATS),
        help="log output: text, or json (one object per line, as klog's JSON)",
    )
    _old_spelling(
        ops,
        "-v",
        target="verbosity",
        instead=f"--v={REQUEST_LOG_VERBOSITY}",
        action=_ShortVerbosity,
        nargs="?",
        type=_lenient(_level),
        metavar="N",
    )
    _old_spelling(
        ops,
        "--verbose",
        target="verbosity",
        instead=f"--v={REQUEST_LOG_VERBOSITY}",
        nargs=0,
        const=REQUEST_LOG_VERBOSITY,
    )
    _old_spelling(
        ops,
        "--log-format",
        target="logging_format",
        instead="--logging-format",
        type=_lenient(_one_of(LOGGING_FORMATS)),
    )
    # Bounds against hostile or broken clients (docs/hardening.md).
    limits = serve.add_argument_group("request limits")
    limits.add_argument(
        "--request-timeout",
        type=_lenient(_positive_duration),
        default="60s",
        help="deadline of every request; past it the work is cancelled and 504 is answered",
    )
    limits.add_argument(
        "--max-requests-inflight",
        type=_lenient(_count),
        default=400,
        help="requests served at once (health probes and watches aside); more get 429 with Retry-After",
    )
    limits.add_argument(
        "--max-connections",
        type=_lenient(_count),
        default=1000,
        help="open client connections; at the limit a new one evicts the oldest idle or slow one",
    )
    limits.add_argument(
        "--max-connections-per-client",
        type=_lenient(_count),
        default=100,
        help="open connections from one source address (the verified front proxy's aside); more are "
        "closed before their TLS handshake",
    )
    limits.add_argument(
        "--handshake-rate-per-client",
        type=_lenient(_positive_number),
        default="20",  # read as the flag is (20.0); so written, the help says 20, as the docs do
        help="TLS handshakes (the front proxy's aside) and 401 answers one source address may cause a "
        "second; beyond it its handshakes and requests wait",
    )
    limits.add_argument(
        "--handshake-burst-per-client",
        type=_lenient(_count),
        default=40,
        help="how much of that work one source address may cause at once",
    )
    limits.add_argument(
        "--max-request-body-bytes",
        type=_lenient(_count),
        default=3 << 20,
        help="largest request body; a larger one gets 413 before it is read",
    )
    watch = serve.add_argument_group("watch (docs/watch.md)")
    watch.add_argument(
        "--max-watches",
        type=_lenient(_count),
        default=None,  # 750 (WatchLimits): None tells a lowered default from a lowered flag
        help="watch streams open at once on this replica; more get 429 (at most three quarters of "
        "--max-connections, since each holds a connection) (default 750)",
    )
    watch.add_argument(
        "--max-watches-per-user",
        type=_lenient(_count),
        default=None,  # 250 (WatchLimits)
        help="watch streams one user may hold open at once on this replica; more get 429 (at most a "
        "third of --max-watches) (default 250)",
    )
    watch.add_argument(
        "--watch-resync-period",
        type=_lenient(_positive_duration),
        default="30s",
        help="how often each watched scope (a namespace, or all) is reread and diffed, whatever the "
        "number of its watchers; registry notifications bring changes sooner",
    )
    watch.add_argument(
        "--watch-scope-idle-timeout",
        type=_lenient(_positive_duration),
        default="2m",
        help="how long a scope keeps being reread after its last list or watch; a watch from a "
        "resourceVersion older than the scope's first reread gets 410 and relists",
    )
    watch.add_argument(
        "--watch-history",
        type=_lenient(_count),
        default=10000,
        help="events kept per watched scope for watches that resume from a resourceVersion",
    )
    watch.add_argument(
        "--watch-send-buffer",
        type=_lenient(_count),
        default=1000,
        help="events one watch may have waiting for a slow client before it is disconnected",
    )
    watch.add_argument(
        "--watch-resume-rules",
        type=_lenient(_count),
        default=100000,
        help="(user, namespace) pairs whose access rules are kept for watches that resume after their "
        "stream ended (about 530 bytes the first of a user and scope, under 100 each further namespace); "
        "past it the least recently used user is forgotten and relists once at her next resume (a user's "
        "own scope's namespaces are always kept)",
    )
    return parser


# The watch limits held lower at start (limits.watch_limits), said at start as a warning when given.
_HELD_WATCH_FLAGS = ("max_watches", "max_watches_per_user")


def _watch_limits(args: argparse.Namespace) -> WatchLimits:
    given = {name: getattr(args, name) for name in _HELD_WATCH_FLAGS if getattr(args, name) is not None}
    return WatchLimits(
        **given,
        resync_period=args.watch_resync_period,
        idle_scope_ttl=args.watch_scope_idle_timeout,
        history=args.watch_history,
        send_buffer=args.watch_send_buffer,
        resume_rules=args.watch_resume_rules,
    )


def _limits(args: argparse.Namespace) -> HttpLimits:
    return HttpLimits(
        max_request_body_bytes=args.max_request_body_bytes,
        max_requests_inflight=args.max_requests_inflight,
        max_connections=args.max_connections,
        request_timeout=args.request_timeout,
        max_connections_per_client=args.max_connections_per_client,
        handshake_rate_per_client=args.handshake_rate_per_client,
        handshake_burst_per_client=args.handshake_burst_per_client,
    )


def _serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["serve"]  # type: ignore[no-any-return]
    raise AssertionError("no serve command")


def deprecation_warnings(args: argparse.Namespace) -> list[str]:
    return [message for dest, message in _DEPRECATED.items() if getattr(args, dest, None) is not None]


# -- validation ------------------------------------------------------------------------------------


def _flag_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {
        action.dest: max(action.option_strings, key=len)
        for action in parser._actions
        if action.option_strings
    }


def _secret(file_path: str | None, env: str, flag: str, errors: list[str]) -> str | None:
    if file_path:
        try:
            # Empty is unset: the Secret of a registry without authentication has empty entries.
            return read_file(file_path).decode("utf-8").strip() or None
        except OSError as error:
            errors.append(f"{flag} {file_path}: cannot read: {error.strerror}")
            return None
        except UnicodeDecodeError:
            # Its own words name a byte of the secret and its position: not said.
            errors.append(f"{flag} {file_path}: cannot read: it is not UTF-8 text")
            return None
    value = os.environ.get(env)
    if value and not utf8_encodable(value):
        # os.environ holds such bytes as lone surrogates, which the Authorization header cannot encode:
        # it failed at the registry's first challenge, in a traceback, on every probe.
        errors.append(f"${env} is not UTF-8 text")
        return None
    return value or None


def _check_registry_url(text: str, errors: list[str]) -> str:
    url = text.strip().rstrip("/")
    if has_userinfo(url):
        # These lines go to the pod's log: the URL is shown with all before its last '@' redacted, and
        # nothing parsed from it is: with a password in it, where the host begins is a guess (a password
        # may hold '/', '?', '#' or '['), and a path, port or urlsplit's own error could be a piece of it.
        errors.append(
            f"--registry-url {without_userinfo(url)!r} must not carry credentials (user:password@ before "
            f"the host); use {CREDENTIAL_FLAGS}"
            if at_in_authority(url)
            else f"--registry-url {without_userinfo(url)!r} has an '@' after its host, refused since it may "
            "end a password that holds '/', '?' or '#' (user:password@): give the registry's root, scheme "
            f"and host[:port], and its credentials with {CREDENTIAL_FLAGS}"
        )
        return url
    try:
        parts = urlsplit(url)
    except ValueError as error:  # e.g. an unclosed IPv6 bracket
        errors.append(f"--registry-url {text!r}: {error}")
        return url
    if parts.scheme not in ("http", "https") or not parts.netloc:
        errors.append(f"--registry-url must be an http:// or https:// URL, not {text!r}")
        return url
    if parts.query or parts.fragment:
        errors.append(f"--registry-url {text!r} must not have a query or fragment")
    if parts.path in ("/v2", "/v2/") or parts.path.endswith("/v2"):
        errors.append(
            f"--registry-url {text!r} ends with /v2: give the registry's root, "
            f"{parts.scheme}://{parts.netloc} (payloadtags adds /v2/ itself)"
        )
    elif parts.path:
        errors.append(
            f"--registry-url {text!r} has a path {parts.path!r}: the registry API is served at /v2/ on the "
            f"host's root, so give {parts.scheme}://{parts.netloc}"
        )
    problem = address_problem(parts)
    if problem:
        errors.append(f"--registry-url {text!r}: {problem}")
    # A scheme is case-insensitive (RFC 3986 3.1) and the check above took HTTP:// (urlsplit lower-cases
    # what it returns), but the registry client requests lower-case schemes only: as typed, every request
    # failed, blamed on "a URL the registry named" (r1cli F1).
    scheme, colon, rest = url.partition(":")
    url = scheme.lower() + colon + rest
    if not url.isascii() and not problem:
        # A host name outside ASCII (an IDN) passed the check above as its IDNA form, which is what DNS
        # and TLS know it by; as typed, every request failed as one for "a URL the registry named"
        # (review r3latedelete N2).
        host = (parts.hostname or "").encode("idna").decode("ascii")
        url = f"{scheme.lower()}://{host}" + (f":{parts.port}" if parts.port is not None else "")
    return url


def _check_registry_host(text: str | None, errors: list[str]) -> None:
    if not text:
        return  # unset or empty (as the base manifests pass it): the URL's host[:port]
    if has_userinfo(text):
        # Shown redacted and not parsed, as --registry-url: a piece of it could be a password.
        errors.append(
            f"--registry-host {without_userinfo(text)!r} must be host[:port], without user:password@"
        )
    elif "://" in text:
        try:
            example = urlsplit(text).netloc
        except ValueError:
            example = ""
        errors.append(
            f"--registry-host {text!r} must be host[:port] without a scheme, e.g. "
            f"{example or 'registry.example.com'}"
        )
    elif any(c.isspace() for c in text) or text.startswith("/"):
        errors.append(f"--registry-host {text!r} must be host[:port], e.g. registry.example.com")
    else:
        try:
            problem = address_problem(urlsplit("//" + text))
        except ValueError as error:
            problem = str(error)
        if problem:
            errors.append(f"--registry-host {text!r}: {problem}")


def settings_from(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> Settings:
    """Validate the parsed flags as a whole: every mistake is collected, then all are raised at once."""
    flags = _flag_of(_serve_parser(parser or _parser()))
    errors: list[str] = []
    for dest, value in vars(args).items():
        if isinstance(value, Invalid):
            flag = flags.get(dest, "--" + dest.removeprefix("deprecated_").replace("_", "-"))
            # A value meant for another flag may be a URL with a password (a manifest that lost one).
            errors.append(_without_passwords(f"{flag}={value.text}: {value.reason}", (value.text,)))
    return _settings(args, errors)


def _settings(args: argparse.Namespace, errors: list[str]) -> Settings:
    url = _check_registry_url(args.registry_url, errors)
    _check_registry_host(args.registry_host, errors)
    if bool(args.tls_cert_file) != bool(args.tls_private_key_file):
        errors.append("--tls-cert-file and --tls-private-key-file go together")
    if args.tls_cert_file and args.cert_dir:
        errors.append("--cert-dir is for the self-signed pair: give it or --tls-cert-file, not both")
    # The --leader-elect-* durations against each other: at start (startup.complete), only when a Lease
    # is requested.
    # Read here, as the registry settings hold the values; a file that cannot be read is a file problem,
    # reported with those of the file round (main), not instead of them.
    unreadable: list[str] = []
    username = _secret(args.registry_username_file, USERNAME_ENV, "--registry-username-file", unreadable)
    password = _secret(args.registry_password_file, PASSWORD_ENV, "--registry-password-file", unreadable)
    if password and not username:
        # A token alone (the Secret's `username` empty or absent): Basic ":token", as before a1b8178;
        # token-only registries accept it, and refusing it broke such installs (review-startup2 F2).
        username = ""
    if errors:
        raise UsageError(*errors, *unreadable)
    # A deprecated spelling has set the flag it stands for (_StandsFor).
    namespace_cleanup = args.namespace_cleanup
    leader_elect = args.leader_elect
    verbosity = args.verbosity
    logging_format = args.logging_format
    registry = RegistrySettings(
        url=url,
        username=username,
        password=password,
        ca_file=args.registry_ca_file,
        timeout=args.registry_timeout,
        max_connections=args.registry_concurrency,
    )
    settings = Settings(
        registry=registry,
        registry_host=args.registry_host or urlsplit(url).netloc,
        bind_address=args.bind_address,
        secure_port=args.secure_port,
        tls_cert_file=args.tls_cert_file,
        tls_private_key_file=args.tls_private_key_file,
        cert_dir=args.cert_dir or None,
        tls_min_version=args.tls_min_version,
        tls_cipher_suites=args.tls_cipher_suites,
        client_ca_file=args.client_ca_file,
        requestheader_client_ca_file=args.requestheader_client_ca_file,
        requestheader_allowed_names=args.requestheader_allowed_names,
        requestheader_username_headers=args.requestheader_username_headers,
        requestheader_group_headers=args.requestheader_group_headers,
        requestheader_extra_headers_prefix=args.requestheader_extra_headers_prefix,
        requestheader_uid_headers=args.requestheader_uid_headers,
        token_cache_ttl=args.authentication_token_webhook_cache_ttl,
        token_failure_cache_ttl=args.authentication_token_webhook_failure_cache_ttl,
        kubeconfig=args.kubeconfig,
        authorization_mode=args.authorization_mode,
        always_allow_paths=args.authorization_always_allow_paths,
        registry_concurrency=args.registry_concurrency,
        delete_concurrency=args.delete_concurrency,
        registry_events_token_file=args.registry_events_token_file,
        registry_index_refresh_period=args.registry_index_refresh_period,
        metrics_allowed_groups=args.deprecated_metrics_allowed_groups or (),
        metrics_anonymous=args.metrics_anonymous,
        cert_reload_period=args.cert_reload_period,
        shutdown_delay=args.shutdown_delay_duration,
        shutdown_grace_period=args.shutdown_grace_period,
        log_format=logging_format,
        verbosity=verbosity,
        namespace_cleanup=namespace_cleanup,
        namespace_sweep_period=args.namespace_sweep_period,
        namespace_sweep_dry_run=args.namespace_sweep_dry_run,
        namespace_cleanup_concurrency=args.namespace_cleanup_concurrency,
        namespace_cleanup_workers=args.namespace_cleanup_workers,
        leader_elect=leader_elect,
        leader_elect_lease_duration=args.leader_elect_lease_duration,
        leader_elect_renew_deadline=args.leader_elect_renew_deadline,
        leader_elect_retry_period=args.leader_elect_retry_period,
        leader_elect_resource_name=args.leader_elect_resource_name,
        leader_elect_resource_namespace=args.leader_elect_resource_namespace,
        http=_limits(args),
        watch=_watch_limits(args),
        watch_flags=frozenset(name for name in _HELD_WATCH_FLAGS if getattr(args, name) is not None),
    )
    if unreadable:
        raise UnreadableCredentials(settings, *unreadable)
    return settings


def _report(errors: Sequence[str], args: argparse.Namespace | None = None) -> int:
    # A URL given to a file flag (a manifest that lost a value) is quoted as a path that cannot be
    # read: all before its last '@' is redacted (review r4cfg L2). Only where a message echoes a value
    # whole, as typed, escaped or made a path of (pathlib's "https:/"), never any end of it: a
    # kubeconfig user's name that ends as the folder before an '@' does (/home/alice@corp/kc, a user
    # "alice@corp") is shown (review r5cfg L3). The longest first, so a shorter one inside it is gone.
    # (No refusal prints a value normalised otherwise: os.path.normpath's, which differs from pathlib's
    # only for a "..", is printed by none, review r6cfg N1.) And the folder a kubeconfig's relative
    # files are joined to (its tokenFile, client-key, certificate-authority): a refusal names them by
    # the joined path, in which neither form above is found (review r11misc F1).
    values = [getattr(args, dest) or "" for dest in _FILE_FLAGS] if args is not None else []
    paths = [path for value in values if has_userinfo(value) for path in file_flag_forms(value)]
    for error in errors:
        print(f"payloadtags: {paths_redacted(error, paths)}", file=sys.stderr)
    return 1


# The flags whose value is a file or folder read at start.
_FILE_FLAGS = (
    "tls_cert_file",
    "tls_private_key_file",
    "cert_dir",
    "client_ca_file",
    "requestheader_client_ca_file",
    "kubeconfig",
    "registry_ca_file",
    "registry_username_file",
    "registry_password_file",
    "registry_events_token_file",
)


def _stopped_during_checks(settings: Settings, signal_name: str) -> int:
    """The log line of a stop signal that ended the start-up checks, in the log's format; 0, as a
    graceful stop exits."""
    from twisted.logger import Logger

    from payloadtags.logs import begin_logging

    begin_logging(settings.log_format, settings.verbosity)
    Logger(namespace="payloadtags.lifecycle").info(
        "received {signal} during the start-up checks: stopped them; exiting without serving",
        signal=signal_name,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for warning in deprecation_warnings(args):
        print(warning, file=sys.stderr)
    unreadable: list[str] = []
    try:
        settings = settings_from(args, parser)
    except UnreadableCredentials as error:
        settings, unreadable = error.settings, error.errors
    except UsageError as error:
        return _report(error.errors, args)
    # Imported late: `--help` and flag mistakes should not pay for Twisted.
    from payloadtags.lifecycle import StoppedDuringChecks, StopSignals
    from payloadtags.startup import ConfigurationError, complete

    # Before start-up's checks, which may wait a minute on a kubeconfig's credential plugin: a signal
    # ends them there, and the process exits as a stop while serving does (0).
    signals = StopSignals()
    signals.install()
    try:
        with signals.interrupting():
            completed = complete(settings)
    except StoppedDuringChecks as stopped:
        return _stopped_during_checks(settings, stopped.signal_name)
    except ConfigurationError as error:
        return _report([*unreadable, *error.errors], args)
    if unreadable:
        return _report(unreadable, args)
    from payloadtags.server import serve

    return serve(settings, completed, signals)


if __name__ == "__main__":
    sys.exit(main())
