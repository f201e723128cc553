"""The Kubernetes JSON shapes (model.py) and the Status errors built on them (api/errors.py)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payloadtags.api import errors
from payloadtags.model import (
    GROUP,
    GROUP_VERSION,
    KIND,
    LIST_KIND,
    QUALIFIED_RESOURCE,
    RESOURCE,
    ListMeta,
    ObjectMeta,
    PartialObjectMetadata,
    PayloadRepositoryTagList,
    Status,
    StatusDetails,
    TagStatus,
    address_for,
    object_meta,
    tag_object,
    to_json,
    uid_for,
    uid_prefix,
    uids_of,
)
from payloadtags.names import TagRef

# The uid namespace every version has used: uids must never change for the same tag.
_UID_NAMESPACE = uuid.UUID("6f1f7e2c-5d0b-4c55-9a43-2b1f8d4f0a17")

REF = TagRef("d8-system", "http-echo", "latest")


def test_constants() -> None:
    assert GROUP == "payload-registry.deckhouse.io"
    assert GROUP_VERSION == "payload-registry.deckhouse.io/v1alpha1"
    assert KIND == "PayloadRepositoryTag"
    assert LIST_KIND == "PayloadRepositoryTagList"
    assert RESOURCE == "payloadrepositorytags"
    assert QUALIFIED_RESOURCE == "payloadrepositorytags.payload-registry.deckhouse.io"


# -- uid and address --------------------------------------------------------------------------------


def test_uid_is_a_stable_name_based_uuid() -> None:
    uid = uid_for(REF)
    assert uid == "474507c3-2bb1-5b5f-8a64-8ca57cc17912"  # what earlier versions gave this tag
    assert uuid.UUID(uid).version == 5
    assert uid == uid_for(TagRef("d8-system", "http-echo", "latest"))


@pytest.mark.parametrize(
    "other",
    [
        TagRef("other-ns", "http-echo", "latest"),
        TagRef("d8-system", "http-echo2", "latest"),
        TagRef("d8-system", "http-echo", "v1"),
        # The same string split differently must not collide.
        TagRef("d8-system", "http-echo/latest", "x"),
    ],
)
def test_uid_differs_for_another_tag(other: TagRef) -> None:
    assert uid_for(other) != uid_for(REF)


def test_uid_of_same_name_in_two_namespaces_differs() -> None:
    a, b = TagRef("team-a", "app", "v1"), TagRef("team-b", "app", "v1")
    assert a.name == b.name
    assert uid_for(a) != uid_for(b)


def test_address() -> None:
    assert (
        address_for("payload-registry.example.com", REF)
        == "payload-registry.example.com/d8-system/http-echo:latest"
    )
    nested = TagRef("d8-system", "test/http-echo", "latest")
    assert address_for("r.example:5000", nested) == "r.example:5000/d8-system/test/http-echo:latest"


def test_object_meta() -> None:
    assert object_meta(REF) == ObjectMeta(
        name="nb2hi4bnmvrwq3z2nrqxizltoq", namespace="d8-system", uid=uid_for(REF)
    )


# -- JSON shapes ------------------------------------------------------------------------------------


def test_tag_object_without_status() -> None:
    assert to_json(tag_object("payload-registry.example.com", REF)) == {
        "apiVersion": "payload-registry.deckhouse.io/v1alpha1",
        "kind": "PayloadRepositoryTag",
        "metadata": {"name": "nb2hi4bnmvrwq3z2nrqxizltoq", "namespace": "d8-system", "uid": uid_for(REF)},
        "spec": {
            "repositoryPath": "http-echo",
            "tag": "latest",
            "address": "payload-registry.example.com/d8-system/http-echo:latest",
        },
    }


def test_tag_object_with_status_keeps_manifest_and_config_verbatim() -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "annotations": {"org.opencontainers.image.created": "2024"},
        "snake_case_key": None,
        "layers": [],
    }
    config = {"architecture": "amd64", "config": {"Env": ["A=b"], "Cmd": None}}
    status = TagStatus(
        digest="sha256:abc",
        media_type="application/vnd.oci.image.manifest.v1+json",
        manifest=manifest,
        config=config,
    )
    body = to_json(tag_object("r", REF, status))
    assert body["status"] == {
        "digest": "sha256:abc",
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "manifest": manifest,
        "config": config,
    }
    assert "artifactType" not in body["status"]
    json.dumps(body)


def test_status_artifact_type_is_camel_case() -> None:
    assert to_json(TagStatus(digest="d", artifact_type="application/x")) == {
        "digest": "d",
        "artifactType": "application/x",
    }


def test_object_meta_fields_are_camel_case_and_none_is_omitted() -> None:
    meta = ObjectMeta(name="n", resource_version="12", creation_timestamp="2024-01-01T00:00:00Z")
    assert to_json(meta) == {
        "name": "n",
        "resourceVersion": "12",
        "creationTimestamp": "2024-01-01T00:00:00Z",
    }
    assert to_json(ObjectMeta()) == {}


def test_list_meta_continue_and_remaining_item_count() -> None:
    assert to_json(ListMeta()) == {}
    assert to_json(ListMeta(resource_version="7", continue_="tok", remaining_item_count=0)) == {
        "resourceVersion": "7",
        "continue": "tok",
        "remainingItemCount": 0,
    }


def test_empty_list_has_items_not_null() -> None:
    body = to_json(PayloadRepositoryTagList(metadata=ListMeta(resource_version="1"), items=[]))
    assert body == {
        "apiVersion": "payload-registry.deckhouse.io/v1alpha1",
        "kind": "PayloadRepositoryTagList",
        "metadata": {"resourceVersion": "1"},
        "items": [],
    }


def test_partial_object_metadata_default_version() -> None:
    assert to_json(PartialObjectMetadata(metadata=ObjectMeta(name="n"))) == {
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": {"name": "n"},
    }


def test_status_always_carries_empty_metadata() -> None:
    assert to_json(Status(status="Success", code=200)) == {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Success",
        "code": 200,
        "metadata": {},
    }


def test_status_details_retry_after_seconds() -> None:
    assert to_json(StatusDetails(retry_after_seconds=5, causes=[])) == {"causes": [], "retryAfterSeconds": 5}


# -- Status errors (docs/api.md, "Status errors"), through the same converter ---------------------


def _body(error: errors.ApiError) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(json.dumps(to_json(error.status())))
    return body


def test_not_found() -> None:
    error = errors.not_found("abc")
    assert error.code == 404
    assert _body(error) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'payloadrepositorytags.payload-registry.deckhouse.io "abc" not found',
        "reason": "NotFound",
        "details": {"name": "abc", "group": GROUP, "kind": "payloadrepositorytags"},
        "code": 404,
    }


def test_method_not_allowed_matches_the_observed_body() -> None:
    assert _body(errors.method_not_allowed("create")) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": (
            "create is not supported on resources of kind "
            '"payloadrepositorytags.payload-registry.deckhouse.io"'
        ),
        "reason": "MethodNotAllowed",
        "details": {"group": GROUP, "kind": "payloadrepositorytags"},
        "code": 405,
    }


def test_path_not_found() -> None:
    body = _body(errors.path_not_found())
    assert (body["code"], body["reason"]) == (404, "NotFound")
    assert body["message"] == "the server could not find the requested resource"


def test_unauthorized_matches_the_reference_body() -> None:
    assert _body(errors.unauthorized()) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }


def test_bad_request_has_no_details() -> None:
    body = _body(errors.bad_request("nope"))
    assert (body["code"], body["reason"], body["message"]) == (400, "BadRequest", "nope")
    assert "details" not in body


def test_conflict_wording() -> None:
    body = _body(errors.conflict("abc", "Precondition failed: UID in precondition: x, UID in object meta: y"))
    assert body["code"] == 409
    assert body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on payloadrepositorytags.payload-registry.deckhouse.io "abc": '
        "Precondition failed: UID in precondition: x, UID in object meta: y"
    )
    assert body["details"] == {"name": "abc", "group": GROUP, "kind": "payloadrepositorytags"}


def test_service_unavailable_carries_retry_after_and_timeout_does_not() -> None:
    unavailable = errors.service_unavailable("registry down", retry_after=7)
    assert unavailable.retry_after == 7
    assert _body(unavailable)["details"] == {"retryAfterSeconds": 7}
    assert (_body(unavailable)["code"], _body(unavailable)["reason"]) == (503, "ServiceUnavailable")
    slow = errors.timeout("registry slow")
    assert (slow.code, slow.reason, slow.message, slow.retry_after) == (
        504,
        "Timeout",
        "Timeout: registry slow",
        None,
    )
    assert "details" not in _body(slow)
    assert errors.service_unavailable("bad credentials", retry_after=None).retry_after is None


def test_internal_error_wording() -> None:
    body = _body(errors.internal("boom"))
    assert (body["code"], body["reason"], body["message"]) == (
        500,
        "InternalError",
        "Internal error occurred: boom",
    )


def test_not_acceptable_and_unsupported_media_type() -> None:
    assert (errors.not_acceptable("application/cbor").code, errors.not_acceptable("x").reason) == (
        406,
        "NotAcceptable",
    )
    assert "application/cbor" in errors.not_acceptable("application/cbor").message
    unsupported = errors.unsupported_media_type("text/plain")
    assert (unsupported.code, unsupported.reason) == (415, "UnsupportedMediaType")
    assert "text/plain" in unsupported.message


def test_access_denied_in_a_namespace() -> None:
    error = errors.access_denied("alice", "get", "team-a", "abc", None)
    assert error.code == 403
    assert _body(error)["message"] == (
        'payloadrepositorytags.payload-registry.deckhouse.io "abc" is forbidden: User "alice" cannot get '
        'resource "payloadrepositorytags" in API group "payload-registry.deckhouse.io" '
        'in the namespace "team-a"'
    )
    assert _body(error)["reason"] == "Forbidden"
    assert _body(error)["details"] == {"name": "abc", "group": GROUP, "kind": "payloadrepositorytags"}


def test_access_denied_without_name_at_cluster_scope_with_reason() -> None:
    error = errors.access_denied("bob", "deletecollection", "", None, "app/x")
    assert error.message == (
        'payloadrepositorytags.payload-registry.deckhouse.io is forbidden: User "bob" cannot '
        'deletecollection resource "payloadrepositorytags" in API group "payload-registry.deckhouse.io" '
        "at the cluster scope: "
        'no PayloadRepositoryAccess rule allows "delete" on repository path "app/x"'
    )
    assert _body(error)["details"] == {"group": GROUP, "kind": "payloadrepositorytags"}


def test_access_denied_list_names_the_get_access_verb() -> None:
    error = errors.access_denied("bob", "list", "ns", None, "app")
    assert error.message.endswith(': no PayloadRepositoryAccess rule allows "get" on repository path "app"')


def test_invalid_is_kube_apiservers_new_invalid() -> None:
    # errors.NewInvalid: `Kind.group "" is invalid: ` and the aggregate of the field errors, each once,
    # a single one bare and several in brackets; a cause per error.
    one = {"reason": "FieldValueForbidden", "message": "Forbidden: no", "field": "a"}
    two = {
        "reason": "FieldValueNotSupported",
        "message": 'Unsupported value: "x": supported values: "y"',
        "field": "b",
    }
    body = _body(errors.invalid("ListOptions", "meta.k8s.io", [one]))
    assert (body["code"], body["reason"]) == (422, "Invalid")
    assert body["message"] == 'ListOptions.meta.k8s.io "" is invalid: a: Forbidden: no'
    assert body["details"] == {"kind": "ListOptions", "group": "meta.k8s.io", "causes": [one]}
    body = _body(errors.invalid("DeleteOptions", "meta.k8s.io", [one, two, one]))
    assert body["message"] == (
        'DeleteOptions.meta.k8s.io "" is invalid: '
        '[a: Forbidden: no, b: Unsupported value: "x": supported values: "y"]'
    )
    assert body["details"]["causes"] == [one, two, one]


_namespaces = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
_component = st.from_regex(r"[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_paths = st.lists(_component, min_size=1, max_size=4)
_tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)


@pytest.mark.property
@given(namespace=_namespaces, path=_paths.map("/".join), tag=_tags)
def test_uid_is_uuid5_of_the_name_computed_without_uuid_objects(namespace: str, path: str, tag: str) -> None:
    # The fast spelling must give exactly the uid every earlier version gave for the same tag.
    expected = str(uuid.uuid5(_UID_NAMESPACE, f"{namespace}/{path}:{tag}"))
    assert uid_for(TagRef(namespace, path, tag)) == expected
    assert uids_of(uid_prefix(namespace, path), [tag]) == [expected]


@pytest.mark.property
@given(
    namespace=_namespaces,
    path=_paths.map("/".join),
    tags=st.lists(st.one_of(_tags, st.text(min_size=1, max_size=12)), max_size=40),
)
def test_uids_of_many_tags_at_once_are_each_tags_uuid5(namespace: str, path: str, tags: list[str]) -> None:
    # Eight tags and more are spelled from one hex of all their digests, fewer one by one.
    expected = [str(uuid.uuid5(_UID_NAMESPACE, f"{namespace}/{path}:{tag}")) for tag in tags]
    assert uids_of(uid_prefix(namespace, path), tags) == expected
    assert uids_of(uid_prefix(namespace, path), tuple(tags)) == expected


def test_uids_of_a_whole_chunk_are_each_tags_uuid5() -> None:
    tags = [f"v{i}.{i % 7}" for i in range(500)]
    expected = [uid_for(TagRef("team", "apps/web", tag)) for tag in tags]
    assert uids_of(uid_prefix("team", "apps/web"), tags) == expected


@pytest.mark.property
@given(
    namespace=_namespaces,
    path=_paths.map("/".join),
    tags=st.lists(_tags, min_size=8, max_size=60),
    odd=st.one_of(st.none(), st.text(min_size=0, max_size=4).map(lambda text: f"{text}\0")),
)
def test_uids_of_a_chunk_of_grammar_tags_are_each_tags_uuid5(
    namespace: str, path: str, tags: list[str], odd: str | None
) -> None:
    # A chunk's hashed bytes are made from one text split at NULs between the tags; a tag with a
    # NUL of its own (outside the grammar) takes the plain way. Either way each uid is its uuid5.
    chosen = tags if odd is None else [*tags[:8], odd, *tags[8:]]
    expected = [str(uuid.uuid5(_UID_NAMESPACE, f"{namespace}/{path}:{tag}")) for tag in chosen]
    assert uids_of(uid_prefix(namespace, path), tuple(chosen)) == expected
