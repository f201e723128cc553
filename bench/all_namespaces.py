"""``kubectl get prt -A`` over 2,000 repositories: payloadtags with and without the repository index,
against a minimal client reading the registry directly, in one run.

What it does (all on 127.0.0.1; everything it starts is stopped at the end, also on error or Ctrl-C):

1. starts a real ``docker-registry`` (access log on) and writes 2,000 repositories of 3 tags each into
   its storage tree, 10 per namespace (``ns-NNN/app-N``), as ``bench/list_scale.py`` does (one
   repository is pushed over the HTTP API for the blobs and the manifest the others link to);
2. runs two ``.venv/bin/payloadtags serve`` in front of it (standalone, client certificates,
   AlwaysAllow, ``--registry-concurrency=16``): one without the repository index, one with it
   (``--registry-events-token-file``; it fills the index from the catalog at start);
3. interleaves repetitions (rotating which goes first) of
   - ``no index`` and ``index``: one unpaged all-namespaces JSON list
     (``GET /apis/payload-registry.deckhouse.io/v1alpha1/payloadrepositorytags``) over a kept-alive
     HTTPS connection with a client certificate;
   - **the floor**: a treq client reading the whole catalog (pages of 1,000, following ``last``) and
     each repository's ``tags/list``, 16 in flight, over a kept-alive pool: the same HTTP stack, page
     size and concurrency as payloadtags' own registry client;
   checks that all three see exactly the 6,000 (namespace, repository, tag) triples written, and counts
   the registry requests of each (catalog, ``tags/list``) in its access log.

Reported: median wall time and its spread, the ratio to the floor (goal: <= 1.2x), server CPU per list,
and catalog and ``tags/list`` requests per list (the index's list asks for no catalog page).

Usage: .venv/bin/python bench/all_namespaces.py [--quick] [--reps N] [--repositories 2000] [--tags 3]
       [--json FILE] [--server-src DIR] [--profile FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import DeferredSemaphore, gatherResults
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))  # this tree's code, also where .venv is another tree's

from list_latency import (  # noqa: E402
    CATALOG_PAGE,
    CONCURRENCY,
    _ClientTLS,
    _get,
    _Policy,
    _pool,
    cpu_seconds,
    report,
    run_with_registry,
    start_server,
    stop_process,
    wait_index_filled,
    wait_ready,
)
from list_scale import AccessLog, seed_image, tag_names, write_repository  # noqa: E402
from tests.support.harness import Pki  # noqa: E402
from tests.support.registry_server import RegistryServer  # noqa: E402

LIST_PATH = "/apis/payload-registry.deckhouse.io/v1alpha1/payloadrepositorytags"
PER_NAMESPACE = 10

Triples = frozenset[tuple[str, str, str]]  # namespace, repository path, tag


class Server:
    """One payloadtags over one kept-alive HTTPS connection with a client certificate."""

    def __init__(self, reactor: Any, url: str, pki: Pki) -> None:
        self._reactor = reactor
        self.url = url
        self.pool = _pool(reactor, 1)
        creator = _ClientTLS(str(pki.server_ca.cert_file), str(pki.admin.cert_file), str(pki.admin.key_file))
        self._http = HTTPClient(Agent(reactor, contextFactory=_Policy(creator), pool=self.pool))

    async def list(self) -> Triples:
        code, _, body = await _get(
            self._http, self._reactor, self.url + LIST_PATH, {"Accept": "application/json"}
        )
        if code != 200:
            raise RuntimeError(f"payloadtags answered {code}: {body[:300]!r}")
        items = json.loads(body)["items"]
        return frozenset(
            (i["metadata"]["namespace"], i["spec"]["repositoryPath"], i["spec"]["tag"]) for i in items
        )


class Floor:
    """The whole catalog, then every repository's tags: what any client must read for ``-A``."""

    def __init__(self, reactor: Any, registry_url: str) -> None:
        self._reactor = reactor
        self._base = registry_url.rstrip("/")
        self.pool = _pool(reactor, CONCURRENCY)
        self._http = HTTPClient(Agent(reactor, pool=self.pool))

    async def _json(self, path: str) -> dict[str, Any]:
        return (await self._json_link(path))[0]

    async def _json_link(self, path: str) -> tuple[dict[str, Any], bool]:
        """The JSON object at ``path``, and whether a Link header points at a next page."""
        code, headers, body = await _get(self._http, self._reactor, self._base + path)
        if code != 200:
            raise RuntimeError(f"registry answered {code} to {path}: {body[:300]!r}")
        document: dict[str, Any] = json.loads(body)
        return document, bool(headers.getRawHeaders("link"))

    async def tags(self, repository: str) -> list[str]:
        tags: list[str] = (await self._json(f"/v2/{repository}/tags/list")).get("tags") or []
        return tags

    async def list(self) -> Triples:
        repositories: list[str] = []
        query = {"n": str(CATALOG_PAGE)}
        while True:
            # Ends where the registry's Link header does, as the server's catalog read does: a short page
            # would read one more (empty) page when the names fill the last one exactly.
            document, more = await self._json_link("/v2/_catalog?" + urllib.parse.urlencode(query))
            names = document.get("repositories") or []
            repositories.extend(names)
            if not more or not names:
                break
            query["last"] = names[-1]
        semaphore = DeferredSemaphore(CONCURRENCY)
        lists = await gatherResults([semaphore.run(self.tags, r) for r in repositories], consumeErrors=True)
        found: set[tuple[str, str, str]] = set()
        for repository, names in zip(repositories, lists, strict=True):
            namespace, _, path = repository.partition("/")
            found.update((namespace, path, tag) for tag in names)
        return frozenset(found)


async def fill_namespaces(registry: RegistryServer, count: int, tags: int) -> Triples:
    """``count`` repositories of ``tags`` tags, ``PER_NAMESPACE`` to a namespace: the first pushed, the
    others written into the registry's storage as distribution lays them out. Gives what a list reads."""
    manifest, blobs = await seed_image(registry.url, "ns-000/app-0", tuple(tag_names(tags)))
    repositories = [f"ns-{i // PER_NAMESPACE:03d}/app-{i % PER_NAMESPACE}" for i in range(count)]

    def fill() -> None:
        for repository in repositories[1:]:
            write_repository(registry.root, repository, tag_names(tags), blobs, manifest)

    await deferToThread(fill)
    return frozenset(
        (r.partition("/")[0], r.partition("/")[2], tag) for r in repositories for tag in tag_names(tags)
    )


async def run(
    reactor: Any,
    args: argparse.Namespace,
    registry: RegistryServer,
    work: Path,
    started: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    assert registry.process is not None
    began = time.monotonic()
    expected = await fill_namespaces(registry, args.repositories, args.tags)
    pki = await deferToThread(Pki.create, work / "pki")
    servers: dict[str, Server] = {}
    pids = {"registry": registry.process.pid}
    try:
        kinds = [("no index", False, None), ("index", True, None)]
        if args.server_src:
            kinds.append(("no index, before", False, args.server_src))
        for name, index, src in kinds:
            home = work / name.replace(" ", "-").replace(",", "")
            home.mkdir()
            profile = args.profile if name == "no index" else None
            process, url = start_server(home, pki, registry.url, index=index, server_src=src, profile=profile)
            started.append(process)
            await deferToThread(
                wait_ready, url, str(pki.server_ca.cert_file), process, home / "payloadtags.log"
            )
            if index:
                await deferToThread(wait_index_filled, process, home / "payloadtags.log")
            servers[name] = Server(reactor, url, pki)
            pids[name] = process.pid
        floor = Floor(reactor, registry.url)
        print(f"# {args.repositories:,} repositories written, servers up in {time.monotonic() - began:.1f}s")
        variants: dict[str, Callable[[], Awaitable[Triples]]] = {"floor": floor.list}
        variants.update((name, server.list) for name, server in servers.items())
        access = AccessLog(registry.log_file)
        samples: dict[str, dict[str, list[float]]] = {
            name: {"wall": [], "server_cpu": [], "registry_cpu": [], "catalog": [], "tags/list": []}
            for name in variants
        }
        for name, fn in variants.items():  # connections, the registry's page cache
            for _ in range(2):
                if await fn() != expected:
                    raise RuntimeError(f"{name} saw other tags than were written")
        names = list(variants)
        for i in range(args.reps):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                cpu = {who: cpu_seconds(pid) for who, pid in pids.items()}
                access.mark()
                start = time.perf_counter()
                found = await variants[name]()
                wall = time.perf_counter() - start
                counts = access.counts()
                if found != expected:
                    missing = sorted(expected - found)[:3]
                    raise RuntimeError(f"{name} saw {len(found)} tags, expected {len(expected)}: {missing}")
                s = samples[name]
                s["wall"].append(wall)
                s["server_cpu"].append(cpu_seconds(pids[name]) - cpu[name] if name in pids else 0.0)
                s["registry_cpu"].append(cpu_seconds(pids["registry"]) - cpu["registry"])
                s["catalog"].append(counts["catalog"])
                s["tags/list"].append(counts["tags/list"])
    finally:
        for server in servers.values():
            await server.pool.closeCachedConnections()
        for process in started:
            await deferToThread(stop_process, process)
    return {
        "repositories": args.repositories,
        "tags": len(expected),
        "reps": args.reps,
        "samples": samples,
    }


def summarize(results: dict[str, Any]) -> str:
    samples = results["samples"]
    floor = statistics.median(samples["floor"]["wall"])
    lines = [
        f"Machine: {results['machine']}; load average {results['load']}",
        f"-A over {results['repositories']:,} repositories ({results['tags']:,} tags), unpaged JSON, "
        f"{results['reps']} repetitions",
        "",
        "| variant | wall, median (ms) | spread | / floor | server CPU per list (ms) | registry CPU (ms) "
        "| catalog requests | tags/list requests |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in samples.items():
        wall = statistics.median(s["wall"])
        spread = max(abs(w - wall) for w in s["wall"]) / wall * 100
        server = f"{statistics.median(s['server_cpu']) * 1000:.0f}" if name != "floor" else "-"
        lines.append(
            f"| {name} | {wall * 1000:.0f} | ±{spread:.0f}% | {wall / floor:.2f} | {server} "
            f"| {statistics.median(s['registry_cpu']) * 1000:.0f} | {statistics.median(s['catalog']):g} "
            f"| {statistics.median(s['tags/list']):g} |"
        )
    ratios = {
        name: [w / f for w, f in zip(samples[name]["wall"], samples["floor"]["wall"], strict=True)]
        for name in samples
        if name != "floor"
    }
    lines += [
        "",
        "Per repetition, / the floor of the same repetition: "
        + "; ".join(f"{name} {', '.join(f'{r:.2f}' for r in rs)}" for name, rs in ratios.items()),
        "Goal: <= 1.2x the floor; the index serves -A (no catalog request).",
        f"total {results['total_seconds']:.0f}s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 repetitions (about a minute)")
    parser.add_argument("--reps", type=int, help="repetitions (default 11, quick 5)")
    parser.add_argument("--repositories", type=int, default=2000)
    parser.add_argument("--tags", type=int, default=3, help="tags per repository")
    parser.add_argument("--json", type=Path, help="also write raw samples here")
    parser.add_argument(
        "--profile",
        type=Path,
        help="run the server without the index under cProfile (CPU time), stats to FILE",
    )
    parser.add_argument(
        "--server-src",
        help="also run a third server (no index) from this src/ directory (another commit's, for a "
        "before/after in one run)",
    )
    args = parser.parse_args(argv)
    args.reps = args.reps or (5 if args.quick else 11)
    results = run_with_registry(
        "payloadtags-all-",
        lambda reactor, registry, work, started: run(reactor, args, registry, work, started),
        registry_config={"log": {"level": "warn", "accesslog": {"disabled": False}}},
    )
    return report(results, summarize, args.json)


if __name__ == "__main__":
    sys.exit(main())
