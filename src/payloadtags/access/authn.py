"""Who is calling: the authentication chain of k8s.io/apiserver, in its order."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, Protocol, TypeVar

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from payloadtags.identity import AUTHENTICATED, MASTERS, UserInfo
from payloadtags.validators import utf8_encodable

T = TypeVar("T")


@attrs.frozen
class Credentials:
    """What a request brings that may identify its caller."""

    peer_certificate: x509.Certificate | None
    # Lower-cased names; values decoded as UTF-8, each byte that is not kept as a lone surrogate
    # (Python's "surrogateescape"), so that a reader can refuse it instead of reading another text.
    headers: dict[str, list[str]]
    # The chain the TLS handshake verified, leaf first, ending at the trusted CA it chained to.
    peer_chain: tuple[x509.Certificate, ...] = ()
    # Why the certificate the handshake verified cannot be read (then peer_certificate is None).
    unreadable_certificate: str | None = None
    # Who the request's work is shared out by: the HTTP layer's client (a source address, or one
    # connection of the front proxy). The TokenReviews waiting for a slot are let through in turns by it.
    client: Hashable = None

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


class CredentialsRefused(Exception):
    """Credentials from a trusted source that cannot be read (a front proxy's identity header that is
    not UTF-8): the request is refused with a 401 that says why, whatever else it brings."""


def is_utf8(text: str) -> bool:
    """Whether a header value, decoded as for `Credentials.headers`, was valid UTF-8 on the wire."""
    # Decoded with surrogateescape: a byte that was not UTF-8 is a lone surrogate. ASCII, the usual
    # case, needs no encoding to tell.
    return text.isascii() or utf8_encodable(text)


class Authenticator(Protocol):
    """One way of telling who is calling (a client certificate, a bearer token, front-proxy headers)."""

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        """The caller, or None when these credentials do not identify anyone this way."""
        ...


class RequestAuthenticator(Authenticator, Protocol):
    """What the HTTP layer needs: who is calling, and which headers it must not let through.

    The front-proxy identity headers (``X-Remote-User``, ``X-Remote-Group``, ``X-Remote-Extra-*``, or
    the names configured for them) are believed only from a verified front proxy. The HTTP layer
    removes every header that `identity_headers` names right after authentication, before any handler
    reads the request: from any other caller they are forged, and from the front proxy the identity
    they carry is in the UserInfo now (a watch's request would hold a user's groups twice, raw and
    decoded, for up to an hour). See docs/access.md.
    """

    def identity_headers(self, credentials: Credentials) -> list[str]:
        """The lower-cased names, among ``credentials.headers``, that carry a front-proxy identity,
        whoever sent them."""
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


class ChainDecisions(Generic[T]):
    """What an authenticator decided about a connection's certificate chain, kept by the identity of
    the chain's objects (the TLS layer keeps one chain per connection, so every request of a
    kept-alive connection brings the same objects). Not by value: a certificate's hash costs about
    as much as the decision itself.

    Each entry holds its certificate and chain, so their ids cannot be reused by other objects while
    it is kept; a different certificate is a different key, so no decision is shared between callers.
    An authenticator keeps its own, made anew with it on every configuration (CA) change."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._kept: dict[tuple[int, int], tuple[x509.Certificate, tuple[x509.Certificate, ...], T]] = {}

    def get(self, credentials: Credentials, decide: Callable[[Credentials], T]) -> T:
        cert, chain = credentials.peer_certificate, credentials.peer_chain
        key = (id(cert), id(chain))
        kept = self._kept.get(key)
        if kept is not None and kept[0] is cert and kept[1] is chain:
            return kept[2]
        decided = decide(credentials)
        if cert is not None:
            if len(self._kept) >= self._size:
                del self._kept[next(iter(self._kept))]  # the oldest
            self._kept[key] = (cert, chain, decided)
        return decided


def subject_common_name(certificate: x509.Certificate) -> str:
    """The subject's common name as Go reads it (``pkix.Name.CommonName``, which k8s.io/apiserver
    takes as a client certificate's user and checks against the front proxy's allowed names): the
    LAST CN attribute when the subject holds several, "" when it holds none. Taking another one would
    make the same certificate a different caller here than in kube-apiserver."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[-1].value) if names else ""


def load_pem_bundle(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data) if data.strip() else []


@attrs.frozen
class ClientCertificateAuthenticator:
    """A certificate signed by ``--client-ca-file``: user = CN, groups = O."""

    authorities: list[x509.Certificate]
    _users: ChainDecisions[UserInfo | None] = attrs.field(
        factory=ChainDecisions, init=False, eq=False, repr=False
    )

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        return self._users.get(credentials, self._user)

    def _user(self, credentials: Credentials) -> UserInfo | None:
        cert = credentials.peer_certificate
        if cert is None or not credentials.chains_to(self.authorities):
            return None
        name = subject_common_name(cert)
        if not name:
            return None
        groups = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
        return UserInfo(name=name, groups=groups)


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
    "ChainDecisions",
    "ClientCertificateAuthenticator",
    "Credentials",
    "CredentialsRefused",
    "RequestAuthenticator",
    "UserInfo",
    "is_utf8",
    "issued_by",
    "load_pem_bundle",
    "subject_common_name",
]
