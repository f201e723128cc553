"""The handshake's verdict on a client certificate (tls._verify): every check must pass, not the last;
one that failed only for the time or an unknown issuer is left to the authenticators; and the chain is
bounded (its depth, its keys) before a signature is checked.

The authenticators verify the chain again on every request (tests/unit/test_chain_trust.py); this
pins the handshake's own verdict, which decides whether a connection has a chain at all (r1tls L3)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.logger import formatEvent

from payloadtags import tls
from payloadtags.access.authn import (
    MAX_RSA_BITS,
    MAX_RSA_EXPONENT,
    VERIFY_DEPTH,
    TrustAnchors,
)
from payloadtags.onceper import OncePerPeriod
from payloadtags.tls import ServingCertificate, client_chain, refused_certificate, server_context
from tests.support.logcapture import collected_logs
from tests.support.pki import Authority, in_memory_handshake

DAY = datetime.timedelta(days=1)


def _server_side(
    trusted: x509.Certificate,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    intermediates: tuple[x509.Certificate, ...] = (),
) -> SSL.Connection:
    """The server's end of an in-memory handshake whose client presents ``cert`` (and ``intermediates``)."""
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.use_certificate(cert)
    client_context.use_privatekey(key)
    for intermediate in intermediates:
        client_context.add_extra_chain_cert(crypto.X509.from_cryptography(intermediate))
    client = SSL.Connection(client_context, None)
    server = SSL.Connection(server_context(ServingCertificate.self_signed(), (trusted,)), None)
    error = in_memory_handshake(client, server)
    if error is not None:
        raise error
    return server


@pytest.mark.parametrize("case", ["valid", "expired-ca", "expired-leaf", "future-leaf", "server-auth-leaf"])
def test_a_chain_is_kept_when_every_check_passed_or_only_the_time_failed(tmp_path: Path, case: str) -> None:
    """A chain that failed only for the time is kept too (as the client sent it), for the
    authenticators to verify per request: a certificate valid from a moment after the handshake
    identifies the connection's later requests (r1hostile2 L1). One that failed otherwise is not."""
    ca = Authority.create(tmp_path, "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    trusted, before, after, usage = ca.cert, now - DAY, now + DAY, ExtendedKeyUsageOID.CLIENT_AUTH
    if case == "expired-ca":
        trusted = ca.resigned(now - 3 * DAY, now - DAY)
    elif case == "expired-leaf":
        before, after = now - 3 * DAY, now - DAY
    elif case == "future-leaf":
        before, after = now + DAY, now + 3 * DAY
    elif case == "server-auth-leaf":
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    cert = ca.client_leaf(key, before, after, usage)
    # The handshake itself never fails (the authenticators decide); only the kept chain tells.
    chain = client_chain(_server_side(trusted, cert, key))
    if case == "valid":
        assert chain == (cert, ca.cert)  # the verified chain, to the trusted CA
    elif case == "server-auth-leaf":
        assert chain == ()
    else:
        assert chain == (cert,)  # the client's certificate, as sent


def test_a_chain_of_an_unknown_ca_is_kept_as_sent_for_the_authenticators(tmp_path: Path) -> None:
    """A CA added to the CA files after the handshake may trust it at a later request (r1hostile2 L1)."""
    trusted, other = Authority.create(tmp_path, "trusted"), Authority.create(tmp_path, "other")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = other.client_leaf(key, now - DAY, now + DAY)
    assert client_chain(_server_side(trusted.cert, cert, key)) == (cert,)


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
    now = datetime.datetime.now(datetime.UTC)
    trusted, before, after, usage = ca.cert, now - DAY, now + DAY, ExtendedKeyUsageOID.CLIENT_AUTH
    if case == "expired-ca":
        trusted = ca.resigned(now - 3 * DAY, now - DAY)
    elif case == "expired-leaf":
        before, after = now - 3 * DAY, now - DAY
    elif case == "future-leaf":
        before, after = now + DAY, now + 3 * DAY
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
        now = datetime.datetime.now(datetime.UTC)
        refusal = refused_certificate(
            _server_side(trusted, stranger.client_leaf(key, now - DAY, now + DAY), key)
        )
        assert refusal is not None and f'(issuer "CN={name}")' in refusal.why
        keys.add(refusal.key)
    assert len(keys) == 1


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _ca_cert(
    subject: str, public_key: object, issuer: str, signer: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


def _chain(
    intermediates: int,
) -> tuple[x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey, tuple[x509.Certificate, ...]]:
    """(trusted root, client certificate, its key, the intermediates between them, nearest first)."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("root", root_key.public_key(), "root", root_key)
    issuer, issuer_key = "root", root_key
    chain: list[x509.Certificate] = []
    for i in range(intermediates):
        key = ec.generate_private_key(ec.SECP256R1())
        chain.insert(0, _ca_cert(f"ca-{i}", key.public_key(), issuer, issuer_key))
        issuer, issuer_key = f"ca-{i}", key
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("user"))
        .issuer_name(_name(issuer))
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .sign(issuer_key, hashes.SHA256())
    )
    return root, leaf, leaf_key, tuple(chain)


@pytest.mark.parametrize("intermediates", [VERIFY_DEPTH, VERIFY_DEPTH + 1])
def test_a_chain_deeper_than_the_verify_depth_is_not_trusted(intermediates: int) -> None:
    """OpenSSL's default depth (100) let a chain nobody trusts cost a signature check per link, on
    the reactor (r1hostile2 F1). The handshake goes on (the request is answered 401), the chain is
    not kept, and the per-request verification has the same bound."""
    root, leaf, key, chain = _chain(intermediates)
    kept = client_chain(_server_side(root, leaf, key, chain))
    within = intermediates <= VERIFY_DEPTH
    assert kept == ((leaf, *chain, root) if within else ())
    now = datetime.datetime.now(datetime.UTC)
    assert TrustAnchors((root,)).verify(leaf, (*chain, root), now) is within
    # The 401's line (api.app) says which bound the chain exceeds, not an OpenSSL error number.
    refusal = refused_certificate(_server_side(root, leaf, key, chain))
    if within:
        assert refusal is None
    else:
        assert refusal is not None and "ends a chain longer than this server verifies" in refusal.why, refusal


def _odd(bits: int) -> int:
    return (1 << (bits - 1)) | 1 | (0x5DEECE66D << 8)


@pytest.mark.parametrize(
    ("bits", "exponent", "refused"),
    [
        (MAX_RSA_BITS + 8, 65537, True),
        (2048, MAX_RSA_EXPONENT + 2, True),
        (2048, MAX_RSA_EXPONENT, False),
    ],
)
def test_a_chain_with_a_key_go_refuses_fails_the_handshake_before_its_signatures_are_checked(
    bits: int, exponent: int, refused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An RSA key over 8192 bits or with an exponent over 2^31-1 in the chain fails the handshake, as in
    Go (crypto/tls, crypto/rsa), before any signature is checked with it: here the intermediate's key
    is no real key (no one could sign with it), and the client's certificate's signature is made by
    another key, so a check would only fail, and a handshake that reached it would go on (unverified)."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("root", root_key.public_key(), "root", root_key)
    public = rsa.RSAPublicNumbers(exponent, _odd(bits)).public_key()
    intermediate = _ca_cert("big", public, "root", root_key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("user"))
        .issuer_name(_name("big"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        # Signed by an RSA key, as OpenSSL takes for the issuer only a certificate of the same key type.
        .sign(rsa.generate_private_key(65537, 2048), hashes.SHA256())
    )
    if refused:
        # No request follows a failed handshake: its line says why, with its own reason, once a period.
        monkeypatch.setattr(tls, "_outsized_said", OncePerPeriod(tls.OUTSIZED_LOG_PERIOD))
        with collected_logs() as events:
            for _ in range(2):
                with pytest.raises(SSL.Error):
                    _server_side(root, leaf, key, (intermediate,))
        said = [formatEvent(e) for e in events]
        assert said == [
            'a TLS handshake is refused: the CA certificate "CN=big" of its chain (issuer "CN=root") has '
            + (
                f"an RSA key of {bits} bits (more than {MAX_RSA_BITS})"
                if bits > MAX_RSA_BITS
                else f"an RSA public exponent over {MAX_RSA_EXPONENT}"
            )
            + ", which Go refuses too"
        ], said
        assert not TrustAnchors((root,)).verify(leaf, (intermediate, root), now)
    else:
        assert client_chain(_server_side(root, leaf, key, (intermediate,))) == ()


@pytest.mark.parametrize("client_cas", [False, True])
def test_the_server_context_refuses_renegotiation_itself(tmp_path: Path, client_cas: bool) -> None:
    """Asked for, not left to OpenSSL's default (off since 3.0): each renegotiation would be a full
    handshake, its client chain verified again, that no handshake token counts (review r1hostile2 N2)."""
    cas = (Authority.create(tmp_path, "ca").cert,) if client_cas else ()
    context = server_context(ServingCertificate.self_signed(), cas)
    assert context.set_options(0) & SSL.OP_NO_RENEGOTIATION


def test_a_refusal_for_the_time_holds_only_while_the_certificate_is_outside_its_validity(
    tmp_path: Path,
) -> None:
    """A certificate not yet valid at the handshake is kept for the authenticators (client_chain): once
    valid, a 401 it gets at a later request is for another reason, which "not valid yet" would misname
    (so the line is not said). Its expiry, and a CA nobody trusts, hold at any time."""
    ca = Authority.create(tmp_path / "ca", "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    # Taken here, not at the module's import: the handshake just below must come before `later`.
    now = datetime.datetime.now(datetime.UTC)
    later = now + datetime.timedelta(seconds=4)
    connection = _server_side(ca.cert, ca.client_leaf(key, later, now + DAY), key)
    assert client_chain(connection) != ()
    before = refused_certificate(connection, now)
    assert before is not None and "is not valid yet" in before.why
    assert refused_certificate(connection, later) is None
    expired = _server_side(ca.cert, ca.client_leaf(key, now - 3 * DAY, now - DAY), key)
    stranger = Authority.create(tmp_path / "other", "other")
    unknown = _server_side(ca.cert, stranger.client_leaf(key, later, now + DAY), key)
    for at in (now, now + 2 * DAY):
        assert (refusal := refused_certificate(expired, at)) is not None and "has expired" in refusal.why
        # Its first failed check is the build (no trusted issuer), whatever the time.
        assert (refusal := refused_certificate(unknown, at)) is not None and "no CA" in refusal.why
