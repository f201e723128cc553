"""Single-tag GETs at a fixed rate: payloadtags' latency against the registry reads it needs, in one run.

What it does (all on 127.0.0.1; everything it starts is stopped at the end, also on error or Ctrl-C):

1. starts a real ``docker-registry`` and pushes the namespace ``bench``: 10 repositories of 5 tags, each
   tag a distinct OCI image with a real image config;
2. runs ``.venv/bin/payloadtags serve`` (standalone, client certificates and a front proxy,
   ``--authorization-mode=AlwaysAllow``) in front of it;
3. issues GETs **open loop**: request i goes out at start + i / rate whatever the earlier ones are
   doing (a fixed schedule, as independent clients do; a closed loop would slow down with the server
   and hide its queueing), and its latency runs from that scheduled moment to the end of its answer:
   - ``payloadtags``: ``GET …/namespaces/bench/payloadrepositorytags/<name>`` over kept-alive HTTPS with
     the front proxy's client certificate and ``X-Remote-User``, as kube-apiserver's aggregator calls it;
   - **the floor**: a minimal treq client on the same reactor issuing the registry requests such a GET
     needs (``GET /v2/<repo>/manifests/<tag>``, then the image config ``GET /v2/<repo>/blobs/<digest>``),
     over a kept-alive connection pool;
   cycling over the 50 tags; repetitions alternate which goes first. Every answer is checked (the
   digest payloadtags reports, the manifest the floor read).

Reported: p50, p90, p99 and max per variant and repetition, the ratio payloadtags/floor of p50 and p99
per repetition (goal: p99 within 1.5x), and the server's CPU per GET (from /proc).

Usage: .venv/bin/python bench/single_get.py [--quick] [--rate 50] [--seconds S] [--reps N]
       [--json FILE] [--profile FILE] [--server-src DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from list_latency import (  # noqa: E402
    GROUP_PATH,
    PROFILER,
    _ClientTLS,
    _get,
    _Policy,
    _pool,
    cpu_seconds,
    percentile,
    report,
    run_with_registry,
    stop_process,
    wait_ready,
)
from tests.support import images  # noqa: E402
from tests.support.harness import Pki  # noqa: E402
from tests.support.pki import Authority  # noqa: E402
from tests.support.registry_server import RegistryServer, free_port  # noqa: E402

from payloadtags.names import encode_name  # noqa: E402
from payloadtags.registry.client import ACCEPT_MANIFESTS  # noqa: E402

NAMESPACE = "bench"
REPOSITORIES = 10
TAGS = 5
CONNECTIONS = 16
PROXIED = {"X-Remote-User": "admin", "X-Remote-Group": "system:masters", "Accept": "application/json"}

Tag = tuple[str, str, str]  # repository path below the namespace, tag, manifest digest
Get = Callable[[Tag], Coroutine[Any, Any, None]]


class PayloadTags:
    """Single-tag GETs as the aggregator sends them: front-proxy certificate, user in headers."""

    def __init__(self, reactor: Any, url: str, ca_file: str, proxy_cert: str, proxy_key: str) -> None:
        self._reactor = reactor
        self._url = url
        self.pool = _pool(reactor, CONNECTIONS)
        creator = _ClientTLS(ca_file, proxy_cert, proxy_key)
        self._http = HTTPClient(Agent(reactor, contextFactory=_Policy(creator), pool=self.pool))

    async def get(self, tag: Tag) -> None:
        path, name, digest = tag
        name_ = encode_name(path, name)
        url = f"{self._url}{GROUP_PATH}/namespaces/{NAMESPACE}/payloadrepositorytags/{name_}"
        code, _, body = await _get(self._http, self._reactor, url, PROXIED)
        if code != 200:
            raise RuntimeError(f"payloadtags answered {code}: {body[:300]!r}")
        got = json.loads(body)["status"]["digest"]
        if got != digest:
            raise RuntimeError(f"payloadtags said {path}:{name} is {got}, not {digest}")


class Floor:
    """What any client must do to show one tag with its manifest and config: two registry reads."""

    def __init__(self, reactor: Any, registry_url: str) -> None:
        self._reactor = reactor
        self._base = registry_url.rstrip("/")
        self.pool = _pool(reactor, CONNECTIONS)
        self._http = HTTPClient(Agent(reactor, pool=self.pool))

    async def get(self, tag: Tag) -> None:
        path, name, digest = tag
        repository = f"{self._base}/v2/{NAMESPACE}/{path}"
        code, _, body = await _get(
            self._http, self._reactor, f"{repository}/manifests/{name}", {"Accept": ACCEPT_MANIFESTS}
        )
        if code != 200 or "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise RuntimeError(f"the registry answered {code} for {path}:{name}: {body[:300]!r}")
        config = json.loads(body)["config"]["digest"]
        code, _, body = await _get(self._http, self._reactor, f"{repository}/blobs/{config}")
        if code != 200:
            raise RuntimeError(f"the registry answered {code} for {path}@{config}")
        json.loads(body)


async def open_loop(
    reactor: Any, rate: float, seconds: float, tags: list[Tag], get: Get
) -> tuple[list[float], int]:
    """GETs at ``rate`` per second for ``seconds`` on a fixed schedule; latencies (from each request's
    scheduled moment to its answer's end, seconds) and the number of failed requests."""
    count = max(1, int(rate * seconds))
    start = time.perf_counter() + 0.05
    latencies: list[float] = []
    failures: list[str] = []
    running: list[Deferred[None]] = []

    async def one(i: int, due: float) -> None:
        try:
            await get(tags[i % len(tags)])
        except Exception as error:
            failures.append(str(error)[:200])
            return
        latencies.append(time.perf_counter() - due)

    def fire(i: int, due: float) -> None:
        running.append(Deferred.fromCoroutine(one(i, due)))

    calls = []
    for i in range(count):
        due = start + i / rate
        calls.append(reactor.callLater(max(0.0, due - time.perf_counter()), fire, i, due))
    # Wait for the schedule to run out, then for what is still answering.
    finished: Deferred[None] = Deferred()
    reactor.callLater(max(0.0, start + count / rate - time.perf_counter()) + 0.01, finished.callback, None)
    await finished
    await gatherResults(running, consumeErrors=True)
    if failures:
        print(f"# {len(failures)} failed; first: {failures[0]}", flush=True)
    return latencies, len(failures)


def system_seconds(pid: int) -> float:
    """Kernel CPU time of a process (TLS and loopback sockets are paid there)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[12]) / os.sysconf("SC_CLK_TCK")


def figures(latencies: list[float]) -> dict[str, float]:
    ms = 1000.0
    return {
        "p50_ms": statistics.median(latencies) * ms,
        "p90_ms": percentile(latencies, 0.90) * ms,
        "p99_ms": percentile(latencies, 0.99) * ms,
        "max_ms": max(latencies) * ms,
        "n": len(latencies),
    }


def start_server(
    work: Path,
    pki: Pki,
    proxy_ca: Authority,
    registry_url: str,
    src: str | None = None,
    profile: str | None = None,
    name: str = "payloadtags",
    extra: tuple[str, ...] = (),
    wrapper: tuple[str, ...] = (),
    environ: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """payloadtags behind the front proxy (AlwaysAllow), its output in ``work/<name>.log``. ``src``: run
    another tree's server code (its src, first on PYTHONPATH); ``profile``: run it under cProfile;
    ``extra``: more flags; ``wrapper``: the command it runs under (valgrind's, say); ``environ``: more
    environment variables (``PYTHONMALLOC``, say)."""
    port = free_port()
    # CPU time, not wall time: on a busy machine wall time charges other processes' turns to
    # whichever call the server was in (a socket send, say).
    runner = [sys.executable, "-c", PROFILER, str(Path(profile).resolve())] if profile else []
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())} if src else None
    if environ:
        env = {**(env or os.environ), **environ}
    log = (work / f"{name}.log").open("wb")
    try:
        process = subprocess.Popen(
            [
                *wrapper,
                *(runner or [str(ROOT / ".venv" / "bin" / "payloadtags")]),
                "serve",
                *pki.standalone_args(port, registry_url),
                f"--requestheader-client-ca-file={proxy_ca.cert_file}",
                "--requestheader-allowed-names=front-proxy-client",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=env,
        )
    finally:
        log.close()
    return process, f"https://127.0.0.1:{port}"


async def run(
    reactor: Any,
    args: argparse.Namespace,
    registry: RegistryServer,
    work: Path,
    started: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    assert registry.process is not None

    def push() -> list[Tag]:
        pushed = []
        for r in range(REPOSITORIES):
            for t in range(TAGS):
                path, tag = f"app-{r}", f"v{t}"
                digest = images.push_oci_image(registry.url, f"{NAMESPACE}/{path}", tag, seed=f"{r}-{t}")
                pushed.append((path, tag, digest))
        return pushed

    tags = await deferToThread(push)
    pki = await deferToThread(Pki.create, work / "pki")
    proxy_ca = await deferToThread(Authority.create, work / "pki" / "front-proxy", "front-proxy")
    proxy = await deferToThread(proxy_ca.client, "front-proxy-client", (), "front-proxy-client")
    process, url = start_server(work, pki, proxy_ca, registry.url, args.server_src, args.profile)
    started.append(process)
    ca_file = str(pki.server_ca.cert_file)
    await deferToThread(wait_ready, url, ca_file, process, work / "payloadtags.log")
    server = PayloadTags(reactor, url, ca_file, str(proxy.cert_file), str(proxy.key_file))
    floor = Floor(reactor, registry.url)
    variants: dict[str, Get] = {"floor": floor.get, "payloadtags": server.get}
    pids = {"server": process.pid, "registry": registry.process.pid}
    results: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds, "reps": []}
    try:
        for get in variants.values():
            # Every connection of the pool open (a burst reuses them instead of handshaking, as
            # kube-apiserver's long-lived connections do), then the caches warm.
            await gatherResults([Deferred.fromCoroutine(get(tags[i])) for i in range(CONNECTIONS)])
            await open_loop(reactor, args.rate, 2.0, tags, get)
        for i in range(args.reps):
            rep: dict[str, Any] = {}
            order = list(variants) if i % 2 == 0 else list(variants)[::-1]
            for name in order:
                await open_loop(reactor, args.rate, 0.5, tags, variants[name])  # a short lead-in
                cpu = {k: cpu_seconds(pid) for k, pid in pids.items()}
                system = system_seconds(pids["server"])
                latencies, failed = await open_loop(reactor, args.rate, args.seconds, tags, variants[name])
                used = {k: cpu_seconds(pid) - cpu[k] for k, pid in pids.items()}
                system = system_seconds(pids["server"]) - system
                rep[name] = {
                    **figures(latencies),
                    "failed": failed,
                    "server_cpu_ms_per_get": used["server"] * 1000 / max(1, len(latencies)),
                    "server_system_cpu_ms_per_get": system * 1000 / max(1, len(latencies)),
                    "registry_cpu_ms_per_get": used["registry"] * 1000 / max(1, len(latencies)),
                }
            rep["p50 ratio"] = rep["payloadtags"]["p50_ms"] / rep["floor"]["p50_ms"]
            rep["p99 ratio"] = rep["payloadtags"]["p99_ms"] / rep["floor"]["p99_ms"]
            results["reps"].append(rep)
            print(line(i, rep), flush=True)
    finally:
        await server.pool.closeCachedConnections()
        await floor.pool.closeCachedConnections()
        await deferToThread(stop_process, process)
    return results


def line(i: int, rep: dict[str, Any]) -> str:
    p, f = rep["payloadtags"], rep["floor"]
    return (
        f"| {i + 1} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} "
        f"| {p['max_ms']:.0f} | {rep['p50 ratio']:.2f} | {rep['p99 ratio']:.2f} "
        f"| {p['server_cpu_ms_per_get']:.2f} ({p['server_system_cpu_ms_per_get']:.2f}) "
        f"| {p['failed'] + f['failed']} |"
    )


HEADER = (
    "| rep | floor p50 (ms) | floor p99 | payloadtags p50 | payloadtags p99 | payloadtags max "
    "| p50 / floor | p99 / floor | server CPU per GET, ms (kernel) | failed |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def summarize(results: dict[str, Any]) -> str:
    reps = results["reps"]
    ratios = [r["p99 ratio"] for r in reps]
    lines = [
        f"Machine: {results['machine']}; load average {results['load']}",
        f"{results['rate']:g} GETs/s open loop, {results['seconds']:g} s per variant and repetition",
        "",
        HEADER,
        *(line(i, r) for i, r in enumerate(reps)),
        "",
        f"p99 / floor p99: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
        f"max {max(ratios):.2f}); p50 / floor p50: median "
        f"{statistics.median(r['p50 ratio'] for r in reps):.2f}. Goal: p99 within 1.5x.",
        f"total {results['total_seconds']:.0f}s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions of 8 s (about 1 minute)")
    parser.add_argument("--rate", type=float, default=50.0, help="GETs per second (default 50)")
    parser.add_argument("--seconds", type=float, help="per variant and repetition (default 15, quick 8)")
    parser.add_argument("--reps", type=int, help="repetitions (default 5, quick 3)")
    parser.add_argument("--json", type=Path, help="also write raw figures here")
    parser.add_argument("--profile", help="run the server under cProfile (CPU time), its stats written here")
    parser.add_argument("--server-src", help="run another tree's server code (PYTHONPATH), for before/after")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (8.0 if args.quick else 15.0)
    args.reps = args.reps or (3 if args.quick else 5)
    print(HEADER, flush=True)
    results = run_with_registry(
        "payloadtags-get-",
        lambda reactor, registry, work, started: run(reactor, args, registry, work, started),
    )
    return report(results, summarize, args.json)


if __name__ == "__main__":
    sys.exit(main())
