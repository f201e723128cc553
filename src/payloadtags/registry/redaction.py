"""The credentials a registry client sends, kept out of the registry's texts that it passes on.

The client passes what the registry and its token service say in an error (the messages of a JSON
error document, a header it cannot use) on to API callers, as Status messages, and to the log. A
registry, a token service or a proxy in front of them that echoes the request's ``Authorization``
header in such a text (a debugging proxy, a web application firewall's block page) would hand the
registry login or a token to every caller whose request fails there, and write it into the log
(review r1obs L1). So every credential this client sends is replaced in such a text first, in the
form it is sent in, and the text is cut to a length fit for a message.

Besides the sites that quote the registry's text through their client's `Redaction.shown`, every
RegistryError's message goes through `in_message` when it is made (errors.py): one place that a new
message cannot miss (review r2redact F1). It knows the credentials of every client alive in the
process, and replaces those that are replaced anywhere (`ANYWHERE_LENGTH`): a short one only where its
own client's `shown` is applied, as only there it is known to be that client's text. The log passes
every text it writes through `in_message` too, uncut (logs.py): an exception logged with its traceback
carries its text as raised, which no RegistryError made redacted.
"""

from __future__ import annotations

import re
import urllib.parse
import weakref
from collections import Counter
from collections.abc import Callable, Iterable

REDACTED = "<redacted>"
# The registry's own text in one message at most, in characters: a Status message is read by a person,
# and the body it comes from may be 64 KiB (client.ERROR_BODY_LIMIT).
SHOWN_LIMIT = 500
# A whole RegistryError message at most, in characters (`in_message`): the registry's text in it is
# cut to SHOWN_LIMIT where it is quoted; this bounds any quoted whole, with room for the advice.
MESSAGE_LIMIT = 2000
# The most recent tokens of the token service kept to be redacted. Tokens are kept per scope while they
# live (auth.Authenticator), which may be one per repository; a token issued before these may still be
# echoed, in the header it was sent in, which `_SENT_CREDENTIAL` finds.
TOKENS_KEPT = 1024
# A credential this long is replaced wherever it is: it is no part of a word by chance. A shorter one
# only where it stands apart (`_standing_alone`): a password of three letters, a test's token "t", may
# be a part of every other word.
ANYWHERE_LENGTH = 8
# How a text is looked through for the tokens kept (`Redaction._tokens_in`): a piece of PIECE characters
# at every STEP-th place, in an index of each token's pieces ending at its last STEP places. A token of
# PIECE + STEP - 1 characters or more, wherever it stands, has one of those pieces at a place looked at:
# the look costs one dictionary lookup per STEP characters of the text, however many tokens are kept,
# where looking for each token (`in`) cost 0.2-0.4 ms a log line with a thousand kept (review
# r2tbredact L2). A shorter token makes the look visit more places (down to every place). Pieces of
# the end: tokens often share their start (a JWT's header, "DockerToken."), which would make every
# token a candidate wherever one stands.
PIECE = ANYWHERE_LENGTH
STEP = 8
# A credential as an Authorization header carries it ("Basic <base64>", "Bearer <token>"; URL-encoded
# too), whoever's it is: an echo of a token this client no longer keeps, of a password changed
# meanwhile, or cut short. Sixteen characters at least, so that prose ("Basic authentication required")
# is left as it is.
# ASCII case folding only, as `_header_credentials`' look for the word (str.lower) finds it (r3tbredact N1).
_SENT_CREDENTIAL = re.compile(
    r"\b(basic|bearer)(\s+|%20|\+)[A-Za-z0-9._~+/%-]{16,}=*", re.IGNORECASE | re.ASCII
)
# A token in the token service's answer, as its JSON has it ("token": "...", "access_token",
# "refresh_token"), or a dict's repr of it, or that JSON quoted in a JSON string (\"token\"): the
# answer is read, and may be quoted by a bug or a library's error, before its token is noted
# (`Redaction.issued`), and its refresh token is never noted, the client never sending it (review
# r2tbredact F1). Any length: next to that key, a value is a credential, never a word by chance.
_ANSWERED_TOKEN = re.compile(
    r"""((\\?["'])(?:access_|refresh_)?token\2\s*:\s*(\\?["']))(?:\\.|[^"'\\\s])+?(?=\3)""",
    re.IGNORECASE | re.ASCII,
)


def _standing_alone(secret: str) -> str:
    """A pattern of ``secret`` where it stands apart from letters and digits, as an echo sets it apart
    (a space or quote around the header's, a ':' after the user name)."""
    return rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])"


def _forms(secret: str) -> tuple[str, ...]:
    """The forms of ``secret`` an echo may hold: as sent, and URL-encoded (a proxy that echoes the
    request in a query, a base64 with ``+``, ``/``, ``=`` in it)."""
    encoded = urllib.parse.quote(secret, safe="")
    return (secret,) if encoded == secret else (encoded, secret)


def _pieces(form: str) -> set[str]:
    """The pieces a form of ANYWHERE_LENGTH or more is indexed by: PIECE characters ending at each of
    its last STEP places (as many as it holds)."""
    end = len(form)
    return {form[end - back - PIECE : end - back] for back in range(min(STEP, end - PIECE + 1))}


def _replaced(text: str, form: str) -> str:
    if form not in text:
        return text
    if len(form) >= ANYWHERE_LENGTH:
        return text.replace(form, REDACTED)
    return re.sub(_standing_alone(form), REDACTED, text)


def _header_credentials(text: str) -> str:
    """``text`` with the credentials no client needs to know replaced: after Basic or Bearer, and a
    token service's answer's tokens."""
    # Each pattern looks at every place of the text (about 10 us a log line): only where its word is.
    lowered = text.lower()
    if "token" in lowered:
        text = _ANSWERED_TOKEN.sub(lambda match: match.group(1) + REDACTED, text)
    if "basic" in lowered or "bearer" in lowered:
        text = _SENT_CREDENTIAL.sub(lambda match: match.group(1) + match.group(2) + REDACTED, text)
    return text


def _cut(text: str, limit: int, longest: int, redact: Callable[[str], str]) -> str:
    """``text`` redacted, then at most ``limit`` characters. Redacted before it is cut: a credential
    cut in two would no longer be found. ``longest``: the longest credential ``redact`` replaces."""
    # Only the start is looked through, so that a 64 KiB body costs what a short one does: as far as
    # a credential that begins within ``limit`` may reach, and as far again for what is dropped below.
    scanned = limit + 2 * longest
    if len(text) <= scanned:
        shown = redact(text)
        if len(shown) <= limit:
            return shown
    else:
        shown = redact(text[:scanned])
        # Its last characters may be the start of a credential cut off there: never shown, even when
        # redactions before them made the text shorter than ``limit``.
        shown = shown[: len(shown) - longest] if longest else shown
    return f"{shown[:limit]}... (cut short: {len(text)} characters in all)"


class Redaction:
    """The credentials one registry client sends (its password, the Basic header's base64 of it, the
    tokens it was issued), and the redaction of a text that may echo them."""

    def __init__(self, credentials: Iterable[str | None] = ()) -> None:
        """``credentials``: those sent whatever the token service issues (the password, the Basic
        header's base64 of the user name and it)."""
        # Longest first: the password may be a part of a longer one (the base64 of a user name and
        # password can hold it), never the other way.
        secrets = {form for secret in credentials if secret for form in _forms(secret)}
        self._fixed = tuple(sorted(secrets, key=len, reverse=True))
        # Each token's forms, insertion-ordered: the oldest goes first.
        self._tokens: dict[str, tuple[str, ...]] = {}
        # How many kept tokens send each form: one token may be another's URL-encoding.
        self._held: Counter[str] = Counter()
        # The forms of ANYWHERE_LENGTH or more by their pieces (`_pieces`), and the shorter ones.
        self._by_piece: dict[str, set[str]] = {}
        self._short_forms: set[str] = set()
        # Every how many places a text is looked at (STEP, or less for a shorter token); never raised
        # when a token is dropped: looking more often is safe.
        self._step = STEP
        # Kept as tokens are noted rather than computed per text (review r2redact N1). Never lowered
        # when a token is dropped: a longer look, or a scan of tokens a text cannot hold, is safe.
        self._longest = max(map(len, self._fixed), default=0)
        self._shortest_token = 0
        _ALIVE.add(self)

    @property
    def longest(self) -> int:
        """The length of the longest credential form replaced (an upper bound)."""
        return self._longest

    def issued(self, token: str) -> None:
        """Note a token the token service issued: the client sends it from now on."""
        if not token:
            return
        again = self._tokens.pop(token, None)
        if again is not None:
            self._unkeep(again)
        forms = _forms(token)
        self._tokens[token] = forms
        self._keep(forms)
        self._longest = max(self._longest, *map(len, forms))
        shortest = min(map(len, forms))
        self._shortest_token = min(self._shortest_token, shortest) if self._shortest_token else shortest
        while len(self._tokens) > TOKENS_KEPT:
            self._unkeep(self._tokens.pop(next(iter(self._tokens))))

    def _keep(self, forms: tuple[str, ...]) -> None:
        for form in forms:
            self._held[form] += 1
            if self._held[form] > 1:
                continue
            if len(form) < ANYWHERE_LENGTH:
                self._short_forms.add(form)
                continue
            self._step = min(self._step, len(form) - PIECE + 1)
            for piece in _pieces(form):
                self._by_piece.setdefault(piece, set()).add(form)

    def _unkeep(self, forms: tuple[str, ...]) -> None:
        for form in forms:
            self._held[form] -= 1
            if self._held[form]:
                continue
            del self._held[form]
            if len(form) < ANYWHERE_LENGTH:
                self._short_forms.discard(form)
                continue
            for piece in _pieces(form):
                held = self._by_piece[piece]
                held.discard(form)
                if not held:
                    del self._by_piece[piece]

    def _tokens_in(self, text: str, short: bool) -> list[str]:
        """The kept token forms ``text`` may hold (those of ANYWHERE_LENGTH or more; ``short``: the
        shorter ones too), longest first: a token may hold another by chance, never the other way."""
        found: set[str] = set()
        by_piece = self._by_piece
        for place in range(0, len(text) - PIECE + 1, self._step):
            held = by_piece.get(text[place : place + PIECE])
            if held:
                found |= held
        if short:
            found |= self._short_forms
        return sorted(found, key=len, reverse=True)

    def redacted(self, text: str, *, short: bool = True) -> str:
        """``text`` with every credential this client sends replaced by REDACTED; ``short``: also
        those shorter than ANYWHERE_LENGTH, where they stand apart."""
        if not text:
            return text
        # A text shorter than every token holds none: an error code or a short message is not
        # looked through a thousand tokens (review r2redact N1).
        if self._tokens and len(text) >= self._shortest_token:
            # Tokens before the password, which one may contain by chance.
            for form in self._tokens_in(text, short):
                text = _replaced(text, form)
        for form in self._fixed:
            if short or len(form) >= ANYWHERE_LENGTH:
                text = _replaced(text, form)
        return _header_credentials(text)

    def shown(self, text: str, limit: int = SHOWN_LIMIT) -> str:
        """``text``, a registry's, as a message may show it: redacted, then at most ``limit``
        characters."""
        if not text:
            return text
        return _cut(text, limit, self._longest, self.redacted)


# Every Redaction alive, for `in_message`: weakly, so that a client's credentials are forgotten with it.
_ALIVE: weakref.WeakSet[Redaction] = weakref.WeakSet()


def in_message(text: str, limit: int | None = MESSAGE_LIMIT) -> str:
    """A RegistryError's message as it is kept: the credentials of every client alive replaced (those
    of ANYWHERE_LENGTH or more), any credential after Basic or Bearer, then cut to ``limit`` (None:
    not cut)."""
    if not text:
        return text
    alive = list(_ALIVE)

    def redact(part: str) -> str:
        for redaction in alive:
            part = redaction.redacted(part, short=False)
        return _header_credentials(part)

    if limit is None:
        return redact(text)
    return _cut(text, limit, max((redaction.longest for redaction in alive), default=0), redact)


__all__ = [
    "ANYWHERE_LENGTH",
    "MESSAGE_LIMIT",
    "PIECE",
    "REDACTED",
    "SHOWN_LIMIT",
    "STEP",
    "TOKENS_KEPT",
    "Redaction",
    "in_message",
]
