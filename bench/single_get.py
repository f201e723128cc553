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
   - **the floor**: a minimal treq client on the same reactor sending the registry requests payloadtags
     sends for such a GET: ``GET /v2/<repo>/manifests/<tag>`` every time, and the image config
     ``GET /v2/<repo>/blobs/<digest>`` only when it has not read that config before: like the server
     (``registry/blobcache.py``), it keeps configs by (repository, digest) once read and checked;
     over a kept-alive connection pool;
   in two modes, interleaved in every repetition: ``same``, cycling over the 50 tags (after the
   warm-up both sides have every config and read only manifests: the headline row), and
   ``distinct``, where every GET is of a tag of its own with an image config of its own (written into
   the registry's storage tree beforehand, a set for each side), so that neither side can keep a
   config it needs and both read the manifest and the config every time. Repetitions alternate which
   variant goes first. Every answer is checked (the digest payloadtags reports, the manifest the floor
   read, the config's digest).

Reported per mode: p50, p90, p99 and max per variant and repetition, the ratio payloadtags/floor of p50
and p99 per repetition (goal: p99 within 1.5x), the server's CPU per GET (from /proc), and the floor's
config reads per GET (0 in ``same`` after the warm-up, 1 in ``distinct``: the mode did what it says).

Usage: .venv/bin/python bench/single_get.py [--quick] [--rate 50] [--seconds S] [--reps N]
       [--modes same,distinct] [--json FILE] [--profile FILE] [--server-src DIR]
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
sys.path.insert(0, str(ROOT / "src"))  # this tree's code, also where .venv is another tree's

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
    server_environ,
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
    """What any client must do to show one tag with its manifest and config, with the registry reads
    payloadtags makes: the manifest every time, the config only when not read before. Configs are kept
    by (repository, digest) once read and checked, as payloadtags keeps them (registry/blobcache.py:
    content named by its digest does not change)."""

    def __init__(self, reactor: Any, registry_url: str) -> None:
        self._reactor = reactor
        self._base = registry_url.rstrip("/")
        self.pool = _pool(reactor, CONNECTIONS)
        self._http = HTTPClient(Agent(reactor, pool=self.pool))
        self.configs: dict[tuple[str, str], bytes] = {}
        self.config_reads = 0

    async def get(self, tag: Tag) -> None:
        path, name, digest = tag
        repository = f"{self._base}/v2/{NAMESPACE}/{path}"
        code, _, body = await _get(
            self._http, self._reactor, f"{repository}/manifests/{name}", {"Accept": ACCEPT_MANIFESTS}
        )
        if code != 200 or "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise RuntimeError(f"the registry answered {code} for {path}:{name}: {body[:300]!r}")
        config = json.loads(body)["config"]["digest"]
        content = self.configs.get((path, config))
        if content is None:
            self.config_reads += 1
            code, _, content = await _get(self._http, self._reactor, f"{repository}/blobs/{config}")
            if code != 200 or "sha256:" + hashlib.sha256(content).hexdigest() != config:
                raise RuntimeError(f"the registry answered {code} for {path}@{config}")
            self.configs[(path, config)] = content
        json.loads(content)


def _blob(storage: Path, digest: str) -> Path:
    hex_ = digest.removeprefix("sha256:")
    return storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


def _link(path: Path, digest: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "link").write_text(digest)


def write_distinct(storage: Path, repositories: list[str], count: int, prefix: str) -> list[Tag]:
    """``count`` more tags in ``repositories`` (round robin), each an image with a config of its own,
    written into the registry's storage tree as distribution lays it out (pushing thousands over HTTP
    takes too long): each repository's ``v0`` with another label in its config."""
    base = storage / "docker/registry/v2"
    made: list[Tag] = []
    templates = {}
    for path in repositories:
        repository = base / "repositories" / NAMESPACE / path
        current = (repository / "_manifests/tags/v0/current/link").read_text().strip()
        manifest = json.loads(_blob(storage, current).read_bytes())
        templates[path] = (manifest, json.loads(_blob(storage, manifest["config"]["digest"]).read_bytes()))
    for i in range(count):
        path, name = repositories[i % len(repositories)], f"{prefix}{i:05d}"
        repository = base / "repositories" / NAMESPACE / path
        manifest, config = templates[path]
        config_body = images.canonical({**config, "config": {**config["config"], "Labels": {"seed": name}}})
        config_digest = images.sha256(config_body)
        manifest_body = images.canonical(
            {**manifest, "config": {**manifest["config"], "digest": config_digest, "size": len(config_body)}}
        )
        digest = images.sha256(manifest_body)
        for content, named in ((config_body, config_digest), (manifest_body, digest)):
            _blob(storage, named).parent.mkdir(parents=True, exist_ok=True)
            _blob(storage, named).write_bytes(content)
        hex_ = digest.removeprefix("sha256:")
        _link(repository / "_layers/sha256" / config_digest.removeprefix("sha256:"), config_digest)
        _link(repository / "_manifests/revisions/sha256" / hex_, digest)
        _link(repository / "_manifests/tags" / name / "current", digest)
        _link(repository / "_manifests/tags" / name / "index/sha256" / hex_, digest)
        made.append((path, name, digest))
    return made


def fresh(get: Get, tags: list[Tag]) -> Get:
    """``get`` of the next of ``tags`` on every call, whatever tag it is given: no tag asked twice."""
    left = iter(tags)

    async def one(_: Tag) -> None:
        await get(next(left))

    return one


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
    env = server_environ(src, environ)  # this tree's src first on PYTHONPATH, or ``src``
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
    # distinct: every GET of a tag of its own, a set for each side (with one set the second to ask
    # would find the registry's files warmer): the warm-up's and every repetition's GETs, and a margin.
    per_get = int(args.rate * 2.0) + args.reps * (int(args.rate * 0.5) + int(args.rate * args.seconds))
    needed = CONNECTIONS + per_get + 100
    distinct = {}
    if "distinct" in args.modes:
        repositories = sorted({path for path, _, _ in tags})
        for side in ("floor", "payloadtags"):
            distinct[side] = await deferToThread(write_distinct, registry.root, repositories, needed, side[0])
    pki = await deferToThread(Pki.create, work / "pki")
    proxy_ca = await deferToThread(Authority.create, work / "pki" / "front-proxy", "front-proxy")
    proxy = await deferToThread(proxy_ca.client, "front-proxy-client", (), "front-proxy-client")
    process, url = start_server(work, pki, proxy_ca, registry.url, args.server_src, args.profile)
    started.append(process)
    ca_file = str(pki.server_ca.cert_file)
    await deferToThread(wait_ready, url, ca_file, process, work / "payloadtags.log")
    server = PayloadTags(reactor, url, ca_file, str(proxy.cert_file), str(proxy.key_file))
    floor = Floor(reactor, registry.url)
    getters: dict[str, dict[str, Get]] = {}
    for mode in args.modes:
        getters[mode] = {"floor": floor.get, "payloadtags": server.get}
        if mode == "distinct":
            getters[mode] = {name: fresh(get, distinct[name]) for name, get in getters[mode].items()}
    pids = {"server": process.pid, "registry": registry.process.pid}
    results: dict[str, Any] = {
        "rate": args.rate,
        "seconds": args.seconds,
        "modes": {mode: {"reps": []} for mode in args.modes},
    }
    try:
        for variants in getters.values():
            for get in variants.values():
                # Every connection of the pool open (a burst reuses them instead of handshaking, as
                # kube-apiserver's long-lived connections do), then the caches warm.
                await gatherResults([Deferred.fromCoroutine(get(tags[i])) for i in range(CONNECTIONS)])
                await open_loop(reactor, args.rate, 2.0, tags, get)
        for i in range(args.reps):
            for mode, variants in getters.items():
                rep: dict[str, Any] = {}
                order = list(variants) if i % 2 == 0 else list(variants)[::-1]
                for name in order:
                    await open_loop(reactor, args.rate, 0.5, tags, variants[name])  # a short lead-in
                    cpu = {k: cpu_seconds(pid) for k, pid in pids.items()}
                    system = system_seconds(pids["server"])
                    config_reads = floor.config_reads
                    latencies, failed = await open_loop(
                        reactor, args.rate, args.seconds, tags, variants[name]
                    )
                    used = {k: cpu_seconds(pid) - cpu[k] for k, pid in pids.items()}
                    system = system_seconds(pids["server"]) - system
                    gets = max(1, len(latencies))
                    rep[name] = {
                        **figures(latencies),
                        "failed": failed,
                        "server_cpu_ms_per_get": used["server"] * 1000 / gets,
                        "server_system_cpu_ms_per_get": system * 1000 / gets,
                        "registry_cpu_ms_per_get": used["registry"] * 1000 / gets,
                    }
                    if name == "floor":
                        rep[name]["config_reads_per_get"] = (floor.config_reads - config_reads) / gets
                rep["p50 ratio"] = rep["payloadtags"]["p50_ms"] / rep["floor"]["p50_ms"]
                rep["p99 ratio"] = rep["payloadtags"]["p99_ms"] / rep["floor"]["p99_ms"]
                rep["load"] = os.getloadavg()[0]
                results["modes"][mode]["reps"].append(rep)
                print(f"| {mode} " + line(i, rep), flush=True)
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
        f"| {f.get('config_reads_per_get', float('nan')):.2f} | {p['failed'] + f['failed']} "
        f"| {rep.get('load', float('nan')):.1f} |"
    )


HEADER = (
    "| rep | floor p50 (ms) | floor p99 | payloadtags p50 | payloadtags p99 | payloadtags max "
    "| p50 / floor | p99 / floor | server CPU per GET, ms (kernel) | floor config reads per GET | failed "
    "| load |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)
MODES = {
    "same": "the same 50 tags over and over: both sides keep the configs (the headline)",
    "distinct": "every GET a tag and image config of its own: neither side can keep one",
}


def summarize(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']}; load average {results['load']}",
        f"{results['rate']:g} GETs/s open loop, {results['seconds']:g} s per variant, mode and repetition",
    ]
    for mode, measured in results["modes"].items():
        reps = measured["reps"]
        ratios = [r["p99 ratio"] for r in reps]
        p50s = [r["p50 ratio"] for r in reps]
        lines += [
            "",
            f"Mode {mode}: {MODES[mode]}",
            "",
            HEADER,
            *(line(i, r) for i, r in enumerate(reps)),
            "",
            f"{mode}: p99 / floor p99: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
            f"max {max(ratios):.2f}); p50 / floor p50: median {statistics.median(p50s):.2f} "
            f"(min {min(p50s):.2f}, max {max(p50s):.2f}). Goal: p99 within 1.5x.",
        ]
    lines.append(f"total {results['total_seconds']:.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions of 8 s (about 1 minute)")
    parser.add_argument("--rate", type=float, default=50.0, help="GETs per second (default 50)")
    parser.add_argument("--seconds", type=float, help="per variant and repetition (default 15, quick 8)")
    parser.add_argument("--reps", type=int, help="repetitions (default 5, quick 3)")
    parser.add_argument(
        "--modes",
        default="same,distinct",
        help="same (50 tags cycled, configs kept by both sides), distinct (every GET a config of its own)",
    )
    parser.add_argument("--json", type=Path, help="also write raw figures here")
    parser.add_argument("--profile", help="run the server under cProfile (CPU time), its stats written here")
    parser.add_argument("--server-src", help="run another tree's server code (PYTHONPATH), for before/after")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (8.0 if args.quick else 15.0)
    args.reps = args.reps or (3 if args.quick else 5)
    args.modes = [m for m in args.modes.split(",") if m]
    if not args.modes or set(args.modes) - set(MODES):
        parser.error(f"--modes: one or more of {', '.join(MODES)}")
    print("| mode " + HEADER.replace("\n", "\n|---"), flush=True)
    results = run_with_registry(
        "payloadtags-get-",
        lambda reactor, registry, work, started: run(reactor, args, registry, work, started),
    )
    return report(results, summarize, args.json)


if __name__ == "__main__":
    sys.exit(main())
