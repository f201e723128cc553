"""The handshake's verdict on a client certificate (tls._verify): every check must pass, not the last;
one that failed only for the time or an unknown issuer is left to the authenticators; and the chain is
bounded (its depth, its keys) before a signature is checked.

The authenticators verify the chain again on every request (tests/unit/test_chain_trust.py); this
pins the handshake's own verdict, which decides whether a connection has a chain at all (r1tls L3)."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.logger import formatEvent

from payloadtags import tls
from payloadtags.access.authn import (
    MAX_RSA_BITS,
    MAX_RSA_EXPONENT,
    VERIFY_DEPTH,
    TrustAnchors,
    refused_certificate_key,
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


# A public key on sect571r1 (a binary curve, made with `openssl genpkey`), as SubjectPublicKeyInfo: OpenSSL
# verifies with such keys (4.6 ms a signature), Go parses no certificate holding one, and cryptography
# cannot load it, nor make one.
_SECT571R1_SPKI = base64.b64decode(
    "MIGnMBAGByqGSM49AgEGBSuBBAAnA4GSAAQEpbXWSdckKVzg7DfCoDKiMEFNwow6IKPkW34wfXluziI9F7dhU3+LfvEiIxVJkrNmnzpG"
    "kHmzQKHiEDUSYzcNbB4/rzxaFI8EAYTzkQP5mjjwNklggQAdj+mIWB+ENbRXO2MXnkAALMWwJY70ETH2VRk8od2n36Q0jJGtZFclRlg"
    "STbOfwU1jF81P7N8FK0U="
)
# AlgorithmIdentifiers: rsaEncryption (NULL parameters), id-RSASSA-PSS (none), ecdsa-with-SHA256.
_RSA_ALGORITHM = bytes.fromhex("300d06092a864886f70d0101010500")
_RSA_PSS_ALGORITHM = bytes.fromhex("300b06092a864886f70d01010a")
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    length = bytes([size]) if size < 0x80 else bytes([0x80 | ((size.bit_length() + 7) // 8)])
    if size >= 0x80:
        length += size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + body


def _with_spki(spki: bytes, subject: str, root_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A CA certificate signed by ``root_key`` whose key is ``spki``, one cryptography cannot make: made
    with a placeholder key, whose SubjectPublicKeyInfo is then swapped in the signed part, signed again."""
    placeholder = ec.generate_private_key(ec.SECP256R1()).public_key()
    made = _ca_cert(subject, placeholder, "root", root_key)
    old = placeholder.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tbs = made.tbs_certificate_bytes
    body = tbs[2 if tbs[1] < 0x80 else 2 + (tbs[1] & 0x7F) :]  # the SEQUENCE's contents
    assert body.count(old) == 1
    signed = _der(0x30, body.replace(old, spki))
    signature = root_key.sign(signed, ec.ECDSA(hashes.SHA256()))
    return x509.load_der_x509_certificate(_der(0x30, signed + _ECDSA_SHA256 + _der(0x03, b"\0" + signature)))


def _rsa_pss_spki(key: rsa.RSAPublicKey) -> bytes:
    """``key`` as an id-RSASSA-PSS key (no parameters: any PSS signature), as `openssl genpkey -algorithm
    RSA-PSS` makes it; cryptography loads it as an RSA key."""
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = spki[2 if spki[1] < 0x80 else 2 + (spki[1] & 0x7F) :]
    assert body.startswith(_RSA_ALGORITHM)
    return _der(0x30, _RSA_PSS_ALGORITHM + body[len(_RSA_ALGORITHM) :])


_NOT_GO = "only RSA, ECDSA on P-224, P-256, P-384 or P-521, and Ed25519 keys are verified, as by Go"


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("sect571r1", f"a key of an algorithm or on a curve this server does not read: {_NOT_GO}"),
        ("dsa", f"a DSA key: {_NOT_GO}"),
        ("ed448", f"an Ed448 key: {_NOT_GO}"),
        ("rsa-pss", f"an RSA-PSS key (id-RSASSA-PSS): {_NOT_GO}"),
        ("p224", None),
        ("p384", None),
        ("p521", None),
        ("ed25519", None),
    ],
)
def test_a_chain_with_a_key_of_a_kind_go_does_not_verify_with_fails_the_handshake(
    kind: str, words: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only RSA keys cost: OpenSSL verifies on binary curves (a chain of sect571r1 CAs, 28 ms a
    handshake) and with made-up DSA keys of 10,000 bits (20 ms), which Go never does (review r2chaincost
    F2). A key of any kind but those Go verifies with fails the handshake before it checks a signature, with
    a line of its own, and the per-request verification refuses it too. Each chain is otherwise valid (the
    client's certificate signed by the CA's key), but where cryptography cannot sign (sect571r1)."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("root", root_key.public_key(), "root", root_key)
    signer: object
    padding: object = None
    algorithm: hashes.HashAlgorithm | None = hashes.SHA256()
    if kind == "sect571r1":
        signer = ec.generate_private_key(ec.SECP256R1())  # no one's: the check would fail, were it made
        intermediate = _with_spki(_SECT571R1_SPKI, "odd", root_key)
    elif kind == "rsa-pss":
        signer = rsa.generate_private_key(65537, 2048)
        intermediate = _with_spki(_rsa_pss_spki(signer.public_key()), "odd", root_key)
        padding = asym_padding.PSS(asym_padding.MGF1(hashes.SHA256()), asym_padding.PSS.DIGEST_LENGTH)
    else:
        if kind == "dsa":
            signer = dsa.generate_private_key(2048)  # a smaller one, the client side refuses to send
        elif kind in ("ed448", "ed25519"):
            signer = (
                ed448.Ed448PrivateKey.generate() if kind == "ed448" else ed25519.Ed25519PrivateKey.generate()
            )
            algorithm = None
        else:
            curve = {"p224": ec.SECP224R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}[kind]
            signer = ec.generate_private_key(curve)
        intermediate = _ca_cert("odd", signer.public_key(), "root", root_key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("user"))
        .issuer_name(_name("odd"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .sign(signer, algorithm, rsa_padding=padding)  # type: ignore[arg-type]
    )
    assert refused_certificate_key(intermediate) == words
    assert TrustAnchors((root,)).verify(leaf, (intermediate, root), now) is (words is None)
    if words is None:
        assert client_chain(_server_side(root, leaf, key, (intermediate,))) == (leaf, intermediate, root)
        return
    monkeypatch.setattr(tls, "_outsized_said", OncePerPeriod(tls.OUTSIZED_LOG_PERIOD))
    with collected_logs() as events:
        for _ in range(2):
            with pytest.raises(SSL.Error):
                _server_side(root, leaf, key, (intermediate,))
    said = [formatEvent(e) for e in events]
    assert said == [
        f'a TLS handshake is refused: the CA certificate "CN=odd" of its chain (issuer "CN=root") has {words}'
    ], said
