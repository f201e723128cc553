"""Klein routes: discovery, the payloadrepositorytags resource, health and version.

Handlers are thin: they authenticate, parse, call the TagsService and render.
"""

from __future__ import annotations

import functools
import hmac
import json
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Hashable, Mapping
from email.utils import formatdate
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote_to_bytes

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from werkzeug.exceptions import BadHost, HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import MapAdapter

from payloadtags import __version__
from payloadtags.access.authn import Credentials, CredentialsRefused, RequestAuthenticator, UserInfo
from payloadtags.access.authz import AlwaysAllow, AuthorizationNotReady, PathAuthorizer, path_matches
from payloadtags.api import discovery, formats, openapi
from payloadtags.api.durations import request_timeout
from payloadtags.api.errors import (
    CLIENT_CLOSED_REQUEST,
    ApiError,
    bad_request,
    cluster_wide_delete_collection_not_allowed,
    did_not_complete,
    impersonation_refused,
    internal,
    method_not_allowed,
    namespace_forbidden,
    path_method_not_allowed,
    path_not_found,
    resource_version_too_large,
    service_unavailable,
    too_many_requests,
    unauthorized,
)
from payloadtags.api.health import HealthChecks
from payloadtags.api.negotiation import JSON_TYPE, Form, MediaType, negotiate
from payloadtags.api.options import Query, delete_options, first, list_options, storage_refusals
from payloadtags.api.registry_errors import api_error_for
from payloadtags.api.render import (
    CHUNK_ITEMS,
    SharedText,
    include_object,
    list_envelope,
    list_text,
    render_list,
    render_object,
    rendered_list_chunks,
    streamed_list_chunks,
)
from payloadtags.api.streaming import write_streamed
from payloadtags.api.tags import PageRuns, TagsService, reads_a_page
from payloadtags.api.watch import (
    EventRenderer,
    ResponseSink,
    WatchOptions,
    expired,
    is_watch,
    watch_options,
)
from payloadtags.deferreds import is_cancellation
from payloadtags.identity import ANONYMOUS
from payloadtags.limits import WAITING_SHARE
from payloadtags.metrics import CONTENT_TYPE, Metrics
from payloadtags.model import GROUP, GROUP_VERSION, RESOURCE, ListMeta, PayloadRepositoryTag, to_json
from payloadtags.names import is_namespace
from payloadtags.onceper import OncePerPeriod
from payloadtags.registry import is_valid_repository
from payloadtags.registry.errors import RegistryError
from payloadtags.repoindex import RepositoryIndex
from payloadtags.tls import (
    client_chain,
    connection_verdicts,
    refused_certificate,
    unreadable_certificate,
)
from payloadtags.watch import Listed, TooManyWatches, Watcher, WatchHub, WatchSlot
from payloadtags.watch.rereads import NotificationRereads
from payloadtags.watch.watcher import error_line

log = Logger()

# How long an authenticator failing for one cause (a TokenReview the cluster API refuses, an API out
# of reach) stays quiet in the log after a line about it.
AUTH_FAILURE_LOG_PERIOD = 30.0
# How long 401s for one client certificate the handshake did not verify stay quiet in the log after a
# line about it.
REFUSED_CERTIFICATE_LOG_PERIOD = 60.0
# How long notifications refused for their token stay quiet in the log after a line about them.
EVENTS_REFUSED_LOG_PERIOD = 30.0
# Events of one notification envelope taken: distribution sends one an envelope. The rest of a longer
# one is left out, so that what one request costs stays bounded (review r1events L1); it is not
# refused, which a sender would retry forever with every later notification queued behind it
# (review r2events L2).
MAX_EVENTS_PER_ENVELOPE = 100
# How long envelopes cut to MAX_EVENTS_PER_ENVELOPE stay quiet in the log after a line about them.
EVENTS_CUT_LOG_PERIOD = 60.0
# distribution's push of a blob (a layer, a config): no tag changes with it (review r1events N1).
BLOB_MEDIA_TYPE = "application/octet-stream"

BASE = f"/apis/{GROUP_VERSION}"
HEALTH_ENDPOINTS = ("healthz", "livez", "readyz")
# Whether a route serves anyone without a credential: for all its requests, or as the path's
# variables (a route's kwargs) decide.
Anonymous = bool | Callable[[Mapping[str, Any]], bool]
MAX_BODY = 3 << 20
_YEAR = 365 * 24 * 3600  # kube-openapi: an immutable document "expires" a year after it is served


# Where a request keeps its parsed target and query: the handler, the watch check and the metrics
# labels each need them, and parsing them again costs more than the look-up.
_TARGET = "_payloadtags_target"
_QUERY = "_payloadtags_query"
# Who made a request, once authenticated: the request log names them whatever the answer.
_USER = "_payloadtags_user"
# When the request's deadline falls, on the server's clock (`ApiServer.request_timeout`, counted from
# its receipt, _RECEIVED): absent for one without a deadline (a watch).
_DEADLINE = "_payloadtags_deadline"
# When the request arrived (_Arrival, noted as the channel read its head: `ApiServer.received`): its
# deadline and its duration count from then, through its authentication, its body and its wait for its
# client's turn to its handler's end, once, as kube-apiserver's do from receipt.
_RECEIVED = "_payloadtags_received"
# What the 504 of a request whose deadline passed before its handler began (its body, or its turn, came
# too late) adds: a DELETE's client need not look for tags gone.
_NOT_BEGUN = "; it was not begun by then, and nothing was done"
# Set on a DELETE once its DeleteOptions ask for a dry run: its timeout says that nothing was deleted.
_DRY_RUN = "_payloadtags_dry_run"
# The request's seat among --max-requests-inflight (_Seat), for the writer of a long response.
_SEAT = "_payloadtags_seat"


_NO_QUERY: Query = MappingProxyType({})


def _query(request: IRequest) -> Query:
    query: Query | None = getattr(request, _QUERY, None)
    if query is None:
        # Read-only: every reader of the request shares it; most requests have none to parse.
        text = _target(request)[1]
        query = MappingProxyType(parse_qs(text, keep_blank_values=True)) if text else _NO_QUERY
        setattr(request, _QUERY, query)
    return query


def _target(request: IRequest) -> tuple[str, str]:
    """Path and query of the request target. Not urlsplit: a path starting with "//" would be read as
    a host (and "//[" raise), where the server must only ever see a path. A "#" is a byte of the path or
    the query, as Go's url.ParseRequestURI keeps it (a client sends no fragment) and as Twisted routes
    the path: admission decided on the path without it, routing with it (review r4chan N3)."""
    target: tuple[str, str] | None = getattr(request, _TARGET, None)
    if target is None:
        path, _, query = request.uri.decode("utf-8", "replace").partition("?")
        target = (path, query)
        setattr(request, _TARGET, target)
    return target


def _header(request: IRequest, name: str) -> str | None:
    # As bytes: Twisted decodes str look-ups as UTF-8, and a header that is not would raise. Of several
    # fields the first, as kube-apiserver's Go Header.Get reads Accept and Content-Type.
    values = request.requestHeaders.getRawHeaders(name.encode("latin-1"))
    return values[0].decode("latin-1") if values else None


def _connection(request: Request) -> object:
    """The TLS connection (an ``SSL.Connection``) a request came on, or None."""
    transport = request.channel.transport if request.channel is not None else None
    handle = getattr(transport, "getHandle", None)
    return handle() if handle is not None else None


def _credentials(request: Request) -> Credentials:
    connection = _connection(request)
    chain = client_chain(connection)
    headers: dict[str, list[str]] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        # Values as UTF-8, what the aggregator sends user and group names in; bytes that are not
        # stay distinguishable (see Credentials.headers) so that authentication can refuse them.
        headers[name.decode("latin-1").lower()] = [v.decode("utf-8", "surrogateescape") for v in values]
    return Credentials(
        peer_certificate=chain[0] if chain else None,
        headers=headers,
        peer_chain=chain,
        unreadable_certificate=unreadable_certificate(connection),
        # Only a connection with a chain has verdicts to keep (none made for the others).
        verdicts=connection_verdicts(connection) if chain else None,
        # The HTTP layer's (ClientKey), not read from the transport: one front-proxy connection is a
        # client of its own.
        client=getattr(request.channel, "client_key", None),
    )


# What client-go sends for kubectl --as, --as-group, --as-uid and an impersonated user's extra.
_IMPERSONATION = frozenset(("impersonate-user", "impersonate-group", "impersonate-uid"))


def _impersonates(credentials: Credentials) -> bool:
    """Whether a request asks to act as someone else (names lower-cased, as in Credentials)."""
    return any(
        name in _IMPERSONATION or name.startswith("impersonate-extra-")
        for name in credentials.headers
        if name.startswith("impersonate-")
    )


def _request_labels(request: IRequest, watch: bool | None = None) -> tuple[str, str]:
    """Verb and resource as kube-apiserver's metrics name them; non-resource paths have no resource.
    ``watch``: whether the request is a watch, when the caller has told already."""
    path = _target(request)[0].rstrip("/")
    method = request.method.decode("latin-1")
    parts = path.split("/")
    if not path.startswith(BASE + "/") or RESOURCE not in parts:
        return method.lower(), ""
    named = parts.index(RESOURCE) < len(parts) - 1
    if method == "GET" and (not named and _is_watch_request(request) if watch is None else watch):
        return "watch", RESOURCE
    verbs = {
        "GET": "get" if named else "list",
        "DELETE": "delete" if named else "deletecollection",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
    }
    return verbs.get(method, method.lower()), RESOURCE


def _is_watch_request(request: IRequest) -> bool:
    """Whether a request for the collection is a watch. Only there: kube-apiserver's GET of a name
    reads no watch parameter (it returns the object), nor does its DELETE."""
    # HEAD never reaches a watch: the resource's routes answer it 405 (ApiServer._route).
    return request.method == b"GET" and is_watch(_query(request))


def _client_gone(request: Request) -> bool:
    """Whether the client went away before the head of its answer was written."""
    return request.channel is None and not request.startedWriting


def _head(request: IRequest, code: int, content_type: str) -> None:
    """The status and headers every answer with a body has."""
    request.setResponseCode(code)
    # What setHeader stores, set in the response's Headers directly: the names as Headers spells them
    # (tests/unit/test_app_headers.py) and the values encoded once per text, rather than both encoded
    # and checked again on every request (issue #11). Headers._rawHeaders is Twisted's own: an upgrade
    # that stores names and values otherwise fails tests/unit/test_app_headers.py.
    raw = request.responseHeaders._rawHeaders
    raw[b"Content-Type"] = [_header_value(content_type)]
    raw[b"Cache-Control"] = [b"no-cache, private"]


@functools.lru_cache(maxsize=64)
def _header_value(text: str) -> bytes:
    """A header value as Headers.setRawHeaders stores it (UTF-8, line breaks made spaces). The texts
    are the server's own few (media types, the ETags of its documents)."""
    return b" ".join(text.encode().splitlines())


def _write_json(request: IRequest, code: int, body: Any, content_type: str = JSON_TYPE) -> bytes:
    _head(request, code, content_type)
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _write(request: IRequest, body: Any, media: MediaType) -> bytes:
    """A 200 with ``body`` in ``media``'s syntax (JSON, indented JSON or YAML)."""
    _head(request, 200, media.content_type)
    return formats.encode(body, media)


def list_answer_chunks(
    items: list[PayloadRepositoryTag], meta: ListMeta, media: MediaType, include: str
) -> AsyncGenerator[bytes, None]:
    """A list of objects at hand in ``media``'s syntax, in pieces for `write_streamed`: compact JSON
    `CHUNK_ITEMS` objects a piece, indented JSON and YAML `formats.BATCH_ITEMS` (slower to make)."""
    shape = media.as_json()
    chunks = rendered_list_chunks(items, meta, shape, include)
    if formats.plain(media):
        return chunks
    return formats.reencoded_list(chunks, *list_envelope(meta, shape), media)


def _include(media: MediaType, query: Query) -> str:
    """What a Table's rows carry (its `includeObject`, checked), or "Metadata" for any other form."""
    return include_object(first(query, "includeObject")) if media.form is Form.TABLE else "Metadata"


def _watch_media(accept: str | None) -> tuple[MediaType, ApiError | None]:
    """A watch's media type as kube-apiserver negotiates it, in two steps: ListResource a list's types
    first (406 at once when no list is served in it either), and serveWatchHandler, only after the
    options are read, the stream's. Its media type, and the stream's 406 to raise then (an Accept only
    a list serves, as YAML: there is no YAML stream)."""
    try:
        return negotiate(accept, collection=True, watch=True), None
    except ApiError as refused:
        return negotiate(accept, collection=True), refused


def _with_pretty(media: MediaType, query: Query) -> MediaType:
    """``media``, indented when the query asks for it as kube-apiserver reads `pretty` (not for a
    watch: its events stay compact). Checked after negotiation: most requests have no query."""
    if media.pretty or media.yaml or not query or not formats.wants_pretty(query):
        return media
    return attrs.evolve(media, pretty=True)


def _decoded_path(request: IRequest) -> str:
    """The path as routing reads it, percent-escapes decoded, as kube-apiserver reads Go's URL.Path."""
    return unquote_to_bytes(request.path).decode("utf-8", "replace")


def _refuse_a_trailing_slash(request: IRequest) -> None:
    """A health or metrics path ending in '/' (`/readyz/`, `/healthz/ping/`, `/metrics%2F`) is not found,
    once authorized, as kube-apiserver's mux serves `/readyz` and `/readyz/<check>` exactly (review
    r10cfg N1: a grant of `/readyz/*` read `/readyz/` as the overall result). Routing takes such a path
    for the one without its '/' (strict_slashes=False, which the API's paths need)."""
    if _decoded_path(request).endswith("/"):
        raise path_not_found()


def _write_error(request: IRequest, error: ApiError) -> bytes:
    if error.retry_after is not None:
        request.setHeader(b"retry-after", str(error.retry_after).encode())
    return _write_json(request, error.code, to_json(error.status()))


Handler = Callable[..., Awaitable[bytes]]


def _method_refused(request: IRequest) -> bytes:
    """The 405 of a method no route of the request's path serves."""
    if _request_labels(request)[1] != RESOURCE:
        # Discovery, OpenAPI, health, version: go-restful's 405, which names no resource.
        return _write_error(request, path_method_not_allowed())
    return _write_error(request, method_not_allowed(request.method.decode("latin-1").lower()))


class _Utf8Paths(Resource):
    """Klein answers a path or Host that is not UTF-8 with a bare text 400, and one that is no host name
    with a 500: refuse them as a Status. A path that begins with an empty segment (``//apis``, or
    ``/%2Fapis``, unquoted) is one no route serves, as any other with one (the URL map merges no
    slashes): werkzeug strips the leading slashes and would serve it as ``/apis``."""

    isLeaf = True

    def __init__(
        self,
        routes: Resource,
        direct: Callable[[Request], int | None],
        served: Callable[[str], bool] = lambda path: True,
    ) -> None:
        super().__init__()
        self.routes = routes
        self.direct = direct
        self.served = served

    def render(self, request: Request) -> bytes | int:
        try:
            b"/".join(request.postpath or []).decode("utf-8")
            b"/".join(request.prepath or []).decode("utf-8")
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return _write_error(request, bad_request("the request path is not valid UTF-8"))
        # The path Klein routes: segments unquoted, so "/%2Fapis" is "//apis" here as in kube-apiserver.
        if b"/".join(request.postpath or []).startswith(b"/"):
            return _write_error(request, path_not_found())
        if not request.method.isupper():
            # A method not in upper case (`get`, `Delete`): werkzeug matches methods whatever their
            # case and would serve it; kube-apiserver's router (go-restful) matches them exactly, as
            # Go's methods are case-sensitive, so no route takes it: a 405 on a path a route serves
            # as for any other method no route of the path serves (_method_refused), else a 404.
            path = unquote_to_bytes(_target(request)[0]).decode("utf-8")
            return _method_refused(request) if self.served(path) else _write_error(request, path_not_found())
        served = self.direct(request)
        if served is not None:
            return served
        try:
            return self.routes.render(request)  # type: ignore[no-any-return]
        except BadHost:
            # Routing binds the URL map to the Host header before any route runs; a Host that is
            # no host name (".", "a..b") fails there, outside Klein's error handlers.
            return _write_error(request, bad_request("the Host header is not a valid host name"))


# A route's answer to a request with its path's variables: the body, once the request's metrics and log
# line are taken; the callable, when given, is told first when the request finishes.
Respond = Callable[[Request, dict[str, Any], Callable[[object], None] | None], Deferred[bytes]]


class _Arrival(NamedTuple):
    """When a request's head was read (_RECEIVED): on the server's clock, which its deadline is kept
    on, and on time.monotonic, which its duration is measured on. A tuple: one is made per request."""

    at: float
    monotonic: float


@attrs.frozen
class _Responder:
    """What ApiServer._endpoint makes of a route's function: Klein's handler, and the answer a direct
    route gives without Klein."""

    handler: Callable[..., Coroutine[Any, Any, bytes]]
    respond: Respond


@attrs.frozen
class _DirectRoute:
    """A GET route served without Klein's routing: its path's segments, None where a segment is a
    variable (named in ``names``, in order)."""

    parts: tuple[str | None, ...]
    names: tuple[str, ...]
    respond: Respond

    @classmethod
    def of(cls, path: str, respond: Respond) -> _DirectRoute:
        parts = tuple(None if part.startswith("<") else part for part in path[1:].split("/"))
        names = tuple(part[1:-1] for part in path[1:].split("/") if part.startswith("<"))
        return cls(parts, names, respond)

    def match(self, segments: list[str]) -> dict[str, str] | None:
        values = []
        for part, segment in zip(self.parts, segments, strict=True):
            if part is None:
                if not segment:
                    return None
                values.append(segment)
            elif part != segment:
                return None
        return dict(zip(self.names, values, strict=True))


@attrs.define(eq=False)
class _Seat:
    """One request's seat among ``--max-requests-inflight``. A long response (a whole list, written
    as its client reads it) gives its seat up while it waits for a client that does not read, and
    takes it again when the client reads: what it then holds is the connection's buffers, bounded per
    connection, not the server's work. Without this, a few hundred connections asking for a large
    list and never reading it held every seat until the request deadline, and everyone else got 429.

    Taken (`take`) once the request is authenticated, as kube-apiserver's chain authenticates before
    its in-flight limit: a request waiting for its TokenReview (retried for seconds while the cluster
    API throttles them) holds no seat, and is bounded by connections meanwhile."""

    server: ApiServer
    counted: bool = False  # whether the request is one the limit bounds, and got its seat
    held: bool = False
    done: bool = False

    def take(self) -> bool:
        """Seats the request; False when every seat is taken (its 429)."""
        server = self.server
        if self.done or self.counted:
            return True  # finished already (its client gone): nothing to hold, nothing to answer
        if server._limited >= server.max_inflight:
            return False
        self.counted = self.held = True
        server._limited += 1
        return True

    def waiting(self, waiting: bool) -> None:
        """The response waits for its client to read (True), or goes on (False)."""
        if not self.counted or self.done or self.held != waiting:
            return
        server = self.server
        if waiting and server._waiting >= server.waiting_limit:
            # A response given up still holds its rendered chunks and its connection's buffers: at
            # most waiting_limit of them, so that what lists hold stays bounded (--max-requests-inflight
            # and this share of it), not by --max-connections. Past it the seat is kept, as before.
            return
        # Taken again even when the seats are all taken meanwhile: this request's work is under
        # way, and it is new requests the limit turns away.
        self.held = not waiting
        server._limited += -1 if waiting else 1
        server._waiting += 1 if waiting else -1

    def finished(self) -> None:
        if self.done:
            return
        self.done = True
        if self.held:
            self.held = False
            self.server._limited -= 1
        elif self.counted:
            self.server._waiting -= 1


def _waiting(request: Request) -> Callable[[bool], None] | None:
    seat: _Seat | None = getattr(request, _SEAT, None)
    return None if seat is None else seat.waiting


@attrs.define
class ApiServer:
    service: TagsService
    authenticator: RequestAuthenticator
    health: HealthChecks
    metrics: Metrics = attrs.field(factory=Metrics)
    # Non-resource URLs (/metrics, health paths outside always_allow_paths) are authorized like
    # kube-apiserver's: RBAC nonResourceURLs rules, or everything under AlwaysAllow.
    path_authorizer: PathAuthorizer = attrs.field(factory=AlwaysAllow)
    always_allow_paths: tuple[str, ...] = ("/healthz", "/readyz", "/livez")
    # Deprecated --metrics-allowed-groups: groups that may read /metrics whatever RBAC says.
    metrics_groups: tuple[str, ...] = ()
    metrics_anonymous: bool = False
    # With both: POST /registry/events (registry notifications, bearer token) feeds the index.
    repository_index: RepositoryIndex | None = None
    events_token: str | None = attrs.field(default=None, repr=False)
    # Deadline of every request, and how many requests (health probes aside) may be served at once.
    clock: IReactorTime | None = None
    request_timeout: float = 60.0
    max_inflight: int = 400
    max_body: int = MAX_BODY
    # Serves watch=true on the collection; without it a watch is 405.
    watch_hub: WatchHub | None = None
    # No cluster API: nothing else answers kubectl's namespace check (_namespace).
    standalone: bool = False
    # Whether each request's line is logged (at debug level): off, the line is not even built (the
    # log's level filter would drop it only after a good deal of work on every request).
    request_log: bool = True
    # The text of runs that lists in flight together show whole (one coalesced registry read): made
    # once for all of them, kept only while they write it.
    shared_text: SharedText = attrs.field(factory=SharedText)
    app: Klein = attrs.field(factory=Klein, init=False)
    _inflight: int = attrs.field(default=0, init=False)
    _idle_waiters: list[Deferred[None]] = attrs.field(factory=list, init=False)
    _limited: int = attrs.field(default=0, init=False)
    # Counted responses that gave their seat up while their client does not read (_Seat).
    _waiting: int = attrs.field(default=0, init=False)
    _documents: dict[int, tuple[Any, str, bytes]] = attrs.field(factory=dict, init=False)
    _admitted: weakref.WeakKeyDictionary[IRequest, UserInfo] = attrs.field(
        factory=weakref.WeakKeyDictionary, init=False
    )
    # The GET routes asked for most (lists, pages, single tags, discovery), by number of segments.
    _direct: dict[int, list[_DirectRoute]] = attrs.field(factory=dict, init=False)
    # The clock of the authentication failures' log (a task.Clock's in tests).
    monotonic: Callable[[], float] = time.monotonic
    _auth_failures: OncePerPeriod[tuple[type, int | None]] = attrs.field(init=False)
    _refused_certificates: OncePerPeriod[Hashable] = attrs.field(init=False)
    _events_refused: OncePerPeriod[None] = attrs.field(init=False)
    _events_cut: OncePerPeriod[None] = attrs.field(init=False)
    # The tag-list rereads notifications ask of watched scopes, a few at a time.
    notification_rereads: NotificationRereads | None = attrs.field(default=None, init=False)
    # Matches a request's path and method against the routes (`refused`), bound once they are made.
    _matcher: MapAdapter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._auth_failures = OncePerPeriod(AUTH_FAILURE_LOG_PERIOD, self.monotonic)
        self._refused_certificates = OncePerPeriod(REFUSED_CERTIFICATE_LOG_PERIOD, self.monotonic)
        self._events_refused = OncePerPeriod(EVENTS_REFUSED_LOG_PERIOD, self.monotonic)
        self._events_cut = OncePerPeriod(EVENTS_CUT_LOG_PERIOD, self.monotonic)
        if self.watch_hub is not None:
            self.notification_rereads = NotificationRereads(self.watch_hub.reads, monotonic=self.monotonic)
        # werkzeug answers a path it would serve once its slashes are merged (``a//b``), or once a
        # slash is added or a rule's defaults dropped, with a redirect; Klein sends it as a 3xx with
        # no Location, which no client follows and the aggregator turns into a 502. kube-apiserver
        # redirects none of them: such a path is one no route serves, a 404. The routes add no
        # trailing slashes (strict_slashes=False each), defaults or redirect_to of their own.
        url_map = self.app.url_map
        url_map.merge_slashes = False
        url_map.strict_slashes = False
        url_map.redirect_defaults = False
        self._routes()
        self._matcher = url_map.bind("localhost")

    def resource(self) -> Resource:
        return _Utf8Paths(self.app.resource(), self._serve_direct, self._served)

    def _served(self, path: str) -> bool:
        """Whether a route serves ``path`` (with whatever method)."""
        try:
            self._matcher.match(path, method="GET")
        except MethodNotAllowed:
            return True
        except HTTPException:
            return False
        return True

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def waiting_limit(self) -> int:
        """How many responses may wait for their clients without a seat (WAITING_SHARE)."""
        return max(1, int(self.max_inflight * WAITING_SHARE))

    def idle(self) -> Deferred[None]:
        """Fires once no request is being served (at once when none is)."""
        waiter: Deferred[None] = Deferred()
        if self._inflight == 0:
            waiter.callback(None)
        else:
            self._idle_waiters.append(waiter)
        return waiter

    def _finished(self, seat: _Seat) -> None:
        seat.finished()
        self._inflight -= 1
        if self._inflight == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    # -- plumbing ---------------------------------------------------------------------------------

    def _clock(self) -> IReactorTime:
        if self.clock is None:
            from twisted.internet import reactor

            return reactor
        return self.clock

    def _endpoint(
        self,
        fn: Callable[..., Awaitable[bytes]],
        anonymous: Anonymous = False,
        limited: bool = True,
        head: bool = True,
        watches: bool = False,
    ) -> _Responder:
        """``watches``: whether the route serves watches (the collection's GET)."""

        # Klein hands over twisted.web's Request, whose channel, code and notifyFinish IRequest lacks.
        def respond(
            request: Request, kwargs: dict[str, Any], ended: Callable[[object], None] | None = None
        ) -> Deferred[bytes]:
            """The answer's body, once the request's metrics and log line are taken. ``ended``: told
            first when the request finishes (or its client goes), before its seat is given back.

            Callbacks on the work's own Deferred, not a coroutine awaiting it: a direct route's
            request (_run_direct) then makes one Deferred of a coroutine and asks notifyFinish once,
            where a handler coroutine run in a Deferred of its own made two of each (issue #11)."""
            now = self._clock().seconds()
            # Noted as its head was read; a request no guarded channel read (a test's) arrives now.
            arrival: _Arrival = getattr(request, _RECEIVED, None) or _Arrival(now, time.monotonic())
            received, started = arrival
            self._inflight += 1
            watch = watches and _is_watch_request(request)
            # Watches are long-running: neither the deadline nor the in-flight limit applies (their
            # own limits do: WatchLimits).
            watching = self.watch_hub is not None and watch
            bounded = limited and not watching
            seat = _Seat(self)
            setattr(request, _SEAT, seat)
            # In flight until the response is written (or the client is gone), not merely computed;
            # it holds its seat from its authentication on, but while it waits for a client that does
            # not read (_Seat).
            if ended is None:
                request.notifyFinish().addBoth(lambda _: self._finished(seat))
            else:

                def finished(reason: object) -> None:
                    ended(reason)
                    self._finished(seat)

                request.notifyFinish().addBoth(finished)
            given = self.request_timeout
            working = False  # whether the work began: only its failures may be its deadline's
            try:
                # The request's own ``timeout`` when shorter (client-go's; behind the aggregator the
                # caller's deadline whatever this server does), read before anything else, as
                # kube-apiserver's WithRequestDeadline does: a malformed one is its 400. Not a watch's.
                given = self._given_timeout(request, watch)
                left = given - (now - received)
                if not watching:
                    # Armed below once the work first waits, a little after this: the deadline the
                    # work is told is never later than the one that cuts it.
                    setattr(request, _DEADLINE, received + given)
                if not watching and left <= 0:
                    # Spent before the handler (its authentication and body, or its wait for its
                    # client's turn, took it all): the same 504 as one cut in the handler, and nothing
                    # of the work is begun. A body's caller is known (admission authenticated it): the
                    # log names them, the answer proves it.
                    setattr(request, _USER, self._admitted.pop(request, None))
                    work = fail(did_not_complete(given, _NOT_BEGUN))
                else:
                    work = Deferred.fromCoroutine(
                        self._serve(fn, request, anonymous, head, kwargs, seat if bounded else None)
                    )
                    working = True
                # Past the deadline the work is cancelled where it waits (registry calls included).
                # Work done already (a page from the walk cache, discovery) has no deadline to keep:
                # its timer would be made and cancelled in the same turn.
                if working and not watching and not work.called:
                    work.addTimeout(left, self._clock())
            except Exception:
                work = fail()

            def failed(failure: Failure) -> bytes | Failure:
                error = failure.value
                if working and isinstance(error, TimeoutError):
                    more = ""
                    if getattr(request, _DRY_RUN, False):
                        # Its checks cut short: it deleted nothing, and a retry finds them believed.
                        more = "; nothing was deleted (a dry run): try again"
                    elif request.method == b"DELETE":
                        # Cut short between its writes a delete would leave the tag on a copy: one
                        # under way goes on (RegistryClient.delete_tag), and the client must look.
                        more = (
                            "; a delete already under way is finished by the server: get the tags "
                            "again to see which are gone"
                        )
                    error = did_not_complete(given, more)
                if isinstance(error, ApiError):
                    return _write_error(request, error)
                if not isinstance(error, Exception):
                    return failure
                if request.channel is None and is_cancellation(error):
                    # The client went away, and its work was cancelled: nothing went wrong, and nobody
                    # is left to answer (counted as 499 below).
                    log.debug("{method} {uri}: the client went away", method=request.method, uri=request.uri)
                    return b""
                log.failure(
                    "unhandled error serving {method} {uri}",
                    failure=failure,
                    method=request.method,
                    uri=request.uri,
                )
                return _write_error(request, internal("the server could not complete the request"))

            def observed(result: bytes | Failure) -> bytes | Failure:
                elapsed = time.monotonic() - started
                # A client gone before the head of its answer is counted apart from the codes it could
                # have been sent, so that it raises no 5xx alert (docs/metrics.md).
                code = CLIENT_CLOSED_REQUEST if _client_gone(request) else request.code
                self.metrics.observe_request(*_request_labels(request, watch), code, elapsed)
                if self.request_log:
                    user: UserInfo | None = getattr(request, _USER, None)
                    log.debug(
                        "{method} {uri} {code} user={user} {ms:.1f}ms",
                        method=request.method.decode(),
                        uri=request.uri.decode("utf-8", "replace"),
                        code=code,
                        user=user.name if user else "-",
                        ms=elapsed * 1000,
                    )
                return result

            return work.addErrback(failed).addBoth(observed)

        @functools.wraps(fn)
        async def handler(request: Request, **kwargs: Any) -> bytes:
            # Klein's routes: Klein cancels what this awaits when the client goes away.
            return await respond(request, kwargs)

        return _Responder(handler, respond)

    async def _serve(
        self,
        fn: Callable[..., Awaitable[bytes]],
        request: Request,
        anonymous: Anonymous,
        head: bool,
        kwargs: dict[str, Any],
        seat: _Seat | None,
    ) -> bytes:
        """``seat``: the request's among --max-requests-inflight, taken once it is authenticated;
        None for a request the limit does not bound (a watch, a health probe)."""
        if not (anonymous(kwargs) if callable(anonymous) else anonymous):
            user = self._admitted.pop(request, None) or await self._authenticate(request)
            if user is None:
                raise unauthorized()
            setattr(request, _USER, user)
            kwargs["user"] = user
        if seat is not None and not seat.take():
            raise too_many_requests()
        if not head and request.method == b"HEAD":
            raise method_not_allowed("head")
        try:
            return await fn(request, **kwargs)
        except RegistryError as error:
            raise api_error_for(error) from error
        except AuthorizationNotReady as error:
            raise service_unavailable(str(error), retry_after=1) from error
        except RecursionError:
            # What the registry answers is held to registry.content.MAX_JSON_DEPTH (deeper is a
            # RegistryError): only what the client sent can nest this deep.
            raise bad_request("the request is nested too deeply") from None

    async def _authenticate(self, request: Request) -> UserInfo | None:
        """Who is calling, or None; an `ApiError` (401 saying why) for credentials refused outright."""
        credentials = _credentials(request)
        try:
            if credentials.unreadable_certificate is not None:
                # A CA this server trusts signed it: refused with the reason, whatever else the request
                # brings, as other trusted credentials that cannot be read are.
                raise CredentialsRefused(
                    f"the client certificate cannot be read: {credentials.unreadable_certificate}"
                )
            user = await self.authenticator.authenticate(credentials)
        except CancelledError:
            raise
        except CredentialsRefused as error:
            self._strip_identity(request, credentials)
            raise unauthorized(str(error)) from None
        except Exception as error:
            # As kube-apiserver: an authenticator that fails (a TokenReview that cannot be made)
            # authenticates nobody. Said once per period per cause, as other lasting failures are:
            # while it lasts, anyone who reaches the port with any token would write a line a request.
            code = getattr(error, "code", None)
            said = self._auth_failures((type(error), code if isinstance(code, int) else None))
            if said is not None:
                log.warn(
                    "authentication failed: {error}{more}", error=str(error) or repr(error), more=said.more()
                )
            user = None
        self._strip_identity(request, credentials)
        if user is None:
            self._say_refused_certificate(request)
        if user is not None and _impersonates(credentials):
            raise impersonation_refused()
        return user

    def _say_refused_certificate(self, request: Request) -> None:
        """A request answered 401 that came with a client certificate the handshake did not verify:
        why, once per period per certificate (per reason for one no trusted CA signed). Else the 401
        is all its holder sees, and the log says nothing (review r1docs L1). Only a reason that still
        holds: a certificate not valid yet at the handshake is verified again at each request
        (tls.client_chain), and once valid, is not refused for that (tls.refused_certificate)."""
        refusal = refused_certificate(_connection(request))
        if refusal is None:
            return
        said = self._refused_certificates(refusal.key)
        if said is not None:
            log.warn(
                "a request is answered 401: {why}, so it identifies no one{more}",
                why=refusal.why,
                more=said.more(),
            )

    def is_probe(self, path: bytes) -> bool:
        """Whether a request target is a health endpoint's (``/livez``, ``/readyz?verbose``, ...)."""
        first = path.split(b"?", 1)[0].split(b"/")[1:2]
        return bool(first) and first[0].decode("latin-1") in HEALTH_ENDPOINTS

    def proves(self, request: Request) -> bool:
        """Whether answering ``request`` showed its client to be an authenticated user (probes, 401s
        and 404s of unknown paths are answered to anyone)."""
        user: UserInfo | None = getattr(request, _USER, None)
        return user is not None and user.name != ANONYMOUS

    def _given_timeout(self, request: Request, watch: bool) -> float:
        """The request's deadline: its own ``timeout`` when shorter than --request-timeout (a
        malformed one raises its 400); not a watch's, which is long-running and bounded by its
        ``timeoutSeconds``."""
        if watch:
            return self.request_timeout
        return request_timeout(_query(request).get("timeout"), self.request_timeout)

    def received(self, request: Request) -> None:
        """The channel read the head of ``request``: its deadline and its duration count from now,
        with a body or without, whatever its authentication, body and turn take."""
        setattr(request, _RECEIVED, _Arrival(self._clock().seconds(), time.monotonic()))

    def refused(self, request: Request, code: int) -> None:
        """A request the channel ended itself, never handed to the site: answered before its body was
        read (admission's refusal, a body too large or late), or its client gone while it waited for
        its turn (499). Counted as the same request without a body is (review r1obs F2), timed from
        its head. Only on a path and method a route serves: any other is a 404 or 405 without a
        body, which is not counted, and its method (any token) is no label."""
        try:
            path = unquote_to_bytes(_target(request)[0]).decode("utf-8")
        except UnicodeDecodeError:
            return  # a 400 without a body (_Utf8Paths), not counted
        if path.startswith("//"):
            return  # no route serves it (_Utf8Paths)
        try:
            self._matcher.match(path, method=request.method.decode("latin-1"))
        except HTTPException:
            return
        arrival: _Arrival | None = getattr(request, _RECEIVED, None)
        seconds = 0.0 if arrival is None else time.monotonic() - arrival.monotonic
        self.metrics.observe_request(*_request_labels(request), code, seconds)

    def admit(self, request: Request) -> Deferred[ApiError | None]:
        """Before any byte of a body is read: authenticate (or check the events token) the request."""
        return Deferred.fromCoroutine(self._admit(request))

    async def _admit(self, request: Request) -> ApiError | None:
        path = _target(request)[0].rstrip("/")
        if path.split("/")[1:2] and path.split("/")[1] in HEALTH_ENDPOINTS:
            return bad_request("health endpoints take no request body")
        if path == "/registry/events" and self.repository_index is not None and self.events_token:
            return None if self._events_token_valid(request) else self._events_token_refused(request)
        if (path == "/metrics" and self.metrics_anonymous) or self._always_allowed(path):
            return None
        try:
            # A malformed ``timeout`` is its 400 before authentication, as kube-apiserver's
            # WithRequestDeadline runs before it, and as `respond` reads it for a request without a body.
            # Not a watch's (the collection's GET only, as `respond`'s route tells it): review r2fix L2.
            given = self._given_timeout(request, _request_labels(request)[0] == "watch")
        except ApiError as error:
            return error
        authenticating = Deferred.fromCoroutine(self._authenticate(request))
        if not authenticating.called:
            # The deadline bounds authentication too (TokenReviews retried for up to 10 s), as
            # `respond`'s does for a request without a body: a shorter ``timeout`` of its own ends it.
            authenticating.addTimeout(given, self._clock())
        try:
            user = await authenticating
        except ApiError as error:
            return error
        except TimeoutError:
            return did_not_complete(given)
        if user is None:
            return unauthorized()
        self._admitted[request] = user
        return None

    def _strip_identity(self, request: IRequest, credentials: Credentials) -> None:
        # Identity headers from anyone but the verified front proxy are forged: nothing after
        # authentication may see them. The front proxy's are in the UserInfo now: kept, a watch's
        # request would hold a user's groups twice (raw and decoded) for up to an hour.
        for name in self.authenticator.identity_headers(credentials):
            request.requestHeaders.removeHeader(name.encode("latin-1"))

    def _route(
        self,
        path: str,
        methods: list[str],
        fn: Callable[..., Awaitable[bytes]],
        anonymous: Anonymous = False,
        limited: bool = True,
        direct: bool = False,
        head: bool = True,
        watches: bool = False,
    ) -> None:
        """``head``: whether a GET route serves HEAD too (what werkzeug routes it to), as the head of
        its GET; without, HEAD is 405 once the request is authenticated."""
        # Klein names endpoints after the function by default; handlers made from one function (the
        # health endpoints) would then all run the last one registered.
        endpoint = f"{' '.join(methods)} {path}"
        responder = self._endpoint(fn, anonymous, limited, head, watches)
        self.app.route(path, methods=methods, branch=False, strict_slashes=False, endpoint=endpoint)(
            responder.handler
        )
        if direct:
            assert methods == ["GET"], methods
            route = _DirectRoute.of(path, responder.respond)
            # Routes with fewer variables first, as werkzeug prefers static segments.
            routes = self._direct.setdefault(len(route.parts), [])
            routes.append(route)
            routes.sort(key=lambda r: len(r.names))

    def _serve_direct(self, request: Request) -> int | None:
        """Serves a request for a direct route as Klein would, without its per-request routing
        (URL parts, a werkzeug adapter, matching, two Deferreds, ...): None for every request it
        does not serve, which Klein then routes.

        Served only where Klein's match is plain: a GET whose path has no percent-escapes, empty or
        dot segments or trailing slash (Twisted unquotes segments, werkzeug strips leading slashes
        and serves a trailing one; those go through Klein)."""
        path = request.path
        if (
            request.method != b"GET"
            or not path.startswith(b"/")
            or b"%" in path
            or b"//" in path
            or b"/." in path
            or path.endswith(b"/")
        ):
            return None
        segments = path[1:].decode("utf-8").split("/")  # UTF-8: checked by _Utf8Paths
        for route in self._direct.get(len(segments), ()):
            kwargs = route.match(segments)
            if kwargs is not None:
                return self._run_direct(request, route, kwargs, len(segments))
        return None

    def _run_direct(
        self, request: Request, route: _DirectRoute, kwargs: dict[str, str], segments: int
    ) -> int:
        # What KleinResource.render does for a matched route whose handler gives bytes (the route's
        # answer handles every Exception itself): the path moves to prepath, the work is cancelled if
        # the client goes away, the bytes are written and the request finished. The route's answer
        # is told the request's end by its own notifyFinish (one per request).
        postpath = request.postpath or []
        request.prepath = [*(request.prepath or []), *postpath[:segments]]
        request.postpath = postpath[segments:]
        finished = False
        work: Deferred[bytes] | None = None

        def ended(reason: object) -> None:
            nonlocal finished
            finished = True
            if isinstance(reason, Failure) and work is not None:
                work.cancel()

        work = route.respond(request, kwargs, ended)

        def write(body: bytes) -> None:
            request.write(body)
            if not finished:
                request.finish()

        def failed(failure: Failure) -> None:
            if finished:
                if not failure.check(CancelledError):
                    log.failure("unhandled error serving {uri}", failure=failure, uri=request.uri)
                return
            log.failure("unhandled error routing {uri}", failure=failure, uri=request.uri)
            write(_write_error(request, internal("the server could not complete the request")))

        work.addCallbacks(write, failed).addErrback(
            lambda failure: log.failure("unhandled error writing the response", failure=failure)
        )
        return NOT_DONE_YET

    def _always_allowed(self, path: str) -> bool:
        return any(path_matches(pattern, path) for pattern in self.always_allow_paths)

    def _health_check_always_allowed(self, endpoint: str, kwargs: Mapping[str, Any]) -> bool:
        return self._always_allowed(f"/{endpoint}") or self._always_allowed(f"/{endpoint}/{kwargs['check']}")

    def _routes(self) -> None:
        for endpoint in HEALTH_ENDPOINTS:
            # Probes are never turned away by the in-flight limit: a busy server is not a dead one.
            self._route(
                f"/{endpoint}",
                ["GET"],
                functools.partial(self._health, endpoint=endpoint),
                anonymous=self._always_allowed(f"/{endpoint}"),
                limited=False,
            )
            self._route(
                f"/{endpoint}/<check>",
                ["GET"],
                functools.partial(self._health, endpoint=endpoint),
                # Decided per request, as k8s.io/apiserver's path authorizer decides: the check's own
                # path listed (`/healthz/ping`), or a prefix of it ending in '*' (`/readyz/*`). This
                # server's choice besides: a listed endpoint opens the checks under it (k8s.io/apiserver
                # matches `/healthz` exactly), so that the default list lets a probe ask one check.
                anonymous=functools.partial(self._health_check_always_allowed, endpoint),
                limited=False,
            )
        self._route("/version", ["GET"], self._version)
        self._route(
            "/metrics",
            ["GET"],
            self._metrics,
            anonymous=self.metrics_anonymous or self._always_allowed("/metrics"),
        )
        # OpenAPI v2/v3 for kubectl explain and the aggregator (documents: openapi.py)
        self._route(openapi.V2_PATH, ["GET"], self._openapi_v2)
        self._route(openapi.V3_PATH, ["GET"], self._openapi_v3)
        self._route(openapi.V3_GROUP_VERSION_PATH, ["GET"], self._openapi_v3_group_version)
        self._route("/api", ["GET"], self._api, direct=True)
        self._route("/apis", ["GET"], self._apis, direct=True)
        self._route(f"/apis/{GROUP}", ["GET"], self._group, direct=True)
        self._route(BASE, ["GET"], self._resources, direct=True)
        collection = f"{BASE}/namespaces/<namespace>/{RESOURCE}"
        item = f"{collection}/<name>"
        # The resource's GET routes answer HEAD 405, as kube-apiserver's do (its router matches the
        # method exactly): a HEAD of a watch would otherwise hold a stream nobody can read.
        self._route(collection, ["GET"], self._list, direct=True, head=False, watches=True)
        self._route(f"{BASE}/{RESOURCE}", ["GET"], self._list, direct=True, head=False, watches=True)
        self._route(collection, ["DELETE"], self._delete_collection)
        self._route(item, ["GET"], self._get, direct=True, head=False)
        self._route(item, ["DELETE"], self._delete)
        for path in (collection, item, f"{BASE}/{RESOURCE}"):
            self._route(path, ["POST", "PUT", "PATCH"], self._immutable)
        self._route(f"{BASE}/{RESOURCE}", ["DELETE"], self._delete_across_namespaces)
        if self.repository_index is not None and self.events_token:
            self._route("/registry/events", ["POST"], self._registry_events, anonymous=True)
        if self.standalone:
            self._route("/api/v1/namespaces/<namespace>", ["GET"], self._namespace)

        @self.app.handle_errors(NotFound)
        def _not_found(request: IRequest, failure: Any) -> bytes:
            return _write_error(request, path_not_found())

        @self.app.handle_errors(MethodNotAllowed)
        def _bad_method(request: IRequest, failure: Any) -> bytes:
            return _method_refused(request)

        @self.app.handle_errors(HTTPException)
        def _http_error(request: IRequest, failure: Any) -> bytes:
            # Whatever else routing refuses (an undecodable path, ...) is answered as a Status too.
            error: HTTPException = failure.value
            code = error.code or 400
            reason = "BadRequest" if code == 400 else (error.name or "BadRequest").replace(" ", "")
            return _write_error(request, ApiError(code, reason, error.description or "bad request"))

        @self.app.handle_errors(Exception)
        def _unexpected(request: IRequest, failure: Any) -> bytes:
            log.failure("unhandled error routing {uri}", failure=failure, uri=request.uri)
            return _write_error(request, internal("the server could not complete the request"))

    # -- discovery --------------------------------------------------------------------------------

    def _cached(self, request: IRequest, body: Any, content_type: str = JSON_TYPE) -> bytes:
        tag, rendered = self._rendered(body)
        # What setHeader stores, set directly as _head does (issue #11): the names as Headers spells
        # them, the ETag's bytes made once per document (_header_value).
        raw = request.responseHeaders._rawHeaders
        raw[b"ETag"] = [_header_value(tag)]
        raw[b"Vary"] = [b"Accept"]
        if _header(request, "if-none-match") == tag:
            request.setResponseCode(304)
            return b""
        _head(request, 200, content_type)
        return rendered

    def _rendered(self, body: Any) -> tuple[str, bytes]:
        """ETag and JSON of a static document, computed once: discovery and OpenAPI documents are
        asked for often (and cheaply, by a client that pipelines them) and never change."""
        cached = self._documents.get(id(body))
        if cached is None or cached[0] is not body:
            rendered = json.dumps(body, separators=(",", ":")).encode() + b"\n"
            cached = self._documents[id(body)] = (body, discovery.etag(body), rendered)
            while len(self._documents) > 32:
                del self._documents[next(iter(self._documents))]
        return cached[1], cached[2]

    def _discovery(self, request: IRequest, legacy: Any, with_group: bool) -> bytes:
        version = discovery.aggregated_version(_header(request, "accept"))
        if version is None:
            return self._cached(request, legacy)
        content_type = f"application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"
        return self._cached(
            request, discovery.aggregated(f"apidiscovery.k8s.io/{version}", with_group), content_type
        )

    async def _api(self, request: IRequest, user: UserInfo) -> bytes:
        return self._discovery(request, discovery.API_VERSIONS, with_group=False)

    async def _apis(self, request: IRequest, user: UserInfo) -> bytes:
        return self._discovery(request, discovery.API_GROUP_LIST, with_group=True)

    async def _group(self, request: IRequest, user: UserInfo) -> bytes:
        return self._cached(request, discovery.API_GROUP)

    async def _resources(self, request: IRequest, user: UserInfo) -> bytes:
        return self._cached(request, discovery.API_RESOURCE_LIST)

    # -- OpenAPI (static documents, ETag and If-None-Match as for discovery) ------------------------

    async def _openapi_v2(self, request: IRequest, user: UserInfo) -> bytes:
        if not openapi.v2_wants_protobuf(_header(request, "accept")):
            return self._cached(request, openapi.V2)
        request.setHeader(b"etag", openapi.V2_PROTOBUF_ETAG.encode())
        request.setHeader(b"vary", b"Accept")
        if _header(request, "if-none-match") == openapi.V2_PROTOBUF_ETAG:
            request.setResponseCode(304)
            return b""
        request.setResponseCode(200)
        request.setHeader(b"content-type", openapi.PROTOBUF_CONTENT_TYPE.encode())
        return openapi.V2_PROTOBUF

    async def _openapi_v3(self, request: IRequest, user: UserInfo) -> bytes:
        openapi.check_accept(_header(request, "accept"))
        return self._cached(request, openapi.V3_ROOT)

    async def _openapi_v3_group_version(self, request: IRequest, user: UserInfo) -> bytes:
        openapi.check_accept(_header(request, "accept"))
        reply = self._cached(request, openapi.V3_GROUP_VERSION)
        if first(_query(request), "hash") == openapi.V3_GROUP_VERSION_HASH:
            # The content of a given hash never changes (kube-apiserver says the same, with an Expires
            # a year ahead, as kube-openapi's handler). A stale hash is served the current document,
            # not redirected as kube-openapi does: the aggregator answers a backend's redirect 502
            # (docs/api.md, "Other endpoints").
            request.setHeader(b"cache-control", b"public, immutable")
            request.setHeader(b"expires", formatdate(self._clock().seconds() + _YEAR, usegmt=True).encode())
        return reply

    async def _namespace(self, request: IRequest, user: UserInfo, namespace: str) -> bytes:
        # After a 404 for an object in a namespace other than "default", kubectl (1.27 to 1.33) gets
        # the namespace and, when that is a 404 too, prints its generic "could not find the requested
        # resource" instead of the object's NotFound. Behind kube-apiserver the namespace is its to
        # answer (the aggregator never sends /api/v1 here); standalone, nothing else would. A 403, as
        # kube-apiserver answers a user who may not read namespaces, keeps the object's message and
        # claims nothing about namespaces, which standalone payloadtags does not have; its message says
        # so (review r2b N2: `kubectl get namespace` printed an RBAC denial of the user).
        raise namespace_forbidden(namespace)

    async def _version(self, request: IRequest, user: UserInfo) -> bytes:
        major, minor, *_ = __version__.split(".")
        return _write_json(
            request,
            200,
            {
                "major": major,
                "minor": minor,
                "gitVersion": f"v{__version__}",
                "gitCommit": "",
                "gitTreeState": "",
                "buildDate": "",
                "goVersion": "",
                "compiler": "cpython",
                "platform": "linux/amd64",
            },
        )

    def _authorize_path(self, request: IRequest, user: UserInfo | None) -> None:
        if user is None:  # served anonymously: always allowed
            return
        # The path as routing reads it, percent-escapes decoded (review r7misc N3: `/healthz/p%69ng`,
        # served as the check `ping`, was refused to a user granted `/healthz/ping`), as kube-apiserver
        # authorizes Go's decoded URL.Path. Both read the same string, so a grant opens what it names.
        path = _decoded_path(request)
        # The method lowercased, as k8s.io/apiserver's RequestInfoFactory names a non-resource request's
        # verb: a HEAD is `head`, which a grant of `get` does not allow (review r10cfg L1; only a
        # resource request's HEAD is `get`).
        verb = request.method.decode("ascii", "replace").lower()
        if not self.path_authorizer.allowed_path(user, verb, path):
            raise ApiError(403, "Forbidden", f'forbidden: User "{user.name}" cannot {verb} path "{path}"')

    async def _metrics(self, request: IRequest, user: UserInfo | None = None) -> bytes:
        if user is None or not set(self.metrics_groups) & set(user.groups):
            self._authorize_path(request, user)
        _refuse_a_trailing_slash(request)
        request.setResponseCode(200)
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        return self.metrics.exposition()

    async def _health(
        self, request: IRequest, endpoint: str, check: str | None = None, user: UserInfo | None = None
    ) -> bytes:
        self._authorize_path(request, user)
        _refuse_a_trailing_slash(request)
        query = _query(request)
        result = await self.health.run(endpoint, check, "verbose" in query, query.get("exclude", []))
        if result is None:
            return _write_error(request, path_not_found())
        code, text = result
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return text.encode()

    async def _registry_events(self, request: IRequest) -> bytes:
        """Registry notifications: push events add their repository to the repository index."""
        assert self.repository_index is not None
        if not self._events_token_valid(request):
            raise self._events_token_refused(request)
        try:
            events = json.loads(self._body(request))["events"]
            if isinstance(events, list) and len(events) > MAX_EVENTS_PER_ENVELOPE:
                self._events_beyond_the_bound(len(events) - MAX_EVENTS_PER_ENVELOPE)
                events = events[:MAX_EVENTS_PER_ENVELOPE]
            changes = [
                (event["action"], event["target"]["repository"], event["target"].get("mediaType"))
                for event in events
                if event.get("action") in ("push", "delete") and isinstance(event.get("target"), dict)
            ]
            if not all(isinstance(name, str) for _, name, _ in changes):
                raise TypeError("a repository that is not a string")
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError, RecursionError):
            raise ApiError(400, "BadRequest", "the body is not a registry notification envelope") from None
        # The registry re-sends an event it gets no 2xx for, and every later one waits behind it: a
        # name payloadtags cannot show (distribution accepts a few, such as an upper-case domain) is
        # accepted and left out, or one such push would hold back every notification after it.
        shown = [change for change in changes if is_valid_repository(change[1])]
        if len(shown) < len(changes):
            log.info(
                "registry events: {count} event(s) ignored: their repository is not a name payloadtags shows",
                count=len(changes) - len(shown),
            )
        changes = shown
        # Every push counts for the index (a blob's alone puts a repository in 2.8's catalog).
        repositories = [name for action, name, _ in changes if action == "push"]
        if self.notification_rereads is not None:
            # Watched scopes re-read just these repositories' tag lists, when a tag may have changed:
            # a blob's push changes none, and comes once per layer (a delete may be a tag's).
            # The sequence moves now, before the answer, whether the reread waits in the queue or is
            # dropped from it: a list made after this must not join an earlier list's record (r2events F1).
            assert self.watch_hub is not None
            for name in dict.fromkeys(
                name for action, name, media in changes if action == "delete" or media != BLOB_MEDIA_TYPE
            ):
                self.watch_hub.changed(name)
                self.notification_rereads.add(name)
        added = [name for name in repositories if self.repository_index.add(name)]
        if added:
            log.info("repository index: {added} added by registry events", added=", ".join(added))
        return _write_json(request, 200, {"accepted": len(events)})

    def _events_beyond_the_bound(self, count: int) -> None:
        said = self._events_cut(None)
        if said is not None:
            log.warn(
                "registry events: {count} event(s) beyond the first {max} of an envelope ignored; watches "
                "see their changes at the next resync, namespace lists at the index's next refresh{more}",
                count=count,
                max=MAX_EVENTS_PER_ENVELOPE,
                more=said.more(),
            )

    def _events_token_refused(self, request: IRequest) -> ApiError:
        """The 401 of a notification whose token is not --registry-events-token-file's. Said once
        per period: it is the operator's only sign that the registry's notifications are lost (a
        token rotated on one side only), which the index otherwise shows only as repositories
        missing from namespace lists until its next refresh."""
        said = self._events_refused(None)
        if said is not None:
            peer = request.getClientAddress()
            log.warn(
                "registry notification from {peer} refused: its Authorization header does not bear the "
                "token of --registry-events-token-file; the registry's notifications are lost until its "
                "endpoint's header and the file agree{more}",
                peer=getattr(peer, "host", "?"),
                more=said.more(),
            )
        return unauthorized()

    def _events_token_valid(self, request: IRequest) -> bool:
        if not self.events_token:
            return False
        scheme, _, token = (_header(request, "authorization") or "").partition(" ")
        expected = self.events_token.encode()
        # `_header` read the header's bytes as Latin-1: encoded back the same way, they are the bytes
        # the registry sent, which for a UTF-8 token are the file's (r1events L4).
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("latin-1"), expected)

    # -- the resource -----------------------------------------------------------------------------

    @staticmethod
    def _watched_namespace(namespace: str | None) -> None:
        # kube-apiserver does not check a path's namespace: a list there is empty, a name there is not
        # found (TagsService answers both without reading the registry). A watch there would need a
        # scope source reading the registry for repositories no namespace can hold: not served.
        if namespace is not None and not is_namespace(namespace):
            raise path_not_found()

    async def _list(self, request: Request, user: UserInfo, namespace: str | None = None) -> bytes:
        watching = self.watch_hub is not None and _is_watch_request(request)
        query = _query(request)
        if watching:
            media, refused = _watch_media(_header(request, "accept"))
            self._watched_namespace(namespace)
            return await self._watch(request, user, namespace, query, media, refused)
        media = negotiate(_header(request, "accept"), collection=True)
        media = _with_pretty(media, query)
        shape = media.as_json()  # what the renderers make; formats re-encodes it for YAML or pretty
        options = list_options(query)
        # A Table's options last, as kube-apiserver reads them once it has listed (its
        # transformResponseObject): a bad option, and the list's own errors (its resourceVersion, 504
        # or 410; its continue token, 400: they need no registry read) are answered before a bad
        # includeObject. Still before the registry is read, which a 400 would waste. Only a Table has
        # an includeObject to check: any other list checks only its resourceVersion here, before the
        # scope's watch read it may wait on (an answer that needs no read never waits on one, nor
        # becomes its error), and leaves its continue token to `list_runs`: a page of a walk does not
        # decode it twice.
        if media.form is Form.TABLE:
            self.service.check_list(namespace, options)
        else:
            self.service.check_version(options)
        include = _include(media, query)
        hub = self.watch_hub
        joined = None
        possible = namespace is None or is_namespace(namespace)
        paged = reads_a_page(options)
        if hub is not None and options.continue_ is None and possible:
            # The scope's watch source reads its baseline before this list reads the registry, so a
            # watch from this list's resourceVersion misses nothing that happened after it; and a
            # change of the caller's rules there since they were noted is noted (docs/watch.md,
            # "Access"), so that the watch from this list is not judged by the rules before it (noted
            # before its resourceVersion is taken: the watch from it is served).
            pinned = options.fields.required("metadata.namespace")
            checked = None if namespace is not None or pinned is None else [pinned]
            _, joined = await hub.open_list(namespace, user, checked)
        # Each access decision of a page, compared with her rules noted as it is made (a change of
        # them noted meanwhile has its date), and its namespace kept for the rules check once read.
        decisions = hub.page_decisions(namespace, user) if hub is not None and paged and possible else None
        decided: Callable[[str], None] | None = None if decisions is None else decisions.decided
        if hub is not None and possible and not paged:
            # A whole list's: the namespaces it shows are back in her scope, if they had left it.
            decided = hub.list_decisions(namespace, user)
        shown = False

        def begin() -> None:
            nonlocal shown
            shown = True
            _head(request, 200, media.content_type)

        # While each page is read and written, what the watch from its list needs (the scope's
        # source, the list's record) is kept; its idle time runs from the page's end (docs/watch.md).
        page = hub.list_began(namespace) if hub is not None and possible else None
        ended_at: str | None = None
        try:
            runs, meta = await self.service.list_runs(user, namespace, options, decided, joined)
            if hub is not None and decisions is not None:
                # Every page, continued ones too: her rules may change after the list took its
                # resourceVersion, decide this page, and be changed back before the watch from it, or
                # before this page ended (docs/watch.md, "Access"): each decision was compared with
                # those noted as it was made, and her rules now are. No check before a continued page
                # reads: its first decision (the tag its token names) is made in the same reactor turn
                # as that check would be, and a change undone before the page decides anything by it
                # decided nothing. A namespace list's page checks its one namespace whatever it read.
                hub.listed_page(namespace, user, decisions, () if namespace is None else [namespace])
            if isinstance(runs, PageRuns) and sum(len(run.tags) for run in runs.runs) <= CHUNK_ITEMS:
                # A page read before and no longer than one chunk: formatted and written at once, in
                # this reactor turn (one TLS record and one send for the whole response, instead of
                # one per chunk and one for its end, each a reactor turn apart). The same bytes either
                # way; framed by its length, not chunked: no chunk header and end, which cost a copy
                # of the body and a TLS record and send of their own in the next reactor turn.
                body = list_text(runs.runs, meta, shape, self.service.registry_host, include)
                body = formats.reencode(body, media)
                begin()
                request.responseHeaders._rawHeaders[b"Content-Length"] = [b"%d" % len(body)]  # as in _head
                ended_at = meta.resource_version
                return body
            # A whole list is formatted and written as its repositories are read (docs/api.md,
            # "Large lists"): its first chunk goes out once read, so a registry failure before it is
            # a Status, one after it drops the connection.
            chunks = streamed_list_chunks(
                runs, meta, shape, self.service.registry_host, include, shared=self.shared_text
            )
            if not formats.plain(media):
                chunks = formats.reencoded_list(chunks, *list_envelope(meta, shape), media)
            await write_streamed(request, chunks, self._clock(), begin, _waiting(request))
            ended_at = meta.resource_version
            return b""
        except BaseException:
            # Refused or failed before its client was shown anything (the access rules still
            # loading, a registry error): it is no list a watch may come from.
            if hub is not None and joined is not None and not shown:
                hub.list_failed(joined)
            raise
        finally:
            if page is not None:
                assert hub is not None
                hub.list_ended(page, ended_at)

    async def _get(self, request: IRequest, user: UserInfo, namespace: str, name: str) -> bytes:
        # Whatever its query says of watch: kube-apiserver's GET of a name decodes only GetOptions, and
        # its watch of one object is the collection's, by metadata.name (kubectl get NAME -w).
        media = negotiate(_header(request, "accept"), collection=False)
        query = _query(request)
        include = _include(media, query)
        obj = await self.service.get(user, namespace, name)
        return _write(request, render_object(obj, media, include), _with_pretty(media, query))

    async def _watch(
        self,
        request: IRequest,
        user: UserInfo,
        namespace: str | None,
        query: Query,
        media: MediaType,
        refused: ApiError | None,
    ) -> bytes:
        hub = self.watch_hub
        assert hub is not None
        options = watch_options(query)
        # Before the head, as a list is refused (503, retry shortly): a watch needs the rules to
        # check what it sends, and once its 200 is out only an ERROR event can tell the client.
        hub.authorize(user, namespace)
        # As kube-apiserver's serveWatchHandler, once the options are read and the watch opened: the
        # Table's options (400), then the stream's media type (406, an Accept only a list serves).
        include = _include(media, query)
        if refused is not None:
            raise refused
        if options.send_initial_events and hub.ahead(options.resource_version):
            # A streaming list is a list: not older than a resourceVersion this replica has not reached,
            # it is answered as the list is (504, Retry-After: 1), never served with an end bookmark
            # older than asked. payloadtags' own answer: kube-apiserver's cacher opens the watch (after
            # the checks above, as here) and sends the error as an ERROR event of a 200 stream. Before
            # the stream, it takes no watch slot and no scope read, and a client sees the same error
            # as for its list from there.
            raise resource_version_too_large(options.resource_version, hub.versions.latest())
        if options.timeout_seconds is not None and options.timeout_seconds < 0:
            # As kube-apiserver, whose watch timer of a negative duration has fired already: a 200 whose
            # stream ends at once, without an event. Nothing to read for it, nor a watch's place to hold.
            _head(request, 200, media.content_type)
            request.setHeader(b"x-content-type-options", b"nosniff")
            return b""
        try:
            # The limits are decided now, before a byte is sent: the slot is held while the watch
            # waits for its scope's read, so watches that wait together cannot all pass them.
            slot = hub.admit(user.name)
            try:
                return await self._watch_admitted(request, user, namespace, options, media, include, slot)
            finally:
                slot.release()  # unless the watch took it
        except TooManyWatches as error:
            # Past --max-watches (per user), every scope kept in use (docs/watch.md, "Bounds") or the
            # server stopping: always before the head (hub.start, given the slot, never raises it).
            raise too_many_requests(retry_after=1, message=str(error)) from None

    async def _watch_admitted(
        self,
        request: IRequest,
        user: UserInfo,
        namespace: str | None,
        options: WatchOptions,
        media: MediaType,
        include: str,
        slot: WatchSlot,
    ) -> bytes:
        hub = self.watch_hub
        assert hub is not None
        assert isinstance(request, Request)
        rv = options.resource_version
        if not options.send_initial_events and rv not in ("", "0"):
            # A watch from a list's resourceVersion (below): its list's record, if any, is kept until
            # the watch starts or gives up, however long the scope's read below takes.
            sequence = hub.sequence_of(rv)
            if sequence is not None:
                hub.hold_listed(namespace, sequence, slot)
        warm = namespace in hub.sources
        source = await hub.source(namespace, slot)  # TooManyWatches: every scope kept is in use
        since: int | None = None
        listed: Listed | None = None
        confirmed: frozenset[str] = frozenset()
        initial_end = bool(options.send_initial_events)
        readable = self.service.readable(user)
        pinned = options.pinned_repository(namespace) if rv == "0" else None
        # Only a repository the caller may read: what the read finds is numbered, and the numbers are
        # everyone's (lists, bookmarks), so another's read would tell her of changes she may not see.
        if pinned is not None and source.covers(pinned) and readable(*pinned.split("/", 1)):
            # A single-object watch from "0" (`kubectl get NAME -w` GETs the tag, then watches from
            # "0") starts from the snapshot as last read, which may predate the tag: its delete would
            # then be no change, and never sent. Its repository is read first, as a notification's
            # read is: the snapshot is current for it (what changed there goes to every watcher of
            # the scope as a change), one tag list, not the scope. A failed read is logged, and the
            # watch goes on from the snapshot as it is.
            await source.read(pinned)
        # sendInitialEvents=false from N (not "" nor "0") is a watch from N, as kube-apiserver's.
        if options.send_initial_events or (options.send_initial_events is False and rv in ("", "0")):
            # NotOlderThan: a fresh read is newer than any resourceVersion any replica issued before
            # this request, so it serves foreign ones too; "0" takes the snapshot as it is.
            if rv != "0":
                await source.fresh()
            if not options.send_initial_events:
                since = hub.versions.current
        elif rv == "":
            await source.fresh()  # "most recent": a read that started after this request
        elif rv != "0":
            since = hub.sequence_of(rv)
            if since is None:
                since = -1  # foreign, future or from an earlier run: 410 below
            elif since < source.floor:
                # A list made while the scope had no source: its reads were recorded. The scope is
                # compared with them as read after this request (a new source's baseline is).
                listed = hub.listed_at(namespace, since)
                if listed is not None:
                    if warm:
                        await source.fresh()
                    known = await hub.confirm_listed(source, listed)
                    if known is None:
                        since, listed = -1, None  # too many repositories to read, or a read failed: 410
                    else:
                        confirmed = known
        hub.check_running()  # it stopped while this watch waited: refused before the head too
        _head(request, 200, media.content_type)
        request.setHeader(b"x-content-type-options", b"nosniff")
        renderer = EventRenderer(media, include, self.service.registry_host, hub.versions.format)
        # A Table's columns in its first event only, as kube-apiserver sends them (docs/watch.md).
        after = attrs.evolve(renderer, columns=False) if media.form is Form.TABLE else None
        watcher = Watcher(
            user=user.name,
            sink=ResponseSink(request),
            render=renderer.event,
            form=renderer,
            render_after=None if after is None else after.event,
            form_after=after,
            accept=options.accept(),
            selectors=(options.labels, options.fields),
            readable=readable,
            bookmark=renderer.bookmark if options.bookmarks else None,
            max_buffered=hub.limits.send_buffer,
            # What it starts with (a namespace's every tag) a piece per reactor turn, probes between.
            clock=self._clock(),
        )
        if since == -1:
            request.write(expired(rv))
            return b""
        request.write(b"")  # the head goes out now: clients wait for it before reading events
        # The producer before the first event: the transport paces what the watch starts with.
        request.registerProducer(watcher, True)
        try:
            started = hub.start(
                watcher,
                source,
                since,
                options.timeout_seconds,
                initial_end,
                listed=listed,
                slot=slot,
                confirmed=confirmed,
                from_now=options.send_initial_events is False and rv in ("", "0"),
            )
        except Exception:
            # A bug: after the head only an event reaches the client (never a bare Status line).
            request.unregisterProducer()
            log.failure("error starting a watch of {uri}", uri=request.uri)
            request.write(error_line(internal("the watch could not be started").status()))
            return b""
        if not started:
            request.unregisterProducer()
            request.write(expired(rv))
            return b""
        request.notifyFinish().addBoth(lambda _: watcher.stopProducing())
        await watcher.done
        request.unregisterProducer()
        return b""

    def _body(self, request: IRequest) -> bytes:
        body = request.content.read(self.max_body + 1) if request.content is not None else b""
        if len(body) > self.max_body:
            raise ApiError(413, "RequestEntityTooLarge", "the request body is too large")
        return body

    async def _delete(self, request: IRequest, user: UserInfo, namespace: str, name: str) -> bytes:
        # The media type first of all, as kube-apiserver's DeleteResource: an Accept nothing answers is
        # 406 whatever the options say. Before the delete: a 406 (or a bad includeObject) must mean that
        # nothing was deleted.
        media = negotiate(_header(request, "accept"), collection=False)
        query = _query(request)
        options = delete_options(query, self._body(request), _header(request, "content-type"))
        setattr(request, _DRY_RUN, options.dry_run)
        media = _with_pretty(media, query)
        include = _include(media, query)
        obj = await self.service.delete(user, namespace, name, options)
        # The deleted object in the form asked for, a Table too, as kube-apiserver's DELETE answers.
        return _write(request, render_object(obj, media, include), media)

    async def _delete_collection(self, request: Request, user: UserInfo, namespace: str) -> bytes:
        # In kube-apiserver's DeleteCollection's order: the media type (406), the ListOptions (decoded,
        # validated, their field names), the DeleteOptions, and only then what its storage refuses of
        # the ListOptions as it lists by them. All before the deletes: a 406 (or a bad includeObject)
        # must mean that nothing was deleted.
        media = negotiate(_header(request, "accept"), collection=True)
        query = _query(request)
        listing = list_options(
            {k: v for k, v in query.items() if k not in ("dryRun", "propagationPolicy")}, deleting=True
        )
        options = delete_options(query, self._body(request), _header(request, "content-type"))
        setattr(request, _DRY_RUN, options.dry_run)
        storage_refusals(listing)
        media = _with_pretty(media, query)
        include = _include(media, query)
        deadline: float | None = getattr(request, _DEADLINE, None)
        items, meta = await self.service.delete_collection(
            user,
            namespace,
            listing,
            options,
            # Seconds left now: the service counts them on its own clock.
            time_left=None if deadline is None else deadline - self._clock().seconds(),
        )
        # The deleted tags in the form asked for, a Table of them too, as kube-apiserver answers. More
        # than one batch is written as a whole list is, a batch per reactor turn: made at once, a Table
        # or YAML answer of thousands of tags held the reactor for seconds (a dry run repeats it freely).
        if len(items) <= (CHUNK_ITEMS if formats.plain(media) else formats.BATCH_ITEMS):
            return _write(request, render_list(items, meta, media, include), media)
        await write_streamed(
            request,
            list_answer_chunks(items, meta, media, include),
            self._clock(),
            lambda: _head(request, 200, media.content_type),
            _waiting(request),
        )
        return b""

    async def _immutable(self, request: IRequest, user: UserInfo, **_: str) -> bytes:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}[request.method.decode()]
        raise method_not_allowed(verb)

    async def _delete_across_namespaces(self, request: IRequest, user: UserInfo) -> bytes:
        # Not served: one request would empty every namespace the caller may delete in. `kubectl
        # delete prt -A --all` lists, then deletes each tag by name (docs/api.md, "Delete").
        raise cluster_wide_delete_collection_not_allowed()


__all__ = ["RESOURCE", "ApiServer"]
