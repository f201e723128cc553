"""Objects, lists, Tables and PartialObjectMetadata for the negotiated media type."""

from __future__ import annotations

from typing import Any

from payloadtags.api.errors import bad_request
from payloadtags.api.negotiation import Form, MediaType
from payloadtags.model import (
    ListMeta,
    PartialObjectMetadata,
    PartialObjectMetadataList,
    PayloadRepositoryTag,
    PayloadRepositoryTagList,
    Table,
    TableColumnDefinition,
    TableRow,
    to_json,
)

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


def _row(obj: PayloadRepositoryTag, media: MediaType, include: str) -> TableRow:
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
        rows = [_row(obj, media, include) for obj in items]
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
                rows=[_row(obj, media, include)],
            )
        )
    if media.form is Form.PARTIAL:
        return to_json(PartialObjectMetadata(api_version=media.meta_api_version, metadata=obj.metadata))
    return to_json(obj)
