"""Namespace list latency of payloadtags against a minimal direct registry client, in one run.

What it does (all on 127.0.0.1; everything it starts is stopped at the end, also on error or SIGTERM):

1. starts a real ``docker-registry`` (tests.support.registry_server) and fills it over its HTTP API:
   the namespace ``bench`` with 10 repositories of 3 tags each, and other namespaces ``a-team-…`` and
   ``z-team-…`` (half before, half after ``bench`` in catalog order) grown to 10, 1,000 and 5,000
   repositories of one tag each. Every repository mounts the same two blobs (cross-repository mount)
   and gets the same manifest, so a repository costs three small requests;
2. runs ``.venv/bin/payloadtags serve`` as a subprocess in front of that registry;
3. at each scale, interleaves N repetitions (rotating which goes first) of
     - payloadtags JSON:   GET …/namespaces/bench/payloadrepositorytags
     - payloadtags Table:  the same with the Accept header ``kubectl get`` sends
     - direct (the baseline): catalog seek with ``last=bench`` + tags/list of each repository
     - direct threads: the same requests with http.client and 16 threads
     - direct n=1000: the baseline with a first catalog page of 1,000 names (a what-if)
   checks that all of them see exactly the same 30 (repository, tag) pairs every time, and reads the
   server's peak RSS (VmHWM) and the CPU time of the server and the registry from /proc.

The baseline uses treq on Twisted with a persistent connection pool, 16 requests in flight and the
catalog pages payloadtags asks for a namespace (100 names first, then 4 times the last page, up to
1,000: ``CatalogCursor`` in src/payloadtags/inventory.py): the same HTTP library, pool policy,
concurrency and page sizes as payloadtags' own registry client. The ratio payloadtags/direct therefore
measures what payloadtags adds (the HTTPS hop with a client certificate, authentication, building and
rendering Kubernetes objects), not the difference between two HTTP stacks; the threads variant shows
what that stack itself costs.

With ``--index`` the server runs with ``--registry-events-token-file`` (the repository index): it fills
the index from the catalog once at start, and after each scale's push the script POSTs the pushed names
to ``/registry/events`` as push events, as the registry's notifications would.

Usage: .venv/bin/python bench/list_latency.py [--quick] [--reps N] [--scales 10,1000,5000] [--index]
       [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import treq
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# This tree's code, also where .venv is another tree's (a worktree's symlink): its editable install
# would import that tree's src.
sys.path.insert(0, str(ROOT / "src"))

from tests.support.harness import Pki  # noqa: E402
from tests.support.registry_server import RegistryServer, free_port  # noqa: E402

NAMESPACE = "bench"
NAMESPACE_REPOSITORIES = 10
NAMESPACE_TAGS = ("1.0.0", "1.1.0", "latest")
OTHER_TAG = "v1"
CONCURRENCY = 16  # payloadtags' default --registry-concurrency
CATALOG_PAGE = 1000  # payloadtags' Inventory.page_size
# payloadtags' CatalogCursor.first_page_size: a namespace's catalog read starts with 100 names, and each
# next page is 4 times the last, up to CATALOG_PAGE (src/payloadtags/inventory.py, `_next_size`).
FIRST_CATALOG_PAGE = 100


def catalog_page_size(first: int, pages: int) -> int:
    """The size of the catalog page a namespace's read asks for after ``pages`` pages, as payloadtags'
    CatalogCursor does."""
    growth: int = 4**pages  # typeshed types int ** int as Any (a negative power is a float)
    return min(CATALOG_PAGE, first * growth)


REQUEST_TIMEOUT = 30.0
GROUP_PATH = "/apis/payload-registry.deckhouse.io/v1alpha1"
LIST_PATH = f"{GROUP_PATH}/namespaces/{NAMESPACE}/payloadrepositorytags"
TABLE_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REGISTRY_HOST = "registry.bench.example"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Pairs = frozenset[tuple[str, str]]  # (repository path below the namespace, tag)


# --- filling the registry (blocking, in threads) -----------------------------------------------------


def _canonical(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def other_repositories(count: int) -> list[str]:
    """The first ``count`` other repositories: half in ``a-team-…`` (before ``bench``), half after it."""
    half = count // 2
    names: list[str] = []
    for prefix, n in (("a", count - half), ("z", half)):
        names.extend(f"{prefix}-team-{i // 10:04d}/svc-{i % 10}" for i in range(n))
    return names


class KeepAlive:
    """Blocking HTTP/1.1 to one host over kept-alive connections, one per calling thread."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        for attempt in range(2):
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=REQUEST_TIMEOUT)
                self._local.connection = connection
                with self._lock:
                    self._all.append(connection)
            try:
                connection.request(method, path, body=body, headers=headers or {})
                answer = connection.getresponse()
                return answer.status, answer.headers, answer.read()
            except (ConnectionError, http.client.HTTPException):
                connection.close()
                self._local.connection = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                connection.close()


class Filler:
    """Pushes repositories from a few threads; every repository mounts the first one's two blobs."""

    def __init__(self, registry_url: str, workers: int = 8) -> None:
        self._http = KeepAlive(registry_url)
        self._request = self._http.request
        self._workers = workers
        self.cancelled = threading.Event()
        self._source: str | None = None
        self._blobs: list[tuple[str, bytes]] = []
        self.manifest = b""

    def _expect(self, answer: tuple[int, Any, bytes], status: int, what: str) -> tuple[int, Any, bytes]:
        if answer[0] != status:
            raise RuntimeError(f"{what}: HTTP {answer[0]}: {answer[2][:300]!r}")
        return answer

    def _upload(self, repository: str, data: bytes) -> None:
        _, headers, _ = self._expect(
            self._request("POST", f"/v2/{repository}/blobs/uploads/"), 202, "start upload"
        )
        self._put_upload(headers["Location"], data)

    def _put_upload(self, location: str, data: bytes) -> None:
        target = urllib.parse.urlsplit(location)
        path = f"{target.path}?{target.query}&" if target.query else f"{target.path}?"
        path += "digest=" + urllib.parse.quote(_digest(data))
        self._expect(
            self._request("PUT", path, data, {"Content-Type": "application/octet-stream"}), 201, "upload"
        )

    def _mount(self, repository: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"mount": _digest(data), "from": self._source})
        status, headers, _ = self._request("POST", f"/v2/{repository}/blobs/uploads/?{query}")
        if status == 202:  # the registry declined the mount: push the bytes, still small
            self._put_upload(headers["Location"], data)
        elif status != 201:
            raise RuntimeError(f"mount into {repository}: HTTP {status}")

    def _push(self, repository: str, tags: Iterable[str]) -> None:
        if self.cancelled.is_set():
            return
        for _, data in self._blobs:
            self._mount(repository, data)
        for tag in tags:
            self._expect(
                self._request(
                    "PUT", f"/v2/{repository}/manifests/{tag}", self.manifest, {"Content-Type": OCI_MANIFEST}
                ),
                201,
                f"push {repository}:{tag}",
            )

    def seed(self, repository: str, tags: Iterable[str]) -> None:
        """The first repository: uploads the two blobs every later repository mounts."""
        layer = b"payloadtags benchmark layer\n" * 4
        config = _canonical(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
                "config": {},
            }
        )
        self._blobs = [
            ("application/vnd.oci.image.config.v1+json", config),
            ("application/octet-stream", layer),
        ]
        descriptors = [{"mediaType": m, "digest": _digest(d), "size": len(d)} for m, d in self._blobs]
        self.manifest = _canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptors[0],
                "layers": descriptors[1:],
            }
        )
        for _, data in self._blobs:
            self._upload(repository, data)
        self._source = repository
        self._push(repository, tags)

    def push_all(self, repositories: list[tuple[str, tuple[str, ...]]]) -> None:
        with ThreadPoolExecutor(self._workers) as pool:
            for _ in pool.map(lambda item: self._push(*item), repositories):
                pass
        if self.cancelled.is_set():
            raise RuntimeError("filling the registry was cancelled")

    def close(self) -> None:
        self._http.close()


# --- HTTP clients on the reactor -------------------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
class _ClientTLS:
    """TLS with a client certificate, built from files (pyOpenSSL 26 warns about X509/PKey objects).

    The chain is verified against the benchmark's own CA; the peer is the server this script started
    on 127.0.0.1, so no host name check is made.
    """

    def __init__(self, ca_file: str, cert_file: str, key_file: str) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.load_verify_locations(ca_file)
        context.use_certificate_chain_file(cert_file)
        context.use_privatekey_file(key_file)
        context.set_verify(SSL.VERIFY_PEER)
        self._context = context

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        return connection


@implementer(IPolicyForHTTPS)
class _Policy:
    def __init__(self, creator: _ClientTLS) -> None:
        self._creator = creator

    def creatorForNetloc(self, hostname: bytes, port: int) -> _ClientTLS:
        return self._creator


def _pool(reactor: Any, size: int) -> HTTPConnectionPool:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = size
    return pool


async def _get(
    http: HTTPClient, reactor: Any, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    """GET with the whole exchange, body included, bounded by REQUEST_TIMEOUT."""
    attempt = http.get(url, headers=Headers({k: [v] for k, v in (headers or {}).items()}))
    attempt.addTimeout(REQUEST_TIMEOUT, reactor)
    response = await attempt
    body = treq.content(response)
    body.addTimeout(REQUEST_TIMEOUT, reactor)
    return response.code, response.headers, await body


class PayloadTags:
    """The load generator's view of payloadtags: one kept-alive HTTPS connection, like kube-apiserver's."""

    def __init__(self, reactor: Any, url: str, pki: Pki) -> None:
        self._reactor = reactor
        self._url = url
        self.pool = _pool(reactor, 1)
        creator = _ClientTLS(str(pki.server_ca.cert_file), str(pki.admin.cert_file), str(pki.admin.key_file))
        self._http = HTTPClient(Agent(reactor, contextFactory=_Policy(creator), pool=self.pool))

    async def list(self, table: bool) -> Pairs:
        headers = {"Accept": TABLE_ACCEPT} if table else {"Accept": "application/json"}
        code, _, body = await _get(self._http, self._reactor, self._url + LIST_PATH, headers)
        if code != 200:
            raise RuntimeError(f"payloadtags answered {code}: {body[:300]!r}")
        document = json.loads(body)
        if table:
            if document.get("kind") != "Table":
                raise RuntimeError(f"expected a Table, got {document.get('kind')}")
            return frozenset((row["cells"][1], row["cells"][2]) for row in document["rows"])
        return frozenset((item["spec"]["repositoryPath"], item["spec"]["tag"]) for item in document["items"])


def namespace_part(names: list[str], more: bool, prefix: str) -> tuple[list[str], str | None]:
    """The names of one catalog page under ``prefix`` (a namespace's repositories, which the catalog
    lists together), and the name to read the next page after; None once the namespace has ended."""
    inside = [name for name in names if name.startswith(prefix)]
    if len(inside) < len(names) or not more or not names:
        return inside, None
    return inside, names[-1]


class DirectClient:
    """The baseline: what any client must do to enumerate one namespace from the registry itself."""

    def __init__(self, reactor: Any, registry_url: str, concurrency: int = CONCURRENCY) -> None:
        self._reactor = reactor
        self._base = registry_url.rstrip("/")
        self.pool = _pool(reactor, concurrency)
        self._http = HTTPClient(Agent(reactor, pool=self.pool))
        self._concurrency = concurrency

    async def _json(self, path: str) -> tuple[dict[str, Any], bool]:
        """The JSON object at path, and whether a Link header points at a next page."""
        code, headers, body = await _get(self._http, self._reactor, self._base + path)
        if code != 200:
            raise RuntimeError(f"registry answered {code} to {path}: {body[:300]!r}")
        return json.loads(body), bool(headers.getRawHeaders("link"))

    async def catalog_page(self, last: str, n: int) -> tuple[list[str], bool]:
        query = urllib.parse.urlencode({"n": str(n), "last": last})
        document, more = await self._json(f"/v2/_catalog?{query}")
        return document.get("repositories") or [], more

    async def repositories(self, namespace: str, first_page: int = FIRST_CATALOG_PAGE) -> list[str]:
        prefix, last, found, pages = namespace + "/", namespace, [], 0
        while True:
            names, more = await self.catalog_page(last, catalog_page_size(first_page, pages))
            pages += 1
            inside, after = namespace_part(names, more, prefix)
            found.extend(inside)
            if after is None:
                return found
            last = after

    async def list(self, namespace: str = NAMESPACE, first_page: int = FIRST_CATALOG_PAGE) -> Pairs:
        repositories = await self.repositories(namespace, first_page)
        semaphore = DeferredSemaphore(self._concurrency)

        async def tags(repository: str) -> list[str]:
            document, _ = await self._json(f"/v2/{repository}/tags/list")
            return sorted(document.get("tags") or [])

        lists = await gatherResults(
            [semaphore.run(tags, r) for r in repositories],
            consumeErrors=True,
        )
        prefix = len(namespace) + 1
        return frozenset((r[prefix:], t) for r, ts in zip(repositories, lists, strict=True) for t in ts)


class DirectThreads:
    """A second baseline: the same requests with http.client, 16 threads, kept-alive connections.

    Lighter per request than treq; it shows how much of any gap is the HTTP stack, not payloadtags.
    """

    def __init__(self, registry_url: str, concurrency: int = CONCURRENCY) -> None:
        self._http = KeepAlive(registry_url)
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="direct")

    def _json(self, path: str) -> tuple[dict[str, Any], bool]:
        status, headers, body = self._http.request("GET", path)
        if status != 200:
            raise RuntimeError(f"registry answered {status} to {path}: {body[:300]!r}")
        return json.loads(body), bool(headers.get("Link"))

    def _tags(self, repository: str) -> list[str]:
        return sorted(self._json(f"/v2/{repository}/tags/list")[0].get("tags") or [])

    def list(self, namespace: str = NAMESPACE) -> Pairs:
        prefix, last, repositories, pages = namespace + "/", namespace, [], 0
        while True:
            query = urllib.parse.urlencode(
                {"n": str(catalog_page_size(FIRST_CATALOG_PAGE, pages)), "last": last}
            )
            pages += 1
            document, more = self._json(f"/v2/_catalog?{query}")
            inside, after = namespace_part(document.get("repositories") or [], more, prefix)
            repositories.extend(inside)
            if after is None:
                break
            last = after
        lists = self._executor.map(self._tags, repositories)
        return frozenset((r[len(prefix) :], t) for r, ts in zip(repositories, lists, strict=True) for t in ts)

    def close(self) -> None:
        self._executor.shutdown()
        self._http.close()


# --- measuring -------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a process in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all threads), from /proc; 10 ms resolution."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@attrs.define
class Samples:
    """Wall times of one variant, and the CPU that the calls cost each process."""

    wall: list[float] = attrs.Factory(list)
    cpu: dict[str, float] = attrs.Factory(lambda: {"server": 0.0, "registry": 0.0, "load generator": 0.0})


@attrs.frozen
class Measured:
    """One call: its wall time, the load generator's CPU, and the CPU it cost each process."""

    wall: float
    own_cpu: float
    cpu: dict[str, float]


async def measured(
    name: str, fn: Callable[[], Awaitable[Pairs]], expected: Pairs, pids: dict[str, int]
) -> Measured:
    before = {who: cpu_seconds(pid) for who, pid in pids.items()}
    own = time.process_time()
    started = time.perf_counter()
    pairs = await fn()
    elapsed = time.perf_counter() - started
    own = time.process_time() - own
    after = {who: cpu_seconds(pid) for who, pid in pids.items()}
    if pairs != expected:
        missing, extra = sorted(expected - pairs)[:5], sorted(pairs - expected)[:5]
        raise RuntimeError(
            f"{name} saw {len(pairs)} tags, expected {len(expected)}: missing {missing}, extra {extra}"
        )
    return Measured(elapsed, own, {who: after[who] - before[who] for who in pids})


async def timed(
    name: str, fn: Callable[[], Awaitable[Pairs]], expected: Pairs, pids: dict[str, int], into: Samples | None
) -> None:
    call = await measured(name, fn, expected, pids)
    if into is not None:
        into.wall.append(call.wall)
        into.cpu["load generator"] += call.own_cpu
        for who, seconds in call.cpu.items():
            into.cpu[who] += seconds


async def measure_scale(
    variants: dict[str, Callable[[], Awaitable[Pairs]]],
    expected: Pairs,
    pids: dict[str, int],
    reps: int,
    budget: float,
    min_reps: int = 5,
) -> dict[str, Samples]:
    for name, fn in variants.items():  # warm connections, caches and the registry's page cache
        for _ in range(2):
            await timed(name, fn, expected, pids, None)
    samples = {name: Samples() for name in variants}
    names = list(variants)
    started = time.monotonic()
    for i in range(reps):
        if i >= min_reps and time.monotonic() - started > budget:
            break
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate who goes first
            await timed(name, variants[name], expected, pids, samples[name])
    return samples


async def catalog_probe(direct: DirectClient, sizes: tuple[int, ...], reps: int) -> dict[int, float]:
    """Median time of one catalog page sought with last=<namespace>, per page size (diagnostic)."""
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for i in range(reps):
        for n in sizes[i % len(sizes) :] + sizes[: i % len(sizes)]:
            started = time.perf_counter()
            await direct.catalog_page(NAMESPACE, n)
            times[n].append(time.perf_counter() - started)
    return {n: statistics.median(v) for n, v in times.items()}


# --- the run ---------------------------------------------------------------------------------------


def wait_ready(
    url: str, ca_file: str, process: subprocess.Popen[bytes], log_file: Path, timeout: float = 30.0
) -> None:
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=ca_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
            raise RuntimeError(f"payloadtags exited with {process.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", context=context, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("payloadtags did not become ready")


# Used by --launch=settings: the same server code, configured without the command line (for a tree
# whose CLI is mid-edit). The arguments are the Settings fields, as JSON.
_SETTINGS_LAUNCHER = """
import json, sys
from payloadtags.registry import RegistrySettings
from payloadtags.server import serve
from payloadtags.settings import Settings
values = json.loads(sys.argv[1])
registry = RegistrySettings(**values.pop("registry"))
sys.exit(serve(Settings(registry=registry, **values)))
"""


EVENTS_TOKEN = "bench-events-token"


def wait_index_filled(process: subprocess.Popen[bytes], log_file: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "repository index refreshed" in log_file.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"payloadtags exited with {process.returncode}")
        time.sleep(0.05)
    raise RuntimeError("the repository index was not filled")


def post_push_events(url: str, ca_file: str, repositories: list[str], batch: int = 500) -> None:
    """What the registry's notifications would send for these pushes, in envelopes of ``batch``."""
    import ssl

    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=ca_file)
    connection = http.client.HTTPSConnection(parts.netloc, context=context, timeout=30)
    try:
        for lo in range(0, len(repositories), batch):
            events = [
                {"action": "push", "target": {"repository": r, "tag": OTHER_TAG, "mediaType": OCI_MANIFEST}}
                for r in repositories[lo : lo + batch]
            ]
            headers = {
                "Authorization": f"Bearer {EVENTS_TOKEN}",
                "Content-Type": "application/vnd.docker.distribution.events.v1+json",
            }
            connection.request("POST", "/registry/events", json.dumps({"events": events}), headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"/registry/events answered {answer.status}")
    finally:
        connection.close()


# Runs ``payloadtags`` under cProfile (CPU time, not wall time: on a busy machine wall time charges
# other processes' turns to whichever call the server was in); the stats are written at its end.
PROFILER = """
import cProfile, sys, time
out, sys.argv = sys.argv[1], ["payloadtags", *sys.argv[2:]]
from payloadtags.cli import main
profile = cProfile.Profile(time.process_time)
profile.enable()
try:
    main()
finally:
    profile.disable()
    profile.dump_stats(out)
"""


def server_environ(src: str | Path | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a bench's server runs in: ``src`` (another tree's ``src``, for a before/after),
    by default this tree's, as PYTHONPATH, so that the server runs this tree's code even where .venv is
    another tree's (a worktree's symlink, whose editable install points at that tree's src); and
    ``environ`` on top."""
    return {**os.environ, "PYTHONPATH": str(Path(src or ROOT / "src").resolve()), **(environ or {})}


def start_server(
    work: Path,
    pki: Pki,
    registry_url: str,
    launch: str = "cli",
    index: bool = False,
    extra_args: tuple[str, ...] = (),
    server_src: str | None = None,
    profile: Path | None = None,
    launcher: str = PROFILER,
    environ: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """This tree's server (its src first on PYTHONPATH: `server_environ`). ``server_src``: run another
    tree's server code (its src/ directory first on PYTHONPATH);
    ``profile``: run the server (``launch="cli"``) under cProfile, its stats written there at its end
    (or under another ``launcher``: Python code given that path, then the server's arguments);
    ``environ``: more environment variables for the server (``PYTHONMALLOC``, say)."""
    port = free_port()
    token_file = work / "events.token"
    if index:
        token_file.write_text(EVENTS_TOKEN + "\n")
    if launch == "cli":
        program = [sys.executable, "-c", launcher, str(profile.resolve())] if profile else []
        command = [
            *(program or [str(ROOT / ".venv" / "bin" / "payloadtags")]),
            "serve",
            *pki.standalone_args(port, registry_url),
            f"--registry-host={REGISTRY_HOST}",
            f"--registry-concurrency={CONCURRENCY}",
        ]
        if index:
            command.append(f"--registry-events-token-file={token_file}")
        command += extra_args
    else:
        values = {
            "registry": {"url": registry_url, "max_connections": CONCURRENCY},
            "registry_host": REGISTRY_HOST,
            "bind_address": "127.0.0.1",
            "secure_port": port,
            "tls_cert_file": str(pki.serving.cert_file),
            "tls_private_key_file": str(pki.serving.key_file),
            "client_ca_file": str(pki.client_ca.cert_file),
            "authorization_mode": "AlwaysAllow",
            "registry_concurrency": CONCURRENCY,
        }
        if index:
            values["registry_events_token_file"] = str(token_file)
        command = [str(ROOT / ".venv" / "bin" / "python"), "-c", _SETTINGS_LAUNCHER, json.dumps(values)]
    log = (work / "payloadtags.log").open("wb")
    try:
        env = server_environ(server_src, environ)
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=env
        )
    finally:
        log.close()
    return process, f"https://127.0.0.1:{port}"


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def run(
    reactor: Any,
    args: argparse.Namespace,
    registry: RegistryServer,
    work: Path,
    started_processes: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    assert registry.process is not None
    registry_pid = registry.process.pid
    filler = Filler(registry.url)
    reactor.addSystemEventTrigger("before", "shutdown", filler.cancelled.set)
    results: dict[str, Any] = {"scales": [], "setup_seconds": {}}
    server: subprocess.Popen[bytes] | None = None
    clients: list[Any] = []
    try:
        started = time.monotonic()
        namespace_repos = [f"{NAMESPACE}/app-{i:02d}" for i in range(NAMESPACE_REPOSITORIES)]
        await deferToThread(filler.seed, namespace_repos[0], NAMESPACE_TAGS)
        await deferToThread(filler.push_all, [(r, NAMESPACE_TAGS) for r in namespace_repos[1:]])
        expected = frozenset((r.split("/", 1)[1], t) for r in namespace_repos for t in NAMESPACE_TAGS)

        pki = await deferToThread(Pki.create, work / "pki")
        server, url = start_server(work, pki, registry.url, args.launch, args.index)
        started_processes.append(server)  # stopped by main() too, should the reactor stop first
        await deferToThread(wait_ready, url, str(pki.server_ca.cert_file), server, work / "payloadtags.log")
        if args.index:
            await deferToThread(wait_index_filled, server, work / "payloadtags.log")
        results["rss_kib_at_start"] = proc_status(server.pid)
        results["setup_seconds"]["namespace+server"] = time.monotonic() - started

        payloadtags = PayloadTags(reactor, url, pki)
        direct = DirectClient(reactor, registry.url)
        threads = DirectThreads(registry.url)
        clients = [payloadtags, direct, threads]
        variants = {
            "payloadtags json": lambda: payloadtags.list(table=False),
            "payloadtags table": lambda: payloadtags.list(table=True),
            "direct": direct.list,
            "direct threads": lambda: deferToThread(threads.list),
            # What-if: the treq baseline with a first catalog page of 1,000 names instead of the
            # server's 100 (the baseline before 8 Dec 2026).
            "direct n=1000": lambda: direct.list(first_page=CATALOG_PAGE),
        }
        pushed = 0
        for scale in args.scales:
            started = time.monotonic()
            names = other_repositories(scale)
            known = set(other_repositories(pushed))
            await deferToThread(filler.push_all, [(n, (OTHER_TAG,)) for n in names if n not in known])
            if args.index:
                new = [n for n in names if n not in known]
                await deferToThread(post_push_events, url, str(pki.server_ca.cert_file), new)
            pushed = scale
            fill_seconds = time.monotonic() - started
            print(f"# {scale} other repositories pushed in {fill_seconds:.1f}s; measuring", flush=True)
            pids = {"server": server.pid, "registry": registry_pid}
            samples = await measure_scale(variants, expected, pids, args.reps, args.budget)
            probe = await catalog_probe(direct, (10, 100, CATALOG_PAGE), 9 if args.quick else 15)
            results["scales"].append(
                {
                    "other_repositories": scale,
                    "fill_seconds": fill_seconds,
                    "samples": {name: attrs.asdict(v) for name, v in samples.items()},
                    "catalog_seek_median": probe,
                    "rss_kib": proc_status(server.pid),
                }
            )
            results["setup_seconds"][f"fill to {scale}"] = fill_seconds
    finally:
        for client in clients:
            if isinstance(client, DirectThreads):
                await deferToThread(client.close)
            else:
                await client.pool.closeCachedConnections()
        filler.close()
        if server is not None:
            await deferToThread(stop_process, server)
    return results


def run_reactor(main: Callable[[Any], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """Run ``main`` on the global reactor; Ctrl-C stops the reactor and the caller cleans up."""
    from twisted.internet import reactor

    outcome: list[Any] = []

    def done(result: Any) -> None:
        outcome.append(result)
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(main(reactor)).addBoth(done))
    reactor.run()
    if not outcome:
        raise KeyboardInterrupt
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    result: dict[str, Any] = outcome[0]
    return result


# --- the report ------------------------------------------------------------------------------------


VARIANTS = ("payloadtags json", "payloadtags table", "direct", "direct threads", "direct n=1000")


def summarize(results: dict[str, Any]) -> str:
    ms = 1000.0
    lines = [
        "Latency of one list of the 10-repository namespace (median / p90, ms):",
        "",
        "| other repos | reps | payloadtags JSON | payloadtags Table | direct (treq) | direct (threads) "
        "| what-if: direct, first page n=1000 | server VmHWM |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    med: dict[int, dict[str, float]] = {}
    p90: dict[int, dict[str, float]] = {}
    for scale in results["scales"]:
        n, s = scale["other_repositories"], scale["samples"]
        med[n] = {k: statistics.median(v["wall"]) for k, v in s.items()}
        p90[n] = {k: percentile(v["wall"], 0.9) for k, v in s.items()}
        cells = " | ".join(f"{med[n][k] * ms:.1f} / {p90[n][k] * ms:.1f}" for k in VARIANTS)
        reps = len(s["direct"]["wall"])
        lines.append(f"| {n:,} | {reps} | {cells} | {scale['rss_kib']['VmHWM'] / 1024:.1f} MiB |")
    lines += [
        "",
        "Ratios payloadtags / direct (median, p90; target <= 1.3 against the treq baseline):",
        "",
        "| other repos | JSON / treq | Table / treq | JSON / threads | Table / threads |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in med:
        ratios = [
            f"{med[n][pt] / med[n][d]:.2f}, {p90[n][pt] / p90[n][d]:.2f}"
            for d in ("direct", "direct threads")
            for pt in ("payloadtags json", "payloadtags table")
        ]
        lines.append(f"| {n:,} | " + " | ".join(ratios) + " |")
    scales = sorted(med)
    if len(scales) > 1:
        low, high = scales[0], scales[-1]
        lines += [
            "",
            f"Growth of the list from {low:,} to {high:,} other repositories (median; target <= 1.5x):",
        ]
        lines += [f"- {k}: {med[high][k] / med[low][k]:.2f}x" for k in VARIANTS]
    lines += [
        "",
        "CPU per list (ms; summed over the repetitions, /proc resolution 10 ms): the process that",
        "enumerates the registry (payloadtags server, or the load generator for the direct clients),",
        "and the registry:",
        "",
        "| other repos | payloadtags server | its registry | direct treq client | its registry "
        "| direct threads client | its registry |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scale in results["scales"]:
        s = scale["samples"]
        both = [s["payloadtags json"], s["payloadtags table"]]
        count = sum(len(v["wall"]) for v in both)
        cpu: list[float] = [
            sum(v["cpu"]["server"] for v in both) / count,
            sum(v["cpu"]["registry"] for v in both) / count,
        ]
        for k in ("direct", "direct threads"):
            cpu += [
                s[k]["cpu"]["load generator"] / len(s[k]["wall"]),
                s[k]["cpu"]["registry"] / len(s[k]["wall"]),
            ]
        lines.append(
            f"| {scale['other_repositories']:,} | " + " | ".join(f"{c * ms:.1f}" for c in cpu) + " |"
        )
    lines += ["", "One catalog page sought with last=bench, by page size n (median, ms, treq):"]
    for scale in results["scales"]:
        probe = ", ".join(f"n={n}: {t * ms:.1f}" for n, t in scale["catalog_seek_median"].items())
        lines.append(f"- {scale['other_repositories']:,} other repositories: {probe}")
    start = results["rss_kib_at_start"]
    setup = ", ".join(f"{k} {v:.1f}s" for k, v in results["setup_seconds"].items())
    lines += [
        "",
        f"Server RSS after start: {start['VmRSS'] / 1024:.1f} MiB",
        f"Setup: {setup}; total run {results['total_seconds']:.0f}s",
    ]
    return "\n".join(lines)


Run = Callable[
    [Any, RegistryServer, Path, list[subprocess.Popen[bytes]]], Coroutine[Any, Any, dict[str, Any]]
]


def run_with_registry(
    prefix: str, body: Run, registry_config: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Run ``body(reactor, registry, work dir, started processes)`` on a fresh registry (with
    ``registry_config`` merged into its configuration); stop everything it started, even on error.
    None when interrupted. The results also tell the load average at the start and at the end."""
    began = time.monotonic()
    load = _load()
    work = Path(tempfile.mkdtemp(prefix=prefix))
    started: list[subprocess.Popen[bytes]] = []
    try:
        with RegistryServer(extra_config=registry_config) as registry:
            try:
                results = run_reactor(lambda reactor: body(reactor, registry, work, started))
            finally:
                for process in started:
                    stop_process(process)
    except KeyboardInterrupt:
        print("interrupted; everything this run started is stopped", file=sys.stderr)
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["total_seconds"] = time.monotonic() - began
    results["machine"] = machine()
    results["load"] = f"{load} at start, {_load()} at end"
    return results


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def report(
    results: dict[str, Any] | None, summary: Callable[[dict[str, Any]], str], json_file: Path | None
) -> int:
    """Prints a run's summary and writes its raw results to ``json_file``; the exit status (130 when
    the run was interrupted)."""
    if results is None:
        return 130
    print(summary(results))
    if json_file:
        json_file.write_text(json.dumps(results, indent=1, default=str))
    return 0


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    system = f"{platform.system()} {platform.release()}"
    return f"{system}, {os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="10 and 1,000 other repositories, fewer repetitions"
    )
    parser.add_argument("--reps", type=int, help="repetitions per scale (default 40, quick 10)")
    parser.add_argument(
        "--budget", type=float, help="seconds of measuring per scale at most (default 60, quick 15)"
    )
    parser.add_argument(
        "--scales",
        type=lambda s: [int(x) for x in s.split(",")],
        help="other repositories, e.g. 10,1000,5000",
    )
    parser.add_argument(
        "--launch",
        choices=("cli", "settings"),
        default="cli",
        help="start the server with `payloadtags serve` flags (default) or from Settings directly",
    )
    parser.add_argument(
        "--index",
        action="store_true",
        help="run the server with the repository index (--registry-events-token-file)",
    )
    parser.add_argument("--json", type=Path, help="also write raw samples and results here")
    args = parser.parse_args(argv)
    args.reps = args.reps or (10 if args.quick else 40)
    args.budget = args.budget or (15.0 if args.quick else 60.0)
    args.scales = sorted(args.scales or ([10, 1000] if args.quick else [10, 1000, 5000]))
    if shutil.which("docker-registry") is None:
        print("docker-registry is not on PATH (apt-get install -y docker-registry)", file=sys.stderr)
        return 2
    if not (ROOT / ".venv" / "bin" / "payloadtags").exists():
        print(".venv/bin/payloadtags is missing (scripts/setup)", file=sys.stderr)
        return 2

    results = run_with_registry(
        "payloadtags-bench-",
        lambda reactor, registry, work, started: run(reactor, args, registry, work, started),
    )
    if results is None:
        return 130
    print()
    print(f"Machine: {results['machine']}")
    print(summarize(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
