"""What users and the log see when the registry's token service fails, or when the registry pages its
catalog without end: payloadtags servers over HTTPS, in front of a real registry or a scripted one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.web.server import Request

from payloadtags.names import encode_name
from payloadtags.registry import RegistrySettings
from tests.conftest import TOKEN_USER
from tests.integration.test_api import B, assert_status, collection
from tests.support import images
from tests.support.rbac import eventually
from tests.support.registry_server import RegistryServer, TokenServer
from tests.support.scripted_http import serving


@pytest_twisted.ensureDeferred
async def test_a_token_service_answering_404_is_503_never_not_found(
    make_server: Any, token_registry: RegistryServer, token_server: TokenServer, repo: str
) -> None:
    # A realm with a wrong path answers 404: that says nothing about the tag, which is still there.
    images.push_oci_image(token_registry, repo, "v1")
    namespace, _, path = repo.partition("/")
    user, password = TOKEN_USER
    token_server.fail_with = 404
    try:
        server = await make_server(
            token_registry,
            registry=RegistrySettings(url=token_registry.url, username=user, password=password, timeout=5.0),
        )
        client = server.client(server.pki.admin)
        item = f"{collection(namespace)}/{encode_name(path, 'v1')}"
        for reply in (
            await client.get(item),
            await client.delete(item),
            await client.get(collection(namespace)),
        ):
            status = assert_status(reply, 503, "ServiceUnavailable")
            assert status["message"] == (
                f"the token service {token_server.realm} of registry {token_registry.url} answered HTTP 404, "
                "not a token; check the realm the registry's challenge names"
            )
    finally:
        token_server.fail_with = None
    assert images.list_tags(token_registry, repo) == ["v1"]


@pytest_twisted.ensureDeferred
async def test_a_catalog_that_ignores_last_ends_the_index_refresh_and_the_list_with_an_error(
    make_server: Any, reactor: Any, pki: Any, tmp_path: Path
) -> None:
    # A registry that ignores last= and keeps sending a next link. Past 10 pages it fails, so that a
    # walk that does not see the loop ends all the same here (it read forever, holding every page).
    pages: list[str] = []

    def answer(request: Request, path: str) -> bytes:
        request.setHeader("Content-Type", "application/json")
        if path == "/v2/":
            return b"{}"
        if path.startswith("/v2/_catalog"):
            pages.append(path)
            if len(pages) > 10:
                request.setResponseCode(500)
                return b'{"errors": [{"code": "UNKNOWN"}]}'
            request.setHeader("Link", '</v2/_catalog?last=team%2Fb&n=1000>; rel="next"')
            return json.dumps({"repositories": ["team/a", "team/b"]}).encode()
        request.setResponseCode(404)
        return b'{"errors": [{"code": "NAME_UNKNOWN"}]}'

    token_file = tmp_path / "events-token"
    token_file.write_text("events-token-value\n")
    refused = "the repository catalog page after 'team/b' holds 'team/a', which does not come after it"
    async with serving(reactor, answer) as (url, _):
        with capturedLogs() as events:
            server = await make_server(url, registry_events_token_file=str(token_file))

            def failures() -> list[str]:
                warned = [formatEvent(event) for event in events if event.get("log_level") == LogLevel.warn]
                return [line for line in warned if line.startswith("repository index refresh failed")]

            async def refresh_failed() -> bool:
                return bool(failures())

            assert await eventually(refresh_failed, within=10), events
            [line] = failures()
        assert line.startswith(f"repository index refresh failed: registry {url}: {refused}")
        # The first page, and the one that came back to it (besides the start-up probe's n=1).
        assert [page for page in pages if page != "/v2/_catalog?n=1"] == [
            "/v2/_catalog?n=1000",
            "/v2/_catalog?n=1000&last=team%2Fb",
        ]
        assert server.running.index is not None and not server.running.index.ready

        # A list of every namespace walks the catalog itself (the index is not ready): it ends too.
        reply = await server.client(pki.admin).get(f"{B}/payloadrepositorytags")
        status = assert_status(reply, 503, "ServiceUnavailable")
        assert refused in status["message"]
        assert len(pages) == 5, pages
