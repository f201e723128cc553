"""Signed Docker schema 1 manifests: the payload their signatures cover, and signing a copy."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from payloadtags.registry.content import digested, infer_media_type
from payloadtags.registry.schema1 import SIGNED_SCHEMA1, sign, signed_payload

DOCUMENT = {"schemaVersion": 1, "name": "a/b", "tag": "v1", "fsLayers": [], "history": []}


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_signed_copy_carries_its_payload_and_a_valid_es256_signature() -> None:
    body, payload = sign(DOCUMENT)
    assert json.loads(payload) == DOCUMENT
    assert signed_payload(body) == payload
    assert digested(body, SIGNED_SCHEMA1) == payload
    [signature] = json.loads(body)["signatures"]
    jwk = signature["header"]["jwk"]
    key = ec.EllipticCurvePublicNumbers(
        int.from_bytes(unb64(jwk["x"]), "big"), int.from_bytes(unb64(jwk["y"]), "big"), ec.SECP256R1()
    ).public_key()
    raw = unb64(signature["signature"])
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key.verify(der, f"{signature['protected']}.{b64(payload)}".encode(), ec.ECDSA(hashes.SHA256()))


def with_signatures(signatures: object) -> bytes:
    return json.dumps({**DOCUMENT, "signatures": signatures}).encode()


def protected(**header: object) -> str:
    return b64(json.dumps(header).encode())


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        json.dumps(DOCUMENT).encode(),  # no signatures
        with_signatures([]),
        with_signatures("x"),
        with_signatures([{"protected": "!!!"}]),
        with_signatures([{"protected": b64(b"[]")}]),
        with_signatures([{"protected": protected(formatLength=10**6, formatTail="fQ")}]),
        with_signatures([{"protected": protected(formatLength="10", formatTail="fQ")}]),
        with_signatures(
            [
                {"protected": protected(formatLength=10, formatTail="fQ")},
                {"protected": protected(formatLength=11, formatTail="fQ")},
            ]
        ),
    ],
)
def test_what_is_no_signed_manifest_has_no_payload(content: bytes) -> None:
    assert signed_payload(content) is None
    assert digested(content, SIGNED_SCHEMA1) == content


def test_a_signed_manifest_served_as_plain_json_is_known_by_its_document() -> None:
    body, _ = sign(DOCUMENT)
    assert infer_media_type("application/json", json.loads(body)) == SIGNED_SCHEMA1
