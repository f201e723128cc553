"""The handshake's verdict on a client certificate (tls._verify): every check must pass, not the last.

The authenticators verify the chain again on every request (tests/unit/test_chain_trust.py); this
pins the handshake's own verdict, which decides whether a connection has a chain at all (r1tls L3)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL

from payloadtags.tls import ServingCertificate, server_context, verified_peer_chain
from tests.support.pki import Authority, in_memory_handshake

DAY = datetime.timedelta(days=1)
NOW = datetime.datetime.now(datetime.UTC)


def _server_side(
    trusted: x509.Certificate, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> SSL.Connection:
    """The server's end of an in-memory handshake whose client presents ``cert``."""
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.use_certificate(cert)
    client_context.use_privatekey(key)
    client = SSL.Connection(client_context, None)
    server = SSL.Connection(server_context(ServingCertificate.self_signed(), (trusted,)), None)
    error = in_memory_handshake(client, server)
    if error is not None:
        raise error
    return server


@pytest.mark.parametrize("case", ["valid", "expired-ca", "expired-leaf", "future-leaf", "server-auth-leaf"])
def test_a_chain_is_kept_only_when_every_check_passed(tmp_path: Path, case: str) -> None:
    ca = Authority.create(tmp_path, "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    trusted, before, after, usage = ca.cert, NOW - DAY, NOW + DAY, ExtendedKeyUsageOID.CLIENT_AUTH
    if case == "expired-ca":
        trusted = ca.resigned(NOW - 3 * DAY, NOW - DAY)
    elif case == "expired-leaf":
        before, after = NOW - 3 * DAY, NOW - DAY
    elif case == "future-leaf":
        before, after = NOW + DAY, NOW + 3 * DAY
    elif case == "server-auth-leaf":
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    cert = ca.client_leaf(key, before, after, usage)
    # The handshake itself never fails (the authenticators decide); only the kept chain tells.
    chain = verified_peer_chain(_server_side(trusted, cert, key))
    assert (chain[0] if chain else None) == (cert if case == "valid" else None)
