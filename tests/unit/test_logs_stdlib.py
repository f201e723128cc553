"""The standard library's log records (a dependency's, the kubernetes library's) are written by the log
the server installs, in its format and redacted, not by Python itself as plain text (review r2tbredact
N2)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from twisted.logger import capturedLogs

from payloadtags import logs
from payloadtags.registry.redaction import REDACTED, Redaction

PASSWORD = "S3cretRegPass-stdlib"


@pytest.fixture
def routed() -> Iterator[None]:
    logs.route_stdlib_logging()
    logs.route_stdlib_logging()  # once, however often asked
    try:
        yield
    finally:
        logging.getLogger().removeHandler(logs._STDLIB)


def _written(log_format: str, events: list[dict[str, object]]) -> str:
    out = io.StringIO()
    observer = logs.observer(log_format, out=out)
    for event in events:
        observer(event)
    return out.getvalue()


@pytest.mark.usefixtures("routed")
def test_a_standard_library_record_is_written_by_the_log_in_its_format_and_redacted() -> None:
    assert logging.getLogger().handlers.count(logs._STDLIB) == 1
    redaction = Redaction((PASSWORD,))
    library = logging.getLogger("kubernetes.config.kube_config")
    with capturedLogs() as events:
        library.warning("could not use %s {not a placeholder}", PASSWORD)
        library.info("below the standard library's level: %s", PASSWORD)
        try:
            raise ValueError(f"the library quoting {PASSWORD}")
        except ValueError:
            library.exception("reading failed")
    # The info record is below the standard library's default level: not handed on, as before.
    assert len(events) == 2
    text = _written("text", list(events))
    assert PASSWORD not in text and "below" not in text
    assert f"[kubernetes.config.kube_config#warn] could not use {REDACTED} {{not a placeholder}}" in text
    assert "[kubernetes.config.kube_config#error] reading failed" in text
    assert "Traceback (most recent call last):" in text
    assert f"builtins.ValueError: the library quoting {REDACTED}" in text
    warning, error = (json.loads(line) for line in _written("json", list(events)).splitlines())
    assert (warning["msg"], warning["level"], warning["logger"]) == (
        f"could not use {REDACTED} {{not a placeholder}}",
        "warning",
        "kubernetes.config.kube_config",
    )
    assert (error["msg"], error["err"]) == ("reading failed", f"the library quoting {REDACTED}")
    assert f"ValueError: the library quoting {REDACTED}" in error["stacktrace"]
    assert "logText" not in warning
    del redaction


def test_the_log_the_server_begins_takes_the_standard_library_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    begun: list[object] = []

    class Beginner:
        def beginLoggingTo(self, observers: list[object], redirectStandardIO: bool) -> None:
            begun.extend(observers)

    monkeypatch.setattr(logs, "globalLogBeginner", Beginner())
    try:
        logs.begin_logging("json", out=io.StringIO())
        assert len(begun) == 1
        assert logs._STDLIB in logging.getLogger().handlers
    finally:
        logging.getLogger().removeHandler(logs._STDLIB)
