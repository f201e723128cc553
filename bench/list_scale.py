"""Lists of 1,000 to 100,000 tags: payloadtags against a minimal direct registry client, in one run.

What it does (all on 127.0.0.1; everything it starts is stopped at the end, also on error or SIGTERM):

1. starts a real ``docker-registry`` (distribution 2.8, filesystem storage, access log on, so that the
   script can count the requests the registry served) and fills it. One repository is pushed over
   the HTTP API; every other repository and tag is written into the registry's storage tree as the
   registry itself lays it out (a tag is two small link files), because pushing 100,000 tags over
   HTTP takes too long to repeat. The registry reads that tree on every catalog and tags/list request.
   Per size N (1,000, 10,000 and, with ``--sizes``, 100,000) namespace ``sN`` holds 100 repositories of
   N/100 tags; namespace ``oneN`` holds one repository of N tags (10,000 by default);
2. runs ``.venv/bin/payloadtags serve`` (standalone, client certificates, AlwaysAllow,
   ``--registry-concurrency=16``) in front of that registry;
3. per namespace, interleaving repetitions, measures against **the floor**: a treq client on Twisted
   that reads ``/v2/_catalog?last=<ns>`` and each repository's ``tags/list``, 16 in flight (the same
   HTTP stack, pool and concurrency as payloadtags' registry client):
   - one unpaged JSON list and one unpaged Table list (wall, server CPU);
   - ``kubectl get prt -n <ns>`` (kubectl 1.32, default chunks of 500, Table output): wall against
     the floor and against the floor plus kubectl's own CPU time, and against **kubectl's floor**: the
     same kubectl reading the same Table pages (recorded from payloadtags, byte for byte) from a server
     that answers them from memory (``Replay``), which is what kubectl costs by itself, its CPU and its
     client-side rate limit (client-go's default 5 requests/s after a burst of 10) included; the time
     kubectl reports waiting for that limit (``-v=3``) is kept too; the same again with ``--chunk-size=0``
     (the whole list in one request, which that limit never delays), against the same two floors;
   - a paginated JSON walk with ``limit=500``: server CPU against one unpaged list, and the registry
     requests of the walk (``tags/list`` requests per repository, catalog requests);
   - 50 identical lists at once: registry requests against one list's (the namespace's own, counted
     from the access log; other namespaces' requests in the same window are reported apart);
   - 10 concurrent lists: lists per second against the floor's 10 concurrent lists, twice: with
     every answer parsed in the bench process (``every answer parsed``), and with each answer compared
     byte for byte with a reference answer that was parsed and checked against the tags written, and
     parsed only when it differs (``answers compared``: payloadtags' list items, the envelope with its
     resourceVersion parsed on its own; the floor's catalog pages and tags/list answers), so that
     neither side's figure is the bench's own JSON parsing on the same cores. Rounds alternate the
     four; the compared column gives the median ratio and the per-round range;
   - ``/livez`` latency, polled every 10 ms by a separate process while one list is served (its
     connection opened before, so that its own handshake is not counted);
   - the server's peak RSS (VmHWM) during the namespace's single lists: reset (``clear_refs``) before
     them, and the 50 identical and 10 concurrent lists of every size run after all sizes' single
     lists, so a size's peak holds nothing of another's; and its RSS after the lists;
   then, after every size's concurrent lists (the watched namespace's source, kept 120 s after the
   watch, reads that namespace again every 30 s), ``/livez`` polled the same way while a watch of the
   largest namespace from no resourceVersion sends its first events (one ADDED per tag; ``--no-watch``
   skips it), and reports growth exponents k (cost ~ tags^k) for wall, server CPU and peak RSS: the
   least-squares fit of log cost on log tags over all sizes (with the range of the fits through each
   repetition's values), and between consecutive sizes. Every answer is checked against the tags
   written.

With ``--server-src DIR`` it measures only the unpaged JSON list and the 10 concurrent lists (answers
compared), of two servers on the same registry: this tree's (after) and one run from DIR (before, e.g.
``git archive main src | tar -x -C /tmp/before`` and ``--server-src /tmp/before/src``), each repetition
and round taking the floor, after and before in a rotating order. ``--profile FILE``: this tree's
server runs under cProfile, its stats written to FILE when it stops.

Usage: .venv/bin/python bench/list_scale.py [--sizes 1000,10000[,100000]] [--one 10000] [--reps 5]
       [--no-watch] [--server-src DIR] [--profile FILE] [--settle SECONDS] [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import http.client
import itertools
import json
import math
import os
import re
import resource
import shutil
import ssl as ssl_module
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))  # this tree's code, also where .venv is another tree's

from list_latency import (  # noqa: E402
    FIRST_CATALOG_PAGE,
    GROUP_PATH,
    DirectClient,
    Filler,
    _ClientTLS,
    _get,
    _Policy,
    _pool,
    catalog_page_size,
    cpu_seconds,
    measured,
    namespace_part,
    proc_status,
    report,
    start_server,
    stop_process,
    wait_ready,
)
from tests.support.harness import Pki  # noqa: E402
from tests.support.kubectl import KUBECTL, Kubectl  # noqa: E402
from tests.support.pki import Authority, Issued  # noqa: E402
from tests.support.registry_server import RegistryServer  # noqa: E402

TABLE_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)
REPOSITORIES = 100
PAGE = 500
CONCURRENT_SAME = 50
CONCURRENT_THROUGHPUT = 10

Pairs = frozenset[tuple[str, str]]
PROXIED = {"X-Remote-User": "admin", "X-Remote-Group": "system:masters"}


# --- filling -----------------------------------------------------------------------------------------


def _link(path: Path, digest: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "link").write_text(digest)


async def seed_image(
    registry_url: str, repository: str = "seed/app", tags: tuple[str, ...] = ("v1",)
) -> tuple[str, list[str]]:
    """One image pushed to ``repository`` under ``tags``: its manifest's and blobs' digests, for
    write_repository to link more repositories to."""
    filler = Filler(registry_url)
    await deferToThread(filler.seed, repository, tags)
    filler.close()
    manifest = "sha256:" + hashlib.sha256(filler.manifest).hexdigest()
    return manifest, ["sha256:" + hashlib.sha256(d).hexdigest() for _, d in filler._blobs]


def write_repository(
    storage: Path, repository: str, tags: list[str], blobs: list[str], manifest: str
) -> None:
    """One repository as distribution's filesystem driver stores it: tags are links to one manifest."""
    base = storage / "docker/registry/v2/repositories" / repository
    for digest in blobs:
        _link(base / "_layers/sha256" / digest.removeprefix("sha256:"), digest)
    hex_ = manifest.removeprefix("sha256:")
    _link(base / "_manifests/revisions/sha256" / hex_, manifest)
    tags_dir = base / "_manifests/tags"
    for tag in tags:
        _link(tags_dir / tag / "current", manifest)
        _link(tags_dir / tag / "index/sha256" / hex_, manifest)


def tag_names(count: int) -> list[str]:
    return [f"v{i:06d}" for i in range(count)]


@attrs.frozen
class Layout:
    namespace: str
    repositories: dict[str, list[str]]  # path below the namespace -> tags

    @property
    def tags(self) -> int:
        return sum(len(t) for t in self.repositories.values())

    def pairs(self) -> Pairs:
        return frozenset((path, tag) for path, tags in self.repositories.items() for tag in tags)


def layouts(sizes: list[int], one: int) -> list[Layout]:
    result = []
    for size in sizes:
        per = size // REPOSITORIES
        repos = {f"app-{i:03d}": tag_names(per) for i in range(REPOSITORIES)}
        result.append(Layout(f"s{size}", repos))
    if one:
        result.append(Layout(f"one{one}", {"app": tag_names(one)}))
    return result


# --- clients -----------------------------------------------------------------------------------------


class _CountingTLS(_ClientTLS):
    """Counts the TLS connections it makes (each one a handshake)."""

    connections = 0

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        self.connections += 1
        return super().clientConnectionForTLS(tlsProtocol)


class Server:
    """payloadtags as kube-apiserver sees it: HTTPS with a client certificate, kept-alive connections."""

    def __init__(
        self,
        reactor: Any,
        url: str,
        pki: Pki,
        connections: int = CONCURRENT_SAME,
        proxy: Issued | None = None,
    ) -> None:
        self._reactor = reactor
        self.url = url
        self.pool = _pool(reactor, connections)
        # With ``proxy``: as kube-apiserver forwards its users' requests, with the front proxy's
        # certificate and the user in headers (each of its connections is a client of its own).
        identity = proxy or pki.admin
        self._headers = PROXIED if proxy is not None else {}
        self.tls = _CountingTLS(str(pki.server_ca.cert_file), str(identity.cert_file), str(identity.key_file))
        self._http = HTTPClient(Agent(reactor, contextFactory=_Policy(self.tls), pool=self.pool))
        self._reference: dict[str, bytes] = {}  # namespace -> a checked list's items, as text

    async def open_connections(self, count: int) -> None:
        """``count`` kept-alive connections in the pool, handshaken: ``count`` requests at once."""

        async def livez() -> None:
            code, _, body = await _get(self._http, self._reactor, self.url + "/livez")
            if code != 200:
                raise RuntimeError(f"/livez answered {code}: {body[:200]!r}")

        await gatherResults([Deferred.fromCoroutine(livez()) for _ in range(count)])

    async def page(
        self, namespace: str, table: bool = False, limit: int | None = None, token: str | None = None
    ) -> tuple[Pairs, str | None]:
        query = {}
        if limit is not None:
            query["limit"] = str(limit)
        if token:
            query["continue"] = token
        path = f"{GROUP_PATH}/namespaces/{namespace}/payloadrepositorytags"
        if query:
            path += "?" + urllib.parse.urlencode(query)
        accept = TABLE_ACCEPT if table else "application/json"
        headers = {"Accept": accept, **self._headers}
        code, _, body = await _get(self._http, self._reactor, self.url + path, headers)
        if code != 200:
            raise RuntimeError(f"payloadtags answered {code}: {body[:300]!r}")
        document = json.loads(body)
        if table:
            pairs = frozenset((row["cells"][1], row["cells"][2]) for row in document["rows"])
        else:
            pairs = frozenset((i["spec"]["repositoryPath"], i["spec"]["tag"]) for i in document["items"])
        return pairs, document["metadata"].get("continue")

    async def list(self, namespace: str, table: bool = False) -> Pairs:
        return (await self.page(namespace, table))[0]

    async def learn(self, namespace: str, expected: Pairs) -> None:
        """Takes one unpaged JSON list, parsed and checked against the tags written, as the answer
        `list_compared` compares later ones with."""
        path = f"{GROUP_PATH}/namespaces/{namespace}/payloadrepositorytags"
        code, _, body = await _get(self._http, self._reactor, self.url + path, {"Accept": "application/json"})
        document = json.loads(body)
        pairs = frozenset((i["spec"]["repositoryPath"], i["spec"]["tag"]) for i in document["items"])
        if code != 200 or pairs != expected:
            raise RuntimeError(f"payloadtags' reference list of {namespace} is wrong ({code})")
        self._reference[namespace] = _items_part(body)

    async def list_compared(self, namespace: str, expected: Pairs) -> Pairs:
        """An unpaged JSON list whose items are compared byte for byte with the reference's (the
        envelope, its resourceVersion, is parsed on its own); parsed and checked only when they differ."""
        path = f"{GROUP_PATH}/namespaces/{namespace}/payloadrepositorytags"
        code, _, body = await _get(self._http, self._reactor, self.url + path, {"Accept": "application/json"})
        if code != 200:
            raise RuntimeError(f"payloadtags answered {code}: {body[:300]!r}")
        # Compared in place (no copy of the 3.3 MB of a 10,000-tag list: the bench's own work on the
        # two cores it shares with the server): the items are the reference's when the body ends
        # with them right after its envelope.
        at = body.find(_ITEMS)
        envelope = json.loads(body[: at if at >= 0 else len(body)] + b"}")
        if envelope.get("kind") != "PayloadRepositoryTagList":
            raise RuntimeError(f"expected a PayloadRepositoryTagList, got {envelope.get('kind')}")
        reference = self._reference.get(namespace)
        if (
            at >= 0
            and reference is not None
            and len(body) - at == len(reference)
            and body.endswith(reference)
        ):
            return expected
        document = json.loads(body)
        return frozenset((i["spec"]["repositoryPath"], i["spec"]["tag"]) for i in document["items"])

    async def record_walk(self, namespace: str, replay: Replay, limit: int | None = PAGE) -> int:
        """Walks ``namespace`` as ``kubectl get`` does (Table, chunks of ``limit``; None: the whole
        list in one answer, as ``--chunk-size=0`` asks for it) into ``replay``."""
        path = f"{GROUP_PATH}/namespaces/{namespace}/payloadrepositorytags"
        asked = b"" if limit is None else str(limit).encode()
        token = ""
        pages = 0
        while True:
            query = {**({"limit": str(limit)} if limit else {}), **({"continue": token} if token else {})}
            url = self.url + path + "?" + urllib.parse.urlencode(query)
            code, headers, body = await _get(self._http, self._reactor, url, {"Accept": TABLE_ACCEPT})
            if code != 200:
                raise RuntimeError(f"payloadtags answered {code}: {body[:300]!r}")
            content_type = (headers.getRawHeaders(b"content-type") or [b"application/json"])[0]
            replay.pages[(path.encode(), asked, token.encode())] = (content_type, body)
            pages += 1
            token = json.loads(body)["metadata"].get("continue") or ""
            if not token:
                return pages

    async def walk(self, namespace: str, limit: int = PAGE) -> Pairs:
        found: set[tuple[str, str]] = set()
        token: str | None = None
        while True:
            pairs, token = await self.page(namespace, limit=limit, token=token)
            found |= pairs
            if not token:
                return frozenset(found)


_ITEMS = b',"items":['


def _items_part(body: bytes) -> bytes:
    return _ITEMS + body.split(_ITEMS, 1)[1]


class Floor:
    def __init__(self, reactor: Any, registry_url: str) -> None:
        self.client = DirectClient(reactor, registry_url)
        self.compared = ComparingClient(reactor, registry_url)

    async def list(self, namespace: str) -> Pairs:
        return await self.client.list(namespace)


class ComparingClient(DirectClient):
    """The floor's client for the throughput phase: each catalog page and tags/list answer is
    compared byte for byte with the one a checked list got (``learn``), and parsed only when it
    differs; a list whose answers all match is the checked list's tags."""

    def __init__(self, reactor: Any, registry_url: str) -> None:
        super().__init__(reactor, registry_url)
        self._known: dict[str, tuple[bytes, dict[str, Any]]] = {}
        self._pairs: dict[str, Pairs] = {}
        self.parsed = 0

    async def _answer(self, path: str, learning: bool) -> tuple[dict[str, Any], bool, bool]:
        """The document at ``path``, whether a next page is linked, whether it matched the known one."""
        code, headers, body = await _get(self._http, self._reactor, self._base + path)
        if code != 200:
            raise RuntimeError(f"registry answered {code} to {path}: {body[:300]!r}")
        more = bool(headers.getRawHeaders("link"))
        known = self._known.get(path)
        if not learning and known is not None and known[0] == body:
            return known[1], more, True
        self.parsed += 1
        document = json.loads(body)
        if learning:
            self._known[path] = (body, document)
        return document, more, False

    async def learn(self, namespace: str, expected: Pairs) -> None:
        pairs = await self.list_compared(namespace, expected, learning=True)
        if pairs != expected:
            raise RuntimeError(f"the floor's reference list of {namespace} is wrong")
        self._pairs[namespace] = pairs

    async def list_compared(self, namespace: str, expected: Pairs, learning: bool = False) -> Pairs:
        prefix, last, repositories, pages = namespace + "/", namespace, [], 0
        matched = True
        while True:
            # The catalog pages the server asks for (and the floor's own list: DirectClient).
            query = urllib.parse.urlencode(
                {"n": str(catalog_page_size(FIRST_CATALOG_PAGE, pages)), "last": last}
            )
            pages += 1
            document, more, same = await self._answer(f"/v2/_catalog?{query}", learning)
            matched = matched and same
            inside, after = namespace_part(document.get("repositories") or [], more, prefix)
            repositories.extend(inside)
            if after is None:
                break
            last = after
        semaphore = DeferredSemaphore(self._concurrency)

        async def tags(repository: str) -> tuple[dict[str, Any], bool, bool]:
            return await self._answer(f"/v2/{repository}/tags/list", learning)

        answers = await gatherResults([semaphore.run(tags, r) for r in repositories], consumeErrors=True)
        if matched and all(same for _, _, same in answers) and namespace in self._pairs:
            return self._pairs[namespace]
        lists = [sorted(document.get("tags") or []) for document, _, _ in answers]
        cut = len(prefix)
        return frozenset((r[cut:], t) for r, ts in zip(repositories, lists, strict=True) for t in ts)


class Replay(Resource):
    """kubectl's floor: Table pages recorded from payloadtags, answered from memory, over TLS."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        # (path, limit, continue token) -> (content type, body)
        self.pages: dict[tuple[bytes, bytes, bytes], tuple[bytes, bytes]] = {}
        self.url = ""

    def render_GET(self, request: Request) -> bytes:
        limit = (request.args.get(b"limit") or [b""])[0]
        token = (request.args.get(b"continue") or [b""])[0]
        found = self.pages.get((request.path, limit, token))
        if found is None:
            request.setResponseCode(404)
            return b""
        content_type, body = found
        request.setHeader(b"content-type", content_type)
        return body


def listen_replay(reactor: Any, replay: Replay, pki: Pki) -> Any:
    pem = pki.serving.cert_file.read_text() + pki.serving.key_file.read_text()
    options = ssl.PrivateCertificate.loadPEM(pem).options()
    return reactor.listenSSL(0, Site(replay), options, interface="127.0.0.1")


def share_discovery(kubectl: Kubectl, server_url: str, replayed: Kubectl, replay_url: str) -> None:
    """Gives the replay's kubectl the discovery kubectl cached for payloadtags (the replay serves
    only the pages)."""
    served, replaying = urllib.parse.urlsplit(server_url), urllib.parse.urlsplit(replay_url)
    source = kubectl.cache_dir / "discovery" / f"{served.hostname}_{served.port}"
    target = replayed.cache_dir / "discovery" / f"{replaying.hostname}_{replaying.port}"
    if not target.exists():
        shutil.copytree(source, target)


_REQUEST_PATH = re.compile(r'"GET (/v2/\S*) HTTP/')


def _namespace_of(path: str) -> str:
    """The namespace a registry request reads: a catalog page's ``last`` (``<ns>`` for its first page,
    ``<ns>/<path>`` for the next ones), else the repository's first component."""
    parts = urllib.parse.urlsplit(path)
    if parts.path == "/v2/_catalog":
        last = urllib.parse.parse_qs(parts.query).get("last", [""])[0]
        return last.split("/", 1)[0]
    return parts.path.removeprefix("/v2/").split("/", 1)[0]


class AccessLog:
    """Counts the registry's requests from its access log, between two marks."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0

    def mark(self) -> None:
        self._offset = self._path.stat().st_size

    def counts(self, namespace: str | None = None) -> dict[str, int]:
        """The GETs since the mark. With ``namespace``: only that namespace's (its catalog pages and
        repositories), the others' counted apart as "other namespaces": the server's own reads of
        other scopes that fall in the window (a watched scope's resync every 30 s) are not the
        requests of the lists measured."""
        with self._path.open("rb") as f:
            f.seek(self._offset)
            text = f.read().decode(errors="replace")
        tags = catalog = other = foreign = 0
        for line in text.splitlines():
            if '"GET /v2/' not in line:
                continue
            found = _REQUEST_PATH.search(line)
            if namespace is not None and found and _namespace_of(found.group(1)) != namespace:
                foreign += 1
            elif "/tags/list" in line:
                tags += 1
            elif "/_catalog" in line:
                catalog += 1
            else:
                other += 1
        counted = {"tags/list": tags, "catalog": catalog, "other": other}
        if namespace is not None:
            counted["other namespaces"] = foreign
        return counted


LIVEZ_POLLER = r"""
import http.client, ssl, sys, time, threading
url_host, url_port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context(cafile=ca)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
connection = http.client.HTTPSConnection(url_host, url_port, context=context, timeout=60)
worst, times = 0.0, []
# One /livez first, not counted: it opens the connection (TCP and TLS), which is the poller's own cost,
# not the server's stall.
connection.request("GET", "/livez")
connection.getresponse().read()
print("ready", flush=True)
while not stop.is_set():
    started = time.perf_counter()
    connection.request("GET", "/livez")
    connection.getresponse().read()
    elapsed = time.perf_counter() - started
    times.append(elapsed)
    time.sleep(0.01)
times.sort()
print(max(times), times[int(0.99 * (len(times) - 1))], len(times), flush=True)
"""


async def with_livez(reactor: Any, server_url: str, ca_file: str, fn: Callable[[], Awaitable[Any]]) -> float:
    """The longest /livez answer seen while ``fn`` runs (seconds), from a separate process."""
    parts = urllib.parse.urlsplit(server_url)
    poller = subprocess.Popen(  # noqa: ASYNC220 - started and read without waiting on the reactor
        [sys.executable, "-c", LIVEZ_POLLER, parts.hostname or "", str(parts.port), ca_file],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert poller.stdout is not None and poller.stdin is not None
        await deferToThread(poller.stdout.readline)
        await fn()
        poller.stdin.write("stop\n")
        poller.stdin.flush()
        line = await deferToThread(poller.stdout.readline)
        return float(line.split()[0])
    finally:
        if poller.poll() is None:
            poller.kill()
        poller.wait()


def throttled(stderr: bytes) -> float:
    """Seconds kubectl logged waiting for its client-side rate limit (each wait over 50 ms, at -v=3)."""
    total = 0.0
    for match in re.finditer(rb"Waited for ([0-9.]+)(ms|s|\xc2\xb5s|us)", stderr):
        value, unit = float(match.group(1)), match.group(2)
        total += value / 1000 if unit == b"ms" else value if unit == b"s" else value / 1e6
    return total


def run_kubectl(
    kubectl: Kubectl, namespace: str, waits: list[float] | None = None, chunk_size: int | None = None
) -> tuple[float, float, int]:
    """Wall and CPU seconds of one ``kubectl get prt -n <namespace>`` (with ``--chunk-size`` when
    given), and the rows it printed; the seconds it waited for its client-side rate limit are appended
    to ``waits``."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(kubectl.cache_dir),
        "KUBECONFIG": str(kubectl.kubeconfig),
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            KUBECTL,
            "--cache-dir",
            str(kubectl.cache_dir),
            "--request-timeout=120s",
            "-v=3",
            "get",
            "prt",
            "-n",
            namespace,
            *([] if chunk_size is None else [f"--chunk-size={chunk_size}"]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    out, err = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"kubectl failed: {err[-500:]!r}")
    if waits is not None:
        waits.append(throttled(err))
    return wall, 0.0, max(out.count(b"\n") - 1, 0)


def run_kubectl_rusage(
    kubectl: Kubectl, namespace: str, waits: list[float] | None = None, chunk_size: int | None = None
) -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, _, rows = run_kubectl(kubectl, namespace, waits, chunk_size)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, rows


# --- measuring ---------------------------------------------------------------------------------------


@attrs.define
class Cost:
    wall: float
    server_cpu: float
    registry_cpu: float
    own_cpu: float


async def cost(fn: Callable[[], Awaitable[Pairs]], expected: Pairs, pids: dict[str, int], what: str) -> Cost:
    call = await measured(what, fn, expected, pids)
    return Cost(call.wall, call.cpu["server"], call.cpu["registry"], call.own_cpu)


async def _outcome(work: Awaitable[Pairs]) -> Pairs | str:
    """The tags a list saw, or its error as text (a busy server may answer 5xx)."""
    try:
        return await work
    except Exception as error:
        return str(error)[:200]


async def concurrent_round(fn: Callable[[], Awaitable[Pairs]], expected: Pairs) -> tuple[int, float]:
    """``CONCURRENT_THROUGHPUT`` lists at once: how many saw ``expected``, and the lists per second."""
    started = time.perf_counter()
    done = await gatherResults([Deferred.fromCoroutine(_outcome(fn())) for _ in range(CONCURRENT_THROUGHPUT)])
    ok = sum(r == expected for r in done)
    return ok, ok / (time.perf_counter() - started)


def described(layout: Layout, samples: dict[str, list[Cost]]) -> dict[str, Any]:
    """What every layout's results begin with."""
    return {
        "namespace": layout.namespace,
        "tags": layout.tags,
        "repositories": len(layout.repositories),
        "samples": {k: [attrs.asdict(c) for c in v] for k, v in samples.items()},
    }


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    m = med(values)
    if not m:
        return "±0%"
    return f"±{max(abs(v - m) for v in values) / m * 100:.0f}%"


def reset_peak(pid: int) -> bool:
    """Sets the process's VmHWM back to its VmRSS (``clear_refs`` 5, Linux 4.0 on), so that the peak read
    next is of what it did since; False when the kernel does not allow it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


async def measure_layout(
    reactor: Any,
    layout: Layout,
    server: Server,
    floor: Floor,
    kubectl: Kubectl,
    access: AccessLog,
    pids: dict[str, int],
    ca_file: str,
    reps: int,
    replay: Replay | None = None,
    replayed: Kubectl | None = None,
) -> dict[str, Any]:
    """The single lists of one namespace: wall and CPU against the floor, kubectl, a walk, /livez, and
    the server's peak RSS while they ran (its VmHWM reset before them)."""
    ns, expected = layout.namespace, layout.pairs()
    # The peak from here on is this namespace's own single lists: the earlier sizes' concurrent lists
    # run after every size's single lists (`measure_concurrent`), and the peak is reset here too.
    rss_before = proc_status(pids["server"])
    peak_reset = reset_peak(pids["server"])
    variants: dict[str, Callable[[], Awaitable[Pairs]]] = {
        "floor": lambda: floor.list(ns),
        "json": lambda: server.list(ns),
        "table": lambda: server.list(ns, table=True),
        "walk": lambda: server.walk(ns),
    }
    for name, fn in variants.items():  # warm-up: connections, the registry's page cache
        await cost(fn, expected, pids, name)
    samples: dict[str, list[Cost]] = {name: [] for name in variants}
    # kubectl as users run it (chunks of 500), and asked for the whole list in one request
    # (--chunk-size=0: one request, so client-go's rate limit never waits); each against its floor.
    runs: list[tuple[str, Kubectl, int | None]] = [("kubectl", kubectl, None), ("kubectl whole", kubectl, 0)]
    pages = 0
    await deferToThread(run_kubectl_rusage, kubectl, ns)  # discovery cache
    if replay is not None and replayed is not None:
        share_discovery(kubectl, server.url, replayed, replay.url)
        pages = await server.record_walk(ns, replay)
        await server.record_walk(ns, replay, limit=None)
        await deferToThread(run_kubectl_rusage, replayed, ns)
        runs += [("kubectl floor", replayed, None), ("kubectl whole floor", replayed, 0)]
    kubectl_cpu: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    waits: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    names = list(variants)
    for name, _, _ in runs:
        samples[name] = []
    for i in range(reps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            samples[name].append(await cost(variants[name], expected, pids, name))
        for name, client, chunk_size in runs[i % len(runs) :] + runs[: i % len(runs)]:
            wall, cpu, rows = await deferToThread(run_kubectl_rusage, client, ns, waits[name], chunk_size)
            if rows != layout.tags:
                raise RuntimeError(f"{name} printed {rows} rows, expected {layout.tags}")
            samples[name].append(Cost(wall, 0.0, 0.0, 0.0))
            kubectl_cpu[name].append(cpu)

    stalls = {
        "json": await with_livez(reactor, server.url, ca_file, lambda: server.list(ns)),
        "table": await with_livez(reactor, server.url, ca_file, lambda: server.list(ns, table=True)),
    }
    status = proc_status(pids["server"])  # this namespace's single lists' peak (reset above)

    # Registry requests: one list, one walk.
    access.mark()
    await server.list(ns)
    one = access.counts(ns)
    access.mark()
    await server.walk(ns)
    walk = access.counts(ns)
    return {
        **described(layout, samples),
        "kubectl_cpu": kubectl_cpu,
        "kubectl_waits": waits,
        "kubectl_pages": pages,
        "registry_requests": {"one": one, "walk": walk},
        "livez_stall": stalls,
        "rss_kib": status,
        "rss_kib_before": rss_before,
        "peak_reset": peak_reset,
    }


async def measure_concurrent(
    layout: Layout, server: Server, floor: Floor, access: AccessLog, crowd: Server
) -> dict[str, Any]:
    """50 identical lists at once (registry requests) and 10 concurrent lists against the floor's. Run
    after every size's single lists, so that what they hold is in no size's peak RSS."""
    ns, expected = layout.namespace, layout.pairs()
    variants: dict[str, Callable[[], Awaitable[Pairs]]] = {
        "floor": lambda: floor.list(ns),
        "json": lambda: server.list(ns),
    }
    # The 50 connections open and handshaken first, then the 50 lists sent in one reactor turn: they
    # reach the server together, as 50 clients' lists of the same moment would, and not spread over
    # the handshakes (which would measure those, not the sharing of reads).
    await crowd.open_connections(CONCURRENT_SAME)
    handshakes = crowd.tls.connections
    access.mark()
    outcomes = await gatherResults(
        [Deferred.fromCoroutine(_outcome(crowd.list(ns))) for _ in range(CONCURRENT_SAME)]
    )
    if any(r != expected for r in outcomes if not isinstance(r, str)):
        raise RuntimeError("a concurrent list saw different tags")
    same = access.counts(ns)
    same["new connections"] = crowd.tls.connections - handshakes
    same_errors = sorted({r for r in outcomes if isinstance(r, str)})
    same["failed lists"] = sum(isinstance(r, str) for r in outcomes)
    access.mark()
    await floor.list(ns)
    floor_requests = access.counts(ns)

    # Throughput: 10 lists at once, payloadtags and the floor, alternating; once with every answer
    # parsed in this process, once with answers compared with a checked reference (parsed only when
    # they differ), so that the bench's own JSON parsing, on the same cores, is not what is measured.
    await server.learn(ns, expected)
    await floor.compared.learn(ns, expected)
    throughput: dict[str, Callable[[], Awaitable[Pairs]]] = {
        "json": variants["json"],
        "floor": variants["floor"],
        "json compared": lambda: server.list_compared(ns, expected),
        "floor compared": lambda: floor.compared.list_compared(ns, expected),
    }
    rates: dict[str, list[float]] = {name: [] for name in throughput}
    parsed_before = floor.compared.parsed
    for i in range(3):
        order = ["json", "floor", "json compared", "floor compared"]
        for name in order if i % 2 == 0 else order[::-1]:
            _, rate = await concurrent_round(throughput[name], expected)
            rates[name].append(rate)
    floor_reparsed = floor.compared.parsed - parsed_before

    return {
        "registry_requests": {"50 at once": same, "floor": floor_requests},
        "50 at once errors": same_errors,
        "lists_per_second": rates,
        "floor_answers_reparsed": floor_reparsed,
    }


def watch_initial(url: str, ca_file: str, cert: Path, key: Path, namespace: str, events: int) -> float:
    """Watches ``namespace`` from no resourceVersion until its ``events`` ADDED events (one for each tag
    there) have arrived; the seconds they took. Bounded: 600 s for the whole watch."""
    parts = urllib.parse.urlsplit(url)
    context = ssl_module.create_default_context(cafile=ca_file)
    context.load_cert_chain(str(cert), str(key))
    connection = http.client.HTTPSConnection(parts.hostname or "", parts.port, context=context, timeout=60)
    started = time.perf_counter()
    deadline = started + 600
    try:
        connection.request("GET", f"{GROUP_PATH}/namespaces/{namespace}/payloadrepositorytags?watch=true")
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"the watch answered {response.status}: {response.read(300)!r}")
        added = 0
        while added < events:
            line = response.readline()
            if not line:
                raise RuntimeError(f"the watch ended after {added} of {events} ADDED events")
            added += line.startswith(b'{"type":"ADDED"')
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the watch sent {added} of {events} ADDED events in 600 s")
        return time.perf_counter() - started
    finally:
        connection.close()


async def measure_coalescing(layout: Layout, server: Server, access: AccessLog, reps: int) -> dict[str, Any]:
    """``--coalescing``: one list's registry requests, and those of 50 identical lists sent at once
    over 50 connections opened beforehand, ``reps`` times."""
    ns, expected = layout.namespace, layout.pairs()
    if await server.list(ns) != expected:  # warm-up
        raise RuntimeError(f"a list of {ns} saw different tags")
    access.mark()
    await server.list(ns)
    one = access.counts(ns)
    runs = []
    for _ in range(reps):
        await server.open_connections(CONCURRENT_SAME)
        handshakes = server.tls.connections
        access.mark()
        outcomes = await gatherResults(
            [Deferred.fromCoroutine(_outcome(server.list(ns))) for _ in range(CONCURRENT_SAME)]
        )
        if any(r != expected for r in outcomes):
            raise RuntimeError(f"a concurrent list failed or saw different tags: {outcomes[:3]!r}")
        same = access.counts(ns)
        same["new connections"] = server.tls.connections - handshakes
        runs.append(same)
    return {
        "namespace": ns,
        "tags": layout.tags,
        "repositories": len(layout.repositories),
        "registry_requests": {"one": one, "50 at once": runs},
    }


async def measure_before_after(
    reactor: Any,
    layout: Layout,
    servers: dict[str, Server],
    floor: Floor,
    pids: dict[str, int],
    reps: int,
) -> dict[str, Any]:
    """``--server-src``: the one-list and 10-concurrent-lists rows of two servers (this tree's, "after",
    and another tree's, "before") against the floor, in one run: every repetition and round takes the
    three in a rotating order, forwards and backwards in turn (each follows each as often), so that a
    change of the machine's load falls on all of them; before each, this process collects its garbage
    and the servers are given a moment to end what the one before left them (a list's memory)."""
    ns, expected = layout.namespace, layout.pairs()
    names = ["floor", *servers]

    def order(i: int) -> list[str]:
        turned = names[i % len(names) :] + names[: i % len(names)]
        return turned if (i // len(names)) % 2 == 0 else turned[::-1]

    async def settle() -> None:
        gc.collect()
        await deferLater(reactor, 0.05, lambda: None)

    def whose(name: str) -> dict[str, int]:  # whose CPU is the server's
        return {"server": pids[name if name in servers else "after"], "registry": pids["registry"]}

    singles: dict[str, Callable[[], Awaitable[Pairs]]] = {"floor": lambda: floor.list(ns)}
    compared: dict[str, Callable[[], Awaitable[Pairs]]] = {
        "floor": lambda: floor.compared.list_compared(ns, expected)
    }
    for name, server in servers.items():
        singles[name] = functools.partial(server.list, ns)
        compared[name] = functools.partial(server.list_compared, ns, expected)
    for name in names:  # warm-up: connections, the registry's page cache
        await cost(singles[name], expected, whose(name), name)
    samples: dict[str, list[Cost]] = {name: [] for name in names}
    for i in range(reps):
        for name in order(i):
            await settle()
            samples[name].append(await cost(singles[name], expected, whose(name), name))

    for server in servers.values():
        await server.learn(ns, expected)
    await floor.compared.learn(ns, expected)
    rates: dict[str, list[float]] = {name: [] for name in names}
    round_cpu: dict[str, list[float]] = {name: [] for name in servers}  # the server's, per round
    client_cpu: dict[str, list[float]] = {name: [] for name in names}  # this process's, per round
    failed = 0
    for i in range(2 * reps):
        for name in order(i):
            await settle()
            cpu = cpu_seconds(pids[name]) if name in servers else 0.0
            own = time.process_time()
            ok, rate = await concurrent_round(compared[name], expected)
            failed += CONCURRENT_THROUGHPUT - ok
            rates[name].append(rate)
            client_cpu[name].append(time.process_time() - own)
            if name in servers:
                round_cpu[name].append(cpu_seconds(pids[name]) - cpu)
    return {
        **described(layout, samples),
        "lists_per_second": rates,
        "round_cpu": round_cpu,
        "client_cpu": client_cpu,
        "failed lists": failed,
    }


def summarize_before_after(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']}; load average {results['load']}",
        "",
        "Before (--server-src) and after, alternated with the floor in one run: one unpaged JSON list "
        "(wall / floor's, median and range of the repetitions; server CPU), and 10 concurrent lists with "
        "answers compared (lists/s / the floor's in the same round, median and range of the rounds)",
        "",
        "| namespace | server | JSON wall / floor | server CPU (ms) | 10 concurrent: lists/s / floor "
        "| lists/s (floor) | server CPU per 10 lists, mean (ms) | client CPU per 10 lists (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["layouts"]:
        walls = {k: [c["wall"] for c in v] for k, v in r["samples"].items()}
        floor_wall = med(walls["floor"])
        rates = r["lists_per_second"]
        for name in [n for n in walls if n != "floor"]:
            ratios = [w / floor_wall for w in walls[name]]
            rounds = [s / f for s, f in zip(rates[name], rates["floor"], strict=True)]
            cpu = med([c["server_cpu"] for c in r["samples"][name]]) * 1000
            lines.append(
                f"| {r['namespace']} | {name} | {med(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
                f"| {cpu:.0f} | {med(rounds):.2f} ({min(rounds):.2f}-{max(rounds):.2f}) "
                f"| {med(rates[name]):.1f} ({med(rates['floor']):.1f}) "
                f"| {sum(r['round_cpu'][name]) / len(r['round_cpu'][name]) * 1000:.0f} "
                f"| {med(r['client_cpu'][name]) * 1000:.0f} |"
            )
        lines.append(
            f"| {r['namespace']} | floor | {floor_wall * 1000:.0f} ms ({spread(walls['floor'])}) | | "
            f"| failed lists: {r['failed lists']} | | {med(r['client_cpu']['floor']) * 1000:.0f} |"
        )
    lines.append("")
    lines.append(f"Fill: {results['fill_seconds']:.1f}s; total {results['total_seconds']:.0f}s")
    return "\n".join(lines)


def summarize_coalescing(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']}; load average {results['load']}",
        "",
        "50 identical lists at once over 50 open connections: registry requests (tags/list + catalog)",
        "",
        "| namespace | tags | repos | one list | 50 lists, each run | / one list, each run "
        "| new connections | other namespaces' requests meanwhile (not counted), each run |",
        "|---|---:|---:|---:|---|---|---:|---|",
    ]
    for r in results["layouts"]:
        one = r["registry_requests"]["one"]
        runs = r["registry_requests"]["50 at once"]
        one_total = one["tags/list"] + one["catalog"]
        totals = [f"{x['tags/list']} + {x['catalog']}" for x in runs]
        ratios = [f"{(x['tags/list'] + x['catalog']) / one_total:.2f}" for x in runs]
        lines.append(
            f"| {r['namespace']} | {r['tags']:,} | {r['repositories']} "
            f"| {one['tags/list']} + {one['catalog']} | {', '.join(totals)} | {', '.join(ratios)} "
            f"| {sum(x['new connections'] for x in runs)} "
            f"| {', '.join(str(x.get('other namespaces', '-')) for x in runs)} |"
        )
    lines.append("")
    lines.append(f"Fill: {results['fill_seconds']:.1f}s; total {results['total_seconds']:.0f}s")
    return "\n".join(lines)


def exponent(lo: tuple[int, float], hi: tuple[int, float]) -> float:
    if lo[1] <= 0 or hi[1] <= 0:
        return float("nan")
    return math.log(hi[1] / lo[1]) / math.log(hi[0] / lo[0])


def fitted_k(points: list[tuple[int, float]]) -> float:
    """The slope of the least-squares line through (log size, log cost): k in cost ~ size^k, fitted
    over every size measured (nan with fewer than two sizes or a cost that is not positive)."""
    if len({size for size, _ in points}) < 2 or any(cost <= 0 for _, cost in points):
        return float("nan")
    xs = [math.log(size) for size, _ in points]
    ys = [math.log(cost) for _, cost in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def fit_with_range(per_size: list[tuple[int, list[float]]]) -> tuple[float, float, float]:
    """k fitted through every size's median, and the least and greatest k of the fits through each
    repetition's values (repetition i of every size; the sizes' i-th samples were taken in the same
    rotation), as the range the repetitions give."""
    k = fitted_k([(size, med(values)) for size, values in per_size])
    count = min(len(values) for _, values in per_size)
    per_rep = [fitted_k([(size, values[i]) for size, values in per_size]) for i in range(count)]
    per_rep = [x for x in per_rep if not math.isnan(x)]
    return k, min(per_rep, default=float("nan")), max(per_rep, default=float("nan"))


def summarize(results: dict[str, Any]) -> str:
    lines = [f"Machine: {results['machine']}", ""]
    lines += [
        "| namespace | tags | repos | floor wall (ms) | JSON / floor | Table / floor | kubectl / floor "
        "| kubectl / (floor + kubectl CPU) | JSON server CPU / floor client CPU "
        "| walk(500) / unpaged, server CPU | tags/list per repo in a walk "
        "| 50 lists: registry requests / one | 10 concurrent, answers compared: lists/s / floor "
        "| 10 concurrent, every answer parsed: lists/s / floor "
        "| /livez stall JSON, Table (s) | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["layouts"]:
        s = {k: [Cost(**c) for c in v] for k, v in r["samples"].items()}
        floor_wall = [c.wall for c in s["floor"]]
        fw = med(floor_wall)

        def ratio(name: str, s: dict[str, list[Cost]] = s, base: float = fw) -> str:
            values = [c.wall for c in s[name]]
            return f"{med(values) / base:.2f} ({spread(values)})"

        kube = med([c.wall for c in s["kubectl"]])
        kcpu = med(r["kubectl_cpu"]["kubectl"])
        floor_cpu = med([c.own_cpu for c in s["floor"]])
        json_cpu = med([c.server_cpu for c in s["json"]])
        walk_cpu = med([c.server_cpu for c in s["walk"]])
        req = r["registry_requests"]
        one_total = req["one"]["tags/list"] + req["one"]["catalog"]
        if "50 at once" in req:
            same_total = req["50 at once"]["tags/list"] + req["50 at once"]["catalog"]
            failed = req["50 at once"]["failed lists"]
            same = f"{same_total / one_total:.2f}" + (f" ({failed} failed)" if failed else "")
            same += f" ({req['50 at once'].get('new connections', 0)} new connections)"
            if req["50 at once"].get("other namespaces"):
                same += f" (+{req['50 at once']['other namespaces']} of other namespaces, not counted)"
            rates = r["lists_per_second"]
            parsed = f"{med(rates['json']) / med(rates['floor']):.2f}"
            if "json compared" in rates:
                values = [j / f for j, f in zip(rates["json compared"], rates["floor compared"], strict=True)]
                throughput = f"{med(rates['json compared']) / med(rates['floor compared']):.2f}"
                throughput += f" ({min(values):.2f}-{max(values):.2f})"
            else:
                throughput = "-"
        else:
            same = throughput = parsed = "-"
        lines.append(
            f"| {r['namespace']} | {r['tags']:,} | {r['repositories']} "
            f"| {fw * 1000:.0f} ({spread(floor_wall)}) "
            f"| {ratio('json')} | {ratio('table')} | {kube / fw:.2f} | {kube / (fw + kcpu):.2f} "
            f"| {json_cpu / floor_cpu if floor_cpu else float('nan'):.2f} "
            f"| {walk_cpu / json_cpu if json_cpu else float('nan'):.2f} "
            f"| {req['walk']['tags/list'] / r['repositories']:.2f} "
            f"| {same} | {throughput} | {parsed} "
            f"| {r['livez_stall']['json']:.3f}, {r['livez_stall']['table']:.3f} "
            f"| {r['rss_kib']['VmHWM'] / 1024:.0f} |"
        )
    lines += [
        "",
        "kubectl get (Table): against payloadtags and against its floor, the same pages answered from "
        "memory (client-side rate limit: the seconds kubectl logged waiting for it); in chunks of 500 as "
        "kubectl asks by default, and whole with --chunk-size=0 (one request)",
        "",
        "| namespace | chunks | pages | kubectl wall (s) | kubectl CPU (s) | rate-limit wait (s) "
        "| floor: wall (s) | floor: CPU (s) | floor: rate-limit wait (s) | kubectl / kubectl floor "
        "| kubectl / (floor + kubectl CPU) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["layouts"]:
        if not r.get("kubectl_pages"):
            continue
        fw = med([c["wall"] for c in r["samples"]["floor"]])
        for name, chunks, pages in (("kubectl", "500", r["kubectl_pages"]), ("kubectl whole", "0", 1)):
            walls = [c["wall"] for c in r["samples"][name]]
            floor_walls = [c["wall"] for c in r["samples"][f"{name} floor"]]
            cpu, waits = r["kubectl_cpu"], r["kubectl_waits"]
            lines.append(
                f"| {r['namespace']} | {chunks} | {pages} | {med(walls):.2f} ({spread(walls)}) "
                f"| {med(cpu[name]):.2f} | {med(waits[name]):.2f} "
                f"| {med(floor_walls):.2f} ({spread(floor_walls)}) | {med(cpu[f'{name} floor']):.2f} "
                f"| {med(waits[f'{name} floor']):.2f} | {med(walls) / med(floor_walls):.2f} "
                f"| {med(walls) / (fw + med(cpu[name])):.2f} |"
            )
    lines.append("")
    lines.append(
        f"Server RSS: {results['rss_kib_at_start']['VmRSS'] / 1024:.0f} MiB at start, "
        f"{results['rss_kib_after']['VmRSS'] / 1024:.0f} MiB after the last list "
        f"(peak {results['rss_kib_after']['VmHWM'] / 1024:.0f} MiB)"
        + (
            f", {results['rss_kib_settled']['VmRSS'] / 1024:.0f} MiB after "
            f"{results['settle_seconds']:.0f} s idle"
            if "rss_kib_settled" in results
            else ""
        )
    )
    if "watch" in results:
        w = results["watch"]
        lines.append(
            f"A watch of {w['namespace']} from no resourceVersion: its {w['events']:,} ADDED events in "
            f"{w['seconds']:.2f} s; longest /livez answer meanwhile {w['livez_stall']:.3f} s"
        )
    resets = [r.get("peak_reset") for r in results["layouts"]]
    lines.append(
        "Peak RSS per namespace: its single lists only (VmHWM reset before them: "
        + ("yes" if all(resets) else "NO, the kernel refused clear_refs: peaks since start")
        + "; the concurrent lists of every size run after all of them)"
    )
    spread_layouts = [r for r in results["layouts"] if r["repositories"] == REPOSITORIES]
    if len(spread_layouts) > 1:
        lines.append("")
        sizes = ", ".join(f"{r['tags']:,}" for r in spread_layouts)
        lines.append(
            f"Growth exponents k (cost ~ tags^k), 100-repository namespaces. Reported: the least-squares "
            f"fit of log cost on log tags over all sizes ({sizes}), through the medians; in brackets the "
            "least and greatest k of the fits through each repetition's values. Peak RSS has one value "
            "per size, so no range. Two sizes make the fit the pairwise figure."
        )
        idle = results["rss_kib_at_start"]["VmRSS"]
        fits = []
        for name in ("floor", "json", "table", "kubectl", "kubectl floor", "kubectl whole"):
            if all(r["samples"].get(name) for r in spread_layouts):
                k, low, high = fit_with_range(
                    [(r["tags"], [c["wall"] for c in r["samples"][name]]) for r in spread_layouts]
                )
                fits.append(f"{name} wall {k:.2f} ({low:.2f} to {high:.2f})")
        for name in ("json", "table", "walk"):
            k, low, high = fit_with_range(
                [(r["tags"], [c["server_cpu"] for c in r["samples"][name]]) for r in spread_layouts]
            )
            fits.append(f"{name} server CPU {k:.2f} ({low:.2f} to {high:.2f})")
        rss_k = fitted_k([(r["tags"], r["rss_kib"]["VmHWM"] - idle) for r in spread_layouts])
        fits.append(f"peak RSS above idle {rss_k:.2f}")
        lines.append("- fit over all sizes: " + "; ".join(fits))
        lines.append("Pairwise, between consecutive sizes (medians):")

        def k_of(lo: dict[str, Any], hi: dict[str, Any], name: str, attr: str) -> float:
            def m(r: dict[str, Any]) -> float:
                return med([c[attr] for c in r["samples"][name]])

            return exponent((lo["tags"], m(lo)), (hi["tags"], m(hi)))

        for lo, hi in itertools.pairwise(spread_layouts):
            ks = []
            for name in ("floor", "json", "table", "kubectl", "kubectl floor", "kubectl whole"):
                if lo["samples"].get(name) and hi["samples"].get(name):
                    ks.append(f"{name} wall {k_of(lo, hi, name, 'wall'):.2f}")
            for name in ("json", "table", "walk"):
                ks.append(f"{name} server CPU {k_of(lo, hi, name, 'server_cpu'):.2f}")
            idle = results["rss_kib_at_start"]["VmRSS"]
            rss = exponent(
                (lo["tags"], lo["rss_kib"]["VmHWM"] - idle), (hi["tags"], hi["rss_kib"]["VmHWM"] - idle)
            )
            ks.append(f"peak RSS above idle {rss:.2f}")
            lines.append(f"- {lo['tags']:,} -> {hi['tags']:,}: " + "; ".join(ks))
    lines.append("")
    lines.append(f"Fill: {results['fill_seconds']:.1f}s; total {results['total_seconds']:.0f}s")
    return "\n".join(lines)


async def run(
    reactor: Any, args: argparse.Namespace, registry: RegistryServer, work: Path, started: list[Any]
) -> dict[str, Any]:
    assert registry.process is not None
    results: dict[str, Any] = {"layouts": []}
    began = time.monotonic()
    manifest, blobs = await seed_image(registry.url)
    chosen = layouts(args.sizes, args.one)

    def fill() -> None:
        for layout in chosen:
            for path, tags in layout.repositories.items():
                write_repository(registry.root, f"{layout.namespace}/{path}", tags, blobs, manifest)

    await deferToThread(fill)
    results["fill_seconds"] = time.monotonic() - began
    print(
        f"# filled {sum(layout.tags for layout in chosen):,} tags in {results['fill_seconds']:.1f}s",
        flush=True,
    )

    pki = await deferToThread(Pki.create, work / "pki")
    proxy_ca = await deferToThread(Authority.create, work / "pki" / "front-proxy", "front-proxy")
    proxy = await deferToThread(proxy_ca.client, "front-proxy-client", (), "front-proxy-client")
    front_proxy = (
        f"--requestheader-client-ca-file={proxy_ca.cert_file}",
        "--requestheader-allowed-names=front-proxy-client",
    )
    process, url = start_server(work, pki, registry.url, extra_args=front_proxy, profile=args.profile)
    started.append(process)
    ca_file = str(pki.server_ca.cert_file)
    await deferToThread(wait_ready, url, ca_file, process, work / "payloadtags.log")
    server = Server(reactor, url, pki)
    pids = {"server": process.pid, "registry": registry.process.pid}
    servers: dict[str, Server] = {}  # --server-src: this tree's server and the other's, by their names
    if args.server_src:
        (work / "before").mkdir()
        before, before_url = start_server(work / "before", pki, registry.url, server_src=args.server_src)
        started.append(before)
        await deferToThread(wait_ready, before_url, ca_file, before, work / "before" / "payloadtags.log")
        servers = {"after": server, "before": Server(reactor, before_url, pki)}
        pids |= {"after": process.pid, "before": before.pid}
    results["rss_kib_at_start"] = proc_status(process.pid)
    crowd = Server(reactor, url, pki, proxy=proxy)  # the 50 identical lists, as the aggregator sends them
    floor = Floor(reactor, registry.url)
    kubectl = Kubectl.write(work / "kubectl", url, pki.server_ca.cert_file, pki.admin)
    access = AccessLog(registry.log_file)
    replay = Replay()
    replay_port = listen_replay(reactor, replay, pki)
    replay.url = f"https://127.0.0.1:{replay_port.getHost().port}"
    replayed = Kubectl.write(work / "kubectl-replay", replay.url, pki.server_ca.cert_file, pki.admin)
    try:
        for layout in chosen:
            print(f"# measuring {layout.namespace} ({layout.tags:,} tags)", flush=True)
            if args.coalescing:
                results["layouts"].append(await measure_coalescing(layout, crowd, access, args.reps))
                continue
            if servers:
                results["layouts"].append(
                    await measure_before_after(reactor, layout, servers, floor, pids, args.reps)
                )
                continue
            results["layouts"].append(
                await measure_layout(
                    reactor,
                    layout,
                    server,
                    floor,
                    kubectl,
                    access,
                    pids,
                    ca_file,
                    args.reps,
                    replay=replay,
                    replayed=replayed,
                )
            )
        if not args.coalescing and not servers:
            # After every size's single lists: what these lists hold is in no size's peak RSS. Before
            # the watch: its scope's source, kept 120 s after it, resyncs that namespace every 30 s,
            # which would add its reads to a window of 50 lists (53x one list's for one1000, 8 Dec)
            # and its CPU to the throughput rounds.
            for layout, measured_ in zip(chosen, results["layouts"], strict=True):
                if layout.tags > args.concurrent_up_to:
                    continue
                print(f"# concurrent lists of {layout.namespace}", flush=True)
                more = await measure_concurrent(layout, server, floor, access, crowd)
                measured_["registry_requests"] |= more.pop("registry_requests")
                measured_ |= more
            if args.watch and chosen:
                # /livez while a watch of the largest namespace sends its first events (one ADDED a tag).
                largest = max(chosen, key=lambda layout: layout.tags)
                print(f"# a watch of {largest.namespace} from no resourceVersion, /livez polled", flush=True)
                took: list[float] = []

                async def watch() -> None:
                    took.append(
                        await deferToThread(
                            watch_initial,
                            url,
                            ca_file,
                            pki.admin.cert_file,
                            pki.admin.key_file,
                            largest.namespace,
                            largest.tags,
                        )
                    )

                stall = await with_livez(reactor, server.url, ca_file, watch)
                results["watch"] = {
                    "namespace": largest.namespace,
                    "events": largest.tags,
                    "seconds": took[0],
                    "livez_stall": stall,
                }
        results["rss_kib_after"] = proc_status(process.pid)
        if args.settle:
            # Idle until the lists' caches have expired: what the server gives back afterwards.
            print(f"# idle for {args.settle:.0f} s", flush=True)
            results["settle_seconds"] = args.settle
            await deferLater(reactor, args.settle, lambda: None)
            results["rss_kib_settled"] = proc_status(process.pid)
    finally:
        await server.pool.closeCachedConnections()
        await crowd.pool.closeCachedConnections()
        for compared in servers.values():
            await compared.pool.closeCachedConnections()
        await floor.client.pool.closeCachedConnections()
        await replay_port.stopListening()
        await deferToThread(stop_process, process)
    return results


def main(argv: list[str] | None = None) -> int:
    from list_latency import run_with_registry

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[1000, 10000])
    parser.add_argument(
        "--one", type=int, default=10000, help="tags of the one-repository namespace (0: none)"
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--concurrent-up-to",
        type=int,
        default=20_000,
        help="measure 50 identical and 10 concurrent lists only for namespaces of at most this many tags",
    )
    parser.add_argument(
        "--coalescing",
        action="store_true",
        help="measure only the registry requests of one list and of 50 identical lists sent at once "
        "(--reps runs of them; about a minute with --sizes 10000)",
    )
    parser.add_argument(
        "--server-src",
        help="another tree's src/ directory: measure only the unpaged JSON and 10-concurrent-lists rows, "
        "of that tree's server (before) and this one's (after) alternated with the floor",
    )
    parser.add_argument("--profile", type=Path, help="run this tree's server under cProfile, stats there")
    parser.add_argument(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="skip the /livez poll during a watch's first events of the largest namespace",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="then leave the server idle this many seconds and report its RSS (the caches of lists, walks "
        "and list records are gone within 180 s)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = run_with_registry(
        "payloadtags-scale-",
        lambda reactor, registry, work, started: run(reactor, args, registry, work, started),
        registry_config={"log": {"level": "warn", "accesslog": {"disabled": False}}},
    )
    summary = summarize_coalescing if args.coalescing else summarize
    return report(results, summarize_before_after if args.server_src else summary, args.json)


if __name__ == "__main__":
    sys.exit(main())
