"""Which TLS 1.2 cipher suites the server negotiates, with and without --tls-cipher-suites (r1tls F2)."""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from payloadtags.tls import (
    CIPHER_SUITES,
    DEFAULT_TLS12_SUITES,
    ServingCertificate,
    TlsOptions,
    server_context,
)
from tests.support.pki import in_memory_handshake

# OpenSSL's names of the TLS 1.3 suites, which get_cipher_list lists too and no option here changes.
TLS13 = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


@pytest.fixture(scope="module")
def serving() -> ServingCertificate:
    return ServingCertificate.self_signed()  # an EC key: the ECDSA suites


def _handshake(server_context: SSL.Context, version: int, ciphers: str) -> str | None:
    """The suite a client offering only ``ciphers`` at TLS ``version`` gets, or None when the
    handshake is refused. In memory: nothing listens."""
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.set_min_proto_version(version)
    client_context.set_max_proto_version(version)
    if version == SSL.TLS1_2_VERSION:
        client_context.set_cipher_list(ciphers.encode())
    client, server = SSL.Connection(client_context, None), SSL.Connection(server_context, None)
    if in_memory_handshake(client, server) is not None:
        return None
    return client.get_cipher_name()


def test_without_the_flag_tls12_offers_the_secure_ecdhe_suites_only(serving: ServingCertificate) -> None:
    offered = set(SSL.Connection(server_context(serving, ()), None).get_cipher_list()) - TLS13
    assert offered == {CIPHER_SUITES[s] for s in DEFAULT_TLS12_SUITES}
    # Every one of them is a name the flag accepts, and none is CBC or an RSA key exchange.
    assert set(DEFAULT_TLS12_SUITES) <= set(CIPHER_SUITES)
    assert all(s.startswith("TLS_ECDHE_") and "_CBC_" not in s for s in DEFAULT_TLS12_SUITES)


@pytest.mark.parametrize(
    "ciphers",
    # Go's InsecureCipherSuites (Lucky13), a suite Go does not implement, and a CBC-SHA one: OpenSSL's
    # default takes each of them.
    ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA"],
)
def test_without_the_flag_a_cbc_suite_is_refused(serving: ServingCertificate, ciphers: str) -> None:
    context = server_context(serving, ())
    assert _handshake(context, SSL.TLS1_2_VERSION, ciphers) is None
    assert _handshake(context, SSL.TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256") == (
        "ECDHE-ECDSA-AES128-GCM-SHA256"
    )


def test_the_flag_s_suites_are_the_ones_offered(serving: ServingCertificate) -> None:
    options = TlsOptions(cipher_suites=("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",))
    context = server_context(serving, (), options)
    assert _handshake(context, SSL.TLS1_2_VERSION, "ECDHE-ECDSA-AES128-SHA") == "ECDHE-ECDSA-AES128-SHA"
    assert _handshake(context, SSL.TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256") is None


def test_a_flag_of_tls13_suites_only_leaves_tls12_with_none(serving: ServingCertificate) -> None:
    # As Go: the flag sets the TLS 1.2 list, and TLS 1.3 names are not TLS 1.2 suites.
    context = server_context(serving, (), TlsOptions(cipher_suites=("TLS_AES_128_GCM_SHA256",)))
    for ciphers in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-SHA", "ALL"):
        assert _handshake(context, SSL.TLS1_2_VERSION, ciphers) is None
    assert _handshake(context, SSL.TLS1_3_VERSION, "") in TLS13
