"""Watches over HTTPS deciding access by RBAC: a grant, a revocation or a change of groups between or
during streams ends a watch with 410, and what stays the same keeps it."""

from __future__ import annotations

import collections
import json
from typing import Any

import attrs
import pytest
import pytest_twisted

from payloadtags.limits import WatchLimits
from payloadtags.names import encode_name
from tests.support import images
from tests.support.client import ApiClient, stream
from tests.support.kubeapi.resources import ROLEBINDINGS
from tests.support.rbac import ensure_namespace, eventually, grant
from tests.support.watch_http import (
    B,
    a_list_of_the_api,
    alice_and_a_change_of_secret,
    alice_by_rbac,
    alice_in_and_out_of_devs,
    checked,
    collection,
    gone,
    noted_by_a_stream,
    ready,
    secret_grants,
    showing,
)


async def _rules_loading(
    make_server: Any, registry: Any, kube_api: Any, kube_kubeconfig: Any, pki: Any, namespace: str
) -> tuple[Any, ApiClient]:
    """A server deciding access by RBAC whose rules cannot load until the test clears the cluster API's
    errors, and alice, who may see `<namespace>/app` (pushed) once they do."""
    images.push_oci_image(registry, f"{namespace}/app", "v1")
    grant(kube_api, namespace, "alice", ["get"], ["app"], "alice-read")
    kube_api.inject_error(500, path="/apis/rbac.authorization.k8s.io/v1/roles", times=1_000_000)
    api = await make_server(registry, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC")
    return api, api.client(pki.client_ca.client("alice"))


async def _rules_loaded(api: Any) -> bool:
    return bool((await api.client(None).get("/readyz/rbac")).code == 200)


@pytest_twisted.ensureDeferred
async def test_watchers_see_only_readable_repositories_and_an_access_change_ends_the_stream(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    namespace, _ = repo.split("/", 1)
    _, alice = await alice_by_rbac(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    assert await eventually(lambda: showing(alice, namespace, ["app"]), within=20)
    watch = await stream(alice, f"{collection(namespace)}?watch=true&resourceVersion=0")
    first = await watch.next()
    assert (first["type"], first["object"]["spec"]["repositoryPath"]) == ("ADDED", "app")
    images.push_oci_image(registry, f"{namespace}/secret", "v2", seed="secret2")  # not hers: no event
    images.push_oci_image(registry, f"{namespace}/app", "v2", seed="app2")
    second = await watch.next()
    assert (second["type"], second["object"]["spec"]["repositoryPath"]) == ("ADDED", "app")
    assert second["object"]["spec"]["tag"] == "v2"
    # Granting her `secret` changes what she may see: the stream ends with a 410, so her client relists.
    grant(kube_api, namespace, "alice", ["get"], ["app", "secret"], "alice-read-more")
    error = await gone(watch, reactor)
    assert (error["type"], error["object"]["code"], error["object"]["reason"]) == ("ERROR", 410, "Expired")
    assert await showing(alice, namespace, ["app", "secret"])


@pytest_twisted.ensureDeferred
async def test_a_grant_or_a_revocation_ends_a_watch_from_a_list_with_410(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """A watch from a list's resourceVersion was never told about `secret`: granting it must still end
    the stream, with a 410 (a clean end makes client-go re-watch from its last resourceVersion, which
    never replays `secret:v1`); so must taking it away."""
    namespace, _ = repo.split("/", 1)
    _, alice = await alice_by_rbac(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    listed = await eventually(lambda: showing(alice, namespace, ["app"]), within=20)
    assert listed
    watch = await stream(alice, f"{collection(namespace)}?watch=true&resourceVersion={listed}")
    assert watch.code == 200
    grant(kube_api, namespace, "alice", ["get"], ["secret"], "alice-read-secret")
    error = await gone(watch, reactor)
    assert error["type"] == "ERROR" and error["object"]["kind"] == "Status"
    assert (error["object"]["code"], error["object"]["reason"]) == (410, "Expired")
    # The relist the 410 brings shows `secret:v1`; a watch from it ends the same way when `secret`
    # is taken away again, so that the client does not keep it.
    relisted = await eventually(lambda: showing(alice, namespace, ["app", "secret"]), within=20)
    assert relisted
    watch = await stream(alice, f"{collection(namespace)}?watch=true&resourceVersion={relisted}")
    assert watch.code == 200
    kube_api.store.delete(ROLEBINDINGS, "alice-read-secret", namespace)
    error = await gone(watch, reactor)
    assert (error["type"], error["object"]["code"], error["object"]["reason"]) == ("ERROR", 410, "Expired")
    assert await eventually(lambda: showing(alice, namespace, ["app"]), within=20)


@pytest.mark.parametrize("change", ["revoke", "grant"])
@pytest_twisted.ensureDeferred
async def test_a_change_of_her_rules_between_two_streams_is_410_for_the_re_watch(
    change, make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """A stream ends on its timeout after a last bookmark (client-go asks 5 to 10 minutes), `secret` is
    taken away (or granted), and the reflector watches again from that bookmark: the 410 that a running
    watch gets must come then too. It used to get bookmarks and nothing else, and her client kept
    `secret:v1` for good (or never got it)."""
    namespace, _ = repo.split("/", 1)
    api, alice = await alice_by_rbac(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    before_paths, after_paths = ["app", "secret"], ["app"]
    if change == "revoke":
        grant(kube_api, namespace, "alice", ["get"], ["secret"], "alice-read-secret")
    else:
        before_paths, after_paths = after_paths, before_paths
    listed = await eventually(lambda: showing(alice, namespace, before_paths), within=20)
    assert listed
    first = await stream(
        alice,
        f"{collection(namespace)}?watch=true&allowWatchBookmarks=true&timeoutSeconds=1"
        f"&resourceVersion={listed}",
    )
    last = await first.next()
    assert last["type"] == "BOOKMARK", last
    ended = first.ended
    ended.addTimeout(10, reactor)  # a hang guard: the stream ends by its timeoutSeconds
    await ended
    bookmark = last["object"]["metadata"]["resourceVersion"]
    generation = api.running.api.watch_hub.access_generation()
    if change == "revoke":
        kube_api.store.delete(ROLEBINDINGS, "alice-read-secret", namespace)
    else:
        grant(kube_api, namespace, "alice", ["get"], ["secret"], "alice-read-secret")
    assert await eventually(lambda: checked(api, generation), within=20)
    assert await eventually(lambda: showing(alice, namespace, after_paths), within=20)
    again = await stream(
        alice,
        f"{collection(namespace)}?watch=true&allowWatchBookmarks=true&timeoutSeconds=30"
        f"&resourceVersion={bookmark}",
    )
    assert again.code == 200
    error = await gone(again, reactor)
    assert (error["type"], error["object"]["code"], error["object"]["reason"]) == ("ERROR", 410, "Expired")


async def _one_stream(client: ApiClient, namespace: str, listed: str | None, reactor: Any) -> str:
    """A watch from ``listed`` that ends on its 1 s timeout after a bookmark; the bookmark's version."""
    first = await stream(
        client,
        f"{collection(namespace)}?watch=true&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion={listed}",
    )
    last = await first.next()
    while last["type"] != "BOOKMARK":
        last = await first.next()
    ended = first.ended
    ended.addTimeout(10, reactor)  # a hang guard: the stream ends by its timeoutSeconds
    await ended
    return str(last["object"]["metadata"]["resourceVersion"])


async def _first_line_from(client: ApiClient, namespace: str, version: str | None) -> Any:
    again = await stream(
        client,
        f"{collection(namespace)}?watch=true&allowWatchBookmarks=true&timeoutSeconds=2&resourceVersion={version}",
    )
    assert again.code == 200
    return await again.next()


@pytest_twisted.ensureDeferred
async def test_leaving_a_group_between_two_streams_is_410_for_the_re_watch(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """alice (client certificate O=devs) sees `secret` through a RoleBinding of devs; her next
    certificate has no devs. Her rules are hers whatever groups a request of hers carries."""
    namespace, _ = repo.split("/", 1)
    in_devs, not_in_devs = await alice_in_and_out_of_devs(
        make_server, registry, kube_api, kube_kubeconfig, pki, namespace
    )
    listed = await eventually(lambda: showing(in_devs, namespace, ["app", "secret"]), within=20)
    bookmark = await _one_stream(in_devs, namespace, listed, reactor)
    assert await eventually(lambda: showing(not_in_devs, namespace, ["app"]), within=20)
    line = await _first_line_from(not_in_devs, namespace, bookmark)
    assert (line["type"], line["object"]["code"]) == ("ERROR", 410), line


@pytest_twisted.ensureDeferred
async def test_a_list_made_after_her_rules_changed_and_the_watch_from_it_are_served(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """No watch of hers ran when `secret` was revoked: a client of hers that lists after the access check
    saw it (a restarted controller, `kubectl get -w`) holds nothing the old rules decided."""
    namespace, _ = repo.split("/", 1)
    api, alice = await alice_by_rbac(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    grant(kube_api, namespace, "alice", ["get"], ["secret"], "alice-read-secret")
    listed = await eventually(lambda: showing(alice, namespace, ["app", "secret"]), within=20)
    bookmark = await _one_stream(alice, namespace, listed, reactor)
    generation = api.running.api.watch_hub.access_generation()
    kube_api.store.delete(ROLEBINDINGS, "alice-read-secret", namespace)
    assert await eventually(lambda: checked(api, generation), within=20)
    fresh = await eventually(lambda: showing(alice, namespace, ["app"]), within=20)
    assert (await _first_line_from(alice, namespace, fresh))["type"] == "BOOKMARK"
    line = await _first_line_from(alice, namespace, bookmark)
    assert (line["type"], line["object"]["code"]) == ("ERROR", 410), line


@pytest.mark.parametrize("between", ["revoked", "granted"])
@pytest_twisted.ensureDeferred
async def test_her_rules_changed_back_between_her_list_and_its_watch_is_410(
    between, make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """A stream of alice's ran (her rules are noted); `secret` is granted (or taken away) while none of
    her watches runs, she relists under that, and the change is undone before her watch from that list.
    Her rules now equal those noted before: her list must have noted the change, or the watch is
    served and her client keeps `secret:v1` for good (or never gets it)."""
    namespace, _ = repo.split("/", 1)
    api, alice = await alice_by_rbac(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    hub = api.running.api.watch_hub
    give, take = secret_grants(kube_api, namespace)

    first, then = ["app"], ["app", "secret"]
    change, undo = give, take
    if between == "granted":
        give()
        first, then, change, undo = then, first, take, give
    listed = await eventually(lambda: showing(alice, namespace, first), within=20)
    await _one_stream(alice, namespace, listed, reactor)
    generation = hub.access_generation()
    change()
    assert await eventually(lambda: checked(api, generation), within=20)
    middle = await eventually(lambda: showing(alice, namespace, then), within=20)
    assert middle
    generation = hub.access_generation()
    undo()
    assert await eventually(lambda: checked(api, generation), within=20)
    line = await _first_line_from(alice, namespace, middle)
    assert (line["type"], line["object"]["code"]) == ("ERROR", 410), line


@pytest.mark.parametrize("scope", ["namespace", "all"])
@pytest.mark.parametrize("between", ["revoked", "granted"])
@pytest_twisted.ensureDeferred
async def test_her_rules_changed_back_between_two_pages_of_her_list_is_410(
    scope, between, make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """As above, through a paged list (kubectl's chunking, client-go's pager): alice's rules are noted,
    her list's first page (`limit=1`) takes its resourceVersion under A; `secret` is taken away (or
    granted) and checked while none of her watches runs; her second page is decided by those rules; A
    again before the rest of the pages and her watch from the list's resourceVersion. Only the first
    page checked her rules: the watch was served, and her client kept `secret:v1` for good (or never
    got it)."""
    from urllib.parse import quote

    namespace, _ = repo.split("/", 1)
    api, alice, first, change, undo = await alice_and_a_change_of_secret(
        between, make_server, registry, kube_api, kube_kubeconfig, pki, namespace
    )
    hub = api.running.api.watch_hub
    listed = await eventually(lambda: showing(alice, namespace, first), within=20)
    url = collection(namespace) if scope == "namespace" else f"{B}/payloadrepositorytags"
    if scope == "all":
        listed = (await alice.get(url)).json()["metadata"]["resourceVersion"]
    await noted_by_a_stream(alice, url, listed)

    def mine(page: Any) -> list[str]:
        return [i["spec"]["repositoryPath"] for i in page["items"] if i["metadata"]["namespace"] == namespace]

    page = (await alice.get(f"{url}?limit=1")).json()
    shown = mine(page)
    assert shown == ["app"], page
    rv = page["metadata"]["resourceVersion"]
    generation = hub.access_generation()
    change()
    assert await eventually(lambda: checked(api, generation), within=20)
    page = (await alice.get(f"{url}?limit=1&continue={quote(page['metadata']['continue'])}")).json()
    shown += mine(page)
    generation = hub.access_generation()
    undo()
    assert await eventually(lambda: checked(api, generation), within=20)
    while page["metadata"].get("continue"):  # the pager reads on to the end, under A again
        page = (await alice.get(f"{url}?limit=1&continue={quote(page['metadata']['continue'])}")).json()
        shown += mine(page)
    assert sorted(shown) != sorted(first), "the second page was not decided by the changed rules"
    watch = await stream(
        alice, f"{url}?watch=true&allowWatchBookmarks=true&timeoutSeconds=2&resourceVersion={rv}"
    )
    assert watch.code == 200
    line = await watch.next()
    assert (line["type"], line["object"].get("code")) == ("ERROR", 410), (shown, line)


@pytest_twisted.ensureDeferred
async def test_a_page_of_her_all_namespaces_list_checks_her_rules_where_it_read(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """A page costs what it read: alice's rules are noted in every namespace with tags (her -A stream
    ran); a continued page of her -A list (`limit=1`) that reads `zz` of her namespace checks her rules
    there, not in every namespace noted for her (the later namespace's are checked by the page that
    reads it). Only the first page checks them all, before the list takes its resourceVersion."""
    from urllib.parse import quote

    namespace, _ = repo.split("/", 1)
    later = f"{namespace}z"  # sorts after `namespace/...`
    images.push_oci_image(registry, f"{later}/app", "v1", seed=f"{later}/app")
    images.push_oci_image(registry, f"{namespace}/zzz", "v1", seed=f"{namespace}/zzz")
    api, alice = await alice_by_rbac(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/zz"
    )
    # What the pages read past their end (to tell whether there is more) is hers, in her namespace.
    grant(kube_api, namespace, "alice", ["get"], ["zz", "zzz"], "alice-read-zz")
    hub = api.running.api.watch_hub
    url = f"{B}/payloadrepositorytags"
    await eventually(lambda: showing(alice, namespace, ["app", "zz", "zzz"]), within=20)
    listed = (await alice.get(url)).json()["metadata"]["resourceVersion"]
    await noted_by_a_stream(alice, url, listed)
    rules_of = hub.access_rules
    asked: list[str] = []

    def counted(user: Any, scope_namespace: str) -> Any:
        asked.append(scope_namespace)
        return rules_of(user, scope_namespace)

    hub.access_rules = counted
    page = (await alice.get(f"{url}?limit=1")).json()
    assert [(i["metadata"]["namespace"], i["spec"]["repositoryPath"]) for i in page["items"]] == [
        (namespace, "app")
    ]
    asked.clear()
    page = (await alice.get(f"{url}?limit=1&continue={quote(page['metadata']['continue'])}")).json()
    assert [(i["metadata"]["namespace"], i["spec"]["repositoryPath"]) for i in page["items"]] == [
        (namespace, "zz")
    ]
    assert namespace in asked and later not in asked, asked


@pytest_twisted.ensureDeferred
async def test_a_watch_of_the_changes_from_now_on_is_not_410_when_her_groups_changed(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """`sendInitialEvents=false` from `""` or `"0"` asks for the changes from now on, no past, and
    kube-apiserver never answers 410 to it. alice's rules were noted under one certificate; her
    next one's groups change them (a change dated when it is seen, after "now"): it used to be 410."""
    namespace, _ = repo.split("/", 1)
    in_devs, not_in_devs = await alice_in_and_out_of_devs(
        make_server, registry, kube_api, kube_kubeconfig, pki, namespace
    )
    listed = await eventually(lambda: showing(not_in_devs, namespace, ["app"]), within=20)
    await _one_stream(not_in_devs, namespace, listed, reactor)
    query = (
        "watch=true&sendInitialEvents=false&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
        "&timeoutSeconds=1"
    )
    for client, version in ((in_devs, ""), (not_in_devs, "0")):
        watch = await stream(client, f"{collection(namespace)}?{query}&resourceVersion={version}")
        assert watch.code == 200
        line = await watch.next()
        assert line["type"] == "BOOKMARK", line
        ended = watch.ended
        ended.addTimeout(10, reactor)  # a hang guard: the stream ends by its timeoutSeconds
        await ended


@pytest_twisted.ensureDeferred
async def test_an_rbac_relist_that_reorders_her_bindings_keeps_the_re_watch(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """The server's RBAC reflectors relist (their watches cut after a compaction) and her two
    RoleBindings come back in name order, not the order they were made in: the same rules."""
    namespace, _ = repo.split("/", 1)
    api, alice = await alice_by_rbac(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{namespace}/secret"
    )
    assert await eventually(lambda: showing(alice, namespace, ["app"]), within=20)
    grant(kube_api, namespace, "alice", ["get"], ["secret"], "aaa-read-secret")  # sorts before alice-read
    listed = await eventually(lambda: showing(alice, namespace, ["app", "secret"]), within=20)
    bookmark = await _one_stream(alice, namespace, listed, reactor)
    generation = api.running.api.watch_hub.access_generation()
    ensure_namespace(kube_api, f"{namespace}-other")  # moves the cluster's resourceVersion on
    kube_api.compact()
    kube_api.cut_watches()  # the reflectors watch again from their resourceVersion: 410, relist
    assert await eventually(lambda: checked(api, generation), within=20)
    assert await eventually(lambda: showing(alice, namespace, ["app", "secret"]), within=20)
    line = await _first_line_from(alice, namespace, bookmark)
    assert line["type"] == "BOOKMARK", line


@pytest_twisted.ensureDeferred
async def test_a_list_refused_while_the_rules_load_does_not_make_a_later_lists_watch_resend_its_tags(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """A list refused with 503 while the access rules load still counted as a list of its
    resourceVersion's record, so a watch from the retry's list (same resourceVersion) was first sent
    every tag that list had shown as ADDED again."""
    namespace, _ = repo.split("/", 1)
    api, alice = await _rules_loading(make_server, registry, kube_api, kube_kubeconfig, pki, namespace)
    refused = await alice.get(collection(namespace))
    assert refused.code == 503, refused.body
    kube_api.clear_injected_errors()
    assert await eventually(lambda: _rules_loaded(api), within=30)
    listed = await alice.get(collection(namespace))
    assert [i["spec"]["tag"] for i in listed.json()["items"]] == ["v1"]
    images.push_oci_image(registry, f"{namespace}/app", "v2", seed="v2")
    version = listed.json()["metadata"]["resourceVersion"]
    watch = await stream(
        alice, f"{collection(namespace)}?watch=true&resourceVersion={version}&timeoutSeconds=2"
    )
    assert watch.code == 200
    ended = watch.ended
    ended.addTimeout(20, reactor)  # a hang guard: the stream ends by its timeoutSeconds
    await ended
    events = [json.loads(line) for line in watch.lines.pending]
    shown = [(e["type"], e["object"]["spec"]["tag"]) for e in events if e["type"] != "BOOKMARK"]
    assert shown == [("ADDED", "v2")]


@pytest_twisted.ensureDeferred
async def test_a_watch_before_the_rules_load_is_refused_and_later_revocations_still_end_watches(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """Until the RBAC rules are loaded a watch is refused before its head, as a list is: 503 with
    Retry-After. It used to get a 200 and an ERROR 500, and stayed registered; when the rules loaded,
    ending it failed and stopped the access check, so that no revocation ended any watch after it."""
    namespace, _ = repo.split("/", 1)
    api, alice = await _rules_loading(make_server, registry, kube_api, kube_kubeconfig, pki, namespace)
    early = await alice.get(f"{collection(namespace)}?watch=true")
    assert early.code == 503, early.body
    assert early.header("retry-after") == "1"
    assert (early.json()["kind"], early.json()["reason"]) == ("Status", "ServiceUnavailable")
    listed = await alice.get(collection(namespace))
    assert listed.code == 503 and listed.header("retry-after") == "1"
    kube_api.clear_injected_errors()
    assert await eventually(lambda: _rules_loaded(api), within=30)
    watch = await stream(alice, f"{collection(namespace)}?watch=true")
    first = await watch.next()
    assert (first["type"], first["object"]["spec"]["repositoryPath"]) == ("ADDED", "app")
    kube_api.store.delete(ROLEBINDINGS, "alice-read", namespace)
    error = await gone(watch, reactor)
    assert (error["type"], error["object"]["code"], error["object"]["reason"]) == ("ERROR", 410, "Expired")


@pytest_twisted.ensureDeferred
async def test_a_rules_change_that_shows_the_user_nothing_new_keeps_the_stream(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    namespace, _ = repo.split("/", 1)
    api, alice = await alice_by_rbac(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app"
    )
    assert await eventually(lambda: showing(alice, namespace, ["app"]), within=20)
    watch = await stream(alice, f"{collection(namespace)}?watch=true&resourceVersion=0")
    assert (await watch.next())["type"] == "ADDED"
    hub = api.running.api.watch_hub
    generation = hub.access_generation()
    # Bob's rules, and a rule of hers for a repository that has no tags: what she sees is unchanged.
    grant(kube_api, namespace, "bob", ["get"], ["app"], "bob-read")
    grant(kube_api, namespace, "alice", ["get"], ["later"], "alice-read-later")

    async def rechecked() -> bool:
        now = hub.access_generation()
        return bool(now >= generation + 4 and hub.checked_generation == now)

    assert await eventually(rechecked, within=20)
    images.push_oci_image(registry, f"{namespace}/app", "v2", seed="app2")
    added = await watch.next()
    assert (added["type"], added["object"]["spec"]["tag"]) == ("ADDED", "v2")
    assert not watch.ended.called
    watch.close()


@pytest_twisted.ensureDeferred
async def test_a_watch_by_name_decides_and_keeps_access_for_its_tag_only(make_server, registry, repo):
    """What `kubectl get prt NAME -w` sends (a field selector on the name, from "0") over a namespace of
    many repositories: its watch used to ask the authorizer about every repository of the namespace and
    keep each decision for its life (about 226 bytes a repository and a watch, whatever the user may
    read). The selector is asked first now, and the watch keeps no decision."""
    namespace, _ = repo.split("/", 1)
    repositories = 100
    for i in range(repositories):
        images.push_oci_image(registry, f"{namespace}/r{i:04d}", "v1", seed="one")  # same blobs: quick
    api = await make_server(registry, watch=WatchLimits(resync_period=3600))
    client = api.client(api.pki.admin)

    async def decisions() -> float:
        text = (await client.get("/metrics")).body.decode()
        prefix = "payloadtags_authorization_decisions_total{"
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = await decisions()
    name = encode_name("r0000", "v1")
    watch = await stream(
        client, f"{collection(namespace)}?fieldSelector=metadata.name%3D{name}&resourceVersion=0&watch=true"
    )
    first = await watch.next()
    assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == name
    # The watch's one, and the request's for the tag it names (its scope's source may be new).
    assert await decisions() - before <= 2
    (w,) = api.running.api.watch_hub.watchers
    kept = {
        field.name: len(value)
        for field in attrs.fields(type(w))
        if isinstance(value := getattr(w, field.name), dict | list | set | collections.deque)
    }
    assert sum(kept.values()) <= 4, kept  # its rules in the namespace, its end callbacks
    watch.close()


@pytest_twisted.ensureDeferred
async def test_a_single_object_watch_reads_first_only_a_repository_its_user_may_read(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig
):
    """A watch from "0" pinned to one tag reads its repository first (`kubectl get NAME -w`), and what
    the read finds is numbered: for a repository alice may not read, that would tell her, through the
    resourceVersion everyone is answered, that tags changed there. So it is not read for her.

    What the resourceVersion moves by counts what the reads numbered only while nothing else takes
    numbers: no resync (an hour's period), and no access check, whose round takes a number of its own
    once it sees an RBAC change (her grant, whenever its reflector delivers it): a round between the
    two lists of a measure made it 4 for the 3 tags."""
    namespace, _ = repo.split("/", 1)
    for r in (f"{namespace}/app", f"{namespace}/secret"):
        images.push_oci_image(registry, r, "v1", seed=r)
    api = await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="RBAC",
        watch=WatchLimits(resync_period=3600, access_check_interval=3600),
    )
    grant(kube_api, namespace, "alice", ["get", "list", "watch"], ["app"], "alice-read")
    alice = api.client(pki.client_ca.client("alice"))
    assert await eventually(lambda: showing(alice, namespace, ["app"]), within=20)
    standing = await stream(api.client(api.pki.admin), f"{collection(namespace)}?watch=1&resourceVersion=0")
    assert standing.code == 200
    hub = api.running.api.watch_hub
    assert await eventually(lambda: ready(len(hub.watchers) == 1), within=15)

    async def moved_by_a_pinned_watch(path: str) -> int:
        before = int((await alice.get(collection(namespace))).json()["metadata"]["resourceVersion"])
        name = encode_name(path, "nope")
        watch = await stream(
            alice, f"{collection(namespace)}?watch=1&resourceVersion=0&fieldSelector=metadata.name={name}"
        )
        assert watch.code == 200
        watch.close()
        return int((await alice.get(collection(namespace))).json()["metadata"]["resourceVersion"]) - before

    for t in ("n1", "n2", "n3"):  # straight into the registry: no notification, an hour's resync
        images.push_oci_image(registry, f"{namespace}/secret", t, seed=t)
        images.push_oci_image(registry, f"{namespace}/app", t, seed=t)
    assert await moved_by_a_pinned_watch("secret") == 0
    # Her own repository is read (what the read is for): its three new tags are numbered.
    assert await moved_by_a_pinned_watch("app") == 3
    standing.close()


@pytest.mark.parametrize("scope", ["namespace", "all"])
@pytest.mark.parametrize("between", ["revoked", "granted"])
@pytest_twisted.ensureDeferred
async def test_a_page_spanning_a_change_keeps_the_watch_of_a_later_list_made_wholly_after_it(
    scope, between, monkeypatch, make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """Her rules A are noted; a page of her list L1 (`limit=1`) decides by A; before it ends, `secret`
    is granted (or taken away) for good, the access check sees it, and another client of hers (a
    second informer, a kubectl) reads list L2 in pages, wholly by B, which notes the change dated by
    that check; then an RBAC edit of anyone's (bob's) leaves the check behind, and L1's page ends.
    Compared with the rules noted as it ended, L1's decision by A re-noted the change, dated then:
    after L2's resourceVersion, and the watch from L2, decided wholly by B with nothing changed since,
    was a 410 (docs/watch.md, "Access": a list made after that check, and the watch from it, are
    served). A decision is compared with the rules noted as it is made. The periodic check is slow
    here, and run by the test, so that the order is explicit."""
    from urllib.parse import quote

    from payloadtags.inventory import Inventory

    namespace, _ = repo.split("/", 1)
    for repository in (f"{namespace}/app", f"{namespace}/secret", f"{namespace}/zz"):
        images.push_oci_image(registry, repository, "v1", seed=repository)
    api = await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="RBAC",
        watch=WatchLimits(resync_period=0.2, access_check_interval=3600),
    )
    grant(kube_api, namespace, "alice", ["get"], ["app", "zz"], "alice-read")
    alice = api.client(pki.client_ca.client("alice"))
    hub = api.running.api.watch_hub
    give, take = secret_grants(kube_api, namespace)
    first, second, change = ["app", "zz"], ["app", "secret", "zz"], give
    if between == "revoked":
        give()
        first, second, change = second, first, take
    listed = await eventually(lambda: showing(alice, namespace, first), within=20)
    url = collection(namespace) if scope == "namespace" else f"{B}/payloadrepositorytags"
    if scope == "all":
        listed = (await alice.get(url)).json()["metadata"]["resourceVersion"]
    await noted_by_a_stream(alice, url, listed)  # her rules are noted in the scope (A)

    real = Inventory.list
    armed = False
    later: dict[str, Any] = {}

    async def another_list_while_read(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal armed
        if not armed or not a_list_of_the_api(kwargs):
            return await real(self, *args, **kwargs)
        armed = False
        result = await real(self, *args, **kwargs)  # L1's page: decided by A
        generation = hub.access_generation()
        change()  # A -> B, for good
        await eventually(lambda: showing(alice, namespace, second), within=20)  # the server has B
        assert hub.access_generation() > generation
        hub.check_access()  # and its access check saw them
        assert hub.checked_generation == hub.access_generation()
        pages = [(await alice.get(f"{url}?limit=1")).json()]
        while token := pages[-1]["metadata"].get("continue"):
            pages.append((await alice.get(f"{url}?limit=1&continue={quote(token)}")).json())
        later["rv"] = pages[0]["metadata"]["resourceVersion"]
        generation = hub.access_generation()
        grant(kube_api, namespace, "bob", ["get"], ["app"], "bob-read")

        async def edited() -> bool:
            return bool(hub.access_generation() > generation)

        assert await eventually(edited, within=20, step=0.005)
        assert hub.checked_generation < hub.access_generation()
        return result  # L1's page ends now

    monkeypatch.setattr(Inventory, "list", another_list_while_read)
    armed = True
    assert (await alice.get(f"{url}?limit=1")).code == 200
    assert not armed and "rv" in later
    watch = await stream(
        alice, f"{url}?watch=true&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion={later['rv']}"
    )
    assert watch.code == 200
    line = await watch.next()
    watch.close()
    assert line["type"] == "BOOKMARK", line
