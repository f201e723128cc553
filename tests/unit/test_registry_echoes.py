"""Each registry text an error message quotes is redacted where it is quoted (review r2redact F3, F4,
L1): a password too short to be replaced anywhere (`redaction.ANYWHERE_LENGTH`) is replaced only
there, so a site that forgot it shows it; the longer Basic base64 is replaced by the net every
RegistryError's message passes too (`redaction.in_message`)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from twisted.logger import capturedLogs, formatEvent

from payloadtags.registry import RegistryClient, RegistryError
from payloadtags.registry.client import _amend
from payloadtags.registry.late import COPY
from payloadtags.registry.redaction import ANYWHERE_LENGTH, MESSAGE_LIMIT, REDACTED
from tests.unit.test_registry_client_unit import Answer, Sent, digest_of, json_answer, make, result

USER = "u"
# Shorter than ANYWHERE_LENGTH: replaced where it stands apart, and only by its own client.
PASSWORD = "Pw9-x"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
assert len(PASSWORD) < ANYWHERE_LENGTH


def _manifest() -> Answer:
    return json_answer(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(b"{}"),
                "size": 2,
            },
            "layers": [],
        }
    )


# route: (the answer to an authenticated request, the call, what its message says)
ROUTES: dict[
    str, tuple[Callable[[Sent], Answer], Callable[[RegistryClient], Coroutine[Any, Any, Any]], str]
] = {
    "404-code": (
        lambda sent: json_answer({"errors": [{"code": f"auth={PASSWORD}"}]}, 404),
        lambda client: client.manifest("ns/app", "v1"),
        f"not found in registry {'http://registry.test:5000'} (auth={REDACTED})",
    ),
    "unfollowable-redirect": (
        lambda sent: Answer(307, {"Location": f"ftp://{PASSWORD}/"}),
        lambda client: client.blob("ns/app", digest_of(b"{}")),
        f"ftp://{REDACTED}",
    ),
    "invalid-digest": (
        lambda sent: Answer(
            200,
            {**_manifest().headers, "Docker-Content-Digest": f"sha256:{PASSWORD}"},
            _manifest().body,
        ),
        lambda client: client.manifest("ns/app", "v1"),
        f"invalid digest 'sha256:{REDACTED}'",
    ),
    "link-not-a-url": (
        lambda sent: json_answer(
            {"tags": ["v1"]}, Link=f'<http://[{PASSWORD}/v2/ns/app/tags/list>; rel="next"'
        ),
        lambda client: client.tags("ns/app"),
        f"the next page link is not a URL: 'http://[{REDACTED}/v2/ns/app/tags/list'",
    ),
    "tags-loop": (
        lambda sent: json_answer(
            {"tags": ["v1"]}, Link=f'</v2/ns/app/tags/list?last={PASSWORD}&auth={PASSWORD}>; rel="next"'
        ),
        lambda client: client.tags("ns/app"),
        f"the next page link (to /v2/ns/app/tags/list, after '{REDACTED}') does not move past",
    ),
    "link-elsewhere": (
        lambda sent: json_answer(
            {"repositories": ["ns/app"]},
            Link=f'<http://other.example/v2/_catalog?auth={PASSWORD}>; rel="next"',
        ),
        lambda client: client.catalog(),
        "the next page link points elsewhere: http://other.example",
    ),
    "insufficient-scope": (
        lambda sent: Answer(
            401, {"WWW-Authenticate": f'Basic realm="r",error="insufficient_scope",scope="auth={PASSWORD}"'}
        ),
        lambda client: client.manifest("ns/app", "v1"),
        f"the token does not grant auth={REDACTED}",
    ),
    "upload-location": (
        lambda sent: (
            Answer(404)
            if sent.method == "HEAD"
            else Answer(202, {"Location": f"http://other.example/upload?auth={PASSWORD}"})
        ),
        lambda client: client._ensure_blob("ns/app", b"{}", "deleting tag ns/app:v1"),
        "the upload location points elsewhere: http://other.example",
    ),
    "stored-digest": (
        lambda sent: Answer(201, {"Docker-Content-Digest": f"sha256:{PASSWORD}"}),
        lambda client: client._put_manifest(
            "ns/app",
            "v1",
            b"{}",
            "application/vnd.oci.image.manifest.v1+json",
            "deleting tag ns/app:v1",
            COPY,
        ),
        f"the registry stored sha256:{REDACTED}, not sha256:",
    ),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_registry_text_each_message_quotes_is_redacted_there(route: str) -> None:
    echo, call, said = ROUTES[route]

    def handler(sent: Sent) -> Answer:
        if sent.header("Authorization") is None and sent.url.startswith("http://registry.test:5000"):
            return Answer(401, {"WWW-Authenticate": 'Basic realm="r"'})
        return echo(sent)

    client, agent = make(handler, username=USER, password=PASSWORD)
    with capturedLogs() as events, pytest.raises(RegistryError) as raised:
        result(call(client))
    assert f"Basic {BASIC}" in {sent.header("Authorization") for sent in agent.sent}
    message = str(raised.value)
    assert said in message, message
    assert PASSWORD not in message and BASIC not in message
    logged = [formatEvent(event) for event in events] + [repr(event) for event in events]
    assert not [line for line in logged if PASSWORD in line or BASIC in line]


@pytest.mark.parametrize(
    ("location", "refused"),
    [
        (f"/v2/ns/app/blobs/uploads/1?echo=Basic {BASIC}", "a space or control character in it"),
        ("/v2/ns/app/blobs/uploads/\u00e9", "a space or control character in it"),
    ],
)
def test_an_upload_location_the_client_cannot_request_is_refused_before_it_is_requested(
    location: str, refused: str
) -> None:
    """An upload Location on the registry's own origin that the Agent would refuse ("Invalid URI" and
    the whole URL in a logged traceback: review r3redact F2) is a protocol error naming the registry
    only, and no PUT goes out."""

    def handler(sent: Sent) -> Answer:
        if sent.header("Authorization") is None:
            return Answer(401, {"WWW-Authenticate": 'Basic realm="r"'})
        return Answer(404) if sent.method == "HEAD" else Answer(202, {"Location": location})

    client, agent = make(handler, username=USER, password=PASSWORD)
    with capturedLogs() as events, pytest.raises(RegistryError) as raised:
        result(client._ensure_blob("ns/app", b"{}", "deleting tag ns/app:v1"))
    assert str(raised.value) == (
        f"registry http://registry.test:5000: a URL the registry named cannot be requested ({refused})"
    )
    assert [sent.method for sent in agent.sent if sent.method == "PUT"] == []
    assert not [event for event in events if "log_failure" in event]


@pytest.mark.parametrize("password", [PASSWORD, "S3cretRegPass"])
def test_a_challenge_scheme_is_redacted_as_sent_not_lower_cased(password: str) -> None:
    def handler(sent: Sent) -> Answer:
        # A proxy's challenge whose scheme echoes the password (review r2redact L1).
        return Answer(401, {"WWW-Authenticate": f'{password} realm="r"'})

    client, _ = make(handler, username=USER, password=password)
    with pytest.raises(RegistryError) as raised:
        result(client.manifest("ns/app", "v1"))
    assert f"asks for '{REDACTED}' authentication" in str(raised.value)
    assert password.lower() not in str(raised.value).lower()


def test_a_delete_message_nesting_long_registry_errors_keeps_its_advice() -> None:
    """A failed delete's message nests the errors of its re-tag, restore and check, each quoting up to
    SHOWN_LIMIT characters of the registry's text, and ends with what the tag may point at now and what
    to do (client.py, the restore that failed). Cut from its end at MESSAGE_LIMIT it lost the advice and
    our copy's digest (review r3redact F1)."""
    long = "upstream storage backend error: " + "the object store answered 503 SlowDown; " * 40

    def handler(sent: Sent) -> Answer:
        return json_answer({"errors": [{"code": "UNKNOWN", "message": long}]}, 500)

    client, _ = make(handler)
    errors = []
    for call in (lambda: client.manifest("ns/app", "v1"), lambda: client.tags("ns/app"), client.catalog):
        with pytest.raises(RegistryError) as raised:
            result(call())
        errors.append(raised.value)
    error, restore_error, check_error = errors
    ours = "sha256:" + "a" * 64
    advice = f"it may point at {ours}, a copy payloadtags wrote to delete it; retry the delete"
    amended = _amend(
        error,
        f"; the tag could not be restored ({restore_error.message}), and where tag ns/app:v1 points now "
        f"could not be checked ({check_error.message}): {advice}",
        pending=False,
    )
    assert len(amended.message) > MESSAGE_LIMIT
    assert amended.message.endswith(advice)
    assert str(amended) == amended.message and not amended.unanswered


def test_an_amended_message_is_redacted_too() -> None:
    """What `_amend` adds passes the net as a new message does (review r3redact L2)."""

    def handler(sent: Sent) -> Answer:
        return json_answer({"errors": [{"code": "UNKNOWN", "message": "down"}]}, 500)

    client, _ = make(handler)
    with pytest.raises(RegistryError) as raised:
        result(client.manifest("ns/app", "v1"))
    amended = _amend(raised.value, "; the check said Bearer an-echoed-token-0123456789")
    assert amended.message.endswith(f"; the check said Bearer {REDACTED}")


def test_a_token_realm_path_that_echoes_a_short_password_is_redacted() -> None:
    """The token service is named by its realm's origin and path in every message about it: the path
    is the registry's text, quoted through its client's `shown` (review r3redact L1)."""

    def handler(sent: Sent) -> Answer:
        if sent.url.startswith("http://registry.test:5000/token"):
            return json_answer({"errors": [{"code": "UNAVAILABLE", "message": "down"}]}, 500)
        if sent.header("Authorization") is None:
            return Answer(401, {"WWW-Authenticate": 'Basic realm="r"'})
        return Answer(
            401,
            {"WWW-Authenticate": f'Bearer realm="http://registry.test:5000/token/{PASSWORD}",service="r"'},
        )

    client, _ = make(handler, username=USER, password=PASSWORD)
    with pytest.raises(RegistryError):
        result(client.manifest("ns/app", "v1"))  # rejected: the Basic retry met a Bearer challenge
    with capturedLogs() as events, pytest.raises(RegistryError) as raised:
        result(client.manifest("ns/app", "v1"))  # Basic sent at once, a Bearer challenge: the realm
    assert f"the token service http://registry.test:5000/token/{REDACTED} of registry" in str(raised.value)
    assert PASSWORD not in str(raised.value)
    assert not [event for event in events if PASSWORD in formatEvent(event) or PASSWORD in repr(event)]
