"""Who is calling: the authentication chain of k8s.io/apiserver, in its order."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from payloadtags.identity import AUTHENTICATED, MASTERS, UserInfo


@attrs.frozen
class Credentials:
    """What a request brings that may identify its caller."""

    peer_certificate: x509.Certificate | None
    headers: dict[str, list[str]]  # lower-cased names
    # The chain the TLS handshake verified, leaf first, ending at the trusted CA it chained to.
    peer_chain: tuple[x509.Certificate, ...] = ()

    def chains_to(self, authorities: Sequence[x509.Certificate]) -> bool:
        """Whether the peer certificate was verified up to one of ``authorities`` (through
        intermediates too), or, without a recorded chain, was issued by one of them directly."""
        cert = self.peer_certificate
        if cert is None or not authorities:
            return False
        if len(self.peer_chain) > 1 and self.peer_chain[0] == cert:
            return any(link in authorities for link in self.peer_chain[1:])
        return issued_by(cert, authorities)

    def header(self, name: str) -> list[str]:
        return self.headers.get(name.lower(), [])


class Authenticator(Protocol):
    """One way of telling who is calling (a client certificate, a bearer token, front-proxy headers)."""

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        """The caller, or None when these credentials do not identify anyone this way."""
        ...


class RequestAuthenticator(Authenticator, Protocol):
    """What the HTTP layer needs: who is calling, and which headers it must not let through.

    The front-proxy identity headers (``X-Remote-User``, ``X-Remote-Group``, ``X-Remote-Extra-*``, or
    the names configured for them) are believed only from a verified front proxy. From any other
    caller they are forged: the HTTP layer removes every header that `untrusted_identity_headers`
    names right after authentication, before any handler reads the request. See docs/access.md.
    """

    def untrusted_identity_headers(self, credentials: Credentials) -> list[str]:
        """The lower-cased names, among ``credentials.headers``, that claim an identity the
        connection is not trusted to assert; empty for a trusted front proxy."""
        ...


def issued_by(certificate: x509.Certificate, authorities: Sequence[x509.Certificate]) -> bool:
    """Whether one of ``authorities`` signed ``certificate`` (the TLS handshake already checked the chain
    and validity; this tells which trust root it chained to)."""
    return any(_signed_by(certificate, authority) for authority in authorities)


@functools.lru_cache(maxsize=1024)
def _signed_by(certificate: x509.Certificate, authority: x509.Certificate) -> bool:
    # Cached: a kept-alive connection presents the same certificate on every request, and checking
    # a signature costs more than the rest of authentication.
    if authority.subject != certificate.issuer:
        return False
    try:
        certificate.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def load_pem_bundle(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data) if data.strip() else []


@attrs.define
class ClientCertificateAuthenticator:
    """A certificate signed by ``--client-ca-file``: user = CN, groups = O."""

    authorities: list[x509.Certificate]

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        cert = credentials.peer_certificate
        if cert is None or not credentials.chains_to(self.authorities):
            return None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names or not str(names[0].value):
            return None
        groups = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
        return UserInfo(name=str(names[0].value), groups=groups)


@attrs.define
class AuthenticatorChain:
    authenticators: list[Authenticator]

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        for authenticator in self.authenticators:
            user = await authenticator.authenticate(credentials)
            if user is not None:
                return user.with_authenticated_group()
        return None


__all__ = [
    "AUTHENTICATED",
    "MASTERS",
    "Authenticator",
    "AuthenticatorChain",
    "ClientCertificateAuthenticator",
    "Credentials",
    "RequestAuthenticator",
    "UserInfo",
    "issued_by",
    "load_pem_bundle",
]
