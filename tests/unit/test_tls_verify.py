"""The handshake's verdict on a client certificate (tls._verify): every check must pass, not the last.

The authenticators verify the chain again on every request (tests/unit/test_chain_trust.py); this
pins the handshake's own verdict, which decides whether a connection has a chain at all (r1tls L3)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from payloadtags.tls import ServingCertificate, server_context, verified_peer_chain
from tests.support.pki import Authority

DAY = datetime.timedelta(days=1)
NOW = datetime.datetime.now(datetime.UTC)


def _resigned(ca: Authority, before: datetime.datetime, after: datetime.datetime) -> x509.Certificate:
    """``ca``'s certificate signed again (same key, subject and extensions) with this validity."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(ca.cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(ca.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(before)
        .not_valid_after(after)
    )
    for extension in ca.cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(ca.key, hashes.SHA256())


def _leaf(
    ca: Authority, key: ec.EllipticCurvePrivateKey, before: datetime.datetime, after: datetime.datetime, usage
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "front-proxy-client")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(before)
        .not_valid_after(after)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def _server_side(
    trusted: x509.Certificate, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> SSL.Connection:
    """The server's end of an in-memory handshake whose client presents ``cert``."""
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.use_certificate(cert)
    client_context.use_privatekey(key)
    client = SSL.Connection(client_context, None)
    server = SSL.Connection(server_context(ServingCertificate.self_signed(), (trusted,)), None)
    client.set_connect_state()
    server.set_accept_state()
    done = {client: False, server: False}
    for _ in range(20):
        for side, other in ((client, server), (server, client)):
            if not done[side]:
                try:
                    side.do_handshake()
                    done[side] = True
                except SSL.WantReadError:
                    pass
            try:
                other.bio_write(side.bio_read(1 << 16))
            except SSL.WantReadError:
                pass
        if all(done.values()):
            return server
    raise AssertionError("the handshake did not end")


@pytest.mark.parametrize("case", ["valid", "expired-ca", "expired-leaf", "future-leaf", "server-auth-leaf"])
def test_a_chain_is_kept_only_when_every_check_passed(tmp_path: Path, case: str) -> None:
    ca = Authority.create(tmp_path, "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    trusted, before, after, usage = ca.cert, NOW - DAY, NOW + DAY, ExtendedKeyUsageOID.CLIENT_AUTH
    if case == "expired-ca":
        trusted = _resigned(ca, NOW - 3 * DAY, NOW - DAY)
    elif case == "expired-leaf":
        before, after = NOW - 3 * DAY, NOW - DAY
    elif case == "future-leaf":
        before, after = NOW + DAY, NOW + 3 * DAY
    elif case == "server-auth-leaf":
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    cert = _leaf(ca, key, before, after, usage)
    # The handshake itself never fails (the authenticators decide); only the kept chain tells.
    chain = verified_peer_chain(_server_side(trusted, cert, key))
    assert (chain[0] if chain else None) == (cert if case == "valid" else None)
