"""The serving TLS context: certificate (or a self-signed one) and the CAs client certificates may chain to.

Contexts are built from cryptography objects, never from deprecated pyOpenSSL ones, and rebuilt as a
whole when their inputs change, since OpenSSL contexts cannot be modified once used.
"""

from __future__ import annotations

import datetime
import ipaddress
import weakref
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from payloadtags.access.authn import load_pem_bundle


@attrs.frozen
class ServingCertificate:
    chain: tuple[x509.Certificate, ...]
    key: ec.EllipticCurvePrivateKey | object = attrs.field(repr=False)

    @classmethod
    def from_files(cls, cert_file: str, key_file: str) -> ServingCertificate:
        with open(cert_file, "rb") as f:
            chain = tuple(x509.load_pem_x509_certificates(f.read()))
        with open(key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        return cls(chain, key)

    @classmethod
    def self_signed(cls, hosts: Sequence[str] = ("localhost", "127.0.0.1")) -> ServingCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
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
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls((cert,), key)


# Whether OpenSSL verified each connection's client certificate chain against the trusted CAs.
_verified: weakref.WeakKeyDictionary[SSL.Connection, bool] = weakref.WeakKeyDictionary()


def _verify(connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    # Never fail the handshake: like kube-apiserver, an untrusted certificate only means the request
    # is not authenticated by it (401, or a bearer token may still identify the caller).
    _verified[connection] = _verified.get(connection, True) and bool(ok)
    return True


_peer_chains: weakref.WeakKeyDictionary[SSL.Connection, tuple[x509.Certificate, ...]] = (
    weakref.WeakKeyDictionary()
)


def verified_peer_chain(connection: object) -> tuple[x509.Certificate, ...]:
    """The client certificate chain a connection's handshake verified (leaf first, trusted CA last),
    or () when the peer sent none or it did not verify.

    Kept per connection: every request on a kept-alive connection presents the same certificate.
    """
    if not isinstance(connection, SSL.Connection) or not _verified.get(connection, False):
        return ()
    chain = _peer_chains.get(connection)
    if chain is None:
        verified = connection.get_verified_chain(as_cryptography=True) or []
        chain = _peer_chains[connection] = tuple(verified)
    return chain


def server_context(serving: ServingCertificate, client_cas: Sequence[x509.Certificate]) -> SSL.Context:
    """Request, but do not require, a client certificate, as Go servers do; the authenticators decide."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    context.use_certificate(serving.chain[0])
    for intermediate in serving.chain[1:]:
        context.add_extra_chain_cert(crypto.X509.from_cryptography(intermediate))
    context.use_privatekey(serving.key)  # type: ignore[arg-type]
    context.check_privatekey()
    context.set_session_id(b"payloadtags")
    if client_cas:
        store = context.get_cert_store()
        assert store is not None
        for authority in client_cas:
            store.add_cert(crypto.X509.from_cryptography(authority))
            context.add_client_ca(authority)
        context.set_verify(SSL.VERIFY_PEER, _verify)
    return context


@implementer(IOpenSSLServerConnectionCreator)
@attrs.define
class ContextFactory:
    """What Twisted's TLS listener asks for each connection; swapping ``context`` affects new ones."""

    context: SSL.Context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)


def read_bundle(path: str | None) -> list[x509.Certificate]:
    if not path:
        return []
    with open(path, "rb") as f:
        return load_pem_bundle(f.read())
