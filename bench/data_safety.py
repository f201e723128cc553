"""Data safety of registry mutations under concurrency and faults, and the cost of that safety.

Two parts, one run, one real ``docker-registry`` (distribution 2.8) on 127.0.0.1:

1. **Safety**: the seeded randomized interleaving of tests/support/interleaving.py (two replicas
   behind fault-injecting proxies, other clients pushing, single deletes, deletecollection repeated
   and parallel, cascades, kills) for ``--seeds`` seeds. Reports operations run, faults injected,
   kills, invariant violations (must be 0) and the conditional-write windows it measured.
2. **Contention timing**: a namespace of ``--tags`` tags (10 repositories, every two tags on one
   digest) removed as a namespace deletion removes it: deletecollection through two replicas at
   once, repeated until each answers 200, plus the cascade on one (the Lease holder), while other
   clients push to a live
   namespace and a replica deletes single tags there. Its time to a verified-empty namespace is
   divided by the **direct delete floor** measured in the same run on a twin namespace of the same
   shape: a minimal client (treq, the same pool size and 4 requests in flight) that lists the tags,
   resolves them and DELETEs each distinct digest once, with no queue, no checks and nothing else
   running. Repetitions interleave the two, alternating which goes first (the floor in the first,
   the contended removal in the second, and so on).

Usage: .venv/bin/python bench/data_safety.py [--seeds 20] [--tags 1000] [--reps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import treq
from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))  # this tree's code, also where .venv is another tree's

from tests.support import images  # noqa: E402
from tests.support.interleaving import USER, Config, Replica, run_seed  # noqa: E402
from tests.support.registry_server import RegistryServer  # noqa: E402

from payloadtags.api.errors import ApiError  # noqa: E402
from payloadtags.api.options import DeleteOptions, list_options  # noqa: E402
from payloadtags.names import TagRef  # noqa: E402
from payloadtags.registry import RegistryError  # noqa: E402

REPOSITORIES = 10
# A contended deletecollection is retried until it answers 200, for at most this long and this often.
COLLECTION_SECONDS = 300.0
COLLECTION_ATTEMPTS = 2000
CONCURRENCY = 4


# -- filling -----------------------------------------------------------------------------------------


def fill(url: str, namespace: str, tags: int) -> int:
    """Blocking: ``tags`` tags over REPOSITORIES repositories, two tags per digest; returns the count."""
    per_repository = tags // REPOSITORIES

    def one(r: int) -> int:
        repository = f"{namespace}/svc{r}"
        session = images.Session(url)
        base = images.get_manifest(session, repository, "t0")
        if base is None:
            images.push_oci_image(session, repository, "t0", seed=f"{repository}")
            base = images.get_manifest(session, repository, "t0")
        assert base is not None
        document = base.json()
        made = 1
        for t in range(1, per_repository):
            if t % 2 == 1:
                images.push_manifest(session, repository, f"t{t}", base.content, base.media_type)
            else:
                document["annotations"] = {"n": str(t)}
                base = images.Fetched("", base.media_type, images.canonical(document))
                images.push_manifest(session, repository, f"t{t}", base.content, base.media_type)
            made += 1
        return made

    with ThreadPoolExecutor(REPOSITORIES) as pool:
        return sum(pool.map(one, range(REPOSITORIES)))


def remaining(url: str, namespace: str) -> int:
    return sum(len(images.list_tags(url, f"{namespace}/svc{r}")) for r in range(REPOSITORIES))


# -- the direct floor ----------------------------------------------------------------------------------


async def direct_delete(reactor: Any, url: str, namespace: str) -> float:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    limit = DeferredSemaphore(CONCURRENCY)
    accept = Headers({"Accept": [images.ACCEPT]})

    async def call(method: str, path: str) -> Any:
        await limit.acquire()
        try:
            response = await treq.request(method, url + path, headers=accept, pool=pool)
            body = await treq.content(response)
            return response, body
        finally:
            limit.release()

    started = time.monotonic()
    _, body = await call("GET", f"/v2/_catalog?n=1000&last={namespace}")
    repositories = [r for r in json.loads(body)["repositories"] if r.startswith(namespace + "/")]

    async def repository(name: str) -> None:
        _, body = await call("GET", f"/v2/{name}/tags/list")
        tags = json.loads(body).get("tags") or []
        heads = await gatherResults(
            [Deferred.fromCoroutine(call("HEAD", f"/v2/{name}/manifests/{tag}")) for tag in tags]
        )
        digests = {response.headers.getRawHeaders("Docker-Content-Digest")[0] for response, _ in heads}
        await gatherResults(
            [Deferred.fromCoroutine(call("DELETE", f"/v2/{name}/manifests/{digest}")) for digest in digests]
        )

    await gatherResults([Deferred.fromCoroutine(repository(name)) for name in repositories])
    elapsed = time.monotonic() - started
    await pool.closeCachedConnections()
    return elapsed


# -- the contended removal ----------------------------------------------------------------------------


async def contended_delete(reactor: Any, url: str, namespace: str, live: str) -> dict[str, Any]:
    # Both replicas ask the cluster API, which says the namespace is Terminating: their
    # deletecollections delete by digest (`payloadtags.cleanup.removal`), as in a cluster.
    replicas = [
        Replica.make(reactor, url, timeout=10.0, deleting=lambda ns: ns == namespace, removal_budget=40.0)
        for _ in range(2)
    ]
    windows: list[float] = []
    for replica in replicas:
        replica.client.on_window = lambda kind, where, since, until: windows.append(until - since)
    done = False
    counts: collections.Counter[str] = collections.Counter()

    async def collection(replica: Replica) -> None:
        # Bounded in time and count: a removal that keeps failing is a finding, not something to wait for.
        deadline, attempts = time.monotonic() + COLLECTION_SECONDS, 0
        while time.monotonic() < deadline and attempts < COLLECTION_ATTEMPTS:
            attempts += 1
            counts["deletecollection"] += 1
            try:
                await replica.service.delete_collection(USER, namespace, list_options({}), DeleteOptions())
                return
            except (ApiError, RegistryError):
                counts["deletecollection-retried"] += 1
                await task.deferLater(reactor, 0.05, lambda: None)
        raise RuntimeError(
            f"deletecollection of {namespace} did not answer 200 in {attempts} attempts "
            f"({COLLECTION_SECONDS:.0f} s at most)"
        )

    async def background() -> None:
        # Other clients push to a live namespace; a replica deletes single tags there.
        n = 0
        while not done:
            n += 1
            repository = f"{live}/app"
            await deferToThread(images.push_oci_image, url, repository, f"b{n % 20}", seed=f"{live}-{n}")
            counts["push"] += 1
            if n % 3 == 0:
                ref = TagRef(live, "app", f"b{(n - 1) % 20}")
                try:
                    await replicas[n % 2].service.delete(USER, live, ref.name, DeleteOptions())
                    counts["single delete"] += 1
                except (ApiError, RegistryError):
                    counts["single delete failed"] += 1

    noise = Deferred.fromCoroutine(background())
    started = time.monotonic()

    # Replica 0 holds the Lease: its cascade runs, and its deletecollection waits for that cascade
    # rather than reading every tag a second time (as `CleanupController.cleaning` wires it).
    async def lead() -> None:
        await replicas[0].cascade.run(namespace)

    leader = Deferred.fromCoroutine(lead())
    assert replicas[0].remover is not None
    replicas[0].remover.running = lambda ns: leader if ns == namespace else None
    await gatherResults([Deferred.fromCoroutine(collection(r)) for r in replicas] + [leader])
    elapsed = time.monotonic() - started
    done = True
    await noise
    left = await deferToThread(remaining, url, namespace)
    for replica in replicas:
        await replica.close()
    return {"seconds": elapsed, "left": left, "windows": windows, "counts": dict(counts)}


# -- main ----------------------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(reactor: Any, args: argparse.Namespace) -> None:
    result: dict[str, Any] = {}
    with RegistryServer() as registry:
        url = registry.url
        # 1. safety
        totals: collections.Counter[str] = collections.Counter()
        faults: collections.Counter[str] = collections.Counter()
        violations: list[str] = []
        kills = copies = 0
        residual: collections.Counter[str] = collections.Counter()
        windows: list[float] = []
        started = time.monotonic()
        for seed in range(args.seeds):
            report = await run_seed(reactor, registry, Config(seed=10_000 + seed, operations=60))
            totals.update(report.operations)
            faults.update(report.faults)
            kills += report.kills
            copies += report.reported_copies + report.interrupted_copies
            residual["restore_window_hits"] += report.restore_window_hits
            residual["transient_copy_losses"] += report.transient_copy_losses
            residual["of_which_late_writes"] += report.late_write_hits
            windows.extend(report.windows)
            violations.extend(f"seed {10_000 + seed}: {v}" for v in report.violations)
        result["safety"] = {
            "seeds": args.seeds,
            "seconds": round(time.monotonic() - started, 1),
            "operations": dict(totals),
            "operations_total": sum(totals.values()),
            "faults": dict(faults),
            "faults_total": sum(faults.values()),
            "kills": kills,
            "copies_reported_or_interrupted": copies,
            "residual_window_hits": dict(residual),
            "violations": violations,
        }
        print(json.dumps(result["safety"], indent=2), flush=True)

        # 2. contention timing (--reps 0: the safety part only)
        if args.reps <= 0:
            if args.json:
                await deferToThread(Path(args.json).write_text, json.dumps(result, indent=2))
            return
        floor: list[float] = []
        contended: list[dict[str, Any]] = []
        for rep in range(args.reps):
            twin, doomed, live = f"floor{rep}", f"doomed{rep}", f"live{rep}"
            made = await deferToThread(fill, url, twin, args.tags)
            await deferToThread(fill, url, doomed, args.tags)

            async def the_floor(twin: str = twin) -> None:
                floor.append(await direct_delete(reactor, url, twin))
                assert await deferToThread(remaining, url, twin) == 0, "the floor left tags"

            async def the_contended(doomed: str = doomed, live: str = live) -> None:
                contended.append(await contended_delete(reactor, url, doomed, live))

            # Alternating which goes first, so that neither always has the registry's state after the other.
            for measure in (the_floor, the_contended) if rep % 2 == 0 else (the_contended, the_floor):
                await measure()
            run = contended[-1]
            print(
                f"rep {rep}: {made} tags: floor {floor[-1]:.2f}s, contended {run['seconds']:.2f}s "
                f"(left {run['left']}, {run['counts']})",
                flush=True,
            )
        ratios = [c["seconds"] / f for c, f in zip(contended, floor, strict=True)]
        retag_windows = [w for c in contended for w in c["windows"]]
        result["contention"] = {
            "tags": args.tags,
            "repositories": REPOSITORIES,
            "floor_seconds": [round(f, 3) for f in floor],
            "contended_seconds": [round(c["seconds"], 3) for c in contended],
            "ratio_median": round(statistics.median(ratios), 2),
            "ratios": [round(r, 2) for r in ratios],
            "left_after": [c["left"] for c in contended],
            "window_ms": {
                "count": len(retag_windows),
                "median": round(1000 * quantile(retag_windows, 0.5), 2),
                "p99": round(1000 * quantile(retag_windows, 0.99), 2),
                "max": round(1000 * max(retag_windows or [0.0]), 2),
            },
            "window_ms_under_faults": {
                "count": len(windows),
                "median": round(1000 * quantile(windows, 0.5), 2),
                "p99": round(1000 * quantile(windows, 0.99), 2),
            },
        }
        print(json.dumps(result["contention"], indent=2), flush=True)
    if args.json:
        await deferToThread(Path(args.json).write_text, json.dumps(result, indent=2))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    task.react(lambda reactor: ensureDeferred(main(reactor, arguments)))
