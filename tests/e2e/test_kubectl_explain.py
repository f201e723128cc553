"""kubectl explain with the real kubectl, and the OpenAPI endpoints it and the aggregator use.

The server runs in-process (client-certificate auth, AlwaysAllow); explain never reaches the registry,
so the server is pointed at a port where nothing listens. What kubectl prints is checked against the
document the server serves: header and field lines exactly, descriptions word for word (kubectl
re-wraps them at 80 columns, so whitespace is normalised before comparing).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import attrs
import pytest
import pytest_twisted

from payloadtags.api import openapi
from tests.support.harness import ServerUnderTest
from tests.support.kubectl import Kubectl, Result
from tests.support.registry_server import free_port

GROUP = "payload-registry.deckhouse.io"
SCHEMAS = openapi.V3_GROUP_VERSION["components"]["schemas"]
TAG = SCHEMAS["io.deckhouse.payload-registry.v1alpha1.PayloadRepositoryTag"]
SPEC = SCHEMAS["io.deckhouse.payload-registry.v1alpha1.PayloadRepositoryTagSpec"]
STATUS = SCHEMAS["io.deckhouse.payload-registry.v1alpha1.PayloadRepositoryTagStatus"]
OBJECT_META = SCHEMAS["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]
HEADER = [f"GROUP:      {GROUP}", "KIND:       PayloadRepositoryTag", "VERSION:    v1alpha1"]
GV_PATH = f"/openapi/v3/apis/{GROUP}/v1alpha1"
PROTOBUF_V2 = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"


# --- helpers ----------------------------------------------------------------------------------------


def words(text: str) -> str:
    return " ".join(text.split())


@attrs.frozen
class Explained:
    """kubectl explain's plaintext output, taken apart."""

    header: list[str]
    field: str | None  # the "FIELD: name <type>" line, for a path below the kind
    description: str  # whitespace-normalised
    fields: dict[str, str]  # name → "<type>" or "<type> -required-"
    field_descriptions: dict[str, str]  # name → whitespace-normalised description


def parse(out: str) -> Explained:
    lines = out.splitlines()
    header = lines[:3]
    field = next((line for line in lines if line.startswith("FIELD: ")), None)
    description: list[str] = []
    fields: dict[str, str] = {}
    field_descriptions: dict[str, list[str]] = {}
    section = None
    current = None
    for line in lines[3:]:
        if line in ("DESCRIPTION:", "FIELDS:"):
            section = line
            continue
        if section == "DESCRIPTION:" and line.startswith("    "):
            description.append(line)
        elif section == "FIELDS:" and line.startswith("  ") and not line.startswith("   "):
            current, _, kind = line.strip().partition("\t")
            fields[current] = kind
            field_descriptions[current] = []
        elif section == "FIELDS:" and line.startswith("    ") and current is not None:
            field_descriptions[current].append(line)
    return Explained(
        header,
        field,
        words(" ".join(description)),
        fields,
        {name: words(" ".join(text)) for name, text in field_descriptions.items()},
    )


def ok(result: Result) -> Result:
    assert result.code == 0, f"kubectl exited {result.code}\nstdout: {result.out}\nstderr: {result.err}"
    assert result.err == "", result.err
    return result


def described(schema: dict[str, Any]) -> dict[str, str]:
    return {name: words(prop["description"]) for name, prop in schema["properties"].items()}


@pytest_twisted.async_yield_fixture
async def server(make_server: Any) -> Any:
    # Nothing listens on the registry port: explain and the OpenAPI documents never touch it.
    yield await make_server(f"http://127.0.0.1:{free_port()}")


@pytest.fixture
def kubectl(server: ServerUnderTest, kubectl_for: Callable[..., Kubectl]) -> Kubectl:
    return kubectl_for(server)


# --- kubectl explain --------------------------------------------------------------------------------


@pytest.mark.kubectl
@pytest_twisted.ensureDeferred
async def test_explain_the_kind(kubectl):
    result = parse(ok(await kubectl("explain", "prt")).out)

    assert result.header == HEADER
    assert result.field is None
    assert result.description == words(TAG["description"])
    assert result.fields == {
        "apiVersion": "<string>",
        "kind": "<string>",
        "metadata": "<ObjectMeta>",
        "spec": "<PayloadRepositoryTagSpec> -required-",
        "status": "<PayloadRepositoryTagStatus>",
    }
    assert result.field_descriptions == described(TAG)


@pytest.mark.kubectl
@pytest_twisted.ensureDeferred
async def test_explain_by_full_resource_name_is_the_same(kubectl):
    short = ok(await kubectl("explain", "prt")).out
    assert ok(await kubectl("explain", f"payloadrepositorytags.{GROUP}")).out == short
    assert ok(await kubectl("explain", "payloadrepositorytag")).out == short


@pytest.mark.kubectl
@pytest_twisted.ensureDeferred
async def test_explain_spec(kubectl):
    result = parse(ok(await kubectl("explain", "prt.spec")).out)

    assert result.header == HEADER
    assert result.field == "FIELD: spec <PayloadRepositoryTagSpec>"
    # kubectl prints the field's description, then its type's.
    assert result.description == words(TAG["properties"]["spec"]["description"] + " " + SPEC["description"])
    assert result.fields == {
        "address": "<string> -required-",
        "repositoryPath": "<string> -required-",
        "tag": "<string> -required-",
    }
    assert result.field_descriptions == described(SPEC)
    assert result.field_descriptions["repositoryPath"].startswith(
        "Path to the repository within the namespace"
    )


@pytest.mark.kubectl
@pytest_twisted.ensureDeferred
async def test_explain_status(kubectl):
    result = parse(ok(await kubectl("explain", "prt.status")).out)

    assert result.header == HEADER
    assert result.field == "FIELD: status <PayloadRepositoryTagStatus>"
    assert result.description == words(
        TAG["properties"]["status"]["description"] + " " + STATUS["description"]
    )
    assert result.fields == {
        "artifactType": "<string>",
        "config": "<Object>",
        "digest": "<string> -required-",
        "manifest": "<Object>",
        "mediaType": "<string>",
    }
    assert result.field_descriptions == described(STATUS)


@pytest.mark.kubectl
@pytest_twisted.ensureDeferred
async def test_explain_one_field(kubectl):
    out = ok(await kubectl("explain", "prt.spec.repositoryPath")).out
    result = parse(out)

    assert result.header == HEADER
    assert result.field == "FIELD: repositoryPath <string>"
    assert result.description == words(SPEC["properties"]["repositoryPath"]["description"])
    assert result.description.startswith("Path to the repository within the namespace")
    assert "FIELDS:" not in out


@pytest.mark.kubectl
@pytest_twisted.ensureDeferred
async def test_explain_metadata_and_free_form_status_documents(kubectl):
    metadata = parse(ok(await kubectl("explain", "prt.metadata")).out)
    assert metadata.field == "FIELD: metadata <ObjectMeta>"
    assert set(metadata.fields) == set(OBJECT_META["properties"])
    assert {"labels", "annotations", "name", "namespace", "uid"} <= set(metadata.fields)
    assert metadata.field_descriptions == described(OBJECT_META)

    manifest = parse(ok(await kubectl("explain", "prt.status.manifest")).out)
    assert manifest.field == "FIELD: manifest <Object>"
    assert manifest.description == words(STATUS["properties"]["manifest"]["description"])


@pytest.mark.kubectl
@pytest_twisted.ensureDeferred
async def test_explain_recursive_lists_the_whole_tree(kubectl):
    out = ok(await kubectl("explain", "prt", "--recursive")).out
    tree = out.split("FIELDS:\n", 1)[1].rstrip("\n").splitlines()
    assert tree == [
        "  apiVersion\t<string>",
        "  kind\t<string>",
        "  metadata\t<ObjectMeta>",
        "    annotations\t<map[string]string>",
        "    creationTimestamp\t<string>",
        "    deletionGracePeriodSeconds\t<integer>",
        "    deletionTimestamp\t<string>",
        "    finalizers\t<[]string>",
        "    generateName\t<string>",
        "    generation\t<integer>",
        "    labels\t<map[string]string>",
        "    managedFields\t<[]Object>",
        "    name\t<string>",
        "    namespace\t<string>",
        "    ownerReferences\t<[]Object>",
        "    resourceVersion\t<string>",
        "    selfLink\t<string>",
        "    uid\t<string>",
        "  spec\t<PayloadRepositoryTagSpec> -required-",
        "    address\t<string> -required-",
        "    repositoryPath\t<string> -required-",
        "    tag\t<string> -required-",
        "  status\t<PayloadRepositoryTagStatus>",
        "    artifactType\t<string>",
        "    config\t<Object>",
        "    digest\t<string> -required-",
        "    manifest\t<Object>",
        "    mediaType\t<string>",
    ]


@pytest.mark.kubectl
@pytest_twisted.ensureDeferred
async def test_explain_an_unknown_field_fails(kubectl):
    result = await kubectl("explain", "prt.spec.nope")
    assert result.code == 1
    # kubectl has printed the header before it finds out.
    assert result.out.splitlines()[:3] == HEADER
    assert 'field "nope" does not exist' in result.err


@pytest.mark.kubectl
@pytest_twisted.ensureDeferred
async def test_kubectl_reads_the_documents_raw(kubectl):
    root = ok(await kubectl("get", "--raw", "/openapi/v3")).json()
    assert root == openapi.V3_ROOT
    url = root["paths"][f"apis/{GROUP}/v1alpha1"]["serverRelativeURL"]
    assert ok(await kubectl("get", "--raw", url)).json() == openapi.V3_GROUP_VERSION
    assert ok(await kubectl("get", "--raw", "/openapi/v2")).json() == openapi.V2


# --- the endpoints: ETag, If-None-Match, ?hash=, identity, Accept -----------------------------------

DOCUMENTS = [
    pytest.param("/openapi/v2", openapi.V2, id="v2"),
    pytest.param("/openapi/v3", openapi.V3_ROOT, id="v3-root"),
    pytest.param(GV_PATH, openapi.V3_GROUP_VERSION, id="v3-group-version"),
]


@pytest.mark.parametrize(("path", "document"), DOCUMENTS)
@pytest_twisted.ensureDeferred
async def test_documents_are_served_with_an_etag_and_304(server, path, document):
    client = server.client(server.pki.admin)
    reply = await client.get(path, headers={"Accept": "application/json"})
    assert reply.code == 200, reply.body
    assert reply.header("content-type") == "application/json"
    assert reply.json() == document
    etag = reply.header("etag")
    assert etag == f'"{openapi.content_hash(document)}"'

    cached = await client.get(path, headers={"Accept": "application/json", "If-None-Match": etag})
    assert cached.code == 304
    assert cached.body == b""
    assert cached.header("etag") == etag

    stale = await client.get(path, headers={"Accept": "application/json", "If-None-Match": '"stale"'})
    assert stale.code == 200
    assert stale.json() == document


@pytest_twisted.ensureDeferred
async def test_the_root_hash_is_the_served_etag_and_that_url_is_immutable(server):
    client = server.client(server.pki.admin)
    root = (await client.get("/openapi/v3", headers={"Accept": "application/json, */*"})).json()
    url = root["paths"][f"apis/{GROUP}/v1alpha1"]["serverRelativeURL"]
    reply = await client.get(url, headers={"Accept": "application/json"})
    assert reply.code == 200
    assert reply.header("etag") == '"' + url.rsplit("?hash=", 1)[1] + '"'
    assert reply.header("cache-control") == "public, immutable"
    # As kube-openapi's handler: cacheable for a year from now.
    expires = parsedate_to_datetime(reply.header("expires"))
    ahead = expires - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=364) < ahead <= datetime.timedelta(days=365)
    assert reply.json() == openapi.V3_GROUP_VERSION


@pytest.mark.parametrize("query", ["", "?hash=0123456789abcdef0123456789abcdef"], ids=["no-hash", "old-hash"])
@pytest_twisted.ensureDeferred
async def test_without_the_current_hash_the_document_is_served_but_not_cacheable(server, query):
    # No redirect to the current hash (the aggregator answers a backend's redirect 502, so a client
    # that reached a replica of another version would get an error), no immutability.
    reply = await server.client(server.pki.admin).get(GV_PATH + query)
    assert reply.code == 200
    assert reply.json() == openapi.V3_GROUP_VERSION
    assert reply.header("cache-control") == "no-cache, private"
    assert reply.header("expires") is None
    assert reply.header("etag") == f'"{openapi.V3_GROUP_VERSION_HASH}"'


@pytest.mark.parametrize(("path", "document"), DOCUMENTS)
@pytest_twisted.ensureDeferred
async def test_documents_need_an_identity(server, path, document):
    reply = await server.client(None).get(path)
    assert reply.code == 401
    assert reply.json()["reason"] == "Unauthorized"


@pytest.mark.parametrize(("path", "document"), DOCUMENTS)
@pytest_twisted.ensureDeferred
async def test_protobuf_only_is_not_acceptable_except_for_v2(server, path, document):
    reply = await server.client(server.pki.admin).get(path, headers={"Accept": PROTOBUF_V2})
    if path == openapi.V2_PATH:
        # As kube-apiserver: the v2 document in gnostic's protobuf, under the dotted media type.
        assert reply.code == 200
        assert reply.header("content-type") == "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
        assert reply.body == openapi.V2_PROTOBUF
        return
    assert reply.code == 406
    assert reply.header("content-type") == "application/json"
    status = reply.json()
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "NotAcceptable", 406)


@pytest_twisted.ensureDeferred
async def test_v2_follows_the_first_acceptable_media_type(server):
    client = server.client(server.pki.admin)
    json_first = await client.get(openapi.V2_PATH, headers={"Accept": f"application/json, {PROTOBUF_V2}"})
    assert json_first.json() == openapi.V2
    proto_first = await client.get(openapi.V2_PATH, headers={"Accept": f"{PROTOBUF_V2}, application/json"})
    assert proto_first.body == openapi.V2_PROTOBUF
    assert (await client.get(openapi.V2_PATH, headers={"Accept": "text/html"})).code == 406


@pytest_twisted.ensureDeferred
async def test_other_openapi_paths_are_404(server):
    client = server.client(server.pki.admin)
    for path in ("/openapi/v3/apis/other.group/v1", "/openapi/v3/api/v1", "/openapi/v1"):
        reply = await client.get(path)
        assert reply.code == 404, path
        assert reply.json()["reason"] == "NotFound"
