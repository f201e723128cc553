"""Watch figures: event latency, the cost of idle watchers, informer correctness under churn.

    .venv/bin/python bench/watch.py            # about 3 minutes
    .venv/bin/python bench/watch.py --quick    # fewer samples and watchers, about 1 minute

Everything runs on 127.0.0.1: a fresh docker-registry, `payloadtags serve` as a child process (standalone,
AlwaysAllow, client certificates), and this script as the clients. Three parts:

1. Latency from a registry change to the watcher's event, p50/p99: (a) with notifications: the push or
   delete, then the notification the registry would send (POSTed by this script right after the change
   returns, as the registry's notification endpoint does asynchronously), (b) with the periodic resync
   only (`--watch-resync-period=2s`). The figure is from the moment the change returned to the moment the
   event line arrived.
2. Idle cost: W watchers spread over 100 namespaces (W = 100, then 1,000): server CPU per second, RSS, and
   registry operations per resync period (from /metrics), over an idle window. Registry operations should
   not depend on W: one resync per scope, shared.
3. Informer correctness: informers (list, then watch from the list's resourceVersion; relist on ERROR or
   a stream end) on 5 namespaces while random pushes and deletes happen and the server is restarted once
   (a new run: its resourceVersions are new, the informers' old ones get 410). After the churn, each
   informer's cache must equal a fresh list.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import treq
from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredQueue, gatherResults
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH.parent / "src"))  # this tree's code, also where .venv is another tree's

import list_latency as ll  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.harness import Pki  # noqa: E402
from tests.support.registry_server import RegistryServer, free_port  # noqa: E402

B = "/apis/payload-registry.deckhouse.io/v1alpha1"
TOKEN = "bench-watch-token"


def collection(namespace: str | None) -> str:
    return f"{B}/namespaces/{namespace}/payloadrepositorytags" if namespace else f"{B}/payloadrepositorytags"


# --- the server --------------------------------------------------------------------------------------


def start_server(work: Path, pki: Pki, registry_url: str, port: int, *flags: str) -> subprocess.Popen[bytes]:
    token = work / "events.token"
    token.write_text(TOKEN + "\n")
    command = [
        str(ll.ROOT / ".venv" / "bin" / "payloadtags"),
        "serve",
        *pki.standalone_args(port, registry_url),
        "--registry-host=registry.bench.example",
        f"--registry-events-token-file={token}",
        "--max-connections=5000",
        # Every client of this script is one source address (127.0.0.1), and each watch holds a
        # connection: with the default cap of 100 per address the idle phase's 100 watchers took them
        # all and its GET /metrics was closed before its handshake (ResponseNeverReceived). In a cluster
        # the watchers come through kube-apiserver, whose verified front-proxy connections are never
        # counted, and Prometheus from an address of its own (docs/configuration.md).
        "--max-connections-per-client=5000",
        # One client holds the 1,000 idle watchers: past the default 250 per user, and one user holds at
        # most a third of --max-watches (docs/watch.md).
        "--max-watches=3000",
        "--max-watches-per-user=1000",
        *flags,
    ]
    log = (work / f"payloadtags-{port}.log").open("ab")
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=ll.server_environ(),  # this tree's src first, also where .venv is another tree's
        )
    finally:
        log.close()
    ll.wait_ready(
        f"https://127.0.0.1:{port}", str(pki.server_ca.cert_file), process, work / f"payloadtags-{port}.log"
    )
    return process


# --- clients -----------------------------------------------------------------------------------------


class Lines(Protocol):
    def __init__(self) -> None:
        self.lines: DeferredQueue[dict[str, Any]] = DeferredQueue()
        self.ended: Deferred[None] = Deferred()
        self._partial = b""

    def dataReceived(self, data: bytes) -> None:
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        for line in complete:
            if line.strip():
                self.lines.put(json.loads(line))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.ended.called:
            self.ended.callback(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


class Client:
    def __init__(self, reactor: Any, url: str, pki: Pki) -> None:
        self.reactor = reactor
        self.url = url
        creator = ll._ClientTLS(
            str(pki.server_ca.cert_file), str(pki.admin.cert_file), str(pki.admin.key_file)
        )
        self.policy = ll._Policy(creator)
        self.pool = ll._pool(reactor, 16)
        self.http = treq.client.HTTPClient(Agent(reactor, contextFactory=self.policy, pool=self.pool))

    async def get_json(self, path: str) -> Any:
        response = await self.http.get(self.url + path)
        body = await treq.content(response)
        return json.loads(body)

    async def post_events(self, *changes: tuple[str, str]) -> None:
        body = {"events": [{"action": a, "target": {"repository": r}} for a, r in changes]}
        response = await self.http.post(
            self.url + "/registry/events",
            data=json.dumps(body).encode(),
            headers=Headers({"Authorization": [f"Bearer {TOKEN}"], "Content-Type": ["application/json"]}),
        )
        await treq.content(response)

    async def watch(self, path: str) -> Lines:
        # Its own connection: a watch holds one.
        agent = Agent(
            self.reactor, contextFactory=self.policy, pool=HTTPConnectionPool(self.reactor, persistent=False)
        )
        response = await treq.client.HTTPClient(agent).get(self.url + path)
        if response.code != 200:
            raise RuntimeError(f"watch {path}: {response.code} {await treq.content(response)!r}")
        lines = Lines()
        response.deliverBody(lines)
        return lines

    async def metric(self, name: str) -> float:
        response = await self.http.get(self.url + "/metrics")
        text = (await treq.content(response)).decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        )


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def next_line(reactor: Any, lines: Lines, within: float = 30.0) -> dict[str, Any]:
    waiting = lines.lines.get()
    waiting.addTimeout(within, reactor)
    return await waiting


# --- 1. latency ----------------------------------------------------------------------------------------


async def latency(
    reactor: Any, client: Client, registry_url: str, namespace: str, samples: int, notify: bool, period: float
) -> dict[str, Any]:
    repository = f"{namespace}/app"
    await deferToThread(images.push_oci_image, registry_url, repository, "seed", seed="seed")
    # The repository index (on with notifications) learns of new repositories from push events.
    await client.post_events(("push", repository))
    listing = await client.get_json(collection(namespace))
    lines = await client.watch(
        f"{collection(namespace)}?watch=true&resourceVersion={listing['metadata']['resourceVersion']}"
    )
    adds: list[float] = []
    deletes: list[float] = []
    rng = random.Random(len(namespace))
    try:
        for i in range(samples):
            tag = f"t{i}"
            if not notify:
                # Changes land at a random phase of the resync period, not right after a resync.
                await sleep(reactor, rng.uniform(0, period))
            digest = await deferToThread(
                images.push_oci_image, registry_url, repository, tag, seed=f"{namespace}-{i}"
            )
            done = time.monotonic()
            if notify:
                await client.post_events(("push", repository))
            event = await next_line(reactor, lines)
            assert event["type"] == "ADDED" and event["object"]["spec"]["tag"] == tag, event
            adds.append(time.monotonic() - done)
            if not notify:
                await sleep(reactor, rng.uniform(0, period))
            status = await deferToThread(images.delete_manifest, registry_url, repository, digest)
            assert status == 202, status
            done = time.monotonic()
            if notify:
                await client.post_events(("delete", repository))
            event = await next_line(reactor, lines)
            assert event["type"] == "DELETED" and event["object"]["spec"]["tag"] == tag, event
            deletes.append(time.monotonic() - done)
    finally:
        lines.close()
    return {
        "push_p50_ms": ll.percentile(adds, 0.5) * 1000,
        "push_p99_ms": ll.percentile(adds, 0.99) * 1000,
        "delete_p50_ms": ll.percentile(deletes, 0.5) * 1000,
        "delete_p99_ms": ll.percentile(deletes, 0.99) * 1000,
        "samples": samples,
    }


# --- 2. idle cost --------------------------------------------------------------------------------------


async def idle_cost(
    reactor: Any, client: Client, pid: int, watchers: int, namespaces: list[str], window: float, period: float
) -> dict[str, Any]:
    streams: list[Lines] = []
    for i in range(watchers):
        namespace = namespaces[i % len(namespaces)]
        streams.append(
            await client.watch(
                f"{collection(namespace)}?watch=true&resourceVersion=0&allowWatchBookmarks=true"
            )
        )
    await sleep(reactor, period * 1.5)  # every scope has its source and resynced once
    before_ops = await client.metric("payloadtags_registry_operations_total")
    before_cpu = ll.cpu_seconds(pid)
    started = time.monotonic()
    await sleep(reactor, window)
    cpu = ll.cpu_seconds(pid) - before_cpu
    elapsed = time.monotonic() - started
    ops = await client.metric("payloadtags_registry_operations_total") - before_ops
    rss = ll.proc_status(pid)["VmRSS"]
    # Connections a limit closed (must be 0): a refused watch or scrape means fewer watchers than W.
    refused = await client.metric("payloadtags_connections_refused_total")
    for stream in streams:
        stream.close()
    await sleep(reactor, 0.5)
    return {
        "watchers": watchers,
        "cpu_per_second": cpu / elapsed,
        "rss_mib": rss / 1024,
        "registry_ops_per_period": ops / (elapsed / period),
        "connections_refused": refused,
    }


# --- 3. informers under churn ----------------------------------------------------------------------------


class Informer:
    """As a reflector: list, watch from the list's resourceVersion, re-watch from the last one seen when
    a stream ends, relist on ERROR 410."""

    def __init__(self, reactor: Any, client_of: Any, namespace: str) -> None:
        self.reactor = reactor
        self.client_of = client_of
        self.namespace = namespace
        self.cache: set[str] = set()
        self.relists = 0
        self.errors410 = 0
        self.rewatches = 0
        self.running = True
        self.lines: Lines | None = None
        self.rv: str | None = None

    async def run(self) -> None:
        while self.running:
            try:
                if self.rv is None:
                    listing = await self.client_of().get_json(collection(self.namespace))
                    self.cache = {i["metadata"]["name"] for i in listing["items"]}
                    self.rv = listing["metadata"]["resourceVersion"]
                    self.relists += 1
                else:
                    self.rewatches += 1
                self.lines = await self.client_of().watch(
                    f"{collection(self.namespace)}?watch=true&resourceVersion={self.rv}&allowWatchBookmarks=true"
                )
                while self.running:
                    event = await _first(self.lines.lines.get(), self.lines.ended)
                    if event is None:
                        break  # the stream ended: watch again from the last resourceVersion
                    if event["type"] == "ERROR":
                        self.errors410 += event["object"].get("code") == 410
                        self.rv = None  # relist
                        break
                    self.rv = event["object"]["metadata"]["resourceVersion"]
                    name = event["object"]["metadata"].get("name")
                    if event["type"] == "ADDED":
                        self.cache.add(name)
                    elif event["type"] == "DELETED":
                        self.cache.discard(name)
            except Exception:
                await sleep(self.reactor, 0.2)  # the server is restarting

    def stop(self) -> None:
        self.running = False
        if self.lines is not None:
            self.lines.close()


async def _first(waiting: Deferred[dict[str, Any]], ended: Deferred[None]) -> dict[str, Any] | None:
    done: Deferred[Any] = Deferred()
    waiting.addCallback(lambda value: done.callback(value) if not done.called else None)
    ended.addCallback(lambda _: done.callback(None) if not done.called else None)
    result: dict[str, Any] | None = await done
    if result is None and not waiting.called:
        waiting.cancel()
        waiting.addErrback(lambda _: None)
    return result


async def churn(
    reactor: Any,
    state: dict[str, Any],
    registry_url: str,
    work: Path,
    pki: Pki,
    port: int,
    flags: tuple[str, ...],
    operations: int,
    seed: int,
) -> dict[str, Any]:
    rng = random.Random(seed)
    namespaces = [f"churn{i}" for i in range(5)]
    for namespace in namespaces:
        await deferToThread(
            images.push_oci_image, registry_url, f"{namespace}/app", "base", seed=f"{namespace}-base"
        )
    informers = [Informer(reactor, lambda: state["client"], namespace) for namespace in namespaces]
    runs = [Deferred.fromCoroutine(i.run()) for i in informers]
    live: dict[str, str] = {}  # "<ns>/<repo>:<tag>" -> digest
    restarted = False
    for op in range(operations):
        namespace = rng.choice(namespaces)
        repository = f"{namespace}/r{rng.randrange(3)}"
        if live and rng.random() < 0.4:
            key = rng.choice(sorted(live))
            repo, _, tag = key.rpartition(":")
            digest = live.pop(key)
            await deferToThread(images.delete_manifest, registry_url, repo, digest)
            await state["client"].post_events(("delete", repo))
        else:
            tag = f"t{op}"
            digest = await deferToThread(
                images.push_oci_image, registry_url, repository, tag, seed=f"{repository}:{tag}"
            )
            live[f"{repository}:{tag}"] = digest
            if rng.random() < 0.5:  # notifications get lost too: the resync must catch these
                await state["client"].post_events(("push", repository))
        if not restarted and op == operations // 2:
            restarted = True
            await deferToThread(ll.stop_process, state["process"])
            state["process"] = await deferToThread(start_server, work, pki, registry_url, port, *flags)
            state["client"] = Client(reactor, f"https://127.0.0.1:{port}", pki)
    await sleep(reactor, 2 * 2.0 + 1)  # two resync periods: everything missed by notifications is found
    mismatches = 0
    for informer in informers:
        fresh = await state["client"].get_json(collection(informer.namespace))
        if informer.cache != {i["metadata"]["name"] for i in fresh["items"]}:
            mismatches += 1
    for informer in informers:
        informer.stop()
    await gatherResults(runs)
    return {
        "operations": operations,
        "informers": len(informers),
        "mismatching_informers": mismatches,
        "relists": sum(i.relists for i in informers),
        "errors_410": sum(i.errors410 for i in informers),
        "rewatches": sum(i.rewatches for i in informers),
    }


# --- main -------------------------------------------------------------------------------------------------


async def main(
    reactor: Any, args: argparse.Namespace, registry: RegistryServer, work: Path
) -> dict[str, Any]:
    pki = Pki.create(work / "pki")
    results: dict[str, Any] = {}
    samples = 10 if args.quick else 30
    # 1a/1b: notifications (long resync) and resync only
    for label, flags, notify, period in (
        ("notifications", ("--watch-resync-period=300s",), True, 300.0),
        ("resync_only_2s", ("--watch-resync-period=2s",), False, 2.0),
    ):
        port = free_port()
        process = await deferToThread(start_server, work, pki, registry.url, port, *flags)
        try:
            client = Client(reactor, f"https://127.0.0.1:{port}", pki)
            results[f"latency_{label}"] = await latency(
                reactor, client, registry.url, f"lat-{label.replace('_', '-')}", samples, notify, period
            )
            print(label, results[f"latency_{label}"], flush=True)
        finally:
            await deferToThread(ll.stop_process, process)
    # 2: idle cost
    namespaces = [f"idle{i:03d}" for i in range(100)]
    for namespace in namespaces:
        await deferToThread(images.push_oci_image, registry.url, f"{namespace}/app", "v1", seed="idle")
    period = 5.0
    window = 10.0 if args.quick else 30.0
    for watchers in (100, 300 if args.quick else 1000):
        port = free_port()
        process = await deferToThread(
            start_server, work, pki, registry.url, port, f"--watch-resync-period={period:g}s"
        )
        try:
            client = Client(reactor, f"https://127.0.0.1:{port}", pki)
            results[f"idle_{watchers}"] = await idle_cost(
                reactor, client, process.pid, watchers, namespaces, window, period
            )
            print("idle", results[f"idle_{watchers}"], flush=True)
        finally:
            await deferToThread(ll.stop_process, process)
    # 3: informers under churn, with a restart
    port = free_port()
    flags = ("--watch-resync-period=2s",)
    state: dict[str, Any] = {
        "process": await deferToThread(start_server, work, pki, registry.url, port, *flags)
    }
    state["client"] = Client(reactor, f"https://127.0.0.1:{port}", pki)
    try:
        results["churn"] = await churn(
            reactor, state, registry.url, work, pki, port, flags, 40 if args.quick else 150, args.seed
        )
        print("churn", results["churn"], flush=True)
    finally:
        await deferToThread(ll.stop_process, state["process"])
    return results


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    try:
        with RegistryServer() as registry:
            results = ll.run_reactor(lambda reactor: main(reactor, args, registry, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["machine"] = ll.machine()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
