"""What users and the log see when the registry's token service fails, or when the registry pages its
catalog without end: payloadtags servers over HTTPS, in front of a real registry or a scripted one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.web.server import Request

from payloadtags.cleanup.cascade import Cascade
from payloadtags.cleanup.removal import NamespaceRemover
from payloadtags.cleanup.sweep import ABSENT
from payloadtags.kube import Backoff
from payloadtags.names import encode_name
from payloadtags.registry import RegistryClient, RegistrySettings
from tests.conftest import TOKEN_USER
from tests.integration.test_api import B, assert_status, collection
from tests.support import images
from tests.support.cleanup_fixtures import unique_namespace
from tests.support.rbac import eventually
from tests.support.registry_server import RegistryServer, TokenServer
from tests.support.scripted_http import serving
from tests.support.unanswered import first_of


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


@pytest_twisted.ensureDeferred
async def test_a_removal_passes_again_after_an_access_refusal_the_next_pass_may_not_meet(
    token_registry: RegistryServer, token_server: TokenServer
) -> None:
    """The token service grants the namespace's `delete` only from its third token request on (an
    ACL or RBAC grant still being rolled out): the removal's first pass is refused ("denied
    access"). That is no refusal a retry certainly meets again (deletes turned off, a 501): the
    removal passes again after its backoff, within its budget, and empties the namespace
    (review-dscheck2 G2). The backoff is sat out on a `Clock` the test advances when told."""
    namespace = unique_namespace("granting")
    repository = f"{namespace}/app"
    images.push_oci_image(token_registry, repository, "a", seed=f"{namespace}-a")
    asked: list[list[str]] = []

    def grant(user: str | None, rtype: str, name: str, actions: list[str]) -> list[str]:
        if name == repository and "delete" in actions:
            asked.append(actions)
            if len(asked) <= 2:
                return [action for action in actions if action != "delete"]
        return actions

    backing_off: list[Deferred[float]] = []

    class Told(Backoff):
        def next_delay(self) -> float:
            delay = super().next_delay()
            if backing_off:
                # From the next reactor turn, once the cascade waits on the clock.
                reactor.callLater(0, backing_off.pop(0).callback, delay)
            return delay

    original = token_server.grant
    token_server.grant = grant
    username, password = TOKEN_USER
    client = RegistryClient(
        reactor,
        RegistrySettings(url=token_registry.url, timeout=30.0, username=username, password=password),
    )
    clock = Clock()

    async def gone(name: str) -> tuple[str, str | None]:
        return ABSENT, None

    remover = NamespaceRemover(Cascade(client, clock, concurrency=1, backoff=Told), clock, gone)
    try:
        told: Deferred[float] = Deferred()
        backing_off.append(told)
        removal = Deferred.fromCoroutine(remover.remove(namespace, 60.0))
        passes_failed = 0
        while True:
            delays: list[float] = []
            told.addCallback(delays.append)
            await first_of(removal, told)
            if removal.called:
                break
            passes_failed += 1
            told = Deferred()
            backing_off.append(told)
            clock.advance(delays[0])  # the backoff's delay
        await removal  # finished (a refusal would raise here)
    finally:
        token_server.grant = original
        await client.close()
    assert passes_failed >= 1  # the first pass was refused
    assert images.list_tags(token_registry, repository) == []
