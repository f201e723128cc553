"""A request's own deadline, its ``?timeout=``, read as kube-apiserver reads it (`request_timeout`).

client-go sends ``timeout=`` with every request of a client that has a timeout (``rest.Config.Timeout``,
``kubectl --request-timeout``), and kube-apiserver's WithRequestDeadline keeps it for every request but
a watch: the smaller of it and ``--request-timeout``, counted from the request's receipt. Behind the
aggregator the caller's deadline is that one whatever this server does; a call that waited past it
gave the caller kube-apiserver's generic timeout, never its own answer naming what it waited for
(review-ds4 F3)."""

from __future__ import annotations

from payloadtags.api.errors import ApiError, bad_request

# kube-apiserver's words for a ``timeout`` that is no Go duration (its filters' invalidTimeoutInURL),
# followed by Go's time.ParseDuration error.
INVALID_TIMEOUT = "invalid timeout specified in the request URL"

_NANOSECONDS = {
    b"ns": 1,
    b"us": 1_000,
    "µs".encode(): 1_000,  # U+00B5 MICRO SIGN
    "μs".encode(): 1_000,  # U+03BC GREEK SMALL LETTER MU
    b"ms": 1_000_000,
    b"s": 1_000_000_000,
    b"m": 60_000_000_000,
    b"h": 3_600_000_000_000,
}
_LIMIT = 1 << 63
_DOT = 0x2E


def _digit(byte: int) -> bool:
    return 0x30 <= byte <= 0x39


def _quote(text: bytes) -> str:
    """Go's time.quote: in double quotes, ``"`` and ``\\`` escaped, a byte outside printable ASCII as
    ``\\xNN`` (each byte of a character that is not ASCII)."""
    out = ['"']
    for byte in text:
        if byte < 0x20 or byte >= 0x80:
            out.append(f"\\x{byte:02x}")
        else:
            char = chr(byte)
            out.append("\\" + char if char in '"\\' else char)
    out.append('"')
    return "".join(out)


def parse_go_duration(text: str) -> int:
    """Nanoseconds of ``text`` as Go's time.ParseDuration reads it ("300ms", "-1.5h", "2h45m", "0");
    ValueError with Go's message ("time: invalid duration \\"foo\\"") otherwise. Read as bytes, as Go
    reads a string."""
    original = text.encode("utf-8", "surrogateescape")
    rest = original
    invalid = ValueError("time: invalid duration " + _quote(original))
    negative = False
    if rest[:1] in (b"-", b"+"):
        negative = rest[:1] == b"-"
        rest = rest[1:]
    if rest == b"0":
        return 0
    if not rest:
        raise invalid
    total = 0
    while rest:
        if not (rest[0] == _DOT or _digit(rest[0])):
            raise invalid
        # [0-9]*: an overflow is invalid (Go's leadingInt).
        whole, position = 0, 0
        while position < len(rest) and _digit(rest[position]):
            if whole > _LIMIT // 10:
                raise invalid
            whole = whole * 10 + rest[position] - 0x30
            if whole > _LIMIT:
                raise invalid
            position += 1
        before = position > 0
        rest = rest[position:]
        # (\.[0-9]*)?: digits past what fits are read and dropped (Go's leadingFraction).
        fraction, scale, after = 0, 1.0, False
        if rest[:1] == b".":
            rest = rest[1:]
            position, overflow = 0, False
            while position < len(rest) and _digit(rest[position]):
                if not overflow:
                    if fraction > (_LIMIT - 1) // 10:
                        overflow = True
                    else:
                        grown = fraction * 10 + rest[position] - 0x30
                        if grown > _LIMIT:
                            overflow = True
                        else:
                            fraction, scale = grown, scale * 10
                position += 1
            after = position > 0
            rest = rest[position:]
        if not before and not after:
            raise invalid  # no digits (".s", "-.s")
        position = 0
        while position < len(rest) and not (rest[position] == _DOT or _digit(rest[position])):
            position += 1
        if position == 0:
            raise ValueError("time: missing unit in duration " + _quote(original))
        unit_text, rest = rest[:position], rest[position:]
        unit = _NANOSECONDS.get(unit_text)
        if unit is None:
            raise ValueError(f"time: unknown unit {_quote(unit_text)} in duration {_quote(original)}")
        if whole > _LIMIT // unit:
            raise invalid
        whole *= unit
        if fraction > 0:
            whole += int(float(fraction) * (float(unit) / scale))
            if whole > _LIMIT:
                raise invalid
        total += whole
        if total > _LIMIT:
            raise invalid
    if negative:
        return -total
    if total > _LIMIT - 1:
        raise invalid
    return total


def request_timeout(values: list[str] | None, server_timeout: float) -> float:
    """Seconds a request has, counted from its receipt: ``server_timeout`` (``--request-timeout``), or
    the request's own ``timeout`` (``values``: the query's, the first one read, as Go's Query().Get)
    when it is shorter and above zero (zero or less: none of its own). A value that is no Go duration
    is kube-apiserver's 400 (`INVALID_TIMEOUT`); an empty one, none given."""
    if not values or values[0] == "":
        return server_timeout
    try:
        nanoseconds = parse_go_duration(values[0])
    except ValueError as error:
        raise _invalid(str(error)) from None
    seconds = nanoseconds / 1e9
    return seconds if 0 < seconds < server_timeout else server_timeout


def _invalid(why: str) -> ApiError:
    return bad_request(f"{INVALID_TIMEOUT} - {why}")


__all__ = ["INVALID_TIMEOUT", "parse_go_duration", "request_timeout"]
