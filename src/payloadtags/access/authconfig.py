"""Authentication configuration: from flags, or from ConfigMap kube-system/extension-apiserver-authentication.

As in k8s.io/apiserver, each section (client certificates; request headers) comes from the flags when
its CA flag is given and from the ConfigMap otherwise, and the ConfigMap is watched so that a rotated
CA or allowed-name list applies to new handshakes and to the next request of open connections (the
authenticators verify a connection's chain again against the current CAs).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.logger import Logger

from payloadtags.access.authn import (
    Authenticator,
    AuthenticatorChain,
    ClientCertificateAuthenticator,
    Credentials,
    UserInfo,
    Verdicts,
    load_pem_bundle,
)
from payloadtags.access.requestheader import RequestHeaderAuthenticator, RequestHeaderConfig

log = Logger()

CONFIGMAP_NAMESPACE = "kube-system"
CONFIGMAP_NAME = "extension-apiserver-authentication"


class ConfigMapError(ValueError):
    """The ConfigMap holds something unusable; the previous configuration stays in force."""


@attrs.frozen
class AuthenticationConfig:
    client_cas: tuple[x509.Certificate, ...] = ()
    requestheader: RequestHeaderConfig = attrs.field(factory=RequestHeaderConfig)

    @property
    def trusted_cas(self) -> tuple[x509.Certificate, ...]:
        """Every CA a client certificate may chain to during the TLS handshake."""
        seen: dict[bytes, x509.Certificate] = {}
        for cert in (*self.client_cas, *self.requestheader.authorities):
            seen.setdefault(cert.public_bytes(Encoding.DER), cert)
        return tuple(seen.values())


def _string_list(data: Mapping[str, str], key: str, *, keep_empty: bool = False) -> tuple[str, ...] | None:
    """A JSON-encoded string array; None when the key is absent or empty ("unset"). Empty elements
    are dropped, as k8s.io/apiserver skips empty header names, unless ``keep_empty``: it keeps an
    empty allowed name, so `[""]` allows only a certificate without CN, where no names allow any."""
    raw = data.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise ConfigMapError(f"{key} is not a JSON array: {error}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigMapError(f"{key} must be a JSON array of strings")
    return tuple(v for v in value if v or keep_empty)


def _bundle(data: Mapping[str, str], key: str) -> tuple[x509.Certificate, ...]:
    """A PEM bundle; none when the key is absent (that section is not configured). A key that is
    there but holds no certificate is refused, as k8s.io/apiserver refuses empty CA content: an
    emptied value must not silently take all trust away."""
    raw = data.get(key)
    if raw is None:
        return ()
    try:
        bundle = tuple(load_pem_bundle(raw.encode()))
    except ValueError as error:
        raise ConfigMapError(f"{key} is not a PEM certificate bundle: {error}") from None
    if not bundle:
        raise ConfigMapError(f"{key} is empty (no PEM certificate)")
    return bundle


def from_configmap(data: Mapping[str, str]) -> AuthenticationConfig:
    defaults = RequestHeaderConfig()
    requestheader = RequestHeaderConfig(
        authorities=_bundle(data, "requestheader-client-ca-file"),
        allowed_names=_string_list(data, "requestheader-allowed-names", keep_empty=True) or (),
        username_headers=_string_list(data, "requestheader-username-headers") or defaults.username_headers,
        group_headers=_string_list(data, "requestheader-group-headers") or defaults.group_headers,
        extra_prefixes=_string_list(data, "requestheader-extra-headers-prefix") or defaults.extra_prefixes,
        uid_headers=_string_list(data, "requestheader-uid-headers") or (),
    )
    return AuthenticationConfig(client_cas=_bundle(data, "client-ca-file"), requestheader=requestheader)


@attrs.frozen
class FlagConfig:
    """What the command line fixed; a section left None is taken from the ConfigMap."""

    client_cas: tuple[x509.Certificate, ...] | None = None
    requestheader: RequestHeaderConfig | None = None

    @property
    def complete(self) -> bool:
        return self.client_cas is not None and self.requestheader is not None

    def over(self, base: AuthenticationConfig) -> AuthenticationConfig:
        return AuthenticationConfig(
            client_cas=self.client_cas if self.client_cas is not None else base.client_cas,
            requestheader=self.requestheader if self.requestheader is not None else base.requestheader,
        )


@attrs.define
class DynamicAuthentication:
    """The authentication chain for the current configuration; ``update`` swaps it atomically."""

    flags: FlagConfig
    token: Authenticator | None = None
    listeners: list[Callable[[AuthenticationConfig], None]] = attrs.field(factory=list)
    config: AuthenticationConfig = attrs.field(init=False)
    _requestheader: RequestHeaderAuthenticator = attrs.field(init=False)
    _chain: AuthenticatorChain = attrs.field(init=False)

    _base: AuthenticationConfig = attrs.field(factory=AuthenticationConfig, init=False)
    # Whether the ConfigMap has been read (listed) once, and whether the missing request-header CA
    # was warned about since it last went missing: one line per change, not per relist.
    _synced: bool = attrs.field(default=False, init=False)
    _warned_no_requestheader: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self._install(self.flags.over(self._base))

    def _install(self, config: AuthenticationConfig) -> None:
        self.config = config
        self._requestheader = RequestHeaderAuthenticator(config.requestheader)
        chain: list[Authenticator] = [
            self._requestheader,
            ClientCertificateAuthenticator(list(config.client_cas)),
        ]
        if self.token is not None:
            chain.append(self.token)
        self._chain = AuthenticatorChain(chain)

    def update_from_configmap(self, data: Mapping[str, str]) -> None:
        try:
            base = from_configmap(data)
        except ConfigMapError as error:
            log.error(
                "{namespace}/{name}: {error}; keeping the previous authentication configuration",
                namespace=CONFIGMAP_NAMESPACE,
                name=CONFIGMAP_NAME,
                error=str(error),
            )
            return
        self._base = base
        self._apply(self.flags.over(base))

    def configmap_synced(self) -> None:
        """The ConfigMap has been listed (found or not): what it provides is known now."""
        self._synced = True
        self._check_requestheader()

    def _check_requestheader(self) -> None:
        # As k8s.io/apiserver: without a request-header CA every request through the aggregation
        # layer is 401, while readiness passes; the log is where an operator learns why.
        if not self._synced:
            return
        missing = not self.config.requestheader.authorities
        if missing and not self._warned_no_requestheader:
            log.warn(
                "no request-header CA: --requestheader-client-ca-file is not set and {namespace}/{name} "
                "provides no requestheader-client-ca-file, so request-header client certificate "
                "authentication won't work (requests through the aggregation layer will be 401)",
                namespace=CONFIGMAP_NAMESPACE,
                name=CONFIGMAP_NAME,
            )
        self._warned_no_requestheader = missing

    def update_flags(self, flags: FlagConfig) -> None:
        """New CA files from the command line's paths (rotated on disk)."""
        self.flags = flags
        self._apply(flags.over(self._base))

    def _apply(self, config: AuthenticationConfig) -> None:
        if config == self.config:
            return
        self._install(config)
        log.info(
            "authentication configuration updated: {clients} client CA(s), {proxies} requestheader CA(s), "
            "allowed names {names}",
            clients=len(config.client_cas),
            proxies=len(config.requestheader.authorities),
            names=list(config.requestheader.allowed_names) or "any",
        )
        for listener in self.listeners:
            listener(config)
        self._check_requestheader()

    def is_front_proxy(self, chain: tuple[x509.Certificate, ...], verdicts: Verdicts | None = None) -> bool:
        """Whether a verified client certificate chain (leaf first) is the front proxy's. ``verdicts``:
        its connection's (`Credentials.verdicts`), so that its first request need not verify it again."""
        if not chain:
            return False
        credentials = Credentials(peer_certificate=chain[0], headers={}, peer_chain=chain, verdicts=verdicts)
        return self._requestheader.trusted(credentials)

    def identity_headers(self, credentials: Credentials) -> list[str]:
        """Identity headers on a request, from the front proxy or forged."""
        return self._requestheader.identity_headers(credentials.headers)

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        return await self._chain.authenticate(credentials)
