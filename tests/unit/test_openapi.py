"""OpenAPI v2 and v3 documents: what kubectl explain and the aggregator rely on.

See docs/api.md, "Health, version and OpenAPI".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from payloadtags.api import discovery, openapi
from payloadtags.api.errors import ApiError
from payloadtags.model import (
    GROUP,
    KIND,
    LIST_KIND,
    RESOURCE,
    VERBS,
    VERSION,
    ListMeta,
    ObjectMeta,
    PayloadRepositoryTag,
    PayloadRepositoryTagList,
    Status,
    StatusDetails,
    TagSpec,
    TagStatus,
    json_name,
    to_json,
)

B = f"/apis/{GROUP}/{VERSION}"
NAMESPACED = f"{B}/namespaces/{{namespace}}/{RESOURCE}"
ITEM = f"{NAMESPACED}/{{name}}"
ALL_NAMESPACES = f"{B}/{RESOURCE}"
GVK = {"group": GROUP, "version": VERSION, "kind": KIND}
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

V3 = openapi.V3_GROUP_VERSION
V2 = openapi.V2
V3_SCHEMAS = V3["components"]["schemas"]
V2_DEFINITIONS = V2["definitions"]

TAG = "io.deckhouse.payload-registry.v1alpha1.PayloadRepositoryTag"
TAG_LIST = "io.deckhouse.payload-registry.v1alpha1.PayloadRepositoryTagList"
TAG_SPEC = "io.deckhouse.payload-registry.v1alpha1.PayloadRepositoryTagSpec"
TAG_STATUS = "io.deckhouse.payload-registry.v1alpha1.PayloadRepositoryTagStatus"
STATUS = "io.k8s.apimachinery.pkg.apis.meta.v1.Status"
DELETE_OPTIONS = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"

DOCUMENTS = [
    pytest.param(V3, "#/components/schemas/", id="v3"),
    pytest.param(V2, "#/definitions/", id="v2"),
]


# --- helpers ----------------------------------------------------------------------------------------


def schemas_of(document: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = (
        document["components"]["schemas"] if "openapi" in document else document["definitions"]
    )
    return schemas


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def resolve(schemas: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow a property to the schema that describes its contents ($ref, or allOf with one $ref)."""
    ref = schema.get("$ref")
    if ref is None and len(schema.get("allOf", [])) == 1:
        ref = schema["allOf"][0]["$ref"]
    return schemas[ref.rsplit("/", 1)[1]] if ref else schema


def properties(schemas: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property of every schema, nested object and array item schemas included."""

    def walk(where: str, schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        for name, prop in schema.get("properties", {}).items():
            yield f"{where}.{name}", prop
            yield from walk(f"{where}.{name}", prop)
        if isinstance(schema.get("items"), dict):
            yield from walk(f"{where}[]", schema["items"])

    for name, schema in schemas.items():
        yield from walk(name, schema)


def undescribed_keys(schemas: dict[str, Any], schema: dict[str, Any], value: Any, where: str) -> list[str]:
    """Keys of a served JSON value that the schema does not describe (free-form objects excepted)."""
    schema = resolve(schemas, schema)
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    missing = []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key, item in value.items():
            if key not in props:
                missing.append(f"{where}.{key}")
            else:
                missing += undescribed_keys(schemas, props[key], item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            missing += undescribed_keys(schemas, schema["items"], item, f"{where}[]")
    return missing


# --- the v3 root and hashes -------------------------------------------------------------------------


def test_v3_root_points_at_the_group_version_document_by_its_hash():
    url = f"/openapi/v3/apis/{GROUP}/{VERSION}?hash={openapi.V3_GROUP_VERSION_HASH}"
    assert openapi.V3_ROOT == {"paths": {f"apis/{GROUP}/{VERSION}": {"serverRelativeURL": url}}}


def test_the_hash_is_the_etag_the_group_version_document_is_served_with():
    # app.py serves documents with discovery.etag(body) as ETag: the root's hash must equal it.
    assert discovery.etag(V3) == f'"{openapi.V3_GROUP_VERSION_HASH}"'
    assert re.fullmatch(r"[0-9a-f]{32}", openapi.V3_GROUP_VERSION_HASH)


def test_the_hash_follows_the_content():
    changed = json.loads(json.dumps(V3))
    changed["components"]["schemas"][TAG_SPEC]["properties"]["tag"]["description"] += " More."
    assert openapi.content_hash(changed) != openapi.V3_GROUP_VERSION_HASH


def test_documents_are_built_once_and_deterministically():
    # Static: rebuilding gives the same content, so the hash is stable across restarts and replicas.
    assert openapi.build_v3_group_version() == V3
    assert openapi.build_v2() == V2
    assert openapi.content_hash(openapi.build_v2()) == openapi.content_hash(V2)
    assert openapi.V3_GROUP_VERSION is V3  # module constants, not rebuilt per request


@pytest.mark.parametrize("document", [V2, V3, openapi.V3_ROOT], ids=["v2", "v3", "v3-root"])
def test_documents_are_plain_json(document):
    assert json.loads(json.dumps(document)) == document


def test_versions_declared():
    assert V3["openapi"].startswith("3.0")
    assert V2["swagger"] == "2.0"
    for document in (V2, V3):
        assert document["info"]["title"] and document["info"]["version"]


# --- paths and operations ---------------------------------------------------------------------------


@pytest.mark.parametrize(("document", "prefix"), DOCUMENTS)
def test_paths_and_actions(document, prefix):
    actions = {(path, method): op["x-kubernetes-action"] for path, method, op in operations(document)}
    assert actions == {
        (NAMESPACED, "get"): "list",
        (NAMESPACED, "delete"): "deletecollection",
        (ITEM, "get"): "get",
        (ITEM, "delete"): "delete",
        (ALL_NAMESPACES, "get"): "list",
    }
    # Exactly the verbs discovery advertises, no more (no create/update/patch); watch is the list
    # operation's `watch` parameter, as in kube-apiserver's documents without the deprecated /watch/ paths.
    assert set(actions.values()) == set(VERBS) - {"watch"}


@pytest.mark.parametrize(("document", "prefix"), DOCUMENTS)
def test_every_operation_has_the_group_version_kind(document, prefix):
    for path, method, op in operations(document):
        assert op["x-kubernetes-group-version-kind"] == GVK, (path, method)
        assert op["operationId"] and op["description"], (path, method)


def test_explain_finds_the_kind_through_the_item_path():
    # Without this exact entry kubectl explain says "GVR ... not found in OpenAPI schema"
    # (docs/api.md, "Health, version and OpenAPI").
    assert V3["paths"][ITEM]["get"]["x-kubernetes-group-version-kind"] == GVK


@pytest.mark.parametrize(("document", "prefix"), DOCUMENTS)
def test_operation_ids_are_unique(document, prefix):
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids))


def _parameters(path_item: dict[str, Any], op: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p["name"], p["in"]): p for p in [*path_item.get("parameters", []), *op.get("parameters", [])]}


@pytest.mark.parametrize(("document", "prefix"), DOCUMENTS)
def test_every_path_variable_is_a_required_parameter(document, prefix):
    for path, method, op in operations(document):
        params = _parameters(document["paths"][path], op)
        for variable in re.findall(r"{(\w+)}", path):
            assert params[(variable, "path")]["required"] is True, (path, method, variable)
        declared = {name for name, where in params if where == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)


@pytest.mark.parametrize(("document", "prefix"), DOCUMENTS)
def test_parameters_are_described_and_typed(document, prefix):
    for path, method, op in operations(document):
        for (name, where), param in _parameters(document["paths"][path], op).items():
            assert param["description"].strip(), (path, method, name)
            if where == "body":
                assert param["schema"] == {"$ref": prefix + DELETE_OPTIONS}
            else:
                kind = param["schema"]["type"] if "openapi" in document else param["type"]
                assert kind in ("string", "integer", "boolean"), (path, method, name)


@pytest.mark.parametrize(("document", "prefix"), DOCUMENTS)
def test_query_parameters_per_action(document, prefix):
    expected = {
        "list": {
            "labelSelector",
            "fieldSelector",
            "limit",
            "continue",
            "resourceVersion",
            "resourceVersionMatch",
            "watch",
            "allowWatchBookmarks",
            "timeoutSeconds",
            "sendInitialEvents",
        },
        "deletecollection": {
            "labelSelector",
            "fieldSelector",
            "limit",
            "continue",
            "dryRun",
            "gracePeriodSeconds",
            "propagationPolicy",
        },
        "get": set(),
        "delete": {"dryRun", "gracePeriodSeconds", "propagationPolicy"},
    }
    for path, _, op in operations(document):
        query = {name for name, where in _parameters(document["paths"][path], op) if where == "query"}
        assert query == expected[op["x-kubernetes-action"]], path


def _response_ref(document: dict[str, Any], response: dict[str, Any]) -> str:
    schema = (
        response["content"]["application/json"]["schema"] if "openapi" in document else response["schema"]
    )
    return str(schema["$ref"])


@pytest.mark.parametrize(("document", "prefix"), DOCUMENTS)
def test_responses_reference_the_schemas(document, prefix):
    for path, _, op in operations(document):
        action = op["x-kubernetes-action"]
        wanted = TAG if action in ("get", "delete") else TAG_LIST
        assert _response_ref(document, op["responses"]["200"]) == prefix + wanted, path
        assert _response_ref(document, op["responses"]["default"]) == prefix + STATUS, path
        assert "401" in op["responses"]


def test_deletes_take_delete_options_as_body():
    for path, method, op in operations(V3):
        if method == "delete":
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/" + DELETE_OPTIONS}, path
        else:
            assert "requestBody" not in op, path


# --- schemas ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("document", "prefix"), DOCUMENTS)
def test_every_reference_resolves(document, prefix):
    refs = set(references(document))
    assert refs, "no references at all?"
    schemas = schemas_of(document)
    for ref in refs:
        assert ref.startswith(prefix), ref
        assert ref[len(prefix) :] in schemas, ref


@pytest.mark.parametrize(("document", "prefix"), DOCUMENTS)
def test_every_schema_is_referenced(document, prefix):
    used = {ref[len(prefix) :] for ref in references(document)}
    assert set(schemas_of(document)) == used


@pytest.mark.parametrize(("document", "prefix"), DOCUMENTS)
def test_every_schema_and_property_has_a_description(document, prefix):
    schemas = schemas_of(document)
    for name, schema in schemas.items():
        assert schema.get("description", "").strip(), name
        assert schema.get("type") == "object", name
    for where, prop in properties(schemas):
        assert prop.get("description", "").strip(), where
        assert prop["description"] == prop["description"].strip(), where


@pytest.mark.parametrize(("document", "prefix"), DOCUMENTS)
def test_every_property_has_a_type_or_a_reference(document, prefix):
    for where, prop in properties(schemas_of(document)):
        assert "type" in prop or "$ref" in prop or "allOf" in prop, where
        if prop.get("type") == "array":
            assert "items" in prop, where


@pytest.mark.parametrize(("document", "prefix"), DOCUMENTS)
def test_kinds_carry_their_group_version_kind(document, prefix):
    schemas = schemas_of(document)
    assert schemas[TAG]["x-kubernetes-group-version-kind"] == [GVK]
    assert schemas[TAG_LIST]["x-kubernetes-group-version-kind"] == [{**GVK, "kind": LIST_KIND}]
    # Only our kinds claim a GVK: meta types merged by the aggregator must not shadow the core ones.
    claimed = {name for name, s in schemas.items() if "x-kubernetes-group-version-kind" in s}
    assert claimed == {TAG, TAG_LIST}


def test_v3_references_with_descriptions_are_wrapped_in_all_of():
    # A $ref's siblings are ignored in OpenAPI 3.0; kubectl shows the allOf wrapper's description.
    for where, prop in properties(V3_SCHEMAS):
        if "$ref" in prop:
            assert set(prop) == {"$ref"}, where
    metadata = V3_SCHEMAS[TAG]["properties"]["metadata"]
    assert metadata["allOf"] == [
        {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    ]


def test_v2_has_no_all_of_and_the_same_schemas():
    assert not any("allOf" in prop for _, prop in properties(V2_DEFINITIONS))
    assert set(V2_DEFINITIONS) == set(V3_SCHEMAS)
    for name in V3_SCHEMAS:
        assert V2_DEFINITIONS[name]["description"] == V3_SCHEMAS[name]["description"]
    assert V2_DEFINITIONS[TAG]["properties"]["spec"]["$ref"] == f"#/definitions/{TAG_SPEC}"


def test_object_fields():
    tag = V3_SCHEMAS[TAG]
    assert set(tag["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert tag["required"] == ["spec"]
    spec = V3_SCHEMAS[TAG_SPEC]
    assert set(spec["properties"]) == {"repositoryPath", "tag", "address"}
    assert set(spec["required"]) == {"repositoryPath", "tag", "address"}
    status = V3_SCHEMAS[TAG_STATUS]
    assert set(status["properties"]) == {"digest", "mediaType", "artifactType", "manifest", "config"}
    assert status["required"] == ["digest"]
    items = V3_SCHEMAS[TAG_LIST]["properties"]["items"]
    assert items["type"] == "array"
    assert items["items"] == {"$ref": f"#/components/schemas/{TAG}"}


@pytest.mark.parametrize("field", ["manifest", "config"])
def test_registry_documents_are_free_form_objects(field):
    for schemas in (V3_SCHEMAS, V2_DEFINITIONS):
        prop = schemas[TAG_STATUS]["properties"][field]
        assert prop["type"] == "object"
        assert prop["x-kubernetes-preserve-unknown-fields"] is True
        assert "properties" not in prop


def test_descriptions_agree_with_the_seed():
    spec = V3_SCHEMAS[TAG_SPEC]["properties"]
    # The seed: "REPOSITORY: Path to the repository within the namespace. TAG: Tag name."
    assert spec["repositoryPath"]["description"].startswith("Path to the repository within the namespace")
    assert "REPOSITORY column" in spec["repositoryPath"]["description"]
    assert spec["tag"]["description"].startswith("Name of the tag")
    assert "<registry host>/<namespace>/<repositoryPath>:<tag>" in spec["address"]["description"]
    assert "-o wide" in spec["address"]["description"]
    meta = V3_SCHEMAS["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]
    assert "base32" in meta["name"]["description"]
    assert "first segment" in meta["namespace"]["description"]
    tag = V3_SCHEMAS[TAG]["description"]
    assert "cannot be created or changed" in tag
    assert "PayloadRepositoryAccess" in tag


def test_object_meta_has_every_field_of_kubernetes_object_meta():
    # kubectl validates a manifest against it before it sends it: a field missing here is an
    # "unknown field" error on the client instead of the server's 405.
    meta = V3_SCHEMAS["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]
    assert set(meta) == {
        "annotations",
        "creationTimestamp",
        "deletionGracePeriodSeconds",
        "deletionTimestamp",
        "finalizers",
        "generateName",
        "generation",
        "labels",
        "managedFields",
        "name",
        "namespace",
        "ownerReferences",
        "resourceVersion",
        "selfLink",
        "uid",
    }
    for field in ("labels", "annotations"):
        assert meta[field]["additionalProperties"] == {"type": "string"}
    v2 = openapi.V2["definitions"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]
    assert set(v2) == set(meta)


# --- the schemas are generated from the model --------------------------------------------------------

MODEL_CLASSES = {
    PayloadRepositoryTag: TAG,
    PayloadRepositoryTagList: TAG_LIST,
    TagSpec: TAG_SPEC,
    TagStatus: TAG_STATUS,
    ObjectMeta: "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    ListMeta: "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
    Status: STATUS,
    StatusDetails: "io.k8s.apimachinery.pkg.apis.meta.v1.StatusDetails",
}


@pytest.mark.parametrize("cls", list(MODEL_CLASSES), ids=lambda cls: cls.__name__)
def test_each_schema_has_exactly_the_fields_of_its_model_class(cls):
    schema = V3_SCHEMAS[MODEL_CLASSES[cls]]
    fields = {json_name(field.name): field for field in attrs.fields(cls)}
    # ObjectMeta also names the upstream fields a tag never has, so that kubectl accepts a manifest
    # that carries them and shows the server's answer.
    unset = set(openapi.UNSET_OBJECT_META) if cls is ObjectMeta else set()
    assert set(schema["properties"]) == set(fields) | unset
    assert not unset & set(fields)
    required = {name for name, field in fields.items() if field.default is attrs.NOTHING} - {"metadata"}
    if MODEL_CLASSES[cls].startswith("io.deckhouse."):
        assert set(schema.get("required", ())) == required
    else:  # the meta types, as Kubernetes publishes them, require nothing
        assert "required" not in schema
    for name, field in fields.items():
        if field.type in ("str", "str | None"):
            assert schema["properties"][name]["type"] == "string", name


def test_the_published_classes_are_the_model_classes():
    assert {cls: name for cls, (name, _, _) in openapi.MODEL_SCHEMAS.items()} == MODEL_CLASSES


def test_a_model_field_without_a_description_stops_the_documents():
    @attrs.define(kw_only=True)
    class GrownSpec(TagSpec):
        platform: str

    name, description, docs = openapi.MODEL_SCHEMAS[TagSpec]
    with pytest.raises(openapi.SchemaDrift, match="platform"):
        openapi.model_schema(GrownSpec, name, description, docs)


def test_a_description_of_a_field_the_model_lacks_stops_the_documents():
    name, description, docs = openapi.MODEL_SCHEMAS[TagSpec]
    with pytest.raises(openapi.SchemaDrift, match="digest"):
        openapi.model_schema(TagSpec, name, description, {**docs, "digest": "the digest"})


def test_field_types_and_formats():
    status = V3_SCHEMAS[STATUS]["properties"]
    assert (status["code"]["type"], status["code"]["format"]) == ("integer", "int32")
    details = V3_SCHEMAS["io.k8s.apimachinery.pkg.apis.meta.v1.StatusDetails"]["properties"]
    assert details["causes"]["items"] == {
        "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.StatusCause"
    }
    meta = V3_SCHEMAS["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]
    assert meta["creationTimestamp"]["format"] == "date-time"


# --- the schemas describe what the server sends -----------------------------------------------------


def _full_object() -> dict[str, Any]:
    obj: dict[str, Any] = to_json(
        PayloadRepositoryTag(
            metadata=ObjectMeta(
                name="nb2hi4bnmvrwq3z2nrqxizltoq",
                namespace="d8-system",
                uid="6f1f7e2c-5d0b-4c55-9a43-2b1f8d4f0a17",
                resource_version="7",
                creation_timestamp="2024-01-01T00:00:00Z",
            ),
            spec=TagSpec(
                repository_path="http-echo", tag="latest", address="r.example/d8-system/http-echo:latest"
            ),
            status=TagStatus(
                digest="sha256:" + "0" * 64,
                media_type="application/vnd.oci.image.manifest.v1+json",
                artifact_type="application/vnd.example+json",
                manifest={"schemaVersion": 2, "layers": [{"digest": "sha256:" + "1" * 64}]},
                config={"architecture": "amd64", "config": {"Env": ["A=b"]}},
            ),
        )
    )
    return obj


@pytest.mark.parametrize("schemas", [V3_SCHEMAS, V2_DEFINITIONS], ids=["v3", "v2"])
def test_every_field_of_an_object_is_described(schemas):
    assert undescribed_keys(schemas, schemas[TAG], _full_object(), "tag") == []


@pytest.mark.parametrize("schemas", [V3_SCHEMAS, V2_DEFINITIONS], ids=["v3", "v2"])
def test_every_field_of_a_list_is_described(schemas):
    item = {k: v for k, v in _full_object().items() if k != "status"}
    listing = to_json(
        PayloadRepositoryTagList(
            metadata=ListMeta(resource_version="9", continue_="abc", remaining_item_count=3), items=[]
        )
    )
    listing["items"] = [item]
    assert undescribed_keys(schemas, schemas[TAG_LIST], listing, "list") == []


@pytest.mark.parametrize("schemas", [V3_SCHEMAS, V2_DEFINITIONS], ids=["v3", "v2"])
def test_every_field_of_a_status_is_described(schemas):
    status = to_json(
        Status(
            status="Failure",
            code=503,
            message="the registry is read-only",
            reason="ServiceUnavailable",
            details=StatusDetails(
                kind=RESOURCE,
                name="x",
                group=GROUP,
                uid="u",
                causes=[{"reason": "FieldValueInvalid", "message": "m", "field": "dryRun"}],
                retry_after_seconds=1,
            ),
        )
    )
    assert undescribed_keys(schemas, schemas[STATUS], status, "status") == []


def test_delete_options_cover_what_the_server_reads():
    props = V3_SCHEMAS[DELETE_OPTIONS]["properties"]
    for field in ("dryRun", "preconditions", "propagationPolicy", "gracePeriodSeconds", "orphanDependents"):
        assert field in props
    preconditions = resolve(V3_SCHEMAS, props["preconditions"])
    assert set(preconditions["properties"]) == {"uid", "resourceVersion"}


# --- Accept -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "",
        "application/json",
        "application/json, */*",  # kubectl explain, for /openapi/v3
        "*/*",
        "application/com.github.proto-openapi.spec.v2@v1.0+protobuf, application/json",
        "application/json;charset=utf-8",
    ],
)
def test_json_is_accepted(accept):
    openapi.check_accept(accept)


@pytest.mark.parametrize(
    "accept",
    [
        "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",  # kubectl explain, openapiv2
        "application/com.github.proto-openapi.spec.v3@v1.0+protobuf",
        "text/html",
    ],
)
def test_protobuf_only_is_not_acceptable(accept):
    with pytest.raises(ApiError) as caught:
        openapi.check_accept(accept)
    assert caught.value.code == 406
    assert caught.value.reason == "NotAcceptable"
    assert accept in caught.value.message
