"""The same tag deleted through two replicas at once (two `kubectl delete prt X` whose requests the
aggregator sends to different replicas), on the real registry (distribution 2.8: deletes by a unique
copy). kube-apiserver answers two concurrent deletes of one object with one 200 and one 404; a
payloadtags replica must never claim the other's work (a second 200) when it can tell, never report
the other's transient copy as a push (409), and never remove more than the tag (docs/consistency.md,
"Two deletes of one tag")."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.web import server

from payloadtags.names import TagRef
from tests.support import images
from tests.support.faultproxy import FaultProxy
from tests.support.registry_server import RegistryServer

Hold = Callable[[str, str], "Deferred[None] | None"]


class HeldProxy(FaultProxy):
    """A FaultProxy whose ``hold(method, path)`` can keep a request back until a Deferred fires, and
    whose ``answered(method, path)`` hears each request once the registry has answered it: the test
    orders two replicas' requests explicitly."""

    def __init__(self, reactor: Any, target: str, hold: Hold, answered: Callable[[str, str], None]) -> None:
        super().__init__(reactor, target)
        self.hold = hold
        self.answered = answered

    async def _handle(self, request: server.Request) -> None:
        method, path = request.method.decode(), request.uri.decode().split("?")[0]
        waiting = self.hold(method, path)
        if waiting is not None:
            await waiting
        await super()._handle(request)
        self.answered(method, path)


def _fire(deferred: Deferred[None]) -> None:
    if not deferred.called:
        deferred.callback(None)


@pytest_twisted.ensureDeferred
async def test_two_replicas_deleting_one_tag_answer_one_200_and_one_404(
    reactor: Any, make_server: Any, registry: RegistryServer, repo: str
) -> None:
    # The order that made both answer 200 (and, with a failed DELETE, the 409 that reported the
    # other replica's copy as a push): both read the tag on its content, A re-tags it onto its copy,
    # B onto its own, and only then does A go on, so that A's DELETE of its copy removes no tag.
    b_put_arrived: Deferred[None] = Deferred()
    a_put_answered: Deferred[None] = Deferred()
    b_put_answered: Deferred[None] = Deferred()
    a_put_sent: list[bool] = []

    def retag(method: str, path: str) -> bool:
        return method == "PUT" and path.endswith("/manifests/x")

    def hold_a(method: str, path: str) -> Deferred[None] | None:
        if retag(method, path):
            a_put_sent.append(True)
            return b_put_arrived  # B has read the tag on its content and is about to write
        if a_put_sent:
            return b_put_answered  # A's next step comes after B's re-tag
        return None

    def answered_a(method: str, path: str) -> None:
        if retag(method, path):
            _fire(a_put_answered)

    def hold_b(method: str, path: str) -> Deferred[None] | None:
        if retag(method, path):
            _fire(b_put_arrived)
            return a_put_answered
        return None

    def answered_b(method: str, path: str) -> None:
        if retag(method, path):
            _fire(b_put_answered)

    proxy_a = HeldProxy(reactor, registry.url, hold_a, answered_a)
    proxy_b = HeldProxy(reactor, registry.url, hold_b, answered_b)
    try:
        a = await make_server(proxy_a.url)
        b = await make_server(proxy_b.url)
        images.push_oci_image(registry, repo, "keep", seed="race-ordered")
        digest = images.tag_manifest(registry, repo, "keep", "x")
        ns, path = repo.split("/", 1)
        url = f"/apis/payload-registry.deckhouse.io/v1alpha1/namespaces/{ns}/payloadrepositorytags/"
        url += TagRef(ns, path, "x").name
        ca, cb = a.client(a.pki.admin), b.client(b.pki.admin)
        ra, rb = await gatherResults(
            [Deferred.fromCoroutine(ca.delete(url)), Deferred.fromCoroutine(cb.delete(url))]
        )
    finally:
        await proxy_a.stop()
        await proxy_b.stop()
    # B's copy took the tag; A's DELETE of its own copy removed nothing, and A says so.
    assert (ra.code, rb.code) == (404, 200), (ra.json(), rb.json())
    assert ra.json()["reason"] == "NotFound"
    assert rb.json()["status"]["digest"] == digest
    tags = images.list_tags(registry, repo)
    assert "x" not in tags and "keep" in tags
    assert images.resolve(registry, repo, "keep") == digest  # the sibling on the same digest stays


ROUNDS = 12


@pytest_twisted.ensureDeferred
async def test_two_replicas_deleting_one_tag_in_any_order_never_claim_a_push(
    make_server: Any, registry: RegistryServer, repo: str
) -> None:
    # The reviewer's reproduction (12 rounds in whatever order the two replicas meet). What holds in
    # every order: no 409 for the other's copy, never both 404, the tag gone, the sibling kept. One
    # order is left in which both still answer 200 (docs/consistency.md): not asserted either way.
    a = await make_server(registry)
    b = await make_server(registry)
    ca, cb = a.client(a.pki.admin), b.client(b.pki.admin)
    ns, path = repo.split("/", 1)
    outcomes: collections.Counter[tuple[int, int]] = collections.Counter()
    for round_ in range(ROUNDS):
        images.push_oci_image(registry, repo, "keep", seed=f"race{round_}")
        digest = images.tag_manifest(registry, repo, "keep", "x")
        name = TagRef(ns, path, "x").name
        url = f"/apis/payload-registry.deckhouse.io/v1alpha1/namespaces/{ns}/payloadrepositorytags/{name}"
        ra, rb = await gatherResults(
            [Deferred.fromCoroutine(ca.delete(url)), Deferred.fromCoroutine(cb.delete(url))]
        )
        pair = (ra.code, rb.code)
        outcomes[(min(pair), max(pair))] += 1
        assert set(pair) <= {200, 404} and 200 in pair, (round_, ra.json(), rb.json())
        tags = images.list_tags(registry, repo)
        assert "x" not in tags and "keep" in tags, round_
        assert images.resolve(registry, repo, "keep") == digest, round_
    print("\noutcomes (sorted status pair: rounds):", dict(outcomes))
