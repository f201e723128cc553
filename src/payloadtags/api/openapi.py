"""OpenAPI v2 (Swagger 2.0) and v3 (OpenAPI 3.0) documents for ``kubectl explain`` and the aggregator.

The documents are static: they are built once, at import, from one neutral description of the
schemas and operations, then rendered for each OpenAPI version. Each document is served with its
content hash as ETag; the v3 root points kubectl at the group-version document by that same hash
(``?hash=``), so a client can cache a given hash forever.

Schema names follow the Kubernetes convention: the group reversed (``io.deckhouse.payload-registry``)
for our kinds, ``io.k8s.apimachinery.pkg.apis.meta.v1`` for the meta types. The meta types here are
the subset this server reads or writes, described as this server uses them.
"""

from __future__ import annotations

import hashlib
import types
import typing
from typing import Any

import attrs

from payloadtags import __version__, model
from payloadtags.api.discovery import etag
from payloadtags.api.errors import ApiError
from payloadtags.api.openapi_proto import CONTENT_TYPE as PROTOBUF_CONTENT_TYPE
from payloadtags.api.openapi_proto import MEDIA_TYPES as PROTOBUF_MEDIA_TYPES
from payloadtags.api.openapi_proto import encode_document
from payloadtags.jsontypes import JsonObject
from payloadtags.model import GROUP, GROUP_VERSION, KIND, LIST_KIND, RESOURCE, VERSION

BASE = f"/apis/{GROUP_VERSION}"
V2_PATH = "/openapi/v2"
V3_PATH = "/openapi/v3"
V3_GROUP_VERSION_KEY = f"apis/{GROUP_VERSION}"
V3_GROUP_VERSION_PATH = f"{V3_PATH}/{V3_GROUP_VERSION_KEY}"

# "payload-registry.deckhouse.io" → "io.deckhouse.payload-registry", as kube-apiserver names CRD models.
OURS = ".".join(reversed(GROUP.split("."))) + f".{VERSION}"
META = "io.k8s.apimachinery.pkg.apis.meta.v1"

TAG = f"{OURS}.{KIND}"
TAG_LIST = f"{OURS}.{LIST_KIND}"
TAG_SPEC = f"{OURS}.{KIND}Spec"
TAG_STATUS = f"{OURS}.{KIND}Status"
OBJECT_META = f"{META}.ObjectMeta"
LIST_META = f"{META}.ListMeta"
STATUS = f"{META}.Status"
STATUS_DETAILS = f"{META}.StatusDetails"
STATUS_CAUSE = f"{META}.StatusCause"
DELETE_OPTIONS = f"{META}.DeleteOptions"
PRECONDITIONS = f"{META}.Preconditions"

GVK = {"group": GROUP, "version": VERSION, "kind": KIND}
LIST_GVK = {"group": GROUP, "version": VERSION, "kind": LIST_KIND}

# Media types a client may name when it wants these documents as JSON; /openapi/v2 is also offered as
# protobuf (openapi_proto), as kube-apiserver does.
_JSON_MEDIA = ("application/json", "application/*", "*/*")

# Schemas are written once with v3 references; v2 rewrites them (see _to_v2).
_V3_REF = "#/components/schemas/"
_V2_REF = "#/definitions/"


def _ref(name: str) -> JsonObject:
    return {"$ref": _V3_REF + name}


def _field(name: str, description: str) -> JsonObject:
    """A property whose type is another schema, with its own description.

    In OpenAPI 3.0 a ``$ref`` ignores its siblings, so the reference is wrapped in ``allOf`` (as
    kube-apiserver does); v2 puts the description next to the ``$ref``.
    """
    return {"allOf": [_ref(name)], "description": description}


def _string(description: str, **more: Any) -> JsonObject:
    return {"type": "string", "description": description, **more}


def _free_form(description: str) -> JsonObject:
    return {"type": "object", "description": description, "x-kubernetes-preserve-unknown-fields": True}


# --- schemas ---------------------------------------------------------------------------------------

_API_VERSION = (
    "The version of the schema this object follows, so a client knows how to read it. "
    f"For these objects it is always {GROUP_VERSION}."
)


class SchemaDrift(Exception):
    """The descriptions below and the attrs model disagree: a field without a description, or a
    description of a field the model does not have."""


@attrs.frozen
class _Replace:
    """A property schema that is not derived from the field's type (the model keeps a plain JSON
    object where the API documents a structure)."""

    schema: JsonObject


# A field's entry: its description; or a dict of keywords laid over the derived schema (a format);
# or a _Replace.
_Doc = str | JsonObject | _Replace

# The model's classes, the schema names they are published under, and their descriptions. Field
# names and types, and which fields are required, come from the attrs classes in payloadtags.model:
# `model_schema` refuses a class whose fields and descriptions differ, so neither can drift.
MODEL_SCHEMAS: dict[type, tuple[str, str, dict[str, _Doc]]] = {
    model.PayloadRepositoryTag: (
        TAG,
        (
            "One tag of a repository in the payload registry, shown as a Kubernetes object. The "
            "object is virtual: it is computed from the registry on every request, it cannot be "
            "created or changed through the Kubernetes API, and deleting it deletes the tag from "
            "the registry (never another tag that points to the same image). It lives in the "
            "namespace that is the first segment of the repository's path in the registry. Every "
            "authenticated user may call the API; which repositories a user sees and may delete "
            "tags in is decided by PayloadRepositoryAccess rules."
        ),
        {
            "apiVersion": _API_VERSION,
            "kind": f"The type of this object; always {KIND}.",
            "metadata": "Standard object metadata: the name and namespace that identify the tag.",
            "spec": "Which tag this object stands for.",
            "status": "What the tag points to in the registry.",
        },
    ),
    model.PayloadRepositoryTagList: (
        TAG_LIST,
        f"A list of {KIND} objects.",
        {
            "apiVersion": _API_VERSION,
            "kind": f"The type of this object; always {LIST_KIND}.",
            "metadata": (
                "Standard list metadata: the resource version of the listing and, when more "
                "items follow, the token for the next page."
            ),
            "items": (
                "The tags, sorted by namespace, then repository path, then tag. Items carry "
                "metadata and spec only; read one tag to see its status."
            ),
        },
    ),
    model.TagSpec: (
        TAG_SPEC,
        (
            "The repository the tag belongs to, the tag's name, and the address to pull it "
            "from. kubectl get shows them as the REPOSITORY and TAG columns, and ADDRESS with "
            "-o wide."
        ),
        {
            "repositoryPath": (
                "Path to the repository within the namespace: the repository's name in the "
                "registry without the leading namespace segment. For the repository "
                "team-a/tools/http-echo in namespace team-a it is tools/http-echo. Shown as "
                "the REPOSITORY column."
            ),
            "tag": "Name of the tag within the repository. Shown as the TAG column.",
            "address": (
                "The full reference to pull the image by this tag: "
                "<registry host>/<namespace>/<repositoryPath>:<tag>. Shown as the ADDRESS "
                "column of kubectl get -o wide."
            ),
        },
    ),
    model.TagStatus: (
        TAG_STATUS,
        (
            "Filled in when a single tag is read; lists leave it out, and a delete returns the "
            "digest only. The manifest and config are the registry's own documents, passed "
            "through unchanged."
        ),
        {
            "digest": (
                "Digest of the manifest the tag points to, such as sha256:<64 hex digits>. "
                "After a delete, the digest the tag pointed to."
            ),
            "mediaType": (
                "Media type of that manifest: an OCI or Docker image manifest, or an image index "
                "(manifest list) when the tag names a multi-platform image."
            ),
            "artifactType": (
                "The artifact type the manifest declares, for OCI artifacts that are not "
                "container images (signatures, SBOMs, Helm charts and the like); absent for "
                "ordinary images."
            ),
            "manifest": (
                "The image manifest (or image index) the tag points to, as stored in the "
                "registry: schema version, media type, config and layer descriptors, "
                "annotations."
            ),
            "config": (
                "The image build configuration the manifest refers to: platform, entrypoint, "
                "environment, labels, build history and layer diff IDs. Present when the "
                "manifest has a JSON configuration; absent for image indexes and for artifacts "
                "whose configuration is not JSON."
            ),
        },
    ),
    model.ObjectMeta: (
        OBJECT_META,
        (
            "The name is derived from the repository path and the tag, the namespace from the "
            "repository's place in the registry; neither is chosen by a client. A tag has no "
            "labels, annotations, owners or finalizers."
        ),
        {
            "name": (
                "Name of the object, unique within its namespace: the lowercase base32 "
                "encoding, without padding, of <repositoryPath>:<tag>. Use it to get or delete "
                "the tag."
            ),
            "namespace": (
                "Namespace of the object: the first segment of the repository's path in the "
                "registry. All tags under <namespace>/ are removed when the namespace is "
                "deleted."
            ),
            "uid": (
                "Unique identifier of the tag, derived from its namespace, repository path and "
                "tag, so it is the same on every read, replica and restart. Usable as a delete "
                "precondition."
            ),
            "resourceVersion": (
                "An opaque value that identifies a version of the object. Clients must not "
                "interpret it; it may be absent, as tags are computed from the registry."
            ),
            "creationTimestamp": {
                "description": (
                    "When the object was created, in RFC 3339 form, UTC. It may be absent: the "
                    "registry does not record when a tag was pushed."
                ),
                "format": "date-time",
            },
        },
    ),
    model.ListMeta: (
        LIST_META,
        "Metadata of a list.",
        {
            "resourceVersion": (
                "An opaque value that identifies the point in time the list reflects. Clients "
                "must not interpret it."
            ),
            "continue": (
                "Present when the list was cut short by limit: pass it as the continue "
                "parameter to get the next page. It is opaque to clients."
            ),
            "remainingItemCount": {
                "format": "int64",
                "description": (
                    "How many items follow this page, when known. An estimate: the registry "
                    "may change between pages."
                ),
            },
        },
    ),
    model.Status: (
        STATUS,
        (
            "The result of a request that does not return an object; every error of this API "
            "is reported as a Status."
        ),
        {
            "apiVersion": "The version of the schema of this object; always v1.",
            "kind": "The type of this object; always Status.",
            "metadata": _Replace(_field(LIST_META, "Standard list metadata; empty for errors.")),
            "status": 'Outcome of the request: "Success" or "Failure".',
            "message": "What happened, in words meant for a person.",
            "reason": (
                "Why the request failed, as a machine-readable CamelCase word (NotFound, "
                "Forbidden, MethodNotAllowed, ServiceUnavailable and so on)."
            ),
            "details": "More about the failure: the object concerned and the causes.",
            "code": {"format": "int32", "description": "The HTTP status code of the reply."},
        },
    ),
    model.StatusDetails: (
        STATUS_DETAILS,
        "The object a failure concerns, and its causes.",
        {
            "name": "Name of the object concerned, when there is one.",
            "group": "API group of the object concerned.",
            "kind": "Kind or resource of the object concerned.",
            "uid": "UID of the object concerned, when known.",
            "causes": _Replace(
                {
                    "type": "array",
                    "description": "The individual problems found, such as each invalid field.",
                    "items": _ref(STATUS_CAUSE),
                }
            ),
            "retryAfterSeconds": {
                "format": "int32",
                "description": (
                    "How many seconds to wait before trying again, for temporary failures such "
                    "as a registry in read-only mode."
                ),
            },
        },
    ),
}

_SCHEMA_NAMES = {cls: name for cls, (name, _, _) in MODEL_SCHEMAS.items()}
_GVKS = {model.PayloadRepositoryTag: [GVK], model.PayloadRepositoryTagList: [LIST_GVK]}


def _json_name(field: attrs.Attribute[Any]) -> str:
    # The converter's renaming (model.to_json): snake_case to lowerCamelCase, a trailing _ dropped.
    return model.json_name(field.name)


def _property(annotation: Any, description: str) -> JsonObject:
    """The schema of a field of type ``annotation`` (``X | None`` is ``X``, not required)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (types.UnionType, typing.Union) and len(args) == 1:
        return _property(args[0], description)
    if annotation is str:
        return _string(description)
    if annotation is int:
        return {"type": "integer", "description": description}
    if annotation is bool:
        return {"type": "boolean", "description": description}
    if annotation in _SCHEMA_NAMES:
        return _field(_SCHEMA_NAMES[annotation], description)
    origin, params = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict:
        return _free_form(description)
    if origin is list and len(params) == 1 and params[0] in _SCHEMA_NAMES:
        return {"type": "array", "description": description, "items": _ref(_SCHEMA_NAMES[params[0]])}
    raise SchemaDrift(f"no OpenAPI form for the field type {annotation!r}; describe it with _Replace")


def model_schema(cls: type, name: str, description: str, docs: dict[str, _Doc]) -> JsonObject:
    """The OpenAPI schema of an attrs class of the model: its fields, their types and descriptions.

    Required are the fields without a default, except ``metadata`` (which a client never sends), in
    our own schemas; the meta types declare none, as Kubernetes' own documents do."""
    fields = {_json_name(field): field for field in attrs.fields(cls)}
    if set(fields) != set(docs):
        raise SchemaDrift(
            f"{name}: fields without a description {sorted(set(fields) - set(docs))}, "
            f"descriptions without a field {sorted(set(docs) - set(fields))}"
        )
    hints = typing.get_type_hints(cls)
    properties: JsonObject = {}
    for json_name, field in fields.items():
        doc = docs[json_name]
        if isinstance(doc, _Replace):
            properties[json_name] = doc.schema
        elif isinstance(doc, str):
            properties[json_name] = _property(hints[field.name], doc)
        else:
            properties[json_name] = {**_property(hints[field.name], doc["description"]), **doc}
    schema: JsonObject = {"description": description, "type": "object"}
    required = [n for n, f in fields.items() if f.default is attrs.NOTHING and n != "metadata"]
    if required and name.startswith(OURS):
        schema["required"] = required
    schema["properties"] = properties
    if cls in _GVKS:
        schema["x-kubernetes-group-version-kind"] = _GVKS[cls]
    return schema


_NEVER_SET = (
    "A tag never has it; a request that would set it (kubectl label, annotate, apply, edit) is "
    "refused with 405 MethodNotAllowed."
)


def _string_map(description: str) -> JsonObject:
    return {"type": "object", "description": description, "additionalProperties": {"type": "string"}}


# The other fields of Kubernetes' ObjectMeta, which no tag carries (the model has none of them). A
# manifest may: kubectl checks a manifest against this schema before it sends it, and without them
# would stop at 'unknown field "labels"' where the server answers 405 MethodNotAllowed.
UNSET_OBJECT_META: JsonObject = {
    "labels": _string_map(f"Map of string keys and values for organizing objects. {_NEVER_SET}"),
    "annotations": _string_map(f"Map of string keys and values for tools to store data in. {_NEVER_SET}"),
    "generateName": _string(f"A prefix from which the server would generate a name. {_NEVER_SET}"),
    "finalizers": {
        "type": "array",
        "description": f"Names of what must happen before the object is deleted. {_NEVER_SET}",
        "items": {"type": "string"},
    },
    "ownerReferences": {
        "type": "array",
        "description": f"The objects this object depends on. {_NEVER_SET}",
        "items": _free_form("An owning object: apiVersion, kind, name and uid."),
    },
    "generation": {
        "type": "integer",
        "format": "int64",
        "description": "A sequence number of changes to the desired state. A tag has none.",
    },
    "deletionTimestamp": _string(
        "When the object is to be deleted. A tag has none: a delete removes it at once.",
        format="date-time",
    ),
    "deletionGracePeriodSeconds": {
        "type": "integer",
        "format": "int64",
        "description": "Seconds allowed for a graceful deletion. A tag has none: deletes are immediate.",
    },
    "managedFields": {
        "type": "array",
        "description": "Which manager set which field. A tag has none: its fields are not set by clients.",
        "items": _free_form("One manager's set of fields."),
    },
    "selfLink": _string("Not set: deprecated in Kubernetes and never filled in by this server."),
}


def _schemas() -> dict[str, JsonObject]:
    schemas = {
        name: model_schema(cls, name, description, docs)
        for cls, (name, description, docs) in MODEL_SCHEMAS.items()
    }
    schemas[OBJECT_META]["properties"].update(UNSET_OBJECT_META)
    # What clients send and this server only reads: written out here, as there is no model class.
    schemas.update(_REQUEST_SCHEMAS)
    return schemas


_REQUEST_SCHEMAS: dict[str, JsonObject] = {
    STATUS_CAUSE: {
        "description": "One problem behind a failure.",
        "type": "object",
        "properties": {
            "reason": _string("The kind of problem, machine-readable (such as FieldValueInvalid)."),
            "message": _string("The problem, in words meant for a person."),
            "field": _string("The field the problem is in, as a dotted path, when there is one."),
        },
    },
    DELETE_OPTIONS: {
        "description": "Options of a delete, sent as the request body or as query parameters.",
        "type": "object",
        "properties": {
            "apiVersion": _string("The version of the schema of this object, such as v1."),
            "kind": _string("The type of this object; DeleteOptions."),
            "dryRun": {
                "type": "array",
                "description": (
                    'With the single value "All", check the request (existence, access, '
                    "preconditions) but delete nothing."
                ),
                "items": {"type": "string"},
            },
            "gracePeriodSeconds": {
                "type": "integer",
                "format": "int64",
                "description": "Accepted for compatibility; a tag is always deleted at once.",
            },
            "preconditions": _field(
                PRECONDITIONS, "Conditions the tag must meet for the delete to go ahead."
            ),
            "propagationPolicy": _string(
                "Accepted for compatibility (Foreground, Background or Orphan); a tag has no dependents."
            ),
            "orphanDependents": {
                "type": "boolean",
                "description": (
                    "Accepted for compatibility; a tag has no dependents. Cannot be combined "
                    "with propagationPolicy."
                ),
            },
        },
    },
    PRECONDITIONS: {
        "description": "Conditions that must hold for a delete to go ahead.",
        "type": "object",
        "properties": {
            "uid": _string("The tag is deleted only if its metadata.uid equals this value."),
            "resourceVersion": _string(
                "The tag is deleted only if its metadata.resourceVersion equals this value."
            ),
        },
    },
}


# --- operations ------------------------------------------------------------------------------------


@attrs.frozen
class _Param:
    name: str
    where: str  # "path" or "query"
    description: str
    type: str = "string"
    required: bool = False

    def v3(self) -> JsonObject:
        out: JsonObject = {"name": self.name, "in": self.where, "description": self.description}
        if self.required:
            out["required"] = True
        out["schema"] = {"type": self.type}
        return out

    def v2(self) -> JsonObject:
        out: JsonObject = {"name": self.name, "in": self.where, "description": self.description}
        if self.required:
            out["required"] = True
        out["type"] = self.type
        return out


_NAMESPACE = _Param(
    "namespace",
    "path",
    "The namespace: the first segment of the repositories' paths in the registry.",
    required=True,
)
_NAME = _Param(
    "name",
    "path",
    f"Name of the {KIND}: the lowercase unpadded base32 of <repositoryPath>:<tag>.",
    required=True,
)
_LABEL_SELECTOR = _Param(
    "labelSelector",
    "query",
    "Only objects whose labels match this selector. Tags carry no labels, so only selectors an "
    "empty label set satisfies return anything.",
)
_FIELD_SELECTOR = _Param(
    "fieldSelector",
    "query",
    "Only objects whose fields match this selector; metadata.name and metadata.namespace are "
    "supported, with =, == and !=.",
)
_LIMIT = _Param(
    "limit",
    "query",
    "The largest number of items to return. When more remain, the list metadata carries a continue "
    "token for the next page. 0 or absent: no limit.",
    type="integer",
)
_CONTINUE = _Param(
    "continue",
    "query",
    "The continue token of the previous page, to resume the list where it stopped. Other "
    "parameters must be the same as on the first request.",
)
_RESOURCE_VERSION = _Param(
    "resourceVersion",
    "query",
    "Lists always reflect the registry as it is now. A watch starts after this resourceVersion "
    '(from a list or an event of this server); unset: the current tags first, then changes; "0": '
    "the same, from the last reread.",
)
_RESOURCE_VERSION_MATCH = _Param(
    "resourceVersionMatch",
    "query",
    "Accepted for compatibility, with resourceVersion: Exact or NotOlderThan.",
)
_DRY_RUN = _Param(
    "dryRun",
    "query",
    'With the value "All", check the request (existence, access, preconditions) but delete nothing.',
)
_GRACE_PERIOD = _Param(
    "gracePeriodSeconds",
    "query",
    "Accepted for compatibility: any 64-bit integer (a negative one counts as 1). "
    "Tags are always deleted at once.",
    type="integer",
)
_PROPAGATION = _Param(
    "propagationPolicy",
    "query",
    "Accepted for compatibility: Foreground, Background or Orphan. Tags have no dependents.",
)

_WATCH = _Param(
    "watch",
    "query",
    "Watch for changes instead of listing: a stream of ADDED, DELETED, BOOKMARK and ERROR events, "
    "one JSON object per line, from resourceVersion on.",
    type="boolean",
)
_ALLOW_WATCH_BOOKMARKS = _Param(
    "allowWatchBookmarks",
    "query",
    "With watch: send BOOKMARK events (about once a minute, and before the stream ends).",
    type="boolean",
)
_TIMEOUT_SECONDS = _Param(
    "timeoutSeconds",
    "query",
    "With watch: end the stream cleanly after this many seconds.",
    type="integer",
)
_SEND_INITIAL_EVENTS = _Param(
    "sendInitialEvents",
    "query",
    "With watch, resourceVersionMatch=NotOlderThan and allowWatchBookmarks=true: first an ADDED "
    "event per tag, then a BOOKMARK annotated k8s.io/initial-events-end.",
    type="boolean",
)

_LIST_PARAMS = (
    _LABEL_SELECTOR,
    _FIELD_SELECTOR,
    _LIMIT,
    _CONTINUE,
    _RESOURCE_VERSION,
    _RESOURCE_VERSION_MATCH,
    _WATCH,
    _ALLOW_WATCH_BOOKMARKS,
    _TIMEOUT_SECONDS,
    _SEND_INITIAL_EVENTS,
)
_DELETE_PARAMS = (_DRY_RUN, _GRACE_PERIOD, _PROPAGATION)
_DELETE_LIMIT = _Param(
    "limit",
    "query",
    "Delete only the page a list with the same parameters returns: at most this many. When more "
    "remain, the reply carries the continue token for the next page. 0 or absent: no limit.",
    type="integer",
)
_DELETE_CONTINUE = _Param(
    "continue",
    "query",
    "A continue token of a list (or of a deletecollection) with the same selectors: delete from "
    "where it points on, as that list goes on.",
)


@attrs.frozen
class _Operation:
    method: str
    action: str
    operation_id: str
    description: str
    params: tuple[_Param, ...]
    response: str
    body: str | None = None


@attrs.frozen
class _PathItem:
    path: str
    params: tuple[_Param, ...]
    operations: tuple[_Operation, ...]


_ID = "PayloadRegistryDeckhouseIoV1alpha1"
_TAG_GROUP = "payloadRegistryDeckhouseIo_v1alpha1"

_PATHS = (
    _PathItem(
        f"{BASE}/namespaces/{{namespace}}/{RESOURCE}",
        (_NAMESPACE,),
        (
            _Operation(
                "get",
                "list",
                f"list{_ID}Namespaced{KIND}",
                f"List the {KIND} objects of a namespace: one per tag of every repository under it.",
                _LIST_PARAMS,
                TAG_LIST,
            ),
            _Operation(
                "delete",
                "deletecollection",
                f"deleteCollection{_ID}Namespaced{KIND}",
                f"Delete the selected {KIND} objects of a namespace, and their tags in the registry. "
                "If any selected tag may not be deleted by the caller, nothing is deleted.",
                (_LABEL_SELECTOR, _FIELD_SELECTOR, _DELETE_LIMIT, _DELETE_CONTINUE, *_DELETE_PARAMS),
                TAG_LIST,
                body=DELETE_OPTIONS,
            ),
        ),
    ),
    _PathItem(
        f"{BASE}/namespaces/{{namespace}}/{RESOURCE}/{{name}}",
        (_NAME, _NAMESPACE),
        (
            _Operation(
                "get",
                "get",
                f"read{_ID}Namespaced{KIND}",
                f"Read one {KIND}, with its status: digest, manifest and image configuration.",
                (),
                TAG,
            ),
            _Operation(
                "delete",
                "delete",
                f"delete{_ID}Namespaced{KIND}",
                f"Delete a {KIND}: the tag is removed from the registry, never another tag that "
                "shares its digest. The reply is the deleted object.",
                _DELETE_PARAMS,
                TAG,
                body=DELETE_OPTIONS,
            ),
        ),
    ),
    _PathItem(
        f"{BASE}/{RESOURCE}",
        (),
        (
            _Operation(
                "get",
                "list",
                f"list{_ID}{KIND}ForAllNamespaces",
                f"List the {KIND} objects of every namespace the caller may see.",
                _LIST_PARAMS,
                TAG_LIST,
            ),
        ),
    ),
)

_UNAUTHORIZED = "Unauthorized: the request carried no identity this server accepts."
_ERROR = "Any other failure, as a Kubernetes Status."
_BODY = (
    "Options of the delete. dryRun, gracePeriodSeconds and propagationPolicy may be given as query "
    "parameters instead, read only without a body (but for dryRun=All, a dry run either way); "
    "preconditions only here."
)


def _operation_v3(op: _Operation) -> JsonObject:
    out: JsonObject = {
        "tags": [_TAG_GROUP],
        "description": op.description,
        "operationId": op.operation_id,
    }
    if op.params:
        out["parameters"] = [p.v3() for p in op.params]
    if op.body is not None:
        out["requestBody"] = {
            "description": _BODY,
            "content": {"application/json": {"schema": _ref(op.body)}},
        }
    out["responses"] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": _ref(op.response)}}},
        "401": {"description": _UNAUTHORIZED},
        "default": {"description": _ERROR, "content": {"application/json": {"schema": _ref(STATUS)}}},
    }
    out["x-kubernetes-action"] = op.action
    out["x-kubernetes-group-version-kind"] = dict(GVK)
    return out


def _operation_v2(op: _Operation) -> JsonObject:
    out: JsonObject = {
        "description": op.description,
        "consumes": ["application/json"] if op.body is not None else ["*/*"],
        "produces": ["application/json"],
        "schemes": ["https"],
        "tags": [_TAG_GROUP],
        "operationId": op.operation_id,
    }
    params = [p.v2() for p in op.params]
    if op.body is not None:
        body = {"name": "body", "in": "body", "description": _BODY, "schema": {"$ref": _V2_REF + op.body}}
        params.insert(0, body)
    if params:
        out["parameters"] = params
    out["responses"] = {
        "200": {"description": "OK", "schema": {"$ref": _V2_REF + op.response}},
        "401": {"description": _UNAUTHORIZED},
        "default": {"description": _ERROR, "schema": {"$ref": _V2_REF + STATUS}},
    }
    out["x-kubernetes-action"] = op.action
    out["x-kubernetes-group-version-kind"] = dict(GVK)
    return out


def _to_v2(schema: Any) -> Any:
    """v3 schema → v2: references into #/definitions, single-reference allOf as $ref + description."""
    if isinstance(schema, list):
        return [_to_v2(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _to_v2(value) for key, value in schema.items()}
    ref = out.get("$ref")
    if isinstance(ref, str) and ref.startswith(_V3_REF):
        out["$ref"] = _V2_REF + ref[len(_V3_REF) :]
    all_of = out.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and set(all_of[0]) == {"$ref"}:
        del out["allOf"]
        out = {"$ref": all_of[0]["$ref"], **out}
    return out


_INFO = {"title": "payloadtags", "version": f"v{__version__}"}


def build_v3_group_version() -> JsonObject:
    paths: JsonObject = {}
    for item in _PATHS:
        entry: JsonObject = {op.method: _operation_v3(op) for op in item.operations}
        if item.params:
            entry["parameters"] = [p.v3() for p in item.params]
        paths[item.path] = entry
    return {
        "openapi": "3.0.0",
        "info": dict(_INFO),
        "paths": paths,
        "components": {"schemas": _schemas()},
    }


def build_v2() -> JsonObject:
    paths: JsonObject = {}
    for item in _PATHS:
        entry: JsonObject = {op.method: _operation_v2(op) for op in item.operations}
        if item.params:
            entry["parameters"] = [p.v2() for p in item.params]
        paths[item.path] = entry
    return {
        "swagger": "2.0",
        "info": dict(_INFO),
        "paths": paths,
        "definitions": _to_v2(_schemas()),
    }


def build_v3_root(group_version_hash: str) -> JsonObject:
    url = f"{V3_GROUP_VERSION_PATH}?hash={group_version_hash}"
    return {"paths": {V3_GROUP_VERSION_KEY: {"serverRelativeURL": url}}}


def content_hash(document: JsonObject) -> str:
    """The hash the server sends as ETag (without quotes) and in the v3 root's ``?hash=``."""
    return etag(document).strip('"')


# Built once: every request serves these same objects.
V2: JsonObject = build_v2()
V3_GROUP_VERSION: JsonObject = build_v3_group_version()
V3_GROUP_VERSION_HASH: str = content_hash(V3_GROUP_VERSION)
V3_ROOT: JsonObject = build_v3_root(V3_GROUP_VERSION_HASH)
V2_PROTOBUF: bytes = encode_document(V2)
V2_PROTOBUF_ETAG: str = '"' + hashlib.sha512(V2_PROTOBUF).hexdigest()[:32].upper() + '"'


def v2_wants_protobuf(accept: str | None) -> bool:
    """Whether /openapi/v2 answers in protobuf: the first media type of the Accept list that the server
    has decides (kubectl 1.27 and 1.28 name only protobuf); none of them is 406."""
    if accept is None or not accept.strip():
        return False
    for entry in accept.split(","):
        media = entry.split(";", 1)[0].strip().lower()
        if media in PROTOBUF_MEDIA_TYPES:
            return True
        if media in _JSON_MEDIA:
            return False
    raise ApiError(
        406,
        "NotAcceptable",
        f"only the following media types are accepted: application/json, {PROTOBUF_CONTENT_TYPE} "
        f"(requested: {accept})",
    )


def check_accept(accept: str | None) -> None:
    """Raise 406 unless the client takes JSON (protobuf OpenAPI is not offered)."""
    if accept is None or not accept.strip():
        return
    for entry in accept.split(","):
        if entry.split(";", 1)[0].strip().lower() in _JSON_MEDIA:
            return
    raise ApiError(
        406,
        "NotAcceptable",
        f"only the following media types are accepted: application/json (requested: {accept})",
    )


__all__ = [
    "V2",
    "V2_PATH",
    "V2_PROTOBUF",
    "V2_PROTOBUF_ETAG",
    "V3_GROUP_VERSION",
    "V3_GROUP_VERSION_HASH",
    "V3_GROUP_VERSION_PATH",
    "V3_PATH",
    "V3_ROOT",
    "check_accept",
    "content_hash",
    "v2_wants_protobuf",
]
