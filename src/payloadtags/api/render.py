"""Objects, lists, Tables and PartialObjectMetadata for the negotiated media type."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable, Iterator
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from payloadtags.api.errors import bad_request
from payloadtags.api.negotiation import Form, MediaType
from payloadtags.inventory import Run, Runs
from payloadtags.model import (
    GROUP_VERSION,
    KIND,
    ListMeta,
    PartialObjectMetadata,
    PartialObjectMetadataList,
    PayloadRepositoryTag,
    PayloadRepositoryTagList,
    Table,
    TableColumnDefinition,
    TableRow,
    to_json,
    uid_from,
    uid_hasher,
)
from payloadtags.names import NameEncoder

COLUMNS = [
    TableColumnDefinition(
        name="Name",
        type="string",
        format="name",
        description="Name must be unique within a namespace: the unpadded base32 of <repositoryPath>:<tag>.",
        priority=0,
    ),
    TableColumnDefinition(
        name="Repository",
        type="string",
        format="",
        description="Path to the repository within the namespace.",
        priority=0,
    ),
    TableColumnDefinition(name="Tag", type="string", format="", description="Tag name.", priority=0),
    TableColumnDefinition(
        name="Address",
        type="string",
        format="",
        description="Full address of the tag, usable for pull.",
        priority=1,
    ),
]

INCLUDE_OBJECT = ("Metadata", "Object", "None")


def include_object(value: str | None) -> str:
    if value is None or value == "":
        return "Metadata"
    if value not in INCLUDE_OBJECT:
        raise bad_request(f'includeObject must be one of "Metadata", "Object" or "None", not "{value}"')
    return value


def row(obj: PayloadRepositoryTag, media: MediaType, include: str) -> TableRow:
    embedded: dict[str, Any] | None
    if include == "None":
        embedded = None
    elif include == "Object":
        embedded = to_json(obj)
    else:
        embedded = to_json(PartialObjectMetadata(api_version=media.meta_api_version, metadata=obj.metadata))
    return TableRow(
        cells=[obj.metadata.name, obj.spec.repository_path, obj.spec.tag, obj.spec.address], object=embedded
    )


def render_list(
    items: list[PayloadRepositoryTag], meta: ListMeta, media: MediaType, include: str = "Metadata"
) -> Any:
    if media.form is Form.TABLE:
        rows = [row(obj, media, include) for obj in items]
        return to_json(
            Table(api_version=media.meta_api_version, metadata=meta, column_definitions=COLUMNS, rows=rows)
        )
    if media.form is Form.PARTIAL:
        partial = [
            PartialObjectMetadata(api_version=media.meta_api_version, metadata=o.metadata) for o in items
        ]
        return to_json(
            PartialObjectMetadataList(api_version=media.meta_api_version, metadata=meta, items=partial)
        )
    return to_json(PayloadRepositoryTagList(metadata=meta, items=items))


def render_object(obj: PayloadRepositoryTag, media: MediaType, include: str = "Metadata") -> Any:
    if media.form is Form.TABLE:
        return to_json(
            Table(
                api_version=media.meta_api_version,
                metadata=ListMeta(),
                column_definitions=COLUMNS,
                rows=[row(obj, media, include)],
            )
        )
    if media.form is Form.PARTIAL:
        return to_json(PartialObjectMetadata(api_version=media.meta_api_version, metadata=obj.metadata))
    return to_json(obj)


# -- lists, streamed --------------------------------------------------------------------------------
#
# A list is written a chunk of items at a time, each chunk formatted straight from the tags of a run:
# no objects, no converter, one copy of the text. The result is byte for byte what json.dumps of
# render_list's document gives (tests compare the two); render_list stays for small lists.

CHUNK_ITEMS = 500


def _envelope(meta: ListMeta, media: MediaType) -> tuple[bytes, bytes]:
    """The list's text before its first item and after its last one."""
    if media.form is Form.TABLE:
        document = to_json(
            Table(api_version=media.meta_api_version, metadata=meta, column_definitions=COLUMNS, rows=[])
        )
    elif media.form is Form.PARTIAL:
        document = to_json(
            PartialObjectMetadataList(api_version=media.meta_api_version, metadata=meta, items=[])
        )
    else:
        document = to_json(PayloadRepositoryTagList(metadata=meta, items=[]))
    text = json.dumps(document, separators=(",", ":"))
    assert text.endswith("[]}"), text  # the items (rows) are the document's last field
    return text[:-2].encode(), b"]}\n"


def _items(run: Run, registry_host: str, media: MediaType, include: str) -> Iterator[str]:
    namespace, path = run.namespace, run.repository_path
    name_of = NameEncoder(path)
    hasher = uid_hasher(namespace, path)
    ns_json, path_json = _quote(namespace), _quote(path)
    address_head = _quote(f"{registry_host}/{namespace}/{path}:")[:-1]
    meta_head = f'{{"apiVersion":{_quote(media.meta_api_version)},"kind":"PartialObjectMetadata","metadata":'
    object_head = f'{{"apiVersion":{_quote(GROUP_VERSION)},"kind":{_quote(KIND)},"metadata":'
    form = media.form
    tags = run.tags
    names: list[str] = []
    for index, tag in enumerate(tags):
        if index % CHUNK_ITEMS == 0:
            # Names a chunk at a time: one base32 call for many tags, memory bounded by the chunk.
            names = name_of.many(tags[index : index + CHUNK_ITEMS])
        name = names[index % CHUNK_ITEMS]
        tag_json = _quote(tag)
        metadata = f'{{"name":"{name}","namespace":{ns_json},"uid":"{uid_from(hasher, tag)}"}}'
        address = address_head + tag_json[1:]
        if form is Form.FULL or (form is Form.TABLE and include == "Object"):
            full = (
                f'{object_head}{metadata},"spec":{{"repositoryPath":{path_json},"tag":{tag_json},'
                f'"address":{address}}}}}'
            )
            if form is Form.FULL:
                yield full
                continue
            embedded = full
        elif form is Form.PARTIAL:
            yield f"{meta_head}{metadata}}}"
            continue
        else:
            embedded = f"{meta_head}{metadata}}}" if include == "Metadata" else ""
        cells = f'["{name}",{path_json},{tag_json},{address}]'
        yield f'{{"cells":{cells},"object":{embedded}}}' if embedded else f'{{"cells":{cells}}}'


class ListText:
    """A list document made a run at a time: ``add`` gives the chunks each run completes, ``end`` the
    rest. Their concatenation is the document, however the runs arrive."""

    def __init__(
        self,
        meta: ListMeta,
        media: MediaType,
        registry_host: str,
        include: str = "Metadata",
        chunk_items: int = CHUNK_ITEMS,
    ) -> None:
        self._head, self._tail = _envelope(meta, media)
        self._media, self._host, self._include, self._chunk_items = media, registry_host, include, chunk_items
        self._pending: list[str] = []
        self._first = True

    def add(self, run: Run) -> Iterator[bytes]:
        """Formats ``run`` lazily, a chunk of about ``chunk_items`` items per step."""
        for item in _items(run, self._host, self._media, self._include):
            self._pending.append(item)
            if len(self._pending) >= self._chunk_items:
                yield self._take()

    def end(self) -> bytes:
        if self._first:
            return self._take() + self._tail
        return (self._take() if self._pending else b"") + self._tail

    def _take(self) -> bytes:
        text = ",".join(self._pending).encode()
        self._pending = []
        if self._first:
            self._first = False
            return self._head + text
        return b"," + text


def list_text(
    runs: Iterable[Run], meta: ListMeta, media: MediaType, registry_host: str, include: str = "Metadata"
) -> bytes:
    """The whole list document at once, as `list_chunks` gives it in pieces: for a short list (a
    page), with no chunk bookkeeping per item and one copy of the text fewer."""
    head, tail = _envelope(meta, media)
    items = ",".join([item for run in runs for item in _items(run, registry_host, media, include)])
    return b"".join((head, items.encode(), tail))


def list_chunks(
    runs: Iterable[Run],
    meta: ListMeta,
    media: MediaType,
    registry_host: str,
    include: str = "Metadata",
    chunk_items: int = CHUNK_ITEMS,
) -> Iterator[bytes]:
    """The list document in pieces of about ``chunk_items`` items, ending with a newline."""
    text = ListText(meta, media, registry_host, include, chunk_items)
    for run in runs:
        yield from text.add(run)
    yield text.end()


async def streamed_list_chunks(
    runs: Runs,
    meta: ListMeta,
    media: MediaType,
    registry_host: str,
    include: str = "Metadata",
    chunk_items: int = CHUNK_ITEMS,
) -> AsyncGenerator[bytes, None]:
    """As `list_chunks`, formatting each run as it arrives; the runs are stopped when this stops
    early (the client went away, the deadline passed)."""
    text = ListText(meta, media, registry_host, include, chunk_items)
    try:
        while (run := await runs.next()) is not None:
            for chunk in text.add(run):
                yield chunk
        yield text.end()
    finally:
        runs.stop()
