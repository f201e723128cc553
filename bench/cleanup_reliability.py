"""Reliability and speed of namespace cleanup under injected failures, in one run.

What it does (all on 127.0.0.1; everything it starts is stopped at the end, even on error):

1. starts a real ``docker-registry`` behind a TCP proxy that can go down or be pointed at a
   read-only twin of the same storage, and the in-process Kubernetes API test double;
2. fills the registry: N "doomed" namespaces and as many live ones (half of them prefix siblings
   ``<doomed>-a``), each with 4 repositories (one nested) of 3 tags on 2 distinct manifests;
3. runs two cleanup replicas (separate KubeClient and RegistryClient each) with leader election;
4. **fault run**: deletes the N doomed namespaces one every 0.25 s (every other one finalized at once,
   the rest left Terminating), injecting on the way: watch stream cuts, 410s (cut + compaction),
   two cluster API outages longer than the renew deadline (leadership is lost and retaken), a
   registry outage, registry read-only windows, a leader crash (Lease left to expire) with a
   replacement replica, and new namespaces created with content while sweeps run. Then it checks
   that **no tag is left** in any doomed namespace and that **every tag of every live namespace is
   still there on the same digest**;
5. **timing run** (no faults): M namespaces of the same shape, deleted one at a time, interleaved
   with a baseline that does the registry work directly on a twin namespace at the same
   concurrency: (a) ``direct``: catalog seek, tags, resolve, delete each distinct digest;
   (b) ``deletes only``: just the DELETE requests, digests known in advance. The cleanup time is
   from the Namespace deletion in the API to the cascade's verified-empty listing.

Usage: .venv/bin/python bench/cleanup_reliability.py [--namespaces 50] [--timing 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.threads import deferToThread

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))  # this tree's code, also where .venv is another tree's

from tests.support import images  # noqa: E402
from tests.support.cleanup_fixtures import RegistryProxy, fast_options  # noqa: E402
from tests.support.kubeapi import KubeApiDouble  # noqa: E402
from tests.support.kubeapi.resources import NAMESPACES  # noqa: E402
from tests.support.registry_server import RegistryServer  # noqa: E402

from payloadtags.cleanup import CleanupController  # noqa: E402
from payloadtags.inventory import CatalogCursor  # noqa: E402
from payloadtags.kube import KubeClient, load_cluster_config  # noqa: E402
from payloadtags.registry import RegistryClient, RegistrySettings  # noqa: E402
from payloadtags.registry.errors import RegistryNotFound  # noqa: E402

REPOSITORIES = ("app", "web", "group/api", "tools")
TAGS = ("v1", "latest", "v2")  # v1 and latest share a manifest
CONCURRENCY = 4
# Shorter than client-go's 15/10/2 s so that a crashed leader is replaced within the run, but not
# so short that a busy single process (two replicas, the API double, the checker) misses renewals.
ELECTION = {"lease_duration": 4.0, "renew_deadline": 3.0, "retry_period": 0.5}


def fill_namespace(url: str, namespace: str) -> dict[str, dict[str, str]]:
    """Blocking: push the standard shape; returns repository -> tag -> digest."""
    made: dict[str, dict[str, str]] = {}
    for repository in REPOSITORIES:
        name = f"{namespace}/{repository}"
        first = images.push_oci_image(url, name, "v1", seed=f"{name}:1")
        images.tag_manifest(url, name, "v1", "latest")
        second = images.push_oci_image(url, name, "v2", seed=f"{name}:2")
        made[name] = {"v1": first, "latest": first, "v2": second}
    return made


def fill_all(url: str, namespaces: list[str]) -> dict[str, dict[str, dict[str, str]]]:
    with ThreadPoolExecutor(8) as pool:
        return dict(zip(namespaces, pool.map(lambda ns: fill_namespace(url, ns), namespaces), strict=True))


async def snapshot(client: RegistryClient, namespace: str) -> dict[str, dict[str, str]]:
    """repository -> tag -> digest for everything under <namespace>/ (through the real API)."""
    found: dict[str, dict[str, str]] = {}
    cursor = CatalogCursor(client, namespace, namespace, 1000)
    while not cursor.done:
        for repository, _, _ in await cursor.next():
            for tag in await client.tags(repository):
                try:
                    found.setdefault(repository, {})[tag] = await client.resolve(repository, tag)
                except RegistryNotFound:
                    pass  # deleted between the two reads
    return found


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds)


async def until(reactor: Any, condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = reactor.seconds() + within
    while not condition():
        if reactor.seconds() > deadline:
            raise RuntimeError(f"timed out after {within}s waiting for {what}")
        await sleep(reactor, 0.01)


class Replicas:
    def __init__(self, reactor: Any, kubeconfig: str, registry_url: str) -> None:
        self.reactor = reactor
        self.config = load_cluster_config(kubeconfig)
        self.registry_url = registry_url
        self.all: list[tuple[CleanupController, KubeClient, RegistryClient]] = []
        self.started = 0

    def add(self) -> CleanupController:
        self.started += 1
        assert self.config is not None
        kube = KubeClient(self.reactor, self.config, request_timeout=2.0)
        registry = RegistryClient(self.reactor, RegistrySettings(url=self.registry_url, timeout=2.0))
        controller = CleanupController(
            self.reactor,
            kube,
            registry,
            fast_options(
                f"replica-{self.started}",
                election=ELECTION,
                cascade_concurrency=CONCURRENCY,
                namespace_concurrency=4,
            ),
        )
        controller.start()
        self.all.append((controller, kube, registry))
        return controller

    @property
    def running(self) -> list[CleanupController]:
        return [c for c, _, _ in self.all if c._started]

    def leader(self) -> CleanupController | None:
        leaders = [c for c in self.running if c.is_leader]
        return leaders[0] if len(leaders) == 1 else None

    def results(self) -> list[Any]:
        return [r for c, _, _ in self.all for r in c.results]

    def metric(self, name: str) -> float:
        return float(sum(getattr(c.metrics, name) for c, _, _ in self.all))

    async def stop(self, controller: CleanupController, *, release: bool = True) -> None:
        for c, kube, registry in self.all:
            if c is controller:
                await c.stop(release=release)
                await kube.close()
                await registry.close()

    async def stop_all(self) -> None:
        for c, _, _ in self.all:
            if c._started:
                await self.stop(c)


async def fault_run(
    reactor: Any,
    api: KubeApiDouble,
    kubeconfig: str,
    registry: RegistryServer,
    readonly: RegistryServer,
    n: int,
    log: Any,
) -> dict[str, Any]:
    proxy = RegistryProxy(reactor, registry)
    doomed = [f"doomed-{i:03d}" for i in range(n)]
    live = [f"{ns}-a" if i % 2 == 0 else f"live-{i:03d}" for i, ns in enumerate(doomed)]
    newcomers = [f"new-{i:03d}" for i in range(5)]
    log(f"filling {len(doomed) + len(live)} namespaces ({len(REPOSITORIES)} repositories x {len(TAGS)} tags)")
    made = await deferToThread(fill_all, registry.url, doomed + live)
    for name in doomed + live:
        api.store.create(NAMESPACES, {"metadata": {"name": name}})
    replicas = Replicas(reactor, kubeconfig, proxy.url)
    replicas.add()
    replicas.add()
    await until(reactor, lambda: replicas.leader() is not None, 10, "a leader")
    faults: list[str] = []
    deleted_at: dict[str, float] = {}
    newcomer_content: dict[str, dict[str, dict[str, str]]] = {}
    started = reactor.seconds()
    for i, namespace in enumerate(doomed):
        if i % 5 == 1:
            faults.append(f"{i}: watch streams cut ({api.cut_watches()})")
        if i % 10 == 3:
            api.cut_watches()
            api.compact()
            faults.append(f"{i}: watch streams cut and history compacted (410 on resume)")
        if i in (n * 3 // 10, n * 7 // 10):
            await api.go_down()
            faults.append(f"{i}: cluster API down for 1.5 s (namespaces deleted meanwhile)")
            reactor.callLater(1.5, api.come_up)
        if i == n // 2:
            await proxy.go_down()
            faults.append(f"{i}: registry down for 1.0 s")
            reactor.callLater(1.0, proxy.come_up)
        if i in (n * 4 // 10, n * 9 // 10):
            proxy.point_at(readonly)
            faults.append(f"{i}: registry read-only for 1.0 s")
            reactor.callLater(1.0, proxy.point_at, registry)
        if i == n * 6 // 10:
            await until(reactor, lambda: replicas.leader() is not None, 10, "a leader to crash")
            leader = replicas.leader()
            assert leader is not None
            await replicas.stop(leader, release=False)
            replicas.add()
            faults.append(f"{i}: leader {leader.options.leader_election.identity} crashed; new replica")
        if i % 10 == 5 and len(newcomer_content) < len(newcomers):
            name = newcomers[len(newcomer_content)]
            api.store.create(NAMESPACES, {"metadata": {"name": name}})
            newcomer_content[name] = await deferToThread(fill_namespace, registry.url, name)
        api.store.delete(NAMESPACES, namespace)
        if i % 2 == 1:
            api.finalize_namespace(namespace)
        deleted_at[namespace] = reactor.seconds()
        await sleep(reactor, 0.25)
    api.come_up()
    proxy.come_up()
    proxy.point_at(registry)
    log("all namespaces deleted; waiting for the content to be gone")
    checker = RegistryClient(reactor, RegistrySettings(url=registry.url, timeout=5.0))
    try:
        remaining: dict[str, Any] = {}
        deadline = reactor.seconds() + 120
        while reactor.seconds() < deadline:
            remaining = {ns: await snapshot(checker, ns) for ns in doomed}
            remaining = {ns: c for ns, c in remaining.items() if c}
            if not remaining:
                break
            await sleep(reactor, 0.5)
        wall = reactor.seconds() - started
        left = sum(len(tags) for content in remaining.values() for tags in content.values())
        touched = 0
        expected = {ns: made[ns] for ns in live} | newcomer_content
        for namespace, content in expected.items():
            now = await snapshot(checker, namespace)
            for repository, tags in content.items():
                for tag, digest in tags.items():
                    if now.get(repository, {}).get(tag) != digest:
                        touched += 1
    finally:
        await checker.close()
    # Deletion to the first verified-empty listing after it (a cascade that found the namespace
    # empty because an aborted one had deleted everything before it counts too).
    emptied: dict[str, float] = {}
    for result in replicas.results():
        if result.namespace in deleted_at and result.finished >= deleted_at[result.namespace]:
            emptied[result.namespace] = min(emptied.get(result.namespace, result.finished), result.finished)
    latencies = [emptied[ns] - deleted_at[ns] for ns in doomed if ns in emptied]
    summary = {
        "namespaces_deleted": len(doomed),
        "tags_in_deleted_namespaces": len(doomed) * len(REPOSITORIES) * len(TAGS),
        "tags_left_behind": left,
        "live_namespaces": len(expected),
        "live_tags": sum(len(t) for c in expected.values() for t in c.values()),
        "live_tags_touched": touched,
        "faults": faults,
        "replicas_started": replicas.started,
        "leader_acquisitions": replicas.metric("leader_acquisitions_total"),
        "cascades_succeeded": replicas.metric("cascades_succeeded_total"),
        "cascades_aborted": replicas.metric("cascades_aborted_total"),
        "registry_errors_retried": replicas.metric("registry_errors_total"),
        "readonly_waits": replicas.metric("registry_readonly_waits_total"),
        "sweeps": replicas.metric("sweeps_total"),
        "sweep_orphans": replicas.metric("sweep_orphans_found_total"),
        "sweep_skipped_existing": replicas.metric("sweep_skipped_existing_total"),
        "deletion_to_empty_seconds": _stats(latencies),
        "deletion_to_empty_by_namespace": [round(x, 2) for x in latencies],
        "wall_seconds": round(wall, 2),
    }
    await replicas.stop_all()
    await proxy.go_down()
    return summary


async def direct_delete(client: RegistryClient, namespace: str) -> None:
    """The baseline: what any client must do to empty a namespace, at the same concurrency."""
    limit = DeferredSemaphore(CONCURRENCY)

    async def limited(fn: Any, *args: Any) -> Any:
        await limit.acquire()
        try:
            return await fn(*args)
        finally:
            limit.release()

    cursor = CatalogCursor(client, namespace, namespace, 1000)
    repositories = []
    while not cursor.done:
        repositories += [r for r, _, _ in await cursor.next()]

    async def one(repository: str) -> None:
        tags = await limited(client.tags, repository)
        digests = await _gather([limited(client.resolve, repository, tag) for tag in tags])
        await _gather([limited(client.delete_manifest, repository, d) for d in sorted(set(digests))])

    await _gather([one(r) for r in repositories])


async def deletes_only(client: RegistryClient, content: dict[str, dict[str, str]]) -> None:
    limit = DeferredSemaphore(CONCURRENCY)
    work = sorted({(r, d) for r, tags in content.items() for d in tags.values()})

    async def delete(repository: str, digest: str) -> None:
        await limit.acquire()
        try:
            await client.delete_manifest(repository, digest)
        finally:
            limit.release()

    await _gather([delete(r, d) for r, d in work])


async def _gather(coroutines: list[Any]) -> list[Any]:
    return await gatherResults([Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True)


async def timing_run(
    reactor: Any, api: KubeApiDouble, kubeconfig: str, registry: RegistryServer, m: int, log: Any
) -> dict[str, Any]:
    cleaned = [f"timed-{i:03d}" for i in range(m)]
    direct = [f"direct-{i:03d}" for i in range(m)]
    only = [f"only-{i:03d}" for i in range(m)]
    log(f"filling {3 * m} namespaces for the timing run")
    made = await deferToThread(fill_all, registry.url, cleaned + direct + only)
    for name in cleaned + direct + only:
        api.store.create(NAMESPACES, {"metadata": {"name": name}})
    replicas = Replicas(reactor, kubeconfig, registry.url)
    controller = replicas.add()
    await until(reactor, lambda: controller.is_leader and controller.synced, 10, "the leader")
    await until(reactor, lambda: controller.last_sweep is not None and not controller.busy, 10, "first sweep")
    client = RegistryClient(reactor, RegistrySettings(url=registry.url, timeout=5.0))
    times: dict[str, list[float]] = {"cleanup": [], "direct": [], "deletes_only": []}
    try:
        for i in range(m):
            order = ["cleanup", "direct", "deletes_only"]
            order = order[i % 3 :] + order[: i % 3]  # rotate which goes first
            for variant in order:
                if variant == "cleanup":
                    count = len(controller.results)
                    t0 = reactor.seconds()
                    api.store.delete(NAMESPACES, cleaned[i])

                    def grew(before: int = count) -> bool:
                        return len(controller.results) > before

                    await until(reactor, grew, 30, cleaned[i])
                    times["cleanup"].append(controller.results[-1].finished - t0)
                elif variant == "direct":
                    t0 = reactor.seconds()
                    await direct_delete(client, direct[i])
                    times["direct"].append(reactor.seconds() - t0)
                else:
                    t0 = reactor.seconds()
                    await deletes_only(client, made[only[i]])
                    times["deletes_only"].append(reactor.seconds() - t0)
        for namespaces in (cleaned, direct, only):
            for ns in namespaces:
                if await snapshot(client, ns):
                    raise RuntimeError(f"timing run left content in {ns}")
    finally:
        await client.close()
        await replicas.stop_all()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "namespaces_each": m,
        "concurrency": CONCURRENCY,
        "cleanup_seconds": _stats(times["cleanup"]),
        "direct_seconds": _stats(times["direct"]),
        "deletes_only_seconds": _stats(times["deletes_only"]),
        "ratio_cleanup_to_direct": round(med["cleanup"] / med["direct"], 2),
        "ratio_cleanup_to_deletes_only": round(med["cleanup"] / med["deletes_only"], 2),
    }


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 4),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 4),
        "max": round(ordered[-1], 4),
    }


async def run(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="payloadtags-cleanup-bench-") as scratch:
        registry = RegistryServer()
        readonly = RegistryServer(root=registry.root, readonly=True)
        api = KubeApiDouble(reactor, Path(scratch) / "kubeapi", bookmark_interval=1.0)
        api.start()
        kubeconfig = str(api.write_kubeconfig(Path(scratch) / "kubeconfig"))
        try:
            log(f"fault run: {args.namespaces} namespace deletions")
            faults = await fault_run(reactor, api, kubeconfig, registry, readonly, args.namespaces, log)
            log(f"timing run: {args.timing} namespaces per variant")
            timing = await timing_run(reactor, api, kubeconfig, registry, args.timing, log)
        finally:
            await api.stop()
            readonly.signal_stop()
            registry.signal_stop()
            await deferToThread(readonly.stop)
            await deferToThread(registry.stop)
    return {"fault_run": faults, "timing_run": timing, "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespaces", type=int, default=50, help="namespaces deleted in the fault run")
    parser.add_argument("--timing", type=int, default=20, help="namespaces per variant in the timing run")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}

    async def body(reactor: Any) -> None:
        results.update(await run(reactor, args))

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(body(reactor)))
    except SystemExit as done:
        if done.code not in (0, None):
            return int(done.code) if isinstance(done.code, int) else 1
    if not results:
        return 1
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    faults = results["fault_run"]
    # Timing never fails the script; losing or wrongly deleting content does.
    return 1 if faults["tags_left_behind"] or faults["live_tags_touched"] else 0


if __name__ == "__main__":
    sys.exit(main())
