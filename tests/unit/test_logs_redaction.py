"""What the log writes of a failure whose text carries a registry credential: the observer the server
installs replaces it, in either format, and keeps the traceback as it is otherwise."""

from __future__ import annotations

import base64
import io
import json

from twisted.logger import Logger, capturedLogs, formatEventAsClassicLogText, formatTime, timeFormatRFC3339

from payloadtags import logs
from payloadtags.registry.redaction import ANYWHERE_LENGTH, REDACTED, Redaction

PASSWORD = "S3cretRegPass"
BASIC = base64.b64encode(f"reguser:{PASSWORD}".encode()).decode()
TOKEN = "tok.eyJzY29wZSI6ImNhdGFsb2cifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
# A credential no client alive knows: replaced because it follows the header's scheme.
UNKNOWN = "b2xkLXVzZXI6b2xkLXBhc3N3b3Jk"


def _read_answer(body: str) -> None:
    try:
        raise KeyError(f"no 'errors' in {body}")
    except KeyError as error:
        raise ValueError(f"cannot read {body}; sent Authorization: Bearer {UNKNOWN}") from error


def _logged(password: str = PASSWORD) -> dict[str, object]:
    with capturedLogs() as events:
        try:
            _read_answer(f"denied for Basic {BASIC} (that is reguser:{password}), token {TOKEN}")
        except ValueError as error:
            Logger(namespace="payloadtags.test").failure(
                "reading the registry's answer failed: {error}", error=str(error), answer=[str(error)]
            )
    [event] = events
    return event


def _as_sent(text: str) -> str:
    for secret in (TOKEN, BASIC, PASSWORD, UNKNOWN):
        text = text.replace(secret, REDACTED)
    return text


def test_a_failure_is_written_with_the_credentials_replaced_and_its_traceback_kept() -> None:
    redaction = Redaction((BASIC, PASSWORD))
    redaction.issued(TOKEN)
    event = _logged()
    failure = event["log_failure"]
    classic = formatEventAsClassicLogText(event, formatTime=lambda when: formatTime(when, timeFormatRFC3339))
    assert classic is not None and PASSWORD in classic and TOKEN in classic and UNKNOWN in classic
    # Text: the line as Twisted writes it, each credential replaced, nothing else changed.
    line = logs.text_line(event)
    assert line == _as_sent(classic)
    assert "Traceback (most recent call last):" in line and ", in _read_answer" in line
    assert (
        f"builtins.ValueError: cannot read denied for Basic {REDACTED} (that is reguser:{REDACTED})" in line
    )
    # JSON: the message, err, stacktrace and every value.
    record = logs.klog_record(event)
    assert record["stacktrace"] == _as_sent(failure.getTraceback())  # type: ignore[attr-defined]
    assert record["err"] == _as_sent(str(event["error"]))
    assert record["msg"] == _as_sent(f"reading the registry's answer failed: {event['error']}")
    assert record["answer"] == [_as_sent(str(event["error"]))]
    # What the installed observers write, whole: no form of a credential, the cause's text included
    # (Twisted's traceback does not write a chained cause; its text would be redacted as well).
    for log_format in logs.FORMATS:
        out = io.StringIO()
        logs.observer(log_format, out=out)(event)
        written = out.getvalue()
        assert not [secret for secret in (PASSWORD, BASIC, TOKEN, UNKNOWN) if secret in written], written
        if log_format == "json":
            assert json.loads(written)["stacktrace"] == record["stacktrace"]
    del redaction


def test_the_log_forgets_the_credentials_of_a_client_gone() -> None:
    """The log knows the credentials of the clients alive only (`in_message`): a client's are not kept
    in the process after it, and a header's credential is replaced whoever's it is."""
    forgotten = "Forgotten-Pass-4417"  # no other test's client has it
    Redaction((forgotten,))  # gone at once: CPython frees it with its last reference
    record = logs.klog_record(_logged(forgotten))
    assert f"reguser:{forgotten}" in record["stacktrace"]
    assert UNKNOWN not in record["stacktrace"] and f"Bearer {REDACTED}" in record["stacktrace"]


def _deep(frames: int) -> None:
    if not frames:
        raise ValueError(f"the registry answered with {PASSWORD} in it")
    _deep(frames - 1)


def test_a_long_traceback_is_written_whole_and_redacted() -> None:
    """Never cut (review r2tbredact L3): a traceback longer than a message's 2000 characters once
    redacted keeps its last line, the exception's, in either format."""
    redaction = Redaction((PASSWORD,))
    with capturedLogs() as events:
        try:
            _deep(30)
        except ValueError:
            Logger(namespace="payloadtags.test").failure("reading failed")
    [event] = events
    assert len(event["log_failure"].getTraceback()) > 3000
    for log_format in logs.FORMATS:
        out = io.StringIO()
        logs.observer(log_format, out=out)(event)
        written = out.getvalue()
        assert PASSWORD not in written, log_format
        assert "cut short" not in written, log_format
        assert f"ValueError: the registry answered with {REDACTED} in it" in written, log_format
    del redaction


def test_a_mapping_inside_a_value_is_redacted() -> None:
    """Review r2tbredact L3: the values of a mapping a value holds, however deep."""
    redaction = Redaction((PASSWORD,))
    with capturedLogs() as events:
        Logger(namespace="payloadtags.test").info("answer", answer={"errors": {"message": f"x {PASSWORD}"}})
    [event] = events
    assert logs.klog_record(event)["answer"] == {"errors": {"message": f"x {REDACTED}"}}
    del redaction


def test_a_value_that_is_a_credential_of_exactly_the_shortest_length_replaced_anywhere_is_redacted() -> None:
    """The log skips a text shorter than ANYWHERE_LENGTH, which holds nothing it replaces; a value that
    is exactly that long may be a credential (review r2tbredact L3)."""
    exact = "Pa55w0rd"
    assert len(exact) == ANYWHERE_LENGTH
    redaction = Redaction((exact,))
    with capturedLogs() as events:
        Logger(namespace="payloadtags.test").info("sent {sent}", sent=exact, alone=exact)
    [event] = events
    record = logs.klog_record(event)
    assert (record["msg"], record["alone"]) == (f"sent {REDACTED}", REDACTED)
    del redaction
