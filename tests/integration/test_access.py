"""Who may see and delete what, end to end over HTTPS: front proxy, client certificates, tokens, RBAC.

The cluster API is the in-process test double; payloadtags reaches it through a kubeconfig, exactly as
it reaches a real cluster.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet import defer, task, threads, utils
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from payloadtags import tls
from payloadtags.access.authz import Authorizer
from payloadtags.access.tokens import REVIEWS_AT_ONCE, REVIEWS_PER_CLIENT, ReviewRetry
from payloadtags.api.app import AUTH_FAILURE_LOG_PERIOD
from payloadtags.api.durations import INVALID_TIMEOUT
from payloadtags.cluster import RBAC_COLLECTIONS
from payloadtags.identity import UserInfo
from payloadtags.kube.client import IDLE_CONNECTION_TIMEOUT, MAX_IDLE_CONNECTIONS
from payloadtags.limits import HttpLimits
from payloadtags.names import encode_name
from payloadtags.onceper import OncePerPeriod
from tests.support import images
from tests.support.client import ApiClient
from tests.support.clocks import SkipAhead
from tests.support.harness import ServerUnderTest
from tests.support.kubeapi.resources import (
    CLUSTERROLEBINDINGS,
    CLUSTERROLES,
    CONFIGMAPS,
    NAMESPACES,
    ROLEBINDINGS,
    ROLES,
)
from tests.support.kubeapi.server import KubeApiDouble
from tests.support.logcapture import collected_logs
from tests.support.pki import Authority, Issued
from tests.support.raw import Reply, Target, exchange, read_reply, request_bytes
from tests.support.rbac import GROUP, ensure_namespace, eventually, grant
from tests.support.registry_server import RegistryServer

B = "/apis/payload-registry.deckhouse.io/v1alpha1"
# Guards against a hang only, never a measure of speed: generous for a loaded machine.
HANG_GUARD = 30.0


def collection(namespace: str) -> str:
    return f"{B}/namespaces/{namespace}/payloadrepositorytags"


@pytest.fixture
def namespace(repo: str) -> str:
    return repo.split("/", 1)[0]


@pytest_twisted.async_yield_fixture
async def rbac_server(make_server, registry, kube_api, kube_kubeconfig):
    # The waits between TokenReview attempts take no real time; their lengths are tests/unit/test_tokens.py's.
    server: ServerUnderTest = await make_server(
        registry, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC", review_delays=SkipAhead()
    )

    async def synced() -> bool:  # until then every decision is 503, whatever a test waits for
        return (await server.client(None).get("/readyz/rbac")).code == 200

    assert await eventually(synced, within=30) is True
    yield server


async def names_seen(client: ApiClient, namespace: str) -> list[tuple[str, str]]:
    reply = await client.get(collection(namespace))
    assert reply.code == 200, reply.body
    return [(i["spec"]["repositoryPath"], i["spec"]["tag"]) for i in reply.json()["items"]]


# --- RBAC enforcement ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_lists_show_only_allowed_paths(rbac_server, kube_api, registry, namespace, pki):
    for path in ("app", "app/sub", "team/x", "other"):
        images.push_oci_image(registry, f"{namespace}/{path}", "v1", seed=path)
    alice = pki.client_ca.client("alice")
    grant(kube_api, namespace, "alice", ["get"], ["app", "team/**"], "alice-read")
    client = rbac_server.client(alice)
    seen = await eventually(lambda: names_seen(client, namespace))
    assert seen == [("app", "v1"), ("team/x", "v1")]
    everything = (await client.get(f"{B}/payloadrepositorytags")).json()["items"]
    assert sorted((i["metadata"]["namespace"], i["spec"]["repositoryPath"]) for i in everything) == [
        (namespace, "app"),
        (namespace, "team/x"),
    ]


@pytest_twisted.ensureDeferred
async def test_user_without_rules_sees_nothing_and_gets_403(rbac_server, kube_api, registry, namespace, pki):
    images.push_oci_image(registry, f"{namespace}/app", "v1")
    bob = pki.client_ca.client("bob")
    ensure_namespace(kube_api, namespace)
    client = rbac_server.client(bob)
    assert await eventually(lambda: names_seen(client, namespace), within=0.3) == []
    name = encode_name("app", "v1")
    reply = await client.get(f"{collection(namespace)}/{name}")
    assert reply.code == 403
    status = reply.json()
    assert status["reason"] == "Forbidden"
    assert status["message"] == (
        f'payloadrepositorytags.payload-registry.deckhouse.io "{name}" is forbidden: User "bob" cannot get '
        f'resource "payloadrepositorytags" in API group "payload-registry.deckhouse.io" in the namespace '
        f'"{namespace}": no PayloadRepositoryAccess rule allows "get" on repository path "app"'
    )
    assert status["details"] == {"name": name, "group": GROUP, "kind": "payloadrepositorytags"}


@pytest_twisted.ensureDeferred
async def test_delete_needs_the_delete_verb(rbac_server: ServerUnderTest, kube_api, registry, namespace, pki):
    images.push_oci_image(registry, f"{namespace}/app", "v1")
    carol = pki.client_ca.client("carol")
    # Verbs compare exactly, as Kubernetes RBAC compares them: "DELETE" allows no delete.
    grant(kube_api, namespace, "carol", ["get", "DELETE"], None, "carol-read")
    client = rbac_server.client(carol)
    url = f"{collection(namespace)}/{encode_name('app', 'v1')}"
    assert (await eventually(lambda: _code_is(client, url, 200))) is True
    denied = await client.delete(url)
    assert denied.code == 403
    assert 'cannot delete resource "payloadrepositorytags"' in denied.json()["message"]
    assert images.list_tags(registry, f"{namespace}/app") == ["v1"]
    grant(kube_api, namespace, "carol", ["delete"], ["app"], "carol-delete")

    async def deleted() -> bool:
        return (await client.delete(url)).code == 200

    assert await eventually(deleted) is True
    assert images.list_tags(registry, f"{namespace}/app") == []


async def _code_is(client: ApiClient, url: str, code: int) -> bool:
    return (await client.get(url)).code == code


@pytest_twisted.ensureDeferred
async def test_deletecollection_selects_what_the_caller_sees_and_needs_delete_on_all_of_it(
    rbac_server, kube_api, registry, namespace, pki
):
    images.push_oci_image(registry, f"{namespace}/mine", "v1")
    images.push_oci_image(registry, f"{namespace}/theirs", "v1")
    erin = rbac_server.client(pki.client_ca.client("erin"))
    grant(kube_api, namespace, "erin", ["get"], None, "erin-read")
    grant(kube_api, namespace, "erin", ["delete"], ["mine"], "erin-delete")
    assert await eventually(lambda: names_seen(erin, namespace)) == [("mine", "v1"), ("theirs", "v1")]
    refused = await erin.delete(collection(namespace))
    assert refused.code == 403
    assert 'cannot deletecollection resource "payloadrepositorytags"' in refused.json()["message"]
    assert 'on repository path "theirs"' in refused.json()["message"]
    assert images.list_tags(registry, f"{namespace}/mine") == ["v1"]  # one denied tag: nothing goes
    dave = rbac_server.client(pki.client_ca.client("dave"))
    grant(kube_api, namespace, "dave", ["get", "delete"], ["mine"], "dave")
    assert await eventually(lambda: names_seen(dave, namespace)) == [("mine", "v1")]
    # What dave cannot see is not part of his selection: neither refused nor deleted.
    reply = await dave.delete(collection(namespace))
    assert reply.code == 200, reply.body
    assert [i["spec"]["repositoryPath"] for i in reply.json()["items"]] == ["mine"]
    assert images.list_tags(registry, f"{namespace}/mine") == []
    assert images.list_tags(registry, f"{namespace}/theirs") == ["v1"]


@pytest_twisted.ensureDeferred
async def test_deletecollection_answers_alike_whether_a_hidden_tag_exists_or_not(
    rbac_server, kube_api, registry, namespace, pki
):
    images.push_oci_image(registry, f"{namespace}/hidden", "v1")
    frank = rbac_server.client(pki.client_ca.client("frank"))
    ensure_namespace(kube_api, namespace)
    assert await eventually(lambda: names_seen(frank, namespace), within=0.3) == []
    answers = []
    for tag in ("v1", "absent"):
        name = encode_name("hidden", tag)
        query = f"?dryRun=All&fieldSelector=metadata.name%3D{name}"
        reply = await frank.delete(collection(namespace) + query)
        answers.append((reply.code, reply.json()["items"]))
    assert answers == [(200, []), (200, [])]
    assert (await frank.delete(collection(namespace))).json()["items"] == []
    assert images.list_tags(registry, f"{namespace}/hidden") == ["v1"]


@pytest_twisted.ensureDeferred
async def test_a_deleted_namespace_goes_wholesale_only_when_all_of_it_is_asked_for_by_whom_may_delete_it(
    rbac_server, kube_api, registry, namespace, pki
):
    """deletecollection in a namespace the cluster API reports gone removes everything under it by
    digest, pushes made meanwhile included: only for a request without selectors from a caller who
    may see and delete every path there. Anyone else gets their selection deleted tag by tag."""
    for path in ("app", "other"):
        images.push_oci_image(registry, f"{namespace}/{path}", "v1", seed=path)
    grant(kube_api, namespace, "gina", ["get", "delete"], ["app"], "gina")
    admin = rbac_server.client(pki.client_ca.client("admin", ("system:masters",)))
    gina = rbac_server.client(pki.client_ca.client("gina"))
    mallory = rbac_server.client(pki.client_ca.client("mallory"))
    assert await eventually(lambda: names_seen(gina, namespace)) == [("app", "v1")]
    kube_api.store.delete(NAMESPACES, namespace)  # the namespace is gone; its content is not yet

    def left() -> list[str]:
        return [p for p in ("app", "other") if images.list_tags(registry, f"{namespace}/{p}")]

    for client, query in ((mallory, "?labelSelector=x%3Dy"), (mallory, ""), (admin, "?labelSelector=x%3Dy")):
        reply = await client.delete(collection(namespace) + query)
        assert (reply.code, reply.json()["items"]) == (200, []), reply.body
        assert left() == ["app", "other"]
    reply = await gina.delete(collection(namespace))
    assert reply.code == 200, reply.body
    assert left() == ["other"]
    reply = await admin.delete(collection(namespace))
    assert reply.code == 200, reply.body
    assert left() == []


@pytest_twisted.ensureDeferred
async def test_a_page_of_a_deleted_namespace_deletes_that_page_only(
    rbac_server, kube_api, registry, namespace, pki
):
    """A limit or a continue token asks for a page, never the namespace whole: even by a caller who
    may delete everything there, in a namespace that is gone, only the page goes."""
    for path in ("a", "b", "c"):
        images.push_oci_image(registry, f"{namespace}/{path}", "v1", seed=path)
    admin = rbac_server.client(pki.client_ca.client("admin", ("system:masters",)))
    assert await eventually(lambda: names_seen(admin, namespace)) == [("a", "v1"), ("b", "v1"), ("c", "v1")]
    token = (await admin.get(collection(namespace) + "?limit=2")).json()["metadata"]["continue"]
    ensure_namespace(kube_api, namespace)
    kube_api.store.delete(NAMESPACES, namespace)  # the namespace is gone; its content is not yet

    def left() -> list[str]:
        return [p for p in ("a", "b", "c") if images.list_tags(registry, f"{namespace}/{p}")]

    reply = await admin.delete(collection(namespace) + "?limit=1")
    assert reply.code == 200, reply.body
    assert left() == ["b", "c"]
    reply = await admin.delete(collection(namespace) + f"?continue={token}")
    assert reply.code == 200, reply.body
    assert left() == ["b"]
    reply = await admin.delete(collection(namespace))
    assert reply.code == 200, reply.body
    assert left() == []


@attrs.define
class PushAfterTheSelection:
    """The server's authorizer, which pushes `push` when asked the first time whether a tag may be
    deleted: deletecollection asks after it read its selection, before it decides how to delete."""

    inner: Authorizer
    push: Callable[[], object]
    pushed: bool = False

    def allowed(self, user: UserInfo, verb: str, namespace: str, repository_path: str) -> bool:
        if verb == "delete" and not self.pushed:
            self.pushed = True
            self.push()
        return self.inner.allowed(user, verb, namespace, repository_path)

    def allowed_everywhere(self, user: UserInfo, verb: str, namespace: str) -> bool:
        return self.inner.allowed_everywhere(user, verb, namespace)


@pytest.mark.parametrize(
    ("everywhere", "app_only"),
    [("delete", "get"), ("get", "delete")],
    ids=["deletes-everywhere-sees-app", "sees-everywhere-deletes-app"],
)
@pytest_twisted.ensureDeferred
async def test_a_deleted_namespace_goes_wholesale_only_for_a_caller_who_may_both_see_and_delete_all_of_it(
    rbac_server, kube_api, registry, namespace, pki, monkeypatch, everywhere, app_only
):
    """Either right alone on every path is not enough: deletecollection deletes the caller's
    selection (app) tag by tag, and what it did not hold stays: `hidden` (pushed before, which only
    a caller who may see everything sees) and `later` (pushed after the selection was read)."""
    images.push_oci_image(registry, f"{namespace}/app", "v1", seed="app")
    grant(kube_api, namespace, "hana", [everywhere], None, "hana-everywhere")
    grant(kube_api, namespace, "hana", [app_only], ["app"], "hana-app")
    hana = rbac_server.client(pki.client_ca.client("hana"))
    assert await eventually(lambda: names_seen(hana, namespace), within=30) == [("app", "v1")]
    if everywhere == "delete":
        images.push_oci_image(registry, f"{namespace}/hidden", "v1", seed="hidden")
    kube_api.store.delete(NAMESPACES, namespace)  # the namespace is gone; its content is not yet
    service = rbac_server.running.api.service
    authorizer = PushAfterTheSelection(
        service.authorizer, lambda: images.push_oci_image(registry, f"{namespace}/later", "v1", seed="later")
    )
    monkeypatch.setattr(service, "authorizer", authorizer)
    reply = await hana.delete(collection(namespace))
    assert reply.code == 200, reply.body
    assert authorizer.pushed
    assert [i["spec"]["repositoryPath"] for i in reply.json()["items"]] == ["app"]
    left = [p for p in ("app", "hidden", "later") if images.list_tags(registry, f"{namespace}/{p}")]
    assert left == (["hidden", "later"] if everywhere == "delete" else ["later"])


@pytest_twisted.ensureDeferred
async def test_rbac_edits_apply_from_the_watch_events_without_a_relist(
    rbac_server, kube_api, registry, namespace, pki
):
    """What lets an RBAC edit apply at once: the RBAC watches deliver it to the index. No list is made
    meanwhile (the reflectors relist only after an error or an expired watch), so nothing else can
    explain it; the waits are generous guards against a hang, not a speed."""
    images.push_oci_image(registry, f"{namespace}/app", "v1")
    erin = pki.client_ca.client("erin")
    ensure_namespace(kube_api, namespace)
    client = rbac_server.client(erin)
    assert await names_seen(client, namespace) == []
    rbac = [r for r in rbac_server.running.reflectors if r.name in RBAC_COLLECTIONS]
    assert sorted(r.name for r in rbac) == sorted(RBAC_COLLECTIONS)
    lists = [r.lists for r in rbac]
    kube_api.store.create(
        CLUSTERROLES,
        {
            "metadata": {"name": f"{namespace}-reader"},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get"]}],
        },
    )
    kube_api.store.create(
        CLUSTERROLEBINDINGS,
        {
            "metadata": {"name": f"{namespace}-erin"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{namespace}-reader",
            },
            "subjects": [{"kind": "Group", "name": "erin-team"}, {"kind": "User", "name": "erin"}],
        },
    )

    async def visible() -> bool:
        return await names_seen(client, namespace) == [("app", "v1")]

    assert await eventually(visible, within=HANG_GUARD) is True
    kube_api.store.delete(CLUSTERROLEBINDINGS, f"{namespace}-erin")

    async def hidden() -> bool:
        return await names_seen(client, namespace) == []

    assert await eventually(hidden, within=HANG_GUARD) is True
    assert [r.lists for r in rbac] == lists


@pytest_twisted.ensureDeferred
async def test_system_masters_is_always_allowed(rbac_server, registry, namespace, pki):
    images.push_oci_image(registry, f"{namespace}/app", "v1")
    root = pki.client_ca.client("root", ("system:masters",))
    assert await eventually(lambda: names_seen(rbac_server.client(root), namespace)) == [("app", "v1")]


@pytest_twisted.ensureDeferred
async def test_with_a_cluster_api_the_namespace_check_is_not_answered_here(rbac_server, namespace, pki):
    # Standalone only (review-newcomer L4): behind kube-apiserver, /api/v1 is kube-apiserver's to answer.
    root = pki.client_ca.client("root", ("system:masters",))
    reply = await rbac_server.client(root).get(f"/api/v1/namespaces/{namespace}")
    assert (reply.code, reply.json()["reason"]) == (404, "NotFound")


# --- front proxy -------------------------------------------------------------------------------------


@pytest.fixture
def front_proxy(tmp_path: Path):
    ca = Authority.create(tmp_path / "front-proxy", "front-proxy")
    return (
        ca,
        ca.client("front-proxy-client", stem="front-proxy-client"),
        ca.client("intruder", stem="intruder"),
    )


@pytest_twisted.async_yield_fixture
async def proxied_server(make_server, registry, kube_api, kube_kubeconfig, front_proxy):
    ca, _, _ = front_proxy
    yield await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="RBAC",
        requestheader_client_ca_file=str(ca.cert_file),
        requestheader_allowed_names=("front-proxy-client",),
    )


def as_user(name: str, *groups: str, extra: dict[str, list[str]] | None = None) -> dict[str, str | list[str]]:
    headers: dict[str, str | list[str]] = {"X-Remote-User": name}
    if groups:
        headers["X-Remote-Group"] = list(groups)
    for key, values in (extra or {}).items():
        headers[f"X-Remote-Extra-{key}"] = values
    return headers


def readers(
    kube_api: KubeApiDouble, registry: RegistryServer, namespace: str, subjects: list[dict[str, str]]
) -> None:
    """One image in the namespace, and a Role reading all of it bound to ``subjects``."""
    images.push_oci_image(registry, f"{namespace}/app", "v1")
    ensure_namespace(kube_api, namespace)
    kube_api.store.create(
        ROLES,
        {
            "metadata": {"name": "readers"},
            "rules": [{"apiGroups": [GROUP], "resources": ["payloadrepositoryaccesses"], "verbs": ["get"]}],
        },
        namespace,
    )
    kube_api.store.create(
        ROLEBINDINGS,
        {
            "metadata": {"name": "readers"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "readers"},
            "subjects": subjects,
        },
        namespace,
    )


@pytest_twisted.ensureDeferred
async def test_front_proxy_identity_is_used(proxied_server, kube_api, registry, namespace, front_proxy):
    _, proxy, _ = front_proxy
    readers(kube_api, registry, namespace, [{"kind": "Group", "name": "second-group"}])
    client = proxied_server.client(proxy)
    headers = as_user("frank", "first-group", "second-group", extra={"Scopes": ["a", "b"]})

    async def sees() -> bool:
        reply = await client.get(collection(namespace), headers=headers)
        return reply.code == 200 and len(reply.json()["items"]) == 1

    # The second value of the repeated group header is what grants access.
    assert await eventually(sees) is True
    nobody = await client.get(collection(namespace), headers=as_user("frank", "first-group"))
    assert nobody.json()["items"] == []


@pytest_twisted.ensureDeferred
async def test_anonymous_and_unauthenticated_callers_are_not_system_authenticated(
    proxied_server, kube_api, registry, namespace, front_proxy
):
    """As Go's AuthenticatedGroupAdder: system:anonymous, or a caller already in system:unauthenticated,
    is not given system:authenticated, nor the grants bound to it."""
    _, proxy, _ = front_proxy
    images.push_oci_image(registry, f"{namespace}/app", "v1")
    ensure_namespace(kube_api, namespace)
    kube_api.store.create(
        CLUSTERROLES,
        {
            "metadata": {"name": f"{namespace}-all-read"},
            "rules": [{"apiGroups": [GROUP], "resources": ["payloadrepositoryaccesses"], "verbs": ["get"]}],
        },
    )
    kube_api.store.create(
        CLUSTERROLEBINDINGS,
        {
            "metadata": {"name": f"{namespace}-all-read"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{namespace}-all-read",
            },
            "subjects": [{"kind": "Group", "name": "system:authenticated"}],
        },
    )
    client = proxied_server.client(proxy)

    async def sees(headers: dict[str, str | list[str]]) -> bool:
        reply = await client.get(collection(namespace), headers=headers)
        assert reply.code == 200, reply.body
        return len(reply.json()["items"]) == 1

    async def rules_loaded_and_seen() -> bool:
        reply = await client.get(collection(namespace), headers=as_user("frank", "team"))
        return reply.code == 200 and len(reply.json()["items"]) == 1

    # Any other user is in system:authenticated without saying so.
    assert await eventually(rules_loaded_and_seen) is True
    assert not await sees(as_user("system:anonymous", "system:unauthenticated"))
    assert not await sees(as_user("system:anonymous"))
    assert not await sees(as_user("someone", "system:unauthenticated"))


@pytest_twisted.ensureDeferred
async def test_front_proxy_identities_are_utf8(proxied_server, kube_api, registry, namespace, front_proxy):
    """The aggregator sends user, group and extra values as UTF-8 bytes (client-go writes Go strings as
    they are): "josé" is the "josé" of a RoleBinding. A value that is not UTF-8 is refused with a 401
    that says so; other headers are not held to it."""
    _, proxy, _ = front_proxy
    readers(
        kube_api, registry, namespace, [{"kind": "User", "name": "josé"}, {"kind": "Group", "name": "équipe"}]
    )
    target = Target(proxied_server.running.port, str(proxied_server.pki.server_ca.cert_file))

    def wire(text: str) -> str:
        # request_bytes sends each character as one byte: these are the UTF-8 bytes of ``text``.
        return text.encode().decode("latin-1")

    async def get(headers: dict[str, str], user: Issued | None = proxy) -> Reply:
        sent = request_bytes("GET", collection(namespace), {"Accept": "application/json", **headers})
        return await threads.deferToThread(exchange, target, sent, user)

    async def sees(headers: dict[str, str]) -> bool:
        reply = await get(headers)
        assert reply.code == 200, reply.body
        return len(reply.json()["items"]) == 1

    async def rules_loaded() -> bool:
        reply = await get({"X-Remote-User": wire("josé")})
        return reply.code == 200 and len(reply.json()["items"]) == 1

    assert await eventually(rules_loaded, within=5) is True
    assert await sees({"X-Remote-User": "frank", "X-Remote-Group": wire("équipe")})
    assert not await sees({"X-Remote-User": "frank", "X-Remote-Group": "equipe"})
    # Other headers are not identities: one that is not UTF-8 changes nothing.
    assert await sees({"X-Remote-User": wire("josé"), "X-Note": "caf\xe9"})

    for refused, header in (
        ({"X-Remote-User": "jos\xe9"}, "X-Remote-User"),
        ({"X-Remote-User": "frank", "X-Remote-Group": "\xe9quipe"}, "X-Remote-Group"),
        ({"X-Remote-User": "frank", "X-Remote-Extra-Scopes": "\xff"}, "x-remote-extra-scopes"),
        ({"X-Remote-User": "frank", "X-Remote-Extra-%C3": "view"}, "x-remote-extra-%c3"),
    ):
        reply = await get(refused)
        assert reply.is_status(401), (refused, reply)
        assert header in reply.json()["message"], reply.json()
    # From anyone but the proxy such headers are stripped unread; a token that is not UTF-8 is no token.
    assert (await get({"X-Remote-User": "jos\xe9"}, user=None)).is_status(401)
    assert (await get({"Authorization": "Bearer tok\xe9n"}, user=None)).is_status(401)


@pytest_twisted.ensureDeferred
async def test_forged_headers_are_never_trusted(proxied_server, front_proxy, pki):
    _, _, intruder = front_proxy
    forged = as_user("admin", "system:masters")
    # No certificate at all: the headers alone identify nobody.
    assert (await proxied_server.client(None).get(collection("ns1"), headers=forged)).code == 401
    # A certificate from the front-proxy CA with a CN that is not allowed.
    assert (await proxied_server.client(intruder).get(collection("ns1"), headers=forged)).code == 401
    # A genuine user certificate (client CA): the user is the certificate's, not the header's.
    mallory = pki.client_ca.client("mallory")
    reply = await proxied_server.client(mallory).get(
        f"{collection('ns1')}/{encode_name('x', 'y')}", headers=forged
    )
    assert reply.code == 403
    assert 'User "mallory"' in reply.json()["message"]


@pytest_twisted.ensureDeferred
async def test_a_trusted_client_certificate_that_cannot_be_read_is_a_401_saying_why(
    make_server, registry, pki, monkeypatch
):
    """A certificate the client CA signed whose multi-valued RDN is not in DER order: OpenSSL (and Go)
    take it, cryptography cannot parse it. Each connection used to log an unhandled traceback and was
    dropped without an answer (review r2auth N2): a 401 saying why now, and one line a period."""
    monkeypatch.setattr(tls, "_unreadable_said", OncePerPeriod(tls.UNREADABLE_LOG_PERIOD))
    server = await make_server(registry)
    unsorted = pki.client_ca.client_with_unsorted_rdn("unsorted-rdn")
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))
    with collected_logs() as events:
        for _ in range(2):
            reply = await threads.deferToThread(exchange, target, request_bytes("GET", "/version"), unsorted)
            assert reply.is_status(401), reply
            assert reply.json()["message"].startswith("the client certificate cannot be read: "), reply
    said = [formatEvent(e) for e in events if "cannot be read" in formatEvent(e)]
    assert len(said) == 1 and said[0].endswith("its requests that need an identity are answered 401"), said
    assert [e for e in events if e.get("log_failure") is not None] == []
    # The same server still serves a readable certificate.
    assert (await server.client(pki.client_ca.client("alice")).get("/version")).code == 200


@pytest_twisted.ensureDeferred
async def test_unknown_ca_certificate_is_401_and_a_token_still_works(proxied_server, kube_api, tmp_path):
    # As kube-apiserver: the handshake succeeds, the certificate identifies nobody.
    stranger = Authority.create(tmp_path / "stranger", "stranger").client("front-proxy-client")
    client = proxied_server.client(stranger)
    assert (await client.get(collection("ns1"), headers=as_user("root", "system:masters"))).code == 401
    kube_api.add_token("stranger-token", "someone", ("system:masters",))
    with_token = await client.get(collection("ns1"), headers={"Authorization": "Bearer stranger-token"})
    assert with_token.code == 200


def _get_with_chain(url: str, ca_file: str, chain_file: str, key_file: str, headers: dict[str, str]) -> int:
    """One HTTPS GET with the standard library, which sends the whole client certificate chain."""
    return _answer_with_chain(url, ca_file, chain_file, key_file, headers)[0]


def _answer_with_chain(
    url: str, ca_file: str, chain_file: str, key_file: str, headers: dict[str, str]
) -> tuple[int, bytes]:
    import http.client
    import ssl
    from urllib.parse import urlsplit

    context = ssl.create_default_context(cafile=ca_file)
    context.load_cert_chain(chain_file, key_file)
    parts = urlsplit(url)
    connection = http.client.HTTPSConnection(parts.netloc, context=context, timeout=10)
    try:
        connection.request("GET", parts.path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_front_proxy_certificate_through_an_intermediate_ca(make_server, registry, tmp_path, pki):
    root = Authority.create(tmp_path / "proxy-root", "proxy-root")
    intermediate = root.intermediate("proxy-intermediate")
    proxy = intermediate.client("front-proxy-client", stem="chained-proxy")
    chain_file = tmp_path / "chained-proxy-chain.crt"
    chain_file.write_bytes(proxy.cert_file.read_bytes() + intermediate.cert_file.read_bytes())
    server = await make_server(
        registry,
        requestheader_client_ca_file=str(root.cert_file),  # only the root is configured
        requestheader_allowed_names=("front-proxy-client",),
    )
    url = server.url + collection("ns1")
    ca = str(pki.server_ca.cert_file)
    status = await threads.deferToThread(
        _get_with_chain, url, ca, str(chain_file), str(proxy.key_file), {"X-Remote-User": "root"}
    )
    assert status == 200
    # The same leaf without its intermediate cannot be verified: no identity.
    alone = await threads.deferToThread(
        _get_with_chain, url, ca, str(proxy.cert_file), str(proxy.key_file), {"X-Remote-User": "root"}
    )
    assert alone == 401


@pytest_twisted.ensureDeferred
async def test_intermediate_cas_in_the_ca_bundles_are_trust_anchors(
    make_server, registry, kube_api, kube_kubeconfig, tmp_path, pki
):
    """As Go's x509 roots pool: a CA in the client or requestheader bundle is trusted without its
    issuer, whether the client sends it along or not; nothing else is, and neither bundle's
    certificates pass for the other's."""
    clients_root = Authority.create(tmp_path / "clients-root", "clients-root")
    clients = clients_root.intermediate("clients-inter")
    proxies = Authority.create(tmp_path / "proxies-root", "proxies-root").intermediate("proxies-inter")
    client_bundle = tmp_path / "client-bundle.crt"
    client_bundle.write_bytes(pki.client_ca.cert_file.read_bytes() + clients.cert_file.read_bytes())
    server: ServerUnderTest = await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="RBAC",
        client_ca_file=str(client_bundle),
        requestheader_client_ca_file=str(proxies.cert_file),  # the intermediate alone
        requestheader_allowed_names=("front-proxy-client",),
    )

    async def synced() -> bool:
        return (await server.client(None).get("/readyz/rbac")).code == 200

    assert await eventually(synced, within=30) is True
    # Nobody may get this tag: the 403 names the user the request was authenticated as.
    url = server.url + f"{collection('ns1')}/{encode_name('x', 'y')}"

    async def who(issued: Issued, issuer: Authority | None, headers: dict[str, str]) -> str | int:
        chain = tmp_path / f"{issued.cert_file.stem}-{'chain' if issuer else 'leaf'}.crt"
        chain.write_bytes(issued.cert_file.read_bytes() + (issuer.cert_file.read_bytes() if issuer else b""))
        code, body = await threads.deferToThread(
            _answer_with_chain, url, str(pki.server_ca.cert_file), str(chain), str(issued.key_file), headers
        )
        if code != 403:
            return code
        message: str = json.loads(body)["message"]
        return message.split(" is forbidden: ")[1].split(" cannot ")[0]

    frank = {"X-Remote-User": "frank"}
    alice = clients.client("alice")
    proxy = proxies.client("front-proxy-client", stem="inter-proxy")
    # The proxy's name, from the client CA's intermediate: a user, not a front proxy.
    impostor = clients.client("front-proxy-client", stem="impostor")
    for sent in (None, clients):  # the leaf alone, then with its intermediate
        assert await who(alice, sent, frank) == 'User "alice"'
        assert await who(impostor, sent, frank) == 'User "front-proxy-client"'
    for sent in (None, proxies):
        assert await who(proxy, sent, frank) == 'User "frank"'
        # A front-proxy certificate is no client certificate.
        assert await who(proxy, sent, {}) == 401
    # CAs in neither bundle: the intermediate's root, and another intermediate of that root.
    assert await who(clients_root.client("bob"), None, frank) == 401
    sibling = clients_root.intermediate("clients-sibling")
    carol = sibling.client("carol")
    assert await who(carol, None, frank) == 401
    assert await who(carol, sibling, frank) == 401


# --- the authentication ConfigMap ------------------------------------------------------------------------


def auth_configmap(requestheader_ca: Path, allowed: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "extension-apiserver-authentication"},
        "data": {
            "requestheader-client-ca-file": requestheader_ca.read_text(),
            "requestheader-allowed-names": json.dumps(allowed),
            "requestheader-username-headers": json.dumps(["X-Remote-User"]),
            "requestheader-group-headers": json.dumps(["X-Remote-Group"]),
            "requestheader-extra-headers-prefix": json.dumps(["X-Remote-Extra-"]),
        },
    }


@pytest_twisted.ensureDeferred
async def test_configmap_rotation_applies_without_restart(
    make_server, registry, kube_api, kube_kubeconfig, tmp_path, namespace
):
    old = Authority.create(tmp_path / "old", "front-proxy-old")
    new = Authority.create(tmp_path / "new", "front-proxy-new")
    old_proxy = old.client("front-proxy-client", stem="old-proxy")
    new_proxy = new.client("front-proxy-client", stem="new-proxy")
    ensure_namespace(kube_api, "kube-system")
    kube_api.store.create(CONFIGMAPS, auth_configmap(old.cert_file, ["front-proxy-client"]), "kube-system")
    server: ServerUnderTest = await make_server(
        registry, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC"
    )
    headers = as_user("root", "system:masters")

    async def works(proxy: Issued) -> bool:
        try:
            return (await server.client(proxy).get(collection(namespace), headers=headers)).code == 200
        except Exception:
            return False

    assert await eventually(lambda: works(old_proxy)) is True
    assert await works(new_proxy) is False
    current = kube_api.store.get(CONFIGMAPS, "extension-apiserver-authentication", "kube-system")
    current["data"] = auth_configmap(new.cert_file, ["front-proxy-client"])["data"]
    kube_api.store.update(CONFIGMAPS, current, namespace="kube-system")
    assert await eventually(lambda: works(new_proxy)) is True
    assert await works(old_proxy) is False
    # The allowed names are live too.
    current = kube_api.store.get(CONFIGMAPS, "extension-apiserver-authentication", "kube-system")
    current["data"]["requestheader-allowed-names"] = json.dumps(["someone-else"])
    kube_api.store.update(CONFIGMAPS, current, namespace="kube-system")

    async def refused() -> bool:
        return not await works(new_proxy)

    assert await eventually(refused) is True


@pytest_twisted.ensureDeferred
async def test_no_requestheader_ca_after_the_configmap_is_read_is_warned_once(
    make_server, registry, kube_api, kube_kubeconfig, tmp_path
):
    # Review-operations F12: readiness passes while every aggregated request will be 401; the log
    # must say why, as k8s.io/apiserver does, once and not per relist or probe.
    def warnings(events: list[dict[str, Any]]) -> list[str]:
        return [formatEvent(e) for e in events if "no request-header CA" in formatEvent(e)]

    with collected_logs() as events:
        server: ServerUnderTest = await make_server(
            registry, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC"
        )

        async def synced() -> bool:
            return (await server.client(None).get("/readyz/authentication-configmap")).code == 200

        assert await eventually(synced, within=HANG_GUARD) is True
        assert len(warnings(events)) == 1
        assert "kube-system/extension-apiserver-authentication" in warnings(events)[0]
        # The aggregation layer configured later: it works, and nothing more is said.
        front = Authority.create(tmp_path / "front", "front-proxy")
        ensure_namespace(kube_api, "kube-system")
        kube_api.store.create(
            CONFIGMAPS, auth_configmap(front.cert_file, ["front-proxy-client"]), "kube-system"
        )
        proxy = front.client("front-proxy-client", stem="proxy")

        async def proxied() -> bool:
            headers = as_user("root", "system:masters")
            return (await server.client(proxy).get("/version", headers=headers)).code == 200

        assert await eventually(proxied, within=HANG_GUARD) is True
        assert len(warnings(events)) == 1


# --- bearer tokens ---------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bearer_token_with_curl(rbac_server, kube_api, registry, namespace):
    images.push_oci_image(registry, f"{namespace}/app", "v1")
    kube_api.add_token("good-token-123", "system:serviceaccount:tools:reader", ("system:serviceaccounts",))
    grant(kube_api, namespace, "system:serviceaccount:tools:reader", ["get"], None, "sa-read")

    async def curl(token: str) -> tuple[int, dict[str, Any]]:
        out, _err, _code = await utils.getProcessOutputAndValue(
            "curl",
            [
                "-sS",
                "--cacert",
                str(rbac_server.pki.server_ca.cert_file),
                "-H",
                f"Authorization: Bearer {token}",
                "-w",
                "\n%{http_code}",
                rbac_server.url + collection(namespace),
            ],
        )
        body, _, status = out.decode().rpartition("\n")
        return int(status), json.loads(body)

    async def allowed() -> bool:
        status, body = await curl("good-token-123")
        return status == 200 and len(body["items"]) == 1

    assert await eventually(allowed) is True
    status, body = await curl("forged-token")
    assert status == 401
    assert body["reason"] == "Unauthorized"
    reviews = [r for r in kube_api.requests if "tokenreviews" in r.path]
    assert len([r for r in reviews]) >= 2


@pytest_twisted.ensureDeferred
async def test_a_request_asking_to_impersonate_is_refused_not_answered_with_the_callers_rights(
    rbac_server: ServerUnderTest, kube_api, registry, namespace
):
    """payloadtags does not impersonate (review r1authn L1): kubectl --as sent to it directly used to
    be answered with the caller's own rights, so `--as=ci-bot delete` deleted with an admin's."""
    images.push_oci_image(registry, f"{namespace}/ci/app", "v1")
    kube_api.add_token("admin-token", "ops-admin")
    grant(kube_api, namespace, "ops-admin", ["get", "delete"], None, "ops-admin-all")
    client = rbac_server.client(None)
    item = f"{collection(namespace)}/{encode_name('ci/app', 'v1')}"
    admin = {"Authorization": "Bearer admin-token"}

    async def granted() -> bool:
        return (await client.get(item, headers=admin)).code == 200

    assert await eventually(granted, within=10) is True
    # What `kubectl --as=ci-bot delete prt NAME` sends; then --as-group, --as-uid, an extra's key.
    delete = await client.delete(item, headers={**admin, "Impersonate-User": "ci-bot"})
    assert (delete.code, delete.json()["reason"]) == (403, "Forbidden"), delete.body
    assert delete.json()["message"].startswith("payloadtags does not impersonate")
    assert images.list_tags(registry, f"{namespace}/ci/app") == ["v1"]
    for header in ("Impersonate-Group", "Impersonate-Uid", "Impersonate-Extra-Scopes"):
        reply = await client.get(collection(namespace), headers={**admin, header: "x"})
        assert (reply.code, reply.json()["reason"]) == (403, "Forbidden"), header
    # Authentication comes first; probes take no identity; other headers are not impersonation.
    assert (await client.get(collection(namespace), headers={"Impersonate-User": "ops-admin"})).code == 401
    assert (await client.get("/healthz", headers={"Impersonate-User": "ci-bot"})).code == 200
    assert (await client.get(item, headers={**admin, "Impersonated-By": "x"})).code == 200


def _tag_reads(text: str) -> float:
    prefix = 'payloadtags_registry_operations_total{operation="tags",outcome="ok"} '
    line = next((line for line in text.splitlines() if line.startswith(prefix)), prefix + "0")
    return float(line.removeprefix(prefix))


@pytest_twisted.ensureDeferred
async def test_denied_repositories_are_not_read(rbac_server, kube_api, registry, namespace, pki):
    for path in ("mine", "theirs-1", "theirs-2", "theirs-3"):
        images.push_oci_image(registry, f"{namespace}/{path}", "v1", seed=path)
    grant(kube_api, namespace, "gina", ["get"], ["mine"], "gina")
    gina = rbac_server.client(pki.client_ca.client("gina"))
    monitor = rbac_server.client(pki.client_ca.client("prometheus", ("system:masters",)))
    assert await eventually(lambda: names_seen(gina, namespace)) == [("mine", "v1")]
    before = _tag_reads((await monitor.get("/metrics")).body.decode())
    assert await names_seen(gina, namespace) == [("mine", "v1")]
    after = _tag_reads((await monitor.get("/metrics")).body.decode())
    # Access is per repository path: the tag lists of the three denied repositories are never fetched.
    assert after - before == 1


# --- non-resource URLs --------------------------------------------------------------------------------


def grant_paths(
    kube_api: KubeApiDouble, user: str, role: str, paths: list[str], verbs: tuple[str, ...] = ("get",)
) -> None:
    """A ClusterRole ``role`` allowing ``verbs`` (GET) on the non-resource URLs ``paths``, and a binding of
    it (of the same name) to ``user``."""
    rules = [{"nonResourceURLs": paths, "verbs": list(verbs)}]
    kube_api.store.create(CLUSTERROLES, {"metadata": {"name": role}, "rules": rules})
    kube_api.store.create(
        CLUSTERROLEBINDINGS,
        {
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    )


@pytest_twisted.ensureDeferred
async def test_metrics_are_authorized_by_rbac_non_resource_rules(rbac_server: ServerUnderTest, kube_api, pki):
    """A Prometheus ServiceAccount is granted /metrics the usual way: a ClusterRole with nonResourceURLs."""
    scraper, stranger = pki.client_ca.client("scraper"), pki.client_ca.client("stranger")

    async def synced() -> bool:  # 503 until the RBAC objects are loaded
        return (await rbac_server.client(scraper).get("/metrics")).code != 503

    assert await eventually(synced, within=5) is True
    assert (await rbac_server.client(scraper).get("/metrics")).code == 403
    grant_paths(kube_api, "scraper", "metrics-reader", ["/metrics"])

    async def scraped() -> bool:
        return (await rbac_server.client(scraper).get("/metrics")).code == 200

    assert await eventually(scraped, within=5) is True
    reply = await rbac_server.client(stranger).get("/metrics")
    assert reply.code == 403
    assert reply.json()["message"] == 'forbidden: User "stranger" cannot get path "/metrics"'


@pytest_twisted.ensureDeferred
async def test_a_listed_health_check_path_skips_rbac_and_an_unlisted_one_does_not(
    make_server, registry, kube_api, kube_kubeconfig, pki
):
    # Review r6misc L2: a user RBAC grants no path may read exactly what is listed (a check's own path,
    # a prefix ending in '*'); every other health path is RBAC's to decide, as before.
    server: ServerUnderTest = await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="RBAC",
        always_allow_paths=("/healthz/ping", "/readyz/*"),
    )
    master = server.client(pki.client_ca.client("master", ("system:masters",)))

    async def synced() -> bool:  # until then every decision is 503
        return (await master.get("/readyz/rbac")).code == 200

    assert await eventually(synced, within=30) is True
    stranger = server.client(pki.client_ca.client("stranger"))
    paths = ("/healthz/ping", "/readyz/ping", "/healthz", "/healthz/log", "/readyz", "/livez/ping")
    assert {p: (await stranger.get(p)).code for p in paths} == {
        "/healthz/ping": 200,
        "/readyz/ping": 200,
        "/healthz": 403,
        "/healthz/log": 403,
        "/readyz": 403,
        "/livez/ping": 403,
    }
    reply = await stranger.get("/livez/ping")
    assert reply.json()["message"] == 'forbidden: User "stranger" cannot get path "/livez/ping"'


@pytest_twisted.ensureDeferred
async def test_rbac_matches_non_resource_urls_against_the_decoded_path(
    make_server, registry, kube_api, kube_kubeconfig, pki
):
    # Review r7misc N3: the raw path was matched, so `/healthz/p%69ng`, which is served as the check
    # `ping`, was 403 for a user granted `/healthz/ping`. kube-apiserver authorizes Go's decoded URL.Path.
    # Only /livez served without RBAC: the default list opens every health check.
    server: ServerUnderTest = await make_server(
        registry, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC", always_allow_paths=("/livez",)
    )
    prober = pki.client_ca.client("prober")
    grant_paths(kube_api, "prober", "ping-reader", ["/healthz/ping"])

    async def granted() -> bool:
        return (await server.client(prober).get("/healthz/ping")).code == 200

    assert await eventually(granted, within=30) is True
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))

    async def asked(path: str) -> Reply:
        return await threads.deferToThread(exchange, target, request_bytes("GET", path), prober)

    paths = (
        "/healthz/p%69ng",
        "/healthz/%70%69%6e%67",
        # The path alone is authorized, not its query (review r10cfg T1: no test failed when it was).
        "/healthz/ping?verbose",
        "/healthz/p%69ng?exclude=log",
        "/healthz/ping/",
        "/healthz/ping%2F",
        "/healthz/%6cog",
    )
    replies = {path: await asked(path) for path in (*paths, "/m%65trics")}
    assert {path: reply.code for path, reply in replies.items()} == {
        "/healthz/p%69ng": 200,
        "/healthz/%70%69%6e%67": 200,
        "/healthz/ping?verbose": 200,
        "/healthz/p%69ng?exclude=log": 200,
        # Decoded, still not the path granted (kube-apiserver's answer too), though served as `ping`.
        "/healthz/ping/": 403,
        "/healthz/ping%2F": 403,
        "/healthz/%6cog": 403,
        "/m%65trics": 403,
    }
    denied = {
        path: replies[path].json()["message"] for path in ("/healthz/ping%2F", "/healthz/%6cog", "/m%65trics")
    }
    assert denied == {
        "/healthz/ping%2F": 'forbidden: User "prober" cannot get path "/healthz/ping/"',
        "/healthz/%6cog": 'forbidden: User "prober" cannot get path "/healthz/log"',
        "/m%65trics": 'forbidden: User "prober" cannot get path "/metrics"',
    }


@pytest_twisted.ensureDeferred
async def test_a_health_or_metrics_path_with_a_trailing_slash_is_not_found_once_authorized(
    make_server, registry, kube_api, kube_kubeconfig, pki
):
    # Review r10cfg N1: a grant of `/readyz/*` read `/readyz/` as `/readyz`, the overall result, which
    # the grant does not name. kube-apiserver authorizes it as a prefix match too, then answers 404: its
    # mux serves `/readyz` and `/readyz/<check>` exactly. Likewise a check's or /metrics' path with '/'.
    server: ServerUnderTest = await make_server(
        registry, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC", always_allow_paths=("/livez",)
    )
    prober = pki.client_ca.client("prober")
    grant_paths(kube_api, "prober", "checks", ["/readyz/*", "/healthz/*", "/metrics/"])

    async def granted() -> bool:
        return (await server.client(prober).get("/readyz/ping")).code == 200

    assert await eventually(granted, within=30) is True
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))
    paths = ("/readyz/", "/readyz/?verbose", "/healthz/ping/", "/healthz/ping%2F", "/metrics/", "/livez/")
    replies = {
        path: await threads.deferToThread(exchange, target, request_bytes("GET", path), prober)
        for path in (*paths, "/readyz", "/metrics")
    }
    assert {path: reply.code for path, reply in replies.items()} == {
        **dict.fromkeys(paths, 404),
        "/readyz": 403,  # not granted: refused before it is looked for, as in kube-apiserver
        "/metrics": 403,
    }
    assert replies["/readyz/"].json()["reason"] == "NotFound"


@pytest_twisted.ensureDeferred
async def test_a_head_of_a_health_or_metrics_path_is_authorized_as_the_verb_head(
    make_server, registry, kube_api, kube_kubeconfig, pki
):
    # Review r10cfg L1: a HEAD was authorized as `get`. k8s.io/apiserver's RequestInfoFactory gives a
    # non-resource request the verb strings.ToLower(req.Method): a grant of `get` alone refuses a HEAD
    # there, and one of `head` alone serves it.
    server: ServerUnderTest = await make_server(
        registry, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC", always_allow_paths=("/livez",)
    )
    users = {"getter": pki.client_ca.client("getter"), "header": pki.client_ca.client("header")}
    grant_paths(kube_api, "getter", "get-checks", ["/healthz/ping", "/metrics"], verbs=("get",))
    grant_paths(kube_api, "header", "head-checks", ["/healthz/ping", "/metrics"], verbs=("head",))

    async def granted() -> bool:
        return (await server.client(users["getter"]).get("/healthz/ping")).code == 200

    assert await eventually(granted, within=30) is True
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))
    replies = {
        (name, method, path): await threads.deferToThread(exchange, target, request_bytes(method, path), user)
        for name, user in users.items()
        for method in ("GET", "HEAD")
        for path in ("/healthz/ping", "/metrics")
    }
    # The path alone is authorized, not its query (review r10cfg T1).
    assert (await server.client(users["getter"]).get("/metrics?x=1")).code == 200
    assert {key: reply.code for key, reply in replies.items()} == {
        ("getter", "GET", "/healthz/ping"): 200,
        ("getter", "GET", "/metrics"): 200,
        ("getter", "HEAD", "/healthz/ping"): 403,
        ("getter", "HEAD", "/metrics"): 403,
        ("header", "GET", "/healthz/ping"): 403,
        ("header", "GET", "/metrics"): 403,
        ("header", "HEAD", "/healthz/ping"): 200,
        ("header", "HEAD", "/metrics"): 200,
    }
    assert replies["header", "GET", "/metrics"].json()["message"] == (
        'forbidden: User "header" cannot get path "/metrics"'
    )


@pytest.mark.parametrize(("code", "reason"), [(429, "TooManyRequests"), (500, "InternalError")])
@pytest_twisted.ensureDeferred
async def test_a_token_review_that_fails_once_for_a_passing_cause_is_asked_again(
    rbac_server: ServerUnderTest, kube_api, registry, namespace, code, reason
):
    """As k8s.io/apiserver's delegating authenticator (review r1authn L2): API Priority and Fairness
    throttling payloadtags' TokenReview once does not turn a valid token away with 401."""
    images.push_oci_image(registry, f"{namespace}/app", "v1")
    grant(kube_api, namespace, "reader", ["get"], None, "reader")
    kube_api.add_token("warm-token", "reader")
    kube_api.add_token("fresh-token", "reader")
    client = rbac_server.client(None)

    async def granted() -> bool:
        reply = await client.get(collection(namespace), headers={"Authorization": "Bearer warm-token"})
        return reply.code == 200

    assert await eventually(granted, within=10) is True
    reviews = len(kube_api.requests_for("/apis/authentication.k8s.io/v1/tokenreviews"))
    kube_api.inject_error(code, reason, path="/apis/authentication.k8s.io/v1/tokenreviews", times=1)
    reply = await client.get(collection(namespace), headers={"Authorization": "Bearer fresh-token"})
    assert reply.code == 200, (reply.code, reply.body[:200])
    assert len(kube_api.requests_for("/apis/authentication.k8s.io/v1/tokenreviews")) == reviews + 2


@pytest_twisted.ensureDeferred
async def test_failing_token_reviews_are_logged_once_per_period_per_cause(
    make_server, registry, kube_api, kube_kubeconfig, namespace
):
    """While TokenReviews fail, anyone who reaches the port with any token used to write a warning a
    request (review r1authn L3): said once per period per cause now, then with the count left out."""
    clock = Clock()
    server = await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="RBAC",
        auth_log_monotonic=clock.seconds,
        review_delays=SkipAhead(),
    )
    client = server.client(None)
    tokenreviews = "/apis/authentication.k8s.io/v1/tokenreviews"

    async def failing(count: int, first: int = 0) -> list[str]:
        with collected_logs() as events:
            for i in range(first, first + count):
                bearer = {"Authorization": f"Bearer random-{i}"}
                reply = await client.get(collection(namespace), headers=bearer)
                assert reply.code == 401, reply.body
        return [formatEvent(e) for e in events if "authentication failed" in formatEvent(e)]

    kube_api.inject_error(500, path=tokenreviews, times=10_000)
    assert len(await failing(20)) == 1
    # Another cause (the ServiceAccount may not create TokenReviews) is said at once, once.
    kube_api.clear_injected_errors()
    kube_api.inject_error(403, "Forbidden", path=tokenreviews, times=10_000)
    assert len(await failing(20, 20)) == 1
    kube_api.clear_injected_errors()
    kube_api.inject_error(500, path=tokenreviews, times=10_000)
    clock.advance(AUTH_FAILURE_LOG_PERIOD)
    (line,) = await failing(5, 40)
    assert line.endswith(f"(19 more like it in the {AUTH_FAILURE_LOG_PERIOD:.0f}s since the last line)"), line


@pytest_twisted.ensureDeferred
async def test_requests_waiting_for_their_token_review_hold_no_inflight_seat(
    make_server, registry, kube_api, kube_kubeconfig, namespace, pki
):
    """Made-up tokens while TokenReviews are throttled (429) wait for their reviews' next attempts, for
    seconds: they used to hold their --max-requests-inflight seats meanwhile, and a certificate caller
    got 429 (review r2auth L1). Taken after authentication now, as kube-apiserver's chain takes it."""
    delays = Clock()
    server = await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="AlwaysAllow",
        http=HttpLimits(max_requests_inflight=4),
        review_delays=delays,
    )
    tokenreviews = "/apis/authentication.k8s.io/v1/tokenreviews"
    kube_api.inject_error(429, "TooManyRequests", path=tokenreviews, times=10_000)
    anyone = server.client(None)
    made_up = [
        defer.ensureDeferred(
            anyone.get(collection(namespace), headers={"Authorization": f"Bearer made-up-{i}"})
        )
        for i in range(4)
    ]

    async def all_waiting() -> bool:  # each review answered once, its next attempt due on ``delays``
        return len(delays.getDelayedCalls()) == 4

    assert await eventually(all_waiting, within=HANG_GUARD) is True
    alice = await server.client(pki.client_ca.client("alice")).get(collection(namespace))
    assert alice.code == 200, alice.body
    # The reviews answer at last: the made-up tokens are nobody's.
    kube_api.clear_injected_errors()
    delays.advance(ReviewRetry().initial * 2)
    assert [r.code for r in await defer.gatherResults(made_up)] == [401] * 4


@pytest_twisted.ensureDeferred
async def test_a_malformed_timeout_is_400_before_authentication_with_a_body_too(
    make_server, registry, kube_kubeconfig, namespace
):
    """kube-apiserver reads a request's ``timeout`` before it authenticates it: a malformed one is a
    400 to anyone. A request with a body, authenticated in the channel before its body is read, was
    answered 401 instead (review r3auth L1)."""
    server = await make_server(registry, kubeconfig=str(kube_kubeconfig), authorization_mode="AlwaysAllow")
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))
    path = f"{collection(namespace)}/{encode_name('app', 'v1')}?timeout=soon"
    answers = []
    for method, body in (("GET", b""), ("DELETE", b""), ("DELETE", b"{}")):
        reply = await threads.deferToThread(exchange, target, request_bytes(method, path, {}, body))
        answers.append((method, bool(body), reply.code, INVALID_TIMEOUT in reply.json().get("message", "")))
    # A watch reads no ``timeout``, with a body or without (review r2fix L2): the 401 of a request
    # without credentials.
    watch = f"{collection(namespace)}?watch=1&timeout=soon"
    for body in (b"", b"{}"):
        reply = await threads.deferToThread(exchange, target, request_bytes("GET", watch, {}, body))
        answers.append(("watch", bool(body), reply.code, INVALID_TIMEOUT in reply.json().get("message", "")))
    assert answers == [
        ("GET", False, 400, True),
        ("DELETE", False, 400, True),
        ("DELETE", True, 400, True),
        ("watch", False, 401, False),
        ("watch", True, 401, False),
    ]


@pytest.mark.parametrize(
    ("request_timeout", "query"),
    [(4.0, "?timeout=1s"), (1.0, "")],
    ids=["its-own-timeout", "the-servers-request-timeout"],
)
@pytest_twisted.ensureDeferred
async def test_a_requests_deadline_bounds_its_authentication_with_a_body_too(
    make_server, registry, kube_api, kube_kubeconfig, namespace, request_timeout, query
):
    """kube-apiserver's deadline (the request's own ``timeout``, capped by --request-timeout) bounds
    everything after it, authentication included. A request with a body, authenticated before its body
    is read, had its TokenReviews retried (up to 10 s) past a shorter ``timeout`` of its own, until
    --request-timeout, and was then answered 408 "the request body did not arrive in time", as if its
    client were late (review r3auth L1). Both are the 504 of a GET now, at the request's deadline: the
    message names 1 s, where the other bound is 4 s (or the review's 10 s), and the retries' waits,
    on a clock never advanced, end only when the deadline cancels them."""
    delays = Clock()
    server = await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="AlwaysAllow",
        http=HttpLimits(request_timeout=request_timeout),
        review_delays=delays,
    )
    kube_api.inject_error(500, path="/apis/authentication.k8s.io/v1/tokenreviews", times=10_000)
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))
    path = f"{collection(namespace)}/{encode_name('app', 'v1')}{query}"
    answers = []
    for method, body in (("GET", b""), ("DELETE", b"{}")):
        bearer = {"Authorization": f"Bearer made-up-{method}"}
        raw = request_bytes(method, path, bearer, body)
        reply = await threads.deferToThread(exchange, target, raw, timeout=HANG_GUARD)
        answers.append((method, bool(body), reply.code, reply.json().get("message")))
    late = "Timeout: the request did not complete within 1s"
    assert answers == [("GET", False, 504, late), ("DELETE", True, 504, late)]
    assert delays.getDelayedCalls() == []  # each review's next attempt, cancelled with its request


@pytest_twisted.ensureDeferred
async def test_a_watch_with_a_body_is_not_cut_at_its_timeout_while_it_is_authenticated(
    make_server, registry, kube_api, kube_kubeconfig, namespace, reactor
):
    """A watch does not read ``timeout`` (docs/api.md; kube-apiserver's WithRequestDeadline passes
    long-running requests through): a watch GET with a body (read and ignored), authenticated before
    its body is read, was answered 504 at its ``timeout=1s`` while its TokenReview was under way, where
    the same watch without one waits for its review (review r2fix L2). Each review is held past that
    second (a timer set after the request's own deadline, on the same reactor) and then answered: the
    made-up token is nobody, a 401 for both."""
    server = await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="AlwaysAllow",
        http=HttpLimits(request_timeout=20.0),
    )
    kube_api.hold_token_reviews = True
    held = kube_api.held_token_reviews
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))
    path = f"{collection(namespace)}?watch=1&timeout=1s"
    answers = []
    for body in (b"", b"{}"):
        token = f"made-up-{len(body)}"
        raw = request_bytes("GET", path, {"Authorization": f"Bearer {token}"}, body)
        reply = threads.deferToThread(exchange, target, raw, timeout=HANG_GUARD)

        async def asked(token: str = token) -> bool:
            return token in held

        assert await eventually(asked, within=HANG_GUARD) is True
        await task.deferLater(reactor, 1.5)
        if token in held:  # not when the deadline cancelled the review
            kube_api.answer_token_review(token)
        answered = await reply
        answers.append((bool(body), answered.code, answered.json().get("message")))
    assert answers == [(False, 401, "Unauthorized"), (True, 401, "Unauthorized")]


def _send_token_heads(target: Target, path: str, source: str, tokens: list[str]) -> list[Any]:
    """A connection from ``source`` per token, each sending one GET with it, its answer left unread."""
    socks = []
    for token in tokens:
        sock = target.connect(source=source)
        sock.sendall(request_bytes("GET", path, {"Authorization": f"Bearer {token}"}))
        socks.append(sock)
    return socks


@pytest_twisted.ensureDeferred
async def test_token_reviews_under_way_are_bounded_and_shared_out_by_address(
    make_server, registry, kube_api, kube_kubeconfig, namespace
):
    """Made-up tokens from some addresses while the cluster API holds TokenReviews had a review under
    way per connection, each on a connection of its own to the cluster API (review r1flood L2). The
    cluster API now holds at most REVIEWS_AT_ONCE, at most REVIEWS_PER_CLIENT of them one address's
    (review r2tokcap F1), and another address's review is asked at the first free slot, ahead of the
    flood's queued ones."""
    server = await make_server(registry, kubeconfig=str(kube_kubeconfig), authorization_mode="AlwaysAllow")
    slots = server.running.api.authenticator.token.slots
    kube_api.add_token("valid-token", "alice")
    kube_api.hold_token_reviews = True
    held = kube_api.held_token_reviews
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))
    # Enough addresses to hold every slot, the first of them 3 more tokens, queued.
    filling = REVIEWS_AT_ONCE // REVIEWS_PER_CLIENT
    flood = {
        f"127.0.0.{2 + n}": [f"made-up-{n}-{i}" for i in range(REVIEWS_PER_CLIENT)] for n in range(filling)
    }
    flood["127.0.0.2"] += ["made-up-0-8", "made-up-0-9", "made-up-0-10"]
    socks: list[Any] = []
    try:

        async def queued(count: int, holding: int = REVIEWS_AT_ONCE) -> bool:
            return len(held) == holding and slots.waiting == count

        for source, tokens in flood.items():
            socks += await threads.deferToThread(
                _send_token_heads, target, collection(namespace), source, tokens
            )
            if source == "127.0.0.2":  # alone, it holds no more than its share, the others' left free
                assert await eventually(lambda: queued(3, REVIEWS_PER_CLIENT), within=HANG_GUARD) is True
        assert await eventually(lambda: queued(3), within=HANG_GUARD) is True
        socks += await threads.deferToThread(
            _send_token_heads, target, collection(namespace), f"127.0.0.{2 + filling}", ["valid-token"]
        )
        assert await eventually(lambda: queued(4), within=HANG_GUARD) is True
        # A review of the address with 3 queued: its slot goes to the address holding none.
        kube_api.answer_token_review(next(token for token in held if token in flood["127.0.0.2"]))
        assert await eventually(lambda: queued(3), within=HANG_GUARD) is True
        assert "valid-token" in held
        kube_api.answer_token_review("valid-token")
        alice = await threads.deferToThread(read_reply, socks[-1])
        assert alice.code == 200, alice.body
        kube_api.hold_token_reviews = False
        for token in list(held):
            kube_api.answer_token_review(token)
        answers = await threads.deferToThread(lambda: [read_reply(sock).code for sock in socks[:-1]])
        assert answers == [401] * (REVIEWS_AT_ONCE + 3)
        assert kube_api.most_token_reviews_held == REVIEWS_AT_ONCE
    finally:
        for sock in socks:
            sock.close()


@pytest_twisted.ensureDeferred
async def test_the_cluster_client_keeps_an_idle_connection_for_each_review_slot(
    make_server, registry, kube_kubeconfig
):
    """Its own 16 and one more per TokenReview that may be under way, so that a review reuses one
    rather than making a TLS handshake (review r2tokcap L1: nothing saw the 16 + 32)."""
    server = await make_server(registry, kubeconfig=str(kube_kubeconfig), authorization_mode="AlwaysAllow")
    pool = server.running.kube._pool
    assert pool.maxPersistentPerHost == MAX_IDLE_CONNECTIONS + REVIEWS_AT_ONCE == 48
    assert pool.cachedConnectionTimeout == IDLE_CONNECTION_TIMEOUT


def _send_bodies_heads(target: Target, path: str, count: int) -> list[Any]:
    """Connections each sending the head of a DELETE with a body and a token of its own: the server
    authenticates (admits) such a request before it reads the body."""
    socks = []
    for i in range(count):
        sock = target.connect()
        head = request_bytes("DELETE", path, {"Authorization": f"Bearer gone-{i}"})
        sock.sendall(head.replace(b"\r\n\r\n", b"\r\nContent-Length: 10\r\n\r\n", 1))
        socks.append(sock)
    return socks


@pytest_twisted.ensureDeferred
async def test_a_token_review_is_not_asked_again_for_a_client_gone_during_admission(
    make_server, registry, kube_api, kube_kubeconfig, namespace
):
    """A request with a body is authenticated before its body is read: its client gone meanwhile, its
    TokenReview was still asked again, up to 5 times for nobody (review r2auth L2). The admission is
    cancelled with its connection now, and the review with its last waiter."""
    delays = Clock()
    server = await make_server(
        registry, kubeconfig=str(kube_kubeconfig), authorization_mode="AlwaysAllow", review_delays=delays
    )
    tokenreviews = "/apis/authentication.k8s.io/v1/tokenreviews"
    kube_api.inject_error(500, path=tokenreviews, times=10_000)
    before = len(kube_api.requests_for(tokenreviews))
    connections = server.running.connections.protocols
    idle = len(connections)
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))
    with collected_logs() as events:
        socks = await threads.deferToThread(_send_bodies_heads, target, f"{collection(namespace)}/x", 4)
        try:

            async def retries_due() -> bool:  # each review answered once, its next attempt due on ``delays``
                return len(delays.getDelayedCalls()) == 4

            assert await eventually(retries_due, within=HANG_GUARD) is True
        finally:
            for sock in socks:
                sock.close()

        async def gone() -> bool:
            return len(connections) == idle

        assert await eventually(gone, within=HANG_GUARD) is True
        # Cancelled as the connections were lost: no attempt is due any more, and no review ended
        # with its error (as the reviews' own 10 s would end them, their requests then refused).
        assert delays.getDelayedCalls() == []
        delays.advance(ReviewRetry().timeout)
        assert len(kube_api.requests_for(tokenreviews)) - before == 4
    lines = [formatEvent(e) for e in events]
    assert [line for line in lines if "authentication failed" in line or "admission" in line] == []


@pytest_twisted.ensureDeferred
async def test_a_failing_token_review_is_a_401_not_a_500(rbac_server, kube_api, namespace):
    kube_api.inject_error(500, method="POST", path="/apis/authentication.k8s.io/v1/tokenreviews", times=20)
    reply = await rbac_server.client().get(
        collection(namespace), headers={"Authorization": "Bearer review-will-fail"}
    )
    assert reply.code == 401, reply.body
    assert reply.json()["reason"] == "Unauthorized"
    assert [r for r in kube_api.requests if "tokenreviews" in r.path]  # the review was tried


# --- certificates that do not verify identify nobody (r1tls L3) ------------------------------------

DAY = datetime.timedelta(days=1)


def _resigned_ca(ca: Authority, before: datetime.datetime, after: datetime.datetime) -> Path:
    """``ca``'s certificate signed again (same key, subject and extensions) with this validity."""
    path = ca.directory / "resigned-ca.crt"
    path.write_bytes(ca.resigned(before, after).public_bytes(serialization.Encoding.PEM))
    return path


def _leaf_of(
    ca: Authority,
    stem: str,
    before: datetime.datetime,
    after: datetime.datetime,
    usage: x509.ObjectIdentifier,
) -> Issued:
    """A front-proxy-client certificate of ``ca`` with this validity and extended key usage."""
    issued = ca.client("front-proxy-client", stem=stem)  # for its key and files
    cert = ca.client_leaf(issued.key, before, after, usage)
    issued.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return issued


@pytest.mark.parametrize("role", ["front-proxy", "client-ca"])
@pytest.mark.parametrize("case", ["expired-ca", "expired-leaf", "future-leaf", "server-auth-leaf"])
@pytest_twisted.ensureDeferred
async def test_a_certificate_that_does_not_verify_identifies_nobody(
    make_server, registry, tmp_path, pki, case: str, role: str
):
    """An expired CA, an expired or not yet valid certificate, or one without clientAuth: 401, whether
    it would be the front proxy's (its X-Remote-User is not believed) or a client-CA user's. Before,
    nothing tested this: `tls._verify` keeping only the last callback's verdict passed every test."""
    now = datetime.datetime.now(datetime.UTC)
    ca = Authority.create(tmp_path / "ca", "ca")
    ca_file = str(ca.cert_file)
    client_auth = ExtendedKeyUsageOID.CLIENT_AUTH
    if case == "expired-ca":
        ca_file = str(_resigned_ca(ca, now - 3 * DAY, now - DAY))
        leaf = _leaf_of(ca, case, now - DAY, now + DAY, client_auth)
    elif case == "expired-leaf":
        leaf = _leaf_of(ca, case, now - 3 * DAY, now - DAY, client_auth)
    elif case == "future-leaf":
        leaf = _leaf_of(ca, case, now + DAY, now + 3 * DAY, client_auth)
    else:
        leaf = _leaf_of(ca, case, now - DAY, now + DAY, ExtendedKeyUsageOID.SERVER_AUTH)
    if role == "front-proxy":
        flags: dict[str, Any] = {
            "requestheader_client_ca_file": ca_file,
            "requestheader_allowed_names": ("front-proxy-client",),
        }
    else:
        flags = {"client_ca_file": ca_file}
    server = await make_server(registry, **flags)
    url = server.url + collection("ns1")
    status = await threads.deferToThread(
        _get_with_chain,
        url,
        str(pki.server_ca.cert_file),
        str(leaf.cert_file),
        str(leaf.key_file),
        {"X-Remote-User": "root"},
    )
    assert status == 401


@pytest_twisted.ensureDeferred
async def test_a_401_for_a_certificate_that_did_not_verify_says_why_once_a_period(make_server, registry, pki):
    """A certificate the client CA signed for servers only (a CA template's, cert-manager ``usages``
    without ``client auth``): the 401 was all its holder saw, and the log said nothing (review r1docs
    L1). One line a period says which certificate and why; a certificate that verifies says none."""
    server = await make_server(registry)
    now = datetime.datetime.now(datetime.UTC)
    leaf = _leaf_of(pki.client_ca, "server-auth", now - DAY, now + DAY, ExtendedKeyUsageOID.SERVER_AUTH)
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))
    with collected_logs() as events:
        for user in (leaf, leaf, pki.client_ca.client("alice")):
            reply = await threads.deferToThread(exchange, target, request_bytes("GET", "/version"), user)
            assert reply.is_status(401) if user is leaf else reply.code == 200, reply
    said = [formatEvent(e) for e in events if "401" in formatEvent(e)]
    assert said == [
        'a request is answered 401: the client certificate "CN=front-proxy-client" (issuer '
        f'"{pki.client_ca.cert.subject.rfc4514_string()}") is not for client authentication: its extended '
        "key usage allows neither clientAuth nor anyExtendedKeyUsage, so it identifies no one"
    ], said


def _requests_at(target: Target, user: Issued, moments: tuple[datetime.datetime | None, ...]) -> list[Reply]:
    """Requests on one connection, each sent once its moment has passed (None: at once)."""
    raw = request_bytes("GET", "/version")
    replies = []
    with target.connect(user) as sock:
        for moment in moments:
            wait = (moment - datetime.datetime.now(datetime.UTC)).total_seconds() if moment else 0
            if wait > 0:
                time.sleep(wait)
            sock.sendall(raw)
            replies.append(read_reply(sock))
    return replies


@pytest_twisted.ensureDeferred
async def test_a_certificate_not_yet_valid_at_the_handshake_is_said_only_while_it_is_not(
    make_server, registry, pki
):
    """The handshake did not verify it only for the time: the chain is kept and the authenticators
    verify it per request (review r1hostile2 L1). Before its notBefore the 401's line says "not valid
    yet"; after, the same connection's request is the user's, and no line is said."""
    server = await make_server(registry)
    now = datetime.datetime.now(datetime.UTC)
    # Whole seconds, as a certificate holds them: at least 3 s from now, for the handshake to come before.
    later = (now + datetime.timedelta(seconds=4)).replace(microsecond=0)
    leaf = _leaf_of(pki.client_ca, "later", later, now + DAY, ExtendedKeyUsageOID.CLIENT_AUTH)
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))
    with collected_logs() as events:
        first, second = await threads.deferToThread(
            _requests_at, target, leaf, (None, later + datetime.timedelta(seconds=1.5))
        )
    assert first.is_status(401), first
    assert second.code == 200, second
    said = [formatEvent(e) for e in events if "401" in formatEvent(e)]
    assert said == [
        'a request is answered 401: the client certificate "CN=front-proxy-client" (issuer '
        f'"{pki.client_ca.cert.subject.rfc4514_string()}") is not valid yet (its notBefore is later than '
        "this server's clock), so it identifies no one"
    ], said


@pytest_twisted.ensureDeferred
async def test_a_certificate_valid_since_the_handshake_refused_for_another_reason_is_not_said_not_valid_yet(
    make_server, registry, pki, tmp_path
):
    """Not valid yet at the handshake, valid at the connection's first request, and without a CN (so it
    identifies no one, and writes no line, as a verified certificate without a CN): the handshake's
    "not valid yet" no longer holds, and is not said."""
    server = await make_server(registry)
    now = datetime.datetime.now(datetime.UTC)
    # Whole seconds, as a certificate holds them: at least 3 s from now, for the handshake to come before.
    later = (now + datetime.timedelta(seconds=4)).replace(microsecond=0)
    issued = pki.client_ca.client("nameless", stem="nameless")  # for its key and files
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(pki.client_ca.cert.subject)
        .public_key(issued.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(later)
        .not_valid_after(now + DAY)
        .sign(pki.client_ca.key, hashes.SHA256())
    )
    issued.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))
    with collected_logs() as events:
        (reply,) = await threads.deferToThread(
            _requests_at, target, issued, (later + datetime.timedelta(seconds=1.5),)
        )
    assert reply.is_status(401), reply
    said = [formatEvent(e) for e in events if "401" in formatEvent(e)]
    assert said == [], said
