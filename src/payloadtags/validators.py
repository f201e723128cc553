"""Checks shared by the option records (registry settings, cleanup and leader election) and by start-up."""

from __future__ import annotations

import base64
import errno
import ipaddress
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult

import attrs

# What a file named by a flag may hold, far over any PEM bundle, kubeconfig, token or password: a flag
# naming /dev/zero was read without end (MemoryError at start, or an OOM kill) (r1cli L3).
FILE_LIMIT = 16 * 1024 * 1024


def read_file(path: str | Path, limit: int = FILE_LIMIT) -> bytes:
    """A file's bytes, at most ``limit`` of them, else OSError, whose strerror says why in the words a
    refusal line uses. A pipe is read as kube-apiserver (os.ReadFile) reads it:
    `--registry-password-file=<(pass show x)` and /dev/stdin keep a secret off disk (r2cli L1). The
    bound, not the file's type, stops a device such as /dev/zero, or a larger file, from being read
    without end."""
    # Opened without waiting for a writer: a named pipe that has none then reads as empty (refused below)
    # instead of hanging the start; the reads themselves wait for a writer that is there.
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as f:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        os.set_blocking(descriptor, True)
        data = f.read(limit + 1)
    if not data and stat.S_ISFIFO(mode):
        # No writer (or one that wrote nothing): refused, where an empty credential file would be taken
        # as no credential.
        raise OSError(errno.ENODATA, "a pipe with nothing written to it", str(path))
    if len(data) > limit:
        bound = f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit} bytes"
        raise OSError(errno.EFBIG, f"larger than {bound}", str(path))
    return data


def positive(_instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    """A count or a duration that must be above zero; the message names the field."""
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def bounded_decimal(digits: str, maximum: int) -> int | None:
    """``digits`` (ASCII 0-9 only, checked by the caller) as a number, or None above ``maximum``.
    Leading zeros go first and the length is checked before int(): int() refuses a string of over
    4300 digits with a ValueError, and a client may send one."""
    significant = digits.lstrip("0")
    if len(significant) > len(str(maximum)):
        return None
    value = int(significant or "0")
    return value if value <= maximum else None


def header_safe(text: str) -> bool:
    """Whether an HTTP header's value can carry ``text`` as it is: no control character but a tab (Go's
    httpguts.ValidHeaderFieldValue, by which kubectl fails a request with a line end or NUL in a token)."""
    return not any((char < " " and char != "\t") or char == "\x7f" for char in text)


# Go's unicode.IsSpace, the set strings.TrimSpace takes off a token file's ends in client-go: Python's
# str.isspace() set but for U+001C-U+001F, which Go keeps (and kubectl then cannot send).
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def go_trim_space(text: str) -> str:
    """``text`` without the white space at its ends, as Go's strings.TrimSpace takes it off."""
    return text.strip(GO_SPACE)


def utf8_encodable(text: str) -> bool:
    """Whether strict UTF-8 carries ``text``: a lone surrogate (JSON's ``\\ud800``) is the only str it
    refuses."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def without_line_ends(text: str) -> str:
    """``text`` without its CR and LF characters, which Go's base64 decoding skips (kubeconfig data
    fields, continue tokens)."""
    return text.replace("\r", "").replace("\n", "")


def unpadded_urlsafe_b64decode(text: str) -> bytes:
    """URL-safe base64 written without its padding (Go's RawURLEncoding, JWS) decoded, as Python's
    lenient decoding does it. It takes more than Go's decoder: padded text (``AB==``, ``AB=``), the
    standard alphabet's ``+`` and ``/`` (as ``-`` and ``_``), and other ASCII characters, which are
    dropped (``AB!CD``; ``!!!!`` is empty): a caller that must refuse them checks the text first.

    Raises binascii.Error (a ValueError) when what is left is no whole base64: a length of 1 modulo 4
    (``A``, ``ABCDE``); the padding, counted before the characters were dropped, wrong for what is
    left (``AB!``, ``ABC!``); an ``=`` before the end (``AB=C``). Raises a plain ValueError, not
    binascii.Error, for text that is not ASCII (``é``)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# One DNS label as the resolver takes it (RFC 1123); a name in another script arrives here as IDNA.
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE)


def address_problem(parts: SplitResult) -> str | None:
    """What is wrong with the host[:port] of a split URL, or None. Start-up checks it because an HTTP
    client only finds out at the first request, long after start-up said the settings were fine."""
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number or out of range
    except ValueError as error:
        return str(error)
    host = parts.hostname
    if not host:
        return "no host name"
    if parts.netloc.rpartition("@")[2].startswith("["):
        return None  # an IPv6 literal, which urlsplit has already checked
    try:
        ipaddress.IPv4Address(host)
        return None
    except ValueError:
        pass
    try:
        labels = host.encode("idna").decode("ascii").removesuffix(".").split(".")
    except UnicodeError:
        labels = [""]
    if not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return f"{host!r} is not a host name (DNS labels: letters, digits, '-') or an IP address"
    return None


# '@' and the two characters NFKC normalization makes one of (U+FF20 full-width, U+FE6B small), as a
# CJK input method may type it: urlsplit refuses a netloc holding them as it would user information,
# and its error quotes the netloc whole, with the password before one (review r10cfg L3).
AT_SIGNS = "@\uff20\ufe6b"


def userinfo_span(url: str) -> tuple[int, int]:
    """Where a URL's possible ``user:password`` starts and ends (empty when it has no ``@``): from the
    authority's start (after ``http://`` or ``https://``; a URL without either is taken as authority
    first) to the last ``@`` (or another of `AT_SIGNS`) anywhere after it. The authority ends at the
    first ``/``, ``?`` or ``#`` for urlsplit and Go's url.Parse alike, but a password may hold those
    unencoded (base64 ones hold ``/``): an ``@`` after them may still end a password, which the URL's
    host (a port that is not one) would then show."""
    start = url.find("//")
    # Only a "//" right after http: or https: (or at the start) opens the authority: in
    # "user:pa//ss@host" it is inside the password, and in "user://pass@host" (a base64 password may
    # begin with "//") "user:" would pass for a scheme. Only http(s) servers are taken, so another
    # scheme is refused anyway, with all before its last "@" redacted.
    opens = start >= 0 and url[:start].lower() in ("", "http:", "https:")
    start = start + 2 if opens else 0
    return start, max(start, *(url.rfind(at, start) for at in AT_SIGNS))


def has_userinfo(url: str) -> bool:
    """Whether a URL may carry ``user[:password]@`` before its host."""
    start, end = userinfo_span(url)
    return end > start or url.startswith(tuple(AT_SIGNS), start)


def at_in_authority(url: str) -> bool:
    """Whether an ``@`` stands before the first ``/``, ``?`` or ``#`` after the authority's start: user
    information as URL parsers read it, rather than an ``@`` that only may end a password."""
    start = userinfo_span(url)[0]
    ends = [found for found in (url.find(c, start) for c in "/?#") if found >= 0]
    authority = url[start : min(ends, default=len(url))]
    return any(at in authority for at in AT_SIGNS)


def without_userinfo(url: str) -> str:
    """The URL with any ``user:password@`` replaced, for every message, log line and repr that
    shows a server (the cluster API's, the registry's)."""
    start, end = userinfo_span(url)
    return url[:start] + "<redacted>" + url[end:] if has_userinfo(url) else url


def escaped_forms(text: str) -> tuple[str, ...]:
    """The text as typed and as repr() writes it inside either quote (argparse's %r, an OSError's
    filename: a tab as \\t, a quote escaped when the whole text holds both kinds)."""
    both = repr(text + "'\"")  # single-quoted, each ' escaped: the text, then \'" and the closing '
    return (text, repr(text)[1:-1], both[1:-4])


def file_flag_forms(value: str) -> tuple[str, ...]:
    """The paths a message may name a file flag's value by: as typed, as pathlib makes it (a URL's
    "https://" as "https:/"), and the folder a kubeconfig's relative files (tokenFile, client-key,
    certificate-authority) are joined to, which a message names them under (review r11misc F1)."""
    return (value, str(Path(value)), os.path.dirname(os.path.abspath(value)))


def paths_redacted(message: str, paths: Iterable[str]) -> str:
    """``message`` with each of ``paths`` that holds an '@' shown as `without_userinfo` shows it, wherever
    the message names it whole: as given, or quoted by repr() (an OSError's text repeats its filename
    so). A URL given to a file flag may name a file under the working directory, and so may a file
    beside it (a kubeconfig's tokenFile). Never any end of a path: a kubeconfig user "alice@corp" is not
    the folder /home/alice@corp. The longest first: a shorter path inside a longer one, redacted first,
    would leave the longer one's start shown and the longer one no longer found."""
    # has_userinfo rather than '@' in it: on a path the two agree, and it is where what counts as an
    # at sign is decided.
    echoes = {form for path in paths if has_userinfo(path) for form in escaped_forms(path)}
    for echo in sorted(echoes, key=len, reverse=True):
        message = message.replace(echo, without_userinfo(echo))
    return message


def cut_end_redacted(text: str, paths: Iterable[str]) -> str:
    """``text``, which was cut short, with the end of it that may start one of ``paths`` holding an '@'
    redacted. `paths_redacted` finds a path only whole, and a cut inside one leaves its start, the
    user information first (the folder of a URL that took a file flag's place, `/cwd/https:/user:pw@r`),
    at the text's end. The longest such end, in any of the forms `paths_redacted` looks for."""
    longest = 0
    for path in paths:
        if has_userinfo(path):
            for form in escaped_forms(path):
                ends = range(min(len(form), len(text)), longest, -1)
                longest = next((size for size in ends if text.endswith(form[:size])), longest)
    return text[: len(text) - longest] + "<redacted>" if longest else text


__all__ = [
    "AT_SIGNS",
    "address_problem",
    "at_in_authority",
    "bounded_decimal",
    "cut_end_redacted",
    "escaped_forms",
    "file_flag_forms",
    "has_userinfo",
    "header_safe",
    "paths_redacted",
    "positive",
    "unpadded_urlsafe_b64decode",
    "userinfo_span",
    "utf8_encodable",
    "without_line_ends",
    "without_userinfo",
]
