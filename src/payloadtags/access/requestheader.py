"""Front-proxy (request header) authentication: identity headers set by kube-apiserver's aggregator.

The headers are believed only on a connection whose client certificate chains to the requestheader
CA and, when allowed names are configured, whose CN is one of them. Anywhere else they are forged.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable
from urllib.parse import unquote

import attrs
from cryptography import x509

from payloadtags.access.authn import (
    ChainDecisions,
    Credentials,
    CredentialsRefused,
    TrustAnchors,
    UserInfo,
    is_utf8,
    subject_common_name,
    utc_now,
)


@attrs.frozen
class RequestHeaderConfig:
    authorities: tuple[x509.Certificate, ...] = ()
    allowed_names: tuple[str, ...] = ()
    username_headers: tuple[str, ...] = ("X-Remote-User",)
    group_headers: tuple[str, ...] = ("X-Remote-Group",)
    extra_prefixes: tuple[str, ...] = ("X-Remote-Extra-",)
    uid_headers: tuple[str, ...] = ()


def _utf8(header: str, values: list[str]) -> list[str]:
    """The values of an identity header, which the aggregator sends as UTF-8 (client-go writes Go
    strings as they are). One that is not cannot name a user or group any RBAC binding names: the
    request is refused rather than identified as some other text."""
    if not all(map(is_utf8, values)):
        raise CredentialsRefused(f"the front proxy's {header} header is not valid UTF-8")
    return values


def _first(names: tuple[tuple[str, str], ...], headers: dict[str, list[str]]) -> str:
    """The first value of the first of ``names`` whose first value is not empty, as k8s.io/apiserver
    reads it (Go's ``Header.Get``: a later value of the same header is never the name, so
    ``["", "bob"]`` names nobody from that header); each header read up to that one is checked as
    UTF-8 whole, as a header is read; "" when none has one."""
    for header, key in names:
        values = headers.get(key)
        if values and _utf8(header, values)[0]:
            return values[0]
    return ""


# Go's url.PathUnescape accepts a `%` only before two hex digits; anything else fails the whole key.
_GO_ESCAPED = re.compile(r"(?:[^%]|%[0-9a-fA-F]{2})*")


def _extra_key(header: str, prefix: str) -> str:
    # kube-apiserver sends the keys lower-cased and percent-encoded (UTF-8), so the name is ASCII.
    key = header[len(prefix) :].lower()
    if key.isascii():
        if not _GO_ESCAPED.fullmatch(key):
            # k8s.io/apiserver's unescapeExtraKey keeps a key PathUnescape fails on exactly as sent,
            # where Python's unquote would decode its good escapes and leave the broken ones.
            return key
        try:
            return unquote(key, errors="strict")
        except UnicodeDecodeError:
            pass
    raise CredentialsRefused(f"the front proxy's {header} header name is not a percent-encoded UTF-8 key")


@attrs.frozen
class RequestHeaderAuthenticator:
    config: RequestHeaderConfig
    # The time the front proxy's certificate is checked at (its validity): injected by tests.
    now: Callable[[], datetime.datetime] = attrs.field(default=utc_now, eq=False, repr=False)
    _anchors: TrustAnchors = attrs.field(init=False, eq=False, repr=False)
    # Asked twice per request (who is calling; which headers to strip) and once per connection.
    _trust: ChainDecisions[bool] = attrs.field(init=False, eq=False, repr=False)
    # The configuration's header names as every request looks them up, made once with it rather than
    # on each request (issue #11): (name as configured, lower-cased) per header; the identity names.
    _users: tuple[tuple[str, str], ...] = attrs.field(init=False, eq=False, repr=False)
    _groups: tuple[tuple[str, str], ...] = attrs.field(init=False, eq=False, repr=False)
    _uids: tuple[tuple[str, str], ...] = attrs.field(init=False, eq=False, repr=False)
    _prefixes: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False)
    _exact: frozenset[str] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        config = self.config
        object.__setattr__(self, "_anchors", TrustAnchors(config.authorities))
        object.__setattr__(self, "_trust", ChainDecisions(now=self.now, anchors=config.authorities))
        for field, names in (
            ("_users", config.username_headers),
            ("_groups", config.group_headers),
            ("_uids", config.uid_headers),
        ):
            object.__setattr__(self, field, tuple((h, h.lower()) for h in names))
        object.__setattr__(self, "_prefixes", tuple(p.lower() for p in config.extra_prefixes))
        exact = (*config.username_headers, *config.group_headers, *config.uid_headers)
        object.__setattr__(self, "_exact", frozenset(h.lower() for h in exact))

    def identity_headers(self, names: Iterable[str]) -> list[str]:
        """Which of ``names`` (lower-case) carry identity and must be removed from an untrusted request:
        the configured user, group and uid headers and every header under an extra prefix."""
        exact, prefixes = self._exact, self._prefixes
        return [n for n in names if n in exact or (prefixes and n.startswith(prefixes))]

    def trusted(self, credentials: Credentials) -> bool:
        return self._trust.get(credentials, self._trusted)

    def _trusted(self, credentials: Credentials, now: datetime.datetime) -> bool:
        cert = credentials.peer_certificate
        if cert is None or not credentials.chains_to(self._anchors, now):
            return False
        return not self.config.allowed_names or subject_common_name(cert) in self.config.allowed_names

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        if not self.trusted(credentials):
            return None
        headers = credentials.headers
        name = _first(self._users, headers)
        if not name:
            return None
        groups: tuple[str, ...] = ()
        for header, key in self._groups:
            values = headers.get(key)
            if values:
                # Empty values name no group: k8s.io/apiserver drops them too.
                groups += tuple(v for v in _utf8(header, values) if v)
        uid = _first(self._uids, headers)
        extra: dict[str, list[str]] = {}
        for prefix in self._prefixes:
            for header, values in headers.items():
                # A header named exactly the prefix is an extra whose key is "", as in k8s.io/apiserver
                # (and it is stripped from an untrusted request like any other prefixed one).
                if header.startswith(prefix):
                    extra.setdefault(_extra_key(header, prefix), []).extend(_utf8(header, values))
        return UserInfo(
            name=name,
            uid=uid,
            groups=groups,
            extra=tuple(sorted((k, tuple(v)) for k, v in extra.items())),
        )
