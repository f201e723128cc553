"""Accept-header negotiation between full objects, Tables and PartialObjectMetadata."""

from __future__ import annotations

import enum

import attrs

from payloadtags.api.errors import not_acceptable


class Form(enum.Enum):
    FULL = "full"
    TABLE = "table"
    PARTIAL = "partial"


@attrs.frozen
class MediaType:
    form: Form
    content_type: str
    meta_version: str = "v1"

    @property
    def meta_api_version(self) -> str:
        return f"meta.k8s.io/{self.meta_version}"


JSON_TYPE = "application/json"
_FULL = MediaType(Form.FULL, JSON_TYPE)


def _parse(entry: str) -> tuple[str, dict[str, str]]:
    main, *params = (part.strip() for part in entry.split(";"))
    parsed: dict[str, str] = {}
    for param in params:
        key, _, value = param.partition("=")
        parsed[key.strip().lower()] = value.strip().strip('"')
    return main.lower(), parsed


def negotiate(accept: str | None, *, collection: bool, watch: bool = False) -> MediaType:
    """Pick the first entry of Accept that this server can produce, as kube-apiserver does.

    A watch's events are single objects: it takes either PartialObjectMetadata kind (client-go's
    metadata client watches with ``as=PartialObjectMetadata``, lists with ``...List``) and sends
    PartialObjectMetadata events for both (docs/api.md, "Content negotiation")."""
    if not accept or not accept.strip():
        return _FULL
    for entry in accept.split(","):
        if not entry.strip():
            continue
        main, params = _parse(entry)
        if main not in (JSON_TYPE, "application/*", "*/*"):
            continue
        kind = params.get("as")
        if kind is None:
            return _FULL
        group, version = params.get("g"), params.get("v")
        if group != "meta.k8s.io":
            continue
        if kind == "Table" and version in ("v1", "v1beta1"):
            return MediaType(Form.TABLE, f"application/json;as=Table;v={version};g=meta.k8s.io", version)
        if watch:
            wanted: tuple[str, ...] = ("PartialObjectMetadata", "PartialObjectMetadataList")
        else:
            wanted = ("PartialObjectMetadataList",) if collection else ("PartialObjectMetadata",)
        if kind in wanted and version in ("v1", "v1beta1"):
            return MediaType(Form.PARTIAL, f"application/json;as={kind};v={version};g=meta.k8s.io", version)
    raise not_acceptable(accept)
