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

from payloadtags.tls import ServingCertificate, refused_certificate, server_context, verified_peer_chain
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


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("valid", None),
        ("expired-ca", 'the CA certificate "CN=ca" of its chain (issuer "CN=ca") has expired'),
        ("expired-leaf", 'the client certificate "CN=front-proxy-client" (issuer "CN=ca") has expired'),
        ("future-leaf", '"CN=front-proxy-client" (issuer "CN=ca") is not valid yet'),
        (
            "server-auth-leaf",
            '"CN=front-proxy-client" (issuer "CN=ca") is not for client authentication: its extended key '
            "usage allows neither clientAuth nor anyExtendedKeyUsage",
        ),
        (
            "unknown-ca",
            'the client certificate "CN=front-proxy-client" (issuer "CN=ca") is signed by no CA of '
            "--client-ca-file or --requestheader-client-ca-file",
        ),
    ],
)
def test_the_first_check_a_certificate_failed_is_kept_to_say_why_it_identifies_no_one(
    tmp_path: Path, case: str, why: str | None
) -> None:
    """What the 401's log line says (api.app, review r1docs L1): the certificate's names and the reason."""
    ca = Authority.create(tmp_path / "ca", "ca")
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
    elif case == "unknown-ca":
        trusted = Authority.create(tmp_path / "other", "other").cert
    refusal = refused_certificate(_server_side(trusted, ca.client_leaf(key, before, after, usage), key))
    if why is None:
        assert refusal is None
    else:
        assert refusal is not None and why in refusal.why, refusal


def test_a_certificate_no_trusted_ca_signed_is_said_once_whatever_names_it_holds(tmp_path: Path) -> None:
    """Anyone can make one, with any names: they are not what its log line is rate-limited by."""
    key = ec.generate_private_key(ec.SECP256R1())
    trusted = Authority.create(tmp_path / "ca", "ca").cert
    keys = set()
    for name in ("one", "two"):
        stranger = Authority.create(tmp_path / name, name)
        refusal = refused_certificate(
            _server_side(trusted, stranger.client_leaf(key, NOW - DAY, NOW + DAY), key)
        )
        assert refusal is not None and f'(issuer "CN={name}")' in refusal.why
        keys.add(refusal.key)
    assert len(keys) == 1
