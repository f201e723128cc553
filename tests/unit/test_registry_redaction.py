"""The redaction of the credentials a registry client sends from the registry's texts it passes on
(review r1obs L1): in every form they are sent in, before the text is cut short."""

from __future__ import annotations

import base64
import gc
import hashlib

from payloadtags.registry import RegistryProtocolError
from payloadtags.registry.redaction import (
    ANYWHERE_LENGTH,
    MESSAGE_LIMIT,
    REDACTED,
    SHOWN_LIMIT,
    STEP,
    TOKENS_KEPT,
    Redaction,
)

PASSWORD = "S3cretRegPass"
BASIC = base64.b64encode(f"reguser:{PASSWORD}".encode()).decode()
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJhY2Nlc3MiOltdfQ.c2lnbmF0dXJl"


def redaction() -> Redaction:
    redaction = Redaction((BASIC, PASSWORD))
    redaction.issued(TOKEN)
    return redaction


def test_each_credential_sent_is_replaced_in_each_form() -> None:
    text = f"Authorization: Basic {BASIC} (reguser:{PASSWORD}); then Bearer {TOKEN}; token={TOKEN}"
    assert redaction().shown(text) == (
        f"Authorization: Basic {REDACTED} (reguser:{REDACTED}); then Bearer {REDACTED}; token={REDACTED}"
    )


def test_a_text_without_credentials_is_shown_as_it_is() -> None:
    text = "Basic authentication required; use a Bearer token: denied (insufficient_scope)"
    assert redaction().shown(text) == text


def test_a_credential_this_client_does_not_know_is_replaced_where_a_header_carries_it() -> None:
    # A token issued before the last TOKENS_KEPT, a password changed since: in the header's form.
    redaction = Redaction((BASIC, PASSWORD))
    for number in range(TOKENS_KEPT + 1):
        redaction.issued(f"token-number-{number:06d}-of-many")
    assert redaction.shown("Bearer token-number-000000-of-many") == f"Bearer {REDACTED}"
    assert redaction.shown("was token-number-000001-of-many") == f"was {REDACTED}"
    assert (
        redaction.shown("authorization: basic dXNlcjpvbGQtcGFzc3dvcmQ=") == f"authorization: basic {REDACTED}"
    )


def test_a_long_text_is_cut_after_its_credentials_are_replaced() -> None:
    # A credential across the limit is replaced whole, not cut into a piece no longer found.
    text = "x" * (SHOWN_LIMIT - 5) + " " + PASSWORD + " " + "y" * 70_000
    shown = redaction().shown(text)
    assert (
        shown
        == "x" * (SHOWN_LIMIT - 5) + " " + REDACTED[:4] + f"... (cut short: {len(text)} characters in all)"
    )


def test_the_start_of_a_credential_where_the_look_ends_is_never_shown() -> None:
    # Only the start of a long text is looked through (past the limit as far as the longest credential
    # reaches, twice); redactions before where the look ends make the text shorter, bringing what was
    # past the limit into view: never the first characters of a credential cut off there.
    ahead = f"Bearer {TOKEN} " * 5
    for start in range(SHOWN_LIMIT, SHOWN_LIMIT + 3 * len(TOKEN)):
        text = ahead + "z" * (start - len(ahead) - 1) + f" {TOKEN} " + "w" * 1000
        assert text.rindex(f" {TOKEN} ") == start - 1
        shown = redaction().shown(text)
        assert TOKEN[:3] not in shown, (start, shown)
        assert shown.endswith(f"... (cut short: {len(text)} characters in all)")


def test_a_short_credential_is_replaced_where_it_stands_alone_not_inside_words() -> None:
    short = Redaction(("dTp0", "t"))
    short.issued("ab")
    assert short.shown("the token does not grant repository:a/b:delete") == (
        "the token does not grant repository:a/b:delete"
    )
    assert short.shown("Basic dTp0 (that is u:t), Bearer ab") == (
        f"Basic {REDACTED} (that is u:{REDACTED}), Bearer {REDACTED}"
    )


def test_a_credential_echoed_url_encoded_or_glued_to_a_word_is_replaced() -> None:
    # A proxy that echoes the request as a query; a header echoed without a space after its name.
    plus = Redaction(("dXNlcjpw+YXNz/d29yZA==", "pass+word/long"))
    assert plus.shown("auth=Basic%20dXNlcjpw%2BYXNz%2Fd29yZA%3D%3D&x=1") == f"auth=Basic%20{REDACTED}&x=1"
    assert plus.shown("pw=pass%2Bword%2Flong") == f"pw={REDACTED}"
    assert redaction().shown(f"Authorization:Basic{BASIC}x") == f"Authorization:Basic{REDACTED}x"
    assert redaction().shown(f"Bearer%20{TOKEN}") == f"Bearer%20{REDACTED}"
    assert Redaction().shown("Authorization=Bearer%20an-old-token-1234567890") == (
        f"Authorization=Bearer%20{REDACTED}"
    )


def test_every_token_kept_is_replaced_not_only_the_newest() -> None:
    # Tokens live per scope (one per repository): an older one is still sent, and may be echoed bare.
    redaction = Redaction((BASIC, PASSWORD))
    for number in range(100):
        redaction.issued(f"token-number-{number:06d}-of-many")
    assert TOKENS_KEPT >= 100
    assert redaction.shown("was token-number-000000-of-many") == f"was {REDACTED}"


def test_every_registry_error_message_is_redacted_and_cut_when_made() -> None:
    """The net under the sites (review r2redact F1): a message quoting a live client's credential
    (one long enough to be replaced anywhere) or a header's, whichever site made it, never holds it."""
    redaction = Redaction((BASIC, PASSWORD, "pw"))
    redaction.issued(TOKEN)
    error = RegistryProtocolError(
        f"a link to /x?a={BASIC}&b={PASSWORD}&c={TOKEN}; Bearer some-other-token-0123"
    )
    assert error.message == f"a link to /x?a={REDACTED}&b={REDACTED}&c={REDACTED}; Bearer {REDACTED}"
    assert str(error) == error.message and error.args == (error.message,)
    # A short one is replaced only where its own client quotes the registry (`Redaction.shown`).
    assert RegistryProtocolError("the pw tag").message == "the pw tag"
    long = RegistryProtocolError("x" * (MESSAGE_LIMIT - 5) + f" {PASSWORD} " + "y" * 70_000)
    assert long.message.startswith("x" * (MESSAGE_LIMIT - 5) + " " + REDACTED[:4] + "... (cut short: ")
    # Forgotten with its client (a password of this test alone: no other client alive has it).
    forgotten = "a-password-of-this-test-alone"
    gone = Redaction((forgotten,))
    assert forgotten not in RegistryProtocolError(f"b={forgotten}").message
    del gone
    gc.collect()
    assert forgotten in RegistryProtocolError(f"b={forgotten}").message


def test_a_short_token_is_looked_for_after_a_longer_one_is_issued() -> None:
    """A text is looked through the tokens only when it is as long as the shortest kept (review
    r2redact N1): tokens vary in length (a JWT's claims grow with its scope), so a text shorter than
    the longest may hold a shorter one (review r3redact L2)."""
    redaction = Redaction((BASIC, PASSWORD))
    short = "a-short-token-0123"
    redaction.issued(short)
    redaction.issued("j" * 700)
    text = f"was {short}"
    assert redaction.shown(text) == f"was {REDACTED}"
    assert RegistryProtocolError(text).message == f"was {REDACTED}"


def test_a_token_service_answers_tokens_are_replaced_before_any_client_knows_them() -> None:
    """The token service's answer holds its token before `Redaction.issued` notes it, and a refresh
    token the client never notes (review r2tbredact F1): replaced next to their keys in every text, as
    the answer's JSON, a repr of the document read from it, or that JSON quoted in a JSON string."""
    texts = {
        '{"token": "opaque-1", "expires_in": 300}': f'{{"token": "{REDACTED}", "expires_in": 300}}',
        '{"access_token":"a\\/b+c==","refresh_token":"r"}': (
            f'{{"access_token":"{REDACTED}","refresh_token":"{REDACTED}"}}'
        ),
        "{'token': 'tok.eyJ-a_b', 'issued_at': '2026-12-07T21:00:00Z'}": (
            f"{{'token': '{REDACTED}', 'issued_at': '2026-12-07T21:00:00Z'}}"
        ),
        '"{\\"refresh_token\\": \\"r-12345\\"}"': f'"{{\\"refresh_token\\": \\"{REDACTED}\\"}}"',
    }
    redaction = Redaction(())
    for text, shown in texts.items():
        assert redaction.shown(text) == shown, text
        assert str(RegistryProtocolError(f"cannot read {text}")) == f"cannot read {shown}", text
    # Prose, another key, an empty value: as they are.
    for text in ('a token: abc; "my_token": "abcdefgh"', '{"token": ""}', "{'tokens': 'abcdefgh'}"):
        assert redaction.shown(text) == text


def test_a_kept_token_is_found_wherever_it_stands_whatever_its_length() -> None:
    """Tokens are looked for by pieces at every STEP-th place of a text (review r2tbredact L2): a token
    of any length from ANYWHERE_LENGTH, at any place, beside a longer one, is still found; a shorter
    token makes the look visit more places."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
    longer = alphabet[::-1][:40]
    for length in range(ANYWHERE_LENGTH, 41):
        token = alphabet[:length]
        redaction = Redaction((BASIC, PASSWORD))
        redaction.issued(longer)
        redaction.issued(token)
        for place in range(2 * STEP + 1):
            for kept in (token, longer):
                text = "~" * place + kept + "~~~"
                assert redaction.redacted(text, short=False) == "~" * place + REDACTED + "~~~", (kept, place)


def _jwt(number: int) -> str:
    return "eyJhbGciOiJFUzI1NiJ9.eyJhY2Nlc3MiOltdfQ." + hashlib.sha256(str(number).encode()).hexdigest()[:43]


class _Counted(str):
    """A text that counts how often it is looked through for a part (`in`)."""

    looks = 0

    def __contains__(self, part: str) -> bool:  # type: ignore[override]
        _Counted.looks += 1
        return super().__contains__(part)


def test_a_text_is_not_looked_through_once_per_kept_token() -> None:
    """The cost of a look, a log line's at --v=3 among them, does not grow with the tokens kept (review
    r2tbredact L2: 1,024 kept tokens of 40 characters made a request line cost 200-400 us, not 40)."""
    redaction = Redaction((BASIC, PASSWORD))
    # As a token service issues them: the same start (a JWT's header and claims), signed apart.
    tokens = [_jwt(number) for number in range(TOKENS_KEPT + 1)]
    oldest = tokens[0]
    for token in tokens[:-1]:
        redaction.issued(token)
    _Counted.looks = 0
    text = _Counted(f"GET /v2/_catalog?n=100 was {oldest} and a user name; " * 3)
    assert (
        redaction.redacted(text, short=False)
        == f"GET /v2/_catalog?n=100 was {REDACTED} and a user name; " * 3
    )
    assert _Counted.looks <= 2 + len((BASIC, PASSWORD)), _Counted.looks
    # A token dropped from those kept is no longer looked for (in a header's form it still is).
    redaction.issued(tokens[-1])
    assert redaction.redacted(f"was {oldest}", short=False) == f"was {oldest}"
    # Nor kept in the index: a server issued a token per repository every few minutes for months.
    for number in range(TOKENS_KEPT + 1, 3 * TOKENS_KEPT):
        redaction.issued(_jwt(number))
    assert len(redaction._by_piece) <= TOKENS_KEPT * STEP


def test_a_kept_token_that_ends_the_text_is_replaced() -> None:
    # The index is looked up at every STEP-th place and the text's last one: a token ending the text
    # (a log line's last word) is found whatever its length and wherever it starts (review r3tbredact L1).
    for length in range(ANYWHERE_LENGTH, 41):
        token = "".join(chr(ord("A") + (i * 7) % 26) for i in range(length))
        redaction = Redaction(())
        redaction.issued(token)
        for before in range(20):
            assert redaction.redacted("-" * before + token, short=False) == "-" * before + REDACTED, (
                length,
                before,
            )
