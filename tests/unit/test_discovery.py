"""Discovery documents (docs/api.md, "Discovery"): aggregated v2/v2beta1, legacy shapes, ETags."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from payloadtags.api import discovery
from payloadtags.api.discovery import (
    API_GROUP,
    API_GROUP_LIST,
    API_RESOURCE_LIST,
    API_VERSIONS,
    aggregated,
    aggregated_version,
    etag,
)

GROUP = "payload-registry.deckhouse.io"
VERBS = {"get", "list", "watch", "delete", "deletecollection"}

# kubectl 1.32 for /api and /apis (docs/api.md, "What kubectl sends").
KUBECTL = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
)
# The aggregator's discovery manager (docs/api.md, "Callers that are not kubectl").
AGGREGATOR = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
)


def _wire(body: Any) -> Any:
    return json.loads(json.dumps(body))


# -- which form was asked for ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        pytest.param(KUBECTL, "v2", id="kubectl"),
        pytest.param(AGGREGATOR, "v2", id="aggregator"),
        pytest.param(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
            "v2beta1",
            id="v2beta1-only",
        ),
        pytest.param(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,"
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            "v2beta1",
            id="first-entry-wins",
        ),
        pytest.param(
            "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
            + KUBECTL,
            "v2",
            id="protobuf-skipped",
        ),
        pytest.param(
            "application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList," + AGGREGATOR,
            "v2",
            id="unknown-version-skipped",
        ),
        pytest.param(
            "application/json; g=apidiscovery.k8s.io; v=v2; as=APIGroupDiscoveryList", "v2", id="spaces"
        ),
        pytest.param(
            "application/json;as=APIGroupDiscoveryList;v=v2;g=apidiscovery.k8s.io", "v2", id="order"
        ),
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("application/json", None, id="json"),
        pytest.param("application/json, */*", None, id="kubectl-legacy"),
        pytest.param("*/*", None, id="any"),
        pytest.param("application/json," + AGGREGATOR, None, id="legacy-first"),
        pytest.param("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroup", None, id="other-kind"),
        pytest.param("application/json;g=example.com;v=v2;as=APIGroupDiscoveryList", None, id="other-group"),
    ],
)
def test_aggregated_version(accept: str | None, expected: str | None) -> None:
    assert aggregated_version(accept) == expected


# -- aggregated documents --------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v2", "v2beta1"])
def test_aggregated_shape(version: str) -> None:
    body = _wire(aggregated(f"apidiscovery.k8s.io/{version}"))
    assert body == {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": f"apidiscovery.k8s.io/{version}",
        "metadata": {},
        "items": [
            {
                "metadata": {"name": GROUP},
                "versions": [
                    {
                        "version": "v1alpha1",
                        "freshness": "Current",
                        "resources": [
                            {
                                "resource": "payloadrepositorytags",
                                "singularResource": "payloadrepositorytag",
                                "scope": "Namespaced",
                                "responseKind": {
                                    "group": GROUP,
                                    "version": "v1alpha1",
                                    "kind": "PayloadRepositoryTag",
                                },
                                "verbs": body["items"][0]["versions"][0]["resources"][0]["verbs"],
                                "shortNames": ["prt"],
                                # No categories: upstream's field is omitempty.
                            }
                        ],
                    }
                ],
            }
        ],
    }


def test_aggregated_for_the_core_group_is_empty() -> None:
    assert _wire(aggregated("apidiscovery.k8s.io/v2", with_group=False)) == {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": [],
    }


def _aggregated_resource() -> dict[str, Any]:
    resource: dict[str, Any] = aggregated("apidiscovery.k8s.io/v2")["items"][0]["versions"][0]["resources"][0]
    return resource


def _legacy_resource() -> dict[str, Any]:
    resource: dict[str, Any]
    [resource] = API_RESOURCE_LIST["resources"]
    return resource


@pytest.mark.parametrize("resource", [_aggregated_resource, _legacy_resource], ids=["aggregated", "legacy"])
def test_verbs_are_exactly_get_list_watch_delete_deletecollection(resource: Any) -> None:
    verbs = resource()["verbs"]
    assert sorted(verbs) == sorted(VERBS) == ["delete", "deletecollection", "get", "list", "watch"]
    assert len(verbs) == len(set(verbs))
    assert not {"create", "update", "patch"} & set(verbs)


@pytest.mark.parametrize("resource", [_aggregated_resource, _legacy_resource], ids=["aggregated", "legacy"])
def test_categories_never_contain_all(resource: Any) -> None:
    assert "all" not in resource().get("categories", [])


@pytest.mark.parametrize("resource", [_aggregated_resource, _legacy_resource], ids=["aggregated", "legacy"])
def test_short_name_prt(resource: Any) -> None:
    assert resource()["shortNames"] == ["prt"]


def test_aggregated_documents_do_not_share_mutable_state() -> None:
    first = aggregated("apidiscovery.k8s.io/v2")
    first["items"][0]["versions"][0]["resources"][0]["verbs"].append("patch")
    assert "patch" not in _aggregated_resource()["verbs"]


# -- legacy documents --------------------------------------------------------------------------------

_VERSION = {"groupVersion": f"{GROUP}/v1alpha1", "version": "v1alpha1"}


def test_api_group_list() -> None:
    assert _wire(API_GROUP_LIST) == {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [{"name": GROUP, "versions": [_VERSION], "preferredVersion": _VERSION}],
    }


def test_api_group() -> None:
    assert _wire(API_GROUP) == {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [_VERSION],
        "preferredVersion": _VERSION,
    }


def test_api_resource_list() -> None:
    body = _wire(API_RESOURCE_LIST)
    assert body["kind"] == "APIResourceList"
    assert body["apiVersion"] == "v1"
    assert body["groupVersion"] == f"{GROUP}/v1alpha1"
    [resource] = body["resources"]
    assert {k: v for k, v in resource.items() if k != "verbs"} == {
        "name": "payloadrepositorytags",
        "singularName": "payloadrepositorytag",
        "namespaced": True,
        "kind": "PayloadRepositoryTag",
        "shortNames": ["prt"],
    }


def test_api_versions_for_the_core_group_has_no_versions() -> None:
    assert _wire(API_VERSIONS) == {"kind": "APIVersions", "versions": [], "serverAddressByClientCIDRs": []}


# -- ETag ----------------------------------------------------------------------------------------------


def test_etag_is_a_quoted_string_and_stable() -> None:
    tag = etag(API_RESOURCE_LIST)
    assert tag.startswith('"') and tag.endswith('"') and len(tag) > 2
    assert '"' not in tag[1:-1]
    assert etag(API_RESOURCE_LIST) == tag
    assert etag(copy.deepcopy(API_RESOURCE_LIST)) == tag
    assert etag(aggregated("apidiscovery.k8s.io/v2")) == etag(aggregated("apidiscovery.k8s.io/v2"))


def test_etag_ignores_key_order() -> None:
    assert etag({"a": 1, "b": [1, 2]}) == etag({"b": [1, 2], "a": 1})


def test_etag_changes_with_content() -> None:
    changed = copy.deepcopy(API_RESOURCE_LIST)
    changed["resources"][0]["verbs"].append("patch")
    assert etag(changed) != etag(API_RESOURCE_LIST)
    assert etag(aggregated("apidiscovery.k8s.io/v2")) != etag(aggregated("apidiscovery.k8s.io/v2beta1"))
    assert etag(API_GROUP_LIST) != etag(API_GROUP)
    assert etag({"a": [1, 2]}) != etag({"a": [2, 1]})


def test_module_documents_are_valid_json() -> None:
    for name in ("API_GROUP", "API_GROUP_LIST", "API_RESOURCE_LIST", "API_VERSIONS"):
        json.dumps(getattr(discovery, name))
