"""The Kubernetes JSON shapes this server speaks, as attrs classes, and their one converter.

Field names are snake_case here and camelCase on the wire; a field whose value is None is omitted.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from payloadtags.jsontypes import JsonObject
from payloadtags.names import TagRef

GROUP = "payload-registry.deckhouse.io"
VERSION = "v1alpha1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
KIND = "PayloadRepositoryTag"
LIST_KIND = "PayloadRepositoryTagList"
RESOURCE = "payloadrepositorytags"
SINGULAR = "payloadrepositorytag"
SHORT_NAMES = ("prt",)
QUALIFIED_RESOURCE = f"{RESOURCE}.{GROUP}"
VERBS = ("delete", "deletecollection", "get", "list", "watch")

# A fixed namespace for name-based UUIDs, so a tag keeps its uid across restarts and replicas.
_UID_NAMESPACE = uuid.UUID("6f1f7e2c-5d0b-4c55-9a43-2b1f8d4f0a17")


@attrs.define(kw_only=True)
class ObjectMeta:
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    creation_timestamp: str | None = None


@attrs.define(kw_only=True)
class ListMeta:
    resource_version: str | None = None
    continue_: str | None = None
    remaining_item_count: int | None = None


@attrs.define(kw_only=True)
class TagSpec:
    repository_path: str
    tag: str
    address: str


@attrs.define(kw_only=True)
class TagStatus:
    digest: str
    media_type: str | None = None
    artifact_type: str | None = None
    manifest: JsonObject | None = None
    config: JsonObject | None = None


@attrs.define(kw_only=True)
class PayloadRepositoryTag:
    api_version: str = GROUP_VERSION
    kind: str = KIND
    metadata: ObjectMeta
    spec: TagSpec
    status: TagStatus | None = None


@attrs.define(kw_only=True)
class PayloadRepositoryTagList:
    api_version: str = GROUP_VERSION
    kind: str = LIST_KIND
    metadata: ListMeta
    items: list[PayloadRepositoryTag]


@attrs.define(kw_only=True)
class PartialObjectMetadata:
    api_version: str = "meta.k8s.io/v1"
    kind: str = "PartialObjectMetadata"
    metadata: ObjectMeta


@attrs.define(kw_only=True)
class PartialObjectMetadataList:
    api_version: str = "meta.k8s.io/v1"
    kind: str = "PartialObjectMetadataList"
    metadata: ListMeta
    items: list[PartialObjectMetadata]


@attrs.define(kw_only=True)
class StatusDetails:
    kind: str | None = None
    name: str | None = None
    group: str | None = None
    uid: str | None = None
    causes: list[JsonObject] | None = None
    retry_after_seconds: int | None = None


@attrs.define(kw_only=True)
class Status:
    api_version: str = "v1"
    kind: str = "Status"
    status: str
    code: int
    message: str | None = None
    reason: str | None = None
    details: StatusDetails | None = None
    metadata: JsonObject = attrs.Factory(dict)


@attrs.define(kw_only=True)
class TableColumnDefinition:
    name: str
    type: str
    format: str
    description: str
    priority: int


@attrs.define(kw_only=True)
class TableRow:
    cells: list[Any]
    object: JsonObject | None = None


@attrs.define(kw_only=True)
class Table:
    api_version: str = "meta.k8s.io/v1"
    kind: str = "Table"
    metadata: ListMeta
    column_definitions: list[TableColumnDefinition]
    rows: list[TableRow]


def json_name(name: str) -> str:
    """A field's name in JSON: lowerCamelCase, without the trailing _ that avoids a Python keyword."""
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(part.title() for part in rest)


# A field typed as decoded JSON (every `JsonObject` field: a tag's manifest and image config, a Status's
# metadata, a Table row's object; dicts, lists, strings, numbers, booleans and None
# only, never an attrs object) is put in the document as it is: the converter would copy it node by node
# (a dispatch on each value's class), the same JSON in the end, at some 40 calls for a small image's
# manifest and config.
# The documents are encoded and dropped, never changed, and no decoded value is in one twice, so the
# YAML the copy gave (no anchors) is the same too.
_DECODED = (JsonObject, JsonObject | None)


def _as_is(value: Any) -> Any:
    return value


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter()

    def factory(cls: type) -> Any:
        # Typed loosely: cattrs declares these overrides as **kwargs beside its own keyword options.
        overrides: dict[str, Any] = {
            field.name: override(
                rename=json_name(field.name),
                omit_if_default=field.default is None,
                unstruct_hook=_as_is if field.type in _DECODED else None,
            )
            for field in attrs.fields(attrs.resolve_types(cls))
        }
        return make_dict_unstructure_fn(cls, converter, **overrides)

    converter.register_unstructure_hook_factory(attrs.has, factory)
    return converter


converter = _make_converter()


def to_json(value: Any) -> Any:
    return converter.unstructure(value)


# uuid5 keeps the two high bits of byte 8 as the variant (0b10): the hex digit at 16 becomes 8-b.
_VARIANT_DIGIT = {f"{d:x}": f"{(d & 0x3) | 0x8:x}" for d in range(16)}


# Many uids at once (uids_of): each tag's SHA-1 from C-level maps, then the text of all of them from
# one hex with a "-" after every 2 bytes. A uuid is a digest's first 16 bytes: the last 4 of each
# digest are deleted first (four strided deletions of the joined digests), and each uuid is 40
# characters of the hex (8 groups of 4 hex digits and their dashes); it spells them 8-4-4-4-12, so
# the dashes after groups 1, 6 and 7 go, and the dash after group 8 becomes the separator between
# uids.
def _uid_hash() -> Callable[[bytes], Any]:
    try:
        # A keyword argument through functools.partial doubles a small hash's cost: without it
        # wherever the default works (everywhere but OpenSSL in FIPS mode, which refuses SHA-1
        # unless told it is not for security).
        hashlib.sha1(b"")
    except ValueError:
        return functools.partial(hashlib.sha1, usedforsecurity=False)
    return hashlib.sha1


_sha1 = _uid_hash()
_digest = type(_sha1(b"")).digest
_VERSION_BYTE = bytes((b & 0x0F) | 0x50 for b in range(256))  # version 5
_VARIANT_BYTE = bytes((b & 0x3F) | 0x80 for b in range(256))  # RFC 4122 variant
_GONE = (4, 29, 34)  # offsets in a uuid's 40 characters of the hex that its spelling drops
_SEPARATOR = 39
_FEW = 8  # fewer uids are spelled one by one: the fixed cost of the slices is more than theirs


def uid_prefix(namespace: str, repository_path: str) -> bytes:
    """What every uid's name in a repository starts with, hashed before the tag (for uids_of)."""
    return _UID_NAMESPACE.bytes + f"{namespace}/{repository_path}:".encode()


def _uid(prefix: bytes, tag: str) -> str:
    """The uuid5 of ``<namespace>/<repositoryPath>:<tag>`` in the fixed uid namespace, spelled as
    ``str(uuid.uuid5(...))`` spells it, from ``uid_prefix(namespace, repositoryPath)``."""
    x = _sha1(prefix + tag.encode()).hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT_DIGIT[x[16]]}{x[17:20]}-{x[20:32]}"


def _names(prefix: bytes, tags: Sequence[str]) -> list[bytes]:
    """``prefix + tag.encode()`` of each of ``tags``: the bytes each uid hashes.

    Made from one text, the prefix put before each tag with one replace of the NULs between the tags,
    and split at those NULs: a bytes object per tag, where encoding each tag and adding it to the
    prefix makes two. A prefix or a tag with a NUL of its own (never a name of the registry's grammar)
    takes the plain way."""
    text = "\0".join(tags).encode()
    if b"\0" in prefix or text.count(b"\0") != len(tags) - 1:
        return list(map(prefix.__add__, map(str.encode, tags)))
    return (prefix + text.replace(b"\0", b"\0" + prefix)).split(b"\0")


def uids_of(prefix: bytes, tags: Sequence[str]) -> list[str]:
    """``_uid`` of each of ``tags``, from ``uid_prefix(namespace, repositoryPath)``, at once."""
    count = len(tags)
    if count < _FEW:
        return [_uid(prefix, tag) for tag in tags]
    digests = bytearray(b"".join(map(_digest, map(_sha1, _names(prefix, tags)))))
    for kept in (19, 18, 17, 16):  # each digest's last byte, of 20 bytes, then of 19, 18 and 17
        del digests[kept :: kept + 1]
    digests[6::16] = digests[6::16].translate(_VERSION_BYTE)
    digests[8::16] = digests[8::16].translate(_VARIANT_BYTE)
    text = bytearray(digests.hex("-", 2), "ascii")
    size = len(text)  # 40 per uuid but the last one's final dash
    for offset in _GONE:
        text[offset::40] = b"@" * len(range(offset, size, 40))
    text[_SEPARATOR::40] = b"," * (count - 1)
    return text.translate(None, b"@").decode("ascii").split(",")


def uid_for(ref: TagRef) -> str:
    # Stable across restarts and replicas: a name-based uuid5, computed without building UUID objects.
    return _uid(uid_prefix(ref.namespace, ref.repository_path), ref.tag)


def address_for(registry_host: str, ref: TagRef) -> str:
    return f"{registry_host}/{ref.namespace}/{ref.repository_path}:{ref.tag}"


def object_meta(ref: TagRef) -> ObjectMeta:
    return ObjectMeta(name=ref.name, namespace=ref.namespace, uid=uid_for(ref))


def tag_object(registry_host: str, ref: TagRef, status: TagStatus | None = None) -> PayloadRepositoryTag:
    spec = TagSpec(repository_path=ref.repository_path, tag=ref.tag, address=address_for(registry_host, ref))
    return PayloadRepositoryTag(metadata=object_meta(ref), spec=spec, status=status)
