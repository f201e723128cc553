"""TLS for connections to the cluster API.

We build the `OpenSSL.SSL.Context` ourselves from files or PEM bytes. Twisted's ready-made helpers
(`optionsForClientTLS` with a `PrivateCertificate`) hand pyOpenSSL ``X509``/``PKey`` objects to
OpenSSL, which pyOpenSSL 26 deprecates; under ``-W error`` that fails the handshake.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from payloadtags.kube.config import ClusterConfig

# The private keys that pyOpenSSL accepts for a client certificate.
_SIGNING_KEYS = (
    dsa.DSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    rsa.RSAPrivateKey,
)


def build_client_context(config: ClusterConfig) -> SSL.Context:
    """An OpenSSL client context with the cluster's CA and our client certificate. Blocking (reads
    files): build it once, when the client is created."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    if config.insecure_skip_tls_verify:
        ctx.set_verify(SSL.VERIFY_NONE)
    else:
        if config.ca_file is not None:
            ctx.load_verify_locations(config.ca_file)
        elif config.ca_data is not None:
            store = ctx.get_cert_store()
            assert store is not None
            for cert in _load_certs(config.ca_data, "CA data"):
                store.add_cert(crypto.X509.from_cryptography(cert))
        else:
            ctx.set_default_verify_paths()
    if config.client_cert_file is not None and config.client_key_file is not None:
        ctx.use_certificate_chain_file(config.client_cert_file)
        ctx.use_privatekey_file(config.client_key_file)
        ctx.check_privatekey()
    elif config.client_cert_data is not None and config.client_key_data is not None:
        leaf, *chain = _load_certs(config.client_cert_data, "client certificate data")
        ctx.use_certificate(leaf)
        for cert in chain:
            ctx.add_extra_chain_cert(cert)
        key = load_pem_private_key(config.client_key_data, password=None)
        if not isinstance(key, _SIGNING_KEYS):
            raise ValueError(f"client key data: a {type(key).__name__} cannot sign a TLS handshake")
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    return ctx


def client_tls_problems(config: ClusterConfig) -> list[str]:
    """What keeps `build_client_context` from working, one line per problem (empty: nothing).

    Blocking (reads files). Start-up calls it so that bad TLS data in a kubeconfig is reported with
    the other configuration problems, before serving, rather than as a traceback when the client is
    made. Each piece is checked on its own, so that one run names every bad one; the context is then
    built, as the client will build it, for what OpenSSL alone refuses."""
    if not config.uses_tls:
        return []
    problems: list[str] = []
    if not config.insecure_skip_tls_verify:
        # In a pod the CA is the ServiceAccount's file, not a kubeconfig field.
        ca_name = (
            f"the ServiceAccount CA {config.ca_file}"
            if config.in_cluster and config.ca_file
            else f"the cluster CA ({config.ca_field})"
        )
        ca = _contents(config.ca_file, config.ca_data, ca_name, problems)
        if ca is not None and _certificates(ca) is None:
            problems.append(f"{ca_name} holds no valid PEM certificate")
    cert = _contents(
        config.client_cert_file,
        config.client_cert_data,
        f"the client certificate ({config.client_cert_field})",
        problems,
    )
    key_data = _contents(
        config.client_key_file,
        config.client_key_data,
        f"the client key ({config.client_key_field})",
        problems,
    )
    leaf = None
    if cert is not None:
        chain = _certificates(cert)
        if chain is None:
            problems.append(
                f"the client certificate ({config.client_cert_field}) holds no valid PEM certificate"
            )
        else:
            try:
                chain[0].public_key()
            except (ValueError, UnsupportedAlgorithm) as e:
                # It parses, but its key (say, on SM2's curve) is none that cryptography or OpenSSL can use.
                problems.append(
                    f"the client certificate ({config.client_cert_field}) has a key type that cannot be used "
                    f"({e})"
                )
            else:
                leaf = chain[0]
    key = None
    if key_data is not None:
        try:
            key = load_pem_private_key(key_data, password=None)
        except TypeError:
            problems.append(f"the client key ({config.client_key_field}) is encrypted; give it unencrypted")
        except (ValueError, UnsupportedAlgorithm):
            problems.append(f"the client key ({config.client_key_field}) is not a PEM private key")
        else:
            if not isinstance(key, _SIGNING_KEYS):
                problems.append(
                    f"the client key ({config.client_key_field}): a {type(key).__name__} cannot sign a TLS "
                    "handshake"
                )
                key = None
    if leaf is not None and key is not None and _public(key.public_key()) != _public(leaf.public_key()):
        problems.append(
            f"the client key ({config.client_key_field}) does not match the client certificate "
            f"({config.client_cert_field})"
        )
    if not problems:
        try:
            build_client_context(config)
        except (SSL.Error, ValueError, OSError) as e:
            problems.append(f"the TLS client settings are refused by OpenSSL: {_reason(e)}")
    return problems


def _reason(error: Exception) -> str:
    """OpenSSL's reasons, not pyOpenSSL's list of (library, function, reason) tuples."""
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        reasons = [str(entry[-1]) for entry in error.args[0] if isinstance(entry, tuple) and entry]
        if reasons:
            return "; ".join(reasons)
    return str(error)


def _contents(path: str | None, data: bytes | None, what: str, problems: list[str]) -> bytes | None:
    if path is None:
        return data
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        problems.append(f"{what} {path}: cannot read: {e.strerror}")
        return None


def _certificates(data: bytes) -> list[x509.Certificate] | None:
    try:
        return x509.load_pem_x509_certificates(data) or None
    except ValueError:
        return None


def _public(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_certs(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ValueError(f"{what} holds no valid PEM certificate: {e}") from e
    return certs


@implementer(IPolicyForHTTPS)
class ClusterTLSPolicy:
    """Gives treq's Agent our context for every HTTPS connection, verifying the server's name."""

    def __init__(self, context: SSL.Context, *, verify: bool, server_name: str | None) -> None:
        self._context = context
        self._verify = verify
        self._server_name = server_name

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        name = self._server_name or hostname.decode("ascii")
        return _ConnectionCreator(self._context, name, self._verify)

    @classmethod
    def from_config(cls, config: ClusterConfig) -> ClusterTLSPolicy:
        return cls(
            build_client_context(config),
            verify=not config.insecure_skip_tls_verify,
            server_name=config.tls_server_name,
        )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


@implementer(IOpenSSLClientConnectionCreator)
class _ConnectionCreator:
    def __init__(self, context: SSL.Context, name: str, verify: bool) -> None:
        self._context = context
        self._name = name.strip("[]")
        self._verify = verify
        self._is_ip = _is_ip(name)

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if not self._is_ip:
            # SNI is defined for DNS names only.
            connection.set_tlsext_host_name(self._name.encode("idna"))
        if self._verify:
            connection.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify_callback(tlsProtocol)
            )
        return connection

    def _verify_callback(
        self, tls_protocol: object
    ) -> Callable[[SSL.Connection, crypto.X509, int, int, int], bool]:
        name, is_ip = self._name, self._is_ip

        def verify(_conn: SSL.Connection, cert: crypto.X509, _errno: int, depth: int, ok: int) -> bool:
            # OpenSSL has already checked the chain (ok); the name of the leaf is ours to check.
            if not ok or depth != 0:
                return bool(ok)
            leaf = cert.to_cryptography()
            try:
                if is_ip:
                    verify_certificate_ip_address(leaf, name)
                else:
                    verify_certificate_hostname(leaf, name)
            except VerificationError:
                # Without this the connection fails with OpenSSL's generic "certificate verify
                # failed"; with it, the reason says which name did not match.
                fail = getattr(tls_protocol, "failVerification", None)
                if fail is not None:
                    fail(Failure())
                return False
            return True

        return verify
