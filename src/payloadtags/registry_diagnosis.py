"""Saying what is wrong with the registry: one probe at start, and rate-limited failure lines after.

The probe never stops the server (the registry may come up later); it logs either what it found
(reachable, API version, whether authentication is needed, whether the catalog may be read) or what is
wrong and which flag fixes it. During operation every registry failure but "not found" is logged with
the operation and the registry's answer, at most once per period for each kind of failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.logger import Logger

from payloadtags.onceper import OncePerPeriod
from payloadtags.registry import (
    RegistryAuthFailed,
    RegistryDeleteDisabled,
    RegistryError,
    RegistryNotFound,
    RegistryUnavailable,
)
from payloadtags.registry.client import RootAnswer
from payloadtags.registry.schemes import port_said, with_scheme

log = Logger()

# Where the deletes check looks when the catalog names no repository: its DELETE names a digest no
# registry holds, so it changes nothing, in a repository that need not exist.
CHECK_REPOSITORY = "payloadtags-check/deletes"
CHECK_TAG = "check"
CREDENTIAL_FLAGS = "--registry-username-file/--registry-password-file"
TLS_WORDS = ("certificate", "ssl", "tls", "handshake")
# registry/transport.py's words when a certificate does not name the host asked: no CA fixes that.
NAME_MISMATCH = "certificate does not match"
# Said with each advice to go to http://: the password of a registry's Basic authentication, or the one
# sent to its token service, would go unencrypted.
IN_CLEAR = "registry credentials, if any, would then cross the network unencrypted"
# OpenSSL's words when the first bytes back are no TLS record: the port answered in plain text.
NOT_TLS = "wrong version number"
# What HTTPS servers answer a plain HTTP request with (Go's net/http, as distribution's; nginx).
PLAIN_TO_TLS = (
    b"Client sent an HTTP request to an HTTPS server",
    b"The plain HTTP request was sent to HTTPS port",
)


class Probed(Protocol):
    async def root(self) -> RootAnswer: ...

    async def ping(self) -> None: ...

    async def catalog(self, last: str | None = None, n: int = ...) -> Any: ...

    async def check_delete(self, repository: str, tag: str, /) -> None: ...


def _hint(error: RegistryError, url: str | None = None) -> str:
    text = str(error)
    lowered = text.lower()
    if isinstance(error, RegistryUnavailable) and error.elsewhere:
        # The registry named that server (its token realm, a redirect): --registry-url is not the cause.
        if NOT_TLS in lowered:
            return (
                f"{text}; that server does not speak TLS (it answered in plain text): the registry's "
                "configuration names it (its token realm, or where its storage redirects reads), and should "
                f"give it with http:// ({IN_CLEAR})"
            )
        if NAME_MISMATCH in lowered:
            return (
                f"{text}; that server's certificate does not name the host the registry gives it by "
                "(no CA fixes that): correct the host in the registry's configuration (its token realm, or "
                "where its storage redirects reads), or that server's certificate"
            )
        if any(word in lowered for word in TLS_WORDS):
            return (
                f"{text}; if that server's certificate is signed by a private CA, give that CA with "
                "--registry-ca-file (it is used for every https:// connection to the registry and the "
                "servers it names)"
            )
        return text
    if NOT_TLS in lowered:
        # https:// to a plain-HTTP registry (the README's own example is one): no CA would help.
        use, port = (with_scheme(url, "http"), port_said(url)) if url else ("http://", "the port")
        return (
            f"{text}; {port} does not speak TLS (it answered in plain text): use {use} in --registry-url "
            f"({IN_CLEAR})"
        )
    if NAME_MISMATCH in lowered:
        return (
            f"{text}; the registry's certificate does not name the host in --registry-url "
            "(no CA fixes that): give --registry-url a host its certificate names"
        )
    if any(word in lowered for word in TLS_WORDS):
        return (
            f"{text}; if the registry's certificate is signed by a private CA, give that CA with "
            "--registry-ca-file (and check that --registry-url names a host in the certificate)"
        )
    if isinstance(error, RegistryAuthFailed):
        return f"{text} (the credentials come from {CREDENTIAL_FLAGS} or their environment variables)"
    return text


def _once(text: str, url: str) -> str:
    """``text`` after "registry URL cannot be used: ", naming the registry once: the client's errors
    begin with "registry URL" ("… is unavailable: …"), said "it" there."""
    named = f"registry {url.rstrip('/')} "
    return "it " + text[len(named) :] if text.startswith(named) else text


async def probe(registry: Probed, url: str) -> str:
    """Probe the registry once; log and return the line (for tests)."""
    try:
        root = await registry.root()
    except RegistryError as error:
        line = f"registry {url} cannot be used: {_once(_hint(error, url), url)}"
        log.error("{line}", line=line, registryUrl=url)
        return line
    if root.status == 404:
        line = (
            f"registry {url} answered 404 to GET /v2/: --registry-url does not point at an OCI distribution "
            "API; give the registry's root (scheme and host[:port]), not a path or a web UI"
        )
        log.error("{line}", line=line, registryUrl=url)
        return line
    if root.status == 400 and any(words in root.body for words in PLAIN_TO_TLS):
        line = (
            f"registry {url} answered HTTP 400 to GET /v2/: {port_said(url)} serves HTTPS, not plain HTTP: "
            f"use {with_scheme(url, 'https')} in --registry-url"
        )
        log.error("{line}", line=line, registryUrl=url)
        return line
    if root.status >= 500 or root.status == 429:
        # Something answered for the registry and is failing or turning requests away: the URL may well be
        # right, so the question below would send the operator to the wrong place.
        state = (
            "is failing: check that it runs, and its log"
            if root.status >= 500
            else "turns requests away for now (too many requests): check its rate limits"
        )
        line = (
            f"registry {url} answered HTTP {root.status} to GET /v2/: "
            f"the registry (or a proxy in front of it) {state}"
        )
        log.error("{line}", line=line, registryUrl=url)
        return line
    if root.status not in (200, 401):
        line = (
            f"registry {url} answered HTTP {root.status} to GET /v2/; is --registry-url the registry's API?"
        )
        log.error("{line}", line=line, registryUrl=url)
        return line
    auth = "none" if root.status == 200 else (root.challenge or "").split(" ", 1)[0].lower() or "unknown"
    try:
        await registry.ping()
    except RegistryError as error:
        # Only a refusal of the credentials is the registry refusing: a token service that is down or
        # answers 5xx, or a realm that is no token service, is said as it is.
        said = "refuses this server" if isinstance(error, RegistryAuthFailed) else "cannot be used"
        line = f"registry {url} is reachable but {said}: {_hint(error)}"
        log.error("{line}", line=line, registryUrl=url)
        return line
    first: str | None = None
    try:
        page = await registry.catalog(n=1)
        catalog = "allowed"
        first = page.repositories[0] if page.repositories else None
    except RegistryError as error:
        # Denied is for a refusal (the account's rights); a 5xx or a timeout is a failure, and may pass.
        outcome = "denied" if isinstance(error, RegistryAuthFailed) else "failed"
        catalog = f"{outcome} ({error}); namespace lists need the catalog"
    line = (
        f"registry {url} reachable: API version {root.api_version or 'not announced'}, "
        f"authentication {auth}, catalog {catalog}"
    )
    if catalog == "allowed":
        log.info("{line}", line=line, registryUrl=url, apiVersion=root.api_version, auth=auth)
    else:
        log.warn("{line}", line=line, registryUrl=url, apiVersion=root.api_version, auth=auth)
    await _check_deletes(registry, url, first)
    return line


async def _check_deletes(registry: Probed, url: str, repository: str | None) -> None:
    """Warn when the registry has deletes turned off: otherwise the operator learns it from a user's
    failed delete, or a namespace cleanup that does nothing. The check a delete makes (a DELETE of a
    digest no registry holds, which changes nothing), in a repository the catalog showed when it
    did (the registry account's rights there). Any other outcome is left to the deletes themselves:
    a read-only registry (maintenance) is so for a while, and an account may delete in some
    repositories only."""
    try:
        await registry.check_delete(repository or CHECK_REPOSITORY, CHECK_TAG)
    except RegistryDeleteDisabled:
        log.warn(
            "registry {registryUrl} does not allow deletes (storage.delete.enabled is false): every "
            "delete, deletecollection and namespace cleanup will fail with 503 until its administrator "
            "sets storage.delete.enabled to true",
            registryUrl=url,
        )
    except RegistryError as error:
        log.debug("registry {registryUrl}: deletes check: {error}", registryUrl=url, error=str(error))


@attrs.define
class FailureLog:
    """Logs registry failures with the operation and the registry's answer, rate-limited per kind.

    Timed on ``monotonic``: on the reactor's wall clock, stepped back, every line would be left out
    for as long as the step."""

    monotonic: Callable[[], float] = time.monotonic
    period: float = 30.0
    _once: OncePerPeriod[tuple[str, str]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._once = OncePerPeriod(self.period, self.monotonic)

    def __call__(self, operation: str, error: BaseException) -> None:
        if not isinstance(error, RegistryError) or isinstance(error, RegistryNotFound):
            return  # not found is an answer, not a failure; cancellations are the caller's
        said = self._once((operation, type(error).__name__))
        if said is None:
            return
        log.warn(
            "registry {operation} failed: {error}{more}",
            operation=operation,
            error=_hint(error),
            # Counted since the last line: the period, or much longer when the failures stopped.
            more=said.more(),
            kind=type(error).__name__,
        )
