"""An in-process Kubernetes API server double, served over HTTPS on 127.0.0.1 from the test's reactor.

It speaks the API server's JSON conventions (paths, verbs, Status errors, list pagination, watch
streams with bookmarks and 410 Expired) for a handful of resources, authenticates callers by client
certificate (issued by its own test CA) or bearer token, and gives tests controls to break things:
cut watch streams, forget history, go down and come back up on the same port.
"""

from __future__ import annotations

import base64
import datetime
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    ITCPTransport,
)
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from tests.support.kubeapi import resources, statuses
from tests.support.kubeapi.kubeconfig import write_kubeconfig
from tests.support.kubeapi.resources import NAMESPACES, TOKENREVIEWS, ResourceType
from tests.support.kubeapi.selectors import FieldSelector, LabelSelector, SelectorError
from tests.support.kubeapi.statuses import ApiError
from tests.support.kubeapi.store import Event, Obj, ObjectStore
from tests.support.listening import stop_listening, tcp_port
from tests.support.pki import Authority, Issued

AUTHENTICATED = "system:authenticated"
ANONYMOUS_PATHS = ("/version", "/healthz", "/livez", "/readyz")
API_AUDIENCE = "https://kubernetes.default.svc"


@attrs.frozen
class User:
    """An authenticated caller (``system:authenticated`` is added to every one)."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, list[str]] = attrs.field(factory=dict, hash=False)

    def as_json(self) -> Obj:
        return {"username": self.name, "uid": self.uid, "groups": list(self.groups), "extra": self.extra}


@attrs.frozen
class RequestInfo:
    """What a request asks for, in the terms of RBAC."""

    verb: str
    resource: ResourceType
    namespace: str | None
    name: str | None


@attrs.define
class RequestRecord:
    """One request the double received, for assertions."""

    method: str
    path: str
    query: dict[str, str]
    user: str | None = None
    verb: str | None = None
    code: int | None = None


APF_REJECTION = "Too many requests, please try again later."


@attrs.define
class _Injection:
    code: int
    reason: str
    message: str
    method: str | None
    path: str | None
    times: int
    exact: bool = False
    retry_after: int | None = None
    text: bool = False

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.path is None:
            return True
        return path == self.path if self.exact else path.startswith(self.path)


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _issued_by(ca: x509.Certificate, cert: x509.Certificate) -> bool:
    """Whether `cert` is a currently valid client certificate signed by `ca`."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if not cert.not_valid_before_utc <= datetime.datetime.now(datetime.UTC) <= cert.not_valid_after_utc:
        return False
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ExtendedKeyUsageOID.CLIENT_AUTH in usages


def _header(request: Request, name: str) -> str:
    value = request.getHeader(name.encode())
    return value.decode("latin-1") if value else ""


def _list_item(obj: Obj) -> Obj:
    # A real API server leaves kind/apiVersion out of the items of a typed list.
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


@implementer(IOpenSSLServerConnectionCreator)
class _ServerTLS:
    def __init__(self, serving: Issued) -> None:
        # Built from cryptography objects: handing pyOpenSSL X509/PKey objects to OpenSSL is
        # deprecated and fails under -W error.
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.use_certificate(serving.cert)
        ctx.use_privatekey(serving.key)
        # Ask for a client certificate but accept any (or none) at the TLS layer and check it when
        # authenticating, as the Go API server does: a bad certificate gives 401, not a failed handshake.
        ctx.set_verify(SSL.VERIFY_PEER, lambda *_: True)
        self._ctx = ctx

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._ctx, None)


class _Root(Resource):
    isLeaf = True

    def __init__(self, double: KubeApiDouble) -> None:
        super().__init__()
        self._double = double

    def render(self, request: Request) -> bytes | int:
        return self._double._handle(request)


class KubeApiDouble:
    """The test double. Create it in a test or fixture, `start` it, `stop` it at the end.

    `store` holds the state and can be used directly to arrange it. `requests` records every
    request. `authorizer`, when set, decides (user, RequestInfo) -> allowed; default allows all.

    Bookmarks (every `bookmark_interval` on a watch that allows them, and one at its timeout) follow
    kube-apiserver's watch cache: a bookmark carries where the cache of the watched resource stands,
    and is sent only once that is past the watch's start (a plain watch gets none at its start's own
    version: only a watch-list stream, sendInitialEvents, which the double refuses). The cache moves
    with its own resource's changes only, or with etcd's progress notifications, which come every 10
    minutes by default: so by default a watch of a resource that does not change gets no bookmark at
    all, however much else changes. `progress_notify` (True) stands for a progress notification
    before every bookmark (etcd with a short ``--experimental-watch-progress-notify-interval``):
    bookmarks then carry the store's resourceVersion, which moves with every resource's changes.

    `page_sizes`, when set, says how many items each list page with a limit serves (given the
    limit): kube-apiserver may serve fewer than the limit, even none, with a continue token for the
    rest. Unset, every page but the last is full.
    """

    def __init__(
        self,
        reactor: Any,
        directory: Path,
        *,
        tls: bool = True,
        bookmark_interval: float = 60.0,
        progress_notify: bool = False,
        default_watch_timeout: float = 1800.0,
        history_limit: int = 1000,
    ) -> None:
        self.reactor = reactor
        self.tls = tls
        self.bookmark_interval = bookmark_interval
        self.progress_notify = progress_notify
        self.default_watch_timeout = default_watch_timeout
        # The CA, the serving certificate and issued client certificates are written to `directory`.
        self.ca = Authority.create(Path(directory), "kubeapi-double")
        self.ca_pem = self.ca.cert_file.read_bytes()
        self._server_cert = self.ca.server(("127.0.0.1", "localhost"), stem="kubeapi-double-serving")
        self._issued = itertools.count()
        self.store = ObjectStore(reactor, history_limit)
        self.tokens: dict[str, User] = {}
        self._token_audiences: dict[str, tuple[str, ...]] = {}
        self.authorizer: Callable[[User, RequestInfo], bool] | None = None
        self.requests: list[RequestRecord] = []
        self.internal_errors: list[Failure] = []
        self._injections: list[_Injection] = []
        self.page_sizes: Callable[[int], int] | None = None
        # With ``hold_token_reviews``, each TokenReview is held unanswered, by its token in the order
        # they came, until `answer_token_review` (or its client leaves).
        self.hold_token_reviews = False
        self.held_token_reviews: dict[str, Callable[[], None]] = {}
        self.most_token_reviews_held = 0  # the most held at once
        self._watches: set[_Watch] = set()
        self._watches_held = False
        self._connections = WrappingFactory(self._transport_factory())
        self._port: IListeningPort | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1 (`port` 0: any free port; `port` keeps it for `come_up`)."""
        self._port = self.reactor.listenTCP(port, self._connections, interface="127.0.0.1")
        self.port = tcp_port(self._port)

    async def stop(self) -> None:
        await self.go_down()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._port is not None

    def go_down(self) -> Deferred[None]:
        """Stop listening and drop every connection: clients now get connection refused."""
        self.cut_watches()
        for wrapper in list(self._connections.protocols):
            ITCPTransport(wrapper.transport).abortConnection()
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        return Deferred.fromCoroutine(stop_listening(port))

    def come_up(self) -> None:
        """Listen again on the same port, with the same state."""
        if self._port is None:
            self.start(self.port)

    # -- test controls -----------------------------------------------------------------------

    def cut_watches(self) -> int:
        """Drop every open watch connection abruptly, mid-stream; returns how many were cut."""
        watches = list(self._watches)
        for watch in watches:
            watch.cut()
        return len(watches)

    def mute_watches(self, *, from_now_on: bool = False) -> int:
        """Make every open watch go silent without closing it (no event, no bookmark), as a
        half-open connection looks to the client; returns how many. New watches are not muted, unless
        ``from_now_on``: a path that answers every watch, then holds it (a proxy that buffers or
        hangs, a stuck server)."""
        self._watches_held = self._watches_held or from_now_on
        watches = list(self._watches)
        for watch in watches:
            watch.muted = True
        return len(watches)

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    def cache_rv(self, resource: ResourceType) -> int:
        """Where kube-apiserver's watch cache of `resource` stands: what its bookmarks carry."""
        if self.progress_notify:
            return self.store.resource_version
        return self.store.last_rv_of(resource)

    def compact(self) -> None:
        """Forget the event history: older resourceVersions now get 410 Expired."""
        self.store.compact()

    def finalize_namespace(self, name: str) -> None:
        """Remove a (Terminating) namespace and everything in it, as the namespace controller would."""
        self.store.finalize_namespace(name)

    def add_token(
        self,
        token: str,
        username: str,
        groups: tuple[str, ...] = (),
        *,
        uid: str = "",
        extra: dict[str, list[str]] | None = None,
        audiences: tuple[str, ...] = (API_AUDIENCE,),
    ) -> User:
        """Accept `token` as `username`, for callers and in TokenReview. A TokenReview accepts it only
        for a requested audience among `audiences` (no audience requested: the API server's own)."""
        user = User(username, (*groups, AUTHENTICATED), uid, extra or {})
        self.tokens[token] = user
        self._token_audiences[token] = audiences
        return user

    def issue_client_cert(self, username: str, groups: tuple[str, ...] = ()) -> Issued:
        """A client certificate from the double's CA: user = CN, groups = O values."""
        return self.ca.client(username, groups, stem=f"kubeapi-client-{next(self._issued)}")

    def inject_error(
        self,
        code: int,
        reason: str = "InternalError",
        message: str = "injected failure",
        *,
        method: str | None = None,
        path: str | None = None,
        times: int = 1,
        exact: bool = False,
        retry_after: int | None = None,
        text: bool | None = None,
    ) -> None:
        """Answer the next `times` authenticated requests matching `method` and `path` (a prefix,
        or with `exact` the whole path: a collection without its items) with this error instead of
        serving them.

        As kube-apiserver answers it: a 429 is API Priority and Fairness's (or max-in-flight's)
        rejection, plain text (`APF_REJECTION`, `reason` and `message` unused) with ``Retry-After``
        (`retry_after`, 1 s unless given); any other code a JSON Status, with ``Retry-After`` and
        its details' retryAfterSeconds when `retry_after` is given. `text` False: a 429 as a
        Status (kube-apiserver's own ``TooManyRequests`` errors, such as a storage that is
        initializing)."""
        text = code == 429 if text is None else text
        if text and retry_after is None:
            retry_after = 1
        self._injections.append(
            _Injection(code, reason, message, method, path, times, exact, retry_after, text)
        )

    def clear_injected_errors(self) -> None:
        """Serve every request again: the errors `inject_error` has not used up are dropped."""
        self._injections.clear()

    def requests_for(
        self, path: str | None = None, *, method: str | None = None, verb: str | None = None
    ) -> list[RequestRecord]:
        """The recorded requests whose path starts with `path`, filtered by method and RBAC verb."""
        return [
            r
            for r in self.requests
            if (path is None or r.path.startswith(path))
            and (method is None or r.method == method)
            and (verb is None or r.verb == verb)
        ]

    def write_kubeconfig(
        self,
        path: Path,
        *,
        username: str = "admin",
        groups: tuple[str, ...] = ("system:masters",),
        auth: str = "cert",
        inline: bool = True,
    ) -> Path:
        """Write a kubeconfig for this server as `username`, with a client certificate
        (``auth="cert"``) or a bearer token (``auth="token"``); `inline` embeds the PEM data,
        otherwise the files are written beside the kubeconfig and referenced by relative paths."""
        if auth == "cert":
            return write_kubeconfig(
                path,
                self.url,
                self.ca_pem,
                client=self.issue_client_cert(username, groups),
                inline=inline,
            )
        if auth == "token":
            token = base64.urlsafe_b64encode(username.encode()).decode().rstrip("=") + ".token"
            self.add_token(token, username, groups)
            return write_kubeconfig(path, self.url, self.ca_pem, token=token, inline=inline)
        raise ValueError(f"auth must be 'cert' or 'token', not {auth!r}")

    # -- HTTP --------------------------------------------------------------------------------

    def _transport_factory(self) -> Any:
        site = Site(_Root(self))
        site.displayTracebacks = False
        if not self.tls:
            return site
        return TLSMemoryBIOFactory(_ServerTLS(self._server_cert), False, site)

    def _handle(self, request: Request) -> bytes | int:
        path = request.path.decode("latin-1")
        query = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
        method = request.method.decode()
        record = RequestRecord(method, path, query)
        self.requests.append(record)
        try:
            if path in ANONYMOUS_PATHS:
                return self._reply(request, record, 200, self._anonymous(path))
            user = self._authenticate(request)
            if user is None:
                raise statuses.unauthorized()
            record.user = user.name
            injection = self._injected(method, path)
            if injection is not None:
                return self._reply_injected(request, record, injection)
            discovery = self._discovery(path)
            if discovery is not None:
                if method != "GET":
                    raise statuses.method_not_allowed()
                return self._reply(request, record, 200, discovery)
            info, is_item = self._route(method, path, query)
            record.verb = info.verb
            self._authorize(user, info)
            return self._serve(request, record, info, is_item, query)
        except ApiError as e:
            return self._reply(request, record, e.code, e.status)
        except Exception as e:
            # A bug in the double: answer like the API server would, and keep it for the fixture's
            # teardown to report, so it cannot hide behind a client that retries.
            self.internal_errors.append(Failure())
            error = statuses.internal(repr(e))
            return self._reply(request, record, error.code, error.status)

    def _reply(self, request: Request, record: RequestRecord, code: int, body: Obj) -> bytes:
        record.code = code
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        return _compact(body)

    def _anonymous(self, path: str) -> Obj:
        if path == "/version":
            return {
                "major": "1",
                "minor": "32",
                "gitVersion": "v1.32.0-kubeapi-double",
                "platform": "linux/amd64",
            }
        return {"status": "ok"}

    def _authenticate(self, request: Request) -> User | None:
        if self.tls:
            get_cert = getattr(request.channel.transport, "getPeerCertificate", None)
            peer = get_cert() if get_cert is not None else None
            if peer is not None:
                cert = peer.to_cryptography()
                if _issued_by(self.ca.cert, cert):
                    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
                    if cn:
                        groups = tuple(str(o.value) for o in orgs)
                        return User(str(cn[0].value), (*groups, AUTHENTICATED))
        header = _header(request, "authorization")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer":
                return self.tokens.get(token.strip())
        return None

    def _injected(self, method: str, path: str) -> _Injection | None:
        """The injected error this request gets, if any (one of its `times` used up)."""
        for injection in self._injections:
            if injection.matches(method, path):
                injection.times -= 1
                if injection.times <= 0:
                    self._injections.remove(injection)
                return injection
        return None

    def _reply_injected(self, request: Request, record: RequestRecord, injection: _Injection) -> bytes:
        if injection.retry_after is not None:
            request.setHeader(b"Retry-After", str(injection.retry_after).encode())
        if injection.text:
            # Go's http.Error, as APF's tooManyRequests and max-in-flight call it.
            record.code = injection.code
            request.setResponseCode(injection.code)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.setHeader(b"X-Content-Type-Options", b"nosniff")
            return (APF_REJECTION if injection.code == 429 else injection.message).encode() + b"\n"
        details = None if injection.retry_after is None else {"retryAfterSeconds": injection.retry_after}
        body = statuses.status(injection.code, injection.reason, injection.message, details)
        return self._reply(request, record, injection.code, body)

    def _authorize(self, user: User, info: RequestInfo) -> None:
        if self.authorizer is None or "system:masters" in user.groups or self.authorizer(user, info):
            return
        r = info.resource
        name = info.name or ""
        subject = f'{r.qualified} "{name}" is forbidden' if name else f"{r.qualified} is forbidden"
        scope = f'in the namespace "{info.namespace}"' if info.namespace else "at the cluster scope"
        message = (
            f'{subject}: User "{user.name}" cannot {info.verb} resource "{r.plural}" '
            f'in API group "{r.group}" {scope}'
        )
        raise statuses.forbidden(r, name, message)

    def _discovery(self, path: str) -> Obj | None:
        parts = [p for p in path.split("/") if p]
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if parts == ["apis"]:
            groups = sorted({r.group for r in resources.ALL if r.group})
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": g,
                        "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                        "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"},
                    }
                    for g in groups
                ],
            }
        if parts == ["api", "v1"] or (len(parts) == 3 and parts[0] == "apis"):
            group, version = ("", "v1") if parts[0] == "api" else (parts[1], parts[2])
            found = [r for r in resources.ALL if (r.group, r.version) == (group, version)]
            if not found:
                return None
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": found[0].api_version,
                "resources": [
                    {
                        "name": r.plural,
                        "singularName": r.kind.lower(),
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": sorted(r.verbs),
                    }
                    for r in found
                ],
            }
        return None

    def _route(self, method: str, path: str, query: dict[str, str]) -> tuple[RequestInfo, bool]:
        parts = [unquote(p) for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise statuses.path_not_found()
        namespace = None
        if len(rest) in (3, 4) and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if len(rest) not in (1, 2):
            raise statuses.path_not_found()
        resource = resources.lookup(group, version, rest[0])
        if resource is None or (namespace is not None and not resource.namespaced):
            raise statuses.path_not_found()
        name = rest[1] if len(rest) == 2 else None
        if name is not None and resource.namespaced and namespace is None:
            raise statuses.path_not_found()
        watching = query.get("watch") in ("true", "1")
        verb = {
            ("GET", False): "watch" if watching else "list",
            ("GET", True): "watch" if watching else "get",
            ("POST", False): "create",
            ("PUT", True): "update",
            ("PATCH", True): "patch",
            ("DELETE", True): "delete",
            ("DELETE", False): "deletecollection",
        }.get((method, name is not None))
        if verb is None or verb not in resource.verbs:
            raise statuses.method_not_allowed()
        if verb == "create" and resource.namespaced and namespace is None:
            raise statuses.method_not_allowed()
        return RequestInfo(verb, resource, namespace, name), name is not None

    def _serve(
        self, request: Request, record: RequestRecord, info: RequestInfo, is_item: bool, query: dict[str, str]
    ) -> bytes | int:
        r, ns, name = info.resource, info.namespace, info.name
        dry_run = query.get("dryRun") == "All"
        if info.verb == "get":
            return self._reply(request, record, 200, self.store.get(r, name or "", ns))
        if info.verb == "list":
            return self._reply(request, record, 200, self._list(info, query))
        if info.verb == "watch":
            return self._watch(request, record, info, query)
        if info.verb == "create":
            body = self._body(request)
            if r is TOKENREVIEWS:
                if self.hold_token_reviews:
                    return self._hold_token_review(request, record, self._token_review(body))
                return self._reply(request, record, 201, self._token_review(body))
            dry_run = dry_run or body.get("dryRun") == ["All"]
            return self._reply(request, record, 201, self.store.create(r, body, ns, dry_run=dry_run))
        if info.verb == "update":
            return self._reply(request, record, 200, self.store.update(r, self._body(request), name, ns))
        if info.verb == "patch":
            content_type = _header(request, "content-type").split(";")[0].strip()
            if content_type not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                # Strategic merge is treated as a plain merge patch: enough for the objects here.
                raise statuses.unsupported_media_type(content_type)
            return self._reply(request, record, 200, self.store.patch(r, name or "", self._body(request), ns))
        if info.verb == "delete":
            options = self._body(request, optional=True)
            dry_run = dry_run or options.get("dryRun") == ["All"]
            obj, _gone = self.store.delete(
                r, name or "", ns, preconditions=options.get("preconditions"), dry_run=dry_run
            )
            if r is NAMESPACES:
                return self._reply(request, record, 200, obj)
            details = {"name": name, "group": r.group, "kind": r.plural, "uid": obj["metadata"].get("uid")}
            if not r.group:
                del details["group"]
            body = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }
            return self._reply(request, record, 200, body)
        raise statuses.method_not_allowed()

    def _body(self, request: Request, *, optional: bool = False) -> Obj:
        raw = request.content.read() if request.content is not None else b""
        if not raw.strip():
            if optional:
                return {}
            raise statuses.bad_request("the request body is empty")
        content_type = (_header(request, "content-type") or "application/json").split(";")[0].strip()
        if not content_type.endswith("json"):
            raise statuses.unsupported_media_type(content_type)
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise statuses.bad_request(f"the body of the request is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise statuses.bad_request("the body of the request is not a JSON object")
        return body

    def _selectors(self, query: dict[str, str], name: str | None) -> tuple[LabelSelector, FieldSelector]:
        try:
            labels = LabelSelector.parse(query.get("labelSelector"))
            fields_text = query.get("fieldSelector") or ""
            if name is not None:
                fields_text = ",".join(filter(None, (fields_text, f"metadata.name={name}")))
            fields = FieldSelector.parse(fields_text)
        except SelectorError as e:
            raise statuses.bad_request(str(e)) from e
        return labels, fields

    def _list(self, info: RequestInfo, query: dict[str, str]) -> Obj:
        labels, fields = self._selectors(query, None)
        rv_text = query.get("resourceVersion", "")
        match = query.get("resourceVersionMatch", "")
        token = query.get("continue") or None
        if match and not rv_text:
            raise statuses.invalid_options(
                "ListOptions",
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            )
        if match and token:
            raise statuses.invalid_options(
                "ListOptions",
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden when continue is provided",
            )
        if match == "Exact" and rv_text == "0":
            raise statuses.invalid_options(
                "ListOptions",
                "resourceVersionMatch",
                'Forbidden: resourceVersionMatch "exact" is forbidden for resourceVersion "0"',
            )
        if match not in ("", "Exact", "NotOlderThan"):
            raise statuses.invalid_options(
                "ListOptions", "resourceVersionMatch", f'Unsupported value: "{match}"'
            )
        if query.get("sendInitialEvents"):
            raise statuses.invalid_options(
                "ListOptions", "sendInitialEvents", "Forbidden: sendInitialEvents is forbidden for list"
            )
        rv = self._parse_rv(rv_text)
        if rv is not None and rv > self.store.resource_version:
            raise statuses.too_large(rv, self.store.resource_version)
        try:
            limit = int(query.get("limit") or 0)
        except ValueError as e:
            raise statuses.bad_request(f"invalid limit: {e}") from e
        result = self.store.list(
            info.resource,
            info.namespace,
            label_selector=labels,
            field_selector=fields,
            limit=limit or None,
            continue_token=token,
            exact_rv=rv if match == "Exact" else None,
            serve=self.page_sizes(limit) if limit and self.page_sizes is not None else None,
        )
        meta: Obj = {"resourceVersion": str(result.resource_version)}
        if result.continue_token:
            meta["continue"] = result.continue_token
            if not query.get("labelSelector") and not query.get("fieldSelector"):
                meta["remainingItemCount"] = result.remaining
        return {
            "kind": info.resource.kind + "List",
            "apiVersion": info.resource.api_version,
            "metadata": meta,
            "items": [_list_item(obj) for obj in result.items],
        }

    @staticmethod
    def _parse_rv(text: str) -> int | None:
        if text in ("", "0"):
            return None
        try:
            rv = int(text)
        except ValueError as e:
            raise statuses.bad_request(f"invalid resource version: {text}") from e
        if rv < 0:
            raise statuses.bad_request(f"invalid resource version: {text}")
        return rv

    def _watch(
        self, request: Request, record: RequestRecord, info: RequestInfo, query: dict[str, str]
    ) -> int:
        labels, fields = self._selectors(query, info.name)
        if query.get("sendInitialEvents"):
            # What the API server answers while the WatchList feature is off; clients fall back.
            raise statuses.invalid_options(
                "ListOptions",
                "sendInitialEvents",
                "Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate "
                "is enabled",
            )
        rv = self._parse_rv(query.get("resourceVersion", ""))
        try:
            timeout = (
                float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else self.default_watch_timeout
            )
        except ValueError as e:
            raise statuses.bad_request(f"invalid timeoutSeconds: {e}") from e
        if rv is not None and rv > self.store.resource_version:
            raise statuses.too_large(rv, self.store.resource_version)
        watch = _Watch(
            self,
            request,
            info,
            labels,
            fields,
            bookmarks=query.get("allowWatchBookmarks") in ("true", "1"),
            # A watch without a resourceVersion starts where the watch cache stands.
            start=rv if rv is not None else self.cache_rv(info.resource),
        )
        record.code = 200
        if rv is None:
            current = self.store.list(
                info.resource, info.namespace, label_selector=labels, field_selector=fields
            )
            initial = [("ADDED", obj) for obj in current.items]
            watch.open(initial, timeout)
            return NOT_DONE_YET
        try:
            events = self.store.events_since(info.resource, rv)
        except ApiError as e:
            watch.open([("ERROR", e.status)], timeout)
            watch.end(bookmark=False)
            return NOT_DONE_YET
        initial = [t for t in (watch.translate(e) for e in events) if t is not None]
        watch.open(initial, timeout)
        return NOT_DONE_YET

    def answer_token_review(self, token: str) -> None:
        """Answer the held TokenReview of ``token``."""
        self.held_token_reviews.pop(token)()

    def _hold_token_review(self, request: Request, record: RequestRecord, review: Obj) -> int:
        token = review["spec"]["token"]

        def answer() -> None:
            request.write(self._reply(request, record, 201, review))
            request.finish()

        self.held_token_reviews[token] = answer
        self.most_token_reviews_held = max(self.most_token_reviews_held, len(self.held_token_reviews))
        request.notifyFinish().addErrback(lambda _: self.held_token_reviews.pop(token, None))
        return NOT_DONE_YET

    def _token_review(self, body: Obj) -> Obj:
        spec = body.get("spec") or {}
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            raise statuses.invalid(TOKENREVIEWS, "", "spec.token", "FieldValueRequired", "Required value")
        user = self.tokens.get(token)
        requested = list(spec.get("audiences") or [API_AUDIENCE])
        accepted = [a for a in requested if a in self._token_audiences.get(token, ())]
        if user is None:
            status: Obj = {"user": {}, "error": "invalid bearer token"}
        elif not accepted:
            status = {"user": {}, "error": "token audiences is invalid for the target audiences"}
        else:
            status = {"authenticated": True, "user": user.as_json(), "audiences": accepted}
        return {
            "kind": "TokenReview",
            "apiVersion": TOKENREVIEWS.api_version,
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }


class _Watch:
    """One open watch response."""

    def __init__(
        self,
        double: KubeApiDouble,
        request: Request,
        info: RequestInfo,
        labels: LabelSelector,
        fields: FieldSelector,
        *,
        bookmarks: bool,
        start: int,
    ) -> None:
        self._double = double
        self._request = request
        self._resource = info.resource
        self._namespace = info.namespace
        self._labels = labels
        self._fields = fields
        self._bookmarks = bookmarks
        self._start = start
        self._timers: list[IDelayedCall] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._done = False
        self.muted = double._watches_held

    def open(self, initial: list[tuple[str, Obj]], timeout: float) -> None:
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        request.write(b"")  # send the headers now: the client's watch() returns on them
        self._double._watches.add(self)
        request.notifyFinish().addBoth(self._finished)
        for event_type, obj in initial:
            self._send(event_type, obj)
        if self._done:
            return
        self._unsubscribe = self._double.store.subscribe(self._on_event)
        reactor = self._double.reactor
        self._timers.append(reactor.callLater(timeout, self.end, bookmark=self._bookmarks))
        if self._bookmarks:
            self._timers.append(reactor.callLater(self._double.bookmark_interval, self._bookmark))

    def translate(self, event: Event) -> tuple[str, Obj] | None:
        """How `event` looks to this watch: objects entering or leaving the selection become
        ADDED or DELETED."""
        if event.resource != self._resource:
            return None
        now = self._selected(event.obj)
        if event.type == "ADDED":
            return ("ADDED", event.obj) if now else None
        if event.type == "DELETED":
            return ("DELETED", event.obj) if self._selected(event.prev or event.obj) else None
        before = event.prev is not None and self._selected(event.prev)
        if before and now:
            return ("MODIFIED", event.obj)
        if before:
            return ("DELETED", event.obj)
        if now:
            return ("ADDED", event.obj)
        return None

    def end(self, *, bookmark: bool) -> None:
        """End the stream cleanly (the chunked response is completed)."""
        if self._done:
            return
        if bookmark:
            self._bookmark(reschedule=False)
        self._cleanup()
        self._request.finish()

    def cut(self) -> None:
        """Drop the connection without completing the response."""
        if self._done:
            return
        self._cleanup()
        ITCPTransport(self._request.channel.transport).abortConnection()

    def _selected(self, obj: Obj) -> bool:
        if self._namespace is not None and (obj.get("metadata") or {}).get("namespace") != self._namespace:
            return False
        return ObjectStore.matches(obj, self._labels, self._fields)

    def _on_event(self, event: Event) -> None:
        translated = self.translate(event)
        if translated is not None:
            self._send(*translated)

    def _bookmark(self, *, reschedule: bool = True) -> None:
        # kube-apiserver's cacheWatcher.process: a plain watch (no sendInitialEvents) gets only what
        # is past its start (setBookmarkAfterResourceVersion(0) marks the start's bookmark as sent).
        rv = self._double.cache_rv(self._resource)
        if rv > self._start:
            obj = {
                "kind": self._resource.kind,
                "apiVersion": self._resource.api_version,
                "metadata": {"resourceVersion": str(rv)},
            }
            self._send("BOOKMARK", obj)
        if reschedule and not self._done:
            self._timers.append(
                self._double.reactor.callLater(self._double.bookmark_interval, self._bookmark)
            )

    def _send(self, event_type: str, obj: Obj) -> None:
        if not self._done and not self.muted:
            self._request.write(_compact({"type": event_type, "object": obj}) + b"\n")

    def _finished(self, _result: object) -> None:
        # The response completed or the client went away.
        self._cleanup()

    def _cleanup(self) -> None:
        if self._done:
            return
        self._done = True
        self._double._watches.discard(self)
        if self._unsubscribe is not None:
            self._unsubscribe()
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers.clear()
