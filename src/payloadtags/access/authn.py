"""Who is calling: the authentication chain of k8s.io/apiserver, in its order."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Hashable, Iterable, MutableMapping, Sequence
from typing import Generic, Protocol, TypeVar

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, PublicKeyAlgorithmOID
from OpenSSL import crypto

from payloadtags.identity import AUTHENTICATED, MASTERS, UserInfo
from payloadtags.validators import utf8_encodable

T = TypeVar("T")

# What the authenticators decided about one connection's certificate chain, by authenticator (see
# ChainDecisions). Its owner keeps one per connection, gone with it (tls.connection_verdicts).
Verdicts = MutableMapping[object, object]


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
    # Where this connection's verdicts about peer_chain are kept; None: not kept (decided every time).
    verdicts: Verdicts | None = None

    def chains_to(self, anchors: TrustAnchors, now: datetime.datetime) -> bool:
        """Whether the peer certificate verifies, at ``now``, up to one of ``anchors`` (through the
        intermediates its handshake verified), as k8s.io/apiserver verifies it on every request."""
        cert = self.peer_certificate
        if cert is None:
            return False
        chain = self.peer_chain
        intermediates = chain[1:] if len(chain) > 1 and chain[0] == cert else ()
        return anchors.verify(cert, intermediates, now)

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


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# How many CA certificates a client certificate chain may have between the client's certificate and
# the trusted CA (OpenSSL's verify depth; its default is 100). Client CAs sign client certificates
# directly (kubeadm's, the cluster's signer) or through one or two intermediates (a corporate PKI);
# four leave room for that, twice over. A chain with more is not trusted (its requests are
# unauthenticated, as for any untrusted chain). The bound is what makes an untrusted chain cheap: Go
# (kube-apiserver) caps a verification at 100 signature checks, but checks them on one goroutine of
# many; here they run on the reactor, so a chain of 45 links of 8192-bit keys cost 56-64 ms a
# handshake (docs/hardening.md, "Handshakes per address").
VERIFY_DEPTH = 4
# The most certificates a client may present that are kept for the per-request verification: its own,
# VERIFY_DEPTH intermediates and the CA itself.
MAX_PRESENTED_CHAIN = VERIFY_DEPTH + 2
# The largest RSA key a client certificate chain may hold, as Go's crypto/tls refuses a client
# certificate with a larger one (its defaultMaxRSAKeySize, CVE-2023-29409), and the largest public
# exponent, as Go's crypto/rsa verifies with none larger (its checkPub): the cost of a signature
# check grows with both (an 8192-bit key with a 64-bit exponent: about 1.3 ms each).
MAX_RSA_BITS = 8192
MAX_RSA_EXPONENT = (1 << 31) - 1
# The curves of the ECDSA keys Go's crypto/x509 parses (its namedCurveFromOID): a certificate with a key
# on any other (a binary curve such as sect571r1, explicit parameters) fails its parse, and so Go's
# handshake. OpenSSL verifies on binary curves, slowly: sect571r1, 4.6 ms a signature (P-521: 0.7 ms).
GO_CURVES: tuple[type[ec.EllipticCurve], ...] = (ec.SECP224R1, ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
# What a refusal of any other key says: the keys Go verifies a certificate's signature with. Go parses
# DSA keys but verifies with none (since Go 1.16), and parses no RSA-PSS (id-RSASSA-PSS), Ed448 or
# unknown key: a client certificate with one fails Go's handshake, a CA with one verifies nothing.
_GO_KEYS = "only RSA, ECDSA on P-224, P-256, P-384 or P-521, and Ed25519 keys are verified, as by Go"
_KEY_NAMES: tuple[tuple[type, str], ...] = (
    (dsa.DSAPublicKey, "a DSA"),
    (ed448.Ed448PublicKey, "an Ed448"),
    (x25519.X25519PublicKey, "an X25519"),
    (x448.X448PublicKey, "an X448"),
)
RSA_PSS_KEY = f"an RSA-PSS key (id-RSASSA-PSS): {_GO_KEYS}"
UNREADABLE_KEY = f"a key of an algorithm or on a curve this server does not read: {_GO_KEYS}"


def refused_key(key: object) -> str | None:
    """Why a certificate's public key is one Go would not verify with, or None when it would: an RSA key
    within MAX_RSA_BITS and MAX_RSA_EXPONENT, an ECDSA key on one of GO_CURVES, an Ed25519 key. The
    bound that keeps an untrusted chain's verification cheap: each key it holds costs a signature check
    (docs/hardening.md, "Handshakes per address")."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size > MAX_RSA_BITS:
            return f"an RSA key of {key.key_size} bits (more than {MAX_RSA_BITS}), which Go refuses too"
        if key.public_numbers().e > MAX_RSA_EXPONENT:
            return f"an RSA public exponent over {MAX_RSA_EXPONENT}, which Go refuses too"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, GO_CURVES):
            return None
        return f"an ECDSA key on {key.curve.name}: {_GO_KEYS}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return None
    name = next((n for kind, n in _KEY_NAMES if isinstance(key, kind)), f"a {type(key).__name__}")
    return f"{name} key: {_GO_KEYS}"


def refused_certificate_key(certificate: x509.Certificate) -> str | None:
    """`refused_key` of a certificate's key; a key cryptography cannot load (a binary or explicit curve:
    OpenSSL verifies with it) and an RSA-PSS key (which loads as an RSA key) are refused too."""
    if certificate.public_key_algorithm_oid == PublicKeyAlgorithmOID.RSASSA_PSS:
        return RSA_PSS_KEY
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return UNREADABLE_KEY
    return refused_key(key)


@attrs.frozen(eq=False)
class TrustAnchors:
    """The CAs a client certificate may chain to, converted for OpenSSL once per configuration.

    Every configured CA is a trust anchor, an intermediate as much as a self-signed root, as in Go's
    x509 roots pool (hence PARTIAL_CHAIN, as for the handshake in tls.server_context)."""

    certificates: tuple[x509.Certificate, ...]
    _converted: tuple[crypto.X509, ...] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        converted = tuple(crypto.X509.from_cryptography(c) for c in self.certificates)
        object.__setattr__(self, "_converted", converted)

    def verify(
        self, cert: x509.Certificate, intermediates: Sequence[x509.Certificate], now: datetime.datetime
    ) -> bool:
        """Whether ``cert`` chains to one of these CAs, every link valid at ``now``. The intermediates
        are the ones the handshake verified (its own anchor among them, which need not be one of these
        any more: a CA renewed with the same key and subject verifies the same certificate).

        Bounded as the handshake's verification is (tls.server_context): no more than VERIFY_DEPTH + 1
        intermediates, and no key Go would not verify with among them (refused_certificate_key), checked
        before OpenSSL checks any signature."""
        if not self.certificates or not _for_clients(cert) or len(intermediates) > VERIFY_DEPTH + 1:
            return False
        if any(refused_certificate_key(c) is not None for c in (cert, *intermediates)):
            return False
        # A store of its own per verification: OpenSSL keeps the first time set on a store and
        # ignores a later one. Verifications are rare (see ChainDecisions), so this costs little.
        store = crypto.X509Store()
        store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        store.set_time(now)
        for authority in self._converted:
            store.add_cert(authority)
        context = crypto.X509StoreContext(
            store,
            crypto.X509.from_cryptography(cert),
            [crypto.X509.from_cryptography(c) for c in intermediates],
        )
        try:
            chain = context.get_verified_chain()
        except crypto.X509StoreContextError:
            return False
        # Every certificate of the chain, its CAs included, as Go's Verify(KeyUsages: ClientAuth) and the
        # handshake (OpenSSL's ssl_client purpose) check it: a CA renewed with its EKU narrowed to
        # serverAuth ends the client use of its open connections too.
        return all(_for_clients(c.to_cryptography()) for c in chain)


def _for_clients(cert: x509.Certificate) -> bool:
    """Whether a certificate may authenticate a client, as Go's Verify with ExtKeyUsageClientAuth
    reads its extended key usage (none at all: any use)."""
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ExtendedKeyUsageOID.CLIENT_AUTH in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages


def next_validity_change(
    certificates: Iterable[x509.Certificate], now: datetime.datetime
) -> datetime.datetime | None:
    """The first moment after ``now`` at which one of ``certificates`` becomes valid or expires (so a
    verification's verdict may change), or None when none ever will."""
    # OpenSSL and Go take a certificate as expired once the time is past notAfter, which has a
    # precision of one second.
    second = datetime.timedelta(seconds=1)
    moments = (
        moment
        for c in certificates
        for moment in (c.not_valid_before_utc, c.not_valid_after_utc + second)
        if moment > now
    )
    return min(moments, default=None)


class ChainDecisions(Generic[T]):
    """What an authenticator decided about a connection's certificate chain, kept with the connection
    (`Credentials.verdicts`): every request of a kept-alive connection brings the same chain, and a
    decision is an OpenSSL verification (~250 us) where a kept one is a lookup.

    Kept with the connection rather than in a cache of the authenticator's: a bounded cache verifies
    every request again once more connections are open than it holds (r2tls L2), and a connection's
    verdicts go with it. One verdict per connection per authenticator: the verdicts are keyed by this
    object, made anew with its authenticator on every configuration (CA) change.

    A decision depends on the time too (a certificate of the chain, or a CA, expires or becomes
    valid), so it is kept only until the first such moment of the chain or of ``anchors``: then the
    chain is verified again, as k8s.io/apiserver verifies it on every request."""

    def __init__(
        self,
        now: Callable[[], datetime.datetime] = utc_now,
        anchors: Sequence[x509.Certificate] = (),
    ) -> None:
        self._now = now
        self._anchors = tuple(anchors)

    def get(self, credentials: Credentials, decide: Callable[[Credentials, datetime.datetime], T]) -> T:
        cert, chain, verdicts = credentials.peer_certificate, credentials.peer_chain, credentials.verdicts
        now = self._now()
        # What this object put there (below): the connection's chain, the decision, and until when.
        kept: tuple[tuple[x509.Certificate, ...], T, datetime.datetime | None] | None = (
            verdicts.get(self) if verdicts is not None else None  # type: ignore[assignment]
        )
        if kept is not None and kept[0] is chain and (kept[2] is None or now < kept[2]):
            return kept[1]
        decided = decide(credentials, now)
        if verdicts is not None and cert is not None:
            verdicts[self] = (chain, decided, next_validity_change((cert, *chain, *self._anchors), now))
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
    # The time a certificate is checked at (its validity): injected by tests.
    now: Callable[[], datetime.datetime] = attrs.field(default=utc_now, eq=False, repr=False)
    _anchors: TrustAnchors = attrs.field(init=False, eq=False, repr=False)
    _users: ChainDecisions[UserInfo | None] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_anchors", TrustAnchors(tuple(self.authorities)))
        object.__setattr__(self, "_users", ChainDecisions(now=self.now, anchors=self.authorities))

    async def authenticate(self, credentials: Credentials) -> UserInfo | None:
        return self._users.get(credentials, self._user)

    def _user(self, credentials: Credentials, now: datetime.datetime) -> UserInfo | None:
        cert = credentials.peer_certificate
        if cert is None or not credentials.chains_to(self._anchors, now):
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
    "GO_CURVES",
    "MASTERS",
    "MAX_PRESENTED_CHAIN",
    "MAX_RSA_BITS",
    "MAX_RSA_EXPONENT",
    "RSA_PSS_KEY",
    "UNREADABLE_KEY",
    "VERIFY_DEPTH",
    "Authenticator",
    "AuthenticatorChain",
    "ChainDecisions",
    "ClientCertificateAuthenticator",
    "Credentials",
    "CredentialsRefused",
    "RequestAuthenticator",
    "TrustAnchors",
    "UserInfo",
    "Verdicts",
    "is_utf8",
    "load_pem_bundle",
    "next_validity_change",
    "refused_certificate_key",
    "refused_key",
    "subject_common_name",
    "utc_now",
]
