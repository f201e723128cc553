"""What the registry hands out (manifests, catalog pages) and the grammar of its names."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import attrs

from .schema1 import SIGNED_SCHEMA1, signed_payload

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
INDEX_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)

# Distribution's reference grammar. Checking names before they go into a URL path keeps user input
# from ever reaching another endpoint ("..", "?", "%2F").
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
MAX_REPOSITORY_LENGTH = 255
# Manifests and configs are shown in API objects, which are rendered by recursing in Python, about
# three frames per level, under Python's limit of 1000 frames: a registry's document nested deeper
# than this is refused as unusable (real ones nest a few levels), rather than fail halfway.
MAX_JSON_DEPTH = 100


def is_valid_repository(name: str) -> bool:
    return len(name) <= MAX_REPOSITORY_LENGTH and _REPOSITORY_RE.fullmatch(name) is not None


def is_valid_tag(tag: str) -> bool:
    return _TAG_RE.fullmatch(tag) is not None


def is_valid_digest(digest: str) -> bool:
    if _DIGEST_RE.fullmatch(digest) is None:
        return False
    algorithm, _, encoded = digest.partition(":")
    length = _HEX_LENGTHS.get(algorithm)
    return length is None or (len(encoded) == length and re.fullmatch("[a-f0-9]+", encoded) is not None)


def is_digest_reference(reference: str) -> bool:
    return ":" in reference


def digested(content: bytes, media_type: str) -> bytes:
    """The bytes a manifest's digest is computed from: its content, or for a signed schema 1
    manifest the payload its signatures cover (when they say, else its content)."""
    if media_type == SIGNED_SCHEMA1:
        payload = signed_payload(content)
        if payload is not None:
            return payload
    return content


def compute_digest(data: bytes, algorithm: str = "sha256") -> str | None:
    """The digest of data with the given algorithm, or None when this client cannot compute it."""
    if algorithm not in _HEX_LENGTHS:
        return None
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def nested_deeper_than(document: Any, depth: int, text: bytes | None = None) -> bool:
    """Whether a decoded JSON document has objects or arrays nested more than ``depth`` levels.
    ``text``: the bytes it was decoded from; with no more than ``depth`` ``{`` and ``[`` bytes in
    them (each object or array opens with one, in UTF-8, -16 or -32 alike; strings can only add
    more) it cannot, and is not walked."""
    if text is not None and text.count(b"{") + text.count(b"[") <= depth:
        return False
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, level = pending.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if level > depth:
            return True
        pending.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return False


def catalog_key(repository: str) -> tuple[str, ...]:
    """The registry's catalog order: component by component ("team/x/y" < "team/z" < "team-a/b")."""
    return tuple(repository.split("/"))


def skipped_by_seek(name: str) -> list[str]:
    """The repositories distribution 2.8 lists after ``name`` and yet leaves out of its answer to
    ``last=name``: those of which ``name`` is nested under a component that starts with a digit
    (``team/app`` for ``team/app/0`` and ``team/app/0/x``), shallowest first (catalog order). Its
    storage walk lists ``team/app/0…`` before ``team/app`` itself (the directory ``0`` sorts before
    ``_manifests``), while ``last=`` answers the names after it component by component
    (docs/registry.md, "Catalog"). Some may not be repositories at all (a path's directory only):
    their tag list is empty. The namespace (the first component) is never one: it is no repository
    of a namespace."""
    parts = name.split("/")
    if not any(part[:1].isdigit() for part in parts[2:]):
        return []  # most names: no list made
    return ["/".join(parts[:i]) for i in range(2, len(parts)) if parts[i][:1].isdigit()]


def digit_nested(name: str) -> bool:
    """Whether ``name`` is nested under another name by a component that starts with a digit (the
    namespace included: a repository ``team`` is listed after ``team/0``). Only after such a name may
    distribution 2.8 end a full catalog page without a next link while names follow."""
    return any(part[:1].isdigit() for part in name.split("/")[1:])


@attrs.frozen
class CatalogPage:
    """One page of /v2/_catalog. ``more``: the registry sent a next-page link (2.8 sends one only when
    names follow; other registries may end with an empty page). ``n``: the page size the registry
    answered, when smaller than the one asked (a registry whose ``catalog.maxentries`` refuses that);
    None when it is the one asked."""

    repositories: list[str]
    more: bool
    n: int | None = None

    def full(self, asked: int) -> bool:
        """Whether the page holds as many names as it could (asked for ``asked``): a page cut to a
        smaller size the registry takes is full at that size, not short of the one asked."""
        return len(self.repositories) >= (asked if self.n is None else min(asked, self.n))


@attrs.frozen
class Manifest:
    """A manifest exactly as stored (``content``: the bytes to push it again) and ``payload``, the
    bytes its digest is that of, never of a conversion: the same bytes, except for a signed schema 1
    manifest, whose signatures cover only part of it. What is shown of a manifest is its payload:
    anything else in it is not vouched for by the digest."""

    digest: str
    media_type: str
    content: bytes = attrs.field(repr=lambda c: f"<{len(c)} bytes>")
    payload: bytes = attrs.field(
        default=attrs.Factory(lambda self: digested(self.content, self.media_type), takes_self=True),
        repr=False,
    )
    # The payload as its reader decoded it (RegistryClient.manifest, which checks it), so that the
    # detail of a tag does not decode it again; None where nobody has. To be read, never changed
    # (`json` gives a copy of one's own); not compared.
    document: dict[str, Any] | None = attrs.field(default=None, eq=False, repr=False)

    def json(self) -> dict[str, Any]:
        value = json.loads(self.payload)
        if not isinstance(value, dict):
            raise ValueError("manifest is not a JSON object")
        return value

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES


@attrs.frozen
class Resolved:
    """What a tag or digest names: its digest and, when the registry said it, its media type."""

    digest: str
    # The answer's Content-Type; None when the registry sent none or a generic one ("application/json"),
    # which tells nothing: whoever needs to know reads the manifest.
    media_type: str | None = None


def declared_media_type(content_type: str | None) -> str | None:
    """A manifest's type as a Content-Type declares it; None for none or a generic one."""
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared and declared not in ("application/json", "application/octet-stream", "text/plain"):
        return declared
    return None


def infer_media_type(content_type: str | None, document: dict[str, Any]) -> str:
    """The manifest's type from Content-Type, else from the document (OCI allows omitting mediaType)."""
    declared = declared_media_type(content_type)
    if declared is not None:
        return declared
    field = document.get("mediaType")
    if isinstance(field, str) and field:
        return field
    if document.get("schemaVersion") == 1 and "signatures" in document:
        return SIGNED_SCHEMA1
    if "manifests" in document:
        return OCI_INDEX
    return OCI_MANIFEST


__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "MAX_JSON_DEPTH",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "SIGNED_SCHEMA1",
    "CatalogPage",
    "Manifest",
    "Resolved",
    "catalog_key",
    "compute_digest",
    "digested",
    "digit_nested",
    "infer_media_type",
    "is_digest_reference",
    "is_valid_digest",
    "is_valid_repository",
    "is_valid_tag",
    "nested_deeper_than",
    "skipped_by_seek",
]
