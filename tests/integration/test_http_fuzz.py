"""Generated HTTP requests over a real TLS socket: never a 500, never an error that is not a Status,
never a stall.

Hypothesis runs in a thread (its examples are blocking socket exchanges) while the server runs on the
reactor. The default run tries a few dozen requests; the slow tier a thousand.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.threads import deferToThread

from payloadtags.limits import HttpLimits
from tests.support import images
from tests.support.raw import Target, exchange

B = "/apis/payload-registry.deckhouse.io/v1alpha1"
# A stall is a request the server leaves waiting until one of its deadlines ends it. Here they are far
# longer than the guard, so a stall is an answer that does not come within the guard. The guard stops
# a hang only and measures no speed: every answer takes milliseconds.
DEADLINES = HttpLimits(header_timeout=3600.0, request_timeout=3600.0, idle_timeout=3600.0)
STALL_GUARD = 60.0

segments = st.one_of(
    st.sampled_from(
        [
            "apis",
            "payload-registry.deckhouse.io",
            "v1alpha1",
            "namespaces",
            "payloadrepositorytags",
            "ns",
            "t0",
            "nb2hi4bnmvrwq3z2nrqxizltoq",
            "%2F",
            "%zz",
            "%ff",
            "%00",
            "..",
            ".",
            "",
            "readyz",
            "livez",
            "openapi",
            "v3",
            "version",
            "metrics",
            "registry",
            "events",
        ]
    ),
    st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?#"), max_size=12),
)
paths = st.one_of(
    st.lists(segments, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(
        [f"{B}/namespaces/ns/payloadrepositorytags", f"{B}/payloadrepositorytags", "*", "http://x/version"]
    ),
)
query_values = st.one_of(
    st.sampled_from(["", "1", "-1", "true", "All", "metadata.namespace%3Da%2Fb", "a%3Db", "%", "%5B" * 50]),
    st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="&# "), max_size=20),
)
query_keys = st.sampled_from(
    [
        "limit",
        "continue",
        "labelSelector",
        "fieldSelector",
        "resourceVersion",
        "resourceVersionMatch",
        "watch",
        "dryRun",
        "propagationPolicy",
        "includeObject",
        "timeoutSeconds",
        "exclude",
        "verbose",
    ]
)
queries = st.lists(st.tuples(query_keys, query_values), max_size=4).map(
    lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)
)
header_names = st.one_of(
    st.sampled_from(
        [
            "Accept",
            "Content-Type",
            "X-Remote-User",
            "X-Remote-Group",
            "Authorization",
            "If-None-Match",
            "Expect",
            "Connection",
            "Host",
            "Impersonate-User",
        ]
    ),
    st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), min_size=1, max_size=10
    ),
)
header_values = st.text(
    st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\r\n"), max_size=40
)
bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=10,
    ).map(lambda value: json.dumps(value).encode()),
    st.integers(min_value=1, max_value=5000).map(lambda depth: b"[" * depth + b"]" * depth),
)
methods = st.sampled_from(["GET", "GET", "DELETE", "POST", "PUT", "PATCH", "HEAD", "OPTIONS", "BREW", "get"])


def _raw(method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    target = path + (f"?{query}" if query else "")
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1", "replace")]
    for name, value in headers:
        lines.append(f"{name}: {value}".encode("latin-1", "replace"))
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def fuzz(target: Target, user: Any, examples: int) -> list[int]:
    seen: list[int] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        method=methods,
        path=paths,
        query=queries,
        headers=st.lists(st.tuples(header_names, header_values), max_size=4),
        body=bodies,
    )
    def one(method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes) -> None:
        # Lengths are honest here: a body shorter than its declared length is a slow body (408, after
        # the deadline), which test_hostile covers.
        headers = [(n, v) for n, v in headers if n.lower() not in ("content-length", "transfer-encoding")]
        if "watch=" in query:
            # A valid watch is a stream that lasts: bounded here, so its end is the answer.
            query = "timeoutSeconds=1&" + query
        reply = exchange(target, _raw(method, path, query, headers, body), user, timeout=STALL_GUARD)
        seen.append(reply.code)
        assert reply.code < 500 or reply.code in (503, 504), (method, path, query, headers, body[:100], reply)
        if reply.code >= 400 and method.upper() != "HEAD":
            assert reply.is_status(reply.code), (method, path, query, headers, body[:100], reply)

    one()
    return seen


async def _run(make_server: Any, registry: Any, repo: str, examples: int) -> list[int]:
    images.push_oci_image(registry, repo, "v1")
    api = await make_server(registry, http=DEADLINES)
    target = Target(api.running.port, str(api.pki.server_ca.cert_file))
    return await deferToThread(fuzz, target, api.pki.admin, examples)


@pytest_twisted.ensureDeferred
async def test_generated_requests_get_status_errors_and_no_500(make_server, registry, repo):
    seen = await _run(make_server, registry, repo, 60)
    assert len({code for code in seen if code >= 400}) >= 3  # the walk reached several kinds of refusal


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_many_generated_requests(make_server, registry, repo):
    await _run(make_server, registry, repo, 1000)
