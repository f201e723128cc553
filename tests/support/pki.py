"""Test certificates: a CA, serving and client certificates, written as PEM files."""

from __future__ import annotations

import base64
import datetime
import ipaddress
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@attrs.frozen
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    cert_file: Path
    key_file: Path


@attrs.frozen
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    cert_file: Path
    directory: Path

    @classmethod
    def create(cls, directory: Path, name: str) -> Authority:
        directory.mkdir(parents=True, exist_ok=True)
        return _ca(directory, name, issuer=None)

    def intermediate(self, name: str) -> Authority:
        """A CA signed by this one (its certificate file holds only itself)."""
        return _ca(self.directory, name, issuer=self)

    def resigned(self, before: datetime.datetime, after: datetime.datetime) -> x509.Certificate:
        """This CA's certificate signed again (same key, subject and extensions) with this validity."""
        builder = (
            x509.CertificateBuilder()
            .subject_name(self.cert.subject)
            .issuer_name(self.cert.subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(before)
            .not_valid_after(after)
        )
        for extension in self.cert.extensions:
            builder = builder.add_extension(extension.value, extension.critical)
        return builder.sign(self.key, hashes.SHA256())

    def client_leaf(
        self,
        key: ec.EllipticCurvePrivateKey,
        before: datetime.datetime,
        after: datetime.datetime,
        usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
    ) -> x509.Certificate:
        """A certificate for ``key`` named front-proxy-client, with this validity and extended key usage."""
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "front-proxy-client")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(before)
            .not_valid_after(after)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def _issue(
        self,
        file_stem: str,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file = self.directory / f"{file_stem}.crt"
        key_file = self.directory / f"{file_stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_key_pem(key))
        return Issued(cert, key, cert_file, key_file)

    def client(
        self, common_name: str, organizations: tuple[str, ...] = (), stem: str | None = None
    ) -> Issued:
        """A client certificate; kubeadm-style (no SAN), like the front-proxy client's."""
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        stem = stem or f"client-{common_name.replace(':', '_')}"
        return self._issue(stem, x509.Name(attributes), ExtendedKeyUsageOID.CLIENT_AUTH, None)

    def client_with_subject(self, *common_names: str, stem: str) -> Issued:
        """A client certificate whose subject holds these CN attributes in this order (none, or
        several, as a CA may sign from a CSR)."""
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names])
        return self._issue(stem, subject, ExtendedKeyUsageOID.CLIENT_AUTH, None)

    def client_with_unsorted_rdn(self, stem: str) -> Issued:
        """A client certificate whose subject is one RDN of two CNs, "zzz" then "aaa": not in the
        order DER sorts a SET in. A lax CA signs it as the CSR holds it; OpenSSL and Go take it,
        cryptography cannot parse it. ``cert`` is the sorted one it was made from (the file is not)."""
        sorted_cns = [x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in ("aaa", "zzz")]
        issued = self._issue(
            stem,
            x509.Name([x509.RelativeDistinguishedName(sorted_cns)]),
            ExtendedKeyUsageOID.CLIENT_AUTH,
            None,
        )
        aaa, zzz = (b"\x30\x0a\x06\x03\x55\x04\x03\x0c\x03" + cn for cn in (b"aaa", b"zzz"))
        tbs = issued.cert.tbs_certificate_bytes
        assert tbs.count(aaa + zzz) == 1
        tbs = tbs.replace(aaa + zzz, zzz + aaa)
        algorithm = issued.cert.public_bytes(serialization.Encoding.DER)
        start = _der_value(algorithm, 0)[0]  # into the Certificate SEQUENCE
        tbs_end = _der_value(algorithm, start)[1]
        algorithm = algorithm[tbs_end : _der_value(algorithm, tbs_end)[1]]
        signature = b"\x00" + self.key.sign(tbs, ec.ECDSA(hashes.SHA256()))
        body = tbs + algorithm + b"\x03" + _der_length(len(signature)) + signature
        der = b"\x30" + _der_length(len(body)) + body
        pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
        issued.cert_file.write_bytes(pem)
        return issued

    def server(self, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), stem: str = "serving") -> Issued:
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        return self._issue(stem, subject, ExtendedKeyUsageOID.SERVER_AUTH, sans)


def _der_value(der: bytes, at: int) -> tuple[int, int]:
    """Where the value of the DER element at ``at`` starts and ends."""
    length = der[at + 1]
    if length < 0x80:
        return at + 2, at + 2 + length
    size = length & 0x7F
    start = at + 2 + size
    return start, start + int.from_bytes(der[at + 2 : start], "big")


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def _ca(directory: Path, name: str, issuer: Authority | None) -> Authority:
    """A root CA (``issuer`` None) or one signed by ``issuer``, written to ``<name>-ca.crt``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0 if issuer else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    cert_file = directory / f"{name}-ca.crt"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(cert, key, cert_file, directory)


def in_memory_handshake(client: SSL.Connection, server: SSL.Connection) -> SSL.Error | None:
    """Runs a TLS handshake between two memory-BIO connections: None once both ends are done, or the
    error one end raised."""
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
                except SSL.Error as error:
                    return error
            try:
                other.bio_write(side.bio_read(1 << 16))
            except SSL.WantReadError:
                pass
        if all(done.values()):
            return None
    raise AssertionError("the handshake neither ended nor failed")
