"""A small asynchronous client for the Kubernetes API, over treq.

Only what payloadtags needs: JSON CRUD on any path, watch streams, and TokenReview. Every request
has a timeout; every failure is one of the `payloadtags.kube.errors` exceptions.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote

import attrs
import cattrs
from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, ConnectionClosed, DNSLookupError
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from payloadtags import __version__
from payloadtags.bodies import BodyBytes, read_body
from payloadtags.deferreds import DeadlineExpired, InFlight, is_cancellation, within
from payloadtags.identity import UserInfo
from payloadtags.jsontypes import JsonObject
from payloadtags.kube.config import ClusterConfig
from payloadtags.kube.errors import (
    KubeApiError,
    KubeCertificateRejected,
    KubeCredentialUnavailable,
    KubeProtocolError,
    KubeReplyCutShort,
    KubeStreamLost,
    KubeTimeout,
    KubeTokenUnreadable,
    KubeUnreachable,
    KubeWatchSilent,
    status_from_body,
)
from payloadtags.kube.execcred import PLUGIN_TIMEOUT, ExecCredential, ExecPlugin, run_plugin
from payloadtags.kube.framing import LineFramer
from payloadtags.kube.keepalive import KeepAliveEndpoints
from payloadtags.kube.tls import ClusterTLSPolicy
from payloadtags.onceper import OncePerPeriod
from payloadtags.validators import go_trim_space, paths_redacted

log = Logger()

T = TypeVar("T")

DEFAULT_REQUEST_TIMEOUT: Final = 30.0
# client-go re-reads a service-account token file once a minute; kubelet rotates it well before
# it expires, so a minute-old copy is always still valid.
TOKEN_REREAD_PERIOD: Final = 60.0
_UNREADABLE_LOG_PERIOD: Final = 60.0
MERGE_PATCH: Final = "application/merge-patch+json"
# A watch stream silent (no event, no bookmark) for this long is given up and watched again at once
# from where it stopped (`KubeWatchSilent`). A peer gone without a word (a node, a NAT's flow) is
# found sooner by TCP keepalive (`keepalive`: within about 60 s), and the stream breaks: a failure.
# This cut is for a connection kept open with nothing on it: a proxy or load balancer that lost
# what is behind it, or holds the stream. Over HTTP/1.1 there is no ping (client-go's HTTP/2
# connections have one); the new watch finds out. It is not taken as a failure: kube-apiserver's
# watch cache sends a bookmark about every minute only once its resource's last resourceVersion is
# past the watch's start, which for a resource that does not change waits for an etcd progress
# notification (every 10 minutes by etcd's default, so silences of about 11; many distributions set
# a few seconds), and where the resource's watch cache is off, no bookmark comes at all. Watches
# silent far longer than a healthy cluster's are said (`Reflector.quiet_said_after`).
WATCH_IDLE_TIMEOUT: Final = 90.0

ADDED: Final = "ADDED"
MODIFIED: Final = "MODIFIED"
DELETED: Final = "DELETED"
BOOKMARK: Final = "BOOKMARK"
ERROR: Final = "ERROR"

# Failures of the transport, as opposed to answers from the server.
_CONNECTION_ERRORS = (
    ConnectError,
    ConnectingCancelledError,
    ConnectionClosed,
    DNSLookupError,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    SSL.Error,
    OSError,
)


def resource_path(
    group: str, version: str, plural: str, namespace: str | None = None, name: str | None = None
) -> str:
    """The API path of a collection or an object: core group ``""`` lives under ``/api``."""
    parts = ["/api/" + version] if group == "" else [f"/apis/{group}/{version}"]
    if namespace is not None:
        parts.append("namespaces/" + quote(namespace, safe=""))
    parts.append(plural)
    if name is not None:
        parts.append(quote(name, safe=""))
    return "/".join(parts)


@attrs.frozen
class _ReviewedUser:
    """``status.user`` of a TokenReview, as the cluster API sends it."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, tuple[str, ...]] = attrs.field(factory=dict, hash=False)


_converter = cattrs.Converter()


@attrs.frozen
class WatchEvent:
    """One event of a watch stream: ``type`` is ADDED, MODIFIED, DELETED or BOOKMARK."""

    type: str
    object: JsonObject

    @property
    def resource_version(self) -> str | None:
        rv = (self.object.get("metadata") or {}).get("resourceVersion")
        return str(rv) if rv else None


# Idle connections kept for reuse by default. Open watches hold connections of their own on top; with
# several reflectors, treq's default of 2 would make most requests open a new connection.
MAX_IDLE_CONNECTIONS = 16
# How long an idle connection is kept: less than kube-apiserver's 90 s, after which it closes one
# (k8s.io/apiserver's IdleTimeout). A request sent on a connection the server is closing fails, and
# Twisted asks again on a fresh one only for a GET, HEAD, DELETE (...) without a body: a TokenReview, a
# POST, would fail (a valid token refused 401; review r2tokcap N1). The pool reuses its oldest idle
# connection first, and Twisted's default of 240 s would keep them past the server's close.
IDLE_CONNECTION_TIMEOUT = 60


class KubeClient:
    """Talks to one cluster API server. Create it once (building the TLS context reads files),
    share it, and `close` it at shutdown."""

    def __init__(
        self,
        reactor: Any,
        config: ClusterConfig,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        connect_timeout: float = 10.0,
        max_idle_connections: int = MAX_IDLE_CONNECTIONS,
        token_reread_period: float = TOKEN_REREAD_PERIOD,
        exec_plugin_timeout: float = PLUGIN_TIMEOUT,
        watch_idle_timeout: float | None = WATCH_IDLE_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._config = config
        self._request_timeout = request_timeout
        self._watch_idle_timeout = watch_idle_timeout
        self._tokens = _TokenSource(config, reactor, token_reread_period, plugin_timeout=exec_plugin_timeout)
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = max_idle_connections
        self._pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
        policy = ClusterTLSPolicy.from_config(config) if config.uses_tls else BrowserLikePolicyForHTTPS()
        agent = Agent.usingEndpointFactory(
            reactor, KeepAliveEndpoints(reactor, policy, connect_timeout), pool=self._pool
        )
        self._http = HTTPClient(agent)
        self._streams: set[WatchStream] = set()
        self._user_agent = f"payloadtags/{__version__}"

    @property
    def config(self) -> ClusterConfig:
        return self._config

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> JsonObject:
        return await self._call("GET", path, params=params)

    async def list(self, path: str, params: Mapping[str, str] | None = None) -> JsonObject:
        """One page of a list: pass ``limit`` and ``continue`` in `params` to paginate."""
        return await self._call("GET", path, params=params)

    async def create(self, path: str, body: JsonObject) -> JsonObject:
        return await self._call("POST", path, body=body)

    async def update(self, path: str, body: JsonObject) -> JsonObject:
        """PUT; a ``metadata.resourceVersion`` in `body` makes it conditional (409 on mismatch)."""
        return await self._call("PUT", path, body=body)

    async def patch(self, path: str, patch: JsonObject, content_type: str = MERGE_PATCH) -> JsonObject:
        return await self._call("PATCH", path, body=patch, content_type=content_type)

    async def delete(self, path: str, options: JsonObject | None = None) -> JsonObject:
        """DELETE with optional DeleteOptions (preconditions, propagationPolicy, dryRun)."""
        return await self._call("DELETE", path, body=options)

    async def watch(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        stream_timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> WatchStream:
        """Open a watch; returns once the server has accepted it (HTTP 200).

        The stream is cut if it outlives `stream_timeout`: by default the ``timeoutSeconds`` asked
        of the server plus the request timeout, which guards against a connection that died
        without either side noticing. A stream that asked for bookmarks (``allowWatchBookmarks``)
        is also cut once no byte has arrived for `idle_timeout` (by default the client's
        ``watch_idle_timeout``), with `KubeWatchSilent`: what is behind the connection may be gone (a
        dead peer itself is found sooner by keepalive), and waiting for the stream deadline would
        leave the caller's copy stale for minutes. But a healthy server
        may be silent that long too (see `WATCH_IDLE_TIMEOUT`), so the caller watches again at once
        rather than counting it a failure.
        """
        query = {**(params or {}), "watch": "true"}
        if stream_timeout is None and "timeoutSeconds" in query:
            stream_timeout = float(query["timeoutSeconds"]) + self._request_timeout
        if idle_timeout is None and query.get("allowWatchBookmarks") == "true":
            idle_timeout = self._watch_idle_timeout
        response = await self._bounded(self._send("GET", path, query), f"watch {path}")
        if response.code != 200:
            counted = BodyBytes()
            body = await self._bounded(
                _read_body(response, f"watch {path}", counted), f"watch {path}", counted
            )
            raise self._api_error(response, body)
        stream = WatchStream(
            response, self._reactor, stream_timeout=stream_timeout, idle_timeout=idle_timeout
        )
        self._streams.add(stream)
        stream.on_close(self._streams.discard)
        return stream

    async def token_review(self, token: str, audiences: tuple[str, ...] = ()) -> UserInfo | None:
        """Ask the API server whose `token` this is: the user, or None when it is not valid."""
        spec: JsonObject = {"token": token}
        if audiences:
            spec["audiences"] = list(audiences)
        review = await self.create(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec},
        )
        status = review.get("status") or {}
        user = status.get("user") or {}
        if not status.get("authenticated") or not user.get("username"):
            return None
        # A token meant for another audience must not be accepted here (as in k8s.io/apiserver).
        if audiences and status.get("audiences") and not set(audiences) & set(status["audiences"]):
            return None
        try:
            reviewed = _converter.structure(user, _ReviewedUser)
        except (cattrs.BaseValidationError, ValueError, TypeError) as e:
            raise KubeProtocolError(f"malformed TokenReview user: {e}") from e
        return UserInfo(
            name=reviewed.username,
            uid=reviewed.uid,
            groups=reviewed.groups,
            extra=tuple(sorted(reviewed.extra.items())),
        )

    async def close(self) -> None:
        """Abort open watches and close pooled connections."""
        for stream in list(self._streams):
            stream.close()
        await self._pool.closeCachedConnections()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: JsonObject | None = None,
        content_type: str = "application/json",
    ) -> JsonObject:
        what = f"{method} {path}"

        counted = BodyBytes()

        async def exchange() -> tuple[IResponse, bytes]:
            data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
            response = await self._send(method, path, params, data, content_type)
            return response, await _read_body(response, what, counted)

        response, raw = await self._bounded(exchange(), what, counted)
        if response.code >= 400:
            raise self._api_error(response, raw)
        try:
            decoded = json.loads(raw)
        except ValueError as e:
            raise KubeProtocolError(f"{what}: reply is not JSON") from e
        if not isinstance(decoded, dict):
            raise KubeProtocolError(f"{what}: reply is not a JSON object")
        return decoded

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        data: bytes | None = None,
        content_type: str = "application/json",
    ) -> IResponse:
        headers: dict[bytes | str, bytes | str] = {
            "Accept": "application/json",
            "User-Agent": self._user_agent,
        }
        if data is not None:
            headers["Content-Type"] = content_type
        token = await self._tokens.token()
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        try:
            return await self._http.request(
                method,
                self._config.server + path,
                params=dict(params or {}),
                headers=headers,
                data=data,
                allow_redirects=False,
                unbuffered=True,
            )
        except _CONNECTION_ERRORS as e:
            _raise_if_cancelled(e)
            said = f"{method} {path}: {_describe(e)}"
            rejected = _certificate_rejected(e)
            if rejected is not None:
                raise rejected(said) from e
            raise KubeUnreachable(said) from e

    async def _bounded(self, work: Coroutine[Any, Any, T], what: str, counted: BodyBytes | None = None) -> T:
        """Run `work` under the request timeout, turning expiry into `KubeTimeout`; a caller's
        cancel stays CancelledError (see `within`). An answer waiting in the socket when the timeout
        is due, unread because the reactor did not poll, counts as in time: the deadline lets the
        reactor read first, and reads on while each turn brings more of the body it reads into
        ``counted`` (at most 64 KiB a turn), for at most another request timeout (`within`)."""
        progress = (lambda: counted.count) if counted is not None else None
        try:
            return await within(
                self._reactor, self._request_timeout, work, look_first=True, progress=progress
            )
        except DeadlineExpired as e:
            raise KubeTimeout(f"{what}: no answer within {self._request_timeout:g}s") from e.__cause__

    def _api_error(self, response: IResponse, body: bytes) -> KubeApiError:
        retry_after = response.headers.getRawHeaders(b"retry-after", [b""])[0].decode("latin-1")
        if response.code == 401:
            # A rotated token may have been revoked already: read it again before the next call.
            self._tokens.invalidate()
        return KubeApiError(status_from_body(response.code, body, retry_after), response.code)


async def _read_body(response: IResponse, what: str, counted: BodyBytes) -> bytes:
    # read_body, unlike treq.collect, stops reading when the deadline cuts it (review r4reg F2).
    try:
        return await read_body(response, None, counted=counted)
    except _CONNECTION_ERRORS as e:
        _raise_if_cancelled(e)
        raise KubeReplyCutShort(f"{what}: reply cut short: {_describe(e)}") from e


def _raise_if_cancelled(error: BaseException) -> None:
    # Agent reports a cancelled request as a transport failure; see `deferreds.is_cancellation`.
    if is_cancellation(error):
        raise CancelledError() from error


def _certificate_rejected(error: BaseException) -> Callable[[str], KubeCertificateRejected] | None:
    """How to say a connection that failed because the server's certificate did not verify: its
    chain (OpenSSL's "certificate verify failed": an unknown CA, an expired certificate) or its name
    (`tls.ClusterTLSPolicy`'s check fails with service_identity's VerificationError); else None."""
    for reason in getattr(error, "reasons", None) or ():
        value = reason.value if isinstance(reason, Failure) else reason
        if isinstance(value, VerificationError):
            return lambda said: KubeCertificateRejected(said, wrong_name=True)
        if isinstance(value, SSL.Error) and "certificate verify failed" in str(value):
            return KubeCertificateRejected
    return None


def _describe(error: BaseException | None) -> str:
    if error is None:  # a Failure's value, which Twisted types as optional
        return "unknown error"
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(str(r.value) if isinstance(r, Failure) else str(r) for r in reasons)
    return str(error) or type(error).__name__


PluginRunner = Callable[[Any, ExecPlugin, float], "Deferred[ExecCredential]"]


class _TokenSource:
    """The bearer token for the next request: a fixed one, a file's (re-read once a `period` and
    after a 401), or an exec plugin's (run again once expired and after a 401, as client-go does)."""

    def __init__(
        self,
        config: ClusterConfig,
        clock: IReactorTime,
        period: float,
        *,
        plugin_timeout: float = PLUGIN_TIMEOUT,
        run: PluginRunner = run_plugin,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._clock = clock
        self._period = period
        # As client-go's bearer round tripper: a kubeconfig's token beside its tokenFile is sent until the
        # file has been read, and so whenever it cannot be (the file's token, once read, is kept instead).
        self._token: str | None = config.token
        self._from_file = False
        self._read_at = float("-inf")
        self._plugin_timeout = plugin_timeout
        self._run = run
        self._expires_at = config.token_expires_at
        self._stale = False
        self._renewals: InFlight[None, str] = InFlight()
        # A file that stays unreadable is met at each re-read and at each 401 (each invalidates): said
        # once a period per cause.
        self._unreadable_said: OncePerPeriod[str] = OncePerPeriod(_UNREADABLE_LOG_PERIOD, monotonic)

    async def token(self) -> str | None:
        """The token to send; may run the exec plugin (on the reactor) and wait for it."""
        plugin = self._config.exec_plugin
        if plugin is None:
            return self.current()
        token = self._token if self._token is not None else self._config.token
        # client-go's rule: a credential is used until its expirationTimestamp has passed.
        fresh = self._expires_at is None or self._clock.seconds() < self._expires_at
        if token is not None and fresh and not self._stale:
            return token
        # One run for every request waiting; a waiter that gives up leaves it running for the rest.
        return await self._renewals.join(None, lambda: self._renew(plugin))

    async def _renew(self, plugin: ExecPlugin) -> str:
        try:
            result = await self._run(self._clock, plugin, self._plugin_timeout)
        except Exception as e:
            # A file the plugin is found by or given (a relative command, the cluster's CA) is joined to
            # the kubeconfig's folder, which a URL that took --kubeconfig's place makes
            # `https:/user:pw@host` under the working directory (review r11misc F1).
            why = paths_redacted(_describe(e), (plugin.folder or "",))
            raise KubeCredentialUnavailable(f"cannot renew the cluster API credential: {why}") from e
        if result.token is None:
            raise KubeCredentialUnavailable(
                f"exec plugin {plugin.command} now prints a client certificate, not a token"
            )
        self._token, self._expires_at, self._stale = result.token, result.expires_at, False
        return result.token

    def current(self) -> str | None:
        if self._config.token_file is None:
            return self._config.token
        now = self._clock.seconds()
        if self._token is None or now - self._read_at >= self._period:
            self._read_at = now
            try:
                # A synchronous read on the reactor, on purpose: the projected token is a few
                # hundred bytes on a tmpfs, read at most once a minute.
                read = _read_token(self._config.token_file)
            except OSError as e:
                if self._token is None:
                    # Not chained: a traceback would show the OSError's path unredacted (its words are here).
                    raise KubeTokenUnreadable(
                        self._shown(f"cannot read token file {self._config.token_file}: {e}")
                    ) from None
                self._say_kept(str(e))
            else:
                if read:
                    self._token, self._from_file = read, True
                elif self._from_file:
                    # Kept, as client-go keeps it ("Unable to rotate token: read empty token from file"):
                    # a writer that truncates before it writes (review r6cfg N6). A file blank from the
                    # start leaves the kubeconfig's token beside it in force, as documented, unsaid.
                    self._say_kept("it is blank")
                elif self._token is None:
                    # Emptied since the start check passed, with no token to send instead: as a missing
                    # file, rather than requests sent without a credential and nothing said (review
                    # r7misc L2), and as the start refuses a blank one.
                    raise KubeTokenUnreadable(
                        self._shown(f"cannot read token file {self._config.token_file}: it is blank")
                    )
        return self._token

    def _say_kept(self, cause: str) -> None:
        said = self._unreadable_said(cause)
        if said is not None:
            log.warn(
                "{kept}: cannot read {path}: {error}{more}",
                kept="Keeping the previous token" if self._from_file else "Sending the kubeconfig's token",
                path=self._shown(self._config.token_file or ""),
                error=self._shown(cause),
                more=said.more(),
            )

    def _shown(self, text: str) -> str:
        """``text`` with the kubeconfig's folder redacted wherever it names it (an OSError repeats the
        token file's path, quoted). A kubeconfig's relative tokenFile is joined to its folder, which a
        URL that took --kubeconfig's place makes `https:/user:pw@host` under the working directory
        (review r11misc F1). Only the folder: a tokenFile written absolute, in a folder with an '@'
        (/var/tokens/ci-robot@prod/token), comes from no URL and is shown whole (review r13cfg L1)."""
        return paths_redacted(text, (self._config.kubeconfig_folder or "",))

    def invalidate(self) -> None:
        self._read_at = float("-inf")
        self._stale = True


class _NotText(OSError):
    """A token file whose bytes are not UTF-8: unreadable, as a missing one is."""

    def __str__(self) -> str:
        return "it is not UTF-8 text"


def _read_token(path: str) -> str:
    """The token a file holds. Bytes that are not UTF-8 are refused as the file being unreadable:
    client-go sends them as they are, but no cluster issues such a token (a service account's is a
    JWT, ASCII), so it would only be a 401, and the token (a str) cannot carry them. The bytes are not
    said: they are part of the token."""
    try:
        # As client-go reads it (strings.TrimSpace): Python's strip() also took U+001C-U+001F.
        return go_trim_space(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise _NotText() from None


class WatchStream:
    """The events of one watch response, as an async iterator of `WatchEvent`.

    Iteration ends cleanly when the server ends the stream (``timeoutSeconds`` reached). It raises
    `KubeApiError` for an ERROR event (410 Expired: relist), `KubeStreamLost` when the connection
    breaks, `KubeWatchSilent` (a `KubeStreamLost`) when nothing arrived for `idle_timeout`,
    `KubeTimeout` past the stream deadline,
    `KubeProtocolError` for undecodable lines.
    Events are buffered; past `high_water` undelivered events the connection is paused, so a slow
    consumer slows the server down instead of growing memory.
    """

    def __init__(
        self,
        response: IResponse,
        clock: IReactorTime,
        *,
        stream_timeout: float | None = None,
        idle_timeout: float | None = None,
        high_water: int = 1000,
    ) -> None:
        self._framer = LineFramer()
        self._events: deque[WatchEvent] = deque()
        self._high_water = high_water
        self._producer: IPushProducer | None = None
        self._paused = False
        self._finished = False
        self._closed = False
        self._error: Exception | None = None
        self._waiter: Deferred[None] | None = None
        self._close_callbacks: list[Callable[[WatchStream], object]] = []
        self._deadline: IDelayedCall | None = None
        if stream_timeout is not None:
            self._deadline = clock.callLater(stream_timeout, self._expire, stream_timeout)
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._idle: IDelayedCall | None = None
        self._watch_idle()
        response.deliverBody(_StreamProtocol(self))

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> WatchEvent:
        while True:
            if self._events:
                event = self._events.popleft()
                if self._paused and len(self._events) <= self._high_water // 2 and self._producer:
                    self._paused = False
                    # A stream that has ended (the server's clean end while we were behind included)
                    # has nothing left to resume and no silence to watch for.
                    if self._receiving():
                        self._producer.resumeProducing()
                        self._watch_idle()
                if event.type == ERROR:
                    self.close()
                    status = event.object
                    code = status.get("code")
                    raise KubeApiError(status, code if isinstance(code, int) else 500)
                return event
            if self._error is not None:
                raise self._error
            if self._finished or self._closed:
                raise StopAsyncIteration
            self._waiter = Deferred(self._cancel_wait)
            await self._waiter

    def close(self) -> None:
        """Stop receiving: the connection is dropped (a watch cannot go back to the pool)."""
        if self._closed:
            return
        self._closed = True
        self._stop_deadline()
        if self._producer is not None and not self._finished:
            self._producer.stopProducing()
        self._wake()
        self._run_close_callbacks()

    def on_close(self, callback: Callable[[WatchStream], object]) -> None:
        """Call `callback` once, when the stream is closed or the connection ends."""
        self._close_callbacks.append(callback)

    def _run_close_callbacks(self) -> None:
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            callback(self)

    def _cancel_wait(self, _d: Deferred[None]) -> None:
        # Leave the Deferred to be errbacked with CancelledError by cancel() itself.
        self._waiter = None
        self.close()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def _connected(self, producer: IPushProducer | None) -> None:
        self._producer = producer

    def _data(self, data: bytes) -> None:
        if self._closed or self._error is not None:
            return
        try:
            for line in self._framer.feed(data):
                self._events.append(_decode_event(line))
        except KubeProtocolError as e:
            self._fail(e)
            return
        if self._idle is not None:
            self._idle.reset(self._idle_timeout)  # type: ignore[arg-type]
        if not self._paused and len(self._events) >= self._high_water and self._producer is not None:
            self._paused = True
            self._producer.pauseProducing()
            # Silence is ours now, not the server's.
            self._stop_idle()
        self._wake()

    def _lost(self, reason: Failure) -> None:
        self._finished = True
        self._stop_deadline()
        if not self._closed and self._error is None:
            if not reason.check(ResponseDone, PotentialDataLoss):
                self._error = KubeStreamLost(f"watch stream broken: {_describe(reason.value)}")
            elif self._framer.pending.strip():
                self._error = KubeStreamLost("watch stream ended inside an event")
        self._wake()
        self._run_close_callbacks()

    def _receiving(self) -> bool:
        return not (self._finished or self._closed or self._error is not None)

    def _watch_idle(self) -> None:
        if self._idle_timeout is not None and self._idle is None and self._receiving():
            self._idle = self._clock.callLater(self._idle_timeout, self._silent, self._idle_timeout)

    def _stop_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _silent(self, idle_timeout: float) -> None:
        self._idle = None
        self._fail(KubeWatchSilent(f"watch stream silent for {idle_timeout:g}s, not even a bookmark"))

    def _expire(self, stream_timeout: float) -> None:
        self._deadline = None
        self._fail(KubeTimeout(f"watch stream still open after {stream_timeout:g}s"))

    def _fail(self, error: Exception) -> None:
        self._error = error
        self._stop_deadline()
        if self._producer is not None and not self._finished:
            self._producer.stopProducing()
        self._wake()

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self._stop_idle()


class _StreamProtocol(Protocol):
    def __init__(self, stream: WatchStream) -> None:
        self._stream = stream

    def connectionMade(self) -> None:
        # deliverBody gives a body's protocol the response's producer as its transport.
        self._stream._connected(IPushProducer(self.transport) if self.transport is not None else None)

    def dataReceived(self, data: bytes) -> None:
        self._stream._data(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._stream._lost(reason)


def _decode_event(line: bytes) -> WatchEvent:
    try:
        raw = json.loads(line)
    except ValueError as e:
        raise KubeProtocolError(f"watch event is not JSON: {line[:200]!r}") from e
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("type"), str)
        or not isinstance(raw.get("object"), dict)
    ):
        raise KubeProtocolError(f"watch event is not an event object: {line[:200]!r}")
    return WatchEvent(raw["type"], raw["object"])
