"""What the registry lines advise, for failures the real registry in tests/integration cannot be made to give:
a TLS failure where the registry redirected a read or at its token service, a connection closed without an
answer on https:// or where a redirect led (scripted agent), a refused catalog and a 429 (a probed double)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

from payloadtags.registry import (
    RegistryAuthFailed,
    RegistryClient,
    RegistryDeleteDisabled,
    RegistrySettings,
    RegistryUnavailable,
)
from payloadtags.registry.client import RootAnswer
from payloadtags.registry_diagnosis import _hint, probe
from tests.unit.test_registry_client_unit import (
    REGISTRY,
    Answer,
    ScriptedAgent,
    Sent,
    digest_of,
    make,
    result,
)

UNTRUSTED = SSL.Error([("SSL routines", "", "certificate verify failed")])
# What registry/transport.py's _VerifyingCreator fails a connection with when the name does not match.
MISMATCH = SSL.Error("the server's certificate does not match auth.test")
REALM = "https://auth.test/token"


def _tls_failure(error: SSL.Error) -> Deferred[Any]:
    return fail(ResponseNeverReceived([Failure(error)]))


def test_a_tls_failure_where_the_registry_redirected_a_read_is_that_servers() -> None:
    # review r2d F1: the redirect was followed inside the RedirectAgent, so the failure was said as the
    # registry's own, with advice about --registry-url's host, though --registry-url is plain http://.
    data = b'{"architecture": "amd64"}'
    storage = "https://storage.test/blobs/1?signature=x"

    def handler(request: Sent) -> Answer | Deferred[Any]:
        if request.url == storage:
            return _tls_failure(UNTRUSTED)
        return Answer(307, {"Location": storage})

    client, agent = make(handler)
    with pytest.raises(RegistryUnavailable) as caught:
        result(client.blob("a/b", digest_of(data)))
    assert [s.url for s in agent.sent] == [f"{REGISTRY}/v2/a/b/blobs/{digest_of(data)}", storage]
    assert caught.value.elsewhere
    assert _hint(caught.value) == (
        f"registry {REGISTRY} (via https://storage.test) is unavailable: TLS failure: certificate verify "
        "failed; if that server's certificate is signed by a private CA, give that CA with "
        "--registry-ca-file (it is used for every https:// connection to the registry and the servers it "
        "names)"
    )


def test_a_tls_failure_at_the_registry_itself_is_not_elsewhere() -> None:
    # The other half of the above: the registry's own read, no redirect followed, stays the registry's.
    def handler(request: Sent) -> Deferred[Any]:
        return _tls_failure(UNTRUSTED)

    client, _ = make(handler)
    with pytest.raises(RegistryUnavailable) as caught:
        result(client.blob("a/b", digest_of(b"x")))
    assert not caught.value.elsewhere
    assert (
        caught.value.message == f"registry {REGISTRY} is unavailable: TLS failure: certificate verify failed"
    )


def test_a_token_service_whose_certificate_names_another_host_is_told_no_ca_fixes_that() -> None:
    # review r2d L2: the line said only "if that server's certificate is signed by a private CA, give that
    # CA", which cannot help when the certificate is for another host.
    def handler(request: Sent) -> Answer | Deferred[Any]:
        if request.url.startswith("https://auth.test/"):
            return _tls_failure(MISMATCH)
        return Answer(401, {"WWW-Authenticate": f'Bearer realm="{REALM}",service="r"'})

    client, _ = make(handler)
    with pytest.raises(RegistryUnavailable) as caught:
        result(client.ping())
    assert caught.value.elsewhere
    assert _hint(caught.value) == (
        f"the token service {REALM} of registry {REGISTRY} is unavailable: TLS failure: the server's "
        "certificate does not match auth.test; that server's certificate does not name the host the registry "
        "gives it by (no CA fixes that): correct the host in the registry's configuration (its token realm, "
        "or where its storage redirects reads), or that server's certificate"
    )


def test_a_registry_whose_certificate_names_another_host_is_told_no_ca_fixes_that() -> None:
    def handler(request: Sent) -> Deferred[Any]:
        return _tls_failure(SSL.Error("the server's certificate does not match registry.test"))

    client, _ = make(handler)
    with pytest.raises(RegistryUnavailable) as caught:
        result(client.blob("a/b", digest_of(b"x")))
    assert _hint(caught.value) == (
        f"registry {REGISTRY} is unavailable: TLS failure: the server's certificate does not match "
        "registry.test; the registry's certificate does not name the host in --registry-url (no CA fixes "
        "that): give --registry-url a host its certificate names"
    )


def _closed_unanswered() -> Deferred[Any]:
    return fail(ResponseNeverReceived([Failure(ConnectionDone())]))


def test_https_closed_unanswered_is_not_told_to_switch_schemes() -> None:
    # review r1user L3: the advice to try https:// is for a plain-HTTP request to an HTTPS-only port; on
    # https:// the server (or a proxy) dropped the request, and it runs: not "check that it runs".
    url = "https://registry.test"
    client = RegistryClient(
        Clock(), RegistrySettings(url=url), agent=ScriptedAgent(lambda _: _closed_unanswered())
    )
    with pytest.raises(RegistryUnavailable) as caught:
        result(client.blob("a/b", digest_of(b"x")))
    assert _hint(caught.value, url) == (
        f"registry {url} is unavailable: the connection was closed without an answer; check the registry's "
        "log and what sits in front of it (a proxy or load balancer)"
    )


def test_a_redirect_target_closed_unanswered_names_the_registrys_configuration() -> None:
    # review r1user L3: where the registry redirects reads is its configuration's URL, not --registry-url's.
    storage = "http://storage.test/blobs/1?signature=x"

    def handler(request: Sent) -> Answer | Deferred[Any]:
        if request.url == storage:
            return _closed_unanswered()
        return Answer(307, {"Location": storage})

    client, _ = make(handler)
    with pytest.raises(RegistryUnavailable) as caught:
        result(client.blob("a/b", digest_of(b"x")))
    assert caught.value.elsewhere
    assert _hint(caught.value) == (
        f"registry {REGISTRY} (via http://storage.test) is unavailable: the connection was closed without "
        "an answer; if port 80 (http's default) serves HTTPS only (such a port closes a plain-HTTP "
        "connection without an answer), use https://storage.test:80 in the registry's configuration; "
        "otherwise check that server's log and what sits in front of it (a proxy or load balancer)"
    )


def test_a_redirect_target_that_answered_plain_http_then_closes_unanswered_is_not_told_to_try_https() -> None:
    # review r2doc L1: a port that has answered this client over plain HTTP serves it; that server (or what
    # sits in front of it) dropped the read. Each server is judged by its own answers: the registry's
    # own answers (the redirects) say nothing of its storage's port.
    data = b'{"architecture": "amd64"}'
    storage = "http://storage.test/blobs/"
    answered: list[str] = []

    def handler(request: Sent) -> Answer | Deferred[Any]:
        if request.url.startswith(storage):
            if answered:
                return _closed_unanswered()
            answered.append(request.url)
            return Answer(200, {}, data)
        return Answer(307, {"Location": storage + request.url.rpartition("/")[2]})

    client, _ = make(handler)
    assert result(client.blob("a/b", digest_of(data))) == data
    with pytest.raises(RegistryUnavailable) as caught:
        result(client.blob("a/b", digest_of(b"x")))
    assert _hint(caught.value) == (
        f"registry {REGISTRY} (via http://storage.test) is unavailable: the connection was closed without "
        "an answer; check that server's log and what sits in front of it (a proxy or load balancer)"
    )


class Probed:
    """The client as probe() uses it: GET /v2/ answers ``root``, the catalog fails with ``catalog_error``."""

    def __init__(self, root: RootAnswer, catalog_error: Exception | None = None) -> None:
        self._root, self._catalog_error = root, catalog_error

    async def root(self) -> RootAnswer:
        return self._root

    async def ping(self) -> None:
        return None

    async def catalog(self, last: str | None = None, n: int = 100) -> Any:
        assert self._catalog_error is not None
        raise self._catalog_error

    async def check_delete(self, repository: str, tag: str, /) -> None:
        raise RegistryDeleteDisabled("no")


@pytest_twisted.ensureDeferred
async def test_a_catalog_the_account_may_not_read_is_denied() -> None:
    # review r2d L3: "denied" (the account's rights, troubleshooting.md's row) was pinned by no test.
    refusal = RegistryAuthFailed(
        f"registry {REGISTRY} denied the catalog; check the permissions", denied=True
    )
    line = await probe(Probed(RootAnswer(401, "registry/2.0", "Bearer realm=x"), refusal), REGISTRY)
    assert line == (
        f"registry {REGISTRY} reachable: API version registry/2.0, authentication bearer, catalog denied "
        f"(registry {REGISTRY} denied the catalog; check the permissions); namespace lists need the catalog"
    )


@pytest_twisted.ensureDeferred
async def test_a_registry_that_answers_429_is_told_to_check_its_rate_limits() -> None:
    # review r2d L3: the 429 wording was pinned by no test.
    line = await probe(Probed(RootAnswer(429, None, None)), REGISTRY)
    assert line == (
        f"registry {REGISTRY} answered HTTP 429 to GET /v2/: the registry (or a proxy in front of it) turns "
        "requests away for now (too many requests): check its rate limits"
    )
