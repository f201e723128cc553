"""An asynchronous client for the OCI distribution API of one registry, over treq.

It knows nothing of Kubernetes. Each HTTP exchange (including reading the body) is bounded by
``settings.timeout`` on the injected reactor, and every failure becomes a RegistryError subclass whose
message names the registry URL.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import operator
import os
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

import attrs
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import error as net_errors
from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import ParseError
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import InfiniteRedirection
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from payloadtags.bodies import BodyBytes, BodyTooLarge, read_body
from payloadtags.deferreds import DeadlineExpired, carried_through, is_cancellation, within
from payloadtags.onceper import OncePerPeriod
from payloadtags.registry.taglist import TagList
from payloadtags.validators import has_userinfo, positive, utf8_encodable, without_userinfo

from . import schema1
from .auth import Authenticator, TokenAnswer, TokenRequest
from .coalesce import Coalescer
from .content import (
    MANIFEST_MEDIA_TYPES,
    MAX_JSON_DEPTH,
    OCI_MANIFEST,
    CatalogPage,
    Manifest,
    Resolved,
    catalog_key,
    compute_digest,
    declared_media_type,
    digested,
    infer_media_type,
    is_digest_reference,
    is_valid_digest,
    is_valid_repository,
    is_valid_tag,
    nested_deeper_than,
)
from .errors import (
    RegistryAuthFailed,
    RegistryConflict,
    RegistryDeleteDisabled,
    RegistryError,
    RegistryInvalidName,
    RegistryNotFound,
    RegistryProtocolError,
    RegistryReadOnly,
    RegistrySchema1Disabled,
    RegistryTimeout,
    RegistryUnavailable,
)
from .interface import Check, Sent, Waiting, WriteHooks
from .late import COPY, PLACEHOLDER, RESTORE, Kind, Landing, LateWrites, namespace_of
from .queue import RepositoryQueue
from .redaction import in_message
from .schemes import DEFAULT_PORTS, port_said, with_scheme
from .transport import (
    BytesProducer,
    CheckedRedirects,
    CheckRefused,
    FollowedAgent,
    HandshakeFailed,
    KeptEndpoints,
    OriginRequests,
    TLSPolicy,
    UnfollowableRedirect,
    requestable,
    unrequestable,
)

ACCEPT_MANIFESTS = ", ".join(MANIFEST_MEDIA_TYPES)
DELETE_NONCE_ANNOTATION = "io.deckhouse.payloadtags.delete-nonce"
# Marks the placeholder manifest written under a dangling tag to delete it; deleted right after.
REPAIR_ANNOTATION = "io.deckhouse.payloadtags.dangling-repair"
EMPTY_JSON = b"{}"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
MAX_CATALOG_PAGE = 1000
# The page sizes tried, largest first, after a registry refuses a catalog page's ``n`` (distribution's
# ``catalog.maxentries`` below it: 400 PAGINATION_NUMBER_INVALID, whose detail names only the ``n``
# asked). Round numbers, as configured limits are: at most this many more requests, once per client
# (one call at a time steps down; calls refused meanwhile wait for the size it finds: one refusal each).
CATALOG_PAGE_STEPS = (500, 200, 100, 50, 20, 10, 5, 2, 1)
MANIFEST_LIMIT = 8 << 20
JSON_LIMIT = 32 << 20  # a tags list of a repository with very many tags
ERROR_BODY_LIMIT = 64 << 10
MAX_TAG_PAGES = 10_000
DEFAULT_RETRY_AFTER = 5
CLOSED_UNANSWERED = "the connection was closed without an answer"
CLOSED_PARTWAY = "the connection was closed partway through the answer"
# How many http:// origins a client remembers to have answered it (`_plain_answered`): the registry, its
# token service and its storage's few hosts; one forgotten is only given the https:// advice too.
PLAIN_ANSWERED_KEPT = 16
PROBE_VALIDITY = 10.0  # seconds
# Expired probe passes dropped per new one at most: two per pass keeps the record within those of
# the last PROBE_VALIDITY seconds, at a bounded cost per probe.
_PRUNED_AT_ONCE = 2
# After a write of ours under a tag goes unanswered, the tag is watched this many timeouts long for
# the write to land, so that the delete can finish instead of reporting a write in doubt.
LATE_WRITE_GRACE = 2.0
# After a failed step of a delete, the reads that find where the tag points (and the repair's steps
# before its write) are tried this many times: giving up there leaves the tag half deleted (dangling,
# or on a copy of ours) with only an error to say so, where a read that hit a 500 or a stall most
# often succeeds the next time. Reads and content-addressed uploads are safe to repeat.
SETTLE_TRIES = 3
# How many --registry-timeouts a delete usually takes at most once it has begun writing
# (`delete_tag`): what a stop says it may wait for one carried on (`carried_bound`). Its longest
# path is a 2.8 registry's first delete of a dangling tag: the DELETE by tag, the probe, the read
# (manifest, then tag list), the repair's blob (HEAD, POST, PUT) and look (HEAD), the placeholder's
# PUT and DELETE: 10 requests. One write among them unanswered adds the watch for it to land
# (`_await_landing`: LATE_WRITE_GRACE timeouts, its last read, a pause of at most 1 s), the read of
# where the tag is (two requests) and one more write: 15. A token for each of the three scopes (pull,
# push, delete) where the registry's have expired: 18; rounded up for the pauses. It is no bound (a
# stop says "usually within" it): a registry that fails more of its requests, a tag list read in
# pages (a request per page), a token renewed more than once (two requests each), a body read slowly
# (up to one more timeout) and a wait for a connection slot (none) take it longer.
CARRIED_DELETE_TIMEOUTS = 20
# Deleting this digest never deletes anything, yet the registry says whether deletes are possible:
# 404 when they are, 405 UNSUPPORTED when storage deletes are off, a bare 405 when it is read-only.
_PROBE_DIGEST = "sha256:" + "0" * 64
# Writing to this upload session, which no registry holds, writes nothing, yet a token registry first
# checks the push its write needs: 401 insufficient_scope where the token lacks it, else 404
# BLOB_UPLOAD_UNKNOWN (or 400 BLOB_UPLOAD_INVALID: no upload state). What a dry run checks besides the
# delete where a delete re-tags (`check_delete`).
_PROBE_UPLOAD = "00000000-0000-4000-8000-000000000000"
_LINK_NEXT_RE = re.compile(r'<([^>]*)>\s*;[^,]*?rel\s*=\s*"?next"?', re.IGNORECASE)
# How the delete probe is named in its messages.
_DELETE_CHECK = "a DELETE of a digest that does not exist"
# A mutation whose caller gave no hooks: nothing to check before its writes (`_gated`).
_NO_HOOKS = WriteHooks()

log = Logger()
# How often the tags of one repository that no object can name are said to be left out (`_nameable`).
UNNAMEABLE_LOG_PERIOD = 3600.0
# Redirects a read follows before it is a loop (Twisted's RedirectAgent's default, and Go's http.Client's
# ten are fewer).
REDIRECT_LIMIT = 20
# How often a redirect this client cannot follow is said again (each read it redirects meets it).
UNFOLLOWABLE_LOG_PERIOD = 600.0

T = TypeVar("T")


def _check_url(instance: Any, attribute: Any, value: str) -> None:
    if has_userinfo(value):
        # Checked first and the URL shown redacted: urlsplit's own error may quote a piece of the password.
        shown = without_userinfo(value)
        raise ValueError(f"registry url {shown!r} must not contain credentials; use username and password")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"registry url must be http:// or https:// with a host, not {value!r}")


@attrs.frozen
class RegistrySettings:
    url: str = attrs.field(validator=_check_url)  # the API endpoint, e.g. "http://127.0.0.1:5000"
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    ca_file: str | None = None  # CA bundle for an https registry, trusted besides the system CAs
    timeout: float = attrs.field(default=10.0, validator=positive)  # seconds per registry request
    max_connections: int = attrs.field(default=16, validator=positive)


@attrs.frozen
class _Reply:
    method: str
    url: str
    status: int
    headers: Headers
    body: bytes
    # The URL that gave this answer: ``url``, or where redirects led (a blob in a storage backend).
    answered_by: str
    registry: str  # how messages name the registry

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[-1] if values else None

    def header_values(self, name: str) -> list[str]:
        """The header's values; RegistryProtocolError when one is not UTF-8 (Twisted's str
        lookup would raise UnicodeDecodeError)."""
        try:
            return [value.decode() for value in self.headers.getRawHeaders(name.encode("ascii"), ())]
        except UnicodeDecodeError:
            raise RegistryProtocolError(
                f"registry {self.registry}: the {name} header of its answer to {self.method} "
                f"{_path(self.url)} is not valid UTF-8"
            ) from None

    def error_codes(self) -> list[str]:
        return [code for code, _ in self.errors()]

    def has_error_document(self) -> bool:
        """Whether the body is a registry's JSON error document: an object with an ``errors`` list."""
        try:
            document = json.loads(self.body)
        except (ValueError, RecursionError):
            return False
        return isinstance(document, dict) and isinstance(document.get("errors"), list)

    def errors(self) -> list[tuple[str, str]]:
        """(code, message) pairs of the registry's JSON error body."""
        try:
            document = json.loads(self.body)
        except ValueError:
            return []
        errors = document.get("errors") if isinstance(document, dict) else None
        if not isinstance(errors, list):
            return []
        return [(str(e.get("code", "")), str(e.get("message", ""))) for e in errors if isinstance(e, dict)]


def _retry_after(value: str | None, default: int = DEFAULT_RETRY_AFTER) -> int:
    try:
        seconds = int((value or "").strip())
    except ValueError:
        return default  # an HTTP date; not worth parsing for a hint
    return min(max(seconds, 1), 3600)


def _underlying(error: BaseException) -> BaseException:
    """The failure inside Twisted's wrapped reasons (the first that is not a cancellation)."""
    if isinstance(
        error, ResponseNeverReceived | ResponseFailed | RequestTransmissionFailed | HandshakeFailed
    ):
        reasons = getattr(error, "reasons", None) or []
        for reason in reasons:
            value = getattr(reason, "value", None)
            if value is not None and not isinstance(value, CancelledError):
                return _underlying(value)
    return error


async def _sent_again_if_never_sent(
    send: Callable[[], Deferred[IResponse]], body: BytesProducer | None
) -> IResponse:
    """``send()``'s response; sent once more if it failed with RequestNotSent and has a ``body``
    (a DELETE's empty one). RequestNotSent: the kept connection it was given had closed before the
    request went out, so nothing of it reached the server and sending it again is safe. The pool does
    so itself for a request without a body, not for one with."""
    try:
        return await send()
    except RequestNotSent:
        if body is None:
            raise
        return await send()


def _may_land(error: BaseException, late: float) -> float | None:
    """How long a write that ended in ``error`` may still land (`LateWrites.ended`'s grace): ``late``
    for one unanswered, or cancelled (its request may have reached the registry all the same); None
    for one answered."""
    if isinstance(error, RegistryError):
        return late if error.unanswered else None
    return late if is_cancellation(error) else None


def _closed_unanswered(error: BaseException) -> bool:
    """Whether the server took the connection and the request, then closed it without a byte of answer
    (Twisted words it "Connection was closed cleanly."): it runs and was reached. An HTTPS-only port
    does so with a plain-HTTP request (openssl s_server, a TCP-passthrough proxy, payloadtags' own).
    Also when it closed the connection during the TLS handshake of a write (`HandshakeFailed`), which
    then never went out."""
    return isinstance(error, ResponseNeverReceived | HandshakeFailed) and isinstance(
        _underlying(error), net_errors.ConnectionDone | net_errors.ConnectionLost
    )


def _closed_partway(error: BaseException) -> bool:
    """Whether the server began its answer (a status line at least) and closed the connection before
    its end, as a registry or proxy that dies mid-answer does (Twisted words it "Connection was closed
    cleanly." too): it ran and was reached."""
    return isinstance(error, ResponseFailed) and isinstance(
        _underlying(error), net_errors.ConnectionDone | net_errors.ConnectionLost
    )


def _cause(error: BaseException) -> str:
    """A short human reason for a transport failure, digging into Twisted's wrapped reasons."""
    if _closed_unanswered(error):
        return CLOSED_UNANSWERED
    if _closed_partway(error):
        return CLOSED_PARTWAY
    error = _underlying(error)
    if isinstance(error, net_errors.ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, net_errors.TimeoutError):
        return "connection timed out"
    if isinstance(error, net_errors.ConnectError):
        return str(error).rstrip(".") or error.__class__.__name__
    if isinstance(error, SSL.Error):
        details = error.args[0] if error.args else ""
        if isinstance(details, list) and details:
            # OpenSSL's [(library, function, reason)]: the reason says what went wrong
            return "TLS failure: " + ", ".join(str(item[-1]) for item in details if item)
        return f"TLS failure: {details}"
    if isinstance(error, ParseError):
        # Its data is the peer's line as received (a status line up to 16 KiB, which may echo the
        # request's Authorization): the reason alone says what is wrong (review r2redact F2).
        return f"not an HTTP answer ({error.args[0] if error.args else 'unparsable'})"
    return str(error) or error.__class__.__name__


@attrs.frozen
class RootAnswer:
    status: int
    api_version: str | None
    challenge: str | None
    # The start of the answer's body (JSON_LIMIT at most): a TLS port's answer to plain HTTP says so there.
    body: bytes = attrs.field(default=b"", repr=False)


@attrs.define(eq=False)  # each is itself: kept in sets by identity
class CarriedDelete:
    """A delete of `RegistryClient.delete_tag` under way."""

    repository: str
    tag: str
    writing: Deferred[None]  # fired before its first write
    ended: Deferred[None] = attrs.Factory(Deferred)  # fired once it has ended, however

    @property
    def begun(self) -> bool:
        """Whether it has begun writing: from then on it goes on to its end (`delete_tag`)."""
        return self.writing.called

    @property
    def name(self) -> str:
        return f"{self.repository}:{self.tag}"


class RegistryClient:
    """One registry's OCI distribution API. Create once; call close() when done."""

    def __init__(
        self,
        reactor: Any,
        settings: RegistrySettings,
        *,
        agent: IAgent | None = None,
        queue: RepositoryQueue | None = None,
        reads_at_turn_end: bool = False,
        finish_begun_deletes: bool = True,
        late_writes: LateWrites | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        landing_clock: IReactorTime | None = None,
    ) -> None:
        """``reads_at_turn_end``: a shared read (catalog page, tag list) that gets a connection slot
        goes out at the end of the reactor turn instead of at once, so that the requests handled later
        in that turn (lists that arrived together) join it: they began before it went out.

        ``finish_begun_deletes=False``: cancelling a delete stops it wherever it is, as the death of
        the process would (tests that stand a cancel for a crash).

        ``late_writes``: where this client's writes that may still land are kept (`late_writes`;
        default: a record of its own, on ``reactor``).

        ``monotonic``: the clock of the rate-limited warnings (`payloadtags.onceper`), not the
        reactor's: that is the wall clock, which NTP may step back.

        ``landing_clock``: the clock of the watch for an unanswered write to land (`_await_landing`):
        its deadline and the pauses between its reads, which go to the registry on ``reactor`` all the
        same. ``reactor`` unless given: a test's Clock ends the watch without its real seconds."""
        self._reactor = reactor
        self._landing_clock: IReactorTime = landing_clock if landing_clock is not None else reactor
        self._reads_at_turn_end = reads_at_turn_end
        self._finish_begun_deletes = finish_begun_deletes
        # The deletes running, each with what it deletes and whether it has begun writing: those that
        # have go on after their callers stop waiting (`delete_tag`), and a stop waits for them.
        self._carried: set[CarriedDelete] = set()
        # Repository -> whether a manifest PUT of the delete holding its turn went unanswered.
        self._late_puts: dict[str, bool] = {}
        self._turn_waiters: list[Deferred[None]] | None = None
        self._settings = settings
        self._late_writes = late_writes if late_writes is not None else LateWrites(reactor)
        self._base = settings.url.rstrip("/")
        self._name = self._base  # how messages name the registry: its URL, which holds no credentials
        # The registry's origin, as URLs are compared with it (`_ours`), and as its URL writes it.
        self._base_origin = _origin(self._base)
        parts = urllib.parse.urlsplit(self._base)
        self._base_written = f"{parts.scheme}://{parts.netloc}"
        # The http:// origins (the registry's, its token service's, where it redirects reads) that have
        # answered this client: such a port serves plain HTTP, so a connection it later closes without
        # an answer is the server or its proxy dropping the request, not a port that serves HTTPS only
        # (`_closed_advice`). At most PLAIN_ANSWERED_KEPT, the registry's own first.
        self._plain_answered: set[str] = set()
        self._pool: HTTPConnectionPool | None = None
        # Reads from the registry's own origin skip Agent's per-request URL handling (set when this
        # client makes its own Agent; an injected one gets every request).
        self._origin: OriginRequests | None = None
        if agent is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = settings.max_connections
            endpoints = KeptEndpoints(reactor, TLSPolicy(settings.ca_file), settings.timeout)
            agent = Agent.usingEndpointFactory(reactor, endpoints, pool=self._pool)
            if self._base.isascii():
                self._origin = OriginRequests(self._pool, endpoints, self._base_written)
        self._agent = agent
        self._http = HTTPClient(agent, data_to_body_producer=BytesProducer)
        # The pool keeps idle connections; this bounds the busy ones, so a burst of API requests
        # queues here instead of opening hundreds of sockets to the registry.
        self._slots = DeferredSemaphore(settings.max_connections)
        # Writes whose caller asks the cluster API first (`WriteHooks.before`) hold their slot through
        # that call: at most a quarter of the slots (at least one) go to them at once, the others wait
        # for a confirmation's turn before taking a slot, so reads and the API's own deletes still get
        # one however slow the cluster API is.
        self._confirming = DeferredSemaphore(max(1, settings.max_connections // 4))
        self._auth = Authenticator(reactor, settings.username, settings.password, self._get_token, self._name)
        # Identical reads (catalog pages, tag lists) not yet sent are made once for every caller.
        self._reads = Coalescer()
        # None: not known yet whether the registry deletes a single tag (OCI distribution 1.1).
        self._delete_by_tag: bool | None = None
        # The order of catalog names ("component" or "lexical") once a page has shown which.
        self._catalog_order: str | None = None
        # The largest catalog page size this registry took after refusing a larger one: later pages
        # ask no more (None: none refused).
        self._catalog_limit: int | None = None
        # The smallest catalog page size this registry refused (None: none). Kept whatever becomes of
        # the read that was refused (cancelled, timed out, failed), so that no read asks it again;
        # forgotten when even n=1 is refused (no size limit, then).
        self._catalog_refused: int | None = None
        # Calls waiting for the one stepping a refused catalog page down (None: none is).
        self._catalog_waiters: list[Deferred[None]] | None = None
        # Until when each repository's last probe's "deletes work here" is believed (reactor seconds),
        # oldest first. Per repository: a token registry grants delete per repository (Harbor, GitLab),
        # so one repository's pass says nothing of another's. At most two expired entries are dropped
        # per new pass (`_believe`): bounded by the repositories probed, not by time.
        self._probe_valid_until: dict[str, float] = {}
        # The same for "pushes work here" (`_probe_push`), which only a dry run checks: a real delete's
        # re-tag is refused by itself where pushes are not granted, a dry run must say so beforehand.
        self._push_valid_until: dict[str, float] = {}
        # Every mutation of a repository waits for the earlier ones of this process to finish.
        self._queue = queue if queue is not None else RepositoryQueue()
        # The caller's checks of the mutation holding a repository's turn (`WriteHooks`), made
        # right before each of its write requests leaves (`_call`): one mutation per repository at a
        # time, so the repository names it.
        self._gates: dict[str, WriteHooks] = {}
        #: Called with (operation, "repository:tag", read, answered) for each conditional write: from
        #: the read it is conditional on to the write's answer (reactor seconds), the time in which
        #: another client's push to that tag can be overwritten. operation: retag, restore or repair.
        self.on_window: Callable[[str, str, float, float], None] | None = None
        # Whether tags no object can name were said to be left out (`_nameable`): one line a period
        # for the whole registry, naming the repository met, and counting the others, as a registry
        # listing them may do so in thousands of repositories.
        self._unnameable_said: OncePerPeriod[None] = OncePerPeriod(UNNAMEABLE_LOG_PERIOD, monotonic)
        # Redirects this client cannot follow, said once a period per reason (`_redirected`); a reason
        # names where the redirect points, so that is once a period per host (at most MAX_KEYS kept).
        self._unfollowable_said: OncePerPeriod[str] = OncePerPeriod(UNFOLLOWABLE_LOG_PERIOD, monotonic)

    @property
    def late_writes(self) -> LateWrites:
        """Every manifest write of this client that may still land, by namespace (and every DELETE by
        digest a cascade sends: `delete_manifest`): noted when sent,
        forgotten when answered, kept for `LATE_WRITE_GRACE` timeouts when it goes unanswered, and again
        from the end of a delete that reports a write pending (its user is told to wait that long). A
        namespace's removal waits them out (`payloadtags.cleanup.cascade`), whichever call sent them."""
        return self._late_writes

    @property
    def settings(self) -> RegistrySettings:
        return self._settings

    @property
    def queue(self) -> RepositoryQueue:
        return self._queue

    @property
    def supports_delete_by_tag(self) -> bool | None:
        return self._delete_by_tag

    # --- public API -------------------------------------------------------------------------------

    async def ping(self) -> None:
        """GET /v2/, authenticating as needed. Raises a RegistryError when the registry is not usable."""
        reply = await self._call("GET", "/v2/", scope="")
        if reply.status != 200:
            raise self._error(reply, "the API check (GET /v2/)")

    async def root(self) -> RootAnswer:
        """GET /v2/ without credentials: what the registry says about itself (for start-up diagnosis)."""
        reply = await self._exchange("GET", self._base + "/v2/", None, None, None, JSON_LIMIT, False)
        return RootAnswer(
            status=reply.status,
            api_version=reply.header("Docker-Distribution-API-Version"),
            challenge=reply.header("WWW-Authenticate"),
            body=reply.body,
        )

    @property
    def catalog_order(self) -> str | None:
        """The order of catalog names, "component" or "lexical", once a page has shown which
        (`_check_advances`); None until then (`registry.sorts_by_components`)."""
        return self._catalog_order

    async def catalog(self, last: str | None = None, n: int = MAX_CATALOG_PAGE) -> CatalogPage:
        """One page of repository names after ``last`` (which need not exist).

        distribution 2.8 orders the catalog path component by component (a depth-first walk of its
        storage: "/" sorts below every other character), so "team/x" and "team/z/w" come before
        "team-a/y", and ``last="team"`` seeks to the first repository under "team/". A namespace's
        repositories are therefore one contiguous run starting right after ``last=<namespace>``.

        A registry that refuses ``n`` (a ``catalog.maxentries`` below it) answers a smaller page, and
        later pages ask no more than it took: the page's ``n`` says so, and `CatalogPage.full` tells a
        full page from the catalog's end.
        """
        if not 1 <= n <= MAX_CATALOG_PAGE:
            raise ValueError(f"catalog page size must be 1..{MAX_CATALOG_PAGE}, not {n}")
        # Keyed by the size asked (or the one learned), not cut for remembered refusals: an identical
        # read that starts while another steps down then follows that read, as before any refusal,
        # instead of going out at a size that read has not finished trying. `_catalog` cuts it.
        size = n if self._catalog_limit is None else min(n, self._catalog_limit)
        page: CatalogPage = await self._reads.join(
            ("catalog", last or "", size), lambda on_send: self._catalog(last, size, on_send)
        )
        if page.n is None and size < n:
            page = attrs.evolve(page, n=size)
        return page

    async def _catalog(self, last: str | None, n: int, on_send: Callable[[], object]) -> CatalogPage:
        asked = n
        # A read that waited in the coalescer may go out after a size was learned meanwhile.
        n = self._catalog_size(n)
        stepping = False  # this call steps the size down, and others refused meanwhile wait for it
        try:
            while True:
                query = {"n": str(n)}
                if last:
                    query["last"] = last
                path = "/v2/_catalog?" + urllib.parse.urlencode(query)
                reply = await self._call("GET", path, scope="registry:catalog:*", on_send=on_send)
                if n == 1 or not _refused_page_size(reply):
                    break
                if self._catalog_refused is None or n < self._catalog_refused:
                    self._catalog_refused = n
                # Refused as too large (distribution's catalog.maxentries): the same page, smaller, in
                # the same call, so within its caller's deadline; a refusal of n=1 is no size limit.
                # One call at a time walks the sizes: the others wait for the size it finds instead
                # of each sending the same refused requests.
                if not stepping and self._catalog_waiters is not None:
                    await self._catalog_stepped()
                elif not stepping:
                    stepping, self._catalog_waiters = True, []
                n = self._catalog_size(_step_below(n))
            refused = self._catalog_refused
            if reply.status == 200 and refused is not None and n == _step_below(refused):
                # The largest size left: taken, it is this registry's, whichever read found the
                # refusals above it (this one, or one cancelled or failed before a page).
                self._learn_catalog_size(refused, n)
        finally:
            if stepping:
                waiters, self._catalog_waiters = self._catalog_waiters or [], None
                for waiter in waiters:
                    if not waiter.called:  # a cancelled waiter is already called
                        waiter.callback(None)
        if n == 1 and _refused_page_size(reply):
            # Refused even one name: not a size limit, and none of its refusals is one to keep.
            self._catalog_refused = None
            if asked > 1:
                raise self._error(reply, f"the repository catalog, at every page size from {asked} down to 1")
        if reply.status == 404:
            # A registry always has a catalog (maybe empty): this is not one, whatever the user asked.
            # Said as a configuration error, not as NotFound (which kubectl would show as "no such tag").
            raise self._protocol(
                reply,
                "GET /v2/_catalog answered 404: --registry-url does not point at an OCI distribution API "
                "with a catalog; give the registry's root",
            )
        if reply.status != 200:
            raise self._error(reply, "the repository catalog")
        document = self._json(reply, "the repository catalog")
        names = document.get("repositories") or []
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise self._protocol(reply, "the repository catalog is not a list of names")
        if last:
            self._check_advances(reply, last, names)
        more = self._next_link(reply) is not None
        return CatalogPage(repositories=names, more=more, n=n if n < asked else None)

    def _catalog_size(self, n: int) -> int:
        """``n``, or the smaller size this registry took after refusing a larger one; below any size
        it refused, the next smaller step."""
        if self._catalog_limit is not None:
            n = min(n, self._catalog_limit)
        if self._catalog_refused is not None and n >= self._catalog_refused:
            n = _step_below(self._catalog_refused)
        return n

    async def _catalog_stepped(self) -> None:
        """Waits for the call stepping a refused catalog page down to end (whatever its outcome)."""
        waiter: Deferred[None] = Deferred()
        assert self._catalog_waiters is not None
        self._catalog_waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._catalog_waiters is not None and waiter in self._catalog_waiters:
                self._catalog_waiters.remove(waiter)

    def _learn_catalog_size(self, asked: int, n: int) -> None:
        """The registry took a page of ``n`` after refusing ``asked``: later pages ask no more."""
        if self._catalog_limit is None or n < self._catalog_limit:
            log.warn(
                "registry {registry} refuses catalog pages of {asked} names "
                "(its catalog.maxentries?): asking {n} from now on",
                registry=self._name,
                asked=asked,
                n=n,
            )
            self._catalog_limit = n

    def _check_advances(self, reply: _Reply, last: str, names: list[str]) -> None:
        """Every name of a page after ``last`` must come after it, in the order the registry keeps:
        component by component (distribution) or plain lexical (the API's description; other
        registries). A registry that ignores ``last`` would otherwise keep a catalog walk reading the
        same pages forever. The first name that comes after ``last`` in one order only fixes which
        order this registry keeps, so that pages cannot go round between names that each come after
        the other in one of the two."""
        bound = catalog_key(last)
        for name in names:
            lexical = name > last
            component = catalog_key(name) > bound
            if lexical and component:
                continue
            order = "lexical" if lexical else "component" if component else None
            if order is not None and self._catalog_order in (None, order):
                self._catalog_order = order
                continue
            raise self._protocol(
                reply,
                f"the repository catalog page after {last!r} holds {name!r}, which does not come after "
                "it: the registry does not page its catalog by last= and a walk of it would not end",
            )

    async def tags(self, repository: str) -> TagList:
        """All tags of a repository, sorted; empty when it is unknown or has no tags left.

        As a few long texts (`TagList`), not a str each: held by walks and list records for
        minutes, a str per tag filled Python's small-object arenas, which a few blocks made meanwhile
        then kept sparse once the lists were gone (issue #11). Callers whose reads were coalesced get
        the same object: immutable, so nobody's use of it changes another's, and one object, so the
        lists that show it whole can tell that they show the same thing and format it once
        (`api.render.SharedText`)."""
        self._check_repository(repository)
        tags: TagList = await self._reads.join(
            ("tags", repository), lambda on_send: self._tags(repository, on_send)
        )
        return tags

    async def _tags(self, repository: str, on_send: Callable[[], object]) -> TagList:
        found: list[str] = []
        url: str | None = f"{self._base}/v2/{repository}/tags/list"
        # distribution 2.8 answers everything in one page; other registries page with Link. A next
        # page must move on: a link back to a page read before, or whose ``last`` is not beyond the
        # one before it, would read the same tags again and again (docs/registry.md, "Tags").
        asked: set[str] = set()
        last: str | None = None
        read = 0  # the bytes of the pages read: all of them are held at once
        for _ in range(MAX_TAG_PAGES):
            if url is None:
                return _sorted_once(self._nameable(repository, found))
            asked.add(url)
            reply = await self._call(
                "GET", url, scope=self._pull(repository), max_body=JSON_LIMIT, on_send=on_send
            )
            read += len(reply.body)
            if read > JSON_LIMIT:
                raise self._protocol(
                    reply,
                    f"the tags of {repository} take more than {JSON_LIMIT} bytes over {len(asked)} pages, "
                    "more than this client reads",
                )
            if reply.status == 404 and "NAME_UNKNOWN" in reply.error_codes():
                return _sorted_once(self._nameable(repository, found))
            if reply.status != 200:
                raise self._error(reply, f"the tags of {repository}")
            if len(asked) == 1 and not reply.header_values("Link"):
                # The whole list in one page, as distribution answers it: read without a str per tag
                # held, when it is plain (`_plain_tags`); any other answer as json.loads reads it.
                plain = _plain_tags(reply.body)
                if plain is not None:
                    return plain
            tags = self._json(reply, f"the tags of {repository}").get("tags") or []
            # One C-level pass: json.loads makes exactly str for a JSON string.
            if type(tags) is not list or not _TEXT.issuperset(map(type, tags)):
                raise self._protocol(reply, f"the tags of {repository} are not a list of names")
            found += tags
            url = self._next_link(reply)
            if url is None:
                continue
            after = _query_value(url, "last")
            if url in asked or (after is not None and last is not None and not _tag_after(after, last)):
                raise self._protocol(
                    reply,
                    f"the tags of {repository}: the next page link (to {self._shown(_path(url))}, "
                    f"after {self._shown(after)!r}) does not move past the pages read before it"
                    if after is not None
                    else f"the tags of {repository}: the next page link (to {self._shown(_path(url))}) "
                    "does not move past the pages read before it",
                )
            last = after if after is not None else last
        raise self._protocol(None, f"the tags of {repository} span more than {MAX_TAG_PAGES} pages")

    def _nameable(self, repository: str, tags: list[str]) -> list[str]:
        """``tags`` without the ones no object can name: "" (distribution cannot store it, another
        registry may list it) and a lone surrogate (JSON's \\udfff), which UTF-8 cannot carry. A
        list page ending on one would hand out a continue token that its next page refuses, and no
        request can name it; left out here, no list, page, watch or get shows one (docs/registry.md,
        "Tags")."""
        # The usual list holds neither: one lookup, and one join (encoded only when it is not ASCII).
        if "" not in tags:
            joined = "".join(tags)
            if joined.isascii() or utf8_encodable(joined):
                return tags
        kept = [tag for tag in tags if tag and utf8_encodable(tag)]
        said = self._unnameable_said(None)
        if said is not None:
            log.warn(
                "Leaving out {count} of the {total} tags {repository} lists: no object can name a tag that "
                "is empty or holds a lone surrogate (which UTF-8 cannot carry){more}",
                count=len(tags) - len(kept),
                total=len(tags),
                repository=repository,
                more=said.more(),
            )
        return kept

    async def manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest a tag or digest names, exactly as stored."""
        self._check_repository(repository)
        self._check_reference(reference)
        what = f"manifest {repository}{'@' if is_digest_reference(reference) else ':'}{reference}"
        reply = await self._call(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scope=self._pull(repository),
            headers={"Accept": ACCEPT_MANIFESTS},
            max_body=MANIFEST_LIMIT,
        )
        if reply.status != 200:
            raise self._error(reply, what)
        document = self._json(reply, what, deep=True)
        media_type = infer_media_type(reply.header("Content-Type"), document)
        payload = digested(reply.body, media_type)
        if payload != reply.body:
            # What is shown is the payload (a schema 1 manifest's signatures cover only that part of
            # it), which may nest as it likes: held to the same rules as a whole manifest.
            document = self._json(reply, what, deep=True, body=payload)
        digest = self._verified_digest(reply, reference, what, payload)
        return Manifest(
            digest=digest, media_type=media_type, content=reply.body, payload=payload, document=document
        )

    async def resolve(self, repository: str, reference: str) -> str:
        """The digest a tag names, by HEAD (no body); falls back to GET without a digest header."""
        return (await self.resolve_typed(repository, reference)).digest

    async def resolve_typed(self, repository: str, reference: str) -> Resolved:
        """`resolve`, with the manifest's media type as the HEAD's Content-Type says it (distribution
        sends the manifest's own); the GET's, when it falls back to one. At no cost beyond `resolve`."""
        self._check_repository(repository)
        self._check_reference(reference)
        what = f"manifest {repository}:{reference}"
        reply = await self._call(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            scope=self._pull(repository),
            headers={"Accept": ACCEPT_MANIFESTS},
        )
        if reply.status != 200:
            raise self._error(reply, what)
        digest = reply.header("Docker-Content-Digest")
        if digest and is_valid_digest(digest):
            return Resolved(digest, declared_media_type(reply.header("Content-Type")))
        fetched = await self.manifest(repository, reference)
        return Resolved(fetched.digest, fetched.media_type)

    async def blob(self, repository: str, digest: str, max_bytes: int = 4 << 20) -> bytes:
        """A blob's content (a config, say), checked against its digest; larger than max_bytes fails."""
        self._check_repository(repository)
        self._check_digest(digest)
        what = f"blob {repository}@{digest}"
        reply = await self._call(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scope=self._pull(repository),
            max_body=max_bytes,
            redirects=True,  # storage backends like S3 redirect blob downloads
        )
        if reply.status != 200:
            raise self._error(reply, what)
        algorithm = digest.partition(":")[0]
        actual = compute_digest(reply.body, algorithm)
        if actual is not None and actual != digest:
            raise self._protocol(reply, f"{what} has content with digest {actual}")
        return reply.body

    async def delete_manifest(
        self,
        repository: str,
        digest: str,
        *,
        hooks: WriteHooks | None = None,
    ) -> None:
        """Delete a manifest by digest. The registry untags every tag that points at it.

        Queued behind the other mutations of the repository in this process (`RepositoryQueue`);
        the ``hooks``' ``before`` and ``check`` run in the repository's turn, right before the DELETE
        is sent, on every attempt; ``sent`` is told True then (False once answered), ``waiting`` of
        the waits for the repository's turn, a confirmation's turn and a slot (`WriteHooks`).

        Noted in `late_writes` as a manifest PUT is (`_noted_delete`): the cascades' deletes by the
        image's own digest, which a namespace's removal must not report done before."""
        self._check_repository(repository)
        self._check_digest(digest)
        gate = hooks if hooks is not None else _NO_HOOKS
        async with self._turn(repository, gate.waiting), self._gated(repository, gate):
            await self._noted_delete(repository, digest)

    async def _noted_delete(self, repository: str, digest: str) -> None:
        """`_delete_manifest`, out in `late_writes` until answered, and for `LATE_WRITE_GRACE`
        timeouts after it ends unanswered or cancelled. Landing late, a DELETE of a client's digest
        removes every tag on it, also one pushed after the namespace's removal reported it empty, in
        the namespace created anew with the same image (review r1replica F1): so the removal and the
        leader's cascade wait it out, as they do a repair's PUT. A single delete's DELETEs of its own
        copy or placeholder are not noted: their digests are on no tag but the one being deleted, and
        landing late they remove nothing of a client's."""
        namespace = namespace_of(repository)
        late = LATE_WRITE_GRACE * self._settings.timeout
        # No tag given: a DELETE leaves none, and may remove any of the repository's on its digest.
        number = self._late_writes.sent(
            namespace,
            f"deleting manifest {repository}@{digest}",
            after=late,
            timeout=self._settings.timeout,
            repository=repository,
            landing=Landing.REMOVES_MANIFEST,
        )
        grace: float | None = None  # answered, or never sent (a caller's check said stop)
        try:
            await self._delete_manifest(repository, digest)
        except BaseException as error:
            grace = _may_land(error, late)
            raise
        finally:
            self._late_writes.ended(namespace, number, grace)

    @contextlib.asynccontextmanager
    async def _turn(self, repository: str, waiting: Waiting | None) -> AsyncIterator[None]:
        """The repository's turn (`RepositoryQueue`), the wait for it told to ``waiting``: the time of
        the process's other mutations of the repository (their confirmations, their requests), not
        the registry answering this one (`Waiting`)."""
        if waiting is None:
            async with self._queue.hold(repository):
                yield
            return
        waiting(True)
        entered = False
        try:
            async with self._queue.hold(repository):
                entered = True
                waiting(False)
                yield
        finally:
            if not entered:
                waiting(False)

    @contextlib.asynccontextmanager
    async def _gated(self, repository: str, gate: WriteHooks) -> AsyncIterator[None]:
        """The caller's checks, made before each write of the mutation holding the repository's turn.

        At the last moment, not once in the turn, nor before it: a check made before a wait (in the
        repository's line, for a connection slot, for a token) would let the request leave whenever
        that wait ends, however much later (a namespace created anew by then, a lost Lease, a budget
        spent); and a mutation's later writes (a repair's PUT) follow reads of their own."""
        if gate == _NO_HOOKS:
            yield
            return
        if gate.check is not None:
            # Nothing read for a mutation already told to stop; not `sent`: nothing leaves here.
            gate.check()
        self._gates[repository] = gate
        try:
            yield
        finally:
            del self._gates[repository]

    async def delete_tag(
        self,
        repository: str,
        tag: str,
        *,
        hooks: WriteHooks | None = None,
        expected: str | None = None,
    ) -> str | None:
        """Remove exactly this tag and return the digest it pointed at (None: a dangling tag).

        Other tags on the same digest, and manifests an index or another tag needs, stay. Uses the
        registry's delete-by-tag (OCI distribution 1.1) when it has it; otherwise (distribution 2.8)
        points the tag at a unique copy of its manifest and deletes that copy by digest. That re-tag
        is conditional: the tag is read right before it is written, and every later write (a restore,
        a repair) is preceded by a fresh read that must show what this delete left there. A tag that
        moved meanwhile (a push) raises RegistryConflict and is left as the push made it.

        A dangling tag (listed, but its link names a manifest revision the registry no longer has) is
        re-pointed at a fresh placeholder manifest, which is then deleted by digest.

        Raises RegistryNotFound when the tag does not exist. Any other failure leaves the tag as it
        was, or says in its message exactly where the tag points now.

        Once it has begun writing, a delete goes on to its end (the tag gone, or put back) when its
        caller stops waiting for it (a request's deadline, a client gone), and the log gets the
        outcome: cut short between its writes, it would leave the tag on the copy it wrote, and
        nobody told. Cancelled before that, it stops.

        The ``hooks``' ``before`` runs in the repository's turn right before each request that changes
        a manifest or the tag (the DELETE by tag, a re-tag or repair PUT, the DELETE of the copy, a
        restore), after the read it is conditional on; ``check`` right before each write request;
        ``sent`` told True right before each of those that change a manifest or the tag leaves (False
        once answered); ``waiting`` of its waits for the repository's turn, a confirmation's turn and
        a slot (`WriteHooks`). Raising stops the delete there, with that request not sent: also a
        delete carried on after its caller stopped waiting.

        ``expected``: the digest the caller found the tag at; read elsewhere (a tag found dangling
        included), the tag is left as it is and RegistryConflict raised, from the read in the
        repository's turn right before the delete's first write: what the caller checked is what goes,
        not a push of the same name made after its look (the registry's round trip of the write aside).
        """
        self._check_repository(repository)
        self._check_tag(tag)
        writing: Deferred[None] = Deferred()
        gate = hooks if hooks is not None else _NO_HOOKS
        work = Deferred.fromCoroutine(self._delete_tag_in_turn(repository, tag, writing, gate, expected))
        if not self._finish_begun_deletes:
            return await work
        carried = CarriedDelete(repository, tag, writing)
        self._carried.add(carried)

        def done(result: object) -> object:
            self._carried.discard(carried)
            carried.ended.callback(None)
            return result

        work.addBoth(done)
        return await carried_through(
            work, lambda: writing.called, lambda outcome: self._finished_alone(repository, tag, outcome)
        )

    async def _delete_tag_in_turn(
        self, repository: str, tag: str, writing: Deferred[None], gate: WriteHooks, expected: str | None
    ) -> str | None:
        """`delete_tag`'s work, in the repository's turn; fires ``writing`` before its first write."""
        return await self._delete_tag_steps(repository, tag, writing, gate, expected)

    @contextlib.asynccontextmanager
    async def _noting_late_puts(self, repository: str, tag: str) -> AsyncIterator[None]:
        """Around a delete, in the repository's turn (one delete of a repository holds it at a time):
        a delete that ends unanswered after a manifest PUT of its own went unanswered (`_put_manifest`)
        is noted as a write that may land, from its end."""
        self._late_puts[repository] = False
        try:
            yield
        except RegistryError as error:
            if error.unanswered and self._late_puts[repository]:
                # Its user is told to wait `_late_advice`'s time from this answer: so does a removal of
                # the namespace, whoever asked for the delete (a single delete's re-tag, a repair)
                # and whether or not its caller still waits for it (carried on alone). Only after a
                # write sent and not answered: a read that timed out (the delete's first, with nothing
                # sent) or an unanswered DELETE leaves no tag behind.
                # Every write of a delete is to its own tag (a re-tag, a restore, a repair): a
                # deletecollection whose selector cannot match it does not wait for it.
                self._late_writes.note(
                    namespace_of(repository),
                    f"deleting tag {repository}:{tag}",
                    self._late_writes.now() + LATE_WRITE_GRACE * self._settings.timeout,
                    repository,
                    tag,
                )
            raise
        finally:
            del self._late_puts[repository]

    async def _delete_tag_steps(
        self, repository: str, tag: str, writing: Deferred[None], gate: WriteHooks, expected: str | None
    ) -> str | None:
        async with (
            self._turn(repository, gate.waiting),
            self._gated(repository, gate),
            self._noting_late_puts(repository, tag),
        ):
            if self._delete_by_tag is not False:
                original = self._as_expected(repository, tag, await self._read_tag(repository, tag), expected)
                writing.callback(None)
                try:
                    deleted = await self._delete_by_tag_once(repository, tag)
                except (RegistryUnavailable, RegistryTimeout) as error:
                    # Failed or unanswered, the delete may have happened all the same (as a delete of
                    # our copy may on 2.8): the tag says. A 2.8 registry never deleted it by tag.
                    await self._settle_tag_delete(repository, tag, error, original)
                    deleted = True
                if deleted:
                    return original.digest if original is not None else None
                # 400 (2.8: DIGEST_INVALID) or 405 can mean "no tag deletes here" or "no deletes at
                # all"; the probe below tells which without changing anything.
                await self._probe_delete(repository, tag)
                if self._delete_by_tag is None:
                    log.info(
                        "Registry {registry} cannot delete a tag directly; using unique-manifest deletes",
                        registry=self._name,
                    )
                self._delete_by_tag = False
            elif not self._deletes_believed(repository):
                await self._probe_delete(repository, tag)
            # The read the re-tag is conditional on: the last request before the write.
            original = self._as_expected(repository, tag, await self._read_tag(repository, tag), expected)
            if not writing.called:
                writing.callback(None)
            if original is None:
                await self._repair_dangling(repository, tag)
                return None
            await self._delete_tag_by_unique_manifest(repository, tag, original)
            return original.digest

    @staticmethod
    def _as_expected(
        repository: str, tag: str, original: Manifest | None, expected: str | None
    ) -> Manifest | None:
        """``original`` (the tag's manifest as read in the turn, None: dangling), when it is at the
        digest the caller expects (`delete_tag`'s ``expected``; None: wherever); else RegistryConflict,
        nothing written."""
        found = original.digest if original is not None else None
        if expected is not None and found != expected:
            where = f"points at {found}" if found is not None else "is dangling"
            raise RegistryConflict(
                f"tag {repository}:{tag} {where}, not at {expected} where the delete found it: pushed "
                "again meanwhile, so kept",
                current=found,
            )
        return original

    def _finished_alone(self, repository: str, tag: str, outcome: object) -> None:
        where = f"{repository}:{tag}"
        if not isinstance(outcome, Failure):
            log.info("Deleted tag {where} after its caller had stopped waiting", where=where)
        elif outcome.check(RegistryError):
            log.warn(
                "Deleting tag {where}, carried on after its caller had stopped waiting, failed: {error}",
                where=where,
                error=outcome.getErrorMessage(),
            )
        else:
            log.failure(
                "Deleting tag {where}, carried on after its caller had stopped waiting", outcome, where=where
            )

    def begun_deletes(self) -> list[CarriedDelete]:
        """The deletes running that have begun writing: those a stop does not cut (`delete_tag`)."""
        return [carried for carried in self._carried if carried.begun]

    @property
    def carried_bound(self) -> float:
        """The longest a delete that has begun writing may still take, in seconds
        (`CARRIED_DELETE_TIMEOUTS`)."""
        return CARRIED_DELETE_TIMEOUTS * self._settings.timeout

    async def carried_ended(self) -> None:
        """Once every delete that has begun writing has ended (`delete_tag`): one that had not is
        cancelled with its caller, and a stop does not wait for it."""
        begun = self.begun_deletes()
        if begun:
            await DeferredList([carried.ended for carried in begun])

    async def close(self) -> None:
        """Wait for the deletes carried on after their callers stopped waiting (`delete_tag`), then
        close idle connections. Requests still running finish on their own."""
        if self._carried:
            await DeferredList([carried.ended for carried in self._carried])
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    # --- delete helpers ---------------------------------------------------------------------------

    async def _delete_by_tag_once(self, repository: str, tag: str) -> bool:
        """DELETE by tag: True when the registry did, False for its 400 or 405 (no tag deletes, or no
        deletes at all)."""
        reply = await self._call(
            "DELETE", f"/v2/{repository}/manifests/{tag}", scope=self._delete(repository)
        )
        if reply.status in (200, 202, 204):
            self._delete_by_tag = True
            return True
        if reply.status not in (400, 405):
            raise self._error(reply, f"deleting tag {repository}:{tag}")
        return False

    async def _delete_manifest(self, repository: str, digest: str) -> None:
        reply = await self._call(
            "DELETE", f"/v2/{repository}/manifests/{digest}", scope=self._delete(repository)
        )
        if reply.status not in (200, 202, 204):
            raise self._error(reply, f"deleting manifest {repository}@{digest}")

    async def check_delete(self, repository: str, tag: str) -> None:
        """The check a delete of the tag makes before it writes (the probe, believed as long), so that
        a dry run fails where the delete would (docs/api.md): the same error, with the same words.
        Not in the repository's turn, nor under the checks of a mutation holding it: it writes
        nothing, and a dry run neither waits behind deletes nor fails on another delete's checks."""
        self._check_repository(repository)
        self._check_tag(tag)
        if not self._deletes_believed(repository):
            await self._probe_delete(repository, tag, gated=False)
        # Where the delete re-tags (no tag delete, or not known yet), it writes a manifest: the
        # account needs push too (a cleanup robot may be granted pull and delete alone). Before this
        # process has deleted a tag, a registry that deletes by tag is checked for push as well.
        if self._delete_by_tag is not True and not self._believed(self._push_valid_until, repository):
            await self._probe_push(repository, tag)

    def _deletes_believed(self, repository: str) -> bool:
        return self._believed(self._probe_valid_until, repository)

    def _believed(self, valid: dict[str, float], repository: str) -> bool:
        now: float = self._reactor.seconds()
        return now < valid.get(repository, 0.0)

    def _believe_deletes(self, repository: str) -> None:
        self._believe(self._probe_valid_until, repository)

    def _believe(self, valid: dict[str, float], repository: str) -> None:
        """Believe a repository's pass for PROBE_VALIDITY seconds, dropping up to `_PRUNED_AT_ONCE`
        expired entries of ``valid`` (oldest first) on the way."""
        now: float = self._reactor.seconds()
        valid.pop(repository, None)  # re-inserted last: the dict stays in order of time
        for oldest in list(itertools.islice(valid, _PRUNED_AT_ONCE)):
            if valid[oldest] > now:
                break
            del valid[oldest]
        valid[repository] = now + PROBE_VALIDITY

    async def _probe_delete(self, repository: str, tag: str, *, gated: bool = True) -> None:
        try:
            reply = await self._call(
                "DELETE",
                f"/v2/{repository}/manifests/{_PROBE_DIGEST}",
                scope=self._delete(repository),
                gated=gated,
            )
        except RegistryUnavailable as error:
            self._probe_valid_until.pop(repository, None)
            if not error.unanswered:
                raise
            raise self._probe_unanswered(repository, tag, "the connection closed first") from error
        except RegistryTimeout as error:
            # As unanswered as a lost connection, and as harmless: said as what the probe means, not
            # as a 504 about a DELETE of a zero digest the user never asked for. Still a 504 without a
            # retry hint, not a 503 with one: a registry that just took its whole timeout not to
            # answer is not helped by a repeat at once, and client-go repeats a Retry-After ten times,
            # each waiting the timeout again, before kubectl shows anything.
            self._probe_valid_until.pop(repository, None)
            timeout = self._settings.timeout
            timed_out = RegistryTimeout(
                self._probe_message(
                    repository, tag, f"timed out after {timeout:g}s", "retry the delete later"
                )
            )
            timed_out.unanswered = False  # nothing of it can land: the digest is no registry's
            raise timed_out from error
        if reply.status in (404, 400):
            # Deletes work here; this digest simply does not exist. Believed for a while: a registry
            # that turns read-only or delete-disabled meanwhile refuses the re-tag or the digest
            # delete instead, and the tag is left (or put back) as it was.
            self._believe_deletes(repository)
            return
        self._probe_valid_until.pop(repository, None)
        refused = self._error(reply, f"deleting tag {repository}:{tag}")
        if refused.unanswered:
            raise self._probe_unanswered(repository, tag, f"HTTP {reply.status} from a gateway") from refused
        raise refused

    async def _probe_push(self, repository: str, tag: str) -> None:
        """Whether the account may push in the repository, as a re-tag needs, told without writing: a
        PATCH of an upload session no registry holds (`_PROBE_UPLOAD`). A refusal is the re-tag's own
        (401 insufficient_scope: "the token does not grant repository:…:pull,push"), so that a dry run
        fails with the words of the delete it stands for."""
        check = "a write to an upload that does not exist"
        try:
            reply = await self._call(
                "PATCH",
                f"/v2/{repository}/blobs/uploads/{_PROBE_UPLOAD}",
                scope=self._push(repository),
                headers={"Content-Type": "application/octet-stream"},
                body=b"",
                gated=False,
            )
        except RegistryUnavailable as error:
            self._push_valid_until.pop(repository, None)
            if not error.unanswered:
                raise
            raise self._probe_unanswered(repository, tag, "the connection closed first", check) from error
        except RegistryTimeout as error:
            self._push_valid_until.pop(repository, None)
            timeout = self._settings.timeout
            timed_out = RegistryTimeout(
                self._probe_message(
                    repository, tag, f"timed out after {timeout:g}s", "retry the delete later", check
                )
            )
            timed_out.unanswered = False  # nothing of it can land: the upload is no registry's
            raise timed_out from error
        if reply.status in (404, 400):
            self._believe(self._push_valid_until, repository)
            return
        self._push_valid_until.pop(repository, None)
        refused = self._error(reply, f"deleting tag {repository}:{tag}")
        if refused.unanswered:
            raise self._probe_unanswered(
                repository, tag, f"HTTP {reply.status} from a gateway", check
            ) from refused
        raise refused

    def _probe_unanswered(
        self, repository: str, tag: str, cause: str, check: str = _DELETE_CHECK
    ) -> RegistryUnavailable:
        """The probe's unanswered request names a digest (an upload) no registry holds: nothing of it
        can land late, and nothing was changed, so it is said as what is known, and may be retried at
        once (a gateway's instant 5xx, a connection lost; not a timeout, `_probe_delete`)."""
        return RegistryUnavailable(self._probe_message(repository, tag, cause, "retry later", check))

    def _probe_message(
        self, repository: str, tag: str, cause: str, advice: str, check: str = _DELETE_CHECK
    ) -> str:
        return (
            f"registry {self._name}: deleting tag {repository}:{tag}: whether this registry can delete "
            f"could not be told: its check ({check}) got no answer ({cause}); nothing was changed; {advice}"
        )

    async def _read_tag(self, repository: str, tag: str) -> Manifest | None:
        """The tag's manifest; None when the tag is dangling; RegistryNotFound when there is no tag."""
        try:
            return await self.manifest(repository, tag)
        except RegistryNotFound:
            if tag in await self.tags(repository):
                return None
            raise

    async def _current(self, repository: str, tag: str) -> str | None:
        """The digest the tag points at now; None when it points at nothing (gone or dangling)."""
        try:
            return await self.resolve(repository, tag)
        except RegistryNotFound:
            return None

    async def _again(self, step: Callable[[], Awaitable[T]]) -> T:
        """``step`` (a read, or an upload of content by its digest), tried up to SETTLE_TRIES times
        while it fails with a 5xx or a timeout."""
        for _ in range(SETTLE_TRIES - 1):
            try:
                return await step()
            except (RegistryUnavailable, RegistryTimeout):
                await self._pause()
        return await step()

    def _pause(self, clock: IReactorTime | None = None) -> Deferred[None]:
        """The wait between two reads of a tag while a delete settles: a quarter of the registry
        timeout, within 0.05 to 1 s, on ``clock`` (the reactor unless given)."""
        interval = min(1.0, max(0.05, self._settings.timeout / 4))
        return deferLater(clock if clock is not None else self._reactor, interval, lambda: None)

    async def _where(self, repository: str, tag: str) -> tuple[str | None, bool]:
        """Where the tag points (None: nowhere) and whether it is gone (not listed either)."""
        current = await self._current(repository, tag)
        return current, current is None and tag not in await self.tags(repository)

    def _window(self, operation: str, repository: str, tag: str, since: float) -> None:
        if self.on_window is not None:
            self.on_window(operation, f"{repository}:{tag}", since, self._reactor.seconds())

    async def _delete_tag_by_unique_manifest(self, repository: str, tag: str, original: Manifest) -> None:
        read_at = self._reactor.seconds()
        what = f"deleting tag {repository}:{tag}"
        schema1_payload = original.media_type == schema1.SIGNED_SCHEMA1
        payload = schema1.signed_payload(original.content) if schema1_payload else None
        if original.media_type not in MANIFEST_MEDIA_TYPES and payload is None:
            raise RegistryProtocolError(
                f"registry {self._name}: cannot delete only tag {repository}:{tag}: its manifest type "
                f"{original.media_type} cannot be re-pushed, and deleting its digest "
                f"{original.digest} would remove every tag that shares it"
            )
        nonce = os.urandom(16).hex()
        if payload is not None:
            # Schema 1 has no annotations: the nonce is a member of its own, which the registry
            # keeps in the payload (and the digest) and ignores otherwise. Signed anew, as it must be.
            document = json.loads(payload)
            document[DELETE_NONCE_ANNOTATION] = nonce
            body, payload = schema1.sign(document)
            unique = compute_digest(payload)
        else:
            document = original.json()
            annotations = document.get("annotations")
            annotations = dict(annotations) if isinstance(annotations, dict) else {}
            annotations[DELETE_NONCE_ANNOTATION] = nonce
            document["annotations"] = annotations
            body = json.dumps(document, separators=(",", ":")).encode()
            unique = compute_digest(body)
        assert unique is not None
        await self._put_then_delete(
            "retag", repository, tag, body, original.media_type, unique, original, read_at, what
        )

    async def _put_then_delete(
        self,
        operation: str,
        repository: str,
        tag: str,
        body: bytes,
        media_type: str,
        ours: str,
        original: Manifest | None,
        read_at: float,
        what: str,
    ) -> None:
        """Point the tag at `body` (digest `ours`, on no other tag), then delete that digest: the tag
        goes and nothing else with it. A failed step is settled by re-reading the tag. ``operation``:
        "retag" (`body` is a copy of the tag's manifest) or "repair" (a placeholder), as `on_window`
        names it; `_put_manifest` records the `Kind` that follows from it."""
        try:
            await self._put_manifest(
                repository, tag, body, media_type, what, COPY if operation == "retag" else PLACEHOLDER
            )
        except RegistryError as error:
            self._window(operation, repository, tag, read_at)
            if error.unanswered:
                before = original.digest if original else None
                await self._await_landing(repository, tag, ours, {None, before}, before)
            await self._settle(repository, tag, error, ours, original, write_pending=error.unanswered)
            return
        self._window(operation, repository, tag, read_at)
        try:
            await self._delete_manifest(repository, ours)
        except RegistryNotFound:
            # Someone else deleted our copy, and the tag with it: the tag is gone, as asked.
            # Restoring it here would bring back a tag that a concurrent delete had removed.
            self._late_writes.gone(namespace_of(repository), (repository, tag, ours))
            return
        except RegistryError as error:
            await self._settle(repository, tag, error, ours, original)
            return
        # The copy is deleted, and every tag on it: none can be where the write left it.
        self._late_writes.gone(namespace_of(repository), (repository, tag, ours))

    async def _await_landing(
        self, repository: str, tag: str, written: str | None, before: set[str | None], seen: str | None
    ) -> str | None:
        """Our write of ``written`` under the tag went unanswered: the registry may carry it out late.
        Watch the tag for a while, as long as it shows what was there before the write (``before``;
        or nothing), until the write lands; then the caller acts on that instead of reporting a
        write in doubt. A push seen meanwhile ends the wait. A read that fails says nothing about
        the write, so the wait goes on: ending it there let the write land after a delete that had
        reported the tag gone. Returns what the tag showed at the last read that answered (``seen``,
        what it showed before the write, when none did; None: no tag)."""
        clock = self._landing_clock
        deadline = clock.seconds() + LATE_WRITE_GRACE * self._settings.timeout
        current = seen
        while clock.seconds() < deadline:
            try:
                current = await self._current(repository, tag)
            except RegistryError:
                pass  # not known: read again after the interval, until the deadline
            if current == written or current not in before:
                return current
            await self._pause(clock)
        return current

    def _late_advice(self) -> str:
        """What to do about a write of ours that may still land. Deleting again at once answered
        "deleted", and then the write landed and brought the tag back: so wait as long as a late
        write is watched for (`_await_landing`), then look, and delete only a tag still there."""
        grace = LATE_WRITE_GRACE * self._settings.timeout
        return (
            f"; the write may still land within about {grace:g}s: wait that long, then get the tag "
            "(kubectl get) and delete it again only if it is still there"
        )

    def _advice(self, pending: bool) -> str:
        """What to do about a delete that failed: a write of ours still pending gets the wait, then a
        look (`_late_advice`), never "retry the delete", whose repeat could succeed before the write
        lands and brings the tag back."""
        return self._late_advice() if pending else "; retry the delete"

    async def _settle(
        self,
        repository: str,
        tag: str,
        error: RegistryError,
        ours: str,
        original: Manifest | None,
        retried: bool = False,
        write_pending: bool = False,
    ) -> None:
        """After a failed write or delete: look where the tag points and act on what is there.

        Returns when the tag is gone (the delete happened after all, e.g. its answer was lost);
        otherwise raises ``error`` (amended to say where the tag points) or a RegistryConflict.
        ``ours`` is the manifest this delete pointed the tag at; ``original`` what it pointed at
        before (None: the tag was dangling). ``write_pending``: the write of ``ours`` under the tag
        went unanswered, so the registry may still carry it out after this read."""
        where = f"{repository}:{tag}"
        # Said whenever the tag is reported as this delete found it: nothing can stop a write the
        # registry received and has not carried out yet, so the user learns where it would leave it.
        if write_pending and original is not None:
            late = (
                f"; the registry did not answer the re-tag and may still carry it out: "
                f"the tag would then point at {ours}, a copy of {original.digest} with one extra "
                f"annotation {DELETE_NONCE_ANNOTATION}{self._late_advice()}"
            )
        elif write_pending:
            late = (
                f"; the registry did not answer the repair and may still carry it out: the tag "
                f"would then point at {ours}, an empty placeholder manifest{self._late_advice()}"
            )
        else:
            late = ""
        try:
            current, gone = await self._again(lambda: self._where(repository, tag))
        except RegistryError as check_error:
            raise _amend(
                error,
                f"; where tag {where} points now could not be checked ({check_error.message}): it may "
                f"point at {ours}, a copy payloadtags wrote to delete it"
                f"{late or self._advice(error.unanswered)}",
            ) from error
        if gone and write_pending:
            # Gone (another delete took it), but our write is still out there: success now could be
            # followed by the tag coming back, so the user hears both.
            raise _amend(error, f"; tag {where} is gone now{late}") from error
        if gone:
            return
        if current is None:
            # The registry removed our copy's revision and failed before untagging (2.8's 500
            # "invalid checksum digest format" under concurrent writes): finish the delete.
            if original is None:
                raise _amend(
                    error, f"; tag {where} is still dangling{late or self._advice(error.unanswered)}"
                ) from error
            try:
                await self._repair_dangling(repository, tag)
            except RegistryConflict as moved:
                raise moved from error  # the registry failed the delete first (metrics.outcome_of)
            except RegistryError as repair_error:
                raise _amend(
                    error,
                    f"; tag {where} was left dangling (it names a manifest the registry no longer "
                    f"has) and repairing it failed ({repair_error.message})"
                    f"{late or self._advice(error.unanswered)}",
                ) from error
            return
        if current == ours and not retried:
            # Our copy is in place: delete it once more before putting anything back. Finishing the
            # delete that was asked for writes nothing over the tag, where a restore could revert a
            # push landing between its read and its write (or bring back a tag deleted meanwhile).
            try:
                await self._delete_manifest(repository, ours)
            except RegistryError as again:
                await self._settle(repository, tag, again, ours, original, retried=True)
            return
        if current == ours:
            if original is None:
                raise _amend(
                    error,
                    f"; tag {where} now points at {ours}, an empty placeholder manifest payloadtags "
                    f"wrote to repair it (it was dangling){self._advice(error.unanswered)}",
                ) from error
            # Our copy is in place and the delete did not happen. Put the tag back: conditional on
            # the read just above, which showed our copy, not someone's push.
            restore_at = self._reactor.seconds()
            restore_error: RegistryError | None = None
            try:
                await self._put_manifest(
                    repository, tag, original.content, original.media_type, f"restoring tag {where}", RESTORE
                )
            except RegistryError as failed:
                restore_error = failed
            finally:
                self._window("restore", repository, tag, restore_at)
            now: str | None = original.digest if restore_error is None else ours
            gone_now: bool | None = None  # None: not read again after the restore
            if restore_error is not None and restore_error.unanswered:
                # As for the re-tag: the registry may carry the restore out late, and then the tag
                # comes back, even after another delete took our copy. Wait for it, so that the answer
                # says where the tag is (a namespace removal then sees it there, and retries).
                now = await self._await_landing(repository, tag, original.digest, {None, ours}, ours)
            elif restore_error is not None:
                # A restore that failed with an answer may have been carried out all the same (the
                # registry wrote the tag, then its answer failed on the way back): the tag says where
                # it is, where the failure alone would have the error name our copy wrongly.
                try:
                    now, gone_now = await self._again(lambda: self._where(repository, tag))
                except RegistryError as check_error:
                    raise _amend(
                        error,
                        f"; the tag could not be restored ({restore_error.message}), and where tag "
                        f"{where} points now could not be checked ({check_error.message}): it may point "
                        f"at {ours}, a copy payloadtags wrote to delete it; retry the delete",
                        pending=False,
                    ) from error
            # Our copy was read under the tag: the write that failed has landed. What may still land
            # is the restore, when it went unanswered and was not seen to land.
            if now == original.digest:
                raise _amend(
                    error, f"; tag {where} was left as it was, on {original.digest}", pending=False
                ) from error
            assert restore_error is not None
            if now == ours:
                now_at = (
                    f"now points at {ours}, a copy of {original.digest} with one extra annotation "
                    f"{DELETE_NONCE_ANNOTATION}"
                )
            elif now is not None:
                now_at = f"now points at {now}"
            elif gone_now is None:
                now_at = "was last read as gone"
            else:
                now_at = "is gone now" if gone_now else "is still listed but names no manifest"
            pending = (
                f"; the registry did not answer the restore and may still carry it out: the tag "
                f"would then point at {original.digest} again{self._late_advice()}"
                if restore_error.unanswered
                else ""
            )
            raise _amend(
                error,
                f"; the tag could not be restored ({restore_error.message}) and {now_at}{pending}",
                pending=restore_error.unanswered,
            ) from error
        if original is not None and current == original.digest:
            raise _amend(error, f"; tag {where} was left as it was, on {original.digest}{late}") from error
        conflict = RegistryConflict(
            f"registry {self._name}: tag {where} now points at {current}, pushed while it was being "
            f"deleted (it pointed at {original.digest if original is not None else 'nothing'}); the "
            f"delete failed ({error.message}) and the tag was left as the push made it{late}",
            current=current,
        )
        # Our write may still land over the push: a deletecollection must answer that as the 504 it
        # does for any pending write, not a 503 whose repeat could answer 200 before it lands.
        conflict.unanswered = write_pending
        raise conflict from error

    async def _settle_tag_delete(
        self, repository: str, tag: str, error: RegistryError, original: Manifest | None
    ) -> None:
        """After a delete by tag that failed with a 5xx or went unanswered: the registry may have
        deleted the tag all the same. Returns when it did (the tag is gone); otherwise raises
        ``error`` saying where the tag is, or a RegistryConflict for a push that moved it."""
        where = f"{repository}:{tag}"
        before = original.digest if original is not None else None
        late = ""
        if error.unanswered:
            # The registry may still carry the delete out: give it the time a late re-tag gets.
            await self._await_landing(repository, tag, None, {before}, before)
            late = (
                "; the registry did not answer the delete and may still carry it out: "
                f"the tag would then be gone{self._late_advice()}"
            )
        try:
            current, gone = await self._again(lambda: self._where(repository, tag))
        except RegistryError as check_error:
            advice = late or ": get the tag to see, or retry the delete"
            raise _amend(
                error, f"; whether tag {where} is gone could not be checked ({check_error.message}){advice}"
            ) from error
        if gone:
            return
        if current == before:
            state = f"left as it was, on {before}" if before is not None else "still dangling"
            raise _amend(error, f"; tag {where} was {state}{late}") from error
        if current is None:
            raise _amend(
                error, f"; tag {where} is still listed but names no manifest{late or '; retry the delete'}"
            ) from error
        conflict = RegistryConflict(
            f"registry {self._name}: tag {where} now points at {current}, pushed while it was being "
            f"deleted (it pointed at {before or 'nothing'}); the delete failed ({error.message}) and the "
            f"tag was left as the push made it{late}",
            current=current,
        )
        # The delete may still land and take the push's tag with it: pending, as in `_settle`.
        conflict.unanswered = error.unanswered
        raise conflict from error

    async def _repair_dangling(self, repository: str, tag: str) -> None:
        """Point a dangling tag at a fresh placeholder manifest and delete that by digest."""
        where = f"{repository}:{tag}"
        what = f"repairing dangling tag {where}"
        empty = await self._again(lambda: self._ensure_blob(repository, EMPTY_JSON, what))
        descriptor = {"mediaType": EMPTY_MEDIA_TYPE, "digest": empty, "size": len(EMPTY_JSON)}
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor,
            "layers": [descriptor],
            "annotations": {REPAIR_ANNOTATION: os.urandom(16).hex()},
        }
        body = json.dumps(document, separators=(",", ":")).encode()
        fresh = compute_digest(body)
        assert fresh is not None
        # Conditional, as every write here: right before it, the tag must still point at nothing.
        read_at = self._reactor.seconds()
        current = await self._again(lambda: self._current(repository, tag))
        if current is not None:
            raise RegistryConflict(
                f"registry {self._name}: tag {where} was dangling and now points at {current}, pushed "
                "meanwhile; the delete was abandoned and the tag left as the push made it",
                current=current,
            )
        await self._put_then_delete("repair", repository, tag, body, OCI_MANIFEST, fresh, None, read_at, what)

    async def _ensure_blob(self, repository: str, data: bytes, what: str) -> str:
        """Upload a small blob into the repository unless it is there; its digest."""
        digest = compute_digest(data)
        assert digest is not None
        path = f"/v2/{repository}/blobs/{digest}"
        reply = await self._call("HEAD", path, scope=self._push(repository))
        if reply.status == 200:
            return digest
        if reply.status != 404:
            raise self._error(reply, what)
        started = await self._call("POST", f"/v2/{repository}/blobs/uploads/", scope=self._push(repository))
        location = started.header("Location")
        if started.status != 202 or not location:
            raise self._error(started, what)
        target = urllib.parse.urljoin(started.url, location)
        if not self._ours(target):
            # Its origin only: the rest is the registry's text, which may echo the request (r2redact F4).
            raise self._protocol(
                started, f"{what}: the upload location points elsewhere: {_origin_text(target)}"
            )
        target = self._as_written(target)
        separator = "&" if "?" in target else "?"
        done = await self._call(
            "PUT",
            f"{target}{separator}digest={urllib.parse.quote(digest)}",
            scope=self._push(repository),
            headers={"Content-Type": "application/octet-stream"},
            body=data,
        )
        if done.status not in (201, 204):
            raise self._error(done, what)
        return digest

    async def _put_manifest(
        self, repository: str, reference: str, body: bytes, media_type: str, what: str, kind: Kind
    ) -> str:
        # Out from here until answered (`late_writes`): a removal of the namespace meanwhile does not
        # report it empty, even when whoever sent it stops waiting (a budget spent, a client gone).
        namespace = namespace_of(repository)
        # What it would leave landing late (``reference`` is the tag), and what that is (``kind``: our
        # own copy or placeholder, or a restore of the client's content): a call that waited for it
        # deletes the tag only there, and only ours (`LateWrites.leaves`, `LateWrites.watch`).
        digest = compute_digest(digested(body, media_type))
        assert digest is not None
        late = LATE_WRITE_GRACE * self._settings.timeout
        # Unanswered, it may land for `late` after its request ends: what a user is told while it is
        # out. Not a time from now: its request may wait for a slot or a token first, unbounded.
        number = self._late_writes.sent(
            namespace,
            what,
            (repository, reference, digest),
            after=late,
            timeout=self._settings.timeout,
            kind=kind,
        )
        grace: float | None = None  # answered, or never sent (a caller's check said stop)
        try:
            return await self._put_manifest_once(repository, reference, body, media_type, what)
        except BaseException as error:
            grace = _may_land(error, late)
            raise
        finally:
            self._late_writes.ended(namespace, number, grace)
            if grace is not None and repository in self._late_puts:
                self._late_puts[repository] = True

    async def _put_manifest_once(
        self, repository: str, reference: str, body: bytes, media_type: str, what: str
    ) -> str:
        reply = await self._call(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scope=self._push(repository),
            headers={"Content-Type": media_type},
            body=body,
        )
        if reply.status not in (200, 201, 202, 204):
            if (
                media_type == schema1.SIGNED_SCHEMA1
                and reply.status == 500
                and reply.error_codes() == ["UNKNOWN"]
            ):
                # What distribution answers with schema 1 pushes disabled (its log alone says "manifest
                # schema v1 unsupported"; the answer has no other sign of it): no retry helps, the
                # registry's configuration has to change. Nothing was written.
                raise RegistrySchema1Disabled(
                    f"registry {self._name} takes no pushes of Docker schema 1 manifests (it answered "
                    f"HTTP 500 UNKNOWN, as distribution does with compatibility.schema1.enabled false, "
                    f"its default): {what} is not possible, as it pushes a signed copy of the tag's "
                    "schema 1 manifest; it can be deleted only with compatibility.schema1.enabled: true "
                    "(ask the registry's administrator)"
                )
            raise self._error(reply, what)
        computed = compute_digest(digested(body, media_type))
        assert computed is not None
        stored = reply.header("Docker-Content-Digest")
        if stored and stored != computed:
            raise self._protocol(reply, f"{what}: the registry stored {self._shown(stored)}, not {computed}")
        return computed

    # --- requests ---------------------------------------------------------------------------------

    @staticmethod
    def _pull(repository: str) -> str:
        return f"repository:{repository}:pull"

    @staticmethod
    def _push(repository: str) -> str:
        return f"repository:{repository}:pull,push"

    @staticmethod
    def _delete(repository: str) -> str:
        return f"repository:{repository}:delete"

    async def _call(
        self,
        method: str,
        path_or_url: str,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        max_body: int = JSON_LIMIT,
        redirects: bool = False,
        on_send: Callable[[], object] | None = None,
        gated: bool = True,
    ) -> _Reply:
        """One registry request, authenticated as the registry demands: at most one 401 round.

        A write of a repository whose turn a mutation with checks holds (`_gated`) runs them once its
        connection slot is held, right before it goes out, on each attempt (unless not ``gated``: a
        request of no mutation, `check_delete`)."""
        url = path_or_url if "://" in path_or_url else self._base + path_or_url
        ready = self._ready(method, url, scope) if gated else None
        if ready is not None and ready.before is not None:
            # The token first, where the registry is known to want one: then only the request's own
            # round trip follows the confirmation, not a token service's too.
            sent = await self._auth.ahead(scope)
        else:
            sent = self._auth.authorization(scope)
        reply = await self._exchange(
            method, url, headers, body, sent, max_body, redirects, on_send, ready=ready
        )
        if reply.status != 401 or self._elsewhere(reply):
            # Only the registry's own challenge gets credentials: a 401 from where a redirect led
            # (a storage backend) names a realm of that host's choosing (docs/registry.md).
            return reply
        authorization = await self._auth.answer(reply.header("WWW-Authenticate"), scope, sent)
        # Checked again: the token's round trip came after the first attempt's checks. The refused
        # attempt was told answered (`WriteHooks.sent`): the waits for the token, a confirmation's
        # turn and a slot may be cut short by the caller (a budget spent), with nothing out.
        reply = await self._exchange(
            method, url, headers, body, authorization, max_body, redirects, ready=ready
        )
        if reply.status == 401 and not self._elsewhere(reply):
            raise self._auth.rejected(reply.header("WWW-Authenticate"))
        return reply

    def _ready(self, method: str, url: str, scope: str) -> WriteHooks | None:
        """The checks a request must pass right before it leaves: for a write of a repository whose
        turn a mutation with checks holds; the confirmation (``before``) and ``sent`` only where a manifest
        or tag changes, not for a blob upload or the probe (a delete of a digest that does not exist):
        those change no tag, so a caller that stops waiting after them (a budget spent while a later
        write waits for a confirmation's turn) loses nothing."""
        if method in ("GET", "HEAD") or not scope.startswith("repository:"):
            return None
        gate = self._gates.get(scope.split(":")[1])
        if gate is None:
            return None
        if "/manifests/" not in url or _PROBE_DIGEST in url:
            return WriteHooks(check=gate.check)
        return gate

    async def _get_token(self, request: TokenRequest) -> TokenAnswer:
        separator = "&" if "?" in request.realm else "?"
        url = request.realm + separator + urllib.parse.urlencode(request.params)
        # Its path through `_shown`: the registry's text, which may echo a password too short for the
        # net (review r3redact L1); its query never (the echo of a proxy that writes the request there).
        realm = _origin_text(request.realm) + self._shown(_path(request.realm))
        service = f"the token service {realm} of registry {self._name}"
        try:
            reply = await self._exchange(
                "GET", url, None, None, request.authorization, JSON_LIMIT, True, peer=service
            )
        except RegistryError as error:
            # The registry request that wanted the token has not gone out: nothing of it can land late.
            error.unanswered = False
            raise
        if reply.status in (401, 403):
            raise (
                self._auth.rejected()
                if request.authorization
                else RegistryAuthFailed(
                    f"the token service {realm} of registry {self._name} refused anonymous access; "
                    "configure registry credentials"
                )
            )
        if reply.status != 200:
            raise self._token_error(reply, service)
        document = self._json(reply, f"the token from {realm}")
        token = document.get("token") or document.get("access_token")
        if not isinstance(token, str) or not token:
            raise self._protocol(reply, f"the token service {realm} answered without a token")
        return TokenAnswer(token=token, expires_in=document.get("expires_in"))

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        body: bytes | None,
        authorization: str | None,
        max_body: int,
        redirects: bool,
        on_send: Callable[[], object] | None = None,
        *,
        peer: str | None = None,
        ready: WriteHooks | None = None,
    ) -> _Reply:
        """One HTTP request and its body within settings.timeout, or a RegistryError.

        A caller that cancels gets CancelledError, whatever the request then fails with: the failure
        alone does not tell (a request cancelled while HostnameEndpoint resolves the host name fails
        with DNSLookupError, as if the name did not resolve), so the cancellation is noted as it
        comes in. ``on_send`` runs once a connection slot is held, just before the request goes out.
        ``peer``: how errors name who was asked, when it is not the registry (its token service).
        ``ready``: the caller's checks (`_gated`), made once the slot is held: the last thing before the
        request leaves, its ``check`` made again on a new connection once it is ready (`_roundtrip`);
        raising sends nothing and releases the slot. A request with a confirmation
        first waits for a confirmation's turn (`_confirming`), then for its slot.
        """
        refused = unrequestable(url)
        if refused is not None:
            # A URL the registry named (a token realm, an upload location) that the Agent would refuse
            # from deep inside, an unexpected failure logged with a traceback and the whole URL, an
            # echo of the request's Authorization included; said as a malformed answer, once a period,
            # naming the server only (review r3redact F2). Nothing was sent.
            raise RegistryProtocolError(
                f"{self._server_of(url, peer)}: a URL the registry named cannot be requested ({refused})"
            )
        # The wait for a connection slot is not the registry's doing: the timeout starts once the
        # request can go out. The semaphore serves waiters in arrival order, so every request gets
        # its turn however many tag lists a big list has queued.
        confirming = ready is not None and ready.before is not None
        # Told to the caller (`Waiting`): the other confirmations' time (and the other requests'
        # holding every slot, one of which may wait for its confirmation), not the registry's.
        waiting = ready.waiting if ready is not None else None
        if waiting is not None:
            waiting(True)
        try:
            if confirming:
                # The confirmation's turn first, the slot after: never a slot held while waiting for it.
                await self._confirming.acquire()
            try:
                await self._slots.acquire()
            except BaseException:
                if confirming:
                    self._confirming.release()
                raise
        finally:
            if waiting is not None:
                waiting(False)
        out: Sent | None = None
        try:
            if ready is not None:
                try:
                    if ready.before is not None:
                        await ready.before()
                finally:
                    if confirming:
                        self._confirming.release()
                if ready.check is not None:
                    ready.check()
                out = ready.sent
                if out is not None:
                    out(True)  # from here it leaves (`WriteHooks.sent`)
            if on_send is not None:
                if self._reads_at_turn_end:
                    await self._turn_end()
                on_send()
            # From the check above to the request's leaving, no reactor turn on a kept connection; a
            # new one is checked again once it is ready (`OriginRequests.request`): its name resolved,
            # its TCP connection made and its TLS handshake done may take up to the timeout.
            reply = await self._timed_exchange(
                method,
                url,
                headers,
                body,
                authorization,
                max_body,
                redirects,
                peer,
                ready.check if ready is not None else None,
            )
        except CheckRefused as refusal:
            # Nothing went out: its outcome is known (`WriteHooks.sent`), and the caller gets what its
            # check raised, as from the check above.
            if out is not None:
                out(False)
            raise refusal.reason from None
        finally:
            self._slots.release()
        if out is not None and not _may_carry_out_later(reply):
            # Answered (a 401 included: nothing done, and its retry waits for a token and is checked
            # again before it leaves): no longer out. A gateway's 5xx is no answer of the registry's.
            out(False)
        return reply

    def _turn_end(self) -> Deferred[None]:
        """Fires at the end of this reactor turn: one delayed call for every read that waits for it
        in the turn (a list starts up to --registry-concurrency of them at once), in the order they
        asked. Cancelling it (no canceller) fails it with CancelledError and leaves the others."""
        waiting: Deferred[None] = Deferred()
        if self._turn_waiters is None:
            self._turn_waiters = []
            self._reactor.callLater(0, self._end_turn)
        self._turn_waiters.append(waiting)
        return waiting

    def _end_turn(self) -> None:
        waiters, self._turn_waiters = self._turn_waiters or [], None
        for waiting in waiters:
            if not waiting.called:
                waiting.callback(None)

    async def _timed_exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        body: bytes | None,
        authorization: str | None,
        max_body: int,
        redirects: bool,
        peer: str | None,
        check: Check | None = None,
    ) -> _Reply:
        # Only a read that follows redirects notes where they led (most requests follow none).
        followed = FollowedAgent(self._agent) if redirects else None
        counted = BodyBytes()
        attempt = self._roundtrip(
            method, url, headers, body, authorization, max_body, redirects, followed, counted, check
        )
        try:
            # An answer waiting in the socket when the deadline is due, unread because the reactor did
            # not poll, counts as in time: the deadline lets the reactor read, and reads on while each
            # turn brings more of the body (at most 64 KiB a turn), at most another timeout (`within`).
            return await within(
                self._reactor,
                self._settings.timeout,
                attempt,
                look_first=True,
                progress=lambda: counted.count,
            )
        except (CancelledError, CheckRefused):
            raise
        except DeadlineExpired as error:
            # After a redirect elsewhere (a storage backend), either server may have taken the time:
            # the registry for its redirect (or the reactor, stalled, to read it), then its storage.
            last = (followed.last or b"").decode("ascii", "replace") if followed is not None else ""
            if peer is None and last and not self._ours(last):
                who, them = f"registry {self._name} and its redirect to {_origin_text(last)}", "either"
            else:
                who, them = self._server_of(last or url, peer), "it"
            raise RegistryTimeout(
                f"{who} did not answer {method} {_path(url)} within {self._settings.timeout:g}s; "
                f"{them} may be overloaded, retry later"
            ) from error.__cause__
        except Exception as error:
            if isinstance(error, BodyTooLarge):
                raise RegistryProtocolError(
                    f"{peer or f'registry {self._name}'}: the answer to {method} {_path(url)} is larger "
                    f"than {error.limit} bytes, more than this client reads"
                ) from error
            if is_cancellation(error):
                raise CancelledError() from error
            if isinstance(error, RegistryError):
                raise
            raise self._transport_error(error, method, url, peer) from error

    async def _roundtrip(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        body: bytes | None,
        authorization: str | None,
        max_body: int,
        redirects: bool,
        followed: FollowedAgent | None,
        counted: BodyBytes,
        check: Check | None = None,
    ) -> _Reply:
        """One request and its answer. ``check``: a write's last check, made again on a new connection
        once it is ready, right before the request is written to it (`OriginRequests.request`); on the
        registry's own origin only, where every write goes (`_ensure_blob` refuses an upload location
        elsewhere, and one that writes the origin differently, ``HTTPS://…`` or with its default port,
        is written as the registry's URL writes it: `_as_written`). A write to the origin goes on a new
        https connection only once its TLS handshake is done, checked or not: one whose handshake fails
        is known not to have gone out."""
        request_headers: dict[bytes | str, list[bytes | str]] = {"User-Agent": ["payloadtags"]}
        for name, value in (headers or {}).items():
            request_headers[name] = [value]
        if authorization:
            request_headers["Authorization"] = [authorization]
        response: IResponse
        origin = self._origin
        # A DELETE goes with an empty body (Content-Length: 0). Twisted's connection pool sends a
        # request without a body once more by itself when its kept connection closes without an
        # answer; the first copy may still land, after this client was answered by the second, and
        # nothing would know it was out. With a body, the failure comes here: an unanswered DELETE,
        # noted as a write that may land late (`LateWrites`). Reads keep the pool's resend, and so
        # does the delete probe: its digest is no manifest's, so a second copy changes nothing.
        resent = method != "DELETE" or url.endswith(_PROBE_DIGEST)
        empty = None if resent else BytesProducer(b"")
        if (
            origin is not None
            and not redirects
            and url.startswith(origin.origin)
            and url[len(origin.origin) : len(origin.origin) + 1] == "/"
            and url.isascii()
        ):
            path = url[len(origin.origin) :].encode("ascii")
            producer = empty if body is None else BytesProducer(body)

            def send() -> Deferred[IResponse]:
                # A fresh one each time: the origin adds its Host header to it.
                fresh = Headers(cast("dict[str, list[str]]", request_headers))
                if check is None:
                    return origin.request(method.encode("ascii"), path, fresh, producer)
                return origin.request(method.encode("ascii"), path, fresh, producer, check=check)

            response = await _sent_again_if_never_sent(send, producer)
        elif body is None and url.isascii():
            # Reads go straight to the Agent: treq's URL and cookie handling cost more CPU than the
            # rest of a small tags/list exchange (its IDNA checks alone a tenth of a single-tag GET's
            # CPU, through the config blob), and a read needs neither.
            sent = Headers(cast("dict[str, list[str]]", request_headers))  # all str, as built above
            if followed is not None:
                response = await self._redirected(method, url, sent, followed)
            else:
                agent = self._agent
                response = await _sent_again_if_never_sent(
                    lambda: agent.request(method.encode("ascii"), url.encode("ascii"), sent, empty), empty
                )
        else:
            response = await self._http.request(
                method,
                url,
                headers=request_headers,
                data=body,
                allow_redirects=redirects,
                unbuffered=True,
            )
        answered_by = url
        if redirects and response.request is not None:
            answered_by = response.request.absoluteURI.decode("ascii", "replace")
        self._answered(answered_by)
        ok = 200 <= response.code < 300
        content = await read_body(
            response, max_body if ok else ERROR_BODY_LIMIT, truncate=not ok, counted=counted
        )
        return _Reply(method, url, response.code, response.headers, content, answered_by, self._name)

    def _answered(self, url: str) -> None:
        """Notes that ``url``'s origin answered (`_plain_answered`) if it is an http:// one: its status
        line and headers have come, whatever becomes of the body."""
        if len(self._plain_answered) < PLAIN_ANSWERED_KEPT:
            origin = _plain_origin(url)
            if origin is not None:
                self._plain_answered.add(origin)

    async def _redirected(
        self, method: str, url: str, headers: Headers, followed: FollowedAgent
    ) -> IResponse:
        """A read that follows redirects (storage backends like S3 answer blob reads with one), on the
        Agent too, through ``followed`` (on this client's Agent); the Authorization header is dropped
        when a redirect leads to another origin. A failure where a redirect led is said as that
        server's (`RegistryUnavailable.elsewhere`)."""
        try:
            response: IResponse = await CheckedRedirects(followed, REDIRECT_LIMIT).request(
                method.encode("ascii"), url.encode("ascii"), headers
            )
            return response
        except UnfollowableRedirect as error:
            # A configuration error of the registry (or its storage), met by every read it redirects:
            # one line a period, not a traceback per read.
            where = self._server_of((followed.last or b"").decode("ascii", "replace") or url)
            # Where the Location points: the registry's text.
            reason = self._shown(error.reason)
            said = self._unfollowable_said(error.reason)
            if said is not None:
                log.warn(
                    "{where} redirected a read {reason}, which this client cannot follow{more}",
                    where=where,
                    reason=reason,
                    more=said.more(),
                )
            raise RegistryProtocolError(
                f"{where} redirected {method} {_path(url)} {reason}, which this client cannot "
                "follow; check where the registry's storage redirects reads"
            ) from None
        except Exception as error:
            if isinstance(_underlying(error), InfiniteRedirection):
                # Every server answered at once, sending the read on: not one that is down (the
                # transport error's "check that it runs"), a loop in the registry's configuration.
                raise RegistryProtocolError(
                    f"registry {self._name} redirected {method} {_path(url)} in a loop: more than "
                    f"{REDIRECT_LIMIT} redirects without an answer; check where the registry's storage "
                    "redirects reads"
                ) from None
            target = (followed.last or b"").decode("ascii", "replace")
            if not target or target == url or is_cancellation(error):
                raise
            raise self._transport_error(error, method, target) from error

    # --- answers ----------------------------------------------------------------------------------

    def _server_of(self, url: str, peer: str | None = None) -> str:
        """The server a failure of a request to ``url`` is said of: the registry, or where it sent us."""
        if peer is not None:
            return peer
        if self._ours(url):
            return f"registry {self._name}"
        return f"registry {self._name} (via {_origin_text(url)})"

    def _transport_error(
        self, error: BaseException, method: str, url: str, peer: str | None = None
    ) -> RegistryError:
        where = self._server_of(url, peer)
        if isinstance(error, net_errors.DNSLookupError):
            reason = f"cannot resolve the host name ({_cause(error)})"
        else:
            reason = _cause(error)
        # Its text as raised, which may quote the header sent, and a password too short for the net
        # every message passes (`in_message`): this client's own redaction, short ones included,
        # before the caller's Status message and the log lines that quote it (review r2tbredact L1).
        reason = self._auth.redaction.redacted(reason)
        if isinstance(
            error,
            net_errors.ConnectError
            | net_errors.DNSLookupError
            | net_errors.ConnectionClosed
            | ResponseNeverReceived
            | ResponseFailed
            | RequestTransmissionFailed
            | OSError,
        ):
            # A write sent (maybe only in part) and the connection lost before the answer: maybe done
            # later. A read has nothing to carry out, and is simply retried.
            unanswered = method not in ("GET", "HEAD") and not isinstance(
                error, net_errors.ConnectError | net_errors.DNSLookupError
            )
            late = (
                f"; the connection closed after {method} {_path(url)} went out, so the registry may "
                "still carry it out"
                if unanswered
                else ""
            )
            # A TLS failure is an answer: the server runs and was reached, and the reason says what to fix.
            answered = isinstance(_underlying(error), SSL.Error)
            if _closed_unanswered(error):
                check = self._closed_advice(method, url, peer)
            elif _closed_partway(error):
                # It answered on this scheme: the server or what sits in front of it broke off.
                check = f"; {self._logs_advice(self._is_registry(url, peer))}"
            else:
                check = "" if answered else "; check that it runs and is reachable"
            unavailable = RegistryUnavailable(
                f"{where} is unavailable: {reason}{check}{late}",
                retry_after=DEFAULT_RETRY_AFTER,
            )
            unavailable.unanswered = unanswered
            unavailable.elsewhere = peer is not None or not self._ours(url)
            return unavailable
        # Its text as raised, which may quote the header sent: the log redacts what it writes (logs.py).
        log.failure("Unexpected failure talking to {where}", Failure(error), where=where)
        return RegistryProtocolError(f"{where}: unexpected failure: {reason}")

    def _is_registry(self, url: str, peer: str | None) -> bool:
        """Whether ``url`` is the registry's own, not a server it names (its token realm, where it
        redirects reads)."""
        return peer is None and self._ours(url)

    def _ours(self, url: str) -> bool:
        """Whether ``url`` is on the registry's origin (`_origin`): written as its URL writes it, or
        otherwise (its scheme's default port written or left out, the host in another case)."""
        return _origin(url) == self._base_origin

    def _as_written(self, url: str) -> str:
        """``url``, on the registry's origin (`_ours`), with that origin written as the registry's URL
        writes it: a request to it goes as every request to the registry goes (`_roundtrip`: a write on
        a new connection once its TLS handshake is done, and checked again then), with the same Host
        header. Unchanged where the registry's text is no URL a request can go to (`unrequestable`),
        which is refused as such."""
        written = _origin_written(url)
        if written == self._base_written or unrequestable(url) is not None:
            return url
        return self._base_written + url[len(written) :]

    def _logs_advice(self, ours: bool) -> str:
        """Where to look when a server took a request and dropped it: it runs and was reached.
        ``ours``: it is the registry's own (`_is_registry`)."""
        server = "the registry" if ours else "that server"
        return f"check {server}'s log and what sits in front of it (a proxy or load balancer)"

    def _closed_advice(self, method: str, url: str, peer: str | None) -> str:
        """What to check when ``url``'s server closed the connection without an answer: it runs and was
        reached, so not "check that it runs". On an http:// port that has never answered this client,
        maybe a port that serves HTTPS only, as the start-up probe says of one that answers 400
        (registry_diagnosis). Not once the port has answered plain HTTP (`_plain_answered`): then the
        server or what sits in front of it dropped the request (a crash, a restart, a proxy's backend
        gone). Nor for a write: the reads before it were answered on that URL."""
        ours = self._is_registry(url, peer)
        logs = self._logs_advice(ours)
        if (
            urllib.parse.urlsplit(url).scheme != "http"
            or method not in ("GET", "HEAD")
            or _plain_origin(url) in self._plain_answered
        ):
            return f"; {logs}"
        # For a server the registry names (its token realm, where it redirects reads), the URL is the
        # registry's configuration's, not --registry-url's.
        where = "in --registry-url" if ours else "in the registry's configuration"
        return (
            f"; if {port_said(url)} serves HTTPS only (such a port closes a plain-HTTP connection without "
            f"an answer), use {with_scheme(_origin_text(url), 'https')} {where}; otherwise {logs}"
        )

    def _error(self, reply: _Reply, what: str) -> RegistryError:
        """The RegistryError for an unexpected answer about ``what``."""
        errors = reply.errors()
        codes = [code for code, _ in errors]
        detail = self._detail(errors)
        status = reply.status
        if status in (401, 403, 404) and self._elsewhere(reply):
            # Where a redirect led (a storage backend) speaks neither for the registry's access rules
            # nor for what the registry holds: the registry sent us there, so its storage is failing.
            answered = "does not have it" if status == 404 else "refused access"
            return RegistryProtocolError(
                f"registry {self._name}: {what}: the redirect target {_origin_text(reply.answered_by)} "
                f"{answered} (HTTP {status}); check the registry's storage configuration"
            )
        if status == 404:
            code = codes[0] if codes else "NOT_FOUND"
            return RegistryNotFound(
                f"{what} not found in registry {self._name} ({self._shown(code)})", code=code
            )
        if status == 401:
            return self._auth.rejected(reply.header("WWW-Authenticate"))
        if status == 403:
            return RegistryAuthFailed(
                f"registry {self._name} denied {what}"
                + (f" ({detail})" if detail else "")
                + "; check the permissions of the configured registry account",
                denied=True,
            )
        if status == 405 and reply.method in ("PUT", "POST", "PATCH", "DELETE"):
            if "UNSUPPORTED" in codes:
                if reply.method == "DELETE":
                    return RegistryDeleteDisabled(
                        f"registry {self._name} does not allow deletes (storage.delete.enabled is "
                        f"false): {what} is not possible; ask the registry's administrator"
                    )
                return RegistryProtocolError(f"registry {self._name} does not support {what}")
            # distribution answers a bare 405 (no JSON error) for every write in maintenance mode.
            return RegistryReadOnly(
                f"registry {self._name} is read-only (maintenance, e.g. garbage collection): "
                f"{what} is not possible now, retry later",
                retry_after=_retry_after(reply.header("Retry-After"), 60),
            )
        if _may_carry_out_later(reply):
            # A write answered by a gateway in front of the registry (an ingress, a load balancer, a
            # sidecar whose upstream timeout is shorter than the registry's time to answer): the
            # registry may have the request still, and carry it out after this answer. Unanswered, as
            # a timeout is, so that a delete waits for it instead of reporting the tag as it found it.
            unanswered = RegistryUnavailable(
                f"registry {self._name} did not answer {what}: {_gateway_answer(status)}",
                retry_after=_retry_after(reply.header("Retry-After")),
            )
            unanswered.unanswered = True
            return unanswered
        if status in (501, 505):
            # Not implemented (the method, or the HTTP version): the registry, or whatever answers in
            # front of it, will answer the same to a retry, so not RegistryUnavailable (a 503 with
            # Retry-After, which client-go repeats ten times): a protocol error, which the API answers
            # as a failing dependency that retrying cannot fix, a 503 without Retry-After (a 500 would
            # say that payloadtags itself failed).
            version = "HTTP version" if status == 505 else "method"
            unsupported = RegistryProtocolError(
                f"registry {self._name} does not support {reply.method} (HTTP {status}, the {version} "
                f"is not implemented" + (f": {detail}" if detail else "") + f"): {what} is not "
                "possible; ask the registry's administrator"
            )
            unsupported.certain = True
            return unsupported
        if status == 429 or status >= 500:
            # Where a redirect led (a storage backend) failed, not the registry, which answered at once.
            elsewhere = self._elsewhere(reply)
            failed = RegistryUnavailable(
                f"{self._server_of(reply.answered_by) if elsewhere else f'registry {self._name}'} failed "
                f"{what} with HTTP {status}" + (f" ({detail})" if detail else "") + "; retry later",
                retry_after=_retry_after(reply.header("Retry-After")),
            )
            failed.elsewhere = elsewhere
            return failed
        return self._protocol(reply, f"{what}: unexpected HTTP {status}" + (f" ({detail})" if detail else ""))

    def _token_error(self, reply: _Reply, service: str) -> RegistryError:
        """The error for a token service's answer that is neither a token nor a refusal of our
        credentials. Never RegistryNotFound: its 404 (a realm with a wrong path) says nothing about
        the repository or tag the token was for."""
        detail = self._detail(reply.errors())
        said = f"{service} answered HTTP {reply.status}" + (f" ({detail})" if detail else "")
        if reply.status == 429 or reply.status >= 500:
            return RegistryUnavailable(
                f"{said}; retry later", retry_after=_retry_after(reply.header("Retry-After"))
            )
        return RegistryProtocolError(f"{said}, not a token; check the realm the registry's challenge names")

    def _detail(self, errors: list[tuple[str, str]]) -> str:
        """The (code, message) pairs of an error document as a message shows them (`_shown`)."""
        return self._shown("; ".join(f"{code}: {message}" if message else code for code, message in errors))

    def _shown(self, text: str) -> str:
        """A text the registry or its token service sent, as a message or a log line may hold it:
        without a credential this client sends, which a proxy may echo, and of bounded length
        (`Redaction.shown`)."""
        return self._auth.redaction.shown(text)

    def _elsewhere(self, reply: _Reply) -> bool:
        """Whether a redirect led the request away from the registry's origin."""
        return reply.answered_by != reply.url and not self._ours(reply.answered_by)

    def _protocol(self, reply: _Reply | None, message: str) -> RegistryProtocolError:
        return RegistryProtocolError(f"registry {self._name}: {message}")

    def _json(
        self, reply: _Reply, what: str, deep: bool = False, body: bytes | None = None
    ) -> dict[str, Any]:
        """The answer's JSON object (of ``body``, a part of the answer, when given). ``deep``: a
        document shown to users (a manifest), whose nesting is held to MAX_JSON_DEPTH; any document
        deeper than Python's recursion limit is refused."""
        text = reply.body if body is None else body
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        except RecursionError:
            raise self._too_deep(reply, what) from None
        if not isinstance(document, dict):
            raise self._protocol(reply, f"{what} is not a JSON object")
        if deep and nested_deeper_than(document, MAX_JSON_DEPTH, text):
            raise self._too_deep(reply, what)
        return document

    def _too_deep(self, reply: _Reply, what: str) -> RegistryProtocolError:
        return self._protocol(reply, f"{what} is JSON nested more than {MAX_JSON_DEPTH} levels deep")

    def _verified_digest(self, reply: _Reply, reference: str, what: str, content: bytes) -> str:
        """The manifest's digest: the registry's header, checked against ``content`` (the bytes the
        digest covers, `digested`), else computed."""
        header = reply.header("Docker-Content-Digest")
        expected = reference if is_digest_reference(reference) else None
        for claimed in (expected, header):
            if not claimed:
                continue
            if not is_valid_digest(claimed):
                raise self._protocol(reply, f"{what}: invalid digest {self._shown(claimed)!r}")
            actual = compute_digest(content, claimed.partition(":")[0])
            if actual is not None and actual != claimed:
                raise self._protocol(reply, f"{what}: content has digest {actual}, not {claimed}")
        digest = expected or header or compute_digest(content)
        assert digest is not None
        return digest

    def _next_link(self, reply: _Reply) -> str | None:
        """The next page's URL from a Link header, kept on the registry's own origin."""
        header = ", ".join(reply.header_values("Link"))
        match = _LINK_NEXT_RE.search(header)
        if match is None:
            return None
        link: str = match.group(1)
        try:
            target = urllib.parse.urljoin(reply.url, link)
            elsewhere = not self._ours(target)
        except ValueError:  # urllib's refusal of a malformed host, e.g. an unclosed "[" of IPv6
            raise self._protocol(reply, f"the next page link is not a URL: {self._shown(link)!r}") from None
        if elsewhere:
            # Its origin only: the path and query are the registry's text, which may echo the
            # request's Authorization (review r2redact F1).
            raise self._protocol(reply, f"the next page link points elsewhere: {_origin_text(target)}")
        if not requestable(target):
            # Not a URL a request can be sent to (the Agent's "Invalid URI"); said as a malformed
            # answer, without the link (review r2redact F5).
            raise self._protocol(reply, "the next page link has a space or control character")
        return self._as_written(target)

    def _check_repository(self, repository: str) -> None:
        if not is_valid_repository(repository):
            raise RegistryInvalidName(f"invalid repository name {repository!r}", code="NAME_INVALID")

    def _check_tag(self, tag: str) -> None:
        if not is_valid_tag(tag):
            raise RegistryInvalidName(f"invalid tag {tag!r}", code="TAG_INVALID")

    def _check_digest(self, digest: str) -> None:
        if not is_valid_digest(digest):
            raise RegistryInvalidName(f"invalid digest {digest!r}", code="DIGEST_INVALID")

    def _check_reference(self, reference: str) -> None:
        if is_digest_reference(reference):
            self._check_digest(reference)
        else:
            self._check_tag(reference)


def _amend(error: RegistryError, more: str, pending: bool | None = None) -> RegistryError:
    """The same error (class and attributes such as retry_after) with ``more`` added to its message;
    ``pending``, when given, says whether a write of ours may still land (``unanswered``), once the
    tag has shown that the one that failed has."""
    amended = copy.copy(error)
    # Redacted, not cut: the advice comes last, and a cut keeps the start (review r3redact F1). Each
    # registry text in it was cut where it was quoted, and an error nests at most a few others.
    amended.message = in_message(error.message + more, limit=None)
    amended.args = (amended.message,)
    if pending is not None:
        amended.unanswered = pending
    return amended


def _may_carry_out_later(reply: _Reply) -> bool:
    """Whether the registry may still carry out a write so answered: a gateway's 5xx to a `PUT` or a
    `DELETE` (`_from_gateway`), given while the registry may still have the request."""
    return reply.status >= 500 and reply.method in ("PUT", "DELETE") and _from_gateway(reply)


def _from_gateway(reply: _Reply) -> bool:
    """Whether a 5xx may be a gateway's answer, given while the registry still had the request: 502
    and 504 always (distribution answers neither itself), and any other without the registry's own
    JSON error document (distribution's 500 and its 503 UNAVAILABLE carry one: real answers). Never
    501 or 505: a server that does not implement the method or the HTTP version carried nothing out,
    whoever says so."""
    if reply.status in (501, 505):
        return False
    return reply.status in (502, 504) or not reply.has_error_document()


def _gateway_answer(status: int) -> str:
    """What a gateway's ``status`` to a write tells, and what it does not."""
    if status == 504:
        return (
            "HTTP 504 came from a gateway in front of it, which stopped waiting for the registry's "
            "answer; the registry may still carry the request out"
        )
    return (
        f"HTTP {status} came without the registry's own error document, as a gateway in front of it "
        "answers when it cannot reach the registry or loses it on the way; whether the registry got "
        "the request is not known, and it may still carry it out"
    )


def _origin(url: str) -> tuple[str, str, str, int | str | None]:
    """What a URL's origin is compared by (RFC 3986 6.2.2.1 and 6.2.3): its scheme and host in lower
    case, a host outside ASCII in its IDNA form (as --registry-url's is taken), and its port, the
    scheme's default where none is written. So ``https://Reg.example:443`` and ``https://reg.example``
    are one origin: a registry builds the URLs it names (an upload location) from the request's Host
    header, which leaves a default port out, or a proxy in front of it writes one in. Another port,
    host or scheme is another origin, and so is a URL with user information (compared as written); a
    port that is no number is compared as written, never taken for a default one. ValueError for what
    `urlsplit` refuses (an unclosed "[")."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if not host.isascii():
        with contextlib.suppress(UnicodeError):  # no IDNA form: compared as written, as no ASCII name
            host = host.encode("idna").decode("ascii")
    try:
        port: int | str | None = parts.port
    except ValueError:
        port = parts.netloc.rpartition(":")[2]
    if port is None:
        port = DEFAULT_PORTS.get(parts.scheme)
    return parts.scheme, parts.netloc.rpartition("@")[0], host, port


# A URL's scheme and authority as written (RFC 3986 3): what `RegistryClient._as_written` replaces.
_WRITTEN_ORIGIN_RE = re.compile(r"[^:/?#]*://[^/?#]*")


def _origin_written(url: str) -> str:
    """``scheme://authority`` as ``url`` writes it: a prefix of it ("" for a URL without "//")."""
    match = _WRITTEN_ORIGIN_RE.match(url)
    return match.group() if match is not None else ""


def _plain_origin(url: str) -> str | None:
    """``http://host[:port]`` of an http:// URL (None for another scheme), the host in lower case and
    port 80 left out, as `_origin` compares them: one find, as every answer asks it (`urlsplit` of a
    URL not in its cache took about 10 µs, issue #11's figures)."""
    if not url.startswith("http://"):
        return None
    end = url.find("/", 7)
    origin = (url if end < 0 else url[:end]).lower()
    return origin.removesuffix(":80")


def _origin_text(url: str) -> str:
    """scheme://host[:port] of a URL, without any user information it holds."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _path(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.path


def _tag_after(tag: str, last: str) -> bool:
    """Whether ``tag`` comes after ``last`` in the order tags are paged in: lexical, which the
    distribution spec also describes as case-insensitive; either is taken."""
    return tag > last or tag.casefold() > last.casefold()


def _path_and_query(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _query_value(url: str, name: str) -> str | None:
    """The last value of ``name`` in the URL's query; None when it has none."""
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query, keep_blank_values=True).get(name)
    return values[-1] if values else None


__all__ = [
    "ACCEPT_MANIFESTS",
    "DELETE_NONCE_ANNOTATION",
    "REPAIR_ANNOTATION",
    "RegistryClient",
    "RegistrySettings",
]


_TEXT = frozenset((str,))


# distribution's answer to tags/list (Go's JSON encoder: compact, a newline after it): the repository's
# name (any JSON string without an escape), then the tags. `_plain_tags` reads what is between the
# tags' first and last quote.
_PLAIN_HEAD = re.compile(rb'\{"name":"[\x20\x21\x23-\x5b\x5d-\x7e]*","tags":\["')
_PLAIN_TAILS = (b'"]}\n', b'"]}')
# The bytes of the tag grammar's characters (docs/registry.md, "Tags"), and the quotes and commas
# between the tags.
_TAG_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
_PLAIN_BYTES = _TAG_BYTES + b'",'


def _plain_tags(body: bytes) -> TagList | None:
    """The tags of a ``tags/list`` answer whose tags need no JSON escape (distribution's, of tags in its
    grammar), as ``_sorted_once(_nameable(json.loads(body)["tags"]))`` would answer them, without a
    str per tag made by json.loads and kept (issue #11): each tag is a str only while the list is
    sorted. None for any other answer (another layout or spacing, an escape, a byte outside the
    grammar, an empty tag, a tag twice): json.loads reads it as before."""
    head = _PLAIN_HEAD.match(body)
    if head is None:
        return None
    for tail in _PLAIN_TAILS:
        if body.endswith(tail):
            array = body[head.end() : len(body) - len(tail)]
            break
    else:
        return None
    # In C, a byte at a time: only the grammar's bytes, and every quote and comma in a '","' between
    # two tags, so the array is exactly ["tag","tag",...] and the tags are what json.loads makes.
    if not array or array.translate(None, _PLAIN_BYTES):
        return None
    tags = array.decode("ascii").split('","')
    between = len(tags) - 1
    if array.count(b'"') != 2 * between or array.count(b",") != between:
        return None
    tags.sort()
    # Sorted, an empty tag comes first (`_nameable` leaves it out, and says so), and a tag twice is
    # next to itself (`_sorted_once` keeps it once): both are json.loads' path.
    if not tags[0] or _repeats(tags):
        return None
    return TagList(tags, plain=True)


def _sorted_once(tags: list[str]) -> TagList:
    """``sorted(set(tags))``. A list rarely holds a tag twice (pages that overlap could): duplicates
    are looked for next to each other in the sorted list, which costs a fraction of a set."""
    ordered = sorted(tags)
    if _repeats(ordered):
        return TagList(sorted(set(ordered)))
    return TagList(ordered)


def _repeats(ordered: list[str]) -> bool:
    """Whether sorted tags hold a tag twice: next to itself, looked for in one C-level pass."""
    return any(map(operator.eq, ordered, itertools.islice(ordered, 1, None)))


def _step_below(n: int) -> int:
    """The catalog page size to ask after ``n`` was refused (``n`` > 1)."""
    return max(step for step in CATALOG_PAGE_STEPS if step < n)


def _refused_page_size(reply: _Reply) -> bool:
    """A catalog page refused for its ``n`` (distribution's ``catalog.maxentries`` below it)."""
    return reply.status == 400 and "PAGINATION_NUMBER_INVALID" in reply.error_codes()
