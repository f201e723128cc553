"""CPU per registry read: payloadtags' registry client against a minimal treq client, in one process.

What it does (all on 127.0.0.1; the registry it starts is stopped at the end, also on error or Ctrl-C):

1. starts a real ``docker-registry`` and writes ``--repositories`` repositories of ``--tags`` tags each
   into its storage tree, 10 per namespace, as ``bench/all_namespaces.py`` does;
2. in this one process, interleaves repetitions (rotating which goes first) of
   - ``payloadtags``: what an all-namespaces list reads, through the server's own stack:
     ``Inventory.reader(None)`` over ``InstrumentedRegistry(RegistryClient(reads_at_turn_end=True))``
     (catalog pages of 1,000, every ``tags/list``, 16 in flight), every run taken;
   - ``floor``: the same requests from a treq client (bench/list_latency.py's ``DirectClient`` way:
     ``HTTPClient`` on an ``Agent`` with a kept-alive pool of 16, 16 in flight, ``json.loads``);
   - ``bare``: the least Twisted's HTTP client does for them: requests by path on the pool (as
     payloadtags' ``OriginRequests``), ``readBody``, ``json.loads``, 16 in flight; no timeout,
     metrics, coalescing or checks: what is left above it is payloadtags' own per-read work;
   and measures this process's CPU time (user + system) for each: the registry runs in its own process,
   so the figure is the client side's CPU per read alone.

Reported: CPU per read (µs) of each, median and spread, and their ratio per repetition.
With ``--profile FILE`` one more payloadtags pass runs under cProfile (CPU time) and its statistics
are written to FILE.

Usage: .venv/bin/python bench/registry_reads.py [--reps 7] [--repositories 2000] [--tags 3]
       [--profile FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from all_namespaces import Floor as NamespacesFloor  # noqa: E402
from all_namespaces import fill_namespaces  # noqa: E402
from list_latency import (  # noqa: E402
    CATALOG_PAGE,
    CONCURRENCY,
    _pool,
    report,
    run_with_registry,
)
from tests.support.registry_server import RegistryServer  # noqa: E402

from payloadtags.inventory import Inventory  # noqa: E402
from payloadtags.metrics import InstrumentedRegistry, Metrics  # noqa: E402
from payloadtags.registry import RegistryClient, RegistrySettings, asking  # noqa: E402
from payloadtags.registry.transport import KeptEndpoints, OriginRequests, TLSPolicy  # noqa: E402

Triples = frozenset[tuple[str, str, str]]


class Ours:
    def __init__(self, reactor: Any, registry_url: str) -> None:
        self.client = RegistryClient(
            reactor, RegistrySettings(registry_url, max_connections=CONCURRENCY), reads_at_turn_end=True
        )
        self.inventory = Inventory(InstrumentedRegistry(self.client, Metrics()), concurrency=CONCURRENCY)

    async def list(self) -> Triples:
        asking()
        reader = self.inventory.reader(None)
        found: set[tuple[str, str, str]] = set()
        while (run := await reader.next()) is not None:
            found.update((run.namespace, run.repository_path, tag) for tag in run.tags)
        return frozenset(found)


class Floor(NamespacesFloor):
    """The floor of ``-A`` (bench/all_namespaces.py), with each tag list sorted as payloadtags sorts it."""

    async def tags(self, repository: str) -> list[str]:
        return sorted(await super().tags(repository))


class Bare(Floor):
    """The least this HTTP stack can do per read: requests by path on the pool (as payloadtags'
    OriginRequests), readBody, json.loads; no timeout, no metrics, no coalescing, no checks."""

    def __init__(self, reactor: Any, registry_url: str) -> None:
        self.pool = _pool(reactor, CONCURRENCY)
        parts = urllib.parse.urlsplit(registry_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        endpoints = KeptEndpoints(reactor, TLSPolicy(), None)
        self._requests = OriginRequests(self.pool, endpoints, origin)

    async def _json(self, path: str) -> dict[str, Any]:
        response = await self._requests.request(b"GET", path.encode(), Headers())
        body = await readBody(response)
        if response.code != 200:
            raise RuntimeError(f"registry answered {response.code} to {path}: {body[:300]!r}")
        document: dict[str, Any] = json.loads(body)
        return document


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


async def run(
    reactor: Any,
    args: argparse.Namespace,
    registry: RegistryServer,
    work: Path,
    started: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    expected = await fill_namespaces(registry, args.repositories, args.tags)
    ours, floor, bare = Ours(reactor, registry.url), Floor(reactor, registry.url), Bare(reactor, registry.url)
    variants: dict[str, Callable[[], Awaitable[Triples]]] = {
        "floor": floor.list,
        "payloadtags": ours.list,
        "bare": bare.list,
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    reads = args.repositories + (args.repositories // CATALOG_PAGE + 1)
    try:
        for name, fn in variants.items():  # connections, the registry's page cache
            if await fn() != expected:
                raise RuntimeError(f"{name} saw other tags than were written")
        names = list(variants)
        for i in range(args.reps):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                cpu = _cpu()
                found = await variants[name]()
                samples[name].append((_cpu() - cpu) / reads)
                if found != expected:
                    raise RuntimeError(f"{name} saw {len(found)} tags, expected {len(expected)}")
        if args.profile:
            profile = cProfile.Profile(time.process_time)
            profile.enable()
            await Deferred.fromCoroutine(ours.list())
            profile.disable()
            profile.dump_stats(str(args.profile))
    finally:
        await floor.pool.closeCachedConnections()
        await bare.pool.closeCachedConnections()
        await ours.client.close()
    return {"repositories": args.repositories, "reads": reads, "reps": args.reps, "samples": samples}


def summarize(results: dict[str, Any]) -> str:
    samples = results["samples"]
    lines = [
        f"Machine: {results['machine']}; load average {results['load']}",
        f"{results['reads']:,} registry reads per pass ({results['repositories']:,} tags/list + catalog), "
        f"{results['reps']} repetitions; this process's CPU per read",
        "",
        "| variant | CPU per read, median (µs) | min-max |",
        "|---|---:|---:|",
    ]
    for name, s in samples.items():
        lines.append(f"| {name} | {statistics.median(s) * 1e6:.0f} | {min(s) * 1e6:.0f}-{max(s) * 1e6:.0f} |")
    lines.append("")
    for name in ("payloadtags", "bare"):
        ratios = [o / f for o, f in zip(samples[name], samples["floor"], strict=True)]
        lines.append(
            f"{name} / floor per repetition: {', '.join(f'{r:.2f}' for r in ratios)} "
            f"(median {statistics.median(ratios):.2f})"
        )
    lines += [
        f"total {results['total_seconds']:.0f}s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--repositories", type=int, default=2000)
    parser.add_argument("--tags", type=int, default=3, help="tags per repository")
    parser.add_argument("--profile", type=Path, help="one more payloadtags pass under cProfile, to FILE")
    parser.add_argument("--json", type=Path, help="also write raw samples here")
    args = parser.parse_args(argv)
    results = run_with_registry(
        "payloadtags-reads-",
        lambda reactor, registry, work, started: run(reactor, args, registry, work, started),
    )
    return report(results, summarize, args.json)


if __name__ == "__main__":
    sys.exit(main())
