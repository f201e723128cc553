"""Issue #11's registry-timeout row: big lists holding every connection slot of a slow registry, and
single-tag GETs at a steady rate meanwhile. No 504 from waiting for a slot; GETs not starved.

What it does (all on 127.0.0.1; everything it starts is stopped at the end, also on error or Ctrl-C):

1. starts a real ``docker-registry``, pushes the namespace ``bench`` (2 repositories of 5 tags, each a
   distinct OCI image) for the GETs, and writes, for every repetition, ``--lists`` namespaces of
   ``--repositories`` repositories of 3 tags each into its storage tree (fresh namespaces each
   repetition, so no list is answered from what an earlier one read);
2. puts a delaying proxy in front of it (``tests/support/faultproxy.py``, ``LATE`` on every request):
   each registry request reaches the registry ``--delay`` seconds (default 0.4) after it was sent, a
   slow registry that still answers every single request well within the timeout;
3. runs ``.venv/bin/payloadtags serve`` (standalone, front-proxy certificate, AlwaysAllow) on that
   proxy with ``--registry-concurrency=4 --registry-timeout=1s``;
4. per repetition, alternating which goes first:
   - **idle**: GETs (``GET …/namespaces/bench/payloadrepositorytags/<name>``) open loop at ``--rate``
     per second for ``--idle`` seconds, nothing else running;
   - **loaded**: ``--lists`` unpaged JSON lists of the fresh namespaces sent at once (each reads
     ``--repositories`` tag lists, so together they queue many more reads than the 4 slots; at 0.4 s a
     read, every slot stays busy for many seconds), and the same GETs at the same rate from then until
     the last list has answered.

Every answer is checked (a GET's digest, a list's items). Reported per phase: GETs' p50/p99/max and
their ratio to the idle phase's, answers by status (504s counted apart: goal 0 for GETs and lists), each
list's time and whether it answered 200 with every tag; from the proxy: the registry requests in flight
(never above 4 if the slots hold; at 4 for most of the loaded phase if the lists keep them busy), the
longest stretch with all 4 busy, and the tag-list reads per loaded phase. A request waiting for a slot
longer than the timeout is not a registry timeout (docs/configuration.md, ``--registry-timeout``): a
504 here is a defect.

Usage: .venv/bin/python bench/registry_slots.py [--reps 3] [--lists 4] [--repositories 25] [--rate 3]
       [--delay 0.4] [--idle 8] [--json FILE] [--server-src DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))  # this tree's code, also where .venv is another tree's

from list_latency import (  # noqa: E402
    GROUP_PATH,
    _ClientTLS,
    _get,
    _Policy,
    _pool,
    percentile,
    report,
    run_with_registry,
    stop_process,
    wait_ready,
)
from list_scale import seed_image, tag_names, write_repository  # noqa: E402
from single_get import PROXIED, PayloadTags, Tag, start_server  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.faultproxy import LATE, FaultProxy  # noqa: E402
from tests.support.harness import Pki  # noqa: E402
from tests.support.pki import Authority  # noqa: E402
from tests.support.registry_server import RegistryServer  # noqa: E402

from payloadtags.names import encode_name  # noqa: E402

CONCURRENCY = 4
TIMEOUT = "1s"
GET_REPOSITORIES = 2
GET_TAGS = 5
LIST_TAGS = 3  # per repository of a listed namespace
SAMPLE_EVERY = 0.02  # seconds between two looks at the proxy's requests in flight
TURNOVER = 0.1  # seconds: a shorter dip below CONCURRENCY requests in flight is slots changing hands


class Lists:
    """Unpaged JSON lists as the aggregator sends them, one connection each."""

    def __init__(
        self, reactor: Any, url: str, ca_file: str, proxy_cert: str, proxy_key: str, size: int
    ) -> None:
        self._reactor = reactor
        self._url = url
        self.pool = _pool(reactor, size)
        creator = _ClientTLS(ca_file, proxy_cert, proxy_key)
        self._http = HTTPClient(Agent(reactor, contextFactory=_Policy(creator), pool=self.pool))

    async def list(self, namespace: str, expected: int) -> dict[str, Any]:
        began = time.perf_counter()
        url = f"{self._url}{GROUP_PATH}/namespaces/{namespace}/payloadrepositorytags"
        code, _, body = await _get(self._http, self._reactor, url, PROXIED)
        seconds = time.perf_counter() - began
        items = len(json.loads(body)["items"]) if code == 200 else 0
        complete = code == 200 and items == expected
        return {
            "namespace": namespace,
            "code": code,
            "seconds": seconds,
            "items": items,
            "complete": complete,
            "error": "" if code == 200 else body[:300].decode(errors="replace"),
        }


class Gets:
    """Single-tag GETs whose answers are counted by status instead of raising."""

    def __init__(self, server: PayloadTags, url: str, reactor: Any) -> None:
        self._server = server
        self._url = url
        self._reactor = reactor

    async def get(self, tag: Tag) -> tuple[int, str]:
        path, name, digest = tag
        url = f"{self._url}{GROUP_PATH}/namespaces/bench/payloadrepositorytags/{encode_name(path, name)}"
        code, _, body = await _get(self._server._http, self._reactor, url, PROXIED)
        if code == 200 and json.loads(body)["status"]["digest"] != digest:
            return -1, f"wrong digest for {path}:{name}"
        return code, "" if code == 200 else body[:300].decode(errors="replace")


async def steady_gets(
    reactor: Any, gets: Gets, tags: list[Tag], rate: float, until: Deferred[Any] | float
) -> dict[str, Any]:
    """GETs open loop at ``rate`` per second (latency from each one's scheduled moment) until ``until``
    fires, or for ``until`` seconds; then waits for those still answering."""
    start = time.perf_counter() + 0.05
    latencies: list[float] = []
    codes: collections.Counter[int] = collections.Counter()
    errors: list[str] = []
    running: list[Deferred[None]] = []
    done = [False]
    if isinstance(until, Deferred):
        until.addBoth(lambda result: done.__setitem__(0, True) or result)

    async def one(i: int, due: float) -> None:
        try:
            code, error = await gets.get(tags[i % len(tags)])
        except Exception as failure:  # no answer at all (the bench's own 120 s bound, a reset)
            code, error = 0, str(failure)[:200]
        codes[code] += 1
        if error:
            errors.append(f"{code}: {error}")
        if code == 200:
            latencies.append(time.perf_counter() - due)

    i = 0
    while True:
        due = start + i / rate
        if isinstance(until, float) and due >= start + until:
            break
        wait = due - time.perf_counter()
        if wait > 0:
            await deferLater(reactor, wait, lambda: None)
        if done[0]:
            break
        running.append(Deferred.fromCoroutine(one(i, due)))
        i += 1
    await gatherResults(running, consumeErrors=True)
    return {"latencies": latencies, "codes": dict(codes), "errors": errors, "sent": i}


class InFlight:
    """The proxy's requests in flight, sampled: what the server's connection slots hold."""

    def __init__(self, reactor: Any, proxy: FaultProxy) -> None:
        self._reactor = reactor
        self._proxy = proxy
        self.samples: list[tuple[float, int]] = []
        self._call: Any = None

    def start(self) -> None:
        self.samples = []
        self._tick()

    def _tick(self) -> None:
        self.samples.append((time.perf_counter(), self._proxy.in_flight))
        self._call = self._reactor.callLater(SAMPLE_EVERY, self._tick)

    def stop(self) -> dict[str, Any]:
        if self._call is not None and self._call.active():
            self._call.cancel()
        values = [n for _, n in self.samples]
        # All slots busy from one moment to another, dips shorter than TURNOVER aside: the reads of a
        # list all take the same delay, so they end together and the next ones leave a turn later.
        longest = 0.0
        first: float | None = None
        last_full: float | None = None
        for t, n in self.samples:
            if n < CONCURRENCY:
                continue
            if first is None or last_full is None or t - last_full > TURNOVER:
                first = t
            last_full = t
            longest = max(longest, t - first)
        # The sampler runs on the bench's reactor, which also runs the proxy: a gap far over
        # SAMPLE_EVERY is time this process did not run, and requests sent to the proxy meanwhile
        # reached it (its "received") that much later.
        gaps = [t1 - t0 for (t0, _), (t1, _) in zip(self.samples, self.samples[1:], strict=False)]
        return {
            "longest_gap_s": max(gaps, default=0.0),
            "gaps_over_0.3s": sum(g > 0.3 for g in gaps),
            "max": max(values, default=0),
            "full_fraction": sum(n >= CONCURRENCY for n in values) / max(1, len(values)),
            "longest_full_s": longest,
        }


def proxy_view(proxy: FaultProxy, first: int, timeouts: list[str]) -> dict[str, Any]:
    """What the proxy saw of the registry requests from ``proxy.exchanges[first]`` on: the longest a
    request spent in it (received to answered: the delay and the registry's answer), how many took
    longer than the timeout, and for each request a 504 named (``timeouts``: error messages) when the
    proxy received it and how long it held it, so that a 504 can be told from a slow answer."""
    exchanges = proxy.exchanges[first:]
    held = [e.answered - e.received for e in exchanges if e.answered is not None]
    limit = float(TIMEOUT.removesuffix("s"))
    named = []
    for message in timeouts:
        match = re.search(r"did not answer (\S+) (\S+) within", message)
        if match is None:
            continue
        for e in exchanges:
            if (e.method, e.path) == (match[1], match[2].split("?")[0]):
                named.append(
                    {
                        "request": f"{e.method} {e.path}",
                        "queued_in_proxy_s": e.sent - e.received,
                        "held_s": None if e.answered is None else e.answered - e.received,
                        "status": e.status,
                    }
                )
    return {
        "requests": len(exchanges),
        "longest_held_s": max(held, default=0.0),
        "held_over_timeout": sum(h > limit for h in held),
        "timed_out_requests": named,
    }


def figures(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "n": 0}
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
        "n": len(latencies),
    }


async def run(
    reactor: Any,
    args: argparse.Namespace,
    registry: RegistryServer,
    work: Path,
    started: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    def push() -> list[Tag]:
        pushed = []
        for r in range(GET_REPOSITORIES):
            for t in range(GET_TAGS):
                path, tag = f"app-{r}", f"v{t}"
                pushed.append(
                    (path, tag, images.push_oci_image(registry.url, f"bench/{path}", tag, seed=f"{r}-{t}"))
                )
        return pushed

    tags = await deferToThread(push)
    manifest, blobs = await seed_image(registry.url, "seed/app", tuple(tag_names(LIST_TAGS)))
    namespaces = [[f"big{rep}-{i}" for i in range(args.lists)] for rep in range(args.reps)]

    def fill() -> None:
        for names in namespaces:
            for namespace in names:
                for r in range(args.repositories):
                    write_repository(
                        registry.root, f"{namespace}/app-{r}", tag_names(LIST_TAGS), blobs, manifest
                    )

    await deferToThread(fill)
    proxy = FaultProxy(reactor, registry.url, decide=lambda method, path: LATE, stall=args.delay)
    pki = await deferToThread(Pki.create, work / "pki")
    proxy_ca = await deferToThread(Authority.create, work / "pki" / "front-proxy", "front-proxy")
    front = await deferToThread(proxy_ca.client, "front-proxy-client", (), "front-proxy-client")
    flags = (f"--registry-concurrency={CONCURRENCY}", f"--registry-timeout={TIMEOUT}")
    process, url = start_server(work, pki, proxy_ca, proxy.url, args.server_src, extra=flags)
    started.append(process)
    ca_file = str(pki.server_ca.cert_file)
    cert, key = str(front.cert_file), str(front.key_file)
    await deferToThread(wait_ready, url, ca_file, process, work / "payloadtags.log")
    server = PayloadTags(reactor, url, ca_file, cert, key)
    gets = Gets(server, url, reactor)
    lists = Lists(reactor, url, ca_file, cert, key, args.lists)
    sampler = InFlight(reactor, proxy)
    expected = args.repositories * LIST_TAGS
    results: dict[str, Any] = {
        "lists": args.lists,
        "repositories": args.repositories,
        "rate": args.rate,
        "delay": args.delay,
        "idle_seconds": args.idle,
        "concurrency": CONCURRENCY,
        "timeout": TIMEOUT,
        "reps": [],
    }
    try:
        # Connections open and the image configs cached, as on a server that has been serving.
        await gatherResults([Deferred.fromCoroutine(gets.get(tag)) for tag in tags])
        await steady_gets(reactor, gets, tags, args.rate, 2.0)
        for rep in range(args.reps):
            out: dict[str, Any] = {}
            order = ["idle", "loaded"] if rep % 2 == 0 else ["loaded", "idle"]
            for phase in order:
                first = len(proxy.exchanges)
                if phase == "idle":
                    sampler.start()
                    got = await steady_gets(reactor, gets, tags, args.rate, float(args.idle))
                    out["idle"] = {**got, **figures(got["latencies"]), "in_flight": sampler.stop()}
                    out["idle"]["proxy"] = proxy_view(proxy, first, got["errors"])
                    continue
                reads_before = sum(e.path.endswith("/tags/list") for e in proxy.exchanges)
                sampler.start()
                began = time.perf_counter()
                listed = gatherResults(
                    [Deferred.fromCoroutine(lists.list(ns, expected)) for ns in namespaces[rep]],
                    consumeErrors=True,
                )
                got = await steady_gets(reactor, gets, tags, args.rate, listed)
                answers = await listed
                out["loaded"] = {
                    **got,
                    **figures(got["latencies"]),
                    "in_flight": sampler.stop(),
                    "seconds": time.perf_counter() - began,
                    "lists": answers,
                    "tag_list_reads": sum(e.path.endswith("/tags/list") for e in proxy.exchanges)
                    - reads_before,
                }
                await deferLater(reactor, args.delay + 0.5, lambda: None)  # abandoned requests answered
                timeouts = got["errors"] + [a["error"] for a in answers if a["error"]]
                out["loaded"]["proxy"] = proxy_view(proxy, first, timeouts)
            out["p50 ratio"] = out["loaded"]["p50_ms"] / out["idle"]["p50_ms"]
            out["p99 ratio"] = out["loaded"]["p99_ms"] / out["idle"]["p99_ms"]
            for phase in ("idle", "loaded"):
                del out[phase]["latencies"]
            results["reps"].append(out)
            print(line(rep, out), flush=True)
    finally:
        await server.pool.closeCachedConnections()
        await lists.pool.closeCachedConnections()
        await deferToThread(stop_process, process)
        await proxy.stop()
    return results


def _504(phase: dict[str, Any]) -> int:
    return int(phase["codes"].get(504, phase["codes"].get("504", 0)))


def line(i: int, rep: dict[str, Any]) -> str:
    idle, loaded = rep["idle"], rep["loaded"]
    lists = loaded["lists"]
    complete = sum(a["complete"] for a in lists)
    list_504 = sum(a["code"] == 504 for a in lists)
    others = sum(n for phase in (idle, loaded) for c, n in phase["codes"].items() if int(c) not in (200, 504))
    return (
        f"| {i + 1} | {idle['p50_ms']:.0f} | {idle['p99_ms']:.0f} "
        f"| {loaded['p50_ms']:.0f} | {loaded['p99_ms']:.0f} "
        f"| {loaded['max_ms']:.0f} | {rep['p50 ratio']:.2f} | {rep['p99 ratio']:.2f} "
        f"| {_504(loaded)} of {loaded['sent']} ({_504(idle)} of {idle['sent']}) | {others} "
        f"| {complete} of {len(lists)} ({list_504} answered 504) | {max(a['seconds'] for a in lists):.1f} "
        f"| {loaded['in_flight']['max']} | {loaded['in_flight']['full_fraction']:.0%} "
        f"| {loaded['in_flight']['longest_full_s']:.1f} | {loaded['tag_list_reads']} |"
    )


HEADER = (
    "| rep | idle GET p50 (ms) | idle p99 | loaded GET p50 | loaded p99 | loaded max "
    "| p50 / idle | p99 / idle "
    "| GET 504s loaded (idle) | other non-200 | lists complete | slowest list (s) "
    "| registry requests in flight, max "
    "| time all slots busy | longest stretch all busy, dips < 0.1 s aside (s) | tag-list reads |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def seen(i: int, name: str, phase: dict[str, Any]) -> str:
    """What the proxy and the bench's own reactor saw of one phase."""
    proxy, sampled = phase["proxy"], phase["in_flight"]
    return (
        f"rep {i + 1} {name}: registry requests {proxy['requests']}, longest in the proxy "
        f"{proxy['longest_held_s']:.2f} s, {proxy['held_over_timeout']} over the timeout; the bench's "
        f"reactor (and the proxy) stalled at most {sampled['longest_gap_s']:.2f} s "
        f"({sampled['gaps_over_0.3s']} stalls over 0.3 s); requests a 504 named, as the proxy saw them: "
        f"{proxy['timed_out_requests']}"
    )


def summarize(results: dict[str, Any]) -> str:
    reps = results["reps"]
    gets_504 = sum(_504(r["loaded"]) + _504(r["idle"]) for r in reps)
    sent = sum(r["loaded"]["sent"] + r["idle"]["sent"] for r in reps)
    lists = [a for r in reps for a in r["loaded"]["lists"]]
    errors = [e for r in reps for p in ("idle", "loaded") for e in r[p]["errors"]]
    lines = [
        f"Machine: {results['machine']}; load average {results['load']}",
        f"--registry-concurrency={results['concurrency']} --registry-timeout={results['timeout']}; "
        f"every registry request delayed {results['delay']:g} s; "
        f"{results['lists']} concurrent unpaged lists of "
        f"{results['repositories']} repositories ({results['repositories'] * LIST_TAGS} tags) each; GETs at "
        f"{results['rate']:g}/s open loop (idle phase {results['idle_seconds']:g} s)",
        "",
        HEADER,
        *(line(i, r) for i, r in enumerate(reps)),
        "",
        f"GETs answered 504: {gets_504} of {sent}; lists answered 504: "
        f"{sum(a['code'] == 504 for a in lists)} of {len(lists)}; lists complete: "
        f"{sum(a['complete'] for a in lists)} of {len(lists)}. Goal: 0, 0 and all.",
        f"p99 loaded / idle: median {statistics.median(r['p99 ratio'] for r in reps):.2f}; p50: median "
        f"{statistics.median(r['p50 ratio'] for r in reps):.2f}",
        *(f"first errors: {' '.join(e.split())}" for e in errors[:3]),
        *(seen(i, phase, r[phase]) for i, r in enumerate(reps) for phase in ("idle", "loaded")),
        f"total {results['total_seconds']:.0f}s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--lists", type=int, default=4, help="concurrent unpaged lists (default 4)")
    parser.add_argument("--repositories", type=int, default=25, help="per listed namespace (default 25)")
    parser.add_argument("--rate", type=float, default=3.0, help="GETs per second (default 3)")
    parser.add_argument("--delay", type=float, default=0.4, help="seconds added to every registry request")
    parser.add_argument("--idle", type=float, default=8.0, help="seconds of GETs on the idle server")
    parser.add_argument("--json", type=Path, help="also write raw figures here")
    parser.add_argument("--server-src", help="run another tree's server code (PYTHONPATH), for before/after")
    args = parser.parse_args(argv)
    print(HEADER, flush=True)
    results = run_with_registry(
        "payloadtags-slots-",
        lambda reactor, registry, work, started: run(reactor, args, registry, work, started),
    )
    return report(results, summarize, args.json)


if __name__ == "__main__":
    sys.exit(main())
