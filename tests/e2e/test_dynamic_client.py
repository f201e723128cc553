"""End to end with the Python ``kubernetes`` package's DynamicClient, as a script or operator uses it.

The client blocks, and payloadtags runs on the test reactor, so every client call runs in a thread
(``deferToThread``) while the reactor keeps serving. Discovery is cached in the test's tmp dir.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError
from twisted.internet.threads import deferToThread

from payloadtags.http import channel
from payloadtags.names import encode_name
from tests.support import images

pytestmark = [pytest.mark.registry]

API_VERSION = "payload-registry.deckhouse.io/v1alpha1"
KIND = "PayloadRepositoryTag"
HOST = "payload-registry.example.com"

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await deferToThread(fn, *args, **kwargs)


@pytest_twisted.async_yield_fixture
async def dynamic(monkeypatch: pytest.MonkeyPatch, api: Any, pki: Any, tmp_path: Path) -> Any:
    """A DynamicClient for the admin certificate, discovery cached under tmp_path.

    ``monkeypatch`` comes before ``api``, so it is undone after the server has stopped."""
    configuration = k8s.Configuration()
    configuration.host = api.url
    configuration.ssl_ca_cert = str(pki.server_ca.cert_file)
    configuration.cert_file = str(pki.admin.cert_file)
    configuration.key_file = str(pki.admin.key_file)
    api_client = k8s.ApiClient(configuration)
    client = await in_thread(DynamicClient, api_client, cache_file=str(tmp_path / "discovery.json"))
    yield client
    await in_thread(api_client.close)
    # The connection of an error answer (404, 409) never goes back to the client's pool: the response
    # that holds it is in a garbage cycle with the exception's traceback, so close() cannot close it,
    # and the server's stop would wait out its close grace (2 s) for a close_notify that never comes.
    # The grace is for clients still reading an answer; these tests are not about it.
    monkeypatch.setattr(channel, "CLOSE_GRACE", 0.0)


async def tags_resource(dynamic: DynamicClient) -> Any:
    return await in_thread(dynamic.resources.get, api_version=API_VERSION, kind=KIND)


def namespace_of(repo: str) -> str:
    return repo.split("/", 1)[0]


@pytest_twisted.ensureDeferred
async def test_discovery_finds_the_resource(dynamic, tmp_path):
    resource = await tags_resource(dynamic)

    assert resource.name == "payloadrepositorytags"
    assert resource.kind == KIND
    assert resource.group_version == API_VERSION
    assert resource.namespaced is True
    assert resource.short_names == ["prt"]
    assert sorted(resource.verbs) == ["delete", "deletecollection", "get", "list", "watch"]
    assert (tmp_path / "discovery.json").exists()


@pytest_twisted.ensureDeferred
async def test_list_in_a_namespace(dynamic, registry, repo):
    ns = namespace_of(repo)
    images.push_oci_image(registry, f"{ns}/web", "v2")
    images.push_oci_image(registry, f"{ns}/api", "v1")
    images.push_oci_image(registry, f"{ns}-other/api", "v9")
    resource = await tags_resource(dynamic)

    listing = await in_thread(resource.get, namespace=ns)

    assert listing.kind == "PayloadRepositoryTagList"
    assert listing.apiVersion == API_VERSION
    items = [item.to_dict() for item in listing.items]
    assert [(i["metadata"]["name"], i["metadata"]["namespace"]) for i in items] == [
        (encode_name("api", "v1"), ns),
        (encode_name("web", "v2"), ns),
    ]
    assert [i["spec"] for i in items] == [
        {"address": f"{HOST}/{ns}/api:v1", "repositoryPath": "api", "tag": "v1"},
        {"address": f"{HOST}/{ns}/web:v2", "repositoryPath": "web", "tag": "v2"},
    ]
    assert all("status" not in i for i in items)


@pytest_twisted.ensureDeferred
async def test_list_with_selectors(dynamic, registry, repo):
    ns = namespace_of(repo)
    images.push_oci_image(registry, f"{ns}/app", "v1")
    images.push_oci_image(registry, f"{ns}/app", "v2")
    resource = await tags_resource(dynamic)
    wanted = encode_name("app", "v2")

    by_label = await in_thread(resource.get, namespace=ns, label_selector="foo=bar")
    by_field = await in_thread(resource.get, namespace=ns, field_selector=f"metadata.name={wanted}")

    assert by_label.items == []
    assert [item.metadata.name for item in by_field.items] == [wanted]


@pytest_twisted.ensureDeferred
async def test_get_by_name_has_status(dynamic, registry, repo):
    ns = namespace_of(repo)
    digest = images.push_oci_image(registry, f"{ns}/app", "v1", labels={"team": "a"})
    resource = await tags_resource(dynamic)

    obj = await in_thread(resource.get, name=encode_name("app", "v1"), namespace=ns)

    assert obj.kind == KIND
    assert obj.metadata.name == encode_name("app", "v1")
    assert obj.metadata.namespace == ns
    assert obj.spec.repositoryPath == "app"
    assert obj.spec.tag == "v1"
    assert obj.status.digest == digest
    assert obj.status.manifest.mediaType == images.OCI_MANIFEST
    assert obj.status.config.config.Labels.team == "a"


@pytest_twisted.ensureDeferred
async def test_get_missing_name_raises_not_found(dynamic, registry, repo):
    ns = namespace_of(repo)
    images.push_oci_image(registry, f"{ns}/app", "v1")
    resource = await tags_resource(dynamic)
    missing = encode_name("app", "v2")

    with pytest.raises(NotFoundError) as caught:
        await in_thread(resource.get, name=missing, namespace=ns)

    assert caught.value.status == 404
    assert caught.value.summary() == (
        f'payloadrepositorytags.payload-registry.deckhouse.io "{missing}" not found'
    )


@pytest_twisted.ensureDeferred
async def test_delete_dry_run_deletes_nothing(dynamic, registry, repo):
    ns = namespace_of(repo)
    digest = images.push_oci_image(registry, f"{ns}/app", "v1")
    resource = await tags_resource(dynamic)

    await in_thread(resource.delete, name=encode_name("app", "v1"), namespace=ns, body={"dryRun": ["All"]})

    assert images.list_tags(registry, f"{ns}/app") == ["v1"]
    assert images.resolve(registry, f"{ns}/app", "v1") == digest
    again = await in_thread(resource.get, name=encode_name("app", "v1"), namespace=ns)
    assert again.status.digest == digest


@pytest_twisted.ensureDeferred
async def test_delete_dry_run_in_the_query_only_deletes_nothing(dynamic, registry, repo):
    ns = namespace_of(repo)
    digest = images.push_oci_image(registry, f"{ns}/app", "v1")
    resource = await tags_resource(dynamic)

    # dry_run= puts dryRun=All in the query string; the body then carries no dryRun at all.
    await in_thread(resource.delete, name=encode_name("app", "v1"), namespace=ns, dry_run="All")

    assert images.list_tags(registry, f"{ns}/app") == ["v1"]
    assert images.resolve(registry, f"{ns}/app", "v1") == digest


@pytest_twisted.ensureDeferred
async def test_delete_with_a_wrong_uid_precondition_is_a_conflict(dynamic, registry, repo):
    ns = namespace_of(repo)
    images.push_oci_image(registry, f"{ns}/app", "v1")
    resource = await tags_resource(dynamic)
    target = encode_name("app", "v1")
    uid = (await in_thread(resource.get, name=target, namespace=ns)).metadata.uid

    with pytest.raises(ConflictError) as caught:
        await in_thread(
            resource.delete,
            name=target,
            namespace=ns,
            body={"preconditions": {"uid": "wrong"}},
            propagation_policy="Foreground",
        )

    assert caught.value.status == 409
    assert caught.value.summary() == (
        f'Operation cannot be fulfilled on PayloadRepositoryTag.payload-registry.deckhouse.io "{target}": '
        f"the UID in the precondition (wrong) does not match the UID in record ({uid}). "
        "The object might have been deleted and then recreated"
    )
    assert images.list_tags(registry, f"{ns}/app") == ["v1"]


@pytest_twisted.ensureDeferred
async def test_delete_for_real_removes_the_tag_and_keeps_its_sibling(dynamic, registry, repo):
    ns = namespace_of(repo)
    repository = f"{ns}/app"
    digest = images.push_oci_image(registry, repository, "v1")
    images.tag_manifest(registry, repository, digest, "also")
    resource = await tags_resource(dynamic)
    target = encode_name("app", "v1")
    uid = (await in_thread(resource.get, name=target, namespace=ns)).metadata.uid

    await in_thread(
        resource.delete,
        name=target,
        namespace=ns,
        body={"preconditions": {"uid": uid}},
        propagation_policy="Foreground",
    )

    assert images.list_tags(registry, repository) == ["also"]
    assert images.resolve(registry, repository, "also") == digest
    with pytest.raises(NotFoundError):
        await in_thread(resource.get, name=target, namespace=ns)
    listing = await in_thread(resource.get, namespace=ns)
    assert [item.metadata.name for item in listing.items] == [encode_name("app", "also")]
