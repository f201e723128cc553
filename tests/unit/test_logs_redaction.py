"""What the log writes of a failure whose text carries a registry credential: the observer the server
installs replaces it, in either format, and keeps the traceback as it is otherwise."""

from __future__ import annotations

import base64
import io
import json

from twisted.logger import Logger, capturedLogs, formatEventAsClassicLogText, formatTime, timeFormatRFC3339

from payloadtags import logs
from payloadtags.registry.redaction import REDACTED, Redaction

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
