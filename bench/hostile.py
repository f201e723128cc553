"""A small list's latency and the server's memory while hostile clients flood it, against an idle server.

What it does (all on 127.0.0.1; everything it starts is stopped at the end, also on error or Ctrl-C):

1. starts a real ``docker-registry`` and pushes the namespace ``bench``: 5 repositories of 2 tags;
2. runs ``.venv/bin/payloadtags serve`` as a subprocess with the default limits (standalone, client
   certificates and a front proxy, ``--authorization-mode=AlwaysAllow``);
3. measures the small list (``GET …/namespaces/bench/payloadrepositorytags``, 10 tags, over one
   kept-alive connection with the front proxy's certificate and ``X-Remote-User``, as kube-apiserver's
   aggregator keeps its connection) and ``/livez``, from 127.0.0.1, in windows of 1,000 samples each
   (``--quick``: 300): on the idle server, then while each flood runs, then with all floods at once, with
   an idle window between every two flood windows; each flood phase is compared with the idle windows
   just before and after it, pooled;
4. each flood runs in processes of its own (this script with ``--flood KIND``), at the lowest CPU
   priority from its first instruction (SCHED_IDLE, nice 19, set by ``chrt`` and ``nice`` before the
   interpreter starts: attackers in a cluster use other machines' CPU, not the server's;
   ``--no-nice-floods`` to compare), from a source address of its own (127.0.0.2, 127.0.0.3, ...: an
   attacker pod is another address than the aggregator; ``--flood-address 127.0.0.1`` floods from the
   measuring client's address instead), from 3 s after every flood process has started (imports done,
   about to flood) until the window is measured:
     - ``unauthenticated-bodies``: clients without a certificate send DELETE heads announcing 3 MiB and
       stream the body;
     - ``oversized-bodies``: authenticated clients announce 100 MiB;
     - ``pipelining``: connections pipeline large responses (``/openapi/v2``) and never read them;
     - ``connections``: 1,500 idle TLS connections, reopened as the server evicts them (the limit is
       1,000);
     - ``slowloris``: 300 connections that send a request head one byte a second;
     - ``bad-inputs``: a loop of malformed requests (deep JSON in bodies and continue tokens, invalid
       escapes, non-UTF-8 paths and headers, garbage request lines, invalid selectors, namespace values
       with ``/``); every answer must be a 4xx ``Status`` (but for the three kube-apiserver answers 200,
       ``ANSWERED_OK``, whose answer must be a 200): anything else (a 500, another body, no answer within
       10 s) counts as a leak;
5. samples the server's RSS every 0.1 s (peak reported against the Deployment's 512 MiB limit), and after
   the floods checks that its open file descriptors and RSS come back (fds still open 40 s after the
   floods count as leaks: a connection whose handshake waits for its address's token, or whose head is
   due within 32 s, is closed by then).

Reported per phase: p50 and p99 of the small list and of ``/livez``, the p99's 95 % interval (order
statistics), the ratio to the idle windows around it with the interval both allow (the goal: p99 within
2x of idle), peak RSS, the floods' own counts and rates, and the CPU of the server, the floods, the
measuring client, the registry and the machine, with the load average and the CPU the machine spent on
anything else (other jobs: contention the ratio does not owe to the server).

Usage: .venv/bin/python bench/hostile.py [--quick] [--seconds S] [--json FILE] [--server-src DIR]
       [--flood-address ADDRESS] [--only FLOOD ...] [--all-only] [--profile FILE] [--server-cpus LIST]
       [--repeat N] [--no-nice-floods] [--pool JSON ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import select
import shutil
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
sys.path.insert(0, str(ROOT / "src"))  # this tree's code, also where .venv is another tree's

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

# Set by SIGTERM: the measuring process stops a flood when its measuring window is over.
STOP = threading.Event()


def lowest_priority() -> str:
    """Make this flood process (and the threads it starts) take only CPU nobody else wants.

    In a cluster the attackers run in other pods, on other CPUs: their own CPU is not the server's.
    Here they share 2 cores with the server and the measuring client, so without this the phases would
    measure the load generator competing for CPU, not the server's work for each hostile request
    (which still counts in full). Returns the policy obtained."""
    os.nice(19)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        return "nice 19"
    return "SCHED_IDLE, nice 19"


def _wait_for_stop(limit: float) -> None:
    deadline = time.monotonic() + limit
    while not STOP.is_set() and time.monotonic() < deadline:
        STOP.wait(0.1)
    STOP.set()


def _loop(seconds: float, workers: int, work: Any) -> list[Any]:
    results: list[Any] = []
    lock = threading.Lock()

    def run() -> None:
        while not STOP.is_set():
            try:
                outcome = work()
            except OSError as error:
                outcome = type(error).__name__
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    _wait_for_stop(seconds)
    for thread in threads:
        thread.join(12)
    with lock:
        return list(results)


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
            STOP.wait(2.0)
        return "held"

    results = _loop(seconds, 8, one)
    return {"connections": len(results)}


def flood_connections(target: Target, user: Any, seconds: float) -> dict[str, Any]:
    context = target.context()
    held: list[ssl.SSLSocket] = []
    opened = failed = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop and not STOP.is_set():
        held = [sock for sock in held if _open(sock)]
        while len(held) < 1500 and time.monotonic() < stop and not STOP.is_set():
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
        if STOP.is_set():
            break
        with contextlib.suppress(OSError):
            socks.append(target.connect(user, timeout=5))
    opened = len(socks)
    sent = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop and socks and not STOP.is_set():
        for sock in list(socks):
            try:
                sock.sendall(head[sent % len(head) : sent % len(head) + 1])
            except OSError:
                socks.remove(sock)
        sent += 1
        STOP.wait(1.0)
    survivors = len(socks)
    for sock in socks:
        sock.close()
    return {"opened": opened, "bytes_sent_per_connection": sent, "still_open_at_end": survivors}


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


# Odd inputs kube-apiserver answers 200, as payloadtags does (docs/hardening.md, "Bad input"): a namespace no
# namespace can have lists nothing, and a watch's negative timeoutSeconds is none. Their answer must be a
# 200 within 10 s; every other case's a 4xx Status.
ANSWERED_OK = frozenset({"namespace selector with /", "bad namespace", "watch with a negative timeout"})


def _is_refusal(reply: Reply) -> bool:
    return 400 <= reply.code < 500 and reply.is_status(reply.code)


def _as_expected(name: str, reply: Reply) -> bool:
    return reply.code == 200 if name in ANSWERED_OK else _is_refusal(reply)


def flood_bad_inputs(target: Target, user: Any, seconds: float) -> dict[str, Any]:
    cases = bad_inputs()
    leaks: list[str] = []
    tried = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop and not STOP.is_set():
        for name, data in cases:
            tried += 1
            started = time.monotonic()
            try:
                with target.connect(user, timeout=10) as sock:
                    sock.sendall(data)
                    reply = read_reply(sock)
                if not _as_expected(name, reply) or time.monotonic() - started > 10:
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


# What each flood's rate counts (its result's key), per second of the flood's life.
RATE_OF = {
    "unauthenticated-bodies": "requests",  # each a new connection: a TLS handshake and a 401
    "oversized-bodies": "requests",  # each a new connection: a handshake and a 413
    "pipelining": "connections",  # each pipelining 10,000 requests it never reads
    "connections": "opened",
    "slowloris": "opened",
    "bad-inputs": "tried",  # each a new connection and a 4xx
}


# --- measuring ----------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank q-quantile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def quantile_interval(values: list[float], q: float, z: float = 1.96) -> tuple[float, float]:
    """A distribution-free 95 % confidence interval of the q-quantile: the order statistics whose ranks
    bound the binomial count of samples below it (normal approximation). With 1,000 samples the p99 lies
    between the 984th and the 997th smallest; with 300, between the 292nd and the 300th (the largest),
    which is why a few hundred samples say little about a p99."""
    ordered = sorted(values)
    n = len(ordered)
    spread = z * math.sqrt(n * q * (1 - q))
    low = max(0, math.floor(n * q - spread) - 1)
    high = min(n - 1, math.ceil(n * q + spread) - 1)
    return ordered[low], ordered[high]


def summary(values: list[float]) -> dict[str, float]:
    low, high = quantile_interval(values, 0.99)
    return {
        "n": len(values),
        "p50_ms": statistics.median(values) * 1000,
        "p99_ms": percentile(values, 0.99) * 1000,
        "p99_low_ms": low * 1000,
        "p99_high_ms": high * 1000,
    }


PROXIED = {"X-Remote-User": "admin", "X-Remote-Group": "system:masters"}


def measure(target: Target, user: Any, requests: int) -> dict[str, Any]:
    """The small list and /livez, alternating, each over a kept-alive connection (reopened, and
    counted, if the server closes it). Returns every sample, in seconds."""
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
            time.sleep(0.002)
    finally:
        for current in connections.values():
            if current is not None:
                current[0].close()
    return {"list": lists, "livez": probes, "reconnects": reconnects}


class Sampler:
    """The server's RSS every 0.1 s, from /proc; and over the whole window, the CPU (share of one core)
    of the server, of the registry, of the flood processes and of this measuring process, the
    machine's (share of all cores), what is left of it for everything else on the machine (in cores),
    and its load average, to tell the server's own work from contention."""

    def __init__(self, pid: int, floods: list[int] | None = None, registry: int | None = None) -> None:
        self.pid = pid
        self.floods = floods or []
        self.registry = registry
        self.peak = 0
        self.figures: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _now(self) -> tuple[float, float, float, float, float, tuple[int, int]]:
        mine = os.times()
        return (
            time.monotonic(),
            cpu_seconds(self.pid),
            sum(cpu_seconds(pid) for pid in self.floods),
            mine.user + mine.system,
            cpu_seconds(self.registry) if self.registry else 0.0,
            machine_ticks(),
        )

    def __enter__(self) -> Sampler:
        self._load = os.getloadavg()[0]
        self._started = self._now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        wall0, server0, floods0, mine0, registry0, (busy0, total0) = self._started
        wall1, server1, floods1, mine1, registry1, (busy1, total1) = self._now()
        wall = max(wall1 - wall0, 1e-9)
        machine = (busy1 - busy0) / max(total1 - total0, 1)
        ours = (server1 - server0 + floods1 - floods0 + mine1 - mine0 + registry1 - registry0) / wall
        self.figures = {
            "seconds": wall,
            "server_cpu_core_share": (server1 - server0) / wall,
            "floods_cpu_core_share": (floods1 - floods0) / wall,
            "client_cpu_core_share": (mine1 - mine0) / wall,
            "registry_cpu_core_share": (registry1 - registry0) / wall,
            # CPU the machine spent on anything but this bench's processes (other jobs, the kernel's
            # own threads), in cores: contention the ratio does not owe to the server.
            "others_cpu_cores": max(0.0, machine * (os.cpu_count() or 1) - ours),
            "machine_busy_share": machine,
            "load_average_before": self._load,
            "peak_rss_mib": self.peak / 2**20,
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    """User and system CPU the process has used (/proc/PID/stat, fields 14 and 15), all its threads."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
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


# Runs a flood process at the lowest priority from its first instruction: its interpreter's start and
# imports (about half a second of CPU each, six at once) are the load generator's, not the server's work.
IDLE_FROM_EXEC = (
    ["chrt", "--idle", "0", "nice", "-n", "19"] if shutil.which("chrt") and shutil.which("nice") else []
)
READY = b"ready\n"


def start_flood(kind: str, target: Target, pki_dir: Path, source: str, nice: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(IDLE_FROM_EXEC if nice else []),
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
            "--nice-floods" if nice else "--no-nice-floods",
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )


def wait_flooding(floods: list[subprocess.Popen[bytes]], limit: float = 60.0) -> float:
    """Wait until every flood process has started (imports done, priority set: it says so on its first
    line) and is about to flood; returns the seconds waited. The ramp counts from there, so that every
    flood has run for the whole ramp when its window starts, however long the processes took to start."""
    started = time.monotonic()
    deadline = started + limit
    for process in floods:
        assert process.stdout is not None
        fd, line = process.stdout.fileno(), b""
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            byte = os.read(fd, 1)  # byte by byte: what follows is the flood's report, read at its end
            if not byte:
                break
            line += byte
        if line != READY:
            raise RuntimeError(f"a flood did not start: {line!r}")
    return time.monotonic() - started


def stop_flood(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Stop a flood (SIGTERM: it finishes what it is doing, at most a socket timeout) and read its report."""
    cpu = cpu_seconds(process.pid)
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        return {"error": "did not finish"}
    try:
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": out.decode(errors="replace")[-300:]}
    result["cpu_core_share"] = cpu / max(result.get("seconds", 0.0), 1e-9)
    return result


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


def settle(pid: int, fds_before: int, limit: float) -> float:
    """Wait (up to ``limit`` s) until the server has closed what the floods left, so that the next idle
    window measures an idle server. Returns how long that took."""
    started = time.monotonic()
    while open_fds(pid) > fds_before + 2 and time.monotonic() - started < limit:
        time.sleep(0.2)
    return time.monotonic() - started


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
            measure(target, proxy, 50)  # warm-up
            time.sleep(1.0)
            fds_before, rss_before = open_fds(server.pid), rss(server.pid)
            registry_pid = registry.process.pid if registry.process is not None else None
            windows: list[dict[str, Any]] = []

            def idle_window() -> None:
                with Sampler(server.pid, registry=registry_pid) as sampler:
                    samples = measure(target, proxy, args.requests)
                windows.append({"phase": "idle", **samples, **sampler.figures})
                print(_line(windows[-1]), flush=True)

            chosen = args.only or FLOODS
            phases = [] if args.all_only else [[kind] for kind in chosen]
            phases += [chosen] if len(chosen) > 1 else []
            idle_window()
            for _ in range(args.repeat):
                for kinds in phases:
                    name = kinds[0] if len(kinds) == 1 else "all at once"
                    floods = [
                        start_flood(kind, target, work / "pki", flood_address(kind, args), args.nice_floods)
                        for kind in kinds
                    ]
                    try:
                        started_in = wait_flooding(floods)
                        time.sleep(args.ramp)  # let the flood build up
                        with Sampler(server.pid, [p.pid for p in floods], registry_pid) as sampler:
                            samples = measure(target, proxy, args.requests)
                    finally:
                        results = {kind: stop_flood(p) for kind, p in zip(kinds, floods, strict=True)}
                    windows.append(
                        {
                            "phase": name,
                            **samples,
                            **sampler.figures,
                            "floods": results,
                            "floods_started_in_seconds": started_in,
                        }
                    )
                    print(_line(windows[-1]), flush=True)
                    print(
                        f"    floods started in {started_in:.1f} s, then {args.ramp:g} s of ramp", flush=True
                    )
                    for kind, result in results.items():
                        print(f"    {kind}: {json.dumps(result)}", flush=True)
                    windows[-1]["settle_seconds"] = settle(server.pid, fds_before, 15.0)
                    idle_window()
            # Connections the server still has to notice are closed (a handshake waiting for its
            # address's token does not read until then; a head is due within 32 s) close by then.
            settle(server.pid, fds_before, 40.0)
            fds_after, rss_after = open_fds(server.pid), rss(server.pid)
            report: dict[str, Any] = {
                "settings": {
                    "requests_per_window": args.requests,
                    "repeat": args.repeat,
                    "nice_floods": args.nice_floods,
                    "ramp_seconds": args.ramp,
                },
                "phases": summarize(windows),
                "windows": windows,
                "leaks": {
                    "fds_before": fds_before,
                    "fds_after": fds_after,
                    "rss_before_mib": rss_before / 2**20,
                    "rss_after_mib": rss_after / 2**20,
                    "bad_answers": sum(
                        w.get("floods", {}).get("bad-inputs", {}).get("leaks", 0) for w in windows
                    ),
                },
            }
            print_summary(report)
            return report
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
            log.close()


# Between the windows of two runs pooled by --pool: no idle window is next to one of another run.
SEPARATOR = "-"


def summarize(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per phase, its samples pooled over its windows, against the idle windows just before and just
    after each of them (pooled too): the idle baseline is measured around every flood, not once."""
    phases: dict[str, Any] = {}
    names = [name for name in dict.fromkeys(w["phase"] for w in windows) if name != SEPARATOR]
    for name in names:
        spots = [i for i, w in enumerate(windows) if w["phase"] == name]
        if name == "idle":
            neighbours = spots
        else:
            neighbours = sorted({j for i in spots for j in (i - 1, i + 1) if 0 <= j < len(windows)})
        flooded = [s for i in spots for s in windows[i]["list"]]
        quiet = [s for j in neighbours if windows[j]["phase"] == "idle" for s in windows[j]["list"]]
        probes = [s for i in spots for s in windows[i]["livez"]]
        quiet_probes = [s for j in neighbours if windows[j]["phase"] == "idle" for s in windows[j]["livez"]]
        entry: dict[str, Any] = {
            "list": summary(flooded),
            "idle_list": summary(quiet),
            "livez": summary(probes),
            "idle_livez": summary(quiet_probes),
            "windows": len(spots),
            "per_window_p99_ms": [percentile(windows[i]["list"], 0.99) * 1000 for i in spots],
        }
        entry["ratio"] = entry["list"]["p99_ms"] / entry["idle_list"]["p99_ms"]
        # The ratio's interval: the flood's interval over the idle one's, both ways round.
        entry["ratio_low"] = entry["list"]["p99_low_ms"] / entry["idle_list"]["p99_high_ms"]
        entry["ratio_high"] = entry["list"]["p99_high_ms"] / entry["idle_list"]["p99_low_ms"]
        entry["livez_ratio"] = entry["livez"]["p99_ms"] / entry["idle_livez"]["p99_ms"]
        for key in ("server_cpu_core_share", "floods_cpu_core_share", "machine_busy_share"):
            entry[key] = statistics.fmean(windows[i][key] for i in spots)
        for key in ("registry_cpu_core_share", "others_cpu_cores"):  # not in older reports
            if all(key in windows[i] for i in spots):
                entry[key] = statistics.fmean(windows[i][key] for i in spots)
        entry["load_average"] = [windows[i]["load_average_before"] for i in spots]
        entry["peak_rss_mib"] = max(windows[i]["peak_rss_mib"] for i in spots)
        if name != "idle":
            # The server's CPU beyond what it spends on the measuring client (at the idle windows'
            # CPU per sample), per flood request: the server's own cost of a hostile request.
            per_sample = statistics.fmean(
                w["server_cpu_core_share"] * w["seconds"] / len(w["list"])
                for w in windows
                if w["phase"] == "idle"
            )
            excess = sum(
                windows[i]["server_cpu_core_share"] * windows[i]["seconds"]
                - per_sample * len(windows[i]["list"])
                for i in spots
            )
            entry["server_cpu_beyond_the_measuring_client_core_share"] = excess / sum(
                windows[i]["seconds"] for i in spots
            )
            entry["flood_rates_per_second"] = {
                kind: [
                    windows[i]["floods"][kind].get(RATE_OF[kind], 0)
                    / max(windows[i]["floods"][kind].get("seconds", 0.0), 1e-9)
                    for i in spots
                ]
                for kind in windows[spots[0]]["floods"]
            }
        if name != "idle":
            # Per what the floods' rates count, each a new connection of theirs (a request on a
            # connection of its own, a connection held): with all floods at once, the server's CPU per
            # flood connection, a figure the floods' own pace (they get the CPU nobody else wants)
            # moves less than the CPU share.
            total = sum(statistics.fmean(v) for v in entry["flood_rates_per_second"].values())
            if total > 0:
                entry["server_cpu_ms_per_flood_unit"] = (
                    1000 * entry["server_cpu_beyond_the_measuring_client_core_share"] / total
                )
        phases[name] = entry
    return phases


def print_summary(report: dict[str, Any]) -> None:
    print(
        "\nsmall list p99 per phase, against the idle windows around it (95 % interval in brackets):",
        flush=True,
    )
    for name, entry in report["phases"].items():
        flood, idle = entry["list"], entry["idle_list"]
        rates = ", ".join(
            f"{kind} {statistics.fmean(values):.1f} {RATE_OF[kind]}/s"
            for kind, values in entry.get("flood_rates_per_second", {}).items()
        )
        if rates:
            rates += (
                f"; server CPU beyond the measuring client "
                f"{entry['server_cpu_beyond_the_measuring_client_core_share']:.0%} of a core"
            )
            if "server_cpu_ms_per_flood_unit" in entry:
                rates += f" ({entry['server_cpu_ms_per_flood_unit']:.2f} ms per flood connection)"
        loads = "/".join(f"{v:.1f}" for v in entry["load_average"])
        print(
            f"{name:24s} p99 {flood['p99_ms']:6.1f} ms [{flood['p99_low_ms']:.1f}-{flood['p99_high_ms']:.1f}]"
            f" n={flood['n']}  idle p99 {idle['p99_ms']:6.1f} ms [{idle['p99_low_ms']:.1f}-"
            f"{idle['p99_high_ms']:.1f}] n={idle['n']}  ratio {entry['ratio']:4.2f}x "
            f"[{entry['ratio_low']:.2f}-{entry['ratio_high']:.2f}]  livez {entry['livez_ratio']:4.2f}x  "
            f"server CPU {entry['server_cpu_core_share']:4.0%}  "
            f"floods CPU {entry['floods_cpu_core_share']:4.0%}  machine {entry['machine_busy_share']:4.0%}  "
            + (
                f"registry CPU {entry['registry_cpu_core_share']:4.0%}  "
                f"others {entry['others_cpu_cores']:.2f} cores  "
                if "others_cpu_cores" in entry
                else ""
            )
            + f"load {loads}"
            + (f"\n{'':26s}{rates}" if rates else ""),
            flush=True,
        )
    if report["leaks"]:
        print(f"leaks: {json.dumps(report['leaks'])}", flush=True)


def _server_env(source: str | None) -> dict[str, str]:
    """This tree's src first on PYTHONPATH (also where .venv is another tree's); with --server-src,
    another tree's code (e.g. an older commit, for a before/after)."""
    return {**os.environ, "PYTHONPATH": str(Path(source or ROOT / "src").resolve())}


def _cpus(spec: str) -> set[int]:
    """A taskset CPU list ("0", "0,2", "1-3") as a set."""
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _line(window: dict[str, Any]) -> str:
    lists, probes = summary(window["list"]), summary(window["livez"])
    return (
        f"{window['phase']:24s} list p50 {lists['p50_ms']:6.1f} ms  p99 {lists['p99_ms']:6.1f} ms "
        f"[{lists['p99_low_ms']:.1f}-{lists['p99_high_ms']:.1f}] n={lists['n']}  livez p99 "
        f"{probes['p99_ms']:5.1f} ms  RSS {window['peak_rss_mib']:4.0f} MiB  server CPU "
        f"{window['server_cpu_core_share']:4.0%}  floods {window['floods_cpu_core_share']:4.0%}  client "
        f"{window['client_cpu_core_share']:4.0%}  registry {window.get('registry_cpu_core_share', 0):4.0%}  "
        f"machine {window['machine_busy_share']:4.0%} "
        f"(others {window.get('others_cpu_cores', 0):.2f} cores)  "
        f"load {window['load_average_before']:.1f}"
        + (f"  {window['reconnects']} reconnects" if window.get("reconnects") else "")
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="300 samples a window instead of 1,000")
    parser.add_argument("--requests", type=int, default=None, help="small lists measured per window")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the flood phases this many times (samples pooled)"
    )
    parser.add_argument(
        "--nice-floods",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the flood processes at the lowest CPU priority (SCHED_IDLE, nice 19; default on)",
    )
    parser.add_argument("--json", help="write the figures (and every sample) here")
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
        "--all-only", action="store_true", help="only the phase with every flood at once (between idles)"
    )
    parser.add_argument(
        "--profile", help="run the server under cProfile and write its profile here (pstats format)"
    )
    parser.add_argument("--flood", choices=FLOODS, help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pki", help=argparse.SUPPRESS)
    parser.add_argument(
        "--pool",
        nargs="+",
        metavar="JSON",
        help="measure nothing: summarize the windows of these --json reports together (repetitions pooled)",
    )
    args = parser.parse_args()
    if args.flood:
        return run_flood(args)
    if args.pool:
        windows: list[dict[str, Any]] = []
        for path in args.pool:
            windows += [*json.loads(Path(path).read_text())["windows"], {"phase": SEPARATOR}]
        print_summary({"phases": summarize(windows), "leaks": {}})
        return 0
    args.requests = args.requests or (300 if args.quick else 1000)
    args.ramp = 2.0 if args.quick else 3.0
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as directory:
        report = run(args, Path(directory))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def run_flood(args: argparse.Namespace) -> int:
    """A flood process: floods until SIGTERM (or 10 minutes), then prints what it did as JSON."""
    priority = lowest_priority() if args.nice_floods else "normal"
    stopped: list[float] = []

    def stop(*_: object) -> None:
        stopped.append(time.monotonic())
        STOP.set()

    signal.signal(signal.SIGTERM, stop)
    pki_dir = Path(args.pki)
    target = Target(args.port, str(pki_dir / "server" / "serving-ca.crt"), source=args.source)
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    started = time.monotonic()
    result = FLOOD_FUNCTIONS[args.flood](target, _admin(pki_dir), 600.0)
    result["seconds"] = (stopped[0] if stopped else time.monotonic()) - started
    result["priority"] = priority
    print(json.dumps(result), flush=True)
    return 0


def _admin(pki_dir: Path) -> Any:
    """The admin client certificate Pki.create wrote (the flood processes only need its files)."""
    from types import SimpleNamespace

    clients = pki_dir / "clients"
    return SimpleNamespace(cert_file=clients / "client-admin.crt", key_file=clients / "client-admin.key")


if __name__ == "__main__":
    sys.exit(main())
