"""Docker image manifests of schema 1, signed (``application/vnd.docker.distribution.manifest.v1+prettyjws``).

Such a manifest is a JSON document with a ``signatures`` member added to it: a JWS in libtrust's
"pretty" form. Its digest, as the registry names it (``Docker-Content-Digest``, the tag's link), is
the digest of the signed payload, the document without ``signatures``: each signature's protected
header says how to rebuild it, ``formatLength`` bytes of the document followed by the base64url
``formatTail``. distribution 2.8 serves such manifests with signatures of its own, made anew for each
answer, so the bytes differ from read to read and the payload stays.

A copy of one under the same tag (to delete just that tag, docs/registry.md "Deleting one tag") is
a new payload, which distribution takes only signed: `sign` signs it as libtrust does, ES256 with a
key made for the occasion and named in the signature (the registry checks the signature against
that key; it trusts no particular key).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from payloadtags.validators import unpadded_urlsafe_b64decode

SIGNED_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
_INDENT = 3  # libtrust's pretty form, as docker and distribution write it


def signed_payload(content: bytes) -> bytes | None:
    """The payload a signed schema 1 manifest's signatures cover; None when ``content`` is not one
    (no signatures, a malformed protected header, or signatures that disagree on the payload)."""
    try:
        document = json.loads(content)
        signatures = document["signatures"]
        if not isinstance(signatures, list) or not signatures:
            return None
        payloads = {_payload(content, signature["protected"]) for signature in signatures}
    except (ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError):
        return None
    if len(payloads) != 1:
        return None
    return payloads.pop()


def _payload(content: bytes, protected: Any) -> bytes:
    header = json.loads(_unb64(protected))
    length, tail = header["formatLength"], header["formatTail"]
    if type(length) is not int or not 0 < length <= len(content):
        raise ValueError("formatLength out of range")
    return content[:length] + _unb64(tail)


def sign(payload: dict[str, Any]) -> tuple[bytes, bytes]:
    """(the signed manifest, its payload) for a schema 1 manifest document."""
    content = json.dumps(payload, indent=_INDENT).encode()
    # As libtrust: the signed part ends at the last member, the tail is the closing brace before it.
    length = len(content[: content.rindex(b"}")].rstrip())
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_numbers()
    protected = _b64(
        json.dumps(
            {
                "formatLength": length,
                "formatTail": _b64(content[length:]),
                "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ).encode()
    )
    r, s = decode_dss_signature(key.sign(f"{protected}.{_b64(content)}".encode(), ec.ECDSA(hashes.SHA256())))
    jwk = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64(public.x.to_bytes(32, "big")),
        "y": _b64(public.y.to_bytes(32, "big")),
    }
    signature = {
        "header": {"jwk": jwk, "alg": "ES256"},
        "signature": _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big")),
        "protected": protected,
    }
    signatures = json.dumps([signature], indent=_INDENT).replace("\n", "\n" + " " * _INDENT).encode()
    indent = b" " * _INDENT
    return content[:length] + b",\n" + indent + b'"signatures": ' + signatures + b"\n}", content


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("not base64url text")
    try:
        return unpadded_urlsafe_b64decode(text)
    except binascii.Error as error:
        raise ValueError(str(error)) from None


__all__ = ["SIGNED_SCHEMA1", "sign", "signed_payload"]
