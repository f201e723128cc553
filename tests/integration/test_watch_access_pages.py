"""Watches from lists read in pages while her RBAC rules change and change back during a page's
read: the watch from such a list is a 410."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest
import pytest_twisted

from tests.support import images
from tests.support.client import stream
from tests.support.rbac import eventually, grant
from tests.support.watch_http import (
    B,
    a_list_of_the_api,
    alice_and_a_change_of_secret,
    alice_by_rbac,
    checked,
    collection,
    noted_by_a_stream,
    secret_grants,
    showing,
)


@attrs.define
class _UndoneWhileRead:
    """Once armed (her rules changed and the access check has seen it), the next registry read of a
    list (`Inventory.list`) is made under the changed rules, which are then changed back (`undo`),
    seen by the access check too, before the read returns: a page decided by rules that no longer
    hold by the time it is read."""

    api: Any
    undo: Callable[[], object]
    armed: bool = False

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from payloadtags.inventory import Inventory

        real = Inventory.list

        async def undone_while_read(inventory: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.armed or not a_list_of_the_api(kwargs):
                return await real(inventory, *args, **kwargs)
            self.armed = False
            result = await real(inventory, *args, **kwargs)  # decided by the changed rules
            await self._seen(self.undo)
            return result

        monkeypatch.setattr(Inventory, "list", undone_while_read)

    async def arm(self, change: Callable[[], object]) -> None:
        await self._seen(change)
        self.armed = True

    async def _seen(self, edit: Callable[[], object]) -> None:
        generation = self.api.running.api.watch_hub.access_generation()
        edit()
        assert await eventually(lambda: checked(self.api, generation), within=20)


@pytest.mark.parametrize("page", ["continued", "all-first", "all-continued"])
@pytest.mark.parametrize("between", ["revoked", "granted"])
@pytest_twisted.ensureDeferred
async def test_her_rules_changed_before_a_page_and_back_during_its_read_is_410(
    page, between, monkeypatch, make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """Her rules change (and the access check sees it) before a page of her list arrives, decide that
    page, and are changed back while it reads: compared only once the page was read, they equalled
    those noted, and the watch from the list was served from a view the other rules decided. An
    all-namespaces list's first page compares them as it starts as well, and every page compares the
    rules each of its decisions was made by, recorded as it made them."""
    from urllib.parse import quote

    namespace, _ = repo.split("/", 1)
    api, alice, first, change, undo = await alice_and_a_change_of_secret(
        between, make_server, registry, kube_api, kube_kubeconfig, pki, namespace
    )
    listed = await eventually(lambda: showing(alice, namespace, first), within=20)
    url = collection(namespace) if page == "continued" else f"{B}/payloadrepositorytags"
    if page != "continued":
        listed = (await alice.get(url)).json()["metadata"]["resourceVersion"]
    await noted_by_a_stream(alice, url, listed)

    reads = _UndoneWhileRead(api, undo)
    reads.install(monkeypatch)
    if page == "all-first":
        await reads.arm(change)
    pages = [(await alice.get(f"{url}?limit=1")).json()]
    rv = pages[0]["metadata"]["resourceVersion"]
    if page != "all-first":
        await reads.arm(change)
    while token := pages[-1]["metadata"].get("continue"):
        pages.append((await alice.get(f"{url}?limit=1&continue={quote(token)}")).json())
    assert not reads.armed  # a page was read under the changed rules
    watch = await stream(alice, f"{url}?watch=true&timeoutSeconds=1&resourceVersion={rv}")
    assert watch.code == 200
    line = await watch.next()
    watch.close()
    assert (line["type"], line["object"].get("code")) == ("ERROR", 410), line


@pytest.mark.parametrize("start", ["boundary", "crossing"])
@pytest.mark.parametrize("between", ["revoked", "granted"])
@pytest_twisted.ensureDeferred
async def test_her_rules_changed_where_a_later_all_namespaces_page_goes_on_and_back_during_its_read_is_410(
    start, between, monkeypatch, make_server, registry, repo, pki, kube_api, kube_kubeconfig, reactor
):
    """A later page of her -A list may be decided in namespaces other than the one the page before it
    ended in: the next one, when that page ended on the last repository of a namespace ("boundary"), or
    one it moves into ("crossing": it starts on `b`, not hers, and goes on into the later namespace).
    Her rules there change (and the access check sees it) before the page, decide it, and are changed
    back while it reads: checked before the read only where the page before it ended, and once read
    against the rules then (equal to those noted), the change was missed, and the watch from the list
    was served from a view the other rules decided. Each decision's rules are recorded as it is made
    and compared once the page is read."""
    from urllib.parse import quote

    namespace, _ = repo.split("/", 1)
    later = f"{namespace}z"  # sorts after `namespace/...`
    api, alice = await alice_by_rbac(
        make_server, registry, kube_api, kube_kubeconfig, pki, f"{namespace}/app", f"{later}/secret"
    )
    if start == "crossing":  # the second page starts in `namespace` (on `b`) and goes on into `later`
        images.push_oci_image(registry, f"{namespace}/b", "v1", seed=f"{namespace}/b")
    give, take = secret_grants(kube_api, later)
    first, change, undo = [], give, take
    if between == "revoked":
        give()
        first, change, undo = ["secret"], take, give
    images.push_oci_image(registry, f"{later}/zz", "v1", seed=f"{later}/zz")
    grant(kube_api, later, "alice", ["get"], ["zz"], "alice-read-zz")
    await eventually(lambda: showing(alice, later, sorted([*first, "zz"])), within=20)
    url = f"{B}/payloadrepositorytags"
    listed = (await alice.get(url)).json()["metadata"]["resourceVersion"]
    await noted_by_a_stream(alice, url, listed)  # in `namespace` and in `later`

    reads = _UndoneWhileRead(api, undo)
    reads.install(monkeypatch)
    pages = [(await alice.get(f"{url}?limit=1")).json()]
    shown = [(i["metadata"]["namespace"], i["spec"]["repositoryPath"]) for i in pages[0]["items"]]
    assert shown == [(namespace, "app")], shown  # the page ends on the last of hers in `namespace`
    rv = pages[0]["metadata"]["resourceVersion"]
    await reads.arm(change)
    while token := pages[-1]["metadata"].get("continue"):
        pages.append((await alice.get(f"{url}?limit=1&continue={quote(token)}")).json())
    assert not reads.armed  # the second page was read under the changed rules
    shown = [(i["metadata"]["namespace"], i["spec"]["repositoryPath"]) for p in pages for i in p["items"]]
    watch = await stream(
        alice, f"{url}?watch=true&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion={rv}"
    )
    assert watch.code == 200
    line = await watch.next()
    watch.close()
    assert (line["type"], line["object"].get("code")) == ("ERROR", 410), (shown, line)
