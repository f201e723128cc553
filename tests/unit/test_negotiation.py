"""Accept negotiation: Table, PartialObjectMetadata(List) or the full JSON form.

See docs/api.md, "Content negotiation".
"""

from __future__ import annotations

import pytest

from payloadtags.api.errors import ApiError
from payloadtags.api.negotiation import JSON_TYPE, Form, MediaType, negotiate
from payloadtags.api.render import render_list, render_object
from payloadtags.model import ListMeta, tag_object
from payloadtags.names import TagRef

# What kubectl 1.32 sends for `kubectl get` (docs/api.md, "What kubectl sends").
KUBECTL_TABLE = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
    "application/json"
)
# What client-go's metadata client (GC, namespace controller) sends (docs/api.md, "Content negotiation").
METADATA_LIST = (
    "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,"
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
)
METADATA_OBJECT = (
    "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,"
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
)
TABLE_V1 = "application/json;as=Table;v=v1;g=meta.k8s.io"
TABLE_V1BETA1 = "application/json;as=Table;v=v1beta1;g=meta.k8s.io"


@pytest.mark.parametrize("collection", [True, False])
def test_kubectl_get_picks_table_v1(collection: bool) -> None:
    media = negotiate(KUBECTL_TABLE, collection=collection)
    assert media == MediaType(Form.TABLE, TABLE_V1, "v1")
    assert media.meta_api_version == "meta.k8s.io/v1"


def test_metadata_client_list_picks_partial_object_metadata_list() -> None:
    media = negotiate(METADATA_LIST, collection=True)
    assert media.form is Form.PARTIAL
    assert media.content_type == "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
    assert media.meta_api_version == "meta.k8s.io/v1"


def test_metadata_client_get_picks_partial_object_metadata() -> None:
    media = negotiate(METADATA_OBJECT, collection=False)
    assert media.form is Form.PARTIAL
    assert media.content_type == "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"


@pytest.mark.parametrize("collection", [True, False])
def test_metadata_client_watch_picks_partial_object_metadata(collection: bool) -> None:
    # client-go's metadata.Client.Watch asks for the singular kind, on the collection (the garbage
    # collector's watch) as on the older watch of one object.
    media = negotiate(METADATA_OBJECT, collection=collection, watch=True)
    assert media.form is Form.PARTIAL
    assert media.content_type == "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"


@pytest.mark.parametrize("collection", [True, False])
def test_a_watch_asking_for_partial_object_metadata_lists_gets_metadata_too(collection: bool) -> None:
    media = negotiate(METADATA_LIST, collection=collection, watch=True)
    assert media.form is Form.PARTIAL
    assert media.content_type == "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"


def test_partial_list_on_a_single_object_falls_back_to_json() -> None:
    assert negotiate(METADATA_LIST, collection=False) == MediaType(Form.FULL, JSON_TYPE)


def test_partial_object_on_a_collection_falls_back_to_json() -> None:
    assert negotiate(METADATA_OBJECT, collection=True) == MediaType(Form.FULL, JSON_TYPE)


@pytest.mark.parametrize(
    "accept",
    [
        pytest.param(None, id="absent"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("*/*", id="any"),
        pytest.param("application/*", id="application-any"),
        pytest.param("application/json", id="kubectl-o-yaml"),
        pytest.param("application/json, */*", id="kubectl-discovery-fallback"),
        pytest.param("application/json;stream=watch", id="stream-parameter"),
        pytest.param("application/json;q=0.9", id="quality"),
        pytest.param("Application/JSON", id="case-insensitive-type"),
        pytest.param("text/html, application/json", id="skips-unsupported-first"),
        pytest.param(",application/json", id="empty-entry"),
    ],
)
@pytest.mark.parametrize("collection", [True, False])
def test_plain_json(accept: str | None, collection: bool) -> None:
    assert negotiate(accept, collection=collection) == MediaType(Form.FULL, JSON_TYPE)


def test_first_supported_entry_wins() -> None:
    assert negotiate("application/json," + TABLE_V1, collection=True).form is Form.FULL
    assert negotiate(TABLE_V1BETA1 + "," + TABLE_V1, collection=True).meta_version == "v1beta1"


def test_protobuf_table_is_skipped_for_json_table() -> None:
    accept = "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io," + TABLE_V1
    assert negotiate(accept, collection=True).form is Form.TABLE


def test_v1beta1_table() -> None:
    media = negotiate(TABLE_V1BETA1, collection=True)
    assert media == MediaType(Form.TABLE, TABLE_V1BETA1, "v1beta1")
    assert media.meta_api_version == "meta.k8s.io/v1beta1"


def test_v1beta1_table_is_rendered_as_meta_v1beta1() -> None:
    media = negotiate(TABLE_V1BETA1, collection=True)
    obj = tag_object("r.example", TagRef("ns", "app", "v1"))
    table = render_list([obj], ListMeta(resource_version="1"), media)
    assert table["apiVersion"] == "meta.k8s.io/v1beta1"
    assert table["rows"][0]["object"]["apiVersion"] == "meta.k8s.io/v1beta1"
    single = render_object(obj, negotiate(TABLE_V1BETA1, collection=False))
    assert single["apiVersion"] == "meta.k8s.io/v1beta1"


def test_parameter_order_and_spacing_do_not_matter() -> None:
    media = negotiate("application/json; g=meta.k8s.io; v=v1; as=Table", collection=True)
    assert media == MediaType(Form.TABLE, TABLE_V1, "v1")


def test_quoted_parameter_values() -> None:
    assert negotiate('application/json;as="Table";v="v1";g="meta.k8s.io"', collection=True).form is Form.TABLE


@pytest.mark.parametrize(
    "accept",
    [
        pytest.param("application/vnd.kubernetes.protobuf", id="protobuf"),
        pytest.param(
            "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/vnd.kubernetes.protobuf",
            id="protobuf-table",
        ),
        pytest.param("application/cbor", id="cbor"),
        pytest.param("application/yaml", id="yaml"),
        pytest.param("text/plain", id="text"),
        pytest.param("application/json;as=Table;v=v2;g=meta.k8s.io", id="unknown-table-version"),
        pytest.param("application/json;as=Table;g=meta.k8s.io", id="table-without-version"),
        pytest.param("application/json;as=Table;v=v1", id="table-without-group"),
        pytest.param("application/json;as=Table;v=v1;g=example.com", id="table-of-another-group"),
        pytest.param("application/json;as=APIGroupDiscoveryList;v=v2;g=apidiscovery.k8s.io", id="discovery"),
        pytest.param("application/json;as=Unknown;v=v1;g=meta.k8s.io", id="unknown-kind"),
    ],
)
def test_not_acceptable(accept: str) -> None:
    with pytest.raises(ApiError) as caught:
        negotiate(accept, collection=True)
    assert caught.value.code == 406
    assert caught.value.reason == "NotAcceptable"
    assert accept in caught.value.message


def test_json_fallback_after_an_unsupported_transform() -> None:
    accept = "application/json;as=Table;v=v2;g=meta.k8s.io,application/json"
    assert negotiate(accept, collection=True) == MediaType(Form.FULL, JSON_TYPE)
