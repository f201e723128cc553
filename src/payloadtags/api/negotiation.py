"""Accept-header negotiation between full objects, Tables and PartialObjectMetadata, in JSON or YAML."""

from __future__ import annotations

import enum
import functools
import math

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
    # The document is the same in every syntax; only its text differs (api/formats.py).
    yaml: bool = False
    # `pretty=1` on the chosen Accept entry; the caller also reads the query's `pretty`.
    pretty: bool = False

    @property
    def meta_api_version(self) -> str:
        return f"meta.k8s.io/{self.meta_version}"

    def as_json(self) -> MediaType:
        """The same document as compact JSON: what the renderers make (and lists share), whatever the
        text sent (api/formats.py)."""
        if not (self.yaml or self.pretty):
            return self
        return MediaType(self.form, self.content_type.replace(YAML_TYPE, JSON_TYPE, 1), self.meta_version)


JSON_TYPE = "application/json"
YAML_TYPE = "application/yaml"
_FULL = MediaType(Form.FULL, JSON_TYPE)
_VERSIONS = ("v1", "v1beta1")
# The syntaxes served, in kube-apiserver's order: a wildcard entry takes the first one that fits.
_SUBTYPES = ("json", "yaml")


@attrs.frozen
class _Clause:
    type: str
    subtype: str
    params: dict[str, str]
    quality: float


def _clause(entry: str) -> _Clause | None:
    """One Accept entry as goautoneg reads it (a bare ``*`` is ``*/*``; no ``/``, or more than one, is
    no media range; a ``q`` that is no number is 0), or None when it is none."""
    main, *params = entry.split(";")
    main = main.strip().lower()
    if main == "*":
        type_, subtype = "*", "*"
    else:
        type_, slash, subtype = main.partition("/")
        if not slash or "/" in subtype:
            return None
        type_, subtype = type_.strip(), subtype.strip()
    parsed: dict[str, str] = {}
    quality = 1.0
    for param in params:
        key, equals, value = param.partition("=")
        if not equals:
            continue
        key, value = key.strip().lower(), value.strip().strip('"')
        if key != "q":
            parsed[key] = value
            continue
        try:
            quality = float(value)
        except ValueError:
            quality = 0.0
        if not math.isfinite(quality):
            quality = 0.0
    return _Clause(type_, subtype, parsed, quality)


def _ordered(accept: str) -> list[_Clause]:
    """Accept's entries by preference, as goautoneg sorts them: higher ``q`` first, then a concrete
    type before a wildcard one; otherwise in the order given (stable)."""
    clauses = [clause for entry in accept.split(",") if (clause := _clause(entry)) is not None]
    clauses.sort(key=lambda c: (-c.quality, c.type == "*", c.subtype == "*"))
    return clauses


def _specificity(clause: _Clause, subtype: str) -> int:
    """How closely ``clause`` names ``application/<subtype>``: 2 exactly, 1 as ``application/*``, 0
    as ``*/*``, -1 not at all."""
    if clause.type == "application":
        return 2 if clause.subtype == subtype else 1 if clause.subtype == "*" else -1
    return 0 if (clause.type, clause.subtype) == ("*", "*") else -1


def _refused(clauses: list[_Clause], subtype: str) -> bool:
    """Whether the entry that names ``application/<subtype>`` most closely has ``q=0`` (RFC 9110: not
    acceptable), as kube-apiserver decides it: ``application/json;q=0, */*`` refuses JSON, and the
    ``*/*`` still admits the others. On a tie the first (highest ``q``) entry decides."""
    best, refused = -1, False
    for clause in clauses:
        specificity = _specificity(clause, subtype)
        if specificity > best:
            best, refused = specificity, clause.quality <= 0
    return refused


def _served(clause: _Clause, subtype: str, *, collection: bool, watch: bool) -> MediaType | None:
    """What ``clause`` asks for in ``application/<subtype>``, or None when it is nothing served."""
    if watch and subtype != "json":
        return None  # a watch streams JSON events only: kube-apiserver has no YAML stream either
    base = f"application/{subtype}"
    params = clause.params
    # A watch's events are compact: kube-apiserver's stream serializer has no pretty form either.
    yaml, pretty = subtype == "yaml", params.get("pretty") == "1" and not watch
    kind = params.get("as")
    if kind is None:
        return MediaType(Form.FULL, base, yaml=yaml, pretty=pretty)
    group, version = params.get("g"), params.get("v")
    if group != "meta.k8s.io" or version not in _VERSIONS:
        return None
    if kind == "Table":
        return MediaType(Form.TABLE, f"{base};as=Table;v={version};g=meta.k8s.io", version, yaml, pretty)
    if kind in _partial_kinds(collection=collection, watch=watch):
        return MediaType(Form.PARTIAL, f"{base};as={kind};v={version};g=meta.k8s.io", version, yaml, pretty)
    return None


def _partial_kinds(*, collection: bool, watch: bool) -> tuple[str, ...]:
    if watch:
        return ("PartialObjectMetadata", "PartialObjectMetadataList")
    return ("PartialObjectMetadataList",) if collection else ("PartialObjectMetadata",)


def _watch_forms() -> list[str]:
    """Every form a watch is served in by ``as=`` (`_served`), for its 406: kube-apiserver lists all
    its streaming media types."""
    kinds = ("Table", *_partial_kinds(collection=True, watch=True))
    return [f"application/json;as={kind};v={v};g=meta.k8s.io" for kind in kinds for v in _VERSIONS]


@functools.lru_cache(maxsize=256)
def _negotiated(accept: str, collection: bool, watch: bool) -> MediaType | None:
    # Cached: clients send the same few Accept values (kubectl's, client-go's) on every request.
    clauses = _ordered(accept)
    subtypes = [subtype for subtype in _SUBTYPES if not _refused(clauses, subtype)]
    for clause in clauses:
        if clause.quality <= 0:
            continue
        for subtype in subtypes:
            if _specificity(clause, subtype) < 0:
                continue
            served = _served(clause, subtype, collection=collection, watch=watch)
            if served is not None:
                return served
    return None


def negotiate(accept: str | None, *, collection: bool, watch: bool = False) -> MediaType:
    """The most preferred entry of Accept that this server can produce, as kube-apiserver picks it.

    A watch's events are single objects: it takes either PartialObjectMetadata kind (client-go's
    metadata client watches with ``as=PartialObjectMetadata``, lists with ``...List``) and sends
    PartialObjectMetadata events for both (docs/api.md, "Content negotiation")."""
    if not accept or not accept.strip():
        return _FULL
    served = _negotiated(accept, collection, watch)
    if served is None:
        forms = _watch_forms() if watch else None
        raise not_acceptable(accept, collection=collection, watch=watch, forms=forms)
    return served
