"""A small list's latency and the server's memory while hostile clients flood it, against an idle server.

What it does (all on 127.0.0.1; everything it starts is stopped at the end, also on error or Ctrl-C):

1. starts a real ``docker-registry`` and pushes the namespace ``bench``: 5 repositories of 2 tags;
2. runs ``.venv/bin/payloadtags serve`` as a subprocess with the default limits (standalone, client
   certificates and a front proxy, ``--authorization-mode=AlwaysAllow``);
3. measures the small list (``GET …/namespaces/bench/payloadrepositorytags``, 10 tags, over one
   kept-alive connection with the front proxy's certificate and ``X-Remote-User``, as kube-apiserver's
   aggregator keeps its connection) and ``/livez`` on an idle server, from 127.0.0.1, then again while
   each flood runs, then with all floods at once;
4. each flood runs in processes of its own (this script with ``--flood KIND``), so that its CPU does not
   slow down the measuring client, and from a source address of its own (127.0.0.2, 127.0.0.3, ...: an
   attacker pod is another address than the aggregator; ``--flood-address 127.0.0.1`` floods from the
   measuring client's address instead):
     - ``unauthenticated-bodies``: clients without a certificate send DELETE heads announcing 3 MiB and
       stream the body;
     - ``oversized-bodies``: authenticated clients announce 100 MiB;
     - ``pipelining``: connections pipeline large responses (``/openapi/v2``) and never read them;
     - ``connections``: 1,500 idle TLS connections, reopened as the server evicts them (the limit is
       1,000);
     - ``slowloris``: 300 connections that send a request head one byte a second;
     - ``bad-inputs``: a loop of malformed requests (deep JSON in bodies and continue tokens, invalid
       escapes, non-UTF-8 paths and headers, garbage request lines, invalid selectors, namespace values
       with ``/``); every answer must be a 4xx ``Status``: anything else (a 500, another body, no answer
       within 10 s) counts as a leak;
5. samples the server's RSS every 0.1 s (peak reported against the Deployment's 512 MiB limit), and after
   the floods checks that its open file descriptors and RSS come back (fds still open 40 s after the
   floods count as leaks: a connection whose handshake waits for its address's token, or whose head is
   due within 32 s, is closed by then).

Reported per phase: p50 and p99 of the small list and of ``/livez`` and their ratio to the idle figures
(the goal: p99 within 2x of idle), peak RSS, and the flood's own counts.

Usage: .venv/bin/python bench/hostile.py [--quick] [--seconds S] [--json FILE] [--server-src DIR]
       [--flood-address ADDRESS] [--only FLOOD ...] [--all-only] [--profile FILE] [--server-cpus LIST]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import images  # noqa: E402
from tests.support.harness import Pki  # noqa: E402
from tests.support.pki import Authority  # noqa: E402
from tests.support.raw import Reply, Target, read_reply, request_bytes  # noqa: E402
from tests.support.registry_server import RegistryServer, free_port  # noqa: E402

B = "/apis/payload-registry.deckhouse.io/v1alpha1"
LIST = f"{B}/namespaces/bench/payloadrepositorytags"
JSON = "application/json"
MEMORY_LIMIT = 512 * 1024 * 1024
FLOODS = [
    "unauthenticated-bodies",
    "oversized-bodies",
    "pipelining",
    "connections",
    "slowloris",
    "bad-inputs",
]


# --- floods (each runs in a process of its own) ------------------------------------------------------


def _loop(seconds: float, workers: int, work: Any) -> list[Any]:
    stop = time.monotonic() + seconds
    results: list[Any] = []
    lock = threading.Lock()

    def run() -> None:
        while time.monotonic() < stop:
            try:
                outcome = work()
            except OSError as error:
                outcome = type(error).__name__
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return results


def flood_unauthenticated_bodies(target: Target, user: Any, seconds: float) -> dict[str, Any]:
    def one() -> int | str:
        with target.connect(timeout=10) as sock:
            sock.sendall(request_bytes("DELETE", f"{LIST}/x", {"Content-Length": str((3 << 20) - 1)}))
            with contextlib.suppress(OSError):
                for _ in range(48):
                    sock.sendall(b"x" * 65536)
            return read_reply(sock).code

    results = _loop(seconds, 8, one)
    return {"requests": len(results), "answers": _count(results)}


def flood_oversized_bodies(target: Target, user: Any, seconds: float) -> dict[str, Any]:
    def one() -> int | str:
        with target.connect(user, timeout=10) as sock:
            sock.sendall(request_bytes("DELETE", f"{LIST}/x", {"Content-Length": str(100 << 20)}))
            with contextlib.suppress(OSError):
                sock.sendall(b"x" * 65536)
            return read_reply(sock).code

    results = _loop(seconds, 4, one)
    return {"requests": len(results), "answers": _count(results)}


def flood_pipelining(target: Target, user: Any, seconds: float) -> dict[str, Any]:
    burst = request_bytes("GET", "/openapi/v2") * 500

    def one() -> str:
        with target.connect(user, timeout=10, receive_buffer=4096) as sock:
            sock.setblocking(False)
            with contextlib.suppress(ssl.SSLWantWriteError, BlockingIOError):
                for _ in range(20):
                    sock.send(burst)
            sock.setblocking(True)
            time.sleep(min(2.0, seconds))
        return "held"

    results = _loop(seconds, 8, one)
    return {"connections": len(results)}


def flood_connections(target: Target, user: Any, seconds: float) -> dict[str, Any]:
    context = target.context()
    held: list[ssl.SSLSocket] = []
    opened = failed = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        held = [sock for sock in held if _open(sock)]
        while len(held) < 1500 and time.monotonic() < stop:
            try:
                held.append(target.connect(context=context, timeout=5))
                opened += 1
            except OSError:
                failed += 1
                break
        time.sleep(0.2)
    for sock in held:
        sock.close()
    return {"opened": opened, "failed": failed}


def _open(sock: ssl.SSLSocket) -> bool:
    try:
        sock.setblocking(False)
        try:
            return sock.recv(1) != b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        finally:
            sock.setblocking(True)
    except OSError:
        sock.close()
        return False


def flood_slowloris(target: Target, user: Any, seconds: float) -> dict[str, Any]:
    head = b"GET /version HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    socks: list[ssl.SSLSocket] = []
    for _ in range(300):
        with contextlib.suppress(OSError):
            socks.append(target.connect(user, timeout=5))
    sent = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop and socks:
        for sock in list(socks):
            try:
                sock.sendall(head[sent % len(head) : sent % len(head) + 1])
            except OSError:
                socks.remove(sock)
        sent += 1
        time.sleep(1.0)
    survivors = len(socks)
    for sock in socks:
        sock.close()
    return {"connections": 300, "still_open_at_end": survivors}


def bad_inputs() -> list[tuple[str, bytes]]:
    import base64

    deep = b"[" * 100_000 + b"]" * 100_000
    token = base64.urlsafe_b64encode(b'{"v":1,"last":' + b"[" * 3000 + b"]" * 3000 + b"}").decode()
    return [
        ("deep JSON body", request_bytes("DELETE", f"{LIST}/x", {"Content-Type": "application/json"}, deep)),
        ("deep JSON continue token", request_bytes("GET", f"{LIST}?limit=1&continue={token}")),
        ("garbage continue token", request_bytes("GET", f"{LIST}?limit=1&continue=%ff%fe")),
        ("invalid escape", b"GET /apis/%zz HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("non-UTF-8 path", b"GET /apis/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("non-UTF-8 header", b"GET " + LIST.encode() + b" HTTP/1.1\r\nAccept: \xff\xfe\r\n\r\n"),
        ("garbage request line", b"\x16\x03\x01 nonsense\r\n\r\n"),
        ("header without colon", b"GET /version HTTP/1.1\r\nHost x\r\n\r\n"),
        ("two lengths", b"DELETE /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        ("malformed chunk", b"DELETE /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        ("long header", b"GET /version HTTP/1.1\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n"),
        ("bad label selector", request_bytes("GET", f"{LIST}?labelSelector=a%20in%20(")),
        ("unknown field", request_bytes("GET", f"{LIST}?fieldSelector=spec.tag%3Dx")),
        (
            "namespace selector with /",
            request_bytes(
                "GET", f"{B}/payloadrepositorytags?fieldSelector=metadata.namespace%3Dbench%2Fapp-0"
            ),
        ),
        ("bad limit", request_bytes("GET", f"{LIST}?limit=-1")),
        ("bad namespace", request_bytes("GET", f"{B}/namespaces/BAD_NS/payloadrepositorytags")),
        ("bad name", request_bytes("GET", f"{LIST}/not-base32!")),
        ("star target", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("watch with a negative timeout", request_bytes("GET", f"{LIST}?watch=true&timeoutSeconds=-1")),
        ("create", request_bytes("POST", LIST, {"Content-Type": "application/json"}, b"{}")),
        (
            "bad delete options",
            request_bytes("DELETE", f"{LIST}/x", {"Content-Type": "application/json"}, b"[1]"),
        ),
    ]


def _is_refusal(reply: Reply) -> bool:
    return 400 <= reply.code < 500 and reply.is_status(reply.code)


def flood_bad_inputs(target: Target, user: Any, seconds: float) -> dict[str, Any]:
    cases = bad_inputs()
    leaks: list[str] = []
    tried = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        for name, data in cases:
            tried += 1
            started = time.monotonic()
            try:
                with target.connect(user, timeout=10) as sock:
                    sock.sendall(data)
                    reply = read_reply(sock)
                if not _is_refusal(reply) or time.monotonic() - started > 10:
                    leaks.append(f"{name}: {reply.code} {reply.body[:80]!r}")
            except OSError as error:
                leaks.append(f"{name}: {type(error).__name__}")
    return {"kinds": len(cases), "tried": tried, "leaks": len(leaks), "leaked": sorted(set(leaks))[:10]}


FLOOD_FUNCTIONS = {
    "unauthenticated-bodies": flood_unauthenticated_bodies,
    "oversized-bodies": flood_oversized_bodies,
    "pipelining": flood_pipelining,
    "connections": flood_connections,
    "slowloris": flood_slowloris,
    "bad-inputs": flood_bad_inputs,
}


def _count(results: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in results:
        counts[str(result)] = counts.get(str(result), 0) + 1
    return counts


# --- measuring ----------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


PROXIED = {"X-Remote-User": "admin", "X-Remote-Group": "system:masters"}


def measure(target: Target, user: Any, requests: int) -> dict[str, float]:
    """The small list and /livez, alternating, each over a kept-alive connection (reopened, and
    counted, if the server closes it)."""
    lists: list[float] = []
    probes: list[float] = []
    reconnects = 0
    connections: dict[str, tuple[ssl.SSLSocket, bytearray] | None] = {"list": None, "probe": None}

    def ask(which: str, path: str, who: Any, headers: dict[str, str] | None = None) -> tuple[Reply, float]:
        nonlocal reconnects
        for attempt in range(3):
            current = connections[which]
            if current is None:
                current = connections[which] = (target.connect(who, timeout=30), bytearray())
                reconnects += attempt > 0
            sock, buffer = current
            started = time.monotonic()
            try:
                sock.sendall(request_bytes("GET", path, headers))
                return read_reply(sock, buffer), time.monotonic() - started
            except (OSError, ConnectionError):
                sock.close()
                connections[which] = None
        raise RuntimeError(f"{path}: the connection failed three times")

    try:
        for _ in range(requests):
            reply, elapsed = ask("list", LIST, user, PROXIED)
            lists.append(elapsed)
            if reply.code != 200 or len(reply.json()["items"]) != 10:
                raise RuntimeError(f"the small list answered {reply.code}: {reply.body[:200]!r}")
            reply, elapsed = ask("probe", "/livez", None)
            probes.append(elapsed)
            if reply.code != 200:
                raise RuntimeError("/livez failed")
            time.sleep(0.01)
    finally:
        for current in connections.values():
            if current is not None:
                current[0].close()
    return {
        "list_p50_ms": statistics.median(lists) * 1000,
        "list_p99_ms": _percentile(lists, 0.99) * 1000,
        "livez_p50_ms": statistics.median(probes) * 1000,
        "livez_p99_ms": _percentile(probes, 0.99) * 1000,
        "reconnects": reconnects,
    }


class Sampler:
    """The server's RSS every 0.1 s, from /proc; and over the whole phase, the server's CPU (share of
    one core) and the machine's (share of all cores), to tell the server's own work from contention."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.server_cpu = 0.0
        self.machine_busy = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._started = (time.monotonic(), cpu_seconds(self.pid), machine_ticks())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        wall0, cpu0, (busy0, total0) = self._started
        wall, cpu, (busy, total) = time.monotonic() - wall0, cpu_seconds(self.pid) - cpu0, machine_ticks()
        self.server_cpu = cpu / wall if wall > 0 else 0.0
        self.machine_busy = (busy - busy0) / max(total - total0, 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    """User and system CPU the process has used (/proc/PID/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """Busy and total CPU ticks of the machine, all cores (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def flood_address(kind: str, args: argparse.Namespace) -> str:
    """Each flood from an address of its own (127.0.0.2, ...), unless --flood-address says one."""
    return args.flood_address or f"127.0.0.{2 + FLOODS.index(kind)}"


def start_flood(
    kind: str, target: Target, pki_dir: Path, seconds: float, source: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--flood",
            kind,
            "--source",
            source,
            "--port",
            str(target.port),
            "--pki",
            str(pki_dir),
            "--seconds",
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )


def flood_result(process: subprocess.Popen[bytes], seconds: float) -> dict[str, Any]:
    try:
        out, _ = process.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        return {"error": "did not finish"}
    try:
        return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]
    except (ValueError, IndexError):
        return {"error": out.decode(errors="replace")[-300:]}


def wait_ready(target: Target, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"payloadtags exited with {process.returncode}")
        with contextlib.suppress(OSError, ConnectionError):
            with target.connect(timeout=2) as sock:
                sock.sendall(request_bytes("GET", "/readyz"))
                if read_reply(sock).code == 200:
                    return
        time.sleep(0.2)
    raise RuntimeError("payloadtags did not become ready")


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with RegistryServer() as registry:
        for i in range(5):
            for tag in ("v1", "v2"):
                images.push_oci_image(registry, f"bench/app-{i}", tag, seed=f"{i}-{tag}")
        pki = Pki.create(work / "pki")
        proxy_ca = Authority.create(work / "pki" / "front-proxy", "front-proxy")
        proxy = proxy_ca.client("front-proxy-client", stem="front-proxy-client")
        port = free_port()
        log = (work / "payloadtags.log").open("wb")
        profile = ["-m", "cProfile", "-o", str(Path(args.profile).resolve())] if args.profile else []
        pinned = ["taskset", "-c", args.server_cpus] if args.server_cpus else []
        if args.server_cpus:
            # Floods and the measuring client (this process and its children) keep off those CPUs.
            others = set(range(os.cpu_count() or 1)) - _cpus(args.server_cpus)
            os.sched_setaffinity(0, others or {0})
        server = subprocess.Popen(
            [
                *pinned,
                *([sys.executable, *profile] if profile else []),
                str(ROOT / ".venv" / "bin" / "payloadtags"),
                "serve",
                *pki.standalone_args(port, registry.url),
                f"--requestheader-client-ca-file={proxy_ca.cert_file}",
                "--requestheader-allowed-names=front-proxy-client",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=_server_env(args.server_src),
        )
        try:
            target = Target(port, str(pki.server_ca.cert_file))
            wait_ready(target, server)
            measure(target, proxy, 20)  # warm-up
            time.sleep(1.0)
            fds_before, rss_before = open_fds(server.pid), rss(server.pid)
            report: dict[str, Any] = {"phases": {}}
            with Sampler(server.pid) as sampler:
                idle = measure(target, proxy, args.requests)
            report["phases"]["idle"] = {**idle, **_cpu(sampler), "peak_rss_mib": sampler.peak / 2**20}
            print(_line("idle", idle, idle, sampler), flush=True)
            chosen = args.only or FLOODS
            phases = [] if args.all_only else [[kind] for kind in chosen]
            phases += [chosen] if len(chosen) > 1 else []
            for kinds in phases:
                name = kinds[0] if len(kinds) == 1 else "all at once"
                floods = [
                    start_flood(kind, target, work / "pki", args.seconds, flood_address(kind, args))
                    for kind in kinds
                ]
                time.sleep(min(3.0, args.seconds / 3))  # let the flood build up
                with Sampler(server.pid) as sampler:
                    figures = measure(target, proxy, args.requests)
                results = {kind: flood_result(p, args.seconds) for kind, p in zip(kinds, floods, strict=True)}
                report["phases"][name] = {
                    **figures,
                    **_cpu(sampler),
                    "peak_rss_mib": sampler.peak / 2**20,
                    "floods": results,
                }
                print(_line(name, figures, idle, sampler), flush=True)
                for kind, result in results.items():
                    print(f"    {kind}: {json.dumps(result)}", flush=True)
                time.sleep(1.0)
            # Connections the server still has to notice are closed (a handshake waiting for its
            # address's token does not read until then; a head is due within 32 s) close by then.
            settled = time.monotonic() + 40
            time.sleep(3.0)
            while open_fds(server.pid) > fds_before and time.monotonic() < settled:
                time.sleep(1.0)
            fds_after, rss_after = open_fds(server.pid), rss(server.pid)
            report["leaks"] = {
                "fds_before": fds_before,
                "fds_after": fds_after,
                "rss_before_mib": rss_before / 2**20,
                "rss_after_mib": rss_after / 2**20,
                "bad_answers": sum(
                    phase.get("floods", {}).get("bad-inputs", {}).get("leaks", 0)
                    for phase in report["phases"].values()
                ),
            }
            print(f"leaks: {json.dumps(report['leaks'])}", flush=True)
            return report
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
            log.close()


def _server_env(source: str | None) -> dict[str, str] | None:
    """With --server-src, the server runs another tree's code (e.g. an older commit, for a before/after)."""
    if not source:
        return None
    return {**os.environ, "PYTHONPATH": str(Path(source).resolve())}


def _cpus(spec: str) -> set[int]:
    """A taskset CPU list ("0", "0,2", "1-3") as a set."""
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _cpu(sampler: Sampler) -> dict[str, float]:
    return {"server_cpu_core_share": sampler.server_cpu, "machine_busy_share": sampler.machine_busy}


def _line(name: str, figures: dict[str, float], idle: dict[str, float], sampler: Sampler) -> str:
    return (
        f"{name:24s} list p50 {figures['list_p50_ms']:7.1f} ms  p99 {figures['list_p99_ms']:7.1f} ms "
        f"({figures['list_p99_ms'] / idle['list_p99_ms']:4.2f}x idle)  livez p99 "
        f"{figures['livez_p99_ms']:6.1f} ms ({figures['livez_p99_ms'] / idle['livez_p99_ms']:4.2f}x)  "
        f"peak RSS {sampler.peak / 2**20:5.0f} MiB (limit {MEMORY_LIMIT / 2**20:.0f})  "
        f"server CPU {sampler.server_cpu:4.0%} of a core, machine {sampler.machine_busy:4.0%} busy"
        + (f"  {figures['reconnects']:.0f} reconnects" if figures.get("reconnects") else "")
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests and shorter floods")
    parser.add_argument("--seconds", type=float, default=None, help="how long each flood runs")
    parser.add_argument("--requests", type=int, default=None, help="small lists measured per phase")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument(
        "--server-src", help="run the server from this src/ directory (another commit's, for a before/after)"
    )
    parser.add_argument(
        "--flood-address",
        help="source address of every flood (default: 127.0.0.2, 127.0.0.3, ..., one per kind)",
    )
    parser.add_argument("--only", nargs="+", choices=FLOODS, help="these floods only")
    parser.add_argument(
        "--server-cpus",
        help="run the server on these CPUs only (taskset list, e.g. 0) and everything else on the others",
    )
    parser.add_argument(
        "--all-only", action="store_true", help="only the phase with every flood at once (after idle)"
    )
    parser.add_argument(
        "--profile", help="run the server under cProfile and write its profile here (pstats format)"
    )
    parser.add_argument("--flood", choices=FLOODS, help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pki", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:
        pki_dir = Path(args.pki)
        target = Target(args.port, str(pki_dir / "server" / "serving-ca.crt"), source=args.source)
        user = _admin(pki_dir)
        print(json.dumps(FLOOD_FUNCTIONS[args.flood](target, user, args.seconds)), flush=True)
        return 0
    args.seconds = args.seconds or (6.0 if args.quick else 20.0)
    args.requests = args.requests or (100 if args.quick else 300)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as directory:
        report = run(args, Path(directory))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _admin(pki_dir: Path) -> Any:
    """The admin client certificate Pki.create wrote (the flood processes only need its files)."""
    from types import SimpleNamespace

    clients = pki_dir / "clients"
    return SimpleNamespace(cert_file=clients / "client-admin.crt", key_file=clients / "client-admin.key")


if __name__ == "__main__":
    sys.exit(main())
