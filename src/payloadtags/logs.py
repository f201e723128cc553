"""Log output: human-readable text, or one JSON object per line for log collectors (--log-format=json)."""

from __future__ import annotations

import datetime
import json
import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
    textFileLogObserver,
)
from zope.interface import provider

FORMATS = ("text", "json")


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def json_observer(out: IO[str]) -> ILogObserver:
    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        record: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(event.get("log_time", 0), datetime.UTC).isoformat(),
            "level": getattr(event.get("log_level"), "name", "info"),
            "logger": event.get("log_namespace", ""),
            "msg": formatEvent(event),
        }
        for key, value in event.items():
            if not key.startswith("log_") and key not in ("format", "message", "time", "system", "isError"):
                record.setdefault(key, _plain(value))
        failure = event.get("log_failure")
        if failure is not None:
            record["error"] = failure.getTraceback()
        out.write(json.dumps(record, separators=(",", ":")) + "\n")
        out.flush()

    return observe


def begin_logging(log_format: str = "text", verbose: bool = False, out: IO[str] = sys.stderr) -> None:
    observer = json_observer(out) if log_format == "json" else textFileLogObserver(out)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug if verbose else LogLevel.info)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])], redirectStandardIO=False)
