"""Accept negotiation: Table, PartialObjectMetadata(List) or the full form, in JSON or YAML.

See docs/api.md, "Content negotiation".
"""

from __future__ import annotations

import pytest

from payloadtags.api import negotiation
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
        pytest.param("text/plain", id="text"),
        pytest.param("application/json;q=0", id="refused-by-q0"),
        pytest.param("application/yaml;as=Table;v=v1;g=example.com", id="yaml-table-of-another-group"),
        pytest.param("*/json", id="wildcard-type-only"),
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
    accepted = caught.value.message.split(": ", 1)[1].rsplit(" (requested", 1)[0].split(", ")
    assert accepted == [
        "application/json",
        "application/yaml",
        "application/json;as=Table;v=v1;g=meta.k8s.io",
        "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
    ]


def test_json_fallback_after_an_unsupported_transform() -> None:
    accept = "application/json;as=Table;v=v2;g=meta.k8s.io,application/json"
    assert negotiate(accept, collection=True) == MediaType(Form.FULL, JSON_TYPE)


_FULL_JSON = MediaType(Form.FULL, JSON_TYPE)


# -- preference: q, then concrete before wildcard, as goautoneg (kube-apiserver) sorts Accept ------------


def test_a_wildcard_first_does_not_hide_a_table_after_it() -> None:
    assert negotiate("*/*, " + TABLE_V1, collection=True) == MediaType(Form.TABLE, TABLE_V1, "v1")
    assert negotiate("application/*," + TABLE_V1BETA1, collection=True).meta_version == "v1beta1"


def test_a_higher_q_wins_over_an_earlier_entry() -> None:
    assert negotiate(TABLE_V1 + ";q=0.1, application/json", collection=True) == _FULL_JSON
    assert negotiate("application/json;q=0.5," + TABLE_V1 + ";q=0.9", collection=True).form is Form.TABLE


def test_equal_preference_keeps_the_order_given() -> None:
    # kubectl's own Accept: v1 before v1beta1 before plain JSON, all q=1 and concrete.
    assert negotiate(KUBECTL_TABLE, collection=True).meta_version == "v1"
    same_q = TABLE_V1BETA1 + ";q=0.8," + TABLE_V1 + ";q=0.8"
    assert negotiate(same_q, collection=True).meta_version == "v1beta1"


def test_q_decides_before_specificity() -> None:
    assert negotiate("*/*;q=1," + TABLE_V1 + ";q=0.5", collection=True).form is Form.FULL


@pytest.mark.parametrize("accept", ["*", " * ", "*;q=0.5", "text/html,*"])
def test_a_bare_star_is_any_type(accept: str) -> None:
    assert negotiate(accept, collection=True) == MediaType(Form.FULL, JSON_TYPE)


def test_q_zero_is_not_acceptable_and_others_still_are() -> None:
    assert negotiate(TABLE_V1 + ";q=0,application/json", collection=True).form is Form.FULL
    assert negotiate("application/json;q=0.0,application/yaml", collection=True).yaml


def test_q_zero_on_a_type_refuses_it_under_a_wildcard_too() -> None:
    # kube-apiserver: the entry that names a type most closely decides whether it is refused.
    assert negotiate("application/json;q=0, */*", collection=True).yaml
    with pytest.raises(ApiError):
        negotiate("application/*;q=0, */*", collection=True)
    assert not negotiate("application/*;q=0, application/json, */*", collection=True).yaml


def test_a_q_that_is_no_number_is_zero() -> None:
    # goautoneg reads it as 0: not acceptable.
    with pytest.raises(ApiError):
        negotiate(TABLE_V1 + ";q=x", collection=True)
    assert negotiate(TABLE_V1 + ";q=x,application/json;q=0.1", collection=True).form is Form.FULL


def test_parsed_accept_values_are_cached() -> None:
    negotiate(KUBECTL_TABLE, collection=True)
    before = negotiation._negotiated.cache_info().hits
    negotiate(KUBECTL_TABLE, collection=True)
    assert negotiation._negotiated.cache_info().hits == before + 1


# -- YAML --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("collection", [True, False])
def test_yaml(collection: bool) -> None:
    media = negotiate("application/yaml", collection=collection)
    assert media == MediaType(Form.FULL, "application/yaml", yaml=True)
    assert media.as_json() == MediaType(Form.FULL, JSON_TYPE)


def test_yaml_table_and_metadata() -> None:
    media = negotiate("application/yaml;as=Table;v=v1;g=meta.k8s.io", collection=True)
    assert media == MediaType(Form.TABLE, "application/yaml;as=Table;v=v1;g=meta.k8s.io", "v1", yaml=True)
    assert media.as_json() == MediaType(Form.TABLE, TABLE_V1, "v1")
    partial = negotiate("application/yaml;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io", collection=True)
    assert (partial.form, partial.yaml) == (Form.PARTIAL, True)


def test_json_comes_before_yaml_for_a_wildcard() -> None:
    assert negotiate("application/*", collection=True) == MediaType(Form.FULL, JSON_TYPE)
    assert negotiate("application/yaml,application/json", collection=True).yaml
    assert not negotiate("application/json,application/yaml", collection=True).yaml


def test_a_watch_is_never_yaml() -> None:
    with pytest.raises(ApiError) as caught:
        negotiate("application/yaml", collection=True, watch=True)
    assert caught.value.code == 406
    # What a watch is served in, as kube-apiserver lists its streaming media types: not YAML.
    assert caught.value.message == (
        "only the following media types are accepted: application/json;stream=watch, "
        "application/json;as=Table;v=v1;g=meta.k8s.io, "
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io, "
        "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io, "
        "application/json;as=PartialObjectMetadata;v=v1beta1;g=meta.k8s.io, "
        "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io, "
        "application/json;as=PartialObjectMetadataList;v=v1beta1;g=meta.k8s.io (requested: application/yaml)"
    )
    # Each form it names is one a watch is served in.
    listed = caught.value.message.split(": ", 1)[1].rsplit(" (requested", 1)[0].split(", ")
    for form in listed[1:]:
        assert negotiate(form, collection=True, watch=True).content_type == form
    assert negotiate("application/yaml,*/*", collection=True, watch=True) == MediaType(Form.FULL, JSON_TYPE)


# -- pretty ------------------------------------------------------------------------------------------


def test_pretty_parameter() -> None:
    pretty = MediaType(Form.FULL, JSON_TYPE, pretty=True)
    assert negotiate("application/json;pretty=1", collection=True) == pretty
    assert not negotiate("application/json;pretty=true", collection=True).pretty  # only "1", as upstream
    table = negotiate(TABLE_V1 + ";pretty=1", collection=False)
    assert table.pretty
    assert table.as_json() == MediaType(Form.TABLE, TABLE_V1, "v1")
    assert not negotiate("application/json;pretty=1", collection=True, watch=True).pretty
