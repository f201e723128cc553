"""A connection's client certificate chain is trusted per request, at the time and against the CAs of
that request, as k8s.io/apiserver's x509 and request-header authenticators verify it (r1tls F1, F3)."""

from __future__ import annotations

import datetime
import gc
import weakref
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from payloadtags.access.authn import ChainDecisions, ClientCertificateAuthenticator, Credentials
from payloadtags.access.requestheader import RequestHeaderAuthenticator, RequestHeaderConfig
from payloadtags.tls import client_chain, connection_verdicts
from tests.support.pki import Authority
from tests.unit.test_tls_verify import _server_side

DAY = datetime.timedelta(days=1)


class Now:
    """The time the authenticators check certificates at, moved by the test."""

    def __init__(self) -> None:
        self.at = datetime.datetime.now(datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.at


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority.create(tmp_path, "front-proxy-ca")


def _leaf(
    ca: Authority,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
) -> x509.Certificate:
    return ca.client_leaf(ec.generate_private_key(ec.SECP256R1()), not_before, not_after, usage)


def _renewed(ca: Authority, key: ec.EllipticCurvePrivateKey | None = None) -> x509.Certificate:
    """``ca``'s certificate issued again: same subject, a new serial and validity, and the same key
    (as cert-manager renews a CA with rotationPolicy Never) unless ``key`` is given."""
    key = key or ca.key
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(ca.cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _proxy(authorities: tuple[x509.Certificate, ...], now: Now) -> RequestHeaderAuthenticator:
    return RequestHeaderAuthenticator(RequestHeaderConfig(authorities=authorities), now=now)


async def _verdicts(
    authorities: tuple[x509.Certificate, ...], credentials: Credentials, now: Now
) -> tuple[bool, bool]:
    """(trusted as the front proxy, identified as a client-CA user)."""
    proxy = _proxy(authorities, now)
    users = ClientCertificateAuthenticator(list(authorities), now=now)
    return proxy.trusted(credentials), await users.authenticate(credentials) is not None


@pytest_twisted.ensureDeferred
async def test_a_chain_expired_since_the_handshake_identifies_nobody(ca: Authority) -> None:
    # The chain a kept-alive connection's handshake verified yesterday, asked about today.
    now = Now()
    cert = _leaf(ca, now.at - 2 * DAY, now.at - DAY)
    credentials = Credentials(cert, {"x-remote-user": ["mallory"]}, peer_chain=(cert, ca.cert))
    assert await _verdicts((ca.cert,), credentials, now) == (False, False)


@pytest_twisted.ensureDeferred
async def test_an_open_connection_loses_its_identity_when_its_certificate_expires(ca: Authority) -> None:
    now = Now()
    cert = _leaf(ca, now.at - DAY, now.at + DAY)
    # The same objects on every request, as the TLS layer keeps one chain per connection: a decision
    # kept from the first request must not outlive the certificate.
    credentials = Credentials(
        cert, {"x-remote-user": ["mallory"]}, peer_chain=(cert, ca.cert), verdicts=weakref.WeakKeyDictionary()
    )
    proxy = _proxy((ca.cert,), now)
    users = ClientCertificateAuthenticator([ca.cert], now=now)
    assert proxy.trusted(credentials)
    assert await users.authenticate(credentials) is not None
    now.at += DAY - datetime.timedelta(seconds=1)
    assert proxy.trusted(credentials)
    now.at += 2 * datetime.timedelta(seconds=1)
    assert not proxy.trusted(credentials)
    assert await users.authenticate(credentials) is None


@pytest_twisted.ensureDeferred
async def test_an_open_connection_loses_its_identity_when_its_ca_expires(ca: Authority) -> None:
    now = Now()
    # The leaf outlives its CA (valid 30 days from its creation, see tests/support/pki.py).
    cert = _leaf(ca, now.at - DAY, now.at + 90 * DAY)
    credentials = Credentials(cert, {}, peer_chain=(cert, ca.cert))
    proxy = _proxy((ca.cert,), now)
    assert proxy.trusted(credentials)
    now.at = ca.cert.not_valid_after_utc + datetime.timedelta(seconds=2)
    assert not proxy.trusted(credentials)


@pytest_twisted.ensureDeferred
async def test_a_certificate_not_yet_valid_is_trusted_from_its_not_before(ca: Authority) -> None:
    now = Now()
    cert = _leaf(ca, now.at + DAY, now.at + 2 * DAY)
    credentials = Credentials(cert, {}, peer_chain=(cert, ca.cert))
    proxy = _proxy((ca.cert,), now)
    assert not proxy.trusted(credentials)
    now.at += DAY + datetime.timedelta(seconds=1)
    assert proxy.trusted(credentials)


def _connection_credentials(connection: SSL.Connection) -> Credentials:
    """What the HTTP layer makes of a connection's chain for each request (api.app._credentials)."""
    chain = client_chain(connection)
    return Credentials(
        chain[0] if chain else None,
        {},
        peer_chain=chain,
        verdicts=connection_verdicts(connection) if chain else None,
    )


@pytest_twisted.ensureDeferred
async def test_a_connection_made_before_its_certificate_is_valid_is_identified_from_its_not_before(
    ca: Authority, tmp_path: Path
) -> None:
    """The handshake failed to verify the certificate only because of the time: the connection's
    later requests are verified at their own time, as kube-apiserver verifies each request, so they
    are the user's once the certificate is valid (review r1hostile2 L1: 401 for the connection's life)."""
    now = Now()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.client_leaf(key, now.at + datetime.timedelta(seconds=4), now.at + DAY)
    connection = _server_side(ca.cert, cert, key)
    users = ClientCertificateAuthenticator([ca.cert], now=now)
    assert await users.authenticate(_connection_credentials(connection)) is None
    now.at += datetime.timedelta(seconds=5)
    user = await users.authenticate(_connection_credentials(connection))
    assert user is not None
    assert user.name == "front-proxy-client"


@pytest_twisted.ensureDeferred
async def test_a_connection_whose_ca_is_added_later_is_identified_at_its_next_request(
    ca: Authority, tmp_path: Path
) -> None:
    """The handshake did not know the client's CA; the CA files changed since (the authenticator made
    anew with them, as on every change): the connection's next request is the user's. A chain the
    handshake refused otherwise (for a server-only certificate) is not kept at all."""
    now = Now()
    other = Authority.create(tmp_path / "other", "other-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.client_leaf(key, now.at - DAY, now.at + DAY)
    connection = _server_side(other.cert, cert, key)
    credentials = _connection_credentials(connection)
    assert await ClientCertificateAuthenticator([other.cert], now=now).authenticate(credentials) is None
    assert await ClientCertificateAuthenticator([other.cert, ca.cert], now=now).authenticate(credentials)
    server_only = ca.client_leaf(key, now.at - DAY, now.at + DAY, ExtendedKeyUsageOID.SERVER_AUTH)
    assert client_chain(_server_side(other.cert, server_only, key)) == ()


@pytest_twisted.ensureDeferred
async def test_a_certificate_for_servers_only_identifies_nobody(ca: Authority) -> None:
    # As Go verifies with ExtKeyUsageClientAuth on every request, whatever the handshake said.
    now = Now()
    cert = _leaf(ca, now.at - DAY, now.at + DAY, ExtendedKeyUsageOID.SERVER_AUTH)
    credentials = Credentials(cert, {}, peer_chain=(cert, ca.cert))
    assert await _verdicts((ca.cert,), credentials, now) == (False, False)
    for usage in (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE):
        cert = _leaf(ca, now.at - DAY, now.at + DAY, usage)
        credentials = Credentials(cert, {}, peer_chain=(cert, ca.cert))
        assert await _verdicts((ca.cert,), credentials, now) == (True, True)


@pytest_twisted.ensureDeferred
async def test_a_ca_renewed_with_the_same_key_keeps_open_connections_trusted(ca: Authority) -> None:
    # F3: the connection's handshake verified (leaf, old CA certificate); the bundle now holds only
    # the renewal. kube-apiserver verifies the leaf against the current pool, and so it still verifies.
    now = Now()
    cert = ca.client("front-proxy-client").cert
    credentials = Credentials(cert, {}, peer_chain=(cert, ca.cert))
    assert await _verdicts((_renewed(ca),), credentials, now) == (True, True)
    # The same subject with another key is another CA: the certificate does not chain to it.
    other = _renewed(ca, ec.generate_private_key(ec.SECP256R1()))
    assert await _verdicts((other,), credentials, now) == (False, False)


@pytest_twisted.ensureDeferred
async def test_a_chain_through_an_intermediate_is_verified_again(ca: Authority) -> None:
    now = Now()
    intermediate = ca.intermediate("front-proxy-intermediate")
    cert = intermediate.client("front-proxy-client").cert
    credentials = Credentials(cert, {}, peer_chain=(cert, intermediate.cert, ca.cert))
    assert await _verdicts((ca.cert,), credentials, now) == (True, True)
    # The intermediate itself configured as the anchor (Go's roots pool takes any CA).
    assert await _verdicts((intermediate.cert,), credentials, now) == (True, True)
    now.at = intermediate.cert.not_valid_after_utc + datetime.timedelta(seconds=2)
    assert await _verdicts((ca.cert,), credentials, now) == (False, False)


def test_a_decision_is_kept_until_the_chain_s_next_validity_change(ca: Authority) -> None:
    # The common case stays a lookup: one verification per chain until a certificate of the chain or
    # a CA expires (or becomes valid), then one more.
    now = Now()
    cert = _leaf(ca, now.at - DAY, now.at + DAY)
    asked: list[datetime.datetime] = []

    def decide(credentials: Credentials, at: datetime.datetime) -> bool:
        asked.append(at)
        return True

    kept: ChainDecisions[bool] = ChainDecisions(now=now, anchors=(ca.cert,))
    credentials = Credentials(cert, {}, peer_chain=(cert, ca.cert), verdicts=weakref.WeakKeyDictionary())
    for _ in range(3):
        kept.get(credentials, decide)
        now.at += datetime.timedelta(hours=1)
    assert len(asked) == 1
    now.at = cert.not_valid_after_utc + datetime.timedelta(seconds=1)
    kept.get(credentials, decide)
    kept.get(credentials, decide)
    assert asked[1:] == [now.at]


def _ca_for(usage: x509.ObjectIdentifier) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server-only-ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def test_a_ca_for_servers_only_trusts_no_client_per_request_as_at_the_handshake() -> None:
    # r2tls L1: Go's Verify(KeyUsages: ClientAuth) checks every certificate's EKU, the CA's included,
    # and so does the handshake (OpenSSL's ssl_client purpose); the per-request check read the leaf's.
    ca_cert, ca_key = _ca_for(ExtendedKeyUsageOID.SERVER_AUTH)
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "front-proxy-client")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    handshake = bool(client_chain(_server_side(ca_cert, cert, key)))
    credentials = Credentials(cert, {}, peer_chain=(cert, ca_cert))
    per_request = RequestHeaderAuthenticator(RequestHeaderConfig(authorities=(ca_cert,))).trusted(credentials)
    assert (handshake, per_request) == (False, False)


def test_a_kept_verdict_ends_when_the_configured_ca_expires(ca: Authority) -> None:
    # r2tls L3: the connection's handshake verified (leaf, old CA); the bundle now holds a same-key
    # renewal of the CA that expires before either: its expiry ends the kept verdict (the anchors' bound).
    now = Now()
    renewal = (
        x509.CertificateBuilder()
        .subject_name(ca.cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(ca.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now.at - DAY)
        .not_valid_after(now.at + DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    cert = _leaf(ca, now.at - DAY, now.at + 10 * DAY)
    credentials = Credentials(cert, {}, peer_chain=(cert, ca.cert), verdicts=weakref.WeakKeyDictionary())
    kept = _proxy((renewal,), now)
    assert kept.trusted(credentials)
    now.at = renewal.not_valid_after_utc + 2 * datetime.timedelta(seconds=1)
    assert (kept.trusted(credentials), _proxy((renewal,), now).trusted(credentials)) == (False, False)


def test_each_open_connection_s_chain_is_verified_once_however_many_are_open(ca: Authority) -> None:
    # r2tls L2: the verdicts were a cache of 256 chains, oldest dropped: past 256 open connections
    # asked in turn, every request paid a full verification. Now each connection keeps its own.
    now = Now()
    cert = ca.client("front-proxy-client").cert
    connections = [SSL.Connection(SSL.Context(SSL.TLS_METHOD)) for _ in range(300)]
    credentials = [
        Credentials(cert, {}, peer_chain=(cert, ca.cert), verdicts=connection_verdicts(c))
        for c in connections
    ]
    asked: list[datetime.datetime] = []

    def decide(credentials: Credentials, at: datetime.datetime) -> bool:
        asked.append(at)
        return True

    kept: ChainDecisions[bool] = ChainDecisions(now=now, anchors=(ca.cert,))
    for _ in range(3):
        for c in credentials:
            assert kept.get(c, decide)
    assert len(asked) == 300
    # The verdicts go with their connection.
    verdicts = weakref.ref(connection_verdicts(connections[0]))
    del connections[0], credentials[0]
    gc.collect()
    assert verdicts() is None
