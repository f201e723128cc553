"""Registry authentication: HTTP basic and the Docker registry token flow.

The registry says what it wants in the ``WWW-Authenticate`` header of a 401. A Basic challenge gets
the configured credentials. A Bearer challenge names a token service (realm), the service and the scope
it wants; the token from the realm is cached per scope until shortly before it expires, by the injected
reactor's clock, so a steady flow of requests costs one token request per scope and lifetime.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from payloadtags.deferreds import InFlight

from .errors import RegistryAuthFailed
from .redaction import Redaction

DEFAULT_TOKEN_LIFETIME = 60  # what the token specification says to assume without expires_in

_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^",\s]*))\s*,?')


@attrs.frozen
class Challenge:
    scheme: str  # lowercase: "basic", "bearer", ...
    params: dict[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")

    @property
    def error(self) -> str | None:
        return self.params.get("error")


def parse_challenge(header: str | None) -> Challenge | None:
    """Parse one ``WWW-Authenticate`` challenge (the registry sends one). None when absent/garbled."""
    if not header or not header.strip():
        return None
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _PARAM_RE.match(rest, position)
        if match is None or match.end() == position:
            break
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare or ""
        params[match.group(1).lower()] = value
        position = match.end()
    return Challenge(scheme=scheme.lower(), params=params)


def basic_authorization(username: str, password: str | None) -> str:
    raw = f"{username}:{password or ''}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def token_lifetime(expires_in: Any) -> float:
    """Seconds to keep a token: its lifetime less a margin for clock skew and request latency."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        expires_in = DEFAULT_TOKEN_LIFETIME
    try:
        lifetime = float(expires_in)
    except OverflowError:  # an integer beyond any float: JSON sets no bound on numbers
        lifetime = DEFAULT_TOKEN_LIFETIME
    if not math.isfinite(lifetime):  # Python's JSON reads Infinity and NaN too
        lifetime = DEFAULT_TOKEN_LIFETIME
    margin = min(30.0, lifetime * 0.2)
    return max(0.0, lifetime - margin)


@attrs.frozen
class TokenRequest:
    """What the authenticator asks the client's transport to fetch from the token service."""

    realm: str
    params: dict[str, str]
    authorization: str | None


@attrs.frozen
class TokenAnswer:
    token: str
    expires_in: Any


FetchToken = Callable[[TokenRequest], Awaitable[TokenAnswer]]


class Authenticator:
    """Chooses the Authorization header for a request and answers 401 challenges.

    ``scope`` is the client's guess of the token scope a request needs (``repository:a/b:pull``); the
    registry's challenge is authoritative, and the token it leads to is cached under both.
    """

    def __init__(
        self,
        clock: IReactorTime,
        username: str | None,
        password: str | None,
        fetch_token: FetchToken,
        registry: str,
    ) -> None:
        self._clock = clock
        self._username = username
        self._password = password
        self._fetch_token = fetch_token
        self._registry = registry
        self._basic = False  # the registry asked for basic auth once: send it up front from now on
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expiry on the clock)
        self._fetching: InFlight[str, str] = InFlight()
        # The registry's last token challenge: where a token is fetched ahead of a request (`ahead`).
        self._challenge: Challenge | None = None
        # What is sent: the password in the Basic header's base64 (to the registry, to its token
        # service), the tokens issued (`_fetch`); a proxy may decode the base64 it echoes.
        basic = basic_authorization(username, password).partition(" ")[2] if username is not None else None
        self.redaction = Redaction((basic, password))

    def authorization(self, scope: str) -> str | None:
        """The header to send up front, when one is known to be needed."""
        if self._basic and self._username is not None:
            return basic_authorization(self._username, self._password)
        cached = self._tokens.get(scope)
        if cached is not None:
            token, expiry = cached
            if self._clock.seconds() < expiry:
                return f"Bearer {token}"
            del self._tokens[scope]
        return None

    async def ahead(self, scope: str) -> str | None:
        """`authorization`, with a token for ``scope`` fetched now, before the request, when there is
        none and the registry is known to want tokens (it has challenged for one): for a request
        whose last checks must be followed by nothing but its own round trip. Where the guess of the
        scope is wrong, the registry's 401 still leads to the token it names (`answer`)."""
        current = self.authorization(scope)
        challenge = self._challenge
        if current is not None or challenge is None or self._basic:
            return current
        token = await self._fetching.join(scope, lambda: self._fetch(challenge, scope))
        return f"Bearer {token}"

    async def answer(self, challenge_header: str | None, scope: str, sent: str | None) -> str:
        """The Authorization header to retry with after a 401, or RegistryAuthFailed."""
        challenge = parse_challenge(challenge_header)
        if challenge is None:
            raise RegistryAuthFailed(
                f"registry {self._registry} answered 401 without saying how to authenticate"
            )
        if challenge.scheme == "basic":
            if self._username is None:
                raise RegistryAuthFailed(
                    f"registry {self._registry} requires a username and password; none are configured"
                )
            if sent is not None and sent.startswith("Basic "):
                raise self.rejected()
            self._basic = True
            return basic_authorization(self._username, self._password)
        if challenge.scheme == "bearer":
            if not challenge.realm:
                raise RegistryAuthFailed(
                    f"registry {self._registry} asked for a token without naming a token service (realm)"
                )
            self._basic = False
            self._challenge = challenge
            wanted = challenge.scope or ""
            if sent is not None:
                # The registry refused what we sent (expired early, revoked): never offer it again.
                for key in (scope, wanted):
                    cached = self._tokens.get(key)
                    if cached is not None and f"Bearer {cached[0]}" == sent:
                        del self._tokens[key]
            # Concurrent requests for one scope share one token request, which goes on when one of
            # them gives up: the token it brings serves the next.
            token = await self._fetching.join(wanted, lambda: self._fetch(challenge, wanted))
            # The next request of this kind looks its guess up: keep the token under it too.
            entry = self._tokens.get(wanted)
            if entry is not None:
                self._tokens[scope] = entry
            return f"Bearer {token}"
        # The scheme as sent, redacted before anything changes its case: lower-cased, an echoed
        # credential would no longer be found (review r2redact L1).
        sent_scheme = (challenge_header or "").strip().partition(" ")[0]
        raise RegistryAuthFailed(
            f"registry {self._registry} asks for {self.redaction.shown(sent_scheme)!r} authentication, "
            "which this client does not support (only Basic and Bearer tokens)"
        )

    def rejected(self, challenge_header: str | None = None) -> RegistryAuthFailed:
        """The error for a request that is still refused after authenticating."""
        challenge = parse_challenge(challenge_header)
        if challenge is not None and challenge.error == "insufficient_scope":
            return RegistryAuthFailed(
                f"registry {self._registry} denied access: the token does not grant "
                f"{self.redaction.shown(challenge.scope or 'the requested scope')}; check the account's "
                "permissions",
                denied=True,
            )
        if self._username is None:
            return RegistryAuthFailed(
                f"registry {self._registry} refused anonymous access; configure registry credentials"
            )
        if not self._username:
            # A token alone is sent with an empty user name (cli); say so, the registry may want one.
            return RegistryAuthFailed(
                f"registry {self._registry} rejected the credentials: the password (or token) sent with an "
                "empty user name; check it, or configure the registry username it belongs to"
            )
        return RegistryAuthFailed(
            f"registry {self._registry} rejected the credentials of user {self._username!r}; "
            "check the configured registry username and password"
        )

    async def _fetch(self, challenge: Challenge, scope: str) -> str:
        params: dict[str, str] = {}
        if challenge.service:
            params["service"] = challenge.service
        if scope:
            params["scope"] = scope
        authorization = None
        if self._username is not None:
            params["account"] = self._username
            authorization = basic_authorization(self._username, self._password)
        assert challenge.realm is not None
        answer = await self._fetch_token(TokenRequest(challenge.realm, params, authorization))
        self.redaction.issued(answer.token)
        self._tokens[scope] = (answer.token, self._clock.seconds() + token_lifetime(answer.expires_in))
        return answer.token


__all__ = [
    "Authenticator",
    "Challenge",
    "TokenAnswer",
    "TokenRequest",
    "basic_authorization",
    "parse_challenge",
    "token_lifetime",
]
