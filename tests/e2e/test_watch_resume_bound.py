"""A user whose all-namespaces scope has more namespaces than `--watch-resume-rules` (here 2; 3 with
tags she may read): her watches from a list and `kubectl get -A -w` are served, as under the default
bound (review-watch4 F1: each watch start trimmed the rules noted for her and dated a change after the
list it started from, so every one was 410, and kubectl stopped after its list)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from payloadtags.limits import WatchLimits
from payloadtags.names import encode_name
from tests.e2e.test_watch_clients import start_kubectl
from tests.support import images
from tests.support.client import stream
from tests.support.harness import ServerUnderTest
from tests.support.kubectl import Kubectl
from tests.support.rbac import eventually, grant

pytestmark = [pytest.mark.kubectl, pytest.mark.registry]

TAGS = "/apis/payload-registry.deckhouse.io/v1alpha1/payloadrepositorytags"


async def alices_server(
    make_server: Any, registry: Any, kube_api: Any, kube_kubeconfig: Any, namespace: str
) -> ServerUnderTest:
    for i in range(3):
        images.push_oci_image(registry, f"{namespace}-{i}/app", "v1", seed=str(i))
        grant(kube_api, f"{namespace}-{i}", "alice", ["get"], ["app"], "alice-read")
    server: ServerUnderTest = await make_server(
        registry,
        kubeconfig=str(kube_kubeconfig),
        authorization_mode="RBAC",
        watch=WatchLimits(resync_period=0.3, resume_rules=2),
    )
    return server


@pytest_twisted.ensureDeferred
async def test_an_informer_s_list_and_watch_cycles_are_served(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig
):
    namespace = repo.split("/", 1)[0]
    server = await alices_server(make_server, registry, kube_api, kube_kubeconfig, namespace)
    alice = server.client(pki.client_ca.client("alice"))

    async def all_readable() -> bool:
        r = await alice.get(TAGS)
        mine = [i for i in r.json().get("items", []) if i["metadata"]["namespace"].startswith(namespace)]
        return r.code == 200 and len(mine) == 3

    assert await eventually(all_readable, within=30)
    outcomes = []
    for _ in range(3):  # a reflector: a list, then a watch from it
        version = (await alice.get(TAGS)).json()["metadata"]["resourceVersion"]
        watch = await stream(
            alice, f"{TAGS}?watch=true&resourceVersion={version}&allowWatchBookmarks=true&timeoutSeconds=1"
        )
        assert watch.code == 200
        await watch.ended
        events = [json.loads(line) for line in watch.lines.pending]
        outcomes += [e["object"].get("code") for e in events if e["type"] == "ERROR"] or ["served"]
    assert outcomes == ["served"] * 3  # were 410 each


@pytest_twisted.ensureDeferred
async def test_kubectl_get_all_namespaces_w_shows_a_push_after_its_list(
    make_server, registry, repo, pki, kube_api, kube_kubeconfig, tmp_path, kubectl_for
):
    namespace = repo.split("/", 1)[0]
    server = await alices_server(make_server, registry, kube_api, kube_kubeconfig, namespace)
    kubectl: Kubectl = kubectl_for(server, user=pki.client_ca.client("alice"), name="alice")
    running = start_kubectl(kubectl, "get", "prt", "-A", "-w")
    try:
        assert (await running.line()).split()[:2] == ["NAMESPACE", "NAME"]
        await running.until(lambda line: line.split()[:1] == [f"{namespace}-2"])
        images.push_oci_image(registry, f"{namespace}-1/app", "v2", seed="v2")
        row = await running.until(lambda line: line.split()[-1:] == ["v2"] or "STATUS" in line)
        assert row.split() == [f"{namespace}-1", encode_name("app", "v2"), "app", "v2"]  # was a Status
    finally:
        running.stop()
    await running.exited
