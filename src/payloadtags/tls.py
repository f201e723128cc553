"""The serving TLS context: certificate (or a self-signed one) and the CAs client certificates may chain to.

Contexts are built from cryptography objects, never from deprecated pyOpenSSL ones, and rebuilt as a
whole when their inputs change, since OpenSSL contexts cannot be modified once used.
"""

from __future__ import annotations

import datetime
import ipaddress
import weakref
from collections.abc import Hashable, Sequence
from typing import Final

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from payloadtags.access.authn import (
    MAX_PRESENTED_CHAIN,
    RSA_PSS_KEY,
    UNREADABLE_KEY,
    VERIFY_DEPTH,
    Verdicts,
    load_pem_bundle,
    refused_certificate_key,
    refused_key,
)
from payloadtags.onceper import OncePerPeriod
from payloadtags.validators import read_file

# The TLS 1.2 suites Go (and so --tls-cipher-suites in Kubernetes) names, by their OpenSSL names. TLS 1.3
# suites are accepted and, as in Go, not configurable.
CIPHER_SUITES: dict[str, str | None] = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
# Without --tls-cipher-suites, TLS 1.2 offers the CIS-recommended list: ECDHE key exchange with AES-GCM or
# CHACHA20 only. Go's default (kube-apiserver's) also has ECDHE with AES-CBC-SHA, not offered here. OpenSSL's
# own default would add CBC with HMAC-SHA256/384 (Lucky13, among Go's insecure suites) and RSA key exchange
# (no forward secrecy; not a Go default since 1.22), which the flag refuses.
DEFAULT_TLS12_SUITES: tuple[str, ...] = (
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
)
_MIN_VERSIONS = {"VersionTLS12": SSL.TLS1_2_VERSION, "VersionTLS13": SSL.TLS1_3_VERSION}


class CertificateError(Exception):
    """A certificate or key file that cannot serve: the message names the file and what is wrong."""


@attrs.frozen
class TlsOptions:
    min_version: str = "VersionTLS12"
    cipher_suites: tuple[str, ...] = ()

    def apply(self, context: SSL.Context) -> None:
        suites = self.cipher_suites or DEFAULT_TLS12_SUITES
        ciphers = list(dict.fromkeys(name for suite in suites if (name := CIPHER_SUITES[suite])))
        if ciphers:
            context.set_min_proto_version(_MIN_VERSIONS[self.min_version])
            context.set_cipher_list(":".join(ciphers).encode())
        else:
            # Only TLS 1.3 suites named: as in Go, TLS 1.2 is left with no suite, so it is refused
            # (OpenSSL takes no empty TLS 1.2 list; refusing the version has the same effect).
            context.set_min_proto_version(SSL.TLS1_3_VERSION)


def _read(path: str, flag: str) -> bytes:
    try:
        return read_file(path)
    except OSError as error:
        raise CertificateError(f"{flag} {path}: cannot read: {error.strerror}") from None


def load_certificates(path: str, flag: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file; an error names the flag and the file."""
    data = _read(path, flag)
    try:
        certificates = load_pem_bundle(data)
    except ValueError:
        raise CertificateError(f"{flag} {path}: not a PEM certificate bundle (cannot parse it)") from None
    if not certificates:
        raise CertificateError(f"{flag} {path}: holds no PEM certificate")
    return certificates


def load_private_key(path: str, flag: str) -> PrivateKeyTypes:
    """The unencrypted PEM private key of a file; an error names the flag and the file."""
    data = _read(path, flag)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(f"{flag} {path}: the key is encrypted; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(f"{flag} {path}: not a PEM private key (cannot parse it)") from None


def _public(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# How long a self-signed pair is valid (kube-apiserver's --cert-dir pair: one year too).
SELF_SIGNED_DAYS = 365


@attrs.frozen
class ServingCertificate:
    chain: tuple[x509.Certificate, ...]
    key: ec.EllipticCurvePrivateKey | object = attrs.field(repr=False)

    @classmethod
    def from_files(
        cls,
        cert_file: str,
        key_file: str,
        cert_flag: str = "--tls-cert-file",
        key_flag: str = "--tls-private-key-file",
    ) -> ServingCertificate:
        """The pair, checked: both parse, and the key is the certificate's (errors name the files)."""
        chain = tuple(load_certificates(cert_file, cert_flag))
        key = load_private_key(key_file, key_flag)
        try:
            certified = chain[0].public_key()
        except (ValueError, UnsupportedAlgorithm) as e:
            # It parses, but its key (say, on SM2's curve) is none that cryptography can use.
            raise CertificateError(
                f"{cert_flag} {cert_file}: the certificate has a key type that cannot be used ({e})"
            ) from None
        if _public(key.public_key()) != _public(certified):
            raise CertificateError(
                f"{key_flag} {key_file} does not match the certificate in {cert_flag} {cert_file}"
            )
        return cls(chain, key)

    def pem(self) -> tuple[bytes, bytes]:
        """Certificate chain and (unencrypted PKCS#8) key as PEM."""
        certificates = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)
        key = self.key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return certificates, key

    @classmethod
    def self_signed(
        cls, hosts: Sequence[str] = ("localhost", "127.0.0.1"), now: datetime.datetime | None = None
    ) -> ServingCertificate:
        """A pair for ``hosts``, valid for SELF_SIGNED_DAYS from ``now``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = now or datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"payloadtags@{int(now.timestamp())}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls((cert,), key)


# What the handshake's verification said of each connection's client certificate chain, the worst of
# its checks: VERIFIED, RETRIED (it failed only for the time or for an issuer none of the CAs is, which a
# later request may see otherwise: the authenticators decide per request) or REFUSED.
VERIFIED, RETRIED, REFUSED = 0, 1, 2
_verdict: weakref.WeakKeyDictionary[SSL.Connection, int] = weakref.WeakKeyDictionary()
# OpenSSL's X509_V_ERR_ codes of a chain that may verify at a later request: not yet valid or expired
# (a certificate or CA renewed in the CA files with the same key verifies it again, as in Go, which
# verifies each request at its time against the current CAs), or its issuer among none of the CAs (a
# CA added to the files later), a self-signed one included.
_RETRIED_ERRORS = frozenset(
    (
        2,  # UNABLE_TO_GET_ISSUER_CERT
        9,  # CERT_NOT_YET_VALID
        10,  # CERT_HAS_EXPIRED
        18,  # DEPTH_ZERO_SELF_SIGNED_CERT
        19,  # SELF_SIGNED_CERT_IN_CHAIN
        20,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        21,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    )
)


# OpenSSL's verification errors (X509_V_ERR_*) a client certificate chain most often meets, in the
# words the log says them in (docs/troubleshooting.md, "401 Unauthorized").
_NOT_YET_VALID: Final = 9
_EXPIRED: Final = 10
_NOT_FOR_CLIENTS: Final = 26  # X509_V_ERR_INVALID_PURPOSE: the extended key usage
# Signed by no CA this server trusts: anyone can send one, with any names in it.
_UNKNOWN_CA: Final = frozenset((2, 18, 19, 20, 21))  # no issuer; self-signed leaf or root; cannot verify
_REFUSAL_WORDS: Final = {
    _NOT_YET_VALID: "is not valid yet (its notBefore is later than this server's clock)",
    _EXPIRED: "has expired",
    _NOT_FOR_CLIENTS: (
        "is not for client authentication: its extended key usage allows neither clientAuth nor "
        "anyExtendedKeyUsage"
    ),
    7: "has a signature that does not verify",
    24: "is not a CA but signed a certificate of the chain",
    25: "exceeds the path length a CA of the chain allows",
}
# X509_V_ERR_CERT_CHAIN_TOO_LONG: more CAs between the client's certificate and a trusted one than
# set_verify_depth allows. Anyone can make such a chain, with any names in it.
_TOO_LONG: Final = 22
_TOO_LONG_WORDS: Final = (
    f"ends a chain longer than this server verifies (more than {VERIFY_DEPTH} CAs between a client's "
    "certificate and a trusted CA)"
)
# Checks of the time: a connection's certificate (or a CA) outside its validity at the handshake may be
# inside it at a later request, when the authenticators verify the chain again (client_chain).
_TIME_ERRORS: Final = frozenset((_NOT_YET_VALID, _EXPIRED))
# How long a handshake refused for a key Go would not verify with (authn.refused_key) stays quiet in the
# log after a line about it.
OUTSIZED_LOG_PERIOD = 60.0
# How much of a certificate's subject or issuer a line shows: the certificate's sender chose them.
_NAME_SHOWN: Final = 200


def _name(name: x509.Name) -> str:
    """A certificate's subject or issuer as the log shows it (RFC 4514), its control characters
    escaped and cut at _NAME_SHOWN characters."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in name.rfc4514_string())
    text = f'"{text}"' if text else "(empty)"
    return text if len(text) <= _NAME_SHOWN else text[:_NAME_SHOWN] + '..."'


@attrs.frozen
class Refusal:
    """Why the handshake did not verify a connection's client certificate: its first failed check."""

    # The words of the line, naming the certificate the check failed on (the leaf, or a CA of its chain).
    why: str
    # What the log is rate-limited by: the reason and the certificate's names; only the reason when
    # no trusted CA signed it (anyone can make one, with names varied to write a line a connection).
    key: Hashable
    # For a check of the time, the validity of the certificate it failed on: the refusal holds only
    # while a request's time is outside it (a certificate not yet valid at the handshake may be valid at
    # a later request of the connection, which the authenticators then verify: client_chain).
    validity: tuple[datetime.datetime, datetime.datetime] | None = None

    def holds(self, now: datetime.datetime) -> bool:
        """Whether this is still why the certificate does not verify at ``now``."""
        if self.validity is None:
            return True
        not_before, not_after = self.validity
        # As OpenSSL and Go: valid from notBefore, expired once past notAfter.
        return now < not_before or now > not_after


def _refusal(cert: crypto.X509, errno: int, depth: int, words: str | None = None) -> Refusal:
    validity = None
    try:
        readable = cert.to_cryptography()
        subject, issuer = _name(readable.subject), _name(readable.issuer)
        if errno in _TIME_ERRORS:
            validity = (readable.not_valid_before_utc, readable.not_valid_after_utc)
    except ValueError:  # see _unreadable
        subject, issuer = "(unreadable)", "(unreadable)"
    name = f"the client certificate {subject}" if depth == 0 else f"the CA certificate {subject} of its chain"
    key: Hashable
    if words is not None:  # a bound of the verification (tls.server_context): anyone can exceed it
        key = words
    elif errno in _UNKNOWN_CA:
        words, key = "is signed by no CA of --client-ca-file or --requestheader-client-ca-file", "unknown CA"
    elif errno == _TOO_LONG:
        words, key = _TOO_LONG_WORDS, "chain too long"
    else:
        words = _REFUSAL_WORDS.get(errno, f"fails OpenSSL's verification (error {errno})")
        key = (errno, depth, subject, issuer)
    return Refusal(f"{name} (issuer {issuer}) {words}", key, validity)


# The checks each connection's client certificate failed at the handshake, in OpenSSL's order (the
# chain's build, then its certificates from the trusted CA down), one per certificate and error: at most
# _REFUSALS_KEPT.
_refusals: weakref.WeakKeyDictionary[SSL.Connection, tuple[Refusal, ...]] = weakref.WeakKeyDictionary()
_REFUSALS_KEPT: Final = 2 * (VERIFY_DEPTH + 2)
_outsized_said: OncePerPeriod[str] = OncePerPeriod(OUTSIZED_LOG_PERIOD)


# OpenSSL's EVP_PKEY_RSA_PSS: a key of id-RSASSA-PSS, which cryptography loads as an RSA key.
_RSA_PSS_TYPE: Final = 912


def _refused_key(cert: crypto.X509) -> str | None:
    """authn.refused_certificate_key, read from OpenSSL's certificate: one cryptography cannot read
    whole (tls._unreadable) still has a key that can be judged."""
    try:
        pkey = cert.get_pubkey()
        if pkey.type() == _RSA_PSS_TYPE:
            return RSA_PSS_KEY
        key = pkey.to_cryptography_key()
    except (crypto.Error, ValueError, UnsupportedAlgorithm):
        # OpenSSL may verify with it (a binary curve) while cryptography, like Go, cannot read it.
        return UNREADABLE_KEY
    return refused_key(key)


def _verify(connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    # OpenSSL calls this for each certificate of the chain from the trusted CA down, before it checks a
    # signature with that certificate's key (and for each error it meets, when it meets it): a key Go
    # would refuse fails the handshake, as in Go, before it costs a signature check.
    # The bounds come first, before the names of a refusal are read.
    refused = _refused_key(cert)
    if refused is not None:
        _verdict[connection] = REFUSED
        refusal = _refusal(cert, errno, depth, f"has {refused}")
        _refusals[connection] = (refusal,)
        # No request follows (the handshake fails): said here, once per period, whatever the names.
        said = _outsized_said("outsized")
        if said is not None:
            log.warn("a TLS handshake is refused: {why}{more}", why=refusal.why, more=said.more())
        return False
    # Otherwise never fail the handshake: like kube-apiserver, an untrusted certificate only means the
    # request is not authenticated by it (401, or a bearer token may still identify the caller).
    check = VERIFIED if ok else RETRIED if errno in _RETRIED_ERRORS else REFUSED
    _verdict[connection] = max(_verdict.get(connection, VERIFIED), check)
    if not ok:
        kept = _refusals.get(connection, ())
        if len(kept) < _REFUSALS_KEPT:
            _refusals[connection] = (*kept, _refusal(cert, errno, depth))
    return True


def refused_certificate(connection: object, now: datetime.datetime | None = None) -> Refusal | None:
    """Why the client certificate of a connection does not verify at ``now`` (the present by default),
    from the checks the handshake's verification failed: the first that still holds. None when the
    handshake verified it, the peer sent none, or every failed check was one of the time that no longer
    holds (a certificate not valid yet at the handshake is at a later request: whatever refuses it
    then, it is not that)."""
    if not isinstance(connection, SSL.Connection):
        return None
    at = now if now is not None else datetime.datetime.now(datetime.UTC)
    return next((r for r in _refusals.get(connection, ()) if r.holds(at)), None)


_peer_chains: weakref.WeakKeyDictionary[SSL.Connection, tuple[x509.Certificate, ...]] = (
    weakref.WeakKeyDictionary()
)


# Verified client certificates that cryptography cannot read, by connection, with the reason: OpenSSL
# (and Go) take some that it refuses, such as a multi-valued RDN whose SET is not in DER order, which a
# lax CA signs as the CSR holds it.
_unreadable: weakref.WeakKeyDictionary[SSL.Connection, str] = weakref.WeakKeyDictionary()
# Said once per period per reason: each connection of such a certificate's holder would say it again.
UNREADABLE_LOG_PERIOD = 30.0
_unreadable_said: OncePerPeriod[str] = OncePerPeriod(UNREADABLE_LOG_PERIOD)
log = Logger()


def _presented(connection: SSL.Connection) -> tuple[x509.Certificate, ...]:
    """The chain the client sent, its certificate first, when it is no longer than MAX_PRESENTED_CHAIN
    and holds no key Go would not verify with (the bounds of the handshake's verification,
    tls.server_context), else ()."""
    try:
        leaf = connection.get_peer_certificate(as_cryptography=True)
        sent = connection.get_peer_cert_chain(as_cryptography=True) or []
    except ValueError:
        return ()  # one cryptography cannot read: no authenticator could read it either
    if leaf is None:
        return ()
    # OpenSSL's server side lists the client's certificate apart from the rest; keep it once.
    chain = (leaf, *(c for c in sent if c != leaf))
    if len(chain) > MAX_PRESENTED_CHAIN or any(refused_certificate_key(c) is not None for c in chain):
        return ()
    return chain


def client_chain(connection: object) -> tuple[x509.Certificate, ...]:
    """The client certificate chain a connection's requests are authenticated by, leaf first: the one
    its handshake verified (ending at the trusted CA); the one the client sent when the verification
    failed only for the time or an unknown issuer (the authenticators verify every request's chain at
    its time against the current CAs, as kube-apiserver does, so a certificate valid from a moment after
    the handshake, or signed by a CA added since, identifies the connection's later requests); or ()
    when the peer sent none, it failed otherwise, or it cannot be read (`unreadable_certificate`).

    Kept per connection: every request on a kept-alive connection presents the same certificate.
    """
    if not isinstance(connection, SSL.Connection):
        return ()
    verdict = _verdict.get(connection, REFUSED)
    if verdict == REFUSED:
        return ()
    chain = _peer_chains.get(connection)
    if chain is None:
        if verdict == RETRIED:
            chain = _peer_chains[connection] = _presented(connection)
            return chain
        try:
            verified = connection.get_verified_chain(as_cryptography=True) or []
        except ValueError as error:
            verified = []
            reason = _unreadable[connection] = str(error) or type(error).__name__
            said = _unreadable_said(reason)
            if said is not None:
                log.warn(
                    "a client certificate a trusted CA signed cannot be read ({reason}): its requests "
                    "that need an identity are answered 401{more}",
                    reason=reason,
                    more=said.more(),
                )
        chain = _peer_chains[connection] = tuple(verified)
    return chain


# The authenticators' verdicts about a connection's chain (access.authn.ChainDecisions), gone with the
# connection; within, gone with an authenticator replaced by a CA change.
_verdicts: weakref.WeakKeyDictionary[SSL.Connection, Verdicts] = weakref.WeakKeyDictionary()


def connection_verdicts(connection: object) -> Verdicts | None:
    """Where the authenticators keep what they decided about a connection's client certificate chain
    (`Credentials.verdicts`), or None for what is not a TLS connection."""
    if not isinstance(connection, SSL.Connection):
        return None
    verdicts = _verdicts.get(connection)
    if verdicts is None:
        verdicts = _verdicts[connection] = weakref.WeakKeyDictionary()
    return verdicts


def unreadable_certificate(connection: object) -> str | None:
    """Why the client certificate a connection's handshake verified cannot be read, or None when it
    can (or there is none)."""
    if not isinstance(connection, SSL.Connection):
        return None
    client_chain(connection)
    return _unreadable.get(connection)


def server_context(
    serving: ServingCertificate, client_cas: Sequence[x509.Certificate], options: TlsOptions | None = None
) -> SSL.Context:
    """Request, but do not require, a client certificate, as Go servers do; the authenticators decide."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    (options or TlsOptions()).apply(context)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    context.use_certificate(serving.chain[0])
    for intermediate in serving.chain[1:]:
        context.add_extra_chain_cert(crypto.X509.from_cryptography(intermediate))
    context.use_privatekey(serving.key)  # type: ignore[arg-type]
    context.check_privatekey()
    # No session resumption, by session ID or ticket, in TLS 1.2 or 1.3: a resumed session skips the
    # certificate verification that authenticates the client, so its requests would lose their
    # identity; and trust may have changed (rotated CA files) since the session was made.
    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # No renegotiation either, asked for rather than left to OpenSSL's default (off since 3.0): each
    # would be a full handshake, its client certificate chain verified again, that the address's
    # handshake tokens never see.
    context.set_options(SSL.OP_NO_RENEGOTIATION)
    if client_cas:
        store = context.get_cert_store()
        assert store is not None
        # Every configured CA is a trust anchor, an intermediate as much as a self-signed root, as
        # in Go's x509 roots pool (k8s.io/apiserver verifies client and front-proxy certificates
        # with one); without this flag OpenSSL wants each chain to end at a self-signed root.
        store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        for authority in client_cas:
            store.add_cert(crypto.X509.from_cryptography(authority))
            context.add_client_ca(authority)
        context.set_verify(SSL.VERIFY_PEER, _verify)
        # OpenSSL builds a chain no deeper than this before it checks a signature (its default, 100,
        # let a chain of 45 links cost 56-64 ms of the reactor's time: access.authn.VERIFY_DEPTH).
        context.set_verify_depth(VERIFY_DEPTH)
    return context


@implementer(IOpenSSLServerConnectionCreator)
@attrs.define
class ContextFactory:
    """What Twisted's TLS listener asks for each connection; swapping ``context`` affects new ones."""

    context: SSL.Context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)
