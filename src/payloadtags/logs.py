"""Log output: human-readable text, or one JSON object per line shaped like klog's JSON (--logging-format).

A JSON line holds ``ts`` (seconds since the epoch), ``msg``, ``v`` (the verbosity of an info line;
error lines have ``err`` instead), ``logger`` and the event's key/values, all named in lowerCamelCase
as Kubernetes' structured logging does. Twisted's factory and port start/stop chatter is dropped, and
no value is ever written as an object's repr (with its memory address).

Every text written, in either format, passes through the registry client's redaction first
(`registry.redaction.in_message`, never cut): an exception logged with its traceback
(``log.failure``, an unhandled error in a Deferred) carries its text as raised, which may quote what
the registry answered or the Authorization header a request was sent with, where a RegistryError's
message is redacted when made. One place for every call site that logs a failure, present and to come;
the traceback's lines are kept as they are, only a credential in them is replaced.

The standard library's `logging` (a dependency's: the kubernetes library's) is handed to the same log
once it has begun (`begin_logging`), so that its lines are written in the chosen format and redacted
too, not as plain text of their own to stderr.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    globalLogBeginner,
    timeFormatRFC3339,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from payloadtags.registry.redaction import ANYWHERE_LENGTH, in_message

FORMATS = ("text", "json")
# Verbosity from which debug events (one line per request) are written, as kube-apiserver's --v=3.
DEBUG_VERBOSITY = 3

_NOISE = re.compile(r"^(Starting|Stopping) factory|\bstarting on \d+$|^\(.*Port \d+ Closed\)$")
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")
_SKIPPED = frozenset(("format", "message", "time", "system", "isError", "failure", "why"))


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return _ADDRESS.sub("", str(value))


def _redacted(value: Any) -> Any:
    """``value`` as it is written: the credentials of every registry client alive replaced in each text
    in it (those `in_message` replaces: ANYWHERE_LENGTH characters or more, and any credential after
    Basic or Bearer), never cut (a traceback is read whole)."""
    if isinstance(value, str):
        # Shorter, it holds nothing `in_message` replaces: a line's many short values cost nothing.
        return in_message(value, limit=None) if len(value) >= ANYWHERE_LENGTH else value
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    return value


def text_line(event: dict[str, Any]) -> str | None:
    """The event as the text format writes it: Twisted's classic line (a failure's traceback after it),
    redacted."""
    line = formatEventAsClassicLogText(event, formatTime=lambda when: formatTime(when, timeFormatRFC3339))
    return None if line is None else _redacted(line)


@implementer(ILogFilterPredicate)
class _Quiet:
    """Drops Twisted's factory start/stop chatter."""

    def __call__(self, event: dict[str, Any]) -> PredicateResult:
        answer: PredicateResult = (
            PredicateResult.no if _NOISE.search(formatEvent(event)) else PredicateResult.maybe
        )
        return answer


def klog_record(event: dict[str, Any]) -> dict[str, Any]:
    """The event as the JSON format writes it, its texts redacted (the message, ``err``, the
    ``stacktrace`` of a failure, every value)."""
    level = event.get("log_level", LogLevel.info)
    record: dict[str, Any] = {"ts": round(float(event.get("log_time", 0.0)), 6)}
    record["msg"] = _ADDRESS.sub("", formatEvent(event))
    if level in (LogLevel.error, LogLevel.critical):
        failure = event.get("log_failure")
        error = event.get("error")
        record["err"] = (
            _plain(error) if error is not None else failure.getErrorMessage() if failure else record["msg"]
        )
        if failure is not None:
            record["stacktrace"] = failure.getTraceback()
    else:
        record["v"] = DEBUG_VERBOSITY if level == LogLevel.debug else 0
        if level == LogLevel.warn:
            record["level"] = "warning"
    record["logger"] = event.get("log_namespace", "")
    for key, value in event.items():
        if key.startswith("log_") or key in _SKIPPED or (key == "error" and "err" in record):
            continue
        record.setdefault(_camel(key), _plain(value))
    redacted: dict[str, Any] = _redacted(record)
    return redacted


@implementer(ILogObserver)
class _JsonObserver:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: dict[str, Any]) -> None:
        self.out.write(json.dumps(klog_record(event), separators=(",", ":"), ensure_ascii=False) + "\n")
        self.out.flush()


def json_observer(out: IO[str]) -> ILogObserver:
    return _JsonObserver(out)


def observer(log_format: str = "text", verbosity: int = 0, out: IO[str] = sys.stderr) -> ILogObserver:
    """What begin_logging installs: the format's observer behind the verbosity and noise filters."""
    inner = json_observer(out) if log_format == "json" else FileLogObserver(out, text_line)
    level = LogLevel.debug if verbosity >= DEBUG_VERBOSITY else LogLevel.info
    return FilteringLogObserver(inner, [LogLevelFilterPredicate(defaultLogLevel=level), _Quiet()])


# The standard library's levels from which each of Twisted's is meant, highest first.
_STDLIB_LEVELS = (
    (logging.CRITICAL, LogLevel.critical),
    (logging.ERROR, LogLevel.error),
    (logging.WARNING, LogLevel.warn),
    (logging.INFO, LogLevel.info),
)


class _ToTwisted(logging.Handler):
    """Hands the standard library's log records to Twisted's log, where the observer writes them: the
    record's logger names the line, its exception is written as a failure, with its traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = next((ours for floor, ours in _STDLIB_LEVELS if record.levelno >= floor), LogLevel.debug)
            fields: dict[str, Any] = {"log_text": record.getMessage()}
            if record.exc_info and record.exc_info[1] is not None:
                kind, error, trace = record.exc_info
                fields["log_failure"] = Failure(error, kind, trace)
            # The text as a field, never as the format: a '{' in it is no placeholder.
            Logger(namespace=record.name).emit(level, "{log_text}", **fields)
        except Exception:
            self.handleError(record)


_STDLIB = _ToTwisted()


def route_stdlib_logging() -> None:
    """Hand the standard library's log records to Twisted's log from now on (once). Its loggers' levels
    stay as they are (warnings and above, unless a library sets its own): what it wrote before, now
    in the log's format and redacted. Without it, Python prints them itself (``logging.lastResort``),
    plain text whatever --logging-format says."""
    root = logging.getLogger()
    if _STDLIB not in root.handlers:
        root.addHandler(_STDLIB)


def begin_logging(log_format: str = "text", verbosity: int = 0, out: IO[str] = sys.stderr) -> None:
    globalLogBeginner.beginLoggingTo([observer(log_format, verbosity, out)], redirectStandardIO=False)
    route_stdlib_logging()
