"""Bad input never produces a 500: random paths, query strings, Accept headers and delete bodies."""

from __future__ import annotations

import base64
import json
import random
import string
from urllib.parse import quote

import pytest_twisted

from payloadtags.names import encode_name
from tests.support import images

B = "/apis/payload-registry.deckhouse.io/v1alpha1"
PARAMS = [
    "limit",
    "continue",
    "labelSelector",
    "fieldSelector",
    "resourceVersion",
    "resourceVersionMatch",
    "watch",
    "includeObject",
    "dryRun",
    "propagationPolicy",
    "gracePeriodSeconds",
    "timeoutSeconds",
    "allowWatchBookmarks",
    "sendInitialEvents",
]
ACCEPTS = [
    "application/json",
    "application/json;as=Table;v=v1;g=meta.k8s.io",
    "application/json;as=Table;v=v2;g=meta.k8s.io",
    "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io",
    "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
    "application/vnd.kubernetes.protobuf",
    "text/html",
    ";;;,,,",
    "*/*;q=0",
]
NASTY = [
    "",
    " ",
    "=",
    "!",
    "(",
    ")",
    ",",
    "in",
    "notin",
    "a=b=c",
    "%",
    "\x00",
    "é",
    "a" * 400,
    "-1",
    "1e9",
    "null",
]


def _text(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(NASTY)
    return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 30)))


def _body(rng: random.Random) -> bytes:
    choice = rng.random()
    if choice < 0.2:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
    value = {
        "dryRun": rng.choice([["All"], ["x"], "All", None, 3, [None]]),
        "propagationPolicy": rng.choice(["Background", "x", None, 1, []]),
        "gracePeriodSeconds": rng.choice([0, -1, "x", 1e400, None, True]),
        "preconditions": rng.choice([{"uid": "x"}, {"resourceVersion": 1}, "x", None, {"uid": None}]),
        "orphanDependents": rng.choice([True, None, "x"]),
    }
    if choice < 0.4:
        return json.dumps(rng.choice([[], "x", 1, None, value])).encode()
    return json.dumps({k: v for k, v in value.items() if rng.random() < 0.5}).encode()


@pytest_twisted.ensureDeferred
async def test_random_requests_never_give_500(api, registry, repo):
    namespace = repo.split("/", 1)[0]
    images.push_oci_image(registry, repo, "v1")
    client = api.client(api.pki.admin)
    rng = random.Random(20261127)
    paths = [
        f"{B}/namespaces/{namespace}/payloadrepositorytags",
        f"{B}/payloadrepositorytags",
        f"{B}/namespaces/{namespace}/payloadrepositorytags/nb2hi4bnmvrwq3z2nrqxizltoq",
        f"{B}/namespaces/{{ns}}/payloadrepositorytags/{{name}}",
        f"{B}/namespaces/{{ns}}/payloadrepositorytags",
        "/apis",
        "/api",
        "/version",
        "/openapi/v3",
        "/readyz",
        f"{B}/{{name}}",
    ]
    seen = []
    for _ in range(250):
        template = rng.choice(paths)
        target = template.format(ns=quote(_text(rng), safe=""), name=quote(_text(rng), safe=""))
        query = "&".join(
            f"{rng.choice(PARAMS)}={quote(_text(rng), safe='')}" for _ in range(rng.randint(0, 4))
        )
        method = rng.choice(["GET", "GET", "DELETE", "POST", "PUT", "PATCH", "OPTIONS"])
        if method == "GET" and "watch=" in query:
            # Any watch value but false or 0 is a watch, as on kube-apiserver: a stream that lasts.
            # Bounded here (the first timeoutSeconds counts), so its end is the answer.
            query = "timeoutSeconds=1&" + query
        headers = {"Accept": rng.choice(ACCEPTS)}
        if rng.random() < 0.5:
            headers["Content-Type"] = rng.choice(["application/json", "text/plain", "application/yaml"])
        body = _body(rng) if method != "GET" else None
        reply = await client.request(
            method, target + (f"?{query}" if query else ""), headers=headers, body=body
        )
        seen.append(reply.code)
        assert reply.code < 500, (method, target, query, headers, body, reply.body[:300])
        if reply.code >= 400:
            assert reply.header("content-type") == "application/json"
            assert json.loads(reply.body)["kind"] == "Status"
    # The walk reached successes and several kinds of refusal, not one error over and over.
    assert {200, 400, 404, 405} <= set(seen)


@pytest_twisted.ensureDeferred
async def test_numbers_out_of_range_are_400(api, registry, repo):
    # kube-apiserver reads limit and timeoutSeconds as int64 and resourceVersions as uint64; past that
    # (and past the 4300 digits Python's int() takes) the answer is a 400, never a 500.
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "v1")
    images.push_oci_image(registry, repo + "x", "v1")
    client = api.client(api.pki.admin)
    collection = f"{B}/namespaces/{namespace}/payloadrepositorytags"
    huge = "9" * 5000
    token = json.dumps({"v": 1, "rv": huge, "scope": namespace, "last": [namespace, path, "v1"]})
    continue_ = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    for target in (
        f"{collection}?limit=1{'0' * 307}",
        f"{collection}?limit=1{'0' * 309}",
        f"{collection}?limit=9223372036854775808",
        f"{collection}?limit={huge}",
        f"{collection}?resourceVersion=18446744073709551616",
        f"{collection}?limit=1&resourceVersion={huge}",
        f"{collection}?limit=1&continue={continue_}",
        f"{collection}?watch=1&timeoutSeconds=1&resourceVersion={huge}",
        f"{B}/payloadrepositorytags?watch=1&timeoutSeconds=1&resourceVersion={huge}",
        f"{collection}?watch=1&sendInitialEvents=false&resourceVersionMatch=NotOlderThan&resourceVersion={huge}",
        f"{collection}?watch=1&timeoutSeconds={huge}",
    ):
        reply = await client.get(target)
        assert reply.code == 400, (target[:120], reply.body[:300])
        assert json.loads(reply.body)["reason"] == "BadRequest"
    # A limit larger than any list, within int64, is the whole list.
    reply = await client.get(f"{collection}?limit=9223372036854775807")
    assert reply.code == 200, reply.body[:300]
    assert "continue" not in reply.json()["metadata"]
    assert [item["metadata"]["name"] for item in reply.json()["items"]] == [
        encode_name(path, "v1"),
        encode_name(path + "x", "v1"),
    ]
